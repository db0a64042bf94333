//! The node's storage actors.
//!
//! [`StoreActor`] owns the node's [`Store`] and the two replication cores of `verge-replica`
//! (an [`Owner`] for the node's own streams, a [`Replica`] for the copies it keeps of its
//! neighbours' streams), and runs on its own arbiter thread, because a flush is a blocking fsync.
//! It is the cores' driver (see "Driving the cores" in `verge-replica`): it numbers a producer's
//! readings with [`Owner::next_seq`], appends them, group-commits (a flush starts as soon as the
//! actor has handled the messages waiting for it and no flush is running; it syncs on a blocking
//! thread while the actor goes on appending, and one flush covers everything appended before it
//! started; see `WhenIdle`), feeds flush results, peer liveness, replication messages and timer
//! ticks to the cores, and carries out what they return: reading records to send, storing
//! copies, recording holders, answering producers. A producer is answered only when the owner
//! core says `write_quorum` holders (or, degraded, `min_replicas`) have its readings on disk.
//!
//! Replication messages leave through one bounded queue per peer that the network actor drains
//! into the connection it dialed to that peer. What the cores send while the actor handles its
//! mailbox is gathered per peer and queued as one batch when the mailbox is empty, so the
//! appends one producer's request causes reach a replica together and one flush there covers
//! them all. A batch that does not fit is dropped and counted, and the owner core sends its
//! messages again.
//!
//! The sensor actor (`crate::sensing`) feeds it readings; its [`EventClock`] follows a replayed or
//! simulated source's event time, and the aggregation windows follow the clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};
use verge_proto::admin::{IngestAck, ReplicaView, StreamRole, StreamView};
use verge_proto::replication::{Append, ReplicationMessage, ToOwner, ToReplica};
use verge_proto::{NodeId, Record, StreamId, StreamKind};
use verge_replica::{
    AppendError, Owner, OwnerAction, OwnerEvent, Phase, ProtocolError, Replica, ReplicaAction,
    ReplicaConfig, ReplicaEvent, StoredCopy, StoredStream,
};
use verge_store::{RetentionPolicy, Store, StoreError};
use verge_traffic::Reading;
use verge_traffic::window::{Aggregator, PushError, WindowConfig};

use crate::config::{ReplicationSection, StoreSection};
use crate::metrics::Metrics;

/// Readings appended and not yet acknowledged before the store says "busy".
const PENDING_READINGS_MAX: usize = 400_000;
/// How often replication gauges (lag, under-replicated streams) are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_millis(500);
/// How often catch-up progress is logged, in milliseconds.
const CATCHUP_LOG_EVERY_MS: u64 = 2_000;
/// The most records one query returns.
pub const QUERY_LIMIT_MAX: u32 = 100_000;
/// Batches of replication messages queued for one peer before more are dropped (and later
/// resent).
pub const OUTBOX_MESSAGES_MAX: usize = 1024;
/// How often the aggregation windows are closed against the clock: a quarter window, within
/// these bounds, so a window's predictions start soon after it ends and each batch holds one
/// window per approach.
/// The longest a prediction batch may be out before its windows are appended without it.
const IN_FLIGHT_MAX: Duration = Duration::from_secs(60);
/// Appended windows per aggregate stream awaiting their replicas' acknowledgement, kept for the
/// end-to-end latency; older ones are forgotten (a stream whose replicas stay away).
const WINDOWS_UNACKED_MAX: usize = 4_096;
const AGGREGATE_TICK_MIN: Duration = Duration::from_millis(25);
const AGGREGATE_TICK_MAX: Duration = Duration::from_millis(250);
/// Closed windows of one approach waiting to be appended (the stream is recovering after a
/// restart, or the store refused) before the oldest are dropped.
const WINDOWS_PENDING_MAX: usize = 10_000;

/// One bounded queue of batches of replication messages per peer, drained by the network actor.
pub type Outboxes = Arc<BTreeMap<NodeId, mpsc::Sender<Vec<ReplicationMessage>>>>;

/// Makes the per-peer replication queues: the senders for the store actor, the receivers for
/// the network actor's dialers.
pub fn outboxes<'a>(
    peers: impl IntoIterator<Item = &'a NodeId>,
) -> (
    Outboxes,
    BTreeMap<NodeId, mpsc::Receiver<Vec<ReplicationMessage>>>,
) {
    let mut tx = BTreeMap::new();
    let mut rx = BTreeMap::new();
    for p in peers {
        let (t, r) = mpsc::channel(OUTBOX_MESSAGES_MAX);
        tx.insert(p.clone(), t);
        rx.insert(p.clone(), r);
    }
    (Arc::new(tx), rx)
}

/// What became of an ingest.
#[derive(Debug, Clone, Default)]
pub struct IngestResult {
    /// Sequence numbers per stream, for what was acknowledged, with how many nodes hold it.
    pub acks: Vec<IngestAck>,
    /// Readings refused, with the reason.
    pub rejected: Vec<String>,
}

/// Why an ingest was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The replication cores are down (the store failed); nothing was appended.
    #[error("replication is not running (the store failed; see the node's log); retry")]
    NotRunning,
    /// Too many readings wait for acknowledgement; nothing was appended.
    #[error("the store is busy: too many readings waiting for acknowledgement; retry")]
    Busy,
    /// Appended, but not acknowledged: the readings may or may not survive, so sending them
    /// again may store them twice.
    #[error("{0}")]
    NotAcknowledged(String),
    /// A batch of an ordered source came before the one it follows (which the store refused);
    /// nothing was appended.
    #[error("sensor batch {got} came before batch {expected}; send them in order")]
    OutOfOrder {
        /// The batch the store takes next.
        expected: u64,
        /// The batch that came.
        got: u64,
    },
}

impl IngestError {
    /// Whether the readings were refused before anything was appended, so that sending them
    /// again cannot store them twice.
    pub fn nothing_appended(&self) -> bool {
        matches!(
            self,
            IngestError::NotRunning | IngestError::Busy | IngestError::OutOfOrder { .. }
        )
    }
}

/// Stores readings of this node's own sensors; answered once they are replicated as configured.
#[derive(Debug, Message)]
#[rtype(result = "Result<IngestResult, IngestError>")]
pub struct Ingest {
    /// Validated readings, in order per sensor.
    pub readings: Vec<Reading>,
    /// How far a replayed or simulated source had read when it produced them; the store's
    /// event clock moves there once they are in their windows. `None` for wall-clock sources.
    pub clock: Option<SourceClock>,
    /// The batch's number, for a source whose batches must be stored in order (a replay or a
    /// simulation, whose progress closes windows): the store takes batch n only after n - 1, so
    /// a batch refused and sent again never lands after a later one. `None`: any order.
    pub order: Option<u64>,
}

/// A replayed or simulated source's progress while it delivers no readings (a gap, or its end).
/// Sent only when none of its batches is in flight or held back.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SourceTime(pub SourceClock);

/// Flushes what is pending and stops the actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Lists streams.
#[derive(Debug, Message)]
#[rtype(result = "Vec<StreamView>")]
pub struct ListStreams;

/// From now on the store behaves as if its disk were full: its quota becomes the bytes it holds
/// now (or stays the configured one, if that is smaller), so retention drops the oldest raw
/// readings to make room for new ones. Answers the quota now in force, in bytes.
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct FillQuota;

/// Reads a range of a stream (own or copy).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(u64, Record)>, String>")]
pub struct ReadRange {
    /// The stream.
    pub stream: StreamId,
    /// First sequence number.
    pub from: u64,
    /// Last sequence number, inclusive.
    pub to: u64,
    /// The most records.
    pub limit: u32,
}

/// The membership table's verdict on a peer changed.
#[derive(Debug, Message, Clone)]
#[rtype(result = "()")]
pub struct PeerLiveness {
    /// The peer.
    pub peer: NodeId,
    /// Reachable (alive) or not (down).
    pub up: bool,
}

/// Replication messages from a peer, in the order sent; `from` is the node id of the
/// connection's certificate.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FromPeer {
    /// The sender.
    pub from: NodeId,
    /// The messages.
    pub msgs: Vec<ReplicationMessage>,
}

/// A producer waiting for its readings to be acknowledged.
#[derive(Debug)]
struct Producer {
    tx: oneshot::Sender<Result<IngestResult, String>>,
    result: IngestResult,
    /// Streams of `result.acks` not yet acknowledged.
    remaining: usize,
}

/// The replication cores, rebuilt from the store whenever a store call fails.
#[derive(Debug)]
struct Cores {
    owner: Owner,
    replica: Replica,
}

/// Owns the store and drives the replication cores.
#[derive(Debug)]
pub struct StoreActor {
    store: Arc<dyn Store>,
    me: NodeId,
    cfg: StoreSection,
    repl: ReplicationSection,
    metrics: Metrics,
    outboxes: Outboxes,
    /// `None` while the cores cannot be built (the store refuses); retried every tick.
    cores: Option<Cores>,
    origin: Instant,
    /// Peers the membership table sees as reachable, to feed a rebuilt core.
    up: BTreeSet<NodeId>,
    /// Streams appended to since the last flush started.
    dirty: Dirty,
    /// Whether a flush is running on a blocking thread.
    flushing: bool,
    /// Replication messages gathered per peer, queued as one batch when the mailbox is empty.
    sending: BTreeMap<NodeId, Vec<ReplicationMessage>>,
    producers: HashMap<u64, Producer>,
    next_producer: u64,
    /// Per stream: producers waiting, by the last sequence number they need acknowledged, with
    /// the index of their ack in `result.acks`.
    waiting: BTreeMap<StreamId, BTreeMap<u64, Vec<(u64, usize)>>>,
    waiting_readings: usize,
    /// Catch-up progress: when it was last logged, and each catching-up replica's lag then.
    progress_logged_ms: u64,
    catchup_lag: BTreeMap<NodeId, (u64, u64)>,
    /// (stream, replica) pairs announced as catching up and not yet caught up.
    catching_up: BTreeSet<(StreamId, NodeId)>,
    /// Counts rebuilds of the cores; an ingest that saw one must not wait on the new cores.
    generation: u64,
    /// The aggregation windows' configuration; the aggregator is built once the cores are (it
    /// resumes after the last window the aggregate streams hold).
    windows: WindowConfig,
    aggregator: Option<Aggregator>,
    /// Closed windows not yet appended, per aggregate stream.
    windows_pending: BTreeMap<StreamId, Vec<Record>>,
    /// Event time for the windows: the wall clock, or a replay's accelerated clock.
    clock: EventClock,
    /// Predicts each approach's next window as its windows close, if a model is configured.
    predictor: Option<crate::prediction::Predictor>,
    /// Where prediction batches' timing goes (the load peers hear).
    load: crate::offload::LoadGauge,
    /// The next batch number of the ordered sensor source ([`Ingest::order`]).
    next_order: Option<u64>,
    /// Runs prediction batches here or on a neighbour (on this runtime); without one they run
    /// inline.
    engine: Option<(crate::engine::Engine, tokio::runtime::Handle)>,
    /// Closed windows in the order they closed, waiting for their batch's predictions: windows
    /// are appended in this order, whichever batch comes back first.
    in_flight: VecDeque<InFlight>,
    next_batch: u64,
    /// This actor's address, for batches coming back.
    me_addr: Option<Addr<StoreActor>>,
    /// Per aggregate stream, appended windows not yet acknowledged by their replicas: the last
    /// sequence of an append and when its newest window was due to close (wall clock, ms).
    windows_unacked: BTreeMap<StreamId, VecDeque<(u64, i64)>>,
}

/// One batch of closed windows and, once known, their predictions.
#[derive(Debug)]
struct InFlight {
    id: u64,
    /// When the batch started.
    started: Instant,
    windows: Vec<verge_traffic::window::Window>,
    /// The rows sent to the engine, until it answers.
    batch: Option<crate::prediction::PreparedBatch>,
    predictions: Option<Vec<Option<crate::prediction::Prediction>>>,
}

impl StoreActor {
    /// A store actor for node `me`; replication messages go out through `outboxes`.
    pub fn new(
        store: Arc<dyn Store>,
        me: NodeId,
        cfg: StoreSection,
        repl: ReplicationSection,
        metrics: Metrics,
        outboxes: Outboxes,
    ) -> Self {
        Self {
            store,
            dirty: Dirty::new(),
            flushing: false,
            sending: BTreeMap::new(),
            me,
            cfg,
            repl,
            metrics,
            outboxes,
            cores: None,
            origin: Instant::now(),
            up: BTreeSet::new(),
            producers: HashMap::new(),
            next_producer: 0,
            waiting: BTreeMap::new(),
            waiting_readings: 0,
            progress_logged_ms: 0,
            catchup_lag: BTreeMap::new(),
            generation: 0,
            catching_up: BTreeSet::new(),
            windows: WindowConfig::default(),
            aggregator: None,
            windows_pending: BTreeMap::new(),
            clock: EventClock::default(),
            predictor: None,
            load: crate::offload::LoadGauge::default(),
            next_order: None,
            engine: None,
            in_flight: VecDeque::new(),
            next_batch: 0,
            me_addr: None,
            windows_unacked: BTreeMap::new(),
        }
    }

    /// Runs prediction batches through `engine` (here or on a neighbour), on the runtime `rt`.
    pub fn with_engine(
        mut self,
        engine: crate::engine::Engine,
        rt: tokio::runtime::Handle,
    ) -> Self {
        self.engine = Some((engine, rt));
        self
    }

    /// Records each prediction batch's timing in `load` (what the peers hear).
    pub fn with_load(mut self, load: crate::offload::LoadGauge) -> Self {
        self.load = load;
        self
    }

    /// Predicts each approach's next-window vehicle count as its windows close.
    pub fn with_predictor(mut self, predictor: crate::prediction::Predictor) -> Self {
        self.predictor = Some(predictor);
        self
    }

    /// Aggregates this node's readings in windows configured by `windows` (default: 10 s windows,
    /// one approach holding every detector).
    pub fn with_windows(mut self, windows: WindowConfig) -> Self {
        self.windows = windows;
        self
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn policy(&self) -> RetentionPolicy {
        let ms = |s: Option<u64>| s.map(|s| s.saturating_mul(1000));
        RetentionPolicy {
            raw_ms: ms(self.cfg.retention_raw_s),
            results_ms: ms(self.cfg.retention_results_s),
            aggregates_ms: ms(self.cfg.retention_aggregates_s),
            bytes_max: self.cfg.quota_bytes,
        }
    }

    /// Builds both cores from what the store holds, in a new epoch (step 1 of the driver).
    fn build_cores(&mut self) -> Result<(), String> {
        let epoch = self
            .store
            .bump_epoch()
            .map_err(|e| format!("cannot advance the node's epoch: {e}"))?;
        let infos = self.store.streams();
        let mut own: BTreeMap<StreamId, StoredStream> = BTreeMap::new();
        let mut copies = Vec::new();
        for i in infos {
            if i.id.owner == self.me {
                let holders = self.store.holders(&i.id);
                own.insert(
                    i.id.clone(),
                    StoredStream {
                        stream: i.id,
                        first_seq: i.first_seq,
                        head: i.head,
                        durable: i.durable_head,
                        holders,
                    },
                );
            } else {
                copies.push(StoredCopy {
                    stream: i.id,
                    head: i.head,
                    durable: i.durable_head,
                });
            }
        }
        // A stream whose first records reached a replica before this node's own disk has
        // holders but no records here: it must recover too, or its numbers would be reused.
        for id in self.store.streams_with_holders() {
            if id.owner == self.me && !own.contains_key(&id) {
                let holders = self.store.holders(&id);
                own.insert(
                    id.clone(),
                    StoredStream {
                        stream: id,
                        first_seq: 1,
                        head: 0,
                        durable: 0,
                        holders,
                    },
                );
            }
        }
        let now = self.now();
        let recovering = own.values().filter(|s| !s.holders.is_empty()).count();
        let owner = Owner::new(
            self.repl.owner_config(),
            self.me.clone(),
            epoch,
            now,
            own.into_values(),
        )
        .map_err(|e| format!("cannot start the owner role: {e}"))?;
        let replica = Replica::new(ReplicaConfig::default(), copies)
            .map_err(|e| format!("cannot start the replica role: {e}"))?;
        info!(
            epoch,
            recovering,
            copies = replica_count(&self.store, &self.me),
            "replication started"
        );
        self.cores = Some(Cores { owner, replica });
        let peers: Vec<NodeId> = self.up.iter().cloned().collect();
        for peer in peers {
            self.owner_event(OwnerEvent::PeerUp { peer });
        }
        Ok(())
    }

    /// Drops both cores and every waiting producer (told why), and builds the cores again from
    /// the store (step 7 of the driver): a rebuilt owner recovers exactly as after a crash.
    fn rebuild(&mut self, why: &str) {
        error!("replication restarts from the store: {why}");
        self.generation += 1;
        self.cores = None;
        self.fail_producers(&format!("not acknowledged: {why}"));
        if let Err(e) = self.build_cores() {
            error!("{e}; retrying");
        }
    }

    fn fail_producers(&mut self, message: &str) {
        self.waiting.clear();
        self.waiting_readings = 0;
        for (_, p) in self.producers.drain() {
            let _ = p.tx.send(Err(message.to_owned()));
        }
    }

    fn owner_event(&mut self, event: OwnerEvent) {
        let now = self.now();
        let Some(cores) = self.cores.as_mut() else {
            return;
        };
        let actions = cores.owner.handle(now, event);
        self.owner_actions(actions);
    }

    fn replica_event(&mut self, event: ReplicaEvent) {
        let Some(cores) = self.cores.as_mut() else {
            return;
        };
        let actions = cores.replica.handle(event);
        self.replica_actions(actions);
    }

    /// Gathers `msg` for `to`; it leaves with the rest of the batch when the mailbox is empty
    /// (`WhenIdle`) or a flush ends.
    fn send(&mut self, to: &NodeId, msg: ReplicationMessage) {
        let batch = self.sending.entry(to.clone()).or_default();
        batch.push(msg);
        if batch.len() == 1 {
            self.dirty.wake();
        }
    }

    /// Queues what was gathered for each peer as one batch.
    fn push_sends(&mut self) {
        for (to, batch) in std::mem::take(&mut self.sending) {
            let Some(outbox) = self.outboxes.get(&to) else {
                warn!(peer = %to, messages = batch.len(), "no connection is configured to peer {to}; replication messages dropped");
                continue;
            };
            let messages = batch.len();
            if outbox.try_send(batch).is_err() {
                for _ in 0..messages {
                    self.metrics.replication_dropped(to.as_str());
                }
                debug!(peer = %to, messages, "replication queue full; the messages will be resent");
            }
        }
    }

    /// Reads `count` records of `stream` from `first_seq`, in order and without gaps.
    fn read_run(
        &self,
        stream: &StreamId,
        first_seq: u64,
        count: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let last = first_seq.saturating_add(count.saturating_sub(1));
        let got = self.store.read(stream, first_seq, last, count as usize)?;
        let mut records = Vec::with_capacity(got.len());
        for (i, (seq, r)) in got.into_iter().enumerate() {
            if seq != first_seq + i as u64 {
                break;
            }
            records.push(r);
        }
        Ok(records)
    }

    /// Carries out an owner core's actions in order (step 6 of the driver).
    fn owner_actions(&mut self, actions: Vec<OwnerAction>) {
        for action in actions {
            match action {
                OwnerAction::PersistHolders { stream, holders } => {
                    if let Err(e) = self.store.set_holders(&stream, &holders) {
                        self.rebuild(&format!("recording the holders of {stream}: {e}"));
                        return;
                    }
                }
                OwnerAction::SendAppend {
                    to,
                    stream,
                    epoch,
                    first_seq,
                    count,
                    start_seq,
                } => match self.read_run(&stream, first_seq, count) {
                    Ok(records) if !records.is_empty() => {
                        self.metrics
                            .replication_sent(to.as_str(), records.len() as u64);
                        let append = Append {
                            stream,
                            epoch,
                            first_seq,
                            start_seq,
                            records,
                        };
                        self.send(&to, ToReplica::Append(append).into());
                    }
                    Ok(_) => debug!(%stream, first_seq, "nothing to send: records already dropped"),
                    Err(e) => error!(%stream, first_seq, "cannot read records to replicate: {e}"),
                },
                OwnerAction::Send { to, msg } => self.send(&to, msg.into()),
                OwnerAction::StoreRecovered {
                    stream,
                    first_seq,
                    records,
                } => {
                    if let Err(e) = self.store.append(&stream, first_seq, &records) {
                        self.rebuild(&format!("storing records of {stream} fetched back: {e}"));
                        return;
                    }
                    self.dirty.insert(stream);
                }
                OwnerAction::Recovered {
                    stream,
                    head,
                    fetched,
                } => info!(%stream, head, fetched, "stream recovered; taking appends again"),
                OwnerAction::AckProducer {
                    stream,
                    up_to,
                    replicas,
                    degraded,
                } => self.ack_producers(&stream, up_to, replicas, degraded),
                OwnerAction::MarkUnderReplicated { stream, live } => {
                    warn!(%stream, live, wanted = self.repl.replicas, "stream is under-replicated");
                }
                OwnerAction::MarkReplicated { stream } => {
                    info!(%stream, "stream is fully replicated again");
                }
                OwnerAction::ReplicaAdded { stream, replica } => {
                    info!(%stream, %replica, "replica added");
                }
                OwnerAction::ReplicaRemoved { stream, replica } => {
                    info!(%stream, %replica, "replica released");
                }
                OwnerAction::CatchingUp {
                    stream,
                    replica,
                    from_seq,
                    to_seq,
                } => {
                    if self.catching_up.insert((stream.clone(), replica.clone())) {
                        self.metrics.replication_catchup(true);
                    }
                    info!(%stream, %replica, from_seq, to_seq, behind = to_seq.saturating_sub(from_seq), "replica catching up");
                }
                OwnerAction::CaughtUp { stream, replica } => {
                    // Said also when a new replica first comes into step; only a catch-up that
                    // was announced counts as finished.
                    if self.catching_up.remove(&(stream.clone(), replica.clone())) {
                        self.metrics.replication_catchup(false);
                        info!(%stream, %replica, "replica caught up");
                    } else {
                        debug!(%stream, %replica, "replica in step");
                    }
                }
                OwnerAction::Refused { error } => self.refused(&error),
            }
        }
    }

    /// Carries out a replica core's actions in order.
    fn replica_actions(&mut self, actions: Vec<ReplicaAction>) {
        for action in actions {
            match action {
                ReplicaAction::Reset { stream, next_seq } => {
                    warn!(%stream, next_seq, "the owner no longer retains what this copy lacks; the copy restarts");
                    if let Err(e) = self.store.reset(&stream, next_seq) {
                        self.rebuild(&format!("restarting the copy of {stream}: {e}"));
                        return;
                    }
                }
                ReplicaAction::Store {
                    stream,
                    first_seq,
                    records,
                } => match self.store.append(&stream, first_seq, &records) {
                    Ok(_) => {
                        self.metrics
                            .replication_received(stream.owner.as_str(), records.len() as u64);
                        self.dirty.insert(stream);
                    }
                    Err(e) => {
                        self.rebuild(&format!("storing the copy of {stream}: {e}"));
                        return;
                    }
                },
                ReplicaAction::Send { to, msg } => self.send(&to, msg.into()),
                ReplicaAction::SendFetched {
                    to,
                    stream,
                    from_seq,
                    count,
                    head,
                } => {
                    let last = from_seq.saturating_add(u64::from(count).saturating_sub(1));
                    match self.store.read(&stream, from_seq, last, count as usize) {
                        Ok(got) => {
                            let first_seq = got.first().map_or(from_seq, |(s, _)| *s);
                            let records = got
                                .into_iter()
                                .enumerate()
                                .take_while(|(i, (s, _))| *s == first_seq + *i as u64)
                                .map(|(_, (_, r))| r)
                                .collect();
                            let reply = ToOwner::FetchReply {
                                stream,
                                first_seq,
                                records,
                                head,
                            };
                            self.send(&to, reply.into());
                        }
                        Err(e) => {
                            error!(%stream, from_seq, "cannot read records an owner fetches back: {e}")
                        }
                    }
                }
                ReplicaAction::Refused { error } => self.refused(&error),
            }
        }
    }

    fn refused(&self, error: &ProtocolError) {
        let kind = match error {
            ProtocolError::NotOwner { .. } => "not_owner",
            ProtocolError::NotMine { .. } => "not_mine",
            ProtocolError::TooManyRecords { .. } => "too_many_records",
            ProtocolError::ZeroSeq { .. } => "zero_seq",
            ProtocolError::TooManyStreams { .. } => "too_many_streams",
        };
        self.metrics.replication_refused(kind);
        warn!("refused a replication message: {error}");
    }

    fn ack_producers(&mut self, stream: &StreamId, up_to: u64, replicas: usize, degraded: bool) {
        if let Some(unacked) = self.windows_unacked.get_mut(stream) {
            let now = now_ms();
            while let Some(&(_, due_ms)) = unacked.front().filter(|(seq, _)| *seq <= up_to) {
                unacked.pop_front();
                if let Some((engine, _)) = &self.engine {
                    engine.window_acknowledged(Duration::from_millis(
                        u64::try_from(now.saturating_sub(due_ms)).unwrap_or(0),
                    ));
                }
            }
        }
        let Some(by_seq) = self.waiting.get_mut(stream) else {
            return;
        };
        let rest = by_seq.split_off(&(up_to + 1));
        let done = std::mem::replace(by_seq, rest);
        if by_seq.is_empty() {
            self.waiting.remove(stream);
        }
        for (_, list) in done {
            for (id, idx) in list {
                let Some(p) = self.producers.get_mut(&id) else {
                    continue;
                };
                if let Some(ack) = p.result.acks.get_mut(idx) {
                    ack.replicas = replicas as u32;
                    ack.degraded = degraded;
                    let n = ack.last_seq - ack.first_seq + 1;
                    self.waiting_readings = self.waiting_readings.saturating_sub(n as usize);
                    self.metrics.readings_stored(n);
                    self.metrics.readings_acknowledged(degraded, n);
                }
                p.remaining = p.remaining.saturating_sub(1);
                if p.remaining == 0
                    && let Some(p) = self.producers.remove(&id)
                {
                    // A producer that went away no longer needs its answer.
                    let _ = p.tx.send(Ok(p.result));
                }
            }
        }
    }

    /// Group commit: starts one flush, on a blocking thread, of everything appended since the
    /// last one started, unless one is running. The actor goes on appending meanwhile; when the
    /// flush ends, the cores hear how far each stream it covered is durable (step 3 of the
    /// driver), and the next flush starts at once if more was appended.
    fn start_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.dirty.is_empty() {
            return;
        }
        self.flushing = true;
        let streams = self.dirty.take();
        let store = self.store.clone();
        let flush = tokio::task::spawn_blocking(move || store.flush());
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(flush).map(move |res, act, ctx| {
                act.flushing = false;
                let ok = act.flushed(
                    match res {
                        Ok(flushed) => flushed.map_err(|e| e.to_string()),
                        Err(e) => Err(format!("the flush thread failed: {e}")),
                    },
                    streams,
                );
                act.push_sends();
                // After a failure the timer retries, so a broken disk is not hammered.
                if ok {
                    act.start_flush(ctx);
                }
            }),
        );
    }

    /// Flushes on the actor's own thread, blocking it: for shutdown.
    fn flush_blocking(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let streams = self.dirty.take();
        let res = self.store.flush().map_err(|e| e.to_string());
        self.flushed(res, streams);
        self.push_sends();
    }

    /// Tells the cores what a flush made durable; on failure keeps `streams` dirty and rebuilds
    /// the cores. Returns whether it succeeded.
    fn flushed(&mut self, res: Result<(), String>, streams: BTreeSet<StreamId>) -> bool {
        match res {
            Ok(()) => {
                self.metrics.store_flush(true);
                for stream in streams {
                    let up_to = self.store.durable_head(&stream);
                    if stream.owner == self.me {
                        self.owner_event(OwnerEvent::LocalDurable { stream, up_to });
                    } else {
                        self.replica_event(ReplicaEvent::LocalDurable { stream, up_to });
                    }
                }
                true
            }
            Err(e) => {
                self.metrics.store_flush(false);
                self.dirty.restore(streams);
                self.rebuild(&format!("flushing the store failed: {e}"));
                false
            }
        }
    }

    fn tick(&mut self) {
        if self.cores.is_none() {
            if let Err(e) = self.build_cores() {
                error!("{e}; retrying");
            }
            return;
        }
        self.owner_event(OwnerEvent::Tick);
    }

    fn refresh_gauges(&mut self) {
        let Some(cores) = &self.cores else {
            return;
        };
        let mut catching_up: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut lag: BTreeMap<&str, u64> = BTreeMap::new();
        let (mut under, mut recovering) = (0, 0);
        let statuses = cores.owner.statuses();
        for s in &statuses {
            under += usize::from(s.under_replicated);
            recovering += usize::from(s.phase == Phase::Recovering);
            for r in &s.replicas {
                *lag.entry(r.node.as_str()).or_default() += r.lag;
                if r.up && !r.in_step {
                    *catching_up.entry(r.node.clone()).or_default() += r.lag;
                }
            }
        }
        for peer in self.outboxes.keys() {
            self.metrics
                .set_replication_lag(peer.as_str(), lag.get(peer.as_str()).copied().unwrap_or(0));
        }
        self.metrics.set_stream_states(under, recovering);
        // Catch-up progress, every few seconds while a reachable replica is behind.
        let now = self.now();
        if !catching_up.is_empty() && now >= self.progress_logged_ms + CATCHUP_LOG_EVERY_MS {
            for (peer, behind) in &catching_up {
                let rate = self.catchup_lag.get(peer).map(|(was, at)| {
                    let secs = (now.saturating_sub(*at)) as f64 / 1000.0;
                    was.saturating_sub(*behind) as f64 / secs.max(0.001)
                });
                match rate {
                    Some(rate) => {
                        info!(replica = %peer, behind, rate_per_s = rate as u64, "catch-up in progress")
                    }
                    None => info!(replica = %peer, behind, "catch-up in progress"),
                }
            }
            self.catchup_lag = catching_up
                .into_iter()
                .map(|(p, b)| (p, (b, now)))
                .collect();
            self.progress_logged_ms = now;
        } else if catching_up.is_empty() {
            self.catchup_lag.clear();
        }
    }

    fn enforce_retention(&mut self) {
        let now = now_ms();
        match self.store.enforce(&self.policy(), now) {
            Ok(report) => {
                let mut dropped_any = false;
                for kind in [StreamKind::Raw, StreamKind::Results, StreamKind::Aggregates] {
                    let d = report.dropped(kind);
                    if d.by_age > 0 || d.by_quota > 0 {
                        dropped_any = true;
                        self.metrics
                            .retention_dropped(kind.as_str(), d.by_age, d.by_quota);
                        warn!(
                            kind = kind.as_str(),
                            by_age = d.by_age,
                            by_quota = d.by_quota,
                            bytes = d.bytes,
                            "retention dropped records"
                        );
                    }
                }
                for damaged in &report.damaged {
                    error!("retention skipped damaged data: {damaged}");
                }
                if dropped_any {
                    for info in self.store.streams() {
                        if info.id.owner == self.me {
                            self.owner_event(OwnerEvent::Retained {
                                stream: info.id,
                                first_seq: info.first_seq,
                            });
                        }
                    }
                }
            }
            Err(e) => error!("enforcing retention failed: {e}"),
        }
    }

    fn append_own(
        &mut self,
        stream: &StreamId,
        records: &[Record],
        result: &mut IngestResult,
    ) -> Option<u64> {
        let now = self.now();
        let cores = self.cores.as_mut()?;
        let seq = match cores.owner.next_seq(stream) {
            Ok(seq) => seq,
            Err(e) => {
                let kind = match e {
                    AppendError::Recovering { .. } => "recovering",
                    AppendError::Backpressure { .. } => "busy",
                    _ => "store",
                };
                self.metrics.readings_rejected(kind, records.len() as u64);
                result
                    .rejected
                    .push(format!("{} readings not stored: {e}", records.len()));
                return None;
            }
        };
        let outcome = match self.store.append(stream, seq, records) {
            Ok(o) => o,
            Err(e @ StoreError::Columns { .. }) => {
                self.metrics
                    .readings_rejected("columns", records.len() as u64);
                result.rejected.push(e.to_string());
                return None;
            }
            Err(e) => {
                self.metrics
                    .readings_rejected("store", records.len() as u64);
                error!("appending to {stream} failed: {e}");
                result.rejected.push(format!("{stream}: {e}"));
                return None;
            }
        };
        self.dirty.insert(stream.clone());
        let appended = outcome.appended as u64;
        match cores.owner.appended(now, stream, seq, appended) {
            Ok(actions) => {
                self.owner_actions(actions);
                Some(seq)
            }
            Err(e) => {
                // The store and the core disagree about the head: a bug, but not one to crash
                // on. Rebuilding from the store makes them agree again.
                self.rebuild(&format!(
                    "the owner core refused an append to {stream}: {e}"
                ));
                None
            }
        }
    }
}

/// Aggregation: every stored reading goes into its approach's window; closed windows are appended
/// to `<node>/aggregates/<approach>`, which replicates like any stream of this node.
impl StoreActor {
    /// Builds the aggregator once the cores are up, resuming after the newest window stored.
    fn aggregator(&mut self) -> Option<&mut Aggregator> {
        if self.aggregator.is_none() {
            self.cores.as_ref()?;
            let window_ms = i64::try_from(self.windows.window_ms).unwrap_or(i64::MAX);
            let resume_from = self
                .store
                .streams()
                .into_iter()
                .filter(|s| s.id.owner == self.me && s.id.kind == StreamKind::Aggregates)
                .filter_map(|s| {
                    let last = self.store.read(&s.id, s.head, s.head, 1).ok()?;
                    last.first().map(|(_, r)| r.ts_ms.saturating_add(window_ms))
                })
                .max();
            match Aggregator::resume(self.windows.clone(), resume_from) {
                Ok(a) => {
                    info!(
                        approaches = ?a.approaches(),
                        window_ms = self.windows.window_ms,
                        resume_from_ms = ?resume_from,
                        "aggregation started"
                    );
                    self.aggregator = Some(a);
                }
                Err(e) => {
                    // The config was validated at load; this cannot happen short of a bug.
                    error!("aggregation is off: {e}");
                    return None;
                }
            }
        }
        self.aggregator.as_mut()
    }

    /// Adds stored readings to their windows.
    fn aggregate(&mut self, readings: &[Reading]) {
        let metrics = self.metrics.clone();
        let Some(agg) = self.aggregator() else {
            return;
        };
        let (mut late, mut ahead) = (0u64, 0u64);
        for r in readings {
            match agg.push(r) {
                Ok(()) => {}
                Err(PushError::Late { .. }) => late += 1,
                Err(PushError::TooFarAhead { .. }) => ahead += 1,
                Err(e) => debug!("reading left out of its window: {e}"),
            }
        }
        if late > 0 {
            metrics.gateway().windows(0, late);
        }
        if ahead > 0 {
            metrics.readings_rejected("window_ahead", ahead);
            warn!(
                readings = ahead,
                "readings stamped too far ahead of this node's clock were stored but left out of the aggregation windows"
            );
        }
    }

    /// Seeds the history of `closed` windows' approaches that have none from their stored
    /// aggregate streams (after a restart).
    fn seed_history(&mut self, closed: &[verge_traffic::window::Window]) {
        let Some(predictor) = self.predictor.as_mut() else {
            return;
        };
        for w in closed {
            if !predictor.needs_history(&w.approach) {
                continue;
            }
            let Ok(stream) =
                StreamId::new(self.me.clone(), StreamKind::Aggregates, w.approach.as_str())
            else {
                continue;
            };
            let head = self.store.head(&stream);
            let from = head
                .saturating_sub(verge_infer::features::K as u64 - 1)
                .max(1);
            let stored = if head == 0 {
                Vec::new()
            } else {
                self.store
                    .read(&stream, from, head, verge_infer::features::K)
                    .unwrap_or_default()
            };
            predictor.seed(&w.approach, stored.into_iter().map(|(_, r)| r).collect());
        }
    }

    /// Starts the prediction batch of `closed` windows: on the engine (here or on a neighbour),
    /// or inline without one.
    fn start_batch(&mut self, closed: Vec<verge_traffic::window::Window>) {
        self.seed_history(&closed);
        let id = self.next_batch;
        self.next_batch += 1;
        let prepared = self.predictor.as_mut().and_then(|p| p.prepare(&closed));
        let mut job = InFlight {
            id,
            started: Instant::now(),
            windows: closed,
            batch: None,
            predictions: None,
        };
        match (prepared, &self.engine, &self.me_addr) {
            (Some((batch, model)), Some((engine, rt)), Some(addr)) => {
                engine.shelve(&model);
                let (engine, addr, rows, made) = (
                    engine.clone(),
                    addr.clone(),
                    batch.rows.clone(),
                    Instant::now(),
                );
                rt.spawn(async move {
                    let ran = engine.run(model, rows, made).await;
                    addr.do_send(BatchRan { id, ran });
                });
                job.batch = Some(batch);
            }
            (Some((batch, model)), _, _) => {
                let started = Instant::now();
                let outcome = model.predict(&batch.rows).map_err(|e| e.to_string());
                self.load.batch(batch.len(), started.elapsed());
                job.predictions = self.predictor.as_ref().map(|p| p.finish(batch, outcome));
            }
            (None, ..) => {}
        }
        if job.batch.is_none() && job.predictions.is_none() {
            job.predictions = Some(vec![None; job.windows.len()]);
        }
        self.in_flight.push_back(job);
    }

    /// On the wall clock, windows close the moment the watermark passes their end (end plus the
    /// allowed lateness): a timer for that instant, so a window does not wait for the next tick.
    fn schedule_close(&self, ctx: &mut Context<Self>) {
        let w = i64::try_from(self.windows.window_ms)
            .unwrap_or(i64::MAX)
            .max(1);
        let lateness = i64::try_from(self.windows.allowed_lateness_ms).unwrap_or(0);
        let delay = w - (now_ms() - lateness).rem_euclid(w) + 1;
        ctx.run_later(
            Duration::from_millis(u64::try_from(delay).unwrap_or(1)),
            |act, ctx| {
                if !act.clock.is_paced() {
                    act.close_windows();
                }
                act.schedule_close(ctx);
            },
        );
    }

    /// Closes the windows the clock has passed and starts their predictions; appends the windows
    /// whose predictions are in (and any still pending).
    fn close_windows(&mut self) {
        let now = self.clock.now_ms();
        let Some(agg) = self.aggregator() else {
            return;
        };
        let closed = agg.advance(now);
        if !closed.is_empty() {
            self.start_batch(closed);
        }
        self.append_windows();
    }

    /// Queues a closed window's record, and its prediction's, for appending.
    fn queue_window(
        &mut self,
        w: &verge_traffic::window::Window,
        predicted: Option<crate::prediction::Prediction>,
    ) {
        let mut records = vec![(
            StreamKind::Aggregates,
            w.to_record(predicted.map(|p| p.value)),
        )];
        if let Some(p) = predicted {
            // The prediction is for the window that starts where this one ends.
            records.push((
                StreamKind::Results,
                Record {
                    ts_ms: w.end_ms,
                    values: p.values(),
                },
            ));
        }
        for (kind, record) in records {
            match StreamId::new(self.me.clone(), kind, w.approach.as_str()) {
                Ok(stream) => {
                    let pending = self.windows_pending.entry(stream).or_default();
                    pending.push(record);
                    if pending.len() > WINDOWS_PENDING_MAX {
                        let excess = pending.len() - WINDOWS_PENDING_MAX;
                        pending.drain(..excess);
                        error!(
                            approach = %w.approach,
                            dropped = excess,
                            kind = kind.as_str(),
                            "windows dropped: the approach's stream has refused appends for too long"
                        );
                    }
                }
                Err(e) => error!("approach `{}` makes no stream id: {e}", w.approach),
            }
        }
    }

    /// Queues the windows of the oldest batches whose predictions are in, in order, and appends
    /// every stream's queued windows that can be.
    fn append_windows(&mut self) {
        // The engine always answers; should a batch still be out after this long, its windows
        // go out without predictions rather than hold back every later window.
        if let Some(job) = self
            .in_flight
            .front_mut()
            .filter(|j| j.predictions.is_none() && j.started.elapsed() > IN_FLIGHT_MAX)
        {
            error!(
                windows = job.windows.len(),
                "a prediction batch got no answer in {IN_FLIGHT_MAX:?}; its windows are appended without predictions"
            );
            job.batch = None;
            job.predictions = Some(vec![None; job.windows.len()]);
        }
        while self
            .in_flight
            .front()
            .is_some_and(|j| j.predictions.is_some())
        {
            let Some(job) = self.in_flight.pop_front() else {
                break;
            };
            let predictions = job.predictions.unwrap_or_default();
            for (i, w) in job.windows.iter().enumerate() {
                self.queue_window(w, predictions.get(i).copied().flatten());
            }
        }
        let streams: Vec<StreamId> = self.windows_pending.keys().cloned().collect();
        for stream in streams {
            // A recovering or busy stream keeps its windows for the next tick.
            let ready = self
                .cores
                .as_ref()
                .is_some_and(|c| c.owner.next_seq(&stream).is_ok());
            if !ready {
                continue;
            }
            let Some(records) = self.windows_pending.remove(&stream) else {
                continue;
            };
            let mut result = IngestResult::default();
            if let Some(first) = self.append_own(&stream, &records, &mut result) {
                if stream.kind == StreamKind::Aggregates {
                    self.metrics.gateway().windows(records.len() as u64, 0);
                    // End to end, from when the newest window could close (its end plus the
                    // allowed lateness, on the wall clock) to its record, prediction included,
                    // acknowledged by its replicas. Only for sources on the wall clock.
                    if !self.clock.is_paced()
                        && let Some(newest) = records.last()
                    {
                        let due = newest.ts_ms.saturating_add(
                            i64::try_from(
                                self.windows.window_ms + self.windows.allowed_lateness_ms,
                            )
                            .unwrap_or(i64::MAX),
                        );
                        let last = first + records.len() as u64 - 1;
                        let unacked = self.windows_unacked.entry(stream.clone()).or_default();
                        unacked.push_back((last, due));
                        if unacked.len() > WINDOWS_UNACKED_MAX {
                            unacked.pop_front();
                        }
                    }
                }
                debug!(%stream, records = records.len(), "windows appended");
            } else {
                warn!(%stream, why = ?result.rejected, "aggregation windows not appended yet; retrying");
                self.windows_pending.insert(stream, records);
            }
        }
    }
}

fn replica_count(store: &Arc<dyn Store>, me: &NodeId) -> usize {
    store.streams().iter().filter(|s| s.id.owner != *me).count()
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Streams appended to since the last flush started, and the wake-up of [`WhenIdle`].
#[derive(Debug)]
struct Dirty {
    streams: BTreeSet<StreamId>,
    /// Wakes [`WhenIdle`] when a stream is added or replication messages are gathered.
    waker: Option<Waker>,
}

impl Dirty {
    fn new() -> Self {
        Self {
            streams: BTreeSet::new(),
            waker: None,
        }
    }

    fn insert(&mut self, stream: StreamId) {
        if self.streams.insert(stream) {
            self.wake();
        }
    }

    /// Puts back the streams of a failed flush, without a wake-up: the timer retries them, so
    /// a broken disk is not hammered.
    fn restore(&mut self, streams: BTreeSet<StreamId>) {
        self.streams.extend(streams);
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    fn take(&mut self) -> BTreeSet<StreamId> {
        std::mem::take(&mut self.streams)
    }
}

/// What the store actor does once it has handled every message waiting in its mailbox (actix
/// polls an actor's spawned futures only after that): queue the replication messages gathered
/// meanwhile, one batch per peer, then start a flush of what was appended, unless one is
/// running. While a flush runs, appends go on and the next flush covers them: one flush at a
/// time, as many appends per flush as arrived during the last one, and no ingest waits behind a
/// sync. Copies of other nodes' streams are flushed the same way: the appends of one producer's
/// request reach a replica as one batch, so flushing at once does not split them over two
/// flushes.
struct WhenIdle;

impl ActorFuture<StoreActor> for WhenIdle {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut StoreActor,
        ctx: &mut Context<StoreActor>,
        task: &mut task::Context<'_>,
    ) -> Poll<()> {
        act.push_sends();
        act.start_flush(ctx);
        if !act
            .dirty
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(task.waker()))
        {
            act.dirty.waker = Some(task.waker().clone());
        }
        Poll::Pending
    }
}

impl Actor for StoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.me_addr = Some(ctx.address());
        if let Err(e) = self.build_cores() {
            error!("{e}; retrying");
        }
        ctx.spawn(WhenIdle);
        ctx.run_interval(
            Duration::from_millis(self.cfg.flush_interval_ms),
            |act, ctx| act.start_flush(ctx),
        );
        ctx.run_interval(
            Duration::from_millis((self.repl.resend_after_ms / 4).clamp(10, 250)),
            |act, _| act.tick(),
        );
        ctx.run_interval(GAUGE_INTERVAL, |act, _| act.refresh_gauges());
        let tick = (Duration::from_millis(self.windows.window_ms) / 4)
            .clamp(AGGREGATE_TICK_MIN, AGGREGATE_TICK_MAX);
        ctx.run_interval(tick, |act, _| act.close_windows());
        self.schedule_close(ctx);
        ctx.run_interval(
            Duration::from_millis(self.cfg.retention_interval_ms),
            |act, _| act.enforce_retention(),
        );
    }
}

impl Handler<Shutdown> for StoreActor {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        // Closed windows whose predictions are still out are appended without them (a window
        // lost here would never close again); whatever was appended gets its flush before the
        // process goes; producers still waiting for replicas are told their readings were not
        // acknowledged.
        for job in self
            .in_flight
            .iter_mut()
            .filter(|j| j.predictions.is_none())
        {
            job.batch = None;
            job.predictions = Some(vec![None; job.windows.len()]);
        }
        self.append_windows();
        self.flush_blocking();
        self.fail_producers("the node is shutting down before the readings were replicated");
        ctx.stop();
    }
}

impl Handler<FillQuota> for StoreActor {
    type Result = u64;
    fn handle(&mut self, _: FillQuota, _: &mut Self::Context) -> u64 {
        let held: u64 = self.store.streams().iter().map(|i| i.bytes).sum();
        // Never loosen a quota the config already sets tighter.
        let quota = self.cfg.quota_bytes.map_or(held, |q| q.min(held));
        self.cfg.quota_bytes = Some(quota);
        warn!(
            quota_bytes = quota,
            held_bytes = held,
            "injected full disk: the store's quota is now what it holds"
        );
        quota
    }
}

impl Handler<PeerLiveness> for StoreActor {
    type Result = ();
    fn handle(&mut self, msg: PeerLiveness, _: &mut Self::Context) {
        if msg.up {
            self.up.insert(msg.peer.clone());
            self.owner_event(OwnerEvent::PeerUp { peer: msg.peer });
        } else {
            self.up.remove(&msg.peer);
            self.owner_event(OwnerEvent::PeerDown { peer: msg.peer });
        }
    }
}

impl Handler<FromPeer> for StoreActor {
    type Result = ();
    fn handle(&mut self, msg: FromPeer, _: &mut Self::Context) {
        for m in msg.msgs {
            match m {
                ReplicationMessage::ToReplica(m) => self.replica_event(ReplicaEvent::Received {
                    from: msg.from.clone(),
                    msg: m,
                }),
                ReplicationMessage::ToOwner(m) => self.owner_event(OwnerEvent::Received {
                    from: msg.from.clone(),
                    msg: m,
                }),
            }
        }
    }
}

impl Handler<Ingest> for StoreActor {
    type Result = ResponseFuture<Result<IngestResult, IngestError>>;

    fn handle(&mut self, msg: Ingest, _: &mut Self::Context) -> Self::Result {
        let Ingest {
            readings,
            clock,
            order,
        } = msg;
        if self.cores.is_none() {
            self.metrics
                .readings_rejected("store", readings.len() as u64);
            return Box::pin(async { Err(IngestError::NotRunning) });
        }
        if self.waiting_readings + readings.len() > PENDING_READINGS_MAX {
            self.metrics
                .readings_rejected("busy", readings.len() as u64);
            return Box::pin(async { Err(IngestError::Busy) });
        }
        if let Some(got) = order {
            match self.next_order {
                Some(expected) if got != expected => {
                    return Box::pin(async move { Err(IngestError::OutOfOrder { expected, got }) });
                }
                _ => self.next_order = Some(got + 1),
            }
        }
        let mut result = IngestResult::default();
        let mut by_stream: BTreeMap<StreamId, Vec<Reading>> = BTreeMap::new();
        for r in readings {
            match StreamId::new(self.me.clone(), StreamKind::Raw, r.sensor.as_str()) {
                Ok(stream) => by_stream.entry(stream).or_default().push(r),
                Err(e) => {
                    self.metrics.readings_rejected("sensor_id", 1);
                    result.rejected.push(e.to_string());
                }
            }
        }
        if self.clock.is_paced() {
            // A replay's clock runs ahead of the 250 ms tick: close what it has passed, once
            // for the whole batch. Closing between two of its streams would close windows on
            // the first stream's latest readings before the second's earlier ones are in.
            self.close_windows();
        }
        if let Some(at) = clock
            && let Some(agg) = self.aggregator()
        {
            // The batch's readings are stamped up to the source's progress, however far past the
            // windows' clock a slow delivery has left them.
            agg.expect_through(at.event_ms);
        }
        let id = self.next_producer;
        self.next_producer += 1;
        let generation = self.generation;
        let mut appended = Vec::new();
        for (stream, readings) in by_stream {
            let records: Vec<Record> = readings.iter().map(Reading::to_record).collect();
            if let Some(first_seq) = self.append_own(&stream, &records, &mut result) {
                let last_seq = self.store.head(&stream);
                appended.push((stream, first_seq, last_seq));
                self.aggregate(&readings);
            }
            if self.generation != generation {
                // The cores were rebuilt from the store: what was appended is not acknowledged
                // by them, so this producer must not wait for them.
                return Box::pin(async {
                    Err(IngestError::NotAcknowledged(
                        "not acknowledged: the store failed while appending (see the node's log); retry".to_owned(),
                    ))
                });
            }
        }
        if let Some(at) = clock {
            // The batch is in its windows: event time may move past it.
            self.clock.advance(now_ms(), at);
        }
        let (tx, rx) = oneshot::channel();
        for (stream, first_seq, last_seq) in appended {
            let idx = result.acks.len();
            self.waiting_readings += (last_seq + 1 - first_seq) as usize;
            self.waiting
                .entry(stream.clone())
                .or_default()
                .entry(last_seq)
                .or_default()
                .push((id, idx));
            result.acks.push(IngestAck {
                stream,
                first_seq,
                last_seq,
                replicas: 0,
                degraded: false,
            });
        }
        let remaining = result.acks.len();
        if remaining == 0 {
            let _ = tx.send(Ok(result));
        } else {
            self.producers.insert(
                id,
                Producer {
                    tx,
                    result,
                    remaining,
                },
            );
        }
        Box::pin(async move {
            match rx.await {
                Ok(result) => result.map_err(IngestError::NotAcknowledged),
                Err(_) => Err(IngestError::NotAcknowledged(
                    "the store stopped before the readings were acknowledged".to_owned(),
                )),
            }
        })
    }
}

/// Installs a deployed model into the predictor (see [`crate::models`]); answers whether it
/// predicts from now on.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct InstallModel {
    /// The loaded, checked model.
    pub model: std::sync::Arc<verge_infer::Model>,
}

impl Handler<InstallModel> for StoreActor {
    type Result = bool;
    fn handle(&mut self, msg: InstallModel, _: &mut Self::Context) -> bool {
        if let Some((engine, _)) = &self.engine {
            engine.shelve(&msg.model);
        }
        self.predictor
            .as_mut()
            .is_some_and(|p| p.install(msg.model))
    }
}

/// A prediction batch came back from the engine.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct BatchRan {
    id: u64,
    ran: crate::engine::Ran,
}

impl Handler<BatchRan> for StoreActor {
    type Result = ();
    fn handle(&mut self, msg: BatchRan, _: &mut Self::Context) {
        let Some(job) = self.in_flight.iter_mut().find(|j| j.id == msg.id) else {
            return;
        };
        let by = msg.ran.computed_by.as_ref().map_or(0, NodeId::tag);
        job.predictions = Some(match (job.batch.take(), self.predictor.as_ref()) {
            (Some(batch), Some(p)) => {
                let mut predictions = p.finish(batch, msg.ran.outcome);
                for p in predictions.iter_mut().flatten() {
                    p.computed_by = by;
                }
                predictions
            }
            _ => vec![None; job.windows.len()],
        });
        self.append_windows();
    }
}

/// New records of an upstream neighbour's results stream, in order (see [`crate::sharing`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpstreamPredictions {
    /// The stream.
    pub stream: StreamId,
    /// `(sequence, record)` pairs.
    pub records: Vec<(u64, Record)>,
}

impl Handler<UpstreamPredictions> for StoreActor {
    type Result = ();
    fn handle(&mut self, msg: UpstreamPredictions, _: &mut Self::Context) {
        if let Some(p) = self.predictor.as_mut() {
            p.upstream(&msg.stream, msg.records);
        }
    }
}

impl Handler<SourceTime> for StoreActor {
    type Result = ();
    fn handle(&mut self, msg: SourceTime, _: &mut Self::Context) {
        self.clock.advance(now_ms(), msg.0);
        self.close_windows();
    }
}

impl Handler<ListStreams> for StoreActor {
    type Result = MessageResult<ListStreams>;
    fn handle(&mut self, _: ListStreams, _: &mut Self::Context) -> Self::Result {
        let owner = self.cores.as_ref().map(|c| &c.owner);
        MessageResult(
            self.store
                .streams()
                .into_iter()
                .map(|s| {
                    let role = match owner.and_then(|o| o.status(&s.id)) {
                        Some(st) => StreamRole::Owner {
                            acked: st.acked,
                            under_replicated: st.under_replicated,
                            recovering: st.phase == Phase::Recovering,
                            replicas: st
                                .replicas
                                .into_iter()
                                .map(|r| ReplicaView {
                                    node: r.node,
                                    up: r.up,
                                    hwm: r.durable,
                                    lag: r.lag,
                                })
                                .collect(),
                        },
                        None if s.id.owner == self.me => StreamRole::Owner {
                            acked: 0,
                            under_replicated: false,
                            recovering: true,
                            replicas: Vec::new(),
                        },
                        None => StreamRole::Copy,
                    };
                    StreamView {
                        id: s.id,
                        first_seq: s.first_seq,
                        head: s.head,
                        durable_head: s.durable_head,
                        columns: s.columns as u32,
                        bytes: s.bytes,
                        role,
                    }
                })
                .collect(),
        )
    }
}

impl Handler<ReadRange> for StoreActor {
    type Result = Result<Vec<(u64, Record)>, String>;
    fn handle(&mut self, msg: ReadRange, _: &mut Self::Context) -> Self::Result {
        let limit = msg.limit.min(QUERY_LIMIT_MAX) as usize;
        self.store
            .read(&msg.stream, msg.from, msg.to, limit)
            .map_err(|e| e.to_string())
    }
}

/// Event time: the wall clock, unless a replayed or simulated source sets it. Such a source says
/// with each batch how far it has read ([`SourceClock`]); the store moves the clock there once
/// the batch is in its windows, so a window never closes before the readings that belong to it
/// arrive, however long the machine takes to deliver them. Between batches the clock stands
/// still; once the source has ended it runs on at the source's speed, so the last windows close.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventClock(Option<Pace>);

#[derive(Debug, Clone, Copy)]
struct Pace {
    wall_ms: i64,
    event_ms: i64,
    speed: f64,
    /// The source has ended: event time runs on from `event_ms` at `speed`.
    free: bool,
}

/// How far a replayed or simulated source has read: every reading it delivers later is stamped
/// after `event_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceClock {
    /// The source's event time, milliseconds since the Unix epoch.
    pub event_ms: i64,
    /// Simulated seconds per wall-clock second.
    pub speed: f64,
    /// The source has ended (nothing more will come).
    pub finished: bool,
}

impl EventClock {
    /// The source has delivered everything up to `at.event_ms` (at wall time `wall_ms`). Event
    /// time never goes backwards: an earlier time than the clock shows is ignored.
    pub fn advance(&mut self, wall_ms: i64, at: SourceClock) {
        let shown = self.0.map(|p| p.at(wall_ms));
        self.0 = Some(Pace {
            wall_ms,
            event_ms: shown.map_or(at.event_ms, |s| s.max(at.event_ms)),
            speed: at.speed,
            free: at.finished,
        });
    }

    /// Whether a source sets the pace.
    pub fn is_paced(&self) -> bool {
        self.0.is_some()
    }

    /// The current event time, milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        let wall = now_ms();
        self.0.map_or(wall, |p| p.at(wall))
    }
}

impl Pace {
    fn at(&self, wall_ms: i64) -> i64 {
        if !self.free {
            return self.event_ms;
        }
        let elapsed = wall_ms.saturating_sub(self.wall_ms) as f64 * self.speed;
        self.event_ms.saturating_add(elapsed as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(event_ms: i64, finished: bool) -> SourceClock {
        SourceClock {
            event_ms,
            speed: 100.0,
            finished,
        }
    }

    #[test]
    fn event_time_waits_for_the_source_until_it_ends() {
        let mut clock = EventClock::default();
        assert!(!clock.is_paced());
        clock.advance(1_000, at(50_000, false));
        assert!(clock.is_paced());
        let p = clock.0.expect("paced");
        // However late the next batch comes, the windows wait for it.
        assert_eq!(p.at(1_000), 50_000);
        assert_eq!(p.at(61_000), 50_000);
        // Never backwards.
        clock.advance(2_000, at(40_000, false));
        let p = clock.0.expect("paced");
        assert_eq!(p.at(2_000), 50_000);
        // Once the source has ended, event time runs on at its speed.
        clock.advance(3_000, at(60_000, true));
        let p = clock.0.expect("paced");
        assert_eq!(p.at(3_000), 60_000);
        assert_eq!(p.at(3_010), 61_000);
    }
}
