//! Fault injection in the reference cloud, for tests and simulations: the switch that holds the
//! [`Fault`] in force, and the gate that drops a `down` batch's connection.
//!
//! It exists only on a cloud started with [`crate::CloudServerConfig::faults_enabled`]; without
//! it the server holds no switch, `/v1/faults` refuses, and no batch is ever faulted. What each
//! mode does is documented on [`FaultMode`]; the server's `POST /v1/batches` handler applies
//! `error`, `delay` and `garbage`, and [`Gated`] applies `down`, because only the connection
//! (not a handler, which must answer) can leave a request without an HTTP answer. Every other
//! endpoint, `/v1/faults` included, is never faulted, so a test can always see and undo a fault.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{Method, Request};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::api::{Fault, FaultMode, PATH_BATCHES};
use crate::metrics::Metrics;

/// The answer body of a `garbage` batch: JSON cut short, under a JSON content type, so a client
/// that trusts the status or the content type is caught out.
pub(crate) const GARBAGE_BODY: &str = r#"{"status":"stored","stored":"#;
/// The header that marks an injected answer as such, for whoever debugs a capture of it.
pub(crate) const FAULT_HEADER: &str = "x-verge-fault";

/// The fault in force. Cheap to clone; clones share it. Handlers read it once per request, so a
/// change applies to requests that arrive after it.
#[derive(Debug, Clone)]
pub(crate) struct FaultSwitch(Arc<watch::Sender<Fault>>);

impl FaultSwitch {
    /// A switch with no fault in force.
    pub(crate) fn new() -> Self {
        Self(Arc::new(watch::Sender::new(Fault::NONE)))
    }

    /// The fault in force.
    pub(crate) fn current(&self) -> Fault {
        *self.0.borrow()
    }

    /// Puts `fault` (already checked) in force, logging the change.
    pub(crate) fn set(&self, fault: Fault) {
        let before = self.0.send_replace(fault);
        if before == fault {
            info!("fault injection: {fault} already in force");
        } else if fault.mode == FaultMode::None {
            info!("fault injection: cleared (was {before}); batches are handled normally");
        } else {
            warn!("fault injection: every POST /v1/batches now gets {fault} (was {before})");
        }
    }
}

/// A connection's service with the `down` fault in front of it: a batch POST that arrives while
/// the fault is `down` fails the service, and hyper then closes the connection without writing
/// an answer or reading the body.
#[derive(Debug, Clone)]
pub(crate) struct Gated<S> {
    inner: S,
    switch: Option<FaultSwitch>,
    metrics: Metrics,
}

impl<S> Gated<S> {
    /// `inner` behind the gate; with no switch (fault injection off) every request passes.
    pub(crate) fn new(inner: S, switch: Option<FaultSwitch>, metrics: Metrics) -> Self {
        Self {
            inner,
            switch,
            metrics,
        }
    }

    fn drops<B>(&self, req: &Request<B>) -> bool {
        self.switch
            .as_ref()
            .is_some_and(|s| s.current().mode == FaultMode::Down)
            && req.method() == Method::POST
            && req.uri().path() == PATH_BATCHES
    }
}

/// The error that makes hyper drop a connection for the `down` fault.
#[derive(Debug, thiserror::Error)]
#[error("fault injection: connection dropped without an answer (mode down)")]
pub(crate) struct DroppedByFault;

impl<S, B> hyper::service::Service<Request<B>> for Gated<S>
where
    S: hyper::service::Service<Request<B>, Error = Infallible>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = DroppedByFault;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, DroppedByFault>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        if self.drops(&req) {
            self.metrics.fault_applied(FaultMode::Down);
            debug!("fault injection: dropping a batch's connection without an answer (down)");
            return Box::pin(std::future::ready(Err(DroppedByFault)));
        }
        let answer = self.inner.call(req);
        Box::pin(async move {
            match answer.await {
                Ok(resp) => Ok(resp),
                Err(never) => match never {},
            }
        })
    }
}
