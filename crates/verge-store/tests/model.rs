//! The sled store against the memory store as a model: random sequences of appends (in order,
//! re-delivered, gapped, mis-sized), flushes, reads, retention by age and reopens must give the
//! same answers from both.
//!
//! A reopen follows a flush here, since the memory store cannot lose what is not flushed; the
//! conformance suite covers what a reopen may lose. The quota is left out: the stores count
//! bytes differently, so they drop different amounts (the conformance suite checks the order).

use proptest::prelude::*;
use verge_proto::{Record, StreamId, StreamKind};
use verge_store::{MemStore, RetentionPolicy, SledStore, Store, StoreError};

#[derive(Debug, Clone)]
enum Op {
    /// Appends `n` records to stream `stream` starting `offset` away from head + 1.
    Append {
        stream: usize,
        offset: i64,
        n: usize,
        wrong_width: bool,
    },
    Flush,
    Read {
        stream: usize,
        from: u64,
        len: u64,
        limit: usize,
    },
    /// Drops records older than `age_s` seconds before the latest timestamp written.
    Enforce {
        age_s: u64,
    },
    /// Flushes, closes and reopens the sled store.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0_usize..3, prop_oneof![8 => Just(0_i64), 1 => -5_i64..5], 0_usize..700, prop::bool::weighted(0.05))
            .prop_map(|(stream, offset, n, wrong_width)| Op::Append { stream, offset, n, wrong_width }),
        3 => Just(Op::Flush),
        3 => (0_usize..3, 0_u64..3000, 0_u64..1500, 0_usize..2000)
            .prop_map(|(stream, from, len, limit)| Op::Read { stream, from, len, limit }),
        1 => (0_u64..2000).prop_map(|age_s| Op::Enforce { age_s }),
        1 => Just(Op::Reopen),
    ]
}

fn streams() -> [StreamId; 3] {
    ["b1/raw/a", "b1/results/b", "b2/aggregates/c"].map(|s| s.parse().expect("valid id"))
}

/// Record `seq` of a stream: one second apart, values that identify it.
fn record(seq: u64, columns: usize) -> Record {
    Record {
        ts_ms: 1_000 * seq as i64,
        values: (0..columns).map(|c| seq as f64 * 0.25 + c as f64).collect(),
    }
}

/// Errors compared by kind and position; their text names paths that differ.
fn outcome<T: PartialEq + std::fmt::Debug>(r: Result<T, StoreError>) -> Result<T, String> {
    r.map_err(|e| match e {
        StoreError::Gap {
            head, first_seq, ..
        } => format!("gap {head} {first_seq}"),
        StoreError::Columns {
            seq,
            expected,
            found,
            ..
        } => format!("columns {seq} {expected} {found}"),
        other => panic!("unexpected error: {other}"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_sled_store_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sled = SledStore::open(dir.path()).expect("open");
        let model = MemStore::new();
        let ids = streams();
        let mut latest_ts = 0;
        for op in ops {
            match op {
                Op::Append { stream, offset, n, wrong_width } => {
                    let id = &ids[stream];
                    let first = (model.head(id) as i64 + 1 + offset).max(0) as u64;
                    let columns = 3 - stream;
                    let mut rs: Vec<Record> = (first..first + n as u64).map(|q| record(q, columns)).collect();
                    if wrong_width && !rs.is_empty() {
                        let last = rs.len() - 1;
                        rs[last].values.push(0.0);
                    }
                    latest_ts = latest_ts.max(rs.iter().map(|r| r.ts_ms).max().unwrap_or(0));
                    let got = outcome(sled.append(id, first, &rs));
                    let want = outcome(model.append(id, first, &rs));
                    prop_assert_eq!(got, want);
                }
                Op::Flush => {
                    sled.flush().expect("flush");
                    model.flush().expect("flush");
                }
                Op::Read { stream, from, len, limit } => {
                    let id = &ids[stream];
                    let got = sled.read(id, from, from + len, limit).expect("read");
                    let want = model.read(id, from, from + len, limit).expect("read");
                    prop_assert_eq!(got, want);
                }
                Op::Enforce { age_s } => {
                    let policy = RetentionPolicy {
                        raw_ms: Some(age_s * 1000),
                        results_ms: Some(age_s * 2000),
                        aggregates_ms: None,
                        bytes_max: None,
                    };
                    let got = sled.enforce(&policy, latest_ts).expect("enforce");
                    let want = model.enforce(&policy, latest_ts).expect("enforce");
                    for kind in [StreamKind::Raw, StreamKind::Results, StreamKind::Aggregates] {
                        prop_assert_eq!(got.dropped(kind).by_age, want.dropped(kind).by_age);
                    }
                }
                Op::Reopen => {
                    sled.flush().expect("flush");
                    model.flush().expect("flush");
                    drop(sled);
                    sled = verge_store::testing::reopen_sled(dir.path());
                }
            }
            let heads = |s: &dyn Store| -> Vec<_> {
                s.streams().into_iter().map(|i| (i.id, i.first_seq, i.head, i.durable_head, i.columns)).collect()
            };
            prop_assert_eq!(heads(&sled), heads(&model));
        }
        for id in &ids {
            let got = sled.read(id, 0, u64::MAX, usize::MAX).expect("read");
            let want = model.read(id, 0, u64::MAX, usize::MAX).expect("read");
            prop_assert_eq!(got, want);
        }
    }
}
