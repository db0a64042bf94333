//! The TraCI source of one intersection and the pure accumulator behind it. The rules of a
//! reading are in the [module docs](super).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::client::{DetectorSample, ReadPlan, StepSample, TraciClient};
use super::codec::{self, API_VERSION, EncodeError, ResponseError, id};
use crate::Reading;
use crate::detector::{DetectorKind, approaches_for, belongs_to};

/// Why the TraCI source stopped. [`SourceError::is_retryable`] tells the node whether to retry
/// (with backoff) or give up.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// SUMO is not listening (not started yet, or gone), or the connection attempt timed out.
    #[error("cannot connect to SUMO's TraCI server at {addr}: {source}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The connection broke mid-run: SUMO exited or crashed.
    #[error("connection to SUMO at {addr} lost while {during}: {source}")]
    Disconnected {
        /// The server.
        addr: SocketAddr,
        /// What the client was doing.
        during: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SUMO did not answer in time (another client stopped stepping, or SUMO hangs).
    #[error("SUMO at {addr} did not answer within {ms} ms while {during}")]
    Timeout {
        /// The server.
        addr: SocketAddr,
        /// What the client was doing.
        during: &'static str,
        /// The timeout.
        ms: u64,
    },
    /// SUMO refused a command or answered with bytes that do not answer it.
    #[error("protocol error with SUMO at {addr} while {during}: {source}")]
    Protocol {
        /// The server.
        addr: SocketAddr,
        /// What the client was doing.
        during: &'static str,
        /// The refusal or the decoding error.
        source: ResponseError,
    },
    /// SUMO speaks another TraCI API version.
    #[error("SUMO at {addr} speaks TraCI API {api} ({software}); this client speaks {API_VERSION}")]
    Version {
        /// The server.
        addr: SocketAddr,
        /// Its API version.
        api: i32,
        /// Its name and version.
        software: String,
    },
    /// The traffic light has no detectors in this simulation (a wrong tls id or network).
    #[error("SUMO at {addr} has no detectors e1_{tls}_* or e2_{tls}_*")]
    NoDetectors {
        /// The server.
        addr: SocketAddr,
        /// The traffic light.
        tls: String,
    },
    /// A request could not be encoded (a detector id that is not Latin-1).
    #[error("cannot encode a TraCI request: {0}")]
    Encode(#[from] EncodeError),
}

impl SourceError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Connect { .. } => "connect",
            SourceError::Disconnected { .. } => "disconnected",
            SourceError::Timeout { .. } => "timeout",
            SourceError::Protocol {
                source: ResponseError::Refused(_),
                ..
            } => "refused",
            SourceError::Protocol { .. } => "protocol",
            SourceError::Version { .. } => "version",
            SourceError::NoDetectors { .. } => "no_detectors",
            SourceError::Encode(_) => "encode",
        }
    }

    /// Whether trying again later (a new connection, with backoff) may succeed: SUMO not up
    /// yet, gone, or slow. Protocol, version, detector and encoding errors will not go away
    /// by themselves.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SourceError::Connect { .. }
                | SourceError::Disconnected { .. }
                | SourceError::Timeout { .. }
        )
    }
}

/// Configuration of a TraCI source.
#[derive(Debug, Clone, PartialEq)]
pub struct TraciConfig {
    /// SUMO's TraCI server (`sumo --remote-port`).
    pub addr: SocketAddr,
    /// The traffic light whose detectors this source reads.
    pub tls: String,
    /// This client's order among SUMO's `--num-clients` clients (setOrder): distinct per
    /// client; lower orders act first within a step.
    pub order: i32,
    /// Simulated time per reading, in milliseconds. Default 1 s.
    pub interval_ms: u64,
    /// Readings are stamped `base_epoch_ms + simulation time`.
    pub base_epoch_ms: i64,
    /// The longest wait for one answer, in milliseconds. In lockstep a step is answered when
    /// every client has asked for it, and at start SUMO answers past setOrder only once every
    /// client has connected, so this must cover the slowest client. Default 30 s.
    pub io_timeout_ms: u64,
    /// How long [`TraciSource::connect`] keeps retrying a refused connection (SUMO still
    /// loading), in milliseconds; 0 tries once. Default 0: the node's backoff decides.
    pub connect_wait_ms: u64,
    /// The largest answer accepted, in bytes.
    pub message_bytes_max: usize,
}

impl TraciConfig {
    /// A configuration with the defaults for `addr`, `tls` and `order`.
    pub fn new(addr: SocketAddr, tls: impl Into<String>, order: i32) -> Self {
        Self {
            addr,
            tls: tls.into(),
            order,
            interval_ms: 1_000,
            base_epoch_ms: 0,
            io_timeout_ms: 30_000,
            connect_wait_ms: 0,
            message_bytes_max: codec::MESSAGE_BYTES_MAX,
        }
    }
}

/// Running sums of one detector over the current interval.
#[derive(Debug, Clone)]
struct DetectorAcc {
    id: String,
    kind: DetectorKind,
    /// Vehicles on the detector in the previous step.
    previous: BTreeSet<String>,
    passages: u64,
    steps: u64,
    occupancy_sum: f64,
    speed_sum: f64,
    speed_steps: u64,
    max_jam: f64,
}

/// Folds per-step samples of a fixed list of detectors into one [`Reading`] per detector per
/// interval of simulated time. Pure: no IO, time is the simulation's.
///
/// An interval ends at the first step at or after the next multiple of `interval_ms` of
/// simulated time; its readings are stamped with that step's time.
#[derive(Debug, Clone)]
pub struct IntervalAccumulator {
    detectors: Vec<DetectorAcc>,
    interval_ms: i64,
    base_epoch_ms: i64,
    /// The end of the current interval, in simulated milliseconds; `None` before the first step.
    next_end_ms: Option<i64>,
}

impl IntervalAccumulator {
    /// An accumulator for `detectors` (in the order samples will come), emitting every
    /// `interval_ms` (at least 1) of simulated time.
    pub fn new(detectors: &[(String, DetectorKind)], interval_ms: u64, base_epoch_ms: i64) -> Self {
        Self {
            detectors: detectors
                .iter()
                .map(|(id, kind)| DetectorAcc {
                    id: id.clone(),
                    kind: *kind,
                    previous: BTreeSet::new(),
                    passages: 0,
                    steps: 0,
                    occupancy_sum: 0.0,
                    speed_sum: 0.0,
                    speed_steps: 0,
                    max_jam: 0.0,
                })
                .collect(),
            interval_ms: i64::try_from(interval_ms.max(1)).unwrap_or(i64::MAX),
            base_epoch_ms,
            next_end_ms: None,
        }
    }

    fn boundary_after(&self, sim_ms: i64) -> i64 {
        (sim_ms.div_euclid(self.interval_ms) + 1).saturating_mul(self.interval_ms)
    }

    /// Adds the step that ended at `sim_ms` (`samples` in the detectors' order; missing ones
    /// count as empty) and returns the interval's readings if this step closes it.
    pub fn observe(&mut self, sim_ms: i64, samples: &[DetectorSample]) -> Option<Vec<Reading>> {
        // A simulation starts at 0 s; the first step seen opens the interval that holds it.
        let first_end = self.boundary_after(sim_ms - 1);
        let end = *self.next_end_ms.get_or_insert(first_end);
        let empty = DetectorSample::default();
        for (i, acc) in self.detectors.iter_mut().enumerate() {
            let s = samples.get(i).unwrap_or(&empty);
            let now: BTreeSet<String> = s.vehicle_ids.iter().cloned().collect();
            acc.passages += now.difference(&acc.previous).count() as u64;
            acc.previous = now;
            acc.steps += 1;
            acc.occupancy_sum += s.occupancy;
            if s.mean_speed >= 0.0 && !s.vehicle_ids.is_empty() {
                acc.speed_sum += s.mean_speed;
                acc.speed_steps += 1;
            }
            if acc.kind == DetectorKind::E2 {
                acc.max_jam = acc.max_jam.max(s.jam_vehicles);
            }
        }
        if sim_ms >= end {
            self.next_end_ms = Some(self.boundary_after(sim_ms));
            Some(self.emit(sim_ms))
        } else {
            None
        }
    }

    /// The readings of the unfinished interval (the simulation ended inside it), stamped
    /// `sim_ms`; `None` if no step was added since the last readings.
    pub fn flush(&mut self, sim_ms: i64) -> Option<Vec<Reading>> {
        if self.detectors.first().is_none_or(|d| d.steps == 0) {
            return None;
        }
        Some(self.emit(sim_ms))
    }

    fn emit(&mut self, sim_ms: i64) -> Vec<Reading> {
        let ts_ms = self.base_epoch_ms.saturating_add(sim_ms);
        self.detectors
            .iter_mut()
            .map(|acc| {
                let count = acc.passages as f64;
                let reading = Reading {
                    sensor: acc.id.clone(),
                    ts_ms,
                    count,
                    occupancy: if acc.steps == 0 {
                        0.0
                    } else {
                        acc.occupancy_sum / acc.steps as f64
                    },
                    speed: if count == 0.0 || acc.speed_steps == 0 {
                        0.0
                    } else {
                        acc.speed_sum / acc.speed_steps as f64
                    },
                    queue: acc.max_jam,
                };
                acc.passages = 0;
                acc.steps = 0;
                acc.occupancy_sum = 0.0;
                acc.speed_sum = 0.0;
                acc.speed_steps = 0;
                acc.max_jam = 0.0;
                reading
            })
            .collect()
    }
}

/// A live source for one intersection: steps SUMO and emits one reading per detector per
/// interval. See the [module docs](super).
#[derive(Debug)]
pub struct TraciSource {
    /// `None` once the simulation has ended and the connection is closed.
    client: Option<TraciClient>,
    tls: String,
    plan: ReadPlan,
    acc: IntervalAccumulator,
    sim_ms: i64,
}

impl TraciSource {
    /// Connects, checks the API version, takes its place in the client order, and finds the
    /// traffic light's detectors (SUMO's E1 and E2 id lists filtered by `e?_<tls>_`). With
    /// several clients SUMO waits until every one has connected before answering past setOrder.
    ///
    /// # Errors
    ///
    /// [`SourceError`]: SUMO unreachable, another API version, no detectors for the light,
    /// or a protocol error.
    pub async fn connect(cfg: TraciConfig) -> Result<Self, SourceError> {
        let timeout = Duration::from_millis(cfg.io_timeout_ms);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.connect_wait_ms);
        let mut client = loop {
            match TraciClient::connect(cfg.addr, timeout, cfg.message_bytes_max).await {
                Ok(c) => break c,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let (api, software) = client.get_version().await?;
        if api != API_VERSION {
            return Err(SourceError::Version {
                addr: cfg.addr,
                api,
                software,
            });
        }
        client.set_order(cfg.order).await?;
        let mut detectors = Vec::new();
        for (domain, kind) in [
            (id::CMD_GET_INDUCTIONLOOP_VARIABLE, DetectorKind::E1),
            (id::CMD_GET_LANEAREA_VARIABLE, DetectorKind::E2),
        ] {
            let mut ids: Vec<String> = client
                .id_list(domain)
                .await?
                .into_iter()
                .filter(|d| d.starts_with(kind.prefix()) && belongs_to(d, &cfg.tls))
                .collect();
            ids.sort();
            detectors.extend(ids.into_iter().map(|d| (d, kind)));
        }
        if detectors.is_empty() {
            return Err(SourceError::NoDetectors {
                addr: cfg.addr,
                tls: cfg.tls,
            });
        }
        let plan = ReadPlan::new(detectors)?;
        let acc = IntervalAccumulator::new(plan.detectors(), cfg.interval_ms, cfg.base_epoch_ms);
        Ok(Self {
            client: Some(client),
            tls: cfg.tls,
            plan,
            acc,
            sim_ms: 0,
        })
    }

    /// The traffic light.
    pub fn tls(&self) -> &str {
        &self.tls
    }

    /// The detectors read, with their kind: E1 then E2, each sorted.
    pub fn detectors(&self) -> &[(String, DetectorKind)] {
        self.plan.detectors()
    }

    /// The intersection's approaches (incoming edge to detectors), for
    /// [`crate::window::WindowConfig::approaches`].
    pub fn approaches(&self) -> BTreeMap<String, Vec<String>> {
        approaches_for(
            &self.tls,
            self.plan.detectors().iter().map(|(d, _)| d.as_str()),
        )
    }

    /// The simulation time after the last step, in milliseconds.
    pub fn sim_ms(&self) -> i64 {
        self.sim_ms
    }

    /// The connection, for commands between intervals (e.g. [`TraciClient::set_phase`]);
    /// `None` once the simulation has ended. Do not step through it: the source counts steps.
    pub fn client(&mut self) -> Option<&mut TraciClient> {
        self.client.as_mut()
    }

    /// Whether the simulation has ended (and the connection is closed).
    pub fn is_finished(&self) -> bool {
        self.client.is_none()
    }

    /// Steps the simulation until the current interval ends and returns its readings, one per
    /// detector. When SUMO expects no more vehicles it returns the last (possibly partial)
    /// interval, closes the connection, and from then on returns `None`.
    ///
    /// Not cancel-safe: a call dropped half-way leaves the connection in the middle of an
    /// exchange, so a source whose call was cancelled (e.g. by a `select!` timeout) must be
    /// dropped, like one that returned an error.
    ///
    /// # Errors
    ///
    /// [`SourceError`]: SUMO gone mid-run, a timeout, or a protocol error. The connection is
    /// then in an unknown state: drop the source and connect anew.
    pub async fn next_interval(&mut self) -> Result<Option<Vec<Reading>>, SourceError> {
        loop {
            let Some(client) = self.client.as_mut() else {
                return Ok(None);
            };
            client.simulation_step(0.0).await?;
            let StepSample {
                time_s,
                min_expected,
                detectors,
            } = client.read(&self.plan).await?;
            self.sim_ms = (time_s * 1000.0).round() as i64;
            let out = self.acc.observe(self.sim_ms, &detectors);
            if min_expected <= 0 {
                let out = out.or_else(|| self.acc.flush(self.sim_ms));
                if let Some(client) = self.client.take() {
                    client.close().await?;
                }
                return Ok(out);
            }
            if out.is_some() {
                return Ok(out);
            }
        }
    }

    /// Ends this client's connection (SUMO goes on with its other clients).
    ///
    /// # Errors
    ///
    /// [`SourceError`] if the close was not acknowledged.
    pub async fn close(mut self) -> Result<(), SourceError> {
        match self.client.take() {
            Some(c) => c.close().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ids: &[&str], occupancy: f64, mean_speed: f64, jam: f64) -> DetectorSample {
        DetectorSample {
            vehicle_ids: ids.iter().map(|s| s.to_string()).collect(),
            occupancy,
            mean_speed,
            jam_vehicles: jam,
        }
    }

    fn acc(interval_ms: u64) -> IntervalAccumulator {
        IntervalAccumulator::new(
            &[
                ("e1_A1_A0A1_0".into(), DetectorKind::E1),
                ("e2_A1_A0A1_0".into(), DetectorKind::E2),
            ],
            interval_ms,
            1_000_000,
        )
    }

    #[test]
    fn passages_are_new_ids_not_vehicles_standing_on_the_loop() {
        let mut a = acc(5_000);
        let none = s(&[], 0.0, -1.0, 0.0);
        // A car stops on the loop for three steps, another passes, the first leaves.
        assert!(
            a.observe(1_000, &[s(&["v1"], 100.0, 0.5, 0.0), none.clone()])
                .is_none()
        );
        assert!(
            a.observe(
                2_000,
                &[s(&["v1"], 100.0, 0.0, 0.0), s(&["v1"], 10.0, 0.0, 1.0)]
            )
            .is_none()
        );
        assert!(
            a.observe(
                3_000,
                &[
                    s(&["v1", "v2"], 100.0, 2.5, 0.0),
                    s(&["v1", "v2"], 20.0, 1.0, 2.0)
                ]
            )
            .is_none()
        );
        assert!(a.observe(4_000, &[none.clone(), none.clone()]).is_none());
        let r = a
            .observe(5_000, &[none.clone(), none.clone()])
            .expect("interval ends");
        assert_eq!(r.len(), 2);
        let e1 = &r[0];
        assert_eq!((e1.sensor.as_str(), e1.ts_ms), ("e1_A1_A0A1_0", 1_005_000));
        assert_eq!(e1.count, 2.0, "two vehicles, not five vehicle-steps");
        assert_eq!(e1.occupancy, 60.0);
        // Mean of the per-step speeds where vehicles were present: (0.5 + 0 + 2.5) / 3.
        assert_eq!(e1.speed, 1.0);
        assert_eq!(e1.queue, 0.0, "E1 reports no queue");
        let e2 = &r[1];
        assert_eq!((e2.count, e2.queue, e2.speed), (2.0, 2.0, 0.5));
        // The next interval starts empty; a vehicle still there is not counted again.
        let r = a
            .observe(10_000, &[s(&["v2"], 50.0, 3.0, 0.0), none.clone()])
            .expect("ends");
        assert_eq!((r[0].count, r[0].speed, r[0].occupancy), (1.0, 3.0, 50.0));
        let r = a.observe(15_000, &[s(&["v2"], 50.0, 3.0, 0.0), none.clone()]);
        let r = r.expect("ends");
        assert_eq!((r[0].count, r[0].speed), (0.0, 0.0), "no passage: speed 0");
        assert!(a.flush(15_000).is_none(), "nothing since the last readings");
        a.observe(16_000, &[none.clone(), none]);
        assert_eq!(a.flush(16_000).map(|r| r[0].ts_ms), Some(1_016_000));
    }

    #[test]
    fn every_reading_of_a_steady_run_validates() {
        let mut a = acc(1_000);
        let mut v = crate::Validator::new(["e1_A1_A0A1_0", "e2_A1_A0A1_0"]);
        for t in 1..=20 {
            let ids = [format!("v{}", t / 3)];
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let r = a
                .observe(
                    t * 1_000,
                    &[s(&ids, 30.0, 8.0, 0.0), s(&ids, 5.0, 8.0, 1.0)],
                )
                .expect("1 s intervals with 1 s steps");
            for r in r {
                v.check(&r).expect("valid");
            }
        }
    }

    /// A fake TraCI server: answers each request message with the next of `answers` (raw
    /// bytes, header included), then closes.
    async fn fake_sumo(answers: Vec<Vec<u8>>) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            for answer in answers {
                let mut header = [0u8; 4];
                if s.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes(header) as usize - 4;
                let mut body = vec![0u8; len];
                if s.read_exact(&mut body).await.is_err() {
                    return;
                }
                if s.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    fn status(command: u8, result: u8, description: &str) -> Vec<u8> {
        let mut out = Vec::new();
        codec::Status {
            command,
            result,
            description: description.into(),
        }
        .encode(&mut out)
        .expect("encodes");
        out
    }

    fn version(api: i32) -> Vec<u8> {
        let mut body = status(id::CMD_GETVERSION, 0, "");
        let mut content = api.to_be_bytes().to_vec();
        codec::put_string(&mut content, "SUMO 1.15.0").expect("latin1");
        codec::encode_command(&mut body, id::CMD_GETVERSION, &content).expect("encodes");
        codec::frame(&body).expect("frames")
    }

    fn cfg(addr: SocketAddr) -> TraciConfig {
        let mut c = TraciConfig::new(addr, "B1", 1);
        c.io_timeout_ms = 5_000;
        c
    }

    #[tokio::test]
    async fn a_server_that_is_not_sumo_20_is_a_typed_error() {
        let addr = fake_sumo(vec![version(19)]).await;
        let e = TraciSource::connect(cfg(addr)).await.expect_err("old API");
        assert_eq!(e.kind(), "version");
        assert!(e.to_string().contains("API 19"), "{e}");

        // A refused setOrder.
        let refused =
            codec::frame(&status(id::CMD_SETORDER, id::RTYPE_ERR, "order taken")).expect("frames");
        let addr = fake_sumo(vec![version(API_VERSION), refused]).await;
        let e = TraciSource::connect(cfg(addr)).await.expect_err("refused");
        assert_eq!(e.kind(), "refused");
        assert!(e.to_string().contains("order taken"), "{e}");
        assert!(!e.is_retryable());

        // Garbage, and a header announcing more than the limit.
        let addr = fake_sumo(vec![vec![0, 0, 0, 7, 1, 2, 3]]).await;
        let e = TraciSource::connect(cfg(addr)).await.expect_err("garbage");
        assert_eq!(e.kind(), "protocol", "{e}");
        let addr = fake_sumo(vec![vec![0x7f, 0, 0, 0]]).await;
        let e = TraciSource::connect(cfg(addr))
            .await
            .expect_err("too large");
        assert!(e.to_string().contains("exceeds the maximum"), "{e}");

        // SUMO closes after the version: lost mid-run, retryable.
        let addr = fake_sumo(vec![version(API_VERSION)]).await;
        let e = TraciSource::connect(cfg(addr)).await.expect_err("closed");
        assert_eq!(e.kind(), "disconnected", "{e}");
        assert!(e.is_retryable());

        // No detectors for the light.
        let mut ok = status(id::CMD_SETORDER, 0, "");
        ok = codec::frame(&std::mem::take(&mut ok)).expect("frames");
        let list = |domain: u8, ids: Vec<String>| {
            let mut body = status(domain, 0, "");
            let mut content = vec![id::TRACI_ID_LIST];
            codec::put_string(&mut content, "").expect("latin1");
            codec::Value::StringList(ids)
                .encode(&mut content)
                .expect("encodes");
            codec::encode_command(&mut body, domain + 0x10, &content).expect("encodes");
            codec::frame(&body).expect("frames")
        };
        let addr = fake_sumo(vec![
            version(API_VERSION),
            ok,
            list(0xA0, vec!["e1_A1_A0A1_0".into()]),
            list(0xAD, vec![]),
        ])
        .await;
        let e = TraciSource::connect(cfg(addr)).await.expect_err("none");
        assert_eq!(e.kind(), "no_detectors", "{e}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut c = cfg(addr);
        c.io_timeout_ms = 200;
        let e = TraciSource::connect(c).await.expect_err("silent");
        assert_eq!(e.kind(), "timeout", "{e}");
        assert!(e.is_retryable());
        drop(listener);
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let e = SourceError::Connect {
            addr,
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert!(e.is_retryable());
        assert_eq!(e.kind(), "connect");
        let e = SourceError::Protocol {
            addr,
            during: "stepping",
            source: ResponseError::Refused(codec::Status {
                command: 2,
                result: 0xff,
                description: "no".into(),
            }),
        };
        assert!(!e.is_retryable());
        assert_eq!(e.kind(), "refused");
    }
}
