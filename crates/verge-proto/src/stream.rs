//! Streams: append-only logs with exactly one writer, the node that owns the sensor.
//!
//! A stream is named by (owner, kind, sensor) and written as `b1/raw/e1_A1_0`. Its records carry
//! dense sequence numbers starting at 1; sequence 0 means "nothing yet".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{IdError, NodeId};

/// The longest sensor id.
pub const SENSOR_ID_CHARS_MAX: usize = 128;

/// What a stream holds; also the order in which a full disk gives streams up (raw first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StreamKind {
    /// Raw sensor readings.
    Raw,
    /// Model predictions.
    Results,
    /// Windowed aggregates, the last to be dropped.
    Aggregates,
}

impl StreamKind {
    /// Lowercase name used in stream ids, tables and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Raw => "raw",
            StreamKind::Results => "results",
            StreamKind::Aggregates => "aggregates",
        }
    }
}

impl FromStr for StreamKind {
    type Err = StreamIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(StreamKind::Raw),
            "results" => Ok(StreamKind::Results),
            "aggregates" => Ok(StreamKind::Aggregates),
            other => Err(StreamIdError::Kind(other.to_owned())),
        }
    }
}

/// Why a string is not a stream id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    /// Not three `/`-separated parts.
    #[error("stream id `{0}` is not OWNER/KIND/SENSOR, e.g. b1/raw/e1_A1_0")]
    Shape(String),
    /// The owner is not a node id.
    #[error("stream owner: {0}")]
    Owner(#[from] IdError),
    /// Unknown kind.
    #[error("stream kind `{0}` is not raw, results or aggregates")]
    Kind(String),
    /// Sensor id empty, too long, or holding `/` or control characters.
    #[error("sensor id `{0}` must be 1 to {SENSOR_ID_CHARS_MAX} printable characters without `/`")]
    Sensor(String),
}

/// A stream's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId {
    /// The node that owns the sensor and is the stream's only writer.
    pub owner: NodeId,
    /// What the stream holds.
    pub kind: StreamKind,
    /// The sensor (or approach, for aggregates).
    pub sensor: String,
}

/// Checks a sensor id.
pub fn validate_sensor(s: &str) -> Result<(), StreamIdError> {
    let ok = !s.is_empty()
        && s.len() <= SENSOR_ID_CHARS_MAX
        && !s.contains('/')
        && !s.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(StreamIdError::Sensor(s.to_owned()))
    }
}

impl StreamId {
    /// A validated stream id.
    pub fn new(
        owner: NodeId,
        kind: StreamKind,
        sensor: impl Into<String>,
    ) -> Result<Self, StreamIdError> {
        let sensor = sensor.into();
        validate_sensor(&sensor)?;
        Ok(Self {
            owner,
            kind,
            sensor,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.owner, self.kind.as_str(), self.sensor)
    }
}

impl FromStr for StreamId {
    type Err = StreamIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, '/');
        let (Some(owner), Some(kind), Some(sensor)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(StreamIdError::Shape(s.to_owned()));
        };
        StreamId::new(NodeId::new(owner)?, kind.parse()?, sensor)
    }
}

/// One record of a stream: an event time and a fixed number of values (the stream's columns,
/// e.g. vehicle count, occupancy, speed, queue for a raw reading).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The values, one per column.
    pub values: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_round_trip_through_text() {
        let id: StreamId = "b1/raw/e1_A1_A0A1_0".parse().expect("parses");
        assert_eq!(id.kind, StreamKind::Raw);
        assert_eq!(id.to_string(), "b1/raw/e1_A1_A0A1_0");
    }

    #[test]
    fn bad_stream_ids_say_what_is_wrong() {
        assert!(matches!(
            "b1/raw".parse::<StreamId>(),
            Err(StreamIdError::Shape(_))
        ));
        assert!(matches!(
            "B1/raw/x".parse::<StreamId>(),
            Err(StreamIdError::Owner(_))
        ));
        assert!(matches!(
            "b1/cooked/x".parse::<StreamId>(),
            Err(StreamIdError::Kind(_))
        ));
        assert!(matches!(
            "b1/raw/a/b".parse::<StreamId>(),
            Err(StreamIdError::Sensor(_))
        ));
        assert!(matches!(
            "b1/raw/".parse::<StreamId>(),
            Err(StreamIdError::Sensor(_))
        ));
    }

    #[test]
    fn kinds_order_as_retention_gives_them_up() {
        assert!(StreamKind::Raw < StreamKind::Results);
        assert!(StreamKind::Results < StreamKind::Aggregates);
    }
}
