//! [`ControlConfig`]: Raft timing and limits, with defaults tuned for a LAN corridor.
//!
//! # Why these defaults
//!
//! Issue 4 asks for a new gateway within 300 ms (p99) of the old one being killed. In openraft
//! 0.9.25 a follower that stops hearing from its leader waits for the **leader lease** and then
//! for its own randomised **election timeout** before it campaigns; the lease is not a separate
//! setting, it is `election_max_ms`. So the silent time before a campaign is
//!
//! ```text
//! 2 x election timeout (+1 ms), checked on a tick of 1.5 heartbeats
//! ```
//!
//! plus one vote round trip (under a millisecond on a LAN, plus an fsync of the vote). Each voter's
//! election timeout is fixed by its rank among the voters, spread over `election_min_ms` to
//! `election_max_ms` (see [`ControlConfig::election_timeout_ms`]), so the first survivor to
//! campaign is the lowest-ranked one and two survivors never time out together. With the defaults
//! (heartbeat 20 ms, election 50–120 ms, three voters at 50, 85 and 120 ms) a new leader is up
//! 100–250 ms after the old one went silent, leaving room under 300 ms for a loaded 2-core cabinet. openraft's own defaults (50 ms, 150–300 ms) give 450–600 ms, and an
//! etcd-like 100 ms / 1 s gives seconds.
//!
//! Going lower costs stability, not safety: the heartbeat is also the time limit openraft gives
//! an AppendEntries round trip (including the follower's fsync), and a leader whose heartbeats are
//! late by more than `election_min_ms` is deposed. 20 ms is several fsyncs on a cabinet's SSD and
//! `election_min_ms` is 2.5 heartbeats, so two lost or late heartbeats in a row are survived.
//!
//! Unreachable peers are retried after `backoff_ms` (openraft's default is 500 ms, which would
//! hold back a restarted voter's catch-up for half a second).

use std::time::Duration;

use serde::Deserialize;

use crate::wire::RPC_BYTES_CEILING;

/// Raft timing and limits of one node. Every member should use the same values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// How often the leader sends heartbeats, in ms. It is also openraft's deadline for one
    /// AppendEntries round trip, follower fsync included.
    pub heartbeat_ms: u64,
    /// The lowest voter's election timeout, in ms (voters are spread over `election_min_ms` to
    /// `election_max_ms` by rank). Must exceed two heartbeats.
    pub election_min_ms: u64,
    /// The highest voter's election timeout, in ms. A voter's timeout (+1 ms) is also the leader
    /// lease it waits out before it votes for anyone else.
    pub election_max_ms: u64,
    /// Delay before retrying a peer the transport reported unreachable, in ms.
    pub backoff_ms: u64,
    /// How long [`crate::Control::propose`] waits for a command to commit, in ms. A proposal that
    /// timed out may still commit later; commands are idempotent so a retry is safe.
    pub propose_timeout_ms: u64,
    /// The largest control-plane message in either direction, in bytes (a snapshot travels whole,
    /// so it bounds the replicated state too).
    pub rpc_bytes_max: usize,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging member catches up from the log
    /// rather than a snapshot.
    pub log_entries_kept: u64,
    /// The most entries in one AppendEntries message.
    pub append_entries_max: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 20,
            election_min_ms: 50,
            election_max_ms: 120,
            backoff_ms: 25,
            propose_timeout_ms: 1_000,
            rpc_bytes_max: 4 * 1024 * 1024,
            snapshot_every_entries: 1_000,
            log_entries_kept: 1_000,
            append_entries_max: 256,
        }
    }
}

/// Why a [`ControlConfig`] was refused. Field names are those of the `[control]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field that must be positive was 0.
    #[error("control.{0} must be greater than 0")]
    Zero(&'static str),
    /// The election timeout does not leave room for two heartbeats.
    #[error(
        "control.election_min_ms ({election_min_ms}) must be more than twice control.heartbeat_ms \
         ({heartbeat_ms}), or one late heartbeat starts an election"
    )]
    ElectionTooShort {
        /// Configured lower bound.
        election_min_ms: u64,
        /// Configured heartbeat.
        heartbeat_ms: u64,
    },
    /// The election range is empty.
    #[error(
        "control.election_max_ms ({max}) must be greater than control.election_min_ms ({min}): \
         the randomised range is what keeps two candidates from splitting the vote forever"
    )]
    ElectionRange {
        /// Lower bound.
        min: u64,
        /// Upper bound.
        max: u64,
    },
    /// The message bound is outside what the codec supports.
    #[error("control.rpc_bytes_max ({0}) must be between 65536 and {RPC_BYTES_CEILING}")]
    RpcBytes(usize),
}

impl ControlConfig {
    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("heartbeat_ms", self.heartbeat_ms),
            ("election_min_ms", self.election_min_ms),
            ("backoff_ms", self.backoff_ms),
            ("propose_timeout_ms", self.propose_timeout_ms),
            ("snapshot_every_entries", self.snapshot_every_entries),
            ("append_entries_max", self.append_entries_max),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.election_min_ms <= 2 * self.heartbeat_ms {
            return Err(ConfigError::ElectionTooShort {
                election_min_ms: self.election_min_ms,
                heartbeat_ms: self.heartbeat_ms,
            });
        }
        if self.election_max_ms <= self.election_min_ms {
            return Err(ConfigError::ElectionRange {
                min: self.election_min_ms,
                max: self.election_max_ms,
            });
        }
        if !(64 * 1024..=RPC_BYTES_CEILING).contains(&self.rpc_bytes_max) {
            return Err(ConfigError::RpcBytes(self.rpc_bytes_max));
        }
        Ok(())
    }

    /// The leader lease openraft derives from this config: followers refuse to vote for another
    /// candidate until this long after they last heard from the leader.
    pub fn leader_lease(&self) -> Duration {
        // Each voter's lease is its own election timeout plus 1 ms, at most this.
        Duration::from_millis(self.election_max_ms + 1)
    }

    /// This voter's election timeout, in ms, when it is number `rank` (0-based, by id) of
    /// `voters`: the voters are spread evenly over `election_min_ms..=election_max_ms`.
    ///
    /// openraft 0.9 draws a node's election timeout once, when the node starts, and checks it on
    /// a tick of 1.5 heartbeats; two voters that drew close values split the vote in every round
    /// after their leader dies (seen here: nine terms and 900 ms to elect one). Spreading the
    /// voters by rank makes their timeouts differ by a fixed step instead.
    pub fn election_timeout_ms(&self, rank: usize, voters: usize) -> u64 {
        if voters <= 1 {
            return self.election_min_ms;
        }
        let span = self.election_max_ms - self.election_min_ms;
        self.election_min_ms + span * rank.min(voters - 1) as u64 / (voters - 1) as u64
    }

    /// The openraft config these values translate to, for voter number `rank` of `voters` (see
    /// [`ControlConfig::election_timeout_ms`]); `None` for a learner, which never campaigns.
    pub(crate) fn to_openraft(&self, slot: Option<(usize, usize)>) -> openraft::Config {
        let (election_min, election_max) = match slot {
            Some((rank, voters)) => {
                let t = self.election_timeout_ms(rank, voters);
                (t, t + 1)
            }
            None => (self.election_min_ms, self.election_max_ms),
        };
        openraft::Config {
            cluster_name: "verge".to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: election_min,
            election_timeout_max: election_max,
            // A whole snapshot (up to rpc_bytes_max) travels and is fsynced in one call.
            install_snapshot_timeout: 1_000,
            max_payload_entries: self.append_entries_max,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.log_entries_kept,
            ..openraft::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_accepted_by_openraft() {
        let cfg = ControlConfig::default();
        cfg.validate().expect("defaults valid");
        cfg.to_openraft(None)
            .validate()
            .expect("openraft accepts them");
        for rank in 0..5 {
            cfg.to_openraft(Some((rank, 5)))
                .validate()
                .expect("openraft accepts every voter's");
        }
        let spread: Vec<u64> = (0..3).map(|r| cfg.election_timeout_ms(r, 3)).collect();
        assert_eq!(spread, vec![50, 85, 120]);
    }

    #[test]
    fn bad_timings_are_refused_with_the_field_names() {
        let cfg = ControlConfig {
            heartbeat_ms: 30,
            election_min_ms: 50,
            ..ControlConfig::default()
        };
        let err = cfg.validate().expect_err("too short");
        assert!(
            err.to_string().contains("control.election_min_ms (50)"),
            "{err}"
        );

        let cfg = ControlConfig {
            election_max_ms: 50,
            ..ControlConfig::default()
        };
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::ElectionRange { min: 50, max: 50 })
        );
        let cfg = ControlConfig {
            heartbeat_ms: 0,
            ..ControlConfig::default()
        };
        assert_eq!(cfg.validate(), Err(ConfigError::Zero("heartbeat_ms")));
        let cfg = ControlConfig {
            rpc_bytes_max: 10,
            ..ControlConfig::default()
        };
        assert_eq!(cfg.validate(), Err(ConfigError::RpcBytes(10)));
    }
}
