//! Measures control-plane failover in-process: kill the leader, time until a surviving voter
//! leads, and until the new leader commits a command; restart the victim from its directory and
//! repeat.
//!
//! ```text
//! cargo run --release -p verge-control --example failover -- [--voters 3|5] [--kills 20]
//! ```
//!
//! "Kill" makes the leader unreachable at once (as SIGKILL does to its peers) and then shuts it
//! down. The network is in memory, so the figures are Raft's timing alone, with the default
//! `ControlConfig` and real sled storage (fsync included) in a temporary directory.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::task::JoinSet;
use verge_control::testing::MemNetwork;
use verge_control::{Command, Control, ControlConfig};
use verge_proto::{NodeId, StreamId};

const DEADLINE: Duration = Duration::from_secs(10);

struct Args {
    voters: usize,
    kills: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        voters: 3,
        kills: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--voters" => args.voters = value("--voters")?,
            "--kills" => args.kills = value("--kills")?,
            other => {
                return Err(format!(
                    "unknown argument `{other}`; use --voters N --kills N"
                ));
            }
        }
    }
    if !(1..=9).contains(&args.voters) || args.kills == 0 {
        return Err("--voters must be 1 to 9 and --kills at least 1".into());
    }
    Ok(args)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    // Nearest rank.
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<24} n={:<3} min {:>6.1} ms  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
        v.len(),
        ms(v[0]),
        ms(percentile(&v, 50)),
        ms(percentile(&v, 99)),
        ms(v[v.len() - 1]),
    );
}

async fn start(
    net: &MemNetwork,
    dirs: &BTreeMap<NodeId, TempDir>,
    voters: &[NodeId],
    id: &NodeId,
) -> Result<Control, String> {
    let c = Control::start(
        id.clone(),
        dirs[id].path(),
        ControlConfig::default(),
        voters.to_vec(),
        net.transport(id.clone()),
    )
    .await
    .map_err(|e| e.to_string())?;
    net.register(&c);
    Ok(c)
}

/// Waits until some node in `nodes` leads (a leader other than `not`) and returns it.
async fn first_new_leader(
    nodes: &BTreeMap<NodeId, Control>,
    not: Option<&NodeId>,
) -> Result<NodeId, String> {
    let mut set = JoinSet::new();
    for c in nodes.values() {
        let mut rx = c.watch_leader();
        let not = not.cloned();
        let me = c.me().clone();
        set.spawn(async move {
            rx.wait_for(|l| {
                l.as_ref()
                    .is_some_and(|l| l.id == me && Some(&l.id) != not.as_ref())
            })
            .await
            .map(|_| me)
            .map_err(|_| "leader watch closed".to_owned())
        });
    }
    let first = tokio::time::timeout(DEADLINE, set.join_next())
        .await
        .map_err(|_| format!("no leader within {DEADLINE:?}"))?
        .ok_or("no nodes")?
        .map_err(|e| e.to_string())?;
    set.abort_all();
    first
}

async fn run(args: Args) -> Result<(), String> {
    let net = MemNetwork::new();
    let ids: Vec<NodeId> = (1..=args.voters)
        .map(|i| NodeId::new(format!("b{i}")).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut dirs = BTreeMap::new();
    for id in &ids {
        dirs.insert(id.clone(), tempfile::tempdir().map_err(|e| e.to_string())?);
    }
    let mut nodes = BTreeMap::new();
    for id in &ids {
        nodes.insert(id.clone(), start(&net, &dirs, &ids, id).await?);
    }
    let cfg = ControlConfig::default();
    println!(
        "{} voters, heartbeat {} ms, election {}-{} ms (lease {} ms), backoff {} ms, {} kills",
        args.voters,
        cfg.heartbeat_ms,
        cfg.election_min_ms,
        cfg.election_max_ms,
        cfg.leader_lease().as_millis(),
        cfg.backoff_ms,
        args.kills
    );
    let mut leader = first_new_leader(&nodes, None).await?;
    let mut to_leader = Vec::new();
    let mut to_commit = Vec::new();
    for round in 1..=args.kills {
        // Settle: the leader commits, so every voter has heard from it recently.
        let term = nodes[&leader].term();
        nodes[&leader]
            .propose(Command::Noop)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(
            cfg.heartbeat_ms * (1 + round as u64 % 3),
        ))
        .await;

        let t0 = Instant::now();
        net.unregister(&leader);
        let victim = nodes.remove(&leader).ok_or("leader not running")?;
        let next = first_new_leader(&nodes, Some(&leader)).await?;
        let elected = t0.elapsed();
        nodes[&next]
            .propose(Command::Noop)
            .await
            .map_err(|e| format!("first commit of {next}: {e}"))?;
        let committed = t0.elapsed();
        println!(
            "kill {round:>2}: {leader} (term {term}) -> {next} (term {}) elected {:>6.1} ms, first commit {:>6.1} ms",
            nodes[&next].term(),
            elected.as_secs_f64() * 1000.0,
            committed.as_secs_f64() * 1000.0
        );
        to_leader.push(elected);
        to_commit.push(committed);

        victim.shutdown().await.map_err(|e| e.to_string())?;
        let back = start(&net, &dirs, &ids, &leader).await?;
        nodes.insert(leader.clone(), back.clone());
        leader = next;
        // Wait until the restarted node has caught up with the leader before the next kill.
        if let Some(want) = nodes[&leader].status().applied_index {
            back.wait_applied(want, DEADLINE)
                .await
                .map_err(|e| format!("restarted node: {e}"))?;
        }
    }
    // Sequential commit latency on the last leader: one cursor advance at a time, as a gateway
    // does after each acknowledged batch.
    let stream: StreamId = "b1/aggregates/north"
        .parse()
        .map_err(|e: verge_proto::StreamIdError| e.to_string())?;
    let l = &nodes[&leader];
    let mut commit = Vec::new();
    for seq in 1..=200 {
        let t = Instant::now();
        l.propose(Command::AdvanceCursors {
            term: l.term(),
            cursors: vec![(stream.clone(), seq)],
        })
        .await
        .map_err(|e| e.to_string())?;
        commit.push(t.elapsed());
    }
    summary("kill -> new leader", to_leader);
    summary("kill -> first commit", to_commit);
    summary("commit (sequential)", commit);
    for c in nodes.values() {
        c.shutdown().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("failover: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover: {e}");
            ExitCode::FAILURE
        }
    }
}
