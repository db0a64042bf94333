//! A client for a node's admin endpoint (`verge-admin/1`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use verge_net::{NetConfig, NetError, admin_connect, connection_refusal, request};
use verge_pki::{ClientAuth, PkiError, load_roots};
use verge_proto::admin::{
    AdminRequest, AdminResponse, GatewayView, IngestAck, IngestReading, MemberView, NodeStatus,
    StreamView, SyncView,
};
use verge_proto::model::{DeployedModel, ModelBundle, ModelsView};
use verge_proto::{Record, StreamId};

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The certificate files could not be used.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The node could not be reached (nothing listening, timeout).
    #[error("cannot reach the node at {addr}: {source}")]
    Unreachable {
        /// The node's address.
        addr: SocketAddr,
        /// Why.
        source: NetError,
    },
    /// The node refused this client; the reason says why (no certificate, wrong kind).
    #[error("the node at {addr} refused this client: {reason}")]
    Refused {
        /// The node's address.
        addr: SocketAddr,
        /// What the node said, or what the TLS layer reported.
        reason: String,
    },
    /// The node answered with an error.
    #[error("the node at {addr} answered: {message}")]
    Node {
        /// The node's address.
        addr: SocketAddr,
        /// Its message.
        message: String,
    },
    /// The node answered something else than what was asked.
    #[error("the node at {addr} gave an unexpected answer")]
    Unexpected {
        /// The node's address.
        addr: SocketAddr,
    },
}

impl AdminError {
    /// True for a refusal by the node (as opposed to not reaching it).
    pub fn is_refusal(&self) -> bool {
        matches!(self, AdminError::Refused { .. })
    }
}

/// The admin CLI's credentials.
#[derive(Debug, Clone)]
pub struct AdminClient {
    ca: PathBuf,
    auth: Option<(PathBuf, PathBuf)>,
    cfg: NetConfig,
    /// Open connections by node, when reused (see [`AdminClient::reusing_connections`]).
    pool: Option<Arc<Mutex<HashMap<SocketAddr, quinn::Connection>>>>,
}

impl AdminClient {
    /// A client trusting the cluster CA at `ca`, presenting `auth` (certificate, key) if given.
    pub fn new(ca: &Path, auth: Option<(&Path, &Path)>) -> Self {
        Self {
            ca: ca.to_owned(),
            auth: auth.map(|(c, k)| (c.to_owned(), k.to_owned())),
            cfg: NetConfig::default(),
            pool: None,
        }
    }

    /// Keeps one connection per node open and sends every request on it (clones share them),
    /// instead of a handshake per request: for a caller that asks many nodes many things (the
    /// simulation runner). A request that fails drops its connection; the next one makes a new
    /// one. Nothing is retried, so a request is never sent twice.
    pub fn reusing_connections(mut self) -> Self {
        self.pool = Some(Arc::default());
        self
    }

    fn pooled(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        let pool = self.pool.as_ref()?;
        let mut map = pool.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&addr) {
            Some(c) if c.close_reason().is_none() => Some(c.clone()),
            Some(_) => {
                map.remove(&addr);
                None
            }
            None => None,
        }
    }

    fn set_pooled(&self, addr: SocketAddr, conn: Option<quinn::Connection>) {
        if let Some(pool) = &self.pool {
            let mut map = pool.lock().unwrap_or_else(|p| p.into_inner());
            match conn {
                Some(c) => {
                    map.insert(addr, c);
                }
                None => {
                    map.remove(&addr);
                }
            }
        }
    }

    /// Sends one request to the node at `addr`.
    pub async fn request(
        &self,
        addr: SocketAddr,
        req: &AdminRequest,
    ) -> Result<AdminResponse, AdminError> {
        let conn = match self.pooled(addr) {
            Some(c) => c,
            None => {
                let roots = load_roots(&self.ca)?;
                let auth = match &self.auth {
                    Some((c, k)) => Some(ClientAuth::load(c, k)?),
                    None => None,
                };
                admin_connect(addr, Arc::clone(&roots), auth, &self.cfg)
                    .await
                    .map_err(|e| classify(addr, e))?
            }
        };
        // Taken out of the pool while in use: a request cut short by its caller's timeout
        // leaves nothing behind for the next one to wait on.
        self.set_pooled(addr, None);
        let resp = request::<_, AdminResponse>(&conn, req, self.cfg.frame_bytes_max).await;
        if self.pool.is_some() && resp.is_ok() {
            self.set_pooled(addr, Some(conn));
        } else {
            conn.close(0u32.into(), b"done");
        }
        let resp = resp.map_err(|e| classify(addr, e))?;
        if let AdminResponse::Error { message } = resp {
            return Err(AdminError::Node { addr, message });
        }
        Ok(resp)
    }

    /// The node's membership table.
    pub async fn members(&self, addr: SocketAddr) -> Result<Vec<MemberView>, AdminError> {
        match self.request(addr, &AdminRequest::Members).await? {
            AdminResponse::Members(m) => Ok(m),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// Sets injected network faults on the node (it must have `[faults] enabled = true`): cut
    /// off from `partition`, random loss `loss_ppm` per million, every outgoing datagram held
    /// `delay_ms` milliseconds (at most 10,000). Returns what is now in force, in that order.
    pub async fn set_faults(
        &self,
        addr: SocketAddr,
        partition: Vec<verge_proto::NodeId>,
        loss_ppm: u32,
        delay_ms: u32,
    ) -> Result<(Vec<verge_proto::NodeId>, u32, u32), AdminError> {
        match self
            .request(
                addr,
                &AdminRequest::SetFaults {
                    partition,
                    loss_ppm,
                    delay_ms,
                },
            )
            .await?
        {
            AdminResponse::Faults {
                partition,
                loss_ppm,
                delay_ms,
            } => Ok((partition, loss_ppm, delay_ms)),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// Makes each inference batch on the node take `factor` (1 to 1000) times its compute time
    /// from its next batch on (it must have `[faults] enabled = true`). Returns the slowdown now
    /// in force.
    pub async fn set_slowdown(&self, addr: SocketAddr, factor: f64) -> Result<f64, AdminError> {
        match self
            .request(addr, &AdminRequest::SetSlowdown { factor })
            .await?
        {
            AdminResponse::Slowdown { factor } => Ok(factor),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// Makes the node's store behave as if its disk were full from now on (it must have
    /// `[faults] enabled = true`): its quota becomes the bytes it holds now, so it drops its
    /// oldest raw readings to make room. Returns the quota now in force, in bytes.
    pub async fn fill_disk(&self, addr: SocketAddr) -> Result<u64, AdminError> {
        match self.request(addr, &AdminRequest::FillDisk).await? {
            AdminResponse::Quota { bytes } => Ok(bytes),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// Sends readings as a producer; returns the sequence numbers assigned (once durable) and
    /// what was refused.
    pub async fn ingest(
        &self,
        addr: SocketAddr,
        readings: Vec<IngestReading>,
    ) -> Result<(Vec<IngestAck>, Vec<String>), AdminError> {
        match self
            .request(addr, &AdminRequest::Ingest { readings })
            .await?
        {
            AdminResponse::Ingested { acks, rejected } => Ok((acks, rejected)),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// The streams the node holds.
    pub async fn streams(&self, addr: SocketAddr) -> Result<Vec<StreamView>, AdminError> {
        match self.request(addr, &AdminRequest::Streams).await? {
            AdminResponse::Streams(v) => Ok(v),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// Records `from..=to` of `stream` (at most `limit`).
    pub async fn query(
        &self,
        addr: SocketAddr,
        stream: StreamId,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Record)>, AdminError> {
        let req = AdminRequest::Query {
            stream,
            from,
            to,
            limit,
        };
        match self.request(addr, &req).await? {
            AdminResponse::Records(v) => Ok(v),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// The control plane as the node sees it: gateway, term, since when, members.
    pub async fn gateway(&self, addr: SocketAddr) -> Result<GatewayView, AdminError> {
        match self.request(addr, &AdminRequest::Gateway).await? {
            AdminResponse::Gateway(v) => Ok(v),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// The gateway's admin address as the node at `addr` knows it.
    pub async fn gateway_addr(&self, addr: SocketAddr) -> Result<SocketAddr, AdminError> {
        let view = self.gateway(addr).await?;
        match (&view.gateway, &view.gateway_addr) {
            (Some(_), Some(a)) => a.parse().map_err(|_| AdminError::Node {
                addr,
                message: format!("the node named the gateway's address as `{a}`"),
            }),
            (Some(g), None) => Err(AdminError::Node {
                addr,
                message: format!("the gateway is {g}, whose address this node does not know"),
            }),
            (None, _) => Err(AdminError::Node {
                addr,
                message: format!(
                    "node {} knows of no gateway (role {}): election in progress, or no control plane",
                    view.node, view.role
                ),
            }),
        }
    }

    /// Sends a gateway operation (transfer, drain) to the gateway: asks `addr` who it is, then
    /// sends `req` there. Returns the gateway's view after the change.
    pub async fn to_gateway(
        &self,
        addr: SocketAddr,
        req: AdminRequest,
    ) -> Result<GatewayView, AdminError> {
        let target = self.gateway_addr(addr).await?;
        match self.request(target, &req).await? {
            AdminResponse::Gateway(v) => Ok(v),
            _ => Err(AdminError::Unexpected { addr: target }),
        }
    }

    /// Deploys a model through the gateway (asked of `addr`); returns the version recorded and
    /// whether it changed.
    pub async fn deploy_model(
        &self,
        addr: SocketAddr,
        bundle: ModelBundle,
    ) -> Result<(DeployedModel, bool), AdminError> {
        let target = self.gateway_addr(addr).await?;
        match self
            .request(target, &AdminRequest::ModelDeploy { bundle })
            .await?
        {
            AdminResponse::ModelDeployed { model, changed } => Ok((model, changed)),
            _ => Err(AdminError::Unexpected { addr: target }),
        }
    }

    /// The model versions the cluster records and what every node runs.
    pub async fn models(&self, addr: SocketAddr) -> Result<ModelsView, AdminError> {
        match self.request(addr, &AdminRequest::Models).await? {
            AdminResponse::Models(v) => Ok(v),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// The cloud sync as the node runs it.
    pub async fn sync(&self, addr: SocketAddr) -> Result<SyncView, AdminError> {
        match self.request(addr, &AdminRequest::Sync).await? {
            AdminResponse::Sync(v) => Ok(v),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }

    /// The node's status.
    pub async fn status(&self, addr: SocketAddr) -> Result<NodeStatus, AdminError> {
        match self.request(addr, &AdminRequest::Status).await? {
            AdminResponse::Status(s) => Ok(s),
            _ => Err(AdminError::Unexpected { addr }),
        }
    }
}

fn classify(addr: SocketAddr, e: NetError) -> AdminError {
    let refusal = match &e {
        NetError::Connection(c) => connection_refusal(c),
        NetError::Read(quinn::ReadError::ConnectionLost(c))
        | NetError::Write(quinn::WriteError::ConnectionLost(c)) => connection_refusal(c),
        _ => None,
    };
    match refusal {
        Some(reason) => AdminError::Refused { addr, reason },
        None => AdminError::Unreachable { addr, source: e },
    }
}
