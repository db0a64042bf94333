//! Predictions through a real node process: every closed window gets the model's prediction of
//! the approach's next window, in its own record and in the approach's results stream, equal to
//! what the model computes from the stored windows; a model that cannot be loaded leaves the node
//! running without predictions and says which file was wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use verge_infer::{Registry, features};
use verge_proto::{Record, StreamId};
use verge_sim::{ClusterSpec, LocalCluster};
use verge_tests::{TEST_TIMEOUT, http_get, metric, run_verge, start_mesh, verge_bin};

const WINDOW_MS: i64 = 200;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn node_with_model(model: &Path) -> LocalCluster {
    let mut spec = ClusterSpec::corridor(verge_bin(), 1);
    spec.extra_config = format!(
        "\n[aggregation]\nwindow_ms = {WINDOW_MS}\nallowed_lateness_ms = 100\n\n[sensors.synthetic]\nsensors = 4\nrate_per_s = 400\nseed = 3\n\n[inference]\nmodel = {:?}\n",
        model
    );
    LocalCluster::create(&spec).expect("layout")
}

async fn records(c: &LocalCluster, stream: &str) -> Vec<(u64, Record)> {
    let id: StreamId = stream.parse().expect("stream id");
    c.admin()
        .query(c.nodes[0].listen, id, 1, u64::MAX / 4, 100_000)
        .await
        .expect("query")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_closed_window_carries_the_models_prediction_of_the_next() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let manifest = models().join("default-noshare/model.toml");
        let mut c = node_with_model(&manifest);
        start_mesh(&mut c).await;
        let mut results = Vec::new();
        for _ in 0..200 {
            results = records(&c, "b1/results/all").await;
            if results.len() >= 12 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(results.len() >= 12, "results: {results:?}\n{}", c.log(0));
        let windows = records(&c, "b1/aggregates/all").await;

        let registry = Registry::new();
        registry
            .load(&manifest, Some(&features::SIGNATURE))
            .expect("the model loads here too");
        let mut checked = 0;
        for (_, r) in &results {
            // The prediction, its three upstream slots (none shared here: -1), and who computed
            // it (0: this node; it has no neighbour to offload to).
            assert_eq!(r.values[1..], [-1.0, -1.0, -1.0, 0.0], "{r:?}");
            let p = r.values[0];
            assert!(p.is_finite() && p >= 0.0, "{r:?}");
            // The window this prediction was made at closes where the predicted one starts.
            let at = windows
                .iter()
                .position(|(_, w)| w.ts_ms + WINDOW_MS == r.ts_ms)
                .unwrap_or_else(|| panic!("no window ends at {}: {windows:?}", r.ts_ms));
            let window = &windows[at].1;
            assert_eq!(window.values.len(), 7, "{window:?}");
            assert_eq!(window.values[6], p, "the window carries its prediction");
            // The model, run here on the stored windows, predicts the same.
            let history: Vec<Record> = windows[..=at].iter().map(|(_, w)| w.clone()).collect();
            let row = features::build(&history, window.ts_ms, WINDOW_MS, &[]).expect("features");
            let expected = registry.predict("default-noshare", &row).expect("predict")[0];
            assert!(
                (f64::from(expected.max(0.0)) - p).abs() < 1e-6,
                "window at {}: stored {p}, model here {expected}",
                window.ts_ms
            );
            checked += 1;
        }
        assert!(checked >= 12);
        let text = http_get(c.nodes[0].metrics, "/metrics").expect("metrics");
        assert_eq!(
            metric(&text, "verge_model_loads_total{result=\"ok\"}"),
            1.0,
            "{text}"
        );
        assert!(
            metric(&text, "verge_predictions_total{result=\"ok\"}") >= 12.0,
            "{text}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_load_is_named_and_the_node_runs_on_without_predictions() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = dir.path().join("model.toml");
        std::fs::copy(models().join("default-noshare/model.toml"), &manifest).expect("copy");
        std::fs::write(dir.path().join("model.onnx"), b"not an onnx model").expect("write");
        let mut c = node_with_model(&manifest);
        start_mesh(&mut c).await;
        let mut windows = Vec::new();
        for _ in 0..200 {
            windows = records(&c, "b1/aggregates/all").await;
            if windows.len() >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(windows.len() >= 5, "{windows:?}\n{}", c.log(0));
        assert!(
            windows
                .iter()
                .all(|(_, w)| w.values.len() == 7 && w.values[6] == -1.0),
            "no prediction in any window: {windows:?}"
        );
        assert!(records(&c, "b1/results/all").await.is_empty());
        let log = c.log(0);
        assert!(
            log.contains("the model cannot be loaded") && log.contains("model.onnx"),
            "the log names the file:\n{log}"
        );
        let text = http_get(c.nodes[0].metrics, "/metrics").expect("metrics");
        assert_eq!(
            metric(&text, "verge_model_loads_total{result=\"failed\"}"),
            1.0,
            "{text}"
        );
        assert!(c.is_running(0));
    })
    .await
    .expect("bounded");
}

/// Which model a stored prediction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Old,
    New,
    /// Both models predict the same here.
    Either,
}

/// Checks every prediction node `i` stored against the `old` and `new` models run here on its
/// stored windows; returns which model each came from, in window order.
async fn prediction_sources(
    c: &LocalCluster,
    i: usize,
    old: &Registry,
    new: &Registry,
) -> Vec<Source> {
    let node = &c.nodes[i];
    let id = node.id.as_str();
    let admin = c.admin();
    let read = |kind: &str| {
        let stream: StreamId = format!("{id}/{kind}/all").parse().expect("stream id");
        admin.query(node.listen, stream, 1, u64::MAX / 4, 100_000)
    };
    // Results first: a window closing between the two reads then appears in neither or only
    // among the windows.
    let results = read("results").await.expect("results");
    let windows = read("aggregates").await.expect("aggregates");
    assert!(
        windows
            .iter()
            .all(|(_, w)| w.values.len() == 7 && w.values[6] >= 0.0),
        "{id}: every closed window carries a prediction: {windows:?}"
    );
    let mut sources = Vec::new();
    for (_, r) in &results {
        let p = r.values[0];
        let at = windows
            .iter()
            .position(|(_, w)| w.ts_ms + WINDOW_MS == r.ts_ms)
            .unwrap_or_else(|| panic!("{id}: no window ends at {}", r.ts_ms));
        let window = &windows[at].1;
        assert_eq!(
            window.values[6], p,
            "{id}: the window carries its prediction"
        );
        let history: Vec<Record> = windows[..=at].iter().map(|(_, w)| w.clone()).collect();
        let row = features::build(&history, window.ts_ms, WINDOW_MS, &[]).expect("features");
        let by = |reg: &Registry| {
            let e = reg.predict("default-noshare", &row).expect("predict")[0];
            (f64::from(e.max(0.0)) - p).abs() < 1e-6
        };
        sources.push(match (by(old), by(new)) {
            (true, true) => Source::Either,
            (true, false) => Source::Old,
            (false, true) => Source::New,
            (false, false) => panic!(
                "{id}: window at {} stored {p}, which neither model predicts",
                window.ts_ms
            ),
        });
    }
    sources
}

/// How many predictions node `i` has stored.
async fn predictions(c: &LocalCluster, i: usize) -> usize {
    let stream: StreamId = format!("{}/results/all", c.nodes[i].id)
        .parse()
        .expect("id");
    c.admin()
        .query(c.nodes[i].listen, stream, 1, u64::MAX / 4, 100_000)
        .await
        .map_or(0, |r| r.len())
}

/// Waits (at most 30 s) until node `i` has stored `n` predictions.
async fn predictions_reach(c: &LocalCluster, i: usize, n: usize) -> bool {
    for _ in 0..300 {
        if predictions(c, i).await >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A model directory named `default-noshare` (so it replaces the running one) holding `onnx`.
fn model_dir(root: &Path, dir: &str, onnx: &Path, version: &str, width: usize) -> PathBuf {
    let d = root.join(dir);
    std::fs::create_dir_all(&d).expect("dir");
    std::fs::copy(onnx, d.join("model.onnx")).expect("copy onnx");
    let manifest = format!(
        "name = \"default-noshare\"\nversion = \"{version}\"\nfile = \"model.onnx\"\n\n[input]\nname = \"features\"\nshape = [\"batch\", {width}]\n\n[output]\nname = \"next_count\"\nshape = [\"batch\", 1]\n"
    );
    std::fs::write(d.join("model.toml"), manifest).expect("manifest");
    d.join("model.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_deployed_under_load_reaches_every_node_and_a_bad_one_is_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let old_manifest = models().join("default-noshare/model.toml");
        let mut spec = ClusterSpec::corridor(verge_bin(), 3);
        spec.extra_config = format!(
            "\n[control]\nvoters = [\"b1\", \"b2\", \"b3\"]\n\n[aggregation]\nwindow_ms = {WINDOW_MS}\nallowed_lateness_ms = 100\n\n[sensors.synthetic]\nsensors = 4\nrate_per_s = 400\nseed = 3\n\n[inference]\nmodel = {old_manifest:?}\n"
        );
        let mut c = LocalCluster::create(&spec).expect("layout");
        start_mesh(&mut c).await;
        let work = tempfile::tempdir().expect("temp dir");
        // The new model: the plain nn.Linear export, under the running model's name.
        let new_manifest = model_dir(
            work.path(),
            "new",
            &models().join("linear/model.onnx"),
            "2.0.0-linear",
            27,
        );
        // Bad ones: shapes that do not fit the node's features, and a file that is not ONNX.
        let shapes = model_dir(
            work.path(),
            "shapes",
            &models().join("linear/model.onnx"),
            "3.0.0",
            26,
        );
        let garbage = work.path().join("garbage.onnx");
        std::fs::write(&garbage, b"not an onnx model").expect("write");
        let garbage = model_dir(work.path(), "garbage", &garbage, "3.0.1", 27);

        let ca = c.ca_dir.join("ca.pem");
        let (cert, key) = c.admin_cert.clone();
        let endpoint = c.nodes[0].listen.to_string();
        let ctl = |rest: Vec<String>| {
            let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
            let mut args = vec!["ctl".to_owned(), "--endpoint".into(), endpoint.clone()];
            args.extend(["--ca".into(), path(&ca), "--cert".into(), path(&cert)]);
            args.extend(["--key".into(), path(&key)]);
            args.extend(rest);
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_verge(&args, Duration::from_secs(60))
            })
        };
        let deploy = |file: &Path| {
            ctl(vec![
                "model".into(),
                "deploy".into(),
                "--name".into(),
                "default-noshare".into(),
                "--file".into(),
                file.to_str().expect("utf-8").into(),
            ])
        };

        // Wait for a gateway and for predictions on every node.
        for i in 0..3 {
            assert!(
                predictions_reach(&c, i, 5).await,
                "b{} predicts:\n{}",
                i + 1,
                c.log(i)
            );
        }

        let mut elected = false;
        for _ in 0..200 {
            if c
                .admin()
                .gateway(c.nodes[0].listen)
                .await
                .is_ok_and(|v| v.gateway_addr.is_some())
            {
                elected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(elected, "a gateway is elected:\n{}", c.log(0));

        for (bad, says) in [(&shapes, "26"), (&garbage, "model.onnx")] {
            let out = deploy(bad).await.expect("ctl");
            let err = String::from_utf8_lossy(&out.stderr);
            println!("{err}");
            assert!(!out.status.success(), "a bad model is refused: {err}");
            assert!(
                err.contains("refused") && err.contains(says),
                "the refusal says why: {err}"
            );
        }
        let out = ctl(vec!["model".into(), "list".into(), "--json".into()])
            .await
            .expect("ctl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(view["deployed"], serde_json::json!([]), "{view}");

        // The good one, while every node predicts every 200 ms; ctl waits until all switched.
        let out = deploy(&new_manifest).await.expect("ctl");
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{text}");
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("deployed model `default-noshare` version 1"), "{text}");
        for (i, line) in ["b1", "b2", "b3"].iter().enumerate() {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(line) && l.contains("2.0.0-linear") && l.ends_with("yes")),
                "b{} serves the new model:\n{text}",
                i + 1
            );
        }
        // Let each node close a few windows on the new model.
        for i in 0..3 {
            let now = predictions(&c, i).await;
            assert!(predictions_reach(&c, i, now + 4).await, "b{} predicts on", i + 1);
        }

        let old = Registry::new();
        old.load(&old_manifest, Some(&features::SIGNATURE))
            .expect("old model");
        let new = Registry::new();
        new.load(&new_manifest, Some(&features::SIGNATURE))
            .expect("new model");
        for i in 0..3 {
            let sources = prediction_sources(&c, i, &old, &new).await;
            let first_new = sources
                .iter()
                .position(|s| *s == Source::New)
                .unwrap_or_else(|| panic!("b{} never predicted with the new model: {sources:?}", i + 1));
            assert!(
                sources[..first_new].contains(&Source::Old),
                "b{} predicted with the old model first: {sources:?}",
                i + 1
            );
            assert!(
                !sources[first_new..].contains(&Source::Old),
                "b{}: once switched, never back: {sources:?}",
                i + 1
            );
            assert!(sources.len() - first_new >= 3, "b{}: {sources:?}", i + 1);
            let text = http_get(c.nodes[i].metrics, "/metrics").expect("metrics");
            assert_eq!(
                metric(&text, "verge_predictions_total{result=\"failed\"}"),
                0.0,
                "b{}: no prediction failed across the switch:\n{text}",
                i + 1
            );
            assert!(metric(&text, "verge_model_loads_total{result=\"ok\"}") >= 2.0, "{text}");
        }

        // A restarted node comes back on the deployed model, from its own disk.
        c.kill(2).expect("kill b3");
        c.start(2).expect("restart b3");
        let mut back = false;
        for _ in 0..100 {
            if let Ok(v) = c.admin().models(c.nodes[2].listen).await
                && let Some((_, Ok(me))) = v.nodes.iter().find(|(n, _)| n.as_str() == "b3")
                && me
                    .models
                    .iter()
                    .any(|m| m.cluster_version == Some(1) && m.serving)
            {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(back, "b3 serves the deployed model after a restart:\n{}", c.log(2));
        assert!(c.log(2).contains("switched to the deployed model"));
    })
    .await
    .expect("bounded");
}
