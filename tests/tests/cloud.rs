//! The reference cloud as a process (`verge cloud serve`): bad requests are refused with the
//! right status and store nothing, a batch posted twice is stored once, every injected fault
//! (`verge cloud serve --faults`, `verge cloud fault`) reaches the client as retryable within its
//! timeout and a retry after the fault stores the batch exactly once, what was stored
//! survives a SIGKILL, and a stale batch let through by `accept-stale` shows in the batch log.

use std::time::{Duration, Instant};

use verge_cloud::{Batch, CloudClient, PostError, PostOutcome, QueryError, Summary, Window};
use verge_tests::cloud::CloudProcess;
use verge_tests::metric;

/// Every test here is bounded by this (the suite runs in a few seconds).
const CLOUD_TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The client timeout for calls that should succeed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The client timeout in the fault test: shorter than the injected delay.
const SHORT_TIMEOUT: Duration = Duration::from_secs(1);
/// How much past its timeout a client may take to give up (a loaded 2-core machine).
const GIVE_UP_SLACK: Duration = Duration::from_millis(1500);
const CLUSTER: &str = "corridor";

fn window(seq: u64) -> Window {
    Window {
        seq,
        ts_ms: 1_700_000_000_000 + seq as i64 * 10_000,
        values: vec![seq as f64, 0.5, -(seq as f64) / 4.0],
    }
}

fn batch(term: u64, stream: &str, first: u64, last: u64) -> Batch {
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

async fn summary(client: &CloudClient) -> Summary {
    client.summary().await.expect("summary")
}

/// (batches, windows) the cloud holds for `stream`, or (0, 0).
fn held(s: &Summary, stream: &str) -> (u64, u64) {
    s.streams
        .iter()
        .find(|st| st.stream == stream)
        .map_or((0, 0), |st| (st.batches, st.windows))
}

async fn bounded(f: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(CLOUD_TEST_TIMEOUT, f)
        .await
        .expect("the test finished within its bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_store_nothing() {
    bounded(async {
        let mut cloud = CloudProcess::start(&["--body-limit", "4096"]);
        let client = cloud.client(CALL_TIMEOUT);
        let stream = "b1/aggregates/north";
        let good = batch(1, stream, 1, 3);

        for (token, why) in [(None, "missing"), (Some("not-the-token"), "wrong")] {
            let err = cloud
                .client_with(token, CALL_TIMEOUT)
                .post_batch(&good)
                .await
                .expect_err("refused");
            assert!(
                matches!(&err, PostError::Rejected { status: 401, message } if message.contains(why)),
                "{err}"
            );
        }
        let (status, body) = cloud
            .raw("POST", "/v1/batches", &[], br#"{"cluster":"corridor","term":"#)
            .await
            .expect("an answer");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("not a batch"), "{body}");
        let big = batch(1, stream, 1, 200);
        let err = client.post_batch(&big).await.expect_err("too large");
        assert!(
            matches!(err, PostError::Rejected { status: 413, .. }),
            "{err}"
        );
        assert_eq!(
            summary(&client).await,
            Summary::default(),
            "nothing stored"
        );

        // Fencing: after term 5 is accepted, term 4 is refused, even for a key already held.
        let accepted = batch(5, stream, 1, 3);
        assert_eq!(
            client.post_batch(&accepted).await,
            Ok(PostOutcome::Stored {
                stored: 3,
                duplicates: 0
            })
        );
        for stale in [batch(4, stream, 4, 6), batch(4, stream, 1, 3)] {
            assert_eq!(
                client.post_batch(&stale).await,
                Err(PostError::Stale {
                    term: 4,
                    highest: 5
                })
            );
        }
        let s = summary(&client).await;
        assert_eq!(held(&s, stream), (1, 3), "{s:?}");
        assert_eq!(s.clusters.len(), 1, "{s:?}");
        assert_eq!(s.clusters[0].highest_term, 5);
        assert_eq!(s.streams[0].last_seq, 3, "the stale batch stored nothing");

        let text = cloud.metrics().await;
        for (result, n) in [
            ("unauthorized", 2.0),
            ("bad_request", 1.0),
            ("too_large", 1.0),
            ("stale", 2.0),
            ("stored", 1.0),
        ] {
            let name = format!("verge_cloud_batches_total{{result=\"{result}\"}}");
            assert_eq!(metric(&text, &name), n, "{name}:\n{text}");
        }
        assert!(cloud.is_running(), "{}", cloud.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_endpoint_is_refused_without_the_flag() {
    bounded(async {
        let cloud = CloudProcess::start(&[]);
        let client = cloud.client(CALL_TIMEOUT);
        let err = client.fault().await.expect_err("off");
        assert!(
            matches!(&err, QueryError::Rejected { status: 403, message } if message.contains("--faults")),
            "{err}"
        );
        let out = cloud.fault_cli(&["--mode", "error"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("fault injection is off"), "{stderr}");
        // And batches are not faulted.
        assert!(matches!(
            client.post_batch(&batch(1, "b1/aggregates/a", 1, 1)).await,
            Ok(PostOutcome::Stored { .. })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_posted_twice_is_stored_once() {
    bounded(async {
        let cloud = CloudProcess::start(&[]);
        let client = cloud.client(CALL_TIMEOUT);
        let stream = "b1/aggregates/south";
        let b = batch(1, stream, 1, 4);
        assert_eq!(
            client.post_batch(&b).await,
            Ok(PostOutcome::Stored {
                stored: 4,
                duplicates: 0
            })
        );
        assert_eq!(client.post_batch(&b).await, Ok(PostOutcome::Duplicate));
        assert_eq!(held(&summary(&client).await, stream), (1, 4));
        assert_eq!(
            client.windows(stream, 1, u64::MAX).await.expect("windows"),
            b.windows
        );
    })
    .await;
}

/// One fault mode's run: the flags for `verge cloud fault`, and what the client's error says.
struct FaultCase {
    mode: &'static str,
    args: &'static [&'static str],
    says: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_retryable_within_the_timeout_and_a_retry_stores_once() {
    bounded(async {
        let mut cloud = CloudProcess::start(&["--faults"]);
        let fast = cloud.client(SHORT_TIMEOUT);
        let patient = cloud.client(CALL_TIMEOUT);
        let cases = [
            FaultCase {
                mode: "error",
                args: &["--mode", "error"],
                says: "500",
            },
            FaultCase {
                mode: "garbage",
                args: &["--mode", "garbage"],
                says: "not an acknowledgement",
            },
            FaultCase {
                mode: "delay",
                args: &["--mode", "delay", "--delay-ms", "3000"],
                says: "within",
            },
            FaultCase {
                mode: "down",
                args: &["--mode", "down"],
                says: "",
            },
        ];
        for case in &cases {
            let stream = format!("b1/aggregates/{}", case.mode);
            let b = batch(1, &stream, 1, 5);
            cloud.set_fault(case.args);
            let shown = cloud.fault_cli(&["--json"]);
            let shown = String::from_utf8_lossy(&shown.stdout);
            assert!(
                shown.contains(&format!("\"mode\":\"{}\"", case.mode)),
                "{shown}"
            );

            let started = Instant::now();
            let err = fast.post_batch(&b).await.expect_err("faulted");
            let took = started.elapsed();
            assert!(
                matches!(&err, PostError::Unavailable(m) if m.contains(case.says)),
                "{}: {err}",
                case.mode
            );
            assert!(
                took < SHORT_TIMEOUT + GIVE_UP_SLACK,
                "{}: gave up after {took:?}",
                case.mode
            );

            // Everything but batches still answers, and the process is up.
            assert!(cloud.is_running(), "{}: {}", case.mode, cloud.log());
            patient.health().await.expect("healthz");
            let during = summary(&patient).await;
            match case.mode {
                "garbage" => assert_eq!(held(&during, &stream), (1, 5), "stored, answered badly"),
                "error" | "down" => assert_eq!(held(&during, &stream), (0, 0), "nothing stored"),
                // A delayed batch may be stored once its delay ends; the retry settles it.
                _ => {}
            }
            if case.mode == "down" {
                // No HTTP answer at all, not a 503.
                let answer = cloud.raw("POST", "/v1/batches", &[], b"{}").await;
                assert_eq!(answer, None, "down answered");
            }

            cloud.set_fault(&["--mode", "none"]);
            let retried = patient.post_batch(&b).await.expect("the retry is stored");
            match case.mode {
                "garbage" => assert_eq!(retried, PostOutcome::Duplicate),
                "error" | "down" => assert_eq!(
                    retried,
                    PostOutcome::Stored {
                        stored: 5,
                        duplicates: 0
                    }
                ),
                _ => {}
            }
            assert_eq!(
                held(&summary(&patient).await, &stream),
                (1, 5),
                "{}: stored exactly once",
                case.mode
            );
        }

        // A delay shorter than the client's timeout only slows the answer.
        cloud.set_fault(&["--mode", "delay", "--delay-ms", "400"]);
        let started = Instant::now();
        let b = batch(1, "b1/aggregates/slow", 1, 2);
        assert_eq!(
            patient.post_batch(&b).await,
            Ok(PostOutcome::Stored {
                stored: 2,
                duplicates: 0
            })
        );
        assert!(started.elapsed() >= Duration::from_millis(400));
        cloud.set_fault(&["--mode", "none"]);

        let text = cloud.metrics().await;
        for (mode, n) in [
            ("error", 1.0),
            ("garbage", 1.0),
            ("delay", 2.0),
            ("down", 2.0),
        ] {
            let name = format!("verge_cloud_faults_applied_total{{mode=\"{mode}\"}}");
            assert_eq!(metric(&text, &name), n, "{name}:\n{text}");
        }
        let log = cloud.log();
        assert!(log.contains("now gets down"), "{log}");
        assert!(log.contains("cleared"), "{log}");
        assert!(cloud.is_running(), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_batches_survive_a_sigkill() {
    bounded(async {
        let mut cloud = CloudProcess::start(&[]);
        let client = cloud.client(CALL_TIMEOUT);
        let (a, b) = ("b1/aggregates/east", "b3/aggregates/west");
        let batches = [batch(2, a, 1, 3), batch(2, a, 4, 6), batch(3, b, 1, 2)];
        for x in &batches {
            assert!(matches!(
                client.post_batch(x).await,
                Ok(PostOutcome::Stored { .. })
            ));
        }
        let before = summary(&client).await;

        cloud.restart();
        let client = cloud.client(CALL_TIMEOUT);
        assert_eq!(summary(&client).await, before);
        assert_eq!(held(&before, a), (2, 6));
        let windows = client.windows(a, 1, u64::MAX).await.expect("windows");
        assert_eq!(windows, (1..=6).map(window).collect::<Vec<_>>());
        // Each key is still held (a resend carries the current term; the key has none).
        for x in &batches {
            let resend = Batch {
                term: 3,
                ..x.clone()
            };
            assert_eq!(client.post_batch(&resend).await, Ok(PostOutcome::Duplicate));
        }
        // The highest term is durable too.
        assert_eq!(
            client.post_batch(&batch(2, b, 3, 3)).await,
            Err(PostError::Stale {
                term: 2,
                highest: 3
            })
        );
        assert_eq!(summary(&client).await, before);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_stale_shows_in_the_batch_log_with_the_stale_term() {
    bounded(async {
        let cloud = CloudProcess::start(&["--faults"]);
        let client = cloud.client(CALL_TIMEOUT);
        let stream = "b1/aggregates/north";
        assert!(matches!(
            client.post_batch(&batch(5, stream, 1, 3)).await,
            Ok(PostOutcome::Stored { .. })
        ));
        cloud.set_fault(&["--mode", "accept-stale"]);
        assert_eq!(
            client.post_batch(&batch(3, stream, 4, 6)).await,
            Ok(PostOutcome::Stored {
                stored: 3,
                duplicates: 0
            })
        );
        let log = client.all_batches(CLUSTER).await.expect("batch log");
        assert_eq!(
            log.iter()
                .map(|b| (b.first_seq, b.last_seq, b.term))
                .collect::<Vec<_>>(),
            vec![(1, 3, 5), (4, 6, 3)]
        );
        assert!(log[0].accepted < log[1].accepted, "{log:?}");
        assert!(
            cloud.log().contains("stored a batch of stale term 3"),
            "the cloud warns when it accepts a stale batch:\n{}",
            cloud.log()
        );
    })
    .await;
}
