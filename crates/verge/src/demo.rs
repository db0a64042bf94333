//! `verge demo`: a five-node corridor on 127.0.0.1 with the reference cloud. Certificates are made
//! on the fly; every node is fed by synthetic sensors (or, with `--sumo`, by one traffic light of a
//! SUMO grid run), replicates its streams to a neighbour, closes 2 s aggregate windows and predicts
//! the next one with the default model; the Raft leader (the gateway) syncs every node's windows
//! to a real `verge cloud serve` process. Progress is shown every few seconds; at the end (after
//! `--duration`, or on Ctrl-C) the cloud is given a few seconds to catch up and is checked to hold
//! every window the nodes produced exactly once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use verge_cloud::CloudClient;
use verge_proto::StreamKind;
use verge_proto::admin::StreamRole;
use verge_sim::{CloudProc, CloudSpec, ClusterSpec, LocalCluster};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  verge demo\n  verge demo --duration 60 --nodes 7\n  verge demo --sumo            # needs SUMO: one traffic light of a SUMO grid per node\n\nRun it from the repository root (or give --models DIR) so the nodes predict with\nmodels/default (which takes the upstream node's predictions). Exits 0 when the cloud holds every window the nodes produced\nexactly once, 1 otherwise."
)]
pub struct DemoArgs {
    /// Seconds to run before stopping by itself.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Nodes in the corridor (b1..bN; b1-b3 are the Raft voters).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(2..=20))]
    nodes: u16,
    /// Directory holding `default/model.toml` [default: ./models]. Without it the nodes
    /// run without predictions.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Feed each node one traffic light's detectors of a SUMO grid run (made with
    /// simulations/sumo/make_grid.sh, replayed 10x faster than real time) instead of synthetic
    /// sensors. Needs `sumo` on PATH and at most 9 nodes.
    #[arg(long)]
    sumo: bool,
    /// Keep the cluster's directory (certificates, configs, logs, cloud data) afterwards.
    #[arg(long)]
    keep: bool,
}

/// The cluster's name, in its CA and in the cloud.
const CLUSTER: &str = "demo";
/// How long the mesh may take to form before the demo gives up.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long the cloud gets at the end to hold every window produced.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Aggregate windows of the synthetic run, and their allowed lateness.
const WINDOW_MS: u64 = 2_000;
const LATENESS_MS: u64 = 500;
/// Every synthetic node's sensors: 8 detectors, 1,000 readings/s in all, with demand peaks.
const SYNTHETIC_SENSORS: &str = "
[sensors.synthetic]
sensors = 8
rate_per_s = 1000
pattern = { kind = \"peaks\", period_s = 60.0, amplitude = 0.5 }
";
/// With `--sumo`: replay speed, and windows of simulated time that close every 2 s of wall time.
const SUMO_SPEED: u64 = 10;
const SUMO_WINDOW_MS: u64 = WINDOW_MS * SUMO_SPEED;
const SUMO_LATENESS_MS: u64 = LATENESS_MS * SUMO_SPEED;
/// The SUMO grid's nine traffic lights, in an order where each is next to the one before.
const SUMO_LIGHTS: [&str; 9] = ["A0", "A1", "A2", "B2", "B1", "B0", "C0", "C1", "C2"];
/// The SUMO grid builder, relative to the repository root.
const MAKE_GRID: &str = "simulations/sumo/make_grid.sh";
/// The model every node predicts with, relative to the models directory.
const MODEL: &str = "default/model.toml";

/// Counts SIGINT and SIGTERM from the start of the demo: the first ends the run (the report
/// follows), a second one also cuts the final drain short.
fn stop_signals() -> anyhow::Result<watch::Receiver<u32>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    Ok(rx)
}

/// Waits until at least `n` stop signals have arrived.
async fn stopped(rx: &mut watch::Receiver<u32>, n: u32) {
    if rx.wait_for(|c| *c >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A random bearer token for the demo's cloud.
fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the cloud's token")?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// The model's manifest as an absolute path, if there is one.
fn find_model(models: Option<&Path>) -> Option<PathBuf> {
    let dir = models.unwrap_or(Path::new("models"));
    let manifest = dir.join(MODEL);
    if manifest.is_file()
        && let Ok(abs) = manifest.canonicalize()
    {
        return Some(abs);
    }
    println!(
        "no model at {} (run from the repository root or give --models DIR): running without predictions",
        manifest.display()
    );
    None
}

/// Builds and runs the SUMO grid into `dir`; returns how long it took.
fn make_grid(dir: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    verge_sim::sumo::make_grid(Path::new(MAKE_GRID), dir, &["--freq", "5", "--end", "900"])
        .context("--sumo")?;
    Ok(started.elapsed())
}

/// The TOML every node gets: voters, windows, model. The cloud and sensors are appended per node.
fn common_config(nodes: usize, sumo: bool, model: Option<&Path>) -> String {
    let voters: Vec<String> = (1..=if nodes >= 3 { 3 } else { 1 })
        .map(|i| format!("\"b{i}\""))
        .collect();
    let (window, lateness) = if sumo {
        (SUMO_WINDOW_MS, SUMO_LATENESS_MS)
    } else {
        (WINDOW_MS, LATENESS_MS)
    };
    let mut toml = format!(
        "\n[control]\nvoters = [{}]\n\n[aggregation]\nwindow_ms = {window}\nallowed_lateness_ms = {lateness}\n",
        voters.join(", ")
    );
    if let Some(m) = model {
        let _ = write!(toml, "\n[inference]\nmodel = {m:?}\n");
    }
    toml
}

/// What one node reports at one moment.
#[derive(Debug, Default, Clone)]
struct NodeSample {
    /// Readings its sensor source delivered (`verge ctl status`).
    readings: Option<u64>,
    /// `verge_predictions_total{result="ok"}`.
    predictions: Option<f64>,
    /// Predictions taken from the upstream node (`verge_shared_records_total`).
    shared: Option<f64>,
    /// Its inference (`verge ctl status`): rows of its own batches, of those run by a neighbour,
    /// and rows it ran for neighbours.
    inference: Option<verge_proto::admin::InferenceStatus>,
    /// The largest lag of a replica of its own streams.
    lag: Option<u64>,
    /// Readings of its own raw streams on disk.
    stored: u64,
    /// Its aggregate streams' durable heads.
    windows: BTreeMap<String, u64>,
    /// Whether the streams could be listed.
    streams_ok: bool,
}

impl NodeSample {
    fn windows(&self) -> u64 {
        self.windows.values().sum()
    }
}

async fn sample(cluster: &LocalCluster, i: usize) -> NodeSample {
    let admin = cluster.admin();
    let node = &cluster.nodes[i];
    let status = admin.status(node.listen).await.ok();
    let mut s = NodeSample {
        readings: status
            .as_ref()
            .and_then(|st| st.sensor.as_ref())
            .map(|sensor| sensor.readings),
        inference: status.map(|st| st.inference),
        predictions: http_metric(node.metrics, "verge_predictions_total{result=\"ok\"}").await,
        shared: if i == 0 {
            None
        } else {
            let series = format!("verge_shared_records_total{{stream=\"b{i}/results/all\"}}");
            http_metric(node.metrics, &series).await
        },
        ..NodeSample::default()
    };
    if let Ok(streams) = admin.streams(node.listen).await {
        s.streams_ok = true;
        let mut lag = 0;
        for v in streams {
            let StreamRole::Owner { replicas, .. } = &v.role else {
                continue;
            };
            lag = replicas.iter().map(|r| r.lag).fold(lag, u64::max);
            match v.id.kind {
                StreamKind::Raw => s.stored += (v.head + 1).saturating_sub(v.first_seq),
                StreamKind::Aggregates => {
                    s.windows.insert(v.id.to_string(), v.durable_head);
                }
                _ => {}
            }
        }
        s.lag = Some(lag);
    }
    s
}

async fn sample_all(cluster: &LocalCluster) -> Vec<NodeSample> {
    let mut out = Vec::with_capacity(cluster.nodes.len());
    for i in 0..cluster.nodes.len() {
        out.push(sample(cluster, i).await);
    }
    out
}

/// `GET /metrics` of a node over plain HTTP; the value of the sample line `name`.
async fn http_metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()??;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok()).flatten()
        })
        .or(Some(0.0))
}

/// The gateway as the nodes see it: the one most of them name, with its term.
async fn gateway(cluster: &LocalCluster) -> Option<(String, u64)> {
    let admin = cluster.admin();
    let mut votes: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for n in &cluster.nodes {
        if let Ok(v) = admin.gateway(n.listen).await
            && let Some(g) = v.gateway
        {
            *votes.entry((g.to_string(), v.term)).or_default() += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(g, _)| g)
}

/// Windows the cloud holds for the demo cluster, per stream, and in all.
async fn cloud_windows(client: &CloudClient) -> Option<(BTreeMap<String, CloudStream>, u64)> {
    let s = client.summary().await.ok()?;
    let total = s
        .clusters
        .iter()
        .find(|c| c.cluster == CLUSTER)
        .map_or(0, |c| c.windows);
    let streams = s
        .streams
        .into_iter()
        .filter(|st| st.cluster == CLUSTER)
        .map(|st| {
            (
                st.stream,
                CloudStream {
                    windows: st.windows,
                    first: st.first_seq,
                    last: st.last_seq,
                    missing: st.missing,
                },
            )
        })
        .collect();
    Some((streams, total))
}

#[derive(Debug, Clone, Copy)]
struct CloudStream {
    windows: u64,
    first: u64,
    last: u64,
    missing: u64,
}

/// How the cloud's holdings compare with the nodes' aggregate streams.
#[derive(Debug, Default)]
struct Comparison {
    /// Windows produced, summed over every node's aggregate streams.
    produced: u64,
    /// Windows the cloud holds for the cluster.
    held: u64,
    /// Streams where the cloud holds other than windows 1..=head, each once.
    differ: Vec<String>,
    /// Whether the cloud is only ahead (it holds windows produced after the heads were read).
    cloud_ahead_only: bool,
}

fn compare(heads: &BTreeMap<String, u64>, cloud: &BTreeMap<String, CloudStream>) -> Comparison {
    let mut c = Comparison {
        produced: heads.values().sum(),
        held: cloud.values().map(|s| s.windows).sum(),
        cloud_ahead_only: true,
        ..Comparison::default()
    };
    for (stream, &head) in heads {
        let held = cloud.get(stream);
        let exact = match held {
            None => head == 0,
            Some(s) => {
                s.windows == head && s.missing == 0 && (head == 0 || s.first == 1 && s.last == head)
            }
        };
        if !exact {
            let ahead = held.is_some_and(|s| {
                s.missing == 0 && s.first == 1 && s.last > head && s.windows == s.last
            });
            c.cloud_ahead_only &= ahead;
            let what = match held {
                None => format!("{stream}: {head} produced, none in the cloud"),
                Some(s) => format!(
                    "{stream}: {head} produced, the cloud holds {} (seq {}..={}, {} missing)",
                    s.windows, s.first, s.last, s.missing
                ),
            };
            c.differ.push(what);
        }
    }
    for (stream, s) in cloud {
        if !heads.contains_key(stream) {
            c.cloud_ahead_only = false;
            c.differ.push(format!(
                "{stream}: no node owns it, the cloud holds {}",
                s.windows
            ));
        }
    }
    c
}

fn rate(now: Option<f64>, before: Option<f64>, secs: f64) -> String {
    match (now, before) {
        (Some(n), Some(b)) if secs > 0.0 => format!("{:.1}", (n - b).max(0.0) / secs),
        _ => "?".into(),
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut signals = stop_signals()?;
    let bin = std::env::current_exe().context("cannot find the verge binary")?;
    let n = usize::from(args.nodes);
    if args.sumo {
        let found = Command::new("sumo").arg("--version").output().is_ok();
        if !found {
            bail!(
                "--sumo needs SUMO: `sumo` is not on PATH (apt-get install -y --no-install-recommends sumo sumo-tools)"
            );
        }
        if n > SUMO_LIGHTS.len() {
            bail!(
                "--sumo gives each node one of the SUMO grid's {} traffic lights: use --nodes {} or fewer (got {n})",
                SUMO_LIGHTS.len(),
                SUMO_LIGHTS.len()
            );
        }
    }
    let model = find_model(args.models.as_deref());

    let mut spec = ClusterSpec::corridor(bin.clone(), n);
    spec.cluster = CLUSTER.into();
    spec.keep_dir = args.keep;
    spec.own_process_group = true;
    spec.extra_config = common_config(n, args.sumo, model.as_deref());
    let mut cluster = LocalCluster::create(&spec)?;
    let root = cluster.root().to_owned();
    println!(
        "verge demo: {n} nodes on 127.0.0.1, cluster CA, certificates, configs and logs in {}",
        root.display()
    );

    // Declared after the cluster, so it is stopped before the cluster's directory goes.
    let mut cloud_spec = CloudSpec::new(bin, root.join("cloud"), random_token()?);
    cloud_spec.own_process_group = true;
    let mut cloud = CloudProc::start(cloud_spec)?;
    let client = cloud
        .client(Duration::from_secs(5))
        .context("a client of the reference cloud")?;
    println!(
        "reference cloud: verge cloud serve at {} (pid {}), data in {}",
        cloud.url(),
        cloud.pid().unwrap_or_default(),
        cloud.data_dir().display()
    );

    // Synthetic traffic: each node's one approach, `all`, is fed by the node upstream of it, whose
    // predictions its model takes as the straight-on upstream feature (result sharing).
    let mut sensors: Vec<String> = (0..n)
        .map(|i| {
            let mut toml = SYNTHETIC_SENSORS.to_owned();
            if i > 0 {
                let _ = write!(
                    toml,
                    "\n[sharing]\n[sharing.feeds.all]\nstraight = \"b{i}/all\"\n"
                );
            }
            toml
        })
        .collect();
    if args.sumo {
        let grid = root.join("sumo");
        let took = make_grid(&grid)?;
        let out = grid.join("out");
        for (i, s) in sensors.iter_mut().enumerate() {
            *s = format!(
                "\n[sensors.replay]\ndetectors = {:?}\ne1 = {:?}\ne2 = {:?}\ntls = [{:?}]\nspeed = {SUMO_SPEED}\n",
                grid.join("detectors.add.xml"),
                out.join("e1.xml"),
                out.join("e2.xml"),
                SUMO_LIGHTS[i],
            );
        }
        println!(
            "SUMO grid (3x3, {MAKE_GRID}) run in {:.1} s; replayed at {SUMO_SPEED}x, {} s windows of simulated time",
            took.as_secs_f64(),
            SUMO_WINDOW_MS / 1000
        );
    }
    let cloud_section = cloud.node_config(CLUSTER);
    for (node, sensor) in cluster.nodes.iter().zip(&sensors) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&node.config)
            .with_context(|| format!("opening {}", node.config.display()))?;
        std::io::Write::write_all(&mut f, format!("{sensor}{cloud_section}").as_bytes())
            .with_context(|| format!("writing {}", node.config.display()))?;
    }

    cluster.start_all()?;
    let all: Vec<usize> = (0..n).collect();
    let formed = tokio::select! {
        r = cluster.wait_for_mesh(&all, FORM_TIMEOUT) => r,
        _ = stopped(&mut signals, 1) => {
            println!("stopped before the mesh formed");
            return Ok(ExitCode::from(1));
        }
    };
    let formed = match formed {
        Ok(t) => t,
        Err(e) => {
            for (i, node) in cluster.nodes.iter().enumerate() {
                let log = cluster.log(i);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                eprintln!("--- end of the log of {} ---\n{}", node.id, tail.join("\n"));
            }
            return Err(e.into());
        }
    };
    let voters = if n >= 3 { "b1, b2, b3" } else { "b1" };
    println!(
        "mesh formed in {} ms; Raft voters {voters}; windows every {} s{}; {}; sensors: {}",
        formed.as_millis(),
        WINDOW_MS / 1000,
        if args.sumo {
            format!(" ({} s of simulated time)", SUMO_WINDOW_MS / 1000)
        } else {
            String::new()
        },
        match &model {
            Some(m) => format!("predicting with {}", m.display()),
            None => "no predictions".into(),
        },
        if args.sumo {
            format!(
                "one SUMO traffic light per node ({})",
                SUMO_LIGHTS[..n].join(", ")
            )
        } else {
            "8 synthetic detectors per node, 1,000 readings/s".into()
        }
    );
    println!(
        "admin: verge ctl --endpoint {} --ca {} --cert {} --key {} gateway",
        cluster.nodes[0].listen,
        cluster.ca_dir.join("ca.pem").display(),
        cluster.admin_cert.0.display(),
        cluster.admin_cert.1.display()
    );
    println!("running for {} s (Ctrl-C stops it sooner)\n", args.duration);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let first = sample_all(&cluster).await;
    let mut before = (Instant::now(), first.clone(), 0u64);
    let mut next_report = started + PROGRESS_EVERY;
    let mut interrupted = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wake = next_report.min(deadline);
        tokio::select! {
            _ = tokio::time::sleep(wake - now) => {}
            _ = stopped(&mut signals, 1) => {
                println!("\nstopping (signal)");
                interrupted = true;
                break;
            }
        }
        if Instant::now() < next_report {
            continue;
        }
        next_report += PROGRESS_EVERY;
        let at = Instant::now();
        let now_s = sample_all(&cluster).await;
        let secs = at.duration_since(before.0).as_secs_f64();
        let gw = match gateway(&cluster).await {
            Some((g, term)) => format!("gateway {g} (term {term})"),
            None => "gateway: election in progress".into(),
        };
        let held = cloud_windows(&client).await.map(|(_, total)| total);
        let cloud_text = match held {
            Some(h) => format!(
                "cloud acknowledged {h} windows (+{})",
                h.saturating_sub(before.2)
            ),
            None => "cloud unreachable".into(),
        };
        let produced: u64 = now_s.iter().map(NodeSample::windows).sum();
        let mut out = format!(
            "t={:>3}s  {gw}  {cloud_text}  nodes produced {produced} windows",
            started.elapsed().as_secs()
        );
        for (i, (s, b)) in now_s.iter().zip(&before.1).enumerate() {
            let _ = write!(
                out,
                "\n  {:<4} {:>7} readings/s  {:>5} predictions/s  replica lag {}  offloaded {}",
                cluster.nodes[i].id.as_str(),
                rate(
                    s.readings.map(|r| r as f64),
                    b.readings.map(|r| r as f64),
                    secs
                ),
                rate(s.predictions, b.predictions, secs),
                s.lag.map_or("?".into(), |l| l.to_string()),
                s.inference.as_ref().map_or("?".into(), |i| format!(
                    "{:.0}%",
                    100.0 * i.offloaded_rows as f64 / i.rows.max(1) as f64
                )),
            );
        }
        println!("{out}");
        before = (at, now_s, held.unwrap_or(before.2));
    }
    let ran = started.elapsed();

    // The gateway syncs continuously: wait until the cloud holds exactly what the nodes produced
    // at one moment, or the drain runs out.
    println!(
        "\nran {:.1} s; waiting up to {} s for the cloud to hold every window the nodes produced",
        ran.as_secs_f64(),
        DRAIN_TIMEOUT.as_secs()
    );
    let drain_started = Instant::now();
    let drain_deadline = drain_started + DRAIN_TIMEOUT;
    let mut last_cmp = Comparison::default();
    let mut last_samples = Vec::new();
    let mut matched = false;
    loop {
        let samples = sample_all(&cluster).await;
        let mut heads = BTreeMap::new();
        for s in &samples {
            heads.extend(s.windows.iter().map(|(k, v)| (k.clone(), *v)));
        }
        let all_listed = samples.iter().all(|s| s.streams_ok);
        if let Some((cloud_streams, _)) = cloud_windows(&client).await {
            last_cmp = compare(&heads, &cloud_streams);
            last_samples = samples;
            if all_listed && last_cmp.differ.is_empty() {
                matched = true;
                break;
            }
        } else if last_samples.is_empty() {
            last_samples = samples;
        }
        if Instant::now() >= drain_deadline {
            break;
        }
        let aborted = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => false,
            _ = stopped(&mut signals, if interrupted { 2 } else { 1 }) => true,
        };
        if aborted {
            println!("stopping the drain (signal)");
            break;
        }
    }

    let stored: u64 = last_samples.iter().map(|s| s.stored).sum();
    let predictions: f64 = last_samples.iter().filter_map(|s| s.predictions).sum();
    let gw = gateway(&cluster).await;
    println!("\nreport");
    println!("  duration             {:.1} s", ran.as_secs_f64());
    println!("  readings stored      {stored}");
    println!(
        "  predictions          {}{}",
        predictions as u64,
        if model.is_none() { " (no model)" } else { "" }
    );
    let shared: f64 = last_samples.iter().filter_map(|s| s.shared).sum();
    if shared > 0.0 {
        println!(
            "  shared               {} predictions taken by the node downstream (result sharing)",
            shared as u64
        );
    }
    let (rows, offloaded) = last_samples
        .iter()
        .filter_map(|s| s.inference.as_ref())
        .fold((0, 0), |(r, o), i| (r + i.rows, o + i.offloaded_rows));
    println!(
        "  offloaded            {:.1}% of {rows} inference rows ran on a neighbour ({offloaded} rows)",
        100.0 * offloaded as f64 / rows.max(1) as f64
    );
    println!(
        "  windows              {} produced by the nodes, {} in the cloud",
        last_cmp.produced, last_cmp.held
    );
    if matched {
        println!(
            "  exactly once         yes: every produced window is in the cloud exactly once ({} streams, drained in {:.1} s)",
            last_samples.iter().map(|s| s.windows.len()).sum::<usize>(),
            drain_started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "  exactly once         NO: {} streams differ after {:.1} s",
            last_cmp.differ.len(),
            drain_started.elapsed().as_secs_f64()
        );
        for d in &last_cmp.differ {
            println!("    {d}");
        }
        if last_cmp.cloud_ahead_only && !last_cmp.differ.is_empty() {
            println!("    (the cloud is only ahead of the heads read: windows closed meanwhile)");
        }
    }
    match gw {
        Some((g, term)) => println!("  gateway              {g}, term {term}"),
        None => println!("  gateway              none agreed"),
    }

    let mut clean = true;
    for i in 0..n {
        let code = cluster.terminate(i, Duration::from_secs(5))?;
        if code != Some(0) {
            clean = false;
            eprintln!("{} did not exit cleanly ({code:?})", cluster.nodes[i].id);
        }
    }
    let cloud_code = cloud.terminate(Duration::from_secs(5))?;
    if cloud_code != Some(0) {
        clean = false;
        eprintln!("the cloud did not exit cleanly ({cloud_code:?})");
    }
    drop(cloud);
    if args.keep {
        println!(
            "stopped; certificates, configs, logs and cloud data kept in {}",
            root.display()
        );
    } else {
        drop(cluster);
        println!("stopped; removed {}", root.display());
    }
    if !clean {
        println!("(a process did not exit cleanly: see above)");
    }
    Ok(if matched {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
