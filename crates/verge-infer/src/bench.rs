//! The inference benchmark: the default model through tract at fixed batch sizes, and the same
//! model and inputs through onnxruntime (Python, one thread) when it is installed.
//!
//! [`run`] is what `cargo run --release -p verge-infer --example bench` and, later, `verge bench
//! infer` call; it returns a [`BenchReport`] that prints as a table. The inputs are the held-out
//! rows of `models/default/heldout.f32` (real SUMO features), cycled. Each measured call is one
//! [`Model::predict_into`] of a whole batch into a reused buffer; latency is per call, throughput
//! is rows per second of time spent inside the calls. For onnxruntime the bench runs `python3
//! models/bench_ort.py`, which times `InferenceSession.run` the same way (one intra-op and one
//! inter-op thread) and prints JSON; if `onnxruntime` cannot be imported the report says so.
//! Both run on this machine in turn, never at once. Measurements are noisy on a shared machine:
//! the report prints the figures it got, with the machine's load average.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::features::{FEATURES, SIGNATURE};
use crate::heldout::{HeldoutError, models_dir, read_rows};
use crate::model::Model;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// The model's manifest.
    pub manifest: PathBuf,
    /// Input rows (a held-out file: rows of 27 features and a label).
    pub inputs: PathBuf,
    /// Batch sizes to measure.
    pub batches: Vec<usize>,
    /// How long to measure each batch size (after a tenth as long of warm-up).
    pub duration: Duration,
    /// The most calls measured per batch size (bounds the latency buffer).
    pub calls_max: usize,
    /// The onnxruntime script; `None` skips onnxruntime.
    pub ort_script: Option<PathBuf>,
    /// The Python interpreter that runs it.
    pub python: String,
}

impl Default for BenchConfig {
    /// The repository's default model, its held-out rows and `models/bench_ort.py`, found from
    /// this crate's source directory (a binary run elsewhere sets the paths itself); batch 1 and
    /// 64, 2 s each.
    fn default() -> Self {
        let models = models_dir();
        Self {
            manifest: models.join("default/model.toml"),
            inputs: models.join("default/heldout.f32"),
            batches: vec![1, 64],
            duration: Duration::from_secs(2),
            calls_max: 2_000_000,
            ort_script: Some(models.join("bench_ort.py")),
            python: "python3".into(),
        }
    }
}

/// Why the benchmark could not run (onnxruntime missing is not an error: the report says so).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The model or the inputs did not load, or the model failed.
    #[error(transparent)]
    Heldout(#[from] HeldoutError),
    /// A batch size is 0.
    #[error("batch sizes must be at least 1")]
    Batch,
}

/// Figures for one batch size.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BatchFigures {
    /// Rows per call.
    pub batch: usize,
    /// Calls measured.
    pub calls: usize,
    /// Rows predicted per second of time spent inside the calls.
    pub predictions_per_s: f64,
    /// Median latency of one call, in microseconds.
    pub p50_us: f64,
    /// 99th-percentile latency of one call, in microseconds.
    pub p99_us: f64,
}

/// What onnxruntime gave, or why there is nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum OrtOutcome {
    /// Measured, with onnxruntime's version.
    Measured {
        /// onnxruntime's version.
        version: String,
        /// Figures per batch size.
        figures: Vec<BatchFigures>,
    },
    /// Not measured, and why (e.g. `onnxruntime is not installed`).
    Missing(String),
}

/// The benchmark's result; `Display` prints it as a table.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The model's name and version.
    pub model: String,
    /// The batch sizes with a plan of their own.
    pub plans: Vec<usize>,
    /// tract's figures per batch size.
    pub tract: Vec<BatchFigures>,
    /// onnxruntime's figures.
    pub ort: OrtOutcome,
    /// The 1-minute load average when the run ended (other work on the machine skews figures).
    pub load_average: Option<f64>,
}

impl BenchReport {
    /// tract's throughput over onnxruntime's at `batch` (above 1: tract is faster).
    pub fn throughput_ratio(&self, batch: usize) -> Option<f64> {
        let OrtOutcome::Measured { figures, .. } = &self.ort else {
            return None;
        };
        let t = self.tract.iter().find(|f| f.batch == batch)?;
        let o = figures.iter().find(|f| f.batch == batch)?;
        (o.predictions_per_s > 0.0).then(|| t.predictions_per_s / o.predictions_per_s)
    }

    /// onnxruntime's median latency over tract's at `batch` (above 1: tract is faster).
    pub fn p50_ratio(&self, batch: usize) -> Option<f64> {
        let OrtOutcome::Measured { figures, .. } = &self.ort else {
            return None;
        };
        let t = self.tract.iter().find(|f| f.batch == batch)?;
        let o = figures.iter().find(|f| f.batch == batch)?;
        (t.p50_us > 0.0).then(|| o.p50_us / t.p50_us)
    }
}

/// The targets of the issue: tract at least this many times onnxruntime's throughput.
const TARGETS: [(usize, f64); 2] = [(1, 2.0), (64, 1.0)];

fn row(f: &mut fmt::Formatter<'_>, who: &str, b: &BatchFigures) -> fmt::Result {
    writeln!(
        f,
        "  {:<12} {:>5} {:>10} {:>16.0} {:>10.2} {:>10.2}",
        who, b.batch, b.calls, b.predictions_per_s, b.p50_us, b.p99_us
    )
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "inference bench: model {} (plans for batch {:?})",
            self.model, self.plans
        )?;
        writeln!(
            f,
            "  {:<12} {:>5} {:>10} {:>16} {:>10} {:>10}",
            "runtime", "batch", "calls", "predictions/s", "p50 µs", "p99 µs"
        )?;
        for b in &self.tract {
            row(f, "tract", b)?;
        }
        match &self.ort {
            OrtOutcome::Measured { version, figures } => {
                for b in figures {
                    row(f, &format!("ort {version}"), b)?;
                }
                for b in &self.tract {
                    let (Some(tp), Some(p50)) =
                        (self.throughput_ratio(b.batch), self.p50_ratio(b.batch))
                    else {
                        continue;
                    };
                    let target = TARGETS.iter().find(|(tb, _)| *tb == b.batch);
                    let verdict = target.map_or(String::new(), |(_, t)| {
                        format!(
                            "  target >= {t:.1}x: {}",
                            if tp >= *t { "met" } else { "NOT met" }
                        )
                    });
                    writeln!(
                        f,
                        "  tract / onnxruntime at batch {:>3}: throughput {tp:.2}x, p50 latency {p50:.2}x{verdict}",
                        b.batch
                    )?;
                }
            }
            OrtOutcome::Missing(why) => writeln!(f, "  onnxruntime: not measured ({why})")?,
        }
        if let Some(l) = self.load_average {
            writeln!(f, "  load average (1 min) at the end: {l:.2}")?;
        }
        Ok(())
    }
}

/// Percentile of sorted values (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Measures `model` at `batch` over `inputs` (whole rows, cycled).
fn measure(
    model: &Model,
    inputs: &[f32],
    batch: usize,
    duration: Duration,
    calls_max: usize,
) -> Result<BatchFigures, HeldoutError> {
    let rows = inputs.len() / FEATURES;
    // A contiguous pool of `rows` rows plus one batch of wrap-around, so every call is a slice.
    let mut pool = inputs.to_vec();
    pool.extend_from_slice(&inputs[..(batch.min(rows)) * FEATURES]);
    while pool.len() < (rows + batch) * FEATURES {
        pool.extend_from_slice(&inputs[..FEATURES]);
    }
    let mut out = vec![0.0f32; batch * model.output_width()];
    let mut lat = Vec::with_capacity(calls_max.min(1 << 20));
    let mut offset = 0usize;
    let mut one = |lat: Option<&mut Vec<f64>>| -> Result<(), HeldoutError> {
        let x = &pool[offset * FEATURES..(offset + batch) * FEATURES];
        let t = Instant::now();
        model.predict_into(x, &mut out)?;
        if let Some(lat) = lat {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        offset = (offset + batch) % rows.max(1);
        Ok(())
    };
    let warm = Instant::now();
    while warm.elapsed() < duration / 10 {
        one(None)?;
    }
    let start = Instant::now();
    while start.elapsed() < duration && lat.len() < calls_max {
        one(Some(&mut lat))?;
    }
    // Throughput over the time spent inside the calls (as bench_ort.py counts), not the loop.
    let total: f64 = lat.iter().sum::<f64>() / 1e6;
    let calls = lat.len();
    lat.sort_by(f64::total_cmp);
    Ok(BatchFigures {
        batch,
        calls,
        predictions_per_s: if total > 0.0 {
            (calls * batch) as f64 / total
        } else {
            0.0
        },
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
    })
}

#[derive(Deserialize)]
struct OrtJson {
    onnxruntime: String,
    results: Vec<BatchFigures>,
}

fn run_ort(cfg: &BenchConfig, onnx: &Path) -> OrtOutcome {
    let Some(script) = &cfg.ort_script else {
        return OrtOutcome::Missing("skipped".into());
    };
    let probe = Command::new(&cfg.python)
        .args(["-c", "import onnxruntime, numpy"])
        .output();
    match probe {
        Err(e) => return OrtOutcome::Missing(format!("cannot run {}: {e}", cfg.python)),
        Ok(o) if !o.status.success() => {
            return OrtOutcome::Missing(format!(
                "onnxruntime is missing: `{} -c \"import onnxruntime, numpy\"` failed; pip install onnxruntime numpy",
                cfg.python
            ));
        }
        Ok(_) => {}
    }
    let mut cmd = Command::new(&cfg.python);
    cmd.arg(script)
        .arg("--model")
        .arg(onnx)
        .arg("--inputs")
        .arg(&cfg.inputs)
        .arg("--seconds")
        .arg(format!("{}", cfg.duration.as_secs_f64()))
        .arg("--batch");
    for b in &cfg.batches {
        cmd.arg(b.to_string());
    }
    match cmd.output() {
        Err(e) => OrtOutcome::Missing(format!("cannot run {}: {e}", script.display())),
        Ok(o) if !o.status.success() => OrtOutcome::Missing(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(o) => match serde_json::from_slice::<OrtJson>(&o.stdout) {
            Ok(j) => OrtOutcome::Measured {
                version: j.onnxruntime,
                figures: j.results,
            },
            Err(e) => {
                OrtOutcome::Missing(format!("{} printed no valid JSON: {e}", script.display()))
            }
        },
    }
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs the benchmark with the default configuration (the default model, batch 1 and 64, 2 s
/// each, onnxruntime if importable).
///
/// # Errors
///
/// [`BenchError`] if the model or inputs do not load.
pub fn run() -> Result<BenchReport, BenchError> {
    run_with(&BenchConfig::default())
}

/// Runs the benchmark as `cfg` says.
///
/// # Errors
///
/// [`BenchError`] if the model or inputs do not load, or a batch size is 0.
pub fn run_with(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    if cfg.batches.contains(&0) {
        return Err(BenchError::Batch);
    }
    let model = Model::load(&cfg.manifest, Some(&SIGNATURE)).map_err(HeldoutError::from)?;
    let rows = read_rows(&cfg.inputs)?;
    let mut tract = Vec::new();
    for &b in &cfg.batches {
        tract.push(measure(
            &model,
            &rows.features,
            b,
            cfg.duration,
            cfg.calls_max,
        )?);
    }
    let ort = run_ort(cfg, model.onnx_path());
    Ok(BenchReport {
        model: format!("{} {}", model.name(), model.version()),
        plans: model.batch_sizes(),
        tract,
        ort,
        load_average: load_average(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
