//! Validation of a stream of readings: a plain struct without IO that remembers what a single
//! reading cannot tell.
//!
//! # The rules
//!
//! - **Known detectors only.** The validator is built with the set of detectors its source is
//!   expected to report; a reading of any other detector is refused with
//!   [`ReadingError::UnknownDetector`]. This also bounds its memory: it keeps one timestamp per
//!   expected detector and nothing else.
//! - **Physical bounds** are those of [`Reading::validate`] (finite, within `0..=max`).
//! - **Time moves forward per detector.** A reading whose `ts_ms` is not strictly after the
//!   detector's last *accepted* reading is refused with [`ReadingError::TimeBackwards`] (a repeat
//!   counts as backwards: each reading closes an interval, and one interval is reported once).
//!   Detectors are independent: one detector's time says nothing about another's.
//! - **A refused reading changes nothing**: the next reading of that detector is compared with
//!   the last accepted one, so one bad timestamp does not make the good ones after it look late.
//!
//! The checks run in that order, so a reading is refused for the first rule it breaks.

use std::collections::BTreeMap;

use crate::{Reading, ReadingError};

/// Checks readings against the expected detectors, physical bounds and per-detector time.
#[derive(Debug, Clone, Default)]
pub struct Validator {
    /// Expected detector to the time of its last accepted reading.
    last_ts_ms: BTreeMap<String, Option<i64>>,
}

impl Validator {
    /// A validator expecting exactly the detectors in `expected` (duplicates are ignored).
    pub fn new<I, S>(expected: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            last_ts_ms: expected.into_iter().map(|s| (s.into(), None)).collect(),
        }
    }

    /// Adds a detector to the expected set (e.g. when a config reload adds one); a detector
    /// already expected keeps its last timestamp.
    pub fn add_detector(&mut self, sensor: impl Into<String>) {
        self.last_ts_ms.entry(sensor.into()).or_insert(None);
    }

    /// The expected detectors, sorted.
    pub fn expected(&self) -> impl Iterator<Item = &str> {
        self.last_ts_ms.keys().map(String::as_str)
    }

    /// The time of `sensor`'s last accepted reading, if any.
    pub fn last_ts_ms(&self, sensor: &str) -> Option<i64> {
        self.last_ts_ms.get(sensor).copied().flatten()
    }

    /// Checks `reading` and, if it passes, remembers its time as the detector's latest.
    ///
    /// # Errors
    ///
    /// The first rule it breaks (see the module docs): [`ReadingError::UnknownDetector`], then
    /// [`ReadingError::NotFinite`] / [`ReadingError::OutOfRange`], then
    /// [`ReadingError::TimeBackwards`].
    pub fn check(&mut self, reading: &Reading) -> Result<(), ReadingError> {
        let expected = self.last_ts_ms.len();
        let Some(last) = self.last_ts_ms.get_mut(&reading.sensor) else {
            return Err(ReadingError::UnknownDetector {
                sensor: reading.sensor.clone(),
                expected,
            });
        };
        reading.validate()?;
        if let Some(last_ts_ms) = *last
            && reading.ts_ms <= last_ts_ms
        {
            return Err(ReadingError::TimeBackwards {
                sensor: reading.sensor.clone(),
                ts_ms: reading.ts_ms,
                last_ts_ms,
            });
        }
        *last = Some(reading.ts_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(sensor: &str, ts_ms: i64) -> Reading {
        Reading {
            sensor: sensor.into(),
            ts_ms,
            count: 1.0,
            occupancy: 5.0,
            speed: 10.0,
            queue: 0.0,
        }
    }

    #[test]
    fn unknown_detectors_are_refused_and_named() {
        let mut v = Validator::new(["e1_A1_A0A1_0", "e2_A1_A0A1_0"]);
        let e = v.check(&r("e1_B1_A1B1_0", 1_000)).expect_err("unknown");
        assert_eq!(e.kind(), "unknown_detector");
        let msg = e.to_string();
        assert!(
            msg.contains("e1_B1_A1B1_0") && msg.contains("sensor"),
            "{msg}"
        );
        v.check(&r("e1_A1_A0A1_0", 1_000)).expect("known");
        assert_eq!(
            v.expected().collect::<Vec<_>>(),
            ["e1_A1_A0A1_0", "e2_A1_A0A1_0"]
        );
    }

    #[test]
    fn time_must_move_forward_per_detector_and_a_refusal_changes_nothing() {
        let mut v = Validator::new(["a", "b"]);
        v.check(&r("a", 5_000)).expect("first");
        // Another detector has its own clock.
        v.check(&r("b", 1_000)).expect("other detector");
        let e = v.check(&r("a", 5_000)).expect_err("repeat");
        assert_eq!(
            e,
            ReadingError::TimeBackwards {
                sensor: "a".into(),
                ts_ms: 5_000,
                last_ts_ms: 5_000
            }
        );
        assert_eq!(e.kind(), "time_backwards");
        assert!(e.to_string().contains("ts_ms = 5000"), "{e}");
        assert_eq!(
            v.check(&r("a", 4_000)).map_err(|e| e.kind()),
            Err("time_backwards")
        );
        // A reading refused for its values does not move the detector's time.
        let mut bad = r("a", 9_000);
        bad.occupancy = 130.0;
        assert_eq!(v.check(&bad).map_err(|e| e.kind()), Err("out_of_range"));
        assert_eq!(v.last_ts_ms("a"), Some(5_000));
        v.check(&r("a", 6_000)).expect("forward");
        assert_eq!(v.last_ts_ms("a"), Some(6_000));
    }

    #[test]
    fn value_errors_name_detector_field_and_value() {
        let mut v = Validator::new(["a"]);
        let mut bad = r("a", 1);
        bad.speed = f64::INFINITY;
        let e = v.check(&bad).expect_err("not finite");
        assert_eq!(e.kind(), "not_finite");
        assert_eq!(
            e.to_string(),
            "sensor a: speed = inf is not a finite number"
        );
        let mut bad = r("a", 1);
        bad.queue = -2.0;
        let e = v.check(&bad).expect_err("range");
        assert_eq!(e.to_string(), "sensor a: queue = -2 is outside 0..=10000");
        v.add_detector("a");
        v.add_detector("b");
        assert_eq!(v.expected().count(), 2);
    }
}
