//! A cluster of real `verge node` processes on this machine.

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use verge_pki::{ClusterCa, PkiError};
use verge_proto::NodeId;
use verge_proto::admin::{MemberState, MemberView};

use crate::AdminClient;

/// Why a local cluster could not be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificates could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A node id was not valid.
    #[error(transparent)]
    Id(#[from] verge_proto::IdError),
    /// A wait ran out of time.
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        ms: u64,
    },
    /// A signal could not be delivered.
    #[error("cannot signal node {id}: {source}")]
    Signal {
        /// The node.
        id: String,
        /// Why.
        source: nix::Error,
    },
    /// The reference cloud process could not be started.
    #[error("the reference cloud did not start: {0}")]
    Cloud(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// A UDP port on 127.0.0.1 that the OS handed out and that was free a moment ago.
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A TCP port on 127.0.0.1 that the OS handed out and that was free a moment ago.
pub fn free_tcp_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What cluster to lay out.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `verge` binary to run.
    pub verge_bin: PathBuf,
    /// Node ids, in corridor order (each is upstream of the next).
    pub ids: Vec<String>,
    /// The cluster's name (in its CA).
    pub cluster: String,
    /// Extra TOML appended to every node's config (e.g. membership tuning).
    pub extra_config: String,
    /// Keep the directory after the cluster is dropped.
    pub keep_dir: bool,
    /// Run each node in its own process group, so a Ctrl-C in the terminal reaches only the
    /// process that started the cluster (which then stops the nodes itself).
    pub own_process_group: bool,
    /// Road neighbours per node id, written as `lateral` (a grid). `None`: a corridor in `ids`
    /// order, each node upstream of the next.
    pub neighbours: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// Per node, an address of its own (a network namespace's) to listen on, with fixed ports
    /// [`NS_QUIC_PORT`] and [`NS_METRICS_PORT`]; `None`: 127.0.0.1 with ports the OS hands out.
    pub addresses: Option<Vec<std::net::IpAddr>>,
    /// Per node, a command the node is started under (e.g. `ip netns exec NS`).
    pub wrap: Option<Vec<Vec<String>>>,
}

/// The QUIC port of a node with an address of its own.
pub const NS_QUIC_PORT: u16 = 7400;
/// The metrics port of a node with an address of its own.
pub const NS_METRICS_PORT: u16 = 9400;

impl ClusterSpec {
    /// `n` nodes `b1`..`bn` running `verge_bin`.
    pub fn corridor(verge_bin: PathBuf, n: usize) -> Self {
        Self {
            verge_bin,
            ids: (1..=n).map(|i| format!("b{i}")).collect(),
            cluster: "local".into(),
            extra_config: String::new(),
            keep_dir: false,
            own_process_group: false,
            neighbours: None,
            addresses: None,
            wrap: None,
        }
    }
}

/// One node of a local cluster.
#[derive(Debug)]
pub struct NodeProc {
    /// Its id.
    pub id: NodeId,
    /// Its config file.
    pub config: PathBuf,
    /// Its QUIC address.
    pub listen: SocketAddr,
    /// Its metrics address.
    pub metrics: SocketAddr,
    /// Its log file (stdout and stderr, appended across restarts).
    pub log: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    child: Option<Child>,
    wrap: Option<Vec<String>>,
}

impl NodeProc {
    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Real node processes sharing one CA, in a directory that is removed when this is dropped.
#[derive(Debug)]
pub struct LocalCluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bin: PathBuf,
    own_process_group: bool,
    /// The nodes, in corridor order.
    pub nodes: Vec<NodeProc>,
    /// The CA directory (`ca.pem`, `ca.key`).
    pub ca_dir: PathBuf,
    /// An admin certificate and key.
    pub admin_cert: (PathBuf, PathBuf),
}

impl LocalCluster {
    /// Makes the CA, certificates, ports and configs; starts nothing.
    pub fn create(spec: &ClusterSpec) -> Result<Self, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("verge-cluster-")
            .tempdir()
            .map_err(io("creating the cluster directory"))?;
        let root = dir.path().to_owned();
        let ca_dir = root.join("ca");
        let certs = root.join("certs");
        let ca = ClusterCa::generate(&spec.cluster)?;
        ca.write(&ca_dir)?;
        let admin_cert = ca.issue_admin("operator")?.write(&certs)?;

        let mut nodes = Vec::new();
        for (k, id) in spec.ids.iter().enumerate() {
            let id = NodeId::new(id.clone())?;
            ca.issue_node(&id)?.write(&certs)?;
            let own = spec.addresses.as_ref().and_then(|a| a.get(k)).copied();
            let listen: SocketAddr = match own {
                Some(ip) => (ip, NS_QUIC_PORT).into(),
                None => (
                    [127, 0, 0, 1],
                    free_udp_port().map_err(io("picking a port"))?,
                )
                    .into(),
            };
            let metrics: SocketAddr = match own {
                Some(ip) => (ip, NS_METRICS_PORT).into(),
                None => (
                    [127, 0, 0, 1],
                    free_tcp_port().map_err(io("picking a port"))?,
                )
                    .into(),
            };
            nodes.push(NodeProc {
                config: root.join(format!("{id}.toml")),
                log: root.join(format!("{id}.log")),
                data_dir: root.join("data").join(id.as_str()),
                id,
                listen,
                metrics,
                child: None,
                wrap: spec.wrap.as_ref().and_then(|w| w.get(k)).cloned(),
            });
        }
        for (i, n) in nodes.iter().enumerate() {
            let mut toml = format!(
                "# Generated by verge-sim for a local cluster.\nid = \"{id}\"\nlisten = \"{listen}\"\ndata_dir = \"data/{id}\"\nmetrics_listen = \"{metrics}\"\n\n[tls]\nca = \"ca/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n",
                id = n.id,
                listen = n.listen,
                metrics = n.metrics
            );
            for p in nodes.iter().filter(|p| p.id != n.id) {
                toml.push_str(&format!(
                    "\n[[peers]]\nid = \"{}\"\naddr = \"{}\"\n",
                    p.id, p.listen
                ));
            }
            if let Some(map) = &spec.neighbours {
                for id in map.get(n.id.as_str()).into_iter().flatten() {
                    toml.push_str(&format!(
                        "\n[[neighbours]]\nid = \"{id}\"\nrelation = \"lateral\"\n"
                    ));
                }
            } else {
                if i > 0 {
                    toml.push_str(&format!(
                        "\n[[neighbours]]\nid = \"{}\"\nrelation = \"upstream\"\n",
                        nodes[i - 1].id
                    ));
                }
                if let Some(next) = nodes.get(i + 1) {
                    toml.push_str(&format!(
                        "\n[[neighbours]]\nid = \"{}\"\nrelation = \"downstream\"\n",
                        next.id
                    ));
                }
            }
            toml.push_str(&spec.extra_config);
            fs::write(&n.config, toml).map_err(io(format!("writing {}", n.config.display())))?;
        }
        let mut dir = Some(dir);
        if spec.keep_dir
            && let Some(d) = dir.take()
        {
            let _ = d.keep();
        }
        Ok(Self {
            dir,
            root,
            bin: spec.verge_bin.clone(),
            own_process_group: spec.own_process_group,
            nodes,
            ca_dir,
            admin_cert,
        })
    }

    /// The cluster's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An admin client with the cluster's admin certificate.
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(
            &self.ca_dir.join("ca.pem"),
            Some((&self.admin_cert.0, &self.admin_cert.1)),
        )
    }

    /// Starts node `i` (no-op if it runs). Its output is appended to its log file.
    pub fn start(&mut self, i: usize) -> Result<(), ClusterError> {
        let bin = self.bin.clone();
        let own_group = self.own_process_group;
        let n = &mut self.nodes[i];
        if n.child.is_some() {
            return Ok(());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(io(format!("opening {}", n.log.display())))?;
        let err = log.try_clone().map_err(io("duplicating the log handle"))?;
        let mut cmd = match n.wrap.as_deref() {
            Some([first, rest @ ..]) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            _ => Command::new(&bin),
        };
        cmd.arg("node")
            .arg("--config")
            .arg(&n.config)
            .env(
                "RUST_LOG",
                std::env::var("VERGE_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        if own_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        n.child = Some(child);
        Ok(())
    }

    /// Starts every node.
    pub fn start_all(&mut self) -> Result<(), ClusterError> {
        (0..self.nodes.len()).try_for_each(|i| self.start(i))
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<(), ClusterError> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child
                .kill()
                .map_err(io(format!("killing {}", self.nodes[i].id)))?;
            child.wait().map_err(io("reaping a node"))?;
        }
        Ok(())
    }

    /// SIGTERMs node `i` and waits up to `grace` for it to exit (then SIGKILLs it). Returns its
    /// exit code, `None` if it had to be killed or was not running.
    pub fn terminate(&mut self, i: usize, grace: Duration) -> Result<Option<i32>, ClusterError> {
        let id = self.nodes[i].id.to_string();
        let Some(mut child) = self.nodes[i].child.take() else {
            return Ok(None);
        };
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGTERM).map_err(|source| ClusterError::Signal { id, source })?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().map_err(io("waiting for a node"))? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().map_err(io("killing a node"))?;
        child.wait().map_err(io("reaping a node"))?;
        Ok(None)
    }

    /// Sends `sig` to node `i` (e.g. SIGSTOP / SIGCONT).
    pub fn signal(&self, i: usize, sig: Signal) -> Result<(), ClusterError> {
        let n = &self.nodes[i];
        if let Some(pid) = n.pid() {
            kill(Pid::from_raw(pid as i32), sig).map_err(|source| ClusterError::Signal {
                id: n.id.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// True if node `i` is running (it may have exited by itself: then it is reaped here).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.nodes[i].child = None;
                false
            }
            None => false,
        }
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Node `i`'s membership table.
    pub async fn members(&self, i: usize) -> Result<Vec<MemberView>, crate::AdminError> {
        self.admin().members(self.nodes[i].listen).await
    }

    /// Waits until node `i` reports `peer` in `state`; returns how long it took.
    pub async fn wait_for_state(
        &self,
        i: usize,
        peer: &NodeId,
        state: MemberState,
        timeout: Duration,
    ) -> Result<Duration, ClusterError> {
        let start = Instant::now();
        let admin = self.admin();
        while start.elapsed() < timeout {
            if let Ok(view) = admin.members(self.nodes[i].listen).await
                && view.iter().any(|m| &m.id == peer && m.state == state)
            {
                return Ok(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(ClusterError::Timeout {
            what: format!("{} to see {peer} {}", self.nodes[i].id, state.as_str()),
            ms: timeout.as_millis() as u64,
        })
    }

    /// Waits until every node in `running` sees every other node in `running` alive.
    pub async fn wait_for_mesh(
        &self,
        running: &[usize],
        timeout: Duration,
    ) -> Result<Duration, ClusterError> {
        let start = Instant::now();
        let admin = self.admin();
        'outer: while start.elapsed() < timeout {
            for &i in running {
                let Ok(view) = admin.members(self.nodes[i].listen).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'outer;
                };
                let all = running.iter().all(|&j| {
                    view.iter()
                        .any(|m| m.id == self.nodes[j].id && m.state == MemberState::Alive)
                });
                if !all {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'outer;
                }
            }
            return Ok(start.elapsed());
        }
        Err(ClusterError::Timeout {
            what: "the mesh to form".into(),
            ms: timeout.as_millis() as u64,
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // `dir` (a TempDir) removes the directory when it drops, unless it was kept.
        let _ = self.dir.take();
    }
}
