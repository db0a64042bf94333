//! Both stores pass the conformance suite; the sled store also keeps what it flushed across a
//! reopen.

use verge_store::testing::conformance;
use verge_store::{MemStore, SledStore, Store};

#[test]
fn mem_store_conforms() {
    for (name, case) in conformance::ALL {
        println!("conformance: {name}");
        case(&MemStore::new());
    }
}

#[test]
fn sled_store_conforms() {
    for (name, case) in conformance::ALL {
        println!("conformance: {name}");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path()).expect("open");
        case(&store);
    }
}

#[test]
fn sled_store_keeps_what_it_flushed_across_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    conformance::reopen_keeps_what_was_flushed(&mut || {
        Box::new(verge_store::testing::reopen_sled(dir.path())) as Box<dyn Store>
    });
}
