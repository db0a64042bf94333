//! Requests from this node to its peers over the connections the node's dialers keep open.
//!
//! Each dialer publishes its current connection here while it is up; a request opens a stream on
//! it, sends one [`PeerMessage::Request`] and waits (bounded) for the [`PeerMessage::Reply`]. No
//! connection, a failed stream or a late answer is an error naming the peer: callers (the control
//! plane, the gateway's reads) treat every peer as possibly gone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quinn::Connection;
use verge_proto::NodeId;
use verge_proto::peer::{PeerMessage, PeerReply, PeerRequest};

/// Why a request to a peer got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer is not configured.
    #[error("`{0}` is not a peer of this node")]
    Unknown(NodeId),
    /// No connection to the peer is up.
    #[error("no connection to peer {0}")]
    Down(NodeId),
    /// The stream failed or the answer was not a reply.
    #[error("request to peer {peer} failed: {detail}")]
    Failed {
        /// The peer.
        peer: NodeId,
        /// What happened.
        detail: String,
    },
    /// No answer in time.
    #[error("peer {peer} did not answer within {} ms", timeout.as_millis())]
    Timeout {
        /// The peer.
        peer: NodeId,
        /// The bound.
        timeout: Duration,
    },
}

/// The connections to one peer: the one this node dialed, and the one the peer dialed to it.
#[derive(Debug, Default)]
struct Slot {
    dialed: Option<(Connection, Instant)>,
    inbound: Option<(Connection, Instant)>,
}

impl Slot {
    /// The newest open connection. A peer that restarted dials in at once, while the connection
    /// this node dialed to its old incarnation looks open until heartbeats time out (about a
    /// second): requests sent on it would wait for nothing.
    fn best(&self) -> Option<Connection> {
        [&self.dialed, &self.inbound]
            .into_iter()
            .flatten()
            .filter(|(c, _)| c.close_reason().is_none())
            .max_by_key(|(_, at)| *at)
            .map(|(c, _)| c.clone())
    }
}

/// The current connections to each peer: the one its dialer last published, and the one the peer
/// last dialed in. Requests go on the newer of the two: right after the peer restarted that is the
/// one it dialed in, so it hears the gateway's heartbeats and vote requests at once, while this
/// node's dialer still holds (or backs off from) a connection to the dead incarnation.
#[derive(Debug, Clone)]
pub struct PeerLinks {
    conns: Arc<BTreeMap<NodeId, Mutex<Slot>>>,
    frame_max: usize,
}

impl PeerLinks {
    /// Links to `peers`, none connected yet.
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a NodeId>, frame_max: usize) -> Self {
        Self {
            conns: Arc::new(
                peers
                    .into_iter()
                    .map(|p| (p.clone(), Mutex::new(Slot::default())))
                    .collect(),
            ),
            frame_max,
        }
    }

    /// Publishes (or, with `None`, withdraws) the connection to `peer`.
    pub fn set(&self, peer: &NodeId, conn: Option<Connection>) {
        if let Some(slot) = self.conns.get(peer) {
            slot.lock().unwrap_or_else(PoisonError::into_inner).dialed =
                conn.map(|c| (c, Instant::now()));
        }
    }

    /// Publishes the connection `peer` dialed to this node.
    pub fn set_inbound(&self, peer: &NodeId, conn: Connection) {
        if let Some(slot) = self.conns.get(peer) {
            slot.lock().unwrap_or_else(PoisonError::into_inner).inbound =
                Some((conn, Instant::now()));
        }
    }

    /// Withdraws the inbound connection `conn` from `peer`, unless a newer one replaced it.
    pub fn clear_inbound(&self, peer: &NodeId, conn: &Connection) {
        if let Some(slot) = self.conns.get(peer) {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if slot
                .inbound
                .as_ref()
                .is_some_and(|(c, _)| c.stable_id() == conn.stable_id())
            {
                slot.inbound = None;
            }
        }
    }

    /// The peers.
    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.conns.keys()
    }

    /// Sends `req` to `peer` and waits at most `timeout` for its reply.
    ///
    /// # Errors
    ///
    /// [`LinkError`] naming the peer; a [`PeerReply::Error`] is returned as `Ok`.
    pub async fn request(
        &self,
        peer: &NodeId,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, LinkError> {
        let conn = {
            let slot = self
                .conns
                .get(peer)
                .ok_or_else(|| LinkError::Unknown(peer.clone()))?
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            slot.best().ok_or_else(|| LinkError::Down(peer.clone()))?
        };
        let msg = PeerMessage::Request(req);
        let call = verge_net::request::<_, PeerMessage>(&conn, &msg, self.frame_max);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(PeerMessage::Reply(reply))) => Ok(reply),
            Ok(Ok(other)) => Err(LinkError::Failed {
                peer: peer.clone(),
                detail: format!("answered with {} instead of a reply", kind(&other)),
            }),
            Ok(Err(e)) => Err(LinkError::Failed {
                peer: peer.clone(),
                detail: e.to_string(),
            }),
            Err(_) => Err(LinkError::Timeout {
                peer: peer.clone(),
                timeout,
            }),
        }
    }
}

fn kind(m: &PeerMessage) -> &'static str {
    match m {
        PeerMessage::Ping { .. } => "a ping",
        PeerMessage::Pong { .. } => "a pong",
        PeerMessage::Blob { .. } => "a blob",
        PeerMessage::Replication(_) => "a replication message",
        PeerMessage::ReplicationBatch(_) => "a batch of replication messages",
        PeerMessage::Request(_) => "a request",
        PeerMessage::Reply(_) => "a reply",
        PeerMessage::Load(_) => "a load report",
    }
}
