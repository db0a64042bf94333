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
