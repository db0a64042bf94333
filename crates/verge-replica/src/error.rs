//! Errors of the replication core, one enum per kind of caller mistake or peer misbehaviour.
//!
//! [`AppendError::Recovering`] and [`AppendError::Backpressure`] are the retryable ones: the
//! producer waits and tries again. The rest are bugs in the driver ([`AppendError::OutOfOrder`],
//! [`StartError`]), bad configuration ([`ConfigError`]) or a peer breaking the protocol
//! ([`ProtocolError`], which the driver logs and counts; the core has already ignored the message).

use verge_proto::{NodeId, StreamId};

/// Replication settings that do not make sense together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `replicas` was 0.
    #[error("replicas must be at least 1 (the owner's own copy)")]
    NoReplicas,
    /// The quorums do not nest.
    #[error(
        "need 1 <= min_replicas ({min_replicas}) <= write_quorum ({write_quorum}) <= replicas ({replicas})"
    )]
    Quorum {
        /// The configured `min_replicas`.
        min_replicas: usize,
        /// The configured `write_quorum`.
        write_quorum: usize,
        /// The configured `replicas`.
        replicas: usize,
    },
    /// A bound is zero or above its ceiling.
    #[error("{name} is {value}; it must be between 1 and {max}")]
    Bound {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: u64,
        /// Its ceiling.
        max: u64,
    },
    /// The in-flight window cannot hold one full append message.
    #[error(
        "inflight_records_max ({inflight_records_max}) must be at least append_records_max ({append_records_max})"
    )]
    Window {
        /// The configured window.
        inflight_records_max: u64,
        /// The configured message size.
        append_records_max: usize,
    },
}

/// Why an owner core could not be built from what the store holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store listed a stream of another node among this node's own.
    #[error("stream {stream} belongs to {}, not to this node ({me})", stream.owner)]
    NotMine {
        /// The stream.
        stream: StreamId,
        /// This node.
        me: NodeId,
    },
    /// The store listed a stream twice.
    #[error("stream {0} is listed twice")]
    Duplicate(StreamId),
}

/// Why a local append cannot be taken now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The node restarted and is still finding out what its replicas hold of this stream;
    /// numbering a record now could give one sequence number to two different records.
    /// Retryable: it clears when every node listed has answered.
    #[error("stream {stream} is recovering after a restart; waiting on {waiting_on:?}")]
    Recovering {
        /// The stream.
        stream: StreamId,
        /// Nodes that may hold records of the stream and have not answered yet.
        waiting_on: Vec<NodeId>,
    },
    /// Too many records wait for acknowledgement. Retryable: it clears as acknowledgements come.
    #[error(
        "stream {stream} has {pending} records waiting for replication (limit {max}); slow down"
    )]
    Backpressure {
        /// The stream.
        stream: StreamId,
        /// Records appended and not yet acknowledged.
        pending: u64,
        /// The configured `pending_records_max`.
        max: u64,
    },
    /// The stream belongs to another node.
    #[error("stream {stream} belongs to {}, not to this node", stream.owner)]
    NotMine {
        /// The stream.
        stream: StreamId,
    },
    /// The driver reported an append that does not follow the stream's head (a driver bug).
    #[error("append to {stream} at seq {got}, but the next seq is {expected}")]
    OutOfOrder {
        /// The stream.
        stream: StreamId,
        /// The next sequence number.
        expected: u64,
        /// What the driver reported.
        got: u64,
    },
}

/// A peer sent something the protocol does not allow. The core has ignored the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A node tried to write or query a stream it does not own.
    #[error("peer {from} sent {what} for stream {stream}, which it does not own")]
    NotOwner {
        /// The sender, from its certificate.
        from: NodeId,
        /// The stream.
        stream: StreamId,
        /// Which message.
        what: &'static str,
    },
    /// A reply about a stream this node does not own arrived at its owner role.
    #[error("peer {from} sent {what} for stream {stream}, which this node does not own")]
    NotMine {
        /// The sender.
        from: NodeId,
        /// The stream.
        stream: StreamId,
        /// Which message.
        what: &'static str,
    },
    /// A message carried more records than allowed.
    #[error("peer {from} sent {count} records in one message; the limit is {max}")]
    TooManyRecords {
        /// The sender.
        from: NodeId,
        /// Records in the message.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A sequence number of 0 where records start.
    #[error("peer {from} sent records of {stream} starting at seq 0")]
    ZeroSeq {
        /// The sender.
        from: NodeId,
        /// The stream.
        stream: StreamId,
    },
    /// The peer would make this node track more streams than it is configured for.
    #[error("peer {from} would start copy of {stream}, but this node already keeps {max} streams")]
    TooManyStreams {
        /// The sender.
        from: NodeId,
        /// The stream.
        stream: StreamId,
        /// The configured `streams_max`.
        max: usize,
    },
}
