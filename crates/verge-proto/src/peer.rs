//! Messages between nodes on ALPN `verge/1`.
//!
//! The sender's identity is never inside a message: it is the node id in the certificate that
//! authenticated the connection the message arrived on.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::replication::ReplicationMessage;

/// The ALPN protocol id for node-to-node connections.
pub const ALPN_PEER: &[u8] = b"verge/1";

/// One message on a node-to-node stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A heartbeat. The receiver answers with a [`PeerMessage::Pong`] echoing `sent_us`, so the
    /// sender can measure the round trip on its own clock.
    Ping {
        /// The sender's heartbeat counter.
        seq: u64,
        /// The sender's monotonic clock, in microseconds, when it sent the ping.
        sent_us: u64,
    },
    /// The answer to a ping.
    Pong {
        /// The ping's `seq`.
        seq: u64,
        /// The ping's `sent_us`, unchanged.
        echo_us: u64,
    },
    /// An opaque payload that the receiver echoes back unchanged when asked to. Used by the
    /// network benchmark and by tests that need traffic of a chosen size.
    Blob {
        /// The sender's counter.
        seq: u64,
        /// The payload.
        payload: Bytes,
    },
    /// A message of the replication protocol ([`crate::replication`]). A node sends these on the
    /// connection it dialed to the receiver; nothing answers them on the same stream.
    Replication(ReplicationMessage),
}
