//! Replays the real E1/E2 files of a SUMO run of the 3x3 grid through the parser, the merged
//! replay source and the validator. Needs `sumo`; prints "skipped" and passes without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufReader;
use std::time::Instant;

use verge_traffic::Validator;
use verge_traffic::detector::{DetectorKind, approaches_for, tls_of};
use verge_traffic::replay::{DetectorParser, ReplayConfig, ReplaySource, declared_detectors};
use verge_traffic::window::WindowConfig;

#[test]
fn the_grids_detector_files_replay_row_for_row_and_validate() {
    if !common::sumo_available("the_grids_detector_files_replay_row_for_row_and_validate") {
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    common::make_grid(dir.path(), &["--freq", "5"]);
    let add = BufReader::new(File::open(dir.path().join("detectors.add.xml")).expect("add"));
    let declared: Vec<String> = declared_detectors(add)
        .expect("a valid additional file")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(declared.len(), 144, "72 E1 and 72 E2 detectors");
    assert_eq!(declared, common::declared_detectors(dir.path()));

    let mut per_file = BTreeMap::new();
    for (kind, name) in [(DetectorKind::E1, "e1.xml"), (DetectorKind::E2, "e2.xml")] {
        let path = dir.path().join("out").join(name);
        let expected_rows = common::grep_c_interval(&path);
        assert!(expected_rows > 10_000, "{name}: {expected_rows} rows");
        let mut validator = Validator::new(declared.iter().cloned());
        let mut rows = 0usize;
        let mut vehicles = 0.0;
        let input = BufReader::new(File::open(&path).expect("open"));
        for row in DetectorParser::new(input, kind, 1_700_000_000_000) {
            let reading = row.unwrap_or_else(|e| panic!("{name}: {e}"));
            validator
                .check(&reading)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(reading.sensor.starts_with(kind.prefix()));
            vehicles += reading.count;
            rows += 1;
        }
        assert_eq!(rows, expected_rows, "{name}: every row parsed");
        assert!(vehicles > 1_000.0, "{name}: {vehicles} vehicles counted");
        per_file.insert(name, rows);
    }

    // The merged replay of one intersection: only its detectors, in time order, every row.
    let cfg = ReplayConfig {
        base_epoch_ms: 0,
        speed: 1.0,
        tls: BTreeSet::from(["B1".to_string()]),
    };
    let out = dir.path().join("out");
    let src = ReplaySource::open(Some(&out.join("e1.xml")), Some(&out.join("e2.xml")), cfg)
        .expect("opens");
    let b1: Vec<&String> = declared
        .iter()
        .filter(|d| tls_of(d) == Some("B1"))
        .collect();
    assert_eq!(b1.len(), 16);
    let mut validator = Validator::new(b1.iter().map(|s| s.as_str()));
    let mut last_ts = i64::MIN;
    let mut n = 0usize;
    for r in src {
        let r = r.expect("valid row");
        validator.check(&r).expect("a B1 detector, time forward");
        assert!(r.ts_ms >= last_ts, "merged in time order");
        last_ts = r.ts_ms;
        n += 1;
    }
    let total = per_file["e1.xml"] + per_file["e2.xml"];
    assert_eq!(n * 9, total, "B1 holds one ninth of the rows");

    // Its approaches: four incoming edges, each with two lanes' E1 and E2.
    let approaches = approaches_for("B1", declared.iter().map(String::as_str));
    assert_eq!(approaches.len(), 4, "{approaches:?}");
    assert!(approaches.values().all(|d| d.len() == 4));
    WindowConfig {
        approaches,
        ..WindowConfig::default()
    }
    .validate()
    .expect("a valid window config");
    println!("replayed {total} rows in {:?}", t0.elapsed());
}

/// The full-size files (`--freq 1`: 79,128 rows each, the E2 file about 50 MB) stream through
/// in constant memory. Ignored by default (it takes a few seconds in a debug build):
/// `cargo test -p verge-traffic --test replay_grid -- --ignored --nocapture`.
#[test]
#[ignore = "a few seconds of parsing; run by hand for throughput"]
fn full_size_files_stream_through() {
    if !common::sumo_available("full_size_files_stream_through") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    common::make_grid(dir.path(), &["--freq", "1"]);
    let out = dir.path().join("out");
    let bytes = std::fs::metadata(out.join("e2.xml")).expect("e2").len()
        + std::fs::metadata(out.join("e1.xml")).expect("e1").len();
    let t0 = Instant::now();
    let src = ReplaySource::open(
        Some(&out.join("e1.xml")),
        Some(&out.join("e2.xml")),
        ReplayConfig::default(),
    )
    .expect("opens");
    let mut n = 0usize;
    for r in src {
        r.expect("valid row");
        n += 1;
    }
    let s = t0.elapsed().as_secs_f64();
    assert_eq!(
        n,
        common::grep_c_interval(&out.join("e1.xml")) + common::grep_c_interval(&out.join("e2.xml"))
    );
    println!(
        "{n} rows, {:.1} MB in {s:.2} s ({:.1} MB/s)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / s
    );
}
