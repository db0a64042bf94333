//! The admin endpoint accepts admin certificates only.

use std::time::Duration;

use verge_tests::{TEST_TIMEOUT, cluster, run_verge};

const EXIT_UNREACHABLE: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_refuses_node_certificates_and_anonymous_clients() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = cluster(2);
        c.start_all().expect("start");
        c.wait_for_mesh(&[0, 1], Duration::from_secs(20))
            .await
            .expect("mesh forms");
        let endpoint = c.nodes[0].listen.to_string();
        let ca = c.ca_dir.join("ca.pem");
        let ca = ca.to_str().expect("utf-8");
        let certs = c.root().join("certs");
        let node_cert = certs.join("node-b2.pem");
        let node_key = certs.join("node-b2.key");
        let t = Duration::from_secs(20);

        let out = run_verge(
            &[
                "ctl",
                "--endpoint",
                &endpoint,
                "--ca",
                ca,
                "--cert",
                node_cert.to_str().expect("utf-8"),
                "--key",
                node_key.to_str().expect("utf-8"),
                "status",
            ],
            t,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_UNREACHABLE), "{err}");
        assert!(err.contains("admin certificate"), "{err}");

        let out = run_verge(&["ctl", "--endpoint", &endpoint, "--ca", ca, "status"], t);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_UNREACHABLE), "{err}");
        assert!(err.contains("client certificate"), "{err}");

        let out = run_verge(
            &[
                "ctl",
                "--endpoint",
                &endpoint,
                "--ca",
                ca,
                "--cert",
                c.admin_cert.0.to_str().expect("utf-8"),
                "--key",
                c.admin_cert.1.to_str().expect("utf-8"),
                "status",
                "--json",
            ],
            t,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(status["id"], "b1");
        assert_eq!(status["peers_alive"], 1);

        // Fault injection is refused unless the node's config enables it.
        let out = run_verge(
            &[
                "ctl",
                "--endpoint",
                &endpoint,
                "--ca",
                ca,
                "--cert",
                c.admin_cert.0.to_str().expect("utf-8"),
                "--key",
                c.admin_cert.1.to_str().expect("utf-8"),
                "fault",
                "--partition",
                "b2",
            ],
            t,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("fault injection is off"), "{err}");

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
