//! `verge bench net`: what Verge's framing costs on top of plain QUIC.
//!
//! Everything runs in this process on 127.0.0.1 (ports chosen by the OS), with a fresh in-memory
//! cluster CA and two node certificates, `a` (the client) and `b` (the server). It measures:
//!
//! 1. the round trip of a 64-byte request and its echo on one long-lived stream (p50, p99);
//! 2. one-way throughput of 64-byte messages, batched into ~64 KiB writes, until the receiver has
//!    decoded every one and said so;
//! 3. one-way throughput of 1 MiB blobs;
//! 4. mTLS connection establishment: `Net::connect_peer` until the server has authenticated the
//!    connection with `authenticate`.
//!
//! **Why the baseline is fair.** Each of 1–3 runs twice in the same process: once through Verge
//! (`Net` endpoints, `FramedSend`/`FramedRecv`, `PeerMessage::Blob`) and once through bare quinn
//! endpoints built the same way `Net::bind` builds its own, from the same rustls configurations
//! (`verge_pki::server_config`, `peer_client_config`: TLS 1.3 with client certificates, `ring`) and
//! the same `transport_config`. The baseline moves the same payload bytes with plain
//! `write_all`/`read_exact`/`read_chunk`, so the ratio verge/raw is the price of Verge's framing
//! (length prefix, version, bincode encode and decode, per-frame buffering) and nothing else. The
//! two variants alternate in blocks or rounds, so background noise on the machine hits both.
//!
//! Idle memory is not measured here: that needs real processes and is measured elsewhere.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, ReadExactError, RecvStream, SendStream};
use serde_json::{Value, json};
use verge_net::{
    Accepted, CloseCode, FramedRecv, FramedSend, Net, NetConfig, authenticate, transport_config,
};
use verge_pki::{ClusterCa, NodeTls, node_dns_name};
use verge_proto::NodeId;
use verge_proto::peer::PeerMessage;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  verge bench net\n  verge bench net --round-trips 5000 --messages 500000 --blobs 128 --json"
)]
pub struct BenchNetArgs {
    /// Round trips measured per variant.
    #[arg(long, default_value_t = 20_000)]
    pub round_trips: usize,
    /// 64-byte messages sent in the throughput run.
    #[arg(long, default_value_t = 2_000_000)]
    pub messages: usize,
    /// 1 MiB blobs sent in the blob throughput run.
    #[arg(long, default_value_t = 512)]
    pub blobs: usize,
    /// mTLS handshakes measured.
    #[arg(long, default_value_t = 200)]
    pub handshakes: usize,
    /// Print the figures as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The payload of a small message, in bytes.
const SMALL_BYTES: usize = 64;
/// The payload of a blob, in bytes.
const BLOB_BYTES: usize = 1024 * 1024;
/// A blob's size in MiB, to turn blobs per second into MiB/s.
const BLOB_MIB: f64 = 1.0;
/// How many bytes the senders gather before one write, in the 64-byte throughput run.
const BATCH_BYTES: usize = 64 * 1024;
/// How many bytes the raw receiver asks quinn for per read (what `FramedRecv` asks for too).
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Round trips per variant before measuring, so connections, allocators and caches are warm.
const RTT_WARMUP: usize = 1_000;
/// Round trips one variant makes before the other takes its turn.
const RTT_BLOCK: usize = 100;
/// The throughput runs are split into this many rounds per variant, alternating verge and raw.
const THROUGHPUT_ROUNDS: usize = 4;
/// Handshakes made and discarded before measuring.
const HANDSHAKE_WARMUP: usize = 5;
/// The longest any single step (a block of round trips, one write, one answer) may go without
/// finishing before the benchmark gives up, so a broken run fails instead of hanging.
const STALL: Duration = Duration::from_secs(10);
/// How long closing the endpoints may wait for the peers to hear it.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Target: Verge's 64-byte round trip within this factor of raw quinn's (judged on p50; p99 on a
/// shared machine is mostly scheduler noise and is shown for information).
const RTT_RATIO_MAX: f64 = 1.2;
/// Target: 64-byte messages per second through Verge on one connection.
const MSGS_PER_S_MIN: f64 = 1_000_000.0;
/// Target: Verge's 1 MiB blob throughput at least this fraction of raw quinn's.
const BLOB_RATIO_MIN: f64 = 0.9;

/// Runs the benchmark, prints a table (or one JSON object with `--json`) and returns the figures.
pub async fn run(args: &BenchNetArgs) -> anyhow::Result<Value> {
    ensure!(
        args.round_trips > 0 && args.messages > 0 && args.blobs > 0 && args.handshakes > 0,
        "--round-trips, --messages, --blobs and --handshakes must each be at least 1"
    );
    let rig = Rig::start().await?;
    let figures = measure(&rig, args).await;
    rig.close().await;
    let figures = figures?;
    let mut value = figures.json();
    progress("idle memory: a three-node mesh of real `verge node` processes");
    let rss = idle_rss_mb().await?;
    let rss_max = rss.iter().copied().fold(0.0, f64::max);
    let rss_pass = rss_max <= IDLE_RSS_TARGET_MB;
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "idle_rss_mb".into(),
            json!({ "per_node": rss, "max": rss_max, "target": IDLE_RSS_TARGET_MB, "pass": rss_pass }),
        );
        let all = obj.get("pass").and_then(Value::as_bool).unwrap_or(false) && rss_pass;
        obj.insert("pass".into(), Value::Bool(all));
    }
    if args.json {
        println!("{value}");
    } else {
        print!("{}", figures.table());
        let per_node: Vec<String> = rss.iter().map(|r| format!("{r:.1}")).collect();
        println!(
            "idle node RSS (3-node mesh, {IDLE_SETTLE_S} s idle): max {rss_max:.1} MB (nodes: {}), target <= {IDLE_RSS_TARGET_MB} MB  {}",
            per_node.join(", "),
            if rss_pass { "PASS" } else { "MISS" }
        );
    }
    Ok(value)
}

/// Target for an idle node's resident memory, in MB.
const IDLE_RSS_TARGET_MB: f64 = 20.0;
/// How long the mesh idles before its memory is read.
const IDLE_SETTLE_S: u64 = 5;

/// Starts three real node processes (this same binary), lets the mesh idle, and reads each
/// node's resident memory from /proc.
async fn idle_rss_mb() -> anyhow::Result<Vec<f64>> {
    let bin = std::env::current_exe().context("cannot find the verge binary")?;
    let mut spec = verge_sim::ClusterSpec::corridor(bin, 3);
    spec.cluster = "bench".into();
    let mut cluster = verge_sim::LocalCluster::create(&spec)?;
    cluster.start_all()?;
    cluster
        .wait_for_mesh(&[0, 1, 2], Duration::from_secs(20))
        .await?;
    tokio::time::sleep(Duration::from_secs(IDLE_SETTLE_S)).await;
    let mut out = Vec::new();
    for n in &cluster.nodes {
        let pid = n.pid().context("a node exited during the idle run")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS line")?;
        out.push(kib * 1024.0 / 1e6);
    }
    Ok(out)
}

async fn measure(rig: &Rig, args: &BenchNetArgs) -> anyhow::Result<Figures> {
    progress(&format!(
        "round trips: {} per variant, 64 B, after {RTT_WARMUP} warm-up",
        args.round_trips
    ));
    let rtt = round_trips(rig, args.round_trips).await?;
    progress(&format!(
        "throughput: {} messages of 64 B per variant",
        args.messages
    ));
    let small = throughput(rig, SMALL_BYTES, args.messages).await?;
    progress(&format!(
        "throughput: {} blobs of 1 MiB per variant",
        args.blobs
    ));
    let blob = throughput(rig, BLOB_BYTES, args.blobs).await?;
    progress(&format!("handshakes: {}", args.handshakes));
    let handshake_ms = handshakes(rig, args.handshakes).await?;
    Ok(Figures {
        rtt,
        small,
        blob,
        handshakes: args.handshakes,
        handshake_ms,
    })
}

/// Everything measured, and the verdicts against the targets.
struct Figures {
    rtt: RttFigures,
    small: Throughput,
    blob: Throughput,
    handshakes: usize,
    handshake_ms: Spread,
}

impl Figures {
    fn rtt_ratio_p50(&self) -> f64 {
        self.rtt.verge.p50 / self.rtt.raw.p50
    }

    fn rtt_ratio_p99(&self) -> f64 {
        self.rtt.verge.p99 / self.rtt.raw.p99
    }

    fn rtt_pass(&self) -> bool {
        self.rtt_ratio_p50() <= RTT_RATIO_MAX
    }

    fn small_pass(&self) -> bool {
        self.small.verge_per_s() >= MSGS_PER_S_MIN
    }

    fn blob_pass(&self) -> bool {
        self.blob.ratio() >= BLOB_RATIO_MIN
    }

    fn pass(&self) -> bool {
        self.rtt_pass() && self.small_pass() && self.blob_pass()
    }

    fn json(&self) -> Value {
        json!({
            "rtt_64b_us": {
                "round_trips": self.rtt.count,
                "verge_p50": self.rtt.verge.p50,
                "verge_p99": self.rtt.verge.p99,
                "raw_p50": self.rtt.raw.p50,
                "raw_p99": self.rtt.raw.p99,
                "ratio_p50": self.rtt_ratio_p50(),
                "ratio_p99": self.rtt_ratio_p99(),
                "target_ratio_p50_max": RTT_RATIO_MAX,
                "pass": self.rtt_pass(),
            },
            "msgs_64b_per_s": {
                "messages": self.small.verge_items,
                "verge": self.small.verge_per_s(),
                "raw": self.small.raw_per_s(),
                "ratio": self.small.ratio(),
                "target_verge_min": MSGS_PER_S_MIN,
                "pass": self.small_pass(),
            },
            "blob_1mib_mib_per_s": {
                "blobs": self.blob.verge_items,
                "verge": self.blob.verge_per_s() * BLOB_MIB,
                "raw": self.blob.raw_per_s() * BLOB_MIB,
                "ratio": self.blob.ratio(),
                "target_ratio_min": BLOB_RATIO_MIN,
                "pass": self.blob_pass(),
            },
            "handshake_ms": {
                "handshakes": self.handshakes,
                "p50": self.handshake_ms.p50,
                "p99": self.handshake_ms.p99,
            },
            "pass": self.pass(),
        })
    }

    /// The figures for people.
    fn table(&self) -> String {
        let row =
            |name: &str, verge: String, raw: String, ratio: f64, target: &str, result: &str| {
                let line = format!(
                    "{name:<22} {verge:>12} {raw:>12} {ratio:>8.2}x  {target:<20} {result}"
                );
                format!("{}\n", line.trim_end())
            };
        let mut out =
            String::from("verge bench net: 127.0.0.1, mutual TLS 1.3, verge vs raw quinn\n\n");
        out.push_str(&format!(
            "{:<22} {:>12} {:>12} {:>9}  {:<20} {}\n",
            "MEASURE", "VERGE", "RAW QUINN", "VERGE/RAW", "TARGET", "RESULT"
        ));
        out.push_str(&row(
            "64 B round trip p50",
            format!("{:.1} µs", self.rtt.verge.p50),
            format!("{:.1} µs", self.rtt.raw.p50),
            self.rtt_ratio_p50(),
            &format!("≤ {RTT_RATIO_MAX:.1}x raw"),
            verdict(self.rtt_pass()),
        ));
        out.push_str(&row(
            "64 B round trip p99",
            format!("{:.1} µs", self.rtt.verge.p99),
            format!("{:.1} µs", self.rtt.raw.p99),
            self.rtt_ratio_p99(),
            "(not judged)",
            "",
        ));
        out.push_str(&row(
            "64 B messages/s",
            thousands(self.small.verge_per_s()),
            thousands(self.small.raw_per_s()),
            self.small.ratio(),
            &format!("≥ {}/s", thousands(MSGS_PER_S_MIN)),
            verdict(self.small_pass()),
        ));
        out.push_str(&row(
            "1 MiB blobs MiB/s",
            format!("{:.0}", self.blob.verge_per_s() * BLOB_MIB),
            format!("{:.0}", self.blob.raw_per_s() * BLOB_MIB),
            self.blob.ratio(),
            &format!("≥ {BLOB_RATIO_MIN:.1}x raw"),
            verdict(self.blob_pass()),
        ));
        out.push_str(&format!(
            "{:<22} {:>12}\n{:<22} {:>12}\n",
            "mTLS handshake p50",
            format!("{:.2} ms", self.handshake_ms.p50),
            "mTLS handshake p99",
            format!("{:.2} ms", self.handshake_ms.p99),
        ));
        out.push_str(&format!("\nall targets: {}\n", verdict(self.pass())));
        out
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn progress(what: &str) {
    eprintln!("bench net: {what}");
}

// ---------------------------------------------------------------------------------------------
// The rig: two Verge endpoints, two bare quinn endpoints, one connection between each pair.

/// Both variants' endpoints and their long-lived connections.
struct Rig {
    /// Holds the certificates; removed when the rig is dropped.
    _dir: tempfile::TempDir,
    cfg: NetConfig,
    net_a: Net,
    net_b: Net,
    b_id: NodeId,
    b_addr: SocketAddr,
    verge: Pair,
    raw_a: Endpoint,
    raw_b: Endpoint,
    raw: Pair,
}

/// The two ends of one connection.
struct Pair {
    client: Connection,
    server: Connection,
}

impl Rig {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("cannot create a directory for the certificates")?;
        let ca = ClusterCa::generate("bench")?;
        let ca_files = ca.write(dir.path())?;
        let node = |id: &str| -> anyhow::Result<NodeTls> {
            let id = NodeId::new(id)?;
            let (cert, key) = ca.issue_node(&id)?.write(dir.path())?;
            Ok(NodeTls::load(&ca_files.cert, &cert, &key)?)
        };
        let (tls_a, tls_b) = (node("a")?, node("b")?);
        let cfg = NetConfig::default();

        let net_a = Net::bind(localhost(), &tls_a, cfg.clone())?;
        let net_b = Net::bind(localhost(), &tls_b, cfg.clone())?;
        let b_addr = net_b.local_addr()?;
        let b_id = tls_b.id.clone();
        let verge = verge_connect(&net_a, &net_b, &b_id, b_addr).await?;

        let (raw_a, raw_client) = raw_endpoint(&tls_a, &cfg)?;
        let (raw_b, _) = raw_endpoint(&tls_b, &cfg)?;
        let raw = raw_connect(&raw_a, raw_client, &raw_b, &b_id).await?;

        Ok(Self {
            _dir: dir,
            cfg,
            net_a,
            net_b,
            b_id,
            b_addr,
            verge,
            raw_a,
            raw_b,
            raw,
        })
    }

    fn frame_bytes_max(&self) -> usize {
        self.cfg.frame_bytes_max
    }

    /// Closes every connection and endpoint, which also ends any server task still running.
    async fn close(self) {
        for conn in [
            &self.verge.client,
            &self.verge.server,
            &self.raw.client,
            &self.raw.server,
        ] {
            conn.close(CloseCode::Shutdown.varint(), b"benchmark done");
        }
        self.net_a.shutdown(CLOSE_GRACE).await;
        self.net_b.shutdown(CLOSE_GRACE).await;
        for endpoint in [&self.raw_a, &self.raw_b] {
            endpoint.close(CloseCode::Shutdown.varint(), b"benchmark done");
            let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
        }
    }
}

fn localhost() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A bare quinn endpoint and client configuration, built exactly as `Net::bind` builds its own:
/// the same rustls configurations and the same transport configuration.
fn raw_endpoint(tls: &NodeTls, cfg: &NetConfig) -> anyhow::Result<(Endpoint, quinn::ClientConfig)> {
    let transport = Arc::new(transport_config(cfg));
    let server_tls = QuicServerConfig::try_from(verge_pki::server_config(tls)?)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());
    let client_tls = QuicClientConfig::try_from(verge_pki::peer_client_config(tls)?)?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport);
    let endpoint = Endpoint::server(server, localhost()).context("cannot bind a raw endpoint")?;
    Ok((endpoint, client))
}

/// Connects `net_a` to `net_b` the way nodes connect: `connect_peer` on one side, `accept` and
/// `authenticate` on the other.
async fn verge_connect(
    net_a: &Net,
    net_b: &Net,
    b_id: &NodeId,
    b_addr: SocketAddr,
) -> anyhow::Result<Pair> {
    let (client, server) = tokio::try_join!(
        async { Ok(net_a.connect_peer(b_id, b_addr).await?) },
        verge_accept(net_b),
    )?;
    Ok(Pair { client, server })
}

async fn verge_accept(net: &Net) -> anyhow::Result<Connection> {
    let incoming = within("waiting for a connection", async {
        net.accept().await.context("the endpoint closed")
    })
    .await?;
    match authenticate(incoming, net.config().handshake_timeout).await? {
        Accepted::Peer { conn, .. } => Ok(conn),
        Accepted::Admin { name, conn } => {
            conn.close(CloseCode::WrongRole.varint(), b"not a node");
            bail!("admin {name} connected instead of node a")
        }
    }
}

async fn raw_connect(
    raw_a: &Endpoint,
    client: quinn::ClientConfig,
    raw_b: &Endpoint,
    b_id: &NodeId,
) -> anyhow::Result<Pair> {
    let connecting = raw_a.connect_with(client, raw_b.local_addr()?, &node_dns_name(b_id))?;
    let (client, server) = within("raw quinn handshake", async {
        tokio::try_join!(async { Ok(connecting.await?) }, async {
            let incoming = raw_b.accept().await.context("the raw endpoint closed")?;
            anyhow::Ok(incoming.await?)
        })
    })
    .await?;
    Ok(Pair { client, server })
}

/// Runs `step`, failing if it does not finish within [`STALL`].
async fn within<T, E: Into<anyhow::Error>>(
    what: &str,
    step: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(STALL, step).await {
        Ok(result) => result.map_err(|e| e.into().context(what.to_owned())),
        Err(_) => bail!("{what}: no progress in {} s", STALL.as_secs()),
    }
}

/// Waits for a server task and passes on its error.
async fn join(what: &str, task: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    within(what, async { task.await? }).await
}

// ---------------------------------------------------------------------------------------------
// 1. Round trips.

/// Percentiles of one series, in the series' unit.
#[derive(Debug, Clone, Copy)]
struct Spread {
    p50: f64,
    p99: f64,
}

impl Spread {
    fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        Self {
            p50: percentile(&samples, 50.0),
            p99: percentile(&samples, 99.0),
        }
    }
}

/// The nearest-rank percentile `p` (0–100] of sorted samples; NaN for no samples.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct RttFigures {
    /// Round trips measured per variant.
    count: usize,
    verge: Spread,
    raw: Spread,
}

/// One side's client end of the echo stream.
trait RoundTrip {
    /// Sends one 64-byte request, waits for its echo, and returns how long that took.
    async fn round_trip(&mut self) -> anyhow::Result<Duration>;
    /// Ends the stream so the echo server stops.
    fn finish(&mut self);
}

struct VergeRtt {
    send: FramedSend,
    recv: FramedRecv,
    payload: Bytes,
    seq: u64,
}

impl RoundTrip for VergeRtt {
    async fn round_trip(&mut self) -> anyhow::Result<Duration> {
        self.seq += 1;
        let start = Instant::now();
        self.send
            .send(&PeerMessage::Blob {
                seq: self.seq,
                payload: self.payload.clone(),
            })
            .await?;
        let echo = self.recv.recv::<PeerMessage>().await?;
        let took = start.elapsed();
        match echo {
            Some(PeerMessage::Blob { seq, .. }) if seq == self.seq => Ok(took),
            other => bail!("expected the echo of blob {}, got {other:?}", self.seq),
        }
    }

    fn finish(&mut self) {
        self.send.finish();
    }
}

struct RawRtt {
    send: SendStream,
    recv: RecvStream,
    request: [u8; SMALL_BYTES],
    echo: [u8; SMALL_BYTES],
}

impl RoundTrip for RawRtt {
    async fn round_trip(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.send.write_all(&self.request).await?;
        self.recv.read_exact(&mut self.echo).await?;
        Ok(start.elapsed())
    }

    fn finish(&mut self) {
        // Finishing twice is the only possible error, and it cannot happen here.
        let _ = self.send.finish();
    }
}

/// Echoes every frame back on the first stream the client opens, until the client finishes it.
async fn verge_echo(conn: Connection, frame_bytes_max: usize) -> anyhow::Result<()> {
    let (send, recv) = conn.accept_bi().await?;
    let mut send = FramedSend::new(send, frame_bytes_max);
    let mut recv = FramedRecv::new(recv, frame_bytes_max);
    while let Some(msg) = recv.recv::<PeerMessage>().await? {
        send.send(&msg).await?;
    }
    send.finish();
    Ok(())
}

/// Echoes every 64 bytes back on the first stream the client opens, until the client finishes it.
async fn raw_echo(conn: Connection) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut buf = [0u8; SMALL_BYTES];
    loop {
        match recv.read_exact(&mut buf).await {
            Ok(()) => send.write_all(&buf).await?,
            Err(ReadExactError::FinishedEarly(0)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    send.finish()?;
    Ok(())
}

/// Runs `count` round trips in one turn, appending their durations in µs to `samples`.
async fn rtt_block(
    what: &str,
    client: &mut impl RoundTrip,
    count: usize,
    samples: &mut Vec<f64>,
) -> anyhow::Result<()> {
    within(what, async {
        for _ in 0..count {
            let took = client.round_trip().await?;
            samples.push(took.as_secs_f64() * 1e6);
        }
        anyhow::Ok(())
    })
    .await
}

async fn round_trips(rig: &Rig, count: usize) -> anyhow::Result<RttFigures> {
    let max = rig.frame_bytes_max();
    let verge_server = tokio::spawn(verge_echo(rig.verge.server.clone(), max));
    let raw_server = tokio::spawn(raw_echo(rig.raw.server.clone()));

    let (send, recv) = within("opening a stream", rig.verge.client.open_bi()).await?;
    let mut verge = VergeRtt {
        send: FramedSend::new(send, max),
        recv: FramedRecv::new(recv, max),
        payload: Bytes::from(vec![0x5a; SMALL_BYTES]),
        seq: 0,
    };
    let (send, recv) = within("opening a stream", rig.raw.client.open_bi()).await?;
    let mut raw = RawRtt {
        send,
        recv,
        request: [0x5a; SMALL_BYTES],
        echo: [0; SMALL_BYTES],
    };

    let mut discard = Vec::with_capacity(RTT_WARMUP);
    rtt_block("verge warm-up", &mut verge, RTT_WARMUP, &mut discard).await?;
    discard.clear();
    rtt_block("raw warm-up", &mut raw, RTT_WARMUP, &mut discard).await?;

    let mut verge_us = Vec::with_capacity(count);
    let mut raw_us = Vec::with_capacity(count);
    let mut block = 0;
    while verge_us.len() < count {
        let n = RTT_BLOCK.min(count - verge_us.len());
        // Alternate which variant goes first, so neither always follows the other's wake-ups.
        if block % 2 == 0 {
            rtt_block("verge round trips", &mut verge, n, &mut verge_us).await?;
            rtt_block("raw round trips", &mut raw, n, &mut raw_us).await?;
        } else {
            rtt_block("raw round trips", &mut raw, n, &mut raw_us).await?;
            rtt_block("verge round trips", &mut verge, n, &mut verge_us).await?;
        }
        block += 1;
    }

    verge.finish();
    raw.finish();
    join("verge echo server", verge_server).await?;
    join("raw echo server", raw_server).await?;
    Ok(RttFigures {
        count,
        verge: Spread::of(verge_us),
        raw: Spread::of(raw_us),
    })
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. One-way throughput.

/// Items moved and the time they took, per variant, summed over all rounds.
#[derive(Debug, Default)]
struct Throughput {
    verge_items: usize,
    verge_time: Duration,
    raw_items: usize,
    raw_time: Duration,
}

impl Throughput {
    fn verge_per_s(&self) -> f64 {
        self.verge_items as f64 / self.verge_time.as_secs_f64()
    }

    fn raw_per_s(&self) -> f64 {
        self.raw_items as f64 / self.raw_time.as_secs_f64()
    }

    fn ratio(&self) -> f64 {
        self.verge_per_s() / self.raw_per_s()
    }
}

/// Sends `count` payloads of `payload_bytes` each way: a warm-up round, then the rest split into
/// [`THROUGHPUT_ROUNDS`] rounds per variant, alternating which goes first.
async fn throughput(rig: &Rig, payload_bytes: usize, count: usize) -> anyhow::Result<Throughput> {
    let warmup = (count / 20).max(1);
    one_way_verge(rig, payload_bytes, warmup).await?;
    one_way_raw(rig, payload_bytes, warmup).await?;

    let mut t = Throughput::default();
    let per_round = count.div_ceil(THROUGHPUT_ROUNDS);
    let mut round = 0;
    while t.verge_items < count {
        let n = per_round.min(count - t.verge_items);
        if round % 2 == 0 {
            t.verge_time += one_way_verge(rig, payload_bytes, n).await?;
            t.raw_time += one_way_raw(rig, payload_bytes, n).await?;
        } else {
            t.raw_time += one_way_raw(rig, payload_bytes, n).await?;
            t.verge_time += one_way_verge(rig, payload_bytes, n).await?;
        }
        t.verge_items += n;
        t.raw_items += n;
        round += 1;
    }
    Ok(t)
}

/// Queues `count` `Blob` frames on a new stream, writing whenever ~64 KiB are queued, and returns
/// the time until the receiver reports it decoded every one.
async fn one_way_verge(rig: &Rig, payload_bytes: usize, count: usize) -> anyhow::Result<Duration> {
    let max = rig.frame_bytes_max();
    let receiver = tokio::spawn(verge_sink(
        rig.verge.server.clone(),
        max,
        payload_bytes,
        count,
    ));
    let (send, recv) = within("opening a stream", rig.verge.client.open_bi()).await?;
    let mut send = FramedSend::new(send, max);
    let mut answer = FramedRecv::new(recv, max);
    let payload = Bytes::from(vec![0x5a; payload_bytes]);

    let start = Instant::now();
    for seq in 0..count as u64 {
        send.queue(&PeerMessage::Blob {
            seq,
            payload: payload.clone(),
        })?;
        if send.queued_bytes() >= BATCH_BYTES {
            within("verge write", send.flush()).await?;
        }
    }
    within("verge write", send.flush()).await?;
    let done = within("verge receiver's count", answer.recv::<PeerMessage>()).await?;
    let took = start.elapsed();

    send.finish();
    join("verge receiver", receiver).await?;
    match done {
        Some(PeerMessage::Pong { seq, .. }) if seq == count as u64 => Ok(took),
        other => bail!("the receiver should have counted {count} messages, it answered {other:?}"),
    }
}

/// Decodes `count` blobs of `payload_bytes` from the next stream, checks each, and answers with a
/// `Pong` carrying the count.
async fn verge_sink(
    conn: Connection,
    frame_bytes_max: usize,
    payload_bytes: usize,
    count: usize,
) -> anyhow::Result<()> {
    let (send, recv) = conn.accept_bi().await?;
    let mut send = FramedSend::new(send, frame_bytes_max);
    let mut recv = FramedRecv::new(recv, frame_bytes_max);
    let mut got = 0u64;
    while got < count as u64 {
        match recv.recv::<PeerMessage>().await? {
            Some(PeerMessage::Blob { seq, payload })
                if seq == got && payload.len() == payload_bytes =>
            {
                got += 1;
            }
            Some(other) => bail!("message {got}: unexpected {other:?}"),
            None => bail!("the stream ended after {got} of {count} messages"),
        }
    }
    send.send(&PeerMessage::Pong {
        seq: got,
        echo_us: 0,
    })
    .await?;
    send.finish();
    Ok(())
}

/// Writes `count × payload_bytes` bytes on a new stream with `write_all`, in chunks of whole
/// payloads of at least 64 KiB, and returns the time until the receiver reports it read them all.
async fn one_way_raw(rig: &Rig, payload_bytes: usize, count: usize) -> anyhow::Result<Duration> {
    let total = (count * payload_bytes) as u64;
    let receiver = tokio::spawn(raw_sink(rig.raw.server.clone(), total));
    let (mut send, mut recv) = within("opening a stream", rig.raw.client.open_bi()).await?;
    let chunk = vec![0x5a; BATCH_BYTES.div_ceil(payload_bytes) * payload_bytes];

    let start = Instant::now();
    let mut left = total as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        within("raw write", send.write_all(&chunk[..n])).await?;
        left -= n;
    }
    let mut answer = [0u8; 8];
    within("raw receiver's count", recv.read_exact(&mut answer)).await?;
    let took = start.elapsed();

    send.finish()?;
    join("raw receiver", receiver).await?;
    let read = u64::from_be_bytes(answer);
    ensure!(
        read == total,
        "the raw receiver read {read} of {total} bytes"
    );
    Ok(took)
}

/// Reads `total` bytes from the next stream and answers with the count, as 8 big-endian bytes.
async fn raw_sink(conn: Connection, total: u64) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut read = 0u64;
    while read < total {
        match recv.read_chunk(READ_CHUNK_BYTES, true).await? {
            Some(chunk) => read += chunk.bytes.len() as u64,
            None => bail!("the stream ended after {read} of {total} bytes"),
        }
    }
    send.write_all(&read.to_be_bytes()).await?;
    send.finish()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Handshakes.

/// Times `count` fresh connections from a to b, from `connect_peer` until both the client has
/// the connection and the server has authenticated it; each is closed right after.
async fn handshakes(rig: &Rig, count: usize) -> anyhow::Result<Spread> {
    let mut ms = Vec::with_capacity(count);
    for i in 0..HANDSHAKE_WARMUP + count {
        let start = Instant::now();
        let pair = verge_connect(&rig.net_a, &rig.net_b, &rig.b_id, rig.b_addr)
            .await
            .with_context(|| format!("handshake {i}"))?;
        let took = start.elapsed();
        pair.client.close(CloseCode::Shutdown.varint(), b"measured");
        pair.server.close(CloseCode::Shutdown.varint(), b"measured");
        if i >= HANDSHAKE_WARMUP {
            ms.push(took.as_secs_f64() * 1e3);
        }
    }
    Ok(Spread::of(ms))
}

// ---------------------------------------------------------------------------------------------
// Formatting.

/// `1234567.8` as `1,234,568`.
pub(crate) fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(f64::NAN), "-");
    }
}
