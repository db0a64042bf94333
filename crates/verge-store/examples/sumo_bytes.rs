//! Bytes per value of the block codec on real SUMO induction-loop (E1) output, beside bincode and
//! zstd-of-bincode of the same records.
//!
//! Usage: `cargo run --release -p verge-store --example sumo_bytes -- E1.xml`
//!
//! E1.xml is a SUMO detector output file (`<interval ... id=".." begin=".." flow=".." occupancy=".."
//! speed=".."/>`, one line per interval), e.g. made with the recipe in ../shared/sumo/README.md
//! at `--freq 1`. Each detector becomes one series of (time, flow, occupancy, speed) encoded in
//! blocks of 1,024 records. The attribute scan below is a benchmark's shortcut, not a parser: the
//! validated detector-file reader belongs to `verge-traffic`.

use std::collections::BTreeMap;
use std::error::Error;

use verge_proto::Record;
use verge_store::gorilla;

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: sumo_bytes E1.xml (a SUMO induction-loop output file)")?;
    let text = std::fs::read_to_string(&path)?;
    let mut series: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("<interval"))
    {
        let (Some(id), Some(begin), Some(flow), Some(occ), Some(speed)) = (
            attr(line, "id"),
            attr(line, "begin"),
            attr(line, "flow"),
            attr(line, "occupancy"),
            attr(line, "speed"),
        ) else {
            continue;
        };
        let ts_ms = (begin.parse::<f64>()? * 1e3).round() as i64;
        let values = vec![flow.parse()?, occ.parse()?, speed.parse()?];
        series
            .entry(id.to_owned())
            .or_default()
            .push(Record { ts_ms, values });
    }
    let config = bincode::config::standard();
    let (mut block, mut plain, mut zstd, mut values) = (0usize, 0usize, 0usize, 0usize);
    for records in series.values() {
        for chunk in records.chunks(1024) {
            let ts: Vec<i64> = chunk.iter().map(|r| r.ts_ms).collect();
            let columns: Vec<Vec<f64>> = (0..3)
                .map(|c| chunk.iter().map(|r| r.values[c]).collect())
                .collect();
            block += gorilla::encode(&ts, &columns).len();
            let encoded = bincode::serde::encode_to_vec(chunk, config)?;
            plain += encoded.len();
            zstd += zstd::encode_all(&encoded[..], 3)?.len();
            values += chunk.len() * 3;
        }
    }
    let rows: usize = series.values().map(Vec::len).sum();
    println!(
        "{path}: {} detectors, {rows} intervals, {values} values (flow, occupancy, speed)",
        series.len()
    );
    let per = |b: usize| b as f64 / values.max(1) as f64;
    println!(
        "bytes per value: block codec {:.3}   bincode {:.3}   zstd(bincode) {:.3}   (target <= 2.0; timestamps included)",
        per(block),
        per(plain),
        per(zstd)
    );
    Ok(())
}
