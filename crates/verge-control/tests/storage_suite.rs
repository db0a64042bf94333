//! openraft's own storage conformance suite, run against the sled log and state machine.

use openraft::StorageError;
use openraft::StorageIOError;
use openraft::anyerror::AnyError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use verge_control::store::{self, LogStore, StateMachineStore};
use verge_control::{RaftId, TypeConfig};
use verge_proto::NodeId;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<RaftId>> {
        let io = |e: &dyn std::error::Error| StorageIOError::write(AnyError::error(e.to_string()));
        let dir = tempfile::tempdir().map_err(|e| io(&e))?;
        let me = NodeId::new("suite").map_err(|e| io(&e))?;
        let (log, sm) = store::open(dir.path(), &me).map_err(|e| io(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_storage_passes_the_openraft_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("sled storage fails openraft's suite: {e}");
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn entry(term: u64, index: u64) -> openraft::Entry<TypeConfig> {
    openraft::testing::blank_ent::<TypeConfig>(term, 1, index)
}

/// Drops both halves of a store and waits until sled has released the directory.
async fn close(log: LogStore, sm: StateMachineStore) {
    let mut closed = log.closed();
    drop(log);
    drop(sm);
    while closed.changed().await.is_ok() {}
}

#[test]
fn log_vote_and_commit_survive_a_reopen() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::{RaftLogReader, Vote};
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let me = NodeId::new("b1").expect("id");
        let (mut log, sm) = store::open(dir.path(), &me).expect("opens");
        log.blocking_append((1..=5).map(|i| entry(1, i)))
            .await
            .expect("appends");
        log.save_vote(&Vote::new_committed(1, 1))
            .await
            .expect("vote");
        log.save_committed(Some(openraft::testing::log_id(1, 1, 4)))
            .await
            .expect("committed");
        log.truncate(openraft::testing::log_id(1, 1, 5))
            .await
            .expect("truncates");
        close(log, sm).await;

        let (mut log, sm) = store::open(dir.path(), &me).expect("reopens");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
        assert_eq!(
            log.read_vote().await.expect("vote"),
            Some(Vote::new_committed(1, 1))
        );
        assert_eq!(
            log.read_committed()
                .await
                .expect("committed")
                .map(|l| l.index),
            Some(4)
        );
        assert_eq!(log.try_get_log_entries(2..4).await.expect("reads").len(), 2);
        close(log, sm).await;
    });
}

#[test]
fn a_damaged_entry_is_an_error_not_a_panic() {
    use openraft::RaftLogReader;
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let me = NodeId::new("b1").expect("id");
        let (mut log, sm) = store::open(dir.path(), &me).expect("opens");
        log.blocking_append((1..=3).map(|i| entry(1, i)))
            .await
            .expect("appends");
        close(log, sm).await;

        {
            let db = sled::open(dir.path()).expect("raw sled");
            let tree = db.open_tree("log").expect("log tree");
            tree.insert(3u64.to_be_bytes(), &b"\xff\xff\xff"[..])
                .expect("damage");
            db.flush().expect("flush");
        }

        let (mut log, sm) = store::open(dir.path(), &me).expect("reopens");
        let err = log.try_get_log_entries(1..=3).await.expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(log.get_log_state().await.is_err());
        close(log, sm).await;
    });
}
