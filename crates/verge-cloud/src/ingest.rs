//! The ingest decision, without IO: given what the cloud already holds for a checked batch,
//! what to answer and what to write.
//!
//! The order of the checks is the contract. **Fencing first:** a term below the highest the
//! cluster has had accepted is refused even for a key the cloud already holds, so a deposed
//! gateway hears that it is deposed rather than a reassuring "duplicate". **Then the key:** a key
//! already stored is acknowledged and nothing is written but a higher term. **Then each window:**
//! windows already held (from a batch cut differently) are counted as duplicates and kept as
//! they were; only the others are written.
//!
//! [`Fence::AcceptStale`] (the `accept-stale` fault, for testing checkers) skips the fencing
//! step only: a stale batch then goes on to the key and window checks as if its term were
//! current, but never raises the cluster's term.

use std::collections::BTreeMap;

use crate::api::{Batch, Window};

/// What the store holds that bears on one batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// The highest term accepted for the batch's cluster, if any.
    pub highest_term: Option<u64>,
    /// Whether the batch's key is already stored.
    pub key_stored: bool,
    /// The windows of the batch's range the store already holds, by sequence number.
    pub held: BTreeMap<u64, Window>,
}

/// Whether the term fence is enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fence {
    /// Refuse a term below the cluster's highest: the cloud's contract.
    #[default]
    Enforce,
    /// Let a stale term through as though it were current (a deliberately broken cloud, only
    /// under the `accept-stale` fault): the batch is stored with its own term, and the
    /// cluster's highest term is left as it was.
    AcceptStale,
}

/// What to do with a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Refuse: the term is stale. Nothing is written.
    Stale {
        /// The batch's term.
        term: u64,
        /// The highest accepted for the cluster.
        highest: u64,
    },
    /// Acknowledge a key already stored; write only the term if it is higher.
    Duplicate {
        /// Record the batch's term as the cluster's highest.
        raise_term: bool,
    },
    /// Store the key and the windows not yet held.
    Store {
        /// Indices into `batch.windows` of the windows to write.
        new: Vec<usize>,
        /// Windows already held.
        duplicates: u64,
        /// Held windows whose time or values differ from the batch's: a stream has one writer,
        /// so this is a bug upstream; the held window is kept and the difference reported.
        conflicts: Vec<u64>,
        /// Record the batch's term as the cluster's highest.
        raise_term: bool,
        /// Under [`Fence::AcceptStale`], when the batch's term is stale: the cluster's highest
        /// term, which would have refused it. `None` for a batch the fence lets through.
        stale_over: Option<u64>,
    },
}

/// Decides what to do with `batch` (already checked) given what the store holds, with the term
/// fence enforced.
pub fn decide(batch: &Batch, seen: &Seen) -> Decision {
    decide_with(batch, seen, Fence::Enforce)
}

/// Like [`decide`], with the term fence as `fence` says.
pub fn decide_with(batch: &Batch, seen: &Seen, fence: Fence) -> Decision {
    let stale_over = seen.highest_term.filter(|&h| batch.term < h);
    if let Some(highest) = stale_over
        && fence == Fence::Enforce
    {
        return Decision::Stale {
            term: batch.term,
            highest,
        };
    }
    let raise_term = seen.highest_term.is_none_or(|h| batch.term > h);
    if seen.key_stored {
        return Decision::Duplicate { raise_term };
    }
    let mut new = Vec::with_capacity(batch.windows.len());
    let mut conflicts = Vec::new();
    for (i, w) in batch.windows.iter().enumerate() {
        match seen.held.get(&w.seq) {
            None => new.push(i),
            Some(h) if same_window(h, w) => {}
            Some(_) => conflicts.push(w.seq),
        }
    }
    let duplicates = (batch.windows.len() - new.len()) as u64;
    Decision::Store {
        new,
        duplicates,
        conflicts,
        raise_term,
        stale_over,
    }
}

/// Bit-for-bit equality, so `-0.0` and `0.0` differ and a resent window always matches itself.
fn same_window(a: &Window, b: &Window) -> bool {
    a.ts_ms == b.ts_ms
        && a.values.len() == b.values.len()
        && a.values
            .iter()
            .zip(&b.values)
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(term: u64, first: u64, last: u64) -> Batch {
        Batch {
            cluster: "c1".into(),
            term,
            gateway: "b1".into(),
            stream: "b1/aggregates/a".into(),
            first_seq: first,
            last_seq: last,
            windows: (first..=last).map(window).collect(),
        }
    }

    fn window(seq: u64) -> Window {
        Window {
            seq,
            ts_ms: seq as i64,
            values: vec![seq as f64],
        }
    }

    #[test]
    fn a_fresh_batch_is_stored_whole_and_sets_the_term() {
        let d = decide(&batch(1, 1, 3), &Seen::default());
        assert_eq!(
            d,
            Decision::Store {
                new: vec![0, 1, 2],
                duplicates: 0,
                conflicts: vec![],
                raise_term: true,
                stale_over: None
            }
        );
    }

    #[test]
    fn fencing_comes_before_the_duplicate_check() {
        let seen = Seen {
            highest_term: Some(5),
            key_stored: true,
            held: BTreeMap::new(),
        };
        assert_eq!(
            decide(&batch(4, 1, 3), &seen),
            Decision::Stale {
                term: 4,
                highest: 5
            }
        );
        assert_eq!(
            decide(&batch(5, 1, 3), &seen),
            Decision::Duplicate { raise_term: false }
        );
        assert_eq!(
            decide(&batch(6, 1, 3), &seen),
            Decision::Duplicate { raise_term: true }
        );
    }

    #[test]
    fn accept_stale_skips_only_the_fence() {
        let seen = Seen {
            highest_term: Some(5),
            key_stored: false,
            held: [2].into_iter().map(|s| (s, window(s))).collect(),
        };
        assert_eq!(
            decide_with(&batch(3, 1, 3), &seen, Fence::AcceptStale),
            Decision::Store {
                new: vec![0, 2],
                duplicates: 1,
                conflicts: vec![],
                raise_term: false,
                stale_over: Some(5)
            }
        );
        // A current term is decided as usual.
        assert_eq!(
            decide_with(&batch(6, 1, 3), &seen, Fence::AcceptStale),
            decide(&batch(6, 1, 3), &seen)
        );
        // A stale key already held is a duplicate, and raises nothing.
        let held = Seen {
            key_stored: true,
            ..seen
        };
        assert_eq!(
            decide_with(&batch(3, 1, 3), &held, Fence::AcceptStale),
            Decision::Duplicate { raise_term: false }
        );
    }

    #[test]
    fn overlapping_windows_are_counted_not_rewritten() {
        let seen = Seen {
            highest_term: Some(2),
            key_stored: false,
            held: [2, 3].into_iter().map(|s| (s, window(s))).collect(),
        };
        assert_eq!(
            decide(&batch(2, 1, 4), &seen),
            Decision::Store {
                new: vec![0, 3],
                duplicates: 2,
                conflicts: vec![],
                raise_term: false,
                stale_over: None
            }
        );
    }

    #[test]
    fn a_held_window_that_differs_is_kept_and_reported() {
        let mut other = window(2);
        other.values[0] = -1.0;
        let seen = Seen {
            highest_term: None,
            key_stored: false,
            held: [(2, other)].into_iter().collect(),
        };
        let Decision::Store {
            new,
            duplicates,
            conflicts,
            ..
        } = decide(&batch(1, 1, 3), &seen)
        else {
            panic!("stored");
        };
        assert_eq!((new, duplicates, conflicts), (vec![0, 2], 1, vec![2]));
    }
}
