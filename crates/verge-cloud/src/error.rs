//! Errors starting the server or building a client.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use verge_pki::PkiError;

use crate::store::StoreError;

/// Why the cloud server could not start or a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Neither a token nor a client CA was configured: the ingest would be open to anyone.
    #[error(
        "the cloud needs a bearer token (--token-file or --token) or a client CA (--client-ca); \
         refusing to serve an ingest open to anyone"
    )]
    NoAuth,
    /// A token was given but is empty or not printable ASCII.
    #[error("the bearer token must be 1 to 4096 printable ASCII characters without spaces")]
    BadToken,
    /// A certificate, key or CA file.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server task failed or panicked.
    #[error("the cloud server stopped unexpectedly: {0}")]
    Server(String),
    /// The cloud URL is not usable.
    #[error("cloud URL `{url}`: {detail}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl CloudError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
