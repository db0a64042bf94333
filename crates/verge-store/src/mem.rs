//! [`MemStore`]: the store in memory, for tests and the simulation.
//!
//! It keeps every record as given, behind one mutex, and follows the [`Store`] contract exactly,
//! including the difference between appended and durable: `flush` only moves the durable head,
//! and retention never drops what is not durable. It has nothing to lose on a crash, so it
//! cannot show what a crash loses; the conformance suite's reopen test is for stores on disk.
//! Holders and the epoch are kept beside the streams, each behind its own lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use verge_proto::{NodeId, Record, StreamId};

use crate::plan::{self, Front};
use crate::{
    AppendOutcome, DropReason, RetentionPolicy, RetentionReport, Store, StoreError, StreamInfo,
};

/// A [`Store`] in memory.
#[derive(Debug, Default)]
pub struct MemStore {
    streams: Mutex<BTreeMap<StreamId, MemStream>>,
    holders: Mutex<BTreeMap<StreamId, Vec<NodeId>>>,
    epoch: AtomicU64,
}

#[derive(Debug)]
struct MemStream {
    /// `None` after a reset, until the next record fixes it.
    columns: Option<usize>,
    /// Sequence number of `records[0]`.
    first_seq: u64,
    records: VecDeque<Record>,
    durable_head: u64,
}

impl MemStream {
    fn head(&self) -> u64 {
        self.first_seq + self.records.len() as u64 - 1
    }

    /// What a record costs as [`StreamInfo::bytes`] counts it here: its timestamp and values,
    /// uncompressed.
    fn record_bytes(&self) -> u64 {
        8 * (1 + self.columns.unwrap_or(0) as u64)
    }

    fn bytes(&self) -> u64 {
        self.records.len() as u64 * self.record_bytes()
    }

    /// The oldest record retention may drop: retained and durable.
    fn droppable_front(&self) -> Option<&Record> {
        self.records
            .front()
            .filter(|_| self.first_seq <= self.durable_head)
    }

    fn drop_front(&mut self) {
        self.records.pop_front();
        self.first_seq += 1;
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<StreamId, MemStream>> {
        // A panic elsewhere while holding the lock cannot leave a stream half-updated: every
        // method checks before it changes anything.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemStore {
    fn append(
        &self,
        stream: &StreamId,
        first_seq: u64,
        records: &[Record],
    ) -> Result<AppendOutcome, StoreError> {
        let mut streams = self.lock();
        let existing = streams.get(stream);
        let head = existing.map_or(0, MemStream::head);
        let skip = plan::new_records(
            stream,
            head,
            existing.and_then(|s| s.columns),
            first_seq,
            records,
        )?;
        let fresh = &records[skip..];
        let Some(first) = fresh.first() else {
            return Ok(AppendOutcome {
                appended: 0,
                skipped: skip,
                head,
            });
        };
        let s = streams.entry(stream.clone()).or_insert_with(|| MemStream {
            columns: None,
            first_seq: 1,
            records: VecDeque::new(),
            durable_head: 0,
        });
        s.columns.get_or_insert(first.values.len());
        s.records.extend(fresh.iter().cloned());
        Ok(AppendOutcome {
            appended: fresh.len(),
            skipped: skip,
            head: s.head(),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        for s in self.lock().values_mut() {
            s.durable_head = s.head();
        }
        Ok(())
    }

    fn head(&self, stream: &StreamId) -> u64 {
        self.lock().get(stream).map_or(0, MemStream::head)
    }

    fn durable_head(&self, stream: &StreamId) -> u64 {
        self.lock().get(stream).map_or(0, |s| s.durable_head)
    }

    fn read(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Record)>, StoreError> {
        let streams = self.lock();
        let Some(s) = streams.get(stream) else {
            return Ok(Vec::new());
        };
        let from = from.max(s.first_seq);
        let to = to.min(s.head());
        if from > to {
            return Ok(Vec::new());
        }
        let skip = usize::try_from(from - s.first_seq).unwrap_or(usize::MAX);
        Ok((from..=to)
            .zip(s.records.iter().skip(skip))
            .take(limit)
            .map(|(seq, r)| (seq, r.clone()))
            .collect())
    }

    fn streams(&self) -> Vec<StreamInfo> {
        self.lock()
            .iter()
            .map(|(id, s)| StreamInfo {
                id: id.clone(),
                first_seq: s.first_seq,
                head: s.head(),
                durable_head: s.durable_head,
                columns: s.columns.unwrap_or(0),
                bytes: s.bytes(),
            })
            .collect()
    }

    fn enforce(
        &self,
        policy: &RetentionPolicy,
        now_ms: i64,
    ) -> Result<RetentionReport, StoreError> {
        let mut streams = self.lock();
        let mut report = RetentionReport::default();
        for (id, s) in streams.iter_mut() {
            let Some(cutoff) = policy.cutoff_ms(id.kind, now_ms) else {
                continue;
            };
            while s.droppable_front().is_some_and(|r| r.ts_ms < cutoff) {
                s.drop_front();
                report.add(id.kind, DropReason::Age, 1, s.record_bytes());
            }
        }

        let mut bytes: u64 = streams.values().map(MemStream::bytes).sum();
        if let Some(bytes_max) = policy.bytes_max {
            while bytes > bytes_max {
                let candidates = streams.iter().filter_map(|(id, s)| {
                    let front = s.droppable_front()?;
                    Some((
                        id,
                        Front {
                            kind: id.kind,
                            ts_ms: front.ts_ms,
                        },
                    ))
                });
                let Some(victim) = plan::quota_victim(candidates).cloned() else {
                    break;
                };
                let Some(s) = streams.get_mut(&victim) else {
                    break;
                };
                s.drop_front();
                bytes -= s.record_bytes();
                report.add(victim.kind, DropReason::Quota, 1, s.record_bytes());
            }
            report.bytes_over_quota = bytes.saturating_sub(bytes_max);
        }
        report.bytes = bytes;
        Ok(report)
    }

    fn set_holders(&self, stream: &StreamId, holders: &[NodeId]) -> Result<(), StoreError> {
        let mut all = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.is_empty() {
            all.remove(stream);
        } else {
            all.insert(stream.clone(), holders.to_vec());
        }
        Ok(())
    }

    fn streams_with_holders(&self) -> Vec<StreamId> {
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn holders(&self, stream: &StreamId) -> Vec<NodeId> {
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }

    fn bump_epoch(&self) -> Result<u64, StoreError> {
        Ok(self.epoch.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn reset(&self, stream: &StreamId, next_seq: u64) -> Result<(), StoreError> {
        plan::check_reset(stream, next_seq)?;
        self.lock().insert(
            stream.clone(),
            MemStream {
                columns: None,
                first_seq: next_seq,
                records: VecDeque::new(),
                durable_head: next_seq - 1,
            },
        );
        Ok(())
    }
}
