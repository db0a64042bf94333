//! The sled store on disk: bad data dirs, damaged blocks, compaction.

use std::fs;
use std::path::Path;

use verge_proto::{Record, StreamId};
use verge_store::testing::series;
use verge_store::{RetentionPolicy, SledStore, Store, StoreError};

fn stream(text: &str) -> StreamId {
    text.parse().expect("a valid stream id")
}

/// Opening `dir` must fail with an `Open` error that names it; returns the message.
fn open_fails(dir: &Path) -> String {
    match SledStore::open(dir) {
        Err(e @ StoreError::Open { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&dir.display().to_string()),
                "the error names the path: {message}"
            );
            message
        }
        Err(other) => panic!(
            "opening {} must be an Open error, got {other}",
            dir.display()
        ),
        Ok(_) => panic!("opening {} must fail", dir.display()),
    }
}

/// Deterministic junk.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_directory_of_garbage_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (i, name) in ["db", "conf", "snap.0000000000000042", "notes.txt"]
        .iter()
        .enumerate()
    {
        fs::write(dir.path().join(name), garbage(70_000, i as u64)).expect("write");
    }
    let message = open_fails(dir.path());
    println!("garbage dir: {message}");
}

#[test]
fn a_directory_of_other_files_is_not_written_into() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("notes.txt"), "not a store").expect("write");
    let message = open_fails(dir.path());
    assert!(message.contains("no Verge store"), "{message}");
    let left: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["notes.txt"], "nothing was written into it");
}

#[test]
fn a_file_where_the_directory_should_be_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("store");
    fs::write(&file, "x").expect("write");
    let message = open_fails(&file);
    println!("file as dir: {message}");
}

#[test]
fn an_unreadable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("store");
    drop(SledStore::open(&store_dir).expect("create"));
    fs::set_permissions(&store_dir, fs::Permissions::from_mode(0o000)).expect("chmod");
    if fs::read_dir(&store_dir).is_ok() {
        // Root reads anything; the permission check cannot fail here.
        println!("skipped: running as root, a chmod 000 directory is still readable");
    } else {
        let message = open_fails(&store_dir);
        println!("unreadable dir: {message}");
    }
    fs::set_permissions(&store_dir, fs::Permissions::from_mode(0o755)).expect("chmod back");
}

#[test]
fn a_store_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _first = SledStore::open(dir.path()).expect("open");
    let message = open_fails(dir.path());
    println!("in use: {message}");
}

/// Writes `blocks` full blocks of a 2-column stream, one flush each, and closes the store.
fn write_blocks(dir: &Path, id: &StreamId, blocks: usize) -> Vec<Record> {
    let records: Vec<Record> = (0..blocks * 1024)
        .map(|i| Record {
            ts_ms: 1000 * i as i64,
            values: vec![i as f64, 0.5],
        })
        .collect();
    let store = SledStore::open(dir).expect("open");
    for (n, chunk) in records.chunks(1024).enumerate() {
        store
            .append(id, 1 + 1024 * n as u64, chunk)
            .expect("append");
        store.flush().expect("flush");
    }
    records
}

/// Changes the stored value under `key` with sled directly, as a torn write would.
fn damage(dir: &Path, tree: &str, key: &[u8], change: impl FnOnce(&mut Vec<u8>)) {
    let db = open_when_released(dir);
    let tree = db.open_tree(tree).expect("tree");
    let mut value = tree.get(key).expect("get").expect("present").to_vec();
    change(&mut value);
    tree.insert(key, value).expect("insert");
    db.flush().expect("flush");
}

/// Opens `dir` with sled directly. A store dropped a moment ago may still hold sled's file lock
/// while its background flusher winds down (seen on a loaded CI machine), so this retries for a
/// bounded time before giving up.
fn open_when_released(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                println!("sled still locked, retrying: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("open sled: {e}"),
        }
    }
}

fn block_key(id: &StreamId, seq: u64) -> Vec<u8> {
    let mut key = format!("{id}\0").into_bytes();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

#[test]
fn a_damaged_block_is_an_error_for_its_records_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = stream("b1/raw/loop-1");
    let records = write_blocks(dir.path(), &id, 5);
    damage(dir.path(), "blocks", &block_key(&id, 2049), |v| {
        v[40] ^= 0x04
    });

    let store = SledStore::open(dir.path()).expect("first and last blocks are intact");
    let read = store
        .read(&id, 1, 1024, usize::MAX)
        .expect("an intact block");
    assert!(read.iter().map(|(_, r)| r).eq(&records[..1024]));
    match store.read(&id, 2000, 2100, usize::MAX) {
        Err(e @ StoreError::Corrupt { seq: 2049, .. }) => println!("damaged block: {e}"),
        other => panic!("reading a damaged block must say which, got {other:?}"),
    }
    let read = store
        .read(&id, 3073, u64::MAX, usize::MAX)
        .expect("blocks after it");
    assert_eq!(read.len(), 2048);

    // Retention drops what it can and reports where it stopped.
    let policy = RetentionPolicy {
        raw_ms: Some(0),
        ..RetentionPolicy::default()
    };
    let report = store
        .enforce(&policy, i64::MAX)
        .expect("enforce carries on");
    assert_eq!(report.dropped(id.kind).by_age, 2048);
    assert!(matches!(
        report.damaged[..],
        [StoreError::Corrupt { seq: 2049, .. }]
    ));
}

#[test]
fn a_damaged_last_block_or_metadata_refuses_to_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = stream("b1/raw/loop-1");
    write_blocks(dir.path(), &id, 3);
    damage(dir.path(), "blocks", &block_key(&id, 2049), |v| {
        v.truncate(20)
    });
    let message = open_fails(dir.path());
    assert!(
        message.contains("b1/raw/loop-1") && message.contains("2049"),
        "{message}"
    );
    println!("damaged last block: {message}");

    let dir = tempfile::tempdir().expect("temp dir");
    write_blocks(dir.path(), &id, 1);
    damage(dir.path(), "streams", format!("{id}\0").as_bytes(), |v| {
        v[0] = 9
    });
    println!("damaged metadata: {}", open_fails(dir.path()));
}

#[test]
fn damaged_sled_files_never_panic() {
    let id = stream("b1/raw/loop-1");
    for (case, seed) in [("overwritten", 1_u64), ("truncated", 2), ("zeroed", 3)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let records = write_blocks(dir.path(), &id, 8);
        let db = dir.path().join("db");
        let mut bytes = fs::read(&db).expect("read db");
        let half = bytes.len() / 2;
        match case {
            "overwritten" => {
                let junk = garbage(bytes.len() - half, seed);
                bytes[half..].copy_from_slice(&junk);
            }
            "truncated" => bytes.truncate(half),
            _ => bytes[half..].fill(0),
        }
        fs::write(&db, bytes).expect("write db");
        // Either a clean refusal, or a store whose every answer is true or a clean error.
        match SledStore::open(dir.path()) {
            Err(e) => println!("{case} db file: {e}"),
            Ok(store) => {
                let head = store.head(&id);
                match store.read(&id, 1, u64::MAX, usize::MAX) {
                    Ok(read) => {
                        assert!(read.iter().map(|(_, r)| r).eq(&records[..read.len()]));
                        println!(
                            "{case} db file: opened with {} of {head} records",
                            read.len()
                        );
                    }
                    Err(e) => println!("{case} db file: opened, reads fail: {e}"),
                }
            }
        }
    }
}

#[test]
fn small_flushes_are_compacted_to_under_two_bytes_per_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("open");
    let streams: Vec<StreamId> = (0..4)
        .map(|i| stream(&format!("b1/raw/lane-{i}")))
        .collect();
    let lanes: Vec<Vec<Record>> = (0..4).map(|i| series::intersection_lane(5000, i)).collect();
    // 16 records per stream per flush: small blocks that compaction must merge.
    for from in (0..5000).step_by(16) {
        for (id, lane) in streams.iter().zip(&lanes) {
            let to = (from + 16).min(5000);
            store
                .append(id, from as u64 + 1, &lane[from..to])
                .expect("append");
        }
        store.flush().expect("flush");
    }
    let bytes: u64 = store.streams().iter().map(|s| s.bytes).sum();
    let values = 4 * 5000 * 4;
    let per_value = bytes as f64 / values as f64;
    println!(
        "sled store: 4 lanes x 5000 records x 4 columns after flushes of 16: {bytes} bytes of \
         blocks, {per_value:.3} bytes/value; sled's files: {} bytes",
        store.disk_bytes().expect("size")
    );
    assert!(per_value < 2.0, "{per_value:.3} bytes/value");
    for (id, lane) in streams.iter().zip(&lanes) {
        let read = store.read(id, 1, u64::MAX, usize::MAX).expect("read");
        assert!(read.iter().map(|(_, r)| r).eq(lane.iter()));
    }
    drop(store);

    // Four full blocks and a tail of at most TAIL_BLOCKS_MAX small ones per stream.
    let db = open_when_released(dir.path());
    let blocks = db.open_tree("blocks").expect("tree");
    for id in &streams {
        let count = blocks.scan_prefix(format!("{id}\0")).count();
        assert!(
            (5..=4 + verge_store::sled_store::TAIL_BLOCKS_MAX).contains(&count),
            "{count} blocks"
        );
    }
}

#[test]
fn wide_incompressible_blocks_survive_a_reopen() {
    // 64 columns of noise make blocks of about half a megabyte, which sled writes as blob files
    // outside its log: the store syncs those too.
    let dir = tempfile::tempdir().expect("temp dir");
    let id = stream("b1/results/wide");
    let noise = garbage(1500 * 64 * 8, 9);
    let records: Vec<Record> = noise
        .chunks(64 * 8)
        .enumerate()
        .map(|(i, row)| Record {
            ts_ms: i as i64,
            values: row
                .chunks(8)
                .map(|b| f64::from_bits(u64::from_le_bytes(b.try_into().expect("8 bytes"))))
                .collect(),
        })
        .collect();
    {
        let store = SledStore::open(dir.path()).expect("open");
        store.append(&id, 1, &records).expect("append");
        store.flush().expect("flush");
    }
    let blobs = fs::read_dir(dir.path().join("blobs")).map_or(0, |d| d.count());
    println!("wide blocks: {blobs} sled blob files");
    let store = verge_store::testing::reopen_sled(dir.path());
    let read = store.read(&id, 1, u64::MAX, usize::MAX).expect("read");
    assert_eq!(read.len(), records.len());
    for ((_, got), want) in read.iter().zip(&records) {
        let bits = |r: &Record| r.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!((got.ts_ms, bits(got)), (want.ts_ms, bits(want)));
    }
}

/// A flush syncs outside the store's lock, so another thread keeps appending (and resetting)
/// while it runs: every flush leaves the durable head at or below the head, never raises a reset
/// stream to a head it had before the reset, and a final flush makes everything durable and
/// readable in order.
#[test]
fn appends_and_resets_during_flushes_stay_consistent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = std::sync::Arc::new(SledStore::open(dir.path()).expect("open"));
    let a = stream("n1/raw/a");
    let b = stream("n1/raw/b");
    let records = series::intersection_lane(4_000, 7);
    let writer = {
        let store = store.clone();
        let (a, b, records) = (a.clone(), b.clone(), records.clone());
        std::thread::spawn(move || {
            for (i, chunk) in records.chunks(10).enumerate() {
                let first = (i * 10 + 1) as u64;
                store.append(&a, first, chunk).expect("append a");
                if i == 200 {
                    // Restart b further on, while flushes come and go.
                    store.reset(&b, 1_000_000).expect("reset b");
                }
                let b_first = store.head(&b) + 1;
                store.append(&b, b_first, &chunk[..1]).expect("append b");
            }
        })
    };
    let mut flushes = 0;
    while !writer.is_finished() {
        store.flush().expect("flush");
        flushes += 1;
        for s in [&a, &b] {
            assert!(
                store.durable_head(s) <= store.head(s),
                "{s}: durable ≤ head"
            );
        }
    }
    writer.join().expect("writer");
    store.flush().expect("final flush");
    assert_eq!(store.durable_head(&a), 4_000);
    assert_eq!(store.head(&b), 1_000_000 - 1 + 200);
    assert_eq!(store.durable_head(&b), store.head(&b));
    let back = store.read(&a, 1, 4_000, 10_000).expect("read a");
    assert_eq!(back.len(), 4_000);
    for (i, (seq, r)) in back.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(r, &records[i]);
    }
    println!("{flushes} flushes while appending");
}
