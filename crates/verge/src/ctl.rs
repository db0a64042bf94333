//! `verge ctl`: ask a running node over its admin endpoint; tables for people, `--json` for scripts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use verge_proto::admin::{AdminRequest, GatewayView, MemberView, NodeStatus, SyncView};
use verge_proto::model::ModelsView;
use verge_sim::{AdminClient, AdminError};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  verge ctl --config configs/ctl.toml status\n  verge ctl --endpoint 127.0.0.1:7401 --ca ca/ca.pem --cert certs/admin-ops.pem --key certs/admin-ops.key members --json"
)]
pub struct CtlArgs {
    /// A TOML file naming `endpoint`, `ca`, `cert` and `key` (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's QUIC address.
    #[arg(long)]
    endpoint: Option<SocketAddr>,
    /// The cluster CA certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// An admin certificate issued by `verge cert issue --admin`.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// The node's id, version, uptime and peers alive/suspect/down.
    Status,
    /// The node's membership table: every peer's state, last heartbeat and round trip.
    Members,
    /// The streams this node holds: first and head sequence, durable head, size.
    Streams,
    /// Print records of one stream.
    #[command(
        after_help = "Example:\n  verge ctl --config ctl.toml query --stream b1/raw/syn0 --from 1 --to 100 --json"
    )]
    Query {
        /// The stream, OWNER/KIND/SENSOR (e.g. b1/raw/syn0).
        #[arg(long)]
        stream: verge_proto::StreamId,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last sequence number (inclusive).
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
        /// The most records to print.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Inject network faults on the node (only if its config has `[faults] enabled = true`).
    #[command(
        after_help = "Examples:\n  verge ctl --config ctl.toml fault --partition b2,b3\n  verge ctl --config ctl.toml fault --loss-ppm 50000\n  verge ctl --config ctl.toml fault --delay-ms 200\n  verge ctl --config ctl.toml fault          # heal: no partition, no loss, no delay"
    )]
    Fault {
        /// Peers to cut off, comma-separated; nothing heals.
        #[arg(long, value_delimiter = ',')]
        partition: Vec<verge_proto::NodeId>,
        /// Random loss of datagrams, per million.
        #[arg(long, default_value_t = 0)]
        loss_ppm: u32,
        /// Hold every datagram the node sends this many milliseconds (at most 10000).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(..=i64::from(verge_net::DELAY_MS_MAX)))]
        delay_ms: u32,
    },
    /// The gateway (control-plane leader): who, term, since when; `transfer` moves it.
    #[command(
        after_help = "Examples:\n  verge ctl --config ctl.toml gateway\n  verge ctl --config ctl.toml gateway transfer --to b3"
    )]
    Gateway {
        #[command(subcommand)]
        action: Option<GatewayAction>,
    },
    /// Drain a node: it gives up the gateway role and takes no offloaded work.
    Drain {
        /// The node.
        node: verge_proto::NodeId,
    },
    /// Undo `drain`.
    Undrain {
        /// The node.
        node: verge_proto::NodeId,
    },
    /// The cloud sync on the gateway: backlog per stream, last acknowledged batch, cloud
    /// reachability, term. Asks the node given, or with --gateway the current gateway.
    Sync {
        /// Ask the current gateway rather than the node given.
        #[arg(long)]
        gateway: bool,
    },
    /// Models: deploy one to every node through the control plane, or list what each node runs.
    #[command(
        after_help = "Examples:\n  verge ctl --config ctl.toml model deploy --name default --file models/default/model.toml\n  verge ctl --config ctl.toml model list"
    )]
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
}

#[derive(Debug, Subcommand)]
enum ModelAction {
    /// Deploy a model to every node: the gateway checks that it loads and records it, every node
    /// fetches it and switches; a model that does not load is refused and the old one serves on.
    Deploy {
        /// The model's name (must be the manifest's `name`).
        #[arg(long)]
        name: String,
        /// Its manifest (`model.toml`); the ONNX file it names is sent with it.
        #[arg(long)]
        file: PathBuf,
        /// Wait up to this many seconds until every node runs it (0: do not wait).
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// The versions the control plane records and what every node runs.
    List,
}

#[derive(Debug, Subcommand)]
enum GatewayAction {
    /// Move the gateway role to another voter.
    Transfer {
        /// The voter that should become the gateway.
        #[arg(long)]
        to: verge_proto::NodeId,
    },
}

/// The file behind `--config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CtlFile {
    /// The node's QUIC address.
    endpoint: Option<SocketAddr>,
    /// The cluster CA certificate.
    ca: Option<PathBuf>,
    /// The admin certificate.
    cert: Option<PathBuf>,
    /// Its key.
    key: Option<PathBuf>,
}

fn load_file(path: &Path) -> anyhow::Result<CtlFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("ctl config file {}", path.display()))?;
    let mut f: CtlFile =
        toml::from_str(&text).with_context(|| format!("ctl config file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut f.ca, &mut f.cert, &mut f.key].into_iter().flatten() {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(f)
}

#[derive(Debug, Serialize)]
struct MemberJson<'a> {
    id: &'a str,
    addr: &'a str,
    state: &'a str,
    rtt_ms: Option<f64>,
    last_seen_ms: Option<u64>,
    phi: f64,
    #[serde(rename = "self")]
    is_self: bool,
    /// Inference load as last reported: us per row, rows queued, rows predicted, drained.
    load: Option<LoadJson>,
}

#[derive(Debug, Serialize)]
struct LoadJson {
    us_per_row: f32,
    queued_rows: u32,
    rows: u64,
    drained: bool,
    /// Rows of its own batches a neighbour computed, and its share of its own rows.
    offloaded_rows: u64,
    offloaded_share: f64,
    /// Rows of neighbours' batches it computed.
    taken_rows: u64,
    age_ms: u64,
}

/// The share of a node's own rows that neighbours computed: `rows` counts what it computed,
/// its own and taken ones.
fn offloaded_share(l: &verge_proto::peer::LoadReport) -> f64 {
    let own = (l.rows + l.offloaded_rows).saturating_sub(l.taken_rows);
    if own == 0 {
        0.0
    } else {
        l.offloaded_rows as f64 / own as f64
    }
}

pub async fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(p) => load_file(p)?,
        None => CtlFile {
            endpoint: None,
            ca: None,
            cert: None,
            key: None,
        },
    };
    let endpoint = args
        .endpoint
        .or(file.endpoint)
        .context("no node address: give --endpoint ADDR or `endpoint` in --config")?;
    let ca = args
        .ca
        .or(file.ca)
        .context("no cluster CA: give --ca FILE or `ca` in --config")?;
    let cert = args.cert.or(file.cert);
    let key = args.key.or(file.key);
    let auth = match (&cert, &key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => bail!("give both --cert and --key, or neither"),
    };
    let client = AdminClient::new(&ca, auth);
    let result = match args.command {
        CtlCommand::Status => client
            .status(endpoint)
            .await
            .map(|s| print_status(&s, args.json)),
        CtlCommand::Members => client
            .members(endpoint)
            .await
            .map(|m| print_members(&m, args.json)),
        CtlCommand::Streams => client
            .streams(endpoint)
            .await
            .map(|v| print_streams(&v, args.json)),
        CtlCommand::Query {
            stream,
            from,
            to,
            limit,
        } => client
            .query(endpoint, stream, from, to, limit)
            .await
            .map(|v| print_records(&v, args.json)),
        CtlCommand::Fault {
            partition,
            loss_ppm,
            delay_ms,
        } => client
            .set_faults(endpoint, partition, loss_ppm, delay_ms)
            .await
            .map(|(p, loss, delay)| print_faults(&p, loss, delay, args.json)),
        CtlCommand::Gateway { action: None } => client
            .gateway(endpoint)
            .await
            .map(|v| print_gateway(&v, args.json)),
        CtlCommand::Gateway {
            action: Some(GatewayAction::Transfer { to }),
        } => client
            .to_gateway(endpoint, AdminRequest::GatewayTransfer { to })
            .await
            .map(|v| print_gateway(&v, args.json)),
        CtlCommand::Drain { node } => client
            .to_gateway(
                endpoint,
                AdminRequest::SetDrain {
                    node,
                    drained: true,
                },
            )
            .await
            .map(|v| print_gateway(&v, args.json)),
        CtlCommand::Undrain { node } => client
            .to_gateway(
                endpoint,
                AdminRequest::SetDrain {
                    node,
                    drained: false,
                },
            )
            .await
            .map(|v| print_gateway(&v, args.json)),
        CtlCommand::Sync { gateway } => {
            let target = if gateway {
                match client.gateway(endpoint).await {
                    Ok(v) => v
                        .gateway_addr
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(endpoint),
                    Err(e) => return report(Err(e)),
                }
            } else {
                endpoint
            };
            client.sync(target).await.map(|v| print_sync(&v, args.json))
        }
        CtlCommand::Model {
            action: ModelAction::List,
        } => client
            .models(endpoint)
            .await
            .map(|v| print_models(&v, args.json)),
        CtlCommand::Model {
            action: ModelAction::Deploy { name, file, wait },
        } => return deploy_model(&client, endpoint, &name, &file, wait, args.json).await,
    };
    report(result)
}

/// `verge ctl model deploy`: sends the bundle to the gateway, then (with `wait`) watches every
/// node switch. Exits 1 if a node refused the model or did not switch in time.
async fn deploy_model(
    client: &AdminClient,
    endpoint: SocketAddr,
    name: &str,
    file: &Path,
    wait: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bundle = verge_node::models::bundle_from_manifest(file)
        .with_context(|| format!("cannot deploy {}", file.display()))?;
    if bundle.name != name {
        bail!(
            "{} names model `{}`, not `{name}` (--name must be the manifest's name)",
            file.display(),
            bundle.name
        );
    }
    let (model, changed) = match client.deploy_model(endpoint, bundle).await {
        Ok(r) => r,
        Err(e) => return report(Err(e)),
    };
    if !json {
        println!(
            "{} model `{}` version {} (digest {}, {} bytes)",
            if changed {
                "deployed"
            } else {
                "already deployed:"
            },
            model.name,
            model.version,
            &model.digest[..12.min(model.digest.len())],
            model.bytes
        );
    }
    let switched = |v: &ModelsView| {
        v.nodes.iter().all(|(_, r)| {
            r.as_ref().is_ok_and(|n| {
                n.models.iter().any(|m| {
                    m.name == model.name && m.cluster_version.is_some_and(|c| c >= model.version)
                })
            })
        })
    };
    let refused = |v: &ModelsView| {
        let mark = format!("version {} refused", model.version);
        v.nodes.iter().any(|(_, r)| {
            r.as_ref()
                .is_ok_and(|n| n.problems.iter().any(|p| p.contains(&mark)))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut view = None;
    // With `--wait 0` nothing is asked; otherwise ask until settled or out of time.
    let mut asking = wait > 0;
    while asking {
        match client.models(endpoint).await {
            Ok(v) => {
                let settled = switched(&v) || refused(&v);
                view = Some(v);
                asking = !settled;
            }
            Err(e) => eprintln!("cannot list models yet: {e}"),
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        if asking {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    if json {
        let out = serde_json::json!({
            "model": model,
            "changed": changed,
            "nodes": view.as_ref().map(|v| &v.nodes),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if let Some(v) = &view {
        print_models(v, false)?;
    }
    match &view {
        Some(v) if switched(v) => Ok(ExitCode::SUCCESS),
        Some(v) if refused(v) => {
            eprintln!("error: a node refused the model; it keeps its old one (see problems above)");
            Ok(ExitCode::from(crate::EXIT_FAILED))
        }
        Some(_) => {
            eprintln!(
                "error: not every node runs version {} after {wait} s",
                model.version
            );
            Ok(ExitCode::from(crate::EXIT_FAILED))
        }
        None if wait == 0 => Ok(ExitCode::SUCCESS),
        None => {
            eprintln!("error: could not ask the nodes what they run");
            Ok(ExitCode::from(crate::EXIT_FAILED))
        }
    }
}

fn print_models(v: &ModelsView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let short = |d: &str| d[..12.min(d.len())].to_owned();
    println!("deployed (control plane, as {} sees it):", v.node);
    if v.deployed.is_empty() {
        println!("  none: nodes run the model in their config");
    }
    for d in &v.deployed {
        println!(
            "  {:<16} version {:<4} digest {}  {} bytes",
            d.name,
            d.version,
            short(&d.digest),
            d.bytes
        );
    }
    println!(
        "{:<8} {:<16} {:<14} {:<9} {:<13} SERVING",
        "NODE", "MODEL", "VERSION", "DEPLOYED", "DIGEST"
    );
    let mut problems = Vec::new();
    for (node, r) in &v.nodes {
        match r {
            Ok(n) => {
                if n.models.is_empty() {
                    println!("{node:<8} (no model)");
                }
                for m in &n.models {
                    println!(
                        "{:<8} {:<16} {:<14} {:<9} {:<13} {}",
                        node.as_str(),
                        m.name,
                        m.model_version,
                        m.cluster_version
                            .map_or_else(|| "config".to_owned(), |c| c.to_string()),
                        m.digest.as_deref().map_or_else(|| "-".to_owned(), short),
                        if m.serving { "yes" } else { "no" }
                    );
                }
                problems.extend(n.problems.iter().map(|p| format!("{node}: {p}")));
            }
            Err(e) => println!("{node:<8} (no answer: {e})"),
        }
    }
    for p in problems {
        println!("problem: {p}");
    }
    Ok(())
}

fn report(result: Result<anyhow::Result<()>, AdminError>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(printed) => {
            printed?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (AdminError::Refused { .. } | AdminError::Unreachable { .. })) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(crate::EXIT_UNREACHABLE))
        }
        Err(e) => Err(e.into()),
    }
}

fn ids(v: &[verge_proto::NodeId]) -> Vec<&str> {
    v.iter().map(verge_proto::NodeId::as_str).collect()
}

fn print_gateway(v: &GatewayView, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node": v.node.as_str(),
                "role": v.role,
                "gateway": v.gateway.as_ref().map(verge_proto::NodeId::as_str),
                "gateway_addr": v.gateway_addr,
                "term": v.term,
                "since_ms": v.since_ms,
                "voters": ids(&v.voters),
                "learners": ids(&v.learners),
                "drained": ids(&v.drained),
                "applied_index": v.applied_index,
            }))?
        );
        return Ok(());
    }
    match &v.gateway {
        Some(g) => println!(
            "gateway  {g}{}",
            v.gateway_addr
                .as_ref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default()
        ),
        None => println!("gateway  none known (election in progress?)"),
    }
    println!("term     {}", v.term);
    if let Some(ms) = v.since_ms {
        println!(
            "since    {:.1} s ago (as {} saw it)",
            ms as f64 / 1e3,
            v.node
        );
    }
    println!("asked    {} ({})", v.node, v.role);
    println!("voters   {}", ids(&v.voters).join(", "));
    println!(
        "learners {}",
        if v.learners.is_empty() {
            "-".to_owned()
        } else {
            ids(&v.learners).join(", ")
        }
    );
    println!(
        "drained  {}",
        if v.drained.is_empty() {
            "-".to_owned()
        } else {
            ids(&v.drained).join(", ")
        }
    );
    Ok(())
}

fn print_sync(v: &SyncView, json: bool) -> anyhow::Result<()> {
    if json {
        let streams: Vec<serde_json::Value> = v
            .streams
            .iter()
            .map(|s| {
                serde_json::json!({
                    "stream": s.stream.to_string(),
                    "cursor": s.cursor,
                    "head": s.head,
                    "backlog": s.backlog,
                    "last_acked": s.last_acked,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node": v.node.as_str(),
                "syncing": v.syncing,
                "note": v.note,
                "term": v.term,
                "cloud_url": v.cloud_url,
                "cloud_reachable": v.cloud_reachable,
                "cloud_error": v.cloud_error,
                "outbox_batches": v.outbox_batches,
                "windows_acked": v.windows_acked,
                "backlog": v.streams.iter().map(|s| s.backlog).sum::<u64>(),
                "streams": streams,
            }))?
        );
        return Ok(());
    }
    println!(
        "node     {} ({})",
        v.node,
        if v.syncing {
            "gateway, syncing"
        } else {
            "not syncing"
        }
    );
    if let Some(note) = &v.note {
        println!("note     {note}");
    }
    println!("term     {}", v.term);
    println!(
        "cloud    {} — {}",
        v.cloud_url.as_deref().unwrap_or("not configured"),
        match v.cloud_reachable {
            Some(true) => "reachable".to_owned(),
            Some(false) => format!(
                "UNREACHABLE ({})",
                v.cloud_error.as_deref().unwrap_or("no answer")
            ),
            None => "no answer yet".to_owned(),
        }
    );
    println!(
        "outbox   {} batches; {} windows acknowledged",
        v.outbox_batches, v.windows_acked
    );
    println!(
        "{:<32} {:>10} {:>10} {:>10}  LAST ACKED",
        "STREAM", "CURSOR", "HEAD", "BACKLOG"
    );
    for s in &v.streams {
        println!(
            "{:<32} {:>10} {:>10} {:>10}  {}",
            s.stream.to_string(),
            s.cursor,
            s.head,
            s.backlog,
            s.last_acked
                .map_or("-".to_owned(), |(a, b)| format!("{a}..{b}"))
        );
    }
    Ok(())
}

fn print_status(s: &NodeStatus, json: bool) -> anyhow::Result<()> {
    if json {
        let sensor = s.sensor.as_ref().map(|x| {
            serde_json::json!({
                "source": x.source,
                "state": x.state,
                "detail": x.detail,
                "readings": x.readings,
                "rejected": x.rejected,
                "failures": x.failures,
            })
        });
        println!(
            "{}",
            serde_json::json!({
                "id": s.id.as_str(),
                "version": s.version,
                "uptime_ms": s.uptime_ms,
                "listen": s.listen,
                "peers_alive": s.peers_alive,
                "peers_suspect": s.peers_suspect,
                "peers_down": s.peers_down,
                "sensor": sensor,
                "inference": serde_json::to_value(&s.inference)?,
            })
        );
    } else {
        println!("id       {}", s.id);
        println!("version  {}", s.version);
        println!("uptime   {:.1} s", s.uptime_ms as f64 / 1e3);
        println!("listen   {}", s.listen);
        println!(
            "peers    {} alive, {} suspect, {} down",
            s.peers_alive, s.peers_suspect, s.peers_down
        );
        match &s.sensor {
            Some(x) => println!(
                "sensor   {} {} ({}): {} readings, {} refused, {} failures",
                x.source, x.state, x.detail, x.readings, x.rejected, x.failures
            ),
            None => println!("sensor   none configured"),
        }
        let i = &s.inference;
        let offloaded = if i.rows == 0 {
            0.0
        } else {
            100.0 * i.offloaded_rows as f64 / i.rows as f64
        };
        println!(
            "infer    {} batches, {} rows; p50 {:.1} ms, p99 {:.1} ms, {} past the {} ms deadline",
            i.batches, i.rows, i.p50_ms, i.p99_ms, i.missed, i.deadline_ms
        );
        println!(
            "windows  closed to predicted, aggregated and replicated: p50 {:.1} ms, p99 {:.1} ms",
            i.window_p50_ms, i.window_p99_ms
        );
        println!(
            "offload  {}: {offloaded:.0}% of own rows sent to neighbours ({} rows, {} retried batches), {} rows taken in{}",
            if i.offload { "on" } else { "off" },
            i.offloaded_rows,
            i.retried,
            i.taken_rows,
            if i.slowdown > 1.0 {
                format!(", slowed down x{}", i.slowdown)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn print_streams(streams: &[verge_proto::admin::StreamView], json: bool) -> anyhow::Result<()> {
    use verge_proto::admin::StreamRole;
    if json {
        let rows: Vec<serde_json::Value> = streams
            .iter()
            .map(|s| {
                let mut row = serde_json::json!({
                    "stream": s.id.to_string(),
                    "first_seq": s.first_seq,
                    "head": s.head,
                    "durable_head": s.durable_head,
                    "columns": s.columns,
                    "bytes": s.bytes,
                });
                match &s.role {
                    StreamRole::Owner {
                        acked,
                        under_replicated,
                        recovering,
                        replicas,
                    } => {
                        row["role"] = "owner".into();
                        row["acked"] = (*acked).into();
                        row["under_replicated"] = (*under_replicated).into();
                        row["recovering"] = (*recovering).into();
                        row["replicas"] = replicas
                            .iter()
                            .map(|r| {
                                serde_json::json!({
                                    "node": r.node.as_str(),
                                    "up": r.up,
                                    "hwm": r.hwm,
                                    "lag": r.lag,
                                })
                            })
                            .collect();
                    }
                    StreamRole::Copy => row["role"] = "copy".into(),
                }
                row
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<32} {:<6} {:>10} {:>10} {:>10} {:>10}  REPLICAS (node:hwm lag)",
            "STREAM", "ROLE", "FIRST", "HEAD", "DURABLE", "BYTES"
        );
        for s in streams {
            let (role, replicas) = match &s.role {
                StreamRole::Owner {
                    under_replicated,
                    recovering,
                    replicas,
                    ..
                } => {
                    let mut text: Vec<String> = replicas
                        .iter()
                        .map(|r| {
                            let down = if r.up { "" } else { " DOWN" };
                            format!("{}:{} lag {}{down}", r.node, r.hwm, r.lag)
                        })
                        .collect();
                    if *under_replicated {
                        text.push("UNDER-REPLICATED".into());
                    }
                    if *recovering {
                        text.push("RECOVERING".into());
                    }
                    ("owner", text.join(", "))
                }
                StreamRole::Copy => ("copy", String::new()),
            };
            println!(
                "{:<32} {:<6} {:>10} {:>10} {:>10} {:>10}  {}",
                s.id.to_string(),
                role,
                s.first_seq,
                s.head,
                s.durable_head,
                s.bytes,
                replicas
            );
        }
    }
    Ok(())
}

fn print_records(records: &[(u64, verge_proto::Record)], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|(seq, r)| serde_json::json!({ "seq": seq, "ts_ms": r.ts_ms, "values": r.values }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:>10} {:>15}  VALUES (count, occupancy, speed, queue)",
            "SEQ", "TS_MS"
        );
        for (seq, r) in records {
            let values: Vec<String> = r.values.iter().map(|v| v.to_string()).collect();
            println!("{seq:>10} {:>15}  {}", r.ts_ms, values.join(", "));
        }
    }
    Ok(())
}

fn print_faults(
    partition: &[verge_proto::NodeId],
    loss_ppm: u32,
    delay_ms: u32,
    json: bool,
) -> anyhow::Result<()> {
    let ids: Vec<&str> = partition.iter().map(verge_proto::NodeId::as_str).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({ "partition": ids, "loss_ppm": loss_ppm, "delay_ms": delay_ms })
        );
    } else if ids.is_empty() && loss_ppm == 0 && delay_ms == 0 {
        println!("no faults in force");
    } else {
        println!(
            "cut off from: {}; loss: {loss_ppm} per million; delay: {delay_ms} ms",
            if ids.is_empty() {
                "nobody".into()
            } else {
                ids.join(", ")
            }
        );
    }
    Ok(())
}

/// Renders the members table as `verge ctl members` and `verge demo` print it.
pub fn members_table(members: &[MemberView]) -> String {
    let mut out = format!(
        "{:<12} {:<22} {:<8} {:>8} {:>10} {:>6}  {}\n",
        "ID", "ADDR", "STATE", "RTT_MS", "LAST_SEEN", "PHI", "LOAD (inference, as last reported)"
    );
    for m in members {
        let id = if m.is_self {
            format!("{}*", m.id)
        } else {
            m.id.to_string()
        };
        let rtt = m.rtt_ms.map_or("-".into(), |r| format!("{r:.2}"));
        let seen = m.last_seen_ms.map_or("never".into(), |s| format!("{s} ms"));
        let load = m.load.map_or_else(
            || "-".to_owned(),
            |(l, age)| {
                let mut text = format!(
                    "{:.1} us/row, {} queued, {} rows, offloaded {:.0}%, took {}",
                    l.us_per_row,
                    l.queued_rows,
                    l.rows,
                    100.0 * offloaded_share(&l),
                    l.taken_rows
                );
                if l.drained {
                    text.push_str(", drained");
                }
                if !m.is_self {
                    text.push_str(&format!(" ({age} ms ago)"));
                }
                text
            },
        );
        out.push_str(&format!(
            "{:<12} {:<22} {:<8} {:>8} {:>10} {:>6.1}  {}\n",
            id,
            m.addr,
            m.state.as_str(),
            rtt,
            seen,
            m.phi,
            load
        ));
    }
    out
}

fn print_members(members: &[MemberView], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<MemberJson<'_>> = members
            .iter()
            .map(|m| MemberJson {
                id: m.id.as_str(),
                addr: &m.addr,
                state: m.state.as_str(),
                rtt_ms: m.rtt_ms,
                last_seen_ms: m.last_seen_ms,
                phi: m.phi,
                is_self: m.is_self,
                load: m.load.map(|(l, age_ms)| LoadJson {
                    us_per_row: l.us_per_row,
                    queued_rows: l.queued_rows,
                    rows: l.rows,
                    drained: l.drained,
                    offloaded_rows: l.offloaded_rows,
                    offloaded_share: offloaded_share(&l),
                    taken_rows: l.taken_rows,
                    age_ms,
                }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", members_table(members));
    }
    Ok(())
}
