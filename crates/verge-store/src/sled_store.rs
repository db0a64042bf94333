//! [`SledStore`]: streams kept in sled under the node's data dir, in blocks compressed with the
//! [`gorilla`](crate::gorilla) codec.
//!
//! **Layout.** One sled database in the store's directory, with a format marker and the node's
//! epoch counter in sled's default tree, a `streams` tree of per-stream metadata (columns, first
//! retained sequence number, head, bytes), a `blocks` tree of blocks keyed by (stream, first
//! sequence number) and a `holders` tree of each stream's holders; the private `format` module
//! has the bytes. A stream's blocks are contiguous: each starts where the
//! previous one ends, from the first retained sequence number to the head.
//!
//! **Writes.** An append only copies records into the stream's pending buffer in memory. A flush
//! seals each stream's pending records into a block and commits every stream's new blocks and
//! metadata in one sled transaction, then syncs sled to disk once: a group commit with no
//! per-record sled insert. Flushes of a few records per stream leave small blocks that compress
//! poorly, so once every [`TAIL_BLOCKS_MAX`] flushes, on the stream's own turn, a flush merges the
//! stream's run of trailing small blocks and its new records into full blocks of up to
//! [`BLOCK_RECORDS_MAX`] records instead (compaction), in the same transaction. Streams take
//! turns so that a flush compacts about one stream in [`TAIL_BLOCKS_MAX`]: merging every stream's
//! run in the same flush made that flush, and every producer it acknowledges, wait 5–15 times as
//! long as the others. A run never grows past [`TAIL_BLOCKS_MAX`] blocks.
//!
//! **Durability.** sled 0.34.7's `flush` is not an fsync on Linux: it ends with
//! `sync_file_range`, which persists neither the growth of the log file nor the drive's write
//! cache, and it writes pages too big for the log to blob files it never syncs. That survives a
//! killed process but not a power cut, so a flush here also fsyncs the log file and any new blob
//! files itself.
//!
//! Holders, the epoch and resets are written to sled and synced the same way at once. That makes
//! no appended record durable early: appends wait in memory, not in sled, until a flush.
//!
//! **Damage.** sled 0.34 has reports of corruption after unclean shutdown. Every block carries a
//! checksum and is decoded defensively; a damaged block is a [`StoreError::Corrupt`] for reads
//! that touch it, never a panic. Opening checks the metadata and each stream's first and last
//! blocks, and refuses a damaged store, a directory of other files, or a path it cannot use with
//! a [`StoreError::Open`] naming the path.
//!
//! It does not decide when to flush or enforce retention (the node's StoreActor does), and it
//! does not bound sled's own disk use beyond its quota on block bytes.

mod format;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::{fmt, fs, io, panic};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionResult, TransactionError};
use verge_proto::{NodeId, Record, StreamId};

use self::format::{Meta, Series, block_key, block_seq, stream_key};
use crate::plan::{self, Front};
use crate::{
    AppendOutcome, DropReason, RetentionPolicy, RetentionReport, Store, StoreError, StreamInfo,
};

/// The most records one block holds; compaction merges small blocks up to this.
pub const BLOCK_RECORDS_MAX: usize = 1024;

/// The most small blocks a stream keeps at its end after a flush; also how many flushes apart a
/// stream's turns to compact come.
pub const TAIL_BLOCKS_MAX: usize = 16;

/// Memory sled may use for its page cache. sled's default (1 GiB) is too much for a roadside
/// cabinet; the working set is the recent blocks of each stream.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// A [`Store`] in sled on disk.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    blocks: sled::Tree,
    meta: sled::Tree,
    holders_tree: sled::Tree,
    streams: Mutex<BTreeMap<StreamId, DiskStream>>,
    /// As written to sled. Changed only while holding `streams`, so that the sync comes after.
    holders: Mutex<BTreeMap<StreamId, Vec<NodeId>>>,
    /// The epoch last written to sled. Taken only while holding `streams`.
    epoch: Mutex<u64>,
    /// Taken by a flush after it released `streams`, and by holders, the epoch and resets while
    /// holding `streams`; never the other way round.
    fsync: Mutex<Fsync>,
    /// Flushes that sealed records, which say whose turn to compact it is. Changed only while
    /// holding `streams`.
    flushes: AtomicU64,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A stream as the store tracks it in memory.
#[derive(Debug)]
struct DiskStream {
    key: Vec<u8>,
    /// As committed to sled, except that an append fixes `meta.columns` of a new or reset stream
    /// before a flush commits it; `meta.head` is the highest sequence number in a block.
    meta: Meta,
    /// Highest sequence number synced to disk. Below `meta.head` while a flush syncs outside
    /// the lock, and after a failed sync.
    durable: u64,
    /// Bumped by [`Store::reset`], so that a flush that sealed before the reset does not raise
    /// the restarted stream's durable head to a head it had before.
    incarnation: u64,
    /// The run of small blocks at the end of the stream, oldest first, that the next compaction
    /// merges.
    tail: Vec<BlockRef>,
    /// Appended records not yet in a block: sequence numbers `meta.head + 1 ..`.
    pending: Series,
}

impl DiskStream {
    /// Values per record; 0 while a reset stream has none, so that any block found is a
    /// mismatch.
    fn columns(&self) -> usize {
        self.meta.columns.unwrap_or(0)
    }

    fn head(&self) -> u64 {
        self.meta.head + self.pending.len() as u64
    }

    /// The event time of the oldest record retention may drop, if there is one.
    fn droppable_front(&self) -> Option<i64> {
        self.meta
            .front_ts_ms
            .filter(|_| self.meta.first_seq <= self.durable)
    }
}

/// Completes sled's flush into an fsync (see the module docs): fsync works per file, from any
/// descriptor, so the store keeps its own.
#[derive(Debug)]
struct Fsync {
    /// sled's log file.
    log: File,
    /// sled's directory of blob files, one per page too big for the log.
    blobs: PathBuf,
    /// Blob files already synced; sled never rewrites one, only deletes it.
    synced: BTreeSet<OsString>,
}

impl Fsync {
    fn open(dir: &Path) -> io::Result<Self> {
        Ok(Self {
            log: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced: BTreeSet::new(),
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        self.log.sync_all()?;
        let entries = match fs::read_dir(&self.blobs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            entries => entries?,
        };
        let mut present = BTreeSet::new();
        let mut synced_new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // sled collected it in the meantime.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                synced_new = true;
            }
            present.insert(name);
        }
        if synced_new {
            File::open(&self.blobs)?.sync_all()?;
        }
        self.synced = present;
        Ok(())
    }
}

/// A block the store knows about without reading it.
#[derive(Debug, Clone, Copy)]
struct BlockRef {
    first_seq: u64,
    records: usize,
    /// Key and value bytes.
    bytes: u64,
}

/// A stream's metadata and tail after a flush, applied once the transaction commits.
struct Sealed {
    meta: Meta,
    tail: Vec<BlockRef>,
}

impl SledStore {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty.
    ///
    /// `dir` is the store's own directory (for instance `<data_dir>/store`): a non-empty
    /// directory that is not a Verge store is refused rather than written into.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`], naming `dir` and what was wrong with it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_error = |detail: String| StoreError::Open {
            path: dir.to_owned(),
            detail,
        };
        let fresh = match fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => {
                return Err(open_error(format!(
                    "cannot list it ({e}); it must be a directory this user can read and write"
                )));
            }
        };
        let foreign = || {
            open_error(
                "it holds files but no Verge store, and the store will not write into it; \
                 point it at an empty or new directory"
                    .to_owned(),
            )
        };
        // sled creates its files on open: look before it does.
        if !fresh && !dir.join("db").is_file() {
            return Err(foreign());
        }
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES);
        // sled panics on some damaged files instead of returning an error.
        let db = panic::catch_unwind(panic::AssertUnwindSafe(|| config.open()))
            .map_err(|p| open_error(damaged(panic_text(&*p))))?
            .map_err(|e| open_error(engine_detail(e)))?;
        let engine =
            |what: &str, e: sled::Error| open_error(format!("cannot {what}: {}", engine_detail(e)));
        match db
            .get(format::FORMAT_KEY)
            .map_err(|e| engine("read the format marker", e))?
        {
            Some(v) if v == format::FORMAT_VERSION => {}
            Some(v) => {
                return Err(open_error(format!(
                    "it is a store of layout {:?}, which this build does not read; run the \
                     build that wrote it",
                    String::from_utf8_lossy(&v)
                )));
            }
            None if fresh => {
                db.insert(format::FORMAT_KEY, format::FORMAT_VERSION)
                    .map_err(|e| engine("write the format marker", e))?;
                db.flush().map_err(|e| engine("sync the new store", e))?;
                // The directory's entries for sled's new files.
                File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
                    open_error(format!("cannot sync the new store's directory ({e})"))
                })?;
            }
            None => return Err(foreign()),
        }
        let blocks = db
            .open_tree(format::BLOCKS_TREE)
            .map_err(|e| engine("open the blocks", e))?;
        let meta = db
            .open_tree(format::STREAMS_TREE)
            .map_err(|e| engine("open the stream metadata", e))?;

        let fsync = Fsync::open(dir)
            .map_err(|e| open_error(format!("cannot open sled's log file to sync it ({e})")))?;
        let mut streams = BTreeMap::new();
        for item in meta.iter() {
            let (key, value) = item.map_err(|e| engine("read the stream metadata", e))?;
            let id = format::parse_stream_key(&key)
                .map_err(|d| open_error(damaged(&format!("stream metadata: {d}"))))?;
            let m = Meta::decode(&value)
                .map_err(|d| open_error(damaged(&format!("stream {id}: {d}"))))?;
            let tail = recover_tail(&blocks, &key, &m)
                .map_err(|(seq, d)| open_error(damaged(&format!("stream {id}, seq {seq}: {d}"))))?;
            streams.insert(
                id,
                DiskStream {
                    key: key.to_vec(),
                    meta: m,
                    durable: m.head,
                    incarnation: 0,
                    tail,
                    pending: Series::new(m.columns.unwrap_or(0)),
                },
            );
        }
        let holders_tree = db
            .open_tree(format::HOLDERS_TREE)
            .map_err(|e| engine("open the stream holders", e))?;
        let mut holders = BTreeMap::new();
        for item in holders_tree.iter() {
            let (key, value) = item.map_err(|e| engine("read the stream holders", e))?;
            let id = format::parse_stream_key(&key)
                .map_err(|d| open_error(damaged(&format!("stream holders: {d}"))))?;
            let ids = format::decode_holders(&value)
                .map_err(|d| open_error(damaged(&format!("holders of stream {id}: {d}"))))?;
            holders.insert(id, ids);
        }
        let epoch = db
            .get(format::EPOCH_KEY)
            .map_err(|e| engine("read the node's epoch", e))?
            .map(|v| format::decode_epoch(&v))
            .transpose()
            .map_err(|d| open_error(damaged(&d)))?
            .unwrap_or(0);
        Ok(Self {
            path: dir.to_owned(),
            db,
            blocks,
            meta,
            holders_tree,
            streams: Mutex::new(streams),
            holders: Mutex::new(holders),
            epoch: Mutex::new(epoch),
            fsync: Mutex::new(fsync),
            flushes: AtomicU64::new(0),
        })
    }

    /// Makes everything committed to sled durable. A flush calls it after releasing `streams`;
    /// holders, the epoch and resets while holding it.
    fn sync(&self) -> Result<(), StoreError> {
        let action = "sync to disk";
        self.db.flush().map_err(|e| self.disk(action, e))?;
        self.fsync
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sync()
            .map_err(|e| self.disk(action, e))
    }

    /// Bytes sled's files take on disk, for comparison with [`StreamInfo::bytes`] (sled keeps old
    /// versions of pages until it reclaims them).
    ///
    /// # Errors
    ///
    /// [`StoreError::Disk`] if sled cannot tell.
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        self.db
            .size_on_disk()
            .map_err(|e| self.disk("measure its files", e))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<StreamId, DiskStream>> {
        // Every method checks before it changes a stream and changes memory only after sled
        // committed, so a panic while holding the lock leaves nothing half-done.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn disk(
        &self,
        action: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Disk {
            path: self.path.clone(),
            action,
            source: source.into(),
        }
    }

    /// Maps a sled error while reading `stream`'s block at `seq`: sled's own corruption reports
    /// are damage like any other.
    fn read_error(&self, stream: &StreamId, seq: u64, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Corruption { .. } => StoreError::Corrupt {
                stream: stream.clone(),
                seq,
                detail: e.to_string(),
            },
            e => self.disk("read a block", e),
        }
    }

    /// Reads and checks the block of `stream` starting at `seq`.
    fn load_block(
        &self,
        stream: &StreamId,
        s: &DiskStream,
        seq: u64,
    ) -> Result<(Series, u64), StoreError> {
        let key = block_key(&s.key, seq);
        let corrupt = |detail: String| StoreError::Corrupt {
            stream: stream.clone(),
            seq,
            detail,
        };
        let value = self
            .blocks
            .get(&key)
            .map_err(|e| self.read_error(stream, seq, e))?
            .ok_or_else(|| corrupt("the block is missing".to_owned()))?;
        let series = Series::decode_block(&value, s.columns()).map_err(corrupt)?;
        Ok((series, (key.len() + value.len()) as u64))
    }

    /// Commits block and metadata changes atomically.
    fn commit(
        &self,
        blocks: &sled::Batch,
        meta: &sled::Batch,
        action: &'static str,
    ) -> Result<(), StoreError> {
        (&self.blocks, &self.meta)
            .transaction(|(b, m)| -> ConflictableTransactionResult<(), Infallible> {
                b.apply_batch(blocks)?;
                m.apply_batch(meta)?;
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => self.disk(action, e),
                TransactionError::Abort(never) => match never {},
            })
    }

    /// Plans sealing `s`'s pending records into blocks, merging its run of small blocks with
    /// them if `compact`, and adds the writes to `batch`.
    fn seal(
        &self,
        id: &StreamId,
        s: &DiskStream,
        compact: bool,
        batch: &mut sled::Batch,
    ) -> Sealed {
        let compact = compact && !s.tail.is_empty();
        let mut bytes = s.meta.bytes;
        let merged;
        let (start, series, mut tail) = match compact.then(|| self.read_tail(id, s)) {
            Some(Ok(mut run)) => {
                run.extend(&s.pending);
                merged = run;
                for b in &s.tail {
                    batch.remove(block_key(&s.key, b.first_seq));
                    bytes = bytes.saturating_sub(b.bytes);
                }
                (s.tail[0].first_seq, &merged, Vec::new())
            }
            Some(Err(e)) => {
                // Leave the run as it is rather than fail every flush of the stream on it.
                tracing::warn!(
                    stream = %id,
                    error = %e,
                    "cannot merge the stream's small blocks; leaving them as they are"
                );
                (s.meta.head + 1, &s.pending, Vec::new())
            }
            None => (s.meta.head + 1, &s.pending, s.tail.clone()),
        };
        for at in (0..series.len()).step_by(BLOCK_RECORDS_MAX) {
            let end = (at + BLOCK_RECORDS_MAX).min(series.len());
            let first_seq = start + at as u64;
            let key = block_key(&s.key, first_seq);
            let value = series.encode_block(at..end);
            let block = BlockRef {
                first_seq,
                records: end - at,
                bytes: (key.len() + value.len()) as u64,
            };
            bytes += block.bytes;
            if block.records < BLOCK_RECORDS_MAX {
                tail.push(block);
            }
            batch.insert(key, value);
        }
        Sealed {
            meta: Meta {
                head: s.head(),
                bytes,
                front_ts_ms: s.meta.front_ts_ms.or(s.pending.ts.first().copied()),
                ..s.meta
            },
            tail,
        }
    }

    /// Reads the stream's tail blocks as one series.
    fn read_tail(&self, id: &StreamId, s: &DiskStream) -> Result<Series, StoreError> {
        let mut run = Series::new(s.columns());
        for b in &s.tail {
            let (block, _) = self.load_block(id, s, b.first_seq)?;
            if block.len() != b.records {
                return Err(StoreError::Corrupt {
                    stream: id.clone(),
                    seq: b.first_seq,
                    detail: format!("block holds {} records, not {}", block.len(), b.records),
                });
            }
            run.extend(&block);
        }
        Ok(run)
    }

    /// Drops the leading records of `s`'s first block that `old` says may go (never past the
    /// durable head), and returns how many records and bytes went. Stops at the first block
    /// boundary: callers loop.
    fn drop_front(
        &self,
        id: &StreamId,
        s: &mut DiskStream,
        old: impl Fn(i64) -> bool,
    ) -> Result<(u64, u64), StoreError> {
        let first = s.meta.first_seq;
        if first > s.durable {
            return Ok((0, 0));
        }
        let (mut block, block_bytes) = self.load_block(id, s, first)?;
        let durable_in_block = usize::try_from(s.durable - first + 1).unwrap_or(usize::MAX);
        let drop = block
            .ts
            .iter()
            .take(durable_in_block)
            .take_while(|&&ts| old(ts))
            .count();
        if drop == 0 {
            return Ok((0, 0));
        }
        let mut blocks = sled::Batch::default();
        blocks.remove(block_key(&s.key, first));
        let mut meta = Meta {
            first_seq: first + drop as u64,
            bytes: s.meta.bytes.saturating_sub(block_bytes),
            ..s.meta
        };
        let rest = block.split_off(drop);
        let mut rewritten = None;
        if rest.is_empty() {
            meta.front_ts_ms = if meta.first_seq <= meta.head {
                match self.load_block(id, s, meta.first_seq) {
                    Ok((next, _)) => Some(next.ts[0]),
                    // The next block is damaged: drop this one anyway, and let the next call
                    // report the damage. Its front is at least as young as this block's end.
                    Err(StoreError::Corrupt { .. }) => block.ts.last().copied(),
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
        } else {
            let key = block_key(&s.key, meta.first_seq);
            let value = rest.encode_block(0..rest.len());
            let b = BlockRef {
                first_seq: meta.first_seq,
                records: rest.len(),
                bytes: (key.len() + value.len()) as u64,
            };
            meta.bytes += b.bytes;
            meta.front_ts_ms = Some(rest.ts[0]);
            blocks.insert(key, value);
            rewritten = Some(b);
        }
        let mut meta_batch = sled::Batch::default();
        meta_batch.insert(s.key.clone(), &meta.encode()[..]);
        self.commit(&blocks, &meta_batch, "drop old records")?;

        let freed = s.meta.bytes.saturating_sub(meta.bytes);
        s.meta = meta;
        // The tail stays the run of small blocks at the end: without the dropped block, or with
        // what is left of it in its place.
        let was_tail = s.tail.first().is_some_and(|b| b.first_seq == first);
        s.tail.retain(|b| b.first_seq > first);
        if let (true, Some(b)) = (was_tail, rewritten) {
            s.tail.insert(0, b);
        }
        Ok((drop as u64, freed))
    }
}

/// Checks a stream's first and last blocks against its metadata and collects its trailing small
/// blocks. A failure is the sequence number where it was found and what is wrong.
fn recover_tail(blocks: &sled::Tree, key: &[u8], m: &Meta) -> Result<Vec<BlockRef>, (u64, String)> {
    let engine = |seq: u64| move |e: sled::Error| (seq, format!("cannot read blocks: {e}"));
    let mut first_blocks = blocks.scan_prefix(key);
    match first_blocks
        .next()
        .transpose()
        .map_err(engine(m.first_seq))?
    {
        None if m.first_seq > m.head => return Ok(Vec::new()),
        None => {
            return Err((
                m.first_seq,
                format!("no blocks, though the head is {}", m.head),
            ));
        }
        Some((k, _)) if block_seq(key, &k) == Some(m.first_seq) => {}
        Some((k, _)) => {
            return Err((
                m.first_seq,
                format!(
                    "the first block starts at {:?}, not at the first retained seq",
                    block_seq(key, &k)
                ),
            ));
        }
    }
    let mut tail = Vec::new();
    let mut next_end = m.head;
    for item in blocks.scan_prefix(key).rev() {
        let (k, v) = item.map_err(engine(next_end))?;
        let first_seq =
            block_seq(key, &k).ok_or((next_end, "a block key is malformed".to_owned()))?;
        let columns = m.columns.unwrap_or(0);
        let block = Series::decode_block(&v, columns).map_err(|d| (first_seq, d))?;
        let end = first_seq.checked_add(block.len() as u64 - 1);
        if end != Some(next_end) {
            return Err((first_seq, format!("the block does not end at {next_end}")));
        }
        if block.len() >= BLOCK_RECORDS_MAX {
            break;
        }
        tail.push(BlockRef {
            first_seq,
            records: block.len(),
            bytes: (k.len() + v.len()) as u64,
        });
        if first_seq == m.first_seq {
            break;
        }
        next_end = first_seq - 1;
    }
    tail.reverse();
    Ok(tail)
}

/// What to tell the operator about a sled error while opening.
fn engine_detail(e: sled::Error) -> String {
    match e {
        // sled 0.34.7 reports a held lock only in its message.
        sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => format!(
            "another process holds its lock ({e}); is another node running on this data dir?"
        ),
        sled::Error::Io(e) => format!("cannot read or write its files ({e})"),
        e => damaged(&e.to_string()),
    }
}

fn damaged(what: &str) -> String {
    format!(
        "its data is damaged or was not written by this store ({what}); move the directory \
         aside to start empty, and replication refills the node"
    )
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("it panicked")
}

impl Store for SledStore {
    fn append(
        &self,
        stream: &StreamId,
        first_seq: u64,
        records: &[Record],
    ) -> Result<AppendOutcome, StoreError> {
        let mut streams = self.lock();
        let existing = streams.get(stream);
        let head = existing.map_or(0, DiskStream::head);
        let skip = plan::new_records(
            stream,
            head,
            existing.and_then(|s| s.meta.columns),
            first_seq,
            records,
        )?;
        let fresh = &records[skip..];
        let Some(first) = fresh.first() else {
            return Ok(AppendOutcome {
                appended: 0,
                skipped: skip,
                head,
            });
        };
        let s = streams.entry(stream.clone()).or_insert_with(|| DiskStream {
            key: stream_key(stream),
            meta: Meta {
                columns: None,
                first_seq: 1,
                head: 0,
                bytes: 0,
                front_ts_ms: None,
            },
            durable: 0,
            incarnation: 0,
            tail: Vec::new(),
            pending: Series::new(0),
        });
        if s.meta.columns.is_none() {
            // A new stream, or one a reset emptied: nothing is pending or retained.
            let columns = first.values.len();
            s.meta.columns = Some(columns);
            s.pending = Series::new(columns);
        }
        for record in fresh {
            s.pending.push(record);
        }
        Ok(AppendOutcome {
            appended: fresh.len(),
            skipped: skip,
            head: s.head(),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Seal and commit under the lock, sync outside it: appends and reads go on while the
        // disk works (one fsync can take milliseconds), and what they add waits for the next
        // flush. Afterwards each stream's durable head rises to what was sealed here.
        let sealed_heads = {
            let mut streams = self.lock();
            let mut blocks = sled::Batch::default();
            let mut meta = sled::Batch::default();
            let mut sealed = Vec::new();
            if streams.values().any(|s| !s.pending.is_empty()) {
                let flush = self.flushes.fetch_add(1, Ordering::Relaxed);
                for (slot, (id, s)) in streams.iter().enumerate() {
                    // A stream with nothing pending still compacts on its turn, so that the run of
                    // a stream that went quiet is merged too.
                    let compact = plan::compacts(
                        flush,
                        slot,
                        s.tail.len(),
                        s.pending.len(),
                        TAIL_BLOCKS_MAX,
                        BLOCK_RECORDS_MAX,
                    );
                    if s.pending.is_empty() && !compact {
                        continue;
                    }
                    let plan = self.seal(id, s, compact, &mut blocks);
                    meta.insert(s.key.clone(), &plan.meta.encode()[..]);
                    sealed.push((id.clone(), plan));
                }
            }
            if sealed.is_empty() && streams.values().all(|s| s.durable == s.meta.head) {
                return Ok(());
            }
            if !sealed.is_empty() {
                self.commit(&blocks, &meta, "write blocks")?;
                for (id, plan) in sealed {
                    if let Some(s) = streams.get_mut(&id) {
                        s.meta = plan.meta;
                        s.tail = plan.tail;
                        s.pending = Series::new(s.columns());
                    }
                }
            }
            streams
                .iter()
                .filter(|(_, s)| s.durable < s.meta.head)
                .map(|(id, s)| (id.clone(), s.incarnation, s.meta.head))
                .collect::<Vec<_>>()
        };
        self.sync()?;
        let mut streams = self.lock();
        for (id, incarnation, head) in sealed_heads {
            if let Some(s) = streams.get_mut(&id)
                && s.incarnation == incarnation
            {
                s.durable = s.durable.max(head);
            }
        }
        Ok(())
    }

    fn head(&self, stream: &StreamId) -> u64 {
        self.lock().get(stream).map_or(0, DiskStream::head)
    }

    fn durable_head(&self, stream: &StreamId) -> u64 {
        self.lock().get(stream).map_or(0, |s| s.durable)
    }

    fn read(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Record)>, StoreError> {
        let streams = self.lock();
        let Some(s) = streams.get(stream) else {
            return Ok(Vec::new());
        };
        let from = from.max(s.meta.first_seq);
        let to = to.min(s.head());
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        let corrupt = |seq: u64, detail: String| StoreError::Corrupt {
            stream: stream.clone(),
            seq,
            detail,
        };

        let sealed_to = to.min(s.meta.head);
        if from <= sealed_to {
            // The block holding `from` is the last one starting at or before it.
            let (key, _) = self
                .blocks
                .range(block_key(&s.key, 0)..=block_key(&s.key, from))
                .next_back()
                .transpose()
                .map_err(|e| self.read_error(stream, from, e))?
                .ok_or_else(|| corrupt(from, "no block holds it".to_owned()))?;
            let mut next = block_seq(&s.key, &key)
                .ok_or_else(|| corrupt(from, "a block key is malformed".to_owned()))?;
            let range = block_key(&s.key, next)..=block_key(&s.key, sealed_to);
            for item in self.blocks.range(range) {
                let (key, value) = item.map_err(|e| self.read_error(stream, next, e))?;
                let seq = block_seq(&s.key, &key)
                    .ok_or_else(|| corrupt(next, "a block key is malformed".to_owned()))?;
                if seq != next {
                    return Err(corrupt(
                        next,
                        format!("the block is missing; the next starts at {seq}"),
                    ));
                }
                let block =
                    Series::decode_block(&value, s.columns()).map_err(|d| corrupt(seq, d))?;
                for (i, q) in (seq..).take(block.len()).enumerate() {
                    if (from..=to).contains(&q) {
                        out.push((q, block.record(i)));
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
                next = seq + block.len() as u64;
            }
            if next <= sealed_to {
                return Err(corrupt(next, "the block is missing".to_owned()));
            }
        }
        for q in from.max(s.meta.head + 1)..=to {
            let i = usize::try_from(q - s.meta.head - 1).unwrap_or(usize::MAX);
            out.push((q, s.pending.record(i)));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn streams(&self) -> Vec<StreamInfo> {
        self.lock()
            .iter()
            .map(|(id, s)| StreamInfo {
                id: id.clone(),
                first_seq: s.meta.first_seq,
                head: s.head(),
                durable_head: s.durable,
                columns: s.columns(),
                bytes: s.meta.bytes,
            })
            .collect()
    }

    fn enforce(
        &self,
        policy: &RetentionPolicy,
        now_ms: i64,
    ) -> Result<RetentionReport, StoreError> {
        let mut streams = self.lock();
        let mut report = RetentionReport::default();
        for (id, s) in streams.iter_mut() {
            let Some(cutoff) = policy.cutoff_ms(id.kind, now_ms) else {
                continue;
            };
            while s.droppable_front().is_some_and(|ts| ts < cutoff) {
                let dropped = self.drop_front(id, s, |ts| ts < cutoff);
                let Some((records @ 1.., freed)) = survive_damage(dropped, &mut report)? else {
                    break;
                };
                report.add(id.kind, DropReason::Age, records, freed);
            }
        }

        let mut bytes: u64 = streams.values().map(|s| s.meta.bytes).sum();
        let bytes_max = policy.bytes_max.unwrap_or(u64::MAX);
        while bytes > bytes_max {
            let candidates = streams.iter().filter_map(|(id, s)| {
                let ts_ms = s.droppable_front()?;
                (!report.is_damaged(id)).then_some((
                    id,
                    Front {
                        kind: id.kind,
                        ts_ms,
                    },
                ))
            });
            let Some(victim) = plan::quota_victim(candidates).cloned() else {
                break;
            };
            let Some(s) = streams.get_mut(&victim) else {
                break;
            };
            let dropped = self.drop_front(&victim, s, |_| true);
            match survive_damage(dropped, &mut report)? {
                // The victim is now known damaged and no longer a candidate.
                None => continue,
                Some((0, _)) => break,
                Some((records, freed)) => {
                    bytes = bytes.saturating_sub(freed);
                    report.add(victim.kind, DropReason::Quota, records, freed);
                }
            }
        }
        report.bytes = bytes;
        report.bytes_over_quota = bytes.saturating_sub(bytes_max);
        if !report.is_empty() {
            // What was reported dropped stays dropped after a crash.
            self.sync()?;
        }
        Ok(report)
    }

    fn set_holders(&self, stream: &StreamId, holders: &[NodeId]) -> Result<(), StoreError> {
        let action = "record a stream's holders";
        // Held for the sync, as every sync is.
        let _streams = self.lock();
        let key = stream_key(stream);
        if holders.is_empty() {
            self.holders_tree.remove(key)
        } else {
            self.holders_tree
                .insert(key, format::encode_holders(holders))
        }
        .map_err(|e| self.disk(action, e))?;
        {
            let mut all = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
            if holders.is_empty() {
                all.remove(stream);
            } else {
                all.insert(stream.clone(), holders.to_vec());
            }
        }
        self.sync()
    }

    fn streams_with_holders(&self) -> Vec<StreamId> {
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn holders(&self, stream: &StreamId) -> Vec<NodeId> {
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }

    fn bump_epoch(&self) -> Result<u64, StoreError> {
        let _streams = self.lock();
        let mut epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        // The value read on open is at most `u64::MAX / 2`: no restart count gets near overflow.
        let next = epoch.saturating_add(1);
        self.db
            .insert(format::EPOCH_KEY, &format::encode_epoch(next)[..])
            .map_err(|e| self.disk("increment the node's epoch", e))?;
        // Written: even if the sync fails, the next call must go higher than what may survive.
        *epoch = next;
        drop(epoch);
        self.sync()?;
        Ok(next)
    }

    fn reset(&self, stream: &StreamId, next_seq: u64) -> Result<(), StoreError> {
        plan::check_reset(stream, next_seq)?;
        let action = "reset a stream";
        let mut streams = self.lock();
        let key = stream_key(stream);
        let mut blocks = sled::Batch::default();
        for item in self.blocks.scan_prefix(&key).keys() {
            blocks.remove(item.map_err(|e| self.disk(action, e))?);
        }
        let meta = Meta {
            columns: None,
            first_seq: next_seq,
            head: next_seq - 1,
            bytes: 0,
            front_ts_ms: None,
        };
        let mut meta_batch = sled::Batch::default();
        meta_batch.insert(key.clone(), &meta.encode()[..]);
        self.commit(&blocks, &meta_batch, action)?;

        // Committed: memory follows sled whether or not the sync succeeds.
        let (durable, incarnation) = streams
            .get(stream)
            .map_or((0, 0), |s| (s.durable, s.incarnation + 1));
        streams.insert(
            stream.clone(),
            DiskStream {
                key,
                meta,
                // Until a sync succeeds, the old durable head stands if it is lower.
                durable: durable.min(meta.head),
                incarnation,
                tail: Vec::new(),
                pending: Series::new(0),
            },
        );
        self.sync()?;
        if let Some(s) = streams.get_mut(stream) {
            s.durable = meta.head;
        }
        Ok(())
    }
}

/// Lets [`Store::enforce`] carry on past a stream with a damaged block: the damage goes into the
/// report and the stream's retention stops there. Other errors stop `enforce`.
fn survive_damage(
    dropped: Result<(u64, u64), StoreError>,
    report: &mut RetentionReport,
) -> Result<Option<(u64, u64)>, StoreError> {
    match dropped {
        Ok(dropped) => Ok(Some(dropped)),
        Err(e @ StoreError::Corrupt { .. }) => {
            tracing::warn!(error = %e, "retention skips a damaged stream");
            report.damaged.push(e);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
