//! Held-out accuracy, reproduced without Python:
//! `cargo run --release -p verge-infer --example heldout`.
//!
//! Evaluates models/default (with its upstream slots as recorded, and zeroed) and
//! models/default-noshare (zeroed, as it was trained) on models/default/heldout.f32 and prints
//! each MAE beside the last-value predictor's.

use verge_infer::heldout::{evaluate, models_dir};

fn main() -> std::process::ExitCode {
    let models = models_dir();
    let data = models.join("default/heldout.f32");
    let runs = [
        ("default", false),
        ("default", true),
        ("default-noshare", true),
    ];
    for (name, zero) in runs {
        match evaluate(&models.join(name).join("model.toml"), &data, zero) {
            Ok(report) => println!("{report}"),
            Err(e) => {
                eprintln!("held-out evaluation of {name} failed: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
