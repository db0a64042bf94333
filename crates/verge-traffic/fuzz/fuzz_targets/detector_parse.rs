//! SUMO E1/E2 detector files from arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    verge_traffic::fuzzing::detector_parse(data);
});
