//! Flush durations at the shape of the paced latency run of `verge bench store`: many streams,
//! a few records each per flush, so that compaction of small blocks is what varies.
//!
//! ```text
//! cargo run --release -p verge-store --example flush_latency [-- STREAMS RECORDS FLUSHES]
//! ```
//!
//! Defaults: 64 streams, 3 records per stream per flush, 2,000 flushes. Timing uses the wall
//! clock: this is a measurement, not decision code.

use std::error::Error;
use std::time::{Duration, Instant};

use verge_proto::{Record, StreamId};
use verge_store::testing::series;
use verge_store::{SledStore, Store};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let streams = args.next().transpose()?.unwrap_or(64);
    let per_flush = args.next().transpose()?.unwrap_or(3);
    let flushes = args.next().transpose()?.unwrap_or(2_000);
    let dir = tempfile::tempdir()?;
    let ids: Vec<StreamId> = (0..streams)
        .map(|i| format!("b1/raw/l{i}").parse())
        .collect::<Result<_, _>>()?;
    let lanes: Vec<Vec<Record>> = (0..streams)
        .map(|i| series::intersection_lane(per_flush * flushes, i as u64))
        .collect();
    let store = SledStore::open(dir.path())?;
    let mut took = Vec::with_capacity(flushes);
    for f in 0..flushes {
        let from = f * per_flush;
        for (id, lane) in ids.iter().zip(&lanes) {
            store.append(id, from as u64 + 1, &lane[from..from + per_flush])?;
        }
        let t = Instant::now();
        store.flush()?;
        took.push(t.elapsed());
    }
    let total: Duration = took.iter().sum();
    let over = |ms: u64| {
        took.iter()
            .filter(|d| **d > Duration::from_millis(ms))
            .count()
    };
    let (over2, over5) = (over(2), over(5));
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    println!(
        "{streams} streams x {per_flush} records per flush, {flushes} flushes: mean {:.3} ms, \
         p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} ms; over 2 ms {over2}, over 5 ms {over5}",
        total.as_secs_f64() * 1e3 / flushes as f64,
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
    Ok(())
}
