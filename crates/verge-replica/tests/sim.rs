//! A seeded, deterministic simulation of the replication core: several nodes, each with an
//! [`Owner`] and a [`Replica`] over an in-memory disk model, a simulated network (loss, delay,
//! reordering, duplication, partitions) and a simulated clock, with crashes and restarts.
//!
//! Each seed runs a chaos phase (producers appending, faults injected) and then a liveness phase
//! (everything healed and restarted, producers stopped) that must converge. Safety checkers run
//! as the run goes: no two different records ever sit at one (stream, seq) on any two disks; an
//! acknowledgement never claims more durable holders than exist, never comes from fewer than
//! `min_replicas`, is flagged degraded exactly when below `write_quorum`, and never degraded
//! under `Block`. After convergence: every acknowledged record is on its owner and on at least
//! `write_quorum` disks, identical, and every replica of every stream equals its owner's copy.
//!
//! `cargo test -p verge-replica --test sim` runs `VERGE_SEEDS` seeds (default 1,000) split across
//! the test threads. A failure prints `VERGE_SEED=<n>`; `VERGE_SEED=<n> cargo test -p
//! verge-replica --test sim` replays exactly that seed, and `VERGE_TRACE=1` adds an event trace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use verge_proto::replication::{Append, ReplicationMessage, ToOwner, ToReplica};
use verge_proto::{NodeId, Record, StreamId, StreamKind};
use verge_replica::{
    Owner, OwnerAction, OwnerConfig, OwnerEvent, Phase, Replica, ReplicaAction, ReplicaConfig,
    ReplicaEvent, Shortfall, StoredCopy, StoredStream, placement,
};

/// How many seeds one `cargo test` run covers, unless `VERGE_SEEDS` says otherwise.
const SEEDS_DEFAULT: u64 = 1_000;
/// The batch tests below split the seeds between them so the test harness runs them in parallel.
const BATCHES: u64 = 4;

const TICK_MS: u64 = 10;
const DETECT_MS: u64 = 20;
const CHECK_MS: u64 = 50;
/// How long the liveness phase may take before the run counts as stuck.
const SETTLE_MS_MAX: u64 = 20_000;

// ---------------------------------------------------------------------------------------------
// The disk model.

/// One stream on one disk: records from `first` on, the first `durable - first + 1` of them on
/// disk, the rest lost by a crash.
#[derive(Debug, Clone)]
struct DiskStream {
    first: u64,
    recs: Vec<Record>,
    durable: u64,
}

impl DiskStream {
    fn new() -> Self {
        Self {
            first: 1,
            recs: Vec::new(),
            durable: 0,
        }
    }
    fn head(&self) -> u64 {
        self.first - 1 + self.recs.len() as u64
    }
    fn get(&self, seq: u64) -> Option<&Record> {
        if seq < self.first {
            return None;
        }
        self.recs.get(usize::try_from(seq - self.first).ok()?)
    }
    fn durable_get(&self, seq: u64) -> Option<&Record> {
        if seq > self.durable {
            return None;
        }
        self.get(seq)
    }
}

/// What survives a crash: streams up to their durable heads, the holder sets, the epoch counter.
#[derive(Debug, Clone, Default)]
struct Disk {
    epoch: u64,
    streams: BTreeMap<StreamId, DiskStream>,
    holders: BTreeMap<StreamId, Vec<NodeId>>,
}

impl Disk {
    fn crash(&mut self) {
        for s in self.streams.values_mut() {
            let keep = s.durable.saturating_sub(s.first - 1);
            s.recs.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation.

#[derive(Debug, Clone)]
struct Packet {
    from: usize,
    to: usize,
    /// The incarnation of `to` when sent: a restart ends every connection.
    to_inc: u64,
    msg: ReplicationMessage,
}

#[derive(Debug, Clone)]
enum Ev {
    Deliver(Packet),
    Tick(usize, u64),
    Flush(usize, u64),
    Produce(usize, u64),
    Detect,
    Crash(usize, u64),
    Restart(usize),
    Partition(Vec<u8>),
    Heal,
    EndChaos,
    Check,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    alive: bool,
    inc: u64,
    disk: Disk,
    owner: Option<Owner>,
    replica: Option<Replica>,
    /// What this node's membership table believes about each peer.
    view: Vec<bool>,
    own: Vec<StreamId>,
}

#[derive(Debug, Clone)]
struct Params {
    nodes: usize,
    streams_per_node: usize,
    cfg: OwnerConfig,
    rcfg: ReplicaConfig,
    chaos_ms: u64,
    loss: f64,
    dup: f64,
    delay_max_ms: u64,
    /// Share of messages held up for 50 to 400 ms (a backed-up mailbox), long enough to arrive
    /// after their sender crashed and restarted.
    slow: f64,
    /// Whether a crash holds up some of the crashed node's messages still in flight.
    stall_on_crash: bool,
    flush_max_ms: u64,
    produce_max_ms: u64,
    crashes: usize,
    partitions: usize,
}

impl Params {
    fn draw(rng: &mut StdRng) -> Self {
        let nodes = rng.random_range(3..=5);
        let replicas = if nodes >= 4 && rng.random_bool(0.3) {
            3
        } else {
            2
        };
        let write_quorum = if rng.random_bool(0.15) {
            1
        } else {
            rng.random_range(2..=replicas)
        };
        let min_replicas = rng.random_range(1..=write_quorum);
        let append_records_max = rng.random_range(1..=6);
        let cfg = OwnerConfig {
            replicas,
            write_quorum,
            min_replicas,
            shortfall: if rng.random_bool(0.5) {
                Shortfall::Degrade
            } else {
                Shortfall::Block
            },
            replace_after_ms: rng.random_range(100..=1_500),
            resend_after_ms: rng.random_range(60..=200),
            append_records_max,
            // At least 8 in flight, so replication outruns the producers and a replica left behind
            // by a degraded or W=1 stream catches up within the liveness phase.
            inflight_records_max: (append_records_max as u64 * rng.random_range(1..=4)).max(8),
            pending_records_max: rng.random_range(10..=200),
            fetch_records_max: rng.random_range(1..=8),
        };
        let rcfg = ReplicaConfig {
            append_records_max: 8,
            fetch_records_max: rng.random_range(1..=8),
            streams_max: 64,
        };
        Self {
            nodes,
            streams_per_node: rng.random_range(1..=2),
            cfg,
            rcfg,
            chaos_ms: rng.random_range(800..=1_500),
            loss: if rng.random_bool(0.2) {
                0.0
            } else {
                rng.random_range(0.0..0.15)
            },
            dup: if rng.random_bool(0.5) { 0.0 } else { 0.03 },
            delay_max_ms: rng.random_range(1..=40),
            slow: if rng.random_bool(0.5) { 0.0 } else { 0.03 },
            stall_on_crash: rng.random_bool(0.5),
            flush_max_ms: rng.random_range(3..=40),
            produce_max_ms: rng.random_range(10..=60),
            crashes: rng.random_range(0..=4),
            partitions: rng.random_range(0..=3),
        }
    }
}

struct Sim {
    rng: StdRng,
    p: Params,
    now: u64,
    next_id: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<SimNode>,
    groups: Vec<u8>,
    chaos: bool,
    done: bool,
    /// Every record acknowledged to a producer, by (stream, seq).
    acked: BTreeMap<(StreamId, u64), Record>,
    acked_upto: BTreeMap<StreamId, u64>,
    record_uid: i64,
    trace: Option<Vec<String>>,
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    events: u64,
    acked: u64,
    degraded_acks: u64,
    recoveries_with_fetch: u64,
    fetched: u64,
    crashes: u64,
    replaced: u64,
}

type Violation = String;

impl Sim {
    fn new(seed: u64, trace: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = Params::draw(&mut rng);
        let nodes = (0..p.nodes)
            .map(|i| {
                let id = NodeId::new(format!("n{}", i + 1)).expect("valid id");
                let kinds = [StreamKind::Raw, StreamKind::Aggregates];
                let own = (0..p.streams_per_node)
                    .map(|j| StreamId::new(id.clone(), kinds[j % 2], format!("s{j}")).expect("id"))
                    .collect();
                SimNode {
                    id,
                    alive: false,
                    inc: 0,
                    disk: Disk::default(),
                    owner: None,
                    replica: None,
                    view: vec![false; p.nodes],
                    own,
                }
            })
            .collect();
        Self {
            rng,
            now: 0,
            next_id: 0,
            queue: BTreeMap::new(),
            groups: vec![0; p.nodes],
            nodes,
            chaos: true,
            done: false,
            acked: BTreeMap::new(),
            acked_upto: BTreeMap::new(),
            record_uid: 0,
            trace: trace.then(Vec::new),
            stats: Stats::default(),
            p,
        }
    }

    fn log(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>6} {}", self.now, f()));
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.next_id += 1;
        self.queue.insert((t, self.next_id), ev);
    }

    fn idx(&self, id: &NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == *id)
            .expect("known node")
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.groups[a] == self.groups[b]
    }

    fn run(&mut self) -> Result<(), Violation> {
        for i in 0..self.p.nodes {
            self.restart(i)?;
        }
        self.at(DETECT_MS, Ev::Detect);
        // The fault schedule, drawn up front.
        let chaos_ms = self.p.chaos_ms;
        for _ in 0..self.p.crashes {
            let node = self.rng.random_range(0..self.p.nodes);
            let t = self.rng.random_range(50..chaos_ms);
            let down = if self.rng.random_bool(0.5) {
                self.rng.random_range(10..=150)
            } else {
                self.rng.random_range(10..=self.p.cfg.replace_after_ms * 2)
            };
            self.at(t, Ev::Crash(node, down));
        }
        for _ in 0..self.p.partitions {
            let t = self.rng.random_range(50..chaos_ms);
            let groups: Vec<u8> = (0..self.p.nodes)
                .map(|_| self.rng.random_range(0..2))
                .collect();
            let len = self.rng.random_range(20..=self.p.cfg.replace_after_ms * 2);
            self.at(t, Ev::Partition(groups));
            self.at(t + len, Ev::Heal);
        }
        self.at(chaos_ms, Ev::EndChaos);
        while !self.done {
            let Some(((t, _), ev)) = self.queue.pop_first() else {
                return Err("the event queue ran dry".into());
            };
            self.now = t;
            self.stats.events += 1;
            self.step(ev)?;
        }
        self.final_checks()
    }

    fn step(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Deliver(pkt) => self.deliver(pkt)?,
            Ev::Tick(i, inc) => {
                if self.nodes[i].alive && self.nodes[i].inc == inc {
                    let now = self.now;
                    let acts = self.owner(i).handle(now, OwnerEvent::Tick);
                    self.owner_actions(i, acts)?;
                    self.at(now + TICK_MS, Ev::Tick(i, inc));
                }
            }
            Ev::Flush(i, inc) => {
                if self.nodes[i].alive && self.nodes[i].inc == inc {
                    self.flush(i)?;
                    let next = self.now + self.rng.random_range(1..=self.p.flush_max_ms);
                    self.at(next, Ev::Flush(i, inc));
                }
            }
            Ev::Produce(i, inc) => {
                if self.nodes[i].alive && self.nodes[i].inc == inc && self.chaos {
                    self.produce(i)?;
                    let next = self.now + self.rng.random_range(1..=self.p.produce_max_ms);
                    self.at(next, Ev::Produce(i, inc));
                }
            }
            Ev::Detect => {
                self.detect()?;
                self.at(self.now + DETECT_MS, Ev::Detect);
            }
            Ev::Crash(i, down) => {
                if self.nodes[i].alive && self.chaos {
                    self.crash(i);
                    self.at(self.now + down, Ev::Restart(i));
                }
            }
            Ev::Restart(i) => {
                if !self.nodes[i].alive {
                    self.restart(i)?;
                }
            }
            Ev::Partition(groups) => {
                if self.chaos {
                    self.log(|| format!("partition {groups:?}"));
                    self.groups = groups;
                }
            }
            Ev::Heal => {
                self.log(|| "heal".into());
                self.groups = vec![0; self.p.nodes];
            }
            Ev::EndChaos => {
                self.log(|| "end of chaos: heal, restart all, no loss, producers stop".into());
                self.chaos = false;
                self.groups = vec![0; self.p.nodes];
                self.p.loss = 0.0;
                self.p.dup = 0.0;
                self.p.slow = 0.0;
                for i in 0..self.p.nodes {
                    if !self.nodes[i].alive {
                        self.restart(i)?;
                    }
                }
                self.at(self.now + CHECK_MS, Ev::Check);
            }
            Ev::Check => {
                if self.converged().is_ok() {
                    self.done = true;
                } else if self.now > self.p.chaos_ms + SETTLE_MS_MAX {
                    let why = self.converged().err().unwrap_or_default();
                    return Err(format!(
                        "liveness: not converged {SETTLE_MS_MAX} ms after healing: {why}"
                    ));
                } else {
                    self.at(self.now + CHECK_MS, Ev::Check);
                }
            }
        }
        Ok(())
    }

    fn owner(&mut self, i: usize) -> &mut Owner {
        self.nodes[i]
            .owner
            .as_mut()
            .expect("alive node has an owner core")
    }

    fn replica(&mut self, i: usize) -> &mut Replica {
        self.nodes[i]
            .replica
            .as_mut()
            .expect("alive node has a replica core")
    }

    fn send(&mut self, from: usize, to: &NodeId, msg: ReplicationMessage) {
        let to = self.idx(to);
        if !self.connected(from, to) || self.rng.random_bool(self.p.loss) {
            self.log(|| format!("lost n{}->n{} {}", from + 1, to + 1, short(&msg)));
            return;
        }
        let copies = if self.rng.random_bool(self.p.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.rng.random_bool(self.p.slow) {
                self.rng.random_range(50..=400)
            } else {
                self.rng.random_range(1..=self.p.delay_max_ms)
            };
            let pkt = Packet {
                from,
                to,
                to_inc: self.nodes[to].inc,
                msg: msg.clone(),
            };
            self.at(self.now + delay, Ev::Deliver(pkt));
        }
    }

    fn deliver(&mut self, pkt: Packet) -> Result<(), Violation> {
        let to = pkt.to;
        if !self.nodes[to].alive
            || self.nodes[to].inc != pkt.to_inc
            || !self.connected(pkt.from, to)
        {
            return Ok(());
        }
        let from = self.nodes[pkt.from].id.clone();
        self.log(|| format!("n{}->n{} {}", pkt.from + 1, to + 1, short(&pkt.msg)));
        let now = self.now;
        match pkt.msg {
            ReplicationMessage::ToReplica(msg) => {
                let acts = self
                    .replica(to)
                    .handle(ReplicaEvent::Received { from, msg });
                self.replica_actions(to, acts)
            }
            ReplicationMessage::ToOwner(msg) => {
                let acts = self
                    .owner(to)
                    .handle(now, OwnerEvent::Received { from, msg });
                self.owner_actions(to, acts)
            }
        }
    }

    fn detect(&mut self) -> Result<(), Violation> {
        for a in 0..self.p.nodes {
            for b in 0..self.p.nodes {
                if a == b || !self.nodes[a].alive {
                    continue;
                }
                let truth = self.nodes[b].alive && self.connected(a, b);
                if self.nodes[a].view[b] != truth && self.rng.random_bool(0.5) {
                    self.nodes[a].view[b] = truth;
                    let peer = self.nodes[b].id.clone();
                    self.log(|| {
                        format!(
                            "n{} sees n{} {}",
                            a + 1,
                            b + 1,
                            if truth { "up" } else { "down" }
                        )
                    });
                    let ev = if truth {
                        OwnerEvent::PeerUp { peer }
                    } else {
                        OwnerEvent::PeerDown { peer }
                    };
                    let now = self.now;
                    let acts = self.owner(a).handle(now, ev);
                    self.owner_actions(a, acts)?;
                }
            }
        }
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        self.log(|| format!("CRASH n{}", i + 1));
        self.stats.crashes += 1;
        if self.p.stall_on_crash {
            // Some of what the node sent is still queued at its receivers and is read only after
            // the node has restarted: the case epochs fence.
            let from_it: Vec<(u64, u64)> = self
                .queue
                .iter()
                .filter(|(_, ev)| matches!(ev, Ev::Deliver(p) if p.from == i))
                .map(|(k, _)| *k)
                .collect();
            for k in from_it {
                if self.rng.random_bool(0.5)
                    && let Some(ev) = self.queue.remove(&k)
                {
                    let t = k.0 + self.rng.random_range(50..=400);
                    self.at(t, ev);
                }
            }
        }
        let n = &mut self.nodes[i];
        n.alive = false;
        n.inc += 1;
        n.disk.crash();
        n.owner = None;
        n.replica = None;
        n.view = vec![false; self.p.nodes];
    }

    fn restart(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now;
        let n = &mut self.nodes[i];
        n.alive = true;
        n.inc += 1;
        n.disk.epoch += 1;
        let me = n.id.clone();
        let mut owned: BTreeMap<StreamId, StoredStream> = BTreeMap::new();
        let mut copies = Vec::new();
        for (s, d) in &n.disk.streams {
            if s.owner == me {
                owned.insert(
                    s.clone(),
                    StoredStream {
                        stream: s.clone(),
                        first_seq: d.first,
                        head: d.head(),
                        durable: d.durable,
                        holders: Vec::new(),
                    },
                );
            } else {
                copies.push(StoredCopy {
                    stream: s.clone(),
                    head: d.head(),
                    durable: d.durable,
                });
            }
        }
        for (s, h) in &n.disk.holders {
            owned
                .entry(s.clone())
                .or_insert_with(|| StoredStream {
                    stream: s.clone(),
                    first_seq: 1,
                    head: 0,
                    durable: 0,
                    holders: Vec::new(),
                })
                .holders = h.clone();
        }
        let epoch = n.disk.epoch;
        n.owner = Some(
            Owner::new(self.p.cfg.clone(), me, epoch, now, owned.into_values())
                .map_err(|e| format!("owner core refused the disk: {e}"))?,
        );
        n.replica = Some(
            Replica::new(self.p.rcfg.clone(), copies)
                .map_err(|e| format!("replica core refused the disk: {e}"))?,
        );
        let inc = n.inc;
        self.log(|| format!("START n{} epoch {epoch}", i + 1));
        self.at(now + TICK_MS, Ev::Tick(i, inc));
        let f = self.rng.random_range(1..=self.p.flush_max_ms);
        self.at(now + f, Ev::Flush(i, inc));
        let p = self.rng.random_range(1..=self.p.produce_max_ms);
        self.at(now + p, Ev::Produce(i, inc));
        Ok(())
    }

    fn flush(&mut self, i: usize) -> Result<(), Violation> {
        let mut flushed = Vec::new();
        for (s, d) in &mut self.nodes[i].disk.streams {
            if d.durable < d.head() {
                d.durable = d.head();
                flushed.push((s.clone(), d.durable));
            }
        }
        let me = self.nodes[i].id.clone();
        let now = self.now;
        for (stream, up_to) in flushed {
            if stream.owner == me {
                let acts = self
                    .owner(i)
                    .handle(now, OwnerEvent::LocalDurable { stream, up_to });
                self.owner_actions(i, acts)?;
            } else {
                let acts = self
                    .replica(i)
                    .handle(ReplicaEvent::LocalDurable { stream, up_to });
                self.replica_actions(i, acts)?;
            }
        }
        Ok(())
    }

    fn produce(&mut self, i: usize) -> Result<(), Violation> {
        let k = self.rng.random_range(0..self.nodes[i].own.len());
        let stream = self.nodes[i].own[k].clone();
        let Ok(seq) = self.owner(i).next_seq(&stream) else {
            return Ok(());
        };
        let count = self.rng.random_range(1..=3u64);
        let inc = self.nodes[i].inc;
        let recs: Vec<Record> = (0..count)
            .map(|_| {
                self.record_uid += 1;
                Record {
                    ts_ms: self.record_uid,
                    values: vec![i as f64, inc as f64],
                }
            })
            .collect();
        self.put(i, &stream, seq, recs)?;
        let now = self.now;
        let acts = self
            .owner(i)
            .appended(now, &stream, seq, count)
            .map_err(|e| format!("append refused after next_seq allowed it: {e}"))?;
        self.owner_actions(i, acts)
    }

    /// Appends to node `i`'s disk at exactly its head + 1, checking every record against every
    /// other disk's record at the same (stream, seq).
    fn put(
        &mut self,
        i: usize,
        stream: &StreamId,
        first_seq: u64,
        recs: Vec<Record>,
    ) -> Result<(), Violation> {
        for (k, r) in recs.iter().enumerate() {
            let seq = first_seq + k as u64;
            for (j, other) in self.nodes.iter().enumerate() {
                if j == i {
                    continue;
                }
                if let Some(theirs) = other.disk.streams.get(stream).and_then(|d| d.get(seq))
                    && theirs != r
                {
                    return Err(format!(
                        "safety: two records at {stream} seq {seq}: n{} gets {r:?}, n{} holds {theirs:?}",
                        i + 1,
                        j + 1
                    ));
                }
            }
            if let Some(a) = self.acked.get(&(stream.clone(), seq))
                && a != r
            {
                return Err(format!(
                    "safety: acknowledged {stream} seq {seq} = {a:?} overwritten by {r:?} on n{}",
                    i + 1
                ));
            }
        }
        let d = self.nodes[i]
            .disk
            .streams
            .entry(stream.clone())
            .or_insert_with(DiskStream::new);
        if first_seq != d.head() + 1 {
            return Err(format!(
                "driver contract: append to {stream} at {first_seq} on n{} whose head is {}",
                i + 1,
                d.head()
            ));
        }
        d.recs.extend(recs);
        Ok(())
    }

    fn owner_actions(&mut self, i: usize, acts: Vec<OwnerAction>) -> Result<(), Violation> {
        for a in acts {
            self.log(|| format!("n{} owner: {}", i + 1, short_owner(&a)));
            match a {
                OwnerAction::PersistHolders { stream, holders } => {
                    self.nodes[i].disk.holders.insert(stream, holders);
                }
                OwnerAction::SendAppend {
                    to,
                    stream,
                    epoch,
                    first_seq,
                    count,
                    start_seq,
                } => {
                    let d = self.nodes[i].disk.streams.get(&stream);
                    let records: Option<Vec<Record>> = (first_seq..first_seq + count)
                        .map(|s| d.and_then(|d| d.get(s)).cloned())
                        .collect();
                    let Some(records) = records else {
                        return Err(format!(
                            "owner n{} asked to send {stream} {first_seq}+{count} it does not hold",
                            i + 1
                        ));
                    };
                    let msg = ToReplica::Append(Append {
                        stream,
                        epoch,
                        first_seq,
                        start_seq,
                        records,
                    });
                    self.send(i, &to, msg.into());
                }
                OwnerAction::Send { to, msg } => self.send(i, &to, msg.into()),
                OwnerAction::StoreRecovered {
                    stream,
                    first_seq,
                    records,
                } => {
                    self.stats.fetched += records.len() as u64;
                    self.put(i, &stream, first_seq, records)?;
                }
                OwnerAction::Recovered { fetched, .. } => {
                    if fetched > 0 {
                        self.stats.recoveries_with_fetch += 1;
                    }
                }
                OwnerAction::AckProducer {
                    stream,
                    up_to,
                    replicas,
                    degraded,
                } => self.check_ack(i, stream, up_to, replicas, degraded)?,
                OwnerAction::ReplicaRemoved { .. } => self.stats.replaced += 1,
                OwnerAction::Refused { error } => {
                    return Err(format!("protocol: n{} owner refused: {error}", i + 1));
                }
                OwnerAction::MarkUnderReplicated { .. }
                | OwnerAction::MarkReplicated { .. }
                | OwnerAction::ReplicaAdded { .. }
                | OwnerAction::CatchingUp { .. }
                | OwnerAction::CaughtUp { .. } => {}
            }
        }
        Ok(())
    }

    fn check_ack(
        &mut self,
        i: usize,
        stream: StreamId,
        up_to: u64,
        replicas: usize,
        degraded: bool,
    ) -> Result<(), Violation> {
        let cfg = &self.p.cfg;
        let Some(theirs) = self.nodes[i]
            .disk
            .streams
            .get(&stream)
            .and_then(|d| d.durable_get(up_to))
            .cloned()
        else {
            return Err(format!(
                "safety: n{} acknowledged {stream} up to {up_to} before its own disk had it",
                i + 1
            ));
        };
        let holders = self
            .nodes
            .iter()
            .filter(|n| {
                n.disk
                    .streams
                    .get(&stream)
                    .and_then(|d| d.durable_get(up_to))
                    == Some(&theirs)
            })
            .count();
        if holders < replicas {
            return Err(format!(
                "safety: ack of {stream} up to {up_to} claims {replicas} holders, {holders} have it durably"
            ));
        }
        if replicas < cfg.min_replicas {
            return Err(format!(
                "safety: ack of {stream} up to {up_to} with {replicas} holders, min_replicas is {}",
                cfg.min_replicas
            ));
        }
        if degraded != (replicas < cfg.write_quorum) {
            return Err(format!(
                "safety: ack of {stream} up to {up_to}: degraded={degraded} with {replicas} holders, W={}",
                cfg.write_quorum
            ));
        }
        if degraded && cfg.shortfall == Shortfall::Block {
            return Err(format!("safety: degraded ack of {stream} under Block"));
        }
        let from = self.acked_upto.get(&stream).copied().unwrap_or(0) + 1;
        let d = self.nodes[i]
            .disk
            .streams
            .get(&stream)
            .expect("checked above");
        for seq in from..=up_to {
            let r = d.get(seq).cloned().expect("below the durable head");
            self.acked.insert((stream.clone(), seq), r);
            self.stats.acked += 1;
        }
        if degraded {
            self.stats.degraded_acks += 1;
        }
        self.acked_upto.insert(stream, up_to.max(from - 1));
        Ok(())
    }

    fn replica_actions(&mut self, i: usize, acts: Vec<ReplicaAction>) -> Result<(), Violation> {
        for a in acts {
            self.log(|| format!("n{} replica: {}", i + 1, short_replica(&a)));
            match a {
                ReplicaAction::Store {
                    stream,
                    first_seq,
                    records,
                } => self.put(i, &stream, first_seq, records)?,
                ReplicaAction::Reset { stream, .. } => {
                    return Err(format!(
                        "n{} told to reset {stream}, but nothing retention-drops in this simulation",
                        i + 1
                    ));
                }
                ReplicaAction::Send { to, msg } => self.send(i, &to, msg.into()),
                ReplicaAction::SendFetched {
                    to,
                    stream,
                    from_seq,
                    count,
                    head,
                } => {
                    let d = self.nodes[i].disk.streams.get(&stream);
                    let records: Vec<Record> = (from_seq..from_seq + u64::from(count))
                        .map_while(|s| d.and_then(|d| d.get(s)).cloned())
                        .collect();
                    let msg = ToOwner::FetchReply {
                        stream,
                        first_seq: from_seq,
                        records,
                        head,
                    };
                    self.send(i, &to, msg.into());
                }
                ReplicaAction::Refused { error } => {
                    return Err(format!("protocol: n{} replica refused: {error}", i + 1));
                }
            }
        }
        Ok(())
    }

    /// Whether every stream is recovered, flushed, acknowledged, placed where rendezvous says
    /// and copied identically to each of its replicas.
    fn converged(&self) -> Result<(), String> {
        let all: Vec<NodeId> = self.nodes.iter().map(|n| n.id.clone()).collect();
        for n in &self.nodes {
            if !n.alive {
                return Err(format!("{} is down", n.id));
            }
            let owner = n.owner.as_ref().expect("alive");
            for st in owner.statuses() {
                let s = &st.stream;
                if st.phase != Phase::Active {
                    return Err(format!("{s} still recovering"));
                }
                let d = n.disk.streams.get(s);
                let head = d.map_or(0, DiskStream::head);
                if st.head != head || d.is_some_and(|d| d.durable != head) {
                    return Err(format!(
                        "{s}: core head {} vs disk {head}, not flushed",
                        st.head
                    ));
                }
                if st.acked != head {
                    return Err(format!("{s}: acknowledged {} of {head}", st.acked));
                }
                let want: BTreeSet<NodeId> =
                    placement::replicas(s, &n.id, &all, self.p.cfg.replicas - 1)
                        .into_iter()
                        .collect();
                let have: BTreeSet<NodeId> = st.replicas.iter().map(|r| r.node.clone()).collect();
                if want != have || !st.retiring.is_empty() {
                    return Err(format!(
                        "{s}: replicas {have:?} (retiring {:?}), rendezvous says {want:?}",
                        st.retiring
                    ));
                }
                if st.under_replicated {
                    return Err(format!("{s}: still marked under-replicated"));
                }
                for r in &want {
                    let rd = self.nodes[self.idx(r)].disk.streams.get(s);
                    let same = match (d, rd) {
                        (None, None) => true,
                        (Some(d), Some(rd)) => {
                            rd.durable == head && rd.first == d.first && rd.recs == d.recs
                        }
                        (Some(d), None) => d.recs.is_empty(),
                        (None, Some(_)) => false,
                    };
                    if !same {
                        return Err(format!(
                            "{s}: replica {r} has {:?} of {head}",
                            rd.map(|x| (x.head(), x.durable))
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn final_checks(&self) -> Result<(), Violation> {
        for ((stream, seq), rec) in &self.acked {
            let holders = self
                .nodes
                .iter()
                .filter(|n| {
                    n.disk.streams.get(stream).and_then(|d| d.durable_get(*seq)) == Some(rec)
                })
                .count();
            let owner = &self.nodes[self.idx(&stream.owner)];
            let on_owner = owner
                .disk
                .streams
                .get(stream)
                .and_then(|d| d.durable_get(*seq))
                == Some(rec);
            if !on_owner || holders < self.p.cfg.write_quorum {
                return Err(format!(
                    "safety: acknowledged {stream} seq {seq} on {holders} disks (owner: {on_owner}) after healing"
                ));
            }
        }
        // No two different records at one (stream, seq), across every disk.
        let mut seen: BTreeMap<(&StreamId, u64), &Record> = BTreeMap::new();
        for n in &self.nodes {
            for (s, d) in &n.disk.streams {
                for (k, r) in d.recs.iter().enumerate() {
                    let seq = d.first + k as u64;
                    if let Some(prev) = seen.insert((s, seq), r)
                        && prev != r
                    {
                        return Err(format!("safety: two records at {s} seq {seq}"));
                    }
                }
            }
        }
        Ok(())
    }
}

fn short(m: &ReplicationMessage) -> String {
    match m {
        ReplicationMessage::ToReplica(ToReplica::Append(a)) => format!(
            "Append {} e{} {}+{} start {}",
            a.stream,
            a.epoch,
            a.first_seq,
            a.records.len(),
            a.start_seq
        ),
        ReplicationMessage::ToReplica(ToReplica::HwmQuery { stream, epoch }) => {
            format!("HwmQuery {stream} e{epoch}")
        }
        ReplicationMessage::ToReplica(ToReplica::Fetch {
            stream,
            from_seq,
            count,
        }) => format!("Fetch {stream} {from_seq}+{count}"),
        ReplicationMessage::ToOwner(ToOwner::Ack { stream, durable }) => {
            format!("Ack {stream} {durable}")
        }
        ReplicationMessage::ToOwner(ToOwner::Nack { stream, head }) => {
            format!("Nack {stream} {head}")
        }
        ReplicationMessage::ToOwner(ToOwner::HwmReply {
            stream,
            epoch,
            head,
            durable,
        }) => format!("HwmReply {stream} e{epoch} head {head} durable {durable}"),
        ReplicationMessage::ToOwner(ToOwner::FetchReply {
            stream,
            first_seq,
            records,
            head,
        }) => format!(
            "FetchReply {stream} {first_seq}+{} head {head}",
            records.len()
        ),
    }
}

fn short_owner(a: &OwnerAction) -> String {
    match a {
        OwnerAction::StoreRecovered {
            stream,
            first_seq,
            records,
        } => format!("StoreRecovered {stream} {first_seq}+{}", records.len()),
        other => format!("{other:?}"),
    }
}

fn short_replica(a: &ReplicaAction) -> String {
    match a {
        ReplicaAction::Store {
            stream,
            first_seq,
            records,
        } => format!("Store {stream} {first_seq}+{}", records.len()),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Running seeds.

fn run_seed(seed: u64, trace: bool) -> Result<Stats, String> {
    let outcome = std::panic::catch_unwind(|| {
        let mut sim = Sim::new(seed, trace);
        let r = sim.run();
        (r, sim.stats, sim.trace.take(), sim.p.clone(), sim.now)
    });
    match outcome {
        Ok((Ok(()), stats, _, _, _)) => Ok(stats),
        Ok((Err(v), _, trace, p, now)) => {
            let mut msg = format!("VERGE_SEED={seed} failed at t={now} ms: {v}\nparams: {p:?}\n");
            if let Some(t) = trace {
                for line in t {
                    let _ = writeln!(msg, "{line}");
                }
            } else {
                let _ = writeln!(msg, "(add VERGE_TRACE=1 for an event trace)");
            }
            Err(msg)
        }
        Err(_) => Err(format!(
            "VERGE_SEED={seed} panicked (see the panic message above)"
        )),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn run_batch(batch: u64) {
    if env_u64("VERGE_SEED").is_some() {
        return; // `replay` runs that one seed.
    }
    let seeds = env_u64("VERGE_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for seed in (0..seeds).filter(|s| s % BATCHES == batch) {
        match run_seed(seed, false) {
            Ok(s) => {
                total.events += s.events;
                total.acked += s.acked;
                total.degraded_acks += s.degraded_acks;
                total.recoveries_with_fetch += s.recoveries_with_fetch;
                total.fetched += s.fetched;
                total.crashes += s.crashes;
                total.replaced += s.replaced;
            }
            Err(e) => failures.push(e),
        }
    }
    println!("batch {batch}: {total:?}");
    if let Some(first) = failures.first() {
        panic!("{} seed(s) failed; first:\n{first}", failures.len());
    }
}

#[test]
fn seeds_batch_0() {
    run_batch(0);
}

#[test]
fn seeds_batch_1() {
    run_batch(1);
}

#[test]
fn seeds_batch_2() {
    run_batch(2);
}

#[test]
fn seeds_batch_3() {
    run_batch(3);
}

/// `VERGE_SEED=<n>` replays one seed; `VERGE_TRACE=1` prints its event trace.
#[test]
fn replay() {
    let Some(seed) = env_u64("VERGE_SEED") else {
        return;
    };
    let trace = std::env::var_os("VERGE_TRACE").is_some();
    match run_seed(seed, trace) {
        Ok(stats) => println!("VERGE_SEED={seed} passed: {stats:?}"),
        Err(e) => panic!("{e}"),
    }
}

/// The same seed gives the same run, event for event.
#[test]
fn runs_are_deterministic() {
    for seed in [1, 7, 42] {
        let trace = |seed| {
            let mut sim = Sim::new(seed, true);
            let outcome = sim.run();
            (outcome, sim.trace.take().unwrap_or_default())
        };
        let (a, b) = (trace(seed), trace(seed));
        assert!(
            a.1.len() > 100,
            "seed {seed} traced only {} events",
            a.1.len()
        );
        assert!(a == b, "seed {seed} ran differently twice");
    }
}
