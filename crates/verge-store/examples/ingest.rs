//! Ingest and compression figures for the store, in one run:
//!
//! ```text
//! cargo run --release -p verge-store --example ingest
//! ```
//!
//! 1. Group-committed ingest into [`SledStore`]: 4-column records, about 1,000 per flush.
//! 2. The naive alternative: one sled insert per reading, flushed per 1,000 or per reading.
//! 3. Bytes per value of the block codec against bincode and zstd-of-bincode on the same series.
//!
//! Timing uses the wall clock: this is a measurement, not decision code.

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use verge_proto::{Record, StreamId};
use verge_store::testing::series;
use verge_store::{SledStore, Store, gorilla};

/// Records per flush: the group commit.
const BATCH: usize = 1000;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    println!(
        "verge-store ingest figures (data in {})",
        dir.path().display()
    );
    println!();
    println!("group-committed ingest into SledStore, 4 columns, {BATCH} records per flush:");
    for streams in [1, 16] {
        group_commit(
            &dir.path().join(format!("group-{streams}")),
            streams,
            2_000_000,
        )?;
    }
    println!();
    println!("naive: one sled insert per reading (bincode value), same records:");
    naive(&dir.path().join("naive-batched"), 200_000, BATCH)?;
    naive(&dir.path().join("naive-each"), 2_000, 1)?;
    println!();
    compression();
    Ok(())
}

fn group_commit(dir: &Path, streams: usize, total: usize) -> Result<(), Box<dyn Error>> {
    let per_stream = total / streams;
    let ids: Vec<StreamId> = (0..streams)
        .map(|i| format!("b1/raw/lane-{i}").parse())
        .collect::<Result<_, _>>()?;
    let lanes: Vec<Vec<Record>> = (0..streams)
        .map(|i| series::intersection_lane(per_stream, i as u64))
        .collect();
    let store = SledStore::open(dir)?;
    let step = (BATCH / streams).max(1);
    let mut flushes = Vec::new();
    let start = Instant::now();
    for from in (0..per_stream).step_by(step) {
        let to = (from + step).min(per_stream);
        for (id, lane) in ids.iter().zip(&lanes) {
            store.append(id, from as u64 + 1, &lane[from..to])?;
        }
        let flush = Instant::now();
        store.flush()?;
        flushes.push(flush.elapsed());
    }
    let elapsed = start.elapsed();
    let records = (per_stream * streams) as f64;
    let bytes: u64 = store.streams().iter().map(|s| s.bytes).sum();
    flushes.sort();
    println!(
        "  {streams:>2} streams: {:>9.0} readings/s ({records} in {:.2} s), flush p50 {} p99 {}, \
         {:.3} bytes/value in blocks, sled files {:.1} MB",
        records / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        ms(percentile(&flushes, 0.50)),
        ms(percentile(&flushes, 0.99)),
        bytes as f64 / (records * 4.0),
        store.disk_bytes()? as f64 / 1e6,
    );
    Ok(())
}

fn naive(dir: &Path, total: usize, per_flush: usize) -> Result<(), Box<dyn Error>> {
    let lane = series::intersection_lane(total, 7);
    let db = sled::open(dir)?;
    let config = bincode::config::standard();
    let start = Instant::now();
    for (seq, record) in lane.iter().enumerate() {
        let mut key = b"b1/raw/lane-0\0".to_vec();
        key.extend_from_slice(&(seq as u64 + 1).to_be_bytes());
        db.insert(key, bincode::serde::encode_to_vec(record, config)?)?;
        if (seq + 1) % per_flush == 0 {
            db.flush()?;
        }
    }
    db.flush()?;
    let elapsed = start.elapsed();
    println!(
        "  flush every {per_flush:>4}: {:>9.0} readings/s ({total} in {:.2} s), sled files {:.1} MB",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        db.size_on_disk()? as f64 / 1e6,
    );
    Ok(())
}

fn compression() {
    let records = 1024 * 64;
    let lane = series::intersection_lane(records, 42);
    let config = bincode::config::standard();
    println!("bytes per value, {records} one-second readings of a lane, blocks of 1024 records:");
    println!(
        "  {:<34} {:>8} {:>8} {:>11}",
        "columns", "block", "bincode", "zstd(bin)"
    );
    for (columns, name) in [(3, "count, occupancy, speed (E1)"), (4, "... and queue")] {
        let (mut block, mut plain, mut zstd) = (0, 0, 0);
        for chunk in lane.chunks(1024) {
            let (ts, values) = series::to_columns(chunk, columns);
            block += gorilla::encode(&ts, &values).len();
            let trimmed: Vec<Record> = chunk
                .iter()
                .map(|r| Record {
                    ts_ms: r.ts_ms,
                    values: r.values[..columns].to_vec(),
                })
                .collect();
            let encoded = bincode::serde::encode_to_vec(&trimmed, config).expect("records encode");
            plain += encoded.len();
            zstd += zstd::encode_all(&encoded[..], 3)
                .expect("zstd compresses in memory")
                .len();
        }
        let per_value = |bytes: usize| bytes as f64 / (records * columns) as f64;
        println!(
            "  {name:<34} {:>8.3} {:>8.3} {:>11.3}",
            per_value(block),
            per_value(plain),
            per_value(zstd)
        );
    }
    println!("  (timestamps included in every figure; values counted without them)");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
