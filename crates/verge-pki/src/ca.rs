//! The cluster CA and the certificates it issues.
//!
//! Files: `verge cert init --out DIR` writes `DIR/ca.pem` and `DIR/ca.key`; issuing writes
//! `OUT/node-<id>.pem` + `.key` or `OUT/admin-<name>.pem` + `.key`. Private keys are created with
//! mode 0600 and nothing is ever overwritten.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use verge_proto::NodeId;
use verge_proto::id::validate_label;

use crate::identity::{admin_dns_name, node_dns_name};
use crate::{Identity, PkiError};

/// How long a CA certificate is valid.
const CA_VALID_DAYS: i64 = 3650;
/// How long a node or admin certificate is valid.
const LEAF_VALID_DAYS: i64 = 825;
/// Backdating, so that a cabinet whose clock lags a little still accepts a fresh certificate.
const BACKDATE_HOURS: i64 = 1;

/// Where a CA's files live inside its directory.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// `DIR/ca.pem`.
    pub cert: PathBuf,
    /// `DIR/ca.key`.
    pub key: PathBuf,
}

impl CaFiles {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        }
    }
}

/// A cluster CA held in memory: its certificate and its signing key, as PEM.
#[derive(Debug)]
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
}

/// A certificate issued by the cluster CA, as PEM, with the identity it carries.
#[derive(Debug)]
pub struct IssuedCert {
    /// Who the certificate names.
    pub identity: Identity,
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl IssuedCert {
    /// The file stem: `node-<id>` or `admin-<name>`.
    pub fn file_stem(&self) -> String {
        match &self.identity {
            Identity::Node(id) => format!("node-{id}"),
            Identity::Admin(name) => format!("admin-{name}"),
        }
    }

    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>.key` (0600) and returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), PkiError> {
        fs::create_dir_all(dir).map_err(|e| PkiError::io(dir, e))?;
        let stem = self.file_stem();
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        refuse_existing(&[&cert, &key])?;
        write_private(&key, self.key_pem.as_bytes())?;
        write_new(&cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok((cert, key))
    }
}

fn validity(days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::hours(BACKDATE_HOURS),
        now + Duration::days(days),
    )
}

impl ClusterCa {
    /// Makes a new CA for the cluster `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, PkiError> {
        validate_label(cluster)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Verge cluster CA {cluster}"));
        dn.push(DnType::OrganizationName, cluster);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(CA_VALID_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`, refusing to overwrite either.
    pub fn write(&self, dir: &Path) -> Result<CaFiles, PkiError> {
        fs::create_dir_all(dir).map_err(|e| PkiError::io(dir, e))?;
        let files = CaFiles::in_dir(dir);
        refuse_existing(&[&files.cert, &files.key])?;
        write_private(&files.key, self.key_pem.as_bytes())?;
        write_new(&files.cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok(files)
    }

    /// Loads the CA written by [`ClusterCa::write`] from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let files = CaFiles::in_dir(dir);
        let read = |path: &Path, what| match fs::read_to_string(path) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PkiError::Missing {
                path: path.to_owned(),
                what,
            }),
            Err(e) => Err(PkiError::io(path, e)),
        };
        let ca = Self {
            cert_pem: read(&files.cert, "the cluster CA certificate")?,
            key_pem: read(&files.key, "the cluster CA private key")?,
        };
        // Parse both now, so a broken CA directory is reported where it is, not at first use.
        ca.issuer_for(&files)?;
        Ok(ca)
    }

    fn issuer_for(&self, files: &CaFiles) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| PkiError::BadPem {
            path: files.key.clone(),
            what: "private key",
            detail: e.to_string(),
        })?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(|e| PkiError::BadPem {
            path: files.cert.clone(),
            what: "certificate",
            detail: e.to_string(),
        })
    }

    fn issue(&self, identity: Identity) -> Result<IssuedCert, PkiError> {
        let issuer = self.issuer_for(&CaFiles::in_dir(Path::new("<ca>")))?;
        let (dns, cn, ekus) = match &identity {
            Identity::Node(id) => (
                node_dns_name(id),
                format!("node {id}"),
                // A node is a TLS server to its peers and a client when it dials them.
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            ),
            Identity::Admin(name) => (
                admin_dns_name(name),
                format!("admin {name}"),
                // An admin certificate can only ever be a client: it can never serve as a node.
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            ),
        };
        let mut params = CertificateParams::new(vec![dns])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.extended_key_usages = ekus;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(LEAF_VALID_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedCert {
            identity,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for node `id`.
    pub fn issue_node(&self, id: &NodeId) -> Result<IssuedCert, PkiError> {
        self.issue(Identity::Node(id.clone()))
    }

    /// Issues an admin certificate for operator `name`.
    pub fn issue_admin(&self, name: &str) -> Result<IssuedCert, PkiError> {
        validate_label(name)?;
        self.issue(Identity::Admin(name.to_owned()))
    }
}

fn refuse_existing(paths: &[&Path]) -> Result<(), PkiError> {
    for p in paths {
        if p.exists() {
            return Err(PkiError::Exists {
                path: p.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| PkiError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| PkiError::io(path, e))
}

/// Creates `path` with mode 0600 (never wider, whatever the umask) and writes `bytes` to it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_new(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_keys_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("test").expect("ca");
        let files = ca.write(dir.path()).expect("write");
        let mode = fs::metadata(&files.key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(ca.write(dir.path()), Err(PkiError::Exists { .. })));

        let loaded = ClusterCa::load(dir.path()).expect("load");
        let id = NodeId::new("b1").expect("id");
        let node = loaded.issue_node(&id).expect("issue");
        let (cert, key) = node.write(dir.path()).expect("write node");
        assert!(cert.ends_with("node-b1.pem"));
        let mode = fs::metadata(&key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn loading_a_missing_ca_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ClusterCa::load(dir.path()).expect_err("missing");
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn refuses_ids_a_certificate_cannot_carry() {
        let ca = ClusterCa::generate("test").expect("ca");
        assert!(matches!(
            ca.issue_admin("Bob Smith"),
            Err(PkiError::BadId(_))
        ));
        assert!(ClusterCa::generate("Not OK").is_err());
    }
}
