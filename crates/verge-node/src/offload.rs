//! The offload decision: run an inference batch here, or send it to a less-loaded neighbour.
//!
//! [`Planner`] is pure: it is fed the neighbours' gossiped [`Load`] with the time it was heard,
//! and answers [`Planner::place`] for one batch from this node's own load, the batch and the time.
//! Nothing here touches the network; [`crate::engine`] gossips the loads, carries the batches and
//! retries a helper that dies.
//!
//! # The rules
//! - **Offload never loops**: a batch another node offloaded here runs here.
//! - **Local first**: a batch whose expected latency here, `(queued rows + its rows) x EWMA
//!   latency per row`, fits its deadline runs here.
//! - **Two random choices**: otherwise two neighbours are drawn at random among the eligible ones
//!   (load heard within `stale_after`, not drained) and the less loaded of the two takes it, if it
//!   would finish sooner than this node; else it runs here. Two choices keep every node from
//!   piling onto the same least-loaded neighbour, whose gossip is always a little old.
//! - **A drained node takes no offloaded work**, and a neighbour not heard from lately is not
//!   chosen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use rand::seq::IteratorRandom;
use verge_proto::NodeId;
use verge_proto::peer::LoadReport;

/// Weight of the newest batch in the smoothed time per row.
const EWMA_ALPHA: f64 = 0.2;

/// This node's inference load: the store actor records each prediction batch, the heartbeats
/// carry it to the peers.
#[derive(Debug, Clone, Default)]
pub struct LoadGauge(Arc<Mutex<LoadReport>>);

impl LoadGauge {
    /// A batch of `rows` rows took `took`.
    pub fn batch(&self, rows: usize, took: Duration) {
        if rows == 0 {
            return;
        }
        let per_row = took.as_secs_f64() * 1e6 / rows as f64;
        let mut l = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        l.us_per_row = if l.rows == 0 {
            per_row as f32
        } else {
            (EWMA_ALPHA * per_row + (1.0 - EWMA_ALPHA) * f64::from(l.us_per_row)) as f32
        };
        l.rows += rows as u64;
    }

    /// `rows` more rows wait for (or are in) this node's inference worker.
    pub fn enqueue(&self, rows: usize) {
        let mut l = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        l.queued_rows = l
            .queued_rows
            .saturating_add(u32::try_from(rows).unwrap_or(u32::MAX));
    }

    /// `rows` rows left the worker.
    pub fn dequeue(&self, rows: usize) {
        let mut l = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        l.queued_rows = l
            .queued_rows
            .saturating_sub(u32::try_from(rows).unwrap_or(u32::MAX));
    }

    /// `rows` rows of this node's own batches were computed by a neighbour.
    pub fn offloaded(&self, rows: usize) {
        let mut l = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        l.offloaded_rows += rows as u64;
    }

    /// `rows` rows of a neighbour's batch were computed here.
    pub fn taken(&self, rows: usize) {
        let mut l = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        l.taken_rows += rows as u64;
    }

    /// The load now, with the drained flag as the control plane says.
    pub fn report(&self, drained: bool) -> LoadReport {
        let l = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        LoadReport { drained, ..l }
    }
}

impl From<LoadReport> for Load {
    fn from(r: LoadReport) -> Self {
        Self {
            queued_rows: r.queued_rows,
            us_per_row: f64::from(r.us_per_row),
            drained: r.drained,
        }
    }
}

/// A node's load as it gossips it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Rows waiting for inference.
    pub queued_rows: u32,
    /// Smoothed inference latency per row, in microseconds.
    pub us_per_row: f64,
    /// The node is drained: it takes no offloaded work.
    pub drained: bool,
}

impl Load {
    /// Expected microseconds until a batch of `rows` more rows is done here.
    pub fn expected_us(&self, rows: u32) -> f64 {
        f64::from(self.queued_rows.saturating_add(rows)) * self.us_per_row.max(0.0)
    }
}

/// One batch to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Rows in it.
    pub rows: u32,
    /// Its deadline, from now.
    pub deadline: Duration,
    /// Another node offloaded it here.
    pub offloaded_here: bool,
}

/// Where a batch runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Here.
    Local(Reason),
    /// On this neighbour.
    Offload(NodeId),
}

/// Why a batch runs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Another node offloaded it here.
    OffloadedHere,
    /// It fits its deadline here.
    InTime,
    /// No neighbour is eligible (none heard from lately, or all drained).
    NoNeighbour,
    /// The neighbours chosen would not finish it sooner.
    NoFaster,
}

/// Offload settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannerConfig {
    /// A neighbour's load older than this is not trusted.
    pub stale_after: Duration,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(2),
        }
    }
}

/// The neighbours' loads and the decision.
#[derive(Debug, Clone, Default)]
pub struct Planner {
    cfg: PlannerConfig,
    /// Each neighbour's last load and when it was heard (ms on the caller's clock).
    heard: BTreeMap<NodeId, (Load, u64)>,
}

impl Planner {
    /// A planner with no neighbour heard yet.
    pub fn new(cfg: PlannerConfig) -> Self {
        Self {
            cfg,
            heard: BTreeMap::new(),
        }
    }

    /// `peer` said it has `load`, at `now_ms`.
    pub fn heard(&mut self, peer: NodeId, load: Load, now_ms: u64) {
        self.heard.insert(peer, (load, now_ms));
    }

    /// `peer` is gone (down, or no longer a neighbour).
    pub fn forget(&mut self, peer: &NodeId) {
        self.heard.remove(peer);
    }

    /// Where `batch` should run, given this node's `own` load at `now_ms`.
    pub fn place(&self, own: &Load, batch: &Batch, now_ms: u64, rng: &mut impl Rng) -> Placement {
        if batch.offloaded_here {
            return Placement::Local(Reason::OffloadedHere);
        }
        let here = own.expected_us(batch.rows);
        if here <= batch.deadline.as_secs_f64() * 1e6 {
            return Placement::Local(Reason::InTime);
        }
        let stale_ms = u64::try_from(self.cfg.stale_after.as_millis()).unwrap_or(u64::MAX);
        let eligible = self
            .heard
            .iter()
            .filter(|(_, (load, at))| !load.drained && now_ms.saturating_sub(*at) <= stale_ms);
        let drawn = eligible.choose_multiple(rng, 2);
        let best = drawn.into_iter().min_by(|a, b| {
            let (ea, eb) = (a.1.0.expected_us(batch.rows), b.1.0.expected_us(batch.rows));
            ea.total_cmp(&eb)
        });
        match best {
            None => Placement::Local(Reason::NoNeighbour),
            Some((peer, (load, _))) if load.expected_us(batch.rows) < here => {
                Placement::Offload(peer.clone())
            }
            Some(_) => Placement::Local(Reason::NoFaster),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn id(s: &str) -> NodeId {
        s.parse().expect("id")
    }

    fn load(queued_rows: u32, us_per_row: f64) -> Load {
        Load {
            queued_rows,
            us_per_row,
            drained: false,
        }
    }

    const BATCH: Batch = Batch {
        rows: 10,
        deadline: Duration::from_millis(1),
        offloaded_here: false,
    };

    #[test]
    fn a_batch_in_time_or_offloaded_here_runs_here() {
        let mut p = Planner::default();
        p.heard(id("b2"), load(0, 1.0), 0);
        let mut rng = StdRng::seed_from_u64(1);
        // 10 rows x 50 us = 500 us <= 1 ms.
        assert_eq!(
            p.place(&load(0, 50.0), &BATCH, 0, &mut rng),
            Placement::Local(Reason::InTime)
        );
        // A slow node offloads ...
        assert_eq!(
            p.place(&load(0, 500.0), &BATCH, 0, &mut rng),
            Placement::Offload(id("b2"))
        );
        // ... but never work that was offloaded to it.
        let forwarded = Batch {
            offloaded_here: true,
            ..BATCH
        };
        assert_eq!(
            p.place(&load(0, 500.0), &forwarded, 0, &mut rng),
            Placement::Local(Reason::OffloadedHere)
        );
    }

    #[test]
    fn drained_stale_and_slower_neighbours_are_not_chosen() {
        let mut rng = StdRng::seed_from_u64(2);
        let slow = load(0, 500.0);
        let mut p = Planner::new(PlannerConfig {
            stale_after: Duration::from_millis(100),
        });
        assert_eq!(
            p.place(&slow, &BATCH, 0, &mut rng),
            Placement::Local(Reason::NoNeighbour)
        );
        p.heard(
            id("b2"),
            Load {
                drained: true,
                ..load(0, 1.0)
            },
            0,
        );
        p.heard(id("b3"), load(0, 1.0), 0);
        // b3 heard at 0 is stale at 500; b2 is drained.
        assert_eq!(
            p.place(&slow, &BATCH, 500, &mut rng),
            Placement::Local(Reason::NoNeighbour)
        );
        assert_eq!(
            p.place(&slow, &BATCH, 50, &mut rng),
            Placement::Offload(id("b3"))
        );
        // A neighbour with a long queue would finish later than this node.
        p.heard(id("b3"), load(100_000, 1.0), 50);
        assert_eq!(
            p.place(&slow, &BATCH, 60, &mut rng),
            Placement::Local(Reason::NoFaster)
        );
        p.forget(&id("b3"));
        assert_eq!(
            p.place(&slow, &BATCH, 60, &mut rng),
            Placement::Local(Reason::NoNeighbour)
        );
    }

    #[test]
    fn two_choices_take_the_less_loaded_and_spread_the_work() {
        let mut p = Planner::default();
        for (i, queued) in [0u32, 10, 20, 30].into_iter().enumerate() {
            p.heard(id(&format!("n{i}")), load(queued, 1.0), 0);
        }
        let mut rng = StdRng::seed_from_u64(3);
        let mut chosen: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..4_000 {
            match p.place(&load(0, 500.0), &BATCH, 0, &mut rng) {
                Placement::Offload(to) => *chosen.entry(to.to_string()).or_default() += 1,
                other => panic!("{other:?}"),
            }
        }
        // The most loaded neighbour always loses its draw; the least loaded wins every draw it
        // is in (half of them), so it is chosen most but not always.
        assert!(!chosen.contains_key("n3"), "{chosen:?}");
        let n0 = chosen.get("n0").copied().unwrap_or(0);
        assert!((1_700..=2_300).contains(&n0), "{chosen:?}");
        assert!(chosen.get("n1").copied().unwrap_or(0) > chosen.get("n2").copied().unwrap_or(0));
    }
}
