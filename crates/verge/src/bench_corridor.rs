//! `verge bench corridor`: the corridor's end-to-end latency and what offload does for a slow
//! node (issue 6), in one run.
//!
//! 1. **End to end.** `--nodes` real `verge node` processes (this binary, ports from the OS), each
//!    fed `--rate` synthetic readings/s from 8 detectors in 4 approaches, 1 s windows with 100 ms
//!    allowed lateness, the default model. Each node measures, per window, the time from when the
//!    window could close (its end plus the lateness, on the wall clock) to its record, prediction
//!    included, being acknowledged by its replicas: readings stored and replicated, the window
//!    closed, the batch predicted (here or on a neighbour) and the aggregate and result records
//!    appended and replicated. Readings' own acknowledgements are `verge bench store`'s figure.
//! 2. **Slow node.** Three nodes with 64 approaches each and a synthetic MLP (1024 x 4) that
//!    takes a few milliseconds per 64-row batch; the middle node runs ten times slower
//!    (`[offload] slowdown = 10`), and every node's deadline is 8 batch times as measured in
//!    this process. The slow node runs `--slow-s` seconds with offload off, then (restarted)
//!    as long with offload on: its p99 batch latency each way and the share of its rows its
//!    neighbours computed.
//!
//! Everything shares this machine's cores; the figures are a floor for one node per cabinet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use verge_infer::{Registry, features, synthetic};
use verge_proto::admin::InferenceStatus;
use verge_sim::{ClusterSpec, LocalCluster};

/// Options of `verge bench corridor`.
#[derive(Debug, clap::Args)]
pub struct BenchCorridorArgs {
    /// Nodes in the end-to-end corridor.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Readings per second per node.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds the end-to-end corridor runs.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds the slow node runs each way (offload off, then on).
    #[arg(long, default_value_t = 30)]
    slow_s: u64,
    /// Directory holding `default/model.toml` [default: ./models].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Print the figures as JSON too.
    #[arg(long)]
    json: bool,
}

/// The slow node's index among the three.
const SLOW: usize = 1;
const HEAVY_APPROACHES: usize = 64;

/// Runs the benchmark and prints its figures.
pub async fn run(args: &BenchCorridorArgs) -> anyhow::Result<Value> {
    let bin = std::env::current_exe().context("cannot find the verge binary")?;
    let model = args
        .models
        .clone()
        .unwrap_or_else(|| PathBuf::from("models"))
        .join("default/model.toml");
    if !model.is_file() {
        bail!(
            "no model at {} (run from the repository root or give --models DIR)",
            model.display()
        );
    }
    let model = std::fs::canonicalize(&model)?;
    let e2e = end_to_end(&bin, &model, args).await?;
    let slow = slow_node(&bin, args).await?;
    let out = json!({ "end_to_end": e2e, "slow_node": slow });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(out)
}

async fn end_to_end(bin: &Path, model: &Path, args: &BenchCorridorArgs) -> anyhow::Result<Value> {
    let mut spec = ClusterSpec::corridor(bin.to_owned(), args.nodes);
    spec.extra_config = format!(
        r#"
[aggregation]
window_ms = 1000
allowed_lateness_ms = 100
[aggregation.approaches]
north = ["syn0", "syn1"]
south = ["syn2", "syn3"]
east = ["syn4", "syn5"]
west = ["syn6", "syn7"]

[sensors.synthetic]
sensors = 8
rate_per_s = {rate}

[inference]
model = {model:?}
"#,
        rate = args.rate,
    );
    let mut c = LocalCluster::create(&spec)?;
    c.start_all()?;
    let all: Vec<usize> = (0..c.nodes.len()).collect();
    c.wait_for_mesh(&all, Duration::from_secs(30)).await?;
    println!(
        "end to end: {} nodes x {} readings/s for {} s ...",
        args.nodes, args.rate, args.seconds
    );
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let admin = c.admin();
    let mut rows = Vec::new();
    let mut worst: f64 = 0.0;
    println!(
        "{:<6} {:>10} {:>9} {:>14} {:>14} {:>12}",
        "node", "readings/s", "batches", "window p50 ms", "window p99 ms", "infer p99 ms"
    );
    for (i, n) in c.nodes.iter().enumerate() {
        let s = admin.status(n.listen).await?;
        let readings = s.sensor.as_ref().map_or(0, |x| x.readings);
        let rate = readings as f64 / started.elapsed().as_secs_f64();
        let inf = &s.inference;
        worst = worst.max(inf.window_p99_ms);
        println!(
            "{:<6} {:>10.0} {:>9} {:>14.1} {:>14.1} {:>12.2}",
            n.id, rate, inf.batches, inf.window_p50_ms, inf.window_p99_ms, inf.p99_ms
        );
        rows.push(json!({
            "node": n.id.as_str(),
            "index": i,
            "readings_per_s": rate,
            "batches": inf.batches,
            "window_p50_ms": inf.window_p50_ms,
            "window_p99_ms": inf.window_p99_ms,
            "inference_p99_ms": inf.p99_ms,
        }));
    }
    println!(
        "end to end p99 (worst node): {worst:.1} ms (target <= 20 ms: {})",
        if worst <= 20.0 { "met" } else { "MISSED" }
    );
    Ok(json!({ "nodes": rows, "p99_ms_worst": worst }))
}

async fn slow_node(bin: &Path, args: &BenchCorridorArgs) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("verge-bench-corridor-")
        .tempdir()?;
    let manifest = synthetic::write_mlp(&dir.path().join("heavy"), "heavy", "1", 1024, 4, 11)?;
    let batch = {
        let registry = Registry::new();
        let m = registry.load(&manifest, Some(&features::SIGNATURE))?;
        let rows = vec![0.5f32; HEAVY_APPROACHES * features::FEATURES];
        let mut t: Vec<Duration> = (0..15)
            .map(|_| {
                let s = Instant::now();
                let _ = m.predict(&rows);
                s.elapsed()
            })
            .collect();
        t.sort();
        t[t.len() / 2]
    };
    let deadline_ms = (batch.as_secs_f64() * 8e3).ceil().max(10.0) as u64;
    let approaches: String = (0..HEAVY_APPROACHES)
        .map(|a| format!("a{a} = [\"d{a}\"]\n"))
        .collect();
    let mut spec = ClusterSpec::corridor(bin.to_owned(), 3);
    spec.extra_config = format!(
        "\n[aggregation]\nwindow_ms = 250\nallowed_lateness_ms = 100\n\n[aggregation.approaches]\n{approaches}\n[sensors.synthetic]\nsensors = {HEAVY_APPROACHES}\nrate_per_s = 320\nsensor_prefix = \"d\"\n\n[inference]\nmodel = {manifest:?}\n"
    );
    let c = LocalCluster::create(&spec)?;
    for (i, n) in c.nodes.iter().enumerate() {
        let extra = if i == SLOW {
            "slowdown = 10.0\nenabled = false\n"
        } else {
            ""
        };
        let mut text = std::fs::read_to_string(&n.config)?;
        text.push_str(&format!(
            "\n[offload]\ndeadline_ms = {deadline_ms}\n{extra}"
        ));
        std::fs::write(&n.config, text)?;
    }
    let mut c = c;
    c.start_all()?;
    c.wait_for_mesh(&[0, 1, 2], Duration::from_secs(30)).await?;
    println!(
        "slow node: 3 nodes, {HEAVY_APPROACHES}-row batches of a 1024x4 MLP ({:.2} ms here), node {} ten times slower, deadline {deadline_ms} ms; {} s each way ...",
        batch.as_secs_f64() * 1e3,
        c.nodes[SLOW].id,
        args.slow_s
    );
    tokio::time::sleep(Duration::from_secs(args.slow_s)).await;
    let off = c.admin().status(c.nodes[SLOW].listen).await?.inference;
    c.terminate(SLOW, Duration::from_secs(10))?;
    let config = std::fs::read_to_string(&c.nodes[SLOW].config)?;
    std::fs::write(
        &c.nodes[SLOW].config,
        config.replace("enabled = false\n", "enabled = true\n"),
    )?;
    c.start(SLOW)?;
    c.wait_for_mesh(&[0, 1, 2], Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(args.slow_s)).await;
    let on = c.admin().status(c.nodes[SLOW].listen).await?.inference;
    let line = |name: &str, s: &InferenceStatus| {
        let moved = if s.rows == 0 {
            0.0
        } else {
            s.offloaded_rows as f64 / s.rows as f64
        };
        println!(
            "  offload {name:<4} batches {:>5}  p50 {:>7.1} ms  p99 {:>7.1} ms (last 100: {:>7.1} ms)  missed {:>5.1}%  moved {:>5.1}%",
            s.batches,
            s.p50_ms,
            s.p99_ms,
            s.recent_p99_ms,
            100.0 * s.missed as f64 / s.batches.max(1) as f64,
            100.0 * moved
        );
        json!({
            "batches": s.batches,
            "p50_ms": s.p50_ms,
            "p99_ms": s.p99_ms,
            "recent_p99_ms": s.recent_p99_ms,
            "missed": s.missed,
            "offloaded_rows": s.offloaded_rows,
            "rows": s.rows,
            "moved_share": moved,
            "retried": s.retried,
        })
    };
    let off_json = line("off", &off);
    let on_json = line("on", &on);
    println!(
        "slow node p99 over the last 100 batches: {:.1} ms alone, {:.1} ms with offload ({:.1}x); deadline {deadline_ms} ms {}",
        off.recent_p99_ms,
        on.recent_p99_ms,
        off.recent_p99_ms / on.recent_p99_ms.max(1e-9),
        if on.recent_p99_ms <= deadline_ms as f64 {
            "met with offload"
        } else {
            "MISSED with offload"
        }
    );
    Ok(json!({
        "batch_ms_here": batch.as_secs_f64() * 1e3,
        "deadline_ms": deadline_ms,
        "off": off_json,
        "on": on_json,
    }))
}
