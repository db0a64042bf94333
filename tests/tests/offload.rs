//! Workload offload between neighbours, with real node processes: a node configured ten times
//! slower misses its inference deadline on its own and meets it by sending its batches to its
//! neighbours; helpers that stall, and one that then dies, mid-batch cost no prediction and compute
//! none twice into the results.
//!
//! The model is a synthetic MLP of the default model's signature, heavy enough (about 4 ms per
//! 64-row batch here) that offloading pays for the round trip; the deadline is set from its
//! batch time measured in this process.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use verge_infer::{Registry, features, synthetic};
use verge_proto::admin::InferenceStatus;
use verge_proto::{Record, StreamId};
use verge_sim::{ClusterSpec, LocalCluster};
use verge_tests::{TEST_TIMEOUT, start_mesh, verge_bin};

const WINDOW_MS: u64 = 250;
/// Approaches per node, one detector each: one batch of this many rows per window.
const APPROACHES: usize = 64;
const SLOWDOWN: f64 = 10.0;
/// The slow node.
const SLOW: usize = 1;

/// Writes the heavy model under `dir`; returns its manifest and its median 64-row batch time.
fn heavy_model(dir: &std::path::Path) -> (PathBuf, Duration) {
    let manifest = synthetic::write_mlp(&dir.join("heavy"), "heavy", "1", 1024, 4, 11)
        .expect("write the model");
    let registry = Registry::new();
    let model = registry
        .load(&manifest, Some(&features::SIGNATURE))
        .expect("the model loads");
    let rows = vec![0.5f32; APPROACHES * features::FEATURES];
    let mut times: Vec<Duration> = (0..15)
        .map(|_| {
            let t = Instant::now();
            model.predict(&rows).expect("runs");
            t.elapsed()
        })
        .collect();
    times.sort();
    (manifest, times[times.len() / 2])
}

fn append(c: &LocalCluster, i: usize, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&c.nodes[i].config)
        .expect("config");
    f.write_all(text.as_bytes()).expect("append");
}

async fn status(c: &LocalCluster, i: usize) -> InferenceStatus {
    c.admin()
        .status(c.nodes[i].listen)
        .await
        .map(|s| s.inference)
        .unwrap_or_default()
}

/// Waits until node `i` ran `batches` of its own batches; returns its status then.
async fn wait_batches(c: &LocalCluster, i: usize, batches: u64) -> InferenceStatus {
    let mut s = InferenceStatus::default();
    for _ in 0..600 {
        s = status(c, i).await;
        if s.batches >= batches {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "node {i} ran {} of {batches} batches: {s:?}\n{}",
        s.batches,
        c.log(i)
    );
}

async fn records(c: &LocalCluster, i: usize, stream: &StreamId) -> Vec<Record> {
    c.admin()
        .query(c.nodes[i].listen, stream.clone(), 1, u64::MAX / 4, 100_000)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

/// Checks that every window of node `i` since `from_ms` has exactly one prediction in its
/// results, the one its aggregate record carries; returns who computed them (tag -> count).
async fn check_predictions(c: &LocalCluster, i: usize, from_ms: i64) -> BTreeMap<u32, usize> {
    let me = &c.nodes[i].id;
    let mut by = BTreeMap::new();
    for a in 0..APPROACHES {
        let agg = StreamId::new(
            me.clone(),
            verge_proto::StreamKind::Aggregates,
            format!("a{a}"),
        )
        .expect("id");
        let res = StreamId::new(
            me.clone(),
            verge_proto::StreamKind::Results,
            format!("a{a}"),
        )
        .expect("id");
        // Results first: a window appended between the two reads is then among the windows
        // only, and left out below.
        let results = records(c, i, &res).await;
        let windows = records(c, i, &agg).await;
        let mut predicted: BTreeMap<i64, &Record> = BTreeMap::new();
        for r in &results {
            assert!(
                predicted.insert(r.ts_ms, r).is_none(),
                "{res}: two predictions for the window starting {}",
                r.ts_ms
            );
        }
        let last = results.last().map_or(i64::MIN, |r| r.ts_ms);
        for w in windows.iter().filter(|w| w.ts_ms >= from_ms) {
            let next = w.ts_ms + WINDOW_MS as i64;
            if next > last {
                continue;
            }
            let r = predicted
                .get(&next)
                .unwrap_or_else(|| panic!("{agg}: the window at {} has no prediction", w.ts_ms));
            // The window's record carries the same prediction (its last column).
            let carried = w.values.last().copied().unwrap_or(f64::NAN);
            assert_eq!(carried, r.values[0], "{agg} at {}: {w:?} vs {r:?}", w.ts_ms);
            *by.entry(r.values[4] as u32).or_default() += 1;
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_meets_its_deadline_by_offloading_and_loses_nothing_to_a_dying_helper() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut spec = ClusterSpec::corridor(verge_bin(), 3);
        let dir = tempfile::tempdir().expect("dir");
        let (manifest, batch) = heavy_model(dir.path());
        // Ten times slower is at least 10 batch times (a node shares the CPU, so its batches
        // take longer than here): a deadline of 8 batch times is missed alone, and leaves room
        // for a neighbour to finish its own batch, then this one, and the round trip.
        let deadline_ms = (batch.as_secs_f64() * 8e3).ceil().max(10.0) as u64;
        let approaches: String = (0..APPROACHES)
            .map(|a| format!("a{a} = [\"d{a}\"]\n"))
            .collect();
        spec.extra_config = format!(
            "\n[aggregation]\nwindow_ms = {WINDOW_MS}\nallowed_lateness_ms = 100\n\n[aggregation.approaches]\n{approaches}\n[sensors.synthetic]\nsensors = {APPROACHES}\nrate_per_s = 320\nseed = 5\nsensor_prefix = \"d\"\n\n[inference]\nmodel = {manifest:?}\n"
        );
        let mut c = LocalCluster::create(&spec).expect("layout");
        for i in 0..3 {
            let slow = if i == SLOW {
                format!("slowdown = {SLOWDOWN}\nenabled = false\n")
            } else {
                String::new()
            };
            append(&c, i, &format!("\n[offload]\ndeadline_ms = {deadline_ms}\n{slow}"));
        }
        start_mesh(&mut c).await;

        // 1. Offload off: the slow node runs every batch itself, ten batch times each.
        let alone = wait_batches(&c, SLOW, 30).await;
        assert!(!alone.offload && alone.offloaded_rows == 0, "{alone:?}");
        assert!(
            alone.p99_ms > deadline_ms as f64 && alone.missed >= 25,
            "batch {batch:?}, deadline {deadline_ms} ms: without offload the slow node should miss it: {alone:?}"
        );

        // 2. Offload on (same node, restarted), with a deadline it misses on more than half
        // of its batches alone: half its median batch time alone (at least the first one).
        // The batch times in the nodes, not in this process, set it, so a busier machine
        // stretches both sides alike.
        let deadline2 = ((alone.p50_ms / 2.0).ceil() as u64).max(deadline_ms);
        assert!(alone.p50_ms > deadline2 as f64, "{alone:?}");
        c.terminate(SLOW, Duration::from_secs(10)).expect("stop");
        let config = std::fs::read_to_string(&c.nodes[SLOW].config).expect("read");
        std::fs::write(
            &c.nodes[SLOW].config,
            config.replace("enabled = false\n", "enabled = true\n").replace(
                &format!("deadline_ms = {deadline_ms}\n"),
                &format!("deadline_ms = {deadline2}\n"),
            ),
        )
        .expect("write");
        c.start(SLOW).expect("restart");
        c.wait_for_mesh(&[0, 1, 2], Duration::from_secs(20))
            .await
            .expect("mesh");
        let from_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // Right after its start it has heard no neighbour yet and runs its first batches
        // itself; after that, at most 1% of its batches may miss the deadline (p99 within it).
        let warm = wait_batches(&c, SLOW, 20).await;
        let helped = wait_batches(&c, SLOW, 20 + 200).await;
        assert!(helped.offload, "{helped:?}");
        println!("deadline {deadline_ms} ms, alone {alone:?}\ndeadline {deadline2} ms, with offload {helped:?}");
        let (n, missed) = (
            helped.batches - warm.batches,
            helped.missed - warm.missed,
        );
        assert!(
            missed * 100 <= n,
            "batch {batch:?}, deadline {deadline2} ms: with offload the slow node should meet it: {missed} of {n} batches missed it after warm-up; {helped:?}\n{}",
            c.log(SLOW)
        );
        assert!(
            helped.offloaded_rows as f64 >= 0.9 * helped.rows as f64,
            "most of the slow node's work moves: {helped:?}"
        );
        // The neighbours took it in, and everyone sees it in the gossip.
        let taken = status(&c, 0).await.taken_rows + status(&c, 2).await.taken_rows;
        assert!(taken >= helped.offloaded_rows, "taken {taken}: {helped:?}");
        let members = c.admin().members(c.nodes[0].listen).await.expect("members");
        let slow_load = members
            .iter()
            .find(|m| m.id == c.nodes[SLOW].id)
            .and_then(|m| m.load)
            .expect("the slow node's load");
        assert!(slow_load.0.offloaded_rows > 0, "{slow_load:?}");

        // 3. Both helpers stall (SIGSTOP) for 2 s with batches on them, so whichever the slow
        // node picks does not answer; then one dies (SIGKILL) and the other carries on
        // (SIGCONT).
        let retried_before = helped.retried;
        c.signal(0, Signal::SIGSTOP).expect("stop b1");
        c.signal(2, Signal::SIGSTOP).expect("stop b3");
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.kill(2).expect("kill b3");
        c.signal(0, Signal::SIGCONT).expect("resume b1");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = status(&c, SLOW).await;
        assert!(
            after.retried > retried_before,
            "batches sent to the stalled helper are placed again: {after:?}"
        );

        // Every window of the slow node has its one prediction, most computed by a neighbour
        // and marked with it.
        let by = check_predictions(&c, SLOW, from_ms).await;
        let helpers: Vec<u32> = [0, 2].iter().map(|&i| c.nodes[i].id.tag()).collect();
        let by_helpers: usize = by
            .iter()
            .filter(|(t, _)| helpers.contains(t))
            .map(|(_, n)| n)
            .sum();
        let total: usize = by.values().sum();
        assert!(total >= APPROACHES * 100, "{by:?}");
        assert!(
            by.keys().all(|t| *t == 0 || helpers.contains(t)),
            "marked with an unknown node: {by:?}"
        );
        assert!(by_helpers * 10 >= total * 8, "{by:?}");
    })
    .await
    .expect("bounded");
}
