//! What a `verge sim run` found: every figure, the invariants' verdicts, and the samples taken
//! while it ran. [`Report`] is written as `report.json`; [`crate::report_html::render`] turns it
//! into `report.html`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole report of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The seed the run used (replay with `--seed`).
    pub seed: u64,
    /// Seconds the corridor ran (the scenario's, or `--duration`).
    pub duration_s: f64,
    /// The nodes, in order.
    pub nodes: Vec<String>,
    /// True when every invariant held.
    pub passed: bool,
    /// Acknowledged readings missing (or different) on every replica.
    pub lost_acknowledged: u64,
    /// Aggregate windows the nodes produced that the cloud does not hold.
    pub cloud_missing: u64,
    /// Windows the cloud holds more than once, or with values other than the node's.
    pub cloud_duplicates: u64,
    /// Batches the cloud accepted from a stale term (a term lower than one it had accepted
    /// before, or a term with two gateways).
    pub stale_term_accepted: u64,
    /// Streams whose replicas still differ after the run healed.
    pub replicas_diverged: u64,
    /// One entry per gateway change: milliseconds from losing the old gateway (its kill, pause
    /// or partition, else the last moment it was seen as gateway) to a new one being named.
    pub failovers_ms: Vec<f64>,
    /// Readings per second the whole corridor stored, averaged over the run.
    pub readings_per_s: f64,
    /// Readings the run's producer sent and saw acknowledged (the set `lost_acknowledged` is
    /// checked against).
    pub acknowledged_readings: u64,
    /// Readings the nodes' own sensors delivered.
    pub sensor_readings: u64,
    /// Aggregate windows the nodes produced, and how many the cloud holds.
    pub windows_produced: u64,
    /// Windows the cloud holds.
    pub windows_in_cloud: u64,
    /// The highest resident set per node, in MiB (counting every page of the shared binary it
    /// has touched).
    pub max_rss_mib: BTreeMap<String, f64>,
    /// The highest proportional set per node, in MiB: its private pages plus its share of the
    /// pages it shares with the other nodes (the binary), i.e. what it adds to the machine.
    #[serde(default)]
    pub max_pss_mib: BTreeMap<String, f64>,
    /// The highest private (anonymous: heap, stacks) memory per node, in MiB.
    #[serde(default)]
    pub max_private_mib: BTreeMap<String, f64>,
    /// Every invariant violation, named.
    pub violations: Vec<Violation>,
    /// The faults as they were applied.
    pub faults: Vec<FaultEvent>,
    /// The gateway changes seen.
    pub gateway_changes: Vec<GatewayChange>,
    /// One sample per second (or so) while the run went.
    pub samples: Vec<Sample>,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// `lost_acknowledged`, `cloud_missing`, `cloud_duplicates`, `stale_term_accepted`,
    /// `replicas_diverged`.
    pub invariant: String,
    /// The stream it concerns (`owner/kind/sensor` or a cloud stream name).
    pub stream: String,
    /// The sequence number (first of a range).
    pub seq: u64,
    /// Seconds from the start of the run when the thing concerned happened (acknowledged,
    /// produced, accepted), if known.
    pub at_s: Option<f64>,
    /// What is wrong, in words.
    pub detail: String,
}

/// A fault as it was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Seconds from the start.
    pub at_s: f64,
    /// What it did, e.g. `kill b2 (gateway)`.
    pub what: String,
}

/// The gateway changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayChange {
    /// Seconds from the start when the new gateway was first seen.
    pub at_s: f64,
    /// The gateway before (None at the first election).
    pub from: Option<String>,
    /// The new gateway.
    pub to: String,
    /// Its term.
    pub term: u64,
    /// Milliseconds from losing the old one (see [`Report::failovers_ms`]).
    pub failover_ms: f64,
}

/// What the corridor looked like at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds from the start.
    pub t_s: f64,
    /// The gateway then, if one was known.
    pub gateway: Option<String>,
    /// The control plane's term then (0 if unknown).
    pub term: u64,
    /// Windows waiting in the gateway's outbox for the cloud (None if unknown).
    pub cloud_backlog: Option<u64>,
    /// Per node.
    pub nodes: BTreeMap<String, NodeSample>,
}

/// One node at one moment. Figures are `None` when the node did not answer (down, paused,
/// cut off).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSample {
    /// Whether its process was running (not killed; a paused node runs).
    pub up: bool,
    /// Readings per second its sensors delivered since the previous sample.
    pub readings_per_s: Option<f64>,
    /// The largest lag of any replica of its own streams, in records.
    pub lag: Option<u64>,
    /// Its inference p99 over the last 100 batches, in ms.
    pub inference_p99_ms: Option<f64>,
    /// Share of its rows that ran on a neighbour, since the previous sample (0 to 1).
    pub offloaded_share: Option<f64>,
    /// Resident set, MiB.
    pub rss_mib: Option<f64>,
    /// Proportional set, MiB.
    #[serde(default)]
    pub pss_mib: Option<f64>,
    /// Private (anonymous) memory, MiB.
    #[serde(default)]
    pub private_mib: Option<f64>,
}
