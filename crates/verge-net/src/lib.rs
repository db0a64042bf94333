//! Verge's transport: one quinn endpoint per node, mutual TLS on every connection, two ALPNs
//! (`verge/1` between nodes, `verge-admin/1` for `verge ctl`), and length-prefixed frames on
//! QUIC streams.
//!
//! What this crate decides: the transport limits (streams, keep-alive, idle timeout, frame size),
//! who a connection belongs to (the identity in its verified certificate, checked against the ALPN
//! it chose), and how frames are cut from a stream. What it does not: anything about membership,
//! storage or what a message means.
//!
//! **Invariant:** the peer id a caller gets from [`authenticate`] comes from the certificate, never
//! from a message.

mod endpoint;
mod error;
mod fault;
mod framed;

pub use endpoint::{
    Accepted, CloseCode, Net, NetConfig, admin_connect, authenticate, connection_refusal,
    transport_config,
};
pub use error::{AcceptError, NetError};
pub use fault::{DELAY_MS_MAX, FaultLayer, FaultStats};
pub use framed::{FramedRecv, FramedSend, request};
