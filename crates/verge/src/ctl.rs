//! `verge ctl`: ask a running node over its admin endpoint; tables for people, `--json` for scripts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use verge_proto::admin::{MemberView, NodeStatus};
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
        after_help = "Examples:\n  verge ctl --config ctl.toml fault --partition b2,b3\n  verge ctl --config ctl.toml fault --loss-ppm 50000\n  verge ctl --config ctl.toml fault          # heal: no partition, no loss"
    )]
    Fault {
        /// Peers to cut off, comma-separated; nothing heals.
        #[arg(long, value_delimiter = ',')]
        partition: Vec<verge_proto::NodeId>,
        /// Random loss of datagrams, per million.
        #[arg(long, default_value_t = 0)]
        loss_ppm: u32,
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
        } => client
            .set_faults(endpoint, partition, loss_ppm)
            .await
            .map(|(p, loss)| print_faults(&p, loss, args.json)),
    };
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

fn print_status(s: &NodeStatus, json: bool) -> anyhow::Result<()> {
    if json {
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
    json: bool,
) -> anyhow::Result<()> {
    let ids: Vec<&str> = partition.iter().map(verge_proto::NodeId::as_str).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({ "partition": ids, "loss_ppm": loss_ppm })
        );
    } else if ids.is_empty() && loss_ppm == 0 {
        println!("no faults in force");
    } else {
        println!(
            "cut off from: {}; loss: {loss_ppm} per million",
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
        "{:<12} {:<22} {:<8} {:>8} {:>10} {:>6}\n",
        "ID", "ADDR", "STATE", "RTT_MS", "LAST_SEEN", "PHI"
    );
    for m in members {
        let id = if m.is_self {
            format!("{}*", m.id)
        } else {
            m.id.to_string()
        };
        let rtt = m.rtt_ms.map_or("-".into(), |r| format!("{r:.2}"));
        let seen = m.last_seen_ms.map_or("never".into(), |s| format!("{s} ms"));
        out.push_str(&format!(
            "{:<12} {:<22} {:<8} {:>8} {:>10} {:>6.1}\n",
            id,
            m.addr,
            m.state.as_str(),
            rtt,
            seen,
            m.phi
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
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", members_table(members));
    }
    Ok(())
}
