//! Where inference batches run: on this node's one inference worker, or on a neighbour.
//!
//! The store actor hands every batch of closed windows' feature rows to [`Engine::run`], which
//! asks the [`Planner`] where it should go given this node's load, the neighbours' gossiped
//! loads and the batch's deadline, and answers with the model's outputs and who computed them.
//! The store appends them as this node's results, so a batch's results are written once, by its
//! owner, whichever node ran it.
//!
//! # The rules
//! - **Never lost**: a helper that refuses, dies or stalls (no answer by the deadline) is
//!   forgotten until it gossips again, and the batch is placed again: on another neighbour if
//!   one would still make the deadline, else here. A late answer from the first helper is
//!   dropped with its request, so nothing is computed twice into the results.
//! - **Offload never loops**: a batch served for a neighbour ([`Engine::serve`]) runs on this
//!   node's worker, never further.
//! - **A drained node takes no offloaded work**, nor does one whose queue would miss the
//!   asker's deadline, nor one that runs another version of the model.
//! - **One worker**: batches here run one at a time (a cabinet has one inference engine); the
//!   rows waiting are the queue the neighbours hear about. `slowdown` stretches each batch to
//!   that many times its compute time, to stand in for a slower cabinet in tests and
//!   simulations; [`Engine::set_slowdown`] changes it while the node runs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use verge_infer::Model;
use verge_proto::NodeId;
use verge_proto::admin::InferenceStatus;
use verge_proto::peer::{InferRequest, LoadReport, PeerReply, PeerRequest};

use crate::links::PeerLinks;
use crate::metrics::Metrics;
use crate::offload::{Batch, Load, LoadGauge, Placement, Planner, PlannerConfig};

/// Latencies kept for the status's percentiles.
const LATENCIES_KEPT: usize = 1_000;
/// Batches in the status's recent percentile.
const RECENT: usize = 100;
/// Attempts on neighbours before a batch runs here regardless.
const REMOTE_ATTEMPTS: usize = 2;
/// The least time an offloaded batch is given to come back.
const REMOTE_WAIT_MIN: Duration = Duration::from_millis(10);
/// The most rows one offloaded batch may carry.
const SERVE_ROWS_MAX: usize = 4_096;

/// The least slowdown: a batch's own compute time.
pub const SLOWDOWN_MIN: f64 = 1.0;
/// The most slowdown: beyond it a node is better called down.
pub const SLOWDOWN_MAX: f64 = 1000.0;

/// A slowdown [`Engine::set_slowdown`] refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("slowdown {0} is not a number between {SLOWDOWN_MIN} and {SLOWDOWN_MAX}")]
pub struct SlowdownOutOfRange(pub f64);

/// Offload settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// Offload batches that would miss their deadline here.
    pub offload: bool,
    /// A batch's deadline, from its windows closing.
    pub deadline: Duration,
    /// A neighbour's gossiped load older than this is not trusted.
    pub stale_after: Duration,
    /// Each local batch takes this many times its compute time (1: the real speed), until
    /// [`Engine::set_slowdown`] changes it.
    pub slowdown: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            offload: true,
            deadline: Duration::from_millis(100),
            stale_after: Duration::from_secs(2),
            slowdown: 1.0,
        }
    }
}

/// A batch's outputs and where they were computed.
#[derive(Debug)]
pub struct Ran {
    /// One output per row, or why there are none.
    pub outcome: Result<Vec<f32>, String>,
    /// The neighbour that computed them; `None`: this node.
    pub computed_by: Option<NodeId>,
}

/// Runs inference batches here or on neighbours. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    me: NodeId,
    cfg: EngineConfig,
    links: PeerLinks,
    gauge: LoadGauge,
    metrics: Metrics,
    /// The slowdown in force, as `f64` bits: `cfg.slowdown` at start, then what
    /// [`Engine::set_slowdown`] set. Atomic so that a change needs no lock on the batch path.
    slowdown: AtomicU64,
    /// The one worker.
    worker: Semaphore,
    origin: Instant,
    planner: Mutex<Planner>,
    rng: Mutex<StdRng>,
    /// The models this node runs, by name: what it can run for a neighbour.
    shelf: Mutex<BTreeMap<String, Arc<Model>>>,
    stats: Mutex<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    batches: u64,
    rows: u64,
    offloaded_rows: u64,
    retried: u64,
    taken_rows: u64,
    missed: u64,
    /// Latencies of the last batches, in milliseconds.
    latencies: VecDeque<f64>,
    /// End-to-end latencies of the last windows, in milliseconds.
    windows: VecDeque<f64>,
}

impl Engine {
    /// An engine for node `me`, asking neighbours over `links`, showing its load in `gauge`.
    pub fn new(
        me: NodeId,
        cfg: EngineConfig,
        links: PeerLinks,
        gauge: LoadGauge,
        metrics: Metrics,
    ) -> Self {
        Self(Arc::new(Inner {
            me,
            cfg,
            links,
            gauge,
            metrics,
            slowdown: AtomicU64::new(cfg.slowdown.to_bits()),
            worker: Semaphore::new(1),
            origin: Instant::now(),
            planner: Mutex::new(Planner::new(PlannerConfig {
                stale_after: cfg.stale_after,
            })),
            rng: Mutex::new(StdRng::from_os_rng()),
            shelf: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(Stats::default()),
        }))
    }

    /// The settings.
    pub fn config(&self) -> EngineConfig {
        self.0.cfg
    }

    /// The slowdown in force.
    pub fn slowdown(&self) -> f64 {
        f64::from_bits(self.0.slowdown.load(Ordering::Relaxed))
    }

    /// Each batch this node's worker starts from now on takes `factor` times its compute time
    /// (a batch already running keeps the slowdown it started with). Refuses a factor that is
    /// not finite or not between [`SLOWDOWN_MIN`] and [`SLOWDOWN_MAX`].
    pub fn set_slowdown(&self, factor: f64) -> Result<f64, SlowdownOutOfRange> {
        if !factor.is_finite() || !(SLOWDOWN_MIN..=SLOWDOWN_MAX).contains(&factor) {
            return Err(SlowdownOutOfRange(factor));
        }
        self.0.slowdown.store(factor.to_bits(), Ordering::Relaxed);
        Ok(factor)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `model` is one this node runs (and so may run for a neighbour).
    pub fn shelve(&self, model: &Arc<Model>) {
        let mut shelf = self.0.shelf.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = shelf
            .get(model.name())
            .is_none_or(|m| !Arc::ptr_eq(m, model));
        if fresh {
            shelf.insert(model.name().to_owned(), model.clone());
        }
    }

    /// Runs one batch of zeros (`rows` rows) on `model` through this node's worker, so the load
    /// it gossips, and its own first decision, know its speed before its first real batch.
    pub async fn calibrate(&self, model: Arc<Model>, rows: usize) {
        let zeros = vec![0.0; rows.max(1) * model.input_width()];
        match self.local(model, zeros).await {
            Ok(_) => debug!(load = ?self.0.gauge.report(false), "inference speed measured"),
            Err(e) => warn!("the model failed its calibration batch: {e}"),
        }
    }

    /// `peer` gossiped its load.
    pub fn heard(&self, peer: &NodeId, load: LoadReport) {
        let now = self.now_ms();
        self.0
            .planner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .heard(peer.clone(), Load::from(load), now);
    }

    /// Runs one of this node's batches (`rows`, row after row, for `model`), whose windows
    /// closed at `made`: here or on a neighbour, as the planner says. Always answers; a batch
    /// that could not be computed anywhere comes back with the error.
    pub async fn run(&self, model: Arc<Model>, rows: Vec<f32>, made: Instant) -> Ran {
        let width = model.input_width().max(1);
        let n = rows.len() / width;
        let mut ran = None;
        for _ in 0..REMOTE_ATTEMPTS {
            let Some(peer) = self.offload_to(n, made) else {
                break;
            };
            match self.remote(&peer, &model, &rows, made).await {
                Ok(out) => {
                    self.0.gauge.offloaded(n);
                    self.0.metrics.offload_rows("sent", n as u64);
                    self.stats(|s| s.offloaded_rows += n as u64);
                    ran = Some(Ran {
                        outcome: Ok(out),
                        computed_by: Some(peer),
                    });
                    break;
                }
                Err(why) => {
                    warn!(helper = %peer, rows = n, "an offloaded batch came back without an answer ({why}); placing it again");
                    self.0
                        .planner
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .forget(&peer);
                    self.0.metrics.offload_rows("retried", n as u64);
                    self.stats(|s| s.retried += 1);
                }
            }
        }
        let ran = match ran {
            Some(ran) => ran,
            None => Ran {
                outcome: self.local(model, rows).await,
                computed_by: None,
            },
        };
        let took = made.elapsed();
        let missed = took > self.0.cfg.deadline;
        if missed {
            self.0.metrics.inference_missed();
        }
        self.stats(|s| {
            s.batches += 1;
            s.rows += n as u64;
            s.missed += u64::from(missed);
            s.latencies.push_back(took.as_secs_f64() * 1e3);
            while s.latencies.len() > LATENCIES_KEPT {
                s.latencies.pop_front();
            }
        });
        ran
    }

    /// The neighbour a batch of `n` rows made at `made` should go to, if any.
    fn offload_to(&self, n: usize, made: Instant) -> Option<NodeId> {
        if !self.0.cfg.offload {
            return None;
        }
        let own = Load::from(self.0.gauge.report(false));
        let batch = Batch {
            rows: u32::try_from(n).unwrap_or(u32::MAX),
            deadline: self.0.cfg.deadline.saturating_sub(made.elapsed()),
            offloaded_here: false,
        };
        let now = self.now_ms();
        let planner = self
            .0
            .planner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut rng = self.0.rng.lock().unwrap_or_else(PoisonError::into_inner);
        match planner.place(&own, &batch, now, &mut *rng) {
            Placement::Offload(peer) => Some(peer),
            Placement::Local(why) => {
                debug!(?why, rows = n, "batch runs here");
                None
            }
        }
    }

    async fn remote(
        &self,
        peer: &NodeId,
        model: &Model,
        rows: &[f32],
        made: Instant,
    ) -> Result<Vec<f32>, String> {
        let left = self.0.cfg.deadline.saturating_sub(made.elapsed());
        let req = PeerRequest::Infer(InferRequest {
            model: model.name().to_owned(),
            version: model.version().to_owned(),
            features: u32::try_from(model.input_width()).unwrap_or(u32::MAX),
            rows: rows.to_vec(),
            deadline_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
        });
        let expected = rows.len() / model.input_width().max(1) * model.output_width();
        match self
            .0
            .links
            .request(peer, req, left.max(REMOTE_WAIT_MIN))
            .await
        {
            Ok(PeerReply::Inferred(out)) if out.len() == expected => Ok(out),
            Ok(PeerReply::Inferred(out)) => {
                Err(format!("{} outputs for {expected} expected", out.len()))
            }
            Ok(PeerReply::Error(e)) => Err(format!("refused: {e}")),
            Ok(_) => Err("answered with something other than outputs".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs `rows` on this node's worker, after the batches already waiting.
    async fn local(&self, model: Arc<Model>, rows: Vec<f32>) -> Result<Vec<f32>, String> {
        let n = rows.len() / model.input_width().max(1);
        self.0.gauge.enqueue(n);
        let out = async {
            let _permit = self
                .0
                .worker
                .acquire()
                .await
                .map_err(|e| format!("the inference worker is gone: {e}"))?;
            let started = Instant::now();
            let slowdown = self.slowdown();
            let out = tokio::task::spawn_blocking(move || model.predict(&rows))
                .await
                .map_err(|e| format!("the inference task failed: {e}"))?
                .map_err(|e| e.to_string());
            let compute = started.elapsed();
            if slowdown > 1.0 {
                tokio::time::sleep(compute.mul_f64(slowdown - 1.0)).await;
            }
            self.0.gauge.batch(n, started.elapsed());
            out
        }
        .await;
        self.0.gauge.dequeue(n);
        out
    }

    /// Runs a batch `from` offloaded here, unless this node is `drained`, runs no such model, or
    /// could not finish it in time.
    pub async fn serve(&self, from: &NodeId, req: InferRequest, drained: bool) -> PeerReply {
        let refuse = |kind: &str, why: String| {
            self.0.metrics.offload_refused(kind);
            debug!(asker = %from, "refused an offloaded batch: {why}");
            PeerReply::Error(why)
        };
        let me = &self.0.me;
        if drained {
            return refuse(
                "drained",
                format!("node {me} is drained: it takes no offloaded work"),
            );
        }
        let model = self
            .0
            .shelf
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&req.model)
            .cloned();
        let Some(model) = model.filter(|m| m.version() == req.version) else {
            return refuse(
                "model",
                format!("node {me} does not run model {} {}", req.model, req.version),
            );
        };
        let width = model.input_width();
        if req.features as usize != width
            || req.rows.is_empty()
            || !req.rows.len().is_multiple_of(width)
        {
            return refuse(
                "malformed",
                format!(
                    "{} values of {} per row do not make rows of model {}'s {width}",
                    req.rows.len(),
                    req.features,
                    req.model
                ),
            );
        }
        let n = req.rows.len() / width;
        if n > SERVE_ROWS_MAX {
            return refuse(
                "malformed",
                format!("{n} rows is more than the {SERVE_ROWS_MAX} a batch may carry"),
            );
        }
        let own = Load::from(self.0.gauge.report(false));
        let expected_ms = own.expected_us(u32::try_from(n).unwrap_or(u32::MAX)) / 1e3;
        if expected_ms > f64::from(req.deadline_ms) {
            return refuse(
                "busy",
                format!(
                    "node {me} expects to take {expected_ms:.1} ms, past the {} ms left",
                    req.deadline_ms
                ),
            );
        }
        self.0.gauge.taken(n);
        self.0.metrics.offload_rows("taken", n as u64);
        self.stats(|s| s.taken_rows += n as u64);
        match self.local(model, req.rows).await {
            Ok(out) => PeerReply::Inferred(out),
            Err(e) => PeerReply::Error(format!("node {me} could not run the batch: {e}")),
        }
    }

    fn stats(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.0.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A window's record, prediction included, was acknowledged by its replicas `latency` after
    /// the window could close.
    pub fn window_acknowledged(&self, latency: Duration) {
        self.stats(|s| {
            s.windows.push_back(latency.as_secs_f64() * 1e3);
            while s.windows.len() > LATENCIES_KEPT {
                s.windows.pop_front();
            }
        });
    }

    /// What `verge ctl status` shows.
    pub fn status(&self) -> InferenceStatus {
        let s = self.0.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sorted: Vec<f64> = s.latencies.iter().copied().collect();
        let mut recent = sorted[sorted.len().saturating_sub(RECENT)..].to_vec();
        sorted.sort_by(f64::total_cmp);
        recent.sort_by(f64::total_cmp);
        let mut windows: Vec<f64> = s.windows.iter().copied().collect();
        windows.sort_by(f64::total_cmp);
        InferenceStatus {
            offload: self.0.cfg.offload,
            deadline_ms: u64::try_from(self.0.cfg.deadline.as_millis()).unwrap_or(u64::MAX),
            slowdown: self.slowdown(),
            batches: s.batches,
            rows: s.rows,
            offloaded_rows: s.offloaded_rows,
            retried: s.retried,
            taken_rows: s.taken_rows,
            missed: s.missed,
            p50_ms: percentile(&sorted, 0.50),
            p99_ms: percentile(&sorted, 0.99),
            recent_p99_ms: percentile(&recent, 0.99),
            window_p50_ms: percentile(&windows, 0.50),
            window_p99_ms: percentile(&windows, 0.99),
        }
    }
}

/// The `q` quantile of `sorted` (nearest rank); 0 when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use verge_infer::{Registry, features, synthetic};

    use super::*;

    fn engine(cfg: EngineConfig) -> Engine {
        let me: NodeId = "b1".parse().expect("id");
        Engine::new(
            me,
            cfg,
            PeerLinks::new(std::iter::empty(), 1 << 20),
            LoadGauge::default(),
            Metrics::new(),
        )
    }

    fn model(dir: &std::path::Path) -> Arc<Model> {
        let manifest = synthetic::write_mlp(dir, "m", "1", 16, 1, 3).expect("write");
        Registry::new()
            .load(&manifest, Some(&features::SIGNATURE))
            .expect("load")
    }

    fn request(rows: usize, version: &str) -> InferRequest {
        InferRequest {
            model: "m".into(),
            version: version.into(),
            features: features::FEATURES as u32,
            rows: vec![0.5; rows * features::FEATURES],
            deadline_ms: 1_000,
        }
    }

    #[tokio::test]
    async fn a_batch_with_no_neighbour_runs_here_and_is_counted() {
        let dir = tempfile::tempdir().expect("dir");
        let (e, m) = (engine(EngineConfig::default()), model(dir.path()));
        let rows = vec![0.5; 3 * features::FEATURES];
        let expected = m.predict(&rows).expect("predict");
        let ran = e.run(m, rows, Instant::now()).await;
        assert_eq!(ran.outcome, Ok(expected));
        assert_eq!(ran.computed_by, None);
        let s = e.status();
        assert_eq!((s.batches, s.rows, s.offloaded_rows), (1, 3, 0));
        // The load the neighbours hear now knows this node's speed.
        let load = e.0.gauge.report(false);
        assert!(load.rows == 3 && load.us_per_row > 0.0 && load.queued_rows == 0);
    }

    #[tokio::test]
    async fn offloaded_batches_are_refused_when_drained_of_another_version_or_malformed() {
        let dir = tempfile::tempdir().expect("dir");
        let (e, m) = (engine(EngineConfig::default()), model(dir.path()));
        let asker: NodeId = "b2".parse().expect("id");
        let refused = |r: PeerReply, what: &str| match r {
            PeerReply::Error(e) => assert!(e.contains(what), "{e}"),
            other => panic!("not refused: {other:?}"),
        };
        // Nothing on the shelf yet.
        refused(
            e.serve(&asker, request(2, "1"), false).await,
            "does not run",
        );
        e.shelve(&m);
        refused(e.serve(&asker, request(2, "1"), true).await, "drained");
        refused(
            e.serve(&asker, request(2, "2"), false).await,
            "does not run",
        );
        let mut ragged = request(2, "1");
        ragged.rows.pop();
        refused(e.serve(&asker, ragged, false).await, "do not make rows");
        let mut none = request(0, "1");
        none.rows.clear();
        refused(e.serve(&asker, none, false).await, "do not make rows");
        refused(
            e.serve(&asker, request(SERVE_ROWS_MAX + 1, "1"), false)
                .await,
            "more than",
        );
        assert_eq!(e.status().taken_rows, 0);
        // A good one runs on this node's worker and is counted as taken.
        match e.serve(&asker, request(2, "1"), false).await {
            PeerReply::Inferred(out) => assert_eq!(out.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.status().taken_rows, 2);
        assert_eq!(e.0.gauge.report(false).taken_rows, 2);
    }

    #[tokio::test]
    async fn a_slowdown_stretches_local_batches() {
        let dir = tempfile::tempdir().expect("dir");
        let m = model(dir.path());
        let slow = engine(EngineConfig {
            slowdown: 50.0,
            ..EngineConfig::default()
        });
        let rows = vec![0.5; 64 * features::FEATURES];
        // The fastest of a few warm runs: a compute time the engine's own can only exceed.
        let compute = (0..4)
            .map(|_| {
                let t = Instant::now();
                m.predict(&rows).expect("predict");
                t.elapsed()
            })
            .min()
            .unwrap_or_default();
        let ran = slow.run(m, rows, Instant::now()).await;
        assert!(ran.outcome.is_ok());
        // The batch took 50 compute times (49 of them asleep); 10 leaves room for noise.
        assert!(
            f64::from(slow.0.gauge.report(false).us_per_row) * 64.0
                >= compute.as_secs_f64() * 1e6 * 10.0,
            "{:?} vs compute {compute:?}",
            slow.0.gauge.report(false)
        );
    }

    #[tokio::test]
    async fn a_slowdown_set_at_runtime_stretches_the_next_batch() {
        let dir = tempfile::tempdir().expect("dir");
        let m = model(dir.path());
        let e = engine(EngineConfig::default());
        let rows = vec![0.5; 64 * features::FEATURES];
        let us_per_row = |e: &Engine| f64::from(e.0.gauge.report(false).us_per_row);
        // At the configured speed first.
        assert!(
            e.run(m.clone(), rows.clone(), Instant::now())
                .await
                .outcome
                .is_ok()
        );
        let before = us_per_row(&e);
        assert_eq!(e.status().slowdown, 1.0);

        // Refused: out of range or not a number; nothing changes.
        for bad in [0.5, 1000.5, f64::NAN, f64::INFINITY] {
            let err = e.set_slowdown(bad).expect_err("refused");
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
        assert_eq!(e.slowdown(), 1.0);

        assert_eq!(e.set_slowdown(200.0), Ok(200.0));
        assert_eq!(e.status().slowdown, 200.0);
        // The fastest of a few warm runs: a compute time the engine's own can only exceed.
        let compute = (0..4)
            .map(|_| {
                let t = Instant::now();
                m.predict(&rows).expect("predict");
                t.elapsed()
            })
            .min()
            .unwrap_or_default();
        let t = Instant::now();
        assert!(e.run(m, rows, Instant::now()).await.outcome.is_ok());
        let took = t.elapsed();
        // 200 compute times (199 asleep); 20 leaves room for noise. Lower bounds only.
        assert!(
            took >= compute.mul_f64(20.0),
            "{took:?} vs compute {compute:?}"
        );
        assert!(
            us_per_row(&e) > before,
            "{} not above {before}",
            us_per_row(&e)
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 0.99), 0.0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..10], 0.99), 10.0);
    }
}
