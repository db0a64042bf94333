//! Two TraCI sources (two intersections, two clients of one SUMO in lockstep) for 120 simulated
//! seconds; their passage counts must match what SUMO's own E1 files say for the same run.
//! Needs `sumo`; prints "skipped" and passes without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use verge_traffic::detector::{DetectorKind, tls_of};
use verge_traffic::replay::DetectorParser;
use verge_traffic::traci::{SourceError, TraciConfig, TraciSource};
use verge_traffic::{Reading, Validator};

const SIM_SECONDS: usize = 120;
const BASE_MS: i64 = 1_700_000_000_000;

/// Runs one source for `SIM_SECONDS` intervals of 1 s and closes it.
async fn drive(
    addr: SocketAddr,
    tls: &str,
    order: i32,
) -> Result<(Vec<(String, DetectorKind)>, Vec<Reading>, i64), SourceError> {
    let mut cfg = TraciConfig::new(addr, tls, order);
    cfg.base_epoch_ms = BASE_MS;
    cfg.connect_wait_ms = 20_000;
    cfg.io_timeout_ms = 20_000;
    let mut src = TraciSource::connect(cfg).await?;
    let detectors = src.detectors().to_vec();
    assert_eq!(src.approaches().len(), 4, "{tls}: four incoming edges");
    let mut readings = Vec::new();
    for _ in 0..SIM_SECONDS {
        match src.next_interval().await? {
            Some(r) => readings.extend(r),
            None => break,
        }
    }
    let sim_ms = src.sim_ms();
    src.close().await?;
    Ok((detectors, readings, sim_ms))
}

/// The count (E1 nVehContrib, E2 nVehEntered) per detector of `tls` in a detector file,
/// summed over intervals ending at or before `until_ms`.
fn file_counts(
    path: &std::path::Path,
    kind: DetectorKind,
    tls: &str,
    until_ms: i64,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let input = BufReader::new(File::open(path).expect("detector file"));
    for r in DetectorParser::new(input, kind, 0) {
        let r = r.expect("valid row");
        if tls_of(&r.sensor) == Some(tls) && r.ts_ms <= until_ms {
            *out.entry(r.sensor).or_insert(0.0) += r.count;
        }
    }
    out
}

/// nVehEntered per E1 detector of `tls` (vehicles that touched the loop), summed likewise.
fn e1_file_entered(path: &std::path::Path, tls: &str, until_ms: i64) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).expect("e1.xml");
    let attr = |line: &str, name: &str| -> Option<String> {
        let rest = line.split_once(&format!(" {name}=\""))?.1;
        Some(rest.split_once('"')?.0.to_string())
    };
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("<interval")) {
        let (Some(id), Some(end), Some(n)) = (
            attr(line, "id"),
            attr(line, "end"),
            attr(line, "nVehEntered"),
        ) else {
            continue;
        };
        let end_ms = (end.parse::<f64>().expect("end") * 1000.0).round() as i64;
        if tls_of(&id) == Some(tls) && end_ms <= until_ms {
            *out.entry(id).or_insert(0.0) += n.parse::<f64>().expect("nVehEntered");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_intersections_step_in_lockstep_and_count_what_sumo_counts() {
    if !common::sumo_available("two_intersections_step_in_lockstep_and_count_what_sumo_counts") {
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    common::make_grid(dir.path(), &["--freq", "1", "--no-run"]);
    let port = common::free_port();
    let mut sumo = common::Sumo::start(dir.path(), port, 2);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let run = async { tokio::join!(drive(addr, "B1", 1), drive(addr, "C2", 2)) };
    let (b1, c2) = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out; sumo log: {}",
                std::fs::read_to_string(&sumo.log).unwrap_or_default()
            )
        });
    let log = || std::fs::read_to_string(&sumo.log).unwrap_or_default();
    let results = [
        (
            "B1",
            b1.unwrap_or_else(|e| panic!("B1: {e}; sumo log: {}", log())),
        ),
        (
            "C2",
            c2.unwrap_or_else(|e| panic!("C2: {e}; sumo log: {}", log())),
        ),
    ];
    // Both clients closed: SUMO writes its files and exits.
    assert!(sumo.wait_exit(Duration::from_secs(30)), "sumo did not exit");

    for (tls, (detectors, readings, sim_ms)) in &results {
        assert_eq!(*sim_ms, SIM_SECONDS as i64 * 1000, "{tls}");
        assert_eq!(detectors.len(), 16, "{tls}: {detectors:?}");
        let ids: BTreeSet<&str> = detectors.iter().map(|(d, _)| d.as_str()).collect();
        assert!(
            ids.iter().all(|d| tls_of(d) == Some(*tls)),
            "{tls}: {ids:?}"
        );
        assert_eq!(
            readings.len(),
            16 * SIM_SECONDS,
            "{tls}: one reading per detector per second"
        );
        let mut v = Validator::new(ids.iter().copied());
        for r in readings {
            v.check(r).unwrap_or_else(|e| panic!("{tls}: {e}"));
            assert_eq!((r.ts_ms - BASE_MS) % 1_000, 0);
        }
        let seen: BTreeSet<&str> = readings.iter().map(|r| r.sensor.as_str()).collect();
        assert_eq!(
            seen, ids,
            "{tls}: readings for its detectors only, all of them"
        );

        let ours: f64 = readings
            .iter()
            .filter(|r| r.sensor.starts_with("e1_"))
            .map(|r| r.count)
            .sum();
        let sumo_counts = file_counts(
            &dir.path().join("out/e1.xml"),
            DetectorKind::E1,
            tls,
            *sim_ms,
        );
        assert_eq!(sumo_counts.len(), 8, "{tls}: {sumo_counts:?}");
        let theirs: f64 = sumo_counts.values().sum();
        let entered = e1_file_entered(&dir.path().join("out/e1.xml"), tls, *sim_ms);
        for (det, n) in &sumo_counts {
            let mine: f64 = readings
                .iter()
                .filter(|r| &r.sensor == det)
                .map(|r| r.count)
                .sum();
            // Per loop: passages over TraCI lie between the vehicles that left the loop
            // (nVehContrib) and those that touched it (nVehEntered).
            let touched = entered.get(det).copied().unwrap_or(0.0);
            assert!(
                *n <= mine && mine <= touched,
                "{det}: {mine} over TraCI, {n} left and {touched} touched the loop in SUMO's file"
            );
        }
        let queue_max = readings.iter().map(|r| r.queue).fold(0.0, f64::max);
        println!(
            "{tls}: {ours} passages over TraCI; SUMO's E1 file: {theirs} left the loops, {} touched them; max queue {queue_max}",
            entered.values().sum::<f64>()
        );
        // E2: vehicles entering the area over TraCI against the file's nVehEntered. They agree
        // to within one per detector (in the runs seen, one detector of sixteen was one short
        // over TraCI; the cause, probably a lane change in and out between two samples, was
        // not pinned down).
        let e2_file = file_counts(
            &dir.path().join("out/e2.xml"),
            DetectorKind::E2,
            tls,
            *sim_ms,
        );
        assert_eq!(e2_file.len(), 8, "{tls}: {e2_file:?}");
        let mut e2_ours = 0.0;
        for (det, n) in &e2_file {
            let mine: f64 = readings
                .iter()
                .filter(|r| &r.sensor == det)
                .map(|r| r.count)
                .sum();
            assert!(
                (mine - n).abs() <= 1.0,
                "{det}: {mine} over TraCI, {n} in SUMO's E2 file"
            );
            e2_ours += mine;
        }
        println!(
            "{tls}: E2 entries {e2_ours} over TraCI, {} in SUMO's E2 file",
            e2_file.values().sum::<f64>()
        );
        assert!(
            theirs > 5.0,
            "{tls}: too little traffic to compare: {theirs}"
        );
        // A vehicle on a loop at the end counts over TraCI when it arrives but in the file
        // only once it has left: allow one per loop.
        assert!(
            (ours - theirs).abs() <= 8.0,
            "{tls}: {ours} over TraCI vs {theirs} in the file"
        );
    }
    println!("live run took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_stops_cleanly_when_the_simulation_ends() {
    if !common::sumo_available("a_source_stops_cleanly_when_the_simulation_ends") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Departures end at 20 s; the last vehicle arrives a few minutes of simulated time later.
    common::make_grid(dir.path(), &["--freq", "1", "--end", "20", "--no-run"]);
    let port = common::free_port();
    let mut sumo = common::Sumo::start(dir.path(), port, 1);
    let mut cfg = TraciConfig::new(([127, 0, 0, 1], port).into(), "A0", 1);
    cfg.connect_wait_ms = 20_000;
    cfg.interval_ms = 10_000;
    let run = async {
        let mut src = TraciSource::connect(cfg).await?;
        // A controlling node sets phases between intervals through the same connection.
        if let Some(c) = src.client() {
            c.set_phase("A0", 1).await?;
            let e = c.set_phase("A0", 99).await.expect_err("no phase 99");
            assert_eq!(e.kind(), "refused", "{e}");
        }
        let mut intervals = 0;
        let mut last = None;
        while let Some(r) = src.next_interval().await? {
            intervals += 1;
            last = r.first().map(|r| r.ts_ms);
            assert!(intervals < 1_000, "the simulation never ended");
        }
        assert!(src.is_finished());
        assert!(src.next_interval().await?.is_none(), "stays finished");
        Ok::<_, SourceError>((intervals, last, src.sim_ms()))
    };
    let (intervals, last, sim_ms) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("in time")
        .expect("runs to the end");
    println!("ended at {sim_ms} ms of simulated time after {intervals} intervals");
    assert!(sim_ms > 20_000, "{sim_ms}");
    assert_eq!(last, Some(sim_ms), "the last, partial interval is emitted");
    assert!(
        sumo.wait_exit(Duration::from_secs(30)),
        "sumo exits after the close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_lost_connections_are_retryable_errors() {
    // A port held bound but never listening: connecting is refused, and neither another test's
    // SUMO nor the kernel's choice of source port (a TCP self-connect) can take it meanwhile.
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr: SocketAddr = held.local_addr().expect("addr");
    let e = TraciSource::connect(TraciConfig::new(addr, "A0", 1))
        .await
        .expect_err("refused");
    drop(held);
    assert_eq!(e.kind(), "connect");
    assert!(e.is_retryable(), "{e}");

    if !common::sumo_available("refused_and_lost_connections_are_retryable_errors") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    common::make_grid(dir.path(), &["--no-run"]);
    let port = common::free_port();
    let mut sumo = common::Sumo::start(dir.path(), port, 1);
    let mut cfg = TraciConfig::new(([127, 0, 0, 1], port).into(), "B1", 1);
    cfg.connect_wait_ms = 20_000;
    cfg.io_timeout_ms = 10_000;
    let mut src = tokio::time::timeout(Duration::from_secs(30), TraciSource::connect(cfg))
        .await
        .expect("in time")
        .expect("connects");
    src.next_interval().await.expect("steps").expect("readings");
    // SUMO dies mid-run.
    drop(std::mem::replace(&mut sumo, common::Sumo::none()));
    let e = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Err(e) = src.next_interval().await {
                return e;
            }
        }
    })
    .await
    .expect("in time");
    assert_eq!(e.kind(), "disconnected", "{e}");
    assert!(e.is_retryable());
}
