//! Replicated storage through real node processes (issue 3): with the default R=2, W=2 every
//! reading acknowledged with two holders survives its owner's SIGKILL on the replica; a replica cut
//! off for a while gets degraded acknowledgements meanwhile and catches up to an identical copy;
//! and a restarted owner carries on its streams without a gap or a reused sequence number.
//!
//! A producer task ingests into node 0 at a paced rate and keeps every acknowledged
//! (stream, seq) with its record; the checks then read the streams back from the nodes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use verge_proto::admin::{IngestAck, IngestReading, ReplicaView, StreamRole, StreamView};
use verge_proto::{NodeId, Record, StreamId, StreamKind};
use verge_sim::{AdminClient, AdminError, ClusterSpec, LocalCluster};
use verge_tests::{TEST_TIMEOUT, cluster, eventually, http_get, metric, start_mesh, verge_bin};

/// Sensors the producer feeds, one stream each.
const SENSORS: u64 = 8;
/// The producer wakes this often and sends what its rate makes due.
const TICK: Duration = Duration::from_millis(10);
/// The most readings in one ingest request (a producer behind its rate catches up in these).
const BATCH_READINGS_MAX: u64 = 1_000;
/// The most ingest requests the producer has in flight at once.
const INFLIGHT_MAX: usize = 4;
/// After a failed or refused request the producer waits this long before sending again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Records per query when reading a stream back (well under a 4 MiB frame).
const QUERY_PAGE: u64 = 10_000;

// The tests run one at a time: each drives three nodes at thousands of readings per second, and
// on two cores three such clusters at once would measure the machine, not the replication.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reading number `i` of sensor `s`: valid (count, occupancy %, speed m/s, queue), distinct per
/// (s, i), and with values whose bits are not all short decimals.
fn reading(s: u64, i: u64) -> IngestReading {
    IngestReading {
        sensor: format!("s{s}"),
        record: Record {
            ts_ms: 1_700_000_000_000 + i as i64 * 100,
            values: vec![
                ((i + s) % 40) as f64,
                (i % 1000) as f64 / 10.0,
                ((i * 7 + s) % 9_000) as f64 / 91.0,
                (i % 13) as f64 / 3.0,
            ],
        },
    }
}

/// A reading the node acknowledged, with what the acknowledgement said.
#[derive(Debug, Clone)]
struct Acked {
    record: Record,
    replicas: u32,
    degraded: bool,
}

/// One answered ingest request.
#[derive(Debug, Clone)]
struct Answered {
    sent: Instant,
    answered: Instant,
    acks: Vec<IngestAck>,
}

/// Everything the producer saw. Shared with the test through a mutex that is never held across
/// an await: the test only looks at it between steps.
#[derive(Debug, Default)]
struct Produced {
    acked: BTreeMap<(StreamId, u64), Acked>,
    answered: Vec<Answered>,
    /// Failed requests and refused readings, first few kept (all counted).
    errors: Vec<String>,
    error_count: u64,
    /// Answers that do not add up (an ack whose seq range does not match the readings sent, or
    /// a seq acknowledged twice): each is a node bug.
    inconsistencies: Vec<String>,
}

impl Produced {
    fn note_error(&mut self, e: String) {
        self.error_count += 1;
        if self.errors.len() < 20 {
            self.errors.push(e);
        }
    }

    /// Takes an answer to `batch`; returns the readings to send again (those of sensors without
    /// an acknowledgement).
    fn take_answer(
        &mut self,
        batch: &[IngestReading],
        sent: Instant,
        acks: Vec<IngestAck>,
        rejected: Vec<String>,
    ) -> Vec<IngestReading> {
        for r in rejected {
            self.note_error(format!("refused: {r}"));
        }
        let mut acked_sensors = BTreeSet::new();
        for ack in &acks {
            let records: Vec<&Record> = batch
                .iter()
                .filter(|r| r.sensor == ack.stream.sensor)
                .map(|r| &r.record)
                .collect();
            let span = (ack.last_seq + 1).saturating_sub(ack.first_seq);
            if span != records.len() as u64 || !acked_sensors.insert(ack.stream.sensor.clone()) {
                self.inconsistencies.push(format!(
                    "{ack:?} answers {} readings of sensor {}",
                    records.len(),
                    ack.stream.sensor
                ));
                continue;
            }
            for (seq, rec) in (ack.first_seq..=ack.last_seq).zip(records) {
                let a = Acked {
                    record: rec.clone(),
                    replicas: ack.replicas,
                    degraded: ack.degraded,
                };
                if let Some(old) = self.acked.insert((ack.stream.clone(), seq), a) {
                    self.inconsistencies.push(format!(
                        "{}#{seq} acknowledged twice: first {:?}, then {:?}",
                        ack.stream, old.record, rec
                    ));
                }
            }
        }
        self.answered.push(Answered {
            sent,
            answered: Instant::now(),
            acks,
        });
        batch
            .iter()
            .filter(|r| !acked_sensors.contains(&r.sensor))
            .cloned()
            .collect()
    }

    /// Sensors whose latest acknowledgement, of a request sent at or after `since`, had at
    /// least `replicas` holders.
    fn sensors_acked_with(&self, replicas: u32, since: Instant) -> BTreeSet<String> {
        let mut latest: BTreeMap<&str, u32> = BTreeMap::new();
        for a in self.answered.iter().filter(|a| a.sent >= since) {
            for ack in &a.acks {
                latest.insert(&ack.stream.sensor, ack.replicas);
            }
        }
        latest
            .into_iter()
            .filter(|(_, r)| *r >= replicas)
            .map(|(s, _)| s.to_owned())
            .collect()
    }
}

/// A producer ingesting into one node at a paced rate until stopped, resending whatever was not
/// acknowledged.
#[derive(Debug)]
struct Producer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Produced>>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    fn start(admin: AdminClient, addr: SocketAddr, rate_per_s: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Produced::default()));
        let task = tokio::spawn(produce(
            admin,
            addr,
            rate_per_s,
            Arc::clone(&stop),
            Arc::clone(&seen),
        ));
        Self { stop, seen, task }
    }

    fn seen(&self) -> MutexGuard<'_, Produced> {
        self.seen.lock().expect("producer state")
    }

    /// Waits (up to `timeout`) until every sensor had an acknowledgement with at least
    /// `replicas` holders for a request sent at or after `since`.
    async fn wait_for_acks(&self, replicas: u32, since: Instant, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.seen().sensors_acked_with(replicas, since).len() == SENSORS as usize {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sending and waits for the requests in flight (they end within the client's own
    /// timeouts even if the node is dead).
    async fn stop(self) -> Produced {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the producer task");
        Arc::try_unwrap(self.seen)
            .expect("only the test holds the producer state now")
            .into_inner()
            .expect("producer state")
    }
}

type Sent = (
    Vec<IngestReading>,
    Instant,
    Result<(Vec<IngestAck>, Vec<String>), AdminError>,
);

async fn produce(
    admin: AdminClient,
    addr: SocketAddr,
    rate_per_s: u64,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Produced>>,
) {
    let admin = Arc::new(admin);
    // A token bucket: `credit` readings may be sent now. It holds at most 200 ms worth, so a
    // producer held up (while the node is down, or in flight) does not burst far past its rate.
    let credit_max = (rate_per_s as f64 / 5.0).max(1.0);
    let mut credit = 0.0f64;
    let mut last = Instant::now();
    let mut generated = 0u64;
    let mut resend: VecDeque<Vec<IngestReading>> = VecDeque::new();
    let mut inflight: JoinSet<Sent> = JoinSet::new();
    let mut paused_until = last;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let take = |res: Result<Sent, tokio::task::JoinError>,
                resend: &mut VecDeque<Vec<IngestReading>>,
                paused_until: &mut Instant| {
        let (batch, sent, res) = res.expect("an ingest request task");
        let mut seen = seen.lock().expect("producer state");
        let again = match res {
            Ok((acks, rejected)) => seen.take_answer(&batch, sent, acks, rejected),
            Err(e) => {
                seen.note_error(e.to_string());
                batch
            }
        };
        if !again.is_empty() {
            resend.push_back(again);
            *paused_until = Instant::now() + RETRY_PAUSE;
        }
    };
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let now = Instant::now();
        credit = (credit + (now - last).as_secs_f64() * rate_per_s as f64).min(credit_max);
        last = now;
        while let Some(res) = inflight.try_join_next() {
            take(res, &mut resend, &mut paused_until);
        }
        if inflight.len() >= INFLIGHT_MAX || Instant::now() < paused_until {
            continue;
        }
        let batch = match resend.pop_front() {
            Some(b) => b,
            None => {
                let n = (credit as u64).min(BATCH_READINGS_MAX);
                credit -= n as f64;
                let b: Vec<IngestReading> = (generated..generated + n)
                    .map(|k| reading(k % SENSORS, k / SENSORS))
                    .collect();
                generated += n;
                b
            }
        };
        if batch.is_empty() {
            continue;
        }
        let admin = Arc::clone(&admin);
        inflight.spawn(async move {
            let sent = Instant::now();
            let res = admin.ingest(addr, batch.clone()).await;
            (batch, sent, res)
        });
    }
    while let Some(res) = inflight.join_next().await {
        take(res, &mut resend, &mut paused_until);
    }
}

/// Records `1..=to` of `stream` on the node at `addr`, read in pages.
async fn read_all(
    admin: &AdminClient,
    addr: SocketAddr,
    stream: &StreamId,
    to: u64,
) -> Vec<(u64, Record)> {
    let mut out: Vec<(u64, Record)> = Vec::new();
    let mut from = 1;
    while from <= to {
        let last = (from + QUERY_PAGE - 1).min(to);
        let page = admin
            .query(addr, stream.clone(), from, last, QUERY_PAGE as u32)
            .await
            .unwrap_or_else(|e| panic!("query {stream} {from}..={last} at {addr}: {e}"));
        out.extend(page);
        from = last + 1;
    }
    out
}

/// The streams `owner` owns, as the node at `addr` lists them.
async fn owned_streams(admin: &AdminClient, addr: SocketAddr, owner: &NodeId) -> Vec<StreamView> {
    admin
        .streams(addr)
        .await
        .expect("streams")
        .into_iter()
        // The producer's streams; the node's aggregate streams (a window every 10 s) are not.
        .filter(|s| &s.id.owner == owner && s.id.kind == StreamKind::Raw)
        .collect()
}

/// The replicas of an owned stream as its owner reports them.
fn replicas_of(view: &StreamView) -> &[ReplicaView] {
    match &view.role {
        StreamRole::Owner { replicas, .. } => replicas,
        StreamRole::Copy => &[],
    }
}

fn index_of(c: &LocalCluster, id: &NodeId) -> usize {
    c.nodes
        .iter()
        .position(|n| &n.id == id)
        .unwrap_or_else(|| panic!("{id} is not a node of this cluster"))
}

/// Waits (up to `timeout`) until the owner at `owner` reports every stream of `streams` with each
/// replica at lag 0 and holding the owner's head; returns the last view.
async fn wait_for_lag_zero(
    admin: &AdminClient,
    owner_addr: SocketAddr,
    owner: &NodeId,
    timeout: Duration,
) -> (bool, Vec<StreamView>) {
    let deadline = Instant::now() + timeout;
    loop {
        let views = owned_streams(admin, owner_addr, owner).await;
        let done = !views.is_empty()
            && views.iter().all(|v| {
                let r = replicas_of(v);
                !r.is_empty() && r.iter().all(|r| r.lag == 0 && r.hwm == v.head)
            });
        if done || Instant::now() > deadline {
            return (done, views);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every acknowledged reading of `stream` appears in `held` under its seq with identical bits.
/// Returns how many were checked.
fn check_acked_present(
    what: &str,
    stream: &StreamId,
    held: &BTreeMap<u64, Record>,
    acked: &BTreeMap<(StreamId, u64), Acked>,
    only: impl Fn(&Acked) -> bool,
) -> usize {
    let mut checked = 0;
    for ((_, seq), a) in acked.range((stream.clone(), 0)..=(stream.clone(), u64::MAX)) {
        if !only(a) {
            continue;
        }
        let got = held.get(seq).unwrap_or_else(|| {
            panic!(
                "{stream}#{seq} was acknowledged with {} replicas (degraded: {}) but is missing on {what}",
                a.replicas, a.degraded
            )
        });
        assert!(
            same_bits(got, &a.record),
            "{stream}#{seq} on {what} is {got:?}, acknowledged as {:?}",
            a.record
        );
        checked += 1;
    }
    checked
}

fn same_bits(a: &Record, b: &Record) -> bool {
    a.ts_ms == b.ts_ms
        && a.values.len() == b.values.len()
        && a.values
            .iter()
            .zip(&b.values)
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

fn same_copy(a: &[(u64, Record)], b: &[(u64, Record)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((sa, ra), (sb, rb))| sa == sb && same_bits(ra, rb))
}

/// The first difference between two copies of a stream, for a failure message.
fn first_difference(a: &[(u64, Record)], b: &[(u64, Record)]) -> String {
    for (x, y) in a.iter().zip(b) {
        if x.0 != y.0 || !same_bits(&x.1, &y.1) {
            return format!("{x:?} vs {y:?}");
        }
    }
    format!(
        "lengths {} vs {} (last {:?} vs {:?})",
        a.len(),
        b.len(),
        a.last().map(|x| x.0),
        b.last().map(|x| x.0)
    )
}

/// The tail of each node's log, for failure messages.
fn logs(c: &LocalCluster) -> String {
    (0..c.nodes.len())
        .map(|i| {
            let log = c.log(i);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "--- {} (last 40 lines)\n{}\n",
                c.nodes[i].id,
                tail.join("\n")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_readings_survive_owner_sigkill_at_10k_per_s() {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = cluster(3);
        start_mesh(&mut c).await;
        let admin = c.admin();
        let owner = c.nodes[0].id.clone();
        let producer = Producer::start(c.admin(), c.nodes[0].listen, 10_000);

        // The counted phase starts once every stream is acknowledged by two holders.
        let formed = producer
            .wait_for_acks(2, Instant::now(), Duration::from_secs(15))
            .await;
        assert!(
            formed,
            "no acknowledgement with 2 replicas for every sensor: {:?}\n{}",
            producer.seen().errors,
            logs(&c)
        );
        let before = owned_streams(&admin, c.nodes[0].listen, &owner).await;
        for v in &before {
            eprintln!(
                "{}: head {}, replicas {:?}",
                v.id,
                v.head,
                replicas_of(v)
                    .iter()
                    .map(|r| r.node.to_string())
                    .collect::<Vec<_>>()
            );
        }
        let counted_from = Instant::now();
        let acked_before = producer.seen().acked.len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let acked_at_kill = producer.seen().acked.len();
        c.kill(0).expect("SIGKILL the owner while ingesting");
        let killed = Instant::now();
        let seen = producer.stop().await;
        assert!(
            seen.inconsistencies.is_empty(),
            "{:?}",
            seen.inconsistencies
        );

        // Read every stream back from both survivors: each acknowledged reading must be on the
        // stream's replica (as node 0 named it before the kill), and where both survivors hold
        // a seq they must agree.
        let mut by_stream: BTreeMap<StreamId, u64> = BTreeMap::new();
        for (stream, seq) in seen.acked.keys() {
            let head = by_stream.entry(stream.clone()).or_default();
            *head = (*head).max(*seq);
        }
        let (mut checked, mut per_node) = (0, [0usize; 3]);
        for (stream, head) in &by_stream {
            let replicas: Vec<usize> = before
                .iter()
                .filter(|v| &v.id == stream)
                .flat_map(|v| replicas_of(v).iter().map(|r| index_of(&c, &r.node)))
                .collect();
            assert!(
                !replicas.is_empty(),
                "node 0 named no replica for {stream}: {before:?}"
            );
            let mut on_replica: BTreeMap<u64, Record> = BTreeMap::new();
            let mut held: BTreeMap<u64, Record> = BTreeMap::new();
            for i in [1, 2] {
                let copy = read_all(&admin, c.nodes[i].listen, stream, *head).await;
                per_node[i] += copy.len();
                for (seq, rec) in copy {
                    if let Some(other) = held.get(&seq) {
                        assert!(
                            same_bits(other, &rec),
                            "{stream}#{seq}: the survivors disagree: {other:?} vs {rec:?}"
                        );
                    }
                    if replicas.contains(&i) {
                        on_replica.insert(seq, rec.clone());
                    }
                    held.insert(seq, rec);
                }
            }
            let names: Vec<String> = replicas.iter().map(|&i| c.nodes[i].id.to_string()).collect();
            checked += check_acked_present(
                &format!("its replica {}", names.join(", ")),
                stream,
                &on_replica,
                &seen.acked,
                |a| a.replicas >= 2,
            );
        }
        let acked = seen.acked.len();
        let full = seen.acked.values().filter(|a| a.replicas >= 2).count();
        let degraded = seen.acked.values().filter(|a| a.degraded).count();
        let counted = acked_at_kill - acked_before;
        eprintln!(
            "acked {acked} readings ({full} with >= 2 replicas, {degraded} degraded), checked {checked} on the survivors \
             (b2 holds {}, b3 holds {}); counted phase: {counted} acked in {:?} ({:.0}/s); {} request errors after the kill \
             ({:?} after it)",
            per_node[1],
            per_node[2],
            killed - counted_from,
            counted as f64 / (killed - counted_from).as_secs_f64(),
            seen.error_count,
            killed.elapsed(),
        );
        assert_eq!(checked, full);
        assert!(
            counted >= 5_000,
            "only {counted} readings acknowledged in the 2 s counted phase (aiming at 10,000/s)"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_replica_catches_up_and_copies_match() {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut spec = ClusterSpec::corridor(verge_bin(), 3);
        spec.extra_config = "\n[faults]\nenabled = true\n".into();
        let mut c = LocalCluster::create(&spec).expect("layout");
        start_mesh(&mut c).await;
        let admin = c.admin();
        let owner = c.nodes[0].id.clone();
        let owner_addr = c.nodes[0].listen;
        let producer = Producer::start(c.admin(), owner_addr, 3_000);
        let formed = producer
            .wait_for_acks(2, Instant::now(), Duration::from_secs(15))
            .await;
        assert!(
            formed,
            "no acknowledgement with 2 replicas for every sensor: {:?}\n{}",
            producer.seen().errors,
            logs(&c)
        );

        // The replica holding the most of node 0's streams is the one cut off.
        let views = owned_streams(&admin, owner_addr, &owner).await;
        assert_eq!(views.len(), SENSORS as usize, "{views:?}");
        let mut holders: BTreeMap<NodeId, usize> = BTreeMap::new();
        for v in &views {
            for r in replicas_of(v) {
                *holders.entry(r.node.clone()).or_default() += 1;
            }
        }
        let cut = holders
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("node 0 reports no replicas: {views:?}"));
        let cut_i = index_of(&c, &cut);
        let affected: BTreeSet<StreamId> = views
            .iter()
            .filter(|v| replicas_of(v).iter().any(|r| r.node == cut))
            .map(|v| v.id.clone())
            .collect();
        eprintln!(
            "cutting {cut} off from {owner}: it replicates {} of {} streams",
            affected.len(),
            views.len()
        );

        let cut_start = Instant::now();
        admin
            .set_faults(owner_addr, vec![cut.clone()], 0, 0)
            .await
            .expect("partition at the owner");
        admin
            .set_faults(c.nodes[cut_i].listen, vec![owner.clone()], 0, 0)
            .await
            .expect("partition at the replica");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let lag_metric = format!("verge_replication_lag_records{{peer=\"{cut}\"}}");
        let sent_metric = format!("verge_replication_records_sent_total{{peer=\"{cut}\"}}");
        let at_heal = http_get(c.nodes[0].metrics, "/metrics").expect("metrics");
        let heal_start = Instant::now();
        admin
            .set_faults(owner_addr, vec![], 0, 0)
            .await
            .expect("heal at the owner");
        admin
            .set_faults(c.nodes[cut_i].listen, vec![], 0, 0)
            .await
            .expect("heal at the replica");

        // During the cut (from 2 s in, once detection had time), no acknowledgement of an
        // affected stream may claim two holders, and some must say they are degraded. The
        // readings of those acknowledgements cannot have reached the replica before the heal.
        let missed = {
            let seen = producer.seen();
            let mut degraded = 0;
            let mut during = 0;
            let mut missed = 0;
            for a in seen.answered.iter().filter(|a| {
                a.sent >= cut_start + Duration::from_secs(2) && a.answered < heal_start
            }) {
                for ack in a.acks.iter().filter(|k| affected.contains(&k.stream)) {
                    during += 1;
                    missed += ack.last_seq + 1 - ack.first_seq;
                    assert!(
                        ack.replicas < 2,
                        "acknowledged with {} replicas while {cut} was cut off: {ack:?}",
                        ack.replicas
                    );
                    if ack.degraded && ack.replicas == 1 {
                        degraded += 1;
                    }
                }
            }
            eprintln!(
                "during the cut: {during} acknowledgements of affected streams, {degraded} degraded with 1 replica; {} request errors",
                seen.error_count
            );
            assert!(
                degraded > 0,
                "no degraded acknowledgement while {cut} was cut off; errors: {:?}\n{}",
                seen.errors,
                logs(&c)
            );
            missed
        };

        // After the heal the replica catches up and acknowledgements have two holders again.
        let whole = producer
            .wait_for_acks(2, heal_start, Duration::from_secs(15))
            .await;
        let seen = producer.stop().await;
        assert!(
            seen.inconsistencies.is_empty(),
            "{:?}",
            seen.inconsistencies
        );
        assert!(
            whole,
            "acknowledgements did not come back to 2 replicas within 15 s of the heal\n{}",
            logs(&c)
        );
        let (caught_up, views) =
            wait_for_lag_zero(&admin, owner_addr, &owner, Duration::from_secs(20)).await;
        assert!(
            caught_up,
            "replicas still lag 20 s after the producer stopped: {views:?}\n{}",
            logs(&c)
        );
        eprintln!("caught up {:?} after the heal", heal_start.elapsed());

        let mut compared = 0;
        for v in &views {
            let own = read_all(&admin, owner_addr, &v.id, v.head).await;
            assert_eq!(own.len() as u64, v.head, "{}: owner's copy is not dense", v.id);
            let held: BTreeMap<u64, Record> = own.iter().cloned().collect();
            check_acked_present("the owner", &v.id, &held, &seen.acked, |_| true);
            for r in replicas_of(v) {
                let copy = read_all(&admin, c.nodes[index_of(&c, &r.node)].listen, &v.id, v.head)
                    .await;
                assert!(
                    same_copy(&own, &copy),
                    "{}: {}'s copy differs from the owner's: {}",
                    v.id,
                    r.node,
                    first_difference(&own, &copy)
                );
                compared += copy.len();
            }
        }
        eprintln!(
            "{} acknowledged readings; {compared} records compared identical between owner and replicas",
            seen.acked.len()
        );

        // The owner's metrics show the catch-up: a backlog for the cut-off replica at the heal,
        // at least the missed readings sent to it since, and no backlog once it is in step (the
        // gauge is refreshed periodically, hence the wait).
        let mut after = String::new();
        let settled = eventually(Duration::from_secs(5), || {
            after = http_get(c.nodes[0].metrics, "/metrics").expect("metrics");
            metric(&after, &lag_metric) == 0.0
        })
        .await;
        for (when, text) in [("at the heal", &at_heal), ("caught up", &after)] {
            let repl: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("verge_replication_"))
                .collect();
            eprintln!("owner's replication metrics {when}:\n{}", repl.join("\n"));
            assert!(!repl.is_empty(), "no verge_replication_ metric {when}:\n{text}");
        }
        assert!(
            metric(&at_heal, &lag_metric) > 0.0,
            "{lag_metric} shows no backlog at the heal:\n{at_heal}"
        );
        assert!(settled, "{lag_metric} is not back to 0 once caught up:\n{after}");
        let resent = metric(&after, &sent_metric) - metric(&at_heal, &sent_metric);
        eprintln!("{resent} records sent to {cut} since the heal; {missed} certainly missed during the cut");
        assert!(
            resent >= missed as f64,
            "only {resent} records sent to {cut} since the heal, but it missed {missed}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_owner_resumes_without_gap_or_duplicate() {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = cluster(3);
        // The owner flushes rarely, so when it is killed its replicas most likely hold readings
        // its own disk lost: the restarted owner must fetch those back before numbering more.
        let mut cfg = std::fs::OpenOptions::new()
            .append(true)
            .open(&c.nodes[0].config)
            .expect("node 0's config");
        writeln!(cfg, "\n[store]\nflush_interval_ms = 300").expect("write the config");
        drop(cfg);
        start_mesh(&mut c).await;
        let admin = c.admin();
        let owner = c.nodes[0].id.clone();
        let owner_addr = c.nodes[0].listen;
        let producer = Producer::start(c.admin(), owner_addr, 5_000);
        let formed = producer
            .wait_for_acks(2, Instant::now(), Duration::from_secs(15))
            .await;
        assert!(
            formed,
            "no acknowledgement with 2 replicas for every sensor: {:?}\n{}",
            producer.seen().errors,
            logs(&c)
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // SIGKILL while the producer keeps sending, and restart: the producer retries whatever
        // fails or is refused while the node is down or its streams are recovering.
        c.kill(0).expect("SIGKILL the owner");
        let killed = Instant::now();
        let acked_at_kill = producer.seen().acked.len();
        // What the replicas hold of node 0's streams while it is down, acknowledged or not: the
        // restarted owner must keep every one of these records under its seq.
        let mut on_replicas: BTreeMap<(StreamId, u64), Record> = BTreeMap::new();
        for i in [1, 2] {
            let addr = c.nodes[i].listen;
            for v in owned_streams(&admin, addr, &owner).await {
                let held = read_all(&admin, addr, &v.id, v.head).await;
                eprintln!(
                    "while {owner} is down, {} holds {} records of {} (head {}, durable {})",
                    c.nodes[i].id,
                    held.len(),
                    v.id,
                    v.head,
                    v.durable_head
                );
                for (seq, rec) in held {
                    on_replicas.insert((v.id.clone(), seq), rec);
                }
            }
        }
        let unacked_on_replicas = on_replicas
            .keys()
            .filter(|k| !producer.seen().acked.contains_key(k))
            .count();
        tokio::time::sleep(Duration::from_millis(500).saturating_sub(killed.elapsed())).await;
        c.start(0).expect("restart the owner");
        let restarted = Instant::now();
        c.wait_for_mesh(&[0, 1, 2], Duration::from_secs(20))
            .await
            .expect("the mesh forms again");
        let resumed = producer
            .wait_for_acks(1, restarted, Duration::from_secs(20))
            .await;
        assert!(
            resumed,
            "the restarted owner acknowledged nothing for some sensor within 20 s; errors: {:?}\n{}",
            producer.seen().errors,
            logs(&c)
        );
        let resumed_after = restarted.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seen = producer.stop().await;
        assert!(
            seen.inconsistencies.is_empty(),
            "{:?}",
            seen.inconsistencies
        );
        eprintln!(
            "{} readings acknowledged ({acked_at_kill} before the kill); the restarted owner acknowledged every sensor {resumed_after:?} after restart; {} failed or refused requests, e.g. {:?}",
            seen.acked.len(),
            seen.error_count,
            seen.errors.iter().rev().take(3).collect::<Vec<_>>()
        );

        let log = c.log(0);
        let recovered: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("stream recovered"))
            .collect();
        eprintln!("the restarted owner's log:\n{}", recovered.join("\n"));

        // The owner's streams: dense from 1 to head, each seq once, every acknowledged reading
        // in place.
        let views = owned_streams(&admin, owner_addr, &owner).await;
        let acked_streams: BTreeSet<&StreamId> = seen.acked.keys().map(|(s, _)| s).collect();
        for s in &acked_streams {
            assert!(
                views.iter().any(|v| &v.id == *s),
                "{s} is gone from the restarted owner: {views:?}"
            );
        }
        let mut owners_copy: BTreeMap<StreamId, Vec<(u64, Record)>> = BTreeMap::new();
        let mut checked = 0;
        for v in &views {
            let own = read_all(&admin, owner_addr, &v.id, v.head).await;
            let seqs: Vec<u64> = own.iter().map(|(s, _)| *s).collect();
            let dense: Vec<u64> = (1..=v.head).collect();
            if seqs != dense {
                let mut missing: Vec<u64> = dense
                    .iter()
                    .filter(|s| seqs.binary_search(s).is_err())
                    .copied()
                    .collect();
                missing.truncate(10);
                panic!(
                    "{}: head {} but {} records; first missing {missing:?}; out of order or twice: {}\n{}",
                    v.id,
                    v.head,
                    seqs.len(),
                    seqs.windows(2).any(|w| w[0] >= w[1]),
                    logs(&c)
                );
            }
            let held: BTreeMap<u64, Record> = own.iter().cloned().collect();
            checked += check_acked_present("the restarted owner", &v.id, &held, &seen.acked, |_| {
                true
            });
            owners_copy.insert(v.id.clone(), own);
        }
        assert_eq!(checked, seen.acked.len());
        for ((stream, seq), rec) in &on_replicas {
            let got = owners_copy
                .get(stream)
                .and_then(|own| own.get((*seq as usize).checked_sub(1)?));
            assert!(
                got.is_some_and(|(s, r)| s == seq && same_bits(r, rec)),
                "{stream}#{seq} was {rec:?} on a replica while the owner was down, and the restarted owner has {got:?}\n{}",
                logs(&c)
            );
        }
        eprintln!(
            "{} records held by replicas during the outage ({unacked_on_replicas} of them never acknowledged) kept by the restarted owner",
            on_replicas.len()
        );

        // Once the replicas are in step, their copies equal the owner's.
        let (caught_up, views) =
            wait_for_lag_zero(&admin, owner_addr, &owner, Duration::from_secs(20)).await;
        assert!(
            caught_up,
            "replicas still lag 20 s after the producer stopped: {views:?}\n{}",
            logs(&c)
        );
        let mut compared = 0;
        for v in &views {
            let own = &owners_copy[&v.id];
            assert_eq!(own.len() as u64, v.head, "{}: head moved", v.id);
            for r in replicas_of(v) {
                let copy = read_all(&admin, c.nodes[index_of(&c, &r.node)].listen, &v.id, v.head)
                    .await;
                assert!(
                    same_copy(own, &copy),
                    "{}: {}'s copy differs from the restarted owner's: {}",
                    v.id,
                    r.node,
                    first_difference(own, &copy)
                );
                compared += copy.len();
            }
        }
        eprintln!(
            "checked {checked} acknowledged readings on the restarted owner; {compared} replica records identical"
        );
    })
    .await
    .expect("bounded");
}
