//! Node identities.
//!
//! A node id is what a node's certificate carries and what every peer believes; it is also a DNS
//! label inside the certificate's subject alternative name, so it is restricted to what a DNS label
//! may hold: 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest node id (a DNS label).
pub const NODE_ID_CHARS_MAX: usize = 63;

/// A validated node id such as `b1` or `main-st-3`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// Why a string is not a valid node id or admin name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id was empty.
    #[error("an id must not be empty")]
    Empty,
    /// The id was longer than a DNS label allows.
    #[error("id `{0}` is longer than {NODE_ID_CHARS_MAX} characters")]
    TooLong(String),
    /// The id held a character outside `a-z`, `0-9`, `-`, or started or ended with `-`.
    #[error(
        "id `{0}` may only hold lowercase letters, digits and `-` (not at either end), like `b1` or `main-st-3`"
    )]
    BadChar(String),
}

/// Checks that `s` is usable as a DNS label (node ids and admin names both are).
pub fn validate_label(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > NODE_ID_CHARS_MAX {
        return Err(IdError::TooLong(s.to_owned()));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || s.starts_with('-') || s.ends_with('-') {
        return Err(IdError::BadChar(s.to_owned()));
    }
    Ok(())
}

impl NodeId {
    /// Validates and wraps `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        validate_label(&s)?;
        Ok(Self(s))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short number for the id (32-bit FNV-1a, never 0), where a record's numeric column must
    /// name a node: exact in an `f64`, and 0 stays free for "this node".
    pub fn tag(&self) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in self.0.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h.max(1)
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["b1", "main-st-3", "a", &"x".repeat(63)] {
            assert!(NodeId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_what_a_certificate_cannot_carry() {
        assert_eq!(NodeId::new(""), Err(IdError::Empty));
        assert!(matches!(
            NodeId::new("x".repeat(64)),
            Err(IdError::TooLong(_))
        ));
        for bad in ["B1", "-b1", "b1-", "b 1", "b.1", "b_1", "bé"] {
            assert!(
                matches!(NodeId::new(bad), Err(IdError::BadChar(_))),
                "{bad}"
            );
        }
    }
}
