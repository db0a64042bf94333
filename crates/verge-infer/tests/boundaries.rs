//! The crate boundary of DESIGN.md: inference does no network or storage IO.

use std::process::Command;

#[test]
fn verge_infer_imports_neither_net_nor_store() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "verge-infer",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deps: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    // A positive control, so an empty or broken `cargo tree` cannot pass.
    assert!(deps.iter().any(|d| d == "tract-onnx"), "{deps:?}");
    for forbidden in [
        "verge-net",
        "verge-store",
        "quinn",
        "sled",
        "tokio",
        "actix",
    ] {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "verge-infer must not depend on {forbidden}"
        );
    }
}
