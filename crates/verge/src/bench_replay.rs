//! `verge bench replay`: how many SUMO detector rows one node ingests per second, from its files
//! to readings acknowledged by two holders (parse + validate + store + replicate), against
//! parsing and validating alone in this process.
//!
//! The input is a real SUMO run: `simulations/sumo/make_grid.sh` (the 3x3 grid, 72 E1 loops and
//! 72 E2 detectors, every 1 s; 158,256 rows) unless `--sumo-dir` names one made before. Three
//! real `verge node` processes run on 127.0.0.1 ([`verge_sim::LocalCluster`]); `b1` replays every
//! light's detectors as fast as it can (`speed` 100,000) and `b2`, `b3` hold its copies. The
//! figure counts from `b1`'s start until its replay is finished and every one of its raw streams
//! is acknowledged at its head with no replica behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use verge_proto::StreamKind;
use verge_proto::admin::StreamRole;
use verge_sim::{ClusterSpec, LocalCluster};
use verge_traffic::Validator;
use verge_traffic::replay::{ReplayConfig, ReplaySource, declared_detectors};

use crate::bench_net::thousands;

const LIGHTS: [&str; 9] = ["A0", "A1", "A2", "B0", "B1", "B2", "C0", "C1", "C2"];
const POLL: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_secs(300);

/// Options of `verge bench replay`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  verge bench replay\n  verge bench replay --sumo-dir run --json"
)]
pub struct BenchReplayArgs {
    /// A directory made by `simulations/sumo/make_grid.sh DIR --freq 1` (detectors.add.xml,
    /// out/e1.xml, out/e2.xml); without it one is made in a temporary directory (needs SUMO).
    #[arg(long)]
    sumo_dir: Option<PathBuf>,
    /// Print the figures as JSON too.
    #[arg(long)]
    json: bool,
    /// Keep the cluster's directory (configs, logs) and print where it is.
    #[arg(long)]
    keep: bool,
}

fn make_grid(dir: &Path) -> anyhow::Result<()> {
    verge_sim::sumo::make_grid(
        Path::new("simulations/sumo/make_grid.sh"),
        dir,
        &["--freq", "1"],
    )
    .context("making the SUMO grid (or pass --sumo-dir with a grid made before)")
}

/// Parses and validates every row in this process; returns (detectors, rows, refused, seconds).
fn parse_only(grid: &Path) -> anyhow::Result<(usize, u64, u64, f64)> {
    let started = Instant::now();
    let detectors = std::fs::File::open(grid.join("detectors.add.xml"))?;
    let ids = declared_detectors(std::io::BufReader::new(detectors))?;
    let detectors = ids.len();
    let mut validator = Validator::new(ids.into_iter().map(|(id, _)| id));
    let src = ReplaySource::open(
        Some(&grid.join("out/e1.xml")),
        Some(&grid.join("out/e2.xml")),
        ReplayConfig {
            base_epoch_ms: 1_700_000_000_000,
            speed: 1.0,
            tls: LIGHTS.iter().map(|s| s.to_string()).collect(),
        },
    )?;
    let (mut rows, mut refused) = (0u64, 0u64);
    for item in src {
        match item.map(|r| validator.check(&r)) {
            Ok(Ok(())) => rows += 1,
            // SUMO's E1 occupancy exceeds 100 % in a few 1 s intervals; such rows are refused.
            _ => refused += 1,
        }
    }
    Ok((detectors, rows, refused, started.elapsed().as_secs_f64()))
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: &BenchReplayArgs) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("verge-bench-replay-")
        .tempdir()?;
    let grid = match &args.sumo_dir {
        Some(d) => d.clone(),
        None => {
            eprintln!("making the SUMO grid run (simulations/sumo/make_grid.sh --freq 1) ...");
            let g = dir.path().join("grid");
            make_grid(&g)?;
            g
        }
    };
    let grid =
        std::fs::canonicalize(&grid).with_context(|| format!("cannot find {}", grid.display()))?;
    let (detectors, parsed_rows, parse_refused, parse_s) = parse_only(&grid)?;
    eprintln!(
        "parse + validate in this process: {} rows in {parse_s:.2} s, {parse_refused} refused",
        thousands((parsed_rows + parse_refused) as f64)
    );

    let bin = std::env::current_exe().context("cannot find the verge binary")?;
    let mut spec = ClusterSpec::corridor(bin, 3);
    spec.keep_dir = args.keep;
    let mut c = LocalCluster::create(&spec)?;
    if args.keep {
        println!("cluster directory: {}", c.root().display());
    }
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&c.nodes[0].config)?;
        write!(
            f,
            "\n[sensors.replay]\ndetectors = {:?}\ne1 = {:?}\ne2 = {:?}\ntls = {:?}\nspeed = 100000\n",
            grid.join("detectors.add.xml"),
            grid.join("out/e1.xml"),
            grid.join("out/e2.xml"),
            LIGHTS,
        )?;
    }
    c.start(1)?;
    c.start(2)?;
    c.wait_for_mesh(&[1, 2], Duration::from_secs(30)).await?;
    let started = Instant::now();
    c.start(0)?;
    let admin = c.admin();
    let addr = c.nodes[0].listen;
    let (readings, rejected, elapsed) = loop {
        if started.elapsed() > DEADLINE {
            bail!("b1 did not finish its replay in {} s", DEADLINE.as_secs());
        }
        tokio::time::sleep(POLL).await;
        let Ok(status) = admin.status(addr).await else {
            continue;
        };
        let Some(sensor) = status.sensor else {
            bail!("b1 has no sensor source");
        };
        if sensor.state != "finished" {
            continue;
        }
        let streams = admin.streams(addr).await?;
        let own: Vec<_> = streams
            .iter()
            .filter(|s| s.id.kind == StreamKind::Raw && s.id.owner.as_str() == "b1")
            .collect();
        let done = own.iter().map(|s| s.head).sum::<u64>() == sensor.readings
            && own.iter().all(|s| {
                matches!(&s.role, StreamRole::Owner { acked, replicas, .. }
                    if *acked == s.head && !replicas.is_empty() && replicas.iter().all(|r| r.lag == 0))
            });
        if done {
            break (sensor.readings, sensor.rejected, started.elapsed());
        }
    };
    let per_s = (readings + rejected) as f64 / elapsed.as_secs_f64();
    let parse_per_s = (parsed_rows + parse_refused) as f64 / parse_s;
    println!();
    println!("MEASURE                                         VALUE         BASELINE     RATIO");
    println!(
        "SUMO rows ingested by one node, R=2 W=2  {:>12}/s  {:>12}/s  {:>7.2}x",
        thousands(per_s),
        thousands(parse_per_s),
        per_s / parse_per_s
    );
    println!();
    println!(
        "{} rows ({} E1 + E2 detectors of 9 lights, 1 s intervals) from b1's start to every raw \
         stream acknowledged by 2 holders with no replica behind: {:.2} s; {} refused (out of \
         range). Baseline: parse + validate only, in this process ({:.2} s).",
        thousands((readings + rejected) as f64),
        detectors,
        elapsed.as_secs_f64(),
        rejected,
        parse_s
    );
    let figures = json!({
        "rows": readings,
        "rejected": rejected,
        "seconds": elapsed.as_secs_f64(),
        "rows_per_s": per_s,
        "parse_validate_rows_per_s": parse_per_s,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    }
    Ok(figures)
}
