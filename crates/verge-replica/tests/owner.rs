//! The owner state machine, event by event, with the exact actions it must return.

use verge_proto::replication::{ToOwner, ToReplica};
use verge_proto::{NodeId, Record, StreamId, StreamKind};
use verge_replica::{
    AppendError, Owner, OwnerAction, OwnerConfig, OwnerEvent, Phase, ProtocolError, Shortfall,
    StoredStream, placement,
};

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("id")
}

fn me() -> NodeId {
    id("b1")
}

fn stream() -> StreamId {
    StreamId::new(me(), StreamKind::Raw, "e1_A1_0").expect("id")
}

/// The neighbours of `b1` for [`stream`], in rendezvous order, best first.
fn ranked() -> Vec<NodeId> {
    let all = [id("b2"), id("b3"), id("b4")];
    placement::rank(&stream(), &me(), &all)
}

fn sorted(mut v: Vec<NodeId>) -> Vec<NodeId> {
    v.sort();
    v
}

fn cfg() -> OwnerConfig {
    OwnerConfig {
        replace_after_ms: 1_000,
        resend_after_ms: 100,
        append_records_max: 4,
        inflight_records_max: 8,
        pending_records_max: 16,
        ..OwnerConfig::default()
    }
}

fn owner_with(cfg: OwnerConfig, up: &[NodeId]) -> Owner {
    let mut o = Owner::new(cfg, me(), 1, 0, []).expect("valid");
    for p in up {
        assert!(
            o.handle(0, OwnerEvent::PeerUp { peer: p.clone() })
                .is_empty()
        );
    }
    o
}

fn recv(o: &mut Owner, now: u64, from: &NodeId, msg: ToOwner) -> Vec<OwnerAction> {
    o.handle(
        now,
        OwnerEvent::Received {
            from: from.clone(),
            msg,
        },
    )
}

fn hwm(epoch: u64, head: u64, durable: u64) -> ToOwner {
    ToOwner::HwmReply {
        stream: stream(),
        epoch,
        head,
        durable,
    }
}

fn ack(durable: u64) -> ToOwner {
    ToOwner::Ack {
        stream: stream(),
        durable,
    }
}

fn durable(o: &mut Owner, now: u64, up_to: u64) -> Vec<OwnerAction> {
    o.handle(
        now,
        OwnerEvent::LocalDurable {
            stream: stream(),
            up_to,
        },
    )
}

fn send_append(to: &NodeId, epoch: u64, first_seq: u64, count: u64) -> OwnerAction {
    OwnerAction::SendAppend {
        to: to.clone(),
        stream: stream(),
        epoch,
        first_seq,
        count,
        start_seq: 1,
    }
}

fn query(to: &NodeId, epoch: u64) -> OwnerAction {
    OwnerAction::Send {
        to: to.clone(),
        msg: ToReplica::HwmQuery {
            stream: stream(),
            epoch,
        },
    }
}

fn ack_producer(up_to: u64, replicas: usize, degraded: bool) -> OwnerAction {
    OwnerAction::AckProducer {
        stream: stream(),
        up_to,
        replicas,
        degraded,
    }
}

/// An owner whose stream has records 1..=n, replicated to `ranked()[0]`, all durable and acked.
fn steady(n: u64) -> (Owner, NodeId) {
    let r = ranked();
    let mut o = owner_with(cfg(), &r);
    let x = r[0].clone();
    o.appended(0, &stream(), 1, n).expect("append");
    recv(&mut o, 1, &x, hwm(1, 0, 0));
    durable(&mut o, 2, n);
    let a = recv(&mut o, 3, &x, ack(n));
    assert_eq!(a, vec![ack_producer(n, 2, false)]);
    (o, x)
}

#[test]
fn a_new_stream_is_placed_persisted_probed_then_fed() {
    let r = ranked();
    let mut o = owner_with(cfg(), &r);
    let x = &r[0];
    assert_eq!(o.next_seq(&stream()), Ok(1));
    let a = o.appended(5, &stream(), 1, 6).expect("append");
    assert_eq!(
        a,
        vec![
            OwnerAction::PersistHolders {
                stream: stream(),
                holders: vec![x.clone()]
            },
            OwnerAction::ReplicaAdded {
                stream: stream(),
                replica: x.clone()
            },
            query(x, 1),
        ]
    );
    // Its answer opens the window: two messages of at most four records. While it was being
    // asked it counted as live, so the healthy stream never looked under-replicated.
    let a = recv(&mut o, 6, x, hwm(1, 0, 0));
    assert_eq!(
        a,
        vec![
            send_append(x, 1, 1, 4),
            send_append(x, 1, 5, 2),
            OwnerAction::CaughtUp {
                stream: stream(),
                replica: x.clone()
            },
        ]
    );
    assert_eq!(o.next_seq(&stream()), Ok(7));
}

#[test]
fn acks_need_the_owners_disk_and_the_write_quorum() {
    let r = ranked();
    let mut o = owner_with(cfg(), &r);
    let x = &r[0];
    o.appended(0, &stream(), 1, 3).expect("append");
    recv(&mut o, 1, x, hwm(1, 0, 0));
    // The replica has it before the owner does: no acknowledgement yet.
    assert!(recv(&mut o, 2, x, ack(3)).is_empty());
    // The owner's flush of the first two: two holders have 1..=2.
    assert_eq!(durable(&mut o, 3, 2), vec![ack_producer(2, 2, false)]);
    assert_eq!(durable(&mut o, 4, 3), vec![ack_producer(3, 2, false)]);
    let st = o.status(&stream()).expect("status");
    assert_eq!((st.head, st.durable, st.acked), (3, 3, 3));
    assert_eq!(st.replicas[0].lag, 0);
}

#[test]
fn short_of_the_quorum_degrade_acknowledges_at_min_replicas_and_says_so() {
    let (mut o, x) = steady(2);
    let a = o.handle(10, OwnerEvent::PeerDown { peer: x.clone() });
    assert_eq!(
        a,
        vec![OwnerAction::MarkUnderReplicated {
            stream: stream(),
            live: 1
        }]
    );
    o.appended(11, &stream(), 3, 2).expect("append");
    assert_eq!(durable(&mut o, 12, 4), vec![ack_producer(4, 1, true)]);
}

#[test]
fn short_of_the_quorum_block_holds_acks_and_pushes_back() {
    let c = OwnerConfig {
        shortfall: Shortfall::Block,
        ..cfg()
    };
    let x = id("b2");
    let mut o = owner_with(c, std::slice::from_ref(&x));
    o.handle(1, OwnerEvent::PeerDown { peer: x.clone() });
    // No neighbour is up: the stream starts with no replica and cannot reach W = 2.
    let a = o.appended(2, &stream(), 1, 16).expect("append");
    assert_eq!(
        a,
        vec![OwnerAction::MarkUnderReplicated {
            stream: stream(),
            live: 1
        }]
    );
    assert!(durable(&mut o, 3, 16).is_empty());
    assert!(matches!(
        o.next_seq(&stream()),
        Err(AppendError::Backpressure {
            pending: 16,
            max: 16,
            ..
        })
    ));
    assert!(!o.can_append(&stream()));
    // The neighbour returns: it is recorded as a holder, asked what it holds, caught up within
    // the window, and the acknowledgements flow.
    let a = o.handle(4, OwnerEvent::PeerUp { peer: x.clone() });
    assert_eq!(
        a,
        vec![
            OwnerAction::PersistHolders {
                stream: stream(),
                holders: vec![x.clone()]
            },
            OwnerAction::ReplicaAdded {
                stream: stream(),
                replica: x.clone()
            },
            query(&x, 1),
        ]
    );
    let a = recv(&mut o, 5, &x, hwm(1, 0, 0));
    assert_eq!(
        a,
        vec![
            send_append(&x, 1, 1, 4),
            send_append(&x, 1, 5, 4),
            OwnerAction::CatchingUp {
                stream: stream(),
                replica: x.clone(),
                from_seq: 0,
                to_seq: 16
            },
        ]
    );
    let a = recv(&mut o, 6, &x, ack(8));
    assert_eq!(
        a,
        vec![
            send_append(&x, 1, 9, 4),
            send_append(&x, 1, 13, 4),
            ack_producer(8, 2, false),
            OwnerAction::CaughtUp {
                stream: stream(),
                replica: x.clone()
            },
            OwnerAction::MarkReplicated { stream: stream() },
        ]
    );
    assert_eq!(
        recv(&mut o, 7, &x, ack(16)),
        vec![ack_producer(16, 2, false)]
    );
    assert_eq!(o.next_seq(&stream()), Ok(17));
}

#[test]
fn a_restarted_owner_recovers_its_lost_tail_before_numbering() {
    let x = id("b2");
    let stored = StoredStream {
        stream: stream(),
        first_seq: 1,
        head: 5,
        durable: 5,
        holders: vec![x.clone()],
    };
    let mut o = Owner::new(cfg(), me(), 2, 0, [stored]).expect("valid");
    assert_eq!(
        o.next_seq(&stream()),
        Err(AppendError::Recovering {
            stream: stream(),
            waiting_on: vec![x.clone()]
        })
    );
    assert_eq!(
        o.status(&stream()).map(|s| s.phase),
        Some(Phase::Recovering)
    );
    let a = o.handle(1, OwnerEvent::PeerUp { peer: x.clone() });
    assert_eq!(a, vec![query(&x, 2)]);
    // A late answer to the crashed incarnation counts for nothing.
    assert!(recv(&mut o, 2, &x, hwm(1, 9, 9)).is_empty());
    let a = recv(&mut o, 3, &x, hwm(2, 8, 7));
    assert_eq!(
        a,
        vec![OwnerAction::Send {
            to: x.clone(),
            msg: ToReplica::Fetch {
                stream: stream(),
                from_seq: 6,
                count: 4096
            }
        }]
    );
    let recs: Vec<Record> = (6..=8)
        .map(|i| Record {
            ts_ms: i,
            values: vec![],
        })
        .collect();
    let a = recv(
        &mut o,
        4,
        &x,
        ToOwner::FetchReply {
            stream: stream(),
            first_seq: 6,
            records: recs.clone(),
            head: 8,
        },
    );
    assert_eq!(
        a[..2],
        [
            OwnerAction::StoreRecovered {
                stream: stream(),
                first_seq: 6,
                records: recs
            },
            OwnerAction::Recovered {
                stream: stream(),
                head: 8,
                fetched: 3
            },
        ]
    );
    assert_eq!(o.next_seq(&stream()), Ok(9));
}

#[test]
fn recovery_waits_for_every_holder_and_a_retired_one_releases_it() {
    let (x, y) = (id("b2"), id("b3"));
    let stored = StoredStream {
        stream: stream(),
        first_seq: 1,
        head: 5,
        durable: 5,
        holders: vec![x.clone(), y.clone()],
    };
    let mut o = Owner::new(cfg(), me(), 2, 0, [stored]).expect("valid");
    o.handle(1, OwnerEvent::PeerUp { peer: x.clone() });
    recv(&mut o, 2, &x, hwm(2, 5, 5));
    // `y` may hold records beyond 5 that nobody else has.
    assert!(matches!(
        o.next_seq(&stream()),
        Err(AppendError::Recovering { waiting_on, .. }) if waiting_on == vec![y.clone()]
    ));
    let a = o.handle(3, OwnerEvent::PeerRetired { peer: y.clone() });
    assert!(
        a.contains(&OwnerAction::Recovered {
            stream: stream(),
            head: 5,
            fetched: 0
        }),
        "{a:?}"
    );
    assert_eq!(o.next_seq(&stream()), Ok(6));
}

#[test]
fn a_replica_gone_too_long_is_replaced_once_its_successor_is_in_step() {
    let (mut o, x) = steady(3);
    let y = ranked()[1].clone();
    o.handle(10, OwnerEvent::PeerDown { peer: x.clone() });
    // Still eligible just before `replace_after_ms`.
    assert!(o.handle(1_009, OwnerEvent::Tick).is_empty());
    let a = o.handle(1_010, OwnerEvent::Tick);
    assert_eq!(
        a,
        vec![
            OwnerAction::PersistHolders {
                stream: stream(),
                holders: sorted(vec![x.clone(), y.clone()])
            },
            OwnerAction::ReplicaAdded {
                stream: stream(),
                replica: y.clone()
            },
            query(&y, 1),
        ]
    );
    // The successor gets a full copy; once it holds it, the old replica is let go.
    let a = recv(&mut o, 1_011, &y, hwm(1, 0, 0));
    assert_eq!(a[0], send_append(&y, 1, 1, 3));
    let a = recv(&mut o, 1_012, &y, ack(3));
    assert_eq!(
        a,
        vec![
            OwnerAction::PersistHolders {
                stream: stream(),
                holders: vec![y.clone()]
            },
            OwnerAction::ReplicaRemoved {
                stream: stream(),
                replica: x.clone()
            },
        ]
    );
}

#[test]
fn a_released_replica_that_may_hold_unflushed_records_stays_a_holder() {
    // `y` outranks `x` but is down when the stream starts, so `x` holds it.
    let r = ranked();
    let (y, x) = (r[0].clone(), r[1].clone());
    let mut o = owner_with(cfg(), std::slice::from_ref(&x));
    o.appended(0, &stream(), 1, 2).expect("append");
    recv(&mut o, 1, &x, hwm(1, 0, 0));
    recv(&mut o, 1, &x, ack(2));
    // `y` comes up: it is added, caught up, and `x` is released while it holds records 1..=2
    // that the owner has not flushed. A crash now must still ask `x` what it holds.
    o.handle(2, OwnerEvent::PeerUp { peer: y.clone() });
    // Answering is not enough: `y` must hold what `x` holds before `x` is let go.
    let a = recv(&mut o, 3, &y, hwm(1, 0, 0));
    assert!(
        !a.iter()
            .any(|a| matches!(a, OwnerAction::ReplicaRemoved { .. })),
        "{a:?}"
    );
    let a = recv(&mut o, 4, &y, ack(2));
    assert!(
        a.contains(&OwnerAction::ReplicaRemoved {
            stream: stream(),
            replica: x.clone()
        }),
        "{a:?}"
    );
    assert!(
        !a.iter()
            .any(|a| matches!(a, OwnerAction::PersistHolders { .. })),
        "{a:?}"
    );
    assert_eq!(
        o.status(&stream()).map(|s| s.retiring),
        Some(vec![x.clone()])
    );
    // Once the owner's own disk has them, `x` no longer matters.
    let a = durable(&mut o, 5, 2);
    assert_eq!(
        a[0],
        OwnerAction::PersistHolders {
            stream: stream(),
            holders: vec![y.clone()]
        }
    );
}

#[test]
fn a_nack_rewinds_once_per_loss() {
    let r = ranked();
    let mut o = owner_with(cfg(), &r);
    let x = &r[0];
    o.appended(0, &stream(), 1, 8).expect("append");
    recv(&mut o, 1, x, hwm(1, 0, 0));
    // The first message was lost; the second is answered with the replica's head.
    let nack = ToOwner::Nack {
        stream: stream(),
        head: 0,
    };
    let a = recv(&mut o, 2, x, nack.clone());
    assert_eq!(a, vec![send_append(x, 1, 1, 4), send_append(x, 1, 5, 4)]);
    // The echo of the same loss from the rest of the window does not resend again.
    assert!(recv(&mut o, 3, x, nack).is_empty());
}

#[test]
fn unanswered_appends_are_resent() {
    let r = ranked();
    let mut o = owner_with(cfg(), &r);
    let x = &r[0];
    o.appended(0, &stream(), 1, 2).expect("append");
    recv(&mut o, 10, x, hwm(1, 0, 0));
    assert!(o.handle(109, OwnerEvent::Tick).is_empty());
    assert_eq!(
        o.handle(110, OwnerEvent::Tick),
        vec![send_append(x, 1, 1, 2)]
    );
}

#[test]
fn a_returning_replica_is_asked_what_it_holds_and_caught_up_from_there() {
    let (mut o, x) = steady(2);
    o.handle(10, OwnerEvent::PeerDown { peer: x.clone() });
    o.appended(11, &stream(), 3, 5).expect("append");
    let a = o.handle(12, OwnerEvent::PeerUp { peer: x.clone() });
    assert_eq!(a, vec![query(&x, 1)]);
    let a = recv(&mut o, 13, &x, hwm(1, 2, 2));
    assert_eq!(a[..2], [send_append(&x, 1, 3, 4), send_append(&x, 1, 7, 1)]);
}

#[test]
fn misuse_and_misbehaviour_are_refused() {
    let r = ranked();
    let mut o = owner_with(cfg(), &r);
    let theirs = StreamId::new(id("b9"), StreamKind::Raw, "x").expect("id");
    assert!(matches!(
        o.next_seq(&theirs),
        Err(AppendError::NotMine { .. })
    ));
    assert!(matches!(
        o.appended(0, &stream(), 2, 1),
        Err(AppendError::OutOfOrder {
            expected: 1,
            got: 2,
            ..
        })
    ));
    let a = o.handle(
        0,
        OwnerEvent::Received {
            from: id("b9"),
            msg: ToOwner::Ack {
                stream: theirs,
                durable: 1,
            },
        },
    );
    assert!(matches!(
        &a[..],
        [OwnerAction::Refused {
            error: ProtocolError::NotMine { .. }
        }]
    ));
    assert!(
        Owner::new(
            cfg(),
            id("b2"),
            1,
            0,
            [StoredStream {
                stream: stream(),
                first_seq: 1,
                head: 0,
                durable: 0,
                holders: vec![]
            }]
        )
        .is_err()
    );
}

#[test]
fn retention_starts_a_lagging_replica_at_the_first_retained_record() {
    let (mut o, x) = steady(2);
    o.handle(10, OwnerEvent::PeerDown { peer: x.clone() });
    o.appended(11, &stream(), 3, 8).expect("append");
    durable(&mut o, 12, 10);
    o.handle(
        13,
        OwnerEvent::Retained {
            stream: stream(),
            first_seq: 7,
        },
    );
    o.handle(14, OwnerEvent::PeerUp { peer: x.clone() });
    let a = recv(&mut o, 15, &x, hwm(1, 2, 2));
    assert_eq!(
        a[0],
        OwnerAction::SendAppend {
            to: x.clone(),
            stream: stream(),
            epoch: 1,
            first_seq: 7,
            count: 4,
            start_seq: 7
        }
    );
}
