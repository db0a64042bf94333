//! Errors of loading a model and of running one.

use std::path::PathBuf;

/// Why a model was refused. Every variant names the file; the registry keeps serving the model
/// it had.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("manifest {path} is invalid: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What the TOML parser said (it names the key).
        message: String,
    },
    /// The manifest parses but says something impossible (an empty name, a shape without a
    /// leading `"batch"`, a `batch_max` out of range).
    #[error("manifest {path}: {problem}")]
    ManifestValue {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The ONNX file could not be parsed or turned into a runnable plan by tract.
    #[error("model {path} does not load: {message}")]
    Onnx {
        /// The ONNX file.
        path: PathBuf,
        /// tract's error chain.
        message: String,
    },
    /// A shape does not match: the ONNX file's declared shape against the manifest, the manifest
    /// against the caller's expected [`crate::Signature`], or the shape tract infers against the
    /// manifest.
    #[error("model {path}: {what} shape is {found}, but {source_of_truth} says {expected}")]
    ShapeMismatch {
        /// The file whose shape is wrong (the ONNX file or the manifest).
        path: PathBuf,
        /// Which tensor, e.g. `input "features"`.
        what: String,
        /// The shape found.
        found: String,
        /// The shape expected.
        expected: String,
        /// Who expects it: `the manifest`, `the caller`, `the ONNX file`.
        source_of_truth: &'static str,
    },
    /// The model has another number of inputs or outputs than one each, or other names than the
    /// manifest's.
    #[error("model {path}: {problem}")]
    Signature {
        /// The ONNX file.
        path: PathBuf,
        /// What differs.
        problem: String,
    },
    /// The manifest's name is not the one the caller asked to load under.
    #[error("manifest {path} names model `{found}`, expected `{expected}`")]
    Name {
        /// The manifest.
        path: PathBuf,
        /// Its name.
        found: String,
        /// The expected name.
        expected: String,
    },
    /// The model computes one row differently depending on the other rows of its batch, so the
    /// batching (padding, chunking) would change its answers.
    #[error("model {path}: rows are not independent: {detail}")]
    RowsDependent {
        /// The ONNX file.
        path: PathBuf,
        /// The difference seen.
        detail: String,
    },
}

/// Why a prediction failed.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// No model of that name is loaded.
    #[error("no model named `{0}` is loaded")]
    NoModel(String),
    /// The input is not a whole number of rows of the model's width.
    #[error("model `{model}`: input has {len} values, not a multiple of the row width {width}")]
    InputLength {
        /// The model.
        model: String,
        /// The values given.
        len: usize,
        /// Values per row.
        width: usize,
    },
    /// The output buffer has the wrong length.
    #[error("model `{model}`: output buffer holds {len} values, {rows} rows need {needed}")]
    OutputLength {
        /// The model.
        model: String,
        /// The buffer length.
        len: usize,
        /// The rows asked for.
        rows: usize,
        /// The values needed.
        needed: usize,
    },
    /// An input value is NaN or infinite (tract would run, but the answer means nothing).
    #[error("model `{model}`: input row {row} column {column} is not finite")]
    NotFinite {
        /// The model.
        model: String,
        /// The row.
        row: usize,
        /// The column.
        column: usize,
    },
    /// tract failed while running (it should not, once loaded: a bug to report).
    #[error("model `{model}` failed to run: {message}")]
    Run {
        /// The model.
        model: String,
        /// tract's error chain.
        message: String,
    },
}
