//! The inference benchmark: `cargo run --release -p verge-infer --example bench`.
//!
//! Runs [`verge_infer::bench::run`] (the default model through tract at batch 1 and 64, then
//! onnxruntime through `python3 models/bench_ort.py` if it is installed) and prints the report.

fn main() -> std::process::ExitCode {
    match verge_infer::bench::run() {
        Ok(report) => {
            print!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
