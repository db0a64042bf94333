//! The committed models against onnxruntime's outputs, the feature contract against its Python
//! twin, the held-out figures, and the registry's refusals and atomic swaps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::Deserialize;
use verge_infer::features::{self, FEATURES, SIGNATURE};
use verge_infer::{LoadError, Model, PredictError, Registry, heldout};
use verge_proto::Record;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> PathBuf {
    repo().join("models")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[derive(Deserialize)]
struct Golden {
    inputs: Vec<Vec<f32>>,
    outputs: Vec<Vec<f32>>,
}

fn golden(name: &str) -> Golden {
    let text = std::fs::read_to_string(fixture(&format!("{name}_golden.json"))).expect("fixture");
    serde_json::from_str(&text).expect("fixture parses")
}

/// tract's outputs are within 1e-5 of onnxruntime's, for every row, run as one batch, one row at
/// a time, and as a batch larger than `batch_max` (chunked).
fn assert_matches_onnxruntime(name: &str) {
    let model = Model::load(models().join(name).join("model.toml"), Some(&SIGNATURE))
        .unwrap_or_else(|e| panic!("{name} loads: {e}"));
    let g = golden(name);
    assert!(g.inputs.len() >= 16, "a real fixture");
    let flat: Vec<f32> = g.inputs.iter().flatten().copied().collect();
    let want: Vec<f32> = g.outputs.iter().flatten().copied().collect();
    let check = |got: &[f32], how: &str| {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5,
                "{name} {how}: row {i}: tract {a}, onnxruntime {b}"
            );
        }
    };
    check(&model.predict(&flat).expect("batch"), "as one batch");
    let one_by_one: Vec<f32> = g
        .inputs
        .iter()
        .flat_map(|row| model.predict(row).expect("row"))
        .collect();
    check(&one_by_one, "row by row");
    // Row counts that are no plan's size run padded on the next larger plan.
    let w = FEATURES;
    for n in [3usize, 5, 37] {
        let n = n.min(g.inputs.len());
        let got = model.predict(&flat[..n * w]).expect("padded");
        check_prefix(name, &got, &want[..n], n);
    }
    let tripled: Vec<f32> = flat.iter().chain(&flat).chain(&flat).copied().collect();
    let got = model.predict(&tripled).expect("chunked");
    for k in 0..3 {
        check(&got[k * want.len()..(k + 1) * want.len()], "chunked");
    }
}

#[test]
fn default_model_matches_onnxruntime() {
    assert_matches_onnxruntime("default");
}

#[test]
fn noshare_model_matches_onnxruntime() {
    assert_matches_onnxruntime("default-noshare");
}

#[test]
fn a_plain_torch_linear_export_loads_and_matches_onnxruntime() {
    assert_matches_onnxruntime("linear");
}

#[derive(Deserialize)]
struct FeatureCase {
    approach: String,
    last_start_ms: i64,
    window_ms: i64,
    records: Vec<FixtureRecord>,
    upstream: Vec<Option<f32>>,
    features: Vec<f64>,
}

#[derive(Deserialize)]
struct FixtureRecord {
    ts_ms: i64,
    values: Vec<f64>,
}

#[derive(Deserialize)]
struct FeatureFixture {
    cases: Vec<FeatureCase>,
}

#[test]
fn features_match_the_python_twin() {
    let text = std::fs::read_to_string(fixture("features.json")).expect("fixture");
    let fx: FeatureFixture = serde_json::from_str(&text).expect("parses");
    assert!(fx.cases.len() >= 3);
    for case in &fx.cases {
        let records: Vec<Record> = case
            .records
            .iter()
            .map(|r| Record {
                ts_ms: r.ts_ms,
                values: r.values.clone(),
            })
            .collect();
        let row = features::build(&records, case.last_start_ms, case.window_ms, &case.upstream)
            .expect("builds");
        assert_eq!(case.features.len(), FEATURES);
        // Python builds in f64 and numpy rounds to f32 as training does: bit-identical.
        let want: Vec<f32> = case.features.iter().map(|v| *v as f32).collect();
        assert_eq!(row.to_vec(), want, "approach {}", case.approach);
    }
}

#[derive(Deserialize)]
struct Metrics {
    mae_model: f64,
    mae_last_value: f64,
    mae_noshare_model: f64,
    heldout_run: HeldoutRun,
}

#[derive(Deserialize)]
struct HeldoutRun {
    samples: usize,
}

#[test]
fn heldout_figures_are_reproduced_by_tract() {
    let m: Metrics = serde_json::from_str(
        &std::fs::read_to_string(models().join("default/metrics.json")).expect("metrics"),
    )
    .expect("parses");
    let data = models().join("default/heldout.f32");
    let r = heldout::evaluate(&models().join("default/model.toml"), &data, false).expect("runs");
    assert_eq!(r.samples, m.heldout_run.samples);
    assert!(
        (r.mae_model - m.mae_model).abs() < 1e-4,
        "{r} vs {}",
        m.mae_model
    );
    assert!((r.mae_last_value - m.mae_last_value).abs() < 1e-4, "{r}");
    assert!(
        r.improvement() >= 0.15,
        "the model beats last-value by 15%: {r}"
    );
    let n =
        heldout::evaluate(&models().join("default-noshare/model.toml"), &data, true).expect("runs");
    assert!((n.mae_model - m.mae_noshare_model).abs() < 1e-4, "{n}");
}

/// A manifest in `dir` named `name` for the ONNX file `onnx`, with `input` as the input shape.
fn manifest(dir: &Path, file: &str, name: &str, onnx: &Path, input: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\nversion = \"test\"\nfile = \"{}\"\n[input]\nname = \"features\"\nshape = {input}\n[output]\nname = \"next_count\"\nshape = [\"batch\", 1]\n",
            onnx.display()
        ),
    )
    .expect("write");
    p
}

#[test]
fn bad_models_are_refused_with_the_file_and_the_mismatch_and_the_old_one_serves_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::new();
    let good = reg
        .load(models().join("default/model.toml"), Some(&SIGNATURE))
        .expect("loads");
    assert_eq!(reg.list(), vec![("default".into(), "1.0.0".into())]);
    let row = [1.0f32; FEATURES];
    let before = reg.predict("default", &row).expect("serves");

    // The manifest declares 48 inputs, the file 27.
    let onnx = models().join("default/model.onnx");
    let m = manifest(dir.path(), "wide.toml", "default", &onnx, "[\"batch\", 48]");
    let e = reg.load(&m, None).expect_err("declared shape differs");
    let s = e.to_string();
    assert!(matches!(e, LoadError::ShapeMismatch { .. }), "{s}");
    assert!(
        s.contains("model.onnx") && s.contains("[batch, 27]") && s.contains("[batch, 48]"),
        "{s}"
    );
    // The same manifest against what the node expects.
    let e = reg
        .load(&m, Some(&SIGNATURE))
        .expect_err("caller expects 27");
    assert!(e.to_string().contains("wide.toml"), "{e}");

    // Not an ONNX file at all.
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not protobuf").expect("write");
    let m = manifest(dir.path(), "junk.toml", "default", &junk, "[\"batch\", 27]");
    let e = reg.load(&m, Some(&SIGNATURE)).expect_err("junk");
    assert!(matches!(e, LoadError::Onnx { .. }), "{e}");
    assert!(e.to_string().contains("junk.onnx"), "{e}");

    // A truncated copy of the real file.
    let bytes = std::fs::read(&onnx).expect("read");
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let m = manifest(dir.path(), "cut.toml", "default", &cut, "[\"batch\", 27]");
    assert!(matches!(
        reg.load(&m, Some(&SIGNATURE)),
        Err(LoadError::Onnx { .. })
    ));

    // A missing file.
    let m = manifest(
        dir.path(),
        "gone.toml",
        "default",
        &dir.path().join("gone.onnx"),
        "[\"batch\", 27]",
    );
    let e = reg.load(&m, Some(&SIGNATURE)).expect_err("missing");
    assert!(
        matches!(e, LoadError::Io { .. }) && e.to_string().contains("gone.onnx"),
        "{e}"
    );

    // A manifest whose tensor name is not the graph's.
    std::fs::write(
        dir.path().join("renamed.toml"),
        format!(
            "name = \"default\"\nversion = \"x\"\nfile = \"{}\"\n[input]\nname = \"x\"\nshape = [\"batch\", 27]\n[output]\nname = \"next_count\"\nshape = [\"batch\", 1]\n",
            onnx.display()
        ),
    )
    .expect("write");
    let e = reg
        .load(dir.path().join("renamed.toml"), Some(&SIGNATURE))
        .expect_err("renamed");
    assert!(
        matches!(e, LoadError::Signature { .. }) && e.to_string().contains("\"x\""),
        "{e}"
    );

    // Loaded under another name than asked.
    let e = reg
        .load_as(
            "main",
            models().join("default/model.toml"),
            Some(&SIGNATURE),
        )
        .expect_err("name");
    assert!(matches!(e, LoadError::Name { .. }), "{e}");

    // Through all of it the first model kept serving.
    let still = reg.get("default").expect("still there");
    assert!(Arc::ptr_eq(&still, &good));
    assert_eq!(reg.predict("default", &row).expect("serves"), before);
    assert!(matches!(
        reg.predict("nope", &row),
        Err(PredictError::NoModel(_))
    ));
    assert!(matches!(
        reg.predict("default", &row[..5]),
        Err(PredictError::InputLength { .. })
    ));
    let mut nan = row;
    nan[3] = f32::NAN;
    assert!(matches!(
        reg.predict("default", &nan),
        Err(PredictError::NotFinite {
            row: 0,
            column: 3,
            ..
        })
    ));
}

#[test]
fn predictions_never_fail_while_models_are_swapped() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two different models served under one name, and a broken candidate.
    let a = manifest(
        dir.path(),
        "a.toml",
        "default",
        &models().join("default/model.onnx"),
        "[\"batch\", 27]",
    );
    let b = manifest(
        dir.path(),
        "b.toml",
        "default",
        &models().join("default-noshare/model.onnx"),
        "[\"batch\", 27]",
    );
    let bad = manifest(
        dir.path(),
        "bad.toml",
        "default",
        &models().join("default/model.onnx"),
        "[\"batch\", 26]",
    );
    let reg = Arc::new(Registry::new());
    let g = golden("default");
    let rows: Vec<f32> = g.inputs.iter().take(8).flatten().copied().collect();
    let out_a = Model::load(&a, None).expect("a").predict(&rows).expect("a");
    let out_b = Model::load(&b, None).expect("b").predict(&rows).expect("b");
    assert_ne!(
        out_a, out_b,
        "the two models differ, so a mixed answer would show"
    );
    reg.load(&a, Some(&SIGNATURE)).expect("a");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (reg, stop, done, rows) = (reg.clone(), stop.clone(), done.clone(), rows.clone());
            let (out_a, out_b) = (out_a.clone(), out_b.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let got = reg
                        .predict("default", &rows)
                        .expect("never fails during a swap");
                    assert!(
                        got == out_a || got == out_b,
                        "an answer from one model, whole"
                    );
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..6 {
        reg.load(if i % 2 == 0 { &b } else { &a }, Some(&SIGNATURE))
            .expect("swap");
        assert!(reg.load(&bad, Some(&SIGNATURE)).is_err());
    }
    // Let the workers see the last model too.
    let seen = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < seen + 100 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("no worker panicked");
    }
    assert_eq!(reg.predict("default", &rows).expect("serves"), out_a);
}

/// `got` (a padded run of `n` rows) is within 1e-5 of onnxruntime's first `n` outputs.
fn check_prefix(name: &str, got: &[f32], want: &[f32], n: usize) {
    assert_eq!(got.len(), want.len(), "{name}: {n} rows in, {n} rows out");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5,
            "{name} padded to fit {n} rows: row {i}: tract {a}, onnxruntime {b}"
        );
    }
}
