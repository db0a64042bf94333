//! `verge demo` as a user runs it: the real binary starts three nodes and a reference cloud,
//! predicts, syncs windows, checks the cloud holds each exactly once, and stops everything it
//! started, leaving no directory behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use verge_tests::verge_bin;

/// The demo runs 12 s; mesh, drain and shutdown get the rest.
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `verge ARGS` in `dir`; past `timeout` it gets SIGTERM (the demo stops its nodes and cloud
/// on it), and SIGKILL 10 s later. Only this child is ever signalled.
fn run_verge_in(dir: &Path, args: &[&str], timeout: Duration) -> (Output, bool) {
    let mut child = Command::new(verge_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn verge");
    let pid = Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        let now = Instant::now();
        if now > deadline && !timed_out {
            timed_out = true;
            let _ = kill(pid, Signal::SIGTERM);
        }
        if now > deadline + Duration::from_secs(10) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().expect("output"), timed_out)
}

/// The numbers on the report's line `key` (`  predictions          55`).
fn report_numbers(text: &str, key: &str) -> Vec<u64> {
    let line = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .unwrap_or_else(|| panic!("no report line `{key}`"));
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Pids of processes whose command line mentions `needle`.
fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

#[test]
fn the_demo_predicts_syncs_every_window_once_and_cleans_up() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let started = Instant::now();
    let (out, timed_out) = run_verge_in(
        &repo,
        &["demo", "--duration", "12", "--nodes", "3"],
        DEMO_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n--- stderr ---\n{stderr}");
    println!("the demo took {:.1} s", started.elapsed().as_secs_f64());
    assert!(!timed_out, "the demo outlived {DEMO_TIMEOUT:?}");
    assert_eq!(out.status.code(), Some(0), "the demo exits 0");

    assert!(
        stdout.contains("verge demo: 3 nodes") && stdout.contains("predicting with"),
        "three nodes with the default model"
    );
    let predictions = report_numbers(&stdout, "predictions ");
    assert!(predictions[0] > 0, "predictions were made: {predictions:?}");
    let windows = report_numbers(&stdout, "windows ");
    let (produced, cloud) = (windows[0], windows[1]);
    assert!(cloud > 0, "the cloud holds windows");
    assert_eq!(cloud, produced, "the cloud holds what the nodes produced");
    assert!(
        stdout.contains("exactly once         yes"),
        "the exactly-once line"
    );
    assert!(
        stdout.contains("cloud acknowledged"),
        "progress lines with the cloud's count"
    );

    // The cluster directory (nodes' data, certificates, the cloud's data) is gone, and no process
    // the demo started is left: each one's command line names that directory.
    let root = stdout
        .lines()
        .find_map(|l| l.split_once("stopped; removed ").map(|(_, d)| d.trim()))
        .expect("the demo says what it removed");
    assert!(root.contains("verge-cluster-"), "{root}");
    assert!(!Path::new(root).exists(), "{root} was removed");
    let left = processes_naming(root);
    assert!(left.is_empty(), "processes the demo left running: {left:?}");
}
