//! Accuracy on a held-out SUMO run, reproduced in Rust without Python.
//!
//! `models/train.py` writes `models/default/heldout.f32`: the features and labels of every
//! (approach, window) of a SUMO run whose demand seed no training run used, as little-endian
//! float32 rows of [`FEATURES`] features followed by the label (the approach's actual count in
//! the next window). [`evaluate`] runs a model over them through tract and compares its mean
//! absolute error with a last-value predictor's (next count = the newest window's count).
//! `cargo run --release -p verge-infer --example heldout` prints the figures; models/default/
//! metrics.json holds the ones onnxruntime gave when the model was trained.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{LoadError, PredictError};
use crate::features::{FEATURES, LAST_COUNT, SIGNATURE, UPSTREAM_OFFSET};
use crate::model::Model;

/// Values per row of a held-out file: the features, then the label.
pub const ROW_VALUES: usize = FEATURES + 1;

/// Why the held-out evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum HeldoutError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not whole rows of float32.
    #[error("{path} holds {bytes} bytes, not whole rows of {ROW_VALUES} float32 values")]
    Length {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: usize,
    },
    /// The model did not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The model failed to run.
    #[error(transparent)]
    Predict(#[from] PredictError),
}

/// Held-out rows: features (row-major) and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldoutRows {
    /// [`FEATURES`] values per row.
    pub features: Vec<f32>,
    /// One label per row.
    pub labels: Vec<f32>,
}

/// Reads a held-out file (see the module docs).
///
/// # Errors
///
/// [`HeldoutError::Io`] or [`HeldoutError::Length`].
pub fn read_rows(path: &Path) -> Result<HeldoutRows, HeldoutError> {
    let bytes = std::fs::read(path).map_err(|source| HeldoutError::Io {
        path: path.to_owned(),
        source,
    })?;
    let row_bytes = ROW_VALUES * 4;
    if bytes.is_empty() || bytes.len() % row_bytes != 0 {
        return Err(HeldoutError::Length {
            path: path.to_owned(),
            bytes: bytes.len(),
        });
    }
    let rows = bytes.len() / row_bytes;
    let mut features = Vec::with_capacity(rows * FEATURES);
    let mut labels = Vec::with_capacity(rows);
    for row in bytes.chunks_exact(row_bytes) {
        for (i, v) in row.chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            if i < FEATURES {
                features.push(v);
            } else {
                labels.push(v);
            }
        }
    }
    Ok(HeldoutRows { features, labels })
}

/// Mean absolute errors on a held-out file.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldoutReport {
    /// The model's name and version.
    pub model: String,
    /// Whether the upstream slots were zeroed before predicting.
    pub upstream_zeroed: bool,
    /// Rows evaluated.
    pub samples: usize,
    /// The model's mean absolute error, in vehicles per window.
    pub mae_model: f64,
    /// The last-value predictor's mean absolute error.
    pub mae_last_value: f64,
    /// The mean label (for scale).
    pub mean_label: f64,
}

impl HeldoutReport {
    /// `1 - mae_model / mae_last_value`: 0.15 means the model's error is 15% below last-value's.
    pub fn improvement(&self) -> f64 {
        if self.mae_last_value > 0.0 {
            1.0 - self.mae_model / self.mae_last_value
        } else {
            0.0
        }
    }
}

impl fmt::Display for HeldoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<28} upstream {:<7} samples {:>5}  MAE model {:.4}  last-value {:.4}  improvement {:>5.1}%  (mean count {:.3})",
            self.model,
            if self.upstream_zeroed {
                "zeroed"
            } else {
                "as-is"
            },
            self.samples,
            self.mae_model,
            self.mae_last_value,
            100.0 * self.improvement(),
            self.mean_label
        )
    }
}

/// Runs `model` over held-out rows and compares it with last-value. With `zero_upstream` the
/// upstream slots are set to 0 first (no sharing, as the no-share model was trained).
///
/// # Errors
///
/// [`HeldoutError::Predict`] if the model fails.
pub fn evaluate_rows(
    model: &Model,
    rows: &HeldoutRows,
    zero_upstream: bool,
) -> Result<HeldoutReport, HeldoutError> {
    let mut features = rows.features.clone();
    if zero_upstream {
        for row in features.chunks_exact_mut(FEATURES) {
            row[UPSTREAM_OFFSET..].fill(0.0);
        }
    }
    let pred = model.predict(&features)?;
    let n = rows.labels.len();
    let mut err_model = 0.0f64;
    let mut err_last = 0.0f64;
    for (i, label) in rows.labels.iter().enumerate() {
        let label = f64::from(*label);
        err_model += (f64::from(pred[i]) - label).abs();
        err_last += (f64::from(features[i * FEATURES + LAST_COUNT]) - label).abs();
    }
    let denom = n.max(1) as f64;
    Ok(HeldoutReport {
        model: format!("{} {}", model.name(), model.version()),
        upstream_zeroed: zero_upstream,
        samples: n,
        mae_model: err_model / denom,
        mae_last_value: err_last / denom,
        mean_label: rows.labels.iter().map(|v| f64::from(*v)).sum::<f64>() / denom,
    })
}

/// Loads the model `manifest` describes (it must take the default model's features) and
/// evaluates it on the held-out file `data`.
///
/// # Errors
///
/// [`HeldoutError`].
pub fn evaluate(
    manifest: &Path,
    data: &Path,
    zero_upstream: bool,
) -> Result<HeldoutReport, HeldoutError> {
    let model = Model::load(manifest, Some(&SIGNATURE))?;
    evaluate_rows(&model, &read_rows(data)?, zero_upstream)
}

/// The repository's `models/` directory (as seen from this crate's sources).
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}
