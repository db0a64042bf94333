//! The node's storage actors.
//!
//! [`StoreActor`] owns the node's [`Store`] and runs on its own arbiter thread, because a flush is
//! a blocking fsync. It assigns sequence numbers, group-commits (one flush per
//! `store.flush_interval_ms` covers everything appended meanwhile) and answers each producer only
//! after the flush that made its readings durable. [`SensorActor`] polls the configured sensor
//! source and feeds it, holding back (not dropping) when the store falls behind.
//!
//! Replication to neighbours joins here with the replication core; until then an acknowledgement
//! means "durable on this node", and says so (`replicas: 1`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{error, info, warn};
use verge_proto::admin::{IngestAck, StreamView};
use verge_proto::{NodeId, Record, StreamId, StreamKind};
use verge_store::{RetentionPolicy, Store, StoreError};
use verge_traffic::{Reading, SyntheticSource};

use crate::config::StoreSection;
use crate::metrics::Metrics;

/// Readings one producer may have waiting for a flush before the store says "busy".
const PENDING_READINGS_MAX: usize = 200_000;
/// Batches a sensor may have in flight to the store.
const SENSOR_INFLIGHT_MAX: usize = 4;
/// How often a sensor source is polled.
const SENSOR_TICK: Duration = Duration::from_millis(10);
/// The most records one query returns.
pub const QUERY_LIMIT_MAX: u32 = 100_000;

/// What became of an ingest.
#[derive(Debug, Clone, Default)]
pub struct IngestResult {
    /// Sequence numbers per stream, for what was stored durably.
    pub acks: Vec<IngestAck>,
    /// Readings refused, with the reason.
    pub rejected: Vec<String>,
}

/// Stores readings of this node's own sensors; answered after they are durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<IngestResult, String>")]
pub struct Ingest {
    /// Validated readings, in order per sensor.
    pub readings: Vec<Reading>,
}

/// Flushes what is pending (answering its producers) and stops the actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Lists streams.
#[derive(Debug, Message)]
#[rtype(result = "Vec<StreamView>")]
pub struct ListStreams;

/// Reads a range of a stream.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(u64, Record)>, String>")]
pub struct ReadRange {
    /// The stream.
    pub stream: StreamId,
    /// First sequence number.
    pub from: u64,
    /// Last sequence number, inclusive.
    pub to: u64,
    /// The most records.
    pub limit: u32,
}

type Waiter = (oneshot::Sender<Result<IngestResult, String>>, IngestResult);

/// Owns the store.
#[derive(Debug)]
pub struct StoreActor {
    store: Arc<dyn Store>,
    me: NodeId,
    cfg: StoreSection,
    metrics: Metrics,
    /// Producers waiting for the next flush, with what they will be told.
    waiting: Vec<Waiter>,
    waiting_readings: usize,
}

impl StoreActor {
    /// A store actor for node `me`.
    pub fn new(store: Arc<dyn Store>, me: NodeId, cfg: StoreSection, metrics: Metrics) -> Self {
        Self {
            store,
            me,
            cfg,
            metrics,
            waiting: Vec::new(),
            waiting_readings: 0,
        }
    }

    fn policy(&self) -> RetentionPolicy {
        let ms = |s: Option<u64>| s.map(|s| s.saturating_mul(1000));
        RetentionPolicy {
            raw_ms: ms(self.cfg.retention_raw_s),
            results_ms: ms(self.cfg.retention_results_s),
            aggregates_ms: ms(self.cfg.retention_aggregates_s),
            bytes_max: self.cfg.quota_bytes,
        }
    }

    fn flush(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting);
        self.waiting_readings = 0;
        match self.store.flush() {
            Ok(()) => {
                self.metrics.store_flush(true);
                for (tx, result) in waiting {
                    let n: u64 = result
                        .acks
                        .iter()
                        .map(|a| a.last_seq - a.first_seq + 1)
                        .sum();
                    self.metrics.readings_stored(n);
                    // A producer that went away no longer needs its answer.
                    let _ = tx.send(Ok(result));
                }
            }
            Err(e) => {
                self.metrics.store_flush(false);
                error!(
                    "flushing the store failed; {} producers are told their readings are not stored: {e}",
                    waiting.len()
                );
                for (tx, _) in waiting {
                    let _ = tx.send(Err(format!("not durable: {e}")));
                }
            }
        }
    }

    fn enforce_retention(&mut self) {
        let now = now_ms();
        match self.store.enforce(&self.policy(), now) {
            Ok(report) => {
                for kind in [StreamKind::Raw, StreamKind::Results, StreamKind::Aggregates] {
                    let d = report.dropped(kind);
                    if d.by_age > 0 || d.by_quota > 0 {
                        self.metrics
                            .retention_dropped(kind.as_str(), d.by_age, d.by_quota);
                        warn!(
                            kind = kind.as_str(),
                            by_age = d.by_age,
                            by_quota = d.by_quota,
                            bytes = d.bytes,
                            "retention dropped records"
                        );
                    }
                }
                for damaged in &report.damaged {
                    error!("retention skipped damaged data: {damaged}");
                }
            }
            Err(e) => error!("enforcing retention failed: {e}"),
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Actor for StoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(
            Duration::from_millis(self.cfg.flush_interval_ms),
            |act, _| act.flush(),
        );
        ctx.run_interval(
            Duration::from_millis(self.cfg.retention_interval_ms),
            |act, _| act.enforce_retention(),
        );
    }
}

impl Handler<Shutdown> for StoreActor {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        // Whatever was appended gets its flush, and its producers their answer, before the
        // process goes.
        self.flush();
        ctx.stop();
    }
}

impl Handler<Ingest> for StoreActor {
    type Result = ResponseFuture<Result<IngestResult, String>>;

    fn handle(&mut self, msg: Ingest, _: &mut Self::Context) -> Self::Result {
        if self.waiting_readings + msg.readings.len() > PENDING_READINGS_MAX {
            self.metrics
                .readings_rejected("busy", msg.readings.len() as u64);
            return Box::pin(async {
                Err("the store is busy: too many readings waiting for a flush; retry".to_owned())
            });
        }
        let mut result = IngestResult::default();
        let mut by_stream: BTreeMap<StreamId, Vec<Record>> = BTreeMap::new();
        for r in msg.readings {
            match StreamId::new(self.me.clone(), StreamKind::Raw, r.sensor.as_str()) {
                Ok(stream) => by_stream.entry(stream).or_default().push(r.to_record()),
                Err(e) => {
                    self.metrics.readings_rejected("sensor_id", 1);
                    result.rejected.push(e.to_string());
                }
            }
        }
        let mut appended = 0;
        for (stream, records) in by_stream {
            let first_seq = self.store.head(&stream) + 1;
            match self.store.append(&stream, first_seq, &records) {
                Ok(outcome) => {
                    appended += outcome.appended;
                    result.acks.push(IngestAck {
                        stream,
                        first_seq,
                        last_seq: outcome.head,
                    });
                }
                Err(e @ StoreError::Columns { .. }) => {
                    self.metrics
                        .readings_rejected("columns", records.len() as u64);
                    result.rejected.push(e.to_string());
                }
                Err(e) => {
                    self.metrics
                        .readings_rejected("store", records.len() as u64);
                    error!("appending to {stream} failed: {e}");
                    result.rejected.push(format!("{stream}: {e}"));
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        self.waiting_readings += appended;
        self.waiting.push((tx, result));
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the store stopped before the flush".to_owned()))
        })
    }
}

impl Handler<ListStreams> for StoreActor {
    type Result = MessageResult<ListStreams>;
    fn handle(&mut self, _: ListStreams, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.store
                .streams()
                .into_iter()
                .map(|s| StreamView {
                    id: s.id,
                    first_seq: s.first_seq,
                    head: s.head,
                    durable_head: s.durable_head,
                    columns: s.columns as u32,
                    bytes: s.bytes,
                })
                .collect(),
        )
    }
}

impl Handler<ReadRange> for StoreActor {
    type Result = Result<Vec<(u64, Record)>, String>;
    fn handle(&mut self, msg: ReadRange, _: &mut Self::Context) -> Self::Result {
        let limit = msg.limit.min(QUERY_LIMIT_MAX) as usize;
        self.store
            .read(&msg.stream, msg.from, msg.to, limit)
            .map_err(|e| e.to_string())
    }
}

/// Polls a synthetic sensor source and feeds the store.
#[derive(Debug)]
pub struct SensorActor {
    source: SyntheticSource,
    store: Addr<StoreActor>,
    metrics: Metrics,
    inflight: usize,
}

impl SensorActor {
    /// A sensor actor for `source`.
    pub fn new(source: SyntheticSource, store: Addr<StoreActor>, metrics: Metrics) -> Self {
        Self {
            source,
            store,
            metrics,
            inflight: 0,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        // Back-pressure: while the store is behind, the source is not polled, so its readings
        // wait in the source (which catches up in bounded steps) instead of being dropped.
        if self.inflight >= SENSOR_INFLIGHT_MAX {
            return;
        }
        let mut readings = self.source.poll(now_ms());
        readings.retain(|r| match r.validate() {
            Ok(()) => true,
            Err(e) => {
                self.metrics.readings_rejected(e.kind(), 1);
                false
            }
        });
        if readings.is_empty() {
            return;
        }
        self.inflight += 1;
        self.store
            .send(Ingest { readings })
            .into_actor(self)
            .map(|res, act, _| {
                act.inflight -= 1;
                match res {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!("sensor readings not stored: {e}"),
                    Err(e) => warn!("store unavailable: {e}"),
                }
            })
            .spawn(ctx);
    }
}

impl Actor for SensorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(
            sensors = self.source.sensors().len(),
            "synthetic sensor source started"
        );
        ctx.run_interval(SENSOR_TICK, |act, ctx| act.tick(ctx));
    }
}
