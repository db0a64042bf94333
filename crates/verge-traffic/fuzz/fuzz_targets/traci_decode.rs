//! TraCI messages, answers and typed values from arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    verge_traffic::fuzzing::traci_decode(data);
});
