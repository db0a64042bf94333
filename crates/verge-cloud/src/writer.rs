//! The writer: one thread that owns the [`CloudStore`] and applies batches in arrival order,
//! syncing once per group (group commit).
//!
//! Handlers send it a checked batch and await the answer. It takes every job already queued (up
//! to [`GROUP_JOBS_MAX`]), decides and applies each in order, so a later job in the group sees
//! an earlier one's key, windows and term, then syncs once and answers them all. Because it is the
//! only writer, each check-then-write (fencing, key, windows) is atomic with respect to every
//! other request without a lock; concurrent posts of one key store it once.
//!
//! If a sync fails it answers that group with the error and every later job too
//! ([`StoreError::Failed`]): the kernel may have dropped the unsynced pages, so acknowledging
//! anything afterwards could claim durability it does not have.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::api::{Batch, FaultMode};
use crate::ingest::Fence;
use crate::metrics::Metrics;
use crate::store::{CloudStore, Ingested, StoreError};

/// The most jobs that wait for the writer; a handler that finds it full waits for room.
pub const QUEUE_JOBS_MAX: usize = 64;
/// The most jobs one sync covers.
pub const GROUP_JOBS_MAX: usize = 256;

struct Job {
    batch: Batch,
    /// Enforced but under the `accept-stale` fault.
    fence: Fence,
    reply: oneshot::Sender<Result<Ingested, StoreError>>,
}

/// Where handlers send batches. Cheap to clone; the writer stops when every clone is dropped.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({})", self.batch.key())
    }
}

impl WriterHandle {
    /// Stores a checked batch; answers once it is durable (or refused).
    pub async fn ingest(&self, batch: Batch) -> Result<Ingested, StoreError> {
        self.ingest_with(batch, Fence::Enforce).await
    }

    /// Like [`WriterHandle::ingest`], with the term fence as `fence` says.
    pub async fn ingest_with(&self, batch: Batch, fence: Fence) -> Result<Ingested, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Failed("the writer has stopped".into());
        self.tx
            .send(Job {
                batch,
                fence,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Starts the writer thread; it ends, closing the store, once every handle is dropped. It
/// counts stored windows and terms in `metrics` and clears `healthy` if a sync fails.
pub fn spawn(
    store: CloudStore,
    metrics: Metrics,
    healthy: Arc<AtomicBool>,
) -> std::io::Result<(WriterHandle, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(QUEUE_JOBS_MAX);
    let thread = thread::Builder::new()
        .name("verge-cloud-writer".into())
        .spawn(move || run(store, rx, &metrics, &healthy))?;
    Ok((WriterHandle { tx }, thread))
}

fn run(
    mut store: CloudStore,
    mut rx: mpsc::Receiver<Job>,
    metrics: &Metrics,
    healthy: &AtomicBool,
) {
    let mut failed: Option<String> = None;
    let mut group = Vec::with_capacity(GROUP_JOBS_MAX);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < GROUP_JOBS_MAX {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if let Some(reason) = &failed {
            for job in group.drain(..) {
                let _ = job.reply.send(Err(StoreError::Failed(reason.clone())));
            }
            continue;
        }
        let mut answers = Vec::with_capacity(group.len());
        let mut wrote_any = false;
        for job in &group {
            let answer = store
                .ingest_with(&job.batch, job.fence)
                .map(|(outcome, wrote)| {
                    wrote_any |= wrote;
                    outcome
                });
            if let Err(e) = &answer {
                warn!(batch = %job.batch.key(), "cloud store refused a batch: {e}");
            }
            answers.push(answer);
        }
        if wrote_any && let Err(e) = store.sync() {
            error!("cloud store sync failed; refusing every batch until restarted: {e}");
            failed = Some(e.to_string());
            healthy.store(false, Ordering::Relaxed);
            for job in group.drain(..) {
                let _ = job.reply.send(Err(e.clone()));
            }
            continue;
        }
        for (job, answer) in group.iter().zip(&answers) {
            if let Ok(outcome) = answer {
                record(metrics, &job.batch, outcome);
            }
        }
        for (job, answer) in group.drain(..).zip(answers) {
            // The handler may have gone (client hung up); the batch is stored regardless.
            let _ = job.reply.send(answer);
        }
    }
}

/// Counts what a durable outcome did. Called in order by the one writer, so the term gauge only
/// ever moves up.
fn record(metrics: &Metrics, batch: &Batch, outcome: &Ingested) {
    match outcome {
        Ingested::Stale { .. } => {}
        Ingested::Duplicate => metrics.raise_term(&batch.cluster, batch.term),
        Ingested::Stored {
            stored,
            duplicates,
            conflicts,
            accepted,
            stale_over,
        } => {
            if let Some(highest) = stale_over {
                metrics.fault_applied(FaultMode::AcceptStale);
                warn!(
                    batch = %batch.key(),
                    accepted,
                    "fault injection (accept-stale): stored a batch of stale term {} below the \
                     highest {highest} for cluster {}, from gateway {}; fencing is off",
                    batch.term,
                    batch.cluster,
                    batch.gateway
                );
            }
            metrics.raise_term(&batch.cluster, batch.term);
            metrics.windows(*stored, *duplicates, conflicts.len() as u64);
            if !conflicts.is_empty() {
                warn!(
                    batch = %batch.key(),
                    "{} held windows differ from the batch's (kept as held; a stream has one \
                     writer, so this is a bug upstream), first seq {}",
                    conflicts.len(),
                    conflicts[0]
                );
            }
        }
    }
}
