//! `verge sim run`: a scenario played on real `verge node` processes and a real cloud process,
//! then judged.
//!
//! 1. **Lay out.** Certificates, configs and ports for the scenario's nodes ([`LocalCluster`]),
//!    a reference cloud ([`CloudProc`], with fault injection on), the traffic source per node.
//! 2. **Run.** Nodes start; a producer sends small batches of readings to every node that runs
//!    and keeps each one whose acknowledgement it saw; a watcher asks for the gateway every
//!    100 ms (failover times); once a second every node is sampled (readings/s, replication lag,
//!    inference p99, offloaded share, resident memory) and the gateway for its cloud backlog; the
//!    fault timeline is applied on time. Progress is printed every few seconds.
//! 3. **Settle.** Faults are undone (healed, resumed, restarted, cloud up), the producer stops, and
//!    the run waits until every replica holds its stream up to the cut taken then, and the cloud
//!    every aggregate window up to it.
//! 4. **Check.** Every holder's records, the cloud's windows and its log of accepted batches are
//!    read and judged by [`crate::check`]; the [`Report`] says what held and names what did not.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use tokio::task::JoinSet;
use verge_proto::admin::{IngestReading, StreamRole, StreamView};
use verge_proto::{Record, StreamKind};

use crate::check::{self, AcceptedBatch, AckedReading, CloudWindow, Holding, StreamHoldings};
use crate::netns::Netns;
use crate::report::{FaultEvent, GatewayChange, NodeSample, Report, Sample};
use crate::scenario::{Fault, FaultKind, Scenario, Source, Target};
use crate::{AdminClient, CloudProc, CloudSpec, ClusterError, ClusterSpec, LocalCluster};

/// The cluster's name in its CA and in the cloud.
pub const CLUSTER: &str = "sim";
/// The sensor the run's producer writes to on every node.
pub const PROBE_SENSOR: &str = "sim-probe";
/// Bytes of one producer reading (its time and four values).
const READING_BYTES: u64 = 8 + 4 * 8;
/// Readings per producer batch, and how often each node gets one.
const PROBE_BATCH: usize = 20;
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How long one admin request may take before the node counts as not answering.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the corridor is sampled, the gateway asked for, progress printed.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const GATEWAY_EVERY: Duration = Duration::from_millis(100);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long the mesh may take to form, at the start and after the settle.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Records per query when reading streams back.
const QUERY_PAGE: u64 = 10_000;
/// At most this many of a stream's latest records are compared between replicas.
const CONVERGE_TAIL: u64 = 100_000;
/// Aggregate windows of synthetic traffic, and their lateness.
const WINDOW_MS: u64 = 1_000;
const LATENESS_MS: u64 = 250;
/// The SUMO grid's nine traffic lights, in node order when the ids are not the lights' own.
const SUMO_LIGHTS: [&str; 9] = ["A0", "A1", "A2", "B0", "B1", "B2", "C0", "C1", "C2"];

/// Why a run could not be carried out (as opposed to a run whose invariants failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Processes, files or signals.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The SUMO grid could not be made.
    #[error(transparent)]
    Sumo(#[from] crate::sumo::GridError),
    /// The scenario asks for something this runner cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// A node or the cloud did not do what the run needed.
    #[error("{0}")]
    Failed(String),
    /// Writing the report.
    #[error("{what}: {source}")]
    Io {
        /// What was being written.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The `verge` binary for the nodes and the cloud.
    pub verge_bin: PathBuf,
    /// The seed; `None`: the scenario's, else one chosen now (printed).
    pub seed: Option<u64>,
    /// Where `report.json`, `report.html` (and, with `keep`, the cluster) go.
    pub out: PathBuf,
    /// Run this long instead of the scenario's duration; fault times are scaled with it.
    pub duration_s: Option<f64>,
    /// The model manifest the nodes predict with; `None`: no predictions.
    pub model: Option<PathBuf>,
    /// `simulations/sumo/make_grid.sh`, for SUMO traffic.
    pub make_grid: PathBuf,
    /// Keep the cluster's directory (configs, logs, data) under `out`.
    pub keep: bool,
    /// Print progress while running.
    pub progress: bool,
    /// How long the settle may take.
    pub settle_timeout: Duration,
    /// Readings per second per node for synthetic traffic instead of the scenario's.
    pub rate_per_s: Option<f64>,
    /// Run each node in its own network namespace and make partitions, loss and delay with
    /// routes and `tc netem` instead of the nodes' fault layer (root only).
    pub netns: bool,
}

/// What a hook sees of the running corridor once it has settled.
#[derive(Debug, Clone)]
pub struct Live {
    /// The cloud's URL, its certificate and its token.
    pub cloud_url: String,
    /// The cloud's self-signed certificate.
    pub cloud_cert: PathBuf,
    /// The cloud's bearer token.
    pub cloud_token: String,
    /// The cluster's name in the cloud.
    pub cluster: String,
    /// The `verge` binary.
    pub verge_bin: PathBuf,
    /// Every node's id and admin address.
    pub nodes: Vec<(String, SocketAddr)>,
}

/// A future a hook returns.
pub type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// A hook run on the settled corridor.
pub type BeforeCheck = Box<dyn FnOnce(Live) -> HookFuture + Send>;
/// A hook that sees what was read back.
pub type Tamper = Box<dyn FnOnce(&mut Observations) + Send>;

/// Ways for tests to interfere with a run before it is judged.
#[derive(Default)]
pub struct Hooks {
    /// Runs once the corridor has settled, before anything is read back (e.g. post a batch
    /// to the cloud).
    pub before_check: Option<BeforeCheck>,
    /// Sees (and may change) what was read back before it is judged.
    pub tamper: Option<Tamper>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("before_check", &self.before_check.is_some())
            .field("tamper", &self.tamper.is_some())
            .finish()
    }
}

/// Everything read back at the end, as the checker judges it.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// The producer's acknowledged readings.
    pub acked: Vec<AckedReading>,
    /// Every stream's holders and what they hold.
    pub streams: BTreeMap<String, StreamHoldings>,
    /// Aggregate windows produced, per stream, up to the cut.
    pub produced: BTreeMap<String, BTreeMap<u64, Record>>,
    /// What the cloud holds of those streams.
    pub cloud: BTreeMap<String, BTreeMap<u64, CloudWindow>>,
    /// The cloud's own window count per stream.
    pub cloud_counts: BTreeMap<String, u64>,
    /// The cloud's accepted batches.
    pub batches: Vec<AcceptedBatch>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A seed from the OS (for a scenario without one).
pub fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        u64::from_le_bytes(b)
    } else {
        now_ms() as u64
    }
}

/// A small deterministic generator (splitmix64) for the producer's values.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What each node is doing, as the fault executor left it.
#[derive(Debug, Clone, Default)]
struct NodeState {
    running: bool,
    paused: bool,
    slowdown: f64,
    quota_filled: bool,
}

/// The injected network faults in force.
#[derive(Debug, Clone, Default)]
struct NetState {
    groups: Vec<Vec<String>>,
    loss_ppm: u32,
    delay_ms: u32,
}

impl NetState {
    /// The nodes `id` is cut off from.
    fn blocked(&self, id: &str) -> Vec<String> {
        let Some(mine) = self.groups.iter().position(|g| g.iter().any(|n| n == id)) else {
            return Vec::new();
        };
        self.groups
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != mine)
            .flat_map(|(_, g)| g.iter().cloned())
            .collect()
    }
}

/// The gateway as seen over time.
#[derive(Debug, Default)]
struct GatewayLog {
    current: Option<(String, u64)>,
    /// When the current gateway was last seen as gateway, and since when it is.
    last_seen: f64,
    since: f64,
    changes: Vec<GatewayChange>,
    /// (time, node) when a fault took a node out of reach.
    losses: Vec<(f64, String)>,
}

impl GatewayLog {
    fn observe(&mut self, t: f64, gw: Option<(String, u64)>) {
        let Some((g, term)) = gw else { return };
        match &self.current {
            Some((cur, cur_term)) if *cur == g => {
                self.last_seen = t;
                if term > *cur_term {
                    self.current = Some((g, term));
                }
            }
            // A stale view from a node that has not heard of the new gateway yet.
            Some((_, cur_term)) if term < *cur_term => {}
            prev => {
                let from = prev.as_ref().map(|(p, _)| p.clone());
                // The latest fault that hit the old gateway while it was gateway; else the last
                // moment it was seen as gateway.
                let lost_at = from.as_ref().map(|p| {
                    self.losses
                        .iter()
                        .filter(|(lt, n)| n == p && *lt >= self.since && *lt <= t)
                        .map(|(lt, _)| *lt)
                        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
                        .unwrap_or(self.last_seen)
                        .min(t)
                });
                let failover_ms = lost_at.map_or(0.0, |l| (t - l) * 1000.0);
                self.changes.push(GatewayChange {
                    at_s: t,
                    from,
                    to: g.clone(),
                    term,
                    failover_ms,
                });
                self.current = Some((g, term));
                self.last_seen = t;
                self.since = t;
            }
        }
    }
}

/// The corridor while it runs.
struct Corridor {
    cluster: LocalCluster,
    cloud: CloudProc,
    cloud_down: bool,
    ids: Vec<String>,
    admin: AdminClient,
    states: Arc<Mutex<Vec<NodeState>>>,
    net: NetState,
    gateway: Arc<Mutex<GatewayLog>>,
    /// The node the last kill / pause of `gateway` hit.
    gateway_killed: Option<usize>,
    gateway_paused: Option<usize>,
    started: Instant,
    faults: Vec<FaultEvent>,
    /// Declared last, so the namespaces go after the processes in them.
    netns: Option<Netns>,
}

impl Corridor {
    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn index(&self, id: &str) -> Result<usize, RunError> {
        self.ids
            .iter()
            .position(|n| n == id)
            .ok_or_else(|| RunError::Failed(format!("no node `{id}` in this run")))
    }

    /// The gateway now, waiting up to 10 s for one to be known.
    async fn current_gateway(&self) -> Result<usize, RunError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let gw = lock(&self.gateway).current.clone();
            if let Some((g, _)) = gw {
                return self.index(&g);
            }
            if Instant::now() > deadline {
                return Err(RunError::Failed(
                    "a fault names `gateway`, and no gateway was known for 10 s".into(),
                ));
            }
            tokio::time::sleep(GATEWAY_EVERY).await;
        }
    }

    async fn resolve(&self, t: &Target) -> Result<usize, RunError> {
        match t {
            Target::Node(id) => self.index(id),
            Target::Gateway => self.current_gateway().await,
        }
    }

    fn lost(&self, i: usize) {
        let t = self.t();
        lock(&self.gateway).losses.push((t, self.ids[i].clone()));
    }

    /// Sends the network faults in force (and the node's own slowdown and quota) to node `i`.
    /// In namespaces the kernel keeps the network faults across a restart.
    async fn apply_to(&self, i: usize) -> Result<(), String> {
        let addr = self.cluster.nodes[i].listen;
        if self.netns.is_some() {
            within(self.admin.status(addr)).await?;
        } else {
            self.send_net(i).await?;
        }
        let st = lock(&self.states)[i].clone();
        if st.slowdown > 1.0 {
            within(self.admin.set_slowdown(addr, st.slowdown)).await?;
        }
        if st.quota_filled {
            within(self.admin.fill_disk(addr)).await?;
        }
        Ok(())
    }

    /// Gives node `i` the network faults in force through its fault layer.
    async fn send_net(&self, i: usize) -> Result<(), String> {
        let addr = self.cluster.nodes[i].listen;
        let partition = self
            .net
            .blocked(&self.ids[i])
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        within(
            self.admin
                .set_faults(addr, partition, self.net.loss_ppm, self.net.delay_ms),
        )
        .await?;
        Ok(())
    }

    /// Applies the network faults to every node that runs and is not paused (in namespaces: to
    /// every namespace, whatever runs in it).
    async fn apply_net(&self) {
        if let Some(ns) = &self.netns {
            for i in 0..self.ids.len() {
                let blocked: Vec<usize> = self
                    .net
                    .blocked(&self.ids[i])
                    .iter()
                    .filter_map(|b| self.ids.iter().position(|x| x == b))
                    .collect();
                if let Err(e) = ns.partition(i, &blocked) {
                    eprintln!("sim: routes in {}'s namespace: {e}", self.ids[i]);
                }
                let loss = f64::from(self.net.loss_ppm) / 1e6;
                if let Err(e) = ns.netem(i, loss, self.net.delay_ms) {
                    eprintln!("sim: netem in {}'s namespace: {e}", self.ids[i]);
                }
            }
            return;
        }
        let mut set = JoinSet::new();
        for i in 0..self.ids.len() {
            let st = lock(&self.states)[i].clone();
            if !st.running || st.paused {
                continue;
            }
            let addr = self.cluster.nodes[i].listen;
            let admin = self.admin.clone();
            let partition: Vec<verge_proto::NodeId> = self
                .net
                .blocked(&self.ids[i])
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect();
            let (loss, delay) = (self.net.loss_ppm, self.net.delay_ms);
            let id = self.ids[i].clone();
            set.spawn(async move {
                if let Err(e) = within(admin.set_faults(addr, partition, loss, delay)).await {
                    eprintln!("sim: could not set the network faults on {id}: {e}");
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Waits for a restarted or resumed node to answer, then gives it the faults in force.
    async fn reapply_when_up(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.apply_to(i).await {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!(
                        "sim: {} did not take the faults in force within 20 s: {e}",
                        self.ids[i]
                    );
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn apply(&mut self, fault: &Fault) -> Result<(), RunError> {
        let what = match &fault.what {
            FaultKind::Kill(t) => {
                let i = self.resolve(t).await?;
                self.lost(i);
                self.cluster.kill(i)?;
                lock(&self.states)[i].running = false;
                if *t == Target::Gateway {
                    self.gateway_killed = Some(i);
                }
                format!("kill {}{}", self.ids[i], gw_note(t))
            }
            FaultKind::Restart(t) => {
                let i = match t {
                    Target::Node(id) => self.index(id)?,
                    Target::Gateway => self.gateway_killed.take().ok_or_else(|| {
                        RunError::Failed("restart of `gateway` with no gateway killed".into())
                    })?,
                };
                self.cluster.start(i)?;
                {
                    let mut st = lock(&self.states);
                    st[i].running = true;
                    st[i].paused = false;
                }
                self.reapply_when_up(i).await;
                format!("restart {}", self.ids[i])
            }
            FaultKind::Pause(t) => {
                let i = self.resolve(t).await?;
                self.lost(i);
                self.cluster.signal(i, Signal::SIGSTOP)?;
                lock(&self.states)[i].paused = true;
                if *t == Target::Gateway {
                    self.gateway_paused = Some(i);
                }
                format!("pause {}{}", self.ids[i], gw_note(t))
            }
            FaultKind::Resume(t) => {
                let i = match t {
                    Target::Node(id) => self.index(id)?,
                    Target::Gateway => self.gateway_paused.take().ok_or_else(|| {
                        RunError::Failed("resume of `gateway` with no gateway paused".into())
                    })?,
                };
                self.cluster.signal(i, Signal::SIGCONT)?;
                lock(&self.states)[i].paused = false;
                self.reapply_when_up(i).await;
                format!("resume {}", self.ids[i])
            }
            FaultKind::Partition(groups) => {
                self.net.groups = groups.clone();
                for g in groups {
                    for id in g {
                        if let Ok(i) = self.index(id) {
                            self.lost(i);
                        }
                    }
                }
                self.apply_net().await;
                let g: Vec<String> = groups.iter().map(|g| g.join(",")).collect();
                format!("partition {}", g.join(" | "))
            }
            FaultKind::Heal => {
                self.net.groups.clear();
                self.apply_net().await;
                "heal".into()
            }
            FaultKind::Loss(share) => {
                self.net.loss_ppm = (share * 1e6).round() as u32;
                self.apply_net().await;
                format!("loss {:.1} %", share * 100.0)
            }
            FaultKind::Delay(ms) => {
                self.net.delay_ms = u32::try_from(*ms).unwrap_or(u32::MAX);
                self.apply_net().await;
                format!("delay {ms} ms")
            }
            FaultKind::SlowInference(t, factor) => {
                let i = self.resolve(t).await?;
                lock(&self.states)[i].slowdown = *factor;
                let addr = self.cluster.nodes[i].listen;
                if let Err(e) = within(self.admin.set_slowdown(addr, *factor)).await {
                    eprintln!("sim: slowing {}: {e}", self.ids[i]);
                }
                format!("slow inference {} x{factor}", self.ids[i])
            }
            FaultKind::CloudDown => {
                self.cloud.kill();
                self.cloud_down = true;
                "cloud down".into()
            }
            FaultKind::CloudUp => {
                self.cloud.restart()?;
                self.cloud_down = false;
                "cloud up".into()
            }
            FaultKind::FillDisk(t) => {
                let i = self.resolve(t).await?;
                lock(&self.states)[i].quota_filled = true;
                let addr = self.cluster.nodes[i].listen;
                if let Err(e) = within(self.admin.fill_disk(addr)).await {
                    eprintln!("sim: filling the quota of {}: {e}", self.ids[i]);
                }
                format!("fill disk quota of {}", self.ids[i])
            }
        };
        let t = self.t();
        self.faults.push(FaultEvent {
            at_s: t,
            what: what.clone(),
        });
        Ok(())
    }
}

fn gw_note(t: &Target) -> &'static str {
    if *t == Target::Gateway {
        " (gateway)"
    } else {
        ""
    }
}

/// An admin call bounded by [`ADMIN_TIMEOUT`], its error as text.
async fn within<T, E: std::fmt::Display>(
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(ADMIN_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {ADMIN_TIMEOUT:?}")),
    }
}

/// Resident, proportional and private (anonymous) memory of `pid`, in MiB.
fn memory_mib(pid: u32) -> Option<(f64, f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let kb: f64 = s
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    };
    Some((field("Rss:")?, field("Pss:")?, field("Anonymous:")?))
}

/// The TOML every node gets besides its identity: faults on, voters, replication, windows,
/// model.
fn common_config(s: &Scenario, model: Option<&Path>, window_ms: u64, lateness_ms: u64) -> String {
    let voters: Vec<String> = s.voters.iter().map(|v| format!("{v:?}")).collect();
    let mut toml = format!(
        "\n[faults]\nenabled = true\n\n[control]\nvoters = [{}]\n\n[replication]\nreplicas = {}\nwrite_quorum = {}\n\n[aggregation]\nwindow_ms = {window_ms}\nallowed_lateness_ms = {lateness_ms}\n",
        voters.join(", "),
        s.replicas,
        s.write_quorum,
    );
    if let Some(m) = model {
        let _ = write!(toml, "\n[inference]\nmodel = {m:?}\n");
    }
    toml
}

/// One node's sample and the counters it was computed from.
#[derive(Debug, Clone, Default)]
struct Counters {
    readings: Option<u64>,
    rows: u64,
    offloaded: u64,
}

async fn sample_node(
    admin: &AdminClient,
    addr: SocketAddr,
    prev: &Counters,
    dt: f64,
) -> (NodeSample, Counters) {
    let mut s = NodeSample::default();
    let mut c = Counters::default();
    if let Ok(st) = within(admin.status(addr)).await {
        let readings = st.sensor.as_ref().map(|x| x.readings);
        // No rate from the first answer: its count covers the time before the run started.
        if let (Some(r), Some(before)) = (readings, prev.readings) {
            // A restarted node counts from 0 again.
            let before = if before <= r { before } else { 0 };
            if dt > 0.0 {
                s.readings_per_s = Some((r - before) as f64 / dt);
            }
        }
        c.readings = readings;
        c.rows = st.inference.rows;
        c.offloaded = st.inference.offloaded_rows;
        s.inference_p99_ms = (st.inference.batches > 0).then_some(st.inference.recent_p99_ms);
        let rows = c.rows.saturating_sub(prev.rows);
        let off = c.offloaded.saturating_sub(prev.offloaded);
        s.offloaded_share = Some(if rows == 0 {
            0.0
        } else {
            (off as f64 / rows as f64).min(1.0)
        });
    }
    if let Ok(streams) = within(admin.streams(addr)).await {
        let lag = streams
            .iter()
            .filter_map(|v| match &v.role {
                StreamRole::Owner { replicas, .. } => replicas.iter().map(|r| r.lag).max(),
                StreamRole::Copy => None,
            })
            .max()
            .unwrap_or(0);
        s.lag = Some(lag);
    }
    (s, c)
}

/// Runs `scenario` and judges it. `Ok` carries the report whether or not the invariants held;
/// `Err` means the run itself could not be carried out.
pub async fn run(
    scenario: &Scenario,
    opts: &RunOptions,
    mut hooks: Hooks,
) -> Result<Report, RunError> {
    if scenario.traffic.source == Source::SumoLive {
        return Err(RunError::Unsupported(
            "traffic source `sumo-live` is not run by `verge sim` yet: use `sumo-replay` (the nodes' own TraCI source works through `verge node` configs)".into(),
        ));
    }
    let seed = opts.seed.or(scenario.seed).unwrap_or_else(random_seed);
    let duration_s = opts.duration_s.unwrap_or(scenario.duration_s);
    let scale = duration_s / scenario.duration_s;
    std::fs::create_dir_all(&opts.out).map_err(|source| RunError::Io {
        what: format!("creating {}", opts.out.display()),
        source,
    })?;
    let say = |line: String| {
        if opts.progress {
            println!("{line}");
        }
    };
    say(format!(
        "verge sim: {} — {} nodes, {:.0} s{}, seed {seed}",
        scenario.name,
        scenario.nodes.len(),
        duration_s,
        if (scale - 1.0).abs() > 1e-9 {
            format!(
                " (scenario {:.0} s; fault times scaled x{scale:.3})",
                scenario.duration_s
            )
        } else {
            String::new()
        }
    ));

    // --- Lay out -------------------------------------------------------------------------
    let sumo = scenario.traffic.source == Source::SumoReplay;
    let (window_ms, lateness_ms) = if sumo {
        let speed = scenario.traffic.speed.max(1.0);
        (
            (WINDOW_MS as f64 * speed * 2.0) as u64,
            (LATENESS_MS as f64 * speed * 2.0) as u64,
        )
    } else {
        (WINDOW_MS, LATENESS_MS)
    };
    let mut spec = ClusterSpec::corridor(opts.verge_bin.clone(), scenario.nodes.len());
    spec.ids = scenario.nodes.clone();
    spec.cluster = CLUSTER.into();
    spec.keep_dir = opts.keep;
    spec.own_process_group = true;
    let corridor_layout = scenario.neighbours.iter().all(|(id, n)| {
        let i = scenario.nodes.iter().position(|x| x == id).unwrap_or(0);
        let mut want = Vec::new();
        if i > 0 {
            want.push(scenario.nodes[i - 1].clone());
        }
        if i + 1 < scenario.nodes.len() {
            want.push(scenario.nodes[i + 1].clone());
        }
        *n == want
    });
    if !corridor_layout {
        spec.neighbours = Some(scenario.neighbours.clone());
    }
    spec.extra_config = common_config(scenario, opts.model.as_deref(), window_ms, lateness_ms);
    let netns = if opts.netns {
        let subnet = (std::process::id() % 200) as u8 + 20;
        let ns = Netns::create(scenario.nodes.len(), subnet)
            .map_err(|e| RunError::Unsupported(e.to_string()))?;
        let wants_netem = scenario
            .faults
            .iter()
            .any(|f| matches!(f.what, FaultKind::Loss(_) | FaultKind::Delay(_)));
        if wants_netem {
            ns.check_netem()
                .map_err(|e| RunError::Unsupported(format!("{e}; run this scenario without --netns (the nodes' fault layer makes loss and delay)")))?;
        }
        spec.addresses = Some((0..scenario.nodes.len()).map(|i| ns.ip(i)).collect());
        spec.wrap = Some(
            (0..scenario.nodes.len())
                .map(|i| ns.exec_prefix(i))
                .collect(),
        );
        say(format!(
            "network namespaces {}n0..: nodes on 10.213.{subnet}.2.., partitions by blackhole routes{}",
            ns.tag(),
            if wants_netem {
                ", loss and delay by tc netem"
            } else {
                ""
            }
        ));
        Some(ns)
    } else {
        None
    };
    let cluster = LocalCluster::create(&spec)?;
    let root = cluster.root().to_owned();
    let cloud_dir = root.join("cloud");
    let token = format!("{:016x}{:016x}", random_seed(), seed);
    let mut cloud_spec = CloudSpec::new(opts.verge_bin.clone(), cloud_dir, token.clone());
    cloud_spec.own_process_group = true;
    cloud_spec.extra = vec!["--faults".into()];
    if let Some(ns) = &netns {
        cloud_spec.listen_ip = std::net::IpAddr::V4(ns.host);
    }
    let cloud = CloudProc::start(cloud_spec)?;

    let mut sensors: Vec<String> = Vec::new();
    if sumo {
        let grid = root.join("sumo");
        let t0 = Instant::now();
        crate::sumo::make_grid(&opts.make_grid, &grid, &["--freq", "5", "--end", "900"])?;
        say(format!(
            "SUMO grid run in {:.1} s; replayed at {}x",
            t0.elapsed().as_secs_f64(),
            scenario.traffic.speed
        ));
        let out = grid.join("out");
        if scenario.nodes.len() > SUMO_LIGHTS.len() {
            return Err(RunError::Unsupported(format!(
                "SUMO replay gives each node one of the grid's {} traffic lights; this scenario has {} nodes",
                SUMO_LIGHTS.len(),
                scenario.nodes.len()
            )));
        }
        for (i, id) in scenario.nodes.iter().enumerate() {
            let own = id.to_uppercase();
            let light = if SUMO_LIGHTS.contains(&own.as_str()) {
                own
            } else {
                SUMO_LIGHTS[i].to_owned()
            };
            sensors.push(format!(
                "\n[sensors.replay]\ndetectors = {:?}\ne1 = {:?}\ne2 = {:?}\ntls = [{light:?}]\nspeed = {}\n",
                grid.join("detectors.add.xml"),
                out.join("e1.xml"),
                out.join("e2.xml"),
                scenario.traffic.speed,
            ));
        }
    } else {
        for (i, _) in scenario.nodes.iter().enumerate() {
            let mut toml = format!(
                "\n[sensors.synthetic]\nsensors = {}\nrate_per_s = {}\nseed = {}\npattern = {{ kind = \"peaks\", period_s = 60.0, amplitude = 0.5 }}\n",
                scenario.traffic.sensors,
                opts.rate_per_s.unwrap_or(scenario.traffic.rate_per_s),
                seed.wrapping_add(i as u64)
            );
            if corridor_layout && i > 0 && opts.model.is_some() {
                let _ = write!(
                    toml,
                    "\n[sharing]\n[sharing.feeds.all]\nstraight = \"{}/all\"\n",
                    scenario.nodes[i - 1]
                );
            }
            sensors.push(toml);
        }
    }
    let cloud_section = cloud.node_config(CLUSTER);
    for (node, sensor) in cluster.nodes.iter().zip(&sensors) {
        let mut text = std::fs::read_to_string(&node.config).map_err(|source| RunError::Io {
            what: format!("reading {}", node.config.display()),
            source,
        })?;
        text.push_str(sensor);
        text.push_str(&cloud_section);
        std::fs::write(&node.config, text).map_err(|source| RunError::Io {
            what: format!("writing {}", node.config.display()),
            source,
        })?;
    }

    let admin = cluster.admin().reusing_connections();
    let n = scenario.nodes.len();
    let mut c = Corridor {
        cluster,
        cloud,
        cloud_down: false,
        ids: scenario.nodes.clone(),
        admin: admin.clone(),
        states: Arc::new(Mutex::new(vec![
            NodeState {
                running: true,
                slowdown: 1.0,
                ..NodeState::default()
            };
            n
        ])),
        net: NetState::default(),
        gateway: Arc::new(Mutex::new(GatewayLog::default())),
        gateway_killed: None,
        gateway_paused: None,
        started: Instant::now(),
        faults: Vec::new(),
        netns,
    };
    say(format!(
        "cluster in {} (kept: {}); cloud at {}",
        root.display(),
        opts.keep,
        c.cloud.url()
    ));

    // --- Run -----------------------------------------------------------------------------
    c.cluster.start_all()?;
    let all: Vec<usize> = (0..n).collect();
    if let Err(e) = c.cluster.wait_for_mesh(&all, FORM_TIMEOUT).await {
        let mut report = String::new();
        for i in 0..n {
            let log = c.cluster.log(i);
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let _ = write!(report, "\n--- {} ---\n{}", c.ids[i], tail.join("\n"));
        }
        return Err(RunError::Failed(format!("{e}{report}")));
    }
    c.started = Instant::now();
    let start_ms = now_ms();
    say(format!("mesh formed; running for {duration_s:.0} s"));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<AckedReading>>> = Arc::default();
    let mut producers = JoinSet::new();
    for i in 0..n {
        let admin = admin.clone();
        let addr = c.cluster.nodes[i].listen;
        let states = Arc::clone(&c.states);
        let stop = Arc::clone(&stop);
        let acked = Arc::clone(&acked);
        let started = c.started;
        let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        producers.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(PROBE_EVERY).await;
                let st = lock(&states)[i].clone();
                if !st.running || st.paused {
                    continue;
                }
                let ts = now_ms();
                let batch: Vec<IngestReading> = (0..PROBE_BATCH)
                    .map(|k| IngestReading {
                        sensor: PROBE_SENSOR.into(),
                        record: Record {
                            ts_ms: ts + k as i64,
                            values: vec![
                                (rng.next() % 40) as f64,
                                (rng.unit() * 1000.0).round() / 10.0,
                                rng.unit() * 30.0,
                                (rng.next() % 20) as f64,
                            ],
                        },
                    })
                    .collect();
                let records: Vec<Record> = batch.iter().map(|r| r.record.clone()).collect();
                if let Ok((acks, _)) = within(admin.ingest(addr, batch)).await {
                    let at_s = started.elapsed().as_secs_f64();
                    let mut out = lock(&acked);
                    for a in acks {
                        let stream = a.stream.to_string();
                        for (seq, r) in (a.first_seq..=a.last_seq).zip(records.iter()) {
                            out.push(AckedReading {
                                stream: stream.clone(),
                                seq,
                                record: r.clone(),
                                at_s,
                            });
                        }
                    }
                }
            }
        });
    }

    // The gateway watcher: asks a running node (in turn) every 100 ms.
    let watcher = {
        let admin = admin.clone();
        let addrs: Vec<SocketAddr> = c.cluster.nodes.iter().map(|x| x.listen).collect();
        let states = Arc::clone(&c.states);
        let log = Arc::clone(&c.gateway);
        let stop = Arc::clone(&stop);
        let started = c.started;
        tokio::spawn(async move {
            let mut k = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k = k.wrapping_add(1);
                let live: Vec<usize> = {
                    let st = lock(&states);
                    (0..addrs.len())
                        .filter(|&i| st[i].running && !st[i].paused)
                        .collect()
                };
                if let Some(&i) = live.get(k % live.len().max(1))
                    && let Ok(Ok(v)) =
                        tokio::time::timeout(Duration::from_millis(500), admin.gateway(addrs[i]))
                            .await
                {
                    let t = started.elapsed().as_secs_f64();
                    lock(&log).observe(t, v.gateway.map(|g| (g.to_string(), v.term)));
                }
                tokio::time::sleep(GATEWAY_EVERY).await;
            }
        })
    };

    let faults: Vec<Fault> = scenario
        .faults
        .iter()
        .cloned()
        .map(|mut f| {
            f.at_s *= scale;
            f
        })
        .collect();
    let mut next_fault = 0usize;
    let mut samples: Vec<Sample> = Vec::new();
    let mut counters: Vec<Counters> = vec![Counters::default(); n];
    let mut sensor_total: u64 = 0;
    let mut max_rss: BTreeMap<String, f64> = BTreeMap::new();
    let mut max_pss: BTreeMap<String, f64> = BTreeMap::new();
    let mut max_private: BTreeMap<String, f64> = BTreeMap::new();
    let mut last_sample = c.started;
    let mut next_sample = c.started;
    let mut next_progress = c.started + PROGRESS_EVERY;
    let end = c.started + Duration::from_secs_f64(duration_s);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        while next_fault < faults.len()
            && c.started + Duration::from_secs_f64(faults[next_fault].at_s) <= Instant::now()
        {
            let f = faults[next_fault].clone();
            next_fault += 1;
            c.apply(&f).await?;
            if let Some(e) = c.faults.last() {
                say(format!("t={:>5.1}s  fault: {}", e.at_s, e.what));
            }
        }
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let dt = last_sample.elapsed().as_secs_f64();
            last_sample = Instant::now();
            let sample = take_sample(&mut c, &counters, dt).await;
            for (i, (s, cnt)) in sample.1.into_iter().enumerate() {
                if let Some(rate) = s.readings_per_s {
                    sensor_total += (rate * dt).round() as u64;
                }
                for (value, max) in [
                    (s.rss_mib, &mut max_rss),
                    (s.pss_mib, &mut max_pss),
                    (s.private_mib, &mut max_private),
                ] {
                    if let Some(v) = value {
                        let e = max.entry(c.ids[i].clone()).or_insert(0.0);
                        *e = e.max(v);
                    }
                }
                if cnt.readings.is_some() {
                    counters[i] = cnt;
                }
            }
            samples.push(sample.0);
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            if let Some(s) = samples.last() {
                say(progress_line(s, lock(&acked).len(), c.cloud_down));
            }
        }
        let wake = [
            next_sample,
            end,
            faults
                .get(next_fault)
                .map_or(end, |f| c.started + Duration::from_secs_f64(f.at_s)),
        ]
        .into_iter()
        .min()
        .unwrap_or(end);
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }
    let ran_s = c.started.elapsed().as_secs_f64();

    // --- Settle --------------------------------------------------------------------------
    say("settling: healing every fault, restarting what is down, stopping the producer".into());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while producers.join_next().await.is_some() {}
    c.net = NetState::default();
    for i in 0..n {
        let st = lock(&c.states)[i].clone();
        if !st.running {
            c.cluster.start(i)?;
        } else if st.paused {
            c.cluster.signal(i, Signal::SIGCONT)?;
        }
        let mut s = lock(&c.states);
        s[i].running = true;
        s[i].paused = false;
        s[i].slowdown = 1.0;
    }
    if c.cloud_down {
        c.cloud.restart()?;
        c.cloud_down = false;
    }
    c.apply_net().await;
    for i in 0..n {
        let addr = c.cluster.nodes[i].listen;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let healed = if c.netns.is_some() {
                within(admin.status(addr)).await.map(|_| ())
            } else {
                within(admin.set_faults(addr, Vec::new(), 0, 0))
                    .await
                    .map(|_| ())
            };
            if healed.is_ok() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = within(admin.set_slowdown(addr, 1.0)).await;
    }
    c.cluster
        .wait_for_mesh(&all, FORM_TIMEOUT)
        .await
        .map_err(|e| RunError::Failed(format!("after the settle: {e}")))?;
    // Give the gateway watcher a last look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();

    let settle_start = Instant::now();
    let cuts = stream_cuts(&c, &admin).await?;
    let settled = wait_settled(&c, &admin, &cuts, opts.settle_timeout).await;
    say(format!(
        "settled in {:.1} s{}",
        settle_start.elapsed().as_secs_f64(),
        match &settled {
            Ok(()) => String::new(),
            Err(e) => format!(" (not fully: {e})"),
        }
    ));

    let live = Live {
        cloud_url: c.cloud.url().to_owned(),
        cloud_cert: c.cloud.cert(),
        cloud_token: token.clone(),
        cluster: CLUSTER.into(),
        verge_bin: opts.verge_bin.clone(),
        nodes: c
            .ids
            .iter()
            .cloned()
            .zip(c.cluster.nodes.iter().map(|x| x.listen))
            .collect(),
    };
    if let Some(hook) = hooks.before_check.take() {
        hook(live).await;
    }

    // --- Check ---------------------------------------------------------------------------
    say("checking: reading every replica and the cloud back".into());
    // The settle leaves `quota_filled` as the faults set it.
    let quota_filled: BTreeSet<String> = lock(&c.states)
        .iter()
        .zip(&c.ids)
        .filter(|(s, _)| s.quota_filled)
        .map(|(_, id)| id.clone())
        .collect();
    let mut obs = Observations {
        acked: std::mem::take(&mut *lock(&acked)),
        ..Observations::default()
    };
    read_back(&c, &admin, &cuts, &quota_filled, &mut obs).await?;
    let client = c
        .cloud
        .client(Duration::from_secs(10))
        .map_err(|e| RunError::Failed(format!("a client of the cloud: {e}")))?;
    // The cloud's own counts first, its windows after: the gateway keeps posting meanwhile, so
    // the windows read can only be more than the counts, never fewer, unless one is held twice.
    let summary = client
        .summary()
        .await
        .map_err(|e| RunError::Failed(format!("the cloud's summary: {e}")))?;
    for s in summary.streams.iter().filter(|s| s.cluster == CLUSTER) {
        obs.cloud_counts.insert(s.stream.clone(), s.windows);
    }
    for (stream, produced) in &obs.produced {
        if produced.is_empty() {
            continue;
        }
        let windows = client
            .windows_of_cluster(CLUSTER, stream, 0, u64::MAX)
            .await
            .map_err(|e| RunError::Failed(format!("reading {stream} from the cloud: {e}")))?;
        obs.cloud.insert(
            stream.clone(),
            windows
                .into_iter()
                .map(|w| {
                    (
                        w.seq,
                        CloudWindow {
                            ts_ms: w.ts_ms,
                            values: w.values,
                        },
                    )
                })
                .collect(),
        );
    }
    let batches = client
        .all_batches(CLUSTER)
        .await
        .map_err(|e| RunError::Failed(format!("the cloud's batch log: {e}")))?;
    obs.batches = batches
        .into_iter()
        .map(|b| AcceptedBatch {
            accepted: b.accepted,
            stream: b.stream,
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            term: b.term,
            gateway: b.gateway,
        })
        .collect();
    if let Some(tamper) = hooks.tamper.take() {
        tamper(&mut obs);
    }

    let mut verdict = check::Verdict::default();
    check::check_acknowledged(&obs.acked, &obs.streams, &mut verdict);
    check::check_converged(&obs.streams, &mut verdict);
    check::check_cloud(
        &obs.produced,
        &obs.cloud,
        &obs.cloud_counts,
        start_ms,
        &mut verdict,
    );
    check::check_terms(&obs.batches, &mut verdict);

    let gw = lock(&c.gateway);
    let changes = gw.changes.clone();
    drop(gw);
    let failovers_ms: Vec<f64> = changes
        .iter()
        .filter(|g| g.from.is_some())
        .map(|g| g.failover_ms)
        .collect();
    let windows_produced: u64 = obs.produced.values().map(|w| w.len() as u64).sum();
    let windows_in_cloud: u64 = obs.cloud_counts.values().sum();
    let acknowledged = obs.acked.len() as u64;
    let report = Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed,
        duration_s: ran_s,
        nodes: scenario.nodes.clone(),
        passed: verdict.passed(),
        lost_acknowledged: verdict.lost_acknowledged,
        cloud_missing: verdict.cloud_missing,
        cloud_duplicates: verdict.cloud_duplicates,
        stale_term_accepted: verdict.stale_term_accepted,
        replicas_diverged: verdict.replicas_diverged,
        failovers_ms,
        readings_per_s: (sensor_total + acknowledged) as f64 / ran_s.max(1e-9),
        acknowledged_readings: acknowledged,
        sensor_readings: sensor_total,
        windows_produced,
        windows_in_cloud,
        max_rss_mib: max_rss,
        max_pss_mib: max_pss,
        max_private_mib: max_private,
        violations: verdict.violations,
        faults: c.faults.clone(),
        gateway_changes: changes,
        samples,
    };
    write_report(&report, &opts.out)?;
    if opts.keep {
        let kept = opts.out.join("cluster");
        let _ = std::fs::remove_file(&kept);
        let _ = std::os::unix::fs::symlink(&root, &kept);
    }
    // Stop the cloud before the cluster's directory (which holds its data) goes.
    let _ = c.cloud.terminate(Duration::from_secs(5));
    drop(c);
    Ok(report)
}

fn progress_line(s: &Sample, acked: usize, cloud_down: bool) -> String {
    let rate: f64 = s.nodes.values().filter_map(|x| x.readings_per_s).sum();
    let lag = s.nodes.values().filter_map(|x| x.lag).max().unwrap_or(0);
    let up = s.nodes.values().filter(|x| x.up).count();
    let gw = match &s.gateway {
        Some(g) => format!("gateway {g} (term {})", s.term),
        None => "no gateway".into(),
    };
    let backlog = match (cloud_down, s.cloud_backlog) {
        (true, _) => "cloud DOWN".to_owned(),
        (false, Some(b)) => format!("cloud backlog {b}"),
        (false, None) => "cloud backlog ?".to_owned(),
    };
    format!(
        "t={:>5.1}s  {up}/{} up  {rate:>8.0} readings/s  max lag {lag}  {gw}  {backlog}  acknowledged {acked}",
        s.t_s,
        s.nodes.len()
    )
}

/// Samples every node (concurrently) and the gateway's sync view.
async fn take_sample(
    c: &mut Corridor,
    counters: &[Counters],
    dt: f64,
) -> (Sample, Vec<(NodeSample, Counters)>) {
    let t = c.t();
    let mut set = JoinSet::new();
    for (i, prev) in counters.iter().enumerate() {
        let st = lock(&c.states)[i].clone();
        let running = c.cluster.is_running(i);
        let pid = c.cluster.nodes[i].pid();
        let admin = c.admin.clone();
        let addr = c.cluster.nodes[i].listen;
        let prev = prev.clone();
        set.spawn(async move {
            let (mut s, cnt) = if running && !st.paused {
                sample_node(&admin, addr, &prev, dt).await
            } else {
                (NodeSample::default(), Counters::default())
            };
            s.up = running;
            if let Some((rss, pss, private)) = pid.filter(|_| running).and_then(memory_mib) {
                s.rss_mib = Some(rss);
                s.pss_mib = Some(pss);
                s.private_mib = Some(private);
            }
            (i, s, cnt)
        });
    }
    let mut per: Vec<(NodeSample, Counters)> = vec![Default::default(); c.ids.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, s, cnt)) = r {
            per[i] = (s, cnt);
        }
    }
    let gw = lock(&c.gateway).current.clone();
    let mut sample = Sample {
        t_s: t,
        gateway: gw.as_ref().map(|(g, _)| g.clone()),
        term: gw.as_ref().map_or(0, |(_, t)| *t),
        cloud_backlog: None,
        nodes: BTreeMap::new(),
    };
    if let Some((g, _)) = &gw
        && let Ok(i) = c.index(g)
        && let Ok(view) = within(c.admin.sync(c.cluster.nodes[i].listen)).await
    {
        sample.cloud_backlog = Some(view.streams.iter().map(|s| s.backlog).sum());
    }
    for (i, (s, _)) in per.iter().enumerate() {
        sample.nodes.insert(c.ids[i].clone(), s.clone());
    }
    (sample, per)
}

/// For every stream: its owner, its replicas, and the owner's durable head now (the cut).
#[derive(Debug, Clone)]
struct Cut {
    owner: usize,
    kind: StreamKind,
    first_seq: u64,
    head: u64,
    replicas: Vec<String>,
}

async fn stream_cuts(c: &Corridor, admin: &AdminClient) -> Result<BTreeMap<String, Cut>, RunError> {
    let mut cuts = BTreeMap::new();
    for (i, node) in c.cluster.nodes.iter().enumerate() {
        let views = within(admin.streams(node.listen))
            .await
            .map_err(|e| RunError::Failed(format!("listing {}'s streams: {e}", c.ids[i])))?;
        for v in views {
            if let StreamRole::Owner { replicas, .. } = &v.role {
                cuts.insert(
                    v.id.to_string(),
                    Cut {
                        owner: i,
                        kind: v.id.kind,
                        first_seq: v.first_seq,
                        head: v.durable_head,
                        replicas: replicas.iter().map(|r| r.node.to_string()).collect(),
                    },
                );
            }
        }
    }
    Ok(cuts)
}

/// Waits until every replica holds its stream up to the cut and the cloud every aggregate
/// window up to it.
async fn wait_settled(
    c: &Corridor,
    admin: &AdminClient,
    cuts: &BTreeMap<String, Cut>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let client = c
        .cloud
        .client(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    loop {
        let mut behind = Vec::new();
        for (i, node) in c.cluster.nodes.iter().enumerate() {
            let Ok(views) = within(admin.streams(node.listen)).await else {
                behind.push(format!("{} does not answer", c.ids[i]));
                continue;
            };
            for v in views {
                let Some(cut) = cuts.get(&v.id.to_string()) else {
                    continue;
                };
                if let StreamRole::Owner { replicas, .. } = &v.role {
                    for r in replicas {
                        if r.hwm < cut.head {
                            behind.push(format!(
                                "{} copy on {} at {} of {}",
                                v.id, r.node, r.hwm, cut.head
                            ));
                        }
                    }
                }
            }
        }
        if let Ok(summary) = client.summary().await {
            let held: BTreeMap<&str, u64> = summary
                .streams
                .iter()
                .filter(|s| s.cluster == CLUSTER)
                .map(|s| (s.stream.as_str(), s.last_seq))
                .collect();
            for (id, cut) in cuts
                .iter()
                .filter(|(_, k)| k.kind == StreamKind::Aggregates)
            {
                let last = held.get(id.as_str()).copied().unwrap_or(0);
                if last < cut.head {
                    behind.push(format!("{id} in the cloud at {last} of {}", cut.head));
                }
            }
        } else {
            behind.push("the cloud does not answer".into());
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let more = behind.len().saturating_sub(5);
            behind.truncate(5);
            return Err(format!(
                "after {timeout:?}: {}{}",
                behind.join("; "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn query_range(
    admin: &AdminClient,
    addr: SocketAddr,
    view: &StreamView,
    from: u64,
    to: u64,
) -> Result<BTreeMap<u64, Record>, String> {
    let mut out = BTreeMap::new();
    let mut at = from;
    while at <= to {
        let page_to = to.min(at + QUERY_PAGE - 1);
        let recs = tokio::time::timeout(
            Duration::from_secs(10),
            admin.query(addr, view.id.clone(), at, page_to, QUERY_PAGE as u32),
        )
        .await
        .map_err(|_| format!("reading {} {at}..={page_to}: no answer in 10 s", view.id))?
        .map_err(|e| format!("reading {} {at}..={page_to}: {e}", view.id))?;
        out.extend(recs);
        at = page_to + 1;
    }
    Ok(out)
}

/// Reads every stream back from every holder, over the range that is checked.
async fn read_back(
    c: &Corridor,
    admin: &AdminClient,
    cuts: &BTreeMap<String, Cut>,
    quota_filled: &BTreeSet<String>,
    obs: &mut Observations,
) -> Result<(), RunError> {
    // Each node's own view of every stream it holds.
    let mut views: Vec<BTreeMap<String, StreamView>> = Vec::new();
    for (i, node) in c.cluster.nodes.iter().enumerate() {
        let v = within(admin.streams(node.listen))
            .await
            .map_err(|e| RunError::Failed(format!("listing {}'s streams: {e}", c.ids[i])))?;
        views.push(v.into_iter().map(|s| (s.id.to_string(), s)).collect());
    }
    let mut acked_from: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &obs.acked {
        let e = acked_from.entry(a.stream.as_str()).or_insert(a.seq);
        *e = (*e).min(a.seq);
    }
    for (id, cut) in cuts {
        let mut holders = vec![cut.owner];
        for r in &cut.replicas {
            if let Ok(i) = c.index(r) {
                holders.push(i);
            }
        }
        let lo_tail = cut
            .head
            .saturating_sub(CONVERGE_TAIL - 1)
            .max(cut.first_seq)
            .max(1);
        let lo = acked_from
            .get(id.as_str())
            .map_or(lo_tail, |&a| a.min(lo_tail));
        let mut holdings = StreamHoldings {
            holders: Vec::new(),
            quota_filled: quota_filled.contains(&c.ids[cut.owner]),
        };
        for &i in &holders {
            let Some(view) = views[i].get(id) else {
                holdings.holders.push(Holding {
                    node: c.ids[i].clone(),
                    ..Holding::default()
                });
                continue;
            };
            let to = cut.head.min(view.durable_head);
            let from = lo.max(view.first_seq).max(1);
            let records = if from <= to {
                query_range(admin, c.cluster.nodes[i].listen, view, from, to)
                    .await
                    .map_err(|e| RunError::Failed(format!("{} on {}: {e}", id, c.ids[i])))?
            } else {
                BTreeMap::new()
            };
            // A node whose quota was filled keeps dropping its oldest readings as new ones
            // arrive, so its first record may have moved on since it was listed.
            let first_seq = if quota_filled.contains(&c.ids[i]) {
                records
                    .keys()
                    .next()
                    .map_or(view.first_seq, |&k| k.max(view.first_seq))
            } else {
                view.first_seq
            };
            holdings.holders.push(Holding {
                node: c.ids[i].clone(),
                first_seq,
                durable_head: to,
                records,
            });
        }
        if cut.kind == StreamKind::Aggregates
            && let Some(owner) = holdings.holders.first()
        {
            // Every window the owner produced up to the cut, from its first held.
            let first = views[cut.owner].get(id).map_or(1, |v| v.first_seq.max(1));
            let mut produced = owner.records.clone();
            if first < lo {
                let more = query_range(
                    admin,
                    c.cluster.nodes[cut.owner].listen,
                    &views[cut.owner][id],
                    first,
                    lo - 1,
                )
                .await
                .map_err(|e| RunError::Failed(format!("{id}: {e}")))?;
                produced.extend(more);
            }
            obs.produced.insert(id.clone(), produced);
        }
        obs.streams.insert(id.clone(), holdings);
    }
    Ok(())
}

/// Writes `report.json` and `report.html` into `out`.
pub fn write_report(report: &Report, out: &Path) -> Result<(), RunError> {
    let json = serde_json::to_string_pretty(report).map_err(|e| RunError::Io {
        what: "encoding report.json".into(),
        source: std::io::Error::other(e),
    })?;
    let path = out.join("report.json");
    std::fs::write(&path, json).map_err(|source| RunError::Io {
        what: format!("writing {}", path.display()),
        source,
    })?;
    let path = out.join("report.html");
    std::fs::write(&path, crate::report_html::render(report)).map_err(|source| RunError::Io {
        what: format!("writing {}", path.display()),
        source,
    })?;
    Ok(())
}

/// The terminal summary of a report.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} — {} ({} nodes, {:.0} s, seed {})",
        r.scenario,
        if r.passed { "PASSED" } else { "FAILED" },
        r.nodes.len(),
        r.duration_s,
        r.seed
    );
    let _ = writeln!(
        s,
        "  readings/s {:.0} (sensors {}, producer acknowledged {}); windows produced {}, in the cloud {}",
        r.readings_per_s,
        r.sensor_readings,
        r.acknowledged_readings,
        r.windows_produced,
        r.windows_in_cloud
    );
    let max_fo = r.failovers_ms.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        s,
        "  gateway changes {} (failovers {}, max {:.0} ms); faults applied {}",
        r.gateway_changes.len(),
        r.failovers_ms.len(),
        max_fo,
        r.faults.len()
    );
    let most = |m: &BTreeMap<String, f64>| m.values().copied().fold(0.0, f64::max);
    let _ = writeln!(
        s,
        "  largest node memory: resident {:.1} MiB, proportional {:.1} MiB, private {:.1} MiB",
        most(&r.max_rss_mib),
        most(&r.max_pss_mib),
        most(&r.max_private_mib)
    );
    let _ = writeln!(
        s,
        "  acknowledged readings lost: {} ({} bytes of readings)",
        r.lost_acknowledged,
        r.lost_acknowledged * READING_BYTES
    );
    let _ = writeln!(
        s,
        "  lost_acknowledged {}  cloud_missing {}  cloud_duplicates {}  stale_term_accepted {}  replicas_diverged {}",
        r.lost_acknowledged,
        r.cloud_missing,
        r.cloud_duplicates,
        r.stale_term_accepted,
        r.replicas_diverged
    );
    for v in &r.violations {
        let _ = writeln!(
            s,
            "  VIOLATION {}: {} seq {}{}: {}",
            v.invariant,
            v.stream,
            v.seq,
            v.at_s.map_or(String::new(), |t| format!(" (t={t:.1}s)")),
            v.detail
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_cuts_each_group_from_the_others_only() {
        let net = NetState {
            groups: vec![vec!["b1".into(), "b2".into()], vec!["b3".into()]],
            ..NetState::default()
        };
        assert_eq!(net.blocked("b1"), vec!["b3".to_owned()]);
        assert_eq!(net.blocked("b3"), vec!["b1".to_owned(), "b2".to_owned()]);
        assert!(net.blocked("b4").is_empty());
    }

    #[test]
    fn failover_counts_from_the_fault_that_hit_the_gateway() {
        let mut g = GatewayLog::default();
        g.observe(1.0, Some(("b1".into(), 2)));
        g.observe(5.0, Some(("b1".into(), 2)));
        g.losses.push((5.2, "b1".into()));
        // A node that has not heard yet still names the old gateway with the old term.
        g.observe(5.3, Some(("b1".into(), 2)));
        g.observe(5.5, Some(("b2".into(), 3)));
        g.observe(5.6, Some(("b1".into(), 2)));
        assert_eq!(g.changes.len(), 2);
        assert_eq!(g.changes[0].from, None);
        let fo = &g.changes[1];
        assert_eq!(
            (fo.from.as_deref(), fo.to.as_str(), fo.term),
            (Some("b1"), "b2", 3)
        );
        assert!((fo.failover_ms - 300.0).abs() < 1e-6, "{}", fo.failover_ms);
    }
}
