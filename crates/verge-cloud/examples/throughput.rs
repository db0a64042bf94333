//! Sync throughput of one client posting batches to the reference cloud over HTTPS on
//! 127.0.0.1, each acknowledged only once durable (fsynced).
//!
//! ```text
//! cargo run --release -p verge-cloud --example throughput [-- WINDOWS_TOTAL]
//! ```
//!
//! Prints windows/s for batches of 100 and 1,000 windows, posted one at a time (a gateway that
//! waits for each acknowledgement) and four at a time (on separate streams, as a gateway syncing
//! several streams at once). The issue's target is 50,000 windows/s.

use std::time::{Duration, Instant};

use verge_cloud::{Batch, CloudClient, CloudServerConfig, PostOutcome, Window, serve};

const TOKEN: &str = "bench-token";

fn batch(stream: &str, first: u64, n: u64) -> Batch {
    Batch {
        cluster: "bench".into(),
        term: 1,
        gateway: "b1".into(),
        stream: stream.into(),
        first_seq: first,
        last_seq: first + n - 1,
        windows: (first..first + n)
            .map(|seq| Window {
                seq,
                ts_ms: 1_700_000_000_000 + seq as i64 * 10_000,
                // Count, mean occupancy, mean speed, max queue: an aggregate window.
                values: vec![(seq % 40) as f64, 0.137 * (seq % 7) as f64, 48.25, 3.0],
            })
            .collect(),
    }
}

/// Posts `total` windows in batches of `per_batch` over `lanes` streams in parallel; returns
/// windows per second.
async fn run(client: &CloudClient, tag: &str, total: u64, per_batch: u64, lanes: u64) -> f64 {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let client = client.clone();
        let stream = format!("b{lane}/aggregates/{tag}");
        let batches = total / lanes / per_batch;
        tasks.spawn(async move {
            for i in 0..batches {
                let b = batch(&stream, 1 + i * per_batch, per_batch);
                match client.post_batch(&b).await {
                    Ok(PostOutcome::Stored { stored, .. }) if stored == per_batch => {}
                    other => panic!("unexpected answer: {other:?}"),
                }
            }
            batches * per_batch
        });
    }
    let mut sent = 0;
    while let Some(n) = tasks.join_next().await {
        sent += n.expect("lane");
    }
    sent as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("verge-cloud-throughput-{}", std::process::id()));
    let cloud = serve(CloudServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        &dir,
        TOKEN,
    ))
    .await
    .expect("cloud starts");
    let client = CloudClient::new(
        &cloud.url(),
        cloud.cert_path(),
        Some(TOKEN.into()),
        Duration::from_secs(30),
    )
    .expect("client");
    // Warm up: connection, TLS session, sled's first pages.
    run(&client, "warmup", 2_000, 100, 1).await;
    println!(
        "verge-cloud sync throughput, {total} windows per run, HTTPS on 127.0.0.1, fsync per ack"
    );
    println!(
        "{:>18} {:>10} {:>14}",
        "windows/batch", "in flight", "windows/s"
    );
    for (per_batch, lanes) in [(100, 1), (1_000, 1), (100, 4), (1_000, 4)] {
        let tag = format!("w{per_batch}x{lanes}");
        let rate = run(&client, &tag, total, per_batch, lanes).await;
        println!("{per_batch:>18} {lanes:>10} {rate:>14.0}");
    }
    cloud.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
