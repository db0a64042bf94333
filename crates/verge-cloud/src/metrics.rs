//! Every metric the cloud exports, in one place; handlers call a method, never name a metric.
//!
//! - `verge_cloud_batches_total{result}`: batches by outcome (`stored`, `duplicate`, `stale`,
//!   `bad_request`, `unauthorized`, `too_large`, `error`);
//! - `verge_cloud_windows_stored_total`, `verge_cloud_windows_duplicate_total`: windows written,
//!   and windows already held when a batch arrived;
//! - `verge_cloud_window_conflicts_total`: held windows a batch disagreed with (a bug upstream);
//! - `verge_cloud_highest_term{cluster}`: the fencing term per cluster;
//! - `verge_cloud_request_seconds{route}`: request latency, from headers read to answer ready;
//! - `verge_cloud_faults_applied_total{mode}`: batch requests that an injected fault (`error`,
//!   `garbage`, `delay`, `down`) was applied to, and stale batches stored only because of
//!   `accept-stale`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::FaultMode;

/// What became of a posted batch.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum BatchResult {
    /// A new key, stored.
    Stored,
    /// A key already stored.
    Duplicate,
    /// Refused by fencing.
    Stale,
    /// Malformed or inconsistent.
    BadRequest,
    /// No or wrong credentials.
    Unauthorized,
    /// Body over the limit.
    TooLarge,
    /// The store failed.
    Error,
}

/// Which endpoint a request was for.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/batches`.
    Batches,
    /// `GET /v1/windows`.
    Windows,
    /// `GET /v1/summary`.
    Summary,
    /// `GET /v1/batches`.
    BatchLog,
}

impl BatchResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchResult::Stored => "stored",
            BatchResult::Duplicate => "duplicate",
            BatchResult::Stale => "stale",
            BatchResult::BadRequest => "bad_request",
            BatchResult::Unauthorized => "unauthorized",
            BatchResult::TooLarge => "too_large",
            BatchResult::Error => "error",
        }
    }
}

impl Route {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Batches => "batches",
            Route::Windows => "windows",
            Route::Summary => "summary",
            Route::BatchLog => "batch_log",
        }
    }
}

impl EncodeLabelValue for BatchResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for FaultMode {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: FaultMode,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: BatchResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Route,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

/// The cloud's metrics. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    batches: Family<ResultLabel, Counter>,
    windows_stored: Counter,
    windows_duplicate: Counter,
    window_conflicts: Counter,
    highest_term: Family<ClusterLabel, Gauge>,
    latency: Family<RouteLabel, Histogram>,
    faults_applied: Family<ModeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("verge_cloud");
        let batches = Family::<ResultLabel, Counter>::default();
        let windows_stored = Counter::default();
        let windows_duplicate = Counter::default();
        let window_conflicts = Counter::default();
        let highest_term = Family::<ClusterLabel, Gauge>::default();
        // 100 µs to ~3 s.
        let latency = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register("batches", "Batches posted, by result", batches.clone());
        registry.register(
            "windows_stored",
            "Windows written to the store",
            windows_stored.clone(),
        );
        registry.register(
            "windows_duplicate",
            "Windows of accepted batches that the cloud already held",
            windows_duplicate.clone(),
        );
        registry.register(
            "window_conflicts",
            "Held windows that a later batch disagreed with (the held one is kept)",
            window_conflicts.clone(),
        );
        registry.register(
            "highest_term",
            "Highest gateway term accepted, per cluster",
            highest_term.clone(),
        );
        registry.register(
            "request_seconds",
            "Request latency in seconds, by route",
            latency.clone(),
        );
        let faults_applied = Family::<ModeLabel, Counter>::default();
        registry.register(
            "faults_applied",
            "Batch requests an injected fault was applied to, by mode",
            faults_applied.clone(),
        );
        Self {
            registry: Arc::new(registry),
            batches,
            windows_stored,
            windows_duplicate,
            window_conflicts,
            highest_term,
            latency,
            faults_applied,
        }
    }

    /// Counts a batch request that an injected fault was applied to.
    pub fn fault_applied(&self, mode: FaultMode) {
        self.faults_applied.get_or_create(&ModeLabel { mode }).inc();
    }

    /// Counts a posted batch by its result.
    pub fn batch(&self, result: BatchResult) {
        self.batches.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts the windows an accepted batch stored and already found held.
    pub fn windows(&self, stored: u64, duplicates: u64, conflicts: u64) {
        self.windows_stored.inc_by(stored);
        self.windows_duplicate.inc_by(duplicates);
        self.window_conflicts.inc_by(conflicts);
    }

    /// Sets a cluster's fencing term (at start, from the store).
    pub fn term(&self, cluster: &str, term: u64) {
        self.highest_term
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_owned(),
            })
            .set(i64::try_from(term).unwrap_or(i64::MAX));
    }

    /// Raises a cluster's fencing term to `term` if it is lower.
    pub fn raise_term(&self, cluster: &str, term: u64) {
        let gauge = self.highest_term.get_or_create(&ClusterLabel {
            cluster: cluster.to_owned(),
        });
        let term = i64::try_from(term).unwrap_or(i64::MAX);
        if gauge.get() < term {
            gauge.set(term);
        }
    }

    /// Records how long a request took.
    pub fn latency(&self, route: Route, took: Duration) {
        self.latency
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }

    /// The metrics as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
