//! Errors of the transport.

use std::net::SocketAddr;

use verge_proto::CodecError;

/// A failure on an established or establishing connection.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS material could not be turned into a configuration.
    #[error(transparent)]
    Pki(#[from] verge_pki::PkiError),
    /// A rustls configuration was not usable for QUIC.
    #[error("TLS configuration is not usable for QUIC: {0}")]
    QuicTls(String),
    /// A connection could not be started.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: quinn::ConnectError,
    },
    /// The connection failed or was closed.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// A read on a stream failed.
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// A write on a stream failed.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// A frame on the stream was oversize, of an unknown version, or undecodable.
    #[error("bad frame: {0}")]
    Frame(#[from] CodecError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// The stream ended before the expected answer.
    #[error("stream ended without an answer")]
    NoAnswer,
    /// An operation did not finish in time.
    #[error("{what} timed out after {ms} ms")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The bound.
        ms: u64,
    },
}

impl NetError {
    /// True when the error came from the peer's bytes (counted as a frame error).
    pub fn is_frame_error(&self) -> bool {
        matches!(self, NetError::Frame(_) | NetError::Truncated(_))
    }
}

/// Why an incoming connection was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The QUIC or TLS handshake failed: a certificate from another CA, none at all, an expired
    /// one, or a client that went away.
    #[error("handshake from {remote} failed: {source}")]
    Handshake {
        /// The client's address.
        remote: SocketAddr,
        /// Why.
        source: quinn::ConnectionError,
    },
    /// The handshake did not complete in time.
    #[error("handshake from {remote} timed out after {ms} ms")]
    Timeout {
        /// The client's address.
        remote: SocketAddr,
        /// The bound.
        ms: u64,
    },
    /// The certificate verified but its identity does not fit the ALPN chosen (an admin
    /// certificate on `verge/1`, a node certificate on `verge-admin/1`), or carries none.
    #[error("refused {remote}: {reason}")]
    WrongRole {
        /// The client's address.
        remote: SocketAddr,
        /// What was wrong, as sent to the client.
        reason: String,
    },
}

impl AcceptError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AcceptError::Handshake { .. } => "handshake",
            AcceptError::Timeout { .. } => "timeout",
            AcceptError::WrongRole { .. } => "role",
        }
    }
}
