//! The knobs of replication, with their defaults in one place and one check of how they combine.
//!
//! These are plain values; the node's TOML config (in `verge-node`) maps onto them. Every bound is
//! named with its unit.

use crate::error::ConfigError;
use verge_proto::replication::RECORDS_PER_MESSAGE_MAX;

/// What an owner does when fewer than `write_quorum` holders of a stream are reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Acknowledge once `min_replicas` holders have a write durably, say so in the
    /// acknowledgement (`degraded: true`) and mark the stream under-replicated.
    Degrade,
    /// Hold acknowledgements until `write_quorum` holders have the write; producers feel it as
    /// back-pressure once `pending_records_max` records wait.
    Block,
}

/// How an owner replicates its streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerConfig {
    /// Copies of each stream in total, the owner's own included (R). At least 1.
    pub replicas: usize,
    /// Holders that must have a record durably before it is acknowledged, the owner included
    /// (W). Between `min_replicas` and `replicas`.
    pub write_quorum: usize,
    /// Holders that must have a record durably for a degraded acknowledgement, the owner
    /// included. At least 1; the owner's own disk is always one of them.
    pub min_replicas: usize,
    /// What to do while fewer than `write_quorum` holders are live: reachable and not more than
    /// `inflight_records_max` records behind.
    pub shortfall: Shortfall,
    /// How long a replica may be unreachable before another neighbour takes its place, in
    /// milliseconds. A shorter outage ends in a catch-up from the replica's high-water mark; a
    /// longer one in a full copy to the replacement.
    pub replace_after_ms: u64,
    /// How long an unanswered append, query or fetch waits before it is sent again, in
    /// milliseconds. Longer than a replica's flush interval plus a round trip.
    pub resend_after_ms: u64,
    /// Records in one append message. At most [`RECORDS_PER_MESSAGE_MAX`].
    pub append_records_max: usize,
    /// Records sent to one replica of one stream and not yet acknowledged by it. A replica more
    /// than this far behind the owner's head is "catching up" and does not count towards the
    /// write quorum of a degraded stream.
    pub inflight_records_max: u64,
    /// Records of one stream appended locally and not yet acknowledged to the producer; beyond it
    /// [`Owner::next_seq`](crate::Owner::next_seq) refuses with back-pressure.
    pub pending_records_max: u64,
    /// Records asked for in one fetch while recovering. At most [`RECORDS_PER_MESSAGE_MAX`].
    pub fetch_records_max: u32,
}

impl Default for OwnerConfig {
    fn default() -> Self {
        Self {
            replicas: 2,
            write_quorum: 2,
            min_replicas: 1,
            shortfall: Shortfall::Degrade,
            replace_after_ms: 120_000,
            resend_after_ms: 1_000,
            append_records_max: 1_024,
            inflight_records_max: 16_384,
            pending_records_max: 65_536,
            fetch_records_max: 4_096,
        }
    }
}

impl OwnerConfig {
    /// Checks that the values make sense together.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first value that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.replicas == 0 {
            return Err(ConfigError::NoReplicas);
        }
        if self.min_replicas == 0
            || self.min_replicas > self.write_quorum
            || self.write_quorum > self.replicas
        {
            return Err(ConfigError::Quorum {
                min_replicas: self.min_replicas,
                write_quorum: self.write_quorum,
                replicas: self.replicas,
            });
        }
        if self.append_records_max == 0 || self.append_records_max > RECORDS_PER_MESSAGE_MAX {
            return Err(ConfigError::Bound {
                name: "append_records_max",
                value: self.append_records_max as u64,
                max: RECORDS_PER_MESSAGE_MAX as u64,
            });
        }
        if self.fetch_records_max == 0 || self.fetch_records_max as usize > RECORDS_PER_MESSAGE_MAX
        {
            return Err(ConfigError::Bound {
                name: "fetch_records_max",
                value: u64::from(self.fetch_records_max),
                max: RECORDS_PER_MESSAGE_MAX as u64,
            });
        }
        if self.inflight_records_max < self.append_records_max as u64 {
            return Err(ConfigError::Window {
                inflight_records_max: self.inflight_records_max,
                append_records_max: self.append_records_max,
            });
        }
        if self.pending_records_max == 0 {
            return Err(ConfigError::Bound {
                name: "pending_records_max",
                value: 0,
                max: u64::MAX,
            });
        }
        if self.resend_after_ms == 0 {
            return Err(ConfigError::Bound {
                name: "resend_after_ms",
                value: 0,
                max: u64::MAX,
            });
        }
        Ok(())
    }
}

/// How a node serves as a replica of its neighbours' streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Records in one append the replica accepts; larger ones are a protocol error. At most
    /// [`RECORDS_PER_MESSAGE_MAX`].
    pub append_records_max: usize,
    /// Records sent in one fetch reply, whatever the asker wanted. At most
    /// [`RECORDS_PER_MESSAGE_MAX`].
    pub fetch_records_max: u32,
    /// Streams of other owners this node keeps copies of; an append that would start one more is
    /// refused, so a confused or hostile peer cannot make the node track without bound.
    pub streams_max: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            append_records_max: RECORDS_PER_MESSAGE_MAX,
            fetch_records_max: 4_096,
            streams_max: 100_000,
        }
    }
}

impl ReplicaConfig {
    /// Checks the bounds.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Bound`] naming the first value out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.append_records_max == 0 || self.append_records_max > RECORDS_PER_MESSAGE_MAX {
            return Err(ConfigError::Bound {
                name: "append_records_max",
                value: self.append_records_max as u64,
                max: RECORDS_PER_MESSAGE_MAX as u64,
            });
        }
        if self.fetch_records_max == 0 || self.fetch_records_max as usize > RECORDS_PER_MESSAGE_MAX
        {
            return Err(ConfigError::Bound {
                name: "fetch_records_max",
                value: u64::from(self.fetch_records_max),
                max: RECORDS_PER_MESSAGE_MAX as u64,
            });
        }
        if self.streams_max == 0 {
            return Err(ConfigError::Bound {
                name: "streams_max",
                value: 0,
                max: u64::MAX,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        OwnerConfig::default().validate().expect("owner defaults");
        ReplicaConfig::default()
            .validate()
            .expect("replica defaults");
    }

    #[test]
    fn quorums_must_nest() {
        let c = OwnerConfig {
            write_quorum: 3,
            ..OwnerConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Quorum { .. })));
        let c = OwnerConfig {
            min_replicas: 0,
            ..OwnerConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Quorum { .. })));
        let c = OwnerConfig {
            replicas: 0,
            ..OwnerConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::NoReplicas));
    }

    #[test]
    fn windows_hold_at_least_one_message() {
        let c = OwnerConfig {
            inflight_records_max: 10,
            append_records_max: 100,
            ..OwnerConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Window { .. })));
    }
}
