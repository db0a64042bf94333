//! One loaded model: its manifest and one optimised tract plan per batch size.
//!
//! Loading is where everything is checked (see the crate docs); once a [`Model`] exists it only
//! fails on inputs of the wrong length or values that are not finite. Running takes `&self` and is
//! safe from many threads at once: each plan keeps a pool of run states (tract's `SimpleState`,
//! which holds the plan's scratch) and input tensors, taken for the length of one run and put
//! back, so the hot path allocates none of its own buffers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::prelude::*;

use crate::error::{LoadError, PredictError};
use crate::manifest::{Dim, Manifest, Signature, shape_string};

/// The largest `batch_max` a manifest may ask for: it bounds the plans built at load and the
/// memory of one run.
pub const BATCH_MAX_LIMIT: usize = 1024;

/// ONNX's element type number for float32.
const ONNX_FLOAT: i32 = 1;

/// Rows that differ by less than this between a batched run and a one-row run count as equal in
/// the load-time independence check (batched matrix kernels sum in another order).
const ROW_TOLERANCE: f32 = 1e-4;

/// Run states and input tensors kept per plan, at most; more concurrent runs than this allocate
/// their own and drop them afterwards.
const POOL_MAX: usize = 8;

/// A reusable run: tract's state for the plan and the input tensor it is fed. The tensor is
/// shared with tract for the length of a run only, so afterwards it is ours again and is refilled
/// in place.
struct Slot {
    state: TypedSimpleState,
    input: Arc<Tensor>,
}

/// One optimised plan for a fixed batch size.
struct Plan {
    batch: usize,
    plan: Arc<TypedSimplePlan>,
    pool: Mutex<Vec<Slot>>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan").field("batch", &self.batch).finish()
    }
}

/// A model ready to run. Cheap to share: the registry hands out `Arc<Model>`.
#[derive(Debug)]
pub struct Model {
    manifest: Manifest,
    manifest_path: PathBuf,
    onnx_path: PathBuf,
    in_width: usize,
    out_width: usize,
    in_shape_tail: Vec<usize>,
    /// Plans by ascending batch size: 1, 2, 4, .., `batch_max`.
    plans: Vec<Plan>,
}

fn onnx_err(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Onnx {
        path: path.to_owned(),
        message: format!("{e:#}"),
    }
}

/// The fixed dimensions after `batch`.
fn tail(spec: &[Dim]) -> Vec<usize> {
    spec.iter()
        .filter_map(|d| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Batch => None,
        })
        .collect()
}

/// Batch sizes that get a plan: powers of two below `batch_max`, then `batch_max`.
fn batch_sizes(batch_max: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut b = 1;
    while b < batch_max {
        sizes.push(b);
        b *= 2;
    }
    sizes.push(batch_max);
    sizes
}

/// Checks one declared graph input or output of the ONNX file against the manifest.
fn check_declared(
    path: &Path,
    what: &str,
    declared: &pb::ValueInfoProto,
    spec: &crate::TensorSpec,
) -> Result<(), LoadError> {
    let Some(pb::type_proto::Value::TensorType(t)) =
        declared.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(LoadError::Signature {
            path: path.to_owned(),
            problem: format!("{what} \"{}\" is not a tensor", declared.name),
        });
    };
    if t.elem_type != ONNX_FLOAT {
        return Err(LoadError::Signature {
            path: path.to_owned(),
            problem: format!(
                "{what} \"{}\" has ONNX element type {}, not float32 (1)",
                declared.name, t.elem_type
            ),
        });
    }
    // A file may leave its shapes undeclared; tract's inference below still checks them.
    let Some(shape) = &t.shape else {
        return Ok(());
    };
    let found: Vec<String> = shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(DimValue::DimValue(n)) => n.to_string(),
            Some(DimValue::DimParam(p)) => p.clone(),
            None => "?".into(),
        })
        .collect();
    let matches = shape.dim.len() == spec.shape.len()
        && shape
            .dim
            .iter()
            .zip(&spec.shape)
            .all(|(d, want)| match (want, &d.value) {
                // The batch dimension must be left free (symbolic or unknown) in the file.
                (Dim::Batch, Some(DimValue::DimValue(_))) => false,
                (Dim::Batch, _) => true,
                (Dim::Fixed(n), Some(DimValue::DimValue(v))) => {
                    u64::try_from(*v).ok() == Some(*n as u64)
                }
                (Dim::Fixed(_), _) => false,
            });
    if !matches {
        return Err(LoadError::ShapeMismatch {
            path: path.to_owned(),
            what: format!("declared {what} \"{}\"", declared.name),
            found: format!("[{}]", found.join(", ")),
            expected: shape_string(&spec.shape),
            source_of_truth: "the manifest",
        });
    }
    Ok(())
}

impl Model {
    /// Loads the model a manifest describes and checks it (see the crate docs): the file's
    /// declared shapes against the manifest, the manifest against `expected` (if given), tract's
    /// inferred output shape against the manifest for every batch size, and that rows are
    /// computed independently of each other.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] naming the file and what is wrong.
    pub fn load(
        manifest_path: impl AsRef<Path>,
        expected: Option<&Signature>,
    ) -> Result<Self, LoadError> {
        let manifest_path = manifest_path.as_ref();
        let manifest = Manifest::from_file(manifest_path)?;
        if let Some(sig) = expected {
            manifest.check_signature(sig, manifest_path)?;
        }
        let onnx_path = manifest_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(&manifest.file);
        let bytes = std::fs::read(&onnx_path).map_err(|source| LoadError::Io {
            path: onnx_path.clone(),
            source,
        })?;
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| onnx_err(&onnx_path, e))?;
        Self::check_proto(&onnx_path, &proto, &manifest)?;
        let inference = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| onnx_err(&onnx_path, e))?;

        let in_shape_tail = tail(&manifest.input.shape);
        let out_tail = tail(&manifest.output.shape);
        let mut plans = Vec::new();
        for batch in batch_sizes(manifest.batch_max) {
            let mut in_shape = vec![batch];
            in_shape.extend(&in_shape_tail);
            let typed = inference
                .clone()
                .with_input_fact(0, f32::fact(&in_shape).into())
                .and_then(|m| m.into_optimized())
                .map_err(|e| onnx_err(&onnx_path, e))?;
            let out_fact = typed.output_fact(0).map_err(|e| onnx_err(&onnx_path, e))?;
            let mut want = vec![batch];
            want.extend(&out_tail);
            let got: Option<Vec<usize>> = out_fact.shape.as_concrete().map(|s| s.to_vec());
            if out_fact.datum_type != f32::datum_type() || got.as_deref() != Some(&want[..]) {
                return Err(LoadError::ShapeMismatch {
                    path: onnx_path.clone(),
                    what: format!("output \"{}\" (inferred by tract)", manifest.output.name),
                    found: format!("{:?} {:?}", out_fact.datum_type, out_fact.shape),
                    expected: format!("F32 {want:?}"),
                    source_of_truth: "the manifest",
                });
            }
            let plan = typed.into_runnable().map_err(|e| onnx_err(&onnx_path, e))?;
            plans.push(Plan {
                batch,
                plan,
                pool: Mutex::new(Vec::new()),
            });
        }
        let model = Model {
            in_width: manifest.input.row_width(),
            out_width: manifest.output.row_width(),
            in_shape_tail,
            manifest,
            manifest_path: manifest_path.to_owned(),
            onnx_path,
            plans,
        };
        model.check_rows_independent()?;
        Ok(model)
    }

    fn check_proto(
        path: &Path,
        proto: &pb::ModelProto,
        manifest: &Manifest,
    ) -> Result<(), LoadError> {
        let Some(graph) = &proto.graph else {
            return Err(LoadError::Signature {
                path: path.to_owned(),
                problem: "the file has no graph".into(),
            });
        };
        // Older exporters list initializers among the inputs too; those are weights, not inputs.
        let weights: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !weights.contains(i.name.as_str()))
            .collect();
        let names = |v: &[&pb::ValueInfoProto]| -> Vec<String> {
            v.iter().map(|i| i.name.clone()).collect()
        };
        let outputs: Vec<&pb::ValueInfoProto> = graph.output.iter().collect();
        for (what, list, spec) in [
            ("input", &inputs, &manifest.input),
            ("output", &outputs, &manifest.output),
        ] {
            match list.as_slice() {
                [one] if one.name == spec.name => check_declared(path, what, one, spec)?,
                _ => {
                    return Err(LoadError::Signature {
                        path: path.to_owned(),
                        problem: format!(
                            "the graph's {what}s are {:?}; the manifest declares one, \"{}\"",
                            names(list),
                            spec.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs a batch of deterministic pseudo-random rows at the largest batch size and each row
    /// alone, and refuses the model if any row differs: padding and chunking rely on it.
    fn check_rows_independent(&self) -> Result<(), LoadError> {
        let rows = self.manifest.batch_max.min(16);
        let mut x: u32 = 0x9E37_79B9;
        let input: Vec<f32> = (0..rows * self.in_width)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 100.0 - 5.0
            })
            .collect();
        let run_err = |e: PredictError| onnx_err(&self.onnx_path, e);
        let together = self.predict(&input).map_err(run_err)?;
        for r in 0..rows {
            let alone = self
                .predict(&input[r * self.in_width..(r + 1) * self.in_width])
                .map_err(run_err)?;
            let batched = &together[r * self.out_width..(r + 1) * self.out_width];
            for (a, b) in alone.iter().zip(batched) {
                if (a - b).abs() > ROW_TOLERANCE * (1.0 + a.abs()) || !a.is_finite() {
                    return Err(LoadError::RowsDependent {
                        path: self.onnx_path.clone(),
                        detail: format!("row {r} gives {a} alone and {b} in a batch of {rows}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The manifest the model was loaded from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The model's name (the registry key).
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The model's version.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// The manifest file it was loaded from.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The ONNX file it was loaded from.
    pub fn onnx_path(&self) -> &Path {
        &self.onnx_path
    }

    /// Values per input row (27 for the default model).
    pub fn input_width(&self) -> usize {
        self.in_width
    }

    /// Values per output row (1 for the default model).
    pub fn output_width(&self) -> usize {
        self.out_width
    }

    /// The batch sizes with a plan of their own.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.plans.iter().map(|p| p.batch).collect()
    }

    /// Predicts the rows of `input` (row-major, `input_width` values per row) and returns their
    /// outputs (`output_width` values per row).
    ///
    /// # Errors
    ///
    /// [`PredictError`] for an input of the wrong length or with a value that is not finite.
    pub fn predict(&self, input: &[f32]) -> Result<Vec<f32>, PredictError> {
        let rows = input.len() / self.in_width.max(1);
        let mut out = vec![0.0; rows * self.out_width];
        self.predict_into(input, &mut out)?;
        Ok(out)
    }

    /// Like [`Model::predict`], writing into `out` (exactly `rows * output_width` values): the
    /// call a hot loop makes, with buffers it reuses.
    ///
    /// # Errors
    ///
    /// [`PredictError`] for buffers of the wrong length or an input that is not finite.
    pub fn predict_into(&self, input: &[f32], out: &mut [f32]) -> Result<(), PredictError> {
        let w = self.in_width;
        if w == 0 || !input.len().is_multiple_of(w) {
            return Err(PredictError::InputLength {
                model: self.manifest.name.clone(),
                len: input.len(),
                width: w,
            });
        }
        let rows = input.len() / w;
        if out.len() != rows * self.out_width {
            return Err(PredictError::OutputLength {
                model: self.manifest.name.clone(),
                len: out.len(),
                rows,
                needed: rows * self.out_width,
            });
        }
        if let Some(i) = input.iter().position(|v| !v.is_finite()) {
            return Err(PredictError::NotFinite {
                model: self.manifest.name.clone(),
                row: i / w,
                column: i % w,
            });
        }
        let mut done = 0;
        while done < rows {
            let left = rows - done;
            // The smallest plan that holds what is left, or the largest one for a chunk.
            let plan = self
                .plans
                .iter()
                .find(|p| p.batch >= left)
                .or_else(|| self.plans.last());
            let Some(plan) = plan else {
                break;
            };
            let n = left.min(plan.batch);
            self.run_plan(
                plan,
                &input[done * w..(done + n) * w],
                &mut out[done * self.out_width..(done + n) * self.out_width],
            )
            .map_err(|e| PredictError::Run {
                model: self.manifest.name.clone(),
                message: format!("{e:#}"),
            })?;
            done += n;
        }
        Ok(())
    }

    /// Runs `input` (at most `plan.batch` rows) on `plan`, zero-padding the rest of the batch.
    fn run_plan(&self, plan: &Plan, input: &[f32], out: &mut [f32]) -> TractResult<()> {
        let taken = plan
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut slot = match taken {
            Some(slot) => slot,
            None => {
                let mut shape = vec![plan.batch];
                shape.extend(&self.in_shape_tail);
                Slot {
                    state: plan.plan.spawn()?,
                    input: Arc::new(Tensor::zero::<f32>(&shape)?),
                }
            }
        };
        // The tensor is ours again unless a previous run failed half-way; then start afresh.
        if Arc::get_mut(&mut slot.input).is_none() {
            let shape: Vec<usize> = slot.input.shape().to_vec();
            slot.input = Arc::new(Tensor::zero::<f32>(&shape)?);
        }
        if let Some(t) = Arc::get_mut(&mut slot.input) {
            let mut view = t.try_as_plain_ram_mut()?;
            let buf = view.as_slice_mut::<f32>()?;
            buf[..input.len()].copy_from_slice(input);
            buf[input.len()..].fill(0.0);
        }
        slot.state
            .set_input(0, TValue::from_const(Arc::clone(&slot.input)))?;
        let result = slot.state.exec().and_then(|()| {
            let y = slot.state.output(0)?;
            let view = y.try_as_plain_ram()?;
            let ys = view.as_slice::<f32>()?;
            out.copy_from_slice(&ys[..out.len()]);
            Ok(())
        });
        slot.state.reset_turn()?;
        if result.is_ok() {
            let mut pool = plan.pool.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < POOL_MAX {
                pool.push(slot);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_are_powers_of_two_up_to_the_max() {
        assert_eq!(batch_sizes(1), vec![1]);
        assert_eq!(batch_sizes(64), vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(batch_sizes(48), vec![1, 2, 4, 8, 16, 32, 48]);
    }
}
