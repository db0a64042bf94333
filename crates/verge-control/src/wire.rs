//! The control plane's RPC payloads: what [`crate::ControlTransport`] carries, opaque to it.
//!
//! A payload is one version byte ([`RPC_VERSION`]) followed by a bincode 2.0.1 (serde, standard
//! configuration) body, a [`Request`] one way and a [`Reply`] the other. Payloads are bounded by
//! `ControlConfig::rpc_bytes_max` before decoding and must decode to the last byte. Anything else
//! is a [`WireError`], never a panic: the serving side answers it with [`Reply::Error`], the
//! calling side reports it to openraft as a network error.
//!
//! These types cross the network but live here rather than in `verge-proto`, because they are
//! openraft's messages and `verge-proto` must not depend on openraft (or its tokio). The version
//! byte plays the part of `verge-proto`'s frame version for them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use verge_proto::NodeId;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{SnapshotMeta, Vote};

use crate::{ControlNode, RaftId, TypeConfig};

/// The payload version this build writes and the only one it reads.
pub const RPC_VERSION: u8 = 1;

/// The hard ceiling for `rpc_bytes_max` (64 MiB); bincode never allocates past it whatever a
/// length field claims.
pub const RPC_BYTES_CEILING: usize = 64 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<RPC_BYTES_CEILING>,
>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<RPC_BYTES_CEILING>()
}

/// A request from one member's Raft to another's.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// A candidate asking for a vote.
    Vote(VoteRequest<RaftId>),
    /// One chunk of a snapshot (openraft's chunked path; this crate sends whole snapshots).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A whole snapshot in one message.
    FullSnapshot {
        /// The leader's vote.
        vote: Vote<RaftId>,
        /// What the snapshot covers.
        meta: SnapshotMeta<RaftId, ControlNode>,
        /// The serialized state.
        data: Vec<u8>,
    },
    /// The leader asks the receiver to campaign now (leadership transfer).
    TimeoutNow,
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to [`Request::AppendEntries`].
    AppendEntries(AppendEntriesResponse<RaftId>),
    /// Answer to [`Request::Vote`].
    Vote(VoteResponse<RaftId>),
    /// Answer to [`Request::InstallSnapshot`].
    InstallSnapshot(InstallSnapshotResponse<RaftId>),
    /// Answer to [`Request::FullSnapshot`].
    FullSnapshot(SnapshotResponse<RaftId>),
    /// Answer to [`Request::TimeoutNow`]: whether the receiver started a campaign.
    TimeoutNow {
        /// False when the sender is not the leader the receiver follows.
        campaigning: bool,
    },
    /// The request was not served.
    Error(ServeError),
}

/// Why a member did not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServeError {
    /// The payload was not a request this build understands.
    #[error("malformed control request: {0}")]
    BadRequest(String),
    /// The request names a sender other than the authenticated peer.
    #[error("peer `{from}` sent a request on behalf of Raft member {claimed:#018x}")]
    Impersonation {
        /// The authenticated sender.
        from: NodeId,
        /// The Raft id the request claimed.
        claimed: RaftId,
    },
    /// The receiving member's Raft has stopped (shutting down or failed).
    #[error("control plane of the receiving node has stopped: {0}")]
    Stopped(String),
    /// The request was understood but could not be carried out.
    #[error("control request refused: {0}")]
    Refused(String),
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No bytes at all.
    #[error("empty control payload")]
    Empty,
    /// Longer than the configured bound.
    #[error("control payload of {len} bytes exceeds the limit of {max} bytes")]
    Oversize {
        /// Payload length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Written by a version this build does not speak.
    #[error("control payload has version {got}, this node speaks version {RPC_VERSION}")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// The body is not a valid message.
    #[error("control payload does not decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The body decoded but left bytes unread.
    #[error("control payload has {0} trailing bytes after the message")]
    Trailing(usize),
    /// The message could not be encoded (a bug on this side).
    #[error("control message does not encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Encodes `msg` as a bincode body without a version byte (also used for stored values).
pub(crate) fn encode_body<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    Ok(bincode::serde::encode_to_vec(msg, config())?)
}

/// Decodes a bincode body that must be consumed to the last byte.
pub(crate) fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    let (msg, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(WireError::Trailing(body.len() - used));
    }
    Ok(msg)
}

/// Encodes a payload: the version byte and the body, refused if longer than `max`.
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(64);
    out.push(RPC_VERSION);
    bincode::serde::encode_into_std_write(msg, &mut out, config())?;
    if out.len() > max {
        return Err(WireError::Oversize {
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

/// Decodes a payload, checking its length against `max` before anything else.
pub fn decode<T: DeserializeOwned>(payload: &[u8], max: usize) -> Result<T, WireError> {
    if payload.len() > max {
        return Err(WireError::Oversize {
            len: payload.len(),
            max,
        });
    }
    let (&version, body) = payload.split_first().ok_or(WireError::Empty)?;
    if version != RPC_VERSION {
        return Err(WireError::Version { got: version });
    }
    decode_body(body)
}

/// The smallest encoding of `reply`: used when the real reply cannot be encoded, so a caller
/// always gets a well-formed answer.
pub(crate) fn encode_reply_or_error(reply: &Reply, max: usize) -> Vec<u8> {
    match encode(reply, max) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "control reply does not encode");
            let fallback = Reply::Error(ServeError::Refused(format!("reply does not encode: {e}")));
            // A two-field enum with a short string always fits the 64 KiB minimum bound.
            encode(&fallback, usize::MAX).unwrap_or_else(|_| vec![RPC_VERSION])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;

    #[test]
    fn replies_round_trip() {
        let bytes = encode(&Reply::TimeoutNow { campaigning: true }, MAX).expect("encodes");
        assert_eq!(bytes[0], RPC_VERSION);
        let back: Reply = decode(&bytes, MAX).expect("decodes");
        assert!(matches!(back, Reply::TimeoutNow { campaigning: true }));
    }

    #[test]
    fn bad_payloads_are_errors() {
        assert!(matches!(decode::<Request>(&[], MAX), Err(WireError::Empty)));
        assert!(matches!(
            decode::<Request>(&[9, 0], MAX),
            Err(WireError::Version { got: 9 })
        ));
        assert!(matches!(
            decode::<Request>(&[RPC_VERSION, 200, 1, 2], MAX),
            Err(WireError::Decode(_))
        ));
        assert!(matches!(
            decode::<Request>(&vec![RPC_VERSION; MAX + 1], MAX),
            Err(WireError::Oversize { .. })
        ));
        let mut bytes = encode(&Request::TimeoutNow, MAX).expect("encodes");
        bytes.push(0);
        assert!(matches!(
            decode::<Request>(&bytes, MAX),
            Err(WireError::Trailing(1))
        ));
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate() {
        // FullSnapshot (variant 3) whose first field claims a vector of 2^62 elements.
        let mut bytes = vec![RPC_VERSION, 3];
        bytes.extend_from_slice(&[0xff; 9]);
        assert!(decode::<Request>(&bytes, MAX).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut payload = vec![RPC_VERSION];
            payload.extend_from_slice(&body);
            let _ = decode::<Request>(&payload, MAX);
            let _ = decode::<Reply>(&payload, MAX);
            let _ = decode::<Request>(&body, MAX);
        }
    }
}
