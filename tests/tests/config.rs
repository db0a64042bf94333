//! A node refuses a broken config with one message naming the file and the culprit.

use std::path::Path;
use std::time::Duration;

use verge_tests::{cluster, run_verge};

fn node_with(config: &Path) -> (i32, String) {
    let out = run_verge(
        &["node", "--config", config.to_str().expect("utf-8")],
        Duration::from_secs(20),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_exit_non_zero_and_name_the_culprit() {
    let c = cluster(2);
    let good = std::fs::read_to_string(&c.nodes[0].config).expect("config");
    let dir = c.root();
    let port = c.nodes[0].listen.port().to_string();

    let (code, err) = node_with(&dir.join("nope.toml"));
    assert_ne!(code, 0);
    assert!(err.contains("nope.toml"), "{err}");

    let cases = [
        (
            "unknown-key",
            good.replace("data_dir", "turbo = true\ndata_dir"),
            "turbo",
        ),
        (
            "bad-address",
            good.replace(&format!("127.0.0.1:{port}\""), "127.0.0.1:99999\""),
            "listen",
        ),
        (
            "missing-cert",
            good.replace("certs/node-b1.pem", "certs/gone.pem"),
            "tls.cert",
        ),
        (
            "someone-elses-cert",
            good.replace("certs/node-b1.pem", "certs/node-b2.pem")
                .replace("certs/node-b1.key", "certs/node-b2.key"),
            "node b2",
        ),
        ("not-toml", "id = [".to_owned(), "not-toml.toml"),
    ];
    for (name, text, culprit) in cases {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        let (code, err) = node_with(&path);
        assert_ne!(code, 0, "{name} started");
        assert!(err.contains(culprit), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}.toml")) || name == "someone-elses-cert",
            "{name}: {err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{name}: {err}"
        );
    }
}
