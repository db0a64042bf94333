//! Entry points that feed arbitrary bytes to every decoder of outside input: the TraCI codec
//! and the detector-file parser. The cargo-fuzz targets in `crates/verge-traffic/fuzz/` and
//! the bounded arbitrary-bytes property test (`tests/arbitrary_bytes.rs`, run in CI) both call
//! them, so the two exercise the same code.
//!
//! Each function must return for any input without panicking; what it decodes is thrown away
//! after a few consistency checks (a decoded value re-encodes to the same bytes).
//!
//! To run the fuzzers (cargo-fuzz needs nightly's sanitizer flags; on a stable toolchain
//! `RUSTC_BOOTSTRAP=1` unlocks them):
//!
//! ```text
//! cargo install cargo-fuzz
//! cd crates/verge-traffic/fuzz
//! RUSTC_BOOTSTRAP=1 cargo fuzz run traci_decode -- -max_total_time=60
//! RUSTC_BOOTSTRAP=1 cargo fuzz run detector_parse -- -max_total_time=60
//! ```

use crate::detector::DetectorKind;
use crate::replay::{DetectorParser, ReplayConfig, ReplaySource};
use crate::traci::ReadPlan;
use crate::traci::codec::{self, Cursor, Request, Value};

/// Decodes `data` as a TraCI message, as answers to a detector read and to a simulation step,
/// and as a typed value.
///
/// # Panics
///
/// If a decoded request or value does not re-encode to the bytes it came from (a codec bug).
pub fn traci_decode(data: &[u8]) {
    if let Ok(cmds) = codec::decode_message(data, codec::MESSAGE_BYTES_MAX) {
        for cmd in cmds {
            if let Ok(req) = Request::decode(cmd) {
                let mut out = Vec::new();
                if req.encode(&mut out).is_ok() {
                    let mut c = Cursor::new(&out);
                    let back = c.command().map(Request::decode);
                    assert!(matches!(back, Ok(Ok(_))), "{req:?} does not decode again");
                }
            }
        }
    }
    if let Ok(plan) = ReadPlan::new(vec![
        ("e1_A1_A0A1_0".into(), DetectorKind::E1),
        ("e2_A1_A0A1_0".into(), DetectorKind::E2),
    ]) && let Ok(responses) = codec::decode_responses(data, plan.requests())
    {
        let _ = plan.decode(responses);
    }
    let _ = codec::decode_responses(
        data,
        &[
            Request::SimulationStep { target_s: 0.0 },
            Request::GetVersion,
        ],
    );
    let mut c = Cursor::new(data);
    if let Ok(v) = Value::decode(&mut c) {
        let mut out = Vec::new();
        if v.encode(&mut out).is_ok() {
            assert_eq!(&out[..], &data[..c.pos()], "{v:?} re-encodes differently");
        }
    }
}

/// Parses `data` as an E1 and as an E2 file, and replays it as both at once.
pub fn detector_parse(data: &[u8]) {
    for kind in [DetectorKind::E1, DetectorKind::E2] {
        // Errors are skipped; the parser goes on after them.
        for r in DetectorParser::new(data, kind, 0).flatten() {
            let _ = r.validate();
        }
    }
    if let Ok(src) = ReplaySource::new(
        Some(Box::new(std::io::Cursor::new(data.to_vec()))),
        Some(Box::new(std::io::Cursor::new(data.to_vec()))),
        ReplayConfig::default(),
    ) {
        for _ in src {}
    }
}
