//! Gateway election and exactly-once cloud sync through real processes (issue 4): five `verge
//! node`s (three voters) aggregate synthetic traffic into 1 s windows, the Raft leader syncs
//! every node's aggregate streams to a real `verge cloud serve`, and the tests kill gateways,
//! cut one off, take the cloud away and make it misbehave; at the end the cloud must hold every
//! window every node produced exactly once, checked against the nodes' own aggregate streams.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use verge_cloud::CloudClient;
use verge_proto::admin::{AdminRequest, StreamRole};
use verge_proto::{NodeId, StreamId, StreamKind};
use verge_sim::{ClusterSpec, LocalCluster};
use verge_tests::cloud::CloudProcess;
use verge_tests::{TEST_TIMEOUT, http_get, metric, metric_sum, verge_bin};

const CLUSTER: &str = "gw-test";

// Each test drives several nodes and a cloud; on two cores they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `[cloud]` section that points a node at `cloud`.
fn cloud_config(cloud: &CloudProcess) -> String {
    let token = cloud.data_dir().with_file_name("token");
    format!(
        "\n[cloud]\nurl = \"{}\"\nca = \"{}\"\ntoken_file = \"{}\"\ncluster = \"{CLUSTER}\"\ntimeout_ms = 2000\nretry_ms_max = 1000\n",
        cloud.url(),
        cloud.cert().display(),
        token.display()
    )
}

fn client(cloud: &CloudProcess) -> CloudClient {
    cloud.client(Duration::from_secs(5))
}

/// `n` nodes b1..bn, voters b1..b3, 1 s windows, synthetic traffic, syncing to `cloud`.
fn corridor(cloud: &CloudProcess, n: usize) -> LocalCluster {
    let mut spec = ClusterSpec::corridor(verge_bin(), n);
    spec.extra_config = format!(
        "\n[faults]\nenabled = true\n\n[control]\nvoters = [\"b1\", \"b2\", \"b3\"]\n\n[aggregation]\nwindow_ms = 1000\nallowed_lateness_ms = 200\n\n[sensors.synthetic]\nsensors = 4\nrate_per_s = 200.0\n{}",
        cloud_config(cloud)
    );
    LocalCluster::create(&spec).expect("layout")
}

/// A started corridor of `n` nodes syncing to `cloud`, with every node marked running.
async fn started(cloud: &CloudProcess, n: usize) -> (LocalCluster, Vec<bool>) {
    let mut c = corridor(cloud, n);
    verge_tests::start_mesh(&mut c).await;
    let running = vec![true; c.nodes.len()];
    (c, running)
}

/// Waits until the cloud holds some windows.
async fn first_windows(client: &CloudClient) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while cloud_state(client).await.is_none_or(|(_, w)| w == 0) {
        assert!(
            Instant::now() < deadline,
            "no window reached the cloud in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway as the running nodes see it, if they agree on one: (index, id, term).
async fn gateway(c: &LocalCluster, running: &[bool]) -> Option<(usize, NodeId, u64)> {
    let admin = c.admin();
    let mut seen = None;
    for (i, n) in c.nodes.iter().enumerate() {
        if !running[i] {
            continue;
        }
        let v = admin.gateway(n.listen).await.ok()?;
        let g = v.gateway?;
        let idx = c.nodes.iter().position(|n| n.id == g)?;
        match &seen {
            None => seen = Some((idx, g, v.term)),
            Some((_, id, term)) if *id == g && *term == v.term => {}
            Some(_) => return None,
        }
    }
    seen.filter(|(i, _, _)| running[*i])
}

async fn wait_gateway(
    c: &LocalCluster,
    running: &[bool],
    not: Option<&NodeId>,
    timeout: Duration,
) -> (usize, NodeId, u64) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(g) = gateway(c, running).await
            && Some(&g.1) != not
        {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed gateway within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The highest term the cloud has accepted for the test cluster and the windows it holds.
async fn cloud_state(cloud: &CloudClient) -> Option<(u64, u64)> {
    let s = cloud.summary().await.ok()?;
    s.clusters
        .iter()
        .find(|c| c.cluster == CLUSTER)
        .map(|c| (c.highest_term, c.windows))
}

/// Every node's own aggregate streams with their durable heads.
async fn aggregate_heads(c: &LocalCluster) -> BTreeMap<StreamId, (SocketAddr, u64)> {
    let admin = c.admin();
    let mut out = BTreeMap::new();
    for n in &c.nodes {
        let streams = admin.streams(n.listen).await.expect("streams");
        for s in streams {
            if s.id.kind == StreamKind::Aggregates && matches!(s.role, StreamRole::Owner { .. }) {
                out.insert(s.id, (n.listen, s.durable_head));
            }
        }
    }
    out
}

/// Waits until the cloud holds every window up to each stream's head of now, then checks that it
/// holds each exactly once and equal to the owner's record. Returns the windows compared.
async fn check_cloud_matches_nodes(
    c: &LocalCluster,
    cloud: &CloudProcess,
    timeout: Duration,
) -> u64 {
    let heads = aggregate_heads(c).await;
    assert!(
        heads.len() >= c.nodes.len(),
        "every node has an aggregate stream: {heads:?}"
    );
    let client = client(cloud);
    let deadline = Instant::now() + timeout;
    let admin = c.admin();
    let mut compared = 0;
    for (stream, (addr, head)) in &heads {
        let name = stream.to_string();
        let windows = loop {
            let w = client.windows(&name, 1, *head).await.unwrap_or_default();
            if w.len() as u64 >= *head {
                break w;
            }
            assert!(
                Instant::now() < deadline,
                "{stream}: the cloud holds {} of {head} windows after {timeout:?}\n{}",
                w.len(),
                cloud
                    .log()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let seqs: Vec<u64> = windows.iter().map(|w| w.seq).collect();
        let want: Vec<u64> = (1..=*head).collect();
        assert_eq!(
            seqs, want,
            "{stream}: windows exactly once, dense, in order"
        );
        let mine = admin
            .query(*addr, stream.clone(), 1, *head, u32::MAX)
            .await
            .expect("query");
        assert_eq!(mine.len() as u64, *head, "{stream}: the owner reads back");
        for ((seq, rec), w) in mine.iter().zip(&windows) {
            assert_eq!(*seq, w.seq);
            assert_eq!(rec.ts_ms, w.ts_ms, "{stream} seq {seq}: window start");
            let same = rec
                .values
                .iter()
                .zip(&w.values)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same && rec.values.len() == w.values.len(),
                "{stream} seq {seq}: {:?} in the node, {:?} in the cloud",
                rec.values,
                w.values
            );
        }
        compared += *head;
    }
    compared
}

/// Five nodes, three voters; the gateway is SIGKILLed five times in a row and restarted each
/// time. After each kill a new gateway is elected and gets a batch acknowledged by the cloud; at
/// the end the cloud holds every window every node produced exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_gateway_five_times_loses_and_duplicates_no_window() {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_TIMEOUT * 2, async {
        let cloud = CloudProcess::start(&[]);
        let (mut c, mut running) = started(&cloud, 5).await;
        let client = client(&cloud);

        let (_, first, term) = wait_gateway(&c, &running, None, Duration::from_secs(10)).await;
        println!("gateway {first} in term {term}");
        first_windows(&client).await;

        for round in 1..=5 {
            let (victim, id, term) = wait_gateway(&c, &running, None, Duration::from_secs(10)).await;
            let before = cloud_state(&client).await.map_or(0, |s| s.1);
            let killed = Instant::now();
            c.kill(victim).expect("kill");
            running[victim] = false;
            let (_, next, next_term) =
                wait_gateway(&c, &running, Some(&id), Duration::from_secs(10)).await;
            let elected = killed.elapsed();
            assert!(next_term > term, "a new term: {term} -> {next_term}");
            // The new gateway's first acknowledged batch: the cloud has accepted its term.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some((t, w)) = cloud_state(&client).await
                    && t >= next_term
                    && w > before
                {
                    break;
                }
                assert!(Instant::now() < deadline, "round {round}: {next} never synced");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!(
                "round {round}: killed {id} (term {term}); {next} gateway in term {next_term} after {} ms, first batch acknowledged after {} ms",
                elected.as_millis(),
                killed.elapsed().as_millis()
            );
            c.start(victim).expect("restart");
            running[victim] = true;
            let all: Vec<usize> = (0..c.nodes.len()).collect();
            c.wait_for_mesh(&all, Duration::from_secs(20))
                .await
                .expect("the victim rejoins");
        }

        let compared = check_cloud_matches_nodes(&c, &cloud, Duration::from_secs(30)).await;
        println!("{compared} windows in the cloud, each exactly once and equal to its node's");
        let (_, windows) = cloud_state(&client).await.expect("summary");
        assert!(windows >= compared, "{windows} stored, {compared} compared");
    })
    .await
    .expect("test timed out");
}

/// The gateway cut off from every peer keeps believing it leads for a while and keeps posting
/// its own windows with its old term; the cloud refuses them (fencing) once the new gateway's
/// term is in, and after the heal nothing is missing or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_gateway_is_fenced_by_the_cloud() {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cloud = CloudProcess::start(&[]);
        let (c, running) = started(&cloud, 3).await;
        let client = client(&cloud);
        let (old, old_id, old_term) =
            wait_gateway(&c, &running, None, Duration::from_secs(10)).await;
        let others: Vec<NodeId> = c
            .nodes
            .iter()
            .filter(|n| n.id != old_id)
            .map(|n| n.id.clone())
            .collect();
        let admin = c.admin();
        admin
            .set_faults(c.nodes[old].listen, others.clone(), 0, 0)
            .await
            .expect("cut the gateway off");
        println!("cut {old_id} (gateway in term {old_term}) off from {others:?}");

        // The others elect a new gateway, whose batches the cloud accepts.
        let rest: Vec<bool> = c.nodes.iter().map(|n| n.id != old_id).collect();
        let (_, new_id, new_term) =
            wait_gateway(&c, &rest, Some(&old_id), Duration::from_secs(10)).await;
        assert!(new_term > old_term);
        let deadline = Instant::now() + Duration::from_secs(15);
        while cloud_state(&client).await.is_none_or(|(t, _)| t < new_term) {
            assert!(
                Instant::now() < deadline,
                "{new_id} never synced in term {new_term}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The old one still thinks it leads, posts its own windows, and is refused.
        let view = admin.gateway(c.nodes[old].listen).await.expect("view");
        println!(
            "{old_id} sees gateway {:?} in term {}",
            view.gateway, view.term
        );
        let fenced = verge_tests::eventually(Duration::from_secs(15), || {
            metrics_of(&c, old, "verge_sync_batches_total{state=\"stale\"}") > 0.0
        })
        .await;
        let sync = admin.sync(c.nodes[old].listen).await.expect("sync view");
        assert!(
            fenced,
            "the cloud refused the old gateway's batches; its sync view: {sync:?}"
        );
        println!("{old_id} fenced: {:?}", sync.note);

        admin
            .set_faults(c.nodes[old].listen, Vec::new(), 0, 0)
            .await
            .expect("heal");
        let all: Vec<usize> = (0..c.nodes.len()).collect();
        c.wait_for_mesh(&all, Duration::from_secs(20))
            .await
            .expect("healed");
        let compared = check_cloud_matches_nodes(&c, &cloud, Duration::from_secs(30)).await;
        println!("{compared} windows in the cloud, each exactly once");
    })
    .await
    .expect("test timed out");
}

/// The cloud is down for 60 s: windows wait in the streams and the outbox, and once it is back
/// the backlog drains; the cloud ends with every window once, in order per stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_cloud_outage_loses_nothing() {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_TIMEOUT * 2, async {
        let mut cloud = CloudProcess::start(&[]);
        let (c, running) = started(&cloud, 3).await;
        let client = client(&cloud);
        let (g, g_id, _) = wait_gateway(&c, &running, None, Duration::from_secs(10)).await;
        first_windows(&client).await;
        cloud.kill();
        println!("cloud down; gateway {g_id}");
        tokio::time::sleep(Duration::from_secs(60)).await;
        let admin = c.admin();
        let during = admin.sync(c.nodes[g].listen).await.expect("sync view");
        let backlog: u64 = during.streams.iter().map(|s| s.backlog).sum();
        println!(
            "after 60 s: backlog {backlog} windows, cloud reachable {:?} ({:?})",
            during.cloud_reachable, during.cloud_error
        );
        assert_eq!(during.cloud_reachable, Some(false), "{during:?}");
        assert!(
            backlog >= 100,
            "a minute of windows of 3 nodes waits: {during:?}"
        );

        cloud.restart();
        let drained = Instant::now();
        let compared = check_cloud_matches_nodes(&c, &cloud, Duration::from_secs(30)).await;
        println!(
            "backlog drained and checked in {} ms: {compared} windows, each once, in order",
            drained.elapsed().as_millis()
        );
        let after = admin.sync(c.nodes[g].listen).await.expect("sync view");
        assert_eq!(after.cloud_reachable, Some(true), "{after:?}");
    })
    .await
    .expect("test timed out");
}

/// The cloud answers 500s, then garbage, then takes 10 s per answer (longer than the gateway's
/// 2 s timeout): the gateway logs and counts each, keeps every node running, and once the cloud
/// behaves the cloud holds every window exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_cloud_costs_nothing_but_time() {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_TIMEOUT * 2, async {
        let cloud = CloudProcess::start(&["--faults"]);
        let (mut c, running) = started(&cloud, 3).await;
        let client = client(&cloud);
        let (g, g_id, _) = wait_gateway(&c, &running, None, Duration::from_secs(10)).await;
        first_windows(&client).await;
        for (mode, hold) in [
            (vec!["--mode", "error"], 5),
            (vec!["--mode", "garbage"], 5),
            (vec!["--mode", "delay", "--delay-ms", "10000"], 15),
        ] {
            cloud.set_fault(&mode);
            let before = metrics_of(&c, g, "verge_sync_batches_total{state=\"unavailable\"}");
            tokio::time::sleep(Duration::from_secs(hold)).await;
            let after = metrics_of(&c, g, "verge_sync_batches_total{state=\"unavailable\"}");
            println!(
                "{mode:?} for {hold} s: {} posts unavailable",
                after - before
            );
            assert!(after > before, "{mode:?}: the gateway saw the cloud fail");
        }
        cloud.set_fault(&["--mode", "none"]);
        let sync = c.admin().sync(c.nodes[g].listen).await.expect("sync view");
        println!("gateway {g_id} after the faults: {:?}", sync.cloud_error);
        let compared = check_cloud_matches_nodes(&c, &cloud, Duration::from_secs(40)).await;
        println!("{compared} windows in the cloud, each exactly once");
        let log = std::fs::read_to_string(&c.nodes[g].log).unwrap_or_default();
        assert!(
            log.contains("posting failed"),
            "the gateway's log says what failed"
        );
        for i in 0..c.nodes.len() {
            assert!(c.is_running(i), "node {i} kept running");
        }
    })
    .await
    .expect("test timed out");
}

/// `verge ctl gateway transfer --to` moves the role; `drain` makes the gateway hand it on and
/// keeps it away; `undrain` lets the node lead again. The commands work from any node: the client
/// asks who the gateway is and sends the change there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_moves_on_transfer_and_drain() {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cloud = CloudProcess::start(&[]);
        let (c, running) = started(&cloud, 3).await;
        let admin = c.admin();
        let (g, g_id, _) = wait_gateway(&c, &running, None, Duration::from_secs(10)).await;
        let target = (g + 1) % 3;
        let target_id = c.nodes[target].id.clone();
        // Ask a node that is not the gateway: the client finds the gateway itself.
        let asked = c.nodes[(g + 2) % 3].listen;
        let view = admin
            .to_gateway(
                asked,
                AdminRequest::GatewayTransfer {
                    to: target_id.clone(),
                },
            )
            .await
            .expect("transfer");
        println!("transfer {g_id} -> {target_id}: {view:?}");
        let (now_g, now_id, _) =
            wait_gateway(&c, &running, Some(&g_id), Duration::from_secs(5)).await;
        assert_eq!(
            now_g, target,
            "the role went where it was sent, not to {now_id}"
        );

        // Drain the gateway: it hands the role on and does not take it back.
        let view = admin
            .to_gateway(
                asked,
                AdminRequest::SetDrain {
                    node: target_id.clone(),
                    drained: true,
                },
            )
            .await
            .expect("drain");
        assert!(view.drained.contains(&target_id), "{view:?}");
        let (_, after_id, _) =
            wait_gateway(&c, &running, Some(&target_id), Duration::from_secs(10)).await;
        println!("drained {target_id}: gateway now {after_id}");
        // A transfer to a drained node is carried out by Raft, but the drained node hands it on.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (still, _, _) = wait_gateway(&c, &running, None, Duration::from_secs(5)).await;
        assert_ne!(still, target, "a drained node stays off the gateway role");

        admin
            .to_gateway(
                asked,
                AdminRequest::SetDrain {
                    node: target_id.clone(),
                    drained: false,
                },
            )
            .await
            .expect("undrain");
        let view = admin
            .to_gateway(
                asked,
                AdminRequest::GatewayTransfer {
                    to: target_id.clone(),
                },
            )
            .await
            .expect("transfer back");
        assert!(view.drained.is_empty(), "{view:?}");
        let (back, _, _) =
            wait_gateway(&c, &running, Some(&after_id), Duration::from_secs(5)).await;
        assert_eq!(back, target, "undrained, it can lead again");
        // The syncing never stopped: the cloud holds every window once.
        check_cloud_matches_nodes(&c, &cloud, Duration::from_secs(30)).await;
    })
    .await
    .expect("test timed out");
}

/// Metrics of node `i`.
fn metrics_of(c: &LocalCluster, i: usize, name: &str) -> f64 {
    http_get(c.nodes[i].metrics, "/metrics").map_or(0.0, |t| {
        if name.contains('{') {
            metric(&t, name)
        } else {
            metric_sum(&t, name)
        }
    })
}
