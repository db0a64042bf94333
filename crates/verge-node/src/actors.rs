//! The node's actors.
//!
//! [`MembershipActor`] is the only owner of the membership table. [`NetworkActor`] owns the QUIC
//! endpoint; it runs the accept loop and one dialer per peer as tokio tasks, because a connection's
//! IO must not wait on the actor's mailbox, and reports what it hears to the membership actor.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use quinn::Connection;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use verge_net::{Accepted, CloseCode, FramedRecv, FramedSend, Net, NetError, authenticate};
use verge_proto::admin::{
    AdminRequest, AdminResponse, MemberState, MemberView, NodeStatus, SyncView,
};
use verge_proto::peer::{PeerMessage, PeerReply, PeerRequest, PeerStream};
use verge_proto::replication::ReplicationMessage;
use verge_proto::{CodecError, NodeId};

use crate::config::NodeConfig;
use crate::links::PeerLinks;
use crate::membership::{DetectorConfig, Membership};
use crate::metrics::Metrics;
use crate::storage::{FromPeer, PeerLiveness};

/// How often the membership table is re-evaluated.
const TICK: Duration = Duration::from_millis(50);
/// The most records one peer read returns (about 1 MiB with 4-value records).
pub const PEER_READ_RECORDS_MAX: u32 = 16_384;
/// First and longest wait between two attempts to dial a peer.
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The most replication messages sent to a peer as one frame.
const REPLICATION_BATCH_MESSAGES_MAX: usize = 512;

/// Evidence that a peer is alive.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Heard {
    /// The peer, as its certificate says.
    pub id: NodeId,
    /// A round trip measured with it, if any.
    pub rtt: Option<Duration>,
}

/// A peer's load report, heard with its heartbeats.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HeardLoad {
    /// The peer, as its certificate says.
    pub id: NodeId,
    /// What it reported.
    pub load: verge_proto::peer::LoadReport,
}

/// Asks for the membership table.
#[derive(Debug, Message)]
#[rtype(result = "Vec<MemberView>")]
pub struct GetMembers;

/// Asks for (alive, suspect, down) counts.
#[derive(Debug, Message)]
#[rtype(result = "(u32, u32, u32)")]
pub struct GetCounts;

/// Asks the membership actor to report every peer going up (alive) or down to `to`, starting
/// with the peers alive now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WatchLiveness {
    /// Who hears it (the store actor, for replication).
    pub to: Recipient<PeerLiveness>,
}

/// Owns the membership table; fed by heartbeats and its own clock.
#[derive(Debug)]
pub struct MembershipActor {
    table: Membership,
    origin: Instant,
    metrics: Metrics,
    watcher: Option<Recipient<PeerLiveness>>,
    /// Peers last reported up to the watcher. Suspect is not down: a peer stays up until the
    /// detector says down.
    reported_up: BTreeSet<NodeId>,
    /// Each peer's last load report and when it came.
    loads: BTreeMap<NodeId, (verge_proto::peer::LoadReport, Duration)>,
    /// This node's own load.
    gauge: crate::offload::LoadGauge,
}

impl MembershipActor {
    /// A table of the configured peers.
    pub fn new(cfg: &NodeConfig, listen: SocketAddr, metrics: Metrics) -> Self {
        let m = &cfg.membership;
        let detector = DetectorConfig {
            heartbeat: Duration::from_millis(m.heartbeat_ms),
            acceptable_pause: Duration::from_millis(m.acceptable_pause_ms),
            min_std_dev: Duration::from_millis(m.min_std_dev_ms),
            phi_suspect: m.phi_suspect,
            phi_down: m.phi_down,
        };
        let peers = cfg.peers.iter().map(|p| (p.id.clone(), p.addr.to_string()));
        let table = Membership::new(cfg.id.clone(), listen.to_string(), peers, detector);
        let (a, s, d) = table.counts();
        metrics.set_peers(a, s, d);
        Self {
            table,
            origin: Instant::now(),
            metrics,
            watcher: None,
            reported_up: BTreeSet::new(),
            loads: BTreeMap::new(),
            gauge: crate::offload::LoadGauge::default(),
        }
    }

    /// Shows `gauge` as this node's own load in the table.
    pub fn with_load(mut self, gauge: crate::offload::LoadGauge) -> Self {
        self.gauge = gauge;
        self
    }

    fn report(&mut self, peer: &NodeId, up: bool) {
        let changed = if up {
            self.reported_up.insert(peer.clone())
        } else {
            self.reported_up.remove(peer)
        };
        if changed && let Some(w) = &self.watcher {
            w.do_send(PeerLiveness {
                peer: peer.clone(),
                up,
            });
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn record(&mut self, tr: &crate::membership::Transition) {
        match tr.to {
            MemberState::Alive => self.report(&tr.id, true),
            MemberState::Down => self.report(&tr.id, false),
            MemberState::Suspect => {}
        }
        let silent = tr
            .silent_for
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "never heard".into());
        match tr.to {
            MemberState::Alive => info!(peer = %tr.id, from = tr.from.as_str(), "peer is alive"),
            MemberState::Suspect => {
                warn!(peer = %tr.id, silent_for = %silent, "peer is suspect")
            }
            MemberState::Down => warn!(peer = %tr.id, silent_for = %silent, "peer is down"),
        }
        self.metrics.transition(tr.to.as_str());
        let (a, s, d) = self.table.counts();
        self.metrics.set_peers(a, s, d);
    }
}

impl Actor for MembershipActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |act, _| {
            let now = act.now();
            for tr in act.table.tick(now) {
                act.record(&tr);
            }
        });
    }
}

impl Handler<Heard> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: Heard, _: &mut Self::Context) {
        let now = self.now();
        if let Some(tr) = self.table.heard(&msg.id, now, msg.rtt) {
            self.record(&tr);
        }
    }
}

impl Handler<WatchLiveness> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: WatchLiveness, _: &mut Self::Context) {
        self.watcher = Some(msg.to);
        self.reported_up.clear();
        let alive: Vec<NodeId> = self
            .table
            .view(self.now())
            .into_iter()
            .filter(|m| !m.is_self && m.state == MemberState::Alive)
            .map(|m| m.id)
            .collect();
        for peer in alive {
            self.report(&peer, true);
        }
    }
}

impl Handler<HeardLoad> for MembershipActor {
    type Result = ();
    fn handle(&mut self, msg: HeardLoad, _: &mut Self::Context) {
        let now = self.now();
        self.loads.insert(msg.id, (msg.load, now));
    }
}

impl Handler<GetMembers> for MembershipActor {
    type Result = MessageResult<GetMembers>;
    fn handle(&mut self, _: GetMembers, _: &mut Self::Context) -> Self::Result {
        let now = self.now();
        let mut view = self.table.view(now);
        for v in &mut view {
            v.load = if v.is_self {
                // The drained flag is the control plane's; peers hear it in their reports.
                Some((self.gauge.report(false), 0))
            } else {
                self.loads
                    .get(&v.id)
                    .map(|(l, at)| (*l, now.saturating_sub(*at).as_millis() as u64))
            };
        }
        MessageResult(view)
    }
}

impl Handler<GetCounts> for MembershipActor {
    type Result = MessageResult<GetCounts>;
    fn handle(&mut self, _: GetCounts, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.table.counts())
    }
}

/// Facts about this node that the admin endpoint reports.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// This node's id.
    pub id: NodeId,
    /// The bound QUIC address.
    pub listen: SocketAddr,
    /// When the process started.
    pub started: Instant,
}

/// Everything a connection task needs, shared read-only.
#[derive(Debug)]
struct Shared {
    net: Net,
    membership: Addr<MembershipActor>,
    store: Addr<crate::storage::StoreActor>,
    metrics: Metrics,
    info: NodeInfo,
    peers: BTreeMap<NodeId, SocketAddr>,
    heartbeat: Duration,
    /// A dialed peer that has not answered a ping for this long has its connection replaced.
    pong_timeout: Duration,
    origin: Instant,
    /// Whether `verge ctl fault` is accepted (config `[faults] enabled`).
    faults_enabled: bool,
    /// Where each dialer publishes its connection, for requests to peers.
    links: PeerLinks,
    /// The control plane, if configured.
    control: Option<verge_control::Control>,
    /// The gateway task's view of the cloud sync.
    board: crate::gateway::SyncBoard,
    /// The sensor source's status.
    sensors: crate::sensing::SensorBoard,
    /// The node's configuration, for the gateway view.
    cfg: NodeConfig,
    /// Model bundles kept and what this node runs.
    models: ModelParts,
    /// This node's inference load, sent with the heartbeats.
    load: crate::offload::LoadGauge,
    /// Runs the batches neighbours offload here, and hears their loads.
    engine: crate::engine::Engine,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    fn frame_max(&self) -> usize {
        self.net.config().frame_bytes_max
    }

    /// This node's load as its peers should hear it: drained if the control plane says so.
    fn load_report(&self) -> verge_proto::peer::LoadReport {
        let drained = self
            .control
            .as_ref()
            .is_some_and(|c| c.watch_state().borrow().drained.contains(&self.info.id));
        self.load.report(drained)
    }
}

/// Owns the QUIC endpoint: accepts peers and admins, dials every configured peer.
#[derive(Debug)]
pub struct NetworkActor {
    shared: Arc<Shared>,
    /// Each peer's replication queue, handed to its dialer when the actor starts.
    outboxes: BTreeMap<NodeId, mpsc::Receiver<Vec<ReplicationMessage>>>,
}

/// What the network actor hands frames to and takes messages from.
#[derive(Debug)]
pub struct Wiring {
    /// Hears heartbeats.
    pub membership: Addr<MembershipActor>,
    /// Serves ingest, reads and replication frames.
    pub store: Addr<crate::storage::StoreActor>,
    /// Each peer's replication queue.
    pub outboxes: BTreeMap<NodeId, mpsc::Receiver<Vec<ReplicationMessage>>>,
    /// Where dialers publish their connections.
    pub links: PeerLinks,
    /// The control plane, if configured; serves peers' control calls.
    pub control: Option<verge_control::Control>,
    /// The gateway task's view of the cloud sync.
    pub board: crate::gateway::SyncBoard,
    /// The sensor source's status.
    pub sensors: crate::sensing::SensorBoard,
    /// Model bundles kept and what this node runs.
    pub models: ModelParts,
    /// This node's inference load, sent with the heartbeats.
    pub load: crate::offload::LoadGauge,
    /// Runs the batches neighbours offload here, and hears their loads.
    pub engine: crate::engine::Engine,
}

/// The node's model bundles and what it runs (see [`crate::models`]).
#[derive(Debug, Clone)]
pub struct ModelParts {
    /// Bundles kept under data_dir/models.
    pub cache: Arc<crate::models::ModelCache>,
    /// What this node runs.
    pub board: crate::models::ModelBoard,
}

impl NetworkActor {
    /// A network actor for `net`.
    pub fn new(
        net: Net,
        cfg: &NodeConfig,
        wiring: Wiring,
        metrics: Metrics,
        info: NodeInfo,
    ) -> Self {
        let Wiring {
            membership,
            store,
            outboxes,
            links,
            control,
            board,
            sensors,
            models,
            load,
            engine,
        } = wiring;
        let heartbeat = Duration::from_millis(cfg.membership.heartbeat_ms);
        let shared = Shared {
            net,
            membership,
            store,
            metrics,
            info,
            peers: cfg.peers.iter().map(|p| (p.id.clone(), p.addr)).collect(),
            heartbeat,
            pong_timeout: (heartbeat * 5).max(Duration::from_secs(1)),
            origin: Instant::now(),
            faults_enabled: cfg.faults.enabled,
            links,
            control,
            board,
            sensors,
            cfg: cfg.clone(),
            models,
            load,
            engine,
        };
        Self {
            shared: Arc::new(shared),
            outboxes,
        }
    }
}

impl Actor for NetworkActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        tokio::spawn(accept_loop(self.shared.clone()));
        let mut outboxes = std::mem::take(&mut self.outboxes);
        for (id, addr) in &self.shared.peers {
            // A peer without a queue (none is made only in tests) gets a closed one.
            let rx = outboxes.remove(id).unwrap_or_else(|| mpsc::channel(1).1);
            tokio::spawn(dial_loop(self.shared.clone(), id.clone(), *addr, rx));
        }
    }
}

async fn accept_loop(s: Arc<Shared>) {
    while let Some(incoming) = s.net.accept().await {
        let s = s.clone();
        tokio::spawn(async move {
            let timeout = s.net.config().handshake_timeout;
            match authenticate(incoming, timeout).await {
                Ok(Accepted::Peer { id, conn }) => {
                    if !s.peers.contains_key(&id) {
                        s.metrics.refused("unknown_peer");
                        warn!(peer = %id, remote = %conn.remote_address(),
                            "refused a connection from node {id}: not among this node's peers");
                        let reason = format!("node {id} is not among {}'s peers", s.info.id);
                        conn.close(CloseCode::UnknownPeer.varint(), reason.as_bytes());
                        return;
                    }
                    s.metrics.handshake("inbound", "ok");
                    debug!(peer = %id, "peer connected");
                    s.links.set_inbound(&id, conn.clone());
                    serve_peer(s.clone(), id.clone(), conn.clone()).await;
                    s.links.clear_inbound(&id, &conn);
                }
                Ok(Accepted::Admin { name, conn }) => {
                    s.metrics.handshake("inbound", "ok");
                    debug!(admin = %name, "admin connected");
                    serve_admin(s, name, conn).await;
                }
                Err(e) => {
                    s.metrics.handshake("inbound", e.kind());
                    if matches!(e, verge_net::AcceptError::WrongRole { .. }) {
                        s.metrics.refused("role");
                    }
                    warn!("refused a connection: {e}");
                }
            }
        });
    }
}

/// Serves the streams a peer opens: answers pings, echoes blobs.
async fn serve_peer(s: Arc<Shared>, id: NodeId, conn: Connection) {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(pair) => pair,
            Err(e) => {
                debug!(peer = %id, "inbound connection ended: {e}");
                return;
            }
        };
        let s = s.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut send = FramedSend::new(send, s.frame_max());
            let mut recv = FramedRecv::new(recv, s.frame_max());
            loop {
                let msg = match recv.recv::<PeerMessage>().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        frame_failure(&s, &id, &e);
                        recv.stop(CloseCode::BadFrame);
                        return;
                    }
                };
                s.metrics.frame_in();
                let reply = match msg {
                    PeerMessage::Ping { seq, sent_us } => {
                        s.membership.do_send(Heard {
                            id: id.clone(),
                            rtt: None,
                        });
                        Some(PeerMessage::Pong {
                            seq,
                            echo_us: sent_us,
                        })
                    }
                    PeerMessage::Load(load) => {
                        s.engine.heard(&id, load);
                        s.membership.do_send(HeardLoad {
                            id: id.clone(),
                            load,
                        });
                        None
                    }
                    blob @ PeerMessage::Blob { .. } => Some(blob),
                    PeerMessage::Pong { .. } => None,
                    PeerMessage::Replication(msg) => {
                        s.store.do_send(FromPeer {
                            from: id.clone(),
                            msgs: vec![msg],
                        });
                        None
                    }
                    PeerMessage::ReplicationBatch(msgs) => {
                        s.store.do_send(FromPeer {
                            from: id.clone(),
                            msgs,
                        });
                        None
                    }
                    PeerMessage::Request(req) => {
                        Some(PeerMessage::Reply(answer_peer(&s, &id, req).await))
                    }
                    PeerMessage::Reply(_) => {
                        debug!(peer = %id, "ignored a reply nobody asked for");
                        None
                    }
                };
                if let Some(reply) = reply {
                    if send.send(&reply).await.is_err() {
                        return;
                    }
                    s.metrics.frame_out();
                }
            }
        });
    }
}

/// Answers a peer's request.
async fn answer_peer(s: &Shared, from: &NodeId, req: PeerRequest) -> PeerReply {
    let unavailable = |e: MailboxError| PeerReply::Error(format!("the store is unavailable: {e}"));
    match req {
        PeerRequest::Control(payload) => match &s.control {
            Some(control) => PeerReply::Control(control.serve(from, payload.to_vec()).await.into()),
            None => PeerReply::Error(format!(
                "node {} runs no control plane (no [control] voters in its config)",
                s.info.id
            )),
        },
        PeerRequest::ModelBundle { digest } => match s.models.cache.get(&digest) {
            Some(bytes) => PeerReply::ModelBundle(bytes.into()),
            None => PeerReply::Error(format!("node {} keeps no model bundle {digest}", s.info.id)),
        },
        PeerRequest::Models => PeerReply::Models(s.models.board.report(&s.info.id)),
        PeerRequest::Infer(req) => {
            let drained = s.load_report().drained;
            s.engine.serve(from, req, drained).await
        }
        PeerRequest::Streams { kind } => match s.store.send(crate::storage::ListStreams).await {
            Ok(views) => PeerReply::Streams(
                views
                    .into_iter()
                    .filter(|v| kind.is_none_or(|k| v.id.kind == k))
                    .map(|v| PeerStream {
                        id: v.id,
                        first_seq: v.first_seq,
                        durable_head: v.durable_head,
                    })
                    .collect(),
            ),
            Err(e) => unavailable(e),
        },
        PeerRequest::Read {
            stream,
            from,
            to,
            limit,
        } => {
            let req = crate::storage::ReadRange {
                stream,
                from,
                to,
                // One reply must fit in a frame: the asker pages.
                limit: limit.min(PEER_READ_RECORDS_MAX),
            };
            match s.store.send(req).await {
                Ok(Ok(records)) => PeerReply::Records(records),
                Ok(Err(message)) => PeerReply::Error(message),
                Err(e) => unavailable(e),
            }
        }
    }
}

fn frame_failure(s: &Shared, who: &dyn std::fmt::Display, e: &NetError) {
    match e {
        NetError::Frame(c) => s.metrics.frame_error(c.kind()),
        NetError::Truncated(_) => s.metrics.frame_error("truncated"),
        // The stream or connection went away: not the peer's bytes' fault.
        _ => {
            debug!(%who, "stream ended: {e}");
            return;
        }
    }
    warn!(%who, "closing a stream after a bad frame: {e}");
}

/// Serves admin requests, one per stream.
async fn serve_admin(s: Arc<Shared>, name: String, conn: Connection) {
    let who = format!("admin {name}");
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(pair) => pair,
            Err(_) => return,
        };
        let mut send = FramedSend::new(send, s.frame_max());
        let mut recv = FramedRecv::new(recv, s.frame_max());
        let req = match recv.recv::<AdminRequest>().await {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                frame_failure(&s, &who, &e);
                recv.stop(CloseCode::BadFrame);
                continue;
            }
        };
        s.metrics.frame_in();
        s.metrics.admin_request();
        let resp = answer_admin(&s, req).await;
        if send.send(&resp).await.is_ok() {
            s.metrics.frame_out();
        }
        send.finish();
    }
}

async fn answer_admin(s: &Shared, req: AdminRequest) -> AdminResponse {
    let unavailable = |e: MailboxError| AdminResponse::Error {
        message: format!("membership is unavailable: {e}"),
    };
    match req {
        AdminRequest::Members => match s.membership.send(GetMembers).await {
            Ok(view) => AdminResponse::Members(view),
            Err(e) => unavailable(e),
        },
        AdminRequest::Status => match s.membership.send(GetCounts).await {
            Ok((alive, suspect, down)) => AdminResponse::Status(NodeStatus {
                id: s.info.id.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                uptime_ms: s.info.started.elapsed().as_millis() as u64,
                listen: s.info.listen.to_string(),
                peers_alive: alive,
                peers_suspect: suspect,
                peers_down: down,
                sensor: s.sensors.get(),
                inference: s.engine.status(),
            }),
            Err(e) => unavailable(e),
        },
        AdminRequest::SetFaults {
            partition,
            loss_ppm,
            delay_ms,
        } => set_faults(s, partition, loss_ppm, delay_ms),
        AdminRequest::SetSlowdown { factor } => set_slowdown(s, factor),
        AdminRequest::FillDisk => fill_disk(s).await,
        AdminRequest::Ingest { readings } => ingest(s, readings).await,
        AdminRequest::Streams => match s.store.send(crate::storage::ListStreams).await {
            Ok(v) => AdminResponse::Streams(v),
            Err(e) => AdminResponse::Error {
                message: format!("the store is unavailable: {e}"),
            },
        },
        AdminRequest::Query {
            stream,
            from,
            to,
            limit,
        } => {
            let req = crate::storage::ReadRange {
                stream,
                from,
                to,
                limit,
            };
            match s.store.send(req).await {
                Ok(Ok(records)) => AdminResponse::Records(records),
                Ok(Err(message)) => AdminResponse::Error { message },
                Err(e) => AdminResponse::Error {
                    message: format!("the store is unavailable: {e}"),
                },
            }
        }
        AdminRequest::Gateway => {
            AdminResponse::Gateway(crate::gateway::gateway_view(&s.cfg, s.control.as_ref()))
        }
        AdminRequest::GatewayTransfer { to } => gateway_transfer(s, to).await,
        AdminRequest::ModelDeploy { bundle } => model_deploy(s, bundle).await,
        AdminRequest::Models => AdminResponse::Models(models_view(s).await),
        AdminRequest::SetDrain { node, drained } => set_drain(s, node, drained).await,
        AdminRequest::Sync => AdminResponse::Sync(s.board.get().unwrap_or_else(|| SyncView {
            node: s.info.id.clone(),
            syncing: false,
            note: Some(match (&s.control, &s.cfg.cloud) {
                (None, _) => "this node runs no control plane, so it never syncs".to_owned(),
                (_, None) => "no [cloud] configured on this node".to_owned(),
                _ => "the sync has not started yet".to_owned(),
            }),
            term: s.control.as_ref().map_or(0, |c| c.term()),
            cloud_url: s.cfg.cloud.as_ref().map(|c| c.url.clone()),
            cloud_reachable: None,
            cloud_error: None,
            outbox_batches: 0,
            windows_acked: 0,
            streams: Vec::new(),
        })),
    }
}

/// The control plane, or why there is none / why this node cannot act on it.
fn leading_control(s: &Shared) -> Result<&verge_control::Control, String> {
    let Some(control) = &s.control else {
        return Err(format!(
            "node {} runs no control plane (no [control] voters in its config)",
            s.info.id
        ));
    };
    if !control.is_leader() {
        let leader = control.leader().map(|l| l.id);
        return Err(
            verge_control::ControlError::NotLeader { leader }.to_string()
                + "; send this to the gateway (`verge ctl` does so by itself)",
        );
    }
    Ok(control)
}

async fn gateway_transfer(s: &Shared, to: NodeId) -> AdminResponse {
    let control = match leading_control(s) {
        Ok(c) => c,
        Err(message) => return AdminResponse::Error { message },
    };
    if to == s.info.id {
        return AdminResponse::Gateway(crate::gateway::gateway_view(&s.cfg, Some(control)));
    }
    info!(to = %to, "operator asked to move the gateway role");
    match control.transfer_to(&to).await {
        Ok(()) => AdminResponse::Gateway(crate::gateway::gateway_view(&s.cfg, Some(control))),
        Err(e) => AdminResponse::Error {
            message: e.to_string(),
        },
    }
}

/// Checks a model on the gateway, keeps it, and records it through the control plane.
async fn model_deploy(s: &Shared, bundle: verge_proto::model::ModelBundle) -> AdminResponse {
    use crate::models::ModelError;
    let control = match leading_control(s) {
        Ok(c) => c,
        Err(message) => return AdminResponse::Error { message },
    };
    let name = bundle.name.clone();
    let refused = |e: ModelError| {
        warn!(model = %name, "refused a model deploy: {e}");
        s.metrics.model_load(false);
        AdminResponse::Error {
            message: format!("model `{name}` refused: {e}"),
        }
    };
    let bytes = match verge_proto::encode_body(&bundle) {
        Ok(b) => b,
        Err(e) => {
            return AdminResponse::Error {
                message: format!("model `{name}` does not encode: {e}"),
            };
        }
    };
    // A node passes the bundle on in one reply frame, with room for the frame's own fields.
    let max = s.frame_max().saturating_sub(1024);
    if bytes.len() > max {
        return refused(ModelError::TooLarge {
            bytes: bytes.len(),
            max,
        });
    }
    let digest = crate::models::digest(&bytes);
    let (cache, d, n) = (s.models.cache.clone(), digest.clone(), name.clone());
    let checked = tokio::task::spawn_blocking(move || cache.load(&d, &bundle, &n)).await;
    match checked {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return refused(e),
        Err(e) => {
            return AdminResponse::Error {
                message: format!("the model check did not finish: {e}"),
            };
        }
    }
    if let Err(e) = s.models.cache.put(&digest, &bytes) {
        return AdminResponse::Error {
            message: e.to_string(),
        };
    }
    let current = control.state().models.get(&name).cloned();
    let version = match &current {
        Some(c) if c.digest == digest => {
            return AdminResponse::ModelDeployed {
                model: verge_proto::model::DeployedModel {
                    name,
                    version: c.version,
                    digest,
                    bytes: c.size,
                },
                changed: false,
            };
        }
        Some(c) => c.version + 1,
        None => 1,
    };
    let cmd = verge_control::Command::SetModel {
        name: name.clone(),
        version,
        digest: digest.clone(),
        size: bytes.len() as u64,
    };
    match control.propose(cmd).await {
        Ok(verge_control::Response::Model {
            name,
            version,
            changed,
        }) => {
            info!(model = %name, version = version.version, digest = %version.digest, "model deployed");
            AdminResponse::ModelDeployed {
                model: verge_proto::model::DeployedModel {
                    name,
                    version: version.version,
                    digest: version.digest,
                    bytes: version.size,
                },
                changed,
            }
        }
        Ok(verge_control::Response::Refused(r)) => AdminResponse::Error {
            message: format!("{r} (another deploy of `{name}` may have won; try again)"),
        },
        Ok(other) => AdminResponse::Error {
            message: format!("unexpected answer from the control plane: {other:?}"),
        },
        Err(e) => AdminResponse::Error {
            message: e.to_string(),
        },
    }
}

/// The recorded model versions and every node's report, asking the peers in parallel.
async fn models_view(s: &Shared) -> verge_proto::model::ModelsView {
    let deployed = s
        .control
        .as_ref()
        .map(|c| c.state().models)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, v)| verge_proto::model::DeployedModel {
            name,
            version: v.version,
            digest: v.digest,
            bytes: v.size,
        })
        .collect();
    let mut asks = tokio::task::JoinSet::new();
    for peer in s.links.peers().cloned() {
        let links = s.links.clone();
        asks.spawn(async move {
            let answer = match links
                .request(&peer, PeerRequest::Models, Duration::from_secs(2))
                .await
            {
                Ok(PeerReply::Models(m)) => Ok(m),
                Ok(PeerReply::Error(e)) => Err(e),
                Ok(_) => Err("answered something else".to_owned()),
                Err(e) => Err(e.to_string()),
            };
            (peer, answer)
        });
    }
    let mut nodes = vec![(s.info.id.clone(), Ok(s.models.board.report(&s.info.id)))];
    while let Some(done) = asks.join_next().await {
        if let Ok(pair) = done {
            nodes.push(pair);
        }
    }
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    verge_proto::model::ModelsView {
        node: s.info.id.clone(),
        deployed,
        nodes,
    }
}

async fn set_drain(s: &Shared, node: NodeId, drained: bool) -> AdminResponse {
    let control = match leading_control(s) {
        Ok(c) => c,
        Err(message) => return AdminResponse::Error { message },
    };
    info!(node = %node, drained, "operator changed a drain flag");
    match control
        .propose(verge_control::Command::SetDrain {
            node: node.clone(),
            drained,
        })
        .await
    {
        Ok(verge_control::Response::Refused(r)) => AdminResponse::Error {
            message: r.to_string(),
        },
        Ok(_) => AdminResponse::Gateway(crate::gateway::gateway_view(&s.cfg, Some(control))),
        Err(e) => AdminResponse::Error {
            message: e.to_string(),
        },
    }
}

/// Validates a producer's readings and stores the valid ones; answers once they are durable.
async fn ingest(s: &Shared, readings: Vec<verge_proto::admin::IngestReading>) -> AdminResponse {
    let mut valid = Vec::with_capacity(readings.len());
    let mut rejected = Vec::new();
    for r in readings {
        let [count, occupancy, speed, queue] = r.record.values[..] else {
            s.metrics.readings_rejected("columns", 1);
            rejected.push(format!(
                "sensor {}: a reading has 4 values (count, occupancy, speed, queue), not {}",
                r.sensor,
                r.record.values.len()
            ));
            continue;
        };
        let reading = verge_traffic::Reading {
            sensor: r.sensor,
            ts_ms: r.record.ts_ms,
            count,
            occupancy,
            speed,
            queue,
        };
        match reading.validate() {
            Ok(()) => valid.push(reading),
            Err(e) => {
                s.metrics.readings_rejected(e.kind(), 1);
                rejected.push(e.to_string());
            }
        }
    }
    if !rejected.is_empty() {
        warn!(rejected = rejected.len(), first = %rejected[0], "refused readings from a producer");
    }
    match s
        .store
        .send(crate::storage::Ingest {
            readings: valid,
            clock: None,
            order: None,
        })
        .await
    {
        Ok(Ok(mut result)) => {
            rejected.append(&mut result.rejected);
            AdminResponse::Ingested {
                acks: result.acks,
                rejected,
            }
        }
        Ok(Err(e)) => AdminResponse::Error {
            message: e.to_string(),
        },
        Err(e) => AdminResponse::Error {
            message: format!("the store is unavailable: {e}"),
        },
    }
}

/// The refusal of a fault command by a node whose config does not enable them; `None` if it
/// does.
fn faults_refused(s: &Shared) -> Option<AdminResponse> {
    (!s.faults_enabled).then(|| AdminResponse::Error {
        message: format!(
            "fault injection is off on node {}: set `[faults] enabled = true` in its config (tests and simulations only)",
            s.info.id
        ),
    })
}

fn set_faults(s: &Shared, partition: Vec<NodeId>, loss_ppm: u32, delay_ms: u32) -> AdminResponse {
    if let Some(refused) = faults_refused(s) {
        return refused;
    }
    if delay_ms > verge_net::DELAY_MS_MAX {
        return AdminResponse::Error {
            message: format!(
                "a send delay of {delay_ms} ms is more than the {} ms allowed",
                verge_net::DELAY_MS_MAX
            ),
        };
    }
    let mut addrs = Vec::new();
    for id in &partition {
        match s.peers.get(id) {
            Some(addr) => addrs.push(*addr),
            None => {
                return AdminResponse::Error {
                    message: format!("cannot partition from `{id}`: not a peer of {}", s.info.id),
                };
            }
        }
    }
    let faults = s.net.faults();
    faults.partition(addrs);
    faults.set_loss_ppm(loss_ppm);
    faults.set_delay_ms(delay_ms);
    warn!(partition = ?partition.iter().map(NodeId::as_str).collect::<Vec<_>>(), loss_ppm, delay_ms, "injected network faults set");
    AdminResponse::Faults {
        partition,
        loss_ppm: faults.loss_ppm(),
        delay_ms: faults.delay_ms(),
    }
}

fn set_slowdown(s: &Shared, factor: f64) -> AdminResponse {
    if let Some(refused) = faults_refused(s) {
        return refused;
    }
    match s.engine.set_slowdown(factor) {
        Ok(factor) => {
            warn!(factor, "injected inference slowdown set");
            AdminResponse::Slowdown { factor }
        }
        Err(e) => AdminResponse::Error {
            message: e.to_string(),
        },
    }
}

async fn fill_disk(s: &Shared) -> AdminResponse {
    if let Some(refused) = faults_refused(s) {
        return refused;
    }
    match s.store.send(crate::storage::FillQuota).await {
        Ok(bytes) => AdminResponse::Quota { bytes },
        Err(e) => AdminResponse::Error {
            message: format!("the store is unavailable: {e}"),
        },
    }
}

/// Keeps one connection to `id` open and heartbeats over it, redialing with capped, jittered
/// backoff whenever it fails or goes quiet. It runs for the life of the process: after shutdown
/// closes the endpoint, dials fail at once and the task ends with the runtime.
///
/// The same connection carries this node's replication messages to the peer, from its queue
/// `outbox`, on a stream of their own.
async fn dial_loop(
    s: Arc<Shared>,
    id: NodeId,
    addr: SocketAddr,
    mut outbox: mpsc::Receiver<Vec<ReplicationMessage>>,
) {
    let mut backoff = DIAL_BACKOFF_MIN;
    let mut last_error: Option<String> = None;
    loop {
        match s.net.connect_peer(&id, addr).await {
            Ok(conn) => {
                s.metrics.handshake("outbound", "ok");
                if last_error.take().is_some() {
                    info!(peer = %id, %addr, "connected to peer");
                }
                backoff = DIAL_BACKOFF_MIN;
                s.links.set(&id, Some(conn.clone()));
                let why = tokio::select! {
                    why = heartbeat(&s, &id, &conn) => why,
                    why = replicate(&s, &conn, &mut outbox) => why,
                    // The peer may send requests back on this connection (while its own dialer
                    // backs off after a restart).
                    () = serve_peer(s.clone(), id.clone(), conn.clone()) => "connection closed".to_owned(),
                };
                s.links.set(&id, None);
                conn.close(CloseCode::Replaced.varint(), why.as_bytes());
                debug!(peer = %id, "connection to peer ended: {why}");
            }
            Err(e) => {
                s.metrics.handshake("outbound", "failed");
                let text = e.to_string();
                // Say it once per distinct failure, not every retry.
                if last_error.as_deref() != Some(text.as_str()) {
                    warn!(peer = %id, %addr, "cannot connect to peer: {text}");
                    last_error = Some(text);
                }
            }
        }
        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
    }
}

/// Sends the replication messages queued for the peer over one stream of `conn`, in order, one
/// frame per batch the store queued (batches waiting together go as one frame, up to
/// [`REPLICATION_BATCH_MESSAGES_MAX`] messages; a frame over the size limit goes out as one frame
/// per message instead); returns why it stopped. Nothing answers on this stream: replies come
/// over the connection the peer dialed.
async fn replicate(
    s: &Arc<Shared>,
    conn: &Connection,
    outbox: &mut mpsc::Receiver<Vec<ReplicationMessage>>,
) -> String {
    let (send, _recv) = match conn.open_bi().await {
        Ok(pair) => pair,
        Err(e) => return e.to_string(),
    };
    let mut send = FramedSend::new(send, s.frame_max());
    while let Some(mut batch) = outbox.recv().await {
        while batch.len() < REPLICATION_BATCH_MESSAGES_MAX
            && let Ok(more) = outbox.try_recv()
        {
            batch.extend(more);
        }
        let frame = PeerMessage::ReplicationBatch(batch);
        let queued = match send.queue(&frame) {
            Err(NetError::Frame(CodecError::Oversize { .. })) => {
                // Too big as one frame: one frame per message.
                let mut queued = Ok(());
                if let PeerMessage::ReplicationBatch(msgs) = frame {
                    for msg in msgs {
                        queued = send.queue(&PeerMessage::Replication(msg));
                        if queued.is_err() {
                            break;
                        }
                        s.metrics.frame_out();
                    }
                }
                queued
            }
            Ok(()) => {
                s.metrics.frame_out();
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            return format!("replication stream: {e}");
        }
        if let Err(e) = send.flush().await {
            return format!("replication stream: {e}");
        }
    }
    "replication queue closed".to_owned()
}

/// Sends a ping every heartbeat and records each pong; returns why it stopped.
async fn heartbeat(s: &Arc<Shared>, id: &NodeId, conn: &Connection) -> String {
    let (send, recv) = match conn.open_bi().await {
        Ok(pair) => pair,
        Err(e) => return e.to_string(),
    };
    let mut send = FramedSend::new(send, s.frame_max());
    let last_pong = Arc::new(AtomicU64::new(s.now_us()));
    let reader = {
        let s = s.clone();
        let id = id.clone();
        let last_pong = last_pong.clone();
        tokio::spawn(async move {
            let mut recv = FramedRecv::new(recv, s.frame_max());
            loop {
                match recv.recv::<PeerMessage>().await {
                    Ok(Some(PeerMessage::Pong { echo_us, .. })) => {
                        s.metrics.frame_in();
                        let now = s.now_us();
                        last_pong.store(now, Ordering::Relaxed);
                        let rtt = Duration::from_micros(now.saturating_sub(echo_us));
                        s.membership.do_send(Heard {
                            id: id.clone(),
                            rtt: Some(rtt),
                        });
                    }
                    Ok(Some(_)) => s.metrics.frame_in(),
                    Ok(None) => return,
                    Err(e) => {
                        frame_failure(&s, &id, &e);
                        return;
                    }
                }
            }
        })
    };
    let mut tick = tokio::time::interval(s.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let why = loop {
        tick.tick().await;
        let silent =
            Duration::from_micros(s.now_us().saturating_sub(last_pong.load(Ordering::Relaxed)));
        if silent > s.pong_timeout {
            conn.close(CloseCode::Replaced.varint(), b"no answer to heartbeats");
            break format!("no pong for {} ms", silent.as_millis());
        }
        if reader.is_finished() {
            break "heartbeat stream closed".to_owned();
        }
        seq += 1;
        let ping = PeerMessage::Ping {
            seq,
            sent_us: s.now_us(),
        };
        if let Err(e) = send.send(&ping).await {
            break e.to_string();
        }
        s.metrics.frame_out();
        let load = PeerMessage::Load(s.load_report());
        if let Err(e) = send.send(&load).await {
            break e.to_string();
        }
        s.metrics.frame_out();
    };
    reader.abort();
    why
}
