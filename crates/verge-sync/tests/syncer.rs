//! The sync state machine, event by event, with the exact actions it must return.

use std::collections::BTreeMap;

use proptest::prelude::*;
use verge_proto::{NodeId, Record, StreamId, StreamKind};
use verge_sync::{
    Batch, BatchKey, CloudOutcome, OutboxDefect, RetryOf, Role, SyncAction, SyncConfig, SyncEvent,
    SyncWarning, Syncer,
};

fn node(s: &str) -> NodeId {
    NodeId::new(s).expect("id")
}

fn stream(owner: &str, approach: &str) -> StreamId {
    StreamId::new(node(owner), StreamKind::Aggregates, approach).expect("id")
}

fn north() -> StreamId {
    stream("b2", "north")
}

fn south() -> StreamId {
    stream("b3", "south")
}

fn rec(seq: u64) -> Record {
    Record {
        ts_ms: seq as i64 * 10_000,
        values: vec![seq as f64],
    }
}

fn recs(from: u64, to: u64) -> Vec<Record> {
    (from..=to).map(rec).collect()
}

fn cfg() -> SyncConfig {
    SyncConfig {
        batch_windows_max: 3,
        retry_ms_min: 100,
        retry_ms_max: 1_000,
        rejected_retry_ms: 10_000,
        propose_retry_ms: 50,
        ..SyncConfig::new("corridor", node("b1"))
    }
}

fn batch(s: &StreamId, term: u64, first: u64, last: u64) -> Batch {
    Batch {
        cluster: "corridor".into(),
        term,
        gateway: node("b1"),
        stream: s.clone(),
        first_seq: first,
        last_seq: last,
        windows: (first..=last).map(|q| (q, rec(q))).collect(),
    }
}

fn key(s: &StreamId, first: u64, last: u64) -> BatchKey {
    BatchKey {
        stream: s.clone(),
        first_seq: first,
        last_seq: last,
    }
}

fn map(entries: &[(&StreamId, u64)]) -> BTreeMap<StreamId, u64> {
    entries.iter().map(|(s, v)| ((*s).clone(), *v)).collect()
}

fn answer(s: &StreamId, term: u64, first: u64, last: u64, outcome: CloudOutcome) -> SyncEvent {
    SyncEvent::CloudAnswer {
        key: key(s, first, last),
        term,
        outcome,
    }
}

fn stored(n: u64) -> CloudOutcome {
    CloudOutcome::Stored {
        stored: n,
        duplicates: 0,
    }
}

fn read(s: &StreamId, from: u64, to: u64) -> SyncEvent {
    SyncEvent::Read {
        stream: s.clone(),
        first_seq: from,
        records: recs(from, to),
    }
}

fn acked(s: &StreamId, term: u64, first: u64, last: u64) -> SyncAction {
    SyncAction::Acked {
        key: key(s, first, last),
        term,
        new_windows: last - first + 1,
        duplicate_windows: 0,
        repeat: false,
    }
}

/// A core that has heard cursors and heads for `north` and leads term 5.
fn leader(committed: u64, head: u64) -> Syncer {
    let mut s = Syncer::new(cfg(), 7).expect("valid");
    let n = north();
    assert!(
        s.handle(0, SyncEvent::OutboxLoaded { batches: vec![] })
            .is_empty()
    );
    assert!(
        s.handle(
            0,
            SyncEvent::Cursors {
                cursors: map(&[(&n, committed)])
            }
        )
        .is_empty()
    );
    assert!(
        s.handle(
            0,
            SyncEvent::StreamHeads {
                heads: map(&[(&n, head)])
            }
        )
        .is_empty()
    );
    s
}

#[test]
fn a_follower_reads_and_posts_nothing() {
    let mut s = leader(0, 10);
    assert!(s.handle(1, SyncEvent::Tick).is_empty());
    assert_eq!(s.role(), Role::Follower);
    assert_eq!(s.status(1).backlog, 10);
}

#[test]
fn nothing_happens_before_the_cursors_are_known() {
    let mut s = Syncer::new(cfg(), 7).expect("valid");
    let n = north();
    s.handle(
        0,
        SyncEvent::StreamHeads {
            heads: map(&[(&n, 10)]),
        },
    );
    assert!(s.handle(0, SyncEvent::BecameLeader { term: 1 }).is_empty());
    let acts = s.handle(
        1,
        SyncEvent::Cursors {
            cursors: BTreeMap::new(),
        },
    );
    assert_eq!(
        acts,
        vec![SyncAction::Read {
            stream: n,
            from_seq: 1,
            max: 3
        }]
    );
}

#[test]
fn a_leader_reads_persists_posts_then_proposes_after_the_ack_and_pipelines() {
    let n = north();
    let mut s = leader(4, 10);
    assert_eq!(
        s.handle(10, SyncEvent::BecameLeader { term: 5 }),
        vec![SyncAction::Read {
            stream: n.clone(),
            from_seq: 5,
            max: 3
        }]
    );
    // A batch is persisted before it is posted, stamped with the term; the next read goes out
    // (one batch prepared behind the one in flight).
    assert_eq!(
        s.handle(11, read(&n, 5, 7)),
        vec![
            SyncAction::PersistOutbox {
                batch: batch(&n, 5, 5, 7)
            },
            SyncAction::Post {
                batch: batch(&n, 5, 5, 7)
            },
            SyncAction::Read {
                stream: n.clone(),
                from_seq: 8,
                max: 3
            },
        ]
    );
    // Only one batch of a stream in flight: the prepared one waits.
    assert_eq!(
        s.handle(12, read(&n, 8, 10)),
        vec![SyncAction::PersistOutbox {
            batch: batch(&n, 5, 8, 10)
        }]
    );
    // The ack drops the batch from the outbox, proposes the cursor, and posts the next batch
    // without waiting for the commit.
    assert_eq!(
        s.handle(20, answer(&n, 5, 5, 7, stored(3))),
        vec![
            acked(&n, 5, 5, 7),
            SyncAction::DropOutbox { key: key(&n, 5, 7) },
            SyncAction::ProposeCursor {
                term: 5,
                stream: n.clone(),
                up_to: 7
            },
            SyncAction::Post {
                batch: batch(&n, 5, 8, 10)
            },
        ]
    );
    let st = s.status(20);
    assert_eq!((st.streams[0].committed, st.streams[0].acked), (4, 7));
    assert_eq!(st.streams[0].in_flight, Some(key(&n, 8, 10)));
    assert_eq!(st.cloud.reachable, Some(true));
    // The second ack waits for the first proposal to finish before proposing again.
    assert_eq!(
        s.handle(21, answer(&n, 5, 8, 10, stored(3))),
        vec![
            acked(&n, 5, 8, 10),
            SyncAction::DropOutbox {
                key: key(&n, 8, 10)
            },
        ]
    );
    assert_eq!(
        s.handle(
            22,
            SyncEvent::CursorCommitted {
                stream: n.clone(),
                up_to: 7
            }
        ),
        vec![SyncAction::ProposeCursor {
            term: 5,
            stream: n.clone(),
            up_to: 10
        }]
    );
    assert!(
        s.handle(
            23,
            SyncEvent::CursorCommitted {
                stream: n.clone(),
                up_to: 10
            }
        )
        .is_empty()
    );
    let st = s.status(23);
    assert_eq!(
        (st.backlog, st.outbox_batches, st.posts_in_flight),
        (0, 0, 0)
    );
    assert_eq!(st.streams[0].last_acked, Some((key(&n, 8, 10), 21)));
}

#[test]
fn an_unavailable_cloud_is_retried_with_capped_jittered_backoff_and_the_same_key() {
    let n = north();
    let mut s = leader(0, 2);
    s.handle(0, SyncEvent::BecameLeader { term: 5 });
    s.handle(1, read(&n, 1, 2));
    let mut now = 10;
    let mut delays = Vec::new();
    for failures in 1..=6u32 {
        let acts = s.handle(
            now,
            answer(&n, 5, 1, 2, CloudOutcome::Unavailable("503".into())),
        );
        let [
            SyncAction::Backoff {
                retry: RetryOf::Post,
                failures: f,
                delay_ms,
                ..
            },
        ] = acts.as_slice()
        else {
            panic!("expected one backoff, got {acts:?}");
        };
        assert_eq!(*f, failures);
        let cap = (100u64 << (failures - 1)).min(1_000);
        assert!(
            *delay_ms <= cap && *delay_ms >= cap / 2,
            "{delay_ms} vs {cap}"
        );
        delays.push(*delay_ms);
        assert_eq!(s.next_deadline(now), Some(now + delay_ms));
        assert!(s.handle(now + delay_ms - 1, SyncEvent::Tick).is_empty());
        now += delay_ms;
        assert_eq!(
            s.handle(now, SyncEvent::Tick),
            vec![SyncAction::Post {
                batch: batch(&n, 5, 1, 2)
            }]
        );
    }
    let st = s.status(now);
    assert_eq!(st.cloud.reachable, Some(false));
    assert_eq!(st.cloud.consecutive_failures, 6);
    assert_eq!(st.streams[0].consecutive_failures, 6);
    // Answers lost after the cloud stored the batch: the resend is a duplicate, and counts.
    let acts = s.handle(now + 1, answer(&n, 5, 1, 2, CloudOutcome::Duplicate));
    assert_eq!(
        acts[0],
        SyncAction::Acked {
            key: key(&n, 1, 2),
            term: 5,
            new_windows: 0,
            duplicate_windows: 2,
            repeat: true
        }
    );
    assert_eq!(s.status(now + 1).streams[0].consecutive_failures, 0);
}

#[test]
fn a_stale_term_fences_the_gateway_until_it_leads_a_term_the_cloud_accepts() {
    let n = north();
    let mut s = leader(0, 6);
    s.handle(0, SyncEvent::BecameLeader { term: 5 });
    s.handle(1, read(&n, 1, 3));
    assert_eq!(
        s.handle(2, answer(&n, 5, 1, 3, CloudOutcome::Stale { highest: 7 })),
        vec![SyncAction::Fenced {
            term: 5,
            highest: 7
        }]
    );
    assert_eq!(
        s.role(),
        Role::Fenced {
            term: 5,
            highest: 7
        }
    );
    // Nothing more goes out: no post, no read, no proposal, however long it waits.
    assert!(s.handle(100_000, SyncEvent::Tick).is_empty());
    assert_eq!(s.next_deadline(100_000), None);
    // Leadership of a term the cloud has already passed is fenced at once.
    s.handle(100_001, SyncEvent::LostLeadership);
    assert_eq!(
        s.handle(100_002, SyncEvent::BecameLeader { term: 6 }),
        vec![SyncAction::Fenced {
            term: 6,
            highest: 7
        }]
    );
    // A later term resends the outbox first, same key, new term (the read of 4..=6 issued
    // before the fencing is still out).
    assert_eq!(
        s.handle(100_003, SyncEvent::BecameLeader { term: 8 }),
        vec![SyncAction::Post {
            batch: batch(&n, 8, 1, 3)
        }]
    );
}

#[test]
fn an_answer_to_an_older_post_that_shows_a_higher_term_fences_too() {
    let n = north();
    let mut s = leader(0, 6);
    s.handle(0, SyncEvent::BecameLeader { term: 5 });
    s.handle(1, read(&n, 1, 3));
    s.handle(2, SyncEvent::LostLeadership);
    // Re-elected in term 6 (the outbox is resent with term 6) ...
    let acts = s.handle(3, SyncEvent::BecameLeader { term: 6 });
    assert!(acts.contains(&SyncAction::Post {
        batch: batch(&n, 6, 1, 3)
    }));
    // ... but the term-5 post's refusal says the cloud already took term 9.
    assert_eq!(
        s.handle(4, answer(&n, 5, 1, 3, CloudOutcome::Stale { highest: 9 })),
        vec![SyncAction::Fenced {
            term: 6,
            highest: 9
        }]
    );
}

#[test]
fn a_rejected_batch_holds_its_stream_and_is_retried_slowly() {
    let n = north();
    let mut s = leader(0, 3);
    s.handle(0, SyncEvent::BecameLeader { term: 5 });
    s.handle(1, read(&n, 1, 3));
    let acts = s.handle(2, answer(&n, 5, 1, 3, CloudOutcome::Rejected("401".into())));
    let [
        SyncAction::Rejected {
            key: k, retry_ms, ..
        },
    ] = acts.as_slice()
    else {
        panic!("expected a rejection, got {acts:?}");
    };
    assert_eq!(*k, key(&n, 1, 3));
    assert!((5_000..=10_000).contains(retry_ms));
    let st = s.status(3);
    assert_eq!(st.streams[0].held.as_deref(), Some("401"));
    assert_eq!(st.streams[0].retry_at_ms, Some(2 + retry_ms));
    assert_eq!(st.cloud.reachable, Some(true));
    assert!(s.handle(1 + retry_ms, SyncEvent::Tick).is_empty());
    assert_eq!(
        s.handle(2 + retry_ms, SyncEvent::Tick),
        vec![SyncAction::Post {
            batch: batch(&n, 5, 1, 3)
        }]
    );
    s.handle(3 + retry_ms, answer(&n, 5, 1, 3, stored(3)));
    assert_eq!(s.status(4 + retry_ms).streams[0].held, None);
}

#[test]
fn a_new_leader_resends_the_outbox_before_reading_and_drops_what_the_cursors_cover() {
    let n = north();
    let so = south();
    let mut s = Syncer::new(cfg(), 1).expect("valid");
    let mut foreign = batch(&so, 2, 1, 2);
    foreign.cluster = "other".into();
    let mut damaged = batch(&so, 2, 3, 4);
    damaged.windows.pop();
    let acts = s.handle(
        0,
        SyncEvent::OutboxLoaded {
            batches: vec![
                batch(&n, 3, 9, 11),
                batch(&n, 3, 6, 8),
                batch(&n, 3, 3, 5),
                foreign,
                damaged,
            ],
        },
    );
    assert_eq!(
        acts,
        vec![
            SyncAction::Warning(SyncWarning::OutboxDiscarded {
                key: key(&so, 1, 2),
                defect: OutboxDefect::OtherCluster("other".into())
            }),
            SyncAction::DropOutbox {
                key: key(&so, 1, 2)
            },
            SyncAction::Warning(SyncWarning::OutboxDiscarded {
                key: key(&so, 3, 4),
                defect: OutboxDefect::Malformed("range 3..=4 holds 1 windows".into())
            }),
            SyncAction::DropOutbox {
                key: key(&so, 3, 4)
            },
        ]
    );
    // The committed cursor covers the first loaded batch.
    assert_eq!(
        s.handle(
            1,
            SyncEvent::Cursors {
                cursors: map(&[(&n, 5)])
            }
        ),
        vec![SyncAction::DropOutbox { key: key(&n, 3, 5) }]
    );
    s.handle(
        1,
        SyncEvent::StreamHeads {
            heads: map(&[(&n, 20)]),
        },
    );
    // The outbox goes first, same keys, new term; no read while two batches wait.
    assert_eq!(
        s.handle(2, SyncEvent::BecameLeader { term: 4 }),
        vec![SyncAction::Post {
            batch: batch(&n, 4, 6, 8)
        }]
    );
    let acts = s.handle(3, answer(&n, 4, 6, 8, stored(3)));
    assert_eq!(
        acts[1..],
        [
            SyncAction::DropOutbox { key: key(&n, 6, 8) },
            SyncAction::ProposeCursor {
                term: 4,
                stream: n.clone(),
                up_to: 8
            },
            SyncAction::Post {
                batch: batch(&n, 4, 9, 11)
            },
            SyncAction::Read {
                stream: n.clone(),
                from_seq: 12,
                max: 3
            },
        ]
    );
}

#[test]
fn a_gap_before_a_loaded_batch_is_filled_first_so_streams_stay_in_order() {
    let n = north();
    let mut s = Syncer::new(cfg(), 1).expect("valid");
    // A crashed gateway had acknowledged up to 8 but committed only 4.
    s.handle(
        0,
        SyncEvent::OutboxLoaded {
            batches: vec![batch(&n, 3, 9, 11)],
        },
    );
    s.handle(
        0,
        SyncEvent::Cursors {
            cursors: map(&[(&n, 4)]),
        },
    );
    s.handle(
        0,
        SyncEvent::StreamHeads {
            heads: map(&[(&n, 20)]),
        },
    );
    assert_eq!(
        s.handle(1, SyncEvent::BecameLeader { term: 4 }),
        vec![SyncAction::Read {
            stream: n.clone(),
            from_seq: 5,
            max: 3
        }]
    );
    // The gap's first batch goes out; the stream's two outbox places are taken.
    assert_eq!(
        s.handle(2, read(&n, 5, 7)),
        vec![
            SyncAction::PersistOutbox {
                batch: batch(&n, 4, 5, 7)
            },
            SyncAction::Post {
                batch: batch(&n, 4, 5, 7)
            },
        ]
    );
    // Once it is acknowledged, the rest of the gap is read, and no further than the loaded batch,
    // even if the store returns more; only then does the loaded batch go.
    let acts = s.handle(3, answer(&n, 4, 5, 7, stored(3)));
    assert_eq!(
        acts.last(),
        Some(&SyncAction::Read {
            stream: n.clone(),
            from_seq: 8,
            max: 1
        })
    );
    assert_eq!(
        s.handle(4, read(&n, 8, 8)),
        vec![
            SyncAction::PersistOutbox {
                batch: batch(&n, 4, 8, 8)
            },
            SyncAction::Post {
                batch: batch(&n, 4, 8, 8)
            },
        ]
    );
    let acts = s.handle(5, answer(&n, 4, 8, 8, stored(1)));
    assert!(acts.contains(&SyncAction::Post {
        batch: batch(&n, 4, 9, 11)
    }));
}

#[test]
fn a_failed_proposal_is_retried_and_a_stale_cursor_map_never_moves_a_cursor_back() {
    let n = north();
    let mut s = leader(0, 3);
    s.handle(0, SyncEvent::BecameLeader { term: 5 });
    s.handle(1, read(&n, 1, 3));
    s.handle(2, answer(&n, 5, 1, 3, stored(3)));
    assert!(
        s.handle(
            3,
            SyncEvent::CursorProposeFailed {
                stream: n.clone(),
                up_to: 3,
                error: "forward to leader".into()
            }
        )
        .is_empty()
    );
    assert_eq!(s.next_deadline(3), Some(53));
    assert_eq!(
        s.handle(53, SyncEvent::Tick),
        vec![SyncAction::ProposeCursor {
            term: 5,
            stream: n.clone(),
            up_to: 3
        }]
    );
    s.handle(
        54,
        SyncEvent::CursorCommitted {
            stream: n.clone(),
            up_to: 3,
        },
    );
    s.handle(
        55,
        SyncEvent::Cursors {
            cursors: map(&[(&n, 1)]),
        },
    );
    assert_eq!(s.status(55).streams[0].committed, 3);
}

#[test]
fn posts_in_flight_are_bounded_and_streams_take_turns() {
    let (n, so) = (north(), south());
    let mut s = Syncer::new(
        SyncConfig {
            posts_inflight_max: 1,
            ..cfg()
        },
        1,
    )
    .expect("valid");
    s.handle(
        0,
        SyncEvent::Cursors {
            cursors: BTreeMap::new(),
        },
    );
    s.handle(
        0,
        SyncEvent::StreamHeads {
            heads: map(&[(&n, 9), (&so, 9)]),
        },
    );
    s.handle(0, SyncEvent::BecameLeader { term: 1 });
    let acts = s.handle(1, read(&n, 1, 3));
    assert!(acts.contains(&SyncAction::Post {
        batch: batch(&n, 1, 1, 3)
    }));
    // South's batch waits for the one slot.
    let acts = s.handle(2, read(&so, 1, 3));
    assert!(!acts.iter().any(|a| matches!(a, SyncAction::Post { .. })));
    s.handle(3, read(&n, 4, 6));
    // North is acknowledged; south posted less recently, so south goes next.
    let acts = s.handle(4, answer(&n, 1, 1, 3, stored(3)));
    let posts: Vec<&SyncAction> = acts
        .iter()
        .filter(|a| matches!(a, SyncAction::Post { .. }))
        .collect();
    assert_eq!(
        posts,
        vec![&SyncAction::Post {
            batch: batch(&so, 1, 1, 3)
        }]
    );
}

#[test]
fn odd_driver_input_is_reported_not_trusted() {
    let n = north();
    let mut s = leader(0, 10);
    s.handle(0, SyncEvent::BecameLeader { term: 5 });
    assert_eq!(
        s.handle(1, read(&n, 4, 6)),
        vec![SyncAction::Warning(SyncWarning::UnexpectedRead {
            stream: n.clone(),
            first_seq: 4
        })]
    );
    let acts = s.handle(2, read(&n, 1, 5));
    assert_eq!(
        acts[..2],
        [
            SyncAction::Warning(SyncWarning::ReadTooLong {
                stream: n.clone(),
                got: 5,
                max: 3
            }),
            SyncAction::PersistOutbox {
                batch: batch(&n, 5, 1, 3)
            },
        ]
    );
    assert_eq!(
        s.handle(3, SyncEvent::BecameLeader { term: 4 }),
        vec![SyncAction::Warning(SyncWarning::StaleLeadership {
            term: 4,
            seen: 5
        })]
    );
    let mut small = Syncer::new(
        SyncConfig {
            streams_max: 1,
            ..cfg()
        },
        1,
    )
    .expect("valid");
    assert_eq!(
        small.handle(
            0,
            SyncEvent::StreamHeads {
                heads: map(&[(&n, 1), (&south(), 1)])
            }
        ),
        vec![SyncAction::Warning(SyncWarning::TooManyStreams {
            ignored: 1,
            max: 1
        })]
    );
}

#[test]
fn an_empty_or_failed_read_backs_off() {
    let n = north();
    let mut s = leader(0, 10);
    s.handle(0, SyncEvent::BecameLeader { term: 5 });
    let acts = s.handle(
        1,
        SyncEvent::Read {
            stream: n.clone(),
            first_seq: 1,
            records: vec![],
        },
    );
    let [
        SyncAction::Backoff {
            retry: RetryOf::Read,
            delay_ms,
            ..
        },
    ] = acts.as_slice()
    else {
        panic!("expected a read backoff, got {acts:?}");
    };
    let due = 1 + delay_ms;
    assert_eq!(s.next_deadline(1), Some(due));
    assert_eq!(
        s.handle(due, SyncEvent::Tick),
        vec![SyncAction::Read {
            stream: n.clone(),
            from_seq: 1,
            max: 3
        }]
    );
    let acts = s.handle(
        due + 1,
        SyncEvent::ReadFailed {
            stream: n,
            error: "no live replica".into(),
        },
    );
    assert!(matches!(
        acts.as_slice(),
        [SyncAction::Backoff {
            retry: RetryOf::Read,
            failures: 2,
            ..
        }]
    ));
}

proptest! {
    /// Whatever the cloud answers, in whatever order, a proposed cursor never passes what the
    /// cloud acknowledged contiguously, and nothing is posted after a fencing refusal.
    #[test]
    fn cursors_follow_acknowledgements(answers in proptest::collection::vec(0u8..5, 1..60)) {
        let n = north();
        let mut s = leader(0, 1_000);
        let mut now = 0;
        let mut cloud_holds = 0u64;
        let mut in_flight: Option<(u64, u64)> = None;
        let mut fenced = false;
        let mut pending = s.handle(now, SyncEvent::BecameLeader { term: 5 });
        for a in answers {
            for act in std::mem::take(&mut pending) {
                match act {
                    SyncAction::Read { from_seq, max, .. } => {
                        let to = from_seq + max - 1;
                        pending.extend(s.handle(now, read(&n, from_seq, to)));
                    }
                    SyncAction::Post { batch } => {
                        prop_assert!(!fenced, "posted after fencing");
                        prop_assert!(batch.first_seq <= cloud_holds + 1);
                        in_flight = Some((batch.first_seq, batch.last_seq));
                    }
                    SyncAction::ProposeCursor { up_to, .. } => {
                        prop_assert!(up_to <= cloud_holds, "proposed {} > {}", up_to, cloud_holds);
                        pending.extend(s.handle(now, SyncEvent::CursorCommitted { stream: n.clone(), up_to }));
                    }
                    _ => {}
                }
            }
            now += 10_000;
            if let Some((f, l)) = in_flight.take() {
                let outcome = match a {
                    0 => { cloud_holds = cloud_holds.max(l); stored(l - f + 1) }
                    1 => { cloud_holds = cloud_holds.max(l); CloudOutcome::Duplicate }
                    2 => CloudOutcome::Unavailable("timeout".into()),
                    3 => CloudOutcome::Rejected("400".into()),
                    _ => { fenced = true; CloudOutcome::Stale { highest: 6 } }
                };
                pending.extend(s.handle(now, answer(&n, 5, f, l, outcome)));
            }
            pending.extend(s.handle(now, SyncEvent::Tick));
        }
    }
}

#[test]
fn when_the_cloud_answers_again_every_stream_backing_off_posts_at_once() {
    let (n, so) = (north(), south());
    let mut s = leader(0, 2);
    s.handle(
        0,
        SyncEvent::Cursors {
            cursors: map(&[(&so, 0)]),
        },
    );
    s.handle(
        0,
        SyncEvent::StreamHeads {
            heads: map(&[(&so, 3)]),
        },
    );
    s.handle(0, SyncEvent::BecameLeader { term: 5 });
    s.handle(1, read(&n, 1, 2));
    s.handle(1, read(&so, 1, 3));
    // Both posts fail a few times: each stream waits out its own backoff.
    let mut now = 10;
    for _ in 0..4 {
        s.handle(
            now,
            answer(&n, 5, 1, 2, CloudOutcome::Unavailable("down".into())),
        );
        s.handle(
            now,
            answer(&so, 5, 1, 3, CloudOutcome::Unavailable("down".into())),
        );
        now += 1_000;
        s.handle(now, SyncEvent::Tick);
    }
    s.handle(
        now,
        answer(&so, 5, 1, 3, CloudOutcome::Unavailable("down".into())),
    );
    let south_due = s
        .status(now)
        .streams
        .iter()
        .find(|st| st.stream == so)
        .and_then(|st| st.retry_at_ms);
    assert!(
        south_due.is_some_and(|t| t > now + 1),
        "south waits: {south_due:?}"
    );
    // North's post gets through: south goes now, not at its retry time.
    let acts = s.handle(now + 1, answer(&n, 5, 1, 2, stored(2)));
    assert!(
        acts.contains(&SyncAction::Post {
            batch: batch(&so, 5, 1, 3)
        }),
        "south posted at once: {acts:?}"
    );
}
