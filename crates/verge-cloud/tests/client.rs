//! The client against a fake cloud that misbehaves (500s, garbage, silence), against nothing at
//! all, against a server it does not trust, and with a client certificate instead of a token.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use verge_cloud::{CloudClient, CloudServerConfig, PostError, PostOutcome, QueryError, serve};
use verge_pki::{ClientAuth, ClusterCa};
use verge_proto::NodeId;

/// How the fake cloud answers every request.
#[derive(Clone, Copy)]
enum Fake {
    Status(u16, &'static str),
    Silent(Duration),
}

/// A TLS server on 127.0.0.1 that reads a request's head and answers with `mode`, one request
/// per connection. Returns its address and the certificate to trust.
async fn fake_cloud(dir: &std::path::Path, mode: Fake) -> (SocketAddr, PathBuf) {
    let (cert, key) =
        verge_cloud::tls::ensure_self_signed(dir, "127.0.0.1".parse().expect("ip")).expect("cert");
    let tls = verge_cloud::tls::server_config(&cert, &key, None).expect("tls");
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0; 64 << 10];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                match mode {
                    Fake::Status(code, body) => {
                        let resp = format!(
                            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                        let _ = s.shutdown().await;
                    }
                    Fake::Silent(d) => tokio::time::sleep(d).await,
                }
            });
        }
    });
    (addr, cert)
}

fn fake_client(addr: SocketAddr, cert: &std::path::Path, timeout: Duration) -> CloudClient {
    CloudClient::new(
        &format!("https://{addr}"),
        cert,
        Some(TOKEN.into()),
        timeout,
    )
    .expect("client")
}

#[tokio::test]
async fn failures_sort_into_retryable_and_not() {
    bounded(30, async {
        let b = batch(1, STREAM, 1, 3);
        let cases = [
            (Fake::Status(500, "{\"error\":\"boom\"}"), "retry"),
            (Fake::Status(503, ""), "retry"),
            (Fake::Status(200, "<html>surprise</html>"), "retry"),
            (Fake::Status(200, "{\"status\":\"maybe\"}"), "retry"),
            (Fake::Status(409, "not json"), "retry"),
            (Fake::Status(429, ""), "retry"),
            (
                Fake::Status(401, "{\"error\":\"wrong bearer token\"}"),
                "reject",
            ),
            (Fake::Status(413, "too big"), "reject"),
            (
                Fake::Status(409, "{\"error\":\"stale\",\"term\":1,\"highest\":4}"),
                "stale",
            ),
        ];
        for (mode, expect) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let (addr, cert) = fake_cloud(dir.path(), mode).await;
            let c = fake_client(addr, &cert, Duration::from_secs(5));
            let err = c.post_batch(&b).await.expect_err("fails");
            match expect {
                "retry" => assert!(
                    matches!(err, PostError::Unavailable(_)) && err.is_retryable(),
                    "{err}"
                ),
                "reject" => assert!(matches!(err, PostError::Rejected { .. }), "{err}"),
                _ => assert_eq!(
                    err,
                    PostError::Stale {
                        term: 1,
                        highest: 4
                    }
                ),
            }
            assert!(
                matches!(
                    c.summary().await,
                    Err(QueryError::Unavailable(_)) | Err(QueryError::Rejected { .. })
                ),
                "reads fail too"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_slow_or_absent_cloud_is_unavailable_within_the_timeout() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (addr, cert) = fake_cloud(dir.path(), Fake::Silent(Duration::from_secs(20))).await;
        let c = fake_client(addr, &cert, Duration::from_millis(300));
        let started = Instant::now();
        let err = c
            .post_batch(&batch(1, STREAM, 1, 1))
            .await
            .expect_err("slow");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(&err, PostError::Unavailable(m) if m.contains("within")),
            "{err}"
        );

        // Nobody listening.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let c = fake_client(closed, &cert, Duration::from_secs(2));
        let err = c
            .post_batch(&batch(1, STREAM, 1, 1))
            .await
            .expect_err("closed");
        assert!(matches!(err, PostError::Unavailable(_)), "{err}");

        // A server whose certificate the client does not trust: never sent the batch.
        let other = tempfile::tempdir().expect("tempdir");
        let (addr, _) = fake_cloud(other.path(), Fake::Status(200, "{}")).await;
        let c = fake_client(addr, &cert, Duration::from_secs(2));
        let err = c
            .post_batch(&batch(1, STREAM, 1, 1))
            .await
            .expect_err("untrusted");
        assert!(
            matches!(&err, PostError::Unavailable(m) if m.to_lowercase().contains("certificate")),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_certificate_from_the_client_ca_replaces_the_token() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let ca = ClusterCa::generate("corridor").expect("ca");
        let files = ca.write(&ca_dir).expect("write ca");
        let (cert, key) = ca
            .issue_node(&NodeId::new("b2").expect("id"))
            .expect("issue")
            .write(&ca_dir)
            .expect("write");
        let cfg = CloudServerConfig {
            client_ca: Some(files.cert.clone()),
            ..config(&dir.path().join("cloud"))
        };
        let cloud = serve(cfg).await.expect("cloud");
        let with_cert = CloudClient::with_client_cert(
            &cloud.url(),
            cloud.cert_path(),
            ClientAuth::load(&cert, &key).expect("auth"),
            None,
            Duration::from_secs(5),
        )
        .expect("client");
        assert_eq!(
            with_cert
                .post_batch(&batch(1, STREAM, 1, 4))
                .await
                .expect("stored"),
            PostOutcome::Stored {
                stored: 4,
                duplicates: 0
            }
        );
        let neither = CloudClient::new(
            &cloud.url(),
            cloud.cert_path(),
            None,
            Duration::from_secs(5),
        )
        .expect("client");
        assert!(matches!(
            neither.post_batch(&batch(1, STREAM, 5, 6)).await,
            Err(PostError::Rejected { status: 401, .. })
        ));
        // The token still works alongside.
        assert_eq!(
            client(&cloud).summary().await.expect("summary").clusters[0].windows,
            4
        );
        cloud.shutdown().await.expect("shutdown");

        // A server with no way to authenticate anyone is refused at start.
        let cfg = CloudServerConfig {
            token: None,
            ..config(&dir.path().join("open"))
        };
        assert!(matches!(
            serve(cfg).await,
            Err(verge_cloud::CloudError::NoAuth)
        ));
    })
    .await;
}
