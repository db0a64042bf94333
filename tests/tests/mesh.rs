//! Membership across real node processes: forming, SIGKILL, restart, and a node from another CA.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use verge_proto::NodeId;
use verge_proto::admin::MemberState;
use verge_sim::{ClusterSpec, LocalCluster};
use verge_tests::{TEST_TIMEOUT, cluster, eventually, run_verge, start_mesh, verge_bin};

/// The bound for noticing a dead or returning peer.
const DETECT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_mesh_and_ctl_shows_three_alive() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = cluster(3);
        start_mesh(&mut c).await;
        let ca = c.ca_dir.join("ca.pem");
        for n in &c.nodes {
            let out = run_verge(
                &[
                    "ctl",
                    "--endpoint",
                    &n.listen.to_string(),
                    "--ca",
                    ca.to_str().expect("utf-8 path"),
                    "--cert",
                    c.admin_cert.0.to_str().expect("utf-8 path"),
                    "--key",
                    c.admin_cert.1.to_str().expect("utf-8 path"),
                    "members",
                    "--json",
                ],
                Duration::from_secs(20),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            let rows = rows.as_array().expect("an array");
            assert_eq!(rows.len(), 3, "{rows:?}");
            for r in rows {
                assert_eq!(r["state"], "alive", "{r}");
                for key in ["id", "addr", "state", "rtt_ms"] {
                    assert!(r.get(key).is_some(), "missing {key} in {r}");
                }
            }
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_is_down_within_3s_and_alive_again_within_3s_of_restart() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = cluster(3);
        start_mesh(&mut c).await;
        // Let the detectors learn the heartbeat rhythm, as they would in a real corridor.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim: NodeId = c.nodes[2].id.clone();

        for round in 0..2 {
            let killed = Instant::now();
            c.kill(2).expect("SIGKILL");
            let (a, b) = tokio::join!(
                c.wait_for_state(0, &victim, MemberState::Down, DETECT * 2),
                c.wait_for_state(1, &victim, MemberState::Down, DETECT * 2),
            );
            a.expect("b1 sees it down");
            b.expect("b2 sees it down");
            let down_after = killed.elapsed();
            eprintln!("round {round}: b3 marked down by b1 and b2 {down_after:?} after SIGKILL");
            assert!(
                down_after <= DETECT,
                "round {round}: marked down after {down_after:?}"
            );

            let restarted = Instant::now();
            c.start(2).expect("restart");
            let (a, b) = tokio::join!(
                c.wait_for_state(0, &victim, MemberState::Alive, DETECT * 2),
                c.wait_for_state(1, &victim, MemberState::Alive, DETECT * 2),
            );
            a.expect("b1 sees it alive");
            b.expect("b2 sees it alive");
            let alive_after = restarted.elapsed();
            eprintln!("round {round}: b3 alive again {alive_after:?} after restart");
            assert!(
                alive_after <= DETECT,
                "round {round}: alive again after {alive_after:?}"
            );
            c.wait_for_mesh(&[0, 1, 2], DETECT)
                .await
                .expect("the restarted node sees the others too");
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_never_joins() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = cluster(3);
        start_mesh(&mut c).await;

        // An intruder with its own CA, pointed at the real nodes, claiming a real node's id.
        let mut spec = ClusterSpec::corridor(verge_bin(), 1);
        spec.ids = vec!["b3".into()];
        spec.cluster = "intruder".into();
        let mut intruder = LocalCluster::create(&spec).expect("layout");
        let mut cfg = OpenOptions::new()
            .append(true)
            .open(&intruder.nodes[0].config)
            .expect("config");
        for n in &c.nodes {
            if n.id.as_str() != "b3" {
                writeln!(
                    cfg,
                    "\n[[peers]]\nid = \"{}\"\naddr = \"{}\"",
                    n.id, n.listen
                )
                .expect("write");
            }
        }
        drop(cfg);
        intruder.start(0).expect("start intruder");

        let says_why = eventually(Duration::from_secs(15), || {
            let log = intruder.log(0);
            log.contains("cannot connect to peer") && log.contains("UnknownIssuer")
        })
        .await;
        assert!(says_why, "intruder log:\n{}", intruder.log(0));
        let refused = eventually(Duration::from_secs(15), || {
            c.log(0).contains("refused a connection")
        })
        .await;
        assert!(refused, "b1 log:\n{}", c.log(0));

        for i in 0..3 {
            let view = c.members(i).await.expect("members");
            assert_eq!(view.len(), 3);
            assert!(
                view.iter().all(|m| m.state == MemberState::Alive),
                "{view:?}"
            );
        }
        // The real b3 is the one alive: kill it and the impostor must not keep it alive.
        c.kill(2).expect("kill b3");
        let b3 = c.nodes[2].id.clone();
        c.wait_for_state(0, &b3, MemberState::Down, Duration::from_secs(6))
            .await
            .expect("b3 goes down despite the impostor running");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_through_the_fault_layer_and_its_heal() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut spec = ClusterSpec::corridor(verge_bin(), 3);
        spec.extra_config = "\n[faults]\nenabled = true\n".into();
        let mut c = LocalCluster::create(&spec).expect("layout");
        start_mesh(&mut c).await;
        let (b1, b2, b3) = (
            c.nodes[0].id.clone(),
            c.nodes[1].id.clone(),
            c.nodes[2].id.clone(),
        );

        // Cut b3 off from both others: from b3's side alone, as a cable cut at its cabinet.
        let admin = c.admin();
        let (set, _, _) = admin
            .set_faults(c.nodes[2].listen, vec![b1.clone(), b2.clone()], 0, 0)
            .await
            .expect("faults set");
        assert_eq!(set, vec![b1.clone(), b2.clone()]);
        for (i, peer) in [(0, &b3), (1, &b3), (2, &b1), (2, &b2)] {
            c.wait_for_state(i, peer, MemberState::Down, Duration::from_secs(6))
                .await
                .expect("partitioned peers go down");
        }
        // b1 and b2 still see each other.
        assert!(
            c.members(0)
                .await
                .expect("members")
                .iter()
                .any(|m| m.id == b2 && m.state == MemberState::Alive)
        );

        admin
            .set_faults(c.nodes[2].listen, vec![], 0, 0)
            .await
            .expect("healed");
        c.wait_for_mesh(&[0, 1, 2], Duration::from_secs(6))
            .await
            .expect("mesh whole again after heal");
        let text = verge_tests::http_get(c.nodes[2].metrics, "/metrics").expect("metrics");
        assert!(
            verge_tests::metric(&text, "verge_udp_datagrams_dropped_total") > 0.0,
            "{text}"
        );
    })
    .await
    .expect("bounded");
}
