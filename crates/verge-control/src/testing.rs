//! An in-memory [`ControlTransport`] for tests and simulations: every node's calls go straight to
//! the target's [`Control::serve`], through a switchboard that can isolate nodes and drop the
//! traffic of single directed links.
//!
//! It is the second implementation of the transport seam (the node's QUIC one is the first), so
//! the Raft behaviour can be tested without sockets: elections, replication, partitions,
//! restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use verge_proto::NodeId;

use crate::{Control, ControlTransport, TransportError};

#[derive(Debug, Default)]
struct Board {
    /// Nodes that answer calls.
    nodes: BTreeMap<NodeId, Control>,
    /// Nodes taken down by [`MemNetwork::unregister`]: neither reached nor heard until they
    /// register again.
    down: BTreeSet<NodeId>,
    /// Nodes cut off from everyone, both directions.
    isolated: BTreeSet<NodeId>,
    /// Directed links whose traffic is dropped: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
}

impl Board {
    fn blocked(&self, from: &NodeId, to: &NodeId) -> bool {
        self.isolated.contains(from)
            || self.isolated.contains(to)
            || self.down.contains(from)
            || self.cut.contains(&(from.clone(), to.clone()))
    }
}

/// The switchboard shared by every node of an in-memory cluster. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct MemNetwork {
    board: Arc<Mutex<Board>>,
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        // The board holds plain sets; a panic elsewhere cannot leave it half-updated.
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The transport node `me` uses to call the others.
    pub fn transport(&self, me: NodeId) -> Arc<dyn ControlTransport> {
        Arc::new(MemTransport {
            me,
            net: self.clone(),
        })
    }

    /// Makes `control` answer calls addressed to its id (replacing an earlier incarnation).
    pub fn register(&self, control: &Control) {
        let mut board = self.board();
        board.down.remove(control.me());
        board.nodes.insert(control.me().clone(), control.clone());
    }

    /// Takes `id` off the network as if its process died: calls to it are unreachable and its
    /// own calls go nowhere, until a new incarnation registers.
    pub fn unregister(&self, id: &NodeId) {
        let mut board = self.board();
        board.nodes.remove(id);
        board.down.insert(id.clone());
    }

    /// Cuts `id` off from every other node, both directions.
    pub fn isolate(&self, id: &NodeId) {
        self.board().isolated.insert(id.clone());
    }

    /// Drops calls from `from` to `to` (one direction; replies on calls the other way too).
    pub fn cut(&self, from: &NodeId, to: &NodeId) {
        self.board().cut.insert((from.clone(), to.clone()));
    }

    /// Restores every link and every isolated node.
    pub fn heal(&self) {
        let mut board = self.board();
        board.isolated.clear();
        board.cut.clear();
    }
}

#[derive(Debug)]
struct MemTransport {
    me: NodeId,
    net: MemNetwork,
}

impl ControlTransport for MemTransport {
    fn call(
        &self,
        to: &NodeId,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>> {
        let target = {
            let board = self.net.board();
            if board.blocked(&self.me, to) {
                None
            } else {
                board.nodes.get(to).cloned()
            }
        };
        let me = self.me.clone();
        let to = to.clone();
        let net = self.net.clone();
        Box::pin(async move {
            let Some(control) = target else {
                return Err(TransportError::Unreachable {
                    peer: to,
                    detail: "no route (node down or partitioned)".into(),
                });
            };
            let reply = control.serve(&me, payload).await;
            if net.board().blocked(&to, &me) {
                return Err(TransportError::Failed {
                    peer: to,
                    detail: "reply lost (link cut)".into(),
                });
            }
            Ok(reply)
        })
    }
}
