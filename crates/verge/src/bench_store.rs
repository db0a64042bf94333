//! `verge bench store`: what group commit and replication cost, in one run (issue 3).
//!
//! 1. **Group commit, in this process.** Readings appended to a [`SledStore`] in a temporary
//!    directory and flushed once per [`GROUP_READINGS`] readings (one stream, then 16 streams
//!    sharing each flush), against the naive way: one raw `sled` insert and one `sled` flush per
//!    reading. Only the appends and flushes are timed, not making up the readings.
//! 2. **Three real `verge node` processes** (this same binary, through
//!    [`verge_sim::LocalCluster`], ports chosen by the OS) with replication at its defaults,
//!    R=2 and W=2:
//!    - (a) sustained ingest: [`PRODUCERS`] producers per node, all three nodes loaded at once,
//!      each sending batches of [`BATCH_READINGS`] readings and the next one when the last is
//!      acknowledged; acknowledged readings per second per node, and the share acknowledged
//!      with two holders;
//!    - (b) acknowledgement latency at a paced [`PACED_READINGS_PER_S`] readings/s offered to
//!      one node (by default [`PACED_BATCH_DEFAULT`] readings every 10 ms, the tick of the
//!      node's own sensor source), from the moment a request is sent until its answer is back;
//!    - (c) catch-up: one replica cut off from the owner (both directions, with `[faults]`),
//!      readings ingested meanwhile (acknowledged degraded), then the partition healed and the
//!      time measured until the owner reports that replica at lag 0 on every stream.
//!
//! **Why the baselines are fair.** The naive store baseline writes the same readings, each as a
//! 40-byte value under a (stream, seq) key, and is flattered if anything: sled's flush is not an
//! fsync (see `verge_store::sled_store`), while [`SledStore::flush`] also fsyncs, so the ratio
//! understates what group commit buys. The latency baseline is a second three-node cluster
//! identical but for `[replication] replicas = 1, write_quorum = 1`: the same node code, the same
//! group-commit interval, the same producer and pacing; only the wait for the replica differs.
//! The two clusters run side by side and their latency runs alternate in blocks, so background
//! noise on the machine hits both.
//!
//! **Producers.** A node's admin endpoint answers one request at a time per connection, so each
//! producer of (a) keeps a connection of its own, and the paced producer of (b) keeps a pool and
//! sends each request on an idle connection (the run says how often none was idle and a send
//! had to wait). A node answering "busy" (too many readings waiting for acknowledgement) is
//! back-pressure, not an error: the producer counts it and retries shortly after.
//!
//! Everything runs on this machine, so the producers and all three nodes share its cores: the
//! figures are a floor for one node per cabinet. Timing uses the wall clock: this is a
//! measurement, not decision code.

use crate::bench_net::{percentile, thousands};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use quinn::Connection;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use verge_net::{CloseCode, NetConfig, admin_connect, request};
use verge_pki::{ClientAuth, load_roots};
use verge_proto::admin::{
    AdminRequest, AdminResponse, IngestAck, IngestReading, MemberState, StreamRole, StreamView,
};
use verge_proto::{NodeId, Record, StreamId, StreamKind};
use verge_sim::{ClusterSpec, LocalCluster};
use verge_store::{SledStore, Store};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  verge bench store\n  verge bench store --quick\n  verge bench store --json"
)]
pub struct BenchStoreArgs {
    /// A shorter run (under 40 s): 3 s per timed phase and fewer readings.
    #[arg(long)]
    pub quick: bool,
    /// Readings per request in the latency run; requests go out often enough to offer
    /// 20,000 readings/s (200: one every 10 ms; 20: one every 1 ms).
    #[arg(long, default_value_t = PACED_BATCH_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=4_000))]
    pub paced_batch: u32,
    /// Print the figures as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the clusters' directories (configs, logs, data) and say where they are.
    #[arg(long)]
    pub keep: bool,
}

/// Readings per flush in the group-commit run.
const GROUP_READINGS: usize = 1_000;
/// Streams sharing each flush in the second group-commit run.
const GROUP_STREAMS_MANY: usize = 16;
/// Producers per node in the sustained run, each with its own connection and sensors.
const PRODUCERS: usize = 4;
/// Sensors per producer in the sustained and catch-up runs (4 × 16 = 64 streams per node).
const SENSORS_PER_PRODUCER: usize = 16;
/// Readings per ingest request in the sustained and catch-up runs.
const BATCH_READINGS: usize = 4_000;
/// Readings per paced request in the latency run, unless `--paced-batch` says otherwise.
const PACED_BATCH_DEFAULT: u32 = 200;
/// The paced offer in the latency run, in readings per second.
const PACED_READINGS_PER_S: u32 = 20_000;
/// Sensors the paced producer cycles through.
const PACED_SENSORS: usize = 64;
/// Connections the paced producer keeps: far more than the requests in flight at 5 ms each,
/// so that a slow answer shows as latency rather than as a lower offer.
const PACED_POOL: usize = 64;
/// Paced sending before each measured block, not recorded (connections, timers, caches).
const PACED_WARMUP: Duration = Duration::from_millis(300);
/// A producer told "busy" waits this long before sending again.
const BUSY_PAUSE: Duration = Duration::from_millis(5);
/// How often the catch-up run asks the owner for its streams' lag.
const LAG_POLL: Duration = Duration::from_millis(20);
/// The mesh must form within this.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// New streams must get their replica (acknowledgements with the wanted holders) within this.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Replicas must be back at lag 0 within this after a run, and the catch-up must end within it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest any single request may take before the benchmark gives up, so a broken run
/// fails instead of hanging.
const STALL: Duration = Duration::from_secs(15);
/// Timestamps of generated readings start here (2023-11-14T22:13:20Z); one reading a second.
const START_MS: i64 = 1_700_000_000_000;
/// Readings a second per sensor in the generated series, as SUMO's detectors report.
const READING_EVERY_MS: i64 = 1_000;

/// Target: acknowledged readings per second per node, all three loaded, R=2 W=2.
const INGEST_PER_NODE_MIN: f64 = 200_000.0;
/// Target: share of readings acknowledged with two holders once the mesh is formed.
const FULL_SHARE_MIN: f64 = 0.999;
/// Target: acknowledgement p99 at the paced offer, in ms.
const ACK_P99_MS_MAX: f64 = 5.0;
/// Target: records a returning replica catches up per second.
const CATCHUP_PER_S_MIN: f64 = 1_000_000.0;

/// How much to do: the full run or `--quick`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    /// Readings per paced request, and how often one goes out.
    paced_batch: usize,
    paced_every: Duration,
    keep: bool,
    /// Readings per group-commit run.
    group_readings: usize,
    /// Readings in the naive run (one flush each).
    naive_readings: usize,
    /// The sustained ingest window.
    sustained: Duration,
    /// Measured paced sending per variant, split into `latency_blocks` alternating blocks.
    latency: Duration,
    latency_blocks: u32,
    /// Readings ingested while the replica is cut off.
    catchup_readings: usize,
}

impl Plan {
    fn new(args: &BenchStoreArgs) -> Self {
        let quick = args.quick;
        let paced_batch = args.paced_batch as usize;
        let paced_every = Duration::from_micros(
            u64::from(args.paced_batch) * 1_000_000 / u64::from(PACED_READINGS_PER_S),
        );
        if quick {
            Self {
                quick,
                paced_batch,
                paced_every,
                keep: args.keep,
                group_readings: 400_000,
                naive_readings: 500,
                sustained: Duration::from_secs(3),
                latency: Duration::from_secs(3),
                latency_blocks: 2,
                catchup_readings: 1_000_000,
            }
        } else {
            Self {
                quick,
                paced_batch,
                paced_every,
                keep: args.keep,
                group_readings: 2_000_000,
                naive_readings: 2_000,
                sustained: Duration::from_secs(10),
                latency: Duration::from_secs(10),
                latency_blocks: 4,
                catchup_readings: 2_000_000,
            }
        }
    }
}

/// Runs the benchmark, prints a table (or one JSON object with `--json`) and returns the figures.
pub async fn run(args: &BenchStoreArgs) -> anyhow::Result<Value> {
    let plan = Plan::new(args);
    let started = Instant::now();
    let load_before = load_average();
    let store = tokio::task::spawn_blocking(move || store_figures(plan))
        .await
        .context("the store benchmark panicked")??;
    let nodes = node_figures(plan).await?;
    let figures = Figures {
        plan,
        store,
        nodes,
        took: started.elapsed(),
        load: [load_before, load_average()],
    };
    let value = figures.json();
    if args.json {
        println!("{value}");
    } else {
        print!("{}", figures.table());
    }
    Ok(value)
}

/// The 1-minute load average, where the OS tells it.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn progress(what: &str) {
    eprintln!("bench store: {what}");
}

/// Reading `i` of sensor `s`: one second after reading `i - 1`, with values the node accepts
/// (count, occupancy %, speed m/s, queue) that vary like a detector's, not all the same bits.
fn record(s: usize, i: u64) -> Record {
    let s = s as u64;
    Record {
        ts_ms: START_MS + i as i64 * READING_EVERY_MS,
        values: vec![
            ((i + s) % 7) as f64,
            ((i * 13 + s) % 1_000) as f64 / 10.0,
            ((i * 7 + s) % 2_000) as f64 / 91.0,
            ((i + 3 * s) % 25) as f64,
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Group commit against naive inserts, in this process.

/// One group-commit run.
#[derive(Debug, Clone, Copy)]
struct GroupRun {
    streams: usize,
    readings: usize,
    /// Appends and flushes only.
    time: Duration,
    flush_p50_ms: f64,
    flush_p99_ms: f64,
}

impl GroupRun {
    fn per_s(&self) -> f64 {
        self.readings as f64 / self.time.as_secs_f64()
    }
}

/// The naive baseline run.
#[derive(Debug, Clone, Copy)]
struct NaiveRun {
    readings: usize,
    time: Duration,
}

impl NaiveRun {
    fn per_s(&self) -> f64 {
        self.readings as f64 / self.time.as_secs_f64()
    }
}

#[derive(Debug)]
struct StoreFigures {
    group: Vec<GroupRun>,
    naive: NaiveRun,
}

fn store_figures(plan: Plan) -> anyhow::Result<StoreFigures> {
    let dir = tempfile::tempdir().context("cannot create a directory for the store runs")?;
    let mut group = Vec::new();
    for streams in [1, GROUP_STREAMS_MANY] {
        progress(&format!(
            "group commit: {} readings into SledStore, {}, {GROUP_READINGS} per flush",
            plan.group_readings,
            self::streams(streams)
        ));
        group.push(group_commit(
            &dir.path().join(format!("group-{streams}")),
            streams,
            plan.group_readings,
        )?);
    }
    progress(&format!(
        "naive: {} readings, one sled insert and one sled flush each",
        plan.naive_readings
    ));
    let naive = naive(&dir.path().join("naive"), plan.naive_readings)?;
    Ok(StoreFigures { group, naive })
}

/// Appends `total` readings spread over `streams` streams, flushing every [`GROUP_READINGS`].
fn group_commit(dir: &Path, streams: usize, total: usize) -> anyhow::Result<GroupRun> {
    let owner = NodeId::new("b1")?;
    let ids: Vec<StreamId> = (0..streams)
        .map(|s| StreamId::new(owner.clone(), StreamKind::Raw, format!("lane-{s}")))
        .collect::<Result<_, _>>()?;
    let store = SledStore::open(dir)?;
    let per_stream = (total / streams).max(1);
    let step = (GROUP_READINGS / streams).max(1);
    let mut flushes = Vec::new();
    let mut time = Duration::ZERO;
    let mut chunk: Vec<Vec<Record>> = vec![Vec::with_capacity(step); streams];
    for from in (0..per_stream).step_by(step) {
        let to = (from + step).min(per_stream);
        for (s, records) in chunk.iter_mut().enumerate() {
            records.clear();
            records.extend((from..to).map(|i| record(s, i as u64)));
        }
        let start = Instant::now();
        for (id, records) in ids.iter().zip(&chunk) {
            store.append(id, from as u64 + 1, records)?;
        }
        let flush = Instant::now();
        store.flush()?;
        let end = Instant::now();
        flushes.push((end - flush).as_secs_f64() * 1e3);
        time += end - start;
    }
    flushes.sort_by(f64::total_cmp);
    Ok(GroupRun {
        streams,
        readings: per_stream * streams,
        time,
        flush_p50_ms: percentile(&flushes, 50.0),
        flush_p99_ms: percentile(&flushes, 99.0),
    })
}

/// One raw sled insert per reading, each followed by a sled flush: the store without group
/// commit, blocks or compression.
fn naive(dir: &Path, total: usize) -> anyhow::Result<NaiveRun> {
    let db = sled::open(dir).with_context(|| format!("cannot open sled in {}", dir.display()))?;
    let prefix = b"b1/raw/lane-0\0";
    let mut time = Duration::ZERO;
    for seq in 1..=total as u64 {
        let r = record(0, seq);
        let mut key = Vec::with_capacity(prefix.len() + 8);
        key.extend_from_slice(prefix);
        key.extend_from_slice(&seq.to_be_bytes());
        let mut value = Vec::with_capacity(8 * (1 + r.values.len()));
        value.extend_from_slice(&r.ts_ms.to_le_bytes());
        for v in &r.values {
            value.extend_from_slice(&v.to_le_bytes());
        }
        let start = Instant::now();
        db.insert(key, value).context("sled insert")?;
        db.flush().context("sled flush")?;
        time += start.elapsed();
    }
    Ok(NaiveRun {
        readings: total,
        time,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Real nodes.

#[derive(Debug)]
struct NodeFigures {
    sustained: Sustained,
    latency: Latency,
    catchup: Catchup,
}

/// Starts the replicated cluster and the R=1 baseline cluster side by side and measures (a),
/// (b) and (c). Both clusters stop and remove their directories when dropped, on error too.
async fn node_figures(plan: Plan) -> anyhow::Result<NodeFigures> {
    let bin = std::env::current_exe().context("cannot find the verge binary")?;
    let mut spec = ClusterSpec::corridor(bin.clone(), 3);
    spec.cluster = "bench".into();
    // Replication at its defaults (R=2, W=2, degrade); faults so (c) can cut a replica off.
    spec.extra_config = "\n[faults]\nenabled = true\n".into();
    spec.keep_dir = plan.keep;
    let mut main = LocalCluster::create(&spec)?;
    let mut base_spec = ClusterSpec::corridor(bin, 3);
    base_spec.cluster = "bench-r1".into();
    base_spec.extra_config =
        "\n[replication]\nreplicas = 1\nwrite_quorum = 1\nmin_replicas = 1\n".into();
    base_spec.keep_dir = plan.keep;
    let mut base = LocalCluster::create(&base_spec)?;
    if plan.keep {
        progress(&format!(
            "keeping the clusters in {} (R=2) and {} (R=1)",
            main.root().display(),
            base.root().display()
        ));
    }
    progress("starting two 3-node clusters: R=2 W=2, and R=1 W=1 for the latency baseline");
    main.start_all()?;
    base.start_all()?;
    let all = [0, 1, 2];
    with_logs(&main, main.wait_for_mesh(&all, FORM_TIMEOUT)).await?;
    with_logs(&base, base.wait_for_mesh(&all, FORM_TIMEOUT)).await?;
    let main_admin = Admin::of(&main);
    let base_admin = Admin::of(&base);

    let sustained = with_logs(&main, sustained(&main, &main_admin, plan)).await?;
    let latency = with_logs(
        &main,
        latency((&main, &main_admin), (&base, &base_admin), plan),
    )
    .await?;
    let catchup = with_logs(&main, catchup(&main, &main_admin, plan)).await?;
    Ok(NodeFigures {
        sustained,
        latency,
        catchup,
    })
}

/// Runs `step`; if it fails, prints the end of every node's log to stderr first.
async fn with_logs<T, E: Into<anyhow::Error>>(
    cluster: &LocalCluster,
    step: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    let result = step.await.map_err(Into::into);
    if result.is_err() {
        for (i, n) in cluster.nodes.iter().enumerate() {
            let log = cluster.log(i);
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("--- end of {}'s log ---", n.id);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    result
}

/// How this benchmark reaches a cluster's admin endpoints: its CA and admin certificate.
#[derive(Debug, Clone)]
struct Admin {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cfg: NetConfig,
}

impl Admin {
    fn of(cluster: &LocalCluster) -> Self {
        Self {
            ca: cluster.ca_dir.join("ca.pem"),
            cert: cluster.admin_cert.0.clone(),
            key: cluster.admin_cert.1.clone(),
            cfg: NetConfig::default(),
        }
    }

    /// A new admin connection to the node at `addr`, kept for many requests.
    async fn connect(&self, addr: SocketAddr) -> anyhow::Result<Connection> {
        let roots = load_roots(&self.ca)?;
        let auth = ClientAuth::load(&self.cert, &self.key)?;
        let conn = admin_connect(addr, roots, Some(auth), &self.cfg)
            .await
            .with_context(|| format!("cannot connect to the admin endpoint at {addr}"))?;
        Ok(conn)
    }

    /// One request on `conn`, failing on an error answer or after [`STALL`].
    async fn ask(&self, conn: &Connection, req: &AdminRequest) -> anyhow::Result<AdminResponse> {
        let resp = tokio::time::timeout(
            STALL,
            request::<_, AdminResponse>(conn, req, self.cfg.frame_bytes_max),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer from a node in {} s", STALL.as_secs()))??;
        Ok(resp)
    }

    /// Sends one ingest request on `conn`.
    async fn ingest(&self, conn: &Connection, req: &AdminRequest) -> anyhow::Result<Answer> {
        match self.ask(conn, req).await? {
            AdminResponse::Ingested { acks, rejected } => {
                if let Some(first) = rejected.first() {
                    bail!(
                        "the node refused {} generated readings, first: {first}",
                        rejected.len()
                    );
                }
                Ok(Answer::Acked(AckSummary::of(&acks)))
            }
            // The protocol has no typed "busy" answer; the node's message for its bound on
            // readings waiting for acknowledgement is the only one that says "busy".
            AdminResponse::Error { message } if message.contains("busy") => Ok(Answer::Busy),
            AdminResponse::Error { message } => bail!("a node refused to ingest: {message}"),
            _ => bail!("a node answered an ingest request with something else"),
        }
    }

    /// The streams the node on `conn` holds.
    async fn streams(&self, conn: &Connection) -> anyhow::Result<Vec<StreamView>> {
        match self.ask(conn, &AdminRequest::Streams).await? {
            AdminResponse::Streams(v) => Ok(v),
            AdminResponse::Error { message } => {
                bail!("a node could not list its streams: {message}")
            }
            _ => bail!("a node answered a streams request with something else"),
        }
    }

    /// Cuts the node on `conn` off from `peers` (none: heals it).
    async fn partition(&self, conn: &Connection, peers: Vec<NodeId>) -> anyhow::Result<()> {
        let req = AdminRequest::SetFaults {
            partition: peers,
            loss_ppm: 0,
            delay_ms: 0,
        };
        match self.ask(conn, &req).await? {
            AdminResponse::Faults { .. } => Ok(()),
            AdminResponse::Error { message } => bail!("a node refused to set faults: {message}"),
            _ => bail!("a node answered a faults request with something else"),
        }
    }
}

/// What one ingest request came back with.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Acked(AckSummary),
    /// Too many readings were waiting for acknowledgement; nothing was stored.
    Busy,
}

/// The acknowledgements of one request, counted in readings.
#[derive(Debug, Clone, Copy, Default)]
struct AckSummary {
    readings: u64,
    /// Acknowledged with at least two holders.
    full: u64,
    /// Acknowledged degraded.
    degraded: u64,
    /// The fewest holders any acknowledgement of the request named.
    min_replicas: u32,
}

impl AckSummary {
    fn of(acks: &[IngestAck]) -> Self {
        let mut s = Self {
            min_replicas: u32::MAX,
            ..Self::default()
        };
        for a in acks {
            let n = (a.last_seq + 1).saturating_sub(a.first_seq);
            s.readings += n;
            if a.replicas >= 2 {
                s.full += n;
            }
            if a.degraded {
                s.degraded += n;
            }
            s.min_replicas = s.min_replicas.min(a.replicas);
        }
        s
    }

    fn add(&mut self, other: &AckSummary) {
        self.readings += other.readings;
        self.full += other.full;
        self.degraded += other.degraded;
        self.min_replicas = self.min_replicas.min(other.min_replicas);
    }
}

/// One ingest request of `readings` readings, sensor `sensors[k]` called `{prefix}{sensors[k]}`,
/// reading indexes from `first` on. Sensor by sensor, like a gateway that forwards a batch of
/// each detector's readings.
fn batch(prefix: &str, sensors: &[usize], first: u64, per_sensor: usize) -> AdminRequest {
    let mut readings = Vec::with_capacity(sensors.len() * per_sensor);
    for &s in sensors {
        let sensor = format!("{prefix}{s}");
        for i in 0..per_sensor as u64 {
            readings.push(IngestReading {
                sensor: sensor.clone(),
                record: record(s, first + i),
            });
        }
    }
    AdminRequest::Ingest { readings }
}

/// Moves every reading of `req` `per_sensor` seconds on, so the next send is new readings
/// without building a new request.
fn advance(req: &mut AdminRequest, per_sensor: usize) {
    if let AdminRequest::Ingest { readings } = req {
        for r in readings {
            r.record.ts_ms += per_sensor as i64 * READING_EVERY_MS;
        }
    }
}

/// Sends one reading for each of `sensors` to the node at `addr` until every acknowledgement
/// names at least `holders` holders: the streams exist and have their replicas.
async fn place(
    admin: &Admin,
    addr: SocketAddr,
    prefix: &str,
    sensors: &[usize],
    holders: u32,
) -> anyhow::Result<Duration> {
    let conn = admin.connect(addr).await?;
    let start = Instant::now();
    let mut i = 0;
    loop {
        let req = batch(prefix, sensors, i, 1);
        i += 1;
        if let Answer::Acked(s) = admin.ingest(&conn, &req).await?
            && s.min_replicas >= holders
            && s.readings == sensors.len() as u64
        {
            conn.close(CloseCode::Shutdown.varint(), b"placed");
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < PLACEMENT_TIMEOUT,
            "streams {prefix}* on {addr} still lack {holders} holders after {} s",
            PLACEMENT_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The streams `owner` owns, from its own listing.
fn owned<'a>(
    views: &'a [StreamView],
    owner: &'a NodeId,
) -> impl Iterator<Item = &'a StreamView> + 'a {
    views
        .iter()
        .filter(move |v| &v.id.owner == owner && matches!(v.role, StreamRole::Owner { .. }))
}

/// The largest lag of any replica of any stream the node behind `conn` owns, and how many of
/// its streams are not fully replicated (a replica behind, or none at all).
async fn replication_backlog(
    admin: &Admin,
    conn: &Connection,
    me: &NodeId,
) -> anyhow::Result<(u64, usize)> {
    let views = admin.streams(conn).await?;
    let mut lag = 0;
    let mut behind = 0;
    for v in owned(&views, me) {
        if let StreamRole::Owner { replicas, .. } = &v.role {
            let worst = replicas.iter().map(|r| r.lag).max();
            lag = lag.max(worst.unwrap_or(0));
            if worst != Some(0) {
                behind += 1;
            }
        }
    }
    Ok((lag, behind))
}

/// Waits until every node of `cluster` reports every replica of its streams at lag 0; returns
/// how long that took.
async fn wait_drained(cluster: &LocalCluster, admin: &Admin) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut conns = Vec::new();
    for n in &cluster.nodes {
        conns.push((n.id.clone(), admin.connect(n.listen).await?));
    }
    loop {
        let mut worst = (0, 0);
        for (id, conn) in &conns {
            let (lag, behind) = replication_backlog(admin, conn, id).await?;
            worst = (worst.0.max(lag), worst.1 + behind);
        }
        if worst == (0, 0) {
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < DRAIN_TIMEOUT,
            "replicas still lag after {} s: largest lag {} records, {} streams behind",
            DRAIN_TIMEOUT.as_secs(),
            worst.0,
            worst.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ----- (a) Sustained ingest.

#[derive(Debug)]
struct Sustained {
    window: Duration,
    /// Per node, in cluster order.
    nodes: Vec<NodeIngest>,
    /// From the end of the window until every replica was at lag 0 again.
    drained: Duration,
}

#[derive(Debug)]
struct NodeIngest {
    id: NodeId,
    acked: AckSummary,
    requests: u64,
    busy: u64,
}

impl Sustained {
    fn per_s(&self, n: &NodeIngest) -> f64 {
        n.acked.readings as f64 / self.window.as_secs_f64()
    }

    fn total_per_s(&self) -> f64 {
        self.nodes.iter().map(|n| self.per_s(n)).sum()
    }

    fn min_per_s(&self) -> f64 {
        self.nodes
            .iter()
            .map(|n| self.per_s(n))
            .fold(f64::INFINITY, f64::min)
    }

    fn full_share(&self) -> f64 {
        let (full, all) = self
            .nodes
            .iter()
            .fold((0, 0), |(f, a), n| (f + n.acked.full, a + n.acked.readings));
        full as f64 / all as f64
    }

    fn pass(&self) -> bool {
        self.min_per_s() >= INGEST_PER_NODE_MIN && self.full_share() >= FULL_SHARE_MIN
    }
}

/// What one producer of the sustained run counted in the window.
#[derive(Debug, Default)]
struct ProducerTally {
    acked: AckSummary,
    requests: u64,
    busy: u64,
}

/// Sends `req` on `conn` again and again (new timestamps each time) until `end`, counting what
/// was acknowledged before `end`.
async fn produce(
    admin: Admin,
    conn: Connection,
    mut req: AdminRequest,
    per_sensor: usize,
    end: Instant,
) -> anyhow::Result<ProducerTally> {
    let mut t = ProducerTally {
        acked: AckSummary {
            min_replicas: u32::MAX,
            ..AckSummary::default()
        },
        ..ProducerTally::default()
    };
    while Instant::now() < end {
        let answer = admin.ingest(&conn, &req).await?;
        let in_window = Instant::now() <= end;
        match answer {
            Answer::Acked(s) => {
                advance(&mut req, per_sensor);
                if in_window {
                    t.acked.add(&s);
                    t.requests += 1;
                }
            }
            Answer::Busy => {
                t.busy += 1;
                tokio::time::sleep(BUSY_PAUSE).await;
            }
        }
    }
    conn.close(CloseCode::Shutdown.varint(), b"done");
    Ok(t)
}

/// The sensors of producer `p`.
fn producer_sensors(p: usize) -> Vec<usize> {
    (p * SENSORS_PER_PRODUCER..(p + 1) * SENSORS_PER_PRODUCER).collect()
}

async fn sustained(cluster: &LocalCluster, admin: &Admin, plan: Plan) -> anyhow::Result<Sustained> {
    let all: Vec<usize> = (0..PRODUCERS * SENSORS_PER_PRODUCER).collect();
    for n in &cluster.nodes {
        let took = place(admin, n.listen, "s", &all, 2).await?;
        progress(&format!(
            "sustained: {}'s {} streams acknowledged with 2 holders after {} ms",
            n.id,
            all.len(),
            took.as_millis()
        ));
    }
    let per_sensor = BATCH_READINGS / SENSORS_PER_PRODUCER;
    let mut producers = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        for p in 0..PRODUCERS {
            let conn = admin.connect(n.listen).await?;
            // Past what `place` sent: its readings stay first in every stream.
            let req = batch("s", &producer_sensors(p), 1_000_000, per_sensor);
            producers.push((i, conn, req));
        }
    }
    progress(&format!(
        "sustained: {} producers per node × 3 nodes, {BATCH_READINGS} readings per request, {} s",
        PRODUCERS,
        plan.sustained.as_secs()
    ));
    let start = Instant::now();
    let end = start + plan.sustained;
    let mut tasks = JoinSet::new();
    for (i, conn, req) in producers {
        let admin = admin.clone();
        tasks.spawn(async move { (i, produce(admin, conn, req, per_sensor, end).await) });
    }
    let mut nodes: Vec<NodeIngest> = cluster
        .nodes
        .iter()
        .map(|n| NodeIngest {
            id: n.id.clone(),
            acked: AckSummary {
                min_replicas: u32::MAX,
                ..AckSummary::default()
            },
            requests: 0,
            busy: 0,
        })
        .collect();
    while let Some(done) = tasks.join_next().await {
        let (i, tally) = done.context("a producer panicked")?;
        let tally = tally.with_context(|| format!("a producer of {}", nodes[i].id))?;
        nodes[i].acked.add(&tally.acked);
        nodes[i].requests += tally.requests;
        nodes[i].busy += tally.busy;
    }
    let window = end - start;
    progress("sustained: waiting for every replica to reach lag 0");
    let drained = wait_drained(cluster, admin).await?;
    Ok(Sustained {
        window,
        nodes,
        drained,
    })
}

// ----- (b) Acknowledgement latency at a paced offer.

/// Latencies of one variant, in ms, and what the pacing achieved.
#[derive(Debug, Default)]
struct PacedRun {
    /// Request sent until its answer, per request, in ms.
    latency_ms: Vec<f64>,
    acked: AckSummary,
    /// Readings sent in the measured blocks.
    offered: u64,
    /// Time spent in the measured blocks.
    time: Duration,
    /// Sends that found no idle connection and waited for one.
    waited: u64,
    busy: u64,
}

impl PacedRun {
    /// The share of acknowledged requests slower than `ms`.
    fn share_over(&self, ms: f64) -> f64 {
        let over = self.latency_ms.iter().filter(|&&l| l > ms).count();
        over as f64 / self.latency_ms.len() as f64
    }

    fn offered_per_s(&self) -> f64 {
        self.offered as f64 / self.time.as_secs_f64()
    }
}

/// Percentiles of one sorted series.
#[derive(Debug, Clone, Copy)]
struct Spread {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Spread {
    fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&samples, 50.0),
            p99: percentile(&samples, 99.0),
            max: samples.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[derive(Debug)]
struct Latency {
    replicated: PacedRun,
    baseline: PacedRun,
    replicated_ms: Spread,
    baseline_ms: Spread,
}

impl Latency {
    fn pass(&self) -> bool {
        self.replicated_ms.p99 <= ACK_P99_MS_MAX
    }
}

/// A producer offering `batch` readings every `every` to one node, over a pool of connections.
struct Pacer {
    admin: Admin,
    batch: usize,
    every: Duration,
    idle_tx: mpsc::Sender<Connection>,
    idle_rx: mpsc::Receiver<Connection>,
    /// The next reading index of each sensor.
    next: Vec<u64>,
    /// The sensor the next batch starts with.
    cursor: usize,
}

impl Pacer {
    async fn connect(admin: &Admin, addr: SocketAddr, plan: Plan) -> anyhow::Result<Self> {
        let (idle_tx, idle_rx) = mpsc::channel(PACED_POOL);
        for _ in 0..PACED_POOL {
            idle_tx
                .send(admin.connect(addr).await?)
                .await
                .context("the connection pool closed")?;
        }
        Ok(Self {
            admin: admin.clone(),
            batch: plan.paced_batch,
            every: plan.paced_every,
            idle_tx,
            idle_rx,
            // Past what `place` sent.
            next: vec![1_000_000; PACED_SENSORS],
            cursor: 0,
        })
    }

    /// The next request: one reading each of the next `batch` sensors in turn (round the
    /// sensors again if there are more readings than sensors).
    fn next_request(&mut self) -> AdminRequest {
        let mut readings = Vec::with_capacity(self.batch);
        for _ in 0..self.batch {
            let s = self.cursor;
            self.cursor = (self.cursor + 1) % PACED_SENSORS;
            readings.push(IngestReading {
                sensor: format!("l{s}"),
                record: record(s, self.next[s]),
            });
            self.next[s] += 1;
        }
        AdminRequest::Ingest { readings }
    }

    /// Sends at the paced rate for `duration`; adds to `run` unless `run` is `None` (warm-up).
    async fn run(&mut self, duration: Duration, run: Option<&mut PacedRun>) -> anyhow::Result<()> {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks: JoinSet<anyhow::Result<(Duration, Answer)>> = JoinSet::new();
        let mut results = Vec::new();
        let start = Instant::now();
        let mut sent = 0;
        let mut waited = 0;
        while start.elapsed() < duration {
            ticks.tick().await;
            let conn = match self.idle_rx.try_recv() {
                Ok(c) => c,
                Err(_) => {
                    waited += 1;
                    self.idle_rx
                        .recv()
                        .await
                        .context("the connection pool closed")?
                }
            };
            let req = self.next_request();
            let admin = self.admin.clone();
            let idle = self.idle_tx.clone();
            tasks.spawn(async move {
                let sent = Instant::now();
                let answer = admin.ingest(&conn, &req).await;
                let took = sent.elapsed();
                // The pool has room for every connection, so this cannot wait.
                let _ = idle.send(conn).await;
                Ok((took, answer?))
            });
            sent += 1;
            while let Some(done) = tasks.try_join_next() {
                results.push(done.context("a paced request panicked")??);
            }
        }
        let time = start.elapsed();
        while let Some(done) = tasks.join_next().await {
            results.push(done.context("a paced request panicked")??);
        }
        if let Some(run) = run {
            run.offered += sent * self.batch as u64;
            run.waited += waited;
            run.time += time;
            for (took, answer) in results {
                match answer {
                    Answer::Acked(s) => {
                        run.acked.add(&s);
                        run.latency_ms.push(took.as_secs_f64() * 1e3);
                    }
                    Answer::Busy => run.busy += 1,
                }
            }
        }
        Ok(())
    }

    fn close(self) {
        let mut rx = self.idle_rx;
        while let Ok(conn) = rx.try_recv() {
            conn.close(CloseCode::Shutdown.varint(), b"done");
        }
    }
}

async fn latency(
    (main, admin): (&LocalCluster, &Admin),
    (base, base_admin): (&LocalCluster, &Admin),
    plan: Plan,
) -> anyhow::Result<Latency> {
    // Node 0 of each cluster takes the offer; the two clusters have the same layout.
    let sensors: Vec<usize> = (0..PACED_SENSORS).collect();
    let main_addr = main.nodes[0].listen;
    let base_addr = base.nodes[0].listen;
    place(admin, main_addr, "l", &sensors, 2).await?;
    place(base_admin, base_addr, "l", &sensors, 1).await?;
    let mut replicated = Pacer::connect(admin, main_addr, plan).await?;
    let mut baseline = Pacer::connect(base_admin, base_addr, plan).await?;
    progress(&format!(
        "latency: {} readings every {} ms ({PACED_READINGS_PER_S}/s) to one node, {} s per variant in {} alternating blocks",
        plan.paced_batch,
        plan.paced_every.as_secs_f64() * 1e3,
        plan.latency.as_secs(),
        plan.latency_blocks
    ));
    replicated.run(PACED_WARMUP, None).await?;
    baseline.run(PACED_WARMUP, None).await?;
    let block = plan.latency / plan.latency_blocks;
    let mut r = PacedRun::default();
    let mut b = PacedRun::default();
    for i in 0..plan.latency_blocks {
        if i % 2 == 0 {
            replicated.run(block, Some(&mut r)).await?;
            baseline.run(block, Some(&mut b)).await?;
        } else {
            baseline.run(block, Some(&mut b)).await?;
            replicated.run(block, Some(&mut r)).await?;
        }
    }
    replicated.close();
    baseline.close();
    ensure!(
        !r.latency_ms.is_empty() && !b.latency_ms.is_empty(),
        "no paced request was acknowledged"
    );
    let replicated_ms = Spread::of(r.latency_ms.clone());
    let baseline_ms = Spread::of(b.latency_ms.clone());
    Ok(Latency {
        replicated: r,
        baseline: b,
        replicated_ms,
        baseline_ms,
    })
}

// ----- (c) Catch-up.

#[derive(Debug)]
struct Catchup {
    owner: NodeId,
    replica: NodeId,
    /// Streams replicated on the cut-off node, which the run writes to.
    streams: usize,
    /// How long the owner took to see the replica down after the partition.
    detected: Duration,
    /// Readings ingested while the replica was cut off, and how long that took.
    ingested: AckSummary,
    ingest_time: Duration,
    /// Records the replica lacked when the partition was healed (the owner's view).
    backlog: u64,
    /// From the heal until the replica's lag first went down.
    first_progress: Option<Duration>,
    /// From the heal until every stream reported the replica at lag 0, if it did in time.
    caught_up: Option<Duration>,
    /// Lag left when giving up, if it did.
    lag_left: u64,
    /// Replication metrics of the owner and the replica that changed during the run.
    metrics: Vec<String>,
}

impl Catchup {
    fn per_s(&self) -> f64 {
        match self.caught_up {
            Some(t) => self.backlog as f64 / t.as_secs_f64(),
            None => 0.0,
        }
    }

    /// The rate counted from the first progress instead of the heal: transfer without the time
    /// it takes the owner to see the replica alive again.
    fn transfer_per_s(&self) -> f64 {
        match (self.caught_up, self.first_progress) {
            (Some(t), Some(p)) if t > p => self.backlog as f64 / (t - p).as_secs_f64(),
            _ => f64::NAN,
        }
    }

    fn pass(&self) -> bool {
        self.per_s() >= CATCHUP_PER_S_MIN
    }
}

/// The lag of `replica` summed over the streams `owner` owns whose replica it is, and whether
/// every one of them reports it at lag 0 with its high-water mark at the head.
fn lag_of(views: &[StreamView], owner: &NodeId, replica: &NodeId) -> (u64, bool) {
    let mut sum = 0;
    let mut done = true;
    for v in owned(views, owner) {
        if let StreamRole::Owner { replicas, .. } = &v.role {
            for r in replicas.iter().filter(|r| &r.node == replica) {
                sum += r.lag;
                done &= r.lag == 0 && r.hwm == v.head;
            }
        }
    }
    (sum, done)
}

async fn catchup(cluster: &LocalCluster, admin: &Admin, plan: Plan) -> anyhow::Result<Catchup> {
    let owner = &cluster.nodes[0];
    let sensors: Vec<usize> = (0..PRODUCERS * SENSORS_PER_PRODUCER).collect();
    place(admin, owner.listen, "c", &sensors, 2).await?;
    let owner_conn = admin.connect(owner.listen).await?;

    // Cut off the node that replicates most of the new streams; write only to those.
    let views = admin.streams(&owner_conn).await?;
    let mut by_replica: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
    for v in owned(&views, &owner.id) {
        let Some(s) = v.id.sensor.strip_prefix('c').and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let StreamRole::Owner { replicas, .. } = &v.role {
            for r in replicas {
                by_replica.entry(r.node.clone()).or_default().push(s);
            }
        }
    }
    let (replica, cut_sensors) = by_replica
        .into_iter()
        .max_by_key(|(_, s)| s.len())
        .context("the owner reports no replica for its streams")?;
    let replica_i = cluster
        .nodes
        .iter()
        .position(|n| n.id == replica)
        .with_context(|| format!("{replica} is not a node of this cluster"))?;
    let replica_node = &cluster.nodes[replica_i];
    let replica_conn = admin.connect(replica_node.listen).await?;
    let before = [
        http_get(owner.metrics, "/metrics").await?,
        http_get(replica_node.metrics, "/metrics").await?,
    ];

    progress(&format!(
        "catch-up: cutting {replica} off from {} ({} of its streams)",
        owner.id,
        cut_sensors.len()
    ));
    let cut = Instant::now();
    admin.partition(&owner_conn, vec![replica.clone()]).await?;
    admin
        .partition(&replica_conn, vec![owner.id.clone()])
        .await?;
    cluster
        .wait_for_state(0, &replica, MemberState::Down, Duration::from_secs(20))
        .await?;
    let detected = cut.elapsed();

    progress(&format!(
        "catch-up: {} readings into {} while {replica} is cut off",
        plan.catchup_readings, owner.id
    ));
    let (ingested, ingest_time) =
        ingest_fixed(admin, owner.listen, &cut_sensors, plan.catchup_readings).await?;
    let views = admin.streams(&owner_conn).await?;
    let (backlog, _) = lag_of(&views, &owner.id, &replica);

    progress(&format!(
        "catch-up: healing; {replica} lacks {backlog} records"
    ));
    let heal = Instant::now();
    admin.partition(&owner_conn, vec![]).await?;
    admin.partition(&replica_conn, vec![]).await?;
    let mut first_progress = None;
    let mut caught_up = None;
    let mut lag_left = backlog;
    while heal.elapsed() < DRAIN_TIMEOUT {
        let views = admin.streams(&owner_conn).await?;
        let (lag, done) = lag_of(&views, &owner.id, &replica);
        lag_left = lag;
        if first_progress.is_none() && lag < backlog {
            first_progress = Some(heal.elapsed());
        }
        if done {
            caught_up = Some(heal.elapsed());
            break;
        }
        tokio::time::sleep(LAG_POLL).await;
    }
    let after = [
        http_get(owner.metrics, "/metrics").await?,
        http_get(replica_node.metrics, "/metrics").await?,
    ];
    let mut metrics = Vec::new();
    for (who, (b, a)) in [&owner.id, &replica]
        .into_iter()
        .zip(before.iter().zip(&after))
    {
        for line in metric_changes(b, a, &["verge_replication_", "verge_readings_acknowledged"]) {
            metrics.push(format!("{who}: {line}"));
        }
    }
    owner_conn.close(CloseCode::Shutdown.varint(), b"done");
    replica_conn.close(CloseCode::Shutdown.varint(), b"done");
    Ok(Catchup {
        owner: owner.id.clone(),
        replica,
        streams: cut_sensors.len(),
        detected,
        ingested,
        ingest_time,
        backlog,
        first_progress,
        caught_up,
        lag_left,
        metrics,
    })
}

/// Ingests `total` readings into `sensors` of the node at `addr` as fast as [`PRODUCERS`]
/// producers can, each with its own connection and share of the sensors.
async fn ingest_fixed(
    admin: &Admin,
    addr: SocketAddr,
    sensors: &[usize],
    total: usize,
) -> anyhow::Result<(AckSummary, Duration)> {
    let groups: Vec<Vec<usize>> = sensors
        .chunks(sensors.len().div_ceil(PRODUCERS).max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let per_group = total / groups.len();
    let mut tasks = JoinSet::new();
    let mut conns = Vec::new();
    for _ in &groups {
        conns.push(admin.connect(addr).await?);
    }
    let start = Instant::now();
    for (group, conn) in groups.into_iter().zip(conns) {
        let admin = admin.clone();
        tasks.spawn(async move {
            let per_sensor = (BATCH_READINGS / group.len()).max(1);
            let mut req = batch("c", &group, 1_000_000, per_sensor);
            let per_request = (per_sensor * group.len()) as u64;
            let mut sum = AckSummary {
                min_replicas: u32::MAX,
                ..AckSummary::default()
            };
            while sum.readings + per_request <= per_group as u64 {
                match admin.ingest(&conn, &req).await? {
                    Answer::Acked(s) => {
                        sum.add(&s);
                        advance(&mut req, per_sensor);
                    }
                    Answer::Busy => tokio::time::sleep(BUSY_PAUSE).await,
                }
            }
            conn.close(CloseCode::Shutdown.varint(), b"done");
            anyhow::Ok(sum)
        });
    }
    let mut sum = AckSummary {
        min_replicas: u32::MAX,
        ..AckSummary::default()
    };
    while let Some(done) = tasks.join_next().await {
        sum.add(&done.context("a producer panicked")??);
    }
    Ok((sum, start.elapsed()))
}

/// `GET path` over plain HTTP/1.0 from the node's metrics listener; returns the body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        std::io::Result::Ok(text)
    };
    let text = tokio::time::timeout(STALL, get)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr}{path} in {} s", STALL.as_secs()))?
        .with_context(|| format!("GET {addr}{path}"))?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// Sample lines of Prometheus text whose metric name starts with one of `prefixes`, by name
/// and labels.
fn samples(text: &str, prefixes: &[&str]) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && prefixes.iter().any(|p| l.starts_with(p)))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The counters (`*_total`) matching `prefixes` that differ between `before` and `after`, as
/// `name before -> after`. Gauges are left out: the node refreshes them only every so often, so
/// one read right after a run may be stale.
fn metric_changes(before: &str, after: &str, prefixes: &[&str]) -> Vec<String> {
    let b = samples(before, prefixes);
    samples(after, prefixes)
        .into_iter()
        .filter(|(name, _)| {
            name.split('{')
                .next()
                .is_some_and(|n| n.ends_with("_total"))
        })
        .filter_map(|(name, a)| {
            let was = b.get(&name).copied().unwrap_or(0.0);
            (was != a).then(|| format!("{name} {} -> {}", thousands(was), thousands(a)))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Figures and formatting.

#[derive(Debug)]
struct Figures {
    plan: Plan,
    store: StoreFigures,
    nodes: NodeFigures,
    took: Duration,
    /// The machine's 1-minute load average before and after the run: everything here shares
    /// the machine's cores, so other work on it moves every figure.
    load: [Option<f64>; 2],
}

impl Figures {
    fn pass(&self) -> bool {
        let n = &self.nodes;
        n.sustained.pass() && n.latency.pass() && n.catchup.pass()
    }

    fn json(&self) -> Value {
        let naive = self.store.naive.per_s();
        let s = &self.nodes.sustained;
        let l = &self.nodes.latency;
        let c = &self.nodes.catchup;
        let paced = |run: &PacedRun, ms: &Spread| {
            json!({
                "requests": run.latency_ms.len(),
                "offered_per_s": run.offered_per_s(),
                "p50_ms": ms.p50,
                "p99_ms": ms.p99,
                "max_ms": ms.max,
                "waited_for_connection": run.waited,
                "share_over_target": run.share_over(ACK_P99_MS_MAX),
                "busy": run.busy,
                "full_share": run.acked.full as f64 / run.acked.readings as f64,
            })
        };
        json!({
            "store": {
                "group_commit": self.store.group.iter().map(|g| json!({
                    "streams": g.streams,
                    "readings": g.readings,
                    "readings_per_s": g.per_s(),
                    "flush_p50_ms": g.flush_p50_ms,
                    "flush_p99_ms": g.flush_p99_ms,
                    "ratio_to_naive": g.per_s() / naive,
                })).collect::<Vec<_>>(),
                "naive_per_reading": {
                    "readings": self.store.naive.readings,
                    "readings_per_s": naive,
                },
            },
            "sustained": {
                "window_s": s.window.as_secs_f64(),
                "nodes": s.nodes.iter().map(|n| json!({
                    "id": n.id.as_str(),
                    "readings_per_s": s.per_s(n),
                    "requests": n.requests,
                    "busy": n.busy,
                    "full_share": n.acked.full as f64 / n.acked.readings as f64,
                })).collect::<Vec<_>>(),
                "total_per_s": s.total_per_s(),
                "full_share": s.full_share(),
                "drained_ms": s.drained.as_secs_f64() * 1e3,
                "target_per_node_min": INGEST_PER_NODE_MIN,
                "target_full_share_min": FULL_SHARE_MIN,
                "pass": s.pass(),
            },
            "ack_latency": {
                "batch_readings": self.plan.paced_batch,
                "every_ms": self.plan.paced_every.as_secs_f64() * 1e3,
                "offered_target_per_s": PACED_READINGS_PER_S,
                "replicated": paced(&l.replicated, &l.replicated_ms),
                "baseline_r1": paced(&l.baseline, &l.baseline_ms),
                "ratio_p50": l.replicated_ms.p50 / l.baseline_ms.p50,
                "ratio_p99": l.replicated_ms.p99 / l.baseline_ms.p99,
                "target_p99_ms_max": ACK_P99_MS_MAX,
                "pass": l.pass(),
            },
            "catchup": {
                "owner": c.owner.as_str(),
                "replica": c.replica.as_str(),
                "streams": c.streams,
                "ingested": c.ingested.readings,
                "ingested_degraded": c.ingested.degraded,
                "backlog": c.backlog,
                "caught_up_ms": c.caught_up.map(|t| t.as_secs_f64() * 1e3),
                "first_progress_ms": c.first_progress.map(|t| t.as_secs_f64() * 1e3),
                "readings_per_s": c.per_s(),
                "transfer_per_s": c.transfer_per_s(),
                "lag_left": c.lag_left,
                "target_per_s_min": CATCHUP_PER_S_MIN,
                "pass": c.pass(),
            },
            "quick": self.plan.quick,
            "cores": cores(),
            "load_average_1m": self.load,
            "took_s": self.took.as_secs_f64(),
            "pass": self.pass(),
        })
    }

    /// The figures for people.
    fn table(&self) -> String {
        let row =
            |name: &str, value: String, base: String, ratio: f64, target: &str, result: &str| {
                let ratio = if ratio.is_finite() {
                    format!("{ratio:.2}x")
                } else {
                    String::new()
                };
                let line =
                    format!("{name:<34} {value:>13} {base:>13} {ratio:>9}  {target:<18} {result}");
                format!("{}\n", line.trim_end())
            };
        let per_s = |x: f64| format!("{}/s", thousands(x));
        let ms = |x: f64| format!("{x:.2} ms");
        let mut out = String::from(
            "verge bench store: group commit, replicated ingest (R=2 W=2), ack latency, catch-up\n\n",
        );
        out.push_str(&format!(
            "{:<34} {:>13} {:>13} {:>9}  {:<18} {}\n",
            "MEASURE", "VALUE", "BASELINE", "RATIO", "TARGET", "RESULT"
        ));

        let naive = self.store.naive.per_s();
        for g in &self.store.group {
            out.push_str(&row(
                &format!("1. group commit, {}", streams(g.streams)),
                per_s(g.per_s()),
                per_s(naive),
                g.per_s() / naive,
                "(not judged)",
                "",
            ));
        }

        let s = &self.nodes.sustained;
        for n in &s.nodes {
            let v = s.per_s(n);
            out.push_str(&row(
                &format!("2a. ingest {} (3 loaded)", n.id),
                per_s(v),
                String::new(),
                v / INGEST_PER_NODE_MIN,
                &format!("≥ {}/s", thousands(INGEST_PER_NODE_MIN)),
                verdict(v >= INGEST_PER_NODE_MIN),
            ));
        }
        out.push_str(&row(
            "2a. ingest, all 3 nodes",
            per_s(s.total_per_s()),
            String::new(),
            f64::NAN,
            "",
            "",
        ));
        out.push_str(&row(
            "2a. acked with ≥ 2 holders",
            format!("{:.3} %", s.full_share() * 100.0),
            String::new(),
            s.full_share() / FULL_SHARE_MIN,
            &format!("≥ {:.1} %", FULL_SHARE_MIN * 100.0),
            verdict(s.full_share() >= FULL_SHARE_MIN),
        ));

        let l = &self.nodes.latency;
        let (r, b) = (&l.replicated_ms, &l.baseline_ms);
        out.push_str(&row(
            "2b. ack latency p50 (vs R=1)",
            ms(r.p50),
            ms(b.p50),
            r.p50 / b.p50,
            "(not judged)",
            "",
        ));
        out.push_str(&row(
            "2b. ack latency p99 (vs R=1)",
            ms(r.p99),
            ms(b.p99),
            r.p99 / b.p99,
            &format!("≤ {ACK_P99_MS_MAX:.1} ms"),
            verdict(l.pass()),
        ));
        out.push_str(&row(
            "2b. ack latency max (vs R=1)",
            ms(r.max),
            ms(b.max),
            r.max / b.max,
            "(not judged)",
            "",
        ));

        let c = &self.nodes.catchup;
        out.push_str(&row(
            "2c. catch-up after a partition",
            per_s(c.per_s()),
            String::new(),
            c.per_s() / CATCHUP_PER_S_MIN,
            &format!("≥ {}/s", thousands(CATCHUP_PER_S_MIN)),
            verdict(c.pass()),
        ));
        out.push_str(
            "(ratios: against the baseline where there is one, else against the target)\n\n",
        );

        // Details.
        for g in &self.store.group {
            out.push_str(&format!(
                "1.  {} readings in {}, {GROUP_READINGS} per flush: {:.2} s of appends and flushes, flush p50 {} p99 {}\n",
                thousands(g.readings as f64),
                streams(g.streams),
                g.time.as_secs_f64(),
                ms(g.flush_p50_ms),
                ms(g.flush_p99_ms),
            ));
        }
        out.push_str(&format!(
            "1.  baseline: {} readings, one raw sled insert + sled flush each (no fsync: flatters it), {:.2} s\n",
            thousands(self.store.naive.readings as f64),
            self.store.naive.time.as_secs_f64(),
        ));
        out.push_str(&format!(
            "2a. {PRODUCERS} producers per node, {BATCH_READINGS} readings per request over {} sensors per node, {:.1} s window; requests {}; busy answers {}; replicas at lag 0 {} ms after the window\n",
            PRODUCERS * SENSORS_PER_PRODUCER,
            s.window.as_secs_f64(),
            s.nodes
                .iter()
                .map(|n| format!("{} {}", n.id, n.requests))
                .collect::<Vec<_>>()
                .join(", "),
            s.nodes.iter().map(|n| n.busy).sum::<u64>(),
            s.drained.as_millis(),
        ));
        for (name, run) in [("R=2 W=2", &l.replicated), ("R=1 W=1", &l.baseline)] {
            out.push_str(&format!(
                "2b. {name}: {} readings every {} ms to one node, offered {}, {} requests acknowledged ({:.1} % over {ACK_P99_MS_MAX} ms; {:.2} % with ≥ 2 holders), {} sends waited for a connection, {} busy\n",
                self.plan.paced_batch,
                self.plan.paced_every.as_secs_f64() * 1e3,
                per_s(run.offered_per_s()),
                thousands(run.latency_ms.len() as f64),
                run.share_over(ACK_P99_MS_MAX) * 100.0,
                run.acked.full as f64 * 100.0 / run.acked.readings as f64,
                run.waited,
                run.busy,
            ));
        }
        out.push_str(&format!(
            "2c. {} cut off from {} ({} streams): seen down after {} ms; {} readings ingested meanwhile in {:.2} s ({}), {} acked degraded\n",
            c.replica,
            c.owner,
            c.streams,
            c.detected.as_millis(),
            thousands(c.ingested.readings as f64),
            c.ingest_time.as_secs_f64(),
            per_s(c.ingested.readings as f64 / c.ingest_time.as_secs_f64()),
            thousands(c.ingested.degraded as f64),
        ));
        match c.caught_up {
            Some(t) => out.push_str(&format!(
                "2c. healed: {} records caught up in {} ms (first progress after {} ms; {} counted from it)\n",
                thousands(c.backlog as f64),
                t.as_millis(),
                c.first_progress.map_or(0, |p| p.as_millis()),
                per_s(c.transfer_per_s()),
            )),
            None => out.push_str(&format!(
                "2c. healed: {} of {} records still missing after {} s\n",
                thousands(c.lag_left as f64),
                thousands(c.backlog as f64),
                DRAIN_TIMEOUT.as_secs(),
            )),
        }
        for line in &c.metrics {
            out.push_str(&format!("    {line}\n"));
        }
        let load = |l: Option<f64>| l.map_or("-".to_owned(), |l| format!("{l:.2}"));
        out.push_str(&format!(
            "\nall targets: {} ({:.0} s; {} cores, load average {} before, {} after)\n",
            verdict(self.pass()),
            self.took.as_secs_f64(),
            cores(),
            load(self.load[0]),
            load(self.load[1]),
        ));
        out
    }
}

/// `1 stream`, `16 streams`.
fn streams(n: usize) -> String {
    if n == 1 {
        "1 stream".to_owned()
    } else {
        format!("{n} streams")
    }
}

/// Cores this process may run on (the producers and all the nodes share them).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_readings_pass_the_nodes_checks() {
        for s in 0..PACED_SENSORS {
            for i in (0..3_000).chain(1_000_000..1_003_000) {
                let r = record(s, i);
                let [count, occupancy, speed, queue] = r.values[..] else {
                    panic!("sensor {s} reading {i} has {} values", r.values.len());
                };
                let reading = verge_traffic::Reading {
                    sensor: format!("s{s}"),
                    ts_ms: r.ts_ms,
                    count,
                    occupancy,
                    speed,
                    queue,
                };
                assert_eq!(reading.validate(), Ok(()), "sensor {s} reading {i}");
            }
        }
    }

    #[test]
    fn ack_summary_counts_readings_and_holders() {
        let stream: StreamId = "b1/raw/s0".parse().expect("valid id");
        let ack = |first_seq, last_seq, replicas, degraded| IngestAck {
            stream: stream.clone(),
            first_seq,
            last_seq,
            replicas,
            degraded,
        };
        let s = AckSummary::of(&[ack(1, 10, 2, false), ack(11, 15, 1, true)]);
        assert_eq!(
            (s.readings, s.full, s.degraded, s.min_replicas),
            (15, 10, 5, 1)
        );
    }

    #[test]
    fn changed_metrics_only() {
        let before =
            "# HELP x\nverge_replication_records_sent_total{peer=\"b2\"} 10\nverge_other 1\n";
        let after = "verge_replication_records_sent_total{peer=\"b2\"} 25\nverge_replication_lag_records{peer=\"b2\"} 0\nverge_other 2\n";
        assert_eq!(
            metric_changes(before, after, &["verge_replication_"]),
            vec!["verge_replication_records_sent_total{peer=\"b2\"} 10 -> 25".to_owned()]
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert!(percentile(&[], 50.0).is_nan());
        assert_eq!(thousands(1_234_567.4), "1,234,567");
    }
}
