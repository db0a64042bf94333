//! Aggregation windows: tumbling windows of event time per approach (a group of detectors), each
//! summarised as vehicle count, mean occupancy, mean speed and max queue, with late readings
//! counted rather than silently dropped.
//!
//! [`Aggregator`] is a plain struct without IO or clock: the node's sensor actor pushes every
//! reading into it ([`Aggregator::push`]), moves event time on with the node's clock
//! ([`Aggregator::advance`]), and appends each closed [`Window`] to the approach's aggregate
//! stream (`<node>/aggregates/<approach>`) as [`Window::to_record`].
//!
//! # The rules
//!
//! - **Windows tile event time** on a grid of `window_ms` from the Unix epoch, so the windows of
//!   every node in a corridor line up. A window is `start_ms..end_ms`; a reading stamps the *end*
//!   of its detector interval, so it belongs to the window with `start_ms < ts_ms <= end_ms` (a
//!   5 s SUMO interval ending at 10 s counts towards the window 0..10 s, not 10..20 s).
//! - **Approaches.** Each configured approach lists its detector ids; a detector may be in one
//!   approach only. A detector listed nowhere goes to the approach named `unassigned_approach`
//!   (default `all`): with no approaches configured, that one approach is the whole
//!   intersection. It emits windows from the start when no approaches are configured, otherwise
//!   from its first reading on (its readings then show up as a stream of their own, which is how
//!   an operator notices a detector missing from the config).
//! - **Watermark.** `watermark = (latest event time seen, from readings or from advance) -
//!   allowed_lateness_ms`. A window closes when the watermark reaches its end. A reading whose
//!   window has already closed (or lies before the aggregator's first window) is **late**: it is
//!   in no window's sums, [`Aggregator::push`] returns [`PushError::Late`], and it is counted in
//!   the `late` column of the approach's next window to close. So the sum of `late` over the
//!   windows equals the late readings exactly.
//! - **Every window is emitted**, for every approach, while the aggregator runs: a window with no
//!   readings has `readings = 0`, count 0, occupancy 0, queue 0 and speed [`NO_SPEED`]. The cloud
//!   tells "no traffic" (a window of zeros) from "no data" (no window: the node was down) this
//!   way. Two exceptions keep this bounded: the first window is the one holding the first event
//!   time seen (or the `resume_from_ms` given at a restart, if later), so nothing is emitted for
//!   time before the aggregator ran and readings for that time are late; and a run of more than
//!   `idle_windows_max` empty windows closing at once (the clock jumped) is skipped.
//! - **Readings stamped too far ahead** of the clock (more than `ahead_ms_max` past the last
//!   [`Aggregator::advance`]) are refused ([`PushError::TooFarAhead`]), so one detector with a
//!   wrong clock cannot close every window early and make all the others late.
//! - **Uncounted detectors** (`uncounted`) add to a window's occupancy and queue only: a
//!   lane-area detector over a lane whose induction loop already counts its vehicles would
//!   otherwise count them twice.
//! - **Mean speed** is the vehicle-weighted mean over readings that saw vehicles:
//!   `sum(speed * count) / sum(count)` over readings with `count > 0`. A reading with no vehicles
//!   carries no speed (SUMO reports -1, the synthetic source a made-up value), so it is left out;
//!   with no vehicles at all the window's speed is [`NO_SPEED`] (-1, SUMO's own convention),
//!   never 0, which would read as a standstill. Mean occupancy is the plain mean over readings.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use verge_proto::Record;
use verge_proto::stream::validate_sensor;

use crate::{Reading, ReadingError};

/// Column names of a window's record, in order (see [`Window::to_record`]).
pub const WINDOW_COLUMNS: [&str; 7] = [
    "vehicle_count",
    "mean_occupancy",
    "mean_speed",
    "max_queue",
    "readings",
    "late",
    "predicted_next_count",
];

/// The `predicted_next_count` of a window for which the node made no prediction (no model, or
/// the model failed).
pub const NO_PREDICTION: f64 = -1.0;

/// The mean speed of a window in which no vehicle passed.
pub const NO_SPEED: f64 = -1.0;

/// The shortest window, in milliseconds.
pub const WINDOW_MS_MIN: u64 = 100;
/// The longest window, in milliseconds (one hour).
pub const WINDOW_MS_MAX: u64 = 3_600_000;
/// The most windows the allowed lateness may span: it bounds the windows held open.
pub const LATENESS_WINDOWS_MAX: u64 = 360;

/// Configuration of the aggregator (the node config's `[aggregation]` section).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Length of a window, in milliseconds (100 ms to 1 h). Default 10 s.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// How far behind the latest event time a reading may arrive and still be counted in its
    /// window, in milliseconds (at most 360 windows). Default 2 s.
    #[serde(default = "default_lateness_ms")]
    pub allowed_lateness_ms: u64,
    /// Approach name to the detector ids it groups. Names become stream ids
    /// (`<node>/aggregates/<approach>`): 1 to 128 printable characters without `/`.
    #[serde(default)]
    pub approaches: BTreeMap<String, Vec<String>>,
    /// The approach of detectors listed in no approach. Default `all`.
    #[serde(default = "default_unassigned")]
    pub unassigned_approach: String,
    /// How far past the last `advance` a reading's time may be, in milliseconds; later ones are
    /// refused. A reading stamps the end of an interval that is over, so in normal operation it
    /// is never ahead of the clock; this only absorbs clock skew between the source and the
    /// caller of `advance`. Default 5 s.
    #[serde(default = "default_ahead_ms")]
    pub ahead_ms_max: u64,
    /// The longest run of empty windows emitted at once; a longer one (the clock jumped) is
    /// skipped. Default 360 (an hour of 10 s windows).
    #[serde(default = "default_idle_windows")]
    pub idle_windows_max: u64,
    /// Detectors whose readings count towards a window's occupancy and queue but not its
    /// vehicle count or mean speed: a lane-area (E2) detector over the same lane as an
    /// induction loop (E1) sees the same vehicles, which the loop already counts. Default none.
    #[serde(default)]
    pub uncounted: BTreeSet<String>,
}

fn default_window_ms() -> u64 {
    10_000
}
fn default_lateness_ms() -> u64 {
    2_000
}
fn default_unassigned() -> String {
    "all".into()
}
fn default_ahead_ms() -> u64 {
    5_000
}
fn default_idle_windows() -> u64 {
    360
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            window_ms: default_window_ms(),
            allowed_lateness_ms: default_lateness_ms(),
            approaches: BTreeMap::new(),
            unassigned_approach: default_unassigned(),
            ahead_ms_max: default_ahead_ms(),
            idle_windows_max: default_idle_windows(),
            uncounted: BTreeSet::new(),
        }
    }
}

/// Why a window configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowConfigError {
    /// `window_ms` is outside its range.
    #[error("window_ms is {0}; it must be between {WINDOW_MS_MIN} and {WINDOW_MS_MAX}")]
    WindowMs(u64),
    /// The allowed lateness spans too many windows.
    #[error(
        "allowed_lateness_ms is {lateness_ms}; it may span at most {LATENESS_WINDOWS_MAX} windows of {window_ms} ms"
    )]
    Lateness {
        /// The configured lateness.
        lateness_ms: u64,
        /// The configured window.
        window_ms: u64,
    },
    /// An approach name cannot be part of a stream id.
    #[error("approach name `{0}` must be 1 to 128 printable characters without `/`")]
    Name(String),
    /// An approach lists no detector.
    #[error("approach `{0}` lists no detector")]
    Empty(String),
    /// A detector is listed in two approaches.
    #[error("detector `{sensor}` is listed in approaches `{first}` and `{second}`")]
    Twice {
        /// The detector.
        sensor: String,
        /// One approach.
        first: String,
        /// The other.
        second: String,
    },
    /// `idle_windows_max` is 0.
    #[error("idle_windows_max must be at least 1")]
    Idle,
}

impl WindowConfig {
    /// Checks the values.
    ///
    /// # Errors
    ///
    /// [`WindowConfigError`] naming the first value that is wrong.
    pub fn validate(&self) -> Result<(), WindowConfigError> {
        if !(WINDOW_MS_MIN..=WINDOW_MS_MAX).contains(&self.window_ms) {
            return Err(WindowConfigError::WindowMs(self.window_ms));
        }
        if self.allowed_lateness_ms > LATENESS_WINDOWS_MAX * self.window_ms {
            return Err(WindowConfigError::Lateness {
                lateness_ms: self.allowed_lateness_ms,
                window_ms: self.window_ms,
            });
        }
        if self.idle_windows_max == 0 {
            return Err(WindowConfigError::Idle);
        }
        validate_sensor(&self.unassigned_approach)
            .map_err(|_| WindowConfigError::Name(self.unassigned_approach.clone()))?;
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, sensors) in &self.approaches {
            validate_sensor(name).map_err(|_| WindowConfigError::Name(name.clone()))?;
            if sensors.is_empty() {
                return Err(WindowConfigError::Empty(name.clone()));
            }
            for s in sensors {
                if let Some(first) = seen.insert(s, name)
                    && first != name
                {
                    return Err(WindowConfigError::Twice {
                        sensor: s.clone(),
                        first: first.to_owned(),
                        second: name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Why a reading is in no window.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PushError {
    /// Its window had already closed; it is counted in the `late` column of the approach's next
    /// window.
    #[error(
        "reading of {sensor} at {ts_ms} ms is late: windows of {approach} up to {closed_until_ms} ms are closed"
    )]
    Late {
        /// The detector.
        sensor: String,
        /// The approach it belongs to.
        approach: String,
        /// Its event time.
        ts_ms: i64,
        /// Windows ending at or before this are closed.
        closed_until_ms: i64,
    },
    /// Its time is further ahead of the clock than `ahead_ms_max`: a detector with a wrong clock.
    #[error(
        "reading of {sensor} at {ts_ms} ms is more than {ahead_ms_max} ms ahead of the clock ({now_ms} ms)"
    )]
    TooFarAhead {
        /// The detector.
        sensor: String,
        /// Its event time.
        ts_ms: i64,
        /// The clock, as of the last `advance`.
        now_ms: i64,
        /// The configured limit.
        ahead_ms_max: u64,
    },
    /// It failed validation.
    #[error(transparent)]
    Invalid(#[from] ReadingError),
}

impl PushError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PushError::Late { .. } => "late",
            PushError::TooFarAhead { .. } => "too_far_ahead",
            PushError::Invalid(e) => e.kind(),
        }
    }
}

/// One closed window of one approach.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The approach.
    pub approach: String,
    /// Start of the window, milliseconds since the Unix epoch (a multiple of `window_ms`).
    pub start_ms: i64,
    /// End of the window, `start_ms + window_ms`.
    pub end_ms: i64,
    /// Vehicles counted, all readings together.
    pub vehicle_count: f64,
    /// Mean occupancy over the readings, in percent; 0 with no readings.
    pub mean_occupancy: f64,
    /// Vehicle-weighted mean speed in m/s over readings that saw vehicles; [`NO_SPEED`] if none.
    pub mean_speed: f64,
    /// The longest queue reported, in vehicles; 0 with no readings.
    pub max_queue: f64,
    /// Readings counted in the window.
    pub readings: u64,
    /// Late readings of this approach that arrived since its previous window was emitted (they
    /// are in no window's sums).
    pub late: u64,
}

impl Window {
    /// The record appended to the approach's aggregate stream: `ts_ms` is the window's start,
    /// and the values are [`WINDOW_COLUMNS`] in order: vehicle count, mean occupancy, mean speed,
    /// max queue, readings, late, and the node's prediction of the next window's vehicle count
    /// ([`NO_PREDICTION`] if it made none).
    pub fn to_record(&self, predicted_next_count: Option<f64>) -> Record {
        Record {
            ts_ms: self.start_ms,
            values: vec![
                self.vehicle_count,
                self.mean_occupancy,
                self.mean_speed,
                self.max_queue,
                self.readings as f64,
                self.late as f64,
                predicted_next_count.unwrap_or(NO_PREDICTION),
            ],
        }
    }
}

/// Running sums of one window of one approach.
#[derive(Debug, Clone, Default)]
struct Acc {
    readings: u64,
    count: f64,
    occupancy: f64,
    /// Sum of speed * count over readings with count > 0.
    speed_weighted: f64,
    /// Sum of count over the same readings.
    speed_vehicles: f64,
    max_queue: f64,
}

/// Tumbling windows per approach over event time. See the module docs.
#[derive(Debug)]
pub struct Aggregator {
    cfg: WindowConfig,
    window: i64,
    /// Approach names, sorted; the index is the approach's number.
    names: Vec<String>,
    /// The number of the unassigned approach.
    unassigned: usize,
    /// Detector to approach number.
    sensors: BTreeMap<String, usize>,
    /// Whether the approach emits windows (the unassigned one may not, yet).
    active: Vec<bool>,
    /// Late readings not yet reported, per approach.
    late: Vec<u64>,
    /// Open windows with readings: (start, approach) -> sums.
    open: BTreeMap<(i64, usize), Acc>,
    /// The start of the first window not yet closed; `None` until the first event time.
    open_from: Option<i64>,
    /// Windows before this were emitted by an earlier run.
    resume_from: Option<i64>,
    /// The latest event time seen.
    latest: Option<i64>,
    /// The clock, as of the last `advance`.
    now: Option<i64>,
    /// How far a batched source has vouched for its readings ([`Aggregator::expect_through`]).
    vouched: Option<i64>,
}

impl Aggregator {
    /// An aggregator for `cfg`, starting from nothing.
    ///
    /// # Errors
    ///
    /// [`WindowConfigError`] if the configuration does not validate.
    pub fn new(cfg: WindowConfig) -> Result<Self, WindowConfigError> {
        Self::resume(cfg, None)
    }

    /// An aggregator that continues after windows an earlier run already emitted: no window
    /// starting before `resume_from_ms` (the start of the last stored window plus `window_ms`)
    /// is emitted again, and readings for those windows are late.
    ///
    /// # Errors
    ///
    /// [`WindowConfigError`] if the configuration does not validate.
    pub fn resume(
        cfg: WindowConfig,
        resume_from_ms: Option<i64>,
    ) -> Result<Self, WindowConfigError> {
        cfg.validate()?;
        let window = i64::try_from(cfg.window_ms).unwrap_or(i64::MAX);
        let mut names: Vec<String> = cfg.approaches.keys().cloned().collect();
        if !names.contains(&cfg.unassigned_approach) {
            names.push(cfg.unassigned_approach.clone());
            names.sort();
        }
        let idx = |n: &str| names.iter().position(|x| x == n).unwrap_or(0);
        let unassigned = idx(&cfg.unassigned_approach);
        let mut sensors = BTreeMap::new();
        for (name, list) in &cfg.approaches {
            for s in list {
                sensors.insert(s.clone(), idx(name));
            }
        }
        let active = (0..names.len())
            .map(|i| {
                i != unassigned
                    || cfg.approaches.is_empty()
                    || cfg.approaches.contains_key(&names[i])
            })
            .collect();
        Ok(Self {
            late: vec![0; names.len()],
            window,
            names,
            unassigned,
            sensors,
            active,
            open: BTreeMap::new(),
            open_from: None,
            resume_from: resume_from_ms.map(|t| Self::grid_start(t, window)),
            latest: None,
            now: None,
            vouched: None,
            cfg,
        })
    }

    /// The approach names that emit windows now, sorted.
    pub fn approaches(&self) -> Vec<&str> {
        self.names
            .iter()
            .zip(&self.active)
            .filter(|(_, a)| **a)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The approach a detector's readings go to.
    pub fn approach_of(&self, sensor: &str) -> &str {
        &self.names[self.sensors.get(sensor).copied().unwrap_or(self.unassigned)]
    }

    /// The watermark: the latest event time seen minus the allowed lateness.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.latest.map(|t| t.saturating_sub(self.lateness()))
    }

    /// Windows (of any approach) that hold readings and are not closed yet.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    fn lateness(&self) -> i64 {
        i64::try_from(self.cfg.allowed_lateness_ms).unwrap_or(i64::MAX)
    }

    /// The start of the grid window holding `t` as a start time: `start <= t < start + w`.
    fn grid_start(t: i64, w: i64) -> i64 {
        t.div_euclid(w).saturating_mul(w)
    }

    /// The start of the window a reading stamped `ts` belongs to: `start < ts <= start + w`.
    fn window_of(&self, ts: i64) -> i64 {
        Self::grid_start(ts.saturating_sub(1), self.window)
    }

    /// Notes an event time; the first one fixes the first window: the one it falls in (so no
    /// window is emitted for time before the aggregator ran, and a reading for earlier time that
    /// arrives after it is late).
    fn observe(&mut self, t: i64) {
        self.latest = Some(self.latest.map_or(t, |l| l.max(t)));
        if self.open_from.is_none() {
            let first = self.window_of(t);
            self.open_from = Some(self.resume_from.map_or(first, |r| r.max(first)));
        }
    }

    /// Counts `reading` in its approach's window.
    ///
    /// # Errors
    ///
    /// [`PushError::Invalid`] for a reading that fails validation, [`PushError::TooFarAhead`] for
    /// one stamped too far past the clock (neither is counted anywhere; count them from the
    /// error), and [`PushError::Late`] for one whose window has closed (counted in the next
    /// window's `late` column).
    pub fn push(&mut self, reading: &Reading) -> Result<(), PushError> {
        reading.validate()?;
        let ts = reading.ts_ms;
        if let Some(now) = self.now.max(self.vouched) {
            let limit =
                now.saturating_add(i64::try_from(self.cfg.ahead_ms_max).unwrap_or(i64::MAX));
            if ts > limit {
                return Err(PushError::TooFarAhead {
                    sensor: reading.sensor.clone(),
                    ts_ms: ts,
                    now_ms: now,
                    ahead_ms_max: self.cfg.ahead_ms_max,
                });
            }
        }
        let a = self
            .sensors
            .get(&reading.sensor)
            .copied()
            .unwrap_or(self.unassigned);
        self.active[a] = true;
        self.observe(ts);
        let start = self.window_of(ts);
        let open_from = self.open_from.unwrap_or(start);
        if start < open_from {
            self.late[a] += 1;
            return Err(PushError::Late {
                sensor: reading.sensor.clone(),
                approach: self.names[a].clone(),
                ts_ms: ts,
                closed_until_ms: open_from,
            });
        }
        let counted = !self.cfg.uncounted.contains(&reading.sensor);
        let acc = self.open.entry((start, a)).or_default();
        acc.readings += 1;
        acc.occupancy += reading.occupancy;
        if counted {
            acc.count += reading.count;
            if reading.count > 0.0 {
                acc.speed_weighted += reading.speed * reading.count;
                acc.speed_vehicles += reading.count;
            }
        }
        acc.max_queue = acc.max_queue.max(reading.queue);
        Ok(())
    }

    /// A source that delivers in batches (a replay) vouches that its readings up to
    /// `through_ms` are arriving: readings stamped up to it are not too far ahead, though no
    /// window closes until [`Aggregator::advance`] moves the clock.
    pub fn expect_through(&mut self, through_ms: i64) {
        self.vouched = self.vouched.max(Some(through_ms));
    }

    /// Moves event time on to `now_event_ms` (the node's clock as event time, so windows close
    /// even when no reading comes) and returns the windows that closed.
    pub fn advance(&mut self, now_event_ms: i64) -> Vec<Window> {
        self.now = Some(self.now.map_or(now_event_ms, |n| n.max(now_event_ms)));
        self.observe(now_event_ms);
        self.close_ready()
    }

    /// Returns the windows the watermark has passed, in order of start time and, within one
    /// start time, of approach name: every approach's windows come out in order, none twice.
    pub fn close_ready(&mut self) -> Vec<Window> {
        let mut out = Vec::new();
        let (Some(mark), Some(mut start)) = (self.watermark_ms(), self.open_from) else {
            return out;
        };
        let w = self.window;
        // Windows ending at or before the watermark close.
        let last_end = Self::grid_start(mark, w);
        while start.saturating_add(w) <= last_end {
            let next_data = self.open.keys().next().map(|(s, _)| *s);
            if next_data != Some(start) {
                let run_end = next_data.map_or(last_end, |d| d.min(last_end));
                let run = u64::try_from((run_end - start) / w).unwrap_or(u64::MAX);
                if run > self.cfg.idle_windows_max {
                    start = run_end;
                    continue;
                }
            }
            for a in 0..self.names.len() {
                if !self.active[a] {
                    continue;
                }
                let acc = self.open.remove(&(start, a)).unwrap_or_default();
                out.push(self.window_from(a, start, &acc));
            }
            start += w;
        }
        self.open_from = Some(start);
        out
    }

    fn window_from(&mut self, a: usize, start: i64, acc: &Acc) -> Window {
        let late = std::mem::take(&mut self.late[a]);
        let n = acc.readings as f64;
        Window {
            approach: self.names[a].clone(),
            start_ms: start,
            end_ms: start + self.window,
            vehicle_count: acc.count,
            mean_occupancy: if acc.readings == 0 {
                0.0
            } else {
                acc.occupancy / n
            },
            mean_speed: if acc.speed_vehicles > 0.0 {
                acc.speed_weighted / acc.speed_vehicles
            } else {
                NO_SPEED
            },
            max_queue: acc.max_queue,
            readings: acc.readings,
            late,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(sensor: &str, ts_ms: i64, count: f64, speed: f64) -> Reading {
        Reading {
            sensor: sensor.into(),
            ts_ms,
            count,
            occupancy: count * 5.0,
            speed,
            queue: count,
        }
    }

    fn cfg() -> WindowConfig {
        WindowConfig {
            approaches: [
                (
                    "north".to_string(),
                    vec!["n0".to_string(), "n1".to_string()],
                ),
                ("south".to_string(), vec!["s0".to_string()]),
            ]
            .into_iter()
            .collect(),
            ..WindowConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid_and_bad_configs_are_named() {
        WindowConfig::default().validate().expect("defaults");
        cfg().validate().expect("approaches");
        let c = WindowConfig {
            window_ms: 10,
            ..cfg()
        };
        assert_eq!(c.validate(), Err(WindowConfigError::WindowMs(10)));
        let mut c = cfg();
        c.approaches.insert("east".into(), vec!["n1".into()]);
        assert!(matches!(c.validate(), Err(WindowConfigError::Twice { .. })));
        let mut c = cfg();
        c.approaches.insert("a/b".into(), vec!["x".into()]);
        assert!(matches!(c.validate(), Err(WindowConfigError::Name(_))));
        let mut c = cfg();
        c.approaches.insert("west".into(), vec![]);
        assert!(matches!(c.validate(), Err(WindowConfigError::Empty(_))));
        let c = WindowConfig {
            allowed_lateness_ms: 10_000 * 361,
            ..cfg()
        };
        assert!(matches!(
            c.validate(),
            Err(WindowConfigError::Lateness { .. })
        ));
    }

    #[test]
    fn the_config_section_parses_with_defaults_and_refuses_unknown_keys() {
        let c: WindowConfig =
            toml::from_str("window_ms = 5000\n[approaches]\nnorth = [\"e1_A1_0\", \"e1_A1_1\"]\n")
                .expect("parses");
        assert_eq!(c.window_ms, 5_000);
        assert_eq!(c.allowed_lateness_ms, 2_000);
        assert_eq!(c.unassigned_approach, "all");
        assert_eq!(c.approaches["north"].len(), 2);
        let e = toml::from_str::<WindowConfig>("windows_ms = 5000\n").expect_err("unknown key");
        assert!(e.to_string().contains("windows_ms"), "{e}");
    }

    #[test]
    fn readings_count_in_the_window_their_interval_ends_in() {
        let mut agg = Aggregator::new(cfg()).expect("valid");
        // An interval ending exactly at 10 s belongs to 0..10 s.
        agg.push(&r("n0", 10_000, 2.0, 10.0)).expect("counted");
        agg.push(&r("n1", 5_000, 4.0, 7.0)).expect("counted");
        agg.push(&r("n0", 10_001, 1.0, 3.0)).expect("counted");
        agg.push(&r("s0", 9_000, 0.0, 0.0)).expect("counted");
        assert!(agg.close_ready().is_empty(), "the watermark is at 8 s");
        let w = agg.advance(12_000);
        assert_eq!(w.len(), 2, "{w:?}");
        let north = &w[0];
        assert_eq!(
            (north.approach.as_str(), north.start_ms, north.end_ms),
            ("north", 0, 10_000)
        );
        assert_eq!((north.vehicle_count, north.readings), (6.0, 2));
        assert_eq!(north.mean_occupancy, 15.0);
        // Vehicle-weighted: (2*10 + 4*7) / 6 = 8.
        assert_eq!(north.mean_speed, 8.0);
        assert_eq!(north.max_queue, 4.0);
        let south = &w[1];
        assert_eq!(south.approach, "south");
        assert_eq!(
            (south.readings, south.vehicle_count, south.mean_speed),
            (1, 0.0, NO_SPEED)
        );
        assert_eq!(
            north.to_record(Some(7.5)),
            Record {
                ts_ms: 0,
                values: vec![6.0, 15.0, 8.0, 4.0, 2.0, 0.0, 7.5]
            }
        );
        assert_eq!(WINDOW_COLUMNS.len(), north.to_record(None).values.len());
    }

    #[test]
    fn late_readings_are_refused_counted_and_reported_in_the_next_window() {
        let mut agg = Aggregator::new(cfg()).expect("valid");
        agg.push(&r("n0", 5_000, 1.0, 5.0)).expect("counted");
        assert_eq!(agg.advance(12_000).len(), 2);
        // 0..10 s is closed now.
        let e = agg.push(&r("n1", 9_999, 3.0, 5.0)).expect_err("late");
        assert_eq!(e.kind(), "late");
        assert!(matches!(
            e,
            PushError::Late {
                closed_until_ms: 10_000,
                ..
            }
        ));
        // Within the allowed lateness: still counted.
        agg.push(&r("n1", 10_500, 1.0, 5.0)).expect("counted");
        let w = agg.advance(22_000);
        assert_eq!(
            (w[0].approach.as_str(), w[0].readings, w[0].late),
            ("north", 1, 1)
        );
        assert_eq!(w[1].late, 0);
    }

    #[test]
    fn every_approach_gets_every_window_even_an_empty_one() {
        let mut agg = Aggregator::new(cfg()).expect("valid");
        agg.push(&r("n0", 1_000, 1.0, 5.0)).expect("counted");
        let w = agg.advance(42_000);
        let got: Vec<(&str, i64, u64)> = w
            .iter()
            .map(|w| (w.approach.as_str(), w.start_ms, w.readings))
            .collect();
        assert_eq!(
            got,
            vec![
                ("north", 0, 1),
                ("south", 0, 0),
                ("north", 10_000, 0),
                ("south", 10_000, 0),
                ("north", 20_000, 0),
                ("south", 20_000, 0),
                ("north", 30_000, 0),
                ("south", 30_000, 0),
            ]
        );
        let empty = &w[3];
        assert_eq!(
            empty.to_record(None).values,
            vec![0.0, 0.0, NO_SPEED, 0.0, 0.0, 0.0, NO_PREDICTION]
        );
        // A detector in no approach starts the unassigned approach's windows.
        assert_eq!(agg.approach_of("x9"), "all");
        agg.push(&r("x9", 41_000, 1.0, 5.0)).expect("counted");
        assert_eq!(agg.approaches(), vec!["all", "north", "south"]);
        let w = agg.advance(52_000);
        assert_eq!(
            w.iter().map(|w| w.approach.as_str()).collect::<Vec<_>>(),
            vec!["all", "north", "south"]
        );
    }

    #[test]
    fn with_no_approaches_everything_is_one_approach_named_all() {
        let mut agg = Aggregator::new(WindowConfig::default()).expect("valid");
        assert_eq!(agg.approaches(), vec!["all"]);
        agg.push(&r("syn0", 3_000, 2.0, 8.0)).expect("counted");
        agg.push(&r("syn1", 4_000, 2.0, 8.0)).expect("counted");
        let w = agg.advance(12_000);
        assert_eq!((w.len(), w[0].readings, w[0].vehicle_count), (1, 2, 4.0));
    }

    #[test]
    fn a_restart_resumes_after_the_last_stored_window() {
        let mut agg = Aggregator::resume(cfg(), Some(20_000)).expect("valid");
        assert!(matches!(
            agg.push(&r("n0", 15_000, 1.0, 5.0)),
            Err(PushError::Late { .. })
        ));
        agg.push(&r("n0", 25_000, 1.0, 5.0)).expect("counted");
        let w = agg.advance(32_000);
        assert_eq!(w[0].start_ms, 20_000);
        assert_eq!((w[0].readings, w[0].late), (1, 1));
    }

    #[test]
    fn an_uncounted_detector_adds_occupancy_and_queue_but_no_vehicles() {
        let mut agg = Aggregator::new(WindowConfig {
            uncounted: ["n1".to_string()].into_iter().collect(),
            ..cfg()
        })
        .expect("valid");
        agg.push(&r("n0", 1_000, 2.0, 10.0)).expect("counted");
        let mut area = r("n1", 2_000, 5.0, 1.0);
        area.queue = 3.0;
        agg.push(&area).expect("counted");
        let w = agg.advance(12_000);
        let north = &w[0];
        assert_eq!(north.readings, 2);
        assert_eq!(north.vehicle_count, 2.0, "only the loop counts");
        assert_eq!(north.mean_speed, 10.0, "only the loop's speed");
        assert_eq!(north.max_queue, 3.0, "the area detector's queue");
    }

    #[test]
    fn a_clock_jump_skips_a_long_idle_run_and_a_wrong_clock_is_refused() {
        let mut agg = Aggregator::new(WindowConfig {
            idle_windows_max: 3,
            ..cfg()
        })
        .expect("valid");
        agg.push(&r("n0", 1_000, 1.0, 5.0)).expect("counted");
        assert_eq!(agg.advance(12_000).len(), 2);
        let w = agg.advance(1_000_000);
        assert!(w.is_empty(), "{w:?}");
        let w = agg.advance(1_012_000);
        assert_eq!(
            w.iter().map(|w| w.start_ms).collect::<Vec<_>>(),
            vec![990_000, 990_000, 1_000_000, 1_000_000]
        );
        let e = agg
            .push(&r("s0", 1_012_000 + 5_001, 1.0, 5.0))
            .expect_err("ahead");
        assert_eq!(e.kind(), "too_far_ahead");
        let mut bad = r("s0", 1_013_000, 1.0, 5.0);
        bad.speed = f64::NAN;
        assert_eq!(agg.push(&bad).map_err(|e| e.kind()), Err("not_finite"));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push { sensor: usize, ts: i64, count: u8 },
        Advance(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..4, 0i64..120_000, 0u8..5).prop_map(|(sensor, ts, count)| Op::Push { sensor, ts, count }),
            1 => (0i64..120_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Windows of each approach tile time without gaps or overlaps; every reading that was
        /// not late is counted in exactly one window, the one its time falls in; the late column
        /// adds up to the late readings exactly.
        #[test]
        fn windows_partition_time_and_count_every_reading_once(
            ops in proptest::collection::vec(op(), 1..200),
            window_ms in prop_oneof![Just(1_000u64), Just(10_000u64), Just(7_000u64)],
            lateness in 0u64..20_000,
        ) {
            let sensors = ["n0", "n1", "s0", "x9"];
            let mut agg = Aggregator::new(WindowConfig {
                window_ms,
                allowed_lateness_ms: lateness,
                ahead_ms_max: 1_000_000,
                ..cfg()
            }).expect("valid");
            let mut windows = Vec::new();
            let mut counted: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
            let mut late = 0u64;
            let mut last = 0i64;
            for op in ops {
                match op {
                    Op::Push { sensor, ts, count } => {
                        last = last.max(ts);
                        let reading = r(sensors[sensor], ts, f64::from(count), 5.0);
                        match agg.push(&reading) {
                            Ok(()) => {
                                let start = (ts - 1).div_euclid(window_ms as i64) * window_ms as i64;
                                let e = counted.entry((agg.approach_of(sensors[sensor]).to_string(), start)).or_default();
                                e.0 += 1;
                                e.1 += f64::from(count);
                            }
                            Err(PushError::Late { .. }) => late += 1,
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Advance(t) => {
                        last = last.max(t);
                        windows.extend(agg.advance(t));
                    }
                }
            }
            windows.extend(agg.advance(last + lateness as i64 + 3 * window_ms as i64));
            prop_assert_eq!(agg.open_windows(), 0);
            let mut per: BTreeMap<&str, Vec<&Window>> = BTreeMap::new();
            for w in &windows {
                per.entry(w.approach.as_str()).or_default().push(w);
            }
            for ws in per.values() {
                for pair in ws.windows(2) {
                    prop_assert_eq!(pair[0].end_ms, pair[1].start_ms, "a gap or an overlap");
                }
                for w in ws {
                    prop_assert_eq!(w.end_ms - w.start_ms, window_ms as i64);
                    prop_assert_eq!(w.start_ms.rem_euclid(window_ms as i64), 0);
                }
            }
            for w in &windows {
                let (n, cars) = counted.remove(&(w.approach.clone(), w.start_ms)).unwrap_or_default();
                prop_assert_eq!(w.readings, n);
                prop_assert_eq!(w.vehicle_count, cars);
            }
            prop_assert!(counted.is_empty(), "readings counted in no window: {:?}", counted);
            prop_assert_eq!(windows.iter().map(|w| w.late).sum::<u64>(), late);
        }
    }
}
