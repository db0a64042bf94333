//! [`Control`]: one node's handle on the Raft control plane.
//!
//! It starts openraft on the sled store with the network over the node's transport, bootstraps
//! the cluster from the configured voters, and turns openraft's API and metrics into what the
//! node needs: who leads and since when, proposals that answer "not leader, ask X", learners,
//! leadership transfer, and the entry point for peers' payloads ([`Control::serve`]). It makes no
//! gateway decisions: the node decides when to sync, transfer or drain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{Raft, RaftMetrics, ServerState, Snapshot, Vote};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use verge_proto::NodeId;

use crate::config::{ConfigError, ControlConfig};
use crate::id::{IdClash, check_distinct, raft_id};
use crate::network::{self, ControlTransport, NetworkFactory};
use crate::state::{self, Command, ControlState, Refusal, Response};
use crate::store::{self, OpenError};
use crate::wire::{self, Reply, Request, ServeError};
use crate::{ControlNode, RaftId, TypeConfig};

/// Who leads the control plane (and so is the gateway), as this node last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader.
    pub id: NodeId,
    /// Its term.
    pub term: u64,
    /// When this node first saw this leader in this term (its local clock).
    pub since: Instant,
}

/// This node's part in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The leader: the gateway.
    Leader,
    /// A voter following a leader (or waiting for one).
    Follower,
    /// A voter asking for votes.
    Candidate,
    /// A non-voting member.
    Learner,
    /// Raft has stopped on this node.
    Stopped,
}

/// A snapshot of this node's Raft progress, for `verge ctl` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node's role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// Index of the last entry in its log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to its state.
    pub applied_index: Option<u64>,
    /// Index the newest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Index up to which its log has been purged behind a snapshot.
    pub purged_index: Option<u64>,
}

/// Why a control-plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The `[control]` settings are inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The voter list is empty.
    #[error("the control plane needs at least one voter; list 3 or 5 node ids under `voters`")]
    NoVoters,
    /// Two member ids map to the same Raft id.
    #[error(transparent)]
    IdClash(#[from] IdClash),
    /// The on-disk store could not be opened.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// This node is not the leader; forward to `leader` (if known) and retry there.
    #[error("this node is not the control-plane leader{}", match .leader {
        Some(l) => format!("; the leader is `{l}`"),
        None => "; no leader is known yet (election in progress?)".to_owned(),
    })]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The operation did not complete in time. For a proposal the outcome is unknown: it may
    /// still commit. Commands are idempotent, so retrying is safe.
    #[error("{what} did not complete within {ms} ms (outcome unknown; safe to retry)")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The bound that passed.
        ms: u64,
    },
    /// The leader could not reach a quorum of voters to confirm it still leads.
    #[error("this node could not confirm its leadership: a quorum of voters did not answer")]
    NoQuorum,
    /// The node is not a voter (leadership can only go to a voter).
    #[error("`{0}` is not a voter of the control plane")]
    NotVoter(NodeId),
    /// The command was refused before it reached the log.
    #[error("command refused: {0}")]
    Invalid(Refusal),
    /// A leadership transfer did not hand over to the target.
    #[error("leadership transfer to `{target}` failed: {detail}")]
    TransferFailed {
        /// The intended leader.
        target: NodeId,
        /// What happened instead.
        detail: String,
    },
    /// openraft refused a membership change.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The local Raft has stopped (shut down, or a storage failure stopped it).
    #[error("the control plane of this node has stopped: {0}")]
    Stopped(String),
}

impl ControlError {
    /// Whether trying again (possibly at the leader it names) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ControlError::NotLeader { .. }
                | ControlError::Timeout { .. }
                | ControlError::NoQuorum
                | ControlError::TransferFailed { .. }
        )
    }
}

/// One node's handle on the control plane. Cheap to clone; all clones drive the same Raft.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    me_raft: RaftId,
    raft: Raft<TypeConfig>,
    cfg: ControlConfig,
    transport: Arc<dyn ControlTransport>,
    state_rx: watch::Receiver<ControlState>,
    leader_rx: watch::Receiver<Option<LeaderInfo>>,
    leader_task: JoinHandle<()>,
    /// Fails `changed()` once the store has been closed.
    store_closed: watch::Receiver<()>,
    /// One leadership transfer at a time.
    transfer: tokio::sync::Mutex<()>,
    /// What [`Control::set_electable`] last asked for, restored after a transfer.
    electable: AtomicBool,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("me", &self.inner.me)
            .field("leader", &*self.inner.leader_rx.borrow())
            .finish_non_exhaustive()
    }
}

/// The leader and term a metrics snapshot shows, with the leader's verge id.
fn leader_of(m: &RaftMetrics<RaftId, ControlNode>) -> Option<(NodeId, u64)> {
    let leader = m.current_leader?;
    let id = m
        .membership_config
        .membership()
        .get_node(&leader)
        .and_then(|n| n.id.clone())?;
    Some((id, m.current_term))
}

/// Follows openraft's metrics and publishes leader changes until the Raft stops.
fn spawn_leader_watch(
    mut metrics: watch::Receiver<RaftMetrics<RaftId, ControlNode>>,
    tx: watch::Sender<Option<LeaderInfo>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let seen = leader_of(&metrics.borrow_and_update());
            tx.send_if_modified(|current| {
                let same = match (&*current, &seen) {
                    (Some(c), Some((id, term))) => c.id == *id && c.term == *term,
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    *current = seen.map(|(id, term)| LeaderInfo {
                        id,
                        term,
                        since: Instant::now(),
                    });
                }
                !same
            });
            if metrics.changed().await.is_err() {
                tx.send_replace(None);
                return;
            }
        }
    })
}

fn stopped(e: impl fmt::Display) -> ControlError {
    ControlError::Stopped(e.to_string())
}

impl Control {
    /// Opens the store in `dir`, starts Raft as node `me`, and bootstraps the cluster if needed.
    ///
    /// `voters` is the configured voter list (3 or 5 ids, the same on every node). If `me` is
    /// the smallest of them (by id) and has never been initialized, it initializes the cluster
    /// with all of them; already-initialized is fine, so restarting is safe. The other voters
    /// wait to be contacted, and a node that is not a voter waits for the leader to add it as a
    /// learner ([`Control::add_learner`]).
    pub async fn start(
        me: NodeId,
        dir: &Path,
        cfg: ControlConfig,
        voters: Vec<NodeId>,
        transport: Arc<dyn ControlTransport>,
    ) -> Result<Control, ControlError> {
        cfg.validate()?;
        if voters.is_empty() {
            return Err(ControlError::NoVoters);
        }
        check_distinct(voters.iter().chain([&me]))?;
        let me_raft = raft_id(&me);

        let (log_store, sm_store) = {
            let dir = dir.to_owned();
            let me = me.clone();
            tokio::task::spawn_blocking(move || store::open(&dir, &me))
                .await
                .map_err(stopped)??
        };
        let state_rx = sm_store.subscribe();
        let store_closed = log_store.closed();
        let mut sorted: Vec<&NodeId> = voters.iter().collect();
        sorted.sort();
        let slot = sorted
            .iter()
            .position(|v| **v == me)
            .map(|rank| (rank, sorted.len()));
        let raft_cfg = cfg
            .to_openraft(slot)
            .validate()
            .map_err(|e| ControlError::Stopped(format!("openraft refused the config: {e}")))?;
        let network = NetworkFactory {
            transport: Arc::clone(&transport),
            rpc_bytes_max: cfg.rpc_bytes_max,
            backoff: Duration::from_millis(cfg.backoff_ms),
        };
        let raft = Raft::new(me_raft, Arc::new(raft_cfg), network, log_store, sm_store)
            .await
            .map_err(stopped)?;

        let smallest = voters.iter().min();
        if smallest == Some(&me) {
            let members: BTreeMap<RaftId, ControlNode> = voters
                .iter()
                .map(|v| (raft_id(v), ControlNode::new(v.clone())))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(node = %me, voters = ?voters, "control plane initialized"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::debug!(node = %me, "control plane already initialized")
                }
                Err(RaftError::APIError(e)) => return Err(ControlError::Membership(e.to_string())),
                Err(RaftError::Fatal(f)) => return Err(stopped(f)),
            }
        }

        let (leader_tx, leader_rx) = watch::channel(None);
        let leader_task = spawn_leader_watch(raft.metrics(), leader_tx);
        Ok(Control {
            inner: Arc::new(Inner {
                me,
                me_raft,
                raft,
                cfg,
                transport,
                state_rx,
                leader_rx,
                leader_task,
                store_closed,
                transfer: tokio::sync::Mutex::new(()),
                electable: AtomicBool::new(true),
            }),
        })
    }

    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.inner.me
    }

    /// The leader as this node last saw it, `None` during an election.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.inner.leader_rx.borrow().clone()
    }

    /// A receiver that wakes on every change of leader or term (`None`: no leader known).
    pub fn watch_leader(&self) -> watch::Receiver<Option<LeaderInfo>> {
        self.inner.leader_rx.clone()
    }

    /// Whether this node believes it is the leader (and so the gateway).
    ///
    /// A leader cut off from the others keeps believing it until it hears of a newer term;
    /// [`Control::linearizable_state`] confirms leadership with a quorum round trip.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// This node's current Raft term.
    pub fn term(&self) -> u64 {
        self.inner.raft.metrics().borrow().current_term
    }

    /// The applied state (possibly behind the leader's on a follower).
    pub fn state(&self) -> ControlState {
        self.inner.state_rx.borrow().clone()
    }

    /// A receiver that wakes whenever applied state changes.
    pub fn watch_state(&self) -> watch::Receiver<ControlState> {
        self.inner.state_rx.clone()
    }

    /// The state with every entry committed before the call applied, after confirming with a
    /// quorum that this node still leads. This is what a new gateway reads its cursors from.
    pub async fn linearizable_state(&self) -> Result<ControlState, ControlError> {
        let ms = self.inner.cfg.propose_timeout_ms;
        let res = tokio::time::timeout(
            Duration::from_millis(ms),
            self.inner.raft.ensure_linearizable(),
        )
        .await
        .map_err(|_| ControlError::Timeout {
            what: "confirming leadership",
            ms,
        })?;
        match res {
            Ok(_) => Ok(self.state()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ControlError::NotLeader {
                    leader: f.leader_node.and_then(|n| n.id),
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ControlError::NoQuorum)
            }
            Err(RaftError::Fatal(f)) => Err(stopped(f)),
        }
    }

    /// Proposes `cmd` and waits until it is committed and applied; the response says what
    /// changed. On a follower this is [`ControlError::NotLeader`] naming the leader to forward
    /// to. After `propose_timeout_ms` it is [`ControlError::Timeout`] (outcome unknown).
    pub async fn propose(&self, cmd: Command) -> Result<Response, ControlError> {
        match &cmd {
            Command::SetModel { name, digest, .. } => {
                state::check_model(name, digest).map_err(ControlError::Invalid)?
            }
            Command::AdvanceCursors { cursors, .. } => {
                state::check_cursors(cursors).map_err(ControlError::Invalid)?
            }
            Command::SetDrain { .. } | Command::Noop => {}
        }
        let ms = self.inner.cfg.propose_timeout_ms;
        let res =
            tokio::time::timeout(Duration::from_millis(ms), self.inner.raft.client_write(cmd))
                .await
                .map_err(|_| ControlError::Timeout {
                    what: "proposal",
                    ms,
                })?;
        match res {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ControlError::NotLeader {
                    leader: f.leader_node.and_then(|n| n.id),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ControlError::Membership(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(stopped(f)),
        }
    }

    /// Adds `id` as a learner: it receives the state but does not vote. Call it on the leader
    /// for each configured non-voter once this node leads (and again after every election:
    /// it is a no-op for a member). Returns when the membership change has committed, not when
    /// the learner has caught up.
    pub async fn add_learner(&self, id: NodeId) -> Result<(), ControlError> {
        let (membership, leader) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            (
                Arc::clone(&m.membership_config),
                leader_of(&m).map(|(id, _)| id),
            )
        };
        if !self.is_leader() {
            return Err(ControlError::NotLeader { leader });
        }
        let rid = raft_id(&id);
        let members: Vec<NodeId> = membership
            .nodes()
            .filter_map(|(_, n)| n.id.clone())
            .collect();
        if members.contains(&id) {
            return Ok(());
        }
        check_distinct(members.iter().chain([&id]))?;
        let ms = self.inner.cfg.propose_timeout_ms;
        let res = tokio::time::timeout(
            Duration::from_millis(ms),
            self.inner
                .raft
                .add_learner(rid, ControlNode::new(id.clone()), false),
        )
        .await
        .map_err(|_| ControlError::Timeout {
            what: "adding a learner",
            ms,
        })?;
        match res {
            Ok(_) => {
                tracing::info!(learner = %id, "control plane learner added");
                Ok(())
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ControlError::NotLeader {
                    leader: f.leader_node.and_then(|n| n.id),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ControlError::Membership(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(stopped(f)),
        }
    }

    /// Starts an election on this node now, if it is a voter and not the leader.
    ///
    /// On its own this rarely wins while a leader is alive: voters refuse to vote for anyone
    /// until the leader lease (`election_max_ms` after the leader's last heartbeat) has run out.
    /// That is what [`Control::transfer_to`] arranges before it asks the target to campaign.
    pub async fn campaign(&self) -> Result<(), ControlError> {
        self.inner.raft.trigger().elect().await.map_err(stopped)
    }

    /// Whether this node may start elections on its own (default true). A node that must not
    /// become the gateway (drained) can turn it off; it still votes and can still be made
    /// leader by [`Control::campaign`]. Never turn it off on every voter: nobody would take
    /// over from a failed leader.
    pub fn set_electable(&self, electable: bool) {
        self.inner.electable.store(electable, Ordering::SeqCst);
        self.inner.raft.runtime_config().elect(electable);
    }

    /// Hands leadership (and so the gateway role) to the voter `target`. Call it on the leader.
    ///
    /// openraft 0.9 has no transfer API, so this follows Raft's TimeoutNow: the leader stops
    /// sending heartbeats and stops campaigning itself, waits for the voters' leader lease to run
    /// out, then asks `target` over the control transport to campaign ([`Control::campaign`] on
    /// the target). The target's vote request arrives before any other voter's own election
    /// timer fires, and its log is as long as the leader's, so it wins. Heartbeats and elections
    /// are restored on this node whatever happens. Takes about `election_max_ms` plus a vote
    /// round trip; proposals committed meanwhile refresh the lease and can make the transfer fail
    /// ([`ControlError::TransferFailed`]), after which some leader (maybe this one) is elected
    /// as after any failure.
    pub async fn transfer_to(&self, target: &NodeId) -> Result<(), ControlError> {
        let inner = &self.inner;
        let _one_at_a_time = inner.transfer.lock().await;
        if *target == inner.me {
            return if self.is_leader() {
                Ok(())
            } else {
                Err(ControlError::NotLeader {
                    leader: self.leader().map(|l| l.id),
                })
            };
        }
        let voters: BTreeSet<RaftId> = {
            let m = inner.raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader {
                return Err(ControlError::NotLeader {
                    leader: leader_of(&m).map(|(id, _)| id),
                });
            }
            m.membership_config.voter_ids().collect()
        };
        if !voters.contains(&raft_id(target)) {
            return Err(ControlError::NotVoter(target.clone()));
        }
        let failed = |detail: String| ControlError::TransferFailed {
            target: target.clone(),
            detail,
        };
        let runtime = inner.raft.runtime_config();
        runtime.heartbeat(false);
        runtime.elect(false);
        let outcome = async {
            // The voters' leases run from the last heartbeat they received; half a heartbeat of
            // margin, well inside election_min_ms after which the first of them would campaign.
            let lease =
                inner.cfg.leader_lease() + Duration::from_millis(inner.cfg.heartbeat_ms / 2);
            tokio::time::sleep(lease).await;
            let campaigning =
                network::send_timeout_now(&*inner.transport, target, inner.cfg.rpc_bytes_max)
                    .await
                    .map_err(failed)?;
            if !campaigning {
                return Err(failed(format!("`{target}` does not follow this leader")));
            }
            let wait = Duration::from_millis(4 * inner.cfg.election_max_ms);
            let mut rx = inner.leader_rx.clone();
            let me = inner.me.clone();
            let new = tokio::time::timeout(
                wait,
                rx.wait_for(|l| l.as_ref().is_some_and(|l| l.id != me)),
            )
            .await
            .map_err(|_| failed(format!("no new leader within {} ms", wait.as_millis())))?
            .map_err(|_| ControlError::Stopped("leader watch closed".into()))?
            .clone();
            match new {
                Some(l) if l.id == *target => Ok(()),
                Some(l) => Err(failed(format!("`{}` won the election instead", l.id))),
                None => Err(failed("no leader".into())),
            }
        }
        .await;
        runtime.heartbeat(true);
        runtime.elect(inner.electable.load(Ordering::SeqCst));
        match &outcome {
            Ok(()) => {
                tracing::info!(from = %inner.me, to = %target, "control leadership transferred")
            }
            Err(e) => tracing::warn!(error = %e, "control leadership transfer failed"),
        }
        outcome
    }

    /// Serves a payload a peer sent through its [`ControlTransport`]; returns the encoded reply
    /// (an encoded [`ServeError`] for a malformed or refused request). `from` is the peer's
    /// authenticated id: a request on behalf of another member is refused.
    pub async fn serve(&self, from: &NodeId, payload: Vec<u8>) -> Vec<u8> {
        let max = self.inner.cfg.rpc_bytes_max;
        let reply = match wire::decode::<Request>(&payload, max) {
            Err(e) => {
                tracing::debug!(peer = %from, error = %e, "malformed control request");
                Reply::Error(ServeError::BadRequest(e.to_string()))
            }
            Ok(req) => self.handle(from, req).await,
        };
        wire::encode_reply_or_error(&reply, max)
    }

    async fn handle(&self, from: &NodeId, req: Request) -> Reply {
        let raft = &self.inner.raft;
        let check = |vote: &Vote<RaftId>| -> Result<(), ServeError> {
            let claimed = vote.leader_id.voted_for();
            if claimed == Some(raft_id(from)) {
                Ok(())
            } else {
                Err(ServeError::Impersonation {
                    from: from.clone(),
                    claimed: claimed.unwrap_or_default(),
                })
            }
        };
        let result = match req {
            Request::AppendEntries(r) => match check(&r.vote) {
                Err(e) => Err(e),
                Ok(()) => raft
                    .append_entries(r)
                    .await
                    .map(Reply::AppendEntries)
                    .map_err(|e| ServeError::Stopped(e.to_string())),
            },
            Request::Vote(r) => match check(&r.vote) {
                Err(e) => Err(e),
                Ok(()) => raft
                    .vote(r)
                    .await
                    .map(Reply::Vote)
                    .map_err(|e| ServeError::Stopped(e.to_string())),
            },
            Request::InstallSnapshot(r) => match check(&r.vote) {
                Err(e) => Err(e),
                Ok(()) => raft
                    .install_snapshot(r)
                    .await
                    .map(Reply::InstallSnapshot)
                    .map_err(|e| match e {
                        RaftError::APIError(e) => ServeError::Refused(e.to_string()),
                        RaftError::Fatal(f) => ServeError::Stopped(f.to_string()),
                    }),
            },
            Request::FullSnapshot { vote, meta, data } => match check(&vote) {
                Err(e) => Err(e),
                Ok(()) => {
                    let snapshot = Snapshot {
                        meta,
                        snapshot: Box::new(Cursor::new(data)),
                    };
                    raft.install_full_snapshot(vote, snapshot)
                        .await
                        .map(Reply::FullSnapshot)
                        .map_err(|e| ServeError::Stopped(e.to_string()))
                }
            },
            Request::TimeoutNow => {
                // Only the leader this node follows may make it campaign.
                let follows = raft.metrics().borrow().current_leader == Some(raft_id(from));
                if follows && from != &self.inner.me {
                    raft.trigger()
                        .elect()
                        .await
                        .map(|()| Reply::TimeoutNow { campaigning: true })
                        .map_err(|e| ServeError::Stopped(e.to_string()))
                } else {
                    Ok(Reply::TimeoutNow { campaigning: false })
                }
            }
        };
        result.unwrap_or_else(|e| {
            tracing::debug!(peer = %from, error = %e, "control request not served");
            Reply::Error(e)
        })
    }

    /// Stops Raft on this node and waits (up to 5 s) until its store is closed, so the same
    /// directory can be opened again. Other clones of this handle stop working too.
    pub async fn shutdown(&self) -> Result<(), ControlError> {
        const CLOSE_MS: u64 = 5_000;
        let res = self.inner.raft.shutdown().await.map_err(stopped);
        self.inner.leader_task.abort();
        let mut closed = self.inner.store_closed.clone();
        // No value is ever sent: `changed()` returns only when the store's sender is dropped.
        let waited = tokio::time::timeout(Duration::from_millis(CLOSE_MS), async {
            while closed.changed().await.is_ok() {}
        })
        .await;
        res?;
        waited.map_err(|_| ControlError::Timeout {
            what: "closing the control store",
            ms: CLOSE_MS,
        })
    }

    /// Waits until this node has applied the log up to `index` (for instance the leader's
    /// `Status::applied_index`, to know a restarted or new member has caught up).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ControlError> {
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.last_applied.is_some_and(|l| l.index >= index),
                format!("applied index >= {index}"),
            )
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => ControlError::Timeout {
                    what: "catching up",
                    ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
                openraft::metrics::WaitError::ShuttingDown => stopped(e),
            })
    }

    /// This node's role, term and log progress.
    pub fn status(&self) -> Status {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let role = if m.running_state.is_err() {
            Role::Stopped
        } else {
            match m.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Stopped,
            }
        };
        Status {
            role,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
        }
    }

    /// This node's Raft id (the hash of its node id), for logs that show openraft's ids.
    pub fn raft_id(&self) -> RaftId {
        self.inner.me_raft
    }
}
