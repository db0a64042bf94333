//! What can go wrong in the sync core.
//!
//! [`ConfigError`] stops the core from being built. Everything else is a [`SyncWarning`]: the core
//! has already dealt with it (ignored a stale event, discarded a damaged outbox entry) and hands
//! it back as [`SyncAction::Warning`](crate::SyncAction::Warning) for the driver to log and count.
//! Failures of the cloud or the store are not errors here: they arrive as events
//! ([`CloudOutcome`](crate::CloudOutcome), `ReadFailed`) and the core retries them.

use verge_proto::{IdError, StreamId};

use crate::BatchKey;

/// Sync settings that do not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The cluster name is not a DNS label.
    #[error("cluster name: {0}")]
    Cluster(IdError),
    /// A bound is zero or above its ceiling.
    #[error("{name} is {value}; it must be between 1 and {max}")]
    Bound {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: u64,
        /// Its ceiling.
        max: u64,
    },
    /// The retry delays are the wrong way round.
    #[error("retry_ms_max ({retry_ms_max}) must be at least retry_ms_min ({retry_ms_min})")]
    Retry {
        /// The configured first delay.
        retry_ms_min: u64,
        /// The configured longest delay.
        retry_ms_max: u64,
    },
}

/// Why a batch loaded from the outbox cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxDefect {
    /// It was written for another cluster (the node's cluster name changed).
    #[error("it belongs to cluster `{0}`")]
    OtherCluster(String),
    /// Its range and its windows disagree: damaged on disk or written by something else.
    #[error("its windows do not match its range: {0}")]
    Malformed(String),
    /// Its stream is beyond `streams_max`.
    #[error("its stream is beyond streams_max")]
    TooManyStreams,
}

/// Something the core noticed and dealt with; log it and count it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncWarning {
    /// More streams were named than `streams_max`; the extra ones are not synced.
    #[error("{ignored} stream(s) ignored: the sync core tracks at most {max} (streams_max)")]
    TooManyStreams {
        /// How many were ignored by this event.
        ignored: usize,
        /// The configured `streams_max`.
        max: usize,
    },
    /// A batch loaded from the outbox was discarded (and dropped from the outbox); its windows
    /// are read again from the streams.
    #[error("outbox batch {key} discarded: {defect}")]
    OutboxDiscarded {
        /// The batch.
        key: BatchKey,
        /// What was wrong with it.
        defect: OutboxDefect,
    },
    /// A leadership event for a term lower than one already seen: a late event, ignored.
    #[error("told of leadership in term {term}, but term {seen} was seen already; ignored")]
    StaleLeadership {
        /// The event's term.
        term: u64,
        /// The highest term seen.
        seen: u64,
    },
    /// A read result that matches no outstanding read (a driver bug): ignored.
    #[error("read result for {stream} from seq {first_seq} matches no outstanding read; ignored")]
    UnexpectedRead {
        /// The stream.
        stream: StreamId,
        /// Where the result starts.
        first_seq: u64,
    },
    /// A read returned more records than asked for (a driver bug); the extra ones were ignored.
    #[error("read of {stream} returned {got} records, {max} were asked for; the rest ignored")]
    ReadTooLong {
        /// The stream.
        stream: StreamId,
        /// Records returned.
        got: usize,
        /// Records asked for.
        max: u64,
    },
}
