//! The invariants a simulation run is judged by, as pure functions of what the run observed:
//! what its producer saw acknowledged, what every holder of every stream holds, what the cloud
//! holds and which batches it accepted in which order. No sockets here: `runner` gathers the
//! observations, these functions judge them, and unit tests feed them hand-made ones.
//!
//! - **No acknowledged reading lost**: every reading whose acknowledgement the producer saw is
//!   held, with the same sequence number, time and values, by at least one holder of its stream.
//!   A reading below a holder's first sequence was dropped by retention or the disk quota; that is
//!   allowed only where the scenario filled that node's quota, and counted apart.
//! - **Replicas converge**: over the range every holder of a stream has, they hold the same
//!   records.
//! - **Every window in the cloud exactly once**: each aggregate window a node produced (up to
//!   the cut taken when the run ended) is in the cloud, with the node's values; none twice.
//! - **No stale term accepted**: in the order the cloud accepted batches, no batch carries a
//!   term below one accepted before it, and no term has two gateways.

use std::collections::{BTreeMap, BTreeSet};

use verge_proto::Record;

use crate::report::Violation;

/// At most this many violations of one invariant are listed (all are counted).
pub const LISTED_MAX: usize = 50;

/// A reading the producer saw acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct AckedReading {
    /// Its stream, `owner/kind/sensor`.
    pub stream: String,
    /// Its sequence number.
    pub seq: u64,
    /// What was sent.
    pub record: Record,
    /// Seconds from the start of the run when it was acknowledged.
    pub at_s: f64,
}

/// What one holder (the owner or a replica) holds of a stream, over the range that was read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holding {
    /// The node.
    pub node: String,
    /// Its first sequence still held (lower ones were dropped by retention or quota).
    pub first_seq: u64,
    /// Its durable head when it was read.
    pub durable_head: u64,
    /// The records read, by sequence.
    pub records: BTreeMap<u64, Record>,
}

/// Every holder of one stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamHoldings {
    /// The holders that answered.
    pub holders: Vec<Holding>,
    /// Whether dropping old readings of this stream was expected (its owner's quota was filled).
    pub quota_filled: bool,
}

/// A window the cloud holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudWindow {
    /// Its time.
    pub ts_ms: i64,
    /// Its values.
    pub values: Vec<f64>,
}

/// One batch as the cloud recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedBatch {
    /// The cloud's acceptance order.
    pub accepted: u64,
    /// The stream.
    pub stream: String,
    /// Its first and last sequence.
    pub first_seq: u64,
    /// Last sequence.
    pub last_seq: u64,
    /// The term it carried.
    pub term: u64,
    /// The gateway that sent it.
    pub gateway: String,
}

/// The verdicts, counted and named.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Acknowledged readings held by no holder.
    pub lost_acknowledged: u64,
    /// Acknowledged readings dropped by a filled quota (allowed, reported).
    pub evicted_by_quota: u64,
    /// Streams whose holders differ.
    pub replicas_diverged: u64,
    /// Windows produced and missing from the cloud.
    pub cloud_missing: u64,
    /// Windows held twice or with other values.
    pub cloud_duplicates: u64,
    /// Batches accepted from a stale term.
    pub stale_term_accepted: u64,
    /// The violations, at most [`LISTED_MAX`] per invariant.
    pub violations: Vec<Violation>,
}

impl Verdict {
    /// True when every invariant held.
    pub fn passed(&self) -> bool {
        self.lost_acknowledged == 0
            && self.replicas_diverged == 0
            && self.cloud_missing == 0
            && self.cloud_duplicates == 0
            && self.stale_term_accepted == 0
    }

    fn push(&mut self, listed: &mut usize, v: Violation) {
        if *listed < LISTED_MAX {
            self.violations.push(v);
        }
        *listed += 1;
    }
}

/// Bit-for-bit equality of two records (NaN equals NaN of the same bits; 0.0 differs from -0.0).
pub fn same_record(a: &Record, b: &Record) -> bool {
    same_bits(a.ts_ms, &a.values, b.ts_ms, &b.values)
}

fn same_bits(ta: i64, a: &[f64], tb: i64, b: &[f64]) -> bool {
    ta == tb && a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Checks that every acknowledged reading is held.
pub fn check_acknowledged(
    acked: &[AckedReading],
    streams: &BTreeMap<String, StreamHoldings>,
    v: &mut Verdict,
) {
    let mut listed = 0;
    let empty = StreamHoldings::default();
    for a in acked {
        let s = streams.get(&a.stream).unwrap_or(&empty);
        let held = s.holders.iter().any(|h| {
            h.records
                .get(&a.seq)
                .is_some_and(|r| same_record(r, &a.record))
        });
        if held {
            continue;
        }
        let below_all = !s.holders.is_empty() && s.holders.iter().all(|h| a.seq < h.first_seq);
        if below_all && s.quota_filled {
            v.evicted_by_quota += 1;
            continue;
        }
        v.lost_acknowledged += 1;
        let what: Vec<String> = s
            .holders
            .iter()
            .map(|h| match h.records.get(&a.seq) {
                Some(r) => format!(
                    "{} holds other values {:?} at {}",
                    h.node, r.values, r.ts_ms
                ),
                None if a.seq < h.first_seq => {
                    format!("{} dropped it (first seq {})", h.node, h.first_seq)
                }
                None => format!("{} lacks it (durable head {})", h.node, h.durable_head),
            })
            .collect();
        let detail = if what.is_empty() {
            "acknowledged, and no node holds the stream".to_owned()
        } else {
            format!("acknowledged, held by no replica: {}", what.join("; "))
        };
        v.push(
            &mut listed,
            Violation {
                invariant: "lost_acknowledged".into(),
                stream: a.stream.clone(),
                seq: a.seq,
                at_s: Some(a.at_s),
                detail,
            },
        );
    }
}

/// Checks that the holders of every stream agree over the range each of them holds.
pub fn check_converged(streams: &BTreeMap<String, StreamHoldings>, v: &mut Verdict) {
    let mut listed = 0;
    for (stream, s) in streams {
        if s.holders.len() < 2 {
            continue;
        }
        let from = s.holders.iter().map(|h| h.first_seq).max().unwrap_or(1);
        let to = s.holders.iter().map(|h| h.durable_head).min().unwrap_or(0);
        let mut first_bad: Option<(u64, String)> = None;
        for seq in from..=to {
            let found: Vec<(&str, Option<&Record>)> = s
                .holders
                .iter()
                .map(|h| (h.node.as_str(), h.records.get(&seq)))
                .collect();
            // Ranges that were not read (outside the window checked) are skipped whole.
            if found.iter().all(|(_, r)| r.is_none()) {
                continue;
            }
            let Some(reference) = found.iter().find_map(|(_, r)| *r) else {
                continue;
            };
            let differ: Vec<&str> = found
                .iter()
                .filter(|(_, r)| !r.is_some_and(|r| same_record(r, reference)))
                .map(|(n, _)| *n)
                .collect();
            if !differ.is_empty() {
                first_bad = Some((
                    seq,
                    format!(
                        "{} differ from the other holders (missing or other values) at seq {seq}",
                        differ.join(", ")
                    ),
                ));
                break;
            }
        }
        if let Some((seq, detail)) = first_bad {
            v.replicas_diverged += 1;
            let holders: Vec<String> = s
                .holders
                .iter()
                .map(|h| format!("{} {}..={}", h.node, h.first_seq, h.durable_head))
                .collect();
            v.push(
                &mut listed,
                Violation {
                    invariant: "replicas_diverged".into(),
                    stream: stream.clone(),
                    seq,
                    at_s: None,
                    detail: format!("{detail} (holders {})", holders.join(", ")),
                },
            );
        }
    }
}

/// Checks the cloud against the windows the nodes produced: `produced` maps a stream to its
/// windows (by sequence, up to the cut), `cloud` to what the cloud holds of it, `cloud_counts`
/// to the number of windows the cloud says it holds. `start_ms` turns window times into seconds
/// of the run.
pub fn check_cloud(
    produced: &BTreeMap<String, BTreeMap<u64, Record>>,
    cloud: &BTreeMap<String, BTreeMap<u64, CloudWindow>>,
    cloud_counts: &BTreeMap<String, u64>,
    start_ms: i64,
    v: &mut Verdict,
) {
    let mut listed_missing = 0;
    let mut listed_dup = 0;
    let at = |ts: i64| Some((ts - start_ms) as f64 / 1000.0);
    let empty = BTreeMap::new();
    for (stream, windows) in produced {
        let held = cloud.get(stream).unwrap_or(&empty);
        for (&seq, r) in windows {
            match held.get(&seq) {
                None => {
                    v.cloud_missing += 1;
                    v.push(
                        &mut listed_missing,
                        Violation {
                            invariant: "cloud_missing".into(),
                            stream: stream.clone(),
                            seq,
                            at_s: at(r.ts_ms),
                            detail: "produced by its node, not in the cloud".into(),
                        },
                    );
                }
                Some(w) => {
                    if !same_bits(w.ts_ms, &w.values, r.ts_ms, &r.values) {
                        v.cloud_duplicates += 1;
                        v.push(
                            &mut listed_dup,
                            Violation {
                                invariant: "cloud_duplicates".into(),
                                stream: stream.clone(),
                                seq,
                                at_s: at(r.ts_ms),
                                detail: format!(
                                    "the cloud holds {:?} at {}, the node {:?} at {}",
                                    w.values, w.ts_ms, r.values, r.ts_ms
                                ),
                            },
                        );
                    }
                }
            }
        }
    }
    // A window counted more often than there are distinct sequences was stored twice.
    for (stream, &count) in cloud_counts {
        let distinct = cloud.get(stream).map_or(0, |w| w.len() as u64);
        if count > distinct && cloud.contains_key(stream) {
            let extra = count - distinct;
            v.cloud_duplicates += extra;
            v.push(
                &mut listed_dup,
                Violation {
                    invariant: "cloud_duplicates".into(),
                    stream: stream.clone(),
                    seq: cloud
                        .get(stream)
                        .and_then(|w| w.keys().next().copied())
                        .unwrap_or(0),
                    at_s: None,
                    detail: format!(
                        "the cloud counts {count} windows but holds {distinct} distinct sequences"
                    ),
                },
            );
        }
    }
}

/// Checks the cloud's accepted batches, in acceptance order, for stale terms and for a term
/// with two gateways.
pub fn check_terms(batches: &[AcceptedBatch], v: &mut Verdict) {
    let mut listed = 0;
    let mut order: Vec<&AcceptedBatch> = batches.iter().collect();
    order.sort_by_key(|b| b.accepted);
    let mut highest: Option<(u64, &str)> = None;
    let mut gateways: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for b in order {
        let set = gateways.entry(b.term).or_default();
        let second_gateway = !set.is_empty() && !set.contains(b.gateway.as_str());
        let other = set.iter().next().copied().unwrap_or_default().to_owned();
        set.insert(&b.gateway);
        let stale = highest.is_some_and(|(h, _)| b.term < h);
        if stale || second_gateway {
            v.stale_term_accepted += 1;
            let detail = if stale {
                let (h, hg) = highest.unwrap_or_default();
                format!(
                    "batch {}..={} from {} in term {} accepted (#{}) after term {h} (from {hg})",
                    b.first_seq, b.last_seq, b.gateway, b.term, b.accepted
                )
            } else {
                format!(
                    "batch {}..={} from {} accepted (#{}) in term {}, which {other} also sent batches in",
                    b.first_seq, b.last_seq, b.gateway, b.accepted, b.term
                )
            };
            v.push(
                &mut listed,
                Violation {
                    invariant: "stale_term_accepted".into(),
                    stream: b.stream.clone(),
                    seq: b.first_seq,
                    at_s: None,
                    detail,
                },
            );
        }
        if highest.is_none_or(|(h, _)| b.term > h) {
            highest = Some((b.term, b.gateway.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: i64, x: f64) -> Record {
        Record {
            ts_ms: ts,
            values: vec![x, 1.0],
        }
    }

    fn holding(node: &str, first: u64, seqs: impl IntoIterator<Item = u64>) -> Holding {
        let records: BTreeMap<u64, Record> = seqs
            .into_iter()
            .map(|s| (s, rec(s as i64, s as f64)))
            .collect();
        Holding {
            node: node.into(),
            first_seq: first,
            durable_head: records.keys().last().copied().unwrap_or(0),
            records,
        }
    }

    fn acked(stream: &str, seq: u64) -> AckedReading {
        AckedReading {
            stream: stream.into(),
            seq,
            record: rec(seq as i64, seq as f64),
            at_s: 1.5,
        }
    }

    #[test]
    fn a_reading_deleted_from_every_replica_is_named() {
        let mut streams = BTreeMap::new();
        let mut a = holding("b1", 1, 1..=10);
        let mut b = holding("b2", 1, 1..=10);
        a.records.remove(&7);
        b.records.remove(&7);
        streams.insert(
            "b1/raw/p".to_owned(),
            StreamHoldings {
                holders: vec![a, b],
                quota_filled: false,
            },
        );
        let acks: Vec<AckedReading> = (1..=10).map(|s| acked("b1/raw/p", s)).collect();
        let mut v = Verdict::default();
        check_acknowledged(&acks, &streams, &mut v);
        assert_eq!(v.lost_acknowledged, 1);
        assert_eq!(v.violations[0].stream, "b1/raw/p");
        assert_eq!(v.violations[0].seq, 7);
        assert!(
            v.violations[0].detail.contains("b1 lacks it"),
            "{:?}",
            v.violations
        );
        assert!(!v.passed());
    }

    #[test]
    fn a_reading_on_one_replica_is_not_lost_but_the_replicas_diverge() {
        let mut streams = BTreeMap::new();
        let a = holding("b1", 1, 1..=10);
        let mut b = holding("b2", 1, 1..=10);
        b.records.remove(&4);
        streams.insert(
            "b1/raw/p".to_owned(),
            StreamHoldings {
                holders: vec![a, b],
                quota_filled: false,
            },
        );
        let acks: Vec<AckedReading> = (1..=10).map(|s| acked("b1/raw/p", s)).collect();
        let mut v = Verdict::default();
        check_acknowledged(&acks, &streams, &mut v);
        check_converged(&streams, &mut v);
        assert_eq!(v.lost_acknowledged, 0);
        assert_eq!(v.replicas_diverged, 1);
        assert_eq!(v.violations[0].seq, 4);
        assert!(v.violations[0].detail.contains("b2"));
    }

    #[test]
    fn other_values_are_not_the_acknowledged_reading() {
        let mut h = holding("b1", 1, 1..=3);
        h.records.insert(2, rec(2, 99.0));
        let streams = BTreeMap::from([(
            "s".to_owned(),
            StreamHoldings {
                holders: vec![h],
                quota_filled: false,
            },
        )]);
        let mut v = Verdict::default();
        check_acknowledged(&[acked("s", 2)], &streams, &mut v);
        assert_eq!(v.lost_acknowledged, 1);
        assert!(v.violations[0].detail.contains("other values"));
    }

    #[test]
    fn dropped_by_a_filled_quota_is_allowed_only_there() {
        let h = holding("b1", 5, 5..=10);
        let mut streams = BTreeMap::from([(
            "s".to_owned(),
            StreamHoldings {
                holders: vec![h],
                quota_filled: true,
            },
        )]);
        let mut v = Verdict::default();
        check_acknowledged(&[acked("s", 2)], &streams, &mut v);
        assert_eq!((v.lost_acknowledged, v.evicted_by_quota), (0, 1));
        streams.get_mut("s").expect("stream").quota_filled = false;
        let mut v = Verdict::default();
        check_acknowledged(&[acked("s", 2)], &streams, &mut v);
        assert_eq!(v.lost_acknowledged, 1);
        assert!(v.violations[0].detail.contains("dropped it"));
    }

    #[test]
    fn the_cloud_must_hold_every_window_once_with_the_nodes_values() {
        let produced = BTreeMap::from([(
            "b1/aggregates/all".to_owned(),
            (1..=5)
                .map(|s| (s, rec(1_000 * s as i64, s as f64)))
                .collect(),
        )]);
        let mut held: BTreeMap<u64, CloudWindow> = (1..=5)
            .map(|s| {
                (
                    s,
                    CloudWindow {
                        ts_ms: 1_000 * s as i64,
                        values: vec![s as f64, 1.0],
                    },
                )
            })
            .collect();
        let counts = BTreeMap::from([("b1/aggregates/all".to_owned(), 5)]);
        let mut v = Verdict::default();
        let cloud = BTreeMap::from([("b1/aggregates/all".to_owned(), held.clone())]);
        check_cloud(&produced, &cloud, &counts, 0, &mut v);
        assert!(v.passed(), "{:?}", v.violations);

        held.remove(&3);
        if let Some(w) = held.get_mut(&4) {
            w.values[0] = 40.0;
        }
        let cloud = BTreeMap::from([("b1/aggregates/all".to_owned(), held)]);
        let counts = BTreeMap::from([("b1/aggregates/all".to_owned(), 5)]);
        let mut v = Verdict::default();
        check_cloud(&produced, &cloud, &counts, 0, &mut v);
        assert_eq!(v.cloud_missing, 1);
        // One window with other values, and one counted twice (5 counted, 4 distinct).
        assert_eq!(v.cloud_duplicates, 2);
        assert!(
            v.violations
                .iter()
                .any(|x| x.seq == 3 && x.at_s == Some(3.0))
        );
    }

    fn batch(accepted: u64, term: u64, gateway: &str) -> AcceptedBatch {
        AcceptedBatch {
            accepted,
            stream: "b1/aggregates/all".into(),
            first_seq: accepted,
            last_seq: accepted,
            term,
            gateway: gateway.into(),
        }
    }

    #[test]
    fn an_old_term_accepted_after_a_newer_one_is_named() {
        let mut v = Verdict::default();
        check_terms(
            &[batch(1, 2, "b1"), batch(2, 2, "b1"), batch(3, 3, "b2")],
            &mut v,
        );
        assert!(v.passed());
        let mut v = Verdict::default();
        check_terms(
            &[batch(1, 2, "b1"), batch(2, 3, "b2"), batch(3, 2, "b1")],
            &mut v,
        );
        assert_eq!(v.stale_term_accepted, 1);
        assert!(
            v.violations[0]
                .detail
                .contains("in term 2 accepted (#3) after term 3")
        );
    }

    #[test]
    fn two_gateways_in_one_term_are_named() {
        let mut v = Verdict::default();
        check_terms(&[batch(1, 4, "b1"), batch(2, 4, "b2")], &mut v);
        assert_eq!(v.stale_term_accepted, 1);
        assert!(v.violations[0].detail.contains("b1 also sent"));
    }
}
