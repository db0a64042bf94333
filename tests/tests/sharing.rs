//! Result sharing between neighbours, with real node processes: a downstream node reads its
//! upstream neighbour's predictions and feeds them to its model; the upstream node's restart and a
//! partition between them leave the subscription with every record exactly once.

use std::io::Write;
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

async fn records(c: &LocalCluster, i: usize, stream: &str) -> Vec<(u64, Record)> {
    let id: StreamId = stream.parse().expect("stream id");
    c.admin()
        .query(c.nodes[i].listen, id, 1, u64::MAX / 4, 100_000)
        .await
        .unwrap_or_default()
}

fn shared(c: &LocalCluster, i: usize, stream: &str) -> f64 {
    let text = http_get(c.nodes[i].metrics, "/metrics").unwrap_or_default();
    metric(
        &text,
        &format!("verge_shared_records_total{{stream=\"{stream}\"}}"),
    )
}

/// Checks b2's predictions: each used b1's prediction (when it had one) and equals the model's
/// answer on b2's stored windows with that upstream value. Returns how many had one.
async fn check_b2(c: &LocalCluster, registry: &Registry) -> usize {
    // Results first: a window closing between the reads then appears only among the windows.
    let results = records(c, 1, "b2/results/all").await;
    let windows = records(c, 1, "b2/aggregates/all").await;
    let upstream = records(c, 0, "b1/results/all").await;
    assert!(results.len() >= 10, "b2 predicts: {results:?}");
    let mut with_upstream = 0;
    for (_, r) in &results {
        assert_eq!(r.values.len(), 5, "{r:?}");
        let (p, slot) = (r.values[0], r.values[1]);
        assert_eq!(
            r.values[2..4],
            [-1.0, -1.0],
            "only the straight slot is fed"
        );
        if slot >= 0.0 {
            with_upstream += 1;
            // b1's own prediction of its window starting then, or one just before.
            assert!(
                upstream.iter().any(|(_, u)| u.ts_ms <= r.ts_ms
                    && u.ts_ms >= r.ts_ms - 2 * WINDOW_MS
                    && (u.values[0] as f32) == slot as f32),
                "b2's prediction for {} used {slot}, which b1 did not predict then",
                r.ts_ms
            );
        }
        let at = windows
            .iter()
            .position(|(_, w)| w.ts_ms + WINDOW_MS == r.ts_ms)
            .unwrap_or_else(|| panic!("no b2 window ends at {}", r.ts_ms));
        let history: Vec<Record> = windows[..=at].iter().map(|(_, w)| w.clone()).collect();
        let up = [(slot >= 0.0).then_some(slot as f32)];
        let row = features::build(&history, windows[at].1.ts_ms, WINDOW_MS, &up).expect("row");
        let expected = registry.predict("default", &row).expect("predict")[0];
        assert!(
            (f64::from(expected.max(0.0)) - p).abs() < 1e-6,
            "b2 at {}: stored {p}, the model here says {expected} with upstream {up:?}",
            r.ts_ms
        );
    }
    with_upstream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_predictions_use_upstream_ones_and_survive_restart_and_partition() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let manifest = models().join("default/model.toml");
        let mut spec = ClusterSpec::corridor(verge_bin(), 3);
        spec.extra_config = format!(
            "\n[faults]\nenabled = true\n\n[aggregation]\nwindow_ms = {WINDOW_MS}\nallowed_lateness_ms = 100\n\n[sensors.synthetic]\nsensors = 4\nrate_per_s = 400\nseed = 3\n\n[inference]\nmodel = {manifest:?}\n"
        );
        let mut c = LocalCluster::create(&spec).expect("layout");
        // The corridor b1 -> b2 -> b3: each approach `all` is fed by the one upstream.
        for (i, up) in [(1, "b1"), (2, "b2")] {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&c.nodes[i].config)
                .expect("config");
            write!(
                f,
                "\n[sharing]\npoll_ms = 50\n[sharing.feeds.all]\nstraight = \"{up}/all\"\n"
            )
            .expect("append");
        }
        start_mesh(&mut c).await;
        let registry = Registry::new();
        registry
            .load(&manifest, Some(&features::SIGNATURE))
            .expect("model");

        let mut n = 0;
        for _ in 0..200 {
            n = records(&c, 1, "b2/results/all")
                .await
                .iter()
                .filter(|(_, r)| r.values.get(1).is_some_and(|v| *v >= 0.0))
                .count();
            if n >= 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(n >= 10, "b2 gets b1's predictions:\n{}", c.log(1));
        assert!(check_b2(&c, &registry).await >= 10);

        // Every node hears its peers' inference load with their heartbeats (what offload
        // decides on): rows predicted and time per row, reported within the last seconds.
        let members = c.admin().members(c.nodes[1].listen).await.expect("members");
        for m in &members {
            let (load, age_ms) = m.load.unwrap_or_else(|| panic!("{}: no load: {members:?}", m.id));
            assert!(load.rows > 0 && load.us_per_row > 0.0, "{}: {load:?}", m.id);
            assert!(!load.drained && age_ms < 2_000, "{}: {load:?} {age_ms} ms", m.id);
        }

        // b1 restarts, then b2 is cut off from it for 2 s.
        c.kill(0).expect("kill b1");
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.start(0).expect("restart b1");
        c.wait_for_mesh(&[0, 1, 2], Duration::from_secs(20))
            .await
            .expect("mesh again");
        let b1: verge_proto::NodeId = "b1".parse().expect("id");
        c.admin()
            .set_faults(c.nodes[1].listen, vec![b1], 0, 0)
            .await
            .expect("partition");
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.admin()
            .set_faults(c.nodes[1].listen, vec![], 0, 0)
            .await
            .expect("heal");

        // Every record of b1's results stream reaches b2 once: what it took equals b1's head.
        let mut last = (0.0, 0);
        let mut caught_up = false;
        for _ in 0..200 {
            let taken = shared(&c, 1, "b1/results/all");
            let head = records(&c, 0, "b1/results/all").await.len();
            last = (taken, head);
            if head > 0 && taken == head as f64 {
                caught_up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(caught_up, "b2 took {} of b1's {} predictions:\n{}", last.0, last.1, c.log(1));
        let text = http_get(c.nodes[1].metrics, "/metrics").expect("metrics");
        assert_eq!(metric(&text, "verge_shared_refused_total{kind=\"gap\"}"), 0.0, "{text}");
        assert!(check_b2(&c, &registry).await >= 10);
        // b3 follows b2 the same way.
        assert!(shared(&c, 2, "b2/results/all") >= 10.0);
    })
    .await
    .expect("bounded");
}
