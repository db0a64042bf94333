//! Every metric a node exports, in one place, and their Prometheus text encoding.
//!
//! Handlers never name a metric by string: they call a method here.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceKindLabel {
    source: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetentionLabel {
    kind: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabel {
    direction: String,
    result: String,
}

/// The node's metrics. Cheap to clone; clones share the same values.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    frames_in: Counter,
    frames_out: Counter,
    frame_errors: Family<KindLabel, Counter>,
    handshakes: Family<HandshakeLabel, Counter>,
    refused: Family<KindLabel, Counter>,
    peers: Family<StateLabel, Gauge>,
    transitions: Family<StateLabel, Counter>,
    admin_requests: Counter,
    readings_stored: Counter,
    readings_rejected: Family<KindLabel, Counter>,
    sensor_failures: Family<SourceKindLabel, Counter>,
    model_loads: Family<ResultLabel, Counter>,
    predictions: Family<ResultLabel, Counter>,
    shared_records: Family<StreamLabel, Counter>,
    shared_refused: Family<KindLabel, Counter>,
    offload_rows: Family<KindLabel, Counter>,
    offload_refused: Family<KindLabel, Counter>,
    inference_missed: Counter,
    store_flushes: Family<StateLabel, Counter>,
    retention_dropped: Family<RetentionLabel, Counter>,
    repl_sent: Family<PeerLabel, Counter>,
    repl_received: Family<PeerLabel, Counter>,
    repl_lag: Family<PeerLabel, Gauge>,
    repl_catchups: Family<StateLabel, Counter>,
    repl_refused: Family<KindLabel, Counter>,
    repl_dropped: Family<PeerLabel, Counter>,
    under_replicated: Gauge,
    recovering: Gauge,
    acks: Family<StateLabel, Counter>,
    gw: Arc<GatewayMetrics>,
    udp: Arc<std::sync::OnceLock<verge_net::FaultLayer>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("verge");
        let frames_in = Counter::default();
        let frames_out = Counter::default();
        let frame_errors = Family::<KindLabel, Counter>::default();
        let handshakes = Family::<HandshakeLabel, Counter>::default();
        let refused = Family::<KindLabel, Counter>::default();
        let peers = Family::<StateLabel, Gauge>::default();
        let transitions = Family::<StateLabel, Counter>::default();
        let admin_requests = Counter::default();
        let readings_stored = Counter::default();
        let readings_rejected = Family::<KindLabel, Counter>::default();
        let sensor_failures = Family::<SourceKindLabel, Counter>::default();
        let model_loads = Family::<ResultLabel, Counter>::default();
        let predictions = Family::<ResultLabel, Counter>::default();
        let shared_records = Family::<StreamLabel, Counter>::default();
        let shared_refused = Family::<KindLabel, Counter>::default();
        let offload_rows = Family::<KindLabel, Counter>::default();
        let offload_refused = Family::<KindLabel, Counter>::default();
        let inference_missed = Counter::default();
        let store_flushes = Family::<StateLabel, Counter>::default();
        let retention_dropped = Family::<RetentionLabel, Counter>::default();
        let repl_sent = Family::<PeerLabel, Counter>::default();
        let repl_received = Family::<PeerLabel, Counter>::default();
        let repl_lag = Family::<PeerLabel, Gauge>::default();
        let repl_catchups = Family::<StateLabel, Counter>::default();
        let repl_refused = Family::<KindLabel, Counter>::default();
        let repl_dropped = Family::<PeerLabel, Counter>::default();
        let under_replicated = Gauge::default();
        let recovering = Gauge::default();
        let acks = Family::<StateLabel, Counter>::default();
        registry.register(
            "replication_records_sent",
            "Records of this node's streams sent to a replica, by replica (resends included)",
            repl_sent.clone(),
        );
        registry.register(
            "replication_records_received",
            "Records of a neighbour's stream stored here as its replica, by owner",
            repl_received.clone(),
        );
        registry.register(
            "replication_lag_records",
            "Records of this node's streams a replica does not yet hold durably, summed over streams, by replica",
            repl_lag.clone(),
        );
        registry.register(
            "replication_catchups",
            "Replicas more than a window behind, by state (started, finished)",
            repl_catchups.clone(),
        );
        registry.register(
            "replication_refused",
            "Replication messages refused as breaking the protocol, by kind",
            repl_refused.clone(),
        );
        registry.register(
            "replication_messages_dropped",
            "Replication messages not sent because the peer's queue was full (resent later), by peer",
            repl_dropped.clone(),
        );
        registry.register(
            "streams_under_replicated",
            "This node's streams with fewer live holders than replication.replicas",
            under_replicated.clone(),
        );
        registry.register(
            "streams_recovering",
            "This node's streams still finding out what replicas hold after a restart",
            recovering.clone(),
        );
        registry.register(
            "readings_acknowledged",
            "Readings acknowledged to producers, by quorum (full, degraded)",
            acks.clone(),
        );
        registry.register(
            "readings_stored",
            "Readings acknowledged durable to their producer",
            readings_stored.clone(),
        );
        registry.register(
            "readings_rejected",
            "Readings refused, by reason (not_finite, out_of_range, unknown_detector, time_backwards, a replayed file's malformed rows by parse error, sensor_id, columns, busy, store)",
            readings_rejected.clone(),
        );
        registry.register(
            "model_loads",
            "Model loads, by result (ok, failed)",
            model_loads.clone(),
        );
        registry.register(
            "shared_records",
            "Upstream neighbours' predictions received, by stream (each record once)",
            shared_records.clone(),
        );
        registry.register(
            "shared_refused",
            "Upstream prediction records not taken, by kind (duplicate, gap)",
            shared_refused.clone(),
        );
        registry.register(
            "offload_rows",
            "Inference rows by where they went: sent (own rows a neighbour computed), taken (a neighbour's rows computed here), retried (own rows whose helper gave no answer, run again)",
            offload_rows.clone(),
        );
        registry.register(
            "offload_refused",
            "Offloaded batches this node refused, by kind (drained, model, busy, malformed)",
            offload_refused.clone(),
        );
        registry.register(
            "inference_missed",
            "Own inference batches that finished after their deadline",
            inference_missed.clone(),
        );
        registry.register(
            "predictions",
            "Next-window predictions, by result (ok, failed)",
            predictions.clone(),
        );
        registry.register(
            "sensor_failures",
            "Sensor source failures, retried with backoff, by source and kind (open, connect, disconnected, ...)",
            sensor_failures.clone(),
        );
        registry.register(
            "store_flushes",
            "Group-commit flushes, by result (ok, failed)",
            store_flushes.clone(),
        );
        registry.register(
            "retention_dropped",
            "Records dropped by retention, by stream kind and reason (age, quota)",
            retention_dropped.clone(),
        );
        registry.register(
            "frames_in",
            "Frames decoded from peers and admins",
            frames_in.clone(),
        );
        registry.register(
            "frames_out",
            "Frames sent to peers and admins",
            frames_out.clone(),
        );
        registry.register(
            "frame_errors",
            "Frames refused: oversize, unknown version, undecodable, truncated",
            frame_errors.clone(),
        );
        registry.register(
            "handshakes",
            "QUIC/TLS handshakes by direction and result",
            handshakes.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused after the handshake, by reason",
            refused.clone(),
        );
        registry.register("peers", "Configured peers by state", peers.clone());
        registry.register(
            "member_transitions",
            "Peer state changes, by the state entered",
            transitions.clone(),
        );
        registry.register(
            "admin_requests",
            "Requests served on the admin endpoint",
            admin_requests.clone(),
        );
        let gw = Arc::new(GatewayMetrics::register(&mut registry));
        Self {
            registry: Arc::new(registry),
            frames_in,
            frames_out,
            frame_errors,
            handshakes,
            refused,
            peers,
            transitions,
            admin_requests,
            readings_stored,
            readings_rejected,
            sensor_failures,
            model_loads,
            predictions,
            shared_records,
            shared_refused,
            offload_rows,
            offload_refused,
            inference_missed,
            store_flushes,
            retention_dropped,
            repl_sent,
            repl_received,
            repl_lag,
            repl_catchups,
            repl_refused,
            repl_dropped,
            under_replicated,
            recovering,
            acks,
            gw,
            udp: Arc::default(),
        }
    }

    /// The control-plane, aggregation and cloud-sync metrics.
    pub fn gateway(&self) -> &GatewayMetrics {
        &self.gw
    }

    /// Exports the datagram counters of the endpoint's fault layer.
    pub fn attach_udp(&self, layer: verge_net::FaultLayer) {
        let _ = self.udp.set(layer);
    }

    /// A frame arrived and decoded.
    pub fn frame_in(&self) {
        self.frames_in.inc();
    }

    /// A frame was sent.
    pub fn frame_out(&self) {
        self.frames_out.inc();
    }

    /// A frame was refused; `kind` is `oversize`, `version`, `decode`, `truncated` or `short`.
    pub fn frame_error(&self, kind: &str) {
        self.frame_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// A handshake finished; `inbound` or `outbound`, `ok` or a failure label.
    pub fn handshake(&self, direction: &str, result: &str) {
        self.handshakes
            .get_or_create(&HandshakeLabel {
                direction: direction.into(),
                result: result.into(),
            })
            .inc();
    }

    /// An authenticated connection was refused (`role`, `unknown_peer`).
    pub fn refused(&self, kind: &str) {
        self.refused
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Sets the per-state peer counts.
    pub fn set_peers(&self, alive: u32, suspect: u32, down: u32) {
        for (state, n) in [("alive", alive), ("suspect", suspect), ("down", down)] {
            self.peers
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::from(n));
        }
    }

    /// A peer entered `state`.
    pub fn transition(&self, state: &str) {
        self.transitions
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .inc();
    }

    /// An admin request was served.
    pub fn admin_request(&self) {
        self.admin_requests.inc();
    }

    /// `n` readings were acknowledged durable.
    pub fn readings_stored(&self, n: u64) {
        self.readings_stored.inc_by(n);
    }

    /// `n` readings were refused for `kind`.
    pub fn readings_rejected(&self, kind: &str, n: u64) {
        self.readings_rejected
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc_by(n);
    }

    /// A model load finished.
    pub fn model_load(&self, ok: bool) {
        self.model_loads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    /// `n` records of the upstream prediction stream `stream` were taken.
    pub fn shared_records(&self, stream: &str, n: u64) {
        self.shared_records
            .get_or_create(&StreamLabel {
                stream: stream.into(),
            })
            .inc_by(n);
    }

    /// `n` upstream prediction records were not taken (`duplicate`, `gap`).
    pub fn shared_refused(&self, kind: &str, n: u64) {
        self.shared_refused
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc_by(n);
    }

    /// `n` inference rows went `kind` (sent, taken, retried).
    pub fn offload_rows(&self, kind: &str, n: u64) {
        self.offload_rows
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc_by(n);
    }

    /// An offloaded batch was refused here (drained, model, busy, malformed).
    pub fn offload_refused(&self, kind: &str) {
        self.offload_refused
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// An own inference batch finished after its deadline.
    pub fn inference_missed(&self) {
        self.inference_missed.inc();
    }

    /// `n` predictions were made (`ok`) or could not be.
    pub fn predictions(&self, ok: bool, n: u64) {
        self.predictions
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc_by(n);
    }

    /// The sensor source failed (`kind` says how) and will be retried.
    pub fn sensor_failure(&self, source: &str, kind: &str) {
        self.sensor_failures
            .get_or_create(&SourceKindLabel {
                source: source.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// A group-commit flush finished.
    pub fn store_flush(&self, ok: bool) {
        self.store_flushes
            .get_or_create(&StateLabel {
                state: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    /// Retention dropped records of `kind`.
    pub fn retention_dropped(&self, kind: &str, by_age: u64, by_quota: u64) {
        for (reason, n) in [("age", by_age), ("quota", by_quota)] {
            if n > 0 {
                self.retention_dropped
                    .get_or_create(&RetentionLabel {
                        kind: kind.into(),
                        reason: reason.into(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// `n` records were sent to replica `peer`.
    pub fn replication_sent(&self, peer: &str, n: u64) {
        self.repl_sent
            .get_or_create(&PeerLabel { peer: peer.into() })
            .inc_by(n);
    }

    /// `n` records of `owner`'s streams were stored here.
    pub fn replication_received(&self, owner: &str, n: u64) {
        self.repl_received
            .get_or_create(&PeerLabel { peer: owner.into() })
            .inc_by(n);
    }

    /// Replica `peer` lacks `lag` records, summed over this node's streams.
    pub fn set_replication_lag(&self, peer: &str, lag: u64) {
        self.repl_lag
            .get_or_create(&PeerLabel { peer: peer.into() })
            .set(lag as i64);
    }

    /// A catch-up started or finished.
    pub fn replication_catchup(&self, started: bool) {
        self.repl_catchups
            .get_or_create(&StateLabel {
                state: if started { "started" } else { "finished" }.into(),
            })
            .inc();
    }

    /// A replication message was refused for `kind`.
    pub fn replication_refused(&self, kind: &str) {
        self.repl_refused
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// A replication message to `peer` was dropped.
    pub fn replication_dropped(&self, peer: &str) {
        self.repl_dropped
            .get_or_create(&PeerLabel { peer: peer.into() })
            .inc();
    }

    /// Streams under-replicated and recovering now.
    pub fn set_stream_states(&self, under_replicated: usize, recovering: usize) {
        self.under_replicated.set(under_replicated as i64);
        self.recovering.set(recovering as i64);
    }

    /// `n` readings were acknowledged, with the full write quorum or degraded.
    pub fn readings_acknowledged(&self, degraded: bool, n: u64) {
        self.acks
            .get_or_create(&StateLabel {
                state: if degraded { "degraded" } else { "full" }.into(),
            })
            .inc_by(n);
    }

    /// The Prometheus text exposition, with the process's resident memory appended.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
        }
        if let Some(rss) = resident_bytes() {
            out.push_str("# HELP verge_process_resident_memory_bytes Resident set size of the node process.\n");
            out.push_str("# TYPE verge_process_resident_memory_bytes gauge\n");
            out.push_str(&format!("verge_process_resident_memory_bytes {rss}\n"));
        }
        if let Some(layer) = self.udp.get() {
            use std::sync::atomic::Ordering::Relaxed;
            let st = layer.stats();
            for (name, help, v) in [
                (
                    "verge_udp_datagrams_in_total",
                    "UDP datagrams received, valid or not.",
                    st.datagrams_in.load(Relaxed),
                ),
                (
                    "verge_udp_datagrams_out_total",
                    "UDP datagrams sent.",
                    st.datagrams_out.load(Relaxed),
                ),
                (
                    "verge_udp_datagrams_dropped_total",
                    "UDP datagrams dropped by injected faults.",
                    st.datagrams_dropped.load(Relaxed),
                ),
            ] {
                let family = name.trim_end_matches("_total");
                out.push_str(&format!(
                    "# HELP {family} {help}\n# TYPE {family} counter\n{name} {v}\n"
                ));
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

/// The process's resident set size in bytes, from the `VmRSS` line of `/proc/self/status`.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text_with_the_counters_that_moved() {
        let m = Metrics::new();
        m.frame_in();
        m.frame_error("oversize");
        m.set_peers(2, 0, 1);
        let text = m.encode();
        assert!(text.contains("verge_frames_in_total 1"), "{text}");
        assert!(
            text.contains("verge_frame_errors_total{kind=\"oversize\"} 1"),
            "{text}"
        );
        assert!(text.contains("verge_peers{state=\"alive\"} 2"), "{text}");
        assert!(
            text.contains("verge_process_resident_memory_bytes"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}

/// Metrics of the control plane (term, leadership), the aggregation windows and the gateway's
/// cloud sync.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    term: Gauge,
    leader: Gauge,
    leader_changes: Counter,
    windows_emitted: Counter,
    late_readings: Counter,
    batches: Family<StateLabel, Counter>,
    windows_synced: Family<StateLabel, Counter>,
    backlog: Gauge,
    outbox: Gauge,
    cloud_reachable: Gauge,
    cursors: Family<StateLabel, Counter>,
    warnings: Family<KindLabel, Counter>,
    reads: Family<StateLabel, Counter>,
}

impl GatewayMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        r.register(
            "control_term",
            "The control plane's current Raft term",
            m.term.clone(),
        );
        r.register(
            "control_is_gateway",
            "1 while this node leads the control plane (is the gateway)",
            m.leader.clone(),
        );
        r.register(
            "control_leader_changes",
            "Gateway changes this node has seen",
            m.leader_changes.clone(),
        );
        r.register(
            "aggregation_windows",
            "Aggregation windows closed and appended to this node's aggregate streams",
            m.windows_emitted.clone(),
        );
        r.register(
            "aggregation_late_readings",
            "Readings that arrived after their window closed (counted in the next window's late column)",
            m.late_readings.clone(),
        );
        r.register(
            "sync_batches",
            "Batches posted to the cloud, by answer (stored, duplicate, stale, rejected, unavailable)",
            m.batches.clone(),
        );
        r.register(
            "sync_windows",
            "Windows acknowledged by the cloud, by state (stored, duplicate)",
            m.windows_synced.clone(),
        );
        r.register(
            "sync_backlog_windows",
            "Windows not yet acknowledged by the cloud, all aggregate streams together (gateway only)",
            m.backlog.clone(),
        );
        r.register(
            "sync_outbox_batches",
            "Batches in the gateway's durable outbox",
            m.outbox.clone(),
        );
        r.register(
            "sync_cloud_reachable",
            "1 if the cloud answered the last post, 0 if not, absent before the first",
            m.cloud_reachable.clone(),
        );
        r.register(
            "sync_cursor_proposals",
            "Cursor advances proposed through Raft, by result (committed, failed)",
            m.cursors.clone(),
        );
        r.register(
            "sync_warnings",
            "Things the sync core noticed and dealt with, by kind",
            m.warnings.clone(),
        );
        r.register(
            "sync_reads",
            "Aggregate reads for the sync, by result (local, peer, failed)",
            m.reads.clone(),
        );
        m
    }

    /// The control plane's term and whether this node leads it.
    pub fn set_leadership(&self, term: u64, leader: bool) {
        self.term.set(term as i64);
        self.leader.set(i64::from(leader));
    }

    /// The gateway changed.
    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// Windows appended to aggregate streams, and late readings they reported.
    pub fn windows(&self, emitted: u64, late: u64) {
        self.windows_emitted.inc_by(emitted);
        self.late_readings.inc_by(late);
    }

    /// The cloud answered a post (`stored`, `duplicate`, `stale`, `rejected`, `unavailable`).
    pub fn batch(&self, outcome: &str) {
        self.batches
            .get_or_create(&StateLabel {
                state: outcome.into(),
            })
            .inc();
    }

    /// Windows the cloud acknowledged.
    pub fn windows_synced(&self, stored: u64, duplicate: u64) {
        for (state, n) in [("stored", stored), ("duplicate", duplicate)] {
            self.windows_synced
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .inc_by(n);
        }
    }

    /// The sync's backlog and outbox, and the cloud's reachability if known.
    pub fn sync_state(&self, backlog: u64, outbox: u64, reachable: Option<bool>) {
        self.backlog.set(backlog as i64);
        self.outbox.set(outbox as i64);
        if let Some(r) = reachable {
            self.cloud_reachable.set(i64::from(r));
        }
    }

    /// A cursor proposal ended (`committed`, `failed`).
    pub fn cursor(&self, result: &str) {
        self.cursors
            .get_or_create(&StateLabel {
                state: result.into(),
            })
            .inc();
    }

    /// The sync core warned.
    pub fn warning(&self, kind: &str) {
        self.warnings
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// A read for the sync ended (`local`, `peer`, `failed`).
    pub fn read(&self, result: &str) {
        self.reads
            .get_or_create(&StateLabel {
                state: result.into(),
            })
            .inc();
    }
}
