//! Verge's stream store: append-only streams with dense sequence numbers, kept durably under a
//! node's data dir in compressed blocks, with retention by age and a byte quota.
//!
//! This crate owns the [`Store`] trait and its two implementations, [`MemStore`] (tests and the
//! simulation) and [`SledStore`] (sled on disk, blocks compressed with the [`gorilla`] codec), the
//! decisions they share (which part of an append is new, which stream gives up records under
//! the quota), and the conformance suite both pass ([`testing::conformance`]).
//!
//! It is synchronous and does no networking: the node's StoreActor drives it, deciding when to
//! flush (group commit: many appends, one [`Store::flush`], then acknowledge them all) and when
//! to enforce retention. It does not replicate, acknowledge producers, place replicas, or know
//! what a stream's columns mean; `verge-replica` and `verge-node` do.
//!
//! Besides records it keeps what the replication core must find again after a restart: each
//! stream's holders ([`Store::set_holders`]) and the node's epoch ([`Store::bump_epoch`]); and it
//! lets a replica restart its copy of a stream further on ([`Store::reset`]).
//!
//! **Invariant:** a stream's sequence numbers are dense from 1 (or from where a
//! [`Store::reset`] restarted it) and never reused; retention only moves its first retained
//! sequence number up.
//! **Invariant:** what [`Store::flush`] returned `Ok` for survives a crash; retention never drops
//! a record that is not yet durable. [`Store::set_holders`], [`Store::bump_epoch`] and
//! [`Store::reset`] are durable when they return `Ok`, and make no appended record durable.

pub mod error;
pub mod gorilla;
pub mod mem;
mod plan;
pub mod sled_store;
#[doc(hidden)]
pub mod testing;

use std::fmt;

use verge_proto::{NodeId, Record, StreamId, StreamKind};

pub use error::StoreError;
pub use mem::MemStore;
pub use sled_store::SledStore;

/// The most values a record may carry.
pub const COLUMNS_MAX: usize = 64;

/// The highest head a stream may have: [`Store::reset`] refuses to restart a stream past it (a
/// head anywhere near `u64::MAX` is a bug or damage, not 2^63 appends).
pub const HEAD_MAX: u64 = u64::MAX / 2;

/// A store of append-only streams, each with one writer and dense sequence numbers from 1.
///
/// Every method takes `&self`: implementations lock internally, so one store can be shared by
/// the actor that writes it and the tasks that read it.
pub trait Store: Send + Sync + fmt::Debug {
    /// Appends `records` to `stream` as sequence numbers `first_seq`, `first_seq + 1`, …
    ///
    /// Records at or below the stream's head are skipped, so a replica can take a re-delivered
    /// batch. The first record of a new stream fixes its column count. Appended records can be
    /// read at once but are not durable until [`Store::flush`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Gap`] if `first_seq > head + 1`; [`StoreError::Columns`] or
    /// [`StoreError::ColumnsMax`] if a new record has the wrong number of values. Nothing is
    /// appended when an error is returned.
    fn append(
        &self,
        stream: &StreamId,
        first_seq: u64,
        records: &[Record],
    ) -> Result<AppendOutcome, StoreError>;

    /// Makes everything appended before the call durable (one fsync for all streams). Appends
    /// made by other threads while it runs may wait for the next flush.
    ///
    /// # Errors
    ///
    /// [`StoreError::Disk`] if the write or the sync failed; the records stay appended and a
    /// later flush retries them.
    fn flush(&self) -> Result<(), StoreError>;

    /// The highest sequence number appended to `stream`, 0 if none.
    fn head(&self, stream: &StreamId) -> u64;

    /// The highest sequence number of `stream` made durable by [`Store::flush`], 0 if none.
    fn durable_head(&self, stream: &StreamId) -> u64;

    /// Up to `limit` records of `stream` with sequence numbers in `from..=to`, in order, each with
    /// its sequence number. Sequence numbers outside what is retained are not an error; they are
    /// simply not there.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] if a block in the range is damaged, [`StoreError::Disk`] if it
    /// cannot be read.
    fn read(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Record)>, StoreError>;

    /// Every stream the store holds, in stream id order.
    fn streams(&self) -> Vec<StreamInfo>;

    /// Drops records by age (per kind) and, while the store is over its byte quota, the oldest
    /// durable records: raw first, then results, then aggregates. `now_ms` is the current time
    /// in milliseconds since the Unix epoch.
    ///
    /// # Errors
    ///
    /// [`StoreError::Disk`] or [`StoreError::Corrupt`] if stored data could not be read or
    /// removed; what was dropped before the error stays dropped.
    fn enforce(&self, policy: &RetentionPolicy, now_ms: i64)
    -> Result<RetentionReport, StoreError>;

    /// Records that `holders` may hold records of `stream`, replacing what was recorded before,
    /// durably by the time it returns `Ok` (without waiting for [`Store::flush`], and without
    /// making any appended record durable). The stream need not have records; recording holders
    /// does not create it in [`Store::streams`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Disk`] if the write or the sync failed: [`Store::holders`] may then return
    /// the old or the new holders, and either may be what survives a crash.
    fn set_holders(&self, stream: &StreamId, holders: &[NodeId]) -> Result<(), StoreError>;

    /// The holders last recorded for `stream` by [`Store::set_holders`], in the order given;
    /// empty if none were.
    fn holders(&self, stream: &StreamId) -> Vec<NodeId>;

    /// Every stream with holders recorded, in stream id order, whether or not it has records (a
    /// restarted owner must find a stream whose first records reached a replica before its own
    /// disk).
    fn streams_with_holders(&self) -> Vec<StreamId>;

    /// Increments the node's epoch counter and returns the new value, durably by the time it
    /// returns `Ok` (without making any appended record durable). 1 on a new store; every value
    /// returned is higher than any returned before, across reopens.
    ///
    /// # Errors
    ///
    /// [`StoreError::Disk`] if the write or the sync failed; the value was not handed out, and the
    /// next call still returns a higher one than any before.
    fn bump_epoch(&self) -> Result<u64, StoreError>;

    /// Discards every record of `stream`, durable or not, and restarts it empty at `next_seq`:
    /// afterwards its head and durable head are `next_seq - 1`, its first retained sequence
    /// number is `next_seq`, and the next append must start at `next_seq` (records below it are
    /// skipped as re-deliveries). Its next record fixes its column count afresh. A stream the
    /// store does not hold yet is created empty. Durable by the time it returns `Ok`, without
    /// making any other stream's appended records durable; the stream's holders stay.
    ///
    /// For a replica whose owner no longer retains what lies between the copy's head and
    /// `next_seq`.
    ///
    /// # Errors
    ///
    /// [`StoreError::ResetSeq`] if `next_seq` is 0 or above [`HEAD_MAX`]` + 1` (nothing changes);
    /// [`StoreError::Disk`] if the write or the sync failed, after which the stream may or may not
    /// have been reset, and the reset may not survive a crash.
    fn reset(&self, stream: &StreamId, next_seq: u64) -> Result<(), StoreError>;
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Records newly appended.
    pub appended: usize,
    /// Records skipped because the stream already had their sequence numbers.
    pub skipped: usize,
    /// The stream's head after the append.
    pub head: u64,
}

/// One stream as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream.
    pub id: StreamId,
    /// The first sequence number still retained; `head + 1` when retention dropped everything.
    pub first_seq: u64,
    /// The highest sequence number appended.
    pub head: u64,
    /// The highest sequence number made durable.
    pub durable_head: u64,
    /// Values per record; 0 also while a stream [`Store::reset`] emptied awaits the record that
    /// fixes it.
    pub columns: usize,
    /// Approximate bytes the retained records take, and what the quota counts: for
    /// [`SledStore`], the keys and compressed blocks of flushed records (not sled's own overhead,
    /// see [`SledStore::disk_bytes`]); for [`MemStore`], every record uncompressed.
    pub bytes: u64,
}

/// How long each kind of stream keeps its records, and how many bytes the whole store may hold.
///
/// The default keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Age after which raw readings are dropped, in milliseconds; `None` keeps them.
    pub raw_ms: Option<u64>,
    /// Age after which results are dropped, in milliseconds; `None` keeps them.
    pub results_ms: Option<u64>,
    /// Age after which aggregates are dropped, in milliseconds; `None` keeps them.
    pub aggregates_ms: Option<u64>,
    /// Bytes the store may hold (as [`StreamInfo::bytes`] counts them); `None` for no quota.
    pub bytes_max: Option<u64>,
}

impl RetentionPolicy {
    /// Records of `kind` with an event time before this are old enough to drop, if `kind` has a
    /// retention age.
    pub fn cutoff_ms(&self, kind: StreamKind, now_ms: i64) -> Option<i64> {
        let age_ms = match kind {
            StreamKind::Raw => self.raw_ms,
            StreamKind::Results => self.results_ms,
            StreamKind::Aggregates => self.aggregates_ms,
        }?;
        Some(now_ms.saturating_sub(i64::try_from(age_ms).unwrap_or(i64::MAX)))
    }
}

/// What one [`Store::enforce`] dropped, per kind, for the node to log and count.
#[derive(Debug, Default)]
pub struct RetentionReport {
    /// Indexed by kind in [`StreamKind`]'s order.
    dropped: [Dropped; 3],
    /// Bytes the store holds afterwards.
    pub bytes: u64,
    /// How far the store is still over its quota afterwards, 0 if within it. Non-zero when what
    /// is left cannot be dropped: not yet durable, or behind a damaged block.
    pub bytes_over_quota: u64,
    /// One [`StoreError::Corrupt`] per stream whose retention stopped at a damaged block; the rest
    /// of the store was enforced.
    pub damaged: Vec<StoreError>,
}

impl RetentionReport {
    /// What was dropped from streams of `kind`.
    pub fn dropped(&self, kind: StreamKind) -> Dropped {
        self.dropped[kind as usize]
    }

    /// Whether nothing was dropped.
    pub fn is_empty(&self) -> bool {
        self.dropped.iter().all(|d| *d == Dropped::default())
    }

    fn is_damaged(&self, stream: &StreamId) -> bool {
        self.damaged
            .iter()
            .any(|e| matches!(e, StoreError::Corrupt { stream: s, .. } if s == stream))
    }

    fn add(&mut self, kind: StreamKind, reason: DropReason, records: u64, bytes: u64) {
        let dropped = &mut self.dropped[kind as usize];
        match reason {
            DropReason::Age => dropped.by_age += records,
            DropReason::Quota => dropped.by_quota += records,
        }
        dropped.bytes += bytes;
    }
}

/// Records dropped from streams of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Records older than the kind's retention age.
    pub by_age: u64,
    /// Records dropped to bring the store within its quota.
    pub by_quota: u64,
    /// Bytes freed, as [`StreamInfo::bytes`] counts them.
    pub bytes: u64,
}

/// Why records were dropped.
#[derive(Debug, Clone, Copy)]
enum DropReason {
    Age,
    Quota,
}
