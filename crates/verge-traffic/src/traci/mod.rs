//! A live source over TraCI, SUMO's control protocol: the node connects to a running SUMO,
//! steps the simulation in lockstep with the other nodes, and reads its own intersection's
//! detectors every step.
//!
//! Three layers, each testable on its own:
//!
//! - [`codec`]: the wire format as pure functions (messages, commands, statuses, typed values).
//! - [`TraciClient`]: one TCP connection (tokio, `TCP_NODELAY`): getVersion, setOrder,
//!   simulationStep, close, id lists, and the batched detector reads of a step in one message.
//! - [`TraciSource`]: one intersection. It steps the simulation and folds each step into
//!   [`IntervalAccumulator`] (pure), which emits one [`crate::Reading`] per detector per
//!   interval of simulated time.
//!
//! # The rules of a reading
//!
//! - `ts_ms = base_epoch_ms + simulation time` at the end of the interval, in milliseconds.
//! - **count** is vehicle *passages*: the vehicles in a detector's last-step id list that were
//!   not in the previous step's list. The per-step vehicle number counts a car standing on a
//!   loop again every step, so it is never used. For an E2 detector this counts vehicles
//!   entering the area (SUMO's `nVehEntered`).
//! - **occupancy** is the mean of the per-step occupancies (percent).
//! - **speed** is the mean of the per-step mean speeds over the steps where vehicles were on the
//!   detector (SUMO reports -1 otherwise); 0 when the count is 0.
//! - **queue** is the largest per-step jam length in vehicles of an E2 detector. An E1 loop
//!   reports queue 0: it is a point and sees no queue, and the E2 detector of the same lane
//!   reports that lane's queue in its own reading (the same mapping as the file replay, so a
//!   node's windows look the same whichever source feeds them).
//! - The simulation **ends** when SUMO expects no more vehicles (simulation variable 0x7D is
//!   0): the source emits the last, possibly partial, interval, closes its connection and then
//!   returns `None`.

mod client;
pub mod codec;
mod source;

pub use client::{DetectorSample, ReadPlan, StepSample, TraciClient};
pub use source::{IntervalAccumulator, SourceError, TraciConfig, TraciSource};
