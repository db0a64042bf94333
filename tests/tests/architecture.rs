//! The crate boundaries in ARCHITECTURE.md, checked against the real dependency graph.

use std::process::Command;

/// The normal (non-dev) dependency closure of `krate`, as package names.
fn deps_of(krate: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            krate,
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
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn assert_not_in(krate: &str, forbidden: &[&str]) {
    let deps = deps_of(krate);
    for f in forbidden {
        assert!(
            !deps.iter().any(|d| d == f),
            "{krate} must not depend on {f}"
        );
    }
}

#[test]
fn crate_boundaries_hold() {
    // A positive control, so an empty or broken `cargo tree` cannot pass the checks below.
    assert!(deps_of("verge-net").iter().any(|d| d == "quinn"));
    // The wire vocabulary does no IO.
    assert_not_in(
        "verge-proto",
        &["tokio", "quinn", "rustls", "sled", "actix"],
    );
    // Certificates know nothing of actors, storage or sockets.
    assert_not_in("verge-pki", &["actix", "sled", "quinn", "tokio"]);
    // The transport knows nothing of actors or storage.
    assert_not_in("verge-net", &["actix", "sled", "openraft"]);
    // Storage knows nothing of the network or actors.
    assert_not_in("verge-store", &["quinn", "tokio", "actix", "verge-net"]);
    // The replication core decides without IO.
    assert_not_in(
        "verge-replica",
        &["tokio", "quinn", "sled", "actix", "rand", "verge-store"],
    );
    // The control plane reaches the network only through the transport the node gives it.
    assert_not_in(
        "verge-control",
        &["actix", "quinn", "verge-net", "verge-store", "verge-node"],
    );
    // The sync core decides without IO.
    assert_not_in(
        "verge-sync",
        &[
            "tokio",
            "quinn",
            "sled",
            "actix",
            "verge-store",
            "verge-net",
        ],
    );
    // The cloud never depends on a node's internals.
    assert_not_in(
        "verge-cloud",
        &["verge-node", "actix", "verge-store", "aws-lc-rs"],
    );
    // Orchestration talks to nodes only through processes and the admin endpoint.
    assert_not_in("verge-sim", &["verge-node", "actix"]);
    // Inference does no network or storage IO.
    assert_not_in(
        "verge-infer",
        &["verge-net", "verge-store", "quinn", "sled", "actix"],
    );
    // Traffic sources know nothing of the mesh, the control plane or the store.
    assert_not_in(
        "verge-traffic",
        &[
            "verge-net",
            "verge-control",
            "verge-store",
            "quinn",
            "sled",
            "actix",
        ],
    );
}
