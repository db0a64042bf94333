//! Realistic sensor series for compression tests and benchmarks.
//!
//! The model is one lane at a signalised intersection, sampled every second the way SUMO's
//! induction loop (E1) and lane-area detector (E2) report it: vehicles that passed the loop,
//! occupancy in percent and mean speed in m/s (both with two decimals, as SUMO writes them; speed
//! -1 when nothing passed), and the queue in vehicles. It is deterministic for a seed and
//! needs no simulator; it is not a traffic model anyone should tune signals against.

use verge_proto::Record;

/// The first timestamp of every series: 2023-11-14T22:13:20Z in milliseconds.
pub const START_MS: i64 = 1_700_000_000_000;

/// Signal cycle in seconds, of which the first `GREEN_S` are green.
const CYCLE_S: u64 = 90;
const GREEN_S: u64 = 40;

/// `records` one-second readings of one lane: `[count, occupancy %, speed m/s, queue]`.
pub fn intersection_lane(records: usize, seed: u64) -> Vec<Record> {
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let offset = rng.next() % CYCLE_S;
    let mut queue = 0_u32;
    (0..records as u64)
        .map(|s| {
            let green = (s + offset) % CYCLE_S < GREEN_S;
            // About 900 vehicles an hour arrive at the back of the queue or the loop.
            let arrival = rng.unit() < 0.25;
            let (count, occupancy, speed) = if green && queue > 0 {
                // The queue discharges at a vehicle every two seconds, slowly over the loop.
                if s % 2 == 0 {
                    queue -= 1;
                    let speed = 2.0 + 4.0 * rng.unit();
                    (1.0, (5.0 / speed * 100.0).min(100.0), speed)
                } else {
                    (0.0, 100.0 * rng.unit(), -1.0)
                }
            } else if green && arrival {
                let speed = 11.0 + 3.0 * rng.unit();
                (1.0, 5.0 / speed * 100.0, speed)
            } else if !green && queue > 0 {
                // The first vehicle of the queue stands on the loop: full occupancy, no passage.
                (0.0, 100.0, -1.0)
            } else {
                (0.0, 0.0, -1.0)
            };
            if !green && arrival {
                queue += 1;
            }
            Record {
                ts_ms: START_MS + 1000 * s as i64,
                values: vec![
                    count,
                    two_decimals(occupancy),
                    two_decimals(speed),
                    f64::from(queue),
                ],
            }
        })
        .collect()
}

/// Splits records into the codec's columns.
pub fn to_columns(records: &[Record], columns: usize) -> (Vec<i64>, Vec<Vec<f64>>) {
    let ts = records.iter().map(|r| r.ts_ms).collect();
    let columns = (0..columns)
        .map(|c| records.iter().map(|r| r.values[c]).collect())
        .collect();
    (ts, columns)
}

/// The double SUMO's text output parses to.
fn two_decimals(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// xorshift64*: enough randomness for a synthetic series, and no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64
    }
}
