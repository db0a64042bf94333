//! The knobs of the sync core, with their defaults in one place and one check of how they combine.
//!
//! These are plain values; the node's TOML config (in `verge-node`) maps onto them. Every bound is
//! named with its unit.

use verge_proto::NodeId;
use verge_proto::id::validate_label;

use crate::error::ConfigError;

/// The most windows one batch may carry; the reference cloud refuses more
/// (`verge_cloud::api::WINDOWS_PER_BATCH_MAX`).
pub const BATCH_WINDOWS_CEILING: usize = 100_000;

/// How the gateway syncs aggregate streams to the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// The cluster's name (a DNS label, as in its CA). The cloud compares terms within a cluster,
    /// and a batch loaded from the outbox for another cluster is discarded.
    pub cluster: String,
    /// This node: the gateway named in every batch it sends.
    pub gateway: NodeId,
    /// Windows (records) in one batch. At most [`BATCH_WINDOWS_CEILING`].
    pub batch_windows_max: usize,
    /// Batches posted and not yet answered, all streams together. A stream has at most one.
    pub posts_inflight_max: usize,
    /// Reads asked of the store and not yet answered, all streams together. A stream has at
    /// most one.
    pub reads_inflight_max: usize,
    /// Batches in the outbox (persisted, not yet acknowledged), all streams together. When it is
    /// full the core reads ahead no further; a stream whose next batch is missing may still read
    /// that one batch, so the outbox can exceed this by one batch per stream, and a loaded outbox
    /// is taken whole.
    pub outbox_batches_max: usize,
    /// Batches of one stream in the outbox: the one being posted and those prepared behind it.
    /// 2 keeps one batch ready while the previous one is in flight.
    pub stream_outbox_batches_max: usize,
    /// The first retry delay after a failed post or read, in milliseconds; it doubles with each
    /// consecutive failure of the same stream, up to `retry_ms_max`, with jitter (the delay is
    /// drawn between half and all of the doubled value).
    pub retry_ms_min: u64,
    /// The longest retry delay after a failed post or read, in milliseconds.
    pub retry_ms_max: u64,
    /// How long a stream whose batch the cloud rejected (a 4xx other than fencing) waits before
    /// the same batch is tried again, in milliseconds (with the same jitter). A rejection of a
    /// well-formed batch is a configuration problem (token, size limit): the stream is held, not
    /// skipped, so no window is lost while an operator fixes it.
    pub rejected_retry_ms: u64,
    /// How long a failed cursor proposal waits before it is proposed again, in milliseconds.
    pub propose_retry_ms: u64,
    /// Streams the core tracks. Streams named beyond it are ignored and reported, so a confused
    /// driver cannot make the core grow without bound.
    pub streams_max: usize,
}

impl SyncConfig {
    /// A configuration for `gateway` in `cluster` with every other knob at its default.
    pub fn new(cluster: impl Into<String>, gateway: NodeId) -> Self {
        Self {
            cluster: cluster.into(),
            gateway,
            batch_windows_max: 5_000,
            posts_inflight_max: 16,
            reads_inflight_max: 16,
            outbox_batches_max: 1_024,
            stream_outbox_batches_max: 2,
            retry_ms_min: 100,
            retry_ms_max: 30_000,
            rejected_retry_ms: 60_000,
            propose_retry_ms: 200,
            streams_max: 10_000,
        }
    }

    /// Checks that the values make sense together.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first value that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_label(&self.cluster).map_err(ConfigError::Cluster)?;
        let bounds: [(&'static str, u64, u64); 9] = [
            (
                "batch_windows_max",
                self.batch_windows_max as u64,
                BATCH_WINDOWS_CEILING as u64,
            ),
            (
                "posts_inflight_max",
                self.posts_inflight_max as u64,
                u64::MAX,
            ),
            (
                "reads_inflight_max",
                self.reads_inflight_max as u64,
                u64::MAX,
            ),
            (
                "outbox_batches_max",
                self.outbox_batches_max as u64,
                u64::MAX,
            ),
            (
                "stream_outbox_batches_max",
                self.stream_outbox_batches_max as u64,
                u64::MAX,
            ),
            ("retry_ms_min", self.retry_ms_min, u64::MAX),
            ("rejected_retry_ms", self.rejected_retry_ms, u64::MAX),
            ("propose_retry_ms", self.propose_retry_ms, u64::MAX),
            ("streams_max", self.streams_max as u64, u64::MAX),
        ];
        for (name, value, max) in bounds {
            if value == 0 || value > max {
                return Err(ConfigError::Bound { name, value, max });
            }
        }
        if self.retry_ms_max < self.retry_ms_min {
            return Err(ConfigError::Retry {
                retry_ms_min: self.retry_ms_min,
                retry_ms_max: self.retry_ms_max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SyncConfig {
        SyncConfig::new("corridor-1", NodeId::new("b1").expect("id"))
    }

    #[test]
    fn defaults_are_valid() {
        cfg().validate().expect("defaults");
    }

    #[test]
    fn bad_values_are_named() {
        let c = SyncConfig {
            cluster: "Main St".into(),
            ..cfg()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Cluster(_))));
        let c = SyncConfig {
            batch_windows_max: BATCH_WINDOWS_CEILING + 1,
            ..cfg()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Bound {
                name: "batch_windows_max",
                ..
            })
        ));
        let c = SyncConfig {
            posts_inflight_max: 0,
            ..cfg()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Bound {
                name: "posts_inflight_max",
                ..
            })
        ));
        let c = SyncConfig {
            retry_ms_max: 10,
            ..cfg()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Retry { .. })));
    }
}
