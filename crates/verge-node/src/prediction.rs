//! Predictions of each approach's next-window vehicle count, made as its windows close.
//!
//! [`Predictor`] keeps the last [`features::K`] window records of every approach, builds the
//! model's feature row for each window that closes (the approach's own windows; the upstream
//! slots stay empty until neighbours share their predictions), and runs all the approaches that
//! closed together as one batch through the model (a few microseconds). The store actor appends
//! each prediction to the approach's results stream (`<node>/results/<approach>`, stamped with
//! the start of the window it predicts) and into the closed window's own record
//! (`predicted_next_count`), which the gateway syncs to the cloud.
//!
//! # The rules
//! - **A model that cannot be loaded does not stop the node**: the error names the file and the
//!   mismatch, is logged and counted (`verge_model_loads_total{result="failed"}`), and windows
//!   carry [`NO_PREDICTION`](verge_traffic::window::NO_PREDICTION) instead; data keeps flowing.
//! - **A prediction is a count**: a negative model output is stored as 0; a non-finite one, or a
//!   failed batch, is no prediction (counted in `verge_predictions_total{result="failed"}`).
//! - **History survives a restart**: an approach with no history yet is seeded from the last
//!   windows of its stored aggregate stream.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use tracing::{error, info, warn};
use verge_infer::{Model, Registry, features};
use verge_proto::{Record, StreamId};
use verge_traffic::window::Window;

use crate::metrics::Metrics;

/// Predicts each approach's next-window vehicle count from its last windows.
#[derive(Debug)]
pub struct Predictor {
    registry: Registry,
    /// The name of the model that predicts; `None` until one is loaded.
    model: Option<String>,
    window_ms: i64,
    /// The last [`features::K`] window records per approach, oldest first.
    recent: BTreeMap<String, VecDeque<Record>>,
    /// Per approach, the upstream results streams that feed its upstream slots.
    feeds: BTreeMap<String, [Option<StreamId>; features::U]>,
    /// Per upstream results stream, its latest predictions by the start of the window each
    /// predicts.
    shared: BTreeMap<StreamId, BTreeMap<i64, f32>>,
    metrics: Metrics,
}

/// Upstream predictions kept per feed stream.
const SHARED_KEPT: usize = 64;

/// One prediction and the upstream values it was made with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The predicted next-window vehicle count.
    pub value: f64,
    /// The upstream slots fed to the model (`None`: no feeder, or nothing shared in time; fed
    /// as 0).
    pub upstream: [Option<f32>; features::U],
    /// Who computed it: 0 for this node, else the helper's [`NodeId::tag`](verge_proto::NodeId::tag).
    pub computed_by: u32,
}

impl Prediction {
    /// The results record's values: the prediction, each upstream slot (-1 for none), then who
    /// computed it (0: this node; else the helper's tag).
    pub fn values(&self) -> Vec<f64> {
        std::iter::once(self.value)
            .chain(self.upstream.iter().map(|u| u.map_or(-1.0, f64::from)))
            .chain(std::iter::once(f64::from(self.computed_by)))
            .collect()
    }
}

impl Predictor {
    /// Loads the model whose manifest is `path`; on failure, logs and counts it and predicts
    /// nothing.
    pub fn load(path: &Path, window_ms: u64, metrics: Metrics) -> Self {
        let mut p = Self::empty(window_ms, metrics);
        p.model = match p.registry.load(path, Some(&features::SIGNATURE)) {
            Ok(m) => {
                info!(
                    model = m.name(),
                    version = m.version(),
                    manifest = %path.display(),
                    "model loaded"
                );
                p.metrics.model_load(true);
                Some(m.name().to_owned())
            }
            Err(e) => {
                error!("the model cannot be loaded, so windows carry no prediction: {e}");
                p.metrics.model_load(false);
                None
            }
        };
        p
    }

    /// Feeds each approach's upstream slots from these results streams.
    pub fn with_feeds(mut self, feeds: BTreeMap<String, [Option<StreamId>; features::U]>) -> Self {
        self.feeds = feeds;
        self
    }

    /// Takes new records of an upstream results stream.
    pub fn upstream(&mut self, stream: &StreamId, records: Vec<(u64, Record)>) {
        let kept = self.shared.entry(stream.clone()).or_default();
        for (_, r) in records {
            if let Some(v) = r.values.first().filter(|v| v.is_finite()) {
                kept.insert(r.ts_ms, *v as f32);
            }
        }
        while kept.len() > SHARED_KEPT {
            kept.pop_first();
        }
    }

    /// The upstream slots for `approach`'s prediction of the window starting at `start_ms`: each
    /// feeder's prediction of its own window starting then, or its latest within the two windows
    /// before (a neighbour a little behind), else nothing.
    fn slots(&self, approach: &str, start_ms: i64) -> [Option<f32>; features::U] {
        let mut out = [None; features::U];
        let Some(feeds) = self.feeds.get(approach) else {
            return out;
        };
        for (slot, feed) in out.iter_mut().zip(feeds) {
            *slot = feed
                .as_ref()
                .and_then(|s| self.shared.get(s))
                .and_then(|kept| {
                    let oldest = start_ms.saturating_sub(2 * self.window_ms);
                    kept.range(oldest..=start_ms).next_back().map(|(_, v)| *v)
                });
        }
        out
    }

    /// A predictor with no model yet (predicting nothing until one is installed).
    pub fn empty(window_ms: u64, metrics: Metrics) -> Self {
        Self {
            registry: Registry::new(),
            model: None,
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            recent: BTreeMap::new(),
            feeds: BTreeMap::new(),
            shared: BTreeMap::new(),
            metrics,
        }
    }

    /// Installs a deployed model, replacing the loaded one of its name. Returns whether it
    /// predicts from now on: it does if it has the name of the model that predicted so far, or
    /// if none did. The switch happens between two calls of [`Predictor::predict`].
    pub fn install(&mut self, model: Arc<Model>) -> bool {
        let name = model.name().to_owned();
        self.registry.insert(model);
        match &self.model {
            Some(serving) if *serving != name => false,
            _ => {
                self.model = Some(name);
                true
            }
        }
    }

    /// The predicting model.
    pub fn current(&self) -> Option<Arc<Model>> {
        self.registry.get(self.model.as_ref()?)
    }

    /// The predicting model's name and version.
    pub fn model(&self) -> Option<(String, String)> {
        let name = self.model.as_ref()?;
        let model = self.registry.get(name)?;
        Some((model.name().to_owned(), model.version().to_owned()))
    }

    /// Whether `approach` has no history yet (the caller seeds it from the stored stream).
    pub fn needs_history(&self, approach: &str) -> bool {
        self.model.is_some() && !self.recent.contains_key(approach)
    }

    /// Seeds `approach`'s history with its stored window records, oldest first.
    pub fn seed(&mut self, approach: &str, records: Vec<Record>) {
        let recent = self.recent.entry(approach.to_owned()).or_default();
        for r in records {
            push_bounded(recent, r);
        }
    }

    /// Adds the closed `windows` to their approaches' history and predicts the next window of
    /// each, here and now: one entry per window, `None` where no prediction was made.
    pub fn predict(&mut self, windows: &[Window]) -> Vec<Option<Prediction>> {
        match self.prepare(windows) {
            Some((batch, model)) => {
                let outcome = model.predict(&batch.rows).map_err(|e| e.to_string());
                self.finish(batch, outcome)
            }
            None => vec![None; windows.len()],
        }
    }

    /// Adds the closed `windows` to their approaches' history and builds the model's rows for
    /// them: the batch and the model to run it on, or `None` when there is nothing to run (no
    /// model, or no row could be built; those windows get no prediction).
    pub fn prepare(&mut self, windows: &[Window]) -> Option<(PreparedBatch, Arc<Model>)> {
        let name = self.model.clone()?;
        let model = self.registry.get(&name)?;
        let mut rows = Vec::with_capacity(windows.len() * features::FEATURES);
        let mut row_of = Vec::with_capacity(windows.len());
        for (i, w) in windows.iter().enumerate() {
            let upstream = self.slots(&w.approach, w.end_ms);
            let recent = self.recent.entry(w.approach.clone()).or_default();
            push_bounded(recent, w.to_record(None));
            match features::build(
                recent.make_contiguous(),
                w.start_ms,
                self.window_ms,
                &upstream,
            ) {
                Ok(row) => {
                    rows.extend_from_slice(&row);
                    row_of.push((i, upstream));
                }
                Err(e) => {
                    self.metrics.predictions(false, 1);
                    warn!(approach = %w.approach, "no prediction for this window: {e}");
                }
            }
        }
        if row_of.is_empty() {
            return None;
        }
        Some((
            PreparedBatch {
                rows,
                row_of,
                windows: windows.len(),
            },
            model,
        ))
    }

    /// The predictions of a batch from the model's `outcome` on its rows (wherever it ran): one
    /// entry per window, `None` where no prediction was made.
    pub fn finish(
        &self,
        batch: PreparedBatch,
        outcome: Result<Vec<f32>, String>,
    ) -> Vec<Option<Prediction>> {
        let mut out = vec![None; batch.windows];
        match outcome {
            Ok(predicted) if predicted.len() == batch.row_of.len() => {
                let mut failed = 0;
                for ((i, upstream), p) in batch.row_of.into_iter().zip(predicted) {
                    if p.is_finite() {
                        out[i] = Some(Prediction {
                            value: f64::from(p.max(0.0)),
                            upstream,
                            computed_by: 0,
                        });
                    } else {
                        failed += 1;
                    }
                }
                let made = out.iter().filter(|p| p.is_some()).count() as u64;
                self.metrics.predictions(true, made);
                if failed > 0 {
                    self.metrics.predictions(false, failed);
                    warn!(failed, "the model answered a non-finite prediction");
                }
            }
            Ok(predicted) => {
                self.metrics.predictions(false, batch.row_of.len() as u64);
                warn!(
                    rows = batch.row_of.len(),
                    outputs = predicted.len(),
                    "prediction failed: the batch came back with another number of outputs than rows"
                );
            }
            Err(e) => {
                self.metrics.predictions(false, batch.row_of.len() as u64);
                warn!("prediction failed: {e}");
            }
        }
        out
    }
}

/// A batch of feature rows built for closed windows, waiting for the model's outputs.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    /// The rows, row after row.
    pub rows: Vec<f32>,
    /// Per row, the window it predicts from and the upstream slots it was built with.
    row_of: Vec<(usize, [Option<f32>; features::U])>,
    /// Windows in the batch (some may have no row).
    windows: usize,
}

impl PreparedBatch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.row_of.len()
    }

    /// Whether the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.row_of.is_empty()
    }
}

fn push_bounded(recent: &mut VecDeque<Record>, record: Record) {
    recent.push_back(record);
    while recent.len() > features::K {
        recent.pop_front();
    }
}
