//! A synthetic sensor source: a chosen number of detectors reporting at a chosen total rate, with
//! demand that is flat or has rush-hour peaks. Seeded, so a run can be replayed.
//!
//! It is for load and benchmarks, not for models: the numbers are plausible (counts follow demand,
//! speed falls as occupancy rises), not a traffic simulation. SUMO is the real one.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::Reading;

/// Demand over time.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum Pattern {
    /// The same demand all the time.
    Constant,
    /// Demand swinging between `1 - amplitude` and `1 + amplitude` of the base, once per period.
    Peaks {
        /// The length of one cycle, in seconds.
        period_s: f64,
        /// The swing, 0 to 1.
        amplitude: f64,
    },
}

/// Configuration of a synthetic source (the node config's `[sensors]` section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Number of detectors.
    pub sensors: u32,
    /// Readings per second, all detectors together.
    pub rate_per_s: f64,
    /// Demand pattern.
    #[serde(default = "default_pattern")]
    pub pattern: Pattern,
    /// Seed of the random numbers.
    #[serde(default)]
    pub seed: u64,
    /// Prefix of detector ids (`<prefix>0`, `<prefix>1`, …).
    #[serde(default = "default_prefix")]
    pub sensor_prefix: String,
}

fn default_pattern() -> Pattern {
    Pattern::Constant
}

fn default_prefix() -> String {
    "syn".into()
}

/// The most readings one poll returns, so a stalled caller catches up in bounded steps.
pub const POLL_READINGS_MAX: usize = 10_000;

/// Produces readings as time passes.
#[derive(Debug)]
pub struct SyntheticSource {
    cfg: SyntheticConfig,
    rng: StdRng,
    names: Vec<String>,
    /// Readings emitted so far; the next one is due at `start + emitted / rate`.
    emitted: u64,
    start_ms: Option<i64>,
}

impl SyntheticSource {
    /// A source with `cfg`. A rate of 0 or no sensors produces nothing.
    pub fn new(cfg: SyntheticConfig) -> Self {
        let names = (0..cfg.sensors)
            .map(|i| format!("{}{i}", cfg.sensor_prefix))
            .collect();
        Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            names,
            emitted: 0,
            start_ms: None,
        }
    }

    /// The detector ids this source reports for.
    pub fn sensors(&self) -> &[String] {
        &self.names
    }

    fn demand(&self, t_s: f64) -> f64 {
        match self.cfg.pattern {
            Pattern::Constant => 1.0,
            Pattern::Peaks {
                period_s,
                amplitude,
            } => {
                let a = amplitude.clamp(0.0, 1.0);
                let p = period_s.max(1.0);
                1.0 + a * (2.0 * std::f64::consts::PI * t_s / p).sin()
            }
        }
    }

    /// Every reading due up to `now_ms` (at most [`POLL_READINGS_MAX`]).
    pub fn poll(&mut self, now_ms: i64) -> Vec<Reading> {
        if self.names.is_empty() || self.cfg.rate_per_s <= 0.0 {
            return Vec::new();
        }
        let start = *self.start_ms.get_or_insert(now_ms);
        let elapsed_s = (now_ms - start).max(0) as f64 / 1e3;
        let due = (elapsed_s * self.cfg.rate_per_s) as u64;
        let n = due
            .saturating_sub(self.emitted)
            .min(POLL_READINGS_MAX as u64);
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = self.emitted;
            self.emitted += 1;
            let sensor = (k % self.names.len() as u64) as usize;
            let ts_ms = start + (k as f64 * 1e3 / self.cfg.rate_per_s) as i64;
            let demand = self.demand((ts_ms - start) as f64 / 1e3);
            // Counts per interval around 3 vehicles at base demand, whole numbers.
            let count = (3.0 * demand + self.rng.random_range(-1.5..1.5))
                .round()
                .max(0.0);
            let occupancy = ((count * 4.0 + self.rng.random_range(0.0..3.0)) * 10.0).round() / 10.0;
            let occupancy = occupancy.min(100.0);
            let speed = ((13.9 * (1.0 - occupancy / 120.0)) * 10.0).round() / 10.0;
            let queue = if occupancy > 20.0 {
                (occupancy / 10.0).floor()
            } else {
                0.0
            };
            out.push(Reading {
                sensor: self.names[sensor].clone(),
                ts_ms,
                count,
                occupancy,
                speed: speed.max(0.0),
                queue,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: f64) -> SyntheticConfig {
        SyntheticConfig {
            sensors: 8,
            rate_per_s: rate,
            pattern: Pattern::Peaks {
                period_s: 60.0,
                amplitude: 0.5,
            },
            seed: 7,
            sensor_prefix: "s".into(),
        }
    }

    #[test]
    fn produces_the_configured_rate_of_valid_readings() {
        let mut s = SyntheticSource::new(cfg(1000.0));
        let mut total = 0;
        for t in (0..=10_000).step_by(10) {
            for r in s.poll(t) {
                r.validate().expect("valid");
                total += 1;
            }
        }
        assert_eq!(total, 10_000);
    }

    #[test]
    fn same_seed_same_readings() {
        let mut a = SyntheticSource::new(cfg(500.0));
        let mut b = SyntheticSource::new(cfg(500.0));
        assert_eq!(a.poll(1_000), b.poll(1_000));
        assert_eq!(a.sensors().len(), 8);
    }

    #[test]
    fn a_stalled_caller_catches_up_in_bounded_steps() {
        let mut s = SyntheticSource::new(cfg(100_000.0));
        s.poll(0);
        assert_eq!(s.poll(1_000).len(), POLL_READINGS_MAX);
    }
}
