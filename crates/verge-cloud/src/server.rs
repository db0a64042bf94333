//! The reference ingest server: HTTPS (rustls, HTTP/1.1) in front of the [`writer`]
//! and the store.
//!
//! [`serve`] binds, loads or makes the TLS certificate, opens the store under `DATA_DIR/db`,
//! and answers in the background until [`RunningCloud::shutdown`]. Every request for data needs
//! the bearer token or a client certificate signed by the configured client CA; `/healthz` and
//! `/metrics` need neither. A POST is answered only once its batch is durable.
//!
//! With [`CloudServerConfig::faults_enabled`], `GET`/`POST /v1/faults` read and set a
//! [`Fault`] that `POST /v1/batches` then suffers (see [`FaultMode`]); `error` and injected
//! `down` requests are counted only in `verge_cloud_faults_applied_total`, while `delay` and
//! `garbage` batches are handled, and counted by result, as usual; `accept-stale` is counted
//! there only for the stale batches it let through (which count as `stored`).
//!
//! Bounds: [`CONNECTIONS_MAX`] open connections (more are closed at once),
//! [`HANDSHAKE_TIMEOUT`] for TLS, [`HEADER_READ_TIMEOUT`] for a request's headers,
//! [`BODY_READ_TIMEOUT`] and [`CloudServerConfig::body_limit`] for its body, [`SHUTDOWN_GRACE`]
//! for connections to finish on shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::CloudError;
use crate::api::{
    BATCHES_PAGE_DEFAULT, BATCHES_PAGE_MAX, Batch, BatchAck, ErrorBody, Fault, FaultMode,
    PATH_BATCHES, PATH_FAULTS, PATH_HEALTH, PATH_METRICS, PATH_SUMMARY, PATH_WINDOWS,
    WINDOWS_PAGE_DEFAULT, WINDOWS_PAGE_MAX, WindowsPage,
};
use crate::fault::{FAULT_HEADER, FaultSwitch, GARBAGE_BODY, Gated};
use crate::ingest::Fence;
use crate::metrics::{BatchResult, Metrics, Route};
use crate::store::{CloudStore, Ingested, StoreError, StoreReader};
use crate::writer::{self, WriterHandle};

/// The default limit on a POST body: 8 MiB, some 80,000 windows of four values.
pub const BODY_BYTES_MAX_DEFAULT: usize = 8 << 20;
/// The most connections served at once.
pub const CONNECTIONS_MAX: usize = 256;
/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client has to send a request's body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refused request's body is read (and dropped) before the refusal is sent.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for open requests before cutting connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Bodies up to this size are parsed on the async thread; larger ones on the blocking pool.
const PARSE_INLINE_BYTES_MAX: usize = 256 << 10;
/// The largest `POST /v1/faults` body accepted, in bytes.
pub const FAULT_BODY_BYTES_MAX: usize = 4096;
/// The longest bearer token accepted in configuration.
pub const TOKEN_CHARS_MAX: usize = 4096;

/// OpenMetrics text, which Prometheus scrapes natively.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How to run the cloud.
#[derive(Debug, Clone)]
pub struct CloudServerConfig {
    /// Where to listen; port 0 picks a free port ([`RunningCloud::addr`] says which).
    pub listen: SocketAddr,
    /// The cloud's directory: the store in `db/`, the self-signed certificate in `tls/`.
    pub data_dir: PathBuf,
    /// The bearer token clients must send; `None` to accept client certificates only.
    pub token: Option<String>,
    /// A CA whose client certificates are accepted instead of the token.
    pub client_ca: Option<PathBuf>,
    /// The server certificate (PEM); with `tls_key`. Neither: a self-signed one is made.
    pub tls_cert: Option<PathBuf>,
    /// The server certificate's key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The largest POST body accepted, in bytes; larger is refused with 413.
    pub body_limit: usize,
    /// Whether `POST /v1/faults` may make the cloud misbehave (for tests and simulations; see
    /// [`FaultMode`]). Off, the endpoint refuses with 403 and no batch is ever faulted.
    pub faults_enabled: bool,
}

impl CloudServerConfig {
    /// A configuration with a token, a self-signed certificate and the default body limit.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>, token: impl Into<String>) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            token: Some(token.into()),
            client_ca: None,
            tls_cert: None,
            tls_key: None,
            body_limit: BODY_BYTES_MAX_DEFAULT,
            faults_enabled: false,
        }
    }
}

/// Reads a bearer token from a file (surrounding whitespace, such as a final newline, ignored).
pub fn read_token_file(path: &Path) -> Result<String, CloudError> {
    let text = std::fs::read_to_string(path).map_err(|e| CloudError::io(path, e))?;
    let token = text.trim().to_owned();
    check_token(&token)?;
    Ok(token)
}

/// Checks a configured token: 1 to [`TOKEN_CHARS_MAX`] printable ASCII characters.
fn check_token(token: &str) -> Result<(), CloudError> {
    let ok = !token.is_empty()
        && token.len() <= TOKEN_CHARS_MAX
        && token.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(CloudError::BadToken)
    }
}

/// A running cloud. Dropping it leaves the server running until the runtime ends; call
/// [`RunningCloud::shutdown`] to stop it and close the store.
#[derive(Debug)]
pub struct RunningCloud {
    addr: SocketAddr,
    cert: PathBuf,
    stop: ShutdownHandle,
    task: tokio::task::JoinHandle<Result<(), CloudError>>,
}

/// Asks a running cloud to stop; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Starts a graceful shutdown: no new connections, open requests finish (for up to
    /// [`SHUTDOWN_GRACE`]), then the store closes.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

impl RunningCloud {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://ADDR`, the base URL for [`crate::client::CloudClient::new`].
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The server's certificate, which clients of a self-signed server load as their CA file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// A handle that stops the server from elsewhere (a signal handler).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Stops the server and waits until the store is closed, so the data directory can be
    /// opened again.
    pub async fn shutdown(self) -> Result<(), CloudError> {
        self.stop.shutdown();
        self.wait().await
    }

    /// Waits until the server stops (after a [`ShutdownHandle::shutdown`]).
    pub async fn wait(self) -> Result<(), CloudError> {
        self.task
            .await
            .map_err(|e| CloudError::Server(e.to_string()))?
    }
}

/// Whether the connection presented a client certificate that the client CA verified.
#[derive(Debug, Clone)]
struct ClientCert {
    /// rustls verified a certificate chain against the client CA during the handshake.
    verified: bool,
}

struct AppState {
    token: Option<String>,
    body_limit: usize,
    writer: WriterHandle,
    reader: StoreReader,
    metrics: Metrics,
    healthy: Arc<AtomicBool>,
    /// The fault in force; `None` when fault injection is off.
    faults: Option<FaultSwitch>,
}

/// Starts the cloud: binds `config.listen`, loads or makes its certificate, opens its store,
/// and serves in the background.
pub async fn serve(config: CloudServerConfig) -> Result<RunningCloud, CloudError> {
    if let Some(t) = &config.token {
        check_token(t)?;
    }
    if config.token.is_none() && config.client_ca.is_none() {
        return Err(CloudError::NoAuth);
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| CloudError::io(&config.data_dir, e))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| CloudError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| CloudError::Bind {
        addr: config.listen,
        source,
    })?;
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => crate::tls::ensure_self_signed(&config.data_dir, config.listen.ip())?,
        _ => {
            return Err(CloudError::Tls(
                "give both a certificate and its key, or neither for a self-signed one".into(),
            ));
        }
    };
    let tls = crate::tls::server_config(&cert, &key, config.client_ca.as_deref())?;
    let db_dir = config.data_dir.join("db");
    let store = tokio::task::spawn_blocking(move || CloudStore::open(&db_dir))
        .await
        .map_err(|e| CloudError::Server(e.to_string()))??;
    let reader = store.reader();
    let metrics = Metrics::new();
    for (cluster, term) in reader.terms()? {
        metrics.term(&cluster, term);
    }
    let healthy = Arc::new(AtomicBool::new(true));
    let (writer, writer_thread) = writer::spawn(store, metrics.clone(), healthy.clone())
        .map_err(|e| CloudError::Server(format!("cannot start the writer thread: {e}")))?;
    let faults = config.faults_enabled.then(FaultSwitch::new);
    if faults.is_some() {
        warn!("fault injection is on: POST {PATH_FAULTS} can make this cloud fail batches");
    }
    let gate = Gate {
        faults: faults.clone(),
        metrics: metrics.clone(),
    };
    let state = Arc::new(AppState {
        token: config.token.clone(),
        body_limit: config.body_limit,
        writer,
        reader,
        metrics,
        healthy,
        faults,
    });
    let router = Router::new()
        .route(PATH_BATCHES, post(post_batch).get(get_batches))
        .route(PATH_FAULTS, get(get_faults).post(post_faults))
        .route(PATH_WINDOWS, get(get_windows))
        .route(PATH_SUMMARY, get(get_summary))
        .route(PATH_HEALTH, get(health))
        .route(PATH_METRICS, get(metrics_text))
        .with_state(state);
    let (stop_tx, stop_rx) = watch::channel(false);
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    info!(%addr, data_dir = %config.data_dir.display(), cert = %cert.display(), "cloud listening");
    let task = tokio::spawn(accept_loop(
        listener,
        acceptor,
        router,
        gate,
        stop_rx,
        writer_thread,
    ));
    Ok(RunningCloud {
        addr,
        cert,
        stop: ShutdownHandle(Arc::new(stop_tx)),
        task,
    })
}

/// What each connection needs to apply the `down` fault.
#[derive(Debug, Clone)]
struct Gate {
    faults: Option<FaultSwitch>,
    metrics: Metrics,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    gate: Gate,
    mut stop: watch::Receiver<bool>,
    writer_thread: thread::JoinHandle<()>,
) -> Result<(), CloudError> {
    let conn_stop = stop.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if conns.len() >= CONNECTIONS_MAX {
                        warn!(%peer, "refusing a connection: {CONNECTIONS_MAX} already open");
                        continue;
                    }
                    conns.spawn(connection(
                        tcp,
                        peer,
                        acceptor.clone(),
                        router.clone(),
                        gate.clone(),
                        conn_stop.clone(),
                    ));
                }
                Err(e) => {
                    // Out of descriptors, usually: back off rather than spin.
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            "{} connections still open after {SHUTDOWN_GRACE:?}; cutting them",
            conns.len()
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    // The router holds the last handles on the writer; once they are gone the writer drains
    // its queue, syncs, and closes the store.
    drop(router);
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| CloudError::Server(e.to_string()))?
        .map_err(|_| CloudError::Server("the writer thread panicked".into()))?;
    info!("cloud stopped");
    Ok(())
}

/// Resolves once a shutdown is asked for (or every handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    gate: Gate,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    let cert = ClientCert {
        verified: tls
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty()),
    };
    let svc = Gated::new(
        TowerToHyperService::new(router.layer(Extension(cert))),
        gate.faults,
        gate.metrics,
    );
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, "connection ended: {e}");
    }
}

/// A refusal: a status and an [`ErrorBody`].
struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                term: None,
                highest: None,
            },
        }
    }

    fn bad(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error.to_string())
    }

    fn store(e: &StoreError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Compares without an early exit, so the time taken says nothing about how much matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AppState {
    /// Reads (and drops) a body that will not be used, so that the refusal sent after it
    /// arrives instead of a connection reset; bounded by the body limit and [`DRAIN_TIMEOUT`].
    async fn drain(&self, body: axum::body::Body) {
        let drain = Limited::new(body, self.body_limit).collect();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    }

    /// The fault in force ([`Fault::NONE`] when fault injection is off).
    fn fault(&self) -> Fault {
        self.faults
            .as_ref()
            .map_or(Fault::NONE, FaultSwitch::current)
    }

    fn authorize(&self, headers: &HeaderMap, cert: Option<&ClientCert>) -> Result<(), ApiError> {
        if cert.is_some_and(|c| c.verified) {
            return Ok(());
        }
        let unauthorized = |msg: &str| ApiError::new(StatusCode::UNAUTHORIZED, msg);
        let Some(token) = &self.token else {
            return Err(unauthorized(
                "this cloud accepts only client certificates signed by its client CA",
            ));
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "missing `Authorization: Bearer <token>` (or a client certificate)",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        match presented {
            Some(t) if same_secret(t.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(unauthorized("wrong bearer token")),
            None => Err(unauthorized(
                "the Authorization header is not `Bearer <token>`",
            )),
        }
    }

    /// The fault switch, or the 403 that says fault injection is off.
    fn fault_switch(&self) -> Result<&FaultSwitch, ApiError> {
        self.faults.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "fault injection is off: this cloud was started without --faults \
                 (faults_enabled), so its faults cannot be read or set",
            )
        })
    }

    async fn ingest(
        &self,
        req: Request,
        fence: Fence,
    ) -> Result<(BatchResult, Response), (BatchResult, ApiError)> {
        let (parts, body) = req.into_parts();
        if let Err(e) = self.authorize(&parts.headers, parts.extensions.get::<ClientCert>()) {
            // Read (and drop) the body before refusing: a server that closes with unread bytes
            // resets the connection, and the client would see "connection reset" instead of
            // the 401 that tells its operator the token is wrong.
            self.drain(body).await;
            return Err((BatchResult::Unauthorized, e));
        }
        let too_large = || {
            (
                BatchResult::TooLarge,
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the body is larger than the {} bytes allowed",
                        self.body_limit
                    ),
                ),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.body_limit as u64) {
            return Err(too_large());
        }
        let body = Limited::new(body, self.body_limit).collect();
        let body = match tokio::time::timeout(BODY_READ_TIMEOUT, body).await {
            Err(_) => {
                return Err((
                    BatchResult::BadRequest,
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
                    ),
                ));
            }
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large());
            }
            Ok(Err(e)) => {
                return Err((
                    BatchResult::BadRequest,
                    ApiError::bad(format!("the body could not be read: {e}")),
                ));
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let batch = parse(body)
            .await
            .map_err(|e| (BatchResult::BadRequest, ApiError::bad(e)))?;
        let cluster = batch.cluster.clone();
        match self.writer.ingest_with(batch, fence).await {
            Ok(Ingested::Stale { term, highest }) => {
                let mut err = ApiError::new(
                    StatusCode::CONFLICT,
                    format!("stale term {term} < highest {highest} seen for cluster {cluster}"),
                );
                err.body.term = Some(term);
                err.body.highest = Some(highest);
                Err((BatchResult::Stale, err))
            }
            Ok(Ingested::Duplicate) => Ok((
                BatchResult::Duplicate,
                Json(BatchAck::Duplicate).into_response(),
            )),
            Ok(Ingested::Stored {
                stored, duplicates, ..
            }) => Ok((
                BatchResult::Stored,
                Json(BatchAck::Stored { stored, duplicates }).into_response(),
            )),
            Err(e) => Err((BatchResult::Error, ApiError::store(&e))),
        }
    }
}

/// Parses a body, off the async threads when it is big enough to hold them up.
async fn parse(body: bytes::Bytes) -> Result<Batch, String> {
    if body.len() < PARSE_INLINE_BYTES_MAX {
        return Batch::from_json(&body).map_err(|e| e.to_string());
    }
    tokio::task::spawn_blocking(move || Batch::from_json(&body))
        .await
        .map_err(|e| format!("parsing the body failed: {e}"))?
        .map_err(|e| e.to_string())
}

async fn post_batch(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    // Read once: a fault set while this request waits applies to the next one.
    let fault = st.fault();
    // accept-stale is counted by the writer, only for the stale batches it lets through.
    if !matches!(fault.mode, FaultMode::None | FaultMode::AcceptStale) {
        st.metrics.fault_applied(fault.mode);
    }
    let fence = if fault.mode == FaultMode::AcceptStale {
        Fence::AcceptStale
    } else {
        Fence::Enforce
    };
    if fault.mode == FaultMode::Error {
        st.drain(req.into_body()).await;
        let mut resp = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "fault injection (mode error): the batch was not stored",
        )
        .into_response();
        resp.headers_mut()
            .insert(FAULT_HEADER, HeaderValue::from_static("error"));
        return resp;
    }
    if let Some(delay) = fault.delay() {
        tokio::time::sleep(delay).await;
    }
    let (result, resp) = match st.ingest(req, fence).await {
        Ok(ok) => ok,
        Err((result, err)) => (result, err.into_response()),
    };
    st.metrics.batch(result);
    st.metrics.latency(Route::Batches, started.elapsed());
    if fault.mode == FaultMode::Garbage {
        return (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (HeaderName::from_static(FAULT_HEADER), "garbage"),
            ],
            GARBAGE_BODY,
        )
            .into_response();
    }
    resp
}

/// `GET /v1/faults`: the fault in force.
async fn get_faults(
    State(st): State<Arc<AppState>>,
    cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
) -> Response {
    let answer = st
        .authorize(&headers, cert.as_ref().map(|c| &c.0))
        .and_then(|()| st.fault_switch())
        .map(|s| Json(s.current()).into_response());
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/faults`: puts a [`Fault`] in force and answers with it.
async fn post_faults(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let allowed = st
        .authorize(&parts.headers, parts.extensions.get::<ClientCert>())
        .and_then(|()| st.fault_switch());
    let switch = match allowed {
        Ok(s) => s.clone(),
        Err(e) => {
            st.drain(body).await;
            return e.into_response();
        }
    };
    let read = Limited::new(body, FAULT_BODY_BYTES_MAX).collect();
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a fault is at most {FAULT_BODY_BYTES_MAX} bytes"),
            )
            .into_response();
        }
        Ok(Err(e)) => {
            return ApiError::bad(format!("the body could not be read: {e}")).into_response();
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
            )
            .into_response();
        }
    };
    let fault = match serde_json::from_slice::<Fault>(&bytes) {
        Ok(f) => f.checked().map_err(ApiError::bad),
        Err(e) => Err(ApiError::bad(format!(
            "the body is not a fault like {{\"mode\":\"delay\",\"delay_ms\":10000}} \
             (modes: none, error, garbage, delay, down, accept-stale): {e}"
        ))),
    };
    match fault {
        Ok(fault) => {
            switch.set(fault);
            Json(fault).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/windows` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowsQuery {
    stream: String,
    cluster: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<usize>,
}

async fn get_windows(
    State(st): State<Arc<AppState>>,
    cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    query: Result<Query<WindowsQuery>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let resp = windows(&st, cert.as_ref().map(|c| &c.0), &headers, query)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    st.metrics.latency(Route::Windows, started.elapsed());
    resp
}

async fn windows(
    st: &Arc<AppState>,
    cert: Option<&ClientCert>,
    headers: &HeaderMap,
    query: Result<Query<WindowsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    st.authorize(headers, cert)?;
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    q.stream
        .parse::<verge_proto::StreamId>()
        .map_err(|e| ApiError::bad(format!("stream: {e}")))?;
    if let Some(c) = &q.cluster {
        verge_proto::id::validate_label(c).map_err(|e| ApiError::bad(format!("cluster: {e}")))?;
    }
    let limit = q
        .limit
        .unwrap_or(WINDOWS_PAGE_DEFAULT)
        .clamp(1, WINDOWS_PAGE_MAX);
    let reader = st.reader.clone();
    let page = tokio::task::spawn_blocking(
        move || -> Result<Result<WindowsPage, ApiError>, StoreError> {
            let cluster = match q.cluster {
                Some(c) => c,
                None => {
                    let mut held = reader.clusters_of(&q.stream)?;
                    match held.len() {
                        0 => {
                            return Ok(Ok(WindowsPage {
                                cluster: None,
                                stream: q.stream,
                                windows: Vec::new(),
                                next_from: None,
                            }));
                        }
                        1 => held.remove(0),
                        _ => {
                            return Ok(Err(ApiError::bad(format!(
                                "stream {} is held for clusters {}: say which with cluster=",
                                q.stream,
                                held.join(", ")
                            ))));
                        }
                    }
                }
            };
            Ok(Ok(reader.windows(
                &cluster,
                &q.stream,
                q.from.unwrap_or(1),
                q.to.unwrap_or(u64::MAX),
                limit,
            )?))
        },
    )
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::store(&e))??;
    Ok(Json(page).into_response())
}

/// `GET /v1/batches` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchesQuery {
    cluster: String,
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v1/batches`: a page of a cluster's batch log.
async fn get_batches(
    State(st): State<Arc<AppState>>,
    cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    query: Result<Query<BatchesQuery>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let resp = async {
        st.authorize(&headers, cert.as_ref().map(|c| &c.0))?;
        let Query(q) = query.map_err(|e| {
            ApiError::bad(format!(
                "{} (expected cluster=NAME[&after=N][&limit=1..{BATCHES_PAGE_MAX}])",
                e.body_text()
            ))
        })?;
        verge_proto::id::validate_label(&q.cluster)
            .map_err(|e| ApiError::bad(format!("cluster: {e}")))?;
        let limit = match q.limit {
            None => BATCHES_PAGE_DEFAULT,
            Some(n @ 1..=BATCHES_PAGE_MAX) => n,
            Some(n) => {
                return Err(ApiError::bad(format!(
                    "limit {n} is not between 1 and {BATCHES_PAGE_MAX}"
                )));
            }
        };
        let reader = st.reader.clone();
        let page = tokio::task::spawn_blocking(move || reader.batches(&q.cluster, q.after, limit))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::store(&e))?;
        Ok::<_, ApiError>(Json(page).into_response())
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    st.metrics.latency(Route::BatchLog, started.elapsed());
    resp
}

async fn get_summary(
    State(st): State<Arc<AppState>>,
    cert: Option<Extension<ClientCert>>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let resp = async {
        st.authorize(&headers, cert.as_ref().map(|c| &c.0))?;
        let reader = st.reader.clone();
        let summary = tokio::task::spawn_blocking(move || reader.summary())
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::store(&e))?;
        Ok::<_, ApiError>(Json(summary).into_response())
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    st.metrics.latency(Route::Summary, started.elapsed());
    resp
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the store failed a sync and accepts no more batches; restart the cloud\n",
        )
            .into_response()
    }
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        st.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_trimmed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        std::fs::write(&f, "abc-123\n").expect("write");
        assert_eq!(read_token_file(&f).expect("token"), "abc-123");
        std::fs::write(&f, "two words\n").expect("write");
        assert!(matches!(read_token_file(&f), Err(CloudError::BadToken)));
        let err = read_token_file(&dir.path().join("none")).expect_err("missing");
        assert!(err.to_string().contains("none"), "{err}");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
