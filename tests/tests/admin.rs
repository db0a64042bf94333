//! The admin endpoint accepts admin certificates only.

use std::time::Duration;

use verge_tests::{TEST_TIMEOUT, cluster, run_verge, start_mesh};

const EXIT_UNREACHABLE: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_refuses_node_certificates_and_anonymous_clients() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = cluster(2);
        start_mesh(&mut c).await;
        let endpoint = c.nodes[0].listen.to_string();
        let ca = c.ca_dir.join("ca.pem");
        let certs = c.root().join("certs");
        let node = (certs.join("node-b2.pem"), certs.join("node-b2.key"));
        let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
        // `verge ctl` against b1, presenting `auth` (certificate, key) if given.
        let ctl = |auth: Option<&(std::path::PathBuf, std::path::PathBuf)>, rest: &[&str]| {
            let mut args = vec!["ctl".to_owned(), "--endpoint".into(), endpoint.clone()];
            args.extend(["--ca".to_owned(), path(&ca)]);
            if let Some((cert, key)) = auth {
                args.extend(["--cert".to_owned(), path(cert), "--key".into(), path(key)]);
            }
            args.extend(rest.iter().map(|s| (*s).to_owned()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_verge(&args, Duration::from_secs(20))
        };

        let out = ctl(Some(&node), &["status"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_UNREACHABLE), "{err}");
        assert!(err.contains("admin certificate"), "{err}");

        let out = ctl(None, &["status"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_UNREACHABLE), "{err}");
        assert!(err.contains("client certificate"), "{err}");

        let out = ctl(Some(&c.admin_cert), &["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(status["id"], "b1");
        assert_eq!(status["peers_alive"], 1);

        // Fault injection is refused unless the node's config enables it.
        let out = ctl(Some(&c.admin_cert), &["fault", "--partition", "b2"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("fault injection is off"), "{err}");

        // So are the other faults, through the admin client.
        let admin = c.admin();
        for err in [
            admin
                .set_slowdown(c.nodes[0].listen, 10.0)
                .await
                .map(|_| ())
                .expect_err("slowdown refused"),
            admin
                .fill_disk(c.nodes[0].listen)
                .await
                .map(|_| ())
                .expect_err("full disk refused"),
        ] {
            assert!(err.to_string().contains("[faults] enabled"), "{err}");
        }

        // Both refusals are in the node's log and metrics.
        let log = c.log(0);
        assert!(log.contains("admin certificate"), "{log}");
        let text = verge_tests::http_get(c.nodes[0].metrics, "/metrics").expect("metrics");
        assert!(
            verge_tests::metric(&text, "verge_connections_refused_total{kind=\"role\"}") >= 1.0,
            "{text}"
        );
        assert!(
            verge_tests::metric_sum(&text, "verge_admin_requests_total") >= 1.0,
            "{text}"
        );
    })
    .await
    .expect("bounded");
}
