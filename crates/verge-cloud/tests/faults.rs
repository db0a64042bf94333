//! Fault injection in process: refused unless enabled, checked, and each mode does to batches
//! what `FaultMode` documents while every other endpoint keeps answering.

mod common;

use std::time::{Duration, Instant};

use common::*;
use verge_cloud::{
    CloudServerConfig, Fault, FaultMode, PostError, PostOutcome, QueryError, RunningCloud, serve,
};

async fn start_with_faults(dir: &std::path::Path) -> RunningCloud {
    serve(CloudServerConfig {
        faults_enabled: true,
        ..config(dir)
    })
    .await
    .expect("cloud starts")
}

fn fault(mode: FaultMode) -> Fault {
    Fault {
        mode,
        delay_ms: None,
    }
}

#[tokio::test]
async fn the_fault_endpoint_is_refused_unless_enabled() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = start(dir.path()).await;
        let c = client(&cloud);
        for answer in [
            c.fault().await,
            c.set_fault(fault(FaultMode::Error)).await,
        ] {
            assert!(
                matches!(&answer, Err(QueryError::Rejected { status: 403, message }) if message.contains("fault injection is off")),
                "{answer:?}"
            );
        }
        // Credentials are checked first.
        let (status, _) = raw(&cloud, "GET", "/v1/faults", &[], b"").await;
        assert_eq!(status, 401);
        assert!(matches!(
            c.post_batch(&batch(1, STREAM, 1, 1)).await,
            Ok(PostOutcome::Stored { .. })
        ));
        cloud.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn faults_are_checked_before_they_are_set() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = start_with_faults(dir.path()).await;
        let c = client(&cloud);
        assert_eq!(c.fault().await, Ok(Fault::NONE));
        let (auth, token) = bearer();
        let auth = [(auth, token.as_str())];
        for body in [
            r#"{"mode":"flaky"}"#,
            r#"{"mode":"error","delay_ms":5}"#,
            r#"{"mode":"delay","delay_ms":300001}"#,
            r#"{"mode":"none","extra":1}"#,
            "not json",
        ] {
            let (status, text) = raw(&cloud, "POST", "/v1/faults", &auth, body.as_bytes()).await;
            assert_eq!(status, 400, "{body}: {text}");
        }
        let (status, _) = raw(&cloud, "POST", "/v1/faults", &auth, &vec![b' '; 5000]).await;
        assert_eq!(status, 413);
        assert_eq!(c.fault().await, Ok(Fault::NONE), "nothing was set");
        let set = c.set_fault(fault(FaultMode::Delay)).await.expect("set");
        assert_eq!(
            set,
            Fault {
                mode: FaultMode::Delay,
                delay_ms: Some(verge_cloud::api::FAULT_DELAY_MS_DEFAULT)
            }
        );
        assert_eq!(c.fault().await, Ok(set));
        cloud.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn each_mode_does_what_it_says_to_batches_only() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = start_with_faults(dir.path()).await;
        let c = client(&cloud);
        let fast = verge_cloud::CloudClient::new(
            &cloud.url(),
            cloud.cert_path(),
            Some(TOKEN.into()),
            Duration::from_millis(300),
        )
        .expect("client");

        // error: 500, nothing stored.
        c.set_fault(fault(FaultMode::Error)).await.expect("set");
        let b = batch(1, STREAM, 1, 2);
        let err = c.post_batch(&b).await.expect_err("500");
        assert!(
            matches!(&err, PostError::Unavailable(m) if m.contains("500")),
            "{err}"
        );
        assert!(c.summary().await.expect("summary").streams.is_empty());

        // garbage: stored, answered with something that is not an acknowledgement.
        c.set_fault(fault(FaultMode::Garbage)).await.expect("set");
        let err = c.post_batch(&b).await.expect_err("garbage");
        assert!(
            matches!(&err, PostError::Unavailable(m) if m.contains("not an acknowledgement")),
            "{err}"
        );
        assert_eq!(c.summary().await.expect("summary").streams[0].windows, 2);

        // down: no HTTP answer at all; reads, health and metrics still answer.
        c.set_fault(fault(FaultMode::Down)).await.expect("set");
        let b2 = batch(1, STREAM, 3, 4);
        let err = c.post_batch(&b2).await.expect_err("down");
        assert!(matches!(err, PostError::Unavailable(_)), "{err}");
        c.health().await.expect("health");
        assert_eq!(c.summary().await.expect("summary").streams[0].windows, 2);
        assert_eq!(c.fault().await.expect("fault").mode, FaultMode::Down);

        // delay: a short client gives up in time; a patient one is answered after the delay.
        c.set_fault(Fault {
            mode: FaultMode::Delay,
            delay_ms: Some(600),
        })
        .await
        .expect("set");
        let started = Instant::now();
        let err = fast.post_batch(&b2).await.expect_err("slow");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            matches!(&err, PostError::Unavailable(m) if m.contains("within")),
            "{err}"
        );
        let started = Instant::now();
        assert!(c.post_batch(&b2).await.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(600));

        // none: the garbage-answered batch is a duplicate.
        c.set_fault(Fault::NONE).await.expect("set");
        assert_eq!(c.post_batch(&b).await, Ok(PostOutcome::Duplicate));
        let s = c.summary().await.expect("summary");
        assert_eq!((s.streams[0].windows, s.streams[0].batches), (4, 2));

        let (_, text) = raw(&cloud, "GET", "/metrics", &[], b"").await;
        for mode in ["error", "garbage", "down", "delay"] {
            assert!(
                text.contains(&format!(
                    "verge_cloud_faults_applied_total{{mode=\"{mode}\"}}"
                )),
                "{mode}: {text}"
            );
        }
        cloud.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn accept_stale_stores_what_fencing_would_refuse() {
    bounded(30, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let cloud = start_with_faults(dir.path()).await;
        let c = client(&cloud);
        c.post_batch(&batch(5, STREAM, 1, 2)).await.expect("post");
        // Without the mode, fencing refuses the stale term.
        let stale = batch(3, STREAM, 3, 4);
        assert_eq!(
            c.post_batch(&stale).await,
            Err(PostError::Stale {
                term: 3,
                highest: 5
            })
        );
        let set = c
            .set_fault(fault(FaultMode::AcceptStale))
            .await
            .expect("set");
        assert_eq!(set.mode, FaultMode::AcceptStale);
        assert_eq!(
            c.post_batch(&stale).await,
            Ok(PostOutcome::Stored {
                stored: 2,
                duplicates: 0
            })
        );
        // Stored with its own term; the cluster's highest stays 5.
        let log = c.all_batches(CLUSTER).await.expect("log");
        assert_eq!(
            log.iter()
                .map(|b| (b.first_seq, b.term, b.accepted))
                .collect::<Vec<_>>(),
            vec![(1, 5, 1), (3, 3, 2)]
        );
        assert_eq!(
            c.summary().await.expect("summary").clusters[0].highest_term,
            5
        );
        let (_, text) = raw(&cloud, "GET", "/metrics", &[], b"").await;
        assert!(
            text.contains("verge_cloud_faults_applied_total{mode=\"accept-stale\"} 1"),
            "{text}"
        );
        // Cleared, fencing is back.
        c.set_fault(Fault::NONE).await.expect("set");
        assert!(matches!(
            c.post_batch(&batch(3, STREAM, 5, 5)).await,
            Err(PostError::Stale { .. })
        ));
        cloud.shutdown().await.expect("shutdown");
    })
    .await;
}
