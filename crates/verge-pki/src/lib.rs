//! Verge's public-key infrastructure: the cluster CA, node and admin certificates, the identity a
//! certificate carries, and the rustls configurations that enforce it.
//!
//! **Identity lives in the certificate and nowhere else.** A node certificate holds the DNS name
//! `<id>.node.verge` and an admin certificate `<name>.admin.verge`; [`identity_of`] reads it back
//! from a peer's verified end-entity certificate. Every connection, in both directions, is mutual
//! TLS 1.3 against the cluster CA: a certificate from another CA never completes a handshake.
//!
//! This crate does no network IO and knows nothing of actors or storage.

mod ca;
mod error;
mod identity;
mod tls;

pub use ca::{CaFiles, ClusterCa, IssuedCert, write_private};
pub use error::PkiError;
pub use identity::{
    ADMIN_SUFFIX, Identity, NODE_SUFFIX, admin_dns_name, identity_of, node_dns_name,
};
pub use tls::{
    ClientAuth, NodeTls, admin_client_config, crypto_provider, load_certs, load_key, load_roots,
    peer_client_config, server_config,
};
