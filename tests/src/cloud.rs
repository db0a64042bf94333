//! A real `verge cloud serve` process for the tests: its own temporary directory (data, token
//! file, log), an OS-assigned port read from its first line of output, SIGKILL and restart on
//! the same data, and the `verge cloud fault` subcommand to make it misbehave. Dropping it kills
//! the process and removes the directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use verge_cloud::CloudClient;
use verge_sim::{CloudProc, CloudSpec};

use crate::{run_verge, verge_bin};

/// The bearer token every test cloud is started with.
pub const CLOUD_TOKEN: &str = "test-cloud-token";
/// How long a cloud has to print the address it serves on.
pub const CLOUD_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `verge cloud fault` may take.
const FAULT_CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a raw request may take, from connect to the last byte of the answer.
const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// One `verge cloud serve` process on 127.0.0.1 ([`CloudProc`]) in a temporary directory.
#[derive(Debug)]
pub struct CloudProcess {
    /// Declared before `dir`, so the process is killed before its directory goes.
    proc: CloudProc,
    /// Holds `data/`, `token` and `cloud.log`; removed on drop.
    _dir: tempfile::TempDir,
}

impl CloudProcess {
    /// Starts a cloud on a fresh data directory with `extra` flags, and waits until it serves.
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("verge-cloud-test-")
            .tempdir()
            .expect("tempdir");
        let mut spec = CloudSpec::new(verge_bin(), dir.path().to_owned(), CLOUD_TOKEN);
        spec.extra = extra.iter().map(|s| (*s).to_owned()).collect();
        spec.start_timeout = CLOUD_START_TIMEOUT;
        let proc = CloudProc::start(spec).unwrap_or_else(|e| panic!("{e}"));
        Self { proc, _dir: dir }
    }

    /// SIGKILLs the process and waits for it: no shutdown, no final sync.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the process again on the same data directory and address.
    pub fn restart(&mut self) {
        self.proc.restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        self.proc.url()
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.proc.addr()
    }

    /// The cloud's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.proc.data_dir()
    }

    /// The self-signed certificate clients trust.
    pub fn cert(&self) -> PathBuf {
        self.proc.cert()
    }

    /// Its stderr so far, across restarts.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// A client with the right token and a `timeout` per call.
    pub fn client(&self, timeout: Duration) -> CloudClient {
        self.client_with(Some(CLOUD_TOKEN), timeout)
    }

    /// A client sending `token` (or none).
    pub fn client_with(&self, token: Option<&str>, timeout: Duration) -> CloudClient {
        CloudClient::new(self.url(), &self.cert(), token.map(str::to_owned), timeout)
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
            self.url(),
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
            let tcp = TcpStream::connect(self.addr()).await.expect("connect");
            let name = ServerName::from(self.addr().ip());
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

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}
