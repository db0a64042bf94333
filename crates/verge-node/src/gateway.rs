//! The control plane and the gateway's cloud sync, as this node runs them.
//!
//! [`start_control`] starts `verge-control`'s Raft over the node's QUIC connections
//! ([`QuicTransport`]: a control payload rides a [`PeerRequest::Control`] on the connection this
//! node dialed, and the peer hands it to [`Control::serve`]). [`spawn`] starts the gateway task,
//! which follows the leader: on the node that leads, it adds the configured non-voters as
//! learners, hands the gateway role on when the node is drained, and drives a
//! [`verge_sync::Syncer`] (see "Driving the core" there): it reads every node's aggregate streams
//! from the local store or a live replica, keeps the in-flight batches in a durable outbox (one
//! fsynced file per batch under `data_dir/outbox`), posts them to the cloud, and advances the
//! cursors through Raft once the cloud has acknowledged. Decisions are the core's; this module
//! only carries them out.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::Addr;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};
use verge_cloud::{CloudClient, PostError, PostOutcome};
use verge_control::{
    Command, Control, ControlError, ControlState, ControlTransport, Refusal, Response,
    TransportError,
};
use verge_proto::admin::{GatewayView, SyncStreamView, SyncView};
use verge_proto::peer::{PeerReply, PeerRequest};
use verge_proto::{NodeId, Record, StreamId, StreamKind};
use verge_sync::{Batch, BatchKey, CloudOutcome, SyncAction, SyncConfig, SyncEvent, Syncer};

use crate::config::{CloudSection, NodeConfig};
use crate::links::{LinkError, PeerLinks};
use crate::metrics::Metrics;
use crate::storage::{ListStreams, ReadRange, StoreActor};

/// How long one control-plane call to a peer may take.
const CONTROL_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the gateway asks where the aggregate streams are and how far they go.
const HEADS_EVERY: Duration = Duration::from_millis(200);
/// How long a peer may take to serve a read.
const PEER_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer may take to list its streams.
const PEER_STREAMS_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a drained gateway retries handing the role on.
const DRAIN_RETRY: Duration = Duration::from_secs(2);
/// A (re)started node does not start elections of its own until it has heard from another node's
/// leadership, or for this long: openraft 0.9 has no pre-vote, so a restarted voter that campaigns
/// before the leader's heartbeats reach it would depose a healthy gateway. (It still votes, and a
/// leader that dies meanwhile is replaced by the others.)
const STARTUP_GRACE: Duration = Duration::from_millis(1_500);
/// The longest the task sleeps without a deadline.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// Carries control-plane payloads over the node's QUIC connections.
#[derive(Debug, Clone)]
pub struct QuicTransport {
    links: PeerLinks,
}

impl ControlTransport for QuicTransport {
    fn call(
        &self,
        to: &NodeId,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>> {
        let links = self.links.clone();
        let to = to.clone();
        Box::pin(async move {
            let req = PeerRequest::Control(Bytes::from(payload));
            match links.request(&to, req, CONTROL_CALL_TIMEOUT).await {
                Ok(PeerReply::Control(bytes)) => Ok(bytes.to_vec()),
                Ok(PeerReply::Error(detail)) => Err(TransportError::Failed { peer: to, detail }),
                Ok(_) => Err(TransportError::Failed {
                    peer: to,
                    detail: "answered a control call with something else".to_owned(),
                }),
                Err(e @ (LinkError::Down(_) | LinkError::Unknown(_))) => {
                    Err(TransportError::Unreachable {
                        peer: to,
                        detail: e.to_string(),
                    })
                }
                Err(e) => Err(TransportError::Failed {
                    peer: to,
                    detail: e.to_string(),
                }),
            }
        })
    }
}

/// Starts the control plane if `[control] voters` is configured.
///
/// # Errors
///
/// [`ControlError`] if its store under `data_dir/control` cannot be opened or Raft refuses to
/// start.
pub async fn start_control(
    cfg: &NodeConfig,
    links: &PeerLinks,
) -> Result<Option<Control>, ControlError> {
    if cfg.control.voters.is_empty() {
        return Ok(None);
    }
    let transport = Arc::new(QuicTransport {
        links: links.clone(),
    });
    let control = Control::start(
        cfg.id.clone(),
        &cfg.data_dir.join("control"),
        cfg.control.raft.clone(),
        cfg.control.voters.clone(),
        transport,
    )
    .await?;
    info!(voters = ?cfg.control.voters.iter().map(NodeId::as_str).collect::<Vec<_>>(), "control plane started");
    Ok(Some(control))
}

/// What `verge ctl sync` reads: the gateway task's latest view of the sync.
#[derive(Debug, Clone, Default)]
pub struct SyncBoard(Arc<Mutex<Option<SyncView>>>);

impl SyncBoard {
    /// The latest view.
    pub fn get(&self) -> Option<SyncView> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, v: SyncView) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(v);
    }
}

/// The control plane as this node sees it, for `verge ctl gateway`.
pub fn gateway_view(cfg: &NodeConfig, control: Option<&Control>) -> GatewayView {
    let addr_of = |id: &NodeId| -> Option<String> {
        if *id == cfg.id {
            Some(cfg.listen.to_string())
        } else {
            cfg.peers
                .iter()
                .find(|p| p.id == *id)
                .map(|p| p.addr.to_string())
        }
    };
    let Some(control) = control else {
        return GatewayView {
            node: cfg.id.clone(),
            role: "off".to_owned(),
            gateway: None,
            gateway_addr: None,
            term: 0,
            since_ms: None,
            voters: Vec::new(),
            learners: Vec::new(),
            drained: Vec::new(),
            applied_index: None,
        };
    };
    let status = control.status();
    let leader = control.leader();
    let state = control.state();
    GatewayView {
        node: cfg.id.clone(),
        role: format!("{:?}", status.role).to_lowercase(),
        gateway_addr: leader.as_ref().and_then(|l| addr_of(&l.id)),
        gateway: leader.as_ref().map(|l| l.id.clone()),
        term: status.term,
        since_ms: leader.map(|l| l.since.elapsed().as_millis() as u64),
        voters: state.voters.into_iter().collect(),
        learners: state.learners.into_iter().collect(),
        drained: state.drained.into_iter().collect(),
        applied_index: status.applied_index,
    }
}

/// Everything the gateway task works with.
#[derive(Debug)]
pub struct GatewayDeps {
    /// The node's configuration.
    pub cfg: NodeConfig,
    /// The control plane.
    pub control: Control,
    /// The local store.
    pub store: Addr<StoreActor>,
    /// Requests to peers.
    pub links: PeerLinks,
    /// Metrics.
    pub metrics: Metrics,
    /// Where `verge ctl sync` reads from.
    pub board: SyncBoard,
}

/// Why the sync cannot run on this node.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The cloud client could not be built (CA file, URL).
    #[error("cloud (key cloud): {0}")]
    Cloud(String),
    /// The outbox directory cannot be used.
    #[error("outbox {path}: {source}")]
    Outbox {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The sync settings were refused.
    #[error("cloud sync settings: {0}")]
    Config(String),
}

/// Starts the gateway task.
///
/// # Errors
///
/// [`GatewayError`] if the cloud client or the outbox cannot be set up: the node refuses to
/// start rather than run a gateway that cannot sync.
pub fn spawn(deps: GatewayDeps) -> Result<(), GatewayError> {
    let cloud = match &deps.cfg.cloud {
        Some(c) => Some(CloudLink::new(c, &deps.cfg)?),
        None => None,
    };
    let outbox = Outbox::open(&deps.cfg.data_dir.join("outbox"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let learners: Vec<NodeId> = deps
        .cfg
        .peers
        .iter()
        .map(|p| p.id.clone())
        .filter(|p| !deps.cfg.control.voters.contains(p))
        .collect();
    let mut task = Task {
        me: deps.cfg.id.clone(),
        voters: deps.cfg.control.voters.clone(),
        learners,
        control: deps.control,
        store: deps.store,
        links: deps.links,
        metrics: deps.metrics,
        board: deps.board,
        cloud,
        outbox,
        syncer: None,
        tx,
        origin: Instant::now(),
        holders: BTreeMap::new(),
        led: None,
        last_leader: None,
        drain_tried: None,
        settled: false,
        drained: false,
        confirming: None,
        persisting: BTreeMap::new(),
        cursor_queue: BTreeMap::new(),
        cursor_inflight: false,
    };
    task.control.set_electable(false);
    tokio::spawn(async move { task.run(rx).await });
    Ok(())
}

/// The cloud as the gateway reaches it.
#[derive(Debug)]
struct CloudLink {
    client: Arc<CloudClient>,
    sync: SyncConfig,
    url: String,
}

impl CloudLink {
    fn new(c: &CloudSection, cfg: &NodeConfig) -> Result<Self, GatewayError> {
        let token = match &c.token_file {
            Some(path) => Some(
                verge_cloud::read_token_file(path)
                    .map_err(|e| GatewayError::Cloud(format!("token_file: {e}")))?,
            ),
            None => None,
        };
        let client = CloudClient::new(&c.url, &c.ca, token, Duration::from_millis(c.timeout_ms))
            .map_err(|e| GatewayError::Cloud(e.to_string()))?;
        let sync = c.sync_config(&cfg.id);
        sync.validate()
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        Ok(Self {
            client: Arc::new(client),
            sync,
            url: c.url.clone(),
        })
    }
}

/// Where a stream can be read: this node's store or a peer, with the highest sequence number
/// durable there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    peer: Option<NodeId>,
    first_seq: u64,
    durable_head: u64,
}

/// What the task hears from the tasks it spawned.
#[derive(Debug)]
enum Input {
    /// For the sync core.
    Sync(SyncEvent),
    /// Leadership in `term` confirmed by a quorum, with the state applied as of then.
    Confirmed { term: u64, state: ControlState },
    /// Leadership in `term` could not be confirmed (yet).
    Unconfirmed { term: u64 },
    /// A cursor proposal ended: one answer per cursor it carried.
    CursorsDone(Vec<SyncEvent>),
    /// A batch could not be written to the outbox.
    OutboxFailed { key: BatchKey, error: String },
    /// The aggregate streams one node holds (`None`: this node's store), or `None` if it did
    /// not answer.
    Held {
        peer: Option<NodeId>,
        held: Option<Vec<(StreamId, u64, u64)>>,
    },
}

struct Task {
    me: NodeId,
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
    control: Control,
    store: Addr<StoreActor>,
    links: PeerLinks,
    metrics: Metrics,
    board: SyncBoard,
    cloud: Option<CloudLink>,
    outbox: Outbox,
    syncer: Option<Syncer>,
    tx: mpsc::UnboundedSender<Input>,
    origin: Instant,
    holders: BTreeMap<StreamId, Vec<Holder>>,
    /// The term this node leads and has told the core about.
    led: Option<u64>,
    last_leader: Option<(NodeId, u64)>,
    drain_tried: Option<Instant>,
    /// The term whose leadership is being confirmed.
    confirming: Option<u64>,
    /// Cursor advances waiting to be proposed: stream -> (term, up to).
    cursor_queue: BTreeMap<StreamId, (u64, u64)>,
    /// Whether a cursor proposal is in flight.
    cursor_inflight: bool,
    /// Outbox writes under way, by batch: each says whether it became durable.
    persisting: BTreeMap<BatchKey, oneshot::Receiver<bool>>,
    /// Whether the startup grace ([`STARTUP_GRACE`]) is over.
    settled: bool,
    drained: bool,
}

impl Task {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        let mut leader_rx = self.control.watch_leader();
        let mut state_rx = self.control.watch_state();
        self.rebuild().await;
        let mut heads = tokio::time::interval(HEADS_EVERY);
        heads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.on_leader().await;
        let grace = tokio::time::sleep(STARTUP_GRACE);
        tokio::pin!(grace);

        loop {
            let now = self.now();
            let wait = self
                .syncer
                .as_ref()
                .and_then(|s| s.next_deadline(now))
                .map_or(IDLE_TICK, |d| {
                    Duration::from_millis(d.saturating_sub(now)).min(IDLE_TICK)
                });
            tokio::select! {
                r = leader_rx.changed() => {
                    if r.is_err() {
                        info!("the control plane stopped; the gateway task ends");
                        return;
                    }
                    self.on_leader().await;
                }
                r = state_rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let state = state_rx.borrow_and_update().clone();
                    self.on_state(&state).await;
                }
                _ = &mut grace, if !self.settled => self.settle(),
                _ = heads.tick() => {
                    // A leader whose confirmation failed tries again.
                    if self.control.is_leader() && self.led.is_none() {
                        let term = self.control.term();
                        self.confirm(term);
                    }
                    self.ask_holders();
                }
                Some(input) = rx.recv() => self.on_input(input).await,
                _ = tokio::time::sleep(wait) => self.feed(SyncEvent::Tick).await,
            }
        }
    }

    /// (Re)builds the sync core from the outbox and the applied cursors, as after a crash.
    async fn rebuild(&mut self) {
        self.syncer = None;
        self.led = None;
        self.persisting.clear();
        self.cursor_queue.clear();
        let Some(cloud) = &self.cloud else {
            return;
        };
        // Any seed will do: it only spreads retries.
        let seed = self.origin.elapsed().as_nanos() as u64 ^ verge_control::raft_id(&self.me);
        let mut syncer = match Syncer::new(cloud.sync.clone(), seed) {
            Ok(s) => s,
            Err(e) => {
                error!("the cloud sync cannot start: {e}");
                return;
            }
        };
        let batches = match self.outbox.load() {
            Ok(b) => b,
            Err(e) => {
                error!("the cloud sync cannot read its outbox: {e}; retrying");
                return;
            }
        };
        if !batches.is_empty() {
            info!(
                batches = batches.len(),
                "resuming the cloud sync with batches from the outbox"
            );
        }
        let now = self.now();
        let mut actions = syncer.handle(now, SyncEvent::OutboxLoaded { batches });
        actions.extend(syncer.handle(
            now,
            SyncEvent::Cursors {
                cursors: self.control.state().cursors,
            },
        ));
        self.syncer = Some(syncer);
        self.carry_out(actions).await;
    }

    async fn feed(&mut self, event: SyncEvent) {
        if self.syncer.is_none() && self.cloud.is_some() {
            self.rebuild().await;
        }
        let now = self.now();
        let Some(syncer) = self.syncer.as_mut() else {
            return;
        };
        let actions = syncer.handle(now, event);
        self.carry_out(actions).await;
        self.publish();
    }

    /// Ends the startup grace: from now on this node may start elections (unless drained).
    fn settle(&mut self) {
        if !self.settled {
            self.settled = true;
            self.control.set_electable(!self.drained);
        }
    }

    async fn on_leader(&mut self) {
        let leader = self.control.leader();
        // Heard from a leader other than a stale self (a restarted leader believes it still
        // leads until it hears otherwise): this node is in touch, the grace can end.
        if leader.as_ref().is_some_and(|l| l.id != self.me) {
            self.settle();
        }
        let (term, leads) = match &leader {
            Some(l) => (l.term, l.id == self.me),
            None => (self.control.term(), false),
        };
        self.metrics.gateway().set_leadership(term, leads);
        let seen = leader.as_ref().map(|l| (l.id.clone(), l.term));
        if seen.is_some() && seen != self.last_leader {
            self.metrics.gateway().leader_changed();
            if let Some(l) = &leader {
                info!(gateway = %l.id, term = l.term, "gateway elected");
            }
            self.last_leader = seen;
        }
        if leads {
            self.confirm(term);
        } else if self.led.take().is_some() {
            info!(term, "this node is no longer the gateway");
            self.feed(SyncEvent::LostLeadership).await;
        }
    }

    /// Confirms leadership of `term` with a quorum (and applies everything committed) before
    /// syncing, so the cursors the core starts from are current; then adds the learners. Called
    /// again on every heads tick until it succeeds.
    fn confirm(&mut self, term: u64) {
        if self.led == Some(term) || self.confirming == Some(term) {
            return;
        }
        self.confirming = Some(term);
        let control = self.control.clone();
        let tx = self.tx.clone();
        let learners = self.learners.clone();
        tokio::spawn(async move {
            match control.linearizable_state().await {
                Ok(state) => {
                    let _ = tx.send(Input::Confirmed { term, state });
                }
                Err(e) => {
                    debug!("leadership in term {term} not confirmed yet: {e}");
                    let _ = tx.send(Input::Unconfirmed { term });
                    return;
                }
            }
            for l in learners {
                if let Err(e) = control.add_learner(l.clone()).await {
                    warn!(learner = %l, "cannot add learner: {e}");
                }
            }
        });
    }

    async fn on_state(&mut self, state: &ControlState) {
        let drained = state.is_drained(&self.me);
        self.drained = drained;
        if self.settled {
            self.control.set_electable(!drained);
        }
        if drained && self.control.is_leader() {
            self.hand_over(state);
        }
        self.feed(SyncEvent::Cursors {
            cursors: state.cursors.clone(),
        })
        .await;
    }

    /// A drained gateway hands the role to an undrained voter.
    fn hand_over(&mut self, state: &ControlState) {
        if self.drain_tried.is_some_and(|t| t.elapsed() < DRAIN_RETRY) {
            return;
        }
        self.drain_tried = Some(Instant::now());
        let Some(target) = self
            .voters
            .iter()
            .find(|v| **v != self.me && !state.is_drained(v))
            .cloned()
        else {
            warn!(
                "this node is drained but every other voter is drained too: it stays the gateway"
            );
            return;
        };
        let control = self.control.clone();
        tokio::spawn(async move {
            info!(to = %target, "drained: handing the gateway role on");
            if let Err(e) = control.transfer_to(&target).await {
                warn!(to = %target, "handing the gateway role on failed: {e}; retrying");
            }
        });
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Sync(ev) => self.feed(ev).await,
            Input::CursorsDone(events) => {
                self.cursor_inflight = false;
                for ev in events {
                    self.feed(ev).await;
                }
                self.flush_cursors();
            }
            Input::OutboxFailed { key, error } => {
                error!(batch = %key, "cannot write the outbox: {error}; restarting the sync from the outbox and cursors");
                self.metrics.gateway().warning("outbox_write");
                self.rebuild().await;
                if let Some(term) = self.control.is_leader().then(|| self.control.term()) {
                    self.confirm(term);
                }
            }
            Input::Unconfirmed { term } => {
                if self.confirming == Some(term) {
                    self.confirming = None;
                }
            }
            Input::Confirmed { term, state } => {
                if self.confirming == Some(term) {
                    self.confirming = None;
                }
                if !self.control.is_leader() || self.control.term() != term {
                    return;
                }
                if state.is_drained(&self.me) {
                    self.hand_over(&state);
                }
                if self.led == Some(term) {
                    return;
                }
                self.led = Some(term);
                info!(term, "this node is the gateway");
                if self.cloud.is_none() {
                    warn!(
                        "this node is the gateway but has no [cloud] configured: nothing is synced"
                    );
                    return;
                }
                self.feed(SyncEvent::Cursors {
                    cursors: state.cursors,
                })
                .await;
                self.feed(SyncEvent::BecameLeader { term }).await;
                self.ask_holders();
            }
            Input::Held { peer, held } => self.on_held(peer, held).await,
        }
    }

    /// Asks the local store and every peer which aggregate streams they hold; each answer is
    /// fed as it comes, so a dead peer's timeout holds up nobody.
    fn ask_holders(&self) {
        if self.led.is_none() || self.syncer.is_none() {
            return;
        }
        let store = self.store.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let held = match store.send(ListStreams).await {
                Ok(views) => Some(
                    views
                        .into_iter()
                        .filter(|v| v.id.kind == StreamKind::Aggregates)
                        .map(|v| (v.id, v.first_seq, v.durable_head))
                        .collect(),
                ),
                Err(_) => None,
            };
            let _ = tx.send(Input::Held { peer: None, held });
        });
        for peer in self.links.peers().cloned() {
            let links = self.links.clone();
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let req = PeerRequest::Streams {
                    kind: Some(StreamKind::Aggregates),
                };
                let held = match links.request(&peer, req, PEER_STREAMS_TIMEOUT).await {
                    Ok(PeerReply::Streams(streams)) => Some(
                        streams
                            .into_iter()
                            .map(|s| (s.id, s.first_seq, s.durable_head))
                            .collect(),
                    ),
                    _ => None,
                };
                let _ = tx.send(Input::Held {
                    peer: Some(peer),
                    held,
                });
            });
        }
    }

    /// Records what one node holds and feeds the heads it changes.
    async fn on_held(&mut self, peer: Option<NodeId>, held: Option<Vec<(StreamId, u64, u64)>>) {
        for hs in self.holders.values_mut() {
            hs.retain(|h| h.peer != peer);
        }
        let mut changed = BTreeMap::new();
        for (stream, first_seq, durable_head) in held.unwrap_or_default() {
            let hs = self.holders.entry(stream.clone()).or_default();
            hs.push(Holder {
                peer: peer.clone(),
                first_seq,
                durable_head,
            });
            // Local first, then the holders that have the most.
            hs.sort_by_key(|h| (h.peer.is_some(), std::cmp::Reverse(h.durable_head)));
            changed.insert(stream, hs.iter().map(|h| h.durable_head).max().unwrap_or(0));
        }
        if !changed.is_empty() {
            self.feed(SyncEvent::StreamHeads { heads: changed }).await;
        }
    }

    async fn carry_out(&mut self, actions: Vec<SyncAction>) {
        for action in actions {
            match action {
                SyncAction::Read {
                    stream,
                    from_seq,
                    max,
                } => self.read(stream, from_seq, max),
                SyncAction::PersistOutbox { batch } => {
                    // Written (and fsynced) in a task of its own, so batches of different
                    // streams are written at once; the batch's post waits for it.
                    let outbox = self.outbox.clone();
                    let key = batch.key();
                    let (done, written) = oneshot::channel();
                    self.persisting.insert(key.clone(), written);
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let result = tokio::task::spawn_blocking(move || outbox.put(&batch)).await;
                        let failure = match result {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e.to_string()),
                            Err(e) => Some(e.to_string()),
                        };
                        let _ = done.send(failure.is_none());
                        if let Some(error) = failure {
                            let _ = tx.send(Input::OutboxFailed { key, error });
                        }
                    });
                }
                SyncAction::Post { batch } => {
                    let written = self.persisting.remove(&batch.key());
                    self.post(batch, written);
                }
                SyncAction::DropOutbox { key } => {
                    if let Err(e) = self.outbox.remove(&key) {
                        // It comes back after a restart, is posted again and deduplicated.
                        warn!(batch = %key, "cannot remove a synced batch from the outbox: {e}");
                    }
                }
                SyncAction::ProposeCursor {
                    term,
                    stream,
                    up_to,
                } => self.propose(term, stream, up_to),
                SyncAction::Acked {
                    key,
                    term,
                    new_windows,
                    duplicate_windows,
                    repeat,
                } => {
                    debug!(batch = %key, term, new_windows, duplicate_windows, repeat, "the cloud acknowledged a batch");
                    self.metrics
                        .gateway()
                        .batch(if repeat { "duplicate" } else { "stored" });
                    self.metrics
                        .gateway()
                        .windows_synced(new_windows, duplicate_windows);
                }
                SyncAction::Backoff {
                    stream,
                    retry,
                    failures,
                    delay_ms,
                    reason,
                } => {
                    let what = match retry {
                        verge_sync::RetryOf::Post => "posting",
                        verge_sync::RetryOf::Read => "reading",
                    };
                    warn!(%stream, failures, delay_ms, "{what} failed: {reason}; retrying");
                }
                SyncAction::Rejected {
                    key,
                    message,
                    retry_ms,
                } => {
                    error!(batch = %key, retry_ms, "the cloud rejected a batch: {message}; the stream is held (check [cloud] token and limits)");
                }
                SyncAction::Fenced { term, highest } => {
                    warn!(
                        term,
                        highest,
                        "the cloud fenced this gateway: it has accepted a newer term; posting stops"
                    );
                }
                SyncAction::Warning(w) => {
                    let kind = format!("{w:?}");
                    let kind = kind
                        .split(|c: char| !c.is_alphanumeric())
                        .next()
                        .unwrap_or("other");
                    warn!("cloud sync: {w}");
                    self.metrics.gateway().warning(kind);
                }
            }
        }
    }

    fn read(&self, stream: StreamId, from_seq: u64, max: u64) {
        let holders = self.holders.get(&stream).cloned().unwrap_or_default();
        let store = self.store.clone();
        let links = self.links.clone();
        let tx = self.tx.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut last_error = "no live node holds the stream".to_owned();
            for h in holders
                .iter()
                .filter(|h| h.durable_head >= from_seq && h.first_seq <= from_seq)
            {
                let to = h
                    .durable_head
                    .min(from_seq.saturating_add(max.saturating_sub(1)));
                let limit = u32::try_from(to - from_seq + 1).unwrap_or(u32::MAX);
                let got = match &h.peer {
                    None => store
                        .send(ReadRange {
                            stream: stream.clone(),
                            from: from_seq,
                            to,
                            limit,
                        })
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r),
                    Some(peer) => {
                        let req = PeerRequest::Read {
                            stream: stream.clone(),
                            from: from_seq,
                            to,
                            limit,
                        };
                        match links.request(peer, req, PEER_REQUEST_TIMEOUT).await {
                            Ok(PeerReply::Records(r)) => Ok(r),
                            Ok(PeerReply::Error(e)) => Err(format!("{peer}: {e}")),
                            Ok(_) => Err(format!("{peer} answered a read with something else")),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                };
                match got {
                    Ok(records) => {
                        let records = dense_from(from_seq, records);
                        if records.is_empty() {
                            last_error = "the holder returned nothing".to_owned();
                            continue;
                        }
                        metrics
                            .gateway()
                            .read(if h.peer.is_some() { "peer" } else { "local" });
                        let _ = tx.send(Input::Sync(SyncEvent::Read {
                            stream,
                            first_seq: from_seq,
                            records,
                        }));
                        return;
                    }
                    Err(e) => last_error = e,
                }
            }
            metrics.gateway().read("failed");
            let _ = tx.send(Input::Sync(SyncEvent::ReadFailed {
                stream,
                error: last_error,
            }));
        });
    }

    /// Posts `batch` once `written` (its outbox write, if one is under way) says it is durable.
    fn post(&self, batch: Batch, written: Option<oneshot::Receiver<bool>>) {
        let Some(cloud) = &self.cloud else {
            return;
        };
        let client = cloud.client.clone();
        let tx = self.tx.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Some(written) = written
                && written.await != Ok(true)
            {
                // Not durable: never posted. The core is rebuilt from the outbox.
                return;
            }
            let key = batch.key();
            let term = batch.term;
            let records: Vec<Record> = batch.windows.iter().map(|(_, r)| r.clone()).collect();
            let body = verge_cloud::Batch::from_records(
                &batch.cluster,
                batch.term,
                &batch.gateway,
                &batch.stream,
                batch.first_seq,
                &records,
            );
            let outcome = match client.post_batch(&body).await {
                Ok(PostOutcome::Stored { stored, duplicates }) => {
                    CloudOutcome::Stored { stored, duplicates }
                }
                Ok(PostOutcome::Duplicate) => CloudOutcome::Duplicate,
                Err(PostError::Stale { highest, .. }) => {
                    metrics.gateway().batch("stale");
                    CloudOutcome::Stale { highest }
                }
                Err(PostError::Rejected { status, message }) => {
                    metrics.gateway().batch("rejected");
                    CloudOutcome::Rejected(format!("HTTP {status}: {message}"))
                }
                Err(PostError::Unavailable(e)) => {
                    metrics.gateway().batch("unavailable");
                    CloudOutcome::Unavailable(e)
                }
            };
            let _ = tx.send(Input::Sync(SyncEvent::CloudAnswer { key, term, outcome }));
        });
    }

    /// Queues a cursor advance; [`Task::flush_cursors`] proposes the queue as one command.
    fn propose(&mut self, term: u64, stream: StreamId, up_to: u64) {
        let entry = self.cursor_queue.entry(stream).or_insert((term, up_to));
        if entry.0 == term {
            entry.1 = entry.1.max(up_to);
        } else {
            *entry = (term, up_to);
        }
        self.flush_cursors();
    }

    /// Proposes every queued cursor advance of one term as one Raft command, unless one is in
    /// flight: advances that arrive meanwhile go in the next (group commit), so the log grows by
    /// one entry per commit round rather than one per acknowledged batch.
    fn flush_cursors(&mut self) {
        if self.cursor_inflight || self.cursor_queue.is_empty() {
            return;
        }
        let Some(term) = self.cursor_queue.values().map(|(t, _)| *t).next() else {
            return;
        };
        let mut cursors = Vec::new();
        self.cursor_queue.retain(|stream, (t, up_to)| {
            if *t == term && cursors.len() < verge_control::CURSORS_PER_COMMAND_MAX {
                cursors.push((stream.clone(), *up_to));
                false
            } else {
                true
            }
        });
        self.cursor_inflight = true;
        let control = self.control.clone();
        let tx = self.tx.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let cmd = Command::AdvanceCursors {
                term,
                cursors: cursors.clone(),
            };
            // All or nothing: a refusal names the cursors already further on (committed by
            // someone), and the rest did not move.
            let (ahead, failed): (Vec<StreamId>, Option<String>) = match control.propose(cmd).await
            {
                Ok(Response::Cursors { .. }) => (Vec::new(), None),
                Ok(Response::Refused(Refusal::CursorsBehind(behind)))
                | Err(ControlError::Invalid(Refusal::CursorsBehind(behind))) => (
                    behind.into_iter().map(|b| b.stream).collect(),
                    Some("another cursor in the same command was behind".to_owned()),
                ),
                Ok(Response::Refused(r)) => (Vec::new(), Some(r.to_string())),
                Ok(other) => (Vec::new(), Some(format!("unexpected answer {other:?}"))),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let events = cursors
                .into_iter()
                .map(|(stream, up_to)| match &failed {
                    Some(error) if !ahead.contains(&stream) => {
                        metrics.gateway().cursor("failed");
                        SyncEvent::CursorProposeFailed {
                            stream,
                            up_to,
                            error: error.clone(),
                        }
                    }
                    _ => {
                        metrics.gateway().cursor("committed");
                        SyncEvent::CursorCommitted { stream, up_to }
                    }
                })
                .collect();
            let _ = tx.send(Input::CursorsDone(events));
        });
    }

    /// Publishes the sync's state for `verge ctl sync` and the metrics.
    fn publish(&self) {
        let Some(syncer) = &self.syncer else {
            return;
        };
        let st = syncer.status(self.now());
        let (syncing, term, note) = match st.role {
            verge_sync::Role::Leader { term } => (true, term, None),
            verge_sync::Role::Follower => (
                false,
                self.control.term(),
                Some("this node is not the gateway".to_owned()),
            ),
            verge_sync::Role::Fenced { term, highest } => (
                false,
                term,
                Some(format!(
                    "fenced: the cloud has accepted term {highest} from a newer gateway"
                )),
            ),
        };
        self.metrics.gateway().sync_state(
            if syncing { st.backlog } else { 0 },
            st.outbox_batches as u64,
            st.cloud.reachable,
        );
        self.board.set(SyncView {
            node: self.me.clone(),
            syncing,
            note,
            term,
            cloud_url: self.cloud.as_ref().map(|c| c.url.clone()),
            cloud_reachable: st.cloud.reachable,
            cloud_error: st.cloud.last_error.clone(),
            outbox_batches: st.outbox_batches as u64,
            windows_acked: st.counters.windows_stored,
            streams: st
                .streams
                .iter()
                .map(|s| SyncStreamView {
                    stream: s.stream.clone(),
                    cursor: s.committed,
                    head: s.head,
                    backlog: s.backlog,
                    last_acked: s
                        .last_acked
                        .as_ref()
                        .map(|(k, _)| (k.first_seq, k.last_seq)),
                })
                .collect(),
        });
    }
}

/// The records of `records` that continue densely from `from`.
fn dense_from(from: u64, records: Vec<(u64, Record)>) -> Vec<Record> {
    records
        .into_iter()
        .zip(from..)
        .take_while(|((seq, _), want)| seq == want)
        .map(|((_, r), _)| r)
        .collect()
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file operation failed.
    #[error("outbox {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A batch could not be encoded.
    #[error("outbox: cannot encode batch {key}: {detail}")]
    Encode {
        /// The batch.
        key: BatchKey,
        /// What the encoder said.
        detail: String,
    },
}

/// The gateway's durable outbox: one file per batch, written whole and fsynced before it is
/// posted. A file that cannot be read back is moved aside (and its windows read again from the
/// streams); it never stops the sync.
#[derive(Debug, Clone)]
struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    fn open(dir: &Path) -> Result<Self, GatewayError> {
        std::fs::create_dir_all(dir).map_err(|source| GatewayError::Outbox {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &BatchKey) -> PathBuf {
        let hex: String = key
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(format!("{hex}.batch"))
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
        move |source| OutboxError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn put(&self, batch: &Batch) -> Result<(), OutboxError> {
        use std::io::Write;
        let key = batch.key();
        let bytes = serde_json::to_vec(batch).map_err(|e| OutboxError::Encode {
            key: key.clone(),
            detail: e.to_string(),
        })?;
        let path = self.path(&key);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(Self::io(&tmp))?;
        f.write_all(&bytes).map_err(Self::io(&tmp))?;
        f.sync_all().map_err(Self::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Self::io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io(&self.dir))?;
        Ok(())
    }

    fn remove(&self, key: &BatchKey) -> Result<(), OutboxError> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }

    fn load(&self) -> Result<Vec<Batch>, OutboxError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(Self::io(&self.dir))?;
        for entry in entries {
            let path = entry.map_err(Self::io(&self.dir))?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("batch") => {}
                Some("tmp") => {
                    // A write that did not finish: its batch was never posted.
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                _ => continue,
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Batch>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(b) => out.push(b),
                Err(e) => {
                    let aside = path.with_extension("unreadable");
                    error!(file = %path.display(), "outbox batch unreadable ({e}); moved aside to {}; its windows are read again from the streams", aside.display());
                    let _ = std::fs::rename(&path, &aside);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: i64) -> Record {
        Record {
            ts_ms: ts,
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 0.0],
        }
    }

    #[test]
    fn dense_from_stops_at_the_first_gap() {
        let got = dense_from(5, vec![(5, rec(1)), (6, rec(2)), (8, rec(3))]);
        assert_eq!(got, vec![rec(1), rec(2)]);
        assert!(dense_from(5, vec![(6, rec(1))]).is_empty());
    }

    #[test]
    fn the_outbox_keeps_batches_across_reopen_and_sets_unreadable_ones_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(dir.path()).expect("open");
        let stream = StreamId::new(
            NodeId::new("b1").expect("id"),
            StreamKind::Aggregates,
            "north",
        )
        .expect("stream");
        let batch = Batch {
            cluster: "c".into(),
            term: 3,
            gateway: NodeId::new("b2").expect("id"),
            stream,
            first_seq: 1,
            last_seq: 2,
            windows: vec![(1, rec(0)), (2, rec(10_000))],
        };
        outbox.put(&batch).expect("put");
        std::fs::write(dir.path().join("junk.batch"), b"{not json").expect("write");
        let again = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(again.load().expect("load"), vec![batch.clone()]);
        assert!(dir.path().join("junk.unreadable").exists());
        again.remove(&batch.key()).expect("remove");
        again.remove(&batch.key()).expect("removing twice is fine");
        assert!(again.load().expect("load").is_empty());
    }
}
