//! `verge bench gateway`: how fast the gateway role fails over, and how fast a gateway drains the
//! cloud-sync backlog (issue 4), in one run.
//!
//! Five real `verge node` processes (this same binary, [`verge_sim::LocalCluster`], ports from
//! the OS), three of them voters, aggregate synthetic traffic from eight detectors in four
//! approaches into 100 ms windows and sync to a reference cloud running in this process
//! ([`verge_cloud::serve`], HTTPS on 127.0.0.1, a bearer token, its store fsynced as in
//! production).
//!
//! 1. **Failover.** The gateway is SIGKILLed `--kills` times (restarted and rejoined each time).
//!    For each kill: the time until a surviving voter reports itself leader of a newer term
//!    (polled every 10 ms over the admin endpoint, all live voters at once), and the time until
//!    the cloud has accepted a batch in that term (its summary's highest term, polled every
//!    10 ms). With 100 ms windows there is always something new to send, so the second figure is
//!    election plus the new gateway's confirm, discovery, read, outbox fsync and post.
//! 2. **Backlog drain.** The cloud is shut down for `--outage-s` seconds while the corridor keeps
//!    producing windows. A 60 s outage with 100 ms windows leaves as many windows per stream as a
//!    10-minute outage with the default 10 s windows. The cloud comes back on the same address
//!    and data; the drain time is from then until the cloud holds every window that existed at
//!    that moment, and the sync throughput is those windows over that time.
//!
//! Figures use the wall clock and are printed with their targets; everything shares this
//! machine's cores, so they are a floor for one node per cabinet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use verge_cloud::{CloudClient, CloudServerConfig, RunningCloud};
use verge_proto::StreamKind;
use verge_proto::admin::StreamRole;
use verge_sim::{AdminClient, ClusterSpec, LocalCluster};

use crate::bench_net::{percentile, thousands};

const TOKEN: &str = "bench-gateway-token";
const CLUSTER: &str = "bench";
const POLL: Duration = Duration::from_millis(10);

/// Options of `verge bench gateway`.
#[derive(Debug, clap::Args)]
pub struct BenchGatewayArgs {
    /// Gateway SIGKILLs to time.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Seconds the cloud is down before the backlog drain is timed.
    #[arg(long, default_value_t = 60)]
    outage_s: u64,
    /// A short run: 5 kills and a 15 s outage.
    #[arg(long)]
    quick: bool,
    /// Print the figures as JSON too.
    #[arg(long)]
    json: bool,
    /// Keep the cluster's directory (configs, logs) and print where it is.
    #[arg(long)]
    keep: bool,
}

async fn start_cloud(addr: SocketAddr, dir: &Path) -> anyhow::Result<RunningCloud> {
    verge_cloud::serve(CloudServerConfig::new(addr, dir.join("cloud"), TOKEN))
        .await
        .context("starting the reference cloud")
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: &BenchGatewayArgs) -> anyhow::Result<Value> {
    let (kills, outage) = if args.quick {
        (
            args.kills.min(5),
            Duration::from_secs(args.outage_s.min(15)),
        )
    } else {
        (args.kills, Duration::from_secs(args.outage_s))
    };
    let dir = tempfile::Builder::new()
        .prefix("verge-bench-gateway-")
        .tempdir()?;
    let cloud = start_cloud(([127, 0, 0, 1], 0).into(), dir.path()).await?;
    let cloud_addr = cloud.addr();
    let cert = cloud.cert_path().to_owned();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    let client = CloudClient::new(
        &cloud.url(),
        &cert,
        Some(TOKEN.to_owned()),
        Duration::from_secs(5),
    )?;

    let bin = std::env::current_exe().context("cannot find the verge binary")?;
    let mut spec = ClusterSpec::corridor(bin, 5);
    spec.keep_dir = args.keep;
    spec.extra_config = format!(
        r#"
[control]
voters = ["b1", "b2", "b3"]

[aggregation]
window_ms = 100
allowed_lateness_ms = 100
[aggregation.approaches]
north = ["syn0", "syn1"]
south = ["syn2", "syn3"]
east = ["syn4", "syn5"]
west = ["syn6", "syn7"]

[sensors.synthetic]
sensors = 8
rate_per_s = 400.0

[cloud]
url = "{url}"
ca = "{ca}"
token_file = "{token}"
cluster = "{CLUSTER}"
timeout_ms = 2000
"#,
        url = cloud.url(),
        ca = cert.display(),
        token = token_file.display(),
    );
    let mut c = LocalCluster::create(&spec)?;
    if args.keep {
        println!("cluster directory: {}", c.root().display());
    }
    c.start_all()?;
    let all: Vec<usize> = (0..c.nodes.len()).collect();
    c.wait_for_mesh(&all, Duration::from_secs(30)).await?;
    let admin = c.admin();
    let voters = [0usize, 1, 2];
    let mut running = [true; 5];

    // Warm up: a gateway syncing.
    let (_, term0) = wait_leader(&c, &admin, &voters, &running, 0, Duration::from_secs(15)).await?;
    wait_cloud_term(&client, term0, Duration::from_secs(30)).await?;
    println!(
        "gateway failover: {kills} SIGKILLs of the gateway, 5 nodes, 3 voters, 100 ms windows"
    );

    let mut to_leader = Vec::new();
    let mut to_ack = Vec::new();
    for k in 1..=kills {
        let (victim, term) =
            wait_leader(&c, &admin, &voters, &running, 0, Duration::from_secs(15)).await?;
        wait_cloud_term(&client, term, Duration::from_secs(15)).await?;
        let killed = Instant::now();
        c.kill(victim)?;
        running[victim] = false;
        let (leader, new_term) =
            wait_leader(&c, &admin, &voters, &running, term, Duration::from_secs(15)).await?;
        let elected = killed.elapsed();
        wait_cloud_term(&client, new_term, Duration::from_secs(15)).await?;
        let acked = killed.elapsed();
        to_leader.push(elected.as_secs_f64() * 1e3);
        to_ack.push(acked.as_secs_f64() * 1e3);
        println!(
            "  kill {k:>2}: {} (term {term}) -> {} (term {new_term}): leader after {:>6.1} ms, first batch acknowledged after {:>6.1} ms",
            c.nodes[victim].id,
            c.nodes[leader].id,
            elected.as_secs_f64() * 1e3,
            acked.as_secs_f64() * 1e3
        );
        c.start(victim)?;
        running[victim] = true;
        c.wait_for_mesh(&all, Duration::from_secs(30)).await?;
    }
    to_leader.sort_by(f64::total_cmp);
    to_ack.sort_by(f64::total_cmp);
    let (l50, l99) = (percentile(&to_leader, 50.0), percentile(&to_leader, 99.0));
    let (a50, a99) = (percentile(&to_ack, 50.0), percentile(&to_ack, 99.0));
    println!(
        "  to a new leader:               p50 {l50:>6.1} ms  p99 {l99:>6.1} ms  max {:>6.1} ms  (target p99 <= 300 ms: {})",
        to_leader.last().copied().unwrap_or(0.0),
        verdict(l99 <= 300.0)
    );
    println!(
        "  to its first acknowledged batch: p50 {a50:>6.1} ms  p99 {a99:>6.1} ms  max {:>6.1} ms  (target p99 <= 500 ms: {})",
        to_ack.last().copied().unwrap_or(0.0),
        verdict(a99 <= 500.0)
    );

    // Backlog drain.
    println!(
        "cloud-sync backlog: the cloud down for {} s, 5 nodes x 4 approaches x 10 windows/s",
        outage.as_secs()
    );
    cloud.shutdown().await?;
    tokio::time::sleep(outage).await;
    let before = cloud_counts(&client).await.unwrap_or_default();
    let heads = aggregate_heads(&c, &admin).await?;
    let cloud = start_cloud(cloud_addr, dir.path()).await?;
    let back = Instant::now();
    let before = if before.is_empty() {
        cloud_counts(&client).await.unwrap_or_default()
    } else {
        before
    };
    let backlog: u64 = heads
        .iter()
        .map(|(s, h)| h.saturating_sub(before.get(s).copied().unwrap_or(0)))
        .sum();
    let before_total: u64 = before.values().sum();
    let deadline = back + Duration::from_secs(120);
    let mut first_ack: Option<Duration> = None;
    loop {
        let now = cloud_counts(&client).await.unwrap_or_default();
        if first_ack.is_none() && now.values().sum::<u64>() > before_total {
            first_ack = Some(back.elapsed());
        }
        if heads
            .iter()
            .all(|(s, h)| now.get(s).copied().unwrap_or(0) >= *h)
        {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<String> = heads
                .iter()
                .filter(|(s, h)| now.get(*s).copied().unwrap_or(0) < **h)
                .map(|(s, h)| format!("{s}: {} of {h}", now.get(s).copied().unwrap_or(0)))
                .collect();
            if let Ok((g, _)) =
                wait_leader(&c, &admin, &voters, &running, 0, Duration::from_secs(5)).await
                && let Ok(view) = admin.sync(c.nodes[g].listen).await
            {
                eprintln!("gateway's sync view: {view:#?}");
            }
            bail!("the backlog did not drain within 120 s: {missing:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let drain = back.elapsed();
    // From the first acknowledgement on: the gateway's retry delay (capped exponential backoff,
    // at most [cloud] retry_ms_max) is spent before it; the sync's throughput after it.
    let waited = first_ack.unwrap_or(drain);
    let flowing = drain.saturating_sub(waited).max(POLL);
    let rate = backlog as f64 / flowing.as_secs_f64();
    println!(
        "  backlog {} windows in {} streams; cloud back -> first acknowledged post {:.2} s (retry backoff) -> all synced {:.2} s",
        thousands(backlog as f64),
        heads.len(),
        waited.as_secs_f64(),
        drain.as_secs_f64(),
    );
    println!(
        "  drained in {:.2} s from the cloud's return (target <= 5 s: {}); sync throughput once posting {} windows/s over {:.3} s (target >= 50,000: {})",
        drain.as_secs_f64(),
        verdict(drain.as_secs_f64() <= 5.0),
        thousands(rate),
        flowing.as_secs_f64(),
        verdict(rate >= 50_000.0)
    );
    cloud.shutdown().await?;
    let figures = json!({
        "failover": {
            "kills": kills,
            "to_leader_ms": { "p50": l50, "p99": l99, "all": to_leader },
            "to_first_ack_ms": { "p50": a50, "p99": a99, "all": to_ack },
        },
        "backlog": {
            "outage_s": outage.as_secs(),
            "windows": backlog,
            "streams": heads.len(),
            "drain_s": drain.as_secs_f64(),
            "first_ack_s": waited.as_secs_f64(),
            "windows_per_s": rate,
        },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    }
    Ok(figures)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Polls the live voters until one reports itself leader in a term above `above`.
async fn wait_leader(
    c: &LocalCluster,
    admin: &AdminClient,
    voters: &[usize],
    running: &[bool],
    above: u64,
    timeout: Duration,
) -> anyhow::Result<(usize, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut asks = JoinSet::new();
        for &v in voters.iter().filter(|v| running[**v]) {
            let admin = admin.clone();
            let addr = c.nodes[v].listen;
            asks.spawn(async move { (v, admin.gateway(addr).await) });
        }
        while let Some(r) = asks.join_next().await {
            if let Ok((v, Ok(view))) = r
                && view.role == "leader"
                && view.term > above
            {
                return Ok((v, view.term));
            }
        }
        if Instant::now() > deadline {
            bail!("no voter became leader above term {above} within {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the cloud has accepted a batch in `term` (or later).
async fn wait_cloud_term(client: &CloudClient, term: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = client.summary().await
            && s.clusters
                .iter()
                .any(|c| c.cluster == CLUSTER && c.highest_term >= term)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the cloud accepted nothing in term {term} within {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Windows the cloud holds per stream.
async fn cloud_counts(client: &CloudClient) -> anyhow::Result<BTreeMap<String, u64>> {
    let s = client.summary().await?;
    Ok(s.streams
        .into_iter()
        .filter(|s| s.cluster == CLUSTER)
        .map(|s| (s.stream, s.windows))
        .collect())
}

/// Every node's own aggregate streams and their durable heads.
async fn aggregate_heads(
    c: &LocalCluster,
    admin: &AdminClient,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for n in &c.nodes {
        for s in admin.streams(n.listen).await? {
            if s.id.kind == StreamKind::Aggregates && matches!(s.role, StreamRole::Owner { .. }) {
                out.insert(s.id.to_string(), s.durable_head);
            }
        }
    }
    Ok(out)
}
