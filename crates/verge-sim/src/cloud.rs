//! A real `verge cloud serve` process on 127.0.0.1: its data, token file and log in a directory
//! the caller owns, an OS-assigned port read from its first line of output, SIGTERM or SIGKILL,
//! and a restart on the same data and address.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use verge_cloud::{CloudClient, CloudError};

use crate::cluster::{ClusterError, io};

/// How a cloud process is started.
#[derive(Debug, Clone)]
pub struct CloudSpec {
    /// The `verge` binary to run.
    pub verge_bin: PathBuf,
    /// Holds `data/`, `token` and `cloud.log`; created if missing, never removed here.
    pub dir: PathBuf,
    /// The bearer token clients must send (written to `dir/token`, mode 0600).
    pub token: String,
    /// Flags added after the fixed ones (`--faults`, `--body-limit N`), kept for restarts.
    pub extra: Vec<String>,
    /// How long the process has to print the URL it serves on.
    pub start_timeout: Duration,
    /// Run it in its own process group, so a Ctrl-C meant for the caller does not reach it.
    pub own_process_group: bool,
    /// The address it listens on (port chosen by the OS); 127.0.0.1 unless the nodes live
    /// elsewhere (network namespaces).
    pub listen_ip: std::net::IpAddr,
}

impl CloudSpec {
    /// A cloud in `dir` with `token`, no extra flags, 20 s to start.
    pub fn new(verge_bin: PathBuf, dir: PathBuf, token: impl Into<String>) -> Self {
        Self {
            verge_bin,
            dir,
            token: token.into(),
            extra: Vec::new(),
            start_timeout: Duration::from_secs(20),
            own_process_group: false,
            listen_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }
}

/// One `verge cloud serve` process. Dropping it SIGKILLs the process (the directory stays: the
/// caller owns it).
#[derive(Debug)]
pub struct CloudProc {
    spec: CloudSpec,
    child: Option<Child>,
    url: String,
    addr: SocketAddr,
}

impl CloudProc {
    /// Writes the token file and starts the cloud on a port the OS picks; returns once it serves.
    pub fn start(spec: CloudSpec) -> Result<Self, ClusterError> {
        fs::create_dir_all(&spec.dir).map_err(io(format!("creating {}", spec.dir.display())))?;
        let token = spec.dir.join("token");
        fs::write(&token, format!("{}\n", spec.token))
            .map_err(io(format!("writing {}", token.display())))?;
        restrict(&token)?;
        let addr = (spec.listen_ip, 0).into();
        let mut cloud = Self {
            spec,
            child: None,
            url: String::new(),
            addr,
        };
        cloud.spawn()?;
        Ok(cloud)
    }

    /// Spawns the process on this cloud's data directory and reads the URL it prints.
    fn spawn(&mut self) -> Result<(), ClusterError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log_path = self.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        // A restart keeps the address, so nodes configured with the URL find it again.
        let listen = self.addr.to_string();
        let mut cmd = Command::new(&self.spec.verge_bin);
        cmd.args(["cloud", "serve", "--listen", &listen])
            .arg("--data")
            .arg(self.data_dir())
            .arg("--token-file")
            .arg(self.token_path())
            .args(&self.spec.extra)
            .env(
                "RUST_LOG",
                std::env::var("VERGE_CLOUD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if self.spec.own_process_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(io(format!(
            "starting {} cloud serve",
            self.spec.verge_bin.display()
        )))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ClusterError::Cloud("its stdout was not piped".into()));
        };
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end, so the process never blocks on a full pipe; the first word
        // that is a URL is passed on.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("https://")) {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        self.child = Some(child);
        let parsed = rx
            .recv_timeout(self.spec.start_timeout)
            .map_err(|_| {
                format!(
                    "it did not print its URL within {:?}",
                    self.spec.start_timeout
                )
            })
            .and_then(|url| {
                url.trim_start_matches("https://")
                    .parse::<SocketAddr>()
                    .map(|a| (url.clone(), a))
                    .map_err(|e| format!("`{url}` is not https://ADDR: {e}"))
            });
        match parsed {
            Ok((url, addr)) => {
                self.url = url;
                self.addr = addr;
                Ok(())
            }
            Err(why) => {
                self.kill();
                let tail = self.log_tail(20);
                Err(ClusterError::Cloud(format!("{why}; its log:\n{tail}")))
            }
        }
    }

    /// SIGKILLs the process and waits for it: no shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the process and waits up to `grace` for it to exit (then SIGKILLs it). Returns
    /// its exit code, `None` if it had to be killed or was not running.
    pub fn terminate(&mut self, grace: Duration) -> Result<Option<i32>, ClusterError> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = Pid::from_raw(child.id() as i32);
        if let Err(source) = kill(pid, Signal::SIGTERM) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ClusterError::Signal {
                id: "cloud".into(),
                source,
            });
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().map_err(io("waiting for the cloud"))? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().map_err(io("reaping the cloud"))?;
        Ok(None)
    }

    /// Starts the process again on the same data directory and address.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.kill();
        self.spawn()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.spec.token
    }

    /// The directory holding data, token and log.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// The cloud's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.spec.dir.join("data")
    }

    /// The token file.
    pub fn token_path(&self) -> PathBuf {
        self.spec.dir.join("token")
    }

    /// The self-signed certificate clients trust (made by the cloud in its data directory).
    pub fn cert(&self) -> PathBuf {
        verge_cloud::tls::self_signed_paths(&self.data_dir()).0
    }

    /// A client sending this cloud's token, giving each call `timeout`.
    pub fn client(&self, timeout: Duration) -> Result<CloudClient, CloudError> {
        CloudClient::new(
            &self.url,
            &self.cert(),
            Some(self.spec.token.clone()),
            timeout,
        )
    }

    /// The log file (stderr, appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.spec.dir.join("cloud.log")
    }

    /// Its stderr so far, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The `[cloud]` section of a node config that syncs to this cloud as `cluster`.
    pub fn node_config(&self, cluster: &str) -> String {
        format!(
            "\n[cloud]\nurl = \"{}\"\nca = {:?}\ntoken_file = {:?}\ncluster = \"{cluster}\"\ntimeout_ms = 2000\nretry_ms_max = 1000\n",
            self.url,
            self.cert(),
            self.token_path(),
        )
    }
}

impl Drop for CloudProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn restrict(path: &Path) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io(format!("restricting {}", path.display())))
}
