//! The node's sensor source: [`SensorActor`] reads the configured source, validates every
//! reading and feeds the store.
//!
//! Three sources (config `[sensors.*]`, at most one):
//! - **synthetic**: made-up traffic for load and benchmarks, polled every tick;
//! - **replay**: SUMO's E1/E2 output files, released in time order at `speed` times real time;
//! - **traci**: a running SUMO, stepped in lockstep with the other clients, paced to `speed`
//!   simulated seconds per wall-clock second, on a task of its own that hands intervals over a
//!   bounded channel.
//!
//! # The rules
//! - **Validation.** A reading with a NaN, negative or impossible value, from a detector the
//!   source does not declare for this node's lights, or stamped at or before that detector's
//!   previous reading is refused: counted in `verge_readings_rejected_total{kind}`, logged, never
//!   stored. A malformed row of a replayed file is counted the same way (its parse error's kind).
//! - **Failures are retried.** A replay whose files cannot be opened, and a TraCI connection that
//!   cannot be made or is lost (SUMO gone), are retried with capped, jittered exponential backoff
//!   (0.5 s to 30 s); `verge ctl status` shows the state and the last error, and
//!   `verge_sensor_failures_total{source,kind}` counts them. A replay that reaches the end of its
//!   files (truncated ones included: the broken row is counted) is finished, not retried, so
//!   no row is stored twice. A TraCI source that reconnects stamps its readings after the last
//!   ones, so time never goes backwards.
//! - **Nothing valid is dropped.** While the store is behind (a batch in flight too many), the
//!   source is not read: replay rows wait in the file, TraCI intervals in the channel and SUMO
//!   is not stepped. A batch the store refuses before appending anything (busy, replication
//!   down) is sent again; one it appended without acknowledging is not (that could store it
//!   twice), and is logged.
//! - **Event time.** A replay or simulation says with each batch how far it has read
//!   ([`SourceClock`]); the store moves its [`crate::storage::EventClock`] there once the batch
//!   is in its windows, so a window never closes before its readings arrive, however slow the
//!   machine. With no readings to send, the progress goes alone ([`SourceTime`]), and only when
//!   no batch is on the way.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use verge_proto::admin::SensorStatus;
use verge_traffic::replay::{ReplayConfig, ReplaySource, declared_detectors};
use verge_traffic::traci::{TraciConfig, TraciSource};
use verge_traffic::window::WindowConfig;
use verge_traffic::{Reading, SyntheticSource, Validator, detector};

use crate::config::{ReplaySection, SensorsSection, TraciSection};
use crate::metrics::Metrics;
use crate::storage::{Ingest, SourceClock, SourceTime, StoreActor, now_ms};

/// Batches a sensor may have in flight to the store. A SUMO source numbers its batches and the
/// store takes them in order only ([`Ingest::order`]): a batch refused and sent again must never
/// land after a later one, whose progress would have moved the windows' clock past it.
const INFLIGHT_MAX: usize = 4;
/// How often the source is read.
const TICK: Duration = Duration::from_millis(10);
/// Backoff between attempts of a failed source.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Intervals a TraCI task may hand over before it waits (and stops stepping SUMO).
const TRACI_CHANNEL: usize = 16;
/// Row errors of one poll logged one by one; the rest are summed up in one line.
const ERRORS_LOGGED: usize = 5;

/// What `verge ctl status` shows of the sensor source, shared with the admin endpoint.
#[derive(Debug, Clone, Default)]
pub struct SensorBoard(Arc<Mutex<Option<SensorStatus>>>);

impl SensorBoard {
    /// The source's status, if the node has one.
    pub fn get(&self) -> Option<SensorStatus> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut SensorStatus)) {
        if let Some(s) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            f(s);
        }
    }

    fn start(&self, source: &str, detail: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(SensorStatus {
            source: source.to_owned(),
            state: "starting".to_owned(),
            detail,
            readings: 0,
            rejected: 0,
            failures: 0,
        });
    }
}

/// The detectors a SUMO additional file declares for the lights `tls`.
pub fn declared_for(file: &Path, tls: &[String]) -> Result<Vec<String>, String> {
    let f = File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let all = declared_detectors(BufReader::new(f))
        .map_err(|e| format!("cannot read the detectors of {}: {e}", file.display()))?;
    Ok(all
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| tls.iter().any(|t| detector::belongs_to(id, t)))
        .collect())
}

/// Fills in the aggregation windows of a SUMO source with a detectors file, where the config
/// leaves them empty: the approaches (incoming road to its detectors) and, as uncounted, the
/// lane-area (E2) detectors, whose vehicles the same lane's induction loop already counts. Does
/// nothing for other sources or when the file cannot be read (the source reports that itself).
pub fn sumo_windows(sensors: &SensorsSection, windows: &mut WindowConfig) {
    let (file, tls) = match (&sensors.replay, &sensors.traci) {
        (Some(r), _) => (r.detectors.clone(), r.tls.clone()),
        (None, Some(t)) => match &t.detectors {
            Some(d) => (d.clone(), vec![t.tls.clone()]),
            None => return,
        },
        (None, None) => return,
    };
    let Ok(ids) = declared_for(&file, &tls) else {
        return;
    };
    if windows.approaches.is_empty() {
        for t in &tls {
            windows
                .approaches
                .extend(detector::approaches_for(t, ids.iter().map(String::as_str)));
        }
    }
    if windows.uncounted.is_empty() {
        windows.uncounted = ids
            .iter()
            .filter(|id| {
                detector::DetectorId::parse(id)
                    .is_some_and(|d| d.kind == detector::DetectorKind::E2)
            })
            .cloned()
            .collect();
    }
}

/// A source that failed and when it may try again.
#[derive(Debug)]
struct Retry {
    at: Instant,
    backoff: Duration,
}

impl Retry {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            backoff: BACKOFF_MIN,
        }
    }

    /// Schedules the next attempt after a failure.
    fn failed(&mut self) -> Duration {
        let jitter = rand::rng().random_range(0..=self.backoff.as_millis() as u64 / 2);
        let wait = self.backoff + Duration::from_millis(jitter);
        self.at = Instant::now() + wait;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }
}

enum Source {
    Synthetic(Box<SyntheticSource>),
    Replay {
        cfg: ReplaySection,
        state: ReplayState,
    },
    Traci {
        rx: mpsc::Receiver<TraciEvent>,
        speed: f64,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Synthetic(_) => "synthetic",
            Source::Replay { .. } => "replay",
            Source::Traci { .. } => "traci",
        }
    }
}

enum ReplayState {
    Closed(Retry),
    Open(Box<ReplaySource>),
    Finished,
}

/// What the TraCI task tells the actor.
#[derive(Debug)]
enum TraciEvent {
    Connected {
        detectors: Vec<String>,
    },
    Interval {
        readings: Vec<Reading>,
        event_ms: i64,
    },
    Failed {
        kind: &'static str,
        error: String,
        retry_in: Duration,
    },
    Finished,
}

/// Reads the node's sensor source and feeds the store.
#[derive(Debug)]
pub struct SensorActor {
    source: Source,
    /// Checks known detectors, bounds and time per detector (SUMO sources). Synthetic readings
    /// are checked for bounds only: at high rates several share a millisecond.
    validator: Option<Validator>,
    store: Addr<StoreActor>,
    metrics: Metrics,
    board: SensorBoard,
    /// The source's latest progress, and whether the store has it yet (it goes with the next
    /// batch).
    progress: Option<(SourceClock, bool)>,
    inflight: usize,
    /// Batches the store refused before appending, sent again first and in their order, with
    /// the source's progress at the time and their number.
    held: VecDeque<HeldBatch>,
    /// The next batch number of a SUMO source.
    next_order: u64,
}

/// A batch waiting to be sent again: readings, the source's progress, its number.
type HeldBatch = (Vec<Reading>, Option<SourceClock>, u64);

impl SensorActor {
    /// A sensor actor for the configured source, or `None` if the node has none.
    pub fn from_config(
        sensors: &SensorsSection,
        store: Addr<StoreActor>,
        metrics: Metrics,
        board: SensorBoard,
    ) -> Option<Self> {
        let (source, validator) = if let Some(syn) = &sensors.synthetic {
            let src = SyntheticSource::new(syn.clone());
            board.start(
                "synthetic",
                format!("{} sensors at {}/s", src.sensors().len(), syn.rate_per_s),
            );
            (Source::Synthetic(Box::new(src)), None)
        } else if let Some(replay) = &sensors.replay {
            board.start(
                "replay",
                format!("lights {} at {}x", replay.tls.join(","), replay.speed),
            );
            (
                Source::Replay {
                    cfg: replay.clone(),
                    state: ReplayState::Closed(Retry::now()),
                },
                Some(Validator::new(Vec::<String>::new())),
            )
        } else if let Some(traci) = &sensors.traci {
            board.start(
                "traci",
                format!(
                    "light {} at {} (client {})",
                    traci.tls, traci.addr, traci.order
                ),
            );
            let (tx, rx) = mpsc::channel(TRACI_CHANNEL);
            actix::spawn(traci_task(traci.clone(), tx));
            (
                Source::Traci {
                    rx,
                    speed: traci.speed,
                },
                Some(Validator::new(Vec::<String>::new())),
            )
        } else {
            return None;
        };
        Some(Self {
            source,
            validator,
            store,
            metrics,
            board,
            progress: None,
            inflight: 0,
            held: VecDeque::new(),
            next_order: 0,
        })
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        // Back-pressure: while the store is behind, the source is not read, so its readings wait
        // in the source instead of being dropped.
        if self.inflight >= INFLIGHT_MAX {
            return;
        }
        let (readings, clock, order) = match self.held.pop_front() {
            Some(batch) => batch,
            None => {
                let readings = self.read_source();
                if readings.is_empty() {
                    // Only the source's progress (a gap, or its end), once none of its batches is
                    // on the way: the store must not pass a batch it has yet to see.
                    if self.inflight == 0
                        && let Some(at) = self.take_progress()
                    {
                        self.store.do_send(SourceTime(at));
                    }
                    return;
                }
                let clock = self.take_progress();
                let order = self.next_order;
                self.next_order += 1;
                (readings, clock, order)
            }
        };
        let ordered = !matches!(self.source, Source::Synthetic(_));
        self.inflight += 1;
        // A SUMO source's readings exist once: keep a copy to send again if the store refuses
        // them before appending. Synthetic readings are made up; a refused batch is dropped.
        let copy = ordered.then(|| (readings.clone(), clock, order));
        self.store
            .send(Ingest {
                readings,
                clock,
                order: ordered.then_some(order),
            })
            .into_actor(self)
            .map(move |res, act, _| {
                act.inflight -= 1;
                match res {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if e.nothing_appended() => match copy {
                        Some(batch) => {
                            debug!("store refused sensor readings ({e}); sending them again");
                            // Batches come back in any order; they go out again in theirs.
                            let at = act.held.partition_point(|h| h.2 < batch.2);
                            act.held.insert(at, batch);
                        }
                        None => warn!("synthetic readings not stored: {e}"),
                    },
                    Ok(Err(e)) => warn!("sensor readings appended but not acknowledged: {e}"),
                    Err(e) => warn!("store unavailable: {e}"),
                }
            })
            .spawn(ctx);
    }

    /// The source's progress if the store does not have it yet.
    fn take_progress(&mut self) -> Option<SourceClock> {
        match &mut self.progress {
            Some((at, sent)) if !*sent => {
                *sent = true;
                Some(*at)
            }
            _ => None,
        }
    }

    /// Reads what the source has ready and returns the readings that pass validation.
    fn read_source(&mut self) -> Vec<Reading> {
        let now = now_ms();
        let mut raw = Vec::new();
        match &mut self.source {
            Source::Synthetic(src) => raw = src.poll(now),
            Source::Replay { cfg, state } => {
                if let ReplayState::Closed(retry) = state
                    && Instant::now() >= retry.at
                {
                    match open_replay(cfg, now) {
                        Ok((src, ids)) => {
                            info!(
                                detectors = ids.len(),
                                lights = %cfg.tls.join(","),
                                speed = cfg.speed,
                                "replaying SUMO detector files"
                            );
                            if let Some(v) = &mut self.validator {
                                for id in ids {
                                    v.add_detector(id);
                                }
                            }
                            *state = ReplayState::Open(Box::new(src));
                            self.board.update(|s| s.state = "running".to_owned());
                        }
                        Err(error) => {
                            let wait = retry.failed();
                            source_failed(
                                &self.metrics,
                                &self.board,
                                "replay",
                                "open",
                                &error,
                                wait,
                            );
                        }
                    }
                }
                if let ReplayState::Open(src) = state {
                    let polled = src.poll(now);
                    if let Some(event_ms) = polled.through_ms {
                        self.progress = Some((
                            SourceClock {
                                event_ms,
                                speed: cfg.speed,
                                finished: false,
                            },
                            false,
                        ));
                    }
                    let errors = polled.errors.len();
                    for (i, e) in polled.errors.iter().enumerate() {
                        self.metrics.readings_rejected(e.kind(), 1);
                        if i < ERRORS_LOGGED {
                            warn!("replay: {e}");
                        }
                    }
                    if errors > ERRORS_LOGGED {
                        warn!(
                            more = errors - ERRORS_LOGGED,
                            "replay: more malformed rows refused"
                        );
                    }
                    self.board.update(|s| s.rejected += errors as u64);
                    raw = polled.readings;
                    if src.is_finished() {
                        info!(
                            rows_refused = src.errors(),
                            "replay finished: the detector files are read to the end"
                        );
                        *state = ReplayState::Finished;
                        if let Some((at, sent)) = &mut self.progress {
                            at.finished = true;
                            *sent = false;
                        }
                        self.board.update(|s| s.state = "finished".to_owned());
                    }
                }
            }
            Source::Traci { rx, speed } => {
                while let Ok(event) = rx.try_recv() {
                    match event {
                        TraciEvent::Connected { detectors } => {
                            if let Some(v) = &mut self.validator {
                                for id in detectors {
                                    v.add_detector(id);
                                }
                            }
                            self.board.update(|s| s.state = "running".to_owned());
                        }
                        TraciEvent::Interval { readings, event_ms } => {
                            self.progress = Some((
                                SourceClock {
                                    event_ms,
                                    speed: *speed,
                                    finished: false,
                                },
                                false,
                            ));
                            raw.extend(readings);
                            // One interval per tick keeps batches small and the store in step.
                            break;
                        }
                        TraciEvent::Failed {
                            kind,
                            error,
                            retry_in,
                        } => source_failed(
                            &self.metrics,
                            &self.board,
                            "traci",
                            kind,
                            &error,
                            retry_in,
                        ),
                        TraciEvent::Finished => {
                            info!("the SUMO simulation ended");
                            if let Some((at, sent)) = &mut self.progress {
                                at.finished = true;
                                *sent = false;
                            }
                            self.board.update(|s| s.state = "finished".to_owned());
                        }
                    }
                }
            }
        }
        self.validate(raw)
    }

    fn validate(&mut self, mut readings: Vec<Reading>) -> Vec<Reading> {
        let mut refused = 0u64;
        let validator = &mut self.validator;
        let metrics = &self.metrics;
        readings.retain(|r| {
            match validator
                .as_mut()
                .map_or_else(|| r.validate(), |v| v.check(r))
            {
                Ok(()) => true,
                Err(e) => {
                    metrics.readings_rejected(e.kind(), 1);
                    refused += 1;
                    if refused as usize <= ERRORS_LOGGED {
                        warn!(kind = e.kind(), "sensor reading refused: {e}");
                    }
                    false
                }
            }
        });
        if refused as usize > ERRORS_LOGGED {
            warn!(
                more = refused as usize - ERRORS_LOGGED,
                "more sensor readings refused in this batch"
            );
        }
        let accepted = readings.len() as u64;
        self.board.update(|s| {
            s.readings += accepted;
            s.rejected += refused;
        });
        readings
    }
}

fn source_failed(
    metrics: &Metrics,
    board: &SensorBoard,
    source: &str,
    kind: &str,
    error: &str,
    retry_in: Duration,
) {
    metrics.sensor_failure(source, kind);
    warn!(
        source,
        kind,
        retry_in_ms = retry_in.as_millis() as u64,
        "sensor source failed: {error}; retrying"
    );
    board.update(|s| {
        s.state = "retrying".to_owned();
        s.detail = error.to_owned();
        s.failures += 1;
    });
}

fn open_replay(cfg: &ReplaySection, now: i64) -> Result<(ReplaySource, Vec<String>), String> {
    let ids = declared_for(&cfg.detectors, &cfg.tls)?;
    if ids.is_empty() {
        return Err(format!(
            "{} declares no detectors for lights {}",
            cfg.detectors.display(),
            cfg.tls.join(",")
        ));
    }
    let src = ReplaySource::open(
        cfg.e1.as_deref(),
        cfg.e2.as_deref(),
        ReplayConfig {
            base_epoch_ms: now,
            speed: cfg.speed,
            tls: cfg.tls.iter().cloned().collect::<BTreeSet<_>>(),
        },
    )
    .map_err(|e| e.to_string())?;
    Ok((src, ids))
}

/// Connects to SUMO, reads interval after interval, and reconnects with backoff when it fails,
/// until the simulation ends or the actor is gone.
async fn traci_task(cfg: TraciSection, tx: mpsc::Sender<TraciEvent>) {
    let mut retry = Retry::now();
    // Event time of the last interval handed over: a reconnection stamps after it.
    let mut last_event_ms: Option<i64> = None;
    loop {
        let base = last_event_ms.map_or(now_ms(), |last| {
            now_ms().max(last.saturating_add(cfg.interval_ms as i64))
        });
        let mut tc = TraciConfig::new(cfg.addr, cfg.tls.clone(), cfg.order);
        tc.interval_ms = cfg.interval_ms;
        tc.base_epoch_ms = base;
        let failure = match TraciSource::connect(tc).await {
            Ok(mut src) => {
                retry = Retry::now();
                let detectors = src.detectors().iter().map(|(id, _)| id.clone()).collect();
                info!(light = %cfg.tls, addr = %cfg.addr, "connected to SUMO over TraCI");
                if tx.send(TraciEvent::Connected { detectors }).await.is_err() {
                    return;
                }
                let started = Instant::now();
                let first_ms = src.sim_ms();
                loop {
                    match src.next_interval().await {
                        Ok(Some(readings)) => {
                            // Pace: `speed` simulated seconds per wall-clock second.
                            let sim = (src.sim_ms() - first_ms).max(0) as f64 / 1000.0;
                            let due = Duration::from_secs_f64(sim / cfg.speed);
                            if let Some(wait) = due.checked_sub(started.elapsed()) {
                                tokio::time::sleep(wait).await;
                            }
                            let event_ms = base.saturating_add(src.sim_ms());
                            last_event_ms = Some(event_ms);
                            let interval = TraciEvent::Interval { readings, event_ms };
                            if tx.send(interval).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = tx.send(TraciEvent::Finished).await;
                            return;
                        }
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        let retry_in = retry.failed();
        let failed = TraciEvent::Failed {
            kind: failure.kind(),
            error: failure.to_string(),
            retry_in,
        };
        if tx.send(failed).await.is_err() {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

impl Actor for SensorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(source = self.source.name(), "sensor source started");
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
    }
}
