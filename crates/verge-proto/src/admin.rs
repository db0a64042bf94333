//! Messages between `verge ctl` and a node on ALPN `verge-admin/1`.
//!
//! One request per bidirectional stream; the node answers with exactly one response frame and
//! finishes the stream.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// The ALPN protocol id for admin connections.
pub const ALPN_ADMIN: &[u8] = b"verge-admin/1";

/// What the admin CLI asks a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The node's id, version, uptime and a summary of its peers.
    Status,
    /// The node's membership table.
    Members,
    /// Sets injected network faults (tests and simulations only; a node refuses it unless its
    /// config says `[faults] enabled = true`). Replaces whatever was set before.
    SetFaults {
        /// Peers to cut off: every datagram to and from them is dropped.
        partition: Vec<NodeId>,
        /// Random datagram loss towards everyone, per million.
        loss_ppm: u32,
    },
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminResponse {
    /// Answer to [`AdminRequest::Status`].
    Status(NodeStatus),
    /// Answer to [`AdminRequest::Members`]: every configured peer and the node itself, by id.
    Members(Vec<MemberView>),
    /// Answer to [`AdminRequest::SetFaults`]: the faults now in force.
    Faults {
        /// Peers cut off.
        partition: Vec<NodeId>,
        /// Random loss, per million.
        loss_ppm: u32,
    },
    /// The request could not be served.
    Error {
        /// What went wrong, worded for an operator.
        message: String,
    },
}

/// A node's state as `verge ctl status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id (from its certificate).
    pub id: NodeId,
    /// The `verge` version the node runs.
    pub version: String,
    /// Time since the node started, in milliseconds.
    pub uptime_ms: u64,
    /// The address the node listens on for QUIC.
    pub listen: String,
    /// Configured peers currently alive.
    pub peers_alive: u32,
    /// Configured peers currently suspected.
    pub peers_suspect: u32,
    /// Configured peers currently down.
    pub peers_down: u32,
}

/// A member's liveness as this node's failure detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Heartbeats arrive as expected.
    Alive,
    /// Heartbeats are late enough to doubt the peer, not yet enough to give up on it.
    Suspect,
    /// No heartbeat for long enough to call the peer dead, or never heard from.
    Down,
}

impl MemberState {
    /// Lowercase name, as shown in tables, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// One row of the membership table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// The member's id.
    pub id: NodeId,
    /// The member's configured address.
    pub addr: String,
    /// Its state.
    pub state: MemberState,
    /// Milliseconds since the last heartbeat from it; `None` if never heard from.
    pub last_seen_ms: Option<u64>,
    /// Smoothed round-trip time in milliseconds; `None` before the first measurement.
    pub rtt_ms: Option<f64>,
    /// The failure detector's suspicion level (phi); 0 for the node itself.
    pub phi: f64,
    /// True for the row that describes the answering node itself.
    pub is_self: bool,
}
