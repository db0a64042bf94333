//! The bytes [`SledStore`](super::SledStore) keeps in sled: keys, stream metadata and block
//! framing. Everything read back is checked; a mismatch is a message for the caller to wrap in a
//! [`StoreError`](crate::StoreError), never a panic.

use std::ops::Range;

use verge_proto::{NodeId, Record, StreamId};

use crate::{COLUMNS_MAX, HEAD_MAX, gorilla};

/// Key in sled's default tree that marks a directory as a Verge store, and its value: the
/// layout version of the trees below.
pub(super) const FORMAT_KEY: &[u8] = b"verge-store-format";
pub(super) const FORMAT_VERSION: &[u8] = b"1";

/// Key in sled's default tree of the node's epoch counter: [`encode_epoch`]. Missing until the
/// first [`Store::bump_epoch`](crate::Store::bump_epoch), which makes it 1.
pub(super) const EPOCH_KEY: &[u8] = b"verge-node-epoch";

/// Tree of blocks: stream key ++ first sequence number (`u64` BE) → [`encode_block`].
pub(super) const BLOCKS_TREE: &str = "blocks";
/// Tree of stream metadata: stream key → [`Meta::encode`].
pub(super) const STREAMS_TREE: &str = "streams";
/// Tree of stream holders: stream key → [`encode_holders`]. A stream with no holders has no
/// entry.
pub(super) const HOLDERS_TREE: &str = "holders";

/// The epoch counter's value: a `u64`, LE.
pub(super) fn encode_epoch(epoch: u64) -> [u8; 8] {
    epoch.to_le_bytes()
}

pub(super) fn decode_epoch(bytes: &[u8]) -> Result<u64, String> {
    let word: [u8; 8] = bytes
        .try_into()
        .map_err(|_| format!("the epoch is {} bytes, not 8", bytes.len()))?;
    let epoch = u64::from_le_bytes(word);
    // Like a head, an epoch anywhere near `u64::MAX` is damage, not 2^63 restarts.
    if epoch > u64::MAX / 2 {
        return Err(format!("the epoch {epoch} is implausible"));
    }
    Ok(epoch)
}

const HOLDERS_VERSION: u8 = 1;

/// A stream's holders: a layout version byte, then the node ids separated by `,` (which no node
/// id holds).
pub(super) fn encode_holders(holders: &[NodeId]) -> Vec<u8> {
    let mut out = vec![HOLDERS_VERSION];
    for (i, id) in holders.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(id.as_str().as_bytes());
    }
    out
}

pub(super) fn decode_holders(bytes: &[u8]) -> Result<Vec<NodeId>, String> {
    let (&version, ids) = bytes
        .split_first()
        .ok_or_else(|| "the holders entry is empty".to_owned())?;
    if version != HOLDERS_VERSION {
        return Err(format!("holders layout {version} is not {HOLDERS_VERSION}"));
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let text = std::str::from_utf8(ids).map_err(|_| "the holders are not text".to_owned())?;
    text.split(',')
        .map(|id| id.parse().map_err(|e| format!("holder {id:?}: {e}")))
        .collect()
}

/// A stream's key: its id as text, then a NUL. Ids hold no NUL, so no stream's key is a prefix of
/// another's, and a stream's blocks sort together by sequence number.
pub(super) fn stream_key(id: &StreamId) -> Vec<u8> {
    let mut key = id.to_string().into_bytes();
    key.push(0);
    key
}

pub(super) fn parse_stream_key(key: &[u8]) -> Result<StreamId, String> {
    let text = key
        .strip_suffix(&[0])
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or_else(|| format!("key {:?} is not a stream id", String::from_utf8_lossy(key)))?;
    text.parse().map_err(|e| format!("key {text:?}: {e}"))
}

pub(super) fn block_key(stream_key: &[u8], first_seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream_key.len() + 8);
    key.extend_from_slice(stream_key);
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

/// The first sequence number of a block key, if the key is one of this stream's.
pub(super) fn block_seq(stream_key: &[u8], key: &[u8]) -> Option<u64> {
    let seq = key.strip_prefix(stream_key)?;
    Some(u64::from_be_bytes(seq.try_into().ok()?))
}

/// What the store keeps about a stream besides its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meta {
    /// Values per record; `None` after a reset until the next record fixes it (and then nothing
    /// is retained).
    pub columns: Option<usize>,
    /// First retained sequence number; `head + 1` when nothing is retained.
    pub first_seq: u64,
    /// Highest sequence number in a block.
    pub head: u64,
    /// Bytes of the stream's block keys and values.
    pub bytes: u64,
    /// Event time of record `first_seq`, if it is retained: how old the stream's oldest record
    /// is, for the quota, without reading a block.
    pub front_ts_ms: Option<i64>,
}

/// Layout version, columns (`u16`, [`COLUMNS_UNSET`] for `None`), first seq, head, bytes, front
/// flag (`u8`), front ts: all LE.
const META_BYTES: usize = 1 + 2 + 8 + 8 + 8 + 1 + 8;
const META_VERSION: u8 = 1;
/// The columns of a stream a reset emptied, not yet fixed again. Builds that predate reset refuse
/// it as inconsistent metadata rather than misread it.
const COLUMNS_UNSET: u16 = u16::MAX;

impl Meta {
    pub(super) fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0; META_BYTES];
        out[0] = META_VERSION;
        // `columns` is at most COLUMNS_MAX, checked on append.
        let columns = self.columns.map_or(COLUMNS_UNSET, |c| c as u16);
        out[1..3].copy_from_slice(&columns.to_le_bytes());
        out[3..11].copy_from_slice(&self.first_seq.to_le_bytes());
        out[11..19].copy_from_slice(&self.head.to_le_bytes());
        out[19..27].copy_from_slice(&self.bytes.to_le_bytes());
        out[27] = u8::from(self.front_ts_ms.is_some());
        out[28..36].copy_from_slice(&self.front_ts_ms.unwrap_or(0).to_le_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let b: &[u8; META_BYTES] = bytes
            .try_into()
            .map_err(|_| format!("metadata is {} bytes, not {META_BYTES}", bytes.len()))?;
        if b[0] != META_VERSION {
            return Err(format!("metadata layout {} is not {META_VERSION}", b[0]));
        }
        let u64_at = |at: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let meta = Meta {
            columns: match u16::from_le_bytes([b[1], b[2]]) {
                COLUMNS_UNSET => None,
                c => Some(usize::from(c)),
            },
            first_seq: u64_at(3),
            head: u64_at(11),
            bytes: u64_at(19),
            front_ts_ms: match b[27] {
                0 => None,
                1 => Some(u64_at(28) as i64),
                other => return Err(format!("metadata front flag is {other}")),
            },
        };
        let retained = meta.first_seq <= meta.head;
        // A head anywhere near `u64::MAX` is damage, not 2^63 appends.
        if meta.columns.unwrap_or(0) > COLUMNS_MAX
            || (retained && meta.columns.is_none())
            || meta.head > HEAD_MAX
            || meta.first_seq == 0
            || meta.first_seq > meta.head.saturating_add(1)
            || retained != meta.front_ts_ms.is_some()
        {
            return Err(format!("metadata is inconsistent: {meta:?}"));
        }
        Ok(meta)
    }
}

/// Records in columns, as a block holds them and as appends wait for a flush.
#[derive(Debug, Clone)]
pub(super) struct Series {
    pub ts: Vec<i64>,
    pub columns: Vec<Vec<f64>>,
}

impl Series {
    pub(super) fn new(columns: usize) -> Self {
        Self {
            ts: Vec::new(),
            columns: vec![Vec::new(); columns],
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ts.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Appends a record; its width was checked on append.
    pub(super) fn push(&mut self, record: &Record) {
        self.ts.push(record.ts_ms);
        for (column, &v) in self.columns.iter_mut().zip(&record.values) {
            column.push(v);
        }
    }

    pub(super) fn extend(&mut self, other: &Series) {
        self.ts.extend_from_slice(&other.ts);
        for (column, more) in self.columns.iter_mut().zip(&other.columns) {
            column.extend_from_slice(more);
        }
    }

    pub(super) fn record(&self, i: usize) -> Record {
        Record {
            ts_ms: self.ts[i],
            values: self.columns.iter().map(|c| c[i]).collect(),
        }
    }

    /// A block value holding `range` of the records: a CRC-32 (LE) of the codec's bytes, then
    /// those bytes. The codec rejects most damage on its own; the checksum catches the rest
    /// (a flipped bit in a value still decodes).
    pub(super) fn encode_block(&self, range: Range<usize>) -> Vec<u8> {
        let columns: Vec<Vec<f64>> = self
            .columns
            .iter()
            .map(|c| c[range.clone()].to_vec())
            .collect();
        let body = gorilla::encode(&self.ts[range], &columns);
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads a block value, checking its checksum and that it has `columns` columns.
    pub(super) fn decode_block(bytes: &[u8], columns: usize) -> Result<Self, String> {
        let (crc, body) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("block is {} bytes, shorter than its checksum", bytes.len()))?;
        if u32::from_le_bytes(*crc) != crc32fast::hash(body) {
            return Err("block checksum does not match".to_owned());
        }
        let (ts, found) = gorilla::decode(body).map_err(|e| e.to_string())?;
        if found.len() != columns {
            return Err(format!(
                "block has {} columns, the stream {columns}",
                found.len()
            ));
        }
        if ts.is_empty() {
            return Err("block is empty".to_owned());
        }
        Ok(Self { ts, columns: found })
    }

    /// The records from `at` on, leaving the first `at` here.
    pub(super) fn split_off(&mut self, at: usize) -> Series {
        Series {
            ts: self.ts.split_off(at),
            columns: self.columns.iter_mut().map(|c| c.split_off(at)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_round_trip_and_never_prefix_each_other() {
        let a: StreamId = "b1/raw/s".parse().expect("valid");
        let b: StreamId = "b1/raw/s2".parse().expect("valid");
        assert_eq!(parse_stream_key(&stream_key(&a)).ok(), Some(a.clone()));
        assert!(!stream_key(&b).starts_with(&stream_key(&a)));
        let key = block_key(&stream_key(&a), 42);
        assert_eq!(block_seq(&stream_key(&a), &key), Some(42));
        assert_eq!(block_seq(&stream_key(&b), &key), None);
        assert!(parse_stream_key(b"b1/raw/s").is_err());
        assert!(parse_stream_key(b"\xff\0").is_err());
    }

    #[test]
    fn metadata_round_trips_and_damage_is_refused() {
        let meta = Meta {
            columns: Some(4),
            first_seq: 3,
            head: 9,
            bytes: 1234,
            front_ts_ms: Some(-5),
        };
        let bytes = meta.encode();
        assert_eq!(Meta::decode(&bytes), Ok(meta));
        assert!(Meta::decode(&bytes[1..]).is_err());
        let mut bad = bytes;
        bad[27] = 0; // says nothing retained while first_seq <= head
        assert!(Meta::decode(&bad).is_err());

        let reset = Meta {
            columns: None,
            first_seq: 10,
            head: 9,
            bytes: 0,
            front_ts_ms: None,
        };
        assert_eq!(Meta::decode(&reset.encode()), Ok(reset));
        let mut bad = bytes;
        bad[1..3].copy_from_slice(&COLUMNS_UNSET.to_le_bytes()); // records, but no columns
        assert!(Meta::decode(&bad).is_err());
    }

    #[test]
    fn holders_and_epoch_round_trip_and_damage_is_refused() {
        let ids: Vec<NodeId> = ["b1", "main-st-3"]
            .iter()
            .map(|s| s.parse().expect("valid"))
            .collect();
        assert_eq!(decode_holders(&encode_holders(&ids)), Ok(ids));
        assert_eq!(decode_holders(&encode_holders(&[])), Ok(Vec::new()));
        assert!(decode_holders(b"").is_err());
        assert!(decode_holders(b"\x02b1").is_err());
        assert!(decode_holders(b"\x01b1,,b2").is_err());
        assert!(decode_holders(b"\x01B1").is_err());
        assert_eq!(decode_epoch(&encode_epoch(7)), Ok(7));
        assert!(decode_epoch(&[1, 2, 3]).is_err());
        assert!(decode_epoch(&u64::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn blocks_round_trip_and_a_flipped_bit_is_caught() {
        let mut series = Series::new(2);
        for i in 0..10 {
            series.push(&Record {
                ts_ms: i,
                values: vec![i as f64, 0.5],
            });
        }
        let block = series.encode_block(2..7);
        let back = Series::decode_block(&block, 2).expect("decodes");
        assert_eq!(back.ts, vec![2, 3, 4, 5, 6]);
        assert!(Series::decode_block(&block, 3).is_err());
        let mut flipped = block;
        let last = flipped.len() - 1;
        flipped[last] ^= 0x10;
        assert!(Series::decode_block(&flipped, 2).is_err());
    }
}
