//! A Verge edge node: actix actors wiring the transport, the membership table and the metrics
//! endpoint into one process.
//!
//! Actors are thin drivers. [`actors::MembershipActor`] owns the [`membership::Membership`] state
//! machine and feeds it heartbeats and clock ticks; [`actors::NetworkActor`] owns the quinn endpoint
//! and runs one task per connection and stream. Decisions (who is alive, what a frame means) live in
//! plain structs and in `verge-proto`/`verge-net`, tested without a network.

pub mod actors;
pub mod config;
pub mod engine;
pub mod gateway;
mod http;
pub mod links;
pub mod membership;
pub mod metrics;
pub mod models;
pub mod offload;
pub mod prediction;
pub mod sensing;
pub mod sharing;
pub mod storage;

use std::time::{Duration, Instant};

use actix::Actor;
use tracing::{error, info, warn};
use verge_net::{Net, NetError};
use verge_pki::{NodeTls, PkiError};
use verge_proto::model::RunningModel;

pub use config::{ConfigError, NodeConfig};

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS material named by the configuration is unusable.
    #[error("TLS material (keys tls.ca / tls.cert / tls.key): {0}")]
    Tls(#[from] PkiError),
    /// The certificate belongs to another node.
    #[error(
        "config says id = \"{config_id}\" but {cert} is the certificate of node {cert_id}; issue one with `verge cert issue --node {config_id}`"
    )]
    IdMismatch {
        /// The id in the config.
        config_id: String,
        /// The id in the certificate.
        cert_id: String,
        /// The certificate file.
        cert: String,
    },
    /// The data directory cannot be created.
    #[error("data_dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The QUIC endpoint could not be set up.
    #[error("network (key listen): {0}")]
    Net(#[from] NetError),
    /// The metrics server could not listen.
    #[error("metrics_listen {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store under data_dir cannot be opened.
    #[error("cannot open the store (key data_dir): {0}")]
    Store(#[from] verge_store::StoreError),
    /// The control plane could not start.
    #[error("control plane (key control, data_dir/control): {0}")]
    Control(#[from] verge_control::ControlError),
    /// The gateway's cloud sync could not be set up.
    #[error(transparent)]
    Gateway(#[from] gateway::GatewayError),
    /// The model directory under data_dir cannot be used.
    #[error("cannot use the model directory (key data_dir): {0}")]
    Models(#[from] models::ModelError),
    /// The async runtime could not be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Grace period for peers to hear a clean shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

/// Runs a node until SIGINT or SIGTERM. Blocks the calling thread.
pub fn run(cfg: NodeConfig) -> Result<(), NodeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    let system = actix::System::with_tokio_rt(|| rt);
    system.block_on(run_inner(cfg))
}

async fn run_inner(cfg: NodeConfig) -> Result<(), NodeError> {
    let started = Instant::now();
    let tls = NodeTls::load(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key)?;
    if tls.id != cfg.id {
        return Err(NodeError::IdMismatch {
            config_id: cfg.id.to_string(),
            cert_id: tls.id.to_string(),
            cert: cfg.tls.cert.display().to_string(),
        });
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| NodeError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    let store: std::sync::Arc<dyn verge_store::Store> =
        std::sync::Arc::new(verge_store::SledStore::open(&cfg.data_dir.join("store"))?);
    let net = Net::bind(cfg.listen, &tls, cfg.net.to_net_config())?;
    let listen = net.local_addr().unwrap_or(cfg.listen);
    let metrics = metrics::Metrics::new();
    metrics.attach_udp(net.faults().clone());

    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => Some(
            http::serve_metrics(addr, metrics.clone())
                .await
                .map_err(|source| NodeError::Metrics { addr, source })?,
        ),
        None => None,
    };

    let load = offload::LoadGauge::default();
    let links = links::PeerLinks::new(cfg.peers.iter().map(|p| &p.id), cfg.net.frame_bytes_max);
    let engine = engine::Engine::new(
        cfg.id.clone(),
        cfg.offload.to_engine_config(),
        links.clone(),
        load.clone(),
        metrics.clone(),
    );
    let membership = actors::MembershipActor::new(&cfg, listen, metrics.clone())
        .with_load(load.clone())
        .start();
    // The store blocks on fsync, so it gets a thread of its own.
    let store_arbiter = actix::Arbiter::new();
    let (outboxes, outbox_rx) = storage::outboxes(cfg.peers.iter().map(|p| &p.id));
    let model_cache = std::sync::Arc::new(models::ModelCache::open(cfg.data_dir.join("models"))?);
    let model_board = models::ModelBoard::default();
    // Validated at load: every feed names a results stream of a peer.
    let feeds: std::collections::BTreeMap<
        String,
        [Option<verge_proto::StreamId>; verge_infer::features::U],
    > = cfg
        .sharing
        .feeds
        .iter()
        .map(|(approach, f)| {
            (
                approach.clone(),
                f.slots()
                    .map(|s| s.and_then(|s| config::feed_stream(s).ok())),
            )
        })
        .collect();
    let store = {
        let (me, scfg, rcfg, m, mut windows) = (
            cfg.id.clone(),
            cfg.store.clone(),
            cfg.replication.clone(),
            metrics.clone(),
            cfg.aggregation.clone(),
        );
        sensing::sumo_windows(&cfg.sensors, &mut windows);
        // Loading a model builds its plans: before the store's thread starts, not on it. A node
        // without one still gets a predictor, for a model deployed later.
        let predictor = match &cfg.inference {
            Some(i) => {
                let p = prediction::Predictor::load(&i.model, windows.window_ms, metrics.clone());
                match p.model() {
                    Some((name, model_version)) => model_board.loaded(RunningModel {
                        name,
                        model_version,
                        cluster_version: None,
                        digest: None,
                        serving: true,
                    }),
                    None => model_board.problem(
                        "config",
                        format!("{} does not load (see the node's log)", i.model.display()),
                    ),
                }
                p
            }
            None => prediction::Predictor::empty(windows.window_ms, metrics.clone()),
        };
        let predictor = predictor.with_feeds(feeds.clone());
        if let Some(model) = predictor.current() {
            engine.shelve(&model);
            // One batch the size of a node's usual one (an approach per row).
            let rows = windows.approaches.len().max(1);
            let calibrating = engine.clone();
            tokio::spawn(async move { calibrating.calibrate(model, rows).await });
        }
        let (store_load, store_engine, rt) = (
            load.clone(),
            engine.clone(),
            tokio::runtime::Handle::current(),
        );
        storage::StoreActor::start_in_arbiter(&store_arbiter.handle(), move |_| {
            storage::StoreActor::new(store, me, scfg, rcfg, m, outboxes)
                .with_windows(windows)
                .with_predictor(predictor)
                .with_load(store_load)
                .with_engine(store_engine, rt)
        })
    };
    membership.do_send(actors::WatchLiveness {
        to: store.clone().recipient(),
    });
    let sensors = sensing::SensorBoard::default();
    if let Some(sensor) = sensing::SensorActor::from_config(
        &cfg.sensors,
        store.clone(),
        metrics.clone(),
        sensors.clone(),
    ) {
        sensor.start();
    }
    sharing::spawn(
        sharing::SharingDeps {
            me: cfg.id.clone(),
            links: links.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            poll: std::time::Duration::from_millis(cfg.sharing.poll_ms),
        },
        feeds
            .values()
            .flatten()
            .flatten()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
    );
    let control = gateway::start_control(&cfg, &links).await?;
    let board = gateway::SyncBoard::default();
    if let Some(control) = &control {
        models::spawn_watcher(models::WatcherDeps {
            control: control.clone(),
            links: links.clone(),
            cache: model_cache.clone(),
            store: store.clone(),
            board: model_board.clone(),
            metrics: metrics.clone(),
        });
        gateway::spawn(gateway::GatewayDeps {
            cfg: cfg.clone(),
            control: control.clone(),
            store: store.clone(),
            links: links.clone(),
            metrics: metrics.clone(),
            board: board.clone(),
        })?;
    }
    let _network = actors::NetworkActor::new(
        net.clone(),
        &cfg,
        actors::Wiring {
            membership: membership.clone(),
            store: store.clone(),
            outboxes: outbox_rx,
            links,
            control: control.clone(),
            board,
            sensors,
            models: actors::ModelParts {
                cache: model_cache,
                board: model_board,
            },
            load,
            engine,
        },
        metrics.clone(),
        actors::NodeInfo {
            id: cfg.id.clone(),
            listen,
            started,
        },
    )
    .start();
    info!(
        node = %cfg.id,
        %listen,
        metrics = ?metrics_addr,
        peers = cfg.peers.len(),
        "node started"
    );

    wait_for_signal().await;
    info!(node = %cfg.id, "shutting down");
    if let Some(control) = &control
        && let Err(e) = control.shutdown().await
    {
        warn!("the control plane did not stop cleanly: {e}");
    }
    net.shutdown(SHUTDOWN_GRACE).await;
    // The store's last act is a flush, so producers waiting on it get their answer.
    if let Err(e) = store.send(storage::Shutdown).await {
        warn!("the store did not take its final flush: {e}");
    }
    store_arbiter.stop();
    let _ = store_arbiter.join();
    actix::System::current().stop();
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                r = tokio::signal::ctrl_c() => match r {
                    Ok(()) => info!("SIGINT received"),
                    Err(e) => error!("cannot listen for Ctrl-C: {e}"),
                },
            }
        }
        Err(e) => {
            warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops this node");
            if let Err(e) = tokio::signal::ctrl_c().await {
                error!("cannot listen for Ctrl-C: {e}");
            }
        }
    }
}
