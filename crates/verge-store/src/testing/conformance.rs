//! The behaviour every [`Store`] must show, as functions that panic on the first deviation.
//!
//! Each case in [`ALL`] takes a fresh, empty store. [`reopen_keeps_what_was_flushed`] is for
//! stores that persist: it takes a function that opens the same store again. An implementation's
//! tests run them all:
//!
//! ```
//! for (name, case) in verge_store::testing::conformance::ALL {
//!     println!("conformance: {name}");
//!     case(&verge_store::MemStore::new());
//! }
//! ```

use verge_proto::{NodeId, Record, StreamId, StreamKind};

use crate::{RetentionPolicy, Store, StoreError, StreamInfo};

/// A conformance case: panics if the (fresh, empty) store deviates.
pub type Case = fn(&dyn Store);

/// Every case that runs on a fresh store, by name.
pub const ALL: [(&str, Case); 12] = [
    ("dense_sequence_numbers", dense_sequence_numbers),
    ("re_delivery_is_idempotent", re_delivery_is_idempotent),
    ("gaps_are_refused", gaps_are_refused),
    ("column_mismatch_is_refused", column_mismatch_is_refused),
    ("read_ranges_and_limits", read_ranges_and_limits),
    ("durable_head_follows_flush", durable_head_follows_flush),
    ("retention_by_age", retention_by_age),
    (
        "quota_drops_raw_then_results_then_aggregates",
        quota_drops_raw_then_results_then_aggregates,
    ),
    ("shared_between_threads", shared_between_threads),
    ("holders_are_kept_per_stream", holders_are_kept_per_stream),
    ("epoch_strictly_increases", epoch_strictly_increases),
    (
        "reset_discards_and_restarts_at_next_seq",
        reset_discards_and_restarts_at_next_seq,
    ),
];

/// A day after the Unix epoch, so ages can go back without going negative.
const T0: i64 = 86_400_000;

fn stream(text: &str) -> StreamId {
    text.parse().expect("a valid stream id")
}

/// `n` records one second apart from `start_ms`, each with `columns` values that identify it.
fn records(start_ms: i64, n: usize, columns: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            ts_ms: start_ms + 1000 * i as i64,
            values: (0..columns)
                .map(|c| (start_ms / 1000 + i as i64) as f64 + c as f64 / 4.0)
                .collect(),
        })
        .collect()
}

/// Appends, panicking on refusal.
fn append(store: &dyn Store, id: &StreamId, first_seq: u64, rs: &[Record]) {
    store
        .append(id, first_seq, rs)
        .unwrap_or_else(|e| panic!("append to {id} from {first_seq}: {e}"));
}

fn read_all(store: &dyn Store, id: &StreamId) -> Vec<(u64, Record)> {
    store
        .read(id, 0, u64::MAX, usize::MAX)
        .unwrap_or_else(|e| panic!("read {id}: {e}"))
}

fn info(store: &dyn Store, id: &StreamId) -> StreamInfo {
    store
        .streams()
        .into_iter()
        .find(|s| &s.id == id)
        .unwrap_or_else(|| panic!("{id} is not listed"))
}

fn nodes(ids: &[&str]) -> Vec<NodeId> {
    ids.iter()
        .map(|id| id.parse().expect("a valid node id"))
        .collect()
}

fn seqs(read: &[(u64, Record)]) -> Vec<u64> {
    read.iter().map(|(seq, _)| *seq).collect()
}

/// Records get sequence numbers from 1 with no hole; heads and listings follow.
pub fn dense_sequence_numbers(store: &dyn Store) {
    let id = stream("b1/raw/loop-1");
    assert_eq!(store.head(&id), 0, "an unknown stream's head is 0");
    let rs = records(T0, 5, 2);
    let outcome = store.append(&id, 1, &rs[..3]).expect("append");
    assert_eq!((outcome.appended, outcome.skipped, outcome.head), (3, 0, 3));
    let outcome = store.append(&id, 4, &rs[3..]).expect("append");
    assert_eq!((outcome.appended, outcome.skipped, outcome.head), (2, 0, 5));
    let read = read_all(store, &id);
    assert_eq!(seqs(&read), vec![1, 2, 3, 4, 5]);
    assert!(read.iter().map(|(_, r)| r).eq(rs.iter()));
    let listed = store.streams();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].first_seq, listed[0].head, listed[0].columns),
        (1, 5, 2)
    );
    store.flush().expect("flush");
    append(store, &id, 6, &records(T0 + 5000, 1, 2));
    assert_eq!(seqs(&read_all(store, &id)), (1..=6).collect::<Vec<_>>());
}

/// Records at or below the head are skipped, keeping what was stored first.
pub fn re_delivery_is_idempotent(store: &dyn Store) {
    let id = stream("b1/raw/loop-1");
    let rs = records(T0, 8, 3);
    append(store, &id, 1, &rs[..5]);
    let outcome = store.append(&id, 1, &rs[..5]).expect("re-append");
    assert_eq!((outcome.appended, outcome.skipped, outcome.head), (0, 5, 5));
    store.flush().expect("flush");
    // Overlapping, with different values for the overlap: the originals stay.
    let mut overlap = records(T0 + 999_000, 3, 3);
    overlap.extend_from_slice(&rs[5..]);
    let outcome = store.append(&id, 3, &overlap).expect("overlapping append");
    assert_eq!((outcome.appended, outcome.skipped, outcome.head), (3, 3, 8));
    let read = read_all(store, &id);
    assert_eq!(seqs(&read), (1..=8).collect::<Vec<_>>());
    assert!(read.iter().map(|(_, r)| r).eq(rs.iter()));
}

/// An append that would leave a hole is refused and changes nothing.
pub fn gaps_are_refused(store: &dyn Store) {
    let id = stream("b1/results/loop-1");
    match store.append(&id, 2, &records(T0, 1, 1)) {
        Err(StoreError::Gap {
            head: 0,
            first_seq: 2,
            ..
        }) => {}
        other => panic!("a new stream starting at 2 must be a gap, got {other:?}"),
    }
    assert!(
        store.streams().is_empty(),
        "a refused append creates no stream"
    );
    append(store, &id, 1, &records(T0, 3, 1));
    match store.append(&id, 5, &records(T0, 2, 1)) {
        Err(
            e @ StoreError::Gap {
                head: 3,
                first_seq: 5,
                ..
            },
        ) => assert!(e.is_retryable()),
        other => panic!("seq 5 after head 3 must be a gap, got {other:?}"),
    }
    assert_eq!(store.head(&id), 3);
}

/// A record of the wrong width is refused, and so is its whole append.
pub fn column_mismatch_is_refused(store: &dyn Store) {
    let id = stream("b1/raw/loop-1");
    append(store, &id, 1, &records(T0, 2, 2));
    let mut batch = records(T0 + 2000, 2, 2);
    batch.push(records(T0 + 4000, 1, 3).remove(0));
    match store.append(&id, 3, &batch) {
        Err(StoreError::Columns {
            seq: 5,
            expected: 2,
            found: 3,
            ..
        }) => {}
        other => panic!("a 3-value record in a 2-column stream must be refused, got {other:?}"),
    }
    assert_eq!(store.head(&id), 2, "nothing of a refused append is stored");
    store.flush().expect("flush");
    assert!(matches!(
        store.append(&id, 3, &records(T0, 1, 1)),
        Err(StoreError::Columns { .. })
    ));
    let wide = stream("b1/raw/wide");
    assert!(matches!(
        store.append(&wide, 1, &records(T0, 1, crate::COLUMNS_MAX + 1)),
        Err(StoreError::ColumnsMax { .. })
    ));
    // A stream of timestamps alone is fine.
    append(store, &stream("b1/raw/ticks"), 1, &records(T0, 3, 0));
}

/// Reads honour `from`, `to` and `limit` across flushed blocks and records not yet flushed.
pub fn read_ranges_and_limits(store: &dyn Store) {
    let id = stream("b1/raw/loop-1");
    let rs = records(T0, 2600, 4);
    // Flushes of different sizes, so a store with blocks has several, and a pending tail.
    for (from, to) in [(0, 1000), (1000, 1010), (1010, 2400)] {
        append(store, &id, from as u64 + 1, &rs[from..to]);
        store.flush().expect("flush");
    }
    append(store, &id, 2401, &rs[2400..]);
    // `expect` is the half-open range of sequence numbers the read must return.
    let check = |from: u64, to: u64, limit: usize, expect: std::ops::Range<u64>| {
        let read = store.read(&id, from, to, limit).expect("read");
        assert_eq!(
            seqs(&read),
            expect.collect::<Vec<_>>(),
            "read {from}..={to} limit {limit}"
        );
        for (seq, r) in &read {
            assert_eq!(r, &rs[*seq as usize - 1], "record {seq}");
        }
    };
    check(0, u64::MAX, usize::MAX, 1..2601);
    check(1000, 1100, 7, 1000..1007);
    check(1020, 1030, 100, 1020..1031);
    check(2390, 2410, 100, 2390..2411);
    check(2500, 9999, 101, 2500..2601);
    check(2500, 9999, 100, 2500..2600);
    check(2600, 2600, 1, 2600..2601);
    check(5, 4, 10, 0..0);
    check(2601, 3000, 10, 0..0);
    check(1, 10, 0, 0..0);
    assert!(
        store
            .read(&stream("b1/raw/none"), 1, 10, 10)
            .expect("read")
            .is_empty()
    );
}

/// Appends are readable at once but durable only after a flush.
pub fn durable_head_follows_flush(store: &dyn Store) {
    let a = stream("b1/raw/a");
    let b = stream("b1/aggregates/b");
    append(store, &a, 1, &records(T0, 3, 2));
    assert_eq!((store.head(&a), store.durable_head(&a)), (3, 0));
    store.flush().expect("flush");
    assert_eq!((store.head(&a), store.durable_head(&a)), (3, 3));
    append(store, &a, 4, &records(T0, 2, 2));
    append(store, &b, 1, &records(T0, 1, 1));
    assert_eq!((store.head(&a), store.durable_head(&a)), (5, 3));
    assert_eq!(info(store, &a).durable_head, 3);
    store.flush().expect("flush");
    store.flush().expect("a flush with nothing new");
    assert_eq!((store.durable_head(&a), store.durable_head(&b)), (5, 1));
}

/// Records older than their kind's retention go, oldest first, only once durable; sequence
/// numbers are not reused.
pub fn retention_by_age(store: &dyn Store) {
    let raw = stream("b1/raw/loop-1");
    let results = stream("b1/results/loop-1");
    let aggregates = stream("b1/aggregates/approach-n");
    let rs = records(T0, 1500, 3);
    for id in [&raw, &results] {
        append(store, id, 1, &rs[..700]);
        store.flush().expect("flush");
        append(store, id, 701, &rs[700..]);
    }
    append(store, &aggregates, 1, &rs[..10]);
    store.flush().expect("flush");
    append(store, &aggregates, 11, &rs[10..20]);

    let now = T0 + 1_000_000;
    let policy = RetentionPolicy {
        raw_ms: Some(1_000_000 - 50_000),
        aggregates_ms: Some(0),
        ..RetentionPolicy::default()
    };
    let report = store.enforce(&policy, now).expect("enforce");
    // Raw records 1..=50 are older than T0 + 50 s.
    assert_eq!(report.dropped(StreamKind::Raw).by_age, 50);
    assert_eq!(info(store, &raw).first_seq, 51);
    assert_eq!(read_all(store, &raw).first().map(|(s, _)| *s), Some(51));
    assert_eq!(
        report.dropped(StreamKind::Results).by_age,
        0,
        "results have no retention"
    );
    assert_eq!(info(store, &results).first_seq, 1);
    // Every aggregate is old, but only the flushed ten may go.
    assert_eq!(report.dropped(StreamKind::Aggregates).by_age, 10);
    assert_eq!(info(store, &aggregates).first_seq, 11);
    assert_eq!(
        seqs(&read_all(store, &aggregates)),
        (11..=20).collect::<Vec<_>>()
    );
    assert!(report.dropped(StreamKind::Raw).bytes > 0);
    assert!(report.damaged.is_empty());

    // Dropping everything keeps the head; re-deliveries of dropped records are skipped and
    // appends carry on from the head.
    store.flush().expect("flush");
    let all = RetentionPolicy {
        raw_ms: Some(0),
        ..RetentionPolicy::default()
    };
    let now = T0 + 10_000_000;
    store.enforce(&all, now).expect("enforce");
    let listed = info(store, &raw);
    assert_eq!((listed.first_seq, listed.head), (1501, 1500));
    assert!(read_all(store, &raw).is_empty());
    let outcome = store.append(&raw, 1, &rs[..5]).expect("re-delivery");
    assert_eq!((outcome.appended, outcome.skipped), (0, 5));
    append(store, &raw, 1501, &records(now, 2, 3));
    store.flush().expect("flush");
    assert_eq!(seqs(&read_all(store, &raw)), vec![1501, 1502]);
    assert!(
        store.enforce(&all, now).expect("enforce").is_empty(),
        "new records are young"
    );
}

/// Over its quota the store drops raw records first, oldest stream first, then results, and
/// aggregates last, whatever their age; never what is not durable.
pub fn quota_drops_raw_then_results_then_aggregates(store: &dyn Store) {
    let raw_old = stream("b1/raw/old");
    let raw_new = stream("b1/raw/new");
    let results = stream("b1/results/r");
    let aggregates = stream("b1/aggregates/a");
    // Aggregates are the oldest of all: the kind decides before the age.
    let starts = [
        (&raw_old, T0 + 1_000_000),
        (&raw_new, T0 + 9_000_000),
        (&results, T0 + 5_000_000),
        (&aggregates, T0),
    ];
    for (id, start) in starts {
        let rs = records(start, 3000, 4);
        for from in (0..3000).step_by(500) {
            append(store, id, from as u64 + 1, &rs[from..from + 500]);
            store.flush().expect("flush");
        }
    }
    let now = T0 + 10_000_000;
    let bytes = |id: &StreamId| info(store, id).bytes;
    let first = |id: &StreamId| info(store, id).first_seq;
    let total: u64 = store.streams().iter().map(|s| s.bytes).sum();
    assert!(total > 0, "the store counts bytes");

    let quota = |bytes_max| RetentionPolicy {
        bytes_max: Some(bytes_max),
        ..RetentionPolicy::default()
    };
    let report = store.enforce(&quota(total - 1), now).expect("enforce");
    assert!(report.dropped(StreamKind::Raw).by_quota > 0);
    assert!(first(&raw_old) > 1, "the oldest raw stream goes first");
    assert_eq!(first(&raw_new), 1);
    assert_eq!((first(&results), first(&aggregates)), (1, 1));
    assert!(report.bytes < total && report.bytes_over_quota == 0);

    let report = store
        .enforce(&quota(bytes(&aggregates) + bytes(&results) / 2), now)
        .expect("enforce");
    assert_eq!(
        first(&raw_old),
        3001,
        "every raw record goes before any result"
    );
    assert_eq!(first(&raw_new), 3001);
    assert!(
        first(&results) > 1 && first(&results) <= 3000,
        "results go next, oldest first"
    );
    assert_eq!(first(&aggregates), 1, "aggregates go last");
    assert_eq!(
        report.dropped(StreamKind::Aggregates),
        crate::Dropped::default()
    );
    assert_eq!(
        report.dropped(StreamKind::Results).by_quota,
        first(&results) - 1
    );

    // Records not yet durable stay, even under a quota of nothing.
    append(store, &results, 3001, &records(now, 10, 4));
    let report = store.enforce(&quota(0), now).expect("enforce");
    assert_eq!(
        first(&aggregates),
        3001,
        "under a quota of 0 everything durable goes"
    );
    assert!(report.dropped(StreamKind::Aggregates).by_quota == 3000);
    assert_eq!(
        seqs(&read_all(store, &results)),
        (3001..=3010).collect::<Vec<_>>()
    );
    for id in [&raw_old, &raw_new, &aggregates] {
        assert_eq!(info(store, id).head, 3000, "heads stay where they were");
    }
}

/// One store serves several threads at once.
pub fn shared_between_threads(store: &dyn Store) {
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                let id = stream(&format!("b1/raw/t{t}"));
                let rs = records(T0, 1000, 4);
                for from in (0..1000).step_by(100) {
                    append(store, &id, from as u64 + 1, &rs[from..from + 100]);
                    if from % 300 == 0 {
                        store.flush().expect("flush");
                    }
                    let read = store.read(&id, 1, u64::MAX, usize::MAX).expect("read");
                    assert_eq!(read.len(), from + 100);
                }
            });
        }
    });
    store.flush().expect("flush");
    for info in store.streams() {
        assert_eq!((info.head, info.durable_head), (1000, 1000), "{}", info.id);
    }
}

/// Holders are recorded per stream, replaced as a whole, kept in the order given, for streams
/// with or without records; recording them neither creates a stream nor makes appended records
/// durable.
pub fn holders_are_kept_per_stream(store: &dyn Store) {
    let a = stream("b1/raw/a");
    let b = stream("b1/results/b");
    assert!(
        store.holders(&a).is_empty(),
        "no holders before any are set"
    );
    store
        .set_holders(&a, &nodes(&["b3", "b2"]))
        .expect("set holders of a stream with no records");
    assert_eq!(store.holders(&a), nodes(&["b3", "b2"]));
    assert!(store.holders(&b).is_empty(), "holders are per stream");
    assert!(store.streams().is_empty(), "holders create no stream");
    assert_eq!(store.head(&a), 0);

    append(store, &b, 1, &records(T0, 3, 2));
    store.flush().expect("flush");
    append(store, &b, 4, &records(T0 + 3000, 2, 2));
    store.set_holders(&b, &nodes(&["b2"])).expect("set holders");
    assert_eq!(
        (store.head(&b), store.durable_head(&b)),
        (5, 3),
        "recording holders makes no appended record durable"
    );
    store
        .set_holders(&a, &nodes(&["b4", "b5", "b6"]))
        .expect("replace holders");
    assert_eq!(store.holders(&a), nodes(&["b4", "b5", "b6"]));
    assert_eq!(store.holders(&b), nodes(&["b2"]));
    assert_eq!(
        store.streams_with_holders(),
        vec![a.clone(), b.clone()],
        "streams with holders are listed, with records or without"
    );
    store.set_holders(&b, &[]).expect("clear holders");
    assert_eq!(store.streams_with_holders(), vec![a.clone()]);
    assert!(store.holders(&b).is_empty());
    assert_eq!(store.holders(&a), nodes(&["b4", "b5", "b6"]));
    assert_eq!(seqs(&read_all(store, &b)), vec![1, 2, 3, 4, 5]);
    store.flush().expect("flush");
    assert_eq!(store.durable_head(&b), 5);
}

/// The epoch counter starts at 1 and goes up by one per bump, without making appended records
/// durable.
pub fn epoch_strictly_increases(store: &dyn Store) {
    let a = stream("b1/raw/a");
    append(store, &a, 1, &records(T0, 2, 1));
    let bumped: Vec<u64> = (0..3)
        .map(|_| store.bump_epoch().expect("bump the epoch"))
        .collect();
    assert_eq!(bumped, vec![1, 2, 3]);
    assert_eq!(
        store.durable_head(&a),
        0,
        "bumping the epoch makes no appended record durable"
    );
}

/// A reset drops every record of the stream, durable or pending, and restarts it empty at the
/// given sequence number, durably; other streams are untouched.
pub fn reset_discards_and_restarts_at_next_seq(store: &dyn Store) {
    let a = stream("b1/raw/a");
    let other = stream("b1/raw/other");
    let rs = records(T0, 1500, 3);
    append(store, &a, 1, &rs[..1200]);
    store.flush().expect("flush");
    append(store, &a, 1201, &rs[1200..]);
    append(store, &other, 1, &rs[..10]);
    store.set_holders(&a, &nodes(&["b2"])).expect("set holders");

    store.reset(&a, 2000).expect("reset");
    assert_eq!((store.head(&a), store.durable_head(&a)), (1999, 1999));
    let listed = info(store, &a);
    assert_eq!(
        (listed.first_seq, listed.head, listed.durable_head),
        (2000, 1999, 1999)
    );
    assert_eq!(listed.bytes, 0, "a reset stream holds no bytes");
    assert!(read_all(store, &a).is_empty(), "a reset drops every record");
    assert_eq!(
        store.holders(&a),
        nodes(&["b2"]),
        "a reset keeps the holders"
    );
    assert_eq!(
        (store.head(&other), store.durable_head(&other)),
        (10, 0),
        "a reset leaves other streams as they were, pending records included"
    );

    match store.append(&a, 2001, &rs[..1]) {
        Err(StoreError::Gap {
            head: 1999,
            first_seq: 2001,
            ..
        }) => {}
        other => panic!("after a reset to 2000, seq 2001 must be a gap, got {other:?}"),
    }
    let outcome = store.append(&a, 1, &rs[..5]).expect("old records");
    assert_eq!(
        (outcome.appended, outcome.skipped, outcome.head),
        (0, 5, 1999),
        "records below the restart are skipped"
    );
    let fresh = records(T0 + 5_000_000, 20, 3);
    append(store, &a, 2000, &fresh[..15]);
    store.flush().expect("flush");
    append(store, &a, 2015, &fresh[15..]);
    assert_eq!((store.head(&a), store.durable_head(&a)), (2019, 2014));
    let read = read_all(store, &a);
    assert_eq!(seqs(&read), (2000..=2019).collect::<Vec<_>>());
    assert!(read.iter().map(|(_, r)| r).eq(fresh.iter()));
    assert_eq!(info(store, &a).first_seq, 2000);

    // Records reset away are gone for retention too: only the new ones count and go.
    store.flush().expect("flush");
    let report = store
        .enforce(
            &RetentionPolicy {
                raw_ms: Some(0),
                ..RetentionPolicy::default()
            },
            T0 + 10_000_000,
        )
        .expect("enforce");
    assert_eq!(report.dropped(StreamKind::Raw).by_age, 20 + 10);
    assert_eq!(info(store, &a).first_seq, 2020);

    // A stream the store never held, reset: empty from there, and its first record fixes its
    // columns.
    let copy = stream("b2/results/copy");
    store.reset(&copy, 500).expect("reset a new copy");
    let listed = info(store, &copy);
    assert_eq!(
        (listed.first_seq, listed.head, listed.durable_head),
        (500, 499, 499)
    );
    append(store, &copy, 500, &records(T0, 4, 5));
    assert!(matches!(
        store.append(&copy, 504, &records(T0, 1, 2)),
        Err(StoreError::Columns {
            expected: 5,
            found: 2,
            ..
        })
    ));
    assert_eq!(info(store, &copy).columns, 5);

    // A reset of records that were never flushed, back to where the stream began.
    let pending = stream("b1/aggregates/p");
    append(store, &pending, 1, &records(T0, 7, 1));
    store.reset(&pending, 1).expect("reset");
    assert_eq!((store.head(&pending), store.durable_head(&pending)), (0, 0));
    assert!(read_all(store, &pending).is_empty());
    append(store, &pending, 1, &records(T0 + 9000, 2, 1));
    store.flush().expect("flush");
    assert_eq!(
        read_all(store, &pending),
        vec![
            (1, records(T0 + 9000, 1, 1).remove(0)),
            (2, records(T0 + 10_000, 1, 1).remove(0)),
        ]
    );

    for bad in [0, crate::HEAD_MAX + 2, u64::MAX] {
        match store.reset(&copy, bad) {
            Err(e @ StoreError::ResetSeq { .. }) => assert!(!e.is_retryable()),
            other => panic!("a reset to seq {bad} must be refused, got {other:?}"),
        }
    }
    assert_eq!(store.head(&copy), 503, "a refused reset changes nothing");
}

/// A store reopened after a crash (here: dropped without a flush) holds every record a flush
/// made durable, unchanged, with its first retained sequence number and columns; records not
/// flushed may be gone, and appends resume from the head with no gap and no reuse. Holders,
/// the epoch and resets need no flush to survive, and the epoch keeps going up.
pub fn reopen_keeps_what_was_flushed(open: &mut dyn FnMut() -> Box<dyn Store>) {
    let a = stream("b1/raw/a");
    let b = stream("b2/aggregates/b");
    let c = stream("b3/results/c");
    let fresh_copy = stream("b4/raw/copy");
    let rs = records(T0, 3000, 4);
    let (durable, flushed_b, epoch) = {
        let store = open();
        assert_eq!(store.bump_epoch().expect("bump the epoch"), 1);
        append(&*store, &a, 1, &rs[..1500]);
        append(&*store, &b, 1, &rs[..3]);
        append(&*store, &c, 1, &rs[..50]);
        store.flush().expect("flush");
        let policy = RetentionPolicy {
            raw_ms: Some(100_000),
            ..RetentionPolicy::default()
        };
        store.enforce(&policy, T0 + 200_000).expect("enforce");
        append(&*store, &a, 1501, &rs[1500..1600]);
        // None of these is followed by a flush.
        store
            .set_holders(&a, &nodes(&["b2", "b3"]))
            .expect("set holders");
        store
            .set_holders(&fresh_copy, &nodes(&["b9"]))
            .expect("set holders of a stream with no records");
        assert_eq!(
            store.durable_head(&a),
            1500,
            "recording holders makes no appended record durable"
        );
        store.reset(&c, 80).expect("reset");
        store.reset(&fresh_copy, 7).expect("reset a new copy");
        let epoch = store.bump_epoch().expect("bump the epoch");
        assert_eq!(store.durable_head(&a), 1500);
        (
            read_all(&*store, &a)[..1400].to_vec(),
            read_all(&*store, &b),
            epoch,
        )
    };
    assert_eq!(durable.first().map(|(s, _)| *s), Some(101));
    assert_eq!(epoch, 2);

    let store = open();
    let head = store.head(&a);
    assert!((1500..=1600).contains(&head), "head {head} after reopen");
    assert_eq!(
        store.durable_head(&a),
        head,
        "what a reopened store holds is durable"
    );
    let read = read_all(&*store, &a);
    assert_eq!(&read[..1400], &durable[..], "flushed records are intact");
    assert_eq!(info(&*store, &a).first_seq, 101);
    assert_eq!(read_all(&*store, &b), flushed_b);
    assert_eq!(store.holders(&a), nodes(&["b2", "b3"]), "holders survive");
    assert_eq!(store.holders(&fresh_copy), nodes(&["b9"]));
    assert!(store.holders(&b).is_empty());
    let reopened_epoch = store.bump_epoch().expect("bump the epoch");
    assert!(
        reopened_epoch > epoch,
        "epoch {reopened_epoch} after a reopen is not above {epoch}"
    );
    for (id, next_seq) in [(&c, 80), (&fresh_copy, 7)] {
        let listed = info(&*store, id);
        assert_eq!(
            (listed.first_seq, listed.head, listed.durable_head),
            (next_seq, next_seq - 1, next_seq - 1),
            "{id} stays reset"
        );
        assert!(read_all(&*store, id).is_empty(), "{id} stays empty");
    }
    // The reset streams' columns are fixed afresh, and survive once flushed.
    append(&*store, &c, 80, &records(T0, 3, 2));
    append(&*store, &fresh_copy, 7, &records(T0, 2, 6));
    assert!(matches!(
        store.append(&a, head + 1, &records(T0, 1, 2)),
        Err(StoreError::Columns { .. })
    ));
    append(&*store, &a, head + 1, &rs[head as usize..2000]);
    store.flush().expect("flush");
    drop(store);

    let store = open();
    assert_eq!(store.head(&a), 2000);
    let read = read_all(&*store, &a);
    assert_eq!(seqs(&read), (101..=2000).collect::<Vec<_>>());
    assert!(read.iter().map(|(_, r)| r).eq(rs[100..2000].iter()));
    assert_eq!(
        read_all(&*store, &c),
        (80..).zip(records(T0, 3, 2)).collect::<Vec<_>>()
    );
    assert_eq!(info(&*store, &fresh_copy).columns, 6);
    assert_eq!(seqs(&read_all(&*store, &fresh_copy)), vec![7, 8]);
    assert!(
        store.bump_epoch().expect("bump the epoch") > reopened_epoch,
        "the epoch keeps going up across reopens"
    );
}
