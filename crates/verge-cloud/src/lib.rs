//! Verge's cloud end: the batch API a gateway syncs to, the HTTPS client it syncs with
//! ([`client::CloudClient`]), and the reference ingest server ([`server::serve`], run by
//! `verge cloud serve` and by the tests).
//!
//! # What the reference cloud guarantees
//!
//! - **Each batch key once.** A batch is keyed by (cluster, stream, first seq, last seq). A key
//!   already stored is acknowledged (`{"status":"duplicate"}`) and nothing is stored again, so a
//!   gateway may resend the batch in flight after any failure.
//! - **Each window once.** A window is (cluster, stream, seq). A batch that overlaps windows
//!   already held (a new gateway may cut batches differently) stores only the new ones and says
//!   how many were duplicates; a held window is never overwritten.
//! - **Fencing.** A batch whose term is below the highest the cloud has accepted for its cluster
//!   is refused with 409, even when its key is held. The check, the store and the raising of the
//!   term are one atomic step (one writer, one sled batch), and the highest term is durable, so
//!   it survives a restart.
//! - **Durable before acknowledged.** A 200 is sent only after the batch is fsynced; nothing is
//!   stored for any refusal (400, 401, 409, 413, 503).
//! - **Bounded.** Bodies, connections, handshakes, reads and answers each have a named limit.
//!
//! - **Faults only when asked.** A cloud started with fault injection on
//!   ([`CloudServerConfig::faults_enabled`], `verge cloud serve --faults`) takes a [`Fault`] at
//!   `POST /v1/faults` and misbehaves towards batches accordingly (500s, garbage answers, delays,
//!   dropped connections; see [`FaultMode`]); the guarantees above still hold for whatever it does
//!   store, except in mode `accept-stale`, which turns fencing off to give checkers a cloud that
//!   breaks it. Without the flag the endpoint refuses with 403 and batches are never faulted.
//! - **An acceptance log.** Every batch record stored gets the next number of a durable
//!   counter, in the same atomic step, and `GET /v1/batches?cluster=C` lists a cluster's records
//!   in that order ([`BatchesPage`]), so a checker can see from outside which terms and gateways
//!   the cloud accepted, and in what order.
//!
//! It does not check that a stream's windows arrive in order or without gaps (the summary shows
//! gaps as `missing`), nor who may send which cluster: any authenticated client may post for any
//! cluster name. It is a reference and test endpoint, not a multi-tenant service.
//!
//! Module map: [`api`] (wire types and batch checks), [`ingest`] (the pure decision), [`store`]
//! (sled layout), [`writer`] (the one writer, group commit), [`server`], [`client`], [`tls`],
//! [`metrics`], and `fault` (fault injection's switch and connection gate).

pub mod api;
pub mod client;
mod error;
mod fault;
pub mod ingest;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
pub mod writer;

pub use api::{
    AcceptedBatch, Batch, BatchAck, BatchError, BatchKey, BatchesPage, Fault, FaultError,
    FaultMode, Summary, Window, WindowsPage,
};
pub use client::{CloudClient, PostError, PostOutcome, QueryError};
pub use error::CloudError;
pub use server::{CloudServerConfig, RunningCloud, ShutdownHandle, read_token_file, serve};
