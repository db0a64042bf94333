//! A node's TOML configuration.
//!
//! Every field is documented here and in `configs/`. Unknown keys are refused, and every error
//! names the file and the key that was wrong. Defaults live in the `Default` impls below and
//! nowhere else.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use verge_net::NetConfig;
use verge_proto::codec::FRAME_BYTES_CEILING;
use verge_proto::{FRAME_BYTES_MAX_DEFAULT, NodeId, StreamId};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, a missing key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line, column and key.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key, e.g. `tls.cert` or `peers[1].addr`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id. Must match the node id in `tls.cert`.
    pub id: NodeId,
    /// UDP address for QUIC (peers and admin CLI).
    pub listen: SocketAddr,
    /// Directory for this node's data; created if missing.
    pub data_dir: PathBuf,
    /// TCP address for Prometheus `/metrics`; no metrics server when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Certificate files.
    pub tls: TlsPaths,
    /// Every other node this node talks to.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Which peers are this node's road neighbours, and how.
    #[serde(default)]
    pub neighbours: Vec<Neighbour>,
    /// Transport limits.
    #[serde(default)]
    pub net: NetSection,
    /// Failure detector tuning.
    #[serde(default)]
    pub membership: MembershipSection,
    /// Fault injection, for tests and simulations.
    #[serde(default)]
    pub faults: FaultsSection,
    /// Local storage: group commit, retention and quota.
    #[serde(default)]
    pub store: StoreSection,
    /// Sensor sources feeding this node.
    #[serde(default)]
    pub sensors: SensorsSection,
    /// Copies of this node's streams on its neighbours.
    #[serde(default)]
    pub replication: ReplicationSection,
    /// The Raft control plane whose leader is the gateway.
    #[serde(default)]
    pub control: ControlSection,
    /// Tumbling windows per approach, appended to this node's aggregate streams.
    #[serde(default)]
    pub aggregation: verge_traffic::window::WindowConfig,
    /// The cloud the gateway syncs aggregates to; no sync when absent.
    #[serde(default)]
    pub cloud: Option<CloudSection>,
    /// The model predicting each approach's next-window vehicle count; no predictions when
    /// absent.
    #[serde(default)]
    pub inference: Option<InferenceSection>,
    /// Upstream neighbours' predictions this node's model takes as features (`[sharing]`).
    #[serde(default)]
    pub sharing: SharingSection,
    /// Inference batches that would miss their deadline here go to a neighbour (`[offload]`).
    #[serde(default)]
    pub offload: OffloadSection,
}

/// `[offload]`: when this node's inference batches go to a neighbour.
///
/// ```toml
/// [offload]
/// enabled = true        # false: every batch runs here, however late
/// deadline_ms = 100     # from a batch's windows closing to its predictions
/// stale_after_ms = 2000 # a neighbour's load heard longer ago is not trusted
/// slowdown = 1.0        # > 1 stands in for a slower cabinet: each batch here takes that many times its compute time
/// ```
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffloadSection {
    /// Offload batches that would miss their deadline here.
    pub enabled: bool,
    /// A batch's deadline, in milliseconds from its windows closing.
    pub deadline_ms: u64,
    /// A neighbour's gossiped load older than this is not trusted, in milliseconds.
    pub stale_after_ms: u64,
    /// Each batch here takes this many times its compute time (1 to 1000; 1 is the real speed).
    pub slowdown: f64,
}

impl Default for OffloadSection {
    fn default() -> Self {
        Self {
            enabled: true,
            deadline_ms: 100,
            stale_after_ms: 2_000,
            slowdown: 1.0,
        }
    }
}

impl OffloadSection {
    /// The engine's settings.
    pub fn to_engine_config(&self) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            offload: self.enabled,
            deadline: std::time::Duration::from_millis(self.deadline_ms),
            stale_after: std::time::Duration::from_millis(self.stale_after_ms),
            slowdown: self.slowdown,
        }
    }
}

/// `[sharing]`: which upstream approaches feed each of this node's approaches. Each feed is a
/// neighbour's results stream, `NODE/APPROACH` (its predictions of that approach's next window),
/// read from the neighbour or any node holding a copy, and resumed from the last record seen.
///
/// ```toml
/// [sharing]
/// poll_ms = 250
/// [sharing.feeds.A2B2]      # this node's approach A2 -> B2
/// straight = "a2/A1A2"      # node a2's approach A1 -> A2 goes straight on into A2 -> B2
/// left = "a2/top0A2"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharingSection {
    /// How often each feed is read, in milliseconds.
    pub poll_ms: u64,
    /// Per approach of this node, its feeders by slot.
    pub feeds: BTreeMap<String, Feeders>,
}

impl Default for SharingSection {
    fn default() -> Self {
        Self {
            poll_ms: 250,
            feeds: BTreeMap::new(),
        }
    }
}

/// The upstream approaches that feed one approach, by the model's upstream slots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feeders {
    /// The feeder whose traffic goes straight on into the approach, `NODE/APPROACH`.
    pub straight: Option<String>,
    /// The feeder whose traffic turns left into it.
    pub left: Option<String>,
    /// The feeder whose traffic turns right into it.
    pub right: Option<String>,
}

impl Feeders {
    /// The feeders in slot order (straight, left, right).
    pub fn slots(&self) -> [Option<&str>; 3] {
        [
            self.straight.as_deref(),
            self.left.as_deref(),
            self.right.as_deref(),
        ]
    }
}

/// The results stream a feed `NODE/APPROACH` names.
///
/// # Errors
///
/// A message saying what is wrong with it.
pub fn feed_stream(feed: &str) -> Result<StreamId, String> {
    let (node, approach) = feed
        .split_once('/')
        .ok_or_else(|| format!("`{feed}` is not NODE/APPROACH"))?;
    let node: NodeId = node
        .parse()
        .map_err(|e| format!("`{feed}`: node id: {e}"))?;
    StreamId::new(node, verge_proto::StreamKind::Results, approach)
        .map_err(|e| format!("`{feed}`: {e}"))
}

/// `[inference]`: the model every closed window feeds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSection {
    /// The model's manifest (`model.toml`, naming the ONNX file beside it), e.g.
    /// `models/default-noshare/model.toml`. Its input must be the default model's feature row
    /// (27 values) and its output one value.
    pub model: PathBuf,
}

/// The control plane (`[control]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// The voting members: the same 3 or 5 node ids on every node (this node and its peers).
    /// Configured nodes that are not voters join as learners. Empty: this node runs no control
    /// plane (and never becomes the gateway).
    pub voters: Vec<NodeId>,
    /// Raft timing and limits (`[control.raft]`); the defaults suit a LAN.
    pub raft: verge_control::ControlConfig,
}

/// The cloud ingest service (`[cloud]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSection {
    /// Base URL, `https://host:port`.
    pub url: String,
    /// The CA certificate (PEM) that signed the cloud's TLS certificate.
    pub ca: PathBuf,
    /// A file holding the bearer token (first line). Leave out for no token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The corridor's name at the cloud; fencing compares terms within it.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// How long one POST may take before it counts as unavailable, in milliseconds.
    #[serde(default = "default_cloud_timeout_ms")]
    pub timeout_ms: u64,
    /// The most windows in one batch.
    #[serde(default = "default_batch_windows_max")]
    pub batch_windows_max: usize,
    /// Shortest and longest retry delay after a failed post, in milliseconds (capped
    /// exponential backoff with jitter in between).
    #[serde(default = "default_retry_ms_min")]
    pub retry_ms_min: u64,
    /// See `retry_ms_min`.
    #[serde(default = "default_retry_ms_max")]
    pub retry_ms_max: u64,
}

fn default_cluster() -> String {
    "corridor".to_owned()
}
fn default_cloud_timeout_ms() -> u64 {
    5_000
}
fn default_batch_windows_max() -> usize {
    5_000
}
fn default_retry_ms_min() -> u64 {
    100
}
fn default_retry_ms_max() -> u64 {
    2_000
}

impl CloudSection {
    /// The sync core's configuration for gateway `me`.
    pub fn sync_config(&self, me: &NodeId) -> verge_sync::SyncConfig {
        verge_sync::SyncConfig {
            batch_windows_max: self.batch_windows_max,
            // One post and one read per stream at once for a corridor's worth of aggregate
            // streams (the core's default of 16 left streams of a 20-stream backlog waiting a
            // round: 31 k windows/s drained, 43–51 k with 64).
            posts_inflight_max: 64,
            reads_inflight_max: 64,
            retry_ms_min: self.retry_ms_min,
            retry_ms_max: self.retry_ms_max,
            ..verge_sync::SyncConfig::new(self.cluster.clone(), me.clone())
        }
    }
}

/// What a node does when fewer than `write_quorum` holders of a stream are reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShortfallMode {
    /// Acknowledge at `min_replicas`, say so (`degraded`) and mark the stream under-replicated.
    Degrade,
    /// Hold acknowledgements (producers feel back-pressure) until `write_quorum` holders have
    /// the readings.
    Block,
}

/// Replication of this node's streams to its neighbours.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// Copies of each stream, this node's own included (R).
    pub replicas: usize,
    /// Holders with a reading on disk before its producer is told (W), this node included.
    pub write_quorum: usize,
    /// With a replica unreachable and `shortfall = "degrade"`: holders needed for a degraded
    /// acknowledgement.
    pub min_replicas: usize,
    /// `degrade` or `block`, see [`ShortfallMode`].
    pub shortfall: ShortfallMode,
    /// A replica unreachable this long is replaced by another neighbour, which gets a full copy;
    /// a shorter outage ends in a catch-up from its high-water mark. Milliseconds.
    pub replace_after_ms: u64,
    /// An unanswered replication message is sent again after this long, in milliseconds.
    pub resend_after_ms: u64,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        let d = verge_replica::OwnerConfig::default();
        Self {
            replicas: d.replicas,
            write_quorum: d.write_quorum,
            min_replicas: d.min_replicas,
            shortfall: ShortfallMode::Degrade,
            replace_after_ms: d.replace_after_ms,
            resend_after_ms: d.resend_after_ms,
        }
    }
}

impl ReplicationSection {
    /// The owner core's configuration.
    pub fn owner_config(&self) -> verge_replica::OwnerConfig {
        verge_replica::OwnerConfig {
            replicas: self.replicas,
            write_quorum: self.write_quorum,
            min_replicas: self.min_replicas,
            shortfall: match self.shortfall {
                ShortfallMode::Degrade => verge_replica::Shortfall::Degrade,
                ShortfallMode::Block => verge_replica::Shortfall::Block,
            },
            replace_after_ms: self.replace_after_ms,
            resend_after_ms: self.resend_after_ms,
            ..verge_replica::OwnerConfig::default()
        }
    }
}

/// Local storage tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Longest wait before appended readings are flushed to disk and acknowledged, in
    /// milliseconds (group commit: one fsync covers everything appended meanwhile).
    pub flush_interval_ms: u64,
    /// Keep raw readings this many seconds; forever when absent.
    pub retention_raw_s: Option<u64>,
    /// Keep predictions this many seconds; forever when absent.
    pub retention_results_s: Option<u64>,
    /// Keep aggregates this many seconds; forever when absent.
    pub retention_aggregates_s: Option<u64>,
    /// Bytes of stored blocks this node may hold; when over, the oldest raw readings go first and
    /// aggregates last. No quota when absent.
    pub quota_bytes: Option<u64>,
    /// How often retention and the quota are enforced, in milliseconds.
    pub retention_interval_ms: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            flush_interval_ms: 2,
            retention_raw_s: None,
            retention_results_s: None,
            retention_aggregates_s: None,
            quota_bytes: None,
            retention_interval_ms: 5_000,
        }
    }
}

/// The node's sensor source: at most one of the three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorsSection {
    /// A synthetic source (for load and benchmarks).
    pub synthetic: Option<verge_traffic::SyntheticConfig>,
    /// SUMO detector output files replayed at real time or faster.
    pub replay: Option<ReplaySection>,
    /// A running SUMO read live over TraCI.
    pub traci: Option<TraciSection>,
}

/// `[sensors.replay]`: SUMO's E1/E2 output files of a finished run, replayed in time order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySection {
    /// SUMO's additional file that declares the detectors (`detectors.add.xml`): a row of a
    /// detector it does not declare for this node's lights is refused as unknown.
    pub detectors: PathBuf,
    /// The E1 (induction loop) output file.
    pub e1: Option<PathBuf>,
    /// The E2 (lane-area detector) output file.
    pub e2: Option<PathBuf>,
    /// The traffic lights whose detectors this node reads (ids `e1_<tls>_<lane>`).
    pub tls: Vec<String>,
    /// Replay speed: 1 is real time, 10 ten times faster. Default 1.
    #[serde(default = "speed_default")]
    pub speed: f64,
}

/// `[sensors.traci]`: a running SUMO (started with `--remote-port` and `--num-clients`), read
/// over TraCI; this node steps the simulation with the other clients and reads its own
/// intersection's detectors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraciSection {
    /// SUMO's TraCI address, e.g. `127.0.0.1:8813`.
    pub addr: SocketAddr,
    /// The traffic light whose detectors this node reads.
    pub tls: String,
    /// This client's place in SUMO's order of clients (`setOrder`); distinct per node. Default 1.
    #[serde(default = "order_default")]
    pub order: i32,
    /// Simulated time one reading covers, in milliseconds. Default 1000.
    #[serde(default = "interval_default")]
    pub interval_ms: u64,
    /// Simulated seconds per wall-clock second: 1 paces SUMO to real time. Default 1.
    #[serde(default = "speed_default")]
    pub speed: f64,
    /// SUMO's additional file declaring the detectors, for the aggregation approaches before
    /// the first connection; without it the detectors come from SUMO once connected.
    pub detectors: Option<PathBuf>,
}

fn speed_default() -> f64 {
    1.0
}
fn order_default() -> i32 {
    1
}
fn interval_default() -> u64 {
    1_000
}

/// The fastest replay or TraCI pace.
pub const SENSOR_SPEED_MAX: f64 = 100_000.0;

/// Fault injection. Off unless a test or simulation turns it on: a node in a real cabinet must not
/// let an admin certificate partition it by accident.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsSection {
    /// Accept `verge ctl fault` commands.
    pub enabled: bool,
}

/// Paths of the node's TLS material.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), issued by `verge cert issue --node`.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// One peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's node id (as in its certificate).
    pub id: NodeId,
    /// Its QUIC address.
    pub addr: SocketAddr,
}

/// How a neighbour relates to this node along the road.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    /// Traffic flows from the neighbour to this node.
    Upstream,
    /// Traffic flows from this node to the neighbour.
    Downstream,
    /// Adjacent, with no dominant direction (a cross street).
    Lateral,
}

/// One road neighbour; must also be a peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbour {
    /// The neighbour's node id.
    pub id: NodeId,
    /// The relation.
    pub relation: Relation,
}

/// Transport limits (see `verge_net::NetConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetSection {
    /// Largest frame, in bytes.
    pub frame_bytes_max: usize,
    /// Concurrent bidirectional streams per connection.
    pub streams_bidi_max: u32,
    /// Concurrent unidirectional streams per connection.
    pub streams_uni_max: u32,
    /// QUIC keep-alive interval, in milliseconds.
    pub keep_alive_ms: u64,
    /// QUIC idle timeout, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Handshake timeout, in milliseconds.
    pub handshake_timeout_ms: u64,
}

impl Default for NetSection {
    fn default() -> Self {
        let d = NetConfig::default();
        Self {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            streams_bidi_max: d.streams_bidi_max,
            streams_uni_max: d.streams_uni_max,
            keep_alive_ms: d.keep_alive.as_millis() as u64,
            idle_timeout_ms: d.idle_timeout.as_millis() as u64,
            handshake_timeout_ms: d.handshake_timeout.as_millis() as u64,
        }
    }
}

impl NetSection {
    /// As the transport's configuration.
    pub fn to_net_config(&self) -> NetConfig {
        NetConfig {
            frame_bytes_max: self.frame_bytes_max,
            streams_bidi_max: self.streams_bidi_max,
            streams_uni_max: self.streams_uni_max,
            keep_alive: Duration::from_millis(self.keep_alive_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            ..NetConfig::default()
        }
    }
}

/// Failure detector tuning. The defaults mark a SIGKILLed peer down in about 1.5 s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSection {
    /// Interval between heartbeats to each peer, in milliseconds.
    pub heartbeat_ms: u64,
    /// Extra silence tolerated before suspicion grows, in milliseconds.
    pub acceptable_pause_ms: u64,
    /// Lower bound of the heartbeat interval's standard deviation, in milliseconds.
    pub min_std_dev_ms: u64,
    /// Phi at or above which a peer is suspect.
    pub phi_suspect: f64,
    /// Phi at or above which a peer is down.
    pub phi_down: f64,
}

impl Default for MembershipSection {
    fn default() -> Self {
        Self {
            heartbeat_ms: 200,
            acceptable_pause_ms: 600,
            min_std_dev_ms: 100,
            phi_suspect: 3.0,
            phi_down: 8.0,
        }
    }
}

impl NodeConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse_unchecked(path, text)?;
        cfg.check_files(path)?;
        Ok(cfg)
    }

    /// Parses and validates everything but the existence of the certificate files (used to check
    /// the examples in `configs/`, whose certificates are made by the operator).
    pub fn parse_unchecked(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        // Relative paths are relative to the config file, so a config directory can be moved.
        let base = path.parent().unwrap_or(Path::new("."));
        let mut paths = vec![
            &mut cfg.data_dir,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ];
        if let Some(cloud) = &mut cfg.cloud {
            paths.push(&mut cloud.ca);
            if let Some(t) = &mut cloud.token_file {
                paths.push(t);
            }
        }
        if let Some(replay) = &mut cfg.sensors.replay {
            paths.push(&mut replay.detectors);
            paths.extend(replay.e1.as_mut());
            paths.extend(replay.e2.as_mut());
        }
        if let Some(traci) = &mut cfg.sensors.traci {
            paths.extend(traci.detectors.as_mut());
        }
        if let Some(inference) = &mut cfg.inference {
            paths.push(&mut inference.model);
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn check_files(&self, path: &Path) -> Result<(), ConfigError> {
        let mut files = vec![
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ];
        if let Some(cloud) = &self.cloud {
            files.push(("cloud.ca", &cloud.ca));
            if let Some(t) = &cloud.token_file {
                files.push(("cloud.token_file", t));
            }
        }
        if let Some(inference) = &self.inference {
            files.push(("inference.model", &inference.model));
        }
        for (key, file) in files {
            if !file.is_file() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: key.into(),
                    message: format!("{} does not exist or is not a file", file.display()),
                });
            }
        }
        Ok(())
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let o = &self.offload;
        if o.deadline_ms == 0 || o.deadline_ms > 3_600_000 {
            return Err(invalid(
                "offload.deadline_ms".into(),
                format!("{} is not between 1 and 3600000", o.deadline_ms),
            ));
        }
        if o.stale_after_ms == 0 {
            return Err(invalid(
                "offload.stale_after_ms".into(),
                "0 would trust no neighbour's load".into(),
            ));
        }
        if !(1.0..=1000.0).contains(&o.slowdown) {
            return Err(invalid(
                "offload.slowdown".into(),
                format!("{} is not between 1 and 1000", o.slowdown),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.id == self.id {
                return Err(invalid(
                    format!("peers[{i}].id"),
                    format!("`{}` is this node itself", p.id),
                ));
            }
            if !seen.insert(&p.id) {
                return Err(invalid(
                    format!("peers[{i}].id"),
                    format!("`{}` is listed twice", p.id),
                ));
            }
            if p.addr.port() == 0 || p.addr.ip().is_unspecified() {
                return Err(invalid(
                    format!("peers[{i}].addr"),
                    format!("{} is not an address a peer can be reached at", p.addr),
                ));
            }
        }
        for (i, n) in self.neighbours.iter().enumerate() {
            if !seen.contains(&n.id) {
                return Err(invalid(
                    format!("neighbours[{i}].id"),
                    format!("`{}` is not among the peers", n.id),
                ));
            }
        }
        for (approach, feeders) in &self.sharing.feeds {
            for (slot, feed) in ["straight", "left", "right"].iter().zip(feeders.slots()) {
                let Some(feed) = feed else { continue };
                let key = format!("sharing.feeds.{approach}.{slot}");
                let stream = feed_stream(feed).map_err(|m| invalid(key.clone(), m))?;
                if !seen.contains(&stream.owner) {
                    return Err(invalid(
                        key,
                        format!("`{}` is not among the peers", stream.owner),
                    ));
                }
            }
        }
        if self.sharing.poll_ms == 0 || self.sharing.poll_ms > 60_000 {
            return Err(invalid(
                "sharing.poll_ms".into(),
                format!("{} is outside 1..=60000", self.sharing.poll_ms),
            ));
        }
        let net = &self.net;
        if net.frame_bytes_max < 1024 || net.frame_bytes_max > FRAME_BYTES_CEILING {
            return Err(invalid(
                "net.frame_bytes_max".into(),
                format!("must be between 1024 and {FRAME_BYTES_CEILING}"),
            ));
        }
        if net.keep_alive_ms == 0 || net.keep_alive_ms >= net.idle_timeout_ms {
            return Err(invalid(
                "net.keep_alive_ms".into(),
                "must be above 0 and below net.idle_timeout_ms".into(),
            ));
        }
        if self.store.flush_interval_ms == 0 || self.store.flush_interval_ms > 1_000 {
            return Err(invalid(
                "store.flush_interval_ms".into(),
                "must be between 1 and 1000".into(),
            ));
        }
        if self.store.retention_interval_ms == 0 {
            return Err(invalid(
                "store.retention_interval_ms".into(),
                "must be above 0".into(),
            ));
        }
        let sources = [
            self.sensors.synthetic.is_some(),
            self.sensors.replay.is_some(),
            self.sensors.traci.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "sensors".into(),
                "configure one source: synthetic, replay or traci".into(),
            ));
        }
        let speed_ok = |v: f64| v.is_finite() && v > 0.0 && v <= SENSOR_SPEED_MAX;
        if let Some(replay) = &self.sensors.replay {
            if replay.e1.is_none() && replay.e2.is_none() {
                return Err(invalid(
                    "sensors.replay".into(),
                    "name at least one of e1 and e2".into(),
                ));
            }
            if replay.tls.is_empty() || replay.tls.iter().any(|t| t.trim().is_empty()) {
                return Err(invalid(
                    "sensors.replay.tls".into(),
                    "list the traffic lights whose detectors this node reads".into(),
                ));
            }
            if !speed_ok(replay.speed) {
                return Err(invalid(
                    "sensors.replay.speed".into(),
                    format!("must be above 0 and at most {SENSOR_SPEED_MAX}"),
                ));
            }
        }
        if let Some(traci) = &self.sensors.traci {
            if traci.tls.trim().is_empty() {
                return Err(invalid(
                    "sensors.traci.tls".into(),
                    "must not be empty".into(),
                ));
            }
            if !(100..=60_000).contains(&traci.interval_ms) {
                return Err(invalid(
                    "sensors.traci.interval_ms".into(),
                    "must be between 100 and 60000".into(),
                ));
            }
            if !speed_ok(traci.speed) {
                return Err(invalid(
                    "sensors.traci.speed".into(),
                    format!("must be above 0 and at most {SENSOR_SPEED_MAX}"),
                ));
            }
        }
        if let Some(syn) = &self.sensors.synthetic
            && !(syn.rate_per_s.is_finite() && syn.rate_per_s >= 0.0 && syn.rate_per_s <= 1e7)
        {
            return Err(invalid(
                "sensors.synthetic.rate_per_s".into(),
                "must be between 0 and 10000000".into(),
            ));
        }
        let r = &self.replication;
        if r.shortfall == ShortfallMode::Block && r.write_quorum > self.peers.len() + 1 {
            return Err(invalid(
                "replication.write_quorum".into(),
                format!(
                    "with shortfall = \"block\", {} holders need {} peers and this node has {}: nothing would ever be acknowledged",
                    r.write_quorum,
                    r.write_quorum - 1,
                    self.peers.len()
                ),
            ));
        }
        if let Err(e) = r.owner_config().validate() {
            return Err(invalid("replication".into(), e.to_string()));
        }
        self.validate_control(path)?;
        if let Err(e) = self.aggregation.validate() {
            return Err(invalid("aggregation".into(), e.to_string()));
        }
        if let Some(cloud) = &self.cloud {
            if !cloud.url.starts_with("https://") {
                return Err(invalid(
                    "cloud.url".into(),
                    format!("`{}` is not an https:// URL", cloud.url),
                ));
            }
            if cloud.timeout_ms == 0 {
                return Err(invalid("cloud.timeout_ms".into(), "must be above 0".into()));
            }
            if let Err(e) = cloud.sync_config(&self.id).validate() {
                return Err(invalid("cloud".into(), e.to_string()));
            }
        }
        let m = &self.membership;
        if m.heartbeat_ms == 0 {
            return Err(invalid(
                "membership.heartbeat_ms".into(),
                "must be above 0".into(),
            ));
        }
        if !(m.phi_suspect > 0.0 && m.phi_suspect < m.phi_down && m.phi_down.is_finite()) {
            return Err(invalid(
                "membership.phi_down".into(),
                "needs 0 < phi_suspect < phi_down".into(),
            ));
        }
        Ok(())
    }

    fn validate_control(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let c = &self.control;
        if c.voters.is_empty() {
            if self.cloud.is_some() {
                return Err(invalid(
                    "cloud".into(),
                    "only the gateway syncs to the cloud, and a node without `control.voters` never becomes it: list the voters".into(),
                ));
            }
            return Ok(());
        }
        let known: BTreeSet<&NodeId> = self.peers.iter().map(|p| &p.id).chain([&self.id]).collect();
        let mut seen = BTreeSet::new();
        for (i, v) in c.voters.iter().enumerate() {
            if !known.contains(v) {
                return Err(invalid(
                    format!("control.voters[{i}]"),
                    format!("`{v}` is neither this node nor one of its peers"),
                ));
            }
            if !seen.insert(v) {
                return Err(invalid(
                    format!("control.voters[{i}]"),
                    format!("`{v}` is listed twice"),
                ));
            }
        }
        if c.voters.len().is_multiple_of(2) {
            return Err(invalid(
                "control.voters".into(),
                format!(
                    "{} voters: use an odd number (3 or 5); an even one tolerates no more failures than one fewer",
                    c.voters.len()
                ),
            ));
        }
        if !c.voters.contains(&self.id) {
            // A learner must reach the voters to be added; it dials its peers, so they must be
            // among them.
            for (i, v) in c.voters.iter().enumerate() {
                if !self.peers.iter().any(|p| &p.id == v) {
                    return Err(invalid(
                        format!("control.voters[{i}]"),
                        format!("`{v}` is not among this node's peers"),
                    ));
                }
            }
        }
        if let Err(e) = c.raft.validate() {
            return Err(invalid("control.raft".into(), e.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_certs() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["ca.pem", "n.pem", "n.key"] {
            std::fs::write(dir.path().join(f), "x").expect("write");
        }
        let base = r#"
id = "b1"
listen = "127.0.0.1:7000"
data_dir = "data"
[tls]
ca = "ca.pem"
cert = "n.pem"
key = "n.key"
[[peers]]
id = "b2"
addr = "127.0.0.1:7001"
[[neighbours]]
id = "b2"
relation = "downstream"
"#;
        (dir, base.to_owned())
    }

    fn parse(dir: &tempfile::TempDir, text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(&dir.path().join("node.toml"), text)
    }

    #[test]
    fn sumo_sources_are_checked_and_their_paths_anchored() {
        let (dir, base) = with_certs();
        let replay = "\n[sensors.replay]\ndetectors = \"run/d.xml\"\ne1 = \"run/e1.xml\"\ntls = [\"B1\"]\nspeed = 10\n";
        let cfg = parse(&dir, &format!("{base}{replay}")).expect("parses");
        let r = cfg.sensors.replay.expect("replay");
        assert_eq!(r.detectors, dir.path().join("run/d.xml"));
        assert_eq!(r.e1, Some(dir.path().join("run/e1.xml")));
        let traci = "\n[sensors.traci]\naddr = \"127.0.0.1:8813\"\ntls = \"B1\"\n";
        let cfg = parse(&dir, &format!("{base}{traci}")).expect("parses");
        assert_eq!(cfg.sensors.traci.expect("traci").interval_ms, 1_000);
        for (text, key) in [
            (
                format!("{replay}[sensors.synthetic]\nsensors = 1\nrate_per_s = 1\n"),
                "sensors",
            ),
            (
                "\n[sensors.replay]\ndetectors = \"d.xml\"\ntls = [\"B1\"]\n".to_owned(),
                "sensors.replay",
            ),
            (
                "\n[sensors.replay]\ndetectors = \"d.xml\"\ne2 = \"e2.xml\"\ntls = []\n".to_owned(),
                "sensors.replay.tls",
            ),
            (
                replay.replace("speed = 10", "speed = nan"),
                "sensors.replay.speed",
            ),
            (
                format!("{traci}interval_ms = 5\n"),
                "sensors.traci.interval_ms",
            ),
            (format!("{traci}speed = 0\n"), "sensors.traci.speed"),
        ] {
            match parse(&dir, &format!("{base}{text}")) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected an error at {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_good_config_parses_with_paths_anchored_at_the_file() {
        let (dir, text) = with_certs();
        let cfg = parse(&dir, &text).expect("parses");
        assert_eq!(cfg.tls.ca, dir.path().join("ca.pem"));
        assert_eq!(cfg.neighbours[0].relation, Relation::Downstream);
        assert_eq!(cfg.membership.heartbeat_ms, 200);
    }

    #[test]
    fn errors_name_the_key() {
        let (dir, text) = with_certs();
        let cases = [
            (text.replace("data_dir", "colour = 1\ndata_dir"), "colour"),
            (text.replace("127.0.0.1:7000", "nowhere"), "listen"),
            (text.replace("\"n.pem\"", "\"missing.pem\""), "tls.cert"),
            (
                text.replace("relation = \"downstream\"", "relation = \"sideways\""),
                "sideways",
            ),
            (
                text.replace("[[neighbours]]\nid = \"b2\"", "[[neighbours]]\nid = \"b9\""),
                "neighbours[0].id",
            ),
            (
                text.replace("127.0.0.1:7001", "0.0.0.0:7001"),
                "peers[0].addr",
            ),
            (
                text.replace("id = \"b2\"\naddr", "id = \"b1\"\naddr"),
                "peers[0].id",
            ),
            (
                format!("{text}[replication]\nreplicas = 2\nwrite_quorum = 3\n"),
                "write_quorum (3) <= replicas (2)",
            ),
            (format!("{text}[replication]\nreplica = 2\n"), "replica"),
            (
                format!("{text}[offload]\nslowdown = 0.5\n"),
                "offload.slowdown",
            ),
            (
                format!("{text}[offload]\nslowdown = nan\n"),
                "offload.slowdown",
            ),
            (
                format!("{text}[offload]\ndeadline_ms = 0\n"),
                "offload.deadline_ms",
            ),
            (format!("{text}[offload]\nenable = true\n"), "enable"),
            (
                format!("{text}[replication]\nshortfall = \"maybe\"\n"),
                "maybe",
            ),
            (
                format!(
                    "{text}[replication]\nreplicas = 3\nwrite_quorum = 3\nshortfall = \"block\"\n"
                ),
                "replication.write_quorum",
            ),
            (
                format!("{text}[control]\nvoters = [\"b1\", \"b2\"]\n"),
                "control.voters",
            ),
            (
                format!("{text}[control]\nvoters = [\"b1\", \"b9\", \"b2\"]\n"),
                "control.voters[1]",
            ),
            (
                format!("{text}[control]\nvoters = [\"b1\"]\n[control.raft]\nheartbeat_ms = 60\n"),
                "control.raft",
            ),
            (
                format!("{text}[cloud]\nurl = \"https://127.0.0.1:1\"\nca = \"ca.pem\"\n"),
                "key `cloud`",
            ),
            (
                format!(
                    "{text}[control]\nvoters = [\"b1\"]\n[cloud]\nurl = \"http://127.0.0.1:1\"\nca = \"ca.pem\"\n"
                ),
                "cloud.url",
            ),
            (
                format!("{text}[aggregation]\nwindow_ms = 5\n"),
                "aggregation",
            ),
        ];
        for (bad, culprit) in cases {
            let err = parse(&dir, &bad).expect_err(culprit).to_string();
            assert!(err.contains(culprit), "{culprit}: {err}");
            assert!(err.contains("node.toml"), "{err}");
        }
    }
}
