//! `verge sim`: run a scenario from simulations/ on real node and cloud processes, with its
//! faults, and judge it (see `verge_sim::runner`); or only check a scenario file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use verge_sim::runner::{self, Hooks, RunOptions};
use verge_sim::scenario::Scenario;

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run a scenario: a corridor of real `verge node` processes and a cloud, the fault
    /// timeline, then the invariant checks; writes report.json and report.html.
    #[command(
        after_help = "Examples:\n  verge sim run simulations/quickstart.toml\n  verge sim run simulations/gateway-failover.toml --seed 7 --out runs/gw\n  verge sim run simulations/soak.toml --duration 10m\n\nExits 0 when every invariant held, 1 when one did not (the report names it), 2 when the\nscenario file is refused, 3 when the run could not be carried out."
    )]
    Run(RunArgs),
    /// Check a scenario file without running it.
    Check {
        /// The scenario file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file (see simulations/README.md).
    file: PathBuf,
    /// The seed of the run's random choices [default: the scenario's, else a random one, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Directory for report.json and report.html [default: sim-runs/NAME-SEED].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run this long instead of the scenario's duration (`90`, `90s`, `10m`, `1h`); the fault
    /// times are scaled with it.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<f64>,
    /// Directory holding `default/model.toml` [default: ./models]; without one the nodes run
    /// without predictions.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Keep the cluster's directory (configs, logs, data); `OUT/cluster` points to it.
    #[arg(long)]
    keep: bool,
    /// Longest wait, in seconds, for replicas and the cloud to catch up after the run.
    #[arg(long, default_value_t = 60)]
    settle_s: u64,
    /// Readings per second per node of synthetic traffic, instead of the scenario's.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// No progress lines; only the summary.
    #[arg(long)]
    quiet: bool,
    /// Run every node in its own network namespace (root, iproute2): partitions become
    /// blackhole routes and loss/delay `tc netem`, instead of the nodes' own fault layer.
    #[arg(long)]
    netns: bool,
}

/// `90`, `90s`, `10m`, `1h` → seconds.
fn parse_duration(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1.0),
        Some((i, 'm')) => (&s[..i], 60.0),
        Some((i, 'h')) => (&s[..i], 3600.0),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90, 90s, 10m or 1h"))?;
    let secs = v * mult;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("`{s}` is not between 0 and 24 h"));
    }
    Ok(secs)
}

/// Waits for SIGINT or SIGTERM; names it. If the handlers cannot be installed, never returns.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e6 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate between 0 and 1000000 readings/s"
        )),
    }
}

fn model_manifest(dir: Option<&Path>) -> Option<PathBuf> {
    let m = dir
        .unwrap_or(Path::new("models"))
        .join("default/model.toml");
    m.canonicalize().ok().filter(|p| p.is_file())
}

pub async fn run(cmd: SimCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SimCommand::Check { file } => match Scenario::load(&file) {
            Ok(s) => {
                println!(
                    "{}: scenario `{}` is valid: {} nodes, {} s, {} faults",
                    file.display(),
                    s.name,
                    s.nodes.len(),
                    s.duration_s,
                    s.faults.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(2))
            }
        },
        SimCommand::Run(args) => run_scenario(args).await,
    }
}

async fn run_scenario(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scenario = match Scenario::load(&args.file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let seed = args
        .seed
        .or(scenario.seed)
        .unwrap_or_else(runner::random_seed);
    if args.seed.is_none() && scenario.seed.is_none() {
        println!(
            "seed {seed} chosen at random; replay with: verge sim run {} --seed {seed}",
            args.file.display()
        );
    }
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("sim-runs").join(format!("{}-{seed}", scenario.name)));
    let bin = std::env::current_exe().context("cannot find the verge binary")?;
    let opts = RunOptions {
        verge_bin: bin,
        seed: Some(seed),
        out: out.clone(),
        duration_s: args.duration,
        model: model_manifest(args.models.as_deref()),
        // The scenarios' own directory holds the SUMO grid recipe.
        make_grid: args
            .file
            .parent()
            .unwrap_or(Path::new("."))
            .join("sumo/make_grid.sh"),
        keep: args.keep,
        progress: !args.quiet,
        settle_timeout: Duration::from_secs(args.settle_s),
        netns: args.netns,
        rate_per_s: args.rate,
    };
    // Ctrl-C or SIGTERM ends the run: dropping it kills the nodes and the cloud and removes
    // what it made (they run in their own process groups, so nothing else would).
    let run = runner::run(&scenario, &opts, Hooks::default());
    let outcome = tokio::select! {
        r = run => r,
        sig = stop_signal() => {
            eprintln!("stopped by {sig}: the nodes and the cloud are killed; no report");
            return Ok(ExitCode::from(130));
        }
    };
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: the run could not be carried out: {e}");
            return Ok(ExitCode::from(3));
        }
    };
    print!("{}", runner::summary(&report));
    println!(
        "report: {} and {}",
        out.join("report.json").display(),
        out.join("report.html").display()
    );
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90"), Ok(90.0));
        assert_eq!(parse_duration("90s"), Ok(90.0));
        assert_eq!(parse_duration("10m"), Ok(600.0));
        assert_eq!(parse_duration("1h"), Ok(3600.0));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-5").is_err());
        assert!(parse_duration("0").is_err());
    }
}
