//! The feature contract of the default model: how a node turns an approach's window records and
//! its upstream neighbours' predictions into the model's input row.
//!
//! `models/features.py` is the same contract in Python (the training script uses it), and the
//! test `features_match_the_python_twin` checks this module against a fixture written by it.
//!
//! # The row (float32, [`FEATURES`] = 27 values, in this order)
//!
//! - **[`K`] = 6 past windows of the approach**, oldest first; the newest is the window that just
//!   closed (it starts at `last_start_ms`). Each gives [`WINDOW_VALUES`] = 4 values, the first
//!   four columns of its record (`verge_traffic::window::WINDOW_COLUMNS`):
//!   `vehicle_count, mean_occupancy, mean_speed, max_queue`. So window `i` (0 = oldest) is at
//!   `4*i .. 4*i+4`, and the newest window's count is at index 20.
//! - **`mean_speed` of -1 becomes 0.** -1 (`verge_traffic::window::NO_SPEED`) means "no vehicle
//!   passed"; the count of 0 beside it already says so, and 0 keeps the input continuous (a
//!   jump to -1 would teach the model that an empty road is slower than a jammed one). Any other
//!   negative speed is treated the same.
//! - **A missing window is four zeros**, exactly like an empty window: before the approach has
//!   K windows, or where the stream has a gap (the node was down). Records outside the K slots
//!   are ignored.
//! - **[`U`] = 3 upstream slots** at 24, 25, 26: the upstream neighbours' predictions of *their*
//!   next-window count for the approaches that feed this one: slot 0 the straight-through
//!   feeder, 1 the left-turn feeder, 2 the right-turn feeder ([`UpstreamSlot`]). For an approach
//!   X→Y (the edge from intersection X into Y), the feeders are the approaches of X with a
//!   connection onto X→Y. A slot with no feeder (a fringe approach) or no prediction shared yet
//!   is 0.
//!
//! The output is float32 `[batch, 1]`: the approach's vehicle count in the next window.
//!
//! What the window values mean for SUMO data (which detector gives which reading) is fixed where
//! the readings are made; models/README.md says what the training data assumed.

use verge_proto::Record;

use crate::manifest::Signature;

/// Past windows per row.
pub const K: usize = 6;
/// Values per window: vehicle count, mean occupancy, mean speed, max queue.
pub const WINDOW_VALUES: usize = 4;
/// Upstream slots per row.
pub const U: usize = 3;
/// Values per row.
pub const FEATURES: usize = K * WINDOW_VALUES + U;
/// Index of the first upstream slot.
pub const UPSTREAM_OFFSET: usize = K * WINDOW_VALUES;
/// Index of the newest window's vehicle count (what a last-value predictor would answer).
pub const LAST_COUNT: usize = (K - 1) * WINDOW_VALUES;
/// What the node expects of the default model: `[batch, 27]` in, `[batch, 1]` out.
pub const SIGNATURE: Signature = Signature {
    input: &[FEATURES],
    output: &[1],
};

/// The meaning of each upstream slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpstreamSlot {
    /// The feeder whose traffic goes straight on into this approach.
    Straight = 0,
    /// The feeder whose traffic turns left into this approach.
    Left = 1,
    /// The feeder whose traffic turns right into this approach.
    Right = 2,
}

/// Why a row could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    /// `window_ms` is not positive.
    #[error("window_ms is {0}; it must be positive")]
    WindowMs(i64),
    /// A record has fewer than four values: it is not a window record.
    #[error("record at {ts_ms} ms has {len} values; a window record has at least {WINDOW_VALUES}")]
    ShortRecord {
        /// The record's time.
        ts_ms: i64,
        /// Its values.
        len: usize,
    },
    /// A record is not on the window grid.
    #[error(
        "record at {ts_ms} ms is not on the grid of {window_ms} ms windows ending with {last_start_ms}"
    )]
    OffGrid {
        /// The record's time.
        ts_ms: i64,
        /// The window length.
        window_ms: i64,
        /// The newest window's start.
        last_start_ms: i64,
    },
    /// A value is NaN or infinite.
    #[error("record at {ts_ms} ms: value {column} is not finite")]
    NotFinite {
        /// The record's time.
        ts_ms: i64,
        /// The column.
        column: usize,
    },
    /// More than [`U`] upstream values, or one that is not finite.
    #[error("upstream predictions must be at most {U} finite values; got {0:?}")]
    Upstream(Vec<Option<f32>>),
}

/// The four feature values of one window record's values (see the module docs).
///
/// # Errors
///
/// [`FeatureError::ShortRecord`] or [`FeatureError::NotFinite`].
pub fn window_values(ts_ms: i64, values: &[f64]) -> Result<[f32; WINDOW_VALUES], FeatureError> {
    let Some(v) = values.get(..WINDOW_VALUES) else {
        return Err(FeatureError::ShortRecord {
            ts_ms,
            len: values.len(),
        });
    };
    if let Some(column) = v.iter().position(|x| !x.is_finite()) {
        return Err(FeatureError::NotFinite { ts_ms, column });
    }
    let speed = if v[2] < 0.0 { 0.0 } else { v[2] };
    Ok([v[0] as f32, v[1] as f32, speed as f32, v[3] as f32])
}

/// Builds the row of one approach from its window records (any order; the approach's
/// aggregate stream as stored, `ts_ms` = window start) for the window starting at
/// `last_start_ms` as the newest, and up to [`U`] upstream predictions in [`UpstreamSlot`] order
/// (`None` = not shared yet).
///
/// # Errors
///
/// [`FeatureError`] for a record in the K slots that is off the grid, short or not finite, for
/// a non-positive `window_ms`, or bad upstream values.
pub fn build(
    records: &[Record],
    last_start_ms: i64,
    window_ms: i64,
    upstream: &[Option<f32>],
) -> Result<[f32; FEATURES], FeatureError> {
    let mut row = [0.0f32; FEATURES];
    build_into(records, last_start_ms, window_ms, upstream, &mut row)?;
    Ok(row)
}

/// Like [`build`], writing into `row` (for a caller that fills a batch buffer in place).
///
/// # Errors
///
/// As [`build`]; `row` is then all zeros.
pub fn build_into(
    records: &[Record],
    last_start_ms: i64,
    window_ms: i64,
    upstream: &[Option<f32>],
    row: &mut [f32; FEATURES],
) -> Result<(), FeatureError> {
    row.fill(0.0);
    let result = fill(records, last_start_ms, window_ms, upstream, row);
    if result.is_err() {
        row.fill(0.0);
    }
    result
}

fn fill(
    records: &[Record],
    last_start_ms: i64,
    window_ms: i64,
    upstream: &[Option<f32>],
    row: &mut [f32; FEATURES],
) -> Result<(), FeatureError> {
    if window_ms <= 0 {
        return Err(FeatureError::WindowMs(window_ms));
    }
    if upstream.len() > U || upstream.iter().flatten().any(|v| !v.is_finite()) {
        return Err(FeatureError::Upstream(upstream.to_vec()));
    }
    let span = window_ms.saturating_mul(K as i64 - 1);
    let first = last_start_ms.saturating_sub(span);
    for r in records {
        if r.ts_ms < first || r.ts_ms > last_start_ms {
            continue;
        }
        let offset = r.ts_ms - first;
        if offset % window_ms != 0 {
            return Err(FeatureError::OffGrid {
                ts_ms: r.ts_ms,
                window_ms,
                last_start_ms,
            });
        }
        let slot = usize::try_from(offset / window_ms).unwrap_or(0);
        let v = window_values(r.ts_ms, &r.values)?;
        row[slot * WINDOW_VALUES..(slot + 1) * WINDOW_VALUES].copy_from_slice(&v);
    }
    for (i, u) in upstream.iter().enumerate() {
        row[UPSTREAM_OFFSET + i] = u.unwrap_or(0.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_traffic::window::{NO_SPEED, WINDOW_COLUMNS};

    fn rec(ts_ms: i64, count: f64, speed: f64) -> Record {
        Record {
            ts_ms,
            values: vec![count, 10.0, speed, 2.0, 4.0, 0.0],
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        assert_eq!(FEATURES, 27);
        assert_eq!(LAST_COUNT, 20);
        assert_eq!(UPSTREAM_OFFSET, 24);
        // The first four window columns are the ones the row takes, in this order.
        assert_eq!(
            WINDOW_COLUMNS[..WINDOW_VALUES],
            ["vehicle_count", "mean_occupancy", "mean_speed", "max_queue"]
        );
        let records: Vec<Record> = (0..8).map(|i| rec(i * 10_000, i as f64, 5.0)).collect();
        let row = build(&records, 70_000, 10_000, &[Some(1.5), None, Some(2.0)]).expect("row");
        // Windows 20 s..70 s, oldest first.
        let counts: Vec<f32> = (0..K).map(|i| row[i * WINDOW_VALUES]).collect();
        assert_eq!(counts, vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(row[LAST_COUNT], 7.0);
        assert_eq!(&row[1..4], &[10.0, 5.0, 2.0]);
        assert_eq!(&row[UPSTREAM_OFFSET..], &[1.5, 0.0, 2.0]);
    }

    #[test]
    fn no_speed_becomes_zero_and_missing_windows_are_zeros() {
        let records = vec![rec(0, 0.0, NO_SPEED), rec(20_000, 3.0, 7.0)];
        let row = build(&records, 20_000, 10_000, &[]).expect("row");
        // Slots 0..3 are before the stream began, slot 3 is 0 s, slot 4 (10 s) is a gap.
        assert!(row[..3 * WINDOW_VALUES].iter().all(|v| *v == 0.0));
        assert_eq!(&row[12..16], &[0.0, 10.0, 0.0, 2.0]);
        assert_eq!(&row[16..20], &[0.0; 4]);
        assert_eq!(&row[20..24], &[3.0, 10.0, 7.0, 2.0]);
        assert_eq!(&row[24..], &[0.0; 3]);
    }

    #[test]
    fn bad_records_are_named() {
        let e = build(&[rec(5_000, 1.0, 1.0)], 50_000, 10_000, &[]).expect_err("off grid");
        assert!(
            matches!(e, FeatureError::OffGrid { ts_ms: 5_000, .. }),
            "{e}"
        );
        let short = Record {
            ts_ms: 50_000,
            values: vec![1.0],
        };
        assert!(matches!(
            build(&[short], 50_000, 10_000, &[]),
            Err(FeatureError::ShortRecord { len: 1, .. })
        ));
        let nan = rec(50_000, f64::NAN, 1.0);
        assert!(matches!(
            build(&[nan], 50_000, 10_000, &[]),
            Err(FeatureError::NotFinite { column: 0, .. })
        ));
        assert!(matches!(
            build(&[], 50_000, 10_000, &[None; 4]),
            Err(FeatureError::Upstream(_))
        ));
        assert!(matches!(
            build(&[], 50_000, 0, &[]),
            Err(FeatureError::WindowMs(0))
        ));
        // Records outside the six slots are ignored, whatever they hold.
        let old = Record {
            ts_ms: -1,
            values: vec![],
        };
        assert!(build(&[old], 50_000, 10_000, &[]).is_ok());
    }
}
