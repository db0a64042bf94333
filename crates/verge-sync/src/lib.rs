//! The gateway's cloud-sync core: a pure state machine that decides which windows of which
//! aggregate stream go to the cloud next, in which batch, when to retry, when a stream's cursor
//! may advance through Raft, and when this gateway has been fenced by a newer one.
//!
//! The model (DESIGN.md, "Cloud"): the Raft leader is the gateway. Every node has one aggregate
//! stream per approach (`<node>/aggregates/<approach>`, dense sequence numbers from 1,
//! replicated). The Raft state machine holds a cursor per stream: the highest sequence number the
//! cloud acknowledged. The gateway reads each stream from its cursor, cuts batches keyed by
//! (stream, first seq, last seq), persists each in a durable outbox, posts it with its Raft term,
//! and proposes the cursor only after the cloud acknowledges. The cloud keeps each key and each
//! window once and refuses a term below the highest it has accepted, so a new gateway resends at
//! most what was in flight and a deposed one is fenced.
//!
//! Nothing here does IO, reads a clock or draws an unseeded random number (STYLE.md items 3 and
//! 9). The node's sync actor drives the core; `tests/sim.rs` runs several cores under a
//! simulated Raft, store and cloud, with crashes, leader changes, a cut-off old leader, outages
//! and lost answers, for 1,000 seeds per `cargo test` (`VERGE_SEED=n` replays one).
//!
//! - [`Syncer`]: the state machine, fed [`SyncEvent`]s, returning [`SyncAction`]s; its
//!   [`Syncer::status`] feeds `verge ctl sync` and the metrics.
//! - [`Batch`] and [`BatchKey`]: what is persisted and posted.
//! - [`config`]: the knobs and their checks; [`error`]: what can go wrong.
//!
//! # Driving the core
//!
//! The node's sync actor owns one [`Syncer`] and the outbox (a tree in the node's store);
//! `now` is milliseconds on a monotonic clock.
//!
//! 1. **Start.** Build [`Syncer::new`] with the node's [`SyncConfig`] and any seed (the node id
//!    hashed with the start time will do: it only spreads retries). Feed
//!    [`SyncEvent::OutboxLoaded`] with every batch the outbox holds, then
//!    [`SyncEvent::Cursors`] from the applied Raft state (even if empty: until it arrives the
//!    core does nothing), and [`SyncEvent::StreamHeads`] with the aggregate streams to sync and
//!    the highest sequence number readable for each from the local store or a live replica.
//! 2. **As things change,** feed [`SyncEvent::Cursors`] whenever the state machine applies a
//!    cursor change (the whole map or just the changed streams), and [`SyncEvent::StreamHeads`]
//!    every second or when a head moves.
//! 3. **Leadership.** Feed [`SyncEvent::BecameLeader`] when Raft reports this node leader of a
//!    term, preferably once the leader has applied its term's first entry (its cursors are then
//!    current, and it resends less); feed [`SyncEvent::LostLeadership`] on any other state. A
//!    deposed leader that has not heard yet is harmless: the cloud fences its term, and its
//!    cursor proposals cannot commit.
//! 4. **Carry out the actions in order.** [`SyncAction::Read`]: read the records and answer
//!    [`SyncEvent::Read`] (possibly fewer, or none) or [`SyncEvent::ReadFailed`].
//!    [`SyncAction::PersistOutbox`]: write the batch under its key and fsync **before the next
//!    action**. [`SyncAction::Post`]: convert to `verge_cloud::api::Batch`, POST it in a task,
//!    and answer exactly one [`SyncEvent::CloudAnswer`] with the batch's key and term: stored or
//!    duplicate, [`CloudOutcome::Stale`] for a fencing refusal (HTTP 409),
//!    [`CloudOutcome::Rejected`] for another 4xx, [`CloudOutcome::Unavailable`] for everything
//!    else (timeouts included). [`SyncAction::DropOutbox`]: delete the key (need not be synced
//!    at once). [`SyncAction::ProposeCursor`]: a Raft client write that the state machine
//!    applies as `cursor = max(cursor, up_to)`; answer [`SyncEvent::CursorCommitted`] or
//!    [`SyncEvent::CursorProposeFailed`]. [`SyncAction::Acked`], [`SyncAction::Backoff`],
//!    [`SyncAction::Rejected`], [`SyncAction::Fenced`] and [`SyncAction::Warning`] are for the
//!    log and the metrics.
//! 5. **A timer:** after handling each event, set a timer for [`Syncer::next_deadline`] and feed
//!    [`SyncEvent::Tick`] when it fires (or simply tick every 100 ms or so).
//! 6. **If a store call fails** while carrying out an action (a read is not a store failure:
//!    answer [`SyncEvent::ReadFailed`]), drop the core and rebuild it as in step 1: the outbox
//!    and the Raft cursors are all it needs, and a rebuilt core resends at most what was in
//!    flight.

pub mod batch;
pub mod config;
pub mod error;
mod rng;
pub mod syncer;

pub use batch::{Batch, BatchKey};
pub use config::{BATCH_WINDOWS_CEILING, SyncConfig};
pub use error::{ConfigError, OutboxDefect, SyncWarning};
pub use syncer::{
    CloudOutcome, CloudStatus, RetryOf, Role, StreamStatus, SyncAction, SyncCounters, SyncEvent,
    SyncStatus, Syncer,
};
