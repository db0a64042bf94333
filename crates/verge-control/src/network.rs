//! openraft's network over a transport the node supplies.
//!
//! The node owns the connections (QUIC with mTLS in production, channels in tests); this module
//! only turns openraft's calls into [`Request`] payloads, hands them to
//! [`ControlTransport::call`], and decodes the [`Reply`]. Failures are mapped so openraft reacts
//! sensibly: a peer the transport cannot reach is `Unreachable` (openraft backs off for
//! `ControlConfig::backoff_ms` before trying it again), anything else is a `NetworkError`
//! (retried at the next heartbeat).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RPCTypes, Snapshot, Vote};
use verge_proto::NodeId;

use crate::wire::{self, Reply, Request, ServeError, WireError};
use crate::{ControlNode, RaftId, TypeConfig};

/// How the node carries control-plane payloads to a peer and brings back its answer.
///
/// The node implements this over its QUIC connections: `call` sends `payload` to `to` on the
/// control-plane stream, the peer hands it to [`crate::Control::serve`], and the bytes `serve`
/// returns come back as the result. Payloads are opaque to the transport. A call should give up
/// by itself after a few seconds at most; openraft also bounds each call with its own deadline.
pub trait ControlTransport: Send + Sync + 'static {
    /// Sends `payload` to `to` and returns its reply.
    fn call(
        &self,
        to: &NodeId,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;
}

/// Why a transport call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// There is no connection to the peer and none could be made (it is down, partitioned, or not
    /// known to the node). openraft backs off before trying it again.
    #[error("control peer `{peer}` is unreachable: {detail}")]
    Unreachable {
        /// The peer.
        peer: NodeId,
        /// What the transport saw.
        detail: String,
    },
    /// The call was sent but failed on the way (stream reset, connection lost, peer refused the
    /// stream). openraft retries at its next heartbeat.
    #[error("control call to `{peer}` failed: {detail}")]
    Failed {
        /// The peer.
        peer: NodeId,
        /// What the transport saw.
        detail: String,
    },
}

/// What went wrong on a call, before it is sorted into openraft's error kinds.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("request to `{peer}`: {source}")]
    Encode { peer: NodeId, source: WireError },
    #[error("reply from `{peer}`: {source}")]
    Decode { peer: NodeId, source: WireError },
    #[error("`{peer}` answered: {source}")]
    Remote { peer: NodeId, source: ServeError },
    #[error("`{peer}` answered {got} to a {asked} request")]
    Mismatch {
        peer: String,
        asked: &'static str,
        got: &'static str,
    },
    #[error("member {0:#018x} has no verge id in the membership")]
    Unnamed(RaftId),
}

impl CallError {
    /// Whether openraft should back off from this peer rather than retry at the next heartbeat.
    fn is_unreachable(&self) -> bool {
        match self {
            CallError::Transport(TransportError::Unreachable { .. }) | CallError::Unnamed(_) => {
                true
            }
            // A stopped peer is as good as down.
            CallError::Remote {
                source: ServeError::Stopped(_),
                ..
            } => true,
            _ => false,
        }
    }

    fn into_rpc<E: std::error::Error>(self) -> RPCError<RaftId, ControlNode, E> {
        if self.is_unreachable() {
            RPCError::Unreachable(Unreachable::new(&self))
        } else {
            RPCError::Network(NetworkError::new(&self))
        }
    }

    fn into_streaming(self) -> StreamingError<TypeConfig, Fatal<RaftId>> {
        if self.is_unreachable() {
            StreamingError::Unreachable(Unreachable::new(&self))
        } else {
            StreamingError::Network(NetworkError::new(&self))
        }
    }
}

fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::AppendEntries(_) => "AppendEntries",
        Reply::Vote(_) => "Vote",
        Reply::InstallSnapshot(_) => "InstallSnapshot",
        Reply::FullSnapshot(_) => "FullSnapshot",
        Reply::TimeoutNow { .. } => "TimeoutNow",
        Reply::Error(_) => "Error",
    }
}

/// Builds a [`PeerClient`] per peer for openraft.
#[derive(Clone)]
pub(crate) struct NetworkFactory {
    pub(crate) transport: Arc<dyn ControlTransport>,
    pub(crate) rpc_bytes_max: usize,
    pub(crate) backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: RaftId, node: &ControlNode) -> PeerClient {
        PeerClient {
            target,
            peer: node.id.clone(),
            transport: Arc::clone(&self.transport),
            rpc_bytes_max: self.rpc_bytes_max,
            backoff: self.backoff,
        }
    }
}

/// openraft's client for one peer.
pub(crate) struct PeerClient {
    target: RaftId,
    peer: Option<NodeId>,
    transport: Arc<dyn ControlTransport>,
    rpc_bytes_max: usize,
    backoff: Duration,
}

impl PeerClient {
    async fn call(&self, req: &Request) -> Result<Reply, CallError> {
        let peer = self.peer.clone().ok_or(CallError::Unnamed(self.target))?;
        call_peer(&*self.transport, &peer, req, self.rpc_bytes_max).await
    }
}

/// Sends `req` to `peer` and decodes the reply, turning a [`Reply::Error`] into an error.
async fn call_peer(
    transport: &dyn ControlTransport,
    peer: &NodeId,
    req: &Request,
    rpc_bytes_max: usize,
) -> Result<Reply, CallError> {
    let payload = wire::encode(req, rpc_bytes_max).map_err(|source| CallError::Encode {
        peer: peer.clone(),
        source,
    })?;
    let bytes = transport.call(peer, payload).await?;
    let reply: Reply = wire::decode(&bytes, rpc_bytes_max).map_err(|source| CallError::Decode {
        peer: peer.clone(),
        source,
    })?;
    match reply {
        Reply::Error(source) => Err(CallError::Remote {
            peer: peer.clone(),
            source,
        }),
        reply => Ok(reply),
    }
}

/// Asks `peer` to campaign now (see [`crate::Control::transfer_to`]).
pub(crate) async fn send_timeout_now(
    transport: &dyn ControlTransport,
    peer: &NodeId,
    rpc_bytes_max: usize,
) -> Result<bool, String> {
    match call_peer(transport, peer, &Request::TimeoutNow, rpc_bytes_max).await {
        Ok(Reply::TimeoutNow { campaigning }) => Ok(campaigning),
        Ok(other) => Err(format!(
            "`{peer}` answered {} to TimeoutNow",
            reply_name(&other)
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn mismatch(peer: &Option<NodeId>, asked: &'static str, got: &Reply) -> CallError {
    CallError::Mismatch {
        peer: peer.as_ref().map_or_else(String::new, NodeId::to_string),
        asked,
        got: reply_name(got),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RPCError<RaftId, ControlNode, RaftError<RaftId>>>
    {
        match self.call(&Request::AppendEntries(rpc)).await {
            Ok(Reply::AppendEntries(resp)) => Ok(resp),
            Ok(other) => Err(mismatch(&self.peer, "AppendEntries", &other).into_rpc()),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftId>,
        RPCError<RaftId, ControlNode, RaftError<RaftId, InstallSnapshotError>>,
    > {
        match self.call(&Request::InstallSnapshot(rpc)).await {
            Ok(Reply::InstallSnapshot(resp)) => Ok(resp),
            Ok(other) => Err(mismatch(&self.peer, "InstallSnapshot", &other).into_rpc()),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<RaftId>, RPCError<RaftId, ControlNode, RaftError<RaftId>>> {
        match self.call(&Request::Vote(rpc)).await {
            Ok(Reply::Vote(resp)) => Ok(resp),
            Ok(other) => Err(mismatch(&self.peer, "Vote", &other).into_rpc()),
            Err(e) => Err(e.into_rpc()),
        }
    }

    /// Sends the whole snapshot in one message: the control state is small (it is bounded by
    /// `rpc_bytes_max`), so chunking would only add round trips.
    async fn full_snapshot(
        &mut self,
        vote: Vote<RaftId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<RaftId>, StreamingError<TypeConfig, Fatal<RaftId>>> {
        let leader = vote.leader_id.node_id;
        let req = Request::FullSnapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        // openraft bounds the other calls itself but not this one.
        let ttl = option.hard_ttl();
        let call = tokio::time::timeout(ttl, self.call(&req));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = call => match res {
                Err(_) => Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: leader,
                    target: self.target,
                    timeout: ttl,
                })),
                Ok(Ok(Reply::FullSnapshot(resp))) => Ok(resp),
                Ok(Ok(other)) => Err(mismatch(&self.peer, "FullSnapshot", &other).into_streaming()),
                Ok(Err(e)) => Err(e.into_streaming()),
            },
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
