//! The inference benchmark: `cargo run --release -p verge-infer --example bench`.
//!
//! Runs [`verge_infer::bench::run`] (the default model through tract at batch 1 and 64, then
//! onnxruntime through `python3 models/bench_ort.py` if it is installed) and prints the report.
//! Options, for profiling: `-- [--batch N ...] [--seconds S] [--no-ort] [--manifest model.toml]`.

use std::process::ExitCode;
use std::time::Duration;

use verge_infer::bench::{BenchConfig, run, run_with};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.is_empty() {
        run()
    } else {
        let mut cfg = BenchConfig::default();
        let mut batches = Vec::new();
        let mut it = args.iter().peekable();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--no-ort" => cfg.ort_script = None,
                "--manifest" => match it.next() {
                    Some(m) => cfg.manifest = m.into(),
                    None => return usage("--manifest takes a model.toml"),
                },
                "--seconds" => match it.next().and_then(|s| s.parse::<f64>().ok()) {
                    Some(s) if s > 0.0 && s < 600.0 => cfg.duration = Duration::from_secs_f64(s),
                    _ => return usage("--seconds takes a number of seconds below 600"),
                },
                "--batch" => {
                    while let Some(n) = it.peek().and_then(|s| s.parse::<usize>().ok()) {
                        batches.push(n);
                        it.next();
                    }
                }
                other => return usage(&format!("unknown argument {other}")),
            }
        }
        if !batches.is_empty() {
            cfg.batches = batches;
        }
        run_with(&cfg)
    };
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "bench: {problem}\nusage: bench [--batch N ...] [--seconds S] [--no-ort] [--manifest model.toml]"
    );
    ExitCode::from(2)
}
