//! `verge`: one binary for the edge node, its administration, certificates, the local demo and the
//! benchmarks. This file only parses arguments and calls into the crates; errors become a message
//! on stderr and an exit code.

mod bench_corridor;
mod bench_gateway;
mod bench_net;
mod bench_replay;
mod bench_store;
mod ctl;
mod demo;
mod sim;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use verge_pki::ClusterCa;
use verge_proto::NodeId;

/// Exit code for a failed command.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code when a node could not be reached or refused the client.
pub(crate) const EXIT_UNREACHABLE: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "verge",
    version,
    about = "An edge mesh for smart-traffic intersections",
    after_help = "Examples:\n  verge demo --duration 30\n  verge cert init --out ca --cluster main-st\n  verge node --config configs/b1.toml\n  verge ctl --config configs/ctl.toml members --json"
)]
struct Cli {
    /// Log format on stderr. `RUST_LOG` sets the level (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one edge node.
    Node {
        /// The node's TOML config (see configs/).
        #[arg(long)]
        config: PathBuf,
    },
    /// Make the cluster CA and issue node and admin certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Administer a running node over its mTLS admin endpoint.
    Ctl(ctl::CtlArgs),
    /// Run a five-node corridor with the reference cloud on 127.0.0.1 and show what it does.
    Demo(demo::DemoArgs),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The reference cloud a gateway syncs to.
    #[command(subcommand)]
    Cloud(CloudCommand),
    /// Run a scenario (simulations/*.toml) with faults on real processes and check its
    /// invariants.
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

#[derive(Debug, Subcommand)]
enum CloudCommand {
    /// Serve the HTTPS ingest API until Ctrl-C or SIGTERM.
    #[command(
        after_help = "Example:\n  verge cloud serve --listen 127.0.0.1:8443 --data cloud --token-file cloud.token\n\nWithout --tls-cert/--tls-key a self-signed certificate is made once in DATA/tls/cert.pem;\nclients trust that file."
    )]
    Serve {
        /// Address to listen on (port 0 picks a free one and prints it).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Directory for the cloud's store and certificate.
        #[arg(long)]
        data: PathBuf,
        /// File holding the bearer token clients must send.
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// The bearer token (prefer --token-file: command lines are visible to others).
        #[arg(long, env = "VERGE_CLOUD_TOKEN")]
        token: Option<String>,
        /// Accept client certificates signed by this CA instead of a token.
        #[arg(long)]
        client_ca: Option<PathBuf>,
        /// Server certificate (PEM), with --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Server certificate key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Largest POST body accepted, in bytes.
        #[arg(long, default_value_t = verge_cloud::server::BODY_BYTES_MAX_DEFAULT)]
        body_limit: usize,
        /// Let `verge cloud fault` (POST /v1/faults) make this cloud fail batches: for tests
        /// and simulations only.
        #[arg(long)]
        faults: bool,
    },
    /// Show or set the fault a cloud started with `--faults` injects into batch posts.
    #[command(
        after_help = "Examples:\n  verge cloud fault --url https://127.0.0.1:8443 --ca cloud/tls/cert.pem --token-file cloud.token --mode error\n  verge cloud fault --url https://127.0.0.1:8443 --ca cloud/tls/cert.pem --token-file cloud.token --mode delay --delay-ms 3000\n  verge cloud fault --url https://127.0.0.1:8443 --ca cloud/tls/cert.pem --token-file cloud.token   # show\n\nModes, for POST /v1/batches only (every other endpoint keeps working):\n  none     handle batches normally\n  error    HTTP 500, nothing stored\n  garbage  store as usual, but answer 200 with a body that is not an acknowledgement\n  delay    wait --delay-ms (default 10000), then handle normally\n  down     close the connection without an answer, nothing stored\n  accept-stale\n           fencing off: store a batch whose term is below the cluster's highest\n           (keeping its term) instead of refusing it with 409; a broken cloud for\n           testing checkers\n\nExits 3 if the cloud cannot be reached."
    )]
    Fault {
        /// The cloud's base URL, like https://127.0.0.1:8443.
        #[arg(long)]
        url: String,
        /// The certificate to trust for the cloud (its self-signed DATA/tls/cert.pem, or its CA).
        #[arg(long)]
        ca: PathBuf,
        /// File holding the bearer token.
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// The bearer token (prefer --token-file: command lines are visible to others).
        #[arg(long, env = "VERGE_CLOUD_TOKEN")]
        token: Option<String>,
        /// The fault to put in force; without it, the fault in force is shown.
        #[arg(long, value_enum)]
        mode: Option<FaultModeArg>,
        /// For --mode delay: how long each batch is held, in milliseconds.
        #[arg(long, requires = "mode")]
        delay_ms: Option<u64>,
        /// How long to wait for the cloud's answer, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Print the fault in force as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `verge cloud fault --mode`: the [`verge_cloud::FaultMode`]s, by their wire names.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FaultModeArg {
    None,
    Error,
    Garbage,
    Delay,
    Down,
    AcceptStale,
}

impl From<FaultModeArg> for verge_cloud::FaultMode {
    fn from(m: FaultModeArg) -> Self {
        match m {
            FaultModeArg::None => Self::None,
            FaultModeArg::Error => Self::Error,
            FaultModeArg::Garbage => Self::Garbage,
            FaultModeArg::Delay => Self::Delay,
            FaultModeArg::Down => Self::Down,
            FaultModeArg::AcceptStale => Self::AcceptStale,
        }
    }
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key (0600).
    #[command(after_help = "Example:\n  verge cert init --out ca --cluster main-st")]
    Init {
        /// Directory to write into (created if missing; nothing is overwritten).
        #[arg(long)]
        out: PathBuf,
        /// The cluster's name (a DNS label, e.g. `main-st`).
        #[arg(long)]
        cluster: String,
    },
    /// Issue a node or admin certificate signed by the cluster CA.
    #[command(
        after_help = "Examples:\n  verge cert issue --ca ca --node b1 --out certs     # certs/node-b1.pem, .key\n  verge cert issue --ca ca --admin alice --out certs # certs/admin-alice.pem, .key"
    )]
    Issue {
        /// The CA directory made by `verge cert init`.
        #[arg(long)]
        ca: PathBuf,
        /// Issue a node certificate for this node id.
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        node: Option<String>,
        /// Issue an admin certificate for this operator.
        #[arg(long)]
        admin: Option<String>,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Round trip, throughput and handshakes of the mesh transport against raw quinn.
    Net(bench_net::BenchNetArgs),
    /// Group commit against naive inserts, then replicated ingest, ack latency and catch-up on
    /// three real nodes.
    Store(bench_store::BenchStoreArgs),
    /// Gateway failover under SIGKILL (to a new leader, to its first acknowledged batch) and
    /// the cloud-sync backlog drain after an outage, on five real nodes and a reference cloud.
    Gateway(bench_gateway::BenchGatewayArgs),
    /// SUMO detector rows one node ingests per second (parse, validate, store, replicate)
    /// against parsing and validating alone.
    Replay(bench_replay::BenchReplayArgs),
    /// End to end on a corridor (window closed to predicted, aggregated and replicated) and a
    /// node ten times slower with and without offload, on real nodes.
    Corridor(bench_corridor::BenchCorridorArgs),
    /// The default model through tract at batch 1 and 64 against onnxruntime (Python, one
    /// thread) on the same inputs, when onnxruntime is installed.
    Infer(BenchInferArgs),
}

/// Options of `verge bench infer`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  verge bench infer\n  verge bench infer --manifest models/default-noshare/model.toml --no-ort"
)]
struct BenchInferArgs {
    /// The model's manifest; default: the repository's default model.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Seconds per batch size.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Skip the onnxruntime baseline.
    #[arg(long)]
    no_ort: bool,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Node { config } => {
            let cfg = verge_node::NodeConfig::load(&config)?;
            verge_node::run(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert(CertCommand::Init { out, cluster }) => {
            let ca = ClusterCa::generate(&cluster)?;
            let files = ca.write(&out)?;
            println!(
                "cluster CA `{cluster}`: {} (key {}, mode 0600)",
                files.cert.display(),
                files.key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert(CertCommand::Issue {
            ca,
            node,
            admin,
            out,
        }) => {
            let ca = ClusterCa::load(&ca)?;
            let issued = match (node, admin) {
                (Some(id), _) => ca.issue_node(&NodeId::new(id)?)?,
                (None, Some(name)) => ca.issue_admin(&name)?,
                (None, None) => anyhow::bail!("give --node ID or --admin NAME"),
            };
            let (cert, key) = issued.write(&out)?;
            println!(
                "{}: {} (key {}, mode 0600)",
                issued.identity,
                cert.display(),
                key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl(args) => runtime()?.block_on(ctl::run(args)),
        Command::Demo(args) => runtime()?.block_on(demo::run(args)),
        Command::Sim(cmd) => runtime()?.block_on(sim::run(cmd)),
        Command::Bench(BenchCommand::Net(args)) => {
            runtime()?.block_on(bench_net::run(&args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cloud(CloudCommand::Serve {
            listen,
            data,
            token_file,
            token,
            client_ca,
            tls_cert,
            tls_key,
            body_limit,
            faults,
        }) => {
            let token = match token_file {
                Some(f) => Some(verge_cloud::read_token_file(&f)?),
                None => token,
            };
            let cfg = verge_cloud::CloudServerConfig {
                listen,
                data_dir: data,
                token,
                client_ca,
                tls_cert,
                tls_key,
                body_limit,
                faults_enabled: faults,
            };
            runtime()?.block_on(async move {
                let cloud = verge_cloud::serve(cfg).await?;
                println!(
                    "verge cloud serving {} (clients trust {})",
                    cloud.url(),
                    cloud.cert_path().display()
                );
                wait_for_stop().await;
                cloud.shutdown().await?;
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::Cloud(CloudCommand::Fault {
            url,
            ca,
            token_file,
            token,
            mode,
            delay_ms,
            timeout_ms,
            json,
        }) => {
            let token = match token_file {
                Some(f) => Some(verge_cloud::read_token_file(&f)?),
                None => token,
            };
            let timeout = std::time::Duration::from_millis(timeout_ms);
            runtime()?.block_on(async move {
                let client = verge_cloud::CloudClient::new(&url, &ca, token, timeout)?;
                let answer = match mode {
                    Some(mode) => {
                        let fault = verge_cloud::Fault {
                            mode: mode.into(),
                            delay_ms,
                        };
                        client.set_fault(fault).await
                    }
                    None => client.fault().await,
                };
                match answer {
                    Ok(fault) if json => {
                        println!("{}", serde_json::to_string(&fault)?);
                        Ok(ExitCode::SUCCESS)
                    }
                    Ok(fault) => {
                        println!("cloud {url}: fault {fault}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e @ verge_cloud::QueryError::Unavailable(_)) => {
                        eprintln!("error: {e}");
                        Ok(ExitCode::from(EXIT_UNREACHABLE))
                    }
                    Err(e) => Err(e.into()),
                }
            })
        }
        Command::Bench(BenchCommand::Corridor(args)) => {
            runtime()?.block_on(bench_corridor::run(&args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Store(args)) => {
            runtime()?.block_on(bench_store::run(&args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Gateway(args)) => {
            runtime()?.block_on(bench_gateway::run(&args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Infer(args)) => {
            let mut cfg = verge_infer::bench::BenchConfig::default();
            if let Some(m) = args.manifest {
                cfg.manifest = m;
            }
            if !(args.seconds > 0.0 && args.seconds < 600.0) {
                anyhow::bail!("--seconds must be above 0 and below 600");
            }
            cfg.duration = std::time::Duration::from_secs_f64(args.seconds);
            if args.no_ort {
                cfg.ort_script = None;
            }
            let report = verge_infer::bench::run_with(&cfg)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Replay(args)) => {
            runtime()?.block_on(bench_replay::run(&args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
