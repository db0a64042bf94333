//! The node's quinn endpoint and the admin CLI's connection to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, Incoming, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use verge_pki::{ClientAuth, Identity, NodeTls, identity_of, node_dns_name};
use verge_proto::admin::ALPN_ADMIN;
use verge_proto::peer::ALPN_PEER;
use verge_proto::{FRAME_BYTES_MAX_DEFAULT, NodeId};

use crate::{AcceptError, FaultLayer, NetError};

/// Transport limits, set deliberately rather than inherited from quinn's defaults (100 streams
/// each way, no keep-alive, 30 s idle timeout).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The largest frame accepted or sent, in bytes (length prefix excluded).
    pub frame_bytes_max: usize,
    /// Concurrent bidirectional streams a peer may open on one connection.
    pub streams_bidi_max: u32,
    /// Concurrent unidirectional streams a peer may open on one connection.
    pub streams_uni_max: u32,
    /// Interval of QUIC keep-alive packets, so an idle but healthy connection is never timed out.
    pub keep_alive: Duration,
    /// A connection that hears nothing for this long is dead. Several keep-alives fit inside it,
    /// and it bounds how long a SIGKILLed peer's connection lingers.
    pub idle_timeout: Duration,
    /// The longest a handshake may take before the connection is dropped.
    pub handshake_timeout: Duration,
    /// Flow-control window of one stream, in bytes.
    pub stream_window_bytes: u32,
    /// Flow-control window of one connection, in bytes.
    pub connection_window_bytes: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            streams_bidi_max: 256,
            streams_uni_max: 256,
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(2),
            stream_window_bytes: 8 * 1024 * 1024,
            connection_window_bytes: 32 * 1024 * 1024,
        }
    }
}

/// The quinn transport configuration for `cfg`; the benchmark's raw-quinn baseline uses it too,
/// so that the two differ only in Verge's own framing.
pub fn transport_config(cfg: &NetConfig) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(cfg.streams_bidi_max));
    t.max_concurrent_uni_streams(VarInt::from_u32(cfg.streams_uni_max));
    t.keep_alive_interval(Some(cfg.keep_alive));
    // An idle timeout below 2^62 ms always converts; fall back to quinn's default otherwise.
    t.max_idle_timeout(IdleTimeout::try_from(cfg.idle_timeout).ok());
    t.stream_receive_window(VarInt::from_u32(cfg.stream_window_bytes));
    t.receive_window(VarInt::from_u32(cfg.connection_window_bytes));
    t.send_window(u64::from(cfg.connection_window_bytes));
    t
}

/// Application close codes a node uses, so the other side can say why it was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly shutdown.
    Shutdown = 0,
    /// The peer sent a bad frame.
    BadFrame = 1,
    /// The certificate's identity does not fit the ALPN (admin vs node).
    WrongRole = 2,
    /// The node id is not among this node's configured peers.
    UnknownPeer = 3,
    /// The connection was replaced by a newer one to the same peer.
    Replaced = 4,
}

impl CloseCode {
    /// As a QUIC varint.
    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }
}

/// A node's endpoint: it listens on both ALPNs and dials its peers.
#[derive(Debug, Clone)]
pub struct Net {
    endpoint: Endpoint,
    peer_client: quinn::ClientConfig,
    cfg: NetConfig,
    id: NodeId,
    faults: FaultLayer,
}

fn quic_err(e: impl std::fmt::Display) -> NetError {
    NetError::QuicTls(e.to_string())
}

impl Net {
    /// Binds `listen` with the node's TLS material. Must be called inside a tokio runtime.
    pub fn bind(listen: SocketAddr, tls: &NodeTls, cfg: NetConfig) -> Result<Self, NetError> {
        let transport = Arc::new(transport_config(&cfg));
        let server_tls =
            QuicServerConfig::try_from(verge_pki::server_config(tls)?).map_err(quic_err)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport.clone());
        let client_tls =
            QuicClientConfig::try_from(verge_pki::peer_client_config(tls)?).map_err(quic_err)?;
        let mut peer_client = quinn::ClientConfig::new(Arc::new(client_tls));
        peer_client.transport_config(transport);
        let bind_err = |source| NetError::Bind {
            addr: listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(listen).map_err(bind_err)?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let faults = FaultLayer::default();
        let socket = faults.wrap(runtime.wrap_udp_socket(socket).map_err(bind_err)?);
        let endpoint = Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(bind_err)?;
        Ok(Self {
            endpoint,
            peer_client,
            cfg,
            id: tls.id.clone(),
            faults,
        })
    }

    /// The fault layer under this endpoint's socket (datagram counters, partitions, loss).
    pub fn faults(&self) -> &FaultLayer {
        &self.faults
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The limits in force.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The bound address (with the port the OS chose, if 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The next incoming connection attempt; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        self.endpoint.accept().await
    }

    /// Connects to peer `id` at `addr`. The handshake fails unless the server's certificate is
    /// `id`'s, issued by the cluster CA.
    pub async fn connect_peer(
        &self,
        id: &NodeId,
        addr: SocketAddr,
    ) -> Result<Connection, NetError> {
        let connecting = self
            .endpoint
            .connect_with(self.peer_client.clone(), addr, &node_dns_name(id))
            .map_err(|source| NetError::Connect { addr, source })?;
        let ms = self.cfg.handshake_timeout.as_millis() as u64;
        match tokio::time::timeout(self.cfg.handshake_timeout, connecting).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(NetError::Timeout {
                what: "handshake",
                ms,
            }),
        }
    }

    /// Closes every connection and stops accepting. Waits at most `grace` for peers to hear it.
    pub async fn shutdown(&self, grace: Duration) {
        self.endpoint
            .close(CloseCode::Shutdown.varint(), b"node shutting down");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

/// A connection whose identity fits its ALPN.
#[derive(Debug)]
pub enum Accepted {
    /// A node, on `verge/1`.
    Peer {
        /// The id from its certificate.
        id: NodeId,
        /// The connection.
        conn: Connection,
    },
    /// An operator, on `verge-admin/1`.
    Admin {
        /// The admin name from its certificate.
        name: String,
        /// The connection.
        conn: Connection,
    },
}

/// Completes an incoming handshake and checks that the certificate's identity fits the ALPN.
/// A misfit is closed with [`CloseCode::WrongRole`] and a reason the client can print.
pub async fn authenticate(incoming: Incoming, timeout: Duration) -> Result<Accepted, AcceptError> {
    let remote = incoming.remote_address();
    let ms = timeout.as_millis() as u64;
    let conn = match tokio::time::timeout(timeout, async {
        match incoming.accept() {
            Ok(connecting) => connecting.await,
            Err(e) => Err(e),
        }
    })
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(source)) => return Err(AcceptError::Handshake { remote, source }),
        Err(_) => return Err(AcceptError::Timeout { remote, ms }),
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let identity = conn
        .peer_identity()
        .and_then(|p| p.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().map(|c| identity_of(c)));
    let refuse = |reason: String| {
        conn.close(CloseCode::WrongRole.varint(), reason.as_bytes());
        Err(AcceptError::WrongRole { remote, reason })
    };
    let identity = match identity {
        Some(Ok(id)) => id,
        Some(Err(e)) => return refuse(e.to_string()),
        None => return refuse("no client certificate".into()),
    };
    match (alpn.as_deref(), identity) {
        (Some(ALPN_PEER), Identity::Node(id)) => Ok(Accepted::Peer { id, conn }),
        (Some(ALPN_ADMIN), Identity::Admin(name)) => Ok(Accepted::Admin { name, conn }),
        (Some(ALPN_ADMIN), other) => refuse(format!(
            "the admin endpoint needs an admin certificate, this one is for {other}"
        )),
        (Some(ALPN_PEER), other) => refuse(format!(
            "the mesh needs a node certificate, this one is for {other}"
        )),
        (_, _) => refuse("unknown ALPN protocol".into()),
    }
}

/// Connects the admin CLI to a node's admin endpoint.
pub async fn admin_connect(
    node: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
    auth: Option<ClientAuth>,
    cfg: &NetConfig,
) -> Result<Connection, NetError> {
    let tls = verge_pki::admin_client_config(roots, auth)?;
    let mut client =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).map_err(quic_err)?));
    client.transport_config(Arc::new(transport_config(cfg)));
    let bind: SocketAddr = if node.is_ipv6() {
        "[::]:0".parse().map_err(quic_err)?
    } else {
        "0.0.0.0:0".parse().map_err(quic_err)?
    };
    let endpoint =
        Endpoint::client(bind).map_err(|source| NetError::Bind { addr: bind, source })?;
    // The server name is not checked (the verifier accepts any node of the cluster), but rustls
    // needs a syntactically valid one.
    let connecting = endpoint
        .connect_with(client, node, "node.verge")
        .map_err(|source| NetError::Connect { addr: node, source })?;
    match tokio::time::timeout(cfg.handshake_timeout, connecting).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(NetError::Timeout {
            what: "handshake",
            ms: cfg.handshake_timeout.as_millis() as u64,
        }),
    }
}

/// Explains, for an operator, why a node dropped or refused a connection; `None` if the error is
/// not a refusal.
pub fn connection_refusal(err: &quinn::ConnectionError) -> Option<String> {
    use quinn::ConnectionError as E;
    match err {
        E::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            Some(if reason.is_empty() {
                format!("the node closed the connection (code {})", close.error_code)
            } else {
                reason
            })
        }
        E::ConnectionClosed(close) => {
            let text = close.to_string();
            let lower = text.to_lowercase();
            // TLS alert 116 is certificate_required; 48 is unknown_ca.
            if lower.contains("no certificates") || lower.contains("error 116") {
                Some("the node requires a client certificate; pass --cert and --key of an admin certificate issued by the cluster CA".into())
            } else if lower.contains("unknownissuer") || lower.contains("error 48") {
                Some(format!(
                    "the node does not trust this certificate (not issued by its cluster CA): {text}"
                ))
            } else {
                Some(format!("the node closed the connection: {text}"))
            }
        }
        E::TransportError(t) => Some(format!("TLS/QUIC handshake failed: {t}")),
        _ => None,
    }
}
