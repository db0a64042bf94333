//! The fault layer's send delay, between two real endpoints on 127.0.0.1: a request/response
//! round trip takes at least the delay, and works as before once the delay is off.
//!
//! Only lower bounds on time are asserted: a busy machine may make anything slower.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use verge_net::{Accepted, FramedRecv, FramedSend, Net, NetConfig, authenticate, request};
use verge_pki::{ClusterCa, NodeTls};
use verge_proto::NodeId;

const DELAY_MS: u32 = 100;

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Two endpoints `a` and `b` of one cluster, the certificates in `dir`.
fn pair(dir: &std::path::Path) -> (Net, Net) {
    let ca = ClusterCa::generate("delay").expect("ca");
    let ca_files = ca.write(dir).expect("write ca");
    let node = |id: &str| {
        let id: NodeId = id.parse().expect("id");
        let (cert, key) = ca
            .issue_node(&id)
            .expect("issue")
            .write(dir)
            .expect("write");
        NodeTls::load(&ca_files.cert, &cert, &key).expect("tls")
    };
    let a = Net::bind(localhost(), &node("a"), NetConfig::default()).expect("bind a");
    let b = Net::bind(localhost(), &node("b"), NetConfig::default()).expect("bind b");
    (a, b)
}

/// Serves `b`: answers every request on every peer connection with the same text, uppercased.
fn serve(b: Net) {
    tokio::spawn(async move {
        while let Some(incoming) = b.accept().await {
            let Ok(Accepted::Peer { conn, .. }) =
                authenticate(incoming, Duration::from_secs(5)).await
            else {
                continue;
            };
            tokio::spawn(async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let mut recv = FramedRecv::new(recv, 1 << 16);
                    let mut send = FramedSend::new(send, 1 << 16);
                    if let Ok(Some(text)) = recv.recv::<String>().await {
                        let _ = send.send(&text.to_uppercase()).await;
                        send.finish();
                    }
                }
            });
        }
    });
}

/// One request/response round trip on `conn`, and how long it took.
async fn round_trip(conn: &quinn::Connection, text: &str) -> Duration {
    let started = Instant::now();
    let answer: String = request(conn, &text.to_owned(), 1 << 16)
        .await
        .expect("an answer");
    assert_eq!(answer, text.to_uppercase());
    started.elapsed()
}

#[tokio::test]
async fn a_send_delay_holds_every_round_trip_and_turns_off() {
    let dir = tempfile::tempdir().expect("dir");
    let (a, b) = pair(dir.path());
    let (b_id, b_addr) = (b.id().clone(), b.local_addr().expect("addr"));
    serve(b.clone());
    let conn = a.connect_peer(&b_id, b_addr).await.expect("connect");

    // No delay: it just works.
    round_trip(&conn, "before").await;
    assert_eq!(a.faults().delay_ms(), 0);

    // Delay on `a` only: each request leaves `a` at least DELAY_MS late.
    a.faults().set_delay_ms(DELAY_MS);
    assert_eq!(a.faults().delay_ms(), DELAY_MS);
    for i in 0..3 {
        let took = round_trip(&conn, &format!("delayed {i}")).await;
        assert!(
            took >= Duration::from_millis(u64::from(DELAY_MS)),
            "round trip {i} took {took:?} with a {DELAY_MS} ms delay"
        );
    }

    // Healed: still the same connection, still answering.
    a.faults().heal();
    assert_eq!(a.faults().delay_ms(), 0);
    round_trip(&conn, "after").await;
    let out = a
        .faults()
        .stats()
        .datagrams_out
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(out > 0);

    a.shutdown(Duration::from_millis(200)).await;
    b.shutdown(Duration::from_millis(200)).await;
}

#[test]
fn a_delay_is_capped() {
    let layer = verge_net::FaultLayer::default();
    layer.set_delay_ms(u32::MAX);
    assert_eq!(layer.delay_ms(), verge_net::DELAY_MS_MAX);
}
