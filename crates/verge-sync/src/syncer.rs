//! The gateway's sync state machine: which windows to read, batch, persist, post and retry, and
//! when a stream's cursor may advance.
//!
//! One [`Syncer`] per node. Every node keeps one, fed the committed cursors and the stream heads
//! as they change; it acts only while the node is the Raft leader (the gateway). The driver feeds
//! it [`SyncEvent`]s with the current time and carries out the [`SyncAction`]s it returns, in
//! order. It does no IO, reads no clock, and draws random numbers only from a generator seeded at
//! construction (for retry jitter); maps are `BTreeMap`s so actions come out in the same order
//! every run.
//!
//! # What it guarantees
//!
//! - **A cursor never passes what the cloud holds.** A cursor is proposed only up to what the
//!   cloud acknowledged (stored, or already held) contiguously from the committed cursor, and
//!   only by the leader. A new leader knows only committed cursors, so it resends at most what was
//!   acknowledged but not yet committed; the cloud keeps each batch key and each window once.
//! - **Fencing is obeyed.** A refusal for a stale term (the cloud accepted a higher one, so a
//!   newer gateway exists) stops all posting at once and for good in that term; the core posts
//!   again only as leader of a term at least as high as the highest the cloud reported.
//! - **In order, one at a time per stream.** A stream's batches are posted in sequence order, a
//!   batch only once everything before it is acknowledged or committed, and at most one batch per
//!   stream is in flight; streams proceed in parallel up to `posts_inflight_max`. The next batch
//!   may be posted as soon as the previous one is acknowledged, without waiting for its cursor to
//!   commit: the core keeps the acknowledged-but-uncommitted point and proposes it.
//! - **Persist, then post.** A batch is handed to [`SyncAction::PersistOutbox`] before its first
//!   [`SyncAction::Post`], and keeps its key for every resend; a new leader resends what its
//!   outbox holds (same keys, its own term) before reading further. If the committed cursor is
//!   behind a loaded batch (a crashed gateway had acknowledgements it never committed), the gap
//!   is read and posted first so the stream still goes in order; the cloud answers those windows
//!   as duplicates.
//! - **Nothing is skipped.** A batch the cloud rejects (a 4xx that is not fencing) holds its
//!   stream and is retried every `rejected_retry_ms`; an unavailable cloud is retried with capped
//!   exponential backoff and jitter. Everything is bounded: batch size, posts and reads in flight,
//!   outbox batches, tracked streams.
//!
//! It does not read streams, talk to the cloud or to Raft, or keep anything on disk: the driver
//! does, as [`crate`]'s "Driving the core" describes.

use std::collections::BTreeMap;

use verge_proto::{Record, StreamId};

use crate::batch::{Batch, BatchKey};
use crate::config::SyncConfig;
use crate::error::{ConfigError, OutboxDefect, SyncWarning};
use crate::rng::{SplitMix64, backoff_ms, jitter_ms};

/// What the cloud answered to one post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudOutcome {
    /// The key was new and is stored: `stored` windows were new, `duplicates` were already held
    /// (from a batch cut differently).
    Stored {
        /// Windows stored now.
        stored: u64,
        /// Windows the cloud already held.
        duplicates: u64,
    },
    /// The key was already stored; the cloud holds the batch once.
    Duplicate,
    /// Fencing: the cloud has accepted `highest`, higher than the batch's term, for this cluster.
    Stale {
        /// The highest term the cloud has accepted.
        highest: u64,
    },
    /// Any other 4xx: the request is wrong (token, size, body); retrying it unchanged will not
    /// help until someone fixes the configuration.
    Rejected(String),
    /// No answer, a timeout, a 5xx, a 408 or 429, or an answer that is not what the API promises.
    /// The cloud may have stored the batch all the same.
    Unavailable(String),
}

/// What happens to a sync core.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    /// This node is the Raft leader, and so the gateway, in `term`.
    BecameLeader {
        /// The Raft term.
        term: u64,
    },
    /// This node is no longer the leader (or never was, for this term).
    LostLeadership,
    /// Committed cursors from the applied Raft state: per stream, the highest sequence number the
    /// cloud acknowledged. May be behind the latest commit; cursors only move up. A partial map
    /// updates the streams it names. Until the first one arrives the core neither reads nor posts.
    Cursors {
        /// Stream to committed cursor.
        cursors: BTreeMap<StreamId, u64>,
    },
    /// Per stream, the highest sequence number durable on and readable from some live replica.
    /// A partial map updates the streams it names.
    StreamHeads {
        /// Stream to readable head.
        heads: BTreeMap<StreamId, u64>,
    },
    /// The result of [`SyncAction::Read`]: `records` are sequence numbers `first_seq`,
    /// `first_seq + 1`, …; fewer than asked for is fine, none means "not readable now".
    Read {
        /// The stream.
        stream: StreamId,
        /// The `from_seq` of the read.
        first_seq: u64,
        /// The records, dense from `first_seq`.
        records: Vec<Record>,
    },
    /// [`SyncAction::Read`] failed (no live replica, store error).
    ReadFailed {
        /// The stream.
        stream: StreamId,
        /// Why, for the log.
        error: String,
    },
    /// What the durable outbox held when the node started. Feed it once, before the node can
    /// become leader.
    OutboxLoaded {
        /// The batches, in any order.
        batches: Vec<Batch>,
    },
    /// The answer to [`SyncAction::Post`] of the batch with this key, posted with this term.
    /// Every post gets exactly one answer; the HTTP client's timeout bounds how long it takes.
    CloudAnswer {
        /// The batch's key.
        key: BatchKey,
        /// The term the batch was posted with.
        term: u64,
        /// What the cloud said.
        outcome: CloudOutcome,
    },
    /// [`SyncAction::ProposeCursor`] committed.
    CursorCommitted {
        /// The stream.
        stream: StreamId,
        /// The proposed cursor.
        up_to: u64,
    },
    /// [`SyncAction::ProposeCursor`] failed (not leader any more, Raft error). It may still
    /// commit later; that arrives through [`SyncEvent::Cursors`].
    CursorProposeFailed {
        /// The stream.
        stream: StreamId,
        /// The proposed cursor.
        up_to: u64,
        /// Why, for the log.
        error: String,
    },
    /// Time passed: retries whose delay is over go out. Feed it at [`Syncer::next_deadline`]
    /// (or every 100 ms or so).
    Tick,
}

/// What a retry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOf {
    /// Posting a stream's next batch.
    Post,
    /// Reading a stream's next records.
    Read,
}

/// What the driver must do for a sync core, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncAction {
    /// Read up to `max` records of `stream` from `from_seq` (local store or any live replica) and
    /// answer with [`SyncEvent::Read`] or [`SyncEvent::ReadFailed`].
    Read {
        /// The stream.
        stream: StreamId,
        /// The first sequence number wanted.
        from_seq: u64,
        /// At most this many records.
        max: u64,
    },
    /// Write `batch` to the durable outbox under its key, durably, **before carrying out any
    /// later action** (its post follows). If the store fails, rebuild the core as after a crash.
    PersistOutbox {
        /// The batch.
        batch: Batch,
    },
    /// POST `batch` to the cloud and answer with exactly one [`SyncEvent::CloudAnswer`] carrying
    /// its key and term. The batch is already in the outbox.
    Post {
        /// The batch, stamped with the current term and this gateway.
        batch: Batch,
    },
    /// Remove the batch with this key from the outbox: the cloud holds it. Need not be durable
    /// before the next action (a batch that comes back after a crash is resent and deduplicated).
    DropOutbox {
        /// The batch's key.
        key: BatchKey,
    },
    /// Propose through Raft that `stream`'s cursor is `up_to`; the state machine applies it as
    /// `max(cursor, up_to)`. Answer with [`SyncEvent::CursorCommitted`] or
    /// [`SyncEvent::CursorProposeFailed`].
    ProposeCursor {
        /// The proposer's term (for the log; cursors only move up, whoever proposes them).
        term: u64,
        /// The stream.
        stream: StreamId,
        /// The highest sequence number the cloud acknowledged contiguously.
        up_to: u64,
    },
    /// The cloud acknowledged a batch (log at debug, count windows synced).
    Acked {
        /// The batch.
        key: BatchKey,
        /// The term it was posted with.
        term: u64,
        /// Windows the cloud stored now.
        new_windows: u64,
        /// Windows the cloud already held.
        duplicate_windows: u64,
        /// The whole key was already stored (a resend).
        repeat: bool,
    },
    /// A post or read failed and `stream` waits `delay_ms` before trying again (log, count).
    Backoff {
        /// The stream.
        stream: StreamId,
        /// What is retried.
        retry: RetryOf,
        /// Consecutive failures of it.
        failures: u32,
        /// The wait, in milliseconds.
        delay_ms: u64,
        /// What failed.
        reason: String,
    },
    /// The cloud rejected a batch (a 4xx other than fencing): its stream is held and the batch
    /// retried in `retry_ms`. Log loudly; an operator must look (token, size limits).
    Rejected {
        /// The batch.
        key: BatchKey,
        /// What the cloud said.
        message: String,
        /// When it is tried again, in milliseconds from now.
        retry_ms: u64,
    },
    /// The cloud refused this gateway's term: a newer gateway exists. The core has stopped
    /// posting and will not post again until it leads a term of at least `highest`. Log it.
    Fenced {
        /// This gateway's term.
        term: u64,
        /// The highest term the cloud has accepted.
        highest: u64,
    },
    /// Something noticed and dealt with; log and count it.
    Warning(SyncWarning),
}

/// Whether this node syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not the leader: keeps track of cursors and heads, sends nothing.
    Follower,
    /// The gateway in `term`.
    Leader {
        /// The Raft term.
        term: u64,
    },
    /// Believes it leads `term`, but the cloud has accepted the higher term `highest`: posts
    /// nothing until it leads a term of at least `highest`.
    Fenced {
        /// The term it was told it leads.
        term: u64,
        /// The highest term the cloud has accepted.
        highest: u64,
    },
}

/// The cloud as this core sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudStatus {
    /// Whether the last answer came from the cloud (anything but
    /// [`CloudOutcome::Unavailable`]); `None` before the first answer.
    pub reachable: Option<bool>,
    /// Posts in a row, all streams together, that were not acknowledged.
    pub consecutive_failures: u32,
    /// The last failure, for `verge ctl sync`.
    pub last_error: Option<String>,
    /// When the last acknowledgement arrived.
    pub last_ack_ms: Option<u64>,
    /// The highest term the cloud has said it accepted (from fencing refusals; 0 if none).
    pub highest_term_seen: u64,
}

/// One stream, as `verge ctl sync` and the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// The stream.
    pub stream: StreamId,
    /// The highest sequence number known to exist (reported readable, read, or in the outbox).
    pub head: u64,
    /// The committed cursor.
    pub committed: u64,
    /// The highest sequence number known to be in the cloud (the committed cursor or, ahead of
    /// it, what the cloud acknowledged to this core).
    pub acked: u64,
    /// `head - acked`: windows waiting to be synced.
    pub backlog: u64,
    /// Batches of the stream in the outbox.
    pub outbox_batches: usize,
    /// The batch posted and not yet answered.
    pub in_flight: Option<BatchKey>,
    /// The last batch the cloud acknowledged, and when.
    pub last_acked: Option<(BatchKey, u64)>,
    /// Failed posts in a row.
    pub consecutive_failures: u32,
    /// When the next post is due, if the stream is waiting out a retry delay.
    pub retry_at_ms: Option<u64>,
    /// Why the stream is held, if the cloud rejected its batch.
    pub held: Option<String>,
}

/// Running totals, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Posts handed to the driver.
    pub batches_posted: u64,
    /// Posts the cloud acknowledged.
    pub batches_acked: u64,
    /// Windows the cloud stored new.
    pub windows_stored: u64,
    /// Windows the cloud already held when they were posted again.
    pub windows_duplicate: u64,
    /// Answers [`CloudOutcome::Unavailable`].
    pub answers_unavailable: u64,
    /// Answers [`CloudOutcome::Rejected`].
    pub answers_rejected: u64,
    /// Answers [`CloudOutcome::Stale`].
    pub answers_stale: u64,
    /// Reads handed to the driver.
    pub reads: u64,
    /// Reads that failed or found nothing.
    pub reads_failed: u64,
    /// Cursor proposals handed to the driver.
    pub cursors_proposed: u64,
    /// Cursor proposals that committed.
    pub cursors_committed: u64,
    /// Cursor proposals that failed.
    pub cursor_proposals_failed: u64,
}

/// The whole core, as `verge ctl sync` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// Follower, gateway, or fenced gateway.
    pub role: Role,
    /// When this core last became leader.
    pub leader_since_ms: Option<u64>,
    /// The cloud's reachability and failures.
    pub cloud: CloudStatus,
    /// Every stream, by name.
    pub streams: Vec<StreamStatus>,
    /// Windows waiting, all streams together.
    pub backlog: u64,
    /// Posts not yet answered.
    pub posts_in_flight: usize,
    /// Reads not yet answered.
    pub reads_in_flight: usize,
    /// Batches in the outbox.
    pub outbox_batches: usize,
    /// Running totals.
    pub counters: SyncCounters,
}

/// One stream's sync state.
#[derive(Debug, Clone, Default)]
struct Stream {
    /// The committed cursor, as far as this core has heard.
    committed: u64,
    /// The highest sequence number the cloud acknowledged to this core contiguously from the
    /// committed cursor (possibly not committed yet). Kept across leadership changes: the cloud
    /// never forgets, whoever posted.
    acked: u64,
    /// The readable head last reported.
    head: u64,
    /// The highest sequence number known to exist, for the backlog.
    head_seen: u64,
    /// Persisted and not yet known to be in the cloud, by (first, last) seq.
    outbox: BTreeMap<(u64, u64), Batch>,
    /// The outstanding read: (from_seq, max).
    reading: Option<(u64, u64)>,
    read_failures: u32,
    read_retry_at: u64,
    last_read_ms: u64,
    /// The outstanding post: (first_seq, last_seq, term).
    posting: Option<(u64, u64, u64)>,
    post_failures: u32,
    post_retry_at: u64,
    last_post_ms: u64,
    /// The cloud's rejection holding the stream, until an acknowledgement clears it.
    held: Option<String>,
    /// The outstanding cursor proposal.
    proposing: Option<u64>,
    propose_retry_at: u64,
    last_acked: Option<(BatchKey, u64)>,
}

impl Stream {
    /// Everything up to here is in the cloud.
    fn progress(&self) -> u64 {
        self.committed.max(self.acked)
    }

    /// The batch to post next: the lowest in the outbox, if everything before it is in the cloud.
    fn next_batch(&self) -> Option<&Batch> {
        let p = self.progress();
        self.outbox
            .values()
            .next()
            .filter(|b| b.first_seq <= p.saturating_add(1))
    }

    /// Where the next read starts (the first sequence number neither in the cloud nor in the
    /// outbox) and how many records fit before the next outbox batch, if one follows a gap.
    fn next_read(&self) -> (u64, Option<u64>) {
        let mut x = self.progress().saturating_add(1);
        for b in self.outbox.values() {
            if b.first_seq > x {
                return (x, Some(b.first_seq - x));
            }
            x = x.max(b.last_seq.saturating_add(1));
        }
        (x, None)
    }
}

/// The gateway's cloud-sync core. See the module docs.
#[derive(Debug)]
pub struct Syncer {
    cfg: SyncConfig,
    rng: SplitMix64,
    role: Role,
    /// The highest leadership term this core has been told of.
    term_seen: u64,
    /// The highest term the cloud said it accepted (from fencing refusals).
    cloud_term_seen: u64,
    /// Whether a [`SyncEvent::Cursors`] has arrived; nothing is read or posted before.
    cursors_known: bool,
    leader_since_ms: Option<u64>,
    streams: BTreeMap<StreamId, Stream>,
    cloud: CloudStatus,
    counters: SyncCounters,
}

impl Syncer {
    /// A core for `cfg`, its retry jitter drawn from `seed`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the configuration does not validate.
    pub fn new(cfg: SyncConfig, seed: u64) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            rng: SplitMix64::new(seed),
            role: Role::Follower,
            term_seen: 0,
            cloud_term_seen: 0,
            cursors_known: false,
            leader_since_ms: None,
            streams: BTreeMap::new(),
            cloud: CloudStatus::default(),
            counters: SyncCounters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// Follower, gateway, or fenced gateway.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Handles one event at `now_ms` (milliseconds on a monotonic clock) and returns what the
    /// driver must do, in order.
    pub fn handle(&mut self, now_ms: u64, event: SyncEvent) -> Vec<SyncAction> {
        let mut out = Vec::new();
        match event {
            SyncEvent::BecameLeader { term } => self.became_leader(now_ms, term, &mut out),
            SyncEvent::LostLeadership => {
                self.role = Role::Follower;
                self.leader_since_ms = None;
            }
            SyncEvent::Cursors { cursors } => {
                self.cursors_known = true;
                let mut ignored = 0;
                for (stream, cursor) in cursors {
                    match self.entry(&stream) {
                        Some(st) => {
                            st.committed = st.committed.max(cursor);
                            st.head_seen = st.head_seen.max(cursor);
                        }
                        None => ignored += 1,
                    }
                }
                self.warn_ignored(ignored, &mut out);
            }
            SyncEvent::StreamHeads { heads } => {
                let mut ignored = 0;
                for (stream, head) in heads {
                    match self.entry(&stream) {
                        Some(st) => {
                            st.head = head;
                            st.head_seen = st.head_seen.max(head);
                        }
                        None => ignored += 1,
                    }
                }
                self.warn_ignored(ignored, &mut out);
            }
            SyncEvent::Read {
                stream,
                first_seq,
                records,
            } => self.read_done(now_ms, stream, first_seq, records, &mut out),
            SyncEvent::ReadFailed { stream, error } => {
                if let Some(st) = self.streams.get_mut(&stream)
                    && st.reading.is_some()
                {
                    st.reading = None;
                    self.counters.reads_failed += 1;
                    self.read_backoff(now_ms, &stream, error, &mut out);
                }
            }
            SyncEvent::OutboxLoaded { batches } => self.outbox_loaded(batches, &mut out),
            SyncEvent::CloudAnswer { key, term, outcome } => {
                self.cloud_answer(now_ms, key, term, outcome, &mut out)
            }
            SyncEvent::CursorCommitted { stream, up_to } => {
                if let Some(st) = self.streams.get_mut(&stream) {
                    st.committed = st.committed.max(up_to);
                    if st.proposing == Some(up_to) {
                        st.proposing = None;
                    }
                    self.counters.cursors_committed += 1;
                }
            }
            SyncEvent::CursorProposeFailed { stream, up_to, .. } => {
                if let Some(st) = self.streams.get_mut(&stream)
                    && st.proposing == Some(up_to)
                {
                    st.proposing = None;
                    st.propose_retry_at = now_ms.saturating_add(self.cfg.propose_retry_ms);
                    self.counters.cursor_proposals_failed += 1;
                }
            }
            SyncEvent::Tick => {}
        }
        self.pump(now_ms, &mut out);
        out
    }

    /// When a [`SyncEvent::Tick`] next has something to do: the earliest retry delay (of a post,
    /// a read or a cursor proposal) that ends after `now_ms`, if any. Everything else the core
    /// does follows from events, so a driver that ticks only at these times misses nothing.
    pub fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        if !matches!(self.role, Role::Leader { .. }) || !self.cursors_known {
            return None;
        }
        let mut at: Option<u64> = None;
        let mut consider = |t: u64| {
            if t > now_ms {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        for st in self.streams.values() {
            if st.posting.is_none() && st.next_batch().is_some() {
                consider(st.post_retry_at);
            }
            if st.reading.is_none() && st.next_read().0 <= st.head {
                consider(st.read_retry_at);
            }
            if st.proposing.is_none() && st.acked > st.committed {
                consider(st.propose_retry_at);
            }
        }
        at
    }

    /// The state of the core for `verge ctl sync` and the metrics.
    pub fn status(&self, now_ms: u64) -> SyncStatus {
        let streams: Vec<StreamStatus> = self
            .streams
            .iter()
            .map(|(id, st)| {
                let acked = st.progress();
                StreamStatus {
                    stream: id.clone(),
                    head: st.head_seen,
                    committed: st.committed,
                    acked,
                    backlog: st.head_seen.saturating_sub(acked),
                    outbox_batches: st.outbox.len(),
                    in_flight: st.posting.map(|(first_seq, last_seq, _)| BatchKey {
                        stream: id.clone(),
                        first_seq,
                        last_seq,
                    }),
                    last_acked: st.last_acked.clone(),
                    consecutive_failures: st.post_failures,
                    retry_at_ms: (st.post_retry_at > now_ms && st.posting.is_none())
                        .then_some(st.post_retry_at),
                    held: st.held.clone(),
                }
            })
            .collect();
        SyncStatus {
            role: self.role,
            leader_since_ms: self.leader_since_ms,
            cloud: self.cloud.clone(),
            backlog: streams.iter().map(|s| s.backlog).sum(),
            posts_in_flight: self.posts_in_flight(),
            reads_in_flight: self.reads_in_flight(),
            outbox_batches: self.streams.values().map(|s| s.outbox.len()).sum(),
            streams,
            counters: self.counters,
        }
    }

    fn posts_in_flight(&self) -> usize {
        self.streams
            .values()
            .filter(|s| s.posting.is_some())
            .count()
    }

    fn reads_in_flight(&self) -> usize {
        self.streams
            .values()
            .filter(|s| s.reading.is_some())
            .count()
    }

    /// The stream's state, created if there is room.
    fn entry(&mut self, stream: &StreamId) -> Option<&mut Stream> {
        if !self.streams.contains_key(stream) {
            if self.streams.len() >= self.cfg.streams_max {
                return None;
            }
            self.streams.insert(stream.clone(), Stream::default());
        }
        self.streams.get_mut(stream)
    }

    fn warn_ignored(&self, ignored: usize, out: &mut Vec<SyncAction>) {
        if ignored > 0 {
            out.push(SyncAction::Warning(SyncWarning::TooManyStreams {
                ignored,
                max: self.cfg.streams_max,
            }));
        }
    }

    fn became_leader(&mut self, now: u64, term: u64, out: &mut Vec<SyncAction>) {
        if term < self.term_seen {
            out.push(SyncAction::Warning(SyncWarning::StaleLeadership {
                term,
                seen: self.term_seen,
            }));
            return;
        }
        match self.role {
            Role::Leader { term: t } | Role::Fenced { term: t, .. } if t == term => return,
            _ => {}
        }
        self.term_seen = term;
        self.leader_since_ms = Some(now);
        if term < self.cloud_term_seen {
            // The cloud has already accepted a later gateway: this leadership is over, whatever
            // Raft said when the event was sent.
            self.role = Role::Fenced {
                term,
                highest: self.cloud_term_seen,
            };
            out.push(SyncAction::Fenced {
                term,
                highest: self.cloud_term_seen,
            });
            return;
        }
        self.role = Role::Leader { term };
        // Posts and proposals of an earlier term are forgotten: their answers still count as
        // knowledge of what the cloud holds, but they no longer occupy a slot, so the outbox is
        // resent at once with the new term.
        for st in self.streams.values_mut() {
            st.posting = None;
            st.post_failures = 0;
            st.post_retry_at = now;
            st.proposing = None;
            st.propose_retry_at = now;
        }
    }

    fn outbox_loaded(&mut self, mut batches: Vec<Batch>, out: &mut Vec<SyncAction>) {
        batches.sort_by(|a, b| {
            (&a.stream, a.first_seq, a.last_seq).cmp(&(&b.stream, b.first_seq, b.last_seq))
        });
        for batch in batches {
            let key = batch.key();
            let defect = if batch.cluster != self.cfg.cluster {
                Some(OutboxDefect::OtherCluster(batch.cluster.clone()))
            } else {
                batch.check().err()
            };
            let defect = match defect {
                Some(d) => Some(d),
                None => match self.entry(&batch.stream) {
                    Some(st) => {
                        st.head_seen = st.head_seen.max(batch.last_seq);
                        st.outbox.insert((batch.first_seq, batch.last_seq), batch);
                        None
                    }
                    None => Some(OutboxDefect::TooManyStreams),
                },
            };
            if let Some(defect) = defect {
                out.push(SyncAction::Warning(SyncWarning::OutboxDiscarded {
                    key: key.clone(),
                    defect,
                }));
                out.push(SyncAction::DropOutbox { key });
            }
        }
    }

    fn read_done(
        &mut self,
        now: u64,
        stream: StreamId,
        first_seq: u64,
        mut records: Vec<Record>,
        out: &mut Vec<SyncAction>,
    ) {
        let leading = matches!(self.role, Role::Leader { .. });
        let term = self.term_seen;
        let cfg = &self.cfg;
        let Some(st) = self.streams.get_mut(&stream) else {
            out.push(SyncAction::Warning(SyncWarning::UnexpectedRead {
                stream,
                first_seq,
            }));
            return;
        };
        let Some((from, max)) = st.reading.filter(|(from, _)| *from == first_seq) else {
            out.push(SyncAction::Warning(SyncWarning::UnexpectedRead {
                stream,
                first_seq,
            }));
            return;
        };
        st.reading = None;
        if records.is_empty() {
            self.counters.reads_failed += 1;
            self.read_backoff(now, &stream, "no replica has these records yet".into(), out);
            return;
        }
        st.read_failures = 0;
        if records.len() as u64 > max {
            out.push(SyncAction::Warning(SyncWarning::ReadTooLong {
                stream: stream.clone(),
                got: records.len(),
                max,
            }));
            records.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        }
        let last = from + records.len() as u64 - 1;
        st.head = st.head.max(last);
        st.head_seen = st.head_seen.max(last);
        if !leading {
            return;
        }
        // Cursors or acknowledgements may have moved while the read was out: keep only the part
        // that is neither in the cloud nor in the outbox, up to the next outbox batch.
        let (want, room) = st.next_read();
        if want < from || want > last {
            return;
        }
        let skip = usize::try_from(want - from).unwrap_or(usize::MAX);
        let take = (records.len() - skip)
            .min(cfg.batch_windows_max)
            .min(room.map_or(usize::MAX, |r| usize::try_from(r).unwrap_or(usize::MAX)));
        if take == 0 {
            return;
        }
        let windows: Vec<(u64, Record)> = (want..).zip(records.drain(skip..skip + take)).collect();
        let batch = Batch {
            cluster: cfg.cluster.clone(),
            term,
            gateway: cfg.gateway.clone(),
            stream,
            first_seq: want,
            last_seq: want + take as u64 - 1,
            windows,
        };
        st.outbox
            .insert((batch.first_seq, batch.last_seq), batch.clone());
        out.push(SyncAction::PersistOutbox { batch });
    }

    fn read_backoff(
        &mut self,
        now: u64,
        stream: &StreamId,
        reason: String,
        out: &mut Vec<SyncAction>,
    ) {
        let (min, max) = (self.cfg.retry_ms_min, self.cfg.retry_ms_max);
        let Some(st) = self.streams.get_mut(stream) else {
            return;
        };
        st.read_failures = st.read_failures.saturating_add(1);
        let delay_ms = backoff_ms(&mut self.rng, st.read_failures, min, max);
        st.read_retry_at = now.saturating_add(delay_ms);
        out.push(SyncAction::Backoff {
            stream: stream.clone(),
            retry: RetryOf::Read,
            failures: st.read_failures,
            delay_ms,
            reason,
        });
    }

    fn cloud_answer(
        &mut self,
        now: u64,
        key: BatchKey,
        term: u64,
        outcome: CloudOutcome,
        out: &mut Vec<SyncAction>,
    ) {
        let Some(st) = self.streams.get_mut(&key.stream) else {
            return;
        };
        let mine = st.posting == Some((key.first_seq, key.last_seq, term));
        if mine {
            st.posting = None;
        }
        let was_unreachable = self.cloud.reachable == Some(false);
        let acknowledged = matches!(
            outcome,
            CloudOutcome::Stored { .. } | CloudOutcome::Duplicate
        );
        match outcome {
            CloudOutcome::Stored { .. } | CloudOutcome::Duplicate => {
                let (new_windows, duplicate_windows, repeat) = match outcome {
                    CloudOutcome::Stored { stored, duplicates } => (stored, duplicates, false),
                    _ => (0, key.last_seq - key.first_seq + 1, true),
                };
                // Only a contiguous acknowledgement moves the point a cursor may be proposed
                // to. Posts always start within it, so this holds for every answer to this core's
                // own posts, whatever term they were made in.
                if key.first_seq <= st.progress().saturating_add(1) {
                    st.acked = st.acked.max(key.last_seq);
                }
                if mine {
                    st.post_failures = 0;
                    st.held = None;
                }
                st.last_acked = Some((key.clone(), now));
                self.cloud.reachable = Some(true);
                self.cloud.consecutive_failures = 0;
                self.cloud.last_ack_ms = Some(now);
                self.counters.batches_acked += 1;
                self.counters.windows_stored += new_windows;
                self.counters.windows_duplicate += duplicate_windows;
                out.push(SyncAction::Acked {
                    key,
                    term,
                    new_windows,
                    duplicate_windows,
                    repeat,
                });
            }
            CloudOutcome::Stale { highest } => {
                self.counters.answers_stale += 1;
                self.cloud.reachable = Some(true);
                self.cloud_term_seen = self.cloud_term_seen.max(highest);
                self.cloud.highest_term_seen = self.cloud_term_seen;
                // Fenced if this very term was refused, or if the cloud has accepted a term above
                // the one this core leads (learnt from the answer to an older post).
                if let Role::Leader { term: t } = self.role
                    && (t <= term || self.cloud_term_seen > t)
                {
                    self.role = Role::Fenced {
                        term: t,
                        highest: self.cloud_term_seen,
                    };
                    out.push(SyncAction::Fenced {
                        term: t,
                        highest: self.cloud_term_seen,
                    });
                }
            }
            CloudOutcome::Rejected(message) => {
                self.counters.answers_rejected += 1;
                self.cloud.reachable = Some(true);
                self.cloud.consecutive_failures = self.cloud.consecutive_failures.saturating_add(1);
                self.cloud.last_error = Some(format!("{key}: rejected: {message}"));
                if mine {
                    st.post_failures = st.post_failures.saturating_add(1);
                    let retry_ms = jitter_ms(&mut self.rng, self.cfg.rejected_retry_ms);
                    st.post_retry_at = now.saturating_add(retry_ms);
                    st.held = Some(message.clone());
                    out.push(SyncAction::Rejected {
                        key,
                        message,
                        retry_ms,
                    });
                }
            }
            CloudOutcome::Unavailable(reason) => {
                self.counters.answers_unavailable += 1;
                self.cloud.reachable = Some(false);
                self.cloud.consecutive_failures = self.cloud.consecutive_failures.saturating_add(1);
                self.cloud.last_error = Some(format!("{key}: {reason}"));
                if mine {
                    st.post_failures = st.post_failures.saturating_add(1);
                    let delay_ms = backoff_ms(
                        &mut self.rng,
                        st.post_failures,
                        self.cfg.retry_ms_min,
                        self.cfg.retry_ms_max,
                    );
                    st.post_retry_at = now.saturating_add(delay_ms);
                    out.push(SyncAction::Backoff {
                        stream: key.stream,
                        retry: RetryOf::Post,
                        failures: st.post_failures,
                        delay_ms,
                        reason,
                    });
                }
            }
        }
        // The cloud answers again after being unreachable: the streams waiting out a backoff
        // because of it go now rather than at their own retry times (a stream held because the
        // cloud rejected its batch stays held).
        if was_unreachable && acknowledged {
            for st in self.streams.values_mut() {
                if st.held.is_none() && st.post_retry_at > now {
                    st.post_retry_at = now;
                }
            }
        }
    }

    /// Drops what the cloud holds from the outbox, then, as leader: proposes cursors, posts the
    /// next batches, and reads ahead, within the bounds.
    fn pump(&mut self, now: u64, out: &mut Vec<SyncAction>) {
        for (id, st) in &mut self.streams {
            // Batches leave from the front: a batch behind the front that is already covered (an
            // overlapping one loaded from the outbox) goes once it is the front.
            let p = st.progress();
            while let Some(front) = st.outbox.first_entry()
                && front.get().last_seq <= p
            {
                let (first_seq, last_seq) = *front.key();
                front.remove();
                out.push(SyncAction::DropOutbox {
                    key: BatchKey {
                        stream: id.clone(),
                        first_seq,
                        last_seq,
                    },
                });
            }
        }
        let Role::Leader { term } = self.role else {
            return;
        };
        if !self.cursors_known {
            return;
        }
        for (id, st) in &mut self.streams {
            if st.proposing.is_none() && st.acked > st.committed && now >= st.propose_retry_at {
                st.proposing = Some(st.acked);
                self.counters.cursors_proposed += 1;
                out.push(SyncAction::ProposeCursor {
                    term,
                    stream: id.clone(),
                    up_to: st.acked,
                });
            }
        }
        self.post_ready(now, term, out);
        self.read_ahead(now, out);
    }

    fn post_ready(&mut self, now: u64, term: u64, out: &mut Vec<SyncAction>) {
        let slots = self
            .cfg
            .posts_inflight_max
            .saturating_sub(self.posts_in_flight());
        if slots == 0 {
            return;
        }
        // Least recently posted first, so every stream gets its turn.
        let mut ready: Vec<(u64, StreamId)> = self
            .streams
            .iter()
            .filter(|(_, st)| {
                st.posting.is_none() && now >= st.post_retry_at && st.next_batch().is_some()
            })
            .map(|(id, st)| (st.last_post_ms, id.clone()))
            .collect();
        ready.sort();
        for (_, id) in ready.into_iter().take(slots) {
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            let Some(mut batch) = st.next_batch().cloned() else {
                continue;
            };
            batch.term = term;
            batch.gateway = self.cfg.gateway.clone();
            st.posting = Some((batch.first_seq, batch.last_seq, term));
            st.last_post_ms = now;
            self.counters.batches_posted += 1;
            out.push(SyncAction::Post { batch });
        }
    }

    fn read_ahead(&mut self, now: u64, out: &mut Vec<SyncAction>) {
        let slots = self
            .cfg
            .reads_inflight_max
            .saturating_sub(self.reads_in_flight());
        if slots == 0 {
            return;
        }
        // Reads in flight count towards the outbox: each may become a batch.
        let mut outbox_total: usize = self
            .streams
            .values()
            .map(|s| s.outbox.len() + usize::from(s.reading.is_some()))
            .sum();
        let (stream_max, outbox_max) = (
            self.cfg.stream_outbox_batches_max,
            self.cfg.outbox_batches_max,
        );
        // Within the bounds; or, whatever the bounds, the batch a stream cannot go on without
        // (the one right after what the cloud holds), so a full outbox never wedges a stream.
        let may_read = move |st: &Stream, total: usize| {
            (total < outbox_max && st.outbox.len() < stream_max) || st.next_batch().is_none()
        };
        let mut ready: Vec<(u64, &StreamId)> = self
            .streams
            .iter()
            .filter(|(_, st)| {
                st.reading.is_none()
                    && now >= st.read_retry_at
                    && may_read(st, outbox_total)
                    && st.next_read().0 <= st.head
            })
            .map(|(id, st)| (st.last_read_ms, id))
            .collect();
        ready.sort();
        let ready: Vec<StreamId> = ready.into_iter().map(|(_, id)| id.clone()).collect();
        let mut issued = 0;
        for id in ready {
            if issued == slots {
                break;
            }
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            if !may_read(st, outbox_total) {
                continue;
            }
            let (from_seq, room) = st.next_read();
            let max = (self.cfg.batch_windows_max as u64)
                .min(room.unwrap_or(u64::MAX))
                .min(st.head - from_seq + 1);
            st.reading = Some((from_seq, max));
            st.last_read_ms = now;
            outbox_total += 1;
            issued += 1;
            self.counters.reads += 1;
            out.push(SyncAction::Read {
                stream: id,
                from_seq,
                max,
            });
        }
    }
}
