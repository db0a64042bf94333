//! Batches: a dense run of one stream's records, the unit the gateway persists, posts and the
//! cloud acknowledges.
//!
//! These derive serde so the node's store can keep them in the durable outbox (a local file
//! format, not the network: the cloud's JSON body is `verge_cloud::api::Batch`, which the driver
//! builds from this one field by field).

use std::fmt;

use serde::{Deserialize, Serialize};
use verge_proto::{NodeId, Record, StreamId};

use crate::error::OutboxDefect;

/// What identifies a batch: the cloud stores each key once, and a resent batch keeps its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchKey {
    /// The stream.
    pub stream: StreamId,
    /// The first sequence number in the batch.
    pub first_seq: u64,
    /// The last sequence number in the batch, inclusive.
    pub last_seq: u64,
}

impl fmt::Display for BatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}..={}]",
            self.stream, self.first_seq, self.last_seq
        )
    }
}

/// A run of one stream's records, dense from `first_seq` to `last_seq`, sent by the gateway of
/// `cluster` during Raft term `term`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The cluster whose gateway sends it; the cloud compares terms within a cluster.
    pub cluster: String,
    /// The Raft term of the gateway that posts it. A batch is posted with the poster's current
    /// term, whatever term it was persisted under, so a new gateway's resend is not fenced.
    pub term: u64,
    /// The node that sends it (kept by the cloud for the record; the term is what fences).
    pub gateway: NodeId,
    /// The stream.
    pub stream: StreamId,
    /// The first sequence number (at least 1).
    pub first_seq: u64,
    /// The last sequence number, inclusive.
    pub last_seq: u64,
    /// `(seq, record)` for every sequence number from `first_seq` to `last_seq`, in order.
    pub windows: Vec<(u64, Record)>,
}

impl Batch {
    /// The batch's key.
    pub fn key(&self) -> BatchKey {
        BatchKey {
            stream: self.stream.clone(),
            first_seq: self.first_seq,
            last_seq: self.last_seq,
        }
    }

    /// How many windows it carries.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether it carries no windows (never true of a batch the core builds).
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Checks that the range is well formed and the windows are exactly `first_seq..=last_seq`.
    ///
    /// # Errors
    ///
    /// [`OutboxDefect::Malformed`] saying what does not match.
    pub fn check(&self) -> Result<(), OutboxDefect> {
        if self.first_seq == 0 || self.last_seq < self.first_seq {
            return Err(OutboxDefect::Malformed(format!(
                "range {}..={}",
                self.first_seq, self.last_seq
            )));
        }
        let expected = self.last_seq - self.first_seq + 1;
        if expected != self.windows.len() as u64 {
            return Err(OutboxDefect::Malformed(format!(
                "range {}..={} holds {} windows",
                self.first_seq,
                self.last_seq,
                self.windows.len()
            )));
        }
        for ((seq, _), want) in self.windows.iter().zip(self.first_seq..) {
            if *seq != want {
                return Err(OutboxDefect::Malformed(format!(
                    "window seq {seq} where {want} was expected"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_proto::StreamKind;

    fn batch(first: u64, seqs: &[u64]) -> Batch {
        let node = NodeId::new("b1").expect("id");
        Batch {
            cluster: "c1".into(),
            term: 1,
            gateway: node.clone(),
            stream: StreamId::new(node, StreamKind::Aggregates, "north").expect("id"),
            first_seq: first,
            last_seq: first + seqs.len().saturating_sub(1) as u64,
            windows: seqs
                .iter()
                .map(|s| {
                    (
                        *s,
                        Record {
                            ts_ms: 0,
                            values: vec![],
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_dense_batch_checks_and_keys_by_range() {
        let b = batch(3, &[3, 4, 5]);
        b.check().expect("dense");
        assert_eq!(b.key().to_string(), "b1/aggregates/north [3..=5]");
    }

    #[test]
    fn damage_is_named() {
        assert!(batch(0, &[0]).check().is_err());
        assert!(batch(3, &[3, 5, 6]).check().is_err());
        let mut b = batch(3, &[3, 4]);
        b.last_seq = 9;
        assert!(b.check().is_err());
        assert!(batch(1, &[]).check().is_err());
    }
}
