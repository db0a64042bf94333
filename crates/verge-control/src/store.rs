//! openraft storage (v2) on sled: [`LogStore`] (`RaftLogStorage`) and [`StateMachineStore`]
//! (`RaftStateMachine`), sharing one sled database in the control plane's directory.
//!
//! **Layout.** sled's default tree holds a format marker and the id of the node the directory
//! belongs to (a directory is never reused under another id: openraft ids must be stable). The
//! `log` tree maps a big-endian `u64` index to a bincode [`openraft::Entry`]. The `meta` tree holds
//! the vote, the committed and last purged log ids, the state machine ([`SmData`]) and the current
//! snapshot (meta and data together, so one is never stored without the other).
//!
//! **Durability.** A log append or truncation, a vote and a snapshot are fsynced before openraft is
//! told: appends report through openraft's `LogFlushed` callback only after the sync, votes and
//! snapshots before their call returns. sled 0.34.7's `flush` ends in `sync_file_range`, which does
//! not persist the log file's growth or the drive's cache, so a sync here is `flush` plus an fsync
//! of sled's log file and of any new blob file (as `verge-store` does). The committed log id and
//! the state machine are written without a sync: losing them to a crash only means openraft
//! re-applies committed entries from the durable log (or the member learns them again from the
//! leader), which is what openraft expects of an unsynced `save_committed`.
//!
//! **Damage.** Every value read back is decoded defensively; a value that does not decode is an
//! openraft `StorageError` naming what was being read, never a panic.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::panic;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use verge_proto::NodeId;

use crate::state::{ControlState, Response};
use crate::wire::{WireError, decode_body, encode_body};
use crate::{ControlNode, RaftId, TypeConfig};

/// The format marker this build writes and reads.
const FORMAT: &[u8] = b"verge-control/1";
const FORMAT_KEY: &[u8] = b"format";
const NODE_KEY: &[u8] = b"node";
const LOG_TREE: &[u8] = b"log";
const META_TREE: &[u8] = b"meta";
const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"purged";
const SM_KEY: &[u8] = b"sm";
const SNAPSHOT_KEY: &[u8] = b"snapshot";

/// The first byte of a snapshot's data: the layout of the [`SmData`] that follows.
const SNAPSHOT_FORMAT: u8 = 1;

/// sled's page cache; the control state is small.
const SLED_CACHE_BYTES: u64 = 8 * 1024 * 1024;

type Result<T> = std::result::Result<T, StorageError<RaftId>>;

/// Why the control store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the control-plane store at {}: {detail}", path.display())]
pub struct OpenError {
    /// The directory.
    pub path: PathBuf,
    /// What was wrong.
    pub detail: String,
}

/// The state machine as stored and as snapshotted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SmData {
    /// The last log entry applied.
    pub(crate) last_applied: Option<LogId<RaftId>>,
    /// The last membership applied.
    pub(crate) last_membership: StoredMembership<RaftId, ControlNode>,
    /// The operator-visible state.
    pub(crate) state: ControlState,
}

/// A snapshot as kept on disk.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, ControlNode>,
    data: Vec<u8>,
}

/// The sled database shared by the log and the state machine.
struct Disk {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    fsync: Mutex<Fsync>,
    /// Serialises snapshot writes: a snapshot build runs in its own task and must not overwrite a
    /// newer installed snapshot.
    snapshot_write: Mutex<()>,
    /// Dropped after every field above (fields drop in order), so its receivers learn that sled
    /// has released the directory: see [`LogStore::closed`].
    closed: watch::Sender<()>,
}

impl Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").finish_non_exhaustive()
    }
}

/// Completes sled's flush into an fsync: fsync works per file, from any descriptor.
struct Fsync {
    /// sled's log file.
    log: File,
    /// sled's directory of blob files (pages too big for its log).
    blobs: PathBuf,
    /// Blob files already synced; sled never rewrites one, only deletes it.
    synced: BTreeSet<OsString>,
}

impl Fsync {
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

impl Disk {
    /// Flushes sled and fsyncs its files (blocking).
    fn sync_blocking(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        let mut fsync = self
            .fsync
            .lock()
            .map_err(|_| io::Error::other("an earlier sync panicked"))?;
        fsync.sync()
    }

    /// [`Disk::sync_blocking`] off the async executor.
    async fn sync(self: &Arc<Self>) -> io::Result<()> {
        let disk = Arc::clone(self);
        tokio::task::spawn_blocking(move || disk.sync_blocking())
            .await
            .map_err(|e| io::Error::other(format!("sync task failed: {e}")))?
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> std::result::Result<Option<T>, String> {
        let what = String::from_utf8_lossy(key);
        match self.meta.get(key) {
            Err(e) => Err(format!("cannot read `{what}`: {e}")),
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => decode_body(&bytes)
                .map(Some)
                .map_err(|e| format!("stored `{what}` is damaged: {e}")),
        }
    }

    fn put<T: Serialize>(&self, key: &[u8], value: &T) -> std::result::Result<(), String> {
        let what = String::from_utf8_lossy(key);
        let bytes = encode_body(value).map_err(|e| format!("cannot encode `{what}`: {e}"))?;
        self.meta
            .insert(key, bytes)
            .map(|_| ())
            .map_err(|e| format!("cannot write `{what}`: {e}"))
    }

    fn read_snapshot(&self) -> std::result::Result<Option<StoredSnapshot>, String> {
        self.get(SNAPSHOT_KEY)
    }
}

/// An error type carrying a message, for openraft's `AnyError`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

fn any(detail: impl Into<String>) -> AnyError {
    AnyError::new(&Failure(detail.into()))
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_entry(bytes: &[u8]) -> std::result::Result<Entry<TypeConfig>, WireError> {
    decode_body(bytes)
}

fn key_bound(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(log_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(log_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Opens (creating if needed) the control store of node `me` in `dir`.
///
/// Refuses a directory that holds another node's control store, a store of another format, or
/// files that are not a control store.
pub fn open(
    dir: &Path,
    me: &NodeId,
) -> std::result::Result<(LogStore, StateMachineStore), OpenError> {
    let fail = |detail: String| OpenError {
        path: dir.to_owned(),
        detail,
    };
    let fresh = match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            return Err(fail(format!(
                "cannot list it ({e}); it must be a directory this user can read and write"
            )));
        }
    };
    if !fresh && !dir.join("db").is_file() {
        return Err(fail(
            "it holds files but no control store; point it at an empty or new directory".into(),
        ));
    }
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(SLED_CACHE_BYTES);
    // sled panics on some damaged files instead of returning an error.
    let db = panic::catch_unwind(panic::AssertUnwindSafe(|| config.open()))
        .map_err(|_| fail("sled panicked opening it; the files are damaged".into()))?
        .map_err(|e| fail(format!("sled cannot open it: {e}")))?;
    let sled_err = |what: &str, e: sled::Error| fail(format!("cannot {what}: {e}"));
    match db
        .get(FORMAT_KEY)
        .map_err(|e| sled_err("read the format marker", e))?
    {
        Some(v) if v == FORMAT => {}
        Some(v) => {
            return Err(fail(format!(
                "it is a control store of format {:?}, which this build does not read",
                String::from_utf8_lossy(&v)
            )));
        }
        None if fresh => {
            db.insert(FORMAT_KEY, FORMAT)
                .map_err(|e| sled_err("write the format marker", e))?;
            db.insert(NODE_KEY, me.as_str())
                .map_err(|e| sled_err("write the node id", e))?;
        }
        None => return Err(fail("it is a sled database but not a control store".into())),
    }
    match db
        .get(NODE_KEY)
        .map_err(|e| sled_err("read the node id", e))?
    {
        Some(v) if v == me.as_str().as_bytes() => {}
        Some(v) => {
            return Err(fail(format!(
                "it belongs to node `{}`, not `{me}`; a node's Raft id must never change, so give \
                 each node its own directory",
                String::from_utf8_lossy(&v)
            )));
        }
        None => return Err(fail("it has no node id".into())),
    }
    let log = db
        .open_tree(LOG_TREE)
        .map_err(|e| sled_err("open the log", e))?;
    let meta = db
        .open_tree(META_TREE)
        .map_err(|e| sled_err("open the metadata", e))?;
    let fsync = Fsync {
        log: File::open(dir.join("db"))
            .map_err(|e| fail(format!("cannot open sled's log file to sync it ({e})")))?,
        blobs: dir.join("blobs"),
        synced: BTreeSet::new(),
    };
    let disk = Arc::new(Disk {
        db,
        log,
        meta,
        fsync: Mutex::new(fsync),
        snapshot_write: Mutex::new(()),
        closed: watch::channel(()).0,
    });
    if fresh {
        disk.sync_blocking()
            .map_err(|e| fail(format!("cannot sync the new store ({e})")))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(format!("cannot sync the directory ({e})")))?;
    }
    let data: SmData = disk.get(SM_KEY).map_err(fail)?.unwrap_or_default();
    let (state_tx, _) = watch::channel(data.state.clone());
    Ok((
        LogStore {
            disk: Arc::clone(&disk),
        },
        StateMachineStore {
            disk,
            data,
            state_tx,
        },
    ))
}

/// The Raft log, vote and commit marker on sled. Cloning it gives another handle (openraft's log
/// reader) on the same log.
#[derive(Debug, Clone)]
pub struct LogStore {
    disk: Arc<Disk>,
}

impl LogStore {
    /// A receiver whose `changed()` fails once the store is closed: every handle on it (log,
    /// readers, state machine, snapshot builders) has been dropped and sled has released the
    /// directory, so it can be opened again.
    pub fn closed(&self) -> watch::Receiver<()> {
        self.disk.closed.subscribe()
    }

    #[allow(
        clippy::result_large_err,
        reason = "openraft's storage traits return its StorageError by value; helpers match them"
    )]
    fn last_purged(&self) -> Result<Option<LogId<RaftId>>> {
        self.disk
            .get(PURGED_KEY)
            .map_err(|e| StorageIOError::read_logs(any(e)).into())
    }

    async fn sync_or(&self, err: impl FnOnce(AnyError) -> StorageIOError<RaftId>) -> Result<()> {
        self.disk
            .sync()
            .await
            .map_err(|e| err(AnyError::new(&e)).into())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let bounds = (key_bound(range.start_bound()), key_bound(range.end_bound()));
        let mut out = Vec::new();
        for item in self.disk.log.range(bounds) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
            let index = key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or_default();
            let entry = decode_entry(&value).map_err(|e| {
                StorageIOError::read_log_at_index(index, any(format!("entry is damaged: {e}")))
            })?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id = self.last_purged()?;
        let last = self
            .disk
            .log
            .last()
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        let last_log_id = match last {
            Some((_, value)) => Some(
                decode_entry(&value)
                    .map_err(|e| {
                        StorageIOError::read_logs(any(format!("last entry is damaged: {e}")))
                    })?
                    .log_id,
            ),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> Result<()> {
        self.disk
            .put(VOTE_KEY, vote)
            .map_err(|e| StorageIOError::write_vote(any(e)))?;
        self.sync_or(StorageIOError::write_vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftId>>> {
        self.disk
            .get(VOTE_KEY)
            .map_err(|e| StorageIOError::read_vote(any(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftId>>) -> Result<()> {
        // Not synced: see the module docs.
        self.disk
            .put(COMMITTED_KEY, &committed)
            .map_err(|e| StorageIOError::write(any(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<RaftId>>> {
        Ok(self
            .disk
            .get::<Option<LogId<RaftId>>>(COMMITTED_KEY)
            .map_err(|e| StorageIOError::read(any(e)))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode_body(&entry).map_err(|e| {
                StorageIOError::write_log_entry(entry.log_id, any(format!("cannot encode: {e}")))
            })?;
            batch.insert(&log_key(entry.log_id.index), bytes);
        }
        self.disk
            .log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        // The entries are readable now; report them durable only once synced.
        match self.disk.sync().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(AnyError::new(&e));
                callback.log_io_completed(Err(e));
                Err(err.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for item in self.disk.log.range(log_key(log_id.index)..) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
            batch.remove(key);
        }
        self.disk
            .log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        self.sync_or(StorageIOError::write_logs).await
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> Result<()> {
        // The marker first: a crash between the two leaves entries below it, which are harmless.
        self.disk
            .put(PURGED_KEY, &log_id)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        let mut batch = sled::Batch::default();
        for item in self.disk.log.range(..=log_key(log_id.index)) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
            batch.remove(key);
        }
        self.disk
            .log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        self.sync_or(StorageIOError::write_logs).await
    }
}

/// The state machine on sled: applies committed entries to a [`ControlState`], publishes each
/// new state on a watch channel, and builds and installs snapshots.
#[derive(Debug)]
pub struct StateMachineStore {
    disk: Arc<Disk>,
    data: SmData,
    state_tx: watch::Sender<ControlState>,
}

impl StateMachineStore {
    /// A receiver that always holds the last applied state.
    pub fn subscribe(&self) -> watch::Receiver<ControlState> {
        self.state_tx.subscribe()
    }

    #[allow(
        clippy::result_large_err,
        reason = "openraft's storage traits return its StorageError by value; helpers match them"
    )]
    fn persist(&self) -> Result<()> {
        // Not synced: see the module docs.
        self.disk
            .put(SM_KEY, &self.data)
            .map_err(|e| StorageIOError::write_state_machine(any(e)).into())
    }

    fn publish(&self) {
        self.state_tx.send_replace(self.data.state.clone());
    }
}

/// Members of a membership by verge id (a member without a name is left out).
fn member_names(
    membership: &openraft::Membership<RaftId, ControlNode>,
    ids: impl Iterator<Item = RaftId>,
) -> BTreeSet<NodeId> {
    ids.filter_map(|id| membership.get_node(&id).and_then(|n| n.id.clone()))
        .collect()
}

fn snapshot_bytes(data: &SmData) -> std::result::Result<Vec<u8>, WireError> {
    let mut out = vec![SNAPSHOT_FORMAT];
    out.extend(encode_body(data)?);
    Ok(out)
}

fn snapshot_data(bytes: &[u8]) -> std::result::Result<SmData, String> {
    match bytes.split_first() {
        Some((&SNAPSHOT_FORMAT, body)) => decode_body(body).map_err(|e| e.to_string()),
        Some((other, _)) => Err(format!(
            "snapshot format {other}, this build reads format {SNAPSHOT_FORMAT}"
        )),
        None => Err("empty snapshot".into()),
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<RaftId>>, StoredMembership<RaftId, ControlNode>)> {
        Ok((self.data.last_applied, self.data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.data.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Noop,
                EntryPayload::Normal(cmd) => {
                    self.data.state.apply(cmd, entry.log_id.leader_id.term)
                }
                EntryPayload::Membership(m) => {
                    self.data.last_membership =
                        StoredMembership::new(Some(entry.log_id), m.clone());
                    let voters = member_names(m, m.voter_ids());
                    let learners = member_names(m, m.learner_ids());
                    self.data.state.set_members(voters, learners)
                }
            };
            out.push(response);
        }
        self.persist()?;
        self.publish();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            disk: Arc::clone(&self.disk),
            data: self.data.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, ControlNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let bytes = snapshot.into_inner();
        let mut data = snapshot_data(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                any(format!("cannot install: {e}")),
            )
        })?;
        // The meta is authoritative for what the snapshot covers.
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        {
            let _guard = self.disk.snapshot_write.lock().map_err(|_| {
                StorageIOError::write_snapshot(
                    Some(meta.signature()),
                    any("snapshot lock poisoned"),
                )
            })?;
            self.disk
                .put(SNAPSHOT_KEY, &stored)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
        }
        self.data = data;
        self.persist()?;
        self.disk.sync().await.map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let stored = self
            .disk
            .read_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, any(e)))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Builds a snapshot of the state machine as it was when the builder was made.
#[derive(Debug)]
pub struct SnapshotBuilder {
    disk: Arc<Disk>,
    data: SmData,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let bytes = snapshot_bytes(&self.data).map_err(|e| {
            StorageIOError::write_snapshot(None, any(format!("cannot encode: {e}")))
        })?;
        let unique = self
            .disk
            .db
            .generate_id()
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        let snapshot_id = match self.data.last_applied {
            Some(l) => format!("{}-{}-{unique}", l.leader_id.term, l.index),
            None => format!("none-{unique}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.last_membership.clone(),
            snapshot_id,
        };
        {
            let _guard = self.disk.snapshot_write.lock().map_err(|_| {
                StorageIOError::write_snapshot(
                    Some(meta.signature()),
                    any("snapshot lock poisoned"),
                )
            })?;
            let newer_exists = self
                .disk
                .read_snapshot()
                .map_err(|e| StorageIOError::read_snapshot(None, any(e)))?
                .is_some_and(|s| s.meta.last_log_id > meta.last_log_id);
            if !newer_exists {
                let stored = StoredSnapshot {
                    meta: meta.clone(),
                    data: bytes.clone(),
                };
                self.disk
                    .put(SNAPSHOT_KEY, &stored)
                    .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
            }
        }
        self.disk.sync().await.map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}
