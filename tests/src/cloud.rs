//! A real `verge cloud serve` process for the tests: its own temporary directory (data, token
//! file, log), an OS-assigned port read from its first line of output, SIGKILL and restart on
//! the same data, and the `verge cloud fault` subcommand to make it misbehave. Dropping it kills
//! the process and removes the directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use verge_cloud::CloudClient;

use crate::{run_verge, verge_bin};

/// The bearer token every test cloud is started with.
pub const CLOUD_TOKEN: &str = "test-cloud-token";
/// How long a cloud has to print the address it serves on.
pub const CLOUD_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `verge cloud fault` may take.
const FAULT_CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a raw request may take, from connect to the last byte of the answer.
const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// One `verge cloud serve` process on 127.0.0.1.
#[derive(Debug)]
pub struct CloudProcess {
    /// Holds `data/`, `token` and `cloud.log`; removed on drop.
    dir: tempfile::TempDir,
    /// Flags added after the fixed ones (`--faults`, `--body-limit N`), kept for restarts.
    extra: Vec<String>,
    child: Option<Child>,
    url: String,
    addr: SocketAddr,
}

impl CloudProcess {
    /// Starts a cloud on a fresh data directory with `extra` flags, and waits until it serves.
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("verge-cloud-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("token"), format!("{CLOUD_TOKEN}\n")).expect("token file");
        let mut cloud = Self {
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            url: String::new(),
            addr: "127.0.0.1:0".parse().expect("addr"),
        };
        cloud.spawn();
        cloud
    }

    /// Spawns the process on this cloud's data directory and reads the URL it prints.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the cloud is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let data = self.data_dir();
        let token = self.dir.path().join("token");
        // A restart keeps the address, so nodes configured with the URL find it again.
        let listen = self.addr.to_string();
        let mut child = Command::new(verge_bin())
            .args(["cloud", "serve", "--listen", &listen])
            .arg("--data")
            .arg(&data)
            .arg("--token-file")
            .arg(&token)
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn verge cloud serve");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end, so the process never blocks on a full pipe; the first line
        // that names the URL is passed on.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("https://")) {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        self.child = Some(child);
        let url = match rx.recv_timeout(CLOUD_START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => panic!(
                "the cloud did not print its URL within {CLOUD_START_TIMEOUT:?}:\n{}",
                self.log()
            ),
        };
        self.addr = url
            .trim_start_matches("https://")
            .parse()
            .unwrap_or_else(|e| panic!("`{url}` is not https://ADDR: {e}"));
        self.url = url;
    }

    /// SIGKILLs the process and waits for it: no shutdown, no final sync.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same data directory and address.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cloud's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The self-signed certificate clients trust.
    pub fn cert(&self) -> PathBuf {
        verge_cloud::tls::self_signed_paths(&self.data_dir()).0
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("cloud.log")
    }

    /// Its stderr so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A client with the right token and a `timeout` per call.
    pub fn client(&self, timeout: Duration) -> CloudClient {
        self.client_with(Some(CLOUD_TOKEN), timeout)
    }

    /// A client sending `token` (or none).
    pub fn client_with(&self, token: Option<&str>, timeout: Duration) -> CloudClient {
        CloudClient::new(&self.url, &self.cert(), token.map(str::to_owned), timeout)
            .expect("client")
    }

    /// Runs `verge cloud fault` against this cloud with `args` (`--mode delay --delay-ms 3000`,
    /// or nothing to show the fault in force).
    pub fn fault_cli(&self, args: &[&str]) -> Output {
        let cert = path_str(&self.cert());
        let mut all = vec![
            "cloud",
            "fault",
            "--url",
            &self.url,
            "--ca",
            &cert,
            "--token",
            CLOUD_TOKEN,
        ];
        all.extend_from_slice(args);
        run_verge(&all, FAULT_CLI_TIMEOUT)
    }

    /// Sets the fault with `verge cloud fault`, failing the test if the command fails.
    pub fn set_fault(&self, args: &[&str]) {
        let out = self.fault_cli(args);
        assert!(
            out.status.success(),
            "verge cloud fault {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `GET /metrics`: the OpenMetrics text.
    pub async fn metrics(&self) -> String {
        let (status, body) = self
            .raw("GET", "/metrics", &[], b"")
            .await
            .expect("/metrics answers");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// One HTTP/1.1 request over TLS, connection closed after, for bodies the client would
    /// never send. `Some((status, body))`, or `None` when the connection closed without an
    /// HTTP answer. Sends the right bearer token unless `headers` names an `Authorization`.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<(u16, String)> {
        let exchange = async {
            let tls = verge_cloud::tls::client_config(&self.cert(), None).expect("tls config");
            let connector = TlsConnector::from(Arc::new(tls));
            let tcp = TcpStream::connect(self.addr).await.expect("connect");
            let name = ServerName::from(self.addr.ip());
            let mut s = connector.connect(name, tcp).await.expect("handshake");
            let mut head =
                format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                head.push_str(&format!("Authorization: Bearer {CLOUD_TOKEN}\r\n"));
            }
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            // The server may close before reading everything (mode down): not an error here.
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body).await;
            let _ = s.flush().await;
            let mut resp = Vec::new();
            // A server that closes without close_notify, or resets, still gave what it gave.
            let _ = s.read_to_end(&mut resp).await;
            resp
        };
        let resp = tokio::time::timeout(RAW_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no end within {RAW_TIMEOUT:?}"));
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        self.kill();
        // `dir` (a TempDir) removes the directory when it drops.
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}
