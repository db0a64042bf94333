//! Verge's control plane: a small Raft group (openraft 0.9.25, storage v2) whose leader is the
//! corridor's gateway, and whose replicated [`ControlState`] holds the membership, drain flags,
//! model versions and the per-stream cloud-sync cursors.
//!
//! This crate owns the openraft type config ([`TypeConfig`]), the sled log and state machine
//! ([`store`]), the Raft RPC payloads ([`wire`]) and openraft's network over a transport the node
//! supplies ([`ControlTransport`]). It knows nothing of actors, QUIC or the data plane: the node
//! drives it.
//!
//! # How a node drives it
//!
//! 1. **Start.** `Control::start(me, &data_dir.join("control"), cfg, voters, transport)`, with the
//!    voter list from the node config (the same 3 or 5 ids everywhere) and a transport over the
//!    node's QUIC connections. The smallest voter initializes the cluster the first time; every
//!    restart reuses the directory and rejoins with its log and state.
//! 2. **Carry bytes.** The transport's [`ControlTransport::call`] sends an opaque payload to a peer
//!    and returns the peer's answer. On the receiving node, hand the payload and the peer's
//!    authenticated id to [`Control::serve`] and send back the bytes it returns. Payloads are
//!    bounded (`ControlConfig::rpc_bytes_max`) and versioned; malformed ones get an error reply.
//! 3. **Follow the leader.** [`Control::watch_leader`] wakes on every leader or term change. The
//!    node whose id is the leader's is the gateway: it adds the configured non-voters with
//!    [`Control::add_learner`], reads the committed cursors with [`Control::linearizable_state`],
//!    and syncs to the cloud stamping batches with [`LeaderInfo::term`].
//! 4. **Change state.** [`Control::propose`] on the leader; on a follower it returns
//!    [`ControlError::NotLeader`] naming the leader, and the node forwards the command there.
//!    Commands are idempotent, so a timed-out proposal can be retried. After the cloud
//!    acknowledges batches the gateway proposes [`Command::AdvanceCursors`] with its term; a
//!    cursor never moves backwards, and an advance from a replaced gateway is refused.
//! 5. **Operator actions.** `verge ctl drain` becomes [`Command::SetDrain`]; the drained leader
//!    then calls [`Control::transfer_to`] with another voter, and a drained node may call
//!    [`Control::set_electable`]`(false)`. `verge ctl gateway transfer --to ID` is
//!    [`Control::transfer_to`] on the leader (forward it there like a proposal).
//! 6. **Stop.** [`Control::shutdown`].
//!
//! [`testing::MemNetwork`] is an in-memory transport with partitions, for tests and simulations.

#![warn(missing_docs)]

mod config;
mod control;
mod id;
mod network;
mod state;
pub mod store;
pub mod testing;
pub mod wire;

use std::io::Cursor;

pub use config::{ConfigError, ControlConfig};
pub use control::{Control, ControlError, LeaderInfo, Role, Status};
pub use id::{ControlNode, IdClash, RaftId, check_distinct, raft_id};
pub use network::{ControlTransport, TransportError};
pub use state::{
    CURSORS_PER_COMMAND_MAX, Command, ControlState, CursorBehind, CursorMove,
    MODEL_DIGEST_BYTES_MAX, MODEL_NAME_BYTES_MAX, ModelVersion, Refusal, Response,
};

openraft::declare_raft_types!(
    /// The openraft type configuration of Verge's control plane.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = RaftId,
        Node = ControlNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
