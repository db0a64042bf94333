//! Helpers shared by the cloud's tests: a server on 127.0.0.1 with an OS-assigned port, batches,
//! and a raw HTTPS request for bodies the client would never send.

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use verge_cloud::{Batch, CloudClient, CloudServerConfig, RunningCloud, Window, serve};

pub const TOKEN: &str = "s3cret-token";
pub const CLUSTER: &str = "corridor";
pub const STREAM: &str = "b1/aggregates/north";

/// Runs `f`, failing the test if it takes longer than `secs`.
pub async fn bounded<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test took longer than {secs} s"))
}

pub fn config(dir: &Path) -> CloudServerConfig {
    CloudServerConfig::new("127.0.0.1:0".parse().expect("addr"), dir.to_owned(), TOKEN)
}

pub async fn start(dir: &Path) -> RunningCloud {
    serve(config(dir)).await.expect("cloud starts")
}

pub fn client(cloud: &RunningCloud) -> CloudClient {
    CloudClient::new(
        &cloud.url(),
        cloud.cert_path(),
        Some(TOKEN.into()),
        Duration::from_secs(10),
    )
    .expect("client")
}

pub fn window(seq: u64) -> Window {
    Window {
        seq,
        ts_ms: 1_700_000_000_000 + seq as i64 * 10_000,
        values: vec![seq as f64, 0.1 * seq as f64, -(seq as f64) / 3.0, 7.0],
    }
}

pub fn batch(term: u64, stream: &str, first: u64, last: u64) -> Batch {
    Batch {
        cluster: CLUSTER.into(),
        term,
        gateway: "b2".into(),
        stream: stream.into(),
        first_seq: first,
        last_seq: last,
        windows: (first..=last).map(window).collect(),
    }
}

/// One HTTP/1.1 request over TLS, connection closed after; returns the status and body. A
/// `Content-Length` is sent for `body` unless `headers` carries one.
pub async fn raw(
    cloud: &RunningCloud,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let tls = verge_cloud::tls::client_config(cloud.cert_path(), None).expect("tls");
    let connector = TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(cloud.addr()).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut s = connector.connect(name, tcp).await.expect("handshake");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    s.flush().await.expect("flush");
    let mut resp = Vec::new();
    // A server that closes without close_notify still gave us its answer.
    let _ = s.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}
