//! Network namespaces for `verge sim run --netns` (root only): each node in its own namespace
//! with its own address on a bridge this run creates, so faults are made by the kernel instead
//! of the nodes' own fault layer.
//!
//! - **Partition**: a `blackhole` route in a node's namespace for each peer it is cut off from —
//!   its datagrams to them vanish, as on a cut cable (both sides get the routes, so both
//!   directions are cut).
//! - **Loss and delay**: `tc qdisc replace dev eth0 root netem loss P% delay D ms` in every
//!   namespace. Kernels built without `sch_netem` refuse that qdisc; [`Netns::check_netem`] finds
//!   out before a run starts, so a scenario with loss or delay is refused up front rather than
//!   run without its faults.
//!
//! Everything is made with `ip` and `tc` (iproute2) and removed on drop: the bridge, the veth
//! pairs and the namespaces. Traffic stays inside the namespaces and the bridge.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

/// Why the namespaces could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Not root, or `ip`/`tc` missing.
    #[error("--netns needs root and iproute2 (`ip`, `tc`): {0}")]
    Unavailable(String),
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or why it could not run.
        detail: String,
    },
}

/// The namespaces of one run; removed on drop.
#[derive(Debug)]
pub struct Netns {
    tag: String,
    bridge: String,
    /// Per node: namespace name and address.
    pub nodes: Vec<(String, Ipv4Addr)>,
    /// The bridge's address (the runner's and the cloud's side).
    pub host: Ipv4Addr,
    created: Vec<String>,
    bridge_made: bool,
}

fn run(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetnsError::Command {
            command: args.join(" "),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Command {
            command: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

impl Netns {
    /// Whether this process can make namespaces (root, `ip` present).
    pub fn available() -> Result<(), NetnsError> {
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0")
        });
        if !root {
            return Err(NetnsError::Unavailable("not running as root".into()));
        }
        for tool in ["ip", "tc"] {
            let found = Command::new(tool).arg("-V").output().is_ok();
            if !found {
                return Err(NetnsError::Unavailable(format!("`{tool}` is not on PATH")));
            }
        }
        Ok(())
    }

    /// One namespace per node on a new bridge in 10.213.`subnet`.0/24 (the bridge is .1, nodes
    /// .2 up). `subnet` keeps concurrent runs apart.
    pub fn create(nodes: usize, subnet: u8) -> Result<Self, NetnsError> {
        Self::available()?;
        if nodes > 250 {
            return Err(NetnsError::Unavailable(format!(
                "{nodes} nodes do not fit one /24"
            )));
        }
        let tag = format!("vs{}", std::process::id() % 1_000_000);
        let mut me = Self {
            bridge: format!("{tag}br"),
            tag: tag.clone(),
            nodes: Vec::new(),
            host: Ipv4Addr::new(10, 213, subnet, 1),
            created: Vec::new(),
            bridge_made: false,
        };
        let host = format!("{}/24", me.host);
        run(&["ip", "link", "add", &me.bridge, "type", "bridge"])?;
        me.bridge_made = true;
        run(&["ip", "addr", "add", &host, "dev", &me.bridge])?;
        run(&["ip", "link", "set", &me.bridge, "up"])?;
        for i in 0..nodes {
            let ns = format!("{tag}n{i}");
            let veth = format!("{tag}v{i}");
            let ip = Ipv4Addr::new(10, 213, subnet, (i + 2) as u8);
            run(&["ip", "netns", "add", &ns])?;
            me.created.push(ns.clone());
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &me.bridge])?;
            run(&["ip", "link", "set", &veth, "up"])?;
            let addr = format!("{ip}/24");
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            me.nodes.push((ns, ip));
        }
        Ok(me)
    }

    /// The command prefix that runs a program in node `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.nodes[i].0.clone(),
        ]
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> IpAddr {
        IpAddr::V4(self.nodes[i].1)
    }

    /// Cuts node `i` off from `blocked` (node indices), replacing its earlier cut.
    pub fn partition(&self, i: usize, blocked: &[usize]) -> Result<(), NetnsError> {
        let ns = &self.nodes[i].0;
        // Remove every blackhole route first (a heal is a partition from nobody).
        for (j, (_, ip)) in self.nodes.iter().enumerate() {
            if j != i {
                let dst = format!("{ip}/32");
                let _ = run(&["ip", "-n", ns, "route", "del", "blackhole", &dst]);
            }
        }
        for &j in blocked {
            let dst = format!("{}/32", self.nodes[j].1);
            run(&["ip", "-n", ns, "route", "add", "blackhole", &dst])?;
        }
        Ok(())
    }

    /// Loss (0..=1) and delay on every datagram node `i` sends, through `tc netem`; both 0
    /// removes the qdisc.
    pub fn netem(&self, i: usize, loss: f64, delay_ms: u32) -> Result<(), NetnsError> {
        let ns = &self.nodes[i].0;
        if loss <= 0.0 && delay_ms == 0 {
            let _ = run(&[
                "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ]);
            return Ok(());
        }
        let loss = format!("{:.4}%", loss * 100.0);
        let delay = format!("{delay_ms}ms");
        run(&[
            "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
            "loss", &loss, "delay", &delay,
        ])
    }

    /// Whether this kernel has `tc netem` (tried on node 0's device, then removed).
    pub fn check_netem(&self) -> Result<(), NetnsError> {
        if self.nodes.is_empty() {
            return Ok(());
        }
        self.netem(0, 0.0, 1).map_err(|e| {
            NetnsError::Unavailable(format!(
                "this kernel has no `netem` qdisc (CONFIG_NET_SCH_NETEM), so loss and delay cannot be made in namespaces here: {e}"
            ))
        })?;
        self.netem(0, 0.0, 0)
    }

    /// The tag of this run's names (`vsPID`).
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            let _ = run(&["ip", "netns", "del", &ns]);
        }
        if self.bridge_made {
            let _ = run(&["ip", "link", "del", &self.bridge]);
        }
    }
}
