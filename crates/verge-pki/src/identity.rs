//! The identity a certificate carries.

use std::fmt;

use verge_proto::NodeId;
use verge_proto::id::validate_label;
use x509_parser::extensions::GeneralName;

/// DNS-name suffix that marks a node certificate: `b1.node.verge`.
pub const NODE_SUFFIX: &str = ".node.verge";
/// DNS-name suffix that marks an admin certificate: `alice.admin.verge`.
pub const ADMIN_SUFFIX: &str = ".admin.verge";

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A mesh node.
    Node(NodeId),
    /// An operator allowed on the admin endpoint.
    Admin(String),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Admin(name) => write!(f, "admin {name}"),
        }
    }
}

/// The DNS name in a node certificate.
pub fn node_dns_name(id: &NodeId) -> String {
    format!("{id}{NODE_SUFFIX}")
}

/// The DNS name in an admin certificate.
pub fn admin_dns_name(name: &str) -> String {
    format!("{name}{ADMIN_SUFFIX}")
}

/// Reads the Verge identity out of a DER certificate.
///
/// Call it only on a certificate that the TLS layer already verified against the cluster CA; this
/// function checks names, not signatures.
pub fn identity_of(der: &[u8]) -> Result<Identity, crate::PkiError> {
    use crate::PkiError::NoIdentity;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| NoIdentity(format!("certificate does not parse: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| NoIdentity(format!("bad subject alternative name: {e}")))?
        .ok_or_else(|| NoIdentity("no subject alternative name".into()))?;
    let mut found = None;
    for name in &san.value.general_names {
        let GeneralName::DNSName(dns) = name else {
            continue;
        };
        let id = if let Some(id) = dns.strip_suffix(NODE_SUFFIX) {
            Identity::Node(NodeId::new(id)?)
        } else if let Some(name) = dns.strip_suffix(ADMIN_SUFFIX) {
            validate_label(name)?;
            Identity::Admin(name.to_owned())
        } else {
            continue;
        };
        // A certificate naming two identities is ambiguous and believed for neither.
        if found.replace(id).is_some() {
            return Err(NoIdentity("more than one Verge identity".into()));
        }
    }
    found.ok_or_else(|| {
        NoIdentity(format!(
            "no DNS name ending in {NODE_SUFFIX} or {ADMIN_SUFFIX}"
        ))
    })
}
