//! rustls configurations for the mesh and the admin endpoint.
//!
//! All connections are TLS 1.3 (QUIC requires it) with the `ring` provider. The server side
//! requires a client certificate signed by the cluster CA on every ALPN; which identity an ALPN
//! accepts (a node on `verge/1`, an admin on `verge-admin/1`) is checked after the handshake by the
//! network layer, which reads it with [`crate::identity_of`].

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use verge_proto::NodeId;
use verge_proto::admin::ALPN_ADMIN;
use verge_proto::peer::ALPN_PEER;

use crate::identity::node_dns_name;
use crate::{Identity, PkiError, identity_of};

/// The crypto provider every Verge TLS configuration uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    if !path.exists() {
        return Err(PkiError::Missing {
            path: path.to_owned(),
            what: "a PEM certificate",
        });
    }
    let bad = |detail: String| PkiError::BadPem {
        path: path.to_owned(),
        what: "certificate",
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    if !path.exists() {
        return Err(PkiError::Missing {
            path: path.to_owned(),
            what: "a PEM private key",
        });
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| PkiError::BadPem {
        path: path.to_owned(),
        what: "private key",
        detail: e.to_string(),
    })
}

/// Reads the cluster CA certificate(s) into a root store.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| PkiError::BadPem {
            path: path.to_owned(),
            what: "certificate",
            detail: format!("not usable as a trust anchor: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A client certificate and its key.
#[derive(Debug)]
pub struct ClientAuth {
    /// The certificate chain, end-entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

impl ClientAuth {
    /// Loads a certificate and key from PEM files.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, PkiError> {
        Ok(Self {
            chain: load_certs(cert)?,
            key: load_key(key)?,
        })
    }

    /// The identity the certificate carries.
    pub fn identity(&self) -> Result<Identity, PkiError> {
        let first = self
            .chain
            .first()
            .ok_or_else(|| PkiError::NoIdentity("empty certificate chain".into()))?;
        identity_of(first)
    }
}

/// A node's TLS material: the cluster roots and its own certificate and key.
#[derive(Debug)]
pub struct NodeTls {
    /// The node id its certificate carries.
    pub id: NodeId,
    /// The cluster CA.
    pub roots: Arc<RootCertStore>,
    /// The node's certificate and key.
    pub auth: ClientAuth,
}

impl NodeTls {
    /// Loads and checks a node's material: the certificate must carry a node identity.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let roots = load_roots(ca)?;
        let auth = ClientAuth::load(cert, key)?;
        match auth.identity()? {
            Identity::Node(id) => Ok(Self { id, roots, auth }),
            other => Err(PkiError::WrongIdentity {
                path: cert.to_owned(),
                found: other.to_string(),
                needed: "a node certificate",
            }),
        }
    }
}

fn verifier_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Verifier(e.to_string())
}

/// The server side of a node: both ALPNs, client certificate required and checked against the CA.
pub fn server_config(tls: &NodeTls) -> Result<ServerConfig, PkiError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(tls.roots.clone(), provider.clone())
        .build()
        .map_err(verifier_err)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.auth.chain.clone(), tls.auth.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_ADMIN.to_vec()];
    Ok(config)
}

/// The client side of a node dialing a peer: it proves its own identity and checks that the
/// server is the node it meant to reach (by dialing with that node's DNS name).
pub fn peer_client_config(tls: &NodeTls) -> Result<ClientConfig, PkiError> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(tls.roots.clone())
        .with_client_auth_cert(tls.auth.chain.clone(), tls.auth.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_PEER.to_vec()];
    Ok(config)
}

/// The admin CLI's client configuration. The CLI reaches a node by address and does not know its
/// id beforehand, so the server is accepted if its certificate chains to the cluster CA and names
/// some node. `auth` is `None` only to show how a node refuses a client without a certificate.
pub fn admin_client_config(
    roots: Arc<RootCertStore>,
    auth: Option<ClientAuth>,
) -> Result<ClientConfig, PkiError> {
    let provider = crypto_provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(verifier_err)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyNodeVerifier { inner }));
    let mut config = match auth {
        Some(a) => builder.with_client_auth_cert(a.chain, a.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_ADMIN.to_vec()];
    Ok(config)
}

/// Accepts a server certificate that chains to the cluster CA and names a node, whichever node.
/// The chain, validity and server EKU are checked by webpki against the name the certificate
/// itself claims, so nothing but a CA-issued node certificate passes.
#[derive(Debug)]
struct AnyNodeVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyNodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Ok(Identity::Node(id)) = identity_of(end_entity) else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        };
        let name = ServerName::try_from(node_dns_name(&id))
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterCa;

    fn node_tls(dir: &Path, ca: &ClusterCa, id: &str) -> NodeTls {
        let id = NodeId::new(id).expect("id");
        let (cert, key) = ca
            .issue_node(&id)
            .expect("issue")
            .write(dir)
            .expect("write");
        NodeTls::load(&dir.join("ca.pem"), &cert, &key).expect("load")
    }

    #[test]
    fn node_material_loads_and_builds_configs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("t").expect("ca");
        ca.write(dir.path()).expect("write");
        let tls = node_tls(dir.path(), &ca, "b1");
        assert_eq!(tls.id.as_str(), "b1");
        server_config(&tls).expect("server config");
        peer_client_config(&tls).expect("client config");
    }

    #[test]
    fn an_admin_certificate_is_not_node_material() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("t").expect("ca");
        let files = ca.write(dir.path()).expect("write");
        let (cert, key) = ca
            .issue_admin("ops")
            .expect("issue")
            .write(dir.path())
            .expect("write");
        let err = NodeTls::load(&files.cert, &cert, &key).expect_err("admin is not a node");
        assert!(err.to_string().contains("admin ops"), "{err}");
    }

    #[test]
    fn garbage_pem_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("junk.pem");
        std::fs::write(&p, "hello").expect("write");
        let err = load_certs(&p).expect_err("junk");
        assert!(err.to_string().contains("junk.pem"), "{err}");
        let err = load_key(&dir.path().join("nope.key")).expect_err("missing");
        assert!(err.to_string().contains("nope.key"), "{err}");
    }

    #[test]
    fn identity_round_trips_through_a_certificate() {
        let ca = ClusterCa::generate("t").expect("ca");
        let id = NodeId::new("main-st-3").expect("id");
        let issued = ca.issue_node(&id).expect("issue");
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        assert_eq!(identity_of(&der).expect("identity"), Identity::Node(id));
        let admin = ca.issue_admin("alice").expect("issue");
        let der = CertificateDer::from_pem_slice(admin.cert_pem.as_bytes()).expect("pem");
        assert_eq!(
            identity_of(&der).expect("identity"),
            Identity::Admin("alice".into())
        );
    }
}
