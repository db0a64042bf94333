//! Traffic readings and the sources that produce them.
//!
//! A reading is what one detector saw over its interval: vehicle count, occupancy (%), mean speed
//! (m/s) and queue (vehicles). It is stored as a [`verge_proto::Record`] whose values are those four
//! columns, in that order. Three sources produce readings:
//!
//! - [`SyntheticSource`]: made-up traffic for load tests, polled with the current time;
//! - [`replay::ReplaySource`]: SUMO's E1/E2 detector output files, merged in time order and
//!   released as (accelerated) time passes, polled with the current time;
//! - [`traci::TraciSource`]: a running SUMO over TraCI, stepped by the source itself (async).
//!
//! [`Validator`] checks a stream of readings (known detectors, bounds, time per detector);
//! [`detector`] knows the SUMO grid's detector ids (traffic light, approach); [`window`]
//! aggregates readings per approach. This crate does no networking with other nodes and stores
//! nothing: the node crate wires sources, validation and windows to its actors.
//!
//! # How a node uses it
//!
//! Replay (the files of a finished SUMO run, one intersection, ten times real time):
//!
//! ```no_run
//! use std::{fs::File, io::BufReader, path::Path};
//! use verge_traffic::{Validator, detector, replay, window};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = Path::new("run");
//! let add = BufReader::new(File::open(dir.join("detectors.add.xml"))?);
//! let ids: Vec<String> = replay::declared_detectors(add)?
//!     .into_iter()
//!     .map(|(id, _)| id)
//!     .filter(|id| detector::belongs_to(id, "B1"))
//!     .collect();
//! let mut validator = Validator::new(ids.iter().cloned());
//! let approaches = detector::approaches_for("B1", ids.iter().map(String::as_str));
//! let mut agg = window::Aggregator::new(window::WindowConfig {
//!     approaches,
//!     ..window::WindowConfig::default()
//! })?;
//! let now_ms = 1_700_000_000_000; // the node's clock
//! let cfg = replay::ReplayConfig {
//!     base_epoch_ms: now_ms,
//!     speed: 10.0,
//!     tls: ["B1".to_string()].into(),
//! };
//! let out = dir.join("out");
//! let mut src = replay::ReplaySource::open(Some(&out.join("e1.xml")), Some(&out.join("e2.xml")), cfg)?;
//! // On every tick of the node's timer:
//! let polled = src.poll(now_ms);
//! for e in &polled.errors {
//!     eprintln!("{e}"); // and count e.kind() in a metric
//! }
//! for r in polled.readings {
//!     match validator.check(&r) {
//!         Ok(()) => { let _ = agg.push(&r); /* and append r.to_record() to the stream */ }
//!         Err(e) => eprintln!("{e}"), // count e.kind()
//!     }
//! }
//! // Event time runs `speed` times faster than the wall clock: advance windows with it.
//! let closed = agg.advance(src.replay_now_ms(now_ms).unwrap_or(now_ms));
//! # let _ = closed;
//! # Ok(())
//! # }
//! ```
//!
//! Live TraCI (SUMO started with `--remote-port 8813 --num-clients K`; this node is client 1):
//!
//! ```no_run
//! use verge_traffic::Validator;
//! use verge_traffic::traci::{TraciConfig, TraciSource};
//!
//! # async fn run() -> Result<(), verge_traffic::traci::SourceError> {
//! let mut cfg = TraciConfig::new(([127, 0, 0, 1], 8813).into(), "B1", 1);
//! cfg.base_epoch_ms = 1_700_000_000_000;
//! let mut src = TraciSource::connect(cfg).await?; // on a retryable error: back off, retry
//! let mut validator = Validator::new(src.detectors().iter().map(|(id, _)| id.clone()));
//! while let Some(readings) = src.next_interval().await? {
//!     for r in readings {
//!         if validator.check(&r).is_ok() { /* push, append */ }
//!     }
//! }
//! // None: the simulation ended and the connection is closed.
//! # Ok(())
//! # }
//! ```

pub mod detector;
pub mod fuzzing;
mod reading;
pub mod replay;
mod synthetic;
pub mod traci;
mod validator;
pub mod window;

pub use reading::{COLUMNS, Reading, ReadingError};
pub use synthetic::{Pattern, SyntheticConfig, SyntheticSource};
pub use validator::Validator;
