//! Decisions every [`Store`](crate::Store) implementation makes the same way, kept free of IO so
//! they are tested once: which part of an append is new, and which stream gives up records next
//! when the store is over its quota; and, for the sled store, which streams a flush compacts.

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

/// Whether a flush merges a stream's run of trailing small blocks, and its pending records, into
/// full blocks (see [`SledStore`](crate::SledStore)'s module docs).
///
/// `flush` counts the store's flushes, `slot` is the stream's place in the store's order,
/// `small_blocks` the length of its run of small blocks before this flush and `pending` its
/// records this flush seals. Each stream compacts on its own turn, once every
/// `TAIL_BLOCKS_MAX` flushes, when there is more than one small block to merge: streams filled
/// in step (a producer writing to every sensor's stream at once) take turns, so a flush merges
/// the runs of about one stream in `TAIL_BLOCKS_MAX` instead of all of them every
/// `TAIL_BLOCKS_MAX`th flush, and the flush that acknowledges producers stays short. A stream
/// compacts out of turn only when it must: its run is already `TAIL_BLOCKS_MAX` long (after
/// a reopen, or when a new stream moved its slot), or this flush seals a full block's worth of
/// records of its own, which cannot follow small blocks (a stream's small blocks are only ever
/// at its end).
pub(crate) fn compacts(
    flush: u64,
    slot: usize,
    small_blocks: usize,
    pending: usize,
    tail_blocks_max: usize,
    block_records_max: usize,
) -> bool {
    if small_blocks == 0 {
        return false;
    }
    if small_blocks >= tail_blocks_max || pending >= block_records_max {
        return true;
    }
    let period = tail_blocks_max.max(1) as u64;
    let turn = (flush % period + slot as u64 % period).is_multiple_of(period);
    turn && small_blocks + usize::from(pending > 0) >= 2
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

    /// Streams filled in step, as a paced producer fills every sensor's stream at each flush.
    fn in_step(streams: usize, flushes: u64, pending: usize) -> (usize, usize) {
        const TAIL: usize = 16;
        const BLOCK: usize = 1024;
        // (small blocks, records in them) per stream.
        let mut tails = vec![(0usize, 0usize); streams];
        let (mut most_per_flush, mut longest) = (0, 0);
        for flush in 0..flushes {
            let mut merged = 0;
            for (slot, (blocks, records)) in tails.iter_mut().enumerate() {
                if compacts(flush, slot, *blocks, pending, TAIL, BLOCK) {
                    merged += 1;
                    let all = *records + pending;
                    *records = all % BLOCK;
                    *blocks = usize::from(*records > 0);
                } else if pending >= BLOCK {
                    *records = pending % BLOCK;
                    *blocks = usize::from(*records > 0);
                } else {
                    *blocks += 1;
                    *records += pending;
                }
                longest = longest.max(*blocks);
            }
            most_per_flush = most_per_flush.max(merged);
        }
        (most_per_flush, longest)
    }

    #[test]
    fn streams_filled_in_step_take_turns_to_compact() {
        // 64 streams, 3 records each per flush: 4 merges per flush, never all 64 at once.
        assert_eq!(in_step(64, 1_000, 3), (4, 16));
        assert_eq!(in_step(16, 1_000, 62), (1, 16));
        assert_eq!(in_step(1, 1_000, 1_000), (1, 16));
        // A flush bringing full blocks merges the run it follows at once.
        assert_eq!(in_step(8, 100, 1_500).1, 1);
    }

    #[test]
    fn compaction_out_of_turn_only_when_it_must() {
        // Nothing to merge, or a single small block.
        assert!(!compacts(0, 0, 0, 3, 16, 1024));
        assert!(!compacts(0, 0, 1, 0, 16, 1024));
        assert!(compacts(0, 0, 1, 3, 16, 1024));
        // Not its turn.
        assert!(!compacts(1, 0, 15, 3, 16, 1024));
        assert!(compacts(15, 1, 15, 3, 16, 1024));
        // A run at the limit, or a full block of its own.
        assert!(compacts(1, 0, 16, 0, 16, 1024));
        assert!(compacts(1, 0, 1, 1024, 16, 1024));
        // Far-off counters and slots do not overflow.
        assert!(compacts(u64::MAX, 1, 2, 0, 16, 1024));
    }
}
