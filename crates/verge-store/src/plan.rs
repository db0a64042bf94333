//! Decisions every [`Store`](crate::Store) implementation makes the same way, kept free of IO so
//! they are tested once: which part of an append is new, and which stream gives up records next
//! when the store is over its quota.

use verge_proto::{Record, StreamId, StreamKind};

use crate::{COLUMNS_MAX, HEAD_MAX, StoreError};

/// Checks an append against the stream's `head` and `columns` (`None` for a new stream) and
/// returns how many leading records are already stored and must be skipped.
///
/// Records get sequence numbers `first_seq..`; those at or below `head` are re-deliveries. The
/// rest must all have the stream's column count, or the first new record's for a new stream.
pub(crate) fn new_records(
    stream: &StreamId,
    head: u64,
    columns: Option<usize>,
    first_seq: u64,
    records: &[Record],
) -> Result<usize, StoreError> {
    if first_seq > head + 1 {
        return Err(StoreError::Gap {
            stream: stream.clone(),
            head,
            first_seq,
        });
    }
    let skip =
        usize::try_from(head + 1 - first_seq).map_or(records.len(), |s| s.min(records.len()));
    let fresh = &records[skip..];
    let Some(expected) = columns.or_else(|| fresh.first().map(|r| r.values.len())) else {
        return Ok(skip);
    };
    for (i, record) in fresh.iter().enumerate() {
        let seq = head + 1 + i as u64;
        let found = record.values.len();
        if found > COLUMNS_MAX {
            return Err(StoreError::ColumnsMax {
                stream: stream.clone(),
                seq,
                found,
            });
        }
        if found != expected {
            return Err(StoreError::Columns {
                stream: stream.clone(),
                seq,
                expected,
                found,
            });
        }
    }
    Ok(skip)
}

/// Checks that a stream can be restarted at `next_seq`: its head becomes `next_seq - 1`.
pub(crate) fn check_reset(stream: &StreamId, next_seq: u64) -> Result<(), StoreError> {
    if next_seq == 0 || next_seq - 1 > HEAD_MAX {
        return Err(StoreError::ResetSeq {
            stream: stream.clone(),
            next_seq,
        });
    }
    Ok(())
}

/// The oldest record a stream can give up, as seen by the quota.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Front {
    /// The stream's kind: raw goes first, aggregates last.
    pub kind: StreamKind,
    /// The event time of the stream's first droppable record.
    pub ts_ms: i64,
}

/// Picks the stream that gives up its oldest records next under the quota: the first kind in
/// [`StreamKind`]'s order that has droppable records, and within it the oldest front. Ties go to
/// the first candidate, so callers iterate in a stable order.
pub(crate) fn quota_victim<K>(candidates: impl IntoIterator<Item = (K, Front)>) -> Option<K> {
    candidates
        .into_iter()
        .min_by_key(|(_, front)| (front.kind, front.ts_ms))
        .map(|(key, _)| key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> StreamId {
        "b1/raw/s".parse().expect("valid id")
    }

    fn records(columns: &[usize]) -> Vec<Record> {
        columns
            .iter()
            .map(|&c| Record {
                ts_ms: 0,
                values: vec![1.0; c],
            })
            .collect()
    }

    #[test]
    fn appends_skip_what_is_stored_and_refuse_gaps() {
        let three = records(&[2, 2, 2]);
        assert_eq!(new_records(&id(), 0, None, 1, &three).ok(), Some(0));
        assert_eq!(new_records(&id(), 2, Some(2), 1, &three).ok(), Some(2));
        assert_eq!(new_records(&id(), 3, Some(2), 3, &three).ok(), Some(1));
        assert_eq!(new_records(&id(), 9, Some(2), 1, &three).ok(), Some(3));
        assert_eq!(
            new_records(&id(), u64::MAX - 1, Some(2), 0, &three).ok(),
            Some(3)
        );
        assert!(matches!(
            new_records(&id(), 2, Some(2), 4, &three),
            Err(StoreError::Gap {
                head: 2,
                first_seq: 4,
                ..
            })
        ));
    }

    #[test]
    fn columns_are_checked_on_new_records_only() {
        // The skipped record has the wrong width; it is a re-delivery and not looked at.
        assert_eq!(
            new_records(&id(), 1, Some(2), 1, &records(&[5, 2])).ok(),
            Some(1)
        );
        assert!(matches!(
            new_records(&id(), 0, None, 1, &records(&[2, 3])),
            Err(StoreError::Columns {
                seq: 2,
                expected: 2,
                found: 3,
                ..
            })
        ));
        assert!(matches!(
            new_records(&id(), 0, None, 1, &records(&[COLUMNS_MAX + 1])),
            Err(StoreError::ColumnsMax { seq: 1, .. })
        ));
    }

    #[test]
    fn the_quota_takes_raw_before_results_before_aggregates_then_the_oldest() {
        let front = |kind, ts_ms| Front { kind, ts_ms };
        let victim = quota_victim([
            ("agg", front(StreamKind::Aggregates, 0)),
            ("res", front(StreamKind::Results, 5)),
            ("raw-new", front(StreamKind::Raw, 9)),
            ("raw-old", front(StreamKind::Raw, 7)),
        ]);
        assert_eq!(victim, Some("raw-old"));
        assert_eq!(quota_victim::<&str>([]), None);
    }
}
