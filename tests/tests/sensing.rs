//! Real SUMO traffic through real node processes: a three-node mesh replays the detector files
//! of a SUMO run, one intersection per node, and stores every valid row exactly once while
//! invalid rows are refused and counted.
//!
//! Needs `sumo` (.ci/run installs it); without it the test says so and passes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use verge_proto::StreamKind;
use verge_proto::admin::StreamRole;
use verge_sim::{ClusterSpec, LocalCluster};
use verge_tests::{TEST_TIMEOUT, http_get, metric, metric_sum, start_mesh, verge_bin};

fn sumo_missing() -> bool {
    let missing = Command::new("sumo").arg("--version").output().is_err();
    if missing {
        println!("skipped: sumo not found (apt-get install -y sumo sumo-tools)");
    }
    missing
}

/// Runs `simulations/sumo/make_grid.sh` into `dir`.
fn make_grid(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations/sumo/make_grid.sh");
    if let Err(e) = verge_sim::sumo::make_grid(&script, dir, &["--freq", "5", "--end", "240"]) {
        panic!("{e}");
    }
}

/// One detector row as SUMO wrote it, mapped the way the node maps it: (end in ms, count,
/// occupancy, speed, queue).
type Row = (i64, f64, f64, f64, f64);

fn attr(line: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(line[start..start + len].to_owned())
}

fn num(line: &str, name: &str) -> f64 {
    attr(line, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {line}"))
}

/// Every row of `file` for a detector of light `tls`, per detector, in file order.
fn rows(file: &Path, tls: &str) -> BTreeMap<String, Vec<Row>> {
    let e2 = file.file_name().is_some_and(|n| n == "e2.xml");
    let text = fs::read_to_string(file).expect("read detector file");
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("<interval"))
    {
        let id = attr(line, "id").expect("id");
        if !id.starts_with(&format!("e1_{tls}_")) && !id.starts_with(&format!("e2_{tls}_")) {
            continue;
        }
        let end = (num(line, "end") * 1000.0).round() as i64;
        let row = if e2 {
            let count = num(line, "nVehEntered");
            let speed = num(line, "meanSpeed");
            (
                end,
                count,
                num(line, "meanOccupancy"),
                if speed < 0.0 { 0.0 } else { speed },
                num(line, "maxJamLengthInVehicles"),
            )
        } else {
            let count = num(line, "nVehContrib");
            let speed = num(line, "speed");
            (
                end,
                count,
                num(line, "occupancy"),
                if speed < 0.0 { 0.0 } else { speed },
                0.0,
            )
        };
        out.entry(id).or_default().push(row);
    }
    out
}

/// A copy of `e1` with five bad rows for light B1 before its closing tag: a NaN, a negative
/// count, an undeclared detector, a row whose time goes backwards, and one that does not parse.
fn with_bad_rows(e1: &Path, b1_detector: &str, dir: &Path) -> PathBuf {
    let text = fs::read_to_string(e1).expect("read e1");
    let close = text.rfind("</detector>").expect("closing tag");
    let bad = format!(
        r#"    <interval begin="235.00" end="240.00" id="{b1_detector}" nVehContrib="1" flow="720.00" occupancy="nan" speed="7.80" harmonicMeanSpeed="7.80" length="5.00" nVehEntered="1"/>
    <interval begin="235.00" end="240.00" id="{b1_detector}" nVehContrib="-3" flow="720.00" occupancy="1.00" speed="7.80" harmonicMeanSpeed="7.80" length="5.00" nVehEntered="1"/>
    <interval begin="235.00" end="240.00" id="e1_B1_bogus_0" nVehContrib="1" flow="720.00" occupancy="1.00" speed="7.80" harmonicMeanSpeed="7.80" length="5.00" nVehEntered="1"/>
    <interval begin="0.00" end="5.00" id="{b1_detector}" nVehContrib="0" flow="0.00" occupancy="0.00" speed="-1.00" harmonicMeanSpeed="-1.00" length="-1.00" nVehEntered="0"/>
    <interval begin="235.00" end="240.00" id="{b1_detector}" nVehContrib="many" flow="720.00" occupancy="1.00" speed="7.80" harmonicMeanSpeed="7.80" length="5.00" nVehEntered="1"/>
"#
    );
    let path = dir.join("e1-with-bad-rows.xml");
    fs::write(&path, format!("{}{bad}{}", &text[..close], &text[close..])).expect("write");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sumo_replay_through_three_nodes_stores_every_valid_row_once() {
    if sumo_missing() {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let grid = tempfile::tempdir().expect("temp dir");
        make_grid(grid.path());
        let out = grid.path().join("out");
        let lights = ["B1", "B2", "C1"];
        let mut expected: Vec<BTreeMap<String, Vec<Row>>> = Vec::new();
        for tls in lights {
            let mut m = rows(&out.join("e1.xml"), tls);
            m.extend(rows(&out.join("e2.xml"), tls));
            assert!(m.len() >= 8, "light {tls} has detectors: {:?}", m.keys());
            expected.push(m);
        }
        let b1_loop = expected[0]
            .keys()
            .find(|id| id.starts_with("e1_"))
            .expect("an E1 loop at B1")
            .clone();
        let dirty_e1 = with_bad_rows(&out.join("e1.xml"), &b1_loop, grid.path());

        let mut c = LocalCluster::create(&ClusterSpec::corridor(verge_bin(), 3)).expect("layout");
        for (i, tls) in lights.iter().enumerate() {
            let e1 = if i == 0 { dirty_e1.clone() } else { out.join("e1.xml") };
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&c.nodes[i].config)
                .expect("config");
            write!(
                f,
                // At 100x, the default 2 s of allowed lateness are 20 ms of wall time: the
                // windows follow how far the replay has delivered, not the wall clock, so a busy
                // machine delays windows, never makes readings late for them.
                "\n[sensors.replay]\ndetectors = {:?}\ne1 = {:?}\ne2 = {:?}\ntls = [{tls:?}]\nspeed = 100\n",
                grid.path().join("detectors.add.xml"),
                e1,
                out.join("e2.xml"),
            )
            .expect("append config");
        }
        start_mesh(&mut c).await;
        let admin = c.admin();

        // Every replay reaches the end of its files.
        for (i, want) in expected.iter().enumerate() {
            let addr = c.nodes[i].listen;
            let mut last = None;
            for _ in 0..600 {
                let status = admin.status(addr).await.expect("status");
                let sensor = status.sensor.expect("a sensor source");
                let done = sensor.state == "finished";
                last = Some(sensor);
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let sensor = last.expect("status");
            assert_eq!(sensor.state, "finished", "node {i}: {sensor:?}\n{}", c.log(i));
            let rows: usize = want.values().map(Vec::len).sum();
            assert_eq!(sensor.readings as usize, rows, "node {i}: {sensor:?}");
            assert_eq!(sensor.rejected, if i == 0 { 5 } else { 0 }, "node {i}: {sensor:?}");
            assert_eq!(sensor.failures, 0, "node {i}: {sensor:?}");
        }

        // Every valid row is stored once, in order, with its values, and replicated.
        for (i, want) in expected.iter().enumerate() {
            let addr = c.nodes[i].listen;
            let owner = format!("b{}", i + 1);
            let mut settled = false;
            for _ in 0..200 {
                let streams = admin.streams(addr).await.expect("streams");
                settled = streams
                    .iter()
                    .filter(|s| s.id.kind == StreamKind::Raw && s.id.owner.as_str() == owner)
                    .all(|s| {
                        matches!(&s.role, StreamRole::Owner { acked, replicas, .. }
                            if *acked == s.head && !replicas.is_empty() && replicas.iter().all(|r| r.lag == 0))
                    });
                if settled {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(settled, "node {i}: streams acknowledged and replicated");
            let streams = admin.streams(addr).await.expect("streams");
            let own: Vec<_> = streams
                .iter()
                .filter(|s| s.id.kind == StreamKind::Raw && s.id.owner.as_str() == owner)
                .collect();
            assert_eq!(
                own.iter().map(|s| s.id.sensor.clone()).collect::<Vec<_>>(),
                want.keys().cloned().collect::<Vec<_>>(),
                "node {i}: one stream per detector of its light, none for others"
            );
            for s in own {
                let rows = &want[&s.id.sensor];
                assert_eq!(s.head as usize, rows.len(), "{}: one record per row", s.id);
                let got = admin
                    .query(addr, s.id.clone(), 1, s.head, 100_000)
                    .await
                    .expect("query");
                let base = got[0].1.ts_ms - rows[0].0;
                for ((seq, r), (k, row)) in got.iter().zip(rows.iter().enumerate()) {
                    assert_eq!(*seq, k as u64 + 1);
                    assert_eq!(r.ts_ms - base, row.0, "{} seq {seq}: time", s.id);
                    assert_eq!(
                        r.values,
                        vec![row.1, row.2, row.3, row.4],
                        "{} seq {seq}: values",
                        s.id
                    );
                }
            }
        }

        // Windows count each vehicle once, at its lane's induction loop: the lane-area detectors
        // add occupancy and queues but no vehicles.
        let loops: f64 = expected[1]
            .iter()
            .filter(|(id, _)| id.starts_with("e1_"))
            .flat_map(|(_, rows)| rows.iter().map(|r| r.1))
            .sum();
        let (mut counted, mut late) = (0.0, 0.0);
        let mut seen = Vec::new();
        for _ in 0..200 {
            let streams = admin.streams(c.nodes[1].listen).await.expect("streams");
            (counted, late) = (0.0, 0.0);
            seen.clear();
            for s in streams
                .iter()
                .filter(|s| s.id.kind == StreamKind::Aggregates && s.id.owner.as_str() == "b2")
            {
                let windows = admin
                    .query(c.nodes[1].listen, s.id.clone(), 1, s.head, 100_000)
                    .await
                    .expect("query");
                counted += windows.iter().map(|(_, w)| w.values[0]).sum::<f64>();
                late += windows.iter().map(|(_, w)| w.values[5]).sum::<f64>();
                seen.extend(windows.iter().map(|(_, w)| {
                    format!("{} @{}: {} late {}", s.id.sensor, w.ts_ms, w.values[0], w.values[5])
                }));
            }
            if counted >= loops {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            counted, loops,
            "windows counted {counted} vehicles ({late} late readings); the loops saw {loops}; windows (approach @start: count, late):\n{}\n{}",
            seen.join("\n"),
            c.log(1)
        );

        // The invalid rows are counted by kind on the node that read them.
        let text = http_get(c.nodes[0].metrics, "/metrics").expect("metrics");
        for kind in ["not_finite", "out_of_range", "unknown_detector", "time_backwards"] {
            let v = metric(&text, &format!("verge_readings_rejected_total{{kind=\"{kind}\"}}"));
            assert_eq!(v, 1.0, "{kind} counted once:\n{text}");
        }
        assert_eq!(metric_sum(&text, "verge_readings_rejected_total"), 5.0, "{text}");
        let log = c.log(0);
        assert!(log.contains("bogus"), "the unknown detector is named in the log:\n{log}");
        assert!(log.contains("nVehContrib"), "the malformed row's attribute is named in the log:\n{log}");
        for i in 0..3 {
            assert!(c.is_running(i), "node {i} runs:\n{}", c.log(i));
        }
    })
    .await
    .expect("bounded");
}

/// A SUMO process, killed when dropped.
struct Sumo {
    child: std::process::Child,
}

impl Sumo {
    fn start(grid: &Path, port: u16, clients: usize, prefix: &str) -> Self {
        let child = Command::new("sumo")
            .arg("-c")
            .arg(grid.join("grid.sumocfg"))
            .args(["--remote-port", &port.to_string()])
            .args(["--num-clients", &clients.to_string()])
            .args(["--output-prefix", prefix])
            .env(
                "SUMO_HOME",
                std::env::var_os("SUMO_HOME").unwrap_or_else(|| "/usr/share/sumo".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start sumo");
        Self { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sumo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `cond` holds for node `i`'s sensor status; returns the last status seen.
async fn sensor_until(
    c: &LocalCluster,
    i: usize,
    timeout: Duration,
    cond: impl Fn(&verge_proto::admin::SensorStatus) -> bool,
) -> verge_proto::admin::SensorStatus {
    let admin = c.admin();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = admin.status(c.nodes[i].listen).await.expect("status");
        let sensor = status.sensor.expect("a sensor source");
        if cond(&sensor) || tokio::time::Instant::now() > deadline {
            return sensor;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_read_live_sumo_over_traci_and_reconnect_after_sumo_dies() {
    if sumo_missing() {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let grid = tempfile::tempdir().expect("temp dir");
        make_grid(grid.path());
        let port = verge_sim::free_tcp_port().expect("port");
        let mut sumo = Sumo::start(grid.path(), port, 2, "first-");

        let mut c = LocalCluster::create(&ClusterSpec::corridor(verge_bin(), 2)).expect("layout");
        for (i, tls) in ["B1", "C1"].iter().enumerate() {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&c.nodes[i].config)
                .expect("config");
            write!(
                f,
                "\n[sensors.traci]\naddr = \"127.0.0.1:{port}\"\ntls = {tls:?}\norder = {}\ninterval_ms = 1000\nspeed = 20\ndetectors = {:?}\n",
                i + 1,
                grid.path().join("detectors.add.xml"),
            )
            .expect("append config");
        }
        start_mesh(&mut c).await;
        for i in 0..2 {
            let s = sensor_until(&c, i, Duration::from_secs(20), |s| s.readings >= 160).await;
            assert!(s.readings >= 160 && s.state == "running", "node {i}: {s:?}\n{}", c.log(i));
        }

        // SUMO dies mid-run: both sources fail, say so, and keep retrying; the nodes run on.
        sumo.kill();
        for i in 0..2 {
            let s = sensor_until(&c, i, Duration::from_secs(10), |s| s.state == "retrying").await;
            assert_eq!(s.state, "retrying", "node {i}: {s:?}");
            assert!(s.failures >= 1 && !s.detail.is_empty(), "node {i}: {s:?}");
            assert!(c.is_running(i));
        }
        let text = http_get(c.nodes[0].metrics, "/metrics").expect("metrics");
        assert!(metric_sum(&text, "verge_sensor_failures_total") >= 1.0, "{text}");

        // A new SUMO: both reconnect and read on, stamping after what they stored (no reading is
        // refused for going back in time).
        let before: Vec<u64> = {
            let mut v = Vec::new();
            for i in 0..2 {
                v.push(sensor_until(&c, i, Duration::ZERO, |_| true).await.readings);
            }
            v
        };
        let _sumo2 = Sumo::start(grid.path(), port, 2, "second-");
        for (i, was) in before.iter().enumerate() {
            let s = sensor_until(&c, i, Duration::from_secs(30), |s| {
                s.state == "running" && s.readings >= was + 160
            })
            .await;
            assert!(s.readings >= was + 160, "node {i}: {s:?}\n{}", c.log(i));
            assert_eq!(s.rejected, 0, "node {i}: {s:?}");
        }

        // Each node stored its own light's detectors only.
        let admin = c.admin();
        for (i, tls) in ["B1", "C1"].iter().enumerate() {
            let streams = admin.streams(c.nodes[i].listen).await.expect("streams");
            let own: Vec<_> = streams
                .iter()
                .filter(|s| s.id.kind == StreamKind::Raw && s.id.owner == c.nodes[i].id)
                .collect();
            assert_eq!(own.len(), 16, "node {i}: {own:?}");
            assert!(
                own.iter().all(|s| s.id.sensor.contains(&format!("_{tls}_")) && s.head > 0),
                "node {i}: {own:?}"
            );
        }
    })
    .await
    .expect("bounded");
}
