//! The owner role: numbering a node's own records, copying them to replicas, acknowledging
//! producers, and recovering after a restart.
//!
//! One [`Owner`] per node covers every stream the node owns. The driver feeds it local appends
//! ([`Owner::appended`]), flush results, peer liveness, replies from replicas and timer ticks
//! ([`OwnerEvent`]), each with the current time, and carries out the [`OwnerAction`]s it returns,
//! in order. It does no IO, reads no clock and uses no randomness; maps are `BTreeMap`s so the
//! actions come out in the same order every run.
//!
//! # What it guarantees
//!
//! - **A producer is acknowledged only for what `write_quorum` holders have durably**, the owner
//!   always among them (its disk is the stream's reference copy). While fewer holders are
//!   live (reachable and not more than a window behind), [`Shortfall::Degrade`] acknowledges at `min_replicas` and says so
//!   (`degraded: true`), [`Shortfall::Block`] holds acknowledgements. An acknowledgement always
//!   states how many holders have the records.
//! - **One sequence number, one record.** Records may reach replicas before the owner's own
//!   flush, so a restarted owner may have lost a tail that replicas hold. Every node that may
//!   hold records beyond the owner's durable head is recorded durably first
//!   ([`OwnerAction::PersistHolders`]); after a restart each such stream stays
//!   [`Phase::Recovering`] until every holder has said how far it goes (its query also fences the
//!   crashed incarnation's messages still in flight) and the owner has fetched back everything
//!   beyond its own head. Only then are new sequence numbers handed out.
//! - **Placement by rendezvous.** A stream's replicas are the best-ranked eligible neighbours
//!   ([`crate::placement`]); a neighbour stays eligible while it has been unreachable for less
//!   than `replace_after_ms`, so a reboot ends in a catch-up, not a move. A move adds the new
//!   replica first and releases the old one only once the new one is in step.
//! - **Everything is bounded**: records per message, records in flight per replica, records
//!   waiting for acknowledgement per stream.
//!
//! It does not read or write records (the driver does, with the store), judge liveness (the
//! membership table does, and reports [`OwnerEvent::PeerUp`] / [`OwnerEvent::PeerDown`]), or
//! serve copies of other nodes' streams ([`crate::Replica`] does).

use std::collections::{BTreeMap, BTreeSet};

use verge_proto::replication::{ToOwner, ToReplica};
use verge_proto::{NodeId, Record, StreamId};

use crate::config::{OwnerConfig, Shortfall};
use crate::error::{AppendError, ProtocolError, StartError};
use crate::placement;

/// One of the node's own streams as the local store holds it when the owner core starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStream {
    /// The stream; its owner must be this node.
    pub stream: StreamId,
    /// The first sequence number still retained (1 unless retention dropped some).
    pub first_seq: u64,
    /// The highest sequence number stored.
    pub head: u64,
    /// The highest sequence number stored durably (after a crash, the same as `head`).
    pub durable: u64,
    /// The nodes last recorded by [`OwnerAction::PersistHolders`] for this stream.
    pub holders: Vec<NodeId>,
}

/// What happens to an owner. Local appends go through [`Owner::appended`] instead, because they
/// can be refused.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnerEvent {
    /// A flush made `stream` durable up to `up_to` (the store's durable head).
    LocalDurable {
        /// The stream.
        stream: StreamId,
        /// The store's durable head for it.
        up_to: u64,
    },
    /// Retention dropped records of `stream` before `first_seq`.
    Retained {
        /// The stream.
        stream: StreamId,
        /// Its first retained sequence number now.
        first_seq: u64,
    },
    /// The membership table sees `peer` as reachable (again).
    PeerUp {
        /// The peer.
        peer: NodeId,
    },
    /// The membership table sees `peer` as unreachable.
    PeerDown {
        /// The peer.
        peer: NodeId,
    },
    /// An operator declared `peer` gone for good, with its disk. Streams stop waiting for it to
    /// recover and stop counting it as a holder. If that node ever returns it must come back with
    /// an empty data dir: a copy it kept could disagree with records numbered since.
    PeerRetired {
        /// The peer.
        peer: NodeId,
    },
    /// A reply from `from`, the node named by the connection's certificate.
    Received {
        /// The sender.
        from: NodeId,
        /// The message.
        msg: ToOwner,
    },
    /// Time passed: resend what went unanswered, replace replicas gone too long.
    Tick,
}

/// What the driver must do for an owner, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnerAction {
    /// Record durably that `holders` may hold records of `stream`, replacing the earlier set,
    /// **before carrying out any later action**; pass it back as [`StoredStream::holders`] on
    /// restart. It comes before the first message to a new holder, so a restarted owner always
    /// knows whom to ask.
    PersistHolders {
        /// The stream.
        stream: StreamId,
        /// Every node that may hold records of it (the owner excluded).
        holders: Vec<NodeId>,
    },
    /// Read `count` records of `stream` from `first_seq` out of the local store and send them to
    /// `to` as a [`ToReplica::Append`] with this `epoch` and `start_seq`.
    SendAppend {
        /// The replica.
        to: NodeId,
        /// The stream.
        stream: StreamId,
        /// This owner's incarnation.
        epoch: u64,
        /// The first record's sequence number.
        first_seq: u64,
        /// How many records (at most `append_records_max`).
        count: u64,
        /// The owner's first retained sequence number.
        start_seq: u64,
    },
    /// Send `msg` to `to` (queries and fetches: nothing to read from the store).
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: ToReplica,
    },
    /// Append records fetched back from a replica during recovery to the local store at
    /// `first_seq` (always the local head + 1). If the store fails, rebuild the core from the
    /// store, as after a crash.
    StoreRecovered {
        /// The stream.
        stream: StreamId,
        /// The first record's sequence number.
        first_seq: u64,
        /// The records.
        records: Vec<Record>,
    },
    /// Recovery of `stream` is over: appends are taken again from `head + 1`.
    Recovered {
        /// The stream.
        stream: StreamId,
        /// Its head now.
        head: u64,
        /// Records fetched back from replicas.
        fetched: u64,
    },
    /// Tell the producer that `stream` is safe up to `up_to` (cumulative).
    AckProducer {
        /// The stream.
        stream: StreamId,
        /// The highest sequence number acknowledged.
        up_to: u64,
        /// Holders, the owner included, with `up_to` durable.
        replicas: usize,
        /// Fewer than `write_quorum` holders: acknowledged under [`Shortfall::Degrade`].
        degraded: bool,
    },
    /// Fewer than `replicas` holders of `stream` are live: reachable and not more than a window
    /// behind.
    MarkUnderReplicated {
        /// The stream.
        stream: StreamId,
        /// Live holders, the owner included.
        live: usize,
    },
    /// `stream` has `replicas` live holders again.
    MarkReplicated {
        /// The stream.
        stream: StreamId,
    },
    /// `replica` now receives `stream` (placement changed; it catches up from what it holds).
    ReplicaAdded {
        /// The stream.
        stream: StreamId,
        /// The new replica.
        replica: NodeId,
    },
    /// `replica` no longer receives `stream`; what it holds stays until its retention drops it.
    ReplicaRemoved {
        /// The stream.
        stream: StreamId,
        /// The former replica.
        replica: NodeId,
    },
    /// `replica` is more than one window behind and is being caught up (log it; the lag is in
    /// [`Owner::status`]).
    CatchingUp {
        /// The stream.
        stream: StreamId,
        /// The replica.
        replica: NodeId,
        /// What it holds durably.
        from_seq: u64,
        /// The owner's head.
        to_seq: u64,
    },
    /// `replica` is in step with `stream` again.
    CaughtUp {
        /// The stream.
        stream: StreamId,
        /// The replica.
        replica: NodeId,
    },
    /// A peer broke the protocol; the message was ignored. Log and count it.
    Refused {
        /// The error, naming the peer.
        error: ProtocolError,
    },
}

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// After a restart: finding out what the holders have; appends are refused.
    Recovering,
    /// Taking appends and replicating them.
    Active,
}

/// One replica of a stream, as [`Owner::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The replica.
    pub node: NodeId,
    /// Whether the membership table sees it as reachable.
    pub up: bool,
    /// Its durable high-water mark as last acknowledged.
    pub durable: u64,
    /// How far its durable high-water mark is behind the owner's head.
    pub lag: u64,
    /// Whether it is reachable and within one window of the head.
    pub in_step: bool,
}

/// One stream, as `verge ctl streams` and the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// The stream.
    pub stream: StreamId,
    /// Recovering or active.
    pub phase: Phase,
    /// The first retained sequence number.
    pub first_seq: u64,
    /// The highest sequence number appended.
    pub head: u64,
    /// The highest sequence number durable on the owner.
    pub durable: u64,
    /// The highest sequence number acknowledged to the producer (or, after a restart, the head
    /// recovery ended at).
    pub acked: u64,
    /// Fewer than `replicas` live holders (reachable, not more than a window behind).
    pub under_replicated: bool,
    /// The current replicas, best-ranked first.
    pub replicas: Vec<ReplicaStatus>,
    /// Former replicas that may still hold records the owner has not flushed.
    pub retiring: Vec<NodeId>,
}

#[derive(Debug, Clone)]
struct Peer {
    up: bool,
    /// When `up` last changed.
    since_ms: u64,
    /// Down for at least `replace_after_ms`: no longer eligible to hold replicas.
    expired: bool,
}

#[derive(Debug, Clone)]
struct Follower {
    /// Has answered a query of this incarnation, so its head is known (appends may flow).
    answered: bool,
    /// When the outstanding query was sent.
    query_sent_ms: Option<u64>,
    /// The head it last reported; during recovery, an upper bound of what it holds.
    reported_head: u64,
    /// Its durable high-water mark, as acknowledged.
    durable: u64,
    /// The highest sequence number sent to it since it was last known to hold less.
    sent: u64,
    /// The highest sequence number it may hold: sent to it, or reported by it.
    max_sent: u64,
    /// When it last made progress (or when sending began after it was idle), for resends.
    progress_ms: u64,
    /// The last nack taken (head, time), to ignore the echo of one loss from a whole window.
    last_nack: Option<(u64, u64)>,
    /// Last reported catch-up state, so [`OwnerAction::CaughtUp`] is said once.
    reported_in_step: Option<bool>,
}

impl Follower {
    fn new(max_sent: u64) -> Self {
        Self {
            answered: false,
            query_sent_ms: None,
            reported_head: 0,
            durable: 0,
            sent: 0,
            max_sent,
            progress_ms: 0,
            last_nack: None,
            reported_in_step: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Recovery {
    /// The outstanding fetch: from whom, when sent.
    fetch: Option<(NodeId, u64)>,
    /// Records fetched back so far.
    fetched: u64,
}

#[derive(Debug, Clone)]
struct Owned {
    first_seq: u64,
    head: u64,
    durable: u64,
    acked: u64,
    recovery: Option<Recovery>,
    /// The placement: current replicas (more than R-1 only while a move is under way).
    followers: BTreeMap<NodeId, Follower>,
    /// Former replicas that may hold records beyond `durable`, with the highest they may hold.
    retiring: BTreeMap<NodeId, u64>,
    /// The holder set last persisted.
    persisted: BTreeSet<NodeId>,
    under_replicated: bool,
}

impl Owned {
    fn new_empty() -> Self {
        Self {
            first_seq: 1,
            head: 0,
            durable: 0,
            acked: 0,
            recovery: None,
            followers: BTreeMap::new(),
            retiring: BTreeMap::new(),
            persisted: BTreeSet::new(),
            under_replicated: false,
        }
    }

    fn holders(&self) -> BTreeSet<NodeId> {
        self.followers
            .keys()
            .chain(self.retiring.keys())
            .cloned()
            .collect()
    }
}

/// Everything a per-stream step needs besides the stream itself.
struct Ctx<'a> {
    cfg: &'a OwnerConfig,
    me: &'a NodeId,
    epoch: u64,
    peers: &'a BTreeMap<NodeId, Peer>,
    now: u64,
}

impl Ctx<'_> {
    fn up(&self, n: &NodeId) -> bool {
        self.peers.get(n).is_some_and(|p| p.up)
    }

    /// Durably within one window of the owner's head.
    fn within_window(&self, f: &Follower, s: &Owned) -> bool {
        f.durable.max(s.first_seq - 1) + self.cfg.inflight_records_max >= s.head
    }

    /// Reachable, head known, and within one window: in step.
    fn in_step(&self, n: &NodeId, f: &Follower, s: &Owned) -> bool {
        self.up(n) && f.answered && self.within_window(f, s)
    }

    /// Counts as a live holder for the write quorum and the health flag: reachable and not known
    /// to lag. A replica being asked for its head (one round trip, after it appears) counts, so
    /// a healthy stream does not flap into degraded acknowledgements while it is probed.
    fn live(&self, n: &NodeId, f: &Follower, s: &Owned) -> bool {
        self.up(n) && (!f.answered || self.within_window(f, s))
    }
}

/// What an owner knows about its node and the peers, shared by all its streams.
#[derive(Debug)]
struct NodeState {
    cfg: OwnerConfig,
    me: NodeId,
    epoch: u64,
    peers: BTreeMap<NodeId, Peer>,
}

impl NodeState {
    fn at(&self, now: u64) -> Ctx<'_> {
        Ctx {
            cfg: &self.cfg,
            me: &self.me,
            epoch: self.epoch,
            peers: &self.peers,
            now,
        }
    }
}

/// The owner state machine of one node, for all the streams it owns.
#[derive(Debug)]
pub struct Owner {
    node: NodeState,
    streams: BTreeMap<StreamId, Owned>,
}

impl Owner {
    /// An owner core for node `me` in incarnation `epoch`, starting at `now` (milliseconds on the
    /// driver's monotonic clock) with the streams its store holds.
    ///
    /// `epoch` must be greater than that of every earlier run of this node: keep a counter in
    /// the data dir, increment it and make it durable before building the core. Streams with
    /// holders start [`Phase::Recovering`]; the rest are active at once. No peer is up until
    /// the driver says so with [`OwnerEvent::PeerUp`].
    ///
    /// # Errors
    ///
    /// [`StartError`] if the configuration is invalid or a listed stream is not this node's.
    pub fn new(
        cfg: OwnerConfig,
        me: NodeId,
        epoch: u64,
        now: u64,
        stored: impl IntoIterator<Item = StoredStream>,
    ) -> Result<Self, StartError> {
        cfg.validate()?;
        let mut peers = BTreeMap::new();
        let mut streams = BTreeMap::new();
        for s in stored {
            if s.stream.owner != me {
                return Err(StartError::NotMine {
                    stream: s.stream,
                    me,
                });
            }
            let mut owned = Owned::new_empty();
            owned.first_seq = s.first_seq.clamp(1, s.head + 1);
            owned.head = s.head;
            owned.durable = s.durable.min(s.head);
            owned.acked = s.head;
            for h in s.holders.into_iter().filter(|h| *h != me) {
                peers.entry(h.clone()).or_insert(Peer {
                    up: false,
                    since_ms: now,
                    expired: false,
                });
                owned.persisted.insert(h.clone());
                owned.followers.insert(h, Follower::new(0));
            }
            if !owned.followers.is_empty() {
                owned.recovery = Some(Recovery::default());
            }
            if streams.insert(s.stream.clone(), owned).is_some() {
                return Err(StartError::Duplicate(s.stream));
            }
        }
        Ok(Self {
            node: NodeState {
                cfg,
                me,
                epoch,
                peers,
            },
            streams,
        })
    }

    /// This node.
    pub fn me(&self) -> &NodeId {
        &self.node.me
    }

    /// This incarnation.
    pub fn epoch(&self) -> u64 {
        self.node.epoch
    }

    /// The sequence number the next local append to `stream` must start at.
    ///
    /// A stream the owner has never seen is new and starts at 1.
    ///
    /// # Errors
    ///
    /// [`AppendError::Recovering`] while the stream recovers after a restart,
    /// [`AppendError::Backpressure`] while `pending_records_max` records wait for
    /// acknowledgement, [`AppendError::NotMine`] for another node's stream.
    pub fn next_seq(&self, stream: &StreamId) -> Result<u64, AppendError> {
        if stream.owner != self.node.me {
            return Err(AppendError::NotMine {
                stream: stream.clone(),
            });
        }
        let Some(s) = self.streams.get(stream) else {
            return Ok(1);
        };
        if s.recovery.is_some() {
            return Err(AppendError::Recovering {
                stream: stream.clone(),
                waiting_on: self.waiting_on(s),
            });
        }
        let pending = s.head - s.acked;
        if pending >= self.node.cfg.pending_records_max {
            return Err(AppendError::Backpressure {
                stream: stream.clone(),
                pending,
                max: self.node.cfg.pending_records_max,
            });
        }
        Ok(s.head + 1)
    }

    /// Whether a local append to `stream` would be taken now.
    pub fn can_append(&self, stream: &StreamId) -> bool {
        self.next_seq(stream).is_ok()
    }

    /// Reports that the driver appended `count` records to `stream` in the local store at
    /// `first_seq` (which [`Owner::next_seq`] gave); returns what to do.
    ///
    /// Call [`Owner::next_seq`] first, append to the store, then call this; a store error in
    /// between leaves the core untouched. The batch may overshoot `pending_records_max` by its
    /// own size.
    ///
    /// # Errors
    ///
    /// As [`Owner::next_seq`], and [`AppendError::OutOfOrder`] if `first_seq` is not the next
    /// sequence number (a driver bug; nothing changes).
    pub fn appended(
        &mut self,
        now: u64,
        stream: &StreamId,
        first_seq: u64,
        count: u64,
    ) -> Result<Vec<OwnerAction>, AppendError> {
        let expected = self.next_seq(stream)?;
        if first_seq != expected {
            return Err(AppendError::OutOfOrder {
                stream: stream.clone(),
                expected,
                got: first_seq,
            });
        }
        let mut out = Vec::new();
        if count == 0 {
            return Ok(out);
        }
        let ctx = self.node.at(now);
        let s = self
            .streams
            .entry(stream.clone())
            .or_insert_with(Owned::new_empty);
        s.head += count;
        settle(&ctx, stream, s, &mut out);
        Ok(out)
    }

    /// Feeds one event at time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: u64, event: OwnerEvent) -> Vec<OwnerAction> {
        let mut out = Vec::new();
        match event {
            OwnerEvent::LocalDurable { stream, up_to } => {
                let ctx = self.node.at(now);
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.durable = s.durable.max(up_to.min(s.head));
                    settle(&ctx, &stream, s, &mut out);
                }
            }
            OwnerEvent::Retained { stream, first_seq } => {
                let ctx = self.node.at(now);
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.first_seq = s.first_seq.max(first_seq.min(s.head + 1));
                    settle(&ctx, &stream, s, &mut out);
                }
            }
            OwnerEvent::PeerUp { peer } => self.peer_up(now, peer, &mut out),
            OwnerEvent::PeerDown { peer } => self.peer_down(now, peer, &mut out),
            OwnerEvent::PeerRetired { peer } => {
                self.node.peers.remove(&peer);
                let ctx = self.node.at(now);
                for (stream, s) in &mut self.streams {
                    s.followers.remove(&peer);
                    s.retiring.remove(&peer);
                    settle(&ctx, stream, s, &mut out);
                }
            }
            OwnerEvent::Received { from, msg } => {
                if let Err(error) = self.on_message(now, from, msg, &mut out) {
                    out.push(OwnerAction::Refused { error });
                }
            }
            OwnerEvent::Tick => self.tick(now, &mut out),
        }
        out
    }

    /// Where `stream` stands, for `verge ctl streams` and the metrics.
    pub fn status(&self, stream: &StreamId) -> Option<StreamStatus> {
        let s = self.streams.get(stream)?;
        let ctx = self.node.at(0);
        let mut replicas: Vec<ReplicaStatus> = s
            .followers
            .iter()
            .map(|(n, f)| ReplicaStatus {
                node: n.clone(),
                up: ctx.up(n),
                durable: f.durable,
                lag: s.head.saturating_sub(f.durable),
                in_step: ctx.in_step(n, f, s),
            })
            .collect();
        let order = placement::rank(stream, &self.node.me, s.followers.keys());
        replicas.sort_by_key(|r| order.iter().position(|n| *n == r.node));
        Some(StreamStatus {
            stream: stream.clone(),
            phase: if s.recovery.is_some() {
                Phase::Recovering
            } else {
                Phase::Active
            },
            first_seq: s.first_seq,
            head: s.head,
            durable: s.durable,
            acked: s.acked,
            under_replicated: s.under_replicated,
            replicas,
            retiring: s.retiring.keys().cloned().collect(),
        })
    }

    /// Every stream's status, in stream order.
    pub fn statuses(&self) -> Vec<StreamStatus> {
        self.streams.keys().filter_map(|s| self.status(s)).collect()
    }

    fn waiting_on(&self, s: &Owned) -> Vec<NodeId> {
        s.followers
            .iter()
            .filter(|(_, f)| !f.answered || f.reported_head > s.head)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn peer_up(&mut self, now: u64, peer: NodeId, out: &mut Vec<OwnerAction>) {
        if peer == self.node.me {
            return;
        }
        let p = self.node.peers.entry(peer.clone()).or_insert(Peer {
            up: false,
            since_ms: now,
            expired: false,
        });
        if p.up {
            return;
        }
        *p = Peer {
            up: true,
            since_ms: now,
            expired: false,
        };
        let ctx = self.node.at(now);
        for (stream, s) in &mut self.streams {
            if let Some(f) = s.followers.get_mut(&peer) {
                // It may have restarted and lost its unflushed tail: learn its head again. A
                // recovering stream keeps the old answer, an upper bound of what it holds.
                if s.recovery.is_none() {
                    f.answered = false;
                }
                f.query_sent_ms = None;
            }
            settle(&ctx, stream, s, out);
        }
    }

    fn peer_down(&mut self, now: u64, peer: NodeId, out: &mut Vec<OwnerAction>) {
        let Some(p) = self.node.peers.get_mut(&peer) else {
            return;
        };
        if !p.up {
            return;
        }
        p.up = false;
        p.since_ms = now;
        let ctx = self.node.at(now);
        for (stream, s) in &mut self.streams {
            if let Some(f) = s.followers.get_mut(&peer) {
                // Whatever was in flight to it is lost with the connection.
                f.sent = f.durable.max(s.first_seq - 1).min(s.head);
                f.query_sent_ms = None;
            }
            if let Some(r) = &mut s.recovery
                && r.fetch.as_ref().is_some_and(|(n, _)| *n == peer)
            {
                r.fetch = None;
            }
            settle(&ctx, stream, s, out);
        }
    }

    fn tick(&mut self, now: u64, out: &mut Vec<OwnerAction>) {
        for p in self.node.peers.values_mut() {
            if !p.up
                && !p.expired
                && now.saturating_sub(p.since_ms) >= self.node.cfg.replace_after_ms
            {
                p.expired = true;
            }
        }
        let ctx = self.node.at(now);
        for (stream, s) in &mut self.streams {
            let head = s.head;
            let floor = s.first_seq - 1;
            for f in s.followers.values_mut() {
                if let Some(at) = f.query_sent_ms
                    && now.saturating_sub(at) >= ctx.cfg.resend_after_ms
                {
                    f.query_sent_ms = None;
                }
                if f.answered
                    && f.sent > f.durable.max(floor)
                    && now.saturating_sub(f.progress_ms) >= ctx.cfg.resend_after_ms
                {
                    // Go back to what it surely holds and send again; it skips duplicates.
                    f.sent = f.durable.max(floor).min(head);
                    f.last_nack = None;
                }
            }
            if let Some(r) = &mut s.recovery
                && let Some((_, at)) = r.fetch
                && now.saturating_sub(at) >= ctx.cfg.resend_after_ms
            {
                r.fetch = None;
            }
            settle(&ctx, stream, s, out);
        }
    }

    fn on_message(
        &mut self,
        now: u64,
        from: NodeId,
        msg: ToOwner,
        out: &mut Vec<OwnerAction>,
    ) -> Result<(), ProtocolError> {
        let what = match &msg {
            ToOwner::Ack { .. } => "an ack",
            ToOwner::Nack { .. } => "a nack",
            ToOwner::HwmReply { .. } => "a high-water mark reply",
            ToOwner::FetchReply { .. } => "a fetch reply",
        };
        let stream = msg.stream().clone();
        if stream.owner != self.node.me {
            return Err(ProtocolError::NotMine { from, stream, what });
        }
        if let ToOwner::FetchReply { records, .. } = &msg
            && records.len() > verge_proto::replication::RECORDS_PER_MESSAGE_MAX
        {
            return Err(ProtocolError::TooManyRecords {
                from,
                count: records.len(),
                max: verge_proto::replication::RECORDS_PER_MESSAGE_MAX,
            });
        }
        let ctx = self.node.at(now);
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        let head = s.head;
        let floor = s.first_seq - 1;
        let recovering = s.recovery.is_some();
        let Some(f) = s.followers.get_mut(&from) else {
            // A former replica's late reply, or a stranger: nothing to learn.
            return Ok(());
        };
        match msg {
            ToOwner::Ack { durable, .. } => {
                if durable > f.durable {
                    f.durable = durable;
                    f.progress_ms = now;
                }
                if !recovering && f.answered && f.sent < f.durable.min(head) {
                    f.sent = f.durable.min(head);
                }
            }
            ToOwner::Nack { head: theirs, .. } => {
                let echo = f.last_nack.is_some_and(|(h, at)| {
                    h == theirs && now.saturating_sub(at) < ctx.cfg.resend_after_ms
                });
                if !recovering && f.answered && !echo {
                    f.last_nack = Some((theirs, now));
                    f.sent = theirs.max(f.durable).max(floor).min(head);
                    f.progress_ms = now;
                }
            }
            ToOwner::HwmReply {
                epoch,
                head: theirs,
                durable,
                ..
            } => {
                if epoch != ctx.epoch {
                    return Ok(());
                }
                f.durable = f.durable.max(durable);
                f.reported_head = theirs;
                f.max_sent = f.max_sent.max(theirs);
                f.query_sent_ms = None;
                if !f.answered {
                    f.answered = true;
                    f.sent = theirs.max(f.durable).max(floor).min(head);
                    f.progress_ms = now;
                    f.last_nack = None;
                }
            }
            ToOwner::FetchReply {
                first_seq,
                records,
                head: theirs,
                ..
            } => {
                f.reported_head = theirs;
                f.max_sent = f.max_sent.max(theirs);
                if let Some(r) = &mut s.recovery {
                    if r.fetch.as_ref().is_some_and(|(n, _)| *n == from) {
                        r.fetch = None;
                    }
                    let end = first_seq.saturating_add(records.len() as u64);
                    if first_seq >= 1 && first_seq <= s.head + 1 && end > s.head + 1 {
                        let skip = usize::try_from(s.head + 1 - first_seq).unwrap_or(usize::MAX);
                        let fresh: Vec<Record> = records.into_iter().skip(skip).collect();
                        let n = fresh.len() as u64;
                        out.push(OwnerAction::StoreRecovered {
                            stream: stream.clone(),
                            first_seq: s.head + 1,
                            records: fresh,
                        });
                        s.head += n;
                        r.fetched += n;
                    }
                }
            }
        }
        settle(&ctx, &stream, s, out);
        Ok(())
    }
}

/// Brings one stream up to date with everything known: recovery steps, placement, sends, acks,
/// health. Every event ends here, so no path forgets a step.
fn settle(ctx: &Ctx<'_>, stream: &StreamId, s: &mut Owned, out: &mut Vec<OwnerAction>) {
    if s.recovery.is_some() {
        recover(ctx, stream, s, out);
        if s.recovery.is_some() {
            return;
        }
    }
    place(ctx, stream, s, out);
    probe(ctx, stream, s, out);
    pump(ctx, stream, s, out);
    acknowledge(ctx, stream, s, out);
    report(ctx, stream, s, out);
}

/// One step of recovery: ask every holder, fetch from the best one, finish when nothing is
/// beyond the local head.
fn recover(ctx: &Ctx<'_>, stream: &StreamId, s: &mut Owned, out: &mut Vec<OwnerAction>) {
    probe(ctx, stream, s, out);
    let all_answered = s.followers.values().all(|f| f.answered);
    let target = s
        .followers
        .values()
        .map(|f| f.reported_head)
        .max()
        .unwrap_or(0);
    let Some(r) = &mut s.recovery else {
        return;
    };
    if all_answered && target <= s.head {
        let fetched = r.fetched;
        s.recovery = None;
        s.acked = s.head;
        for f in s.followers.values_mut() {
            f.sent = f
                .reported_head
                .max(f.durable)
                .max(s.first_seq - 1)
                .min(s.head);
            f.progress_ms = ctx.now;
        }
        out.push(OwnerAction::Recovered {
            stream: stream.clone(),
            head: s.head,
            fetched,
        });
        return;
    }
    if r.fetch.is_some() {
        return;
    }
    // Fetch from the reachable holder that reports the most beyond our head.
    let source = s
        .followers
        .iter()
        .filter(|(n, f)| ctx.up(n) && f.answered && f.reported_head > s.head)
        .max_by(|a, b| a.1.reported_head.cmp(&b.1.reported_head).then(b.0.cmp(a.0)))
        .map(|(n, _)| n.clone());
    if let Some(n) = source {
        r.fetch = Some((n.clone(), ctx.now));
        out.push(OwnerAction::Send {
            to: n,
            msg: ToReplica::Fetch {
                stream: stream.clone(),
                from_seq: s.head + 1,
                count: ctx.cfg.fetch_records_max,
            },
        });
    }
}

/// Sends a query to every reachable follower whose head is unknown and that has no query
/// outstanding. (A recovering owner needs no fresh answer from a holder that restarted: the
/// old one is an upper bound, and each fetch reply brings the holder's current head.)
fn probe(ctx: &Ctx<'_>, stream: &StreamId, s: &mut Owned, out: &mut Vec<OwnerAction>) {
    for (n, f) in &mut s.followers {
        if !f.answered && f.query_sent_ms.is_none() && ctx.up(n) {
            f.query_sent_ms = Some(ctx.now);
            out.push(OwnerAction::Send {
                to: n.clone(),
                msg: ToReplica::HwmQuery {
                    stream: stream.clone(),
                    epoch: ctx.epoch,
                },
            });
        }
    }
}

/// Moves the placement towards the best-ranked eligible neighbours: adds first, releases the
/// surplus only once every wanted replica is in step.
fn place(ctx: &Ctx<'_>, stream: &StreamId, s: &mut Owned, out: &mut Vec<OwnerAction>) {
    let eligible: Vec<NodeId> = ctx
        .peers
        .iter()
        .filter(|(n, p)| p.up || (!p.expired && s.followers.contains_key(*n)))
        .map(|(n, _)| n.clone())
        .collect();
    let wanted = placement::replicas(stream, ctx.me, &eligible, ctx.cfg.replicas - 1);
    let mut added = Vec::new();
    for n in &wanted {
        if !s.followers.contains_key(n) {
            let max_sent = s.retiring.remove(n).unwrap_or(0);
            s.followers.insert(n.clone(), Follower::new(max_sent));
            added.push(n.clone());
        }
    }
    let mut removed = Vec::new();
    // Release only once every wanted replica is in step and durably holds everything already
    // acknowledged and everything the replicas to be let go hold: a move never lowers the
    // number of durable copies ("in step", within a window, alone would let go of the old copy
    // while the new one still holds nothing).
    let floor = s
        .followers
        .iter()
        .filter(|(n, _)| !wanted.contains(n))
        .map(|(_, f)| f.durable.min(s.head))
        .max()
        .unwrap_or(0)
        .max(s.acked);
    let all_in_step = wanted.iter().all(|n| {
        s.followers
            .get(n)
            .is_some_and(|f| ctx.in_step(n, f, s) && f.durable >= floor)
    });
    if all_in_step {
        let surplus: Vec<NodeId> = s
            .followers
            .keys()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect();
        for n in surplus {
            if let Some(f) = s.followers.remove(&n) {
                let may_hold = f.max_sent.max(f.sent);
                if may_hold > s.durable {
                    s.retiring.insert(n.clone(), may_hold);
                }
                removed.push(n);
            }
        }
    }
    let durable = s.durable;
    s.retiring.retain(|_, may_hold| *may_hold > durable);
    let holders = s.holders();
    if holders != s.persisted {
        out.push(OwnerAction::PersistHolders {
            stream: stream.clone(),
            holders: holders.iter().cloned().collect(),
        });
        s.persisted = holders;
    }
    for replica in added {
        out.push(OwnerAction::ReplicaAdded {
            stream: stream.clone(),
            replica,
        });
    }
    for replica in removed {
        out.push(OwnerAction::ReplicaRemoved {
            stream: stream.clone(),
            replica,
        });
    }
}

/// Sends each reachable follower whose head is known what it lacks, within the window.
fn pump(ctx: &Ctx<'_>, stream: &StreamId, s: &mut Owned, out: &mut Vec<OwnerAction>) {
    let floor = s.first_seq - 1;
    let window = ctx.cfg.inflight_records_max;
    let chunk = ctx.cfg.append_records_max as u64;
    for (n, f) in &mut s.followers {
        if !f.answered || !ctx.up(n) {
            continue;
        }
        // Records before the first retained one are gone; start the copy there.
        f.sent = f.sent.max(floor);
        loop {
            let base = f.durable.max(floor);
            let outstanding = f.sent.saturating_sub(base);
            if f.sent >= s.head || outstanding >= window {
                break;
            }
            if outstanding == 0 {
                f.progress_ms = ctx.now;
            }
            let count = chunk.min(s.head - f.sent).min(window - outstanding);
            out.push(OwnerAction::SendAppend {
                to: n.clone(),
                stream: stream.clone(),
                epoch: ctx.epoch,
                first_seq: f.sent + 1,
                count,
                start_seq: s.first_seq,
            });
            f.sent += count;
            f.max_sent = f.max_sent.max(f.sent);
        }
    }
}

/// Acknowledges the producer as far as the write quorum (or, short of it under `Degrade`,
/// `min_replicas`) allows; the owner's durable head bounds every acknowledgement.
fn acknowledge(ctx: &Ctx<'_>, stream: &StreamId, s: &mut Owned, out: &mut Vec<OwnerAction>) {
    let d = s.durable;
    let mut held: Vec<u64> = s.followers.values().map(|f| f.durable.min(d)).collect();
    held.sort_unstable_by(|a, b| b.cmp(a));
    // The highest seq that `k` holders (the owner first) have durably.
    let point = |k: usize| -> u64 {
        match k {
            0 | 1 => d,
            k => held.get(k - 2).copied().unwrap_or(0),
        }
    };
    let mut up_to = point(ctx.cfg.write_quorum);
    if ctx.cfg.shortfall == Shortfall::Degrade {
        let live = 1 + s
            .followers
            .iter()
            .filter(|(n, f)| ctx.live(n, f, s))
            .count();
        if live < ctx.cfg.write_quorum {
            up_to = up_to.max(point(ctx.cfg.min_replicas));
        }
    }
    if up_to > s.acked {
        let replicas = 1 + held.iter().filter(|h| **h >= up_to).count();
        s.acked = up_to;
        out.push(OwnerAction::AckProducer {
            stream: stream.clone(),
            up_to,
            replicas,
            degraded: replicas < ctx.cfg.write_quorum,
        });
    }
}

/// Says when the stream falls short of `replicas` live holders, when it is whole again, and
/// when a replica starts or finishes catching up.
///
/// While a replica is being asked for its head its state is unknown, so the flag holds still:
/// it is raised only if the stream is short even counting that replica as live, and cleared
/// only once it is whole counting only replicas known to be in step.
fn report(ctx: &Ctx<'_>, stream: &StreamId, s: &mut Owned, out: &mut Vec<OwnerAction>) {
    let mut live = 1;
    let mut known_in_step = 1;
    let mut changes = Vec::new();
    for (n, f) in &s.followers {
        let now_in_step = ctx.in_step(n, f, s);
        if ctx.live(n, f, s) {
            live += 1;
        }
        if now_in_step {
            known_in_step += 1;
        }
        let catching_up = ctx.up(n) && f.answered && !now_in_step;
        let state = if now_in_step {
            Some(true)
        } else if catching_up {
            Some(false)
        } else {
            f.reported_in_step
        };
        if state != f.reported_in_step {
            changes.push((n.clone(), state));
        }
    }
    for (n, state) in changes {
        let Some(f) = s.followers.get_mut(&n) else {
            continue;
        };
        f.reported_in_step = state;
        match state {
            Some(true) => out.push(OwnerAction::CaughtUp {
                stream: stream.clone(),
                replica: n,
            }),
            Some(false) => out.push(OwnerAction::CatchingUp {
                stream: stream.clone(),
                replica: n,
                from_seq: f.durable,
                to_seq: s.head,
            }),
            None => {}
        }
    }
    let under = if live < ctx.cfg.replicas {
        true
    } else if known_in_step >= ctx.cfg.replicas {
        false
    } else {
        s.under_replicated
    };
    if under != s.under_replicated {
        s.under_replicated = under;
        out.push(if under {
            OwnerAction::MarkUnderReplicated {
                stream: stream.clone(),
                live,
            }
        } else {
            OwnerAction::MarkReplicated {
                stream: stream.clone(),
            }
        });
    }
}
