//! `verge demo`: a local cluster on 127.0.0.1, certificates made on the fly, each node fed by a
//! synthetic sensor source and replicating its streams to a neighbour; membership, stored
//! readings and replication lag shown while it runs, and a clean stop on Ctrl-C or after
//! `--duration`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use verge_proto::admin::{MemberState, StreamRole};
use verge_sim::{ClusterSpec, LocalCluster};

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  verge demo --duration 30")]
pub struct DemoArgs {
    /// Seconds to run before stopping by itself.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=20))]
    nodes: u16,
    /// Keep the cluster's directory (certificates, configs, logs) afterwards.
    #[arg(long)]
    keep: bool,
}

/// How long the mesh may take to form before the demo gives up.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Every demo node's sensors: 8 detectors, 1,000 readings/s in all, with demand peaks.
const DEMO_SENSORS: &str = "
[sensors.synthetic]
sensors = 8
rate_per_s = 1000
pattern = { kind = \"peaks\", period_s = 60.0, amplitude = 0.5 }
";

/// One node's streams, summed: readings it owns, readings it keeps for neighbours, and the most
/// any replica of its own streams lags behind.
async fn stream_summary(cluster: &LocalCluster, i: usize) -> Option<(u64, u64, u64)> {
    let streams = cluster
        .admin()
        .streams(cluster.nodes[i].listen)
        .await
        .ok()?;
    let (mut own, mut copies, mut lag) = (0, 0, 0);
    for s in streams {
        let held = (s.head + 1).saturating_sub(s.first_seq);
        match s.role {
            StreamRole::Owner { replicas, .. } => {
                own += held;
                lag = replicas.iter().map(|r| r.lag).fold(lag, u64::max);
            }
            StreamRole::Copy => copies += held,
        }
    }
    Some((own, copies, lag))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let bin = std::env::current_exe().context("cannot find the verge binary")?;
    let mut spec = ClusterSpec::corridor(bin, usize::from(args.nodes));
    spec.cluster = "demo".into();
    spec.keep_dir = args.keep;
    spec.extra_config = DEMO_SENSORS.into();
    let mut cluster = LocalCluster::create(&spec)?;
    println!(
        "verge demo: {} nodes on 127.0.0.1, cluster CA and certificates in {}",
        args.nodes,
        cluster.root().display()
    );
    cluster.start_all()?;
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let formed = match cluster.wait_for_mesh(&all, FORM_TIMEOUT).await {
        Ok(t) => t,
        Err(e) => {
            for (i, n) in cluster.nodes.iter().enumerate() {
                eprintln!("--- log of {} ---\n{}", n.id, cluster.log(i));
            }
            return Err(e.into());
        }
    };
    println!(
        "mesh formed in {} ms: every node sees every other alive\n",
        formed.as_millis()
    );
    let members = cluster.members(0).await?;
    println!("members as {} sees them:", cluster.nodes[0].id);
    print!("{}", crate::ctl::members_table(&members));
    println!(
        "\nmetrics: http://{}/metrics   admin: verge ctl --endpoint {} --ca {} --cert {} --key {} members",
        cluster.nodes[0].metrics,
        cluster.nodes[0].listen,
        cluster.ca_dir.join("ca.pem").display(),
        cluster.admin_cert.0.display(),
        cluster.admin_cert.1.display()
    );
    println!("running for {} s (Ctrl-C stops it sooner)\n", args.duration);

    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut next_report = Instant::now() + PROGRESS_EVERY;
    let started = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wake = next_report.min(deadline);
        tokio::select! {
            _ = tokio::time::sleep(wake - now) => {}
            _ = tokio::signal::ctrl_c() => {
                println!("\nCtrl-C: stopping");
                break;
            }
        }
        if Instant::now() >= next_report {
            next_report += PROGRESS_EVERY;
            let mut line = format!("t={:>3}s", started.elapsed().as_secs());
            for (i, n) in cluster.nodes.iter().enumerate() {
                let alive = match cluster.members(i).await {
                    Ok(v) => {
                        let a = v.iter().filter(|m| m.state == MemberState::Alive).count();
                        format!("{a}/{}", v.len())
                    }
                    Err(_) => "unreachable".into(),
                };
                let stored = match stream_summary(&cluster, i).await {
                    Some((own, copies, lag)) => {
                        format!(", {own} readings, {copies} kept for neighbours, lag {lag}")
                    }
                    None => String::new(),
                };
                line.push_str(&format!("\n  {}: {alive} alive{stored}", n.id));
            }
            println!("{line}");
        }
    }

    println!("\nstreams at the end:");
    for (i, n) in cluster.nodes.iter().enumerate() {
        if let Some((own, copies, lag)) = stream_summary(&cluster, i).await {
            println!(
                "  {}: {own} readings of its own sensors (largest replica lag {lag}), {copies} readings kept for neighbours",
                n.id
            );
        }
    }
    let mut clean = true;
    for i in 0..cluster.nodes.len() {
        let code = cluster.terminate(i, Duration::from_secs(5))?;
        if code != Some(0) {
            clean = false;
            eprintln!("{} did not exit cleanly ({code:?})", cluster.nodes[i].id);
        }
    }
    if args.keep {
        println!(
            "stopped; logs and configs kept in {}",
            cluster.root().display()
        );
    } else {
        println!("stopped cleanly; removed {}", cluster.root().display());
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
