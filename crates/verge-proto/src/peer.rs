//! Messages between nodes on ALPN `verge/1`.
//!
//! The sender's identity is never inside a message: it is the node id in the certificate that
//! authenticated the connection the message arrived on.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::replication::ReplicationMessage;
use crate::{Record, StreamId, StreamKind};

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
    /// Several replication messages, handled in order as if sent one by one. A node batches what
    /// it has queued for a peer, so that the appends of one producer's request arrive together.
    ReplicationBatch(Vec<ReplicationMessage>),
    /// A request that expects one [`PeerMessage::Reply`] on the same stream. The asker opens a
    /// stream per request.
    Request(PeerRequest),
    /// The answer to a [`PeerMessage::Request`].
    Reply(PeerReply),
    /// The sender's inference load, sent with its heartbeats; nothing answers it.
    Load(LoadReport),
}

/// A node's inference load, as it tells its peers (what offload decides on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Feature rows waiting for inference.
    pub queued_rows: u32,
    /// Smoothed inference time per row, in microseconds (0 before the first batch).
    pub us_per_row: f32,
    /// Rows predicted so far.
    pub rows: u64,
    /// The node is drained: it takes no offloaded work.
    pub drained: bool,
    /// Rows of this node's own batches that a neighbour computed.
    pub offloaded_rows: u64,
    /// Rows of neighbours' batches this node computed for them.
    pub taken_rows: u64,
}

/// What one node asks another, answered on the same stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// A message of the control plane (Raft), opaque to everything but `verge-control`.
    Control(Bytes),
    /// The streams the node holds (owned or copied), optionally only of one kind.
    Streams {
        /// Only streams of this kind; all when `None`.
        kind: Option<StreamKind>,
    },
    /// Records `from..=to` of a stream the node holds, at most `limit`.
    Read {
        /// The stream.
        stream: StreamId,
        /// First sequence number.
        from: u64,
        /// Last sequence number, inclusive.
        to: u64,
        /// The most records.
        limit: u32,
    },
    /// The model bundle with this digest (hex SHA-256 of its encoding), if the node keeps it.
    ModelBundle {
        /// The bundle's digest.
        digest: String,
    },
    /// The models the node runs.
    Models,
    /// Run one inference batch for the asker (offload); answered with
    /// [`PeerReply::Inferred`].
    Infer(InferRequest),
}

/// An inference batch offloaded to a neighbour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// The model's name; the helper runs its own copy.
    pub model: String,
    /// The model's version: a helper running another version refuses, so a prediction never
    /// mixes versions.
    pub version: String,
    /// Values per row.
    pub features: u32,
    /// The rows, row after row.
    pub rows: Vec<f32>,
    /// Milliseconds left until the asker's deadline: a helper that cannot start in time refuses.
    pub deadline_ms: u32,
}

/// One stream as a peer reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStream {
    /// The stream.
    pub id: StreamId,
    /// The first sequence number still held.
    pub first_seq: u64,
    /// The highest sequence number durable on that node.
    pub durable_head: u64,
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerReply {
    /// The answer of the control plane.
    Control(Bytes),
    /// The streams asked for.
    Streams(Vec<PeerStream>),
    /// `(sequence, record)` pairs in order.
    Records(Vec<(u64, Record)>),
    /// The encoded [`crate::model::ModelBundle`] asked for.
    ModelBundle(Bytes),
    /// The models the node runs.
    Models(crate::model::NodeModels),
    /// The outputs of an offloaded batch, one per row.
    Inferred(Vec<f32>),
    /// The request could not be served.
    Error(String),
}
