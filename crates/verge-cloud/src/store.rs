//! The cloud's storage: one sled tree under `DATA_DIR/db`, written by one thread, read by any.
//!
//! **Layout.** Every key starts with a one-byte table tag; cluster and stream names never hold a
//! NUL byte (both are validated), so NUL separates them and prefix scans are exact.
//! - `t cluster` → the highest term accepted for the cluster (u64 BE);
//! - `b cluster \0 stream \0 first(u64 BE) last(u64 BE)` → the batch record (term, gateway,
//!   windows stored, duplicates, acceptance number; JSON);
//! - `c` → the last acceptance number given (u64 BE): every batch record stored gets the next
//!   one, across all clusters, so they say in which order the cloud accepted batches;
//! - `a cluster \0 accepted(u64 BE)` → the `b` key of the batch given that number: the
//!   cluster's batch log, in acceptance order ([`StoreReader::batches`]);
//! - `w cluster \0 stream \0 seq(u64 BE)` → one window: `ts_ms` (i64 BE) then each value (f64 BE);
//! - `s cluster \0 stream` → the stream's totals (windows, first seq, last seq, batches; u64 BE each);
//! - `format` → the layout version.
//!
//! **Atomicity and durability.** One batch is one `sled::Batch`, which sled applies atomically,
//! so a crash leaves either all of a batch's key, windows, totals, term, acceptance number and
//! log entry or none. A [`sync`]
//! after a group of batches makes them durable: sled 0.34.7's own flush ends with
//! `sync_file_range`, which survives a killed process but not a power cut, so it is followed by
//! an fsync of sled's log and blob files (as `verge-store` does).
//!
//! **Damage.** Values read back are decoded defensively; damage is [`StoreError::Corrupt`]
//! naming the key, never a panic.
//!
//! **Older stores.** The counter and the log came later than layout `verge-cloud/1`, whose other
//! tables they leave as they were, so the version stays. Batch records written before them read
//! with `accepted` 0 and are in no log (their order was never recorded); [`CloudStore::open`]
//! warns how many there are when it opens such a store.
//!
//! [`sync`]: CloudStore::sync

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::api::{
    AcceptedBatch, Batch, BatchesPage, ClusterSummary, NodeSummary, StreamSummary, Summary, Window,
    WindowsPage,
};
use crate::ingest::{Decision, Fence, Seen, decide_with};

const FORMAT_KEY: &[u8] = b"format";
const FORMAT_VERSION: &[u8] = b"verge-cloud/1";
const TAG_TERM: u8 = b't';
const TAG_BATCH: u8 = b'b';
const TAG_WINDOW: u8 = b'w';
const TAG_STREAM: u8 = b's';
const TAG_ACCEPTED: u8 = b'a';
const COUNTER_KEY: &[u8] = b"c";

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the cloud store at {path}: {detail}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A read or write failed.
    #[error("the cloud store failed to {action}: {detail}")]
    Disk {
        /// What it was doing.
        action: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// Bytes on disk do not decode.
    #[error("the cloud store is damaged at {key}: {detail}")]
    Corrupt {
        /// The key, readable.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// An earlier sync failed, so nothing more is accepted: after a failed fsync the kernel may
    /// have dropped the dirty pages, and acknowledging anything later could lie about
    /// durability. A restart recovers from what is on disk.
    #[error(
        "the cloud store stopped accepting writes after a failed sync ({0}); restart the server"
    )]
    Failed(String),
}

fn disk(action: &'static str) -> impl Fn(sled::Error) -> StoreError {
    move |e| StoreError::Disk {
        action,
        detail: e.to_string(),
    }
}

/// What one batch did, for the answer and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    /// Refused: stale term.
    Stale {
        /// The batch's term.
        term: u64,
        /// The cluster's highest.
        highest: u64,
    },
    /// The key was already stored.
    Duplicate,
    /// The key is stored now.
    Stored {
        /// Windows written.
        stored: u64,
        /// Windows already held.
        duplicates: u64,
        /// Held windows that differed from the batch's (kept as held).
        conflicts: Vec<u64>,
        /// The batch's acceptance number.
        accepted: u64,
        /// Stored only because of [`Fence::AcceptStale`]: the cluster's highest term, which
        /// would have refused it.
        stale_over: Option<u64>,
    },
}

/// A batch key's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BatchRecord {
    term: u64,
    gateway: String,
    stored: u64,
    duplicates: u64,
    /// Where the batch stands in the order the store accepted batches, from 1; 0 for a record
    /// written before the counter existed.
    #[serde(default)]
    accepted: u64,
}

/// A stream's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StreamTotals {
    windows: u64,
    first_seq: u64,
    last_seq: u64,
    batches: u64,
}

impl StreamTotals {
    fn encode(&self) -> [u8; 32] {
        let mut out = [0; 32];
        for (chunk, v) in
            out.chunks_exact_mut(8)
                .zip([self.windows, self.first_seq, self.last_seq, self.batches])
        {
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let mut it = bytes.chunks_exact(8).map(be_u64);
        Some(Self {
            windows: it.next()??,
            first_seq: it.next()??,
            last_seq: it.next()??,
            batches: it.next()??,
        })
    }
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn stream_prefix(tag: u8, cluster: &str, stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + cluster.len() + stream.len() + 16);
    k.push(tag);
    k.extend_from_slice(cluster.as_bytes());
    k.push(0);
    k.extend_from_slice(stream.as_bytes());
    k
}

fn term_key(cluster: &str) -> Vec<u8> {
    let mut k = vec![TAG_TERM];
    k.extend_from_slice(cluster.as_bytes());
    k
}

fn batch_key(b: &Batch) -> Vec<u8> {
    let mut k = stream_prefix(TAG_BATCH, &b.cluster, &b.stream);
    k.push(0);
    k.extend_from_slice(&b.first_seq.to_be_bytes());
    k.extend_from_slice(&b.last_seq.to_be_bytes());
    k
}

/// The start of a cluster's batch log.
fn log_prefix(cluster: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + cluster.len() + 8);
    k.push(TAG_ACCEPTED);
    k.extend_from_slice(cluster.as_bytes());
    k.push(0);
    k
}

fn log_key(cluster: &str, accepted: u64) -> Vec<u8> {
    let mut k = log_prefix(cluster);
    k.extend_from_slice(&accepted.to_be_bytes());
    k
}

/// The (cluster, stream, first, last) of a `b` key.
fn split_batch_key(k: &[u8]) -> Option<(String, String, u64, u64)> {
    let (names, seqs) = k.get(1..)?.split_at_checked(k.len().checked_sub(1 + 16)?)?;
    let names = names.strip_suffix(&[0])?;
    let (cluster, stream) = std::str::from_utf8(names).ok()?.split_once('\0')?;
    Some((
        cluster.to_owned(),
        stream.to_owned(),
        be_u64(&seqs[..8])?,
        be_u64(&seqs[8..])?,
    ))
}

fn window_key(cluster: &str, stream: &str, seq: u64) -> Vec<u8> {
    let mut k = stream_prefix(TAG_WINDOW, cluster, stream);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn encode_window(w: &Window) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 8 * w.values.len());
    v.extend_from_slice(&w.ts_ms.to_be_bytes());
    for x in &w.values {
        v.extend_from_slice(&x.to_bits().to_be_bytes());
    }
    v
}

fn decode_window(seq: u64, bytes: &[u8]) -> Option<Window> {
    if bytes.len() < 8 || !bytes.len().is_multiple_of(8) {
        return None;
    }
    let mut it = bytes.chunks_exact(8).map(be_u64);
    let ts_ms = it.next()?? as i64;
    let values = it.map(|b| b.map(f64::from_bits)).collect::<Option<_>>()?;
    Some(Window { seq, ts_ms, values })
}

fn readable(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "/")
}

fn corrupt(key: &[u8], detail: &str) -> StoreError {
    StoreError::Corrupt {
        key: readable(key),
        detail: detail.to_owned(),
    }
}

/// The seq at the end of a window key.
fn seq_of(key: &[u8]) -> Option<u64> {
    be_u64(key.get(key.len().checked_sub(8)?..)?)
}

/// Completes sled's flush into an fsync: fsync works per file, from any descriptor, so the
/// store keeps its own.
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

/// The writable store. Exactly one exists per database, owned by the writer thread, so every
/// check-then-write in [`CloudStore::ingest`] runs with no other writer in between.
#[derive(Debug)]
pub struct CloudStore {
    db: sled::Db,
    fsync: Fsync,
    /// The last acceptance number given (the `c` key), kept here by the one writer.
    accepted: u64,
}

impl CloudStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open_err = |detail: String| StoreError::Open {
            path: dir.to_owned(),
            detail,
        };
        fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let fresh = fs::read_dir(dir)
            .map_err(|e| open_err(e.to_string()))?
            .next()
            .is_none();
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        match db.get(FORMAT_KEY).map_err(|e| open_err(e.to_string()))? {
            Some(v) if v.as_ref() == FORMAT_VERSION => {}
            Some(v) => {
                return Err(open_err(format!(
                    "it holds layout {:?}, which this build does not read",
                    String::from_utf8_lossy(&v)
                )));
            }
            None if fresh => {
                db.insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(|e| open_err(e.to_string()))?;
                db.flush().map_err(|e| open_err(e.to_string()))?;
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| open_err(format!("cannot sync the directory ({e})")))?;
            }
            None => {
                return Err(open_err(
                    "it is not empty and holds no cloud store; give the cloud a directory of its own"
                        .into(),
                ));
            }
        }
        let fsync = Fsync::open(dir)
            .map_err(|e| open_err(format!("cannot open sled's log file to sync it ({e})")))?;
        let accepted = match db.get(COUNTER_KEY).map_err(|e| open_err(e.to_string()))? {
            Some(v) => {
                be_u64(&v).ok_or_else(|| corrupt(COUNTER_KEY, "the counter is not 8 bytes"))?
            }
            None => {
                // Fresh, or written before the counter: say so if it holds unnumbered batches.
                let legacy = db.scan_prefix([TAG_BATCH]).count();
                if legacy > 0 {
                    warn!(
                        "the cloud store at {} holds {legacy} batches stored before it numbered \
                         them: they read as accepted 0 and are not in GET /v1/batches",
                        dir.display()
                    );
                }
                0
            }
        };
        Ok(Self {
            db,
            fsync,
            accepted,
        })
    }

    /// A handle for concurrent reads.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
        }
    }

    /// Decides on a checked batch and applies what it decided, atomically, without syncing.
    /// Returns the outcome and whether it wrote anything (and so needs a [`CloudStore::sync`]
    /// before it is acknowledged).
    pub fn ingest(&mut self, batch: &Batch) -> Result<(Ingested, bool), StoreError> {
        self.ingest_with(batch, Fence::Enforce)
    }

    /// Like [`CloudStore::ingest`], with the term fence as `fence` says.
    pub fn ingest_with(
        &mut self,
        batch: &Batch,
        fence: Fence,
    ) -> Result<(Ingested, bool), StoreError> {
        let term_k = term_key(&batch.cluster);
        let highest_term = self
            .db
            .get(&term_k)
            .map_err(disk("read a cluster's term"))?
            .map(|v| be_u64(&v).ok_or_else(|| corrupt(&term_k, "a term is not 8 bytes")))
            .transpose()?;
        let batch_k = batch_key(batch);
        let key_stored = self
            .db
            .contains_key(&batch_k)
            .map_err(disk("look up a batch key"))?;
        let mut held = BTreeMap::new();
        if !key_stored {
            let lo = window_key(&batch.cluster, &batch.stream, batch.first_seq);
            let hi = window_key(&batch.cluster, &batch.stream, batch.last_seq);
            for item in self.db.range(lo..=hi) {
                let (k, v) = item.map_err(disk("read held windows"))?;
                let seq = seq_of(&k).ok_or_else(|| corrupt(&k, "a window key is too short"))?;
                let w = decode_window(seq, &v)
                    .ok_or_else(|| corrupt(&k, "a window is not a time and f64 values"))?;
                held.insert(seq, w);
            }
        }
        let seen = Seen {
            highest_term,
            key_stored,
            held,
        };
        let decision = decide_with(batch, &seen, fence);
        let accepted = self.accepted + 1;
        let outcome = match &decision {
            Decision::Stale { term, highest } => Ingested::Stale {
                term: *term,
                highest: *highest,
            },
            Decision::Duplicate { .. } => Ingested::Duplicate,
            Decision::Store {
                new,
                duplicates,
                conflicts,
                stale_over,
                ..
            } => Ingested::Stored {
                stored: new.len() as u64,
                duplicates: *duplicates,
                conflicts: conflicts.clone(),
                accepted,
                stale_over: *stale_over,
            },
        };
        let wrote = match &decision {
            Decision::Stale { .. } => false,
            Decision::Duplicate { raise_term } => *raise_term,
            Decision::Store { .. } => true,
        };
        let mut writes = sled::Batch::default();
        match &decision {
            Decision::Stale { .. } => {}
            Decision::Duplicate { raise_term } => {
                if *raise_term {
                    writes.insert(term_k, &batch.term.to_be_bytes());
                }
            }
            Decision::Store {
                new,
                duplicates,
                raise_term,
                ..
            } => {
                if *raise_term {
                    writes.insert(term_k, &batch.term.to_be_bytes());
                }
                let record = BatchRecord {
                    term: batch.term,
                    gateway: batch.gateway.clone(),
                    stored: new.len() as u64,
                    duplicates: *duplicates,
                    accepted,
                };
                let record = serde_json::to_vec(&record).map_err(|e| StoreError::Disk {
                    action: "encode a batch record",
                    detail: e.to_string(),
                })?;
                writes.insert(log_key(&batch.cluster, accepted), batch_k.as_slice());
                writes.insert(batch_k, record);
                writes.insert(COUNTER_KEY, &accepted.to_be_bytes());
                let stream_k = stream_prefix(TAG_STREAM, &batch.cluster, &batch.stream);
                let mut totals = match self
                    .db
                    .get(&stream_k)
                    .map_err(disk("read a stream's totals"))?
                {
                    Some(v) => StreamTotals::decode(&v)
                        .ok_or_else(|| corrupt(&stream_k, "stream totals are not 4 u64"))?,
                    None => StreamTotals::default(),
                };
                for &i in new {
                    let w = &batch.windows[i];
                    writes.insert(
                        window_key(&batch.cluster, &batch.stream, w.seq),
                        encode_window(w),
                    );
                    totals.first_seq = if totals.windows == 0 {
                        w.seq
                    } else {
                        totals.first_seq.min(w.seq)
                    };
                    totals.last_seq = totals.last_seq.max(w.seq);
                    totals.windows += 1;
                }
                totals.batches += 1;
                writes.insert(stream_k, &totals.encode());
            }
        }
        if wrote {
            self.db.apply_batch(writes).map_err(disk("write a batch"))?;
            if matches!(decision, Decision::Store { .. }) {
                self.accepted = accepted;
            }
        }
        Ok((outcome, wrote))
    }

    /// Makes everything applied so far durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.db.flush().map_err(disk("flush to disk"))?;
        self.fsync.sync().map_err(|e| StoreError::Disk {
            action: "fsync to disk",
            detail: e.to_string(),
        })
    }
}

/// A read handle on the store; clones share the database. Reads see every batch applied, which
/// may include a group whose sync is still under way (a few milliseconds): nothing is
/// acknowledged before its sync, but a GET may show it a moment early.
#[derive(Debug, Clone)]
pub struct StoreReader {
    db: sled::Db,
}

impl StoreReader {
    /// The clusters that hold `stream`, by name.
    pub fn clusters_of(&self, stream: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([TAG_STREAM]) {
            let (k, _) = item.map_err(disk("list streams"))?;
            let (cluster, s) = split_stream_key(&k)?;
            if s == stream {
                out.push(cluster);
            }
        }
        Ok(out)
    }

    /// Up to `limit` windows of (`cluster`, `stream`) with `from <= seq <= to`, in order, and
    /// where the next page starts if the limit cut this one.
    pub fn windows(
        &self,
        cluster: &str,
        stream: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<WindowsPage, StoreError> {
        let mut page = WindowsPage {
            cluster: Some(cluster.to_owned()),
            stream: stream.to_owned(),
            windows: Vec::new(),
            next_from: None,
        };
        if from > to {
            return Ok(page);
        }
        let lo = window_key(cluster, stream, from);
        let hi = window_key(cluster, stream, to);
        for item in self.db.range(lo..=hi) {
            let (k, v) = item.map_err(disk("read windows"))?;
            let seq = seq_of(&k).ok_or_else(|| corrupt(&k, "a window key is too short"))?;
            if page.windows.len() == limit {
                page.next_from = Some(seq);
                break;
            }
            let w = decode_window(seq, &v)
                .ok_or_else(|| corrupt(&k, "a window is not a time and f64 values"))?;
            page.windows.push(w);
        }
        Ok(page)
    }

    /// Up to `limit` of `cluster`'s batch records with an acceptance number above `after` (all
    /// of them when `None`), in acceptance order, and the `after` that continues them if the
    /// limit cut this page.
    pub fn batches(
        &self,
        cluster: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<BatchesPage, StoreError> {
        let mut page = BatchesPage {
            batches: Vec::new(),
            next_after: None,
        };
        let lo = match after {
            None => log_key(cluster, 0),
            Some(u64::MAX) => return Ok(page),
            Some(a) => log_key(cluster, a + 1),
        };
        let hi = log_key(cluster, u64::MAX);
        for item in self.db.range(lo..=hi) {
            let (k, batch_k) = item.map_err(disk("read the batch log"))?;
            if page.batches.len() == limit {
                page.next_after = page.batches.last().map(|b| b.accepted);
                break;
            }
            let accepted = seq_of(&k).ok_or_else(|| corrupt(&k, "a log key is too short"))?;
            let (cluster, stream, first_seq, last_seq) = split_batch_key(&batch_k)
                .filter(|(c, ..)| c == cluster)
                .ok_or_else(|| corrupt(&k, "a log entry is not a batch key of its cluster"))?;
            let v = self
                .db
                .get(&batch_k)
                .map_err(disk("read a batch record"))?
                .ok_or_else(|| corrupt(&k, "a log entry names a batch that is not stored"))?;
            let r: BatchRecord = serde_json::from_slice(&v)
                .map_err(|e| corrupt(&batch_k, &format!("a batch record does not parse: {e}")))?;
            if r.accepted != accepted {
                return Err(corrupt(
                    &k,
                    &format!("the batch it names was accepted as {}", r.accepted),
                ));
            }
            page.batches.push(AcceptedBatch {
                cluster,
                stream,
                first_seq,
                last_seq,
                term: r.term,
                gateway: r.gateway,
                stored: r.stored,
                duplicates: r.duplicates,
                accepted,
            });
        }
        Ok(page)
    }

    /// The highest term accepted per cluster.
    pub fn terms(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut out = BTreeMap::new();
        for item in self.db.scan_prefix([TAG_TERM]) {
            let (k, v) = item.map_err(disk("read terms"))?;
            let term = be_u64(&v).ok_or_else(|| corrupt(&k, "a term is not 8 bytes"))?;
            let cluster = std::str::from_utf8(&k[1..])
                .map_err(|_| corrupt(&k, "a cluster name is not UTF-8"))?;
            out.insert(cluster.to_owned(), term);
        }
        Ok(out)
    }

    /// Totals per cluster, node and stream.
    pub fn summary(&self) -> Result<Summary, StoreError> {
        let terms = self.terms()?;
        let mut streams = Vec::new();
        for item in self.db.scan_prefix([TAG_STREAM]) {
            let (k, v) = item.map_err(disk("read stream totals"))?;
            let (cluster, stream) = split_stream_key(&k)?;
            let t = StreamTotals::decode(&v)
                .ok_or_else(|| corrupt(&k, "stream totals are not 4 u64"))?;
            let node = stream.split('/').next().unwrap_or_default().to_owned();
            let span = if t.windows == 0 {
                0
            } else {
                t.last_seq - t.first_seq + 1
            };
            streams.push(StreamSummary {
                cluster,
                node,
                stream,
                windows: t.windows,
                first_seq: t.first_seq,
                last_seq: t.last_seq,
                missing: span.saturating_sub(t.windows),
                batches: t.batches,
            });
        }
        let mut clusters: BTreeMap<String, ClusterSummary> = terms
            .into_iter()
            .map(|(cluster, highest_term)| {
                let c = ClusterSummary {
                    cluster: cluster.clone(),
                    highest_term,
                    batches: 0,
                    windows: 0,
                };
                (cluster, c)
            })
            .collect();
        let mut nodes: BTreeMap<(String, String), NodeSummary> = BTreeMap::new();
        for s in &streams {
            let c = clusters
                .entry(s.cluster.clone())
                .or_insert_with(|| ClusterSummary {
                    cluster: s.cluster.clone(),
                    highest_term: 0,
                    batches: 0,
                    windows: 0,
                });
            c.batches += s.batches;
            c.windows += s.windows;
            let n = nodes
                .entry((s.cluster.clone(), s.node.clone()))
                .or_insert_with(|| NodeSummary {
                    cluster: s.cluster.clone(),
                    node: s.node.clone(),
                    streams: 0,
                    windows: 0,
                    batches: 0,
                });
            n.streams += 1;
            n.windows += s.windows;
            n.batches += s.batches;
        }
        Ok(Summary {
            clusters: clusters.into_values().collect(),
            nodes: nodes.into_values().collect(),
            streams,
        })
    }
}

fn split_stream_key(k: &[u8]) -> Result<(String, String), StoreError> {
    let body = std::str::from_utf8(&k[1..]).map_err(|_| corrupt(k, "a stream key is not UTF-8"))?;
    let (cluster, stream) = body
        .split_once('\0')
        .ok_or_else(|| corrupt(k, "a stream key has no cluster"))?;
    Ok((cluster.to_owned(), stream.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(term: u64, stream: &str, first: u64, last: u64) -> Batch {
        Batch {
            cluster: "c1".into(),
            term,
            gateway: "b1".into(),
            stream: stream.into(),
            first_seq: first,
            last_seq: last,
            windows: (first..=last)
                .map(|seq| Window {
                    seq,
                    ts_ms: seq as i64 * 1000,
                    values: vec![seq as f64, -0.5],
                })
                .collect(),
        }
    }

    #[test]
    fn windows_and_totals_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = CloudStore::open(dir.path()).expect("open");
            let (o, wrote) = s
                .ingest(&batch(3, "b1/aggregates/a", 1, 5))
                .expect("ingest");
            assert!(wrote);
            assert!(matches!(o, Ingested::Stored { stored: 5, .. }));
            // A stream whose name extends the first one's must not leak into its scans.
            s.ingest(&batch(3, "b1/aggregates/ab", 1, 2))
                .expect("ingest");
            s.ingest(&batch(3, "b1/aggregates/a", 4, 8))
                .expect("ingest");
            s.sync().expect("sync");
        }
        let s = CloudStore::open(dir.path()).expect("reopen");
        let r = s.reader();
        let page = r
            .windows("c1", "b1/aggregates/a", 1, u64::MAX, 100)
            .expect("read");
        assert_eq!(
            page.windows.iter().map(|w| w.seq).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(page.windows[0].values, vec![1.0, -0.5]);
        let page = r.windows("c1", "b1/aggregates/a", 2, 7, 3).expect("read");
        assert_eq!(page.windows.len(), 3);
        assert_eq!(page.next_from, Some(5));
        let sum = r.summary().expect("summary");
        assert_eq!(sum.clusters[0].highest_term, 3);
        assert_eq!(sum.clusters[0].windows, 10);
        let a = &sum.streams[0];
        assert_eq!(
            (a.windows, a.first_seq, a.last_seq, a.batches, a.missing),
            (8, 1, 8, 2, 0)
        );
        assert_eq!(sum.nodes[0].streams, 2);
        assert_eq!(
            r.clusters_of("b1/aggregates/a").expect("clusters"),
            vec!["c1"]
        );
    }

    fn listed(r: &StoreReader, cluster: &str) -> Vec<(String, u64, u64, u64)> {
        let page = r.batches(cluster, None, 1000).expect("batches");
        assert_eq!(page.next_after, None);
        page.batches
            .into_iter()
            .map(|b| (b.stream, b.first_seq, b.term, b.accepted))
            .collect()
    }

    #[test]
    fn the_acceptance_counter_increases_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = CloudStore::open(dir.path()).expect("open");
            let (o, _) = s
                .ingest(&batch(1, "b1/aggregates/a", 1, 2))
                .expect("ingest");
            assert!(matches!(o, Ingested::Stored { accepted: 1, .. }), "{o:?}");
            let (o, _) = s
                .ingest(&batch(1, "b1/aggregates/b", 1, 2))
                .expect("ingest");
            assert!(matches!(o, Ingested::Stored { accepted: 2, .. }), "{o:?}");
            // A duplicate key, even one that raises the term, is not a new record.
            let (o, wrote) = s
                .ingest(&batch(2, "b1/aggregates/a", 1, 2))
                .expect("ingest");
            assert_eq!((o, wrote), (Ingested::Duplicate, true));
            // Nor is a refused one.
            let (o, wrote) = s
                .ingest(&batch(1, "b1/aggregates/a", 3, 3))
                .expect("ingest");
            assert!(matches!(o, Ingested::Stale { .. }) && !wrote, "{o:?}");
            s.sync().expect("sync");
        }
        let mut s = CloudStore::open(dir.path()).expect("reopen");
        let (o, _) = s
            .ingest(&batch(2, "b1/aggregates/a", 3, 4))
            .expect("ingest");
        assert!(matches!(o, Ingested::Stored { accepted: 3, .. }), "{o:?}");
        s.sync().expect("sync");
        assert_eq!(
            listed(&s.reader(), "c1"),
            vec![
                ("b1/aggregates/a".into(), 1, 1, 1),
                ("b1/aggregates/b".into(), 1, 1, 2),
                ("b1/aggregates/a".into(), 3, 2, 3),
            ]
        );
    }

    #[test]
    fn a_record_without_a_number_reads_as_zero() {
        let r: BatchRecord =
            serde_json::from_str(r#"{"term":4,"gateway":"b1","stored":2,"duplicates":0}"#)
                .expect("old record");
        assert_eq!((r.term, r.accepted), (4, 0));
    }

    #[test]
    fn the_batch_log_is_per_cluster_in_acceptance_order_and_paged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = CloudStore::open(dir.path()).expect("open");
        // Interleave two clusters, and store seqs out of key order, so acceptance order is
        // neither key order nor one cluster's numbers without gaps. "c10" extends "c1".
        for (i, first) in [7u64, 1, 4, 10, 13].into_iter().enumerate() {
            s.ingest(&batch(1, "b1/aggregates/a", first, first + 2))
                .expect("ingest");
            let mut other = batch(1, "b1/aggregates/a", first, first + 2);
            other.cluster = if i % 2 == 0 { "c2" } else { "c10" }.into();
            s.ingest(&other).expect("ingest");
        }
        s.sync().expect("sync");
        let r = s.reader();
        let all = listed(&r, "c1");
        assert_eq!(
            all.iter().map(|b| (b.1, b.3)).collect::<Vec<_>>(),
            vec![(7, 1), (1, 3), (4, 5), (10, 7), (13, 9)]
        );
        assert_eq!(
            listed(&r, "c2").iter().map(|b| b.3).collect::<Vec<_>>(),
            vec![2, 6, 10]
        );
        assert_eq!(listed(&r, "c10").len(), 2);
        assert!(listed(&r, "none").is_empty());

        let page = r.batches("c1", None, 2).expect("page");
        assert_eq!(
            page.batches.iter().map(|b| b.accepted).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(page.next_after, Some(3));
        let page = r.batches("c1", Some(3), 2).expect("page");
        assert_eq!(
            page.batches.iter().map(|b| b.accepted).collect::<Vec<_>>(),
            vec![5, 7]
        );
        assert_eq!(page.next_after, Some(7));
        let page = r.batches("c1", Some(7), 2).expect("page");
        assert_eq!(
            page.batches.iter().map(|b| b.accepted).collect::<Vec<_>>(),
            vec![9]
        );
        assert_eq!(page.next_after, None);
        // A page exactly as long as the rest is not cut.
        let page = r.batches("c1", Some(5), 2).expect("page");
        assert_eq!((page.batches.len(), page.next_after), (2, None));
        // `after` between numbers, and past the end.
        let page = r.batches("c1", Some(4), 1).expect("page");
        assert_eq!(page.batches[0].accepted, 5);
        assert!(
            r.batches("c1", Some(u64::MAX), 5)
                .expect("page")
                .batches
                .is_empty()
        );
        let b = &r.batches("c1", None, 1).expect("page").batches[0];
        assert_eq!(
            b,
            &AcceptedBatch {
                cluster: "c1".into(),
                stream: "b1/aggregates/a".into(),
                first_seq: 7,
                last_seq: 9,
                term: 1,
                gateway: "b1".into(),
                stored: 3,
                duplicates: 0,
                accepted: 1,
            }
        );
    }

    #[test]
    fn accept_stale_stores_a_stale_batch_with_its_term() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = CloudStore::open(dir.path()).expect("open");
        s.ingest(&batch(5, "b1/aggregates/a", 1, 2))
            .expect("ingest");
        let stale = batch(3, "b1/aggregates/a", 3, 4);
        let (o, wrote) = s.ingest(&stale).expect("ingest");
        assert_eq!(
            o,
            Ingested::Stale {
                term: 3,
                highest: 5
            }
        );
        assert!(!wrote);
        let (o, wrote) = s.ingest_with(&stale, Fence::AcceptStale).expect("ingest");
        assert!(wrote);
        assert_eq!(
            o,
            Ingested::Stored {
                stored: 2,
                duplicates: 0,
                conflicts: vec![],
                accepted: 2,
                stale_over: Some(5)
            }
        );
        // A current term under the mode is stored as usual.
        let (o, _) = s
            .ingest_with(&batch(5, "b1/aggregates/a", 5, 5), Fence::AcceptStale)
            .expect("ingest");
        assert!(
            matches!(
                o,
                Ingested::Stored {
                    stale_over: None,
                    accepted: 3,
                    ..
                }
            ),
            "{o:?}"
        );
        s.sync().expect("sync");
        let r = s.reader();
        assert_eq!(
            listed(&r, "c1"),
            vec![
                ("b1/aggregates/a".into(), 1, 5, 1),
                ("b1/aggregates/a".into(), 3, 3, 2),
                ("b1/aggregates/a".into(), 5, 5, 3),
            ]
        );
        // The cluster's highest term is untouched, so the fence still holds once the mode ends.
        assert_eq!(r.terms().expect("terms")["c1"], 5);
        let (o, _) = s
            .ingest(&batch(3, "b1/aggregates/a", 6, 6))
            .expect("ingest");
        assert!(matches!(o, Ingested::Stale { .. }), "{o:?}");
    }

    #[test]
    fn batch_keys_split_back() {
        let b = batch(1, "b1/aggregates/a", 1, 256);
        assert_eq!(
            split_batch_key(&batch_key(&b)),
            Some(("c1".into(), "b1/aggregates/a".into(), 1, 256))
        );
        assert_eq!(split_batch_key(b"b"), None);
        assert_eq!(split_batch_key(&[TAG_BATCH; 17]), None);
    }

    #[test]
    fn a_foreign_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("notes.txt"), "mine").expect("write");
        let err = CloudStore::open(dir.path()).expect_err("foreign");
        assert!(err.to_string().contains("directory of its own"), "{err}");
    }

    #[test]
    fn windows_encode_and_decode_exactly() {
        let w = Window {
            seq: 9,
            ts_ms: -5,
            values: vec![f64::MIN_POSITIVE, -0.0, 1e300],
        };
        let back = decode_window(9, &encode_window(&w)).expect("decodes");
        assert_eq!(back.ts_ms, -5);
        assert!(
            back.values
                .iter()
                .zip(&w.values)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert!(decode_window(1, &[1, 2, 3]).is_none());
    }
}
