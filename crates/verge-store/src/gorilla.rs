//! A lossless columnar block codec for time series, after Facebook's Gorilla paper (Pelkonen et
//! al., VLDB 2015).
//!
//! This module owns the byte layout of one block: a header, then every timestamp, then each value
//! column in turn, all in one MSB-first bit stream.
//!
//! - **Timestamps** (`i64` milliseconds) are stored as delta-of-delta: the first raw, then for each
//!   next one the change of its delta to the previous delta, in the smallest of six buckets (`0`
//!   for an unchanged delta, up to a raw 64-bit escape). Arithmetic wraps, so non-monotonic series
//!   and deltas that overflow `i64` still round-trip exactly.
//! - **Values** (`f64`) are stored, as in the paper, as the XOR of their bits with the previous
//!   value of the same column: `0` for a repeat, otherwise the meaningful bits inside a window of
//!   leading and trailing zeros, reusing the previous window when it fits. Values are handled as
//!   bit patterns, so NaN payloads, `-0.0` and infinities come back bit for bit.
//! - **Decimal columns** are the one addition to the paper. Sensors report decimal text (SUMO
//!   writes `occupancy="12.81"`), and the doubles of two such numbers share few bits, so XOR
//!   saves little on them (2.25 bytes per value on an induction-loop series, against 0.73 this
//!   way). When every value of a column is exactly `n / 10^s` for a small scale `s`, the column
//!   may instead be written as the changes of `n`, bucketed like the timestamps. The encoder
//!   writes whichever of the two is smaller, and a value only counts as decimal if decoding gives
//!   its exact bits back, so the choice never costs losslessness.
//!
//! It does not know about streams, sequence numbers, checksums or storage; the store frames each
//! block with those. Decoding treats its input as hostile: any byte string gives either the series
//! or a [`CodecError`], never a panic, and it allocates no more than the input could describe.

use thiserror::Error;

/// The block layout version written in the first byte of every block.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes before the bit stream: version (1), column count (`u16` LE), record count (`u32` LE).
const HEADER_BYTES: usize = 1 + 2 + 4;

/// Why a byte string is not a block this codec wrote.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The first byte names a layout this build cannot read (a newer build wrote it, or the
    /// bytes are damaged).
    #[error("block layout version {found} is not one this build reads (it reads {FORMAT_VERSION})")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// The block is shorter than its header says it must be, or ends in the middle of a value.
    #[error("block is cut short: {bytes} bytes end in the middle of {what}")]
    Truncated {
        /// The block's length.
        bytes: usize,
        /// What was being read when the bytes ran out.
        what: &'static str,
    },
    /// The header claims more values than the block has bits for; the bytes are damaged.
    #[error(
        "block header claims {records} records of {columns} columns, more than its {bytes} bytes can hold"
    )]
    Implausible {
        /// Records claimed by the header.
        records: u64,
        /// Columns claimed by the header.
        columns: u64,
        /// The block's length.
        bytes: usize,
    },
    /// A value's window of meaningful bits reaches past 64 bits; the bytes are damaged.
    #[error("a value window of {leading} leading zeros and {len} bits does not fit in 64 bits")]
    Window {
        /// Leading zeros read.
        leading: u32,
        /// Meaningful bits read.
        len: u32,
    },
    /// Bits are left over after the last value (beyond zero padding to a whole byte); the bytes
    /// are damaged or are not one block.
    #[error("block has {bits} bits left over after its last value")]
    Trailing {
        /// Leftover bits, counting non-zero padding.
        bits: usize,
    },
}

/// Encodes a series: `ts[i]` with `columns[c][i]` for every column `c`.
///
/// # Panics
///
/// If a column's length differs from `ts.len()`, or there are more than 65,535 columns or
/// 4,294,967,295 records (the header's `u16` and `u32`): those are caller bugs, not data.
pub fn encode(ts: &[i64], columns: &[Vec<f64>]) -> Vec<u8> {
    assert!(
        columns.iter().all(|c| c.len() == ts.len()),
        "every column must have one value per timestamp"
    );
    let column_count = u16::try_from(columns.len()).expect("at most 65,535 columns");
    let record_count = u32::try_from(ts.len()).expect("at most u32::MAX records");

    // A repeated value costs one bit, a fresh one about 8 bytes; start from a middling guess.
    let mut w = BitWriter::with_capacity(HEADER_BYTES + ts.len() * (1 + columns.len()) * 2);
    w.out.push(FORMAT_VERSION);
    w.out.extend_from_slice(&column_count.to_le_bytes());
    w.out.extend_from_slice(&record_count.to_le_bytes());
    encode_timestamps(&mut w, ts);
    for column in columns {
        let mut xor = BitWriter::with_capacity(column.len() * 2);
        xor.write(0, 1);
        encode_xor(&mut xor, column);
        match encode_decimal(column) {
            Some(decimal) if decimal.bits() < xor.bits() => w.append(&decimal),
            _ => w.append(&xor),
        }
    }
    w.finish()
}

/// Decodes a block written by [`encode`] back to its timestamps and columns.
pub fn decode(bytes: &[u8]) -> Result<(Vec<i64>, Vec<Vec<f64>>), CodecError> {
    let (&version, rest) = bytes.split_first().ok_or(CodecError::Truncated {
        bytes: 0,
        what: "the header",
    })?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version { found: version });
    }
    let truncated_header = CodecError::Truncated {
        bytes: bytes.len(),
        what: "the header",
    };
    let (columns, rest) = rest
        .split_first_chunk::<2>()
        .ok_or(truncated_header.clone())?;
    let (records, body) = rest.split_first_chunk::<4>().ok_or(truncated_header)?;
    let columns = usize::from(u16::from_le_bytes(*columns));
    let records = u32::from_le_bytes(*records) as usize;

    // Every value and column mode takes at least one bit and the first timestamp 64: refuse a
    // header that claims more than the body could hold before allocating for it.
    let values = (records as u128) * (columns as u128 + 1);
    let bits_min = if records == 0 {
        0
    } else {
        values + 63 + columns as u128
    };
    if bits_min > (body.len() as u128) * 8 {
        return Err(CodecError::Implausible {
            records: records as u64,
            columns: columns as u64,
            bytes: bytes.len(),
        });
    }

    let mut r = BitReader::new(body, bytes.len());
    let ts = decode_timestamps(&mut r, records)?;
    let mut out = Vec::with_capacity(columns);
    for _ in 0..columns {
        let column = if r.read_bit("a column's mode")? {
            let scale = r.read(SCALE_BITS, "a column's mode")? as usize;
            decode_decimal(&mut r, records, scale)?
        } else {
            decode_xor(&mut r, records)?
        };
        out.push(column);
    }
    r.expect_end()?;
    Ok((ts, out))
}

/// Delta-of-delta buckets for timestamps, after the paper but widened so any `i64` fits: the
/// payload widths in bits, smallest first.
const DOD_WIDTHS: Buckets = [0, 7, 9, 12, 32, 64];

fn encode_timestamps(w: &mut BitWriter, ts: &[i64]) {
    let Some((&first, rest)) = ts.split_first() else {
        return;
    };
    w.write(first as u64, 64);
    let (mut prev, mut prev_delta) = (first, 0_i64);
    for &t in rest {
        let delta = t.wrapping_sub(prev);
        write_bucketed(w, delta.wrapping_sub(prev_delta), &DOD_WIDTHS);
        prev = t;
        prev_delta = delta;
    }
}

fn decode_timestamps(r: &mut BitReader<'_>, records: usize) -> Result<Vec<i64>, CodecError> {
    let mut out = Vec::with_capacity(records);
    if records == 0 {
        return Ok(out);
    }
    const WHAT: &str = "a timestamp";
    let first = r.read(64, WHAT)? as i64;
    out.push(first);
    let (mut prev, mut prev_delta) = (first, 0_i64);
    for _ in 1..records {
        let delta = prev_delta.wrapping_add(read_bucketed(r, &DOD_WIDTHS, WHAT)?);
        let t = prev.wrapping_add(delta);
        out.push(t);
        prev = t;
        prev_delta = delta;
    }
    Ok(out)
}

/// Payload widths of a bucketed signed integer, smallest first. Bucket `k` is written as `k` one
/// bits, a terminating zero (except for the last bucket), then the number in `widths[k]` bits of
/// two's complement. The last width is 64, so every `i64` has a bucket.
type Buckets = [u32; 6];

fn write_bucketed(w: &mut BitWriter, v: i64, widths: &Buckets) {
    let last = widths.len() - 1;
    let bucket = widths
        .iter()
        .position(|&width| fits_signed(v, width))
        .unwrap_or(last);
    let ones = (1_u64 << bucket) - 1;
    if bucket == last {
        w.write(ones, bucket as u32);
    } else {
        w.write(ones << 1, bucket as u32 + 1);
    }
    w.write(v as u64, widths[bucket]);
}

fn read_bucketed(
    r: &mut BitReader<'_>,
    widths: &Buckets,
    what: &'static str,
) -> Result<i64, CodecError> {
    let mut bucket = 0;
    while bucket < widths.len() - 1 && r.read_bit(what)? {
        bucket += 1;
    }
    let width = widths[bucket];
    Ok(sign_extend(r.read(width, what)?, width))
}

/// A decimal column holds `v = n / 10^s` for integers `n` of at most 53 bits (so `n as f64` is
/// exact) and a scale `s` below `2^SCALE_BITS`.
const SCALE_BITS: u32 = 3;
const POW10: [f64; 1 << SCALE_BITS] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7];

/// Bucket widths for the change between consecutive scaled integers: a count moving by one or
/// two, by a few dozen, a speed by a few m/s at two decimals, an occupancy swinging from 0 to
/// 100.00 %, and anything else.
const STEP_WIDTHS: Buckets = [0, 2, 6, 11, 16, 64];

/// The scaled integer whose decoding gives back `v` bit for bit, if there is one.
fn scaled(v: f64, scale: usize) -> Option<i64> {
    const EXACT_MAX: f64 = (1_u64 << 53) as f64;
    let n = (v * POW10[scale]).round();
    if n.is_nan() || n.abs() > EXACT_MAX {
        return None;
    }
    let n = n as i64;
    (unscaled(n, scale).to_bits() == v.to_bits()).then_some(n)
}

fn unscaled(n: i64, scale: usize) -> f64 {
    n as f64 / POW10[scale]
}

/// The column as scaled integers with the smallest scale that holds every value, or `None` if
/// no scale does (NaN, infinities, `-0.0`, or too many digits).
fn encode_decimal(values: &[f64]) -> Option<BitWriter> {
    let mut scale = 0;
    let mut ints = Vec::with_capacity(values.len());
    for &v in values {
        let n = loop {
            match scaled(v, scale) {
                Some(n) => break n,
                None if scale + 1 < POW10.len() => scale += 1,
                None => return None,
            }
        };
        ints.push(n);
    }
    // A value that fit an earlier, smaller scale need not fit the final one exactly.
    if scale > 0 {
        for (n, &v) in ints.iter_mut().zip(values) {
            *n = scaled(v, scale)?;
        }
    }
    let mut w = BitWriter::with_capacity(values.len());
    w.write(1, 1);
    w.write(scale as u64, SCALE_BITS);
    let mut prev = 0_i64;
    for n in ints {
        write_bucketed(&mut w, n.wrapping_sub(prev), &STEP_WIDTHS);
        prev = n;
    }
    Some(w)
}

fn decode_decimal(
    r: &mut BitReader<'_>,
    records: usize,
    scale: usize,
) -> Result<Vec<f64>, CodecError> {
    let mut out = Vec::with_capacity(records);
    let mut n = 0_i64;
    for _ in 0..records {
        n = n.wrapping_add(read_bucketed(r, &STEP_WIDTHS, "a value")?);
        out.push(unscaled(n, scale));
    }
    Ok(out)
}

/// Leading zeros are stored in 5 bits, so a window starts at most 31 bits in.
const LEADING_MAX: u32 = 31;

fn encode_xor(w: &mut BitWriter, values: &[f64]) {
    let Some((&first, rest)) = values.split_first() else {
        return;
    };
    let mut prev = first.to_bits();
    w.write(prev, 64);
    // The current window as (leading zeros, meaningful bits); none until the first change.
    let mut window: Option<(u32, u32)> = None;
    for v in rest {
        let bits = v.to_bits();
        let xor = bits ^ prev;
        prev = bits;
        if xor == 0 {
            w.write(0, 1);
            continue;
        }
        let leading = xor.leading_zeros().min(LEADING_MAX);
        let trailing = xor.trailing_zeros();
        match window {
            Some((l, len)) if leading >= l && trailing >= 64 - l - len => {
                w.write(0b10, 2);
                w.write(xor >> (64 - l - len), len);
            }
            _ => {
                let len = 64 - leading - trailing;
                w.write(0b11, 2);
                w.write(u64::from(leading), 5);
                // 64 meaningful bits are written as 0: a window is never empty.
                w.write(u64::from(len % 64), 6);
                w.write(xor >> trailing, len);
                window = Some((leading, len));
            }
        }
    }
}

fn decode_xor(r: &mut BitReader<'_>, records: usize) -> Result<Vec<f64>, CodecError> {
    let mut out = Vec::with_capacity(records);
    if records == 0 {
        return Ok(out);
    }
    const WHAT: &str = "a value";
    let mut prev = r.read(64, WHAT)?;
    out.push(f64::from_bits(prev));
    let mut window: Option<(u32, u32)> = None;
    for _ in 1..records {
        if r.read_bit(WHAT)? {
            let (leading, len) = match (r.read_bit(WHAT)?, window) {
                (false, Some(w)) => w,
                // A reuse with no window yet: only damaged bytes do that.
                (false, None) => return Err(CodecError::Window { leading: 0, len: 0 }),
                (true, _) => {
                    let leading = r.read(5, WHAT)? as u32;
                    let len = match r.read(6, WHAT)? as u32 {
                        0 => 64,
                        n => n,
                    };
                    if leading + len > 64 {
                        return Err(CodecError::Window { leading, len });
                    }
                    window = Some((leading, len));
                    (leading, len)
                }
            };
            prev ^= r.read(len, WHAT)? << (64 - leading - len);
        }
        out.push(f64::from_bits(prev));
    }
    Ok(out)
}

/// Whether `v` is representable in `width` bits of two's complement (`width` 0 holds only 0).
fn fits_signed(v: i64, width: u32) -> bool {
    match width {
        0 => v == 0,
        64.. => true,
        w => {
            let shift = 64 - w;
            (v << shift) >> shift == v
        }
    }
}

/// The `width`-bit two's complement number in the low bits of `raw`.
fn sign_extend(raw: u64, width: u32) -> i64 {
    match width {
        0 => 0,
        64.. => raw as i64,
        w => {
            let shift = 64 - w;
            ((raw << shift) as i64) >> shift
        }
    }
}

/// Appends bits MSB-first to a byte vector, 64 at a time.
struct BitWriter {
    out: Vec<u8>,
    /// Pending bits, left-aligned.
    acc: u64,
    /// How many bits of `acc` are used (always below 64 between calls).
    used: u32,
}

impl BitWriter {
    fn with_capacity(bytes: usize) -> Self {
        Self {
            out: Vec::with_capacity(bytes),
            acc: 0,
            used: 0,
        }
    }

    /// Writes the low `n` bits of `value` (`n` ≤ 64).
    fn write(&mut self, value: u64, n: u32) {
        if n == 0 {
            return;
        }
        let value = if n == 64 {
            value
        } else {
            value & ((1 << n) - 1)
        };
        let free = 64 - self.used;
        if n < free {
            self.acc |= value << (free - n);
            self.used += n;
        } else {
            // Fill the accumulator, flush it, and keep what did not fit.
            let spill = n - free;
            self.acc |= value >> spill;
            self.out.extend_from_slice(&self.acc.to_be_bytes());
            self.acc = if spill == 0 { 0 } else { value << (64 - spill) };
            self.used = spill;
        }
    }

    /// Bits written so far.
    fn bits(&self) -> usize {
        self.out.len() * 8 + self.used as usize
    }

    /// Writes every bit `other` holds.
    fn append(&mut self, other: &BitWriter) {
        for chunk in other.out.chunks_exact(8) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.write(u64::from_be_bytes(word), 64);
        }
        if other.used > 0 {
            self.write(other.acc >> (64 - other.used), other.used);
        }
    }

    /// The bytes, the last one zero-padded.
    fn finish(mut self) -> Vec<u8> {
        let bytes = self.used.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_be_bytes()[..bytes]);
        self.out
    }
}

/// Reads bits MSB-first, failing instead of running past the end.
struct BitReader<'a> {
    buf: &'a [u8],
    /// Next bit to read, counted from the start of `buf`.
    pos: usize,
    /// The whole block's length, for error messages.
    block_bytes: usize,
}

impl<'a> BitReader<'a> {
    fn new(buf: &'a [u8], block_bytes: usize) -> Self {
        Self {
            buf,
            pos: 0,
            block_bytes,
        }
    }

    fn read_bit(&mut self, what: &'static str) -> Result<bool, CodecError> {
        Ok(self.read(1, what)? == 1)
    }

    /// Reads `n` bits (`n` ≤ 64) as the low bits of the result.
    fn read(&mut self, n: u32, what: &'static str) -> Result<u64, CodecError> {
        let mut out = 0_u64;
        let mut left = n;
        while left > 0 {
            let byte = *self.buf.get(self.pos / 8).ok_or(CodecError::Truncated {
                bytes: self.block_bytes,
                what,
            })?;
            let offset = (self.pos % 8) as u32;
            let avail = 8 - offset;
            let take = avail.min(left);
            let bits = (u64::from(byte) >> (avail - take)) & ((1 << take) - 1);
            out = (out << take) | bits;
            left -= take;
            self.pos += take as usize;
        }
        Ok(out)
    }

    /// Checks that only zero padding up to the next byte boundary is left.
    fn expect_end(&self) -> Result<(), CodecError> {
        let left = self.buf.len() * 8 - self.pos;
        let padding_is_zero = match self.buf.get(self.pos / 8) {
            Some(&last) if left < 8 => last & ((1_u16 << left) - 1) as u8 == 0,
            _ => left == 0,
        };
        if padding_is_zero {
            Ok(())
        } else {
            Err(CodecError::Trailing { bits: left })
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::series;

    fn assert_round_trip(ts: &[i64], columns: &[Vec<f64>]) {
        let bytes = encode(ts, columns);
        let (ts2, columns2) = decode(&bytes).expect("a block we wrote decodes");
        assert_eq!(ts2, ts);
        assert_eq!(columns2.len(), columns.len());
        for (a, b) in columns.iter().zip(&columns2) {
            let a: Vec<u64> = a.iter().map(|v| v.to_bits()).collect();
            let b: Vec<u64> = b.iter().map(|v| v.to_bits()).collect();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn empty_and_single_record_blocks_round_trip() {
        assert_round_trip(&[], &[]);
        assert_round_trip(&[], &[vec![], vec![]]);
        assert_round_trip(&[7], &[]);
        assert_round_trip(&[i64::MIN], &[vec![f64::NAN], vec![-0.0]]);
    }

    #[test]
    fn extreme_timestamps_and_special_floats_round_trip() {
        let ts = [0, i64::MAX, i64::MIN, i64::MAX, -1, 1, 1, 0, i64::MIN + 1];
        let specials = [
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001), // a signalling NaN with a payload
            f64::from_bits(0xfff8_dead_beef_0001), // a negative quiet NaN with a payload
            -0.0,
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE / 2.0, // subnormal
            f64::MAX,
        ];
        assert_round_trip(
            &ts,
            &[specials.to_vec(), specials.iter().rev().copied().collect()],
        );
    }

    #[test]
    fn decimal_columns_round_trip_and_fall_back_to_xor_when_not_exact() {
        let ts = [1, 2, 3, 4, 5];
        assert_round_trip(&ts, &[vec![12.81, 0.0, -1.0, 100.0, 7.5]]);
        // -0.0, NaN and a value with too many digits are not decimal: the column uses XOR.
        assert_round_trip(&ts, &[vec![1.5, -0.0, 2.25, 2.25, 2.5]]);
        assert_round_trip(&ts, &[vec![1.5, f64::NAN, 2.25, 2.25, 2.5]]);
        assert_round_trip(&ts, &[vec![0.1, 0.2, 0.30000000000000004, 1e300, 9e15]]);
        // Two decimals cost less than XOR would.
        let decimal = encode(&ts, &[vec![12.81, 13.02, 12.99, 13.5, 12.7]]);
        let xor_only = {
            let mut w = BitWriter::with_capacity(64);
            encode_xor(&mut w, &[12.81, 13.02, 12.99, 13.5, 12.7]);
            w.bits()
        };
        assert!(decimal.len() * 8 < HEADER_BYTES * 8 + 64 + 4 * 3 + 1 + xor_only);
    }

    #[test]
    fn a_regular_series_costs_about_a_bit_per_repeat() {
        let ts: Vec<i64> = (0..1024).map(|i| 1_700_000_000_000 + i * 1000).collect();
        let bytes = encode(&ts, &[vec![3.0; 1024]]);
        // Timestamps: the first raw (64 bits), the first delta (a change of 1000 from 0, in 16
        // bits), then a bit each. Values: a decimal column (4 bits of mode), 3 in 8 bits, then a
        // bit each.
        let bits = 64 + 16 + 1022 + 4 + 8 + 1023_usize;
        assert_eq!(bytes.len(), HEADER_BYTES + bits.div_ceil(8));
    }

    #[test]
    fn damaged_blocks_are_errors() {
        let ts: Vec<i64> = (0..100).map(|i| i * 1000 + (i % 3)).collect();
        let values: Vec<f64> = (0..100).map(|i| f64::from(i) * 0.37).collect();
        let bytes = encode(&ts, &[values]);
        assert_eq!(
            decode(&[]),
            Err(CodecError::Truncated {
                bytes: 0,
                what: "the header"
            })
        );
        assert_eq!(decode(&[9]), Err(CodecError::Version { found: 9 }));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(CodecError::Truncated { .. } | CodecError::Implausible { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(CodecError::Trailing { bits: 8.. })
        ));
        let mut huge = bytes;
        huge[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(CodecError::Implausible { .. })));
    }

    #[test]
    fn realistic_series_compress_below_two_bytes_per_value() {
        let records = 1024 * 64;
        let lane = series::intersection_lane(records, 42);
        // Count, occupancy and speed: what an induction loop reports.
        let (ts, columns) = series::to_columns(&lane, 3);
        let mut bytes = 0;
        for start in (0..records).step_by(1024) {
            let end = start + 1024;
            let block: Vec<Vec<f64>> = columns.iter().map(|c| c[start..end].to_vec()).collect();
            let encoded = encode(&ts[start..end], &block);
            assert_round_trip(&ts[start..end], &block);
            bytes += encoded.len();
        }
        let per_value = bytes as f64 / (records * columns.len()) as f64;
        println!(
            "gorilla: {records} induction-loop records x {} columns in blocks of 1024: \
             {bytes} bytes, {per_value:.3} bytes/value (timestamps included in the bytes)",
            columns.len()
        );
        assert!(per_value < 2.0, "{per_value:.3} bytes/value");
    }

    /// A timestamp strategy mixing regular, jittered and arbitrary series.
    fn timestamps(len: usize) -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            proptest::collection::vec(any::<i64>(), len),
            (
                any::<i64>(),
                0_i64..5000,
                proptest::collection::vec(-3_i64..3, len)
            )
                .prop_map(|(start, step, jitter)| {
                    let mut t = start;
                    jitter
                        .into_iter()
                        .map(|j| {
                            t = t.wrapping_add(step + j);
                            t
                        })
                        .collect()
                }),
        ]
    }

    /// A value strategy mixing arbitrary bit patterns, special values and runs of repeats.
    fn values(len: usize) -> impl Strategy<Value = Vec<f64>> {
        let value = prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            Just(f64::NAN),
            Just(-0.0),
            Just(0.0),
            Just(f64::INFINITY),
            (0_u32..20).prop_map(f64::from),
            (0_i32..10_000).prop_map(|v| f64::from(v) / 100.0),
        ];
        proptest::collection::vec((value, 1_usize..6), len).prop_map(move |runs| {
            runs.into_iter()
                .flat_map(|(v, n)| std::iter::repeat_n(v, n))
                .take(len)
                .collect::<Vec<_>>()
        })
    }

    fn series_strategy() -> impl Strategy<Value = (Vec<i64>, Vec<Vec<f64>>)> {
        (0_usize..300, 0_usize..5).prop_flat_map(|(len, cols)| {
            (
                timestamps(len),
                proptest::collection::vec(values(len), cols),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_series_round_trips_bit_for_bit((ts, columns) in series_strategy()) {
            assert_round_trip(&ts, &columns);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn damaged_blocks_never_panic(
            (ts, columns) in series_strategy(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0_u8..8), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode(&ts, &columns);
            for (at, bit) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            let _ = decode(&bytes);
            let _ = decode(&bytes[..cut.index(bytes.len() + 1)]);
        }
    }
}
