//! Traffic readings and the sources that produce them.
//!
//! A reading is what one detector saw over its interval: vehicle count, occupancy (%), mean speed
//! (m/s) and queue (vehicles). It is stored as a [`verge_proto::Record`] whose values are those four
//! columns, in that order. Sources are plain structs polled with the current time (`now_ms`), so
//! they run the same under a real clock, an accelerated replay and a simulation. Today there is the
//! synthetic source; SUMO replay and live TraCI join it with the sensing issue.

mod reading;
mod synthetic;
pub mod window;

pub use reading::{COLUMNS, Reading, ReadingError};
pub use synthetic::{Pattern, SyntheticConfig, SyntheticSource};
