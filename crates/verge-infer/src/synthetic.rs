//! Models of a chosen size with the default model's signature, for load tests and benchmarks.
//!
//! The default model is a few microseconds per row, far below a network round trip, so it cannot
//! show what offloading does for a cabinet whose model is heavy. [`write_mlp`] writes a
//! multi-layer perceptron (27 features in, `layers` hidden layers of `hidden` ReLU units, one
//! output) with pseudo-random weights from a seed, as `model.onnx` beside a `model.toml`: a real
//! ONNX model that loads, checks and runs like any other, with a compute cost of about
//! `27 * hidden + (layers - 1) * hidden^2` multiply-adds per row. Its outputs are not
//! predictions of anything.

use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb;

use crate::features;

/// ONNX's code for 32-bit floats.
const FLOAT: i32 = 1;

/// Writes the model into `dir` (created if missing) as `name` `version`; returns the manifest's
/// path.
///
/// # Errors
///
/// The IO error of writing either file.
pub fn write_mlp(
    dir: &Path,
    name: &str,
    version: &str,
    hidden: usize,
    layers: usize,
    seed: u64,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("model.onnx"),
        mlp_onnx(hidden, layers.max(1), seed),
    )?;
    let manifest = dir.join("model.toml");
    std::fs::write(
        &manifest,
        format!(
            "# Written by verge_infer::synthetic::write_mlp: a load-test model, not a predictor.\n\
             name = {name:?}\nversion = {version:?}\nfile = \"model.onnx\"\n\
             description = \"synthetic MLP, {layers} x {hidden} ReLU, seed {seed}\"\n\n\
             [input]\nname = \"features\"\nshape = [\"batch\", {}]\n\n\
             [output]\nname = \"next_count\"\nshape = [\"batch\", 1]\n",
            features::FEATURES
        ),
    )?;
    Ok(manifest)
}

/// The ONNX encoding of the perceptron.
pub fn mlp_onnx(hidden: usize, layers: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix(seed);
    let mut nodes = Vec::new();
    let mut initializer = Vec::new();
    let mut input = "features".to_owned();
    let mut width = features::FEATURES;
    for layer in 0..=layers {
        let last = layer == layers;
        let out_width = if last { 1 } else { hidden };
        // Weights scaled so activations stay near 1 through the layers.
        let scale = (2.0 / width as f64).sqrt() as f32;
        let (w, b) = (format!("w{layer}"), format!("b{layer}"));
        initializer.push(tensor(
            &w,
            &[width, out_width],
            (0..width * out_width).map(|_| rng.unit() * scale),
        ));
        initializer.push(tensor(&b, &[out_width], (0..out_width).map(|_| 0.0)));
        let (mm, sum) = (format!("mm{layer}"), format!("sum{layer}"));
        nodes.push(node("MatMul", &[&input, &w], &mm));
        let out = if last {
            "next_count".to_owned()
        } else {
            format!("h{layer}")
        };
        if last {
            nodes.push(node("Add", &[&mm, &b], &out));
        } else {
            nodes.push(node("Add", &[&mm, &b], &sum));
            nodes.push(node("Relu", &[&sum], &out));
        }
        input = out;
        width = out_width;
    }
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "verge-infer synthetic".to_owned(),
        graph: Some(pb::GraphProto {
            node: nodes,
            name: "mlp".to_owned(),
            initializer,
            input: vec![value_info("features", features::FEATURES)],
            output: vec![value_info("next_count", 1)],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![output.to_owned()],
        name: output.to_owned(),
        op_type: op.to_owned(),
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[usize], values: impl Iterator<Item = f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_owned(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: FLOAT,
        raw_data: values.flat_map(f32::to_le_bytes).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, width: usize) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = |v| Dimension {
        value: Some(v),
        ..Default::default()
    };
    pb::ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        dim(Value::DimParam("batch".to_owned())),
                        dim(Value::DimValue(width as i64)),
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// SplitMix64: a seeded stream of numbers, enough for weights.
struct SplitMix(u64);

impl SplitMix {
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    #[test]
    fn a_synthetic_mlp_loads_with_the_feature_signature_and_runs() {
        let dir = tempfile::tempdir().expect("dir");
        let manifest = write_mlp(dir.path(), "heavy", "1", 64, 2, 7).expect("write");
        let registry = Registry::new();
        let model = registry
            .load(&manifest, Some(&features::SIGNATURE))
            .expect("loads");
        assert_eq!((model.name(), model.version()), ("heavy", "1"));
        let rows = vec![0.5f32; 3 * features::FEATURES];
        let out = model.predict(&rows).expect("runs");
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|v| v.is_finite()));
        // Same seed, same bytes; another seed, other weights.
        assert_eq!(mlp_onnx(64, 2, 7), mlp_onnx(64, 2, 7));
        assert_ne!(mlp_onnx(64, 2, 7), mlp_onnx(64, 2, 8));
    }
}
