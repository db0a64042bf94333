//! Helpers of the tests that run SUMO: finding it, building the grid, a free port, and a guard
//! that kills the SUMO it started on every exit path.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `sumo` is on PATH; if not, prints why the test is skipped.
pub fn sumo_available(test: &str) -> bool {
    let found = Command::new("sumo")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("{test}: skipped: sumo not found (apt-get install -y sumo sumo-tools)");
    }
    found
}

/// Runs `simulations/sumo/make_grid.sh` into `dir` with `args` (about 2 s; killed and failed
/// after 120 s).
pub fn make_grid(dir: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../simulations/sumo/make_grid.sh");
    let log = dir.join("make_grid.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("make_grid.sh starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("make_grid.sh status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("make_grid.sh took more than 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "make_grid.sh failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Lines containing `<interval`, as `grep -c '<interval'` counts them.
pub fn grep_c_interval(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .expect("readable")
        .lines()
        .filter(|l| l.contains("<interval"))
        .count()
}

/// The detector ids `detectors.add.xml` declares.
pub fn declared_detectors(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("detectors.add.xml")).expect("readable");
    text.lines()
        .filter_map(|l| {
            let rest = l.split_once(" id=\"")?.1;
            Some(rest.split_once('"')?.0.to_string())
        })
        .collect()
}

/// A port that was free a moment ago (bound to 127.0.0.1:0 and released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A SUMO process that is killed when the guard drops (test failure, panic, early return).
pub struct Sumo {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Sumo {
    /// Starts `sumo -c grid.sumocfg --remote-port PORT --num-clients K` in `dir`.
    pub fn start(dir: &Path, port: u16, clients: u32) -> Self {
        let log = dir.join("sumo.log");
        let file = std::fs::File::create(&log).expect("log file");
        // Without SUMO_HOME, SUMO cannot find its XML schemas and refuses the route file.
        let home = std::env::var("SUMO_HOME").unwrap_or_else(|_| "/usr/share/sumo".into());
        let child = Command::new("sumo")
            .env("SUMO_HOME", home)
            .current_dir(dir)
            .args(["-c", "grid.sumocfg", "--remote-port"])
            .arg(port.to_string())
            .arg("--num-clients")
            .arg(clients.to_string())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("sumo starts");
        Self {
            child: Some(child),
            log,
        }
    }

    /// A guard with no process (to swap in when killing the real one early).
    pub fn none() -> Self {
        Self {
            child: None,
            log: PathBuf::new(),
        }
    }

    /// Waits up to `limit` for SUMO to exit by itself (after its last client closed).
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Sumo {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
