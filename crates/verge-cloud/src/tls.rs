//! TLS for the cloud: the server's certificate (given, or self-signed on first start), the
//! server's rustls configuration, and the client's. Always the `ring` provider.
//!
//! The self-signed certificate is a stand-in for a real one: a client trusts it by loading the
//! certificate itself as its CA file. It is made once, into `DATA_DIR/tls/cert.pem` and
//! `key.pem` (0600), and reused on every later start, so clients keep trusting it.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use verge_pki::{ClientAuth, crypto_provider, load_certs, load_key, load_roots, write_private};

use crate::CloudError;

/// The ALPN the cloud speaks.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Where the self-signed certificate lives inside the data directory.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Returns `DATA_DIR/tls/cert.pem` and `key.pem`, making them on first use: a self-signed
/// server certificate naming `localhost` and `ip` (or, for an unspecified `ip`, the loopback
/// addresses).
pub fn ensure_self_signed(data_dir: &Path, ip: IpAddr) -> Result<(PathBuf, PathBuf), CloudError> {
    let (cert, key) = self_signed_paths(data_dir);
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok((cert, key)),
        (false, false) => {}
        (true, false) | (false, true) => {
            return Err(CloudError::Tls(format!(
                "only one of {} and {} exists; remove it to have both made anew",
                cert.display(),
                key.display()
            )));
        }
    }
    let dir = cert.parent().unwrap_or(data_dir);
    fs::create_dir_all(dir).map_err(|e| CloudError::io(dir, e))?;
    let ips = if ip.is_unspecified() {
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
    } else {
        vec![ip]
    };
    let tls_err = |e: rcgen::Error| CloudError::Tls(format!("cannot make a certificate: {e}"));
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(tls_err)?;
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Verge reference cloud (self-signed)");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let pair = KeyPair::generate().map_err(tls_err)?;
    let signed = params.self_signed(&pair).map_err(tls_err)?;
    // The key first: a crash between the two leaves a key without a certificate, which the
    // next start reports rather than silently pairing with something else.
    write_private(&key, pair.serialize_pem().as_bytes())?;
    fs::write(&cert, signed.pem()).map_err(|e| CloudError::io(&cert, e))?;
    Ok((cert, key))
}

/// The server's configuration: its certificate, and when `client_ca` is given, client
/// certificates signed by it verified and accepted as an alternative to the token (a client
/// without one still connects and must show the token).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, CloudError> {
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CloudError::Tls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| CloudError::Tls(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| {
            CloudError::Tls(format!(
                "certificate {} and key {} do not make a server identity: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// A client configuration that trusts the certificates in `ca` (a CA, or the server's own
/// self-signed certificate) and, if given, presents a client certificate.
pub fn client_config(ca: &Path, auth: Option<ClientAuth>) -> Result<ClientConfig, CloudError> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| CloudError::Tls(e.to_string()))?
        .with_root_certificates(load_roots(ca)?);
    // No ALPN here: the HTTPS connector sets it for the HTTP versions it enables.
    match auth {
        Some(a) => builder
            .with_client_auth_cert(a.chain, a.key)
            .map_err(|e| CloudError::Tls(format!("client certificate: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}
