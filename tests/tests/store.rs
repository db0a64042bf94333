//! Local storage through real node processes: acknowledged readings survive SIGKILL, bad readings
//! are refused and counted, a broken data_dir stops the node with a reason, and a full quota drops
//! old raw readings without stopping the node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use verge_proto::admin::IngestReading;
use verge_proto::{Record, StreamId};
use verge_sim::{ClusterSpec, LocalCluster};
use verge_tests::{
    TEST_TIMEOUT, eventually, http_get, metric, metric_sum, run_verge, start_mesh, verge_bin,
};

fn reading(sensor: &str, i: u64) -> IngestReading {
    IngestReading {
        sensor: sensor.into(),
        record: Record {
            ts_ms: 1_700_000_000_000 + i as i64 * 1000,
            values: vec![
                (i % 40) as f64,
                (i % 1000) as f64 / 10.0,
                (i % 139) as f64 / 10.0,
                (i % 7) as f64,
            ],
        },
    }
}

fn one_node(extra: &str) -> LocalCluster {
    let mut spec = ClusterSpec::corridor(verge_bin(), 1);
    spec.extra_config = extra.into();
    LocalCluster::create(&spec).expect("layout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_reading_survives_sigkill() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = one_node("");
        start_mesh(&mut c).await;
        let addr = c.nodes[0].listen;
        let admin = Arc::new(c.admin());

        // A producer sending batches as fast as acknowledgements come back, until the node dies.
        let producer = {
            let admin = admin.clone();
            tokio::spawn(async move {
                let mut sent: BTreeMap<(StreamId, u64), Record> = BTreeMap::new();
                let mut i = 0u64;
                loop {
                    let batch: Vec<IngestReading> = (0..200)
                        .map(|k| reading(&format!("s{}", k % 4), i + k))
                        .collect();
                    let Ok((acks, rejected)) = admin.ingest(addr, batch.clone()).await else {
                        return sent;
                    };
                    assert!(rejected.is_empty(), "{rejected:?}");
                    for ack in acks {
                        let records = batch
                            .iter()
                            .filter(|r| r.sensor == ack.stream.sensor)
                            .map(|r| r.record.clone());
                        for (seq, rec) in (ack.first_seq..=ack.last_seq).zip(records) {
                            sent.insert((ack.stream.clone(), seq), rec);
                        }
                    }
                    i += 200;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.kill(0).expect("SIGKILL while ingesting");
        let acked = producer.await.expect("producer");
        assert!(
            acked.len() >= 1_000,
            "only {} readings acknowledged",
            acked.len()
        );

        c.start(0).expect("restart");
        c.wait_for_mesh(&[0], Duration::from_secs(20))
            .await
            .expect("up again");
        let mut by_stream: BTreeMap<StreamId, Vec<(u64, Record)>> = BTreeMap::new();
        for ((stream, seq), rec) in &acked {
            by_stream
                .entry(stream.clone())
                .or_default()
                .push((*seq, rec.clone()));
        }
        for (stream, expected) in by_stream {
            let last = expected.last().map_or(0, |(s, _)| *s);
            let got = admin
                .query(addr, stream.clone(), 1, last, u32::MAX)
                .await
                .expect("query");
            assert_eq!(
                got.len(),
                expected.len(),
                "{stream}: acknowledged records missing"
            );
            assert_eq!(
                got, expected,
                "{stream}: stored records differ from what was acknowledged"
            );
        }
        eprintln!(
            "{} acknowledged readings all present after SIGKILL",
            acked.len()
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_readings_are_refused_and_counted() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = one_node("");
        start_mesh(&mut c).await;
        let addr = c.nodes[0].listen;
        let mut nan = reading("s0", 1);
        nan.record.values[2] = f64::NAN;
        let mut negative = reading("s0", 2);
        negative.record.values[0] = -3.0;
        let mut short = reading("s0", 3);
        short.record.values.truncate(2);
        let bad_sensor = reading("a/b", 4);
        let good = reading("s0", 5);
        let (acks, rejected) = c
            .admin()
            .ingest(addr, vec![nan, negative, short, bad_sensor, good])
            .await
            .expect("ingest");
        assert_eq!(rejected.len(), 4, "{rejected:?}");
        assert_eq!(acks.len(), 1);
        assert_eq!((acks[0].first_seq, acks[0].last_seq), (1, 1));
        let text = http_get(c.nodes[0].metrics, "/metrics").expect("metrics");
        assert_eq!(
            metric_sum(&text, "verge_readings_rejected_total"),
            4.0,
            "{text}"
        );
        assert_eq!(metric(&text, "verge_readings_stored_total"), 1.0, "{text}");
        assert!(c.is_running(0));
    })
    .await
    .expect("bounded");
}

#[test]
fn a_node_whose_store_cannot_open_refuses_to_start_and_says_why() {
    let c = one_node("");
    let store = c.nodes[0].data_dir.join("store");
    std::fs::create_dir_all(c.nodes[0].data_dir.as_path()).expect("data dir");
    // A file where the store's directory should be.
    std::fs::write(&store, b"not a directory").expect("write");
    let cfg = c.nodes[0].config.to_str().expect("utf-8").to_owned();
    let out = run_verge(&["node", "--config", &cfg], Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("store") && err.contains("data_dir"), "{err}");

    // A store directory full of garbage.
    std::fs::remove_file(&store).expect("rm");
    std::fs::create_dir_all(&store).expect("mkdir");
    std::fs::write(store.join("db"), vec![0xA5u8; 64 * 1024]).expect("garbage");
    std::fs::write(store.join("conf"), b"garbage").expect("garbage");
    let out = run_verge(&["node", "--config", &cfg], Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a garbage store");
    assert!(err.contains("store"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synthetic_source_fills_streams_and_a_full_quota_drops_old_raw_readings() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = one_node(
            "\n[store]\nquota_bytes = 20000\nretention_interval_ms = 200\n\n[sensors.synthetic]\nsensors = 4\nrate_per_s = 2000\nseed = 1\n",
        );
        c.start(0).expect("start");
        c.wait_for_mesh(&[0], Duration::from_secs(20)).await.expect("up");
        let addr = c.nodes[0].listen;
        let metrics = c.nodes[0].metrics;
        let dropped = eventually(Duration::from_secs(30), || {
            http_get(metrics, "/metrics")
                .map(|t| metric(&t, "verge_retention_dropped_total{kind=\"raw\",reason=\"quota\"}") > 0.0)
                .unwrap_or(false)
        })
        .await;
        assert!(dropped, "{}", c.log(0));
        let streams = raw(c.admin().streams(addr).await.expect("streams"));
        assert_eq!(streams.len(), 4, "{streams:?}");
        assert!(streams.iter().all(|s| s.head > 0), "{streams:?}");
        assert!(streams.iter().any(|s| s.first_seq > 1), "nothing trimmed: {streams:?}");
        assert!(c.is_running(0));
        assert!(c.log(0).contains("retention dropped records"), "{}", c.log(0));
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_at_runtime_drops_old_raw_readings_and_keeps_taking_new_ones() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c =
            one_node("\n[faults]\nenabled = true\n\n[store]\nretention_interval_ms = 200\n");
        start_mesh(&mut c).await;
        let addr = c.nodes[0].listen;
        let metrics = c.nodes[0].metrics;
        let admin = c.admin();
        let dropped = || {
            http_get(metrics, "/metrics")
                .map(|t| {
                    metric(
                        &t,
                        "verge_retention_dropped_total{kind=\"raw\",reason=\"quota\"}",
                    )
                })
                .unwrap_or(0.0)
        };
        let mut i = 0u64;
        let mut send = async |n: u64| {
            let batch: Vec<IngestReading> = (i..i + n)
                .map(|k| reading(&format!("s{}", k % 2), k))
                .collect();
            i += n;
            let (acks, rejected) = admin.ingest(addr, batch).await.expect("ingest");
            assert!(rejected.is_empty(), "{rejected:?}");
            acks.iter()
                .map(|a| a.last_seq + 1 - a.first_seq)
                .sum::<u64>()
        };
        // Some readings on disk, and no quota: nothing dropped.
        assert_eq!(send(2_000).await, 2_000);
        assert_eq!(dropped(), 0.0);

        let quota = admin.fill_disk(addr).await.expect("fill the disk");
        assert!(quota > 0, "the store held nothing");

        // New readings are still acknowledged, and the oldest raw ones make room for them.
        let made_room = {
            let mut made_room = false;
            for _ in 0..100 {
                assert_eq!(send(500).await, 500);
                if dropped() > 0.0 {
                    made_room = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            made_room
        };
        assert!(made_room, "{}", c.log(0));
        assert_eq!(send(100).await, 100);
        let streams = raw(admin.streams(addr).await.expect("streams"));
        assert!(
            streams.iter().any(|s| s.first_seq > 1),
            "nothing trimmed: {streams:?}"
        );
        assert!(c.is_running(0));
        let log = c.log(0);
        assert!(log.contains("injected full disk"), "{log}");
        assert!(log.contains("retention dropped records"), "{log}");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_exits_cleanly_and_streams_come_back() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = one_node("\n[sensors.synthetic]\nsensors = 3\nrate_per_s = 3000\n");
        start_mesh(&mut c).await;
        let addr = c.nodes[0].listen;
        let admin = c.admin();
        // Wait until every stream has flushed a good number of readings.
        let mut before = Vec::new();
        for _ in 0..200 {
            before = raw(admin.streams(addr).await.expect("streams"));
            if before.len() == 3 && before.iter().all(|s| s.durable_head >= 100) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            before.len() == 3 && before.iter().all(|s| s.durable_head >= 100),
            "{before:?}"
        );
        let code = c.terminate(0, Duration::from_secs(10)).expect("terminate");
        assert_eq!(code, Some(0), "{}", c.log(0));
        c.start(0).expect("restart");
        c.wait_for_mesh(&[0], Duration::from_secs(20))
            .await
            .expect("up again");
        let after = admin.streams(addr).await.expect("streams");
        for b in &before {
            let a = after.iter().find(|a| a.id == b.id).expect("stream kept");
            assert!(a.durable_head >= b.durable_head, "{b:?} -> {a:?}");
        }
    })
    .await
    .expect("bounded");
}

/// The raw-reading streams of a listing (the node's aggregate streams get a window every 10 s).
fn raw(streams: Vec<verge_proto::admin::StreamView>) -> Vec<verge_proto::admin::StreamView> {
    streams
        .into_iter()
        .filter(|s| s.id.kind == verge_proto::StreamKind::Raw)
        .collect()
}
