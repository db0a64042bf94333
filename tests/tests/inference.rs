//! Predictions through a real node process: every closed window gets the model's prediction of
//! the approach's next window, in its own record and in the approach's results stream, equal to
//! what the model computes from the stored windows; a model that cannot be loaded leaves the node
//! running without predictions and says which file was wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use verge_infer::{Registry, features};
use verge_proto::{Record, StreamId};
use verge_sim::{ClusterSpec, LocalCluster};
use verge_tests::{TEST_TIMEOUT, http_get, metric, start_mesh, verge_bin};

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
            assert_eq!(r.values.len(), 1);
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
