//! In-process clusters over the in-memory transport: election, replication, failover, restart,
//! partitions, learners, leadership transfer and malformed input.
//!
//! Every wait is on an event (a watch channel) bounded by a generous deadline; timings are
//! printed, not asserted tightly (run with `--nocapture` to see them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use verge_control::testing::MemNetwork;
use verge_control::wire::{self, Reply, Request, ServeError};
use verge_control::{
    Command, Control, ControlConfig, ControlError, ControlState, LeaderInfo, Refusal, Response,
};
use verge_proto::{NodeId, StreamId};

/// Deadline for anything the cluster should do "soon" (an election takes ~200 ms).
const SOON: Duration = Duration::from_secs(5);

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

fn stream(s: &str) -> StreamId {
    s.parse().expect("valid stream id")
}

struct Cluster {
    net: MemNetwork,
    cfg: ControlConfig,
    voters: Vec<NodeId>,
    dirs: BTreeMap<NodeId, TempDir>,
    nodes: BTreeMap<NodeId, Control>,
}

impl Cluster {
    async fn new(voters: &[&str], others: &[&str]) -> Self {
        Self::with_config(voters, others, ControlConfig::default()).await
    }

    async fn with_config(voters: &[&str], others: &[&str], cfg: ControlConfig) -> Self {
        let mut c = Cluster {
            net: MemNetwork::new(),
            cfg,
            voters: voters.iter().map(|v| id(v)).collect(),
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for n in voters.iter().chain(others) {
            c.dirs.insert(id(n), tempfile::tempdir().expect("temp dir"));
            c.start(&id(n)).await;
        }
        c
    }

    async fn start(&mut self, node: &NodeId) -> Control {
        let control = Control::start(
            node.clone(),
            self.dirs[node].path(),
            self.cfg.clone(),
            self.voters.clone(),
            self.net.transport(node.clone()),
        )
        .await
        .expect("control starts");
        self.net.register(&control);
        self.nodes.insert(node.clone(), control.clone());
        control
    }

    /// Stops `node` abruptly as far as its peers can tell: unreachable at once, then shut down.
    async fn kill(&mut self, node: &NodeId) {
        self.net.unregister(node);
        let control = self.nodes.remove(node).expect("node is running");
        control.shutdown().await.expect("shutdown");
    }

    fn node(&self, n: &NodeId) -> &Control {
        &self.nodes[n]
    }

    /// Waits until every running node (except `ignore`) sees the same leader, which is not
    /// `not`, and that leader knows it leads.
    async fn agreed_leader(&self, not: Option<&NodeId>, ignore: &[&NodeId]) -> LeaderInfo {
        let deadline = Instant::now() + SOON;
        let watchers: Vec<&Control> = self
            .nodes
            .iter()
            .filter(|(n, _)| !ignore.contains(n))
            .map(|(_, c)| c)
            .collect();
        'retry: loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no agreed leader within {SOON:?}");
            let mut rx = watchers[0].watch_leader();
            let first = tokio::time::timeout(
                left,
                rx.wait_for(|l| l.as_ref().is_some_and(|l| Some(&l.id) != not)),
            )
            .await
            .expect("a leader within the deadline")
            .expect("watch open")
            .clone()
            .expect("some leader");
            for w in &watchers {
                let mut rx = w.watch_leader();
                let seen = tokio::time::timeout(
                    deadline.saturating_duration_since(Instant::now()),
                    rx.wait_for(|l| {
                        l.as_ref()
                            .is_some_and(|l| l.term >= first.term && Some(&l.id) != not)
                    }),
                )
                .await
                .expect("every node sees a leader")
                .expect("watch open")
                .clone()
                .expect("some leader");
                if seen.id != first.id || seen.term != first.term {
                    continue 'retry;
                }
            }
            if self.nodes.get(&first.id).is_some_and(|c| c.is_leader()) {
                return first;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Waits until every running node (except `ignore`) has applied a state satisfying `f`.
    async fn all_applied(&self, ignore: &[&NodeId], f: impl Fn(&ControlState) -> bool) {
        for (n, c) in &self.nodes {
            if ignore.contains(&n) {
                continue;
            }
            let mut rx = c.watch_state();
            tokio::time::timeout(SOON, rx.wait_for(|s| f(s)))
                .await
                .unwrap_or_else(|_| panic!("{n} did not apply the expected state: {:?}", c.state()))
                .expect("state watch open");
        }
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        for n in ids {
            self.kill(&n).await;
        }
    }
}

fn advance(term: u64, cursors: &[(&str, u64)]) -> Command {
    Command::AdvanceCursors {
        term,
        cursors: cursors.iter().map(|(s, n)| (stream(s), *n)).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_a_leader_and_apply_identically() {
    let mut c = Cluster::new(&["b1", "b2", "b3"], &[]).await;
    let leader = c.agreed_leader(None, &[]).await;
    let l = c.node(&leader.id).clone();
    assert_eq!(l.term(), leader.term);

    let r = l
        .propose(Command::SetDrain {
            node: id("b2"),
            drained: true,
        })
        .await
        .expect("drain commits");
    assert!(matches!(r, Response::Drain { changed: true, .. }), "{r:?}");
    let r = l
        .propose(Command::SetModel {
            name: "queue".into(),
            version: 3,
            digest: "abc".into(),
            size: 42,
        })
        .await
        .expect("model commits");
    assert!(matches!(r, Response::Model { changed: true, .. }), "{r:?}");
    let r = l
        .propose(advance(
            leader.term,
            &[("b1/aggregates/n", 10), ("b2/aggregates/s", 7)],
        ))
        .await
        .expect("cursors commit");
    assert!(
        matches!(&r, Response::Cursors { advanced, .. } if advanced.len() == 2),
        "{r:?}"
    );

    let expected = l.state();
    assert_eq!(expected.voters.len(), 3);
    assert!(expected.is_drained(&id("b2")));
    c.all_applied(&[], |s| *s == expected).await;

    // A follower refuses to propose and names the leader to forward to.
    let follower = c
        .nodes
        .keys()
        .find(|n| **n != leader.id)
        .expect("a follower");
    match c.node(follower).propose(Command::Noop).await {
        Err(ControlError::NotLeader {
            leader: Some(named),
        }) => assert_eq!(named, leader.id),
        other => panic!("expected NotLeader, got {other:?}"),
    }

    // Killing the leader elects another, which has everything committed so far.
    let t0 = Instant::now();
    c.kill(&leader.id).await;
    let next = c.agreed_leader(Some(&leader.id), &[]).await;
    println!(
        "3 voters: leader {} killed, {} leads after {:?}",
        leader.id,
        next.id,
        t0.elapsed()
    );
    assert!(next.term > leader.term);
    assert_eq!(c.node(&next.id).state(), expected);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_never_move_backwards_through_raft() {
    let c = Cluster::new(&["b1", "b2", "b3"], &[]).await;
    let leader = c.agreed_leader(None, &[]).await;
    let l = c.node(&leader.id);
    let t = leader.term;
    l.propose(advance(t, &[("b1/aggregates/n", 10)]))
        .await
        .expect("commits");
    let r = l
        .propose(advance(
            t,
            &[("b1/aggregates/n", 12), ("b3/aggregates/e", 1)],
        ))
        .await
        .expect("commits");
    assert!(matches!(&r, Response::Cursors { advanced, unchanged: 0 } if advanced.len() == 2));
    // Backwards: refused, and the other cursor in the same command does not move either.
    let r = l
        .propose(advance(
            t,
            &[("b1/aggregates/n", 11), ("b3/aggregates/e", 5)],
        ))
        .await
        .expect("commits");
    assert!(
        matches!(r, Response::Refused(Refusal::CursorsBehind(_))),
        "{r:?}"
    );
    // A retry of an earlier advance is harmless.
    let r = l
        .propose(advance(t, &[("b1/aggregates/n", 12)]))
        .await
        .expect("commits");
    assert_eq!(
        r,
        Response::Cursors {
            advanced: vec![],
            unchanged: 1
        }
    );
    // An advance stamped with an older term is refused.
    let r = l
        .propose(advance(t - 1, &[("b1/aggregates/n", 20)]))
        .await
        .expect("commits");
    assert!(
        matches!(r, Response::Refused(Refusal::StaleTerm { .. })),
        "{r:?}"
    );
    // A malformed command never reaches the log.
    let dup = advance(t, &[("b1/aggregates/n", 30), ("b1/aggregates/n", 31)]);
    assert!(matches!(
        l.propose(dup).await,
        Err(ControlError::Invalid(Refusal::DuplicateStream(_)))
    ));
    c.all_applied(&[], |s| {
        s.cursor(&stream("b1/aggregates/n")) == 12 && s.cursor(&stream("b3/aggregates/e")) == 1
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_voters_elect_a_new_leader_after_leader_kills() {
    let mut c = Cluster::new(&["b1", "b2", "b3", "b4", "b5"], &[]).await;
    let mut leader = c.agreed_leader(None, &[]).await;
    let mut times = Vec::new();
    // Two kills leave three of five: still a quorum.
    for round in 0..2 {
        c.node(&leader.id)
            .propose(advance(leader.term, &[("b1/aggregates/n", round + 1)]))
            .await
            .expect("commits before the kill");
        let killed = leader.id.clone();
        let t0 = Instant::now();
        c.kill(&killed).await;
        let next = c.agreed_leader(Some(&killed), &[]).await;
        let took = t0.elapsed();
        println!(
            "5 voters: leader {killed} killed, {} leads term {} after {took:?}",
            next.id, next.term
        );
        times.push(took);
        assert!(took < SOON);
        assert!(next.term > leader.term);
        leader = next;
    }
    let r = c
        .node(&leader.id)
        .propose(advance(leader.term, &[("b1/aggregates/n", 9)]))
        .await
        .expect("three of five still commit");
    assert!(matches!(r, Response::Cursors { .. }));
    c.all_applied(&[], |s| s.cursor(&stream("b1/aggregates/n")) == 9)
        .await;
    println!("5 voters: failover times {times:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_with_its_state() {
    let mut c = Cluster::new(&["b1", "b2", "b3"], &[]).await;
    let leader = c.agreed_leader(None, &[]).await;
    let l = c.node(&leader.id).clone();
    l.propose(advance(leader.term, &[("b1/aggregates/n", 5)]))
        .await
        .expect("commits");
    c.all_applied(&[], |s| s.cursor(&stream("b1/aggregates/n")) == 5)
        .await;

    let victim = c
        .nodes
        .keys()
        .find(|n| **n != leader.id)
        .cloned()
        .expect("a follower");
    c.kill(&victim).await;
    l.propose(advance(leader.term, &[("b1/aggregates/n", 8)]))
        .await
        .expect("two of three commit");

    // Restarted from its directory it has what it applied before, at once, then catches up.
    let back = c.start(&victim).await;
    assert_eq!(back.state().cursor(&stream("b1/aggregates/n")), 5);
    c.all_applied(&[], |s| s.cursor(&stream("b1/aggregates/n")) == 8)
        .await;

    // The whole cluster restarts with its state, and elects a leader again (initialize is
    // idempotent on the smallest voter).
    let ids: Vec<NodeId> = c.nodes.keys().cloned().collect();
    for n in &ids {
        c.kill(n).await;
    }
    for n in &ids {
        c.start(n).await;
    }
    for n in &ids {
        assert_eq!(
            c.node(n).state().cursor(&stream("b1/aggregates/n")),
            8,
            "{n}"
        );
    }
    let leader = c.agreed_leader(None, &[]).await;
    c.node(&leader.id)
        .propose(advance(leader.term, &[("b1/aggregates/n", 9)]))
        .await
        .expect("commits after a full restart");
    c.all_applied(&[], |s| s.cursor(&stream("b1/aggregates/n")) == 9)
        .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_the_purged_log_catches_up_from_a_snapshot() {
    let cfg = ControlConfig {
        snapshot_every_entries: 5,
        log_entries_kept: 0,
        ..ControlConfig::default()
    };
    let mut c = Cluster::with_config(&["b1", "b2", "b3"], &["b4"], cfg).await;
    let leader = c.agreed_leader(None, &[&id("b4")]).await;
    let victim = c
        .nodes
        .keys()
        .find(|n| **n != leader.id && n.as_str() != "b4")
        .cloned()
        .expect("a follower");
    c.kill(&victim).await;
    let l = c.node(&leader.id).clone();
    for seq in 1..=20 {
        l.propose(advance(leader.term, &[("b1/aggregates/n", seq)]))
            .await
            .expect("commits");
    }
    let mut rx = l.watch_state();
    let purged = tokio::time::timeout(SOON, async {
        loop {
            if l.status().purged_index.is_some() {
                return;
            }
            let _ = rx.changed().await;
        }
    })
    .await;
    assert!(
        purged.is_ok(),
        "the leader purged its log: {:?}",
        l.status()
    );

    // The restarted voter and a learner added now both start behind the purged log.
    c.start(&victim).await;
    l.add_learner(id("b4")).await.expect("learner added");
    c.all_applied(&[], |s| s.cursor(&stream("b1/aggregates/n")) == 20)
        .await;
    for n in [&victim, &id("b4")] {
        let st = c.node(n).status();
        assert!(
            st.snapshot_index.is_some(),
            "{n} installed a snapshot: {st:?}"
        );
    }
    println!("leader {:?}", l.status());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_old_leader_cannot_commit() {
    let c = Cluster::new(&["b1", "b2", "b3"], &[]).await;
    let old = c.agreed_leader(None, &[]).await;
    let old_node = c.node(&old.id).clone();
    c.net.isolate(&old.id);

    // It still believes it leads, but nothing it proposes commits, and it cannot confirm its
    // leadership (what a gateway checks before reading cursors).
    let t0 = Instant::now();
    let (res, read) = tokio::join!(
        old_node.propose(advance(old.term, &[("b1/aggregates/n", 100)])),
        old_node.linearizable_state(),
    );
    assert!(
        matches!(
            res,
            Err(ControlError::Timeout { .. } | ControlError::NotLeader { .. })
        ),
        "{res:?}"
    );
    assert!(read.is_err(), "{read:?}");
    println!(
        "isolated leader: proposal {res:?}, confirmation {:?}, after {:?}",
        read.err(),
        t0.elapsed()
    );

    // The majority has moved on meanwhile.
    let new = c.agreed_leader(Some(&old.id), &[&old.id]).await;
    assert!(new.term > old.term);
    c.node(&new.id)
        .propose(advance(new.term, &[("b1/aggregates/n", 1)]))
        .await
        .expect("the majority commits");

    // Healed, the old leader follows the new one and its proposal is gone for good.
    c.net.heal();
    c.all_applied(&[], |s| s.cursor(&stream("b1/aggregates/n")) == 1)
        .await;
    let agreed = c.agreed_leader(Some(&old.id), &[]).await;
    assert!(agreed.term >= new.term);
    assert!(!old_node.is_leader());
    assert_eq!(old_node.state().cursor(&stream("b1/aggregates/n")), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_receives_the_state() {
    let c = Cluster::new(&["b1", "b2", "b3"], &["b4"]).await;
    let leader = c.agreed_leader(None, &[&id("b4")]).await;
    let l = c.node(&leader.id);
    l.add_learner(id("b4")).await.expect("learner added");
    l.add_learner(id("b4"))
        .await
        .expect("adding again is a no-op");
    l.propose(Command::SetDrain {
        node: id("b4"),
        drained: true,
    })
    .await
    .expect("commits");
    c.all_applied(&[], |s| {
        s.learners.contains(&id("b4")) && s.is_drained(&id("b4")) && s.voters.len() == 3
    })
    .await;
    let learner = c.node(&id("b4"));
    assert!(!learner.is_leader());
    match learner.propose(Command::Noop).await {
        Err(ControlError::NotLeader {
            leader: Some(named),
        }) => assert_eq!(named, leader.id),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // Only the leader adds learners.
    let follower = c
        .nodes
        .keys()
        .find(|n| **n != leader.id && n.as_str() != "b4")
        .expect("a follower");
    assert!(matches!(
        c.node(follower).add_learner(id("b5")).await,
        Err(ControlError::NotLeader { .. })
    ));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfers_to_the_chosen_voter() {
    let mut c = Cluster::new(&["b1", "b2", "b3"], &[]).await;
    let leader = c.agreed_leader(None, &[]).await;
    // As a drained gateway does: stop campaigning, then hand over.
    c.node(&leader.id).set_electable(false);
    let target = c
        .nodes
        .keys()
        .find(|n| **n != leader.id)
        .cloned()
        .expect("a follower");
    let t0 = Instant::now();
    c.node(&leader.id)
        .transfer_to(&target)
        .await
        .expect("transfer succeeds");
    println!("transfer {} -> {target} took {:?}", leader.id, t0.elapsed());
    let now = c.agreed_leader(Some(&leader.id), &[]).await;
    assert_eq!(now.id, target);
    c.node(&target)
        .propose(advance(now.term, &[("b1/aggregates/n", 1)]))
        .await
        .expect("the new leader commits");
    // Only the leader can transfer, and only to a voter.
    assert!(matches!(
        c.node(&leader.id).transfer_to(&target).await,
        Err(ControlError::NotLeader { .. })
    ));
    assert!(matches!(
        c.node(&target).transfer_to(&id("b9")).await,
        Err(ControlError::NotVoter(_))
    ));
    // The transfer left the old leader unelectable: when the new one dies, the third voter
    // takes over.
    c.kill(&target).await;
    let third = c.agreed_leader(Some(&target), &[]).await;
    assert_ne!(third.id, leader.id);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_forged_payloads_are_refused_cleanly() {
    let c = Cluster::new(&["b1", "b2", "b3"], &[]).await;
    let leader = c.agreed_leader(None, &[]).await;
    let node = c.node(&id("b1"));
    let max = ControlConfig::default().rpc_bytes_max;
    let refused = |bytes: Vec<u8>| -> ServeError {
        match wire::decode::<Reply>(&bytes, max).expect("a well-formed reply") {
            Reply::Error(e) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    };
    let garbage: [Vec<u8>; 5] = [
        vec![],
        vec![7, 0, 0],
        vec![wire::RPC_VERSION, 0xff, 0xff, 0xff],
        vec![wire::RPC_VERSION; max + 1],
        {
            let mut v = wire::encode(&Request::TimeoutNow, max).expect("encodes");
            v.push(0);
            v
        },
    ];
    for g in garbage {
        let len = g.len();
        assert!(
            matches!(
                refused(node.serve(&id("b2"), g).await),
                ServeError::BadRequest(_)
            ),
            "{len} bytes"
        );
    }
    // A vote request on behalf of another member is refused.
    let forged = Request::Vote(openraft::raft::VoteRequest {
        vote: openraft::Vote::new(leader.term + 5, verge_control::raft_id(&id("b3"))),
        last_log_id: None,
    });
    let bytes = wire::encode(&forged, max).expect("encodes");
    assert!(matches!(
        refused(node.serve(&id("b2"), bytes).await),
        ServeError::Impersonation { .. }
    ));
    // The cluster is unharmed.
    let still = c.agreed_leader(None, &[]).await;
    assert_eq!(still.term, leader.term);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_starts_are_refused_with_reasons() {
    let net = MemNetwork::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let start = |me: &str, voters: Vec<NodeId>, cfg: ControlConfig| {
        Control::start(id(me), dir.path(), cfg, voters, net.transport(id(me)))
    };
    assert!(matches!(
        start("b1", vec![], ControlConfig::default()).await,
        Err(ControlError::NoVoters)
    ));
    let bad = ControlConfig {
        election_min_ms: 30,
        ..ControlConfig::default()
    };
    assert!(matches!(
        start("b1", vec![id("b1")], bad).await,
        Err(ControlError::Config(_))
    ));
    let c = start("b1", vec![id("b1")], ControlConfig::default())
        .await
        .expect("starts");
    c.shutdown().await.expect("stops");
    drop(c);
    // The directory belongs to b1 now.
    let err = start("b2", vec![id("b1")], ControlConfig::default())
        .await
        .expect_err("another node's directory");
    assert!(err.to_string().contains("belongs to node `b1`"), "{err}");
}
