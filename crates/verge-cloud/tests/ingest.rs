//! The reference cloud over real HTTPS on 127.0.0.1: exactly-once storage, fencing, durability
//! across restarts, refusals, and concurrent posts.

mod common;

use std::time::Duration;

use common::*;
use verge_cloud::{CloudClient, CloudServerConfig, PostError, PostOutcome, QueryError, serve};

#[tokio::test]
async fn store_duplicate_overlap_fencing_and_restart() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = start(dir.path()).await;
        let c = client(&cloud);

        // A new key is stored whole.
        let a = batch(2, STREAM, 1, 10);
        assert_eq!(
            c.post_batch(&a).await.expect("stored"),
            PostOutcome::Stored {
                stored: 10,
                duplicates: 0
            }
        );
        // The same key again is acknowledged, not stored again.
        assert_eq!(c.post_batch(&a).await.expect("dup"), PostOutcome::Duplicate);
        // A batch cut differently stores only the windows the cloud lacks.
        assert_eq!(
            c.post_batch(&batch(2, STREAM, 6, 15))
                .await
                .expect("overlap"),
            PostOutcome::Stored {
                stored: 5,
                duplicates: 5
            }
        );
        // Fencing: an older term is refused and stores nothing.
        assert_eq!(
            c.post_batch(&batch(1, STREAM, 16, 20)).await,
            Err(PostError::Stale {
                term: 1,
                highest: 2
            })
        );
        assert!(c.windows(STREAM, 16, 20).await.expect("read").is_empty());
        // A newer term is accepted and becomes the highest.
        assert_eq!(
            c.post_batch(&batch(3, STREAM, 16, 20))
                .await
                .expect("newer"),
            PostOutcome::Stored {
                stored: 5,
                duplicates: 0
            }
        );
        // Fencing comes before the duplicate check: the deposed gateway hears it is deposed.
        assert_eq!(
            c.post_batch(&a).await,
            Err(PostError::Stale {
                term: 2,
                highest: 3
            })
        );
        let cert_before = std::fs::read(cloud.cert_path()).expect("cert");
        let addr = cloud.addr();
        cloud.shutdown().await.expect("shutdown");

        // Everything, including the highest term, survives a restart on the same directory and
        // port, and the same client (its kept-alive connection gone) carries on.
        let cloud = serve(CloudServerConfig {
            listen: addr,
            ..config(dir.path())
        })
        .await
        .expect("restarts on the same port");
        assert_eq!(
            std::fs::read(cloud.cert_path()).expect("cert"),
            cert_before,
            "the self-signed certificate is reused"
        );
        assert_eq!(
            c.post_batch(&batch(2, STREAM, 21, 25)).await,
            Err(PostError::Stale {
                term: 2,
                highest: 3
            })
        );
        assert_eq!(
            c.post_batch(&batch(3, STREAM, 16, 20)).await.expect("dup"),
            PostOutcome::Duplicate
        );
        let windows = c.windows(STREAM, 1, u64::MAX).await.expect("windows");
        assert_eq!(windows.len(), 20);
        for (w, seq) in windows.iter().zip(1..) {
            assert_eq!(w, &window(seq), "window {seq} is exactly what was sent");
        }
        let sum = c.summary().await.expect("summary");
        assert_eq!(sum.clusters.len(), 1);
        assert_eq!(sum.clusters[0].highest_term, 3);
        assert_eq!(sum.clusters[0].windows, 20);
        let s = &sum.streams[0];
        assert_eq!(
            (
                s.node.as_str(),
                s.stream.as_str(),
                s.windows,
                s.first_seq,
                s.last_seq
            ),
            ("b1", STREAM, 20, 1, 20)
        );
        assert_eq!((s.missing, s.batches), (0, 3));
        assert_eq!(sum.nodes[0].windows, 20);
        cloud.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_nothing_is_stored() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        cfg.body_limit = 64 << 10;
        let cloud = serve(cfg).await.expect("cloud");
        let good = serde_json::to_vec(&batch(1, STREAM, 1, 3)).expect("json");
        let json = ("Content-Type", "application/json");
        let auth = bearer();
        let auth = (auth.0, auth.1.as_str());

        let (status, body) = raw(&cloud, "POST", "/v1/batches", &[json], &good).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("missing"), "{body}");
        let wrong = [json, ("Authorization", "Bearer nope")];
        let (status, body) = raw(&cloud, "POST", "/v1/batches", &wrong, &good).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("wrong bearer token"), "{body}");

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{\"cluster\":".to_vec(), "not a batch"),
            (b"[1,2,3]".to_vec(), "not a batch"),
            (
                serde_json::to_vec(&{
                    let mut b = batch(1, STREAM, 1, 3);
                    b.last_seq = 5;
                    b
                })
                .expect("json"),
                "needs 5 windows",
            ),
            (
                serde_json::to_vec(&{
                    let mut b = batch(1, STREAM, 1, 3);
                    b.windows[2].seq = 9;
                    b
                })
                .expect("json"),
                "dense",
            ),
            (
                serde_json::to_vec(&{
                    let mut b = batch(1, STREAM, 1, 1);
                    b.first_seq = 0;
                    b.windows[0].seq = 0;
                    b.last_seq = 0;
                    b
                })
                .expect("json"),
                "first_seq is 0",
            ),
            (
                serde_json::to_vec(&batch(1, "b1/cooked/x", 1, 1)).expect("json"),
                "cooked",
            ),
            (
                serde_json::to_vec(&{
                    let mut b = batch(1, STREAM, 1, 1);
                    b.windows.clear();
                    b
                })
                .expect("json"),
                "windows",
            ),
        ];
        for (body, says) in &cases {
            let (status, answer) = raw(&cloud, "POST", "/v1/batches", &[json, auth], body).await;
            assert_eq!(status, 400, "{answer}");
            assert!(answer.contains(says), "{answer} should say {says}");
        }

        // Declared too large: refused from the headers, before any body is read.
        let (status, body) = raw(
            &cloud,
            "POST",
            "/v1/batches",
            &[json, auth, ("Content-Length", "9000000")],
            b"",
        )
        .await;
        assert_eq!(status, 413, "{body}");
        // Too large without saying so (chunked): refused once the limit is crossed. The server
        // may cut the connection before the answer is read, so the metric is the check.
        let big = serde_json::to_vec(&batch(1, STREAM, 1, 2_000)).expect("json");
        assert!(big.len() > 64 << 10);
        let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
        chunked.extend_from_slice(&big);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let c = client(&cloud);
        let too_large = async {
            let tls = verge_cloud::tls::client_config(cloud.cert_path(), None).expect("tls");
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
                let tcp = tokio::net::TcpStream::connect(cloud.addr()).await?;
                let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
                let mut s = connector.connect(name, tcp).await?;
                let head = format!(
                    "POST /v1/batches HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \
                     {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                s.write_all(head.as_bytes()).await?;
                s.write_all(&chunked).await?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await?;
                let text = String::from_utf8_lossy(&out).into_owned();
                assert!(text.starts_with("HTTP/1.1 413"), "{text}");
                Ok::<_, std::io::Error>(())
            })
            .await;
        };
        too_large.await;
        let (status, metrics) = raw(&cloud, "GET", "/metrics", &[], b"").await;
        assert_eq!(status, 200);
        for (result, n) in [
            ("unauthorized", 2),
            ("bad_request", cases.len()),
            ("too_large", 2),
        ] {
            let line = format!("verge_cloud_batches_total{{result=\"{result}\"}} {n}");
            assert!(metrics.contains(&line), "{line} in\n{metrics}");
        }

        // Reads need the token too; health and metrics do not.
        let (status, _) = raw(&cloud, "GET", "/v1/summary", &[], b"").await;
        assert_eq!(status, 401);
        let (status, body) = raw(&cloud, "GET", "/healthz", &[], b"").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        let (status, body) = raw(&cloud, "GET", "/v1/windows?stream=nope", &[auth], b"").await;
        assert_eq!(status, 400, "{body}");

        // Nothing of any refused batch was stored.
        let sum = c.summary().await.expect("summary");
        assert!(sum.streams.is_empty() && sum.clusters.is_empty(), "{sum:?}");
        let unauth = CloudClient::new(
            &cloud.url(),
            cloud.cert_path(),
            Some("wrong".into()),
            Duration::from_secs(5),
        )
        .expect("client");
        assert!(matches!(
            unauth.summary().await,
            Err(QueryError::Rejected { status: 401, .. })
        ));
        // Also with a body big enough that a server closing without reading it would reset
        // the connection before the client read the 401.
        for n in [1, 800] {
            assert!(matches!(
                unauth.post_batch(&batch(1, STREAM, 1, n)).await,
                Err(PostError::Rejected { status: 401, .. })
            ));
        }
        cloud.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn concurrent_posts_of_one_key_store_it_once() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = start(dir.path()).await;
        let c = client(&cloud);
        let same = batch(4, STREAM, 1, 50);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (c, b) = (c.clone(), same.clone());
            tasks.spawn(async move { c.post_batch(&b).await });
        }
        // Batches of another stream cut three ways, all at once: each window once.
        let other = "b3/aggregates/south";
        for (first, last) in [(1, 40), (21, 60), (1, 60), (41, 60), (10, 30)] {
            let (c, b) = (c.clone(), batch(4, other, first, last));
            tasks.spawn(async move { c.post_batch(&b).await });
        }
        let mut stored_same = 0;
        let mut stored_windows = 0;
        while let Some(r) = tasks.join_next().await {
            match r.expect("task").expect("accepted") {
                PostOutcome::Stored { stored, duplicates } => {
                    stored_windows += stored;
                    if stored + duplicates == 50 && stored == 50 {
                        stored_same += 1;
                    }
                }
                PostOutcome::Duplicate => {}
            }
        }
        assert_eq!(stored_windows, 50 + 60, "every window stored exactly once");
        assert!(stored_same >= 1);
        let sum = c.summary().await.expect("summary");
        let s = sum
            .streams
            .iter()
            .find(|s| s.stream == STREAM)
            .expect("stream");
        assert_eq!((s.windows, s.batches), (50, 1), "one key, stored once");
        let o = sum
            .streams
            .iter()
            .find(|s| s.stream == other)
            .expect("stream");
        assert_eq!(
            (o.windows, o.first_seq, o.last_seq, o.missing),
            (60, 1, 60, 0)
        );
        assert_eq!(c.windows(other, 1, 60).await.expect("windows").len(), 60);
        cloud.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn windows_are_paged_in_order() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = start(dir.path()).await;
        let c = client(&cloud);
        // Posted out of order, read back in order across pages of 10,000.
        for (first, last) in [(12_001, 25_000), (1, 12_000)] {
            c.post_batch(&batch(1, STREAM, first, last))
                .await
                .expect("stored");
        }
        let all = c.windows(STREAM, 1, u64::MAX).await.expect("windows");
        assert_eq!(all.len(), 25_000);
        assert!(all.iter().zip(1..).all(|(w, seq)| w.seq == seq));
        let some = c.windows(STREAM, 9_990, 10_010).await.expect("windows");
        assert_eq!(some.first().map(|w| w.seq), Some(9_990));
        assert_eq!(some.len(), 21);
        assert!(
            c.windows("b9/raw/none", 1, 10)
                .await
                .expect("empty")
                .is_empty()
        );
        cloud.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn the_batch_log_lists_stored_batches_in_acceptance_order() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = start(dir.path()).await;
        let c = client(&cloud);
        c.post_batch(&batch(1, STREAM, 4, 6)).await.expect("post");
        c.post_batch(&batch(1, STREAM, 1, 3)).await.expect("post");
        // A duplicate is not a new entry; another cluster's batch is not in this log.
        assert_eq!(
            c.post_batch(&batch(1, STREAM, 4, 6)).await,
            Ok(PostOutcome::Duplicate)
        );
        let mut other = batch(1, STREAM, 1, 3);
        other.cluster = "elsewhere".into();
        c.post_batch(&other).await.expect("post");
        let mut next = batch(2, STREAM, 7, 9);
        next.gateway = "b3".into();
        c.post_batch(&next).await.expect("post");

        let log = c.all_batches(CLUSTER).await.expect("log");
        assert_eq!(
            log.iter()
                .map(|b| (
                    b.first_seq,
                    b.last_seq,
                    b.term,
                    b.gateway.as_str(),
                    b.accepted
                ))
                .collect::<Vec<_>>(),
            vec![(4, 6, 1, "b2", 1), (1, 3, 1, "b2", 2), (7, 9, 2, "b3", 4)]
        );
        assert_eq!(
            (log[0].cluster.as_str(), log[0].stream.as_str()),
            (CLUSTER, STREAM)
        );
        assert_eq!((log[0].stored, log[0].duplicates), (3, 0));
        assert_eq!(
            c.all_batches("elsewhere").await.expect("log")[0].accepted,
            3
        );
        assert!(c.all_batches("nobody").await.expect("log").is_empty());

        // Paged by hand, and by all_batches across several pages.
        let page = c.batches(CLUSTER, None, Some(2)).await.expect("page");
        assert_eq!(page.batches.len(), 2);
        assert_eq!(page.next_after, Some(2));
        let page = c.batches(CLUSTER, Some(2), Some(2)).await.expect("page");
        assert_eq!((page.batches[0].accepted, page.next_after), (4, None));

        // Bearer token required; queries checked.
        let (status, _) = raw(&cloud, "GET", "/v1/batches?cluster=corridor", &[], b"").await;
        assert_eq!(status, 401);
        let (auth, token) = bearer();
        let auth = [(auth, token.as_str())];
        for (query, says) in [
            ("", "cluster"),
            ("?cluster=Not%20A%20Label", "cluster"),
            ("?cluster=corridor&limit=0", "limit 0"),
            ("?cluster=corridor&limit=10001", "limit 10001"),
            ("?cluster=corridor&after=soon", "after"),
            ("?cluster=corridor&from=1", "from"),
        ] {
            let path = format!("/v1/batches{query}");
            let (status, text) = raw(&cloud, "GET", &path, &auth, b"").await;
            assert_eq!(status, 400, "{query}: {text}");
            assert!(text.contains(says), "{query}: {text}");
        }
        let err = c
            .batches(CLUSTER, None, Some(0))
            .await
            .expect_err("limit 0");
        assert!(
            matches!(err, QueryError::Rejected { status: 400, .. }),
            "{err}"
        );

        // The counter survives a restart: the next batch is numbered after the last.
        cloud.shutdown().await.expect("shutdown");
        let cloud = start(dir.path()).await;
        let c = client(&cloud);
        c.post_batch(&batch(2, STREAM, 10, 10)).await.expect("post");
        let log = c.all_batches(CLUSTER).await.expect("log");
        assert_eq!(
            log.iter().map(|b| b.accepted).collect::<Vec<_>>(),
            vec![1, 2, 4, 5]
        );
        cloud.shutdown().await.expect("shutdown");
    })
    .await;
}
