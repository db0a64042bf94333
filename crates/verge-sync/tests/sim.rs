//! A seeded, deterministic simulation of the sync core: three to five nodes, each with its own
//! [`Syncer`] and durable outbox, under a simulated Raft (terms, elections, a committed cursor map
//! that each node applies late, proposals that fail or commit late, and an old leader cut off
//! from the others that still believes it leads and keeps posting with its old term), a
//! simulated store (aggregate streams growing, readable heads that lag, reads that fail or come
//! back short) and a simulated cloud that implements the real rules (each batch key stored once,
//! each (stream, seq) window once, a term below the highest accepted refused), with outages, slow
//! answers, answers lost after the cloud stored the batch, and rejections. Nodes crash and lose
//! everything but their outbox (only what `PersistOutbox` wrote; drops become durable late) and
//! their applied Raft state.
//!
//! Each seed runs a chaos phase and then a liveness phase (everything healed and restarted, one
//! new leader, streams stopped) that must converge. Safety checkers run as the run goes:
//! - the cloud never accepts a batch with a term lower than one it accepted before, and every
//!   window it stores is the stream's own record at that sequence number;
//! - a committed cursor never passes what the cloud holds contiguously, and neither does a
//!   proposed one;
//! - a node posts only while it believes it leads, with that term, never again in a term the cloud
//!   fenced, only batches it persisted first, at most one per stream and `posts_inflight_max` in
//!   all, and a stream's batch only once the cloud holds everything before it (in order);
//! - a batch leaves the outbox only once the cloud holds it.
//!
//! After convergence: the cloud holds every window of every stream exactly once, 1 to the head,
//! and every cursor is at the head.
//!
//! `cargo test -p verge-sync --test sim` runs `VERGE_SEEDS` seeds (default 1,000) split across the
//! test threads. A failure prints `VERGE_SEED=<n>`; `VERGE_SEED=<n> cargo test -p verge-sync --test
//! sim` replays exactly that seed, and `VERGE_TRACE=1` adds an event trace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use verge_proto::{NodeId, Record, StreamId, StreamKind};
use verge_sync::{
    Batch, BatchKey, CloudOutcome, SyncAction, SyncConfig, SyncEvent, SyncWarning, Syncer,
};

/// How many seeds one `cargo test` run covers, unless `VERGE_SEEDS` says otherwise.
const SEEDS_DEFAULT: u64 = 1_000;
/// The batch tests below split the seeds between them so the harness runs them in parallel.
const BATCHES: u64 = 4;

const CLUSTER: &str = "corridor";
const HEADS_MS: u64 = 100;
const APPLY_MS: u64 = 50;
const REPLICATE_MS: u64 = 40;
const CHECK_MS: u64 = 50;
/// How long the liveness phase may take before the run counts as stuck.
const SETTLE_MS_MAX: u64 = 30_000;

// ---------------------------------------------------------------------------------------------
// Parameters, drawn per seed.

#[derive(Debug, Clone)]
struct Params {
    nodes: usize,
    approaches: Vec<usize>,
    cfg_batch: usize,
    cfg_posts: usize,
    cfg_reads: usize,
    cfg_outbox: usize,
    cfg_stream_outbox: usize,
    retry_ms_min: u64,
    retry_ms_max: u64,
    rejected_retry_ms: u64,
    propose_retry_ms: u64,
    chaos_ms: u64,
    produce_ms_max: u64,
    elections: usize,
    election_ms_max: u64,
    cutoff: f64,
    cutoff_ms_max: u64,
    crashes: usize,
    outages: usize,
    outage_ms_max: u64,
    cloud_delay_ms_max: u64,
    timeout_ms: u64,
    slow: f64,
    lost: f64,
    reject: f64,
    propose_fail: f64,
    propose_late: f64,
    read_fail: f64,
    read_short: f64,
    drop_sync_ms_max: u64,
    apply_lag_ms_max: u64,
}

impl Params {
    fn draw(rng: &mut StdRng) -> Self {
        let nodes = rng.random_range(3..=5);
        let maybe = |rng: &mut StdRng, p: f64| {
            if rng.random_bool(0.5) {
                0.0
            } else {
                rng.random_range(0.0..p)
            }
        };
        Self {
            nodes,
            approaches: (0..nodes).map(|_| rng.random_range(1..=3)).collect(),
            cfg_batch: rng.random_range(1..=6),
            cfg_posts: rng.random_range(1..=4),
            cfg_reads: rng.random_range(1..=4),
            cfg_outbox: rng.random_range(1..=10),
            cfg_stream_outbox: rng.random_range(1..=3),
            retry_ms_min: rng.random_range(5..=40),
            retry_ms_max: rng.random_range(100..=600),
            rejected_retry_ms: rng.random_range(100..=500),
            propose_retry_ms: rng.random_range(10..=100),
            chaos_ms: rng.random_range(1_200..=2_500),
            produce_ms_max: rng.random_range(40..=150),
            elections: rng.random_range(0..=5),
            election_ms_max: rng.random_range(20..=200),
            cutoff: rng.random_range(0.0..0.8),
            cutoff_ms_max: rng.random_range(50..=800),
            crashes: rng.random_range(0..=4),
            outages: rng.random_range(0..=3),
            outage_ms_max: rng.random_range(50..=1_000),
            cloud_delay_ms_max: rng.random_range(1..=20),
            timeout_ms: rng.random_range(150..=400),
            slow: maybe(rng, 0.1),
            lost: maybe(rng, 0.1),
            reject: maybe(rng, 0.03),
            propose_fail: maybe(rng, 0.2),
            propose_late: maybe(rng, 0.5),
            read_fail: maybe(rng, 0.1),
            read_short: maybe(rng, 0.4),
            drop_sync_ms_max: rng.random_range(1..=100),
            apply_lag_ms_max: rng.random_range(0..=100),
        }
    }

    fn cfg(&self, gateway: NodeId) -> SyncConfig {
        SyncConfig {
            batch_windows_max: self.cfg_batch,
            posts_inflight_max: self.cfg_posts,
            reads_inflight_max: self.cfg_reads,
            outbox_batches_max: self.cfg_outbox,
            stream_outbox_batches_max: self.cfg_stream_outbox,
            retry_ms_min: self.retry_ms_min,
            retry_ms_max: self.retry_ms_max,
            rejected_retry_ms: self.rejected_retry_ms,
            propose_retry_ms: self.propose_retry_ms,
            ..SyncConfig::new(CLUSTER, gateway)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world.

/// The record at `seq` of stream number `s`: a function of both, so any copy can be checked.
fn truth(s: usize, seq: u64) -> Record {
    Record {
        ts_ms: seq as i64 * 10_000,
        values: vec![s as f64, seq as f64, (seq * 7 % 13) as f64],
    }
}

#[derive(Debug, Clone)]
enum Ev {
    Produce(usize),
    Replicate,
    /// A timer the node set at its core's `next_deadline`: (node, incarnation, due time).
    Tick(usize, u64, u64),
    Heads(usize, u64),
    Apply(usize, u64),
    SyncDrops(usize, u64),
    ReadDone {
        node: usize,
        inc: u64,
        stream: StreamId,
        from: u64,
        max: u64,
    },
    CloudArrive {
        node: usize,
        inc: u64,
        batch: Batch,
        posted_at: u64,
        back_ms: u64,
        lost: bool,
    },
    Answer {
        node: usize,
        inc: u64,
        key: BatchKey,
        term: u64,
        outcome: CloudOutcome,
    },
    Commit {
        node: usize,
        inc: u64,
        term: u64,
        stream: StreamId,
        up_to: u64,
        notify: bool,
    },
    ProposeFailed {
        node: usize,
        inc: u64,
        stream: StreamId,
        up_to: u64,
    },
    Elect,
    TellLeader(usize, u64, u64),
    TellLost(usize, u64, u64),
    Crash(usize, u64),
    Restart(usize),
    OutageStart,
    OutageEnd,
    EndChaos,
    Check,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    alive: bool,
    inc: u64,
    syncer: Option<Syncer>,
    /// The durable outbox.
    outbox: BTreeMap<BatchKey, Batch>,
    /// Drops carried out but not yet durable: a crash brings these batches back.
    pending_drops: Vec<BatchKey>,
    /// How many entries of the Raft log this node has applied (durable).
    applied: usize,
    /// Cut off from the other voters until then: applies nothing new.
    cut_until: u64,
    /// The term the core was last told it leads, until told otherwise.
    believes: Option<u64>,
    /// The highest term in which this incarnation was refused as stale while believing it led it.
    fenced: Option<u64>,
    /// Posts not yet answered: stream -> (key, term).
    posts: BTreeMap<StreamId, (BatchKey, u64)>,
    /// Batches loaded from the outbox at the last start (the outbox bound does not cover them).
    loaded: usize,
    /// The timer set for the core's next deadline.
    tick_at: Option<u64>,
}

#[derive(Debug, Default)]
struct Raft {
    term: u64,
    /// The real leader and its incarnation.
    leader: Option<(usize, u64)>,
    /// Committed cursor entries: (commit time, stream, up_to).
    log: Vec<(u64, StreamId, u64)>,
    committed: BTreeMap<StreamId, u64>,
}

#[derive(Debug, Default)]
struct Cloud {
    up: bool,
    outages: u32,
    highest: Option<u64>,
    keys: BTreeSet<BatchKey>,
    windows: BTreeMap<StreamId, BTreeMap<u64, Record>>,
    prefix: BTreeMap<StreamId, u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    events: u64,
    posts: u64,
    stored: u64,
    duplicate_keys: u64,
    duplicate_windows: u64,
    stale: u64,
    unavailable: u64,
    rejected: u64,
    elections: u64,
    cutoffs: u64,
    crashes: u64,
    commits: u64,
    windows: u64,
    settle_ms: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.events += o.events;
        self.posts += o.posts;
        self.stored += o.stored;
        self.duplicate_keys += o.duplicate_keys;
        self.duplicate_windows += o.duplicate_windows;
        self.stale += o.stale;
        self.unavailable += o.unavailable;
        self.rejected += o.rejected;
        self.elections += o.elections;
        self.cutoffs += o.cutoffs;
        self.crashes += o.crashes;
        self.commits += o.commits;
        self.windows += o.windows;
        self.settle_ms = self.settle_ms.max(o.settle_ms);
    }
}

type Violation = String;

struct Sim {
    rng: StdRng,
    p: Params,
    now: u64,
    next_id: u64,
    /// Boxed: events carry batches, and a B-tree shifts its values on every insert.
    queue: BTreeMap<(u64, u64), Box<Ev>>,
    streams: Vec<StreamId>,
    index: BTreeMap<StreamId, usize>,
    head: Vec<u64>,
    readable: Vec<u64>,
    nodes: Vec<SimNode>,
    raft: Raft,
    cloud: Cloud,
    chaos: bool,
    done: bool,
    trace: Option<Vec<String>>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = Params::draw(&mut rng);
        let mut streams = Vec::new();
        let nodes = (0..p.nodes)
            .map(|i| {
                let id = NodeId::new(format!("n{}", i + 1)).expect("valid id");
                for a in 0..p.approaches[i] {
                    streams.push(
                        StreamId::new(id.clone(), StreamKind::Aggregates, format!("a{a}"))
                            .expect("valid stream"),
                    );
                }
                SimNode {
                    id,
                    alive: false,
                    inc: 0,
                    syncer: None,
                    outbox: BTreeMap::new(),
                    pending_drops: Vec::new(),
                    applied: 0,
                    cut_until: 0,
                    believes: None,
                    fenced: None,
                    posts: BTreeMap::new(),
                    loaded: 0,
                    tick_at: None,
                }
            })
            .collect();
        let index = streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        Self {
            rng,
            now: 0,
            next_id: 0,
            queue: BTreeMap::new(),
            head: vec![0; streams.len()],
            readable: vec![0; streams.len()],
            streams,
            index,
            nodes,
            raft: Raft::default(),
            cloud: Cloud {
                up: true,
                ..Cloud::default()
            },
            chaos: true,
            done: false,
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
        self.queue.insert((t, self.next_id), Box::new(ev));
    }

    fn live(&self, i: usize, inc: u64) -> bool {
        self.nodes[i].alive && self.nodes[i].inc == inc
    }

    fn run(&mut self) -> Result<(), Violation> {
        for i in 0..self.p.nodes {
            self.restart(i)?;
        }
        for s in 0..self.streams.len() {
            let t = self.rng.random_range(1..=self.p.produce_ms_max);
            self.at(t, Ev::Produce(s));
        }
        self.at(REPLICATE_MS, Ev::Replicate);
        let first = self.rng.random_range(1..=self.p.election_ms_max);
        self.at(first, Ev::Elect);
        let chaos_ms = self.p.chaos_ms;
        for _ in 0..self.p.elections {
            let t = self.rng.random_range(100..chaos_ms);
            self.at(t, Ev::Elect);
        }
        for _ in 0..self.p.crashes {
            let node = self.rng.random_range(0..self.p.nodes);
            let t = self.rng.random_range(50..chaos_ms);
            let down = self.rng.random_range(10..=500);
            self.at(t, Ev::Crash(node, down));
        }
        for _ in 0..self.p.outages {
            let t = self.rng.random_range(50..chaos_ms);
            let len = self.rng.random_range(20..=self.p.outage_ms_max);
            self.at(t, Ev::OutageStart);
            self.at(t + len, Ev::OutageEnd);
        }
        self.at(chaos_ms, Ev::EndChaos);
        while !self.done {
            let Some(((t, _), ev)) = self.queue.pop_first() else {
                return Err("the event queue ran dry".into());
            };
            self.now = t;
            self.stats.events += 1;
            self.step(*ev)?;
        }
        self.final_checks()
    }

    fn step(&mut self, ev: Ev) -> Result<(), Violation> {
        let now = self.now;
        match ev {
            Ev::Produce(s) => {
                if self.chaos {
                    self.head[s] += 1;
                    let next = now + self.rng.random_range(1..=self.p.produce_ms_max);
                    self.at(next, Ev::Produce(s));
                }
            }
            Ev::Replicate => {
                for s in 0..self.streams.len() {
                    let step = if self.chaos {
                        self.rng.random_range(0..=2)
                    } else {
                        u64::MAX
                    };
                    self.readable[s] = self.head[s].min(self.readable[s].saturating_add(step));
                }
                self.at(now + REPLICATE_MS, Ev::Replicate);
            }
            Ev::Tick(i, inc, due) => {
                if self.live(i, inc) && self.nodes[i].tick_at == Some(due) {
                    self.nodes[i].tick_at = None;
                    self.feed(i, SyncEvent::Tick)?;
                }
            }
            Ev::Heads(i, inc) => {
                if self.live(i, inc) {
                    let heads = self.heads();
                    self.feed(i, SyncEvent::StreamHeads { heads })?;
                    self.check_bounds(i)?;
                    self.at(now + HEADS_MS, Ev::Heads(i, inc));
                }
            }
            Ev::Apply(i, inc) => {
                if self.live(i, inc) {
                    self.apply(i)?;
                    self.at(now + APPLY_MS, Ev::Apply(i, inc));
                }
            }
            Ev::SyncDrops(i, inc) => {
                if self.live(i, inc) {
                    let n = &mut self.nodes[i];
                    for k in n.pending_drops.drain(..) {
                        n.outbox.remove(&k);
                    }
                    let next = now + self.rng.random_range(1..=self.p.drop_sync_ms_max);
                    self.at(next, Ev::SyncDrops(i, inc));
                }
            }
            Ev::ReadDone {
                node,
                inc,
                stream,
                from,
                max,
            } => {
                if self.live(node, inc) {
                    let ev = self.read(stream, from, max);
                    self.feed(node, ev)?;
                }
            }
            Ev::CloudArrive {
                node,
                inc,
                batch,
                posted_at,
                back_ms,
                lost,
            } => self.cloud_arrive(node, inc, batch, posted_at, back_ms, lost)?,
            Ev::Answer {
                node,
                inc,
                key,
                term,
                outcome,
            } => {
                if self.live(node, inc) {
                    let n = &mut self.nodes[node];
                    if n.posts.get(&key.stream) == Some(&(key.clone(), term)) {
                        n.posts.remove(&key.stream);
                    }
                    if matches!(outcome, CloudOutcome::Stale { .. }) && n.believes == Some(term) {
                        n.fenced = n.fenced.max(Some(term));
                    }
                    self.feed(node, SyncEvent::CloudAnswer { key, term, outcome })?;
                }
            }
            Ev::Commit {
                node,
                inc,
                term,
                stream,
                up_to,
                notify,
            } => {
                // The leader changed before the entry committed: it may survive or not.
                let survives = self.raft.term == term || self.rng.random_bool(0.5);
                if survives {
                    self.commit(&stream, up_to)?;
                }
                if notify && self.live(node, inc) {
                    let ev = if survives {
                        SyncEvent::CursorCommitted { stream, up_to }
                    } else {
                        SyncEvent::CursorProposeFailed {
                            stream,
                            up_to,
                            error: "leader changed".into(),
                        }
                    };
                    self.feed(node, ev)?;
                }
            }
            Ev::ProposeFailed {
                node,
                inc,
                stream,
                up_to,
            } => {
                if self.live(node, inc) {
                    self.feed(
                        node,
                        SyncEvent::CursorProposeFailed {
                            stream,
                            up_to,
                            error: "not the leader".into(),
                        },
                    )?;
                }
            }
            Ev::Elect => self.elect()?,
            Ev::TellLeader(i, inc, term) => {
                if self.live(i, inc) && self.nodes[i].believes.is_none_or(|t| t < term) {
                    self.nodes[i].believes = Some(term);
                    self.feed(i, SyncEvent::BecameLeader { term })?;
                }
            }
            Ev::TellLost(i, inc, term) => {
                if self.live(i, inc) && self.nodes[i].believes == Some(term) {
                    self.nodes[i].believes = None;
                    self.feed(i, SyncEvent::LostLeadership)?;
                }
            }
            Ev::Crash(i, down) => {
                if self.nodes[i].alive && self.chaos {
                    self.crash(i);
                    self.at(now + down, Ev::Restart(i));
                }
            }
            Ev::Restart(i) => {
                if !self.nodes[i].alive {
                    self.restart(i)?;
                }
            }
            Ev::OutageStart => {
                if self.chaos {
                    self.cloud.outages += 1;
                    self.cloud.up = false;
                    self.log(|| "cloud DOWN".into());
                }
            }
            Ev::OutageEnd => {
                self.cloud.outages = self.cloud.outages.saturating_sub(1);
                if self.cloud.outages == 0 {
                    self.cloud.up = true;
                    self.log(|| "cloud up".into());
                }
            }
            Ev::EndChaos => self.end_chaos()?,
            Ev::Check => {
                if self.converged().is_ok() {
                    self.stats.settle_ms = self.now - self.p.chaos_ms;
                    self.done = true;
                } else if self.now > self.p.chaos_ms + SETTLE_MS_MAX {
                    let why = self.converged().err().unwrap_or_default();
                    return Err(format!(
                        "liveness: not converged {SETTLE_MS_MAX} ms after healing: {why}"
                    ));
                } else {
                    self.at(now + CHECK_MS, Ev::Check);
                }
            }
        }
        Ok(())
    }

    fn heads(&self) -> BTreeMap<StreamId, u64> {
        self.streams
            .iter()
            .zip(&self.readable)
            .map(|(s, h)| (s.clone(), *h))
            .collect()
    }

    fn read(&mut self, stream: StreamId, from: u64, max: u64) -> SyncEvent {
        if self.rng.random_bool(self.p.read_fail) {
            return SyncEvent::ReadFailed {
                stream,
                error: "no live replica".into(),
            };
        }
        let s = self.index[&stream];
        let avail = self.readable[s];
        let mut n = if from > avail {
            0
        } else {
            max.min(avail - from + 1)
        };
        if n > 1 && self.rng.random_bool(self.p.read_short) {
            n = self.rng.random_range(1..=n);
        }
        let records = (from..from + n).map(|seq| truth(s, seq)).collect();
        SyncEvent::Read {
            stream,
            first_seq: from,
            records,
        }
    }

    fn apply(&mut self, i: usize) -> Result<(), Violation> {
        if self.nodes[i].cut_until > self.now {
            return Ok(());
        }
        let lag = self.rng.random_range(0..=self.p.apply_lag_ms_max);
        let upto = self.now.saturating_sub(lag);
        let from = self.nodes[i].applied;
        let mut to = from;
        while to < self.raft.log.len() && self.raft.log[to].0 <= upto {
            to += 1;
        }
        if to == from {
            return Ok(());
        }
        let mut cursors = BTreeMap::new();
        for (_, s, c) in &self.raft.log[from..to] {
            let e = cursors.entry(s.clone()).or_insert(0);
            *e = (*e).max(*c);
        }
        self.nodes[i].applied = to;
        self.feed(i, SyncEvent::Cursors { cursors })
    }

    /// Everything node `i` has applied, as one map.
    fn applied_map(&self, i: usize) -> BTreeMap<StreamId, u64> {
        let mut m = BTreeMap::new();
        for (_, s, c) in &self.raft.log[..self.nodes[i].applied] {
            let e = m.entry(s.clone()).or_insert(0);
            *e = (*e).max(*c);
        }
        m
    }

    fn elect(&mut self) -> Result<(), Violation> {
        let alive: Vec<usize> = (0..self.p.nodes).filter(|i| self.nodes[*i].alive).collect();
        if alive.is_empty() {
            let t = self.now + self.p.election_ms_max;
            self.at(t, Ev::Elect);
            return Ok(());
        }
        let old = self.raft.leader;
        let new = alive[self.rng.random_range(0..alive.len())];
        self.raft.term += 1;
        let term = self.raft.term;
        let inc = self.nodes[new].inc;
        self.raft.leader = Some((new, inc));
        self.stats.elections += 1;
        self.log(|| format!("ELECT n{} term {term}", new + 1));
        if let Some((o, oinc)) = old
            && o != new
            && self.live(o, oinc)
            && let Some(oterm) = self.nodes[o].believes
        {
            if self.chaos && self.rng.random_bool(self.p.cutoff) {
                // Cut off from the other voters: it keeps believing it leads, keeps posting with
                // its old term, applies nothing, and commits nothing, until it hears.
                let len = self.rng.random_range(20..=self.p.cutoff_ms_max);
                self.nodes[o].cut_until = self.now + len;
                self.stats.cutoffs += 1;
                self.log(|| format!("n{} cut off for {len} ms", o + 1));
                self.at(self.now + len, Ev::TellLost(o, oinc, oterm));
            } else {
                let d = self.rng.random_range(0..=10);
                self.at(self.now + d, Ev::TellLost(o, oinc, oterm));
            }
        }
        if self.rng.random_bool(0.5) {
            // A leader that has applied everything committed before it hears it leads.
            self.apply_all(new)?;
        }
        let d = self.rng.random_range(1..=self.p.election_ms_max.min(30));
        self.at(self.now + d, Ev::TellLeader(new, inc, term));
        Ok(())
    }

    fn apply_all(&mut self, i: usize) -> Result<(), Violation> {
        let from = self.nodes[i].applied;
        if from == self.raft.log.len() {
            return Ok(());
        }
        let mut cursors = BTreeMap::new();
        for (_, s, c) in &self.raft.log[from..] {
            let e = cursors.entry(s.clone()).or_insert(0);
            *e = (*e).max(*c);
        }
        self.nodes[i].applied = self.raft.log.len();
        self.feed(i, SyncEvent::Cursors { cursors })
    }

    fn crash(&mut self, i: usize) {
        self.log(|| format!("CRASH n{}", i + 1));
        self.stats.crashes += 1;
        let n = &mut self.nodes[i];
        n.alive = false;
        n.inc += 1;
        n.syncer = None;
        n.pending_drops.clear();
        n.believes = None;
        n.fenced = None;
        n.posts.clear();
        n.cut_until = 0;
        n.tick_at = None;
        if self.raft.leader.is_some_and(|(l, _)| l == i) {
            self.raft.leader = None;
            let t = self.now + self.rng.random_range(10..=self.p.election_ms_max);
            self.at(t, Ev::Elect);
        }
    }

    fn restart(&mut self, i: usize) -> Result<(), Violation> {
        let seed = self.rng.random();
        let now = self.now;
        let cfg = self.p.cfg(self.nodes[i].id.clone());
        let syncer = Syncer::new(cfg, seed).map_err(|e| format!("config refused: {e}"))?;
        let n = &mut self.nodes[i];
        n.alive = true;
        n.inc += 1;
        n.syncer = Some(syncer);
        n.loaded = n.outbox.len();
        let inc = n.inc;
        let batches: Vec<Batch> = n.outbox.values().cloned().collect();
        self.log(|| format!("START n{} outbox {}", i + 1, batches.len()));
        self.feed(i, SyncEvent::OutboxLoaded { batches })?;
        let cursors = self.applied_map(i);
        self.feed(i, SyncEvent::Cursors { cursors })?;
        let heads = self.heads();
        self.feed(i, SyncEvent::StreamHeads { heads })?;
        self.at(now + HEADS_MS, Ev::Heads(i, inc));
        self.at(now + APPLY_MS, Ev::Apply(i, inc));
        let d = self.rng.random_range(1..=self.p.drop_sync_ms_max);
        self.at(now + d, Ev::SyncDrops(i, inc));
        Ok(())
    }

    fn end_chaos(&mut self) -> Result<(), Violation> {
        self.log(|| "end of chaos: heal, restart all, one new leader, streams stop".into());
        self.chaos = false;
        self.cloud.up = true;
        self.cloud.outages = 0;
        let p = &mut self.p;
        (p.slow, p.lost, p.reject) = (0.0, 0.0, 0.0);
        (p.propose_fail, p.propose_late) = (0.0, 0.0);
        (p.read_fail, p.read_short) = (0.0, 0.0);
        for i in 0..self.p.nodes {
            if !self.nodes[i].alive {
                self.restart(i)?;
            }
            self.nodes[i].cut_until = 0;
            if let Some(t) = self.nodes[i].believes {
                let inc = self.nodes[i].inc;
                self.at(self.now, Ev::TellLost(i, inc, t));
            }
        }
        self.raft.leader = None;
        let t = self.now + 1;
        self.at(t, Ev::Elect);
        self.at(self.now + CHECK_MS, Ev::Check);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // The cloud.

    fn cloud_arrive(
        &mut self,
        node: usize,
        inc: u64,
        batch: Batch,
        posted_at: u64,
        back_ms: u64,
        lost: bool,
    ) -> Result<(), Violation> {
        let key = batch.key();
        let term = batch.term;
        let deadline = posted_at + self.p.timeout_ms;
        if !self.cloud.up {
            self.stats.unavailable += 1;
            let t = (self.now + 1).min(deadline.max(self.now));
            self.at(
                t,
                Ev::Answer {
                    node,
                    inc,
                    key,
                    term,
                    outcome: CloudOutcome::Unavailable("connection refused".into()),
                },
            );
            return Ok(());
        }
        let outcome = if self.rng.random_bool(self.p.reject) {
            self.stats.rejected += 1;
            CloudOutcome::Rejected("HTTP 413: body too large (a misconfigured proxy)".into())
        } else {
            self.ingest(&batch)?
        };
        self.log(|| format!("cloud {key} t{term}: {outcome:?}"));
        let back = self.now + back_ms;
        if lost || back > deadline {
            self.stats.unavailable += 1;
            self.at(
                deadline.max(self.now),
                Ev::Answer {
                    node,
                    inc,
                    key,
                    term,
                    outcome: CloudOutcome::Unavailable("timed out".into()),
                },
            );
        } else {
            self.at(
                back,
                Ev::Answer {
                    node,
                    inc,
                    key,
                    term,
                    outcome,
                },
            );
        }
        Ok(())
    }

    /// The reference cloud's rules: fencing first, then the key, then each window.
    fn ingest(&mut self, batch: &Batch) -> Result<CloudOutcome, Violation> {
        if let Some(h) = self.cloud.highest
            && batch.term < h
        {
            self.stats.stale += 1;
            return Ok(CloudOutcome::Stale { highest: h });
        }
        if let Some(h) = self.cloud.highest
            && batch.term < h
        {
            return Err(format!(
                "safety: the cloud accepted term {} after term {h}",
                batch.term
            ));
        }
        self.cloud.highest = Some(self.cloud.highest.map_or(batch.term, |h| h.max(batch.term)));
        let key = batch.key();
        if self.cloud.keys.contains(&key) {
            self.stats.duplicate_keys += 1;
            return Ok(CloudOutcome::Duplicate);
        }
        let s = self.index[&batch.stream];
        let held = self.cloud.windows.entry(batch.stream.clone()).or_default();
        let (mut stored, mut duplicates) = (0, 0);
        for (seq, rec) in &batch.windows {
            if *rec != truth(s, *seq) {
                return Err(format!(
                    "safety: the cloud got a wrong window {seq} in {key}"
                ));
            }
            if held.contains_key(seq) {
                duplicates += 1;
            } else {
                held.insert(*seq, rec.clone());
                stored += 1;
            }
        }
        let prefix = self.cloud.prefix.entry(batch.stream.clone()).or_insert(0);
        while held.contains_key(&(*prefix + 1)) {
            *prefix += 1;
        }
        self.cloud.keys.insert(key);
        self.stats.stored += 1;
        self.stats.duplicate_windows += duplicates;
        Ok(CloudOutcome::Stored { stored, duplicates })
    }

    fn cloud_prefix(&self, s: &StreamId) -> u64 {
        self.cloud.prefix.get(s).copied().unwrap_or(0)
    }

    fn commit(&mut self, stream: &StreamId, up_to: u64) -> Result<(), Violation> {
        let held = self.cloud_prefix(stream);
        if up_to > held {
            return Err(format!(
                "safety: cursor of {stream} committed at {up_to}, the cloud holds 1..={held}"
            ));
        }
        let c = self.raft.committed.entry(stream.clone()).or_insert(0);
        *c = (*c).max(up_to);
        self.raft.log.push((self.now, stream.clone(), up_to));
        self.stats.commits += 1;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Driving one node's core.

    fn feed(&mut self, i: usize, ev: SyncEvent) -> Result<(), Violation> {
        let now = self.now;
        self.log(|| format!("n{} <- {}", i + 1, short_event(&ev)));
        let syncer = self.nodes[i]
            .syncer
            .as_mut()
            .expect("a live node has a core");
        let acts = syncer.handle(now, ev);
        // The driver ticks only when the core says a retry delay ends: anything else the core
        // forgets to do on an event is a liveness failure here.
        if let Some(due) = syncer.next_deadline(now) {
            if due <= now {
                return Err(format!("n{}: next deadline {due} is not after now", i + 1));
            }
            let n = &mut self.nodes[i];
            if n.tick_at.is_none_or(|t| t > due) {
                n.tick_at = Some(due);
                let inc = n.inc;
                self.at(due, Ev::Tick(i, inc, due));
            }
        }
        self.actions(i, acts)
    }

    fn actions(&mut self, i: usize, acts: Vec<SyncAction>) -> Result<(), Violation> {
        let now = self.now;
        let inc = self.nodes[i].inc;
        for a in acts {
            self.log(|| format!("n{} -> {}", i + 1, short_action(&a)));
            match a {
                SyncAction::Read {
                    stream,
                    from_seq,
                    max,
                } => {
                    if max == 0 || max > self.p.cfg_batch as u64 {
                        return Err(format!("n{}: read of {max} records", i + 1));
                    }
                    let d = self.rng.random_range(1..=10);
                    self.at(
                        now + d,
                        Ev::ReadDone {
                            node: i,
                            inc,
                            stream,
                            from: from_seq,
                            max,
                        },
                    );
                }
                SyncAction::PersistOutbox { batch } => {
                    self.check_batch(i, &batch)?;
                    let n = &mut self.nodes[i];
                    n.pending_drops.retain(|k| *k != batch.key());
                    n.outbox.insert(batch.key(), batch);
                }
                SyncAction::Post { batch } => self.post(i, batch)?,
                SyncAction::DropOutbox { key } => {
                    let held = self.cloud_prefix(&key.stream);
                    if key.last_seq > held {
                        return Err(format!(
                            "safety: n{} dropped {key} from its outbox; the cloud holds 1..={held}",
                            i + 1
                        ));
                    }
                    self.nodes[i].pending_drops.push(key);
                }
                SyncAction::ProposeCursor {
                    term,
                    stream,
                    up_to,
                } => self.propose(i, term, stream, up_to)?,
                SyncAction::Fenced { .. }
                | SyncAction::Acked { .. }
                | SyncAction::Backoff { .. }
                | SyncAction::Rejected { .. } => {}
                SyncAction::Warning(w) => match w {
                    SyncWarning::StaleLeadership { .. } => {}
                    other => return Err(format!("n{} warned: {other}", i + 1)),
                },
            }
        }
        Ok(())
    }

    fn check_batch(&self, i: usize, b: &Batch) -> Result<(), Violation> {
        b.check()
            .map_err(|e| format!("n{}: malformed batch {}: {e}", i + 1, b.key()))?;
        if b.len() > self.p.cfg_batch || b.cluster != CLUSTER || b.gateway != self.nodes[i].id {
            return Err(format!(
                "n{}: batch {} of {} windows, cluster {}, gateway {}",
                i + 1,
                b.key(),
                b.len(),
                b.cluster,
                b.gateway
            ));
        }
        let s = self.index[&b.stream];
        if b.last_seq > self.head[s] {
            return Err(format!("n{}: batch {} beyond the head", i + 1, b.key()));
        }
        if b.windows.iter().any(|(seq, r)| *r != truth(s, *seq)) {
            return Err(format!(
                "n{}: batch {} carries a wrong window",
                i + 1,
                b.key()
            ));
        }
        Ok(())
    }

    fn post(&mut self, i: usize, batch: Batch) -> Result<(), Violation> {
        let key = batch.key();
        let n = &self.nodes[i];
        let term = batch.term;
        if n.believes != Some(term) {
            return Err(format!(
                "n{} posted {key} with term {term} while believing {:?}",
                i + 1,
                n.believes
            ));
        }
        if n.fenced.is_some_and(|f| term <= f) {
            return Err(format!(
                "n{} posted {key} with term {term} after the cloud fenced term {:?}",
                i + 1,
                n.fenced
            ));
        }
        if n.outbox.get(&key).map(|b| &b.windows) != Some(&batch.windows) {
            return Err(format!("n{} posted {key} before persisting it", i + 1));
        }
        if n.posts.get(&key.stream).is_some_and(|(_, t)| *t == term) {
            return Err(format!(
                "n{} posted {key} while {:?} was in flight",
                i + 1,
                n.posts.get(&key.stream)
            ));
        }
        let held = self.cloud_prefix(&key.stream);
        if key.first_seq > held + 1 {
            return Err(format!(
                "n{} posted {key} out of order: the cloud holds 1..={held}",
                i + 1
            ));
        }
        self.check_batch(i, &batch)?;
        let n = &mut self.nodes[i];
        n.posts.insert(key.stream.clone(), (key, term));
        let in_flight = n.posts.values().filter(|(_, t)| *t == term).count();
        if in_flight > self.p.cfg_posts {
            return Err(format!("n{} has {in_flight} posts in flight", i + 1));
        }
        self.stats.posts += 1;
        let inc = n.inc;
        let slow = self.rng.random_bool(self.p.slow);
        let delay = |rng: &mut StdRng| {
            if slow {
                rng.random_range(100..=800)
            } else {
                rng.random_range(1..=self.p.cloud_delay_ms_max)
            }
        };
        let there = delay(&mut self.rng);
        let back_ms = delay(&mut self.rng);
        let lost = self.rng.random_bool(self.p.lost);
        let posted_at = self.now;
        self.at(
            posted_at + there,
            Ev::CloudArrive {
                node: i,
                inc,
                batch,
                posted_at,
                back_ms,
                lost,
            },
        );
        Ok(())
    }

    fn propose(
        &mut self,
        i: usize,
        term: u64,
        stream: StreamId,
        up_to: u64,
    ) -> Result<(), Violation> {
        let held = self.cloud_prefix(&stream);
        if up_to > held {
            return Err(format!(
                "safety: n{} proposed {stream} cursor {up_to}; the cloud holds 1..={held}",
                i + 1
            ));
        }
        let inc = self.nodes[i].inc;
        let leads = self.raft.leader == Some((i, inc)) && self.raft.term == term;
        if !leads {
            // Forwarded nowhere: a deposed or cut-off leader's proposal times out.
            let d = self.rng.random_range(1..=200);
            self.at(
                self.now + d,
                Ev::ProposeFailed {
                    node: i,
                    inc,
                    stream,
                    up_to,
                },
            );
        } else if self.rng.random_bool(self.p.propose_fail) {
            let d = self.rng.random_range(1..=20);
            self.at(
                self.now + d,
                Ev::ProposeFailed {
                    node: i,
                    inc,
                    stream: stream.clone(),
                    up_to,
                },
            );
            if self.rng.random_bool(self.p.propose_late) {
                // The proposer heard "failed", but the entry had reached a majority.
                let late = self.rng.random_range(20..=300);
                self.at(
                    self.now + late,
                    Ev::Commit {
                        node: i,
                        inc,
                        term,
                        stream,
                        up_to,
                        notify: false,
                    },
                );
            }
        } else {
            let d = if self.rng.random_bool(self.p.propose_late) {
                self.rng.random_range(50..=400)
            } else {
                self.rng.random_range(1..=30)
            };
            self.at(
                self.now + d,
                Ev::Commit {
                    node: i,
                    inc,
                    term,
                    stream,
                    up_to,
                    notify: true,
                },
            );
        }
        Ok(())
    }

    /// The outbox stays within its bounds (plus one batch per stream, plus what was loaded).
    fn check_bounds(&self, i: usize) -> Result<(), Violation> {
        let Some(s) = &self.nodes[i].syncer else {
            return Ok(());
        };
        let st = s.status(self.now);
        let allowed = self.p.cfg_outbox + self.streams.len() + self.nodes[i].loaded;
        if st.outbox_batches > allowed {
            return Err(format!(
                "n{} holds {} outbox batches, more than {allowed}",
                i + 1,
                st.outbox_batches
            ));
        }
        if st.reads_in_flight > self.p.cfg_reads {
            return Err(format!("n{} has {} reads out", i + 1, st.reads_in_flight));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // The end.

    fn converged(&self) -> Result<(), String> {
        for (s, id) in self.streams.iter().enumerate() {
            let held = self.cloud_prefix(id);
            if held != self.head[s] {
                return Err(format!(
                    "{id}: the cloud holds 1..={held} of {}",
                    self.head[s]
                ));
            }
            let c = self.raft.committed.get(id).copied().unwrap_or(0);
            if c != self.head[s] {
                return Err(format!("{id}: cursor {c} of {}", self.head[s]));
            }
        }
        let Some((l, _)) = self.raft.leader else {
            return Err("no leader".into());
        };
        let st = self.nodes[l]
            .syncer
            .as_ref()
            .map(|s| s.status(self.now))
            .ok_or("the leader is down")?;
        if st.backlog != 0 || st.outbox_batches != 0 {
            return Err(format!(
                "the leader reports backlog {} and {} outbox batches",
                st.backlog, st.outbox_batches
            ));
        }
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), Violation> {
        for (s, id) in self.streams.iter().enumerate() {
            let held = self.cloud.windows.get(id);
            let seqs: Vec<u64> = held
                .map(|h| h.keys().copied().collect())
                .unwrap_or_default();
            if seqs != (1..=self.head[s]).collect::<Vec<_>>() {
                return Err(format!(
                    "safety: the cloud holds {} windows of {id}, not exactly 1..={}",
                    seqs.len(),
                    self.head[s]
                ));
            }
            self.stats.windows += self.head[s];
        }
        Ok(())
    }
}

fn short_event(e: &SyncEvent) -> String {
    match e {
        SyncEvent::Read {
            stream,
            first_seq,
            records,
        } => format!("Read {stream} {first_seq}+{}", records.len()),
        SyncEvent::OutboxLoaded { batches } => {
            let keys: Vec<String> = batches.iter().map(|b| b.key().to_string()).collect();
            format!("OutboxLoaded {keys:?}")
        }
        other => format!("{other:?}"),
    }
}

fn short_action(a: &SyncAction) -> String {
    match a {
        SyncAction::PersistOutbox { batch } => format!("PersistOutbox {}", batch.key()),
        SyncAction::Post { batch } => format!("Post {} t{}", batch.key(), batch.term),
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
    let mut ran = 0;
    for seed in (0..seeds).filter(|s| s % BATCHES == batch) {
        ran += 1;
        match run_seed(seed, false) {
            Ok(s) => total.add(&s),
            Err(e) => failures.push(e),
        }
    }
    println!(
        "batch {batch}: {ran} seeds, {} failed; {total:?}",
        failures.len()
    );
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
