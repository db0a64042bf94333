//! The replication core of Verge: pure state machines that decide where a stream's copies live,
//! what to send to whom, when a producer may be told its records are safe, and how a restarted
//! owner gets back what it lost, without giving one sequence number to two records.
//!
//! Nothing here does IO, reads a clock or draws a random number (STYLE.md items 3 and 9). The
//! node's store and replication actors drive these cores: they feed in events with the current
//! time (`now`, milliseconds on a monotonic clock) and carry out the returned actions with the
//! store and the network, in order. The same cores run under a seeded simulation
//! (`tests/sim`) with a simulated clock, network, crashes and partitions.
//!
//! - [`placement`]: rendezvous hashing of streams onto neighbours.
//! - [`Owner`]: one per node, for the streams it writes.
//! - [`Replica`]: one per node, for the copies it keeps of its neighbours' streams.
//! - [`config`]: the knobs, their defaults and their checks; [`error`]: what can go wrong.
//!
//! The wire messages are in [`verge_proto::replication`].
//!
//! # Driving the cores
//!
//! The node's store actor owns the store, one [`Owner`] and one [`Replica`]; `now` is
//! milliseconds on a monotonic clock.
//!
//! 1. **Start.** Open the store. Increment the node's epoch counter and make it durable. Build
//!    [`Owner::new`] from the node's own streams (first retained seq, head, durable head and the
//!    holders last persisted) and [`Replica::new`] from the copies of other nodes' streams.
//!    Feed [`OwnerEvent::PeerUp`] for each peer the membership table sees, and every later
//!    change as [`OwnerEvent::PeerUp`] / [`OwnerEvent::PeerDown`].
//! 2. **Producer batch.** [`Owner::next_seq`]; on `Ok(seq)` append the records to the store
//!    at `seq`, then [`Owner::appended`] and carry out its actions. `Recovering` and
//!    `Backpressure` are retryable: hold the batch or push back on the sensor.
//! 3. **After each group-commit flush,** for every stream whose durable head moved:
//!    [`OwnerEvent::LocalDurable`] for own streams, [`ReplicaEvent::LocalDurable`] for copies.
//! 4. **Each replication frame** from a peer (the sender is the certificate's node id):
//!    `ToReplica` to [`Replica::handle`], `ToOwner` to [`Owner::handle`] as
//!    [`OwnerEvent::Received`].
//! 5. **A timer** every quarter of `resend_after_ms` or so: [`OwnerEvent::Tick`]. After
//!    retention: [`OwnerEvent::Retained`] for own streams.
//! 6. **Carry out actions in order.** [`OwnerAction::PersistHolders`] must be durable before
//!    the next action; [`OwnerAction::SendAppend`] reads the records from the store;
//!    [`OwnerAction::AckProducer`] completes the producer's waits; the rest are messages to
//!    send, records to store, or things to log and count. [`Owner::status`] feeds
//!    `verge ctl streams` and the replication-lag metrics.
//! 7. **If a store call fails** while carrying out an action, drop both cores and rebuild them
//!    from the store as in step 1 (with a new epoch): the cores never need to hear about a
//!    failure, and a rebuilt owner recovers exactly as after a crash.

pub mod config;
pub mod error;
pub mod owner;
pub mod placement;
pub mod replica;

pub use config::{OwnerConfig, ReplicaConfig, Shortfall};
pub use error::{AppendError, ConfigError, ProtocolError, StartError};
pub use owner::{Owner, OwnerAction, OwnerEvent, Phase, ReplicaStatus, StoredStream, StreamStatus};
pub use replica::{Replica, ReplicaAction, ReplicaEvent, StoredCopy};
