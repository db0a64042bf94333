//! Every node config shipped in `configs/` parses and validates, so the examples never rot.

use std::path::Path;

use verge_node::NodeConfig;

#[test]
fn every_shipped_node_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/ exists") {
        let path = entry.expect("entry").path();
        let is_node = path.extension().is_some_and(|e| e == "toml")
            && path.file_name().is_some_and(|n| n != "ctl.toml");
        if !is_node {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        if let Err(e) = NodeConfig::parse_unchecked(&path, &text) {
            panic!("{e}");
        }
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} configs found in {}",
        dir.display()
    );
}
