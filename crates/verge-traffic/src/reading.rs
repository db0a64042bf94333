//! One detector reading and its validation.
//!
//! [`Reading::validate`] checks one reading on its own (finite values within physical bounds);
//! [`Validator`](crate::Validator) adds what needs memory: which detectors exist and each one's
//! last timestamp. Every [`ReadingError`] names the detector, the field and the value, and has a
//! stable [`ReadingError::kind`] for metrics.

use verge_proto::Record;

/// Column names of a reading's record, in order.
pub const COLUMNS: [&str; 4] = ["count", "occupancy", "speed", "queue"];

/// Physical bounds a reading must respect.
const COUNT_MAX: f64 = 10_000.0;
const SPEED_MAX_MPS: f64 = 100.0;
const QUEUE_MAX: f64 = 10_000.0;

/// What one detector saw over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The detector id, e.g. `e1_A1_A0A1_0`.
    pub sensor: String,
    /// End of the interval, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Vehicles that passed.
    pub count: f64,
    /// Share of the interval the detector was occupied, in percent.
    pub occupancy: f64,
    /// Mean speed in m/s.
    pub speed: f64,
    /// Vehicles queued.
    pub queue: f64,
}

/// Why a reading was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadingError {
    /// A value is NaN or infinite.
    #[error("sensor {sensor}: {field} = {value} is not a finite number")]
    NotFinite {
        /// The detector.
        sensor: String,
        /// The field.
        field: &'static str,
        /// The value (NaN or an infinity).
        value: f64,
    },
    /// A value is outside what a detector can report.
    #[error("sensor {sensor}: {field} = {value} is outside 0..={max}")]
    OutOfRange {
        /// The detector.
        sensor: String,
        /// The field.
        field: &'static str,
        /// The value.
        value: f64,
        /// The upper bound.
        max: f64,
    },
    /// The detector is not one this source is expected to report (a wrong config, or a file of
    /// another intersection).
    #[error("sensor {sensor}: sensor = `{sensor}` is not one of the {expected} expected detectors")]
    UnknownDetector {
        /// The detector.
        sensor: String,
        /// How many detectors are expected.
        expected: usize,
    },
    /// The reading is not later than the detector's last accepted reading: time went backwards
    /// or the reading is a repeat.
    #[error("sensor {sensor}: ts_ms = {ts_ms} is not after the last accepted ts_ms = {last_ts_ms}")]
    TimeBackwards {
        /// The detector.
        sensor: String,
        /// The reading's time.
        ts_ms: i64,
        /// The time of the detector's last accepted reading.
        last_ts_ms: i64,
    },
}

impl ReadingError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadingError::NotFinite { .. } => "not_finite",
            ReadingError::OutOfRange { .. } => "out_of_range",
            ReadingError::UnknownDetector { .. } => "unknown_detector",
            ReadingError::TimeBackwards { .. } => "time_backwards",
        }
    }
}

impl Reading {
    /// Checks every value against physical bounds.
    pub fn validate(&self) -> Result<(), ReadingError> {
        for (field, value, max) in [
            ("count", self.count, COUNT_MAX),
            ("occupancy", self.occupancy, 100.0),
            ("speed", self.speed, SPEED_MAX_MPS),
            ("queue", self.queue, QUEUE_MAX),
        ] {
            if !value.is_finite() {
                return Err(ReadingError::NotFinite {
                    sensor: self.sensor.clone(),
                    field,
                    value,
                });
            }
            if !(0.0..=max).contains(&value) {
                return Err(ReadingError::OutOfRange {
                    sensor: self.sensor.clone(),
                    field,
                    value,
                    max,
                });
            }
        }
        Ok(())
    }

    /// The record stored for this reading.
    pub fn to_record(&self) -> Record {
        Record {
            ts_ms: self.ts_ms,
            values: vec![self.count, self.occupancy, self.speed, self.queue],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Reading {
        Reading {
            sensor: "e1".into(),
            ts_ms: 1,
            count: 3.0,
            occupancy: 12.5,
            speed: 8.0,
            queue: 0.0,
        }
    }

    #[test]
    fn refuses_nan_negative_and_impossible_values() {
        assert!(r().validate().is_ok());
        let mut bad = r();
        bad.speed = f64::NAN;
        assert_eq!(bad.validate().map_err(|e| e.kind()), Err("not_finite"));
        let mut bad = r();
        bad.count = -1.0;
        assert_eq!(bad.validate().map_err(|e| e.kind()), Err("out_of_range"));
        let mut bad = r();
        bad.occupancy = 101.0;
        assert_eq!(bad.validate().map_err(|e| e.kind()), Err("out_of_range"));
    }
}
