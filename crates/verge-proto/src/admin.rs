//! Messages between `verge ctl` and a node on ALPN `verge-admin/1`.
//!
//! One request per bidirectional stream; the node answers with exactly one response frame and
//! finishes the stream.

use serde::{Deserialize, Serialize};

use crate::model::{DeployedModel, ModelBundle, ModelsView};
use crate::{NodeId, Record, StreamId};

/// The ALPN protocol id for admin connections.
pub const ALPN_ADMIN: &[u8] = b"verge-admin/1";

/// What the admin CLI asks a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        /// Every outgoing datagram is held this long before it is sent, in milliseconds (0: no
        /// delay; at most 10,000).
        delay_ms: u32,
    },
    /// Stores readings from an external producer. The answer comes once they are durable.
    Ingest {
        /// The readings, in order per sensor.
        readings: Vec<IngestReading>,
    },
    /// Lists the streams this node holds.
    Streams,
    /// Reads records `from..=to` of a stream (at most `limit`).
    Query {
        /// The stream.
        stream: StreamId,
        /// First sequence number.
        from: u64,
        /// Last sequence number (inclusive).
        to: u64,
        /// The most records to return.
        limit: u32,
    },
    /// Who the gateway (control-plane leader) is, its term and since when, as this node sees it.
    Gateway,
    /// Moves the gateway role to `to` (a voter). Only the current gateway carries it out; ask
    /// [`AdminRequest::Gateway`] first and send this to the node it names.
    GatewayTransfer {
        /// The voter that should lead.
        to: NodeId,
    },
    /// Drains `node` (it gives up the gateway role and takes no offloaded work), or undrains it.
    /// Only the gateway carries it out, like [`AdminRequest::GatewayTransfer`].
    SetDrain {
        /// The node.
        node: NodeId,
        /// Drained from now on, or not.
        drained: bool,
    },
    /// The cloud sync as this node runs it: backlog per stream, last acknowledged batch, cloud
    /// reachability and term. Meaningful on the gateway; other nodes say they do not sync.
    Sync,
    /// Deploys a model to every node: the gateway checks that it loads, keeps it, and records
    /// it through the control plane; every node then fetches it and switches to it. Only the
    /// gateway carries it out, like [`AdminRequest::GatewayTransfer`].
    ModelDeploy {
        /// The model.
        bundle: ModelBundle,
    },
    /// The model versions the cluster records and what every node runs.
    Models,
    /// Makes this node's inference slower from its next batch on: each batch here takes
    /// `factor` times its compute time, as config `[offload] slowdown` does at start (tests and
    /// simulations only, like [`AdminRequest::SetFaults`]).
    SetSlowdown {
        /// The new slowdown, 1 (real speed) to 1000.
        factor: f64,
    },
    /// Makes this node's store behave as if its disk were full from now on: its quota becomes
    /// the bytes it holds now, so that retention drops the oldest raw readings to make room for
    /// new ones (tests and simulations only, like [`AdminRequest::SetFaults`]).
    FillDisk,
}

/// One reading sent by a producer: the sensor and its record (count, occupancy, speed, queue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestReading {
    /// The sensor's id; the stream is `<node>/raw/<sensor>`.
    pub sensor: String,
    /// The reading.
    pub record: Record,
}

/// The sequence numbers a stream assigned to a producer's readings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAck {
    /// The stream.
    pub stream: StreamId,
    /// First sequence number assigned.
    pub first_seq: u64,
    /// Last sequence number assigned.
    pub last_seq: u64,
    /// Nodes holding these readings durably when the acknowledgement was sent, this one
    /// included.
    pub replicas: u32,
    /// Fewer than the configured write quorum held them: acknowledged at `min_replicas` because
    /// a replica was unreachable (the stream is under-replicated until it catches up).
    pub degraded: bool,
}

/// A stream as `verge ctl streams` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamView {
    /// The stream.
    pub id: StreamId,
    /// The first sequence number still held (retention moves it up).
    pub first_seq: u64,
    /// The highest sequence number appended.
    pub head: u64,
    /// The highest sequence number on disk.
    pub durable_head: u64,
    /// Values per record.
    pub columns: u32,
    /// Approximate bytes held.
    pub bytes: u64,
    /// How this node holds the stream.
    pub role: StreamRole,
}

/// Whether a node writes a stream or keeps a copy of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRole {
    /// This node owns the stream (its sensor is here) and replicates it.
    Owner {
        /// The highest sequence number acknowledged to producers.
        acked: u64,
        /// Fewer live holders than the configured replica count.
        under_replicated: bool,
        /// After a restart: finding out what the replicas hold; appends wait.
        recovering: bool,
        /// The current replicas, best-ranked first.
        replicas: Vec<ReplicaView>,
    },
    /// This node keeps a copy of another node's stream.
    Copy,
}

/// One replica of a stream, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// The replica node.
    pub node: NodeId,
    /// Whether the owner's membership table sees it as reachable.
    pub up: bool,
    /// Its durable high-water mark, as it last acknowledged.
    pub hwm: u64,
    /// How far `hwm` is behind the owner's head.
    pub lag: u64,
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
        /// Send delay, in milliseconds.
        delay_ms: u32,
    },
    /// Answer to [`AdminRequest::Ingest`]: what was stored durably and what was refused.
    Ingested {
        /// Sequence numbers per stream, for the readings stored.
        acks: Vec<IngestAck>,
        /// Readings refused, each with the reason (NaN, out of range, bad sensor id).
        rejected: Vec<String>,
    },
    /// Answer to [`AdminRequest::Streams`].
    Streams(Vec<StreamView>),
    /// Answer to [`AdminRequest::Query`]: (sequence, record) pairs in order.
    Records(Vec<(u64, Record)>),
    /// Answer to [`AdminRequest::Gateway`], [`AdminRequest::GatewayTransfer`] and
    /// [`AdminRequest::SetDrain`] (the view after the change).
    Gateway(GatewayView),
    /// Answer to [`AdminRequest::Sync`].
    Sync(SyncView),
    /// Answer to [`AdminRequest::ModelDeploy`]: the version recorded.
    ModelDeployed {
        /// The version as recorded.
        model: DeployedModel,
        /// `false` when the same bundle was already the recorded version.
        changed: bool,
    },
    /// Answer to [`AdminRequest::Models`].
    Models(ModelsView),
    /// The request could not be served.
    Error {
        /// What went wrong, worded for an operator.
        message: String,
    },
    /// Answer to [`AdminRequest::SetSlowdown`]: the slowdown now in force.
    Slowdown {
        /// Each batch here takes this many times its compute time.
        factor: f64,
    },
    /// Answer to [`AdminRequest::FillDisk`]: the store's quota now in force.
    Quota {
        /// Bytes the store may hold (as its streams' sizes count them).
        bytes: u64,
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
    /// The node's sensor source, if it has one.
    pub sensor: Option<SensorStatus>,
    /// Its inference batches: where they ran and how long they took.
    #[serde(default)]
    pub inference: InferenceStatus,
}

/// A node's inference batches since it started (`verge ctl status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferenceStatus {
    /// Offload is on: batches that would miss their deadline here go to a neighbour.
    pub offload: bool,
    /// A batch's deadline, from its windows closing to its predictions, in milliseconds.
    pub deadline_ms: u64,
    /// The node's slowdown in force (1: its real speed): config `[offload] slowdown`, or what
    /// [`AdminRequest::SetSlowdown`] set since.
    pub slowdown: f64,
    /// Its own batches, and their rows.
    pub batches: u64,
    /// Rows of its own batches.
    pub rows: u64,
    /// Rows of its own batches a neighbour computed.
    pub offloaded_rows: u64,
    /// Offloaded batches that came back with no answer (helper gone, stalled, refused) and were
    /// run again here.
    pub retried: u64,
    /// Rows of neighbours' batches it computed for them.
    pub taken_rows: u64,
    /// Its own batches that finished after their deadline.
    pub missed: u64,
    /// Latency of its last batches (up to 1,000), from the windows closing to the predictions:
    /// median and 99th percentile, in milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// The 99th percentile over its last 100 batches only (past a restart's first batches).
    pub recent_p99_ms: f64,
    /// End to end for its last windows (up to 1,000): from when a window could close (its end
    /// plus the allowed lateness) to its record, prediction included, acknowledged by its
    /// replicas; median and 99th percentile in milliseconds. Only for wall-clock sources.
    pub window_p50_ms: f64,
    /// See `window_p50_ms`.
    pub window_p99_ms: f64,
}

/// What a node's sensor source is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorStatus {
    /// `synthetic`, `replay` or `traci`.
    pub source: String,
    /// `starting`, `running`, `retrying` (it failed and waits to try again), or `finished`
    /// (a replay reached the end of its files, a simulation ended).
    pub state: String,
    /// What the source reads, or why it failed last.
    pub detail: String,
    /// Readings it produced that passed validation.
    pub readings: u64,
    /// Readings and rows refused (invalid values, unknown detectors, time going backwards,
    /// malformed rows).
    pub rejected: u64,
    /// Times the source failed (could not open, connection lost) and was retried.
    pub failures: u64,
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
    /// The member's inference load as it last reported it, and how many milliseconds ago.
    pub load: Option<(crate::peer::LoadReport, u64)>,
}

/// The control plane as one node sees it (`verge ctl gateway`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayView {
    /// The answering node.
    pub node: NodeId,
    /// Its role: `leader`, `follower`, `candidate`, `learner`, `stopped`, or `off` when the node
    /// runs no control plane.
    pub role: String,
    /// The gateway (Raft leader) this node knows of.
    pub gateway: Option<NodeId>,
    /// The gateway's QUIC address, when it is a configured peer or this node.
    pub gateway_addr: Option<String>,
    /// The current term.
    pub term: u64,
    /// Milliseconds since this node first saw the current gateway in this term.
    pub since_ms: Option<u64>,
    /// Voters of the control plane.
    pub voters: Vec<NodeId>,
    /// Learners (non-voting members).
    pub learners: Vec<NodeId>,
    /// Drained nodes.
    pub drained: Vec<NodeId>,
    /// Index of the last applied control-plane entry.
    pub applied_index: Option<u64>,
}

/// The cloud sync as the answering node runs it (`verge ctl sync`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncView {
    /// The answering node.
    pub node: NodeId,
    /// Whether this node is the gateway and syncing now.
    pub syncing: bool,
    /// Why it is not syncing, when it is not.
    pub note: Option<String>,
    /// The term its batches carry.
    pub term: u64,
    /// The cloud's URL, if configured.
    pub cloud_url: Option<String>,
    /// Whether the last exchange with the cloud got an answer.
    pub cloud_reachable: Option<bool>,
    /// The last error the cloud or the network gave, if any.
    pub cloud_error: Option<String>,
    /// Batches waiting in the durable outbox.
    pub outbox_batches: u64,
    /// Windows acknowledged by the cloud since this node became gateway.
    pub windows_acked: u64,
    /// Per aggregate stream.
    pub streams: Vec<SyncStreamView>,
}

/// One aggregate stream's sync state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStreamView {
    /// The stream.
    pub stream: StreamId,
    /// The committed cursor: the highest sequence number the cloud acknowledged.
    pub cursor: u64,
    /// The highest sequence number readable from a live replica.
    pub head: u64,
    /// Windows not yet acknowledged (`head - cursor`).
    pub backlog: u64,
    /// The last batch the cloud acknowledged, as `(first_seq, last_seq)`.
    pub last_acked: Option<(u64, u64)>,
}
