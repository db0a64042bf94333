//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong making, storing, loading or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that should already exist is missing.
    #[error("{path}: no such file ({what})")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What the file was expected to hold.
        what: &'static str,
    },
    /// A file to be created already exists; nothing is overwritten.
    #[error("{path} already exists; remove it or choose another --out directory")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file held no usable certificate or key.
    #[error("{path}: not a valid PEM {what}: {detail}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// A certificate carries no Verge identity (`<id>.node.verge` or `<name>.admin.verge`).
    #[error("certificate carries no Verge identity: {0}")]
    NoIdentity(String),
    /// A certificate's identity is not of the kind this use needs.
    #[error("{path}: holds the identity {found}, but {needed} is needed here")]
    WrongIdentity {
        /// The certificate file.
        path: PathBuf,
        /// The identity found.
        found: String,
        /// What was needed, e.g. `a node certificate`.
        needed: &'static str,
    },
    /// A node id or admin name is not a valid DNS label.
    #[error(transparent)]
    BadId(#[from] verge_proto::IdError),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A TLS configuration could not be built from the material given.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate or server-certificate verifier could not be built.
    #[error("TLS verifier: {0}")]
    Verifier(String),
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PkiError::Io {
            path: path.into(),
            source,
        }
    }
}
