//! Harness for the process-level tests in `tests/tests/`: where the `verge` binary is, how to run
//! it with a time bound, and how to read a node's `/metrics`; [`cloud`] runs the reference cloud.
//!
//! The binary is the one `cargo build -p verge` left next to the test executables
//! (`target/<profile>/verge`), or `$VERGE_BIN`. The README's test command builds it first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use verge_sim::{ClusterSpec, LocalCluster};

pub mod cloud;

/// Every test is bounded by this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Path of the `verge` binary under test.
pub fn verge_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VERGE_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/verge
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join("verge");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p verge` before the tests (the README's test command does)",
        bin.display()
    );
    bin
}

/// A cluster of `n` nodes, created but not started, with the test's tuning appended.
pub fn cluster(n: usize) -> LocalCluster {
    let spec = ClusterSpec::corridor(verge_bin(), n);
    LocalCluster::create(&spec).expect("cluster layout")
}

/// Runs `verge ARGS`, killing it if it outlives `timeout`.
pub fn run_verge(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(verge_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn verge");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// `GET path` over plain HTTP/1.0; returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// The value of the first sample line of `metric` (with labels, e.g.
/// `verge_frame_errors_total{kind="oversize"}`) in Prometheus text, or 0.
pub fn metric(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == metric).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Sum of every sample of a metric family (all label sets).
pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let base = name.split('{').next()?;
            (base == family)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

/// Starts every node of `c` and waits until each sees all the others alive.
pub async fn start_mesh(c: &mut LocalCluster) {
    c.start_all().expect("start the nodes");
    let all: Vec<usize> = (0..c.nodes.len()).collect();
    if let Err(e) = c.wait_for_mesh(&all, Duration::from_secs(20)).await {
        // Say which node did not come up and why, from its own log.
        let mut report = String::new();
        for i in all {
            let running = c.is_running(i);
            report.push_str(&format!(
                "\n--- {} (running: {running}) ---\n{}",
                c.nodes[i].id,
                c.log(i)
            ));
        }
        panic!("the mesh did not form: {e:?}{report}");
    }
}
