//! Inference for a Verge node: ONNX models run through [tract](https://docs.rs/tract-onnx), a
//! registry that swaps models atomically, a pure batcher, and the feature contract of the default
//! next-window vehicle-count model.
//!
//! What the node does with it:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use verge_infer::{features, Registry};
//! let registry = Registry::new();
//! // Load (or later replace) the default model; a bad file is refused and the old model serves on.
//! registry.load("models/default/model.toml", Some(&features::SIGNATURE))?;
//! // Build one row per approach from its window records (the approach's aggregate stream) and the
//! // upstream neighbours' shared predictions, then predict them in one batch.
//! let records: Vec<verge_proto::Record> = Vec::new();
//! let mut rows = Vec::new();
//! rows.extend_from_slice(&features::build(&records, 60_000, 10_000, &[Some(3.0), None, None])?);
//! let next_counts = registry.predict("default", &rows)?;
//! # let _ = next_counts; Ok(()) }
//! ```
//!
//! # The rules
//!
//! - **A model is a manifest beside an ONNX file** ([`Manifest`]): name, version, the input and
//!   output shapes with a leading `"batch"` dimension. Loading checks the file's declared shapes
//!   against the manifest, the manifest against what the caller expects ([`Signature`]), and the
//!   shapes tract infers for the optimised plan; any mismatch or unreadable file is a
//!   [`LoadError`] naming the file and the mismatch. Nothing half-loaded is ever served.
//! - **The registry swaps atomically** ([`Registry`]): a prediction takes the current model (an
//!   `Arc`) and runs on it to the end, so a swap never fails or mixes two models; a failed load
//!   leaves the previous model serving.
//! - **Fixed batch shapes.** A model holds one optimised tract plan per batch size in
//!   1, 2, 4, .., `batch_max`; a request runs on the smallest plan that fits, its tail padded with
//!   zeros, and a request larger than `batch_max` is cut into chunks. That is only right when a
//!   row's answer does not depend on the other rows, so loading checks it: pseudo-random rows
//!   run as one batch and one by one must agree. Each plan keeps a pool of run states and input tensors, so the hot path reuses
//!   them instead of allocating its own buffers (tract's operators still allocate their outputs).
//! - **Batching is a decision without IO** ([`Batcher`]): fed `now`, it says when a batch is due
//!   (full, or its oldest request has waited `max_wait`), and it is bounded (`queue_max`).
//! - **Features are a contract** ([`features`]): the same 27 values, built the same way, in
//!   Rust here and in `models/features.py`, proved identical by a fixture.
//!
//! This crate does no network or storage IO: it does not import `verge-net` or `verge-store`.
//! Where to run a batch (locally or offloaded) is the node's decision, not this crate's.

mod batcher;
pub mod bench;
mod error;
pub mod features;
pub mod heldout;
mod manifest;
mod model;
mod registry;
pub mod synthetic;

pub use batcher::{Batch, Batcher, BatcherConfig, BatcherError, QueueFull};
pub use error::{LoadError, PredictError};
pub use manifest::{Dim, Manifest, Signature, TensorSpec};
pub use model::{BATCH_MAX_LIMIT, Model};
pub use registry::Registry;
