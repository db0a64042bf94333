//! The one error type of the store, worded for the operator who reads it in a log.

use std::path::PathBuf;

use thiserror::Error;
use verge_proto::StreamId;

use crate::{COLUMNS_MAX, HEAD_MAX};

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Records were offered starting past the stream's head + 1, which would leave a hole in its
    /// sequence numbers. Retryable: the sender must first send what is missing (a replica catches
    /// up from `head + 1`).
    #[error(
        "stream {stream}: records from seq {first_seq} would leave a gap after head {head}; \
         send from seq {} first",
        head + 1
    )]
    Gap {
        /// The stream.
        stream: StreamId,
        /// The stream's head when the append was refused.
        head: u64,
        /// The first sequence number offered.
        first_seq: u64,
    },
    /// A record's number of values differs from the stream's columns, which its first record
    /// fixed for good. Nothing of the append was stored; the producer is at fault.
    #[error(
        "stream {stream}: record seq {seq} has {found} values but the stream has {expected} \
         columns; a stream's columns never change"
    )]
    Columns {
        /// The stream.
        stream: StreamId,
        /// The offending record's sequence number.
        seq: u64,
        /// The stream's column count.
        expected: usize,
        /// The record's value count.
        found: usize,
    },
    /// A record has more values than any stream may have. Nothing of the append was stored.
    #[error(
        "stream {stream}: record seq {seq} has {found} values, more than the {COLUMNS_MAX} a stream may have"
    )]
    ColumnsMax {
        /// The stream.
        stream: StreamId,
        /// The offending record's sequence number.
        seq: u64,
        /// The record's value count.
        found: usize,
    },
    /// A reset asked to restart a stream at a sequence number no stream can continue at: 0, or
    /// past [`HEAD_MAX`] + 1. Nothing was changed; the caller (or the peer that sent the
    /// sequence number) is at fault.
    #[error(
        "stream {stream}: cannot restart it at seq {next_seq}; sequence numbers run from 1 to {}",
        HEAD_MAX + 1
    )]
    ResetSeq {
        /// The stream.
        stream: StreamId,
        /// The sequence number asked for.
        next_seq: u64,
    },
    /// The store's directory could not be opened: it is missing and cannot be created, is not a
    /// directory, cannot be read, is locked by another process, holds something other than a
    /// Verge store, or its data is damaged. The node cannot start on it.
    #[error("cannot open the store in {path}: {detail}")]
    Open {
        /// The store's directory.
        path: PathBuf,
        /// What was wrong, and what to do about it.
        detail: String,
    },
    /// Reading or writing the store's files failed on a store that was open (disk full, I/O
    /// error). Retryable: nothing appended was lost, and a later flush may succeed.
    #[error("the store in {path} could not {action}: {source}")]
    Disk {
        /// The store's directory.
        path: PathBuf,
        /// What the store was doing.
        action: &'static str,
        /// The storage engine's or the file system's error. Boxed so that no engine type is
        /// part of the store's API.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored block is damaged (a torn write, a bad disk, a storage engine bug). The records it
    /// held cannot be served from this node; the rest of the store still works.
    #[error(
        "stream {stream}: the data at seq {seq} is damaged ({detail}); serve it from a replica"
    )]
    Corrupt {
        /// The stream.
        stream: StreamId,
        /// The first sequence number of the damaged block.
        seq: u64,
        /// What is wrong with it.
        detail: String,
    },
}

impl StoreError {
    /// Whether the same call may succeed later: a gap once the missing records arrive, a disk
    /// error once the disk recovers. Everything else needs a person or a different input.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Gap { .. } | StoreError::Disk { .. })
    }
}
