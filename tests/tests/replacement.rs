//! A replica gone longer than `replace_after_ms` is replaced: another live peer becomes the
//! stream's replica and receives a full copy, while the owner keeps taking readings.

use std::time::Duration;

use verge_proto::admin::{IngestReading, StreamRole, StreamView};
use verge_proto::{NodeId, Record};
use verge_sim::{ClusterSpec, LocalCluster};
use verge_tests::{TEST_TIMEOUT, start_mesh, verge_bin};

fn reading(i: u64) -> IngestReading {
    IngestReading {
        sensor: "loop0".into(),
        record: Record {
            ts_ms: 1_700_000_000_000 + i as i64 * 1000,
            values: vec![
                (i % 30) as f64,
                (i % 100) as f64 / 4.0,
                12.5,
                (i % 5) as f64,
            ],
        },
    }
}

fn replicas(view: &[StreamView]) -> Vec<(NodeId, bool, u64)> {
    view.iter()
        .find(|s| s.id.sensor == "loop0")
        .and_then(|s| match &s.role {
            StreamRole::Owner { replicas, .. } => Some(
                replicas
                    .iter()
                    .map(|r| (r.node.clone(), r.up, r.lag))
                    .collect(),
            ),
            StreamRole::Copy => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_gone_too_long_is_replaced_by_a_full_copy_elsewhere() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut spec = ClusterSpec::corridor(verge_bin(), 3);
        spec.extra_config = "[replication]\nreplace_after_ms = 1500\n".into();
        let mut c = LocalCluster::create(&spec).expect("layout");
        start_mesh(&mut c).await;
        let admin = c.admin();
        let owner = c.nodes[0].listen;

        let mut i = 0;
        let ingest = async |n: u64, i: &mut u64| {
            let batch: Vec<IngestReading> = (*i..*i + n).map(reading).collect();
            *i += n;
            let (acks, rejected) = admin.ingest(owner, batch).await.expect("ingest");
            assert!(rejected.is_empty(), "{rejected:?}");
            acks
        };
        // Wait for the first acknowledgement held by two nodes: the replica is in place.
        loop {
            let acks = ingest(100, &mut i).await;
            if acks.iter().all(|a| a.replicas >= 2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..20 {
            ingest(500, &mut i).await;
        }
        let before = replicas(&admin.streams(owner).await.expect("streams"));
        assert_eq!(before.len(), 1, "one replica with R=2: {before:?}");
        let gone = before[0].0.clone();
        let gone_idx = c
            .nodes
            .iter()
            .position(|n| n.id == gone)
            .expect("replica is a cluster node");
        let other_idx = 3 - gone_idx;
        c.kill(gone_idx).expect("SIGKILL the replica");

        // The owner keeps acknowledging (degraded), and after replace_after_ms the third node
        // takes over and is brought up to the head.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (head, now) = loop {
            ingest(200, &mut i).await;
            let view = admin.streams(owner).await.expect("streams");
            let now = replicas(&view);
            let head = view
                .iter()
                .find(|s| s.id.sensor == "loop0")
                .map_or(0, |s| s.head);
            if now
                .iter()
                .any(|(n, up, lag)| *n == c.nodes[other_idx].id && *up && *lag == 0)
                && !now.iter().any(|(n, ..)| *n == gone)
            {
                break (head, now);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no replacement: replicas {now:?}\n{}",
                c.log(0)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("replica {gone} replaced: {now:?} at head {head}");

        // The replacement holds a full copy, identical to the owner's.
        let stream = admin
            .streams(owner)
            .await
            .expect("streams")
            .into_iter()
            .find(|s| s.id.sensor == "loop0")
            .expect("stream")
            .id;
        let from_owner = admin
            .query(owner, stream.clone(), 1, head, u32::MAX)
            .await
            .expect("query owner");
        let from_new = admin
            .query(c.nodes[other_idx].listen, stream.clone(), 1, head, u32::MAX)
            .await
            .expect("query the new replica");
        assert_eq!(from_owner.len() as u64, head, "owner holds every record");
        assert_eq!(
            from_new, from_owner,
            "the new replica holds a full, identical copy"
        );
        let log = c.log(0);
        assert!(log.contains("replica added"), "{log}");
    })
    .await
    .expect("bounded");
}
