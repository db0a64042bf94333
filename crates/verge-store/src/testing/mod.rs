//! Test support shared with other crates: the conformance suite every [`Store`](crate::Store)
//! must pass and realistic series for compression and ingest figures. Not part of the stable API.

pub mod conformance;
pub mod series;

/// Opens the sled store at `path` again in the same process, waiting up to 10 s for the lock:
/// sled's background flusher thread holds the database, and its file lock, a moment past the
/// store's drop. A new process never sees that; a test reopening in-process can.
///
/// # Panics
///
/// If the store cannot be opened by then.
pub fn reopen_sled(path: &std::path::Path) -> crate::SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match crate::SledStore::open(path) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen {}: {e}", path.display()),
        }
    }
}
