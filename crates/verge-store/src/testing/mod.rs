//! Test support shared with other crates: the conformance suite every [`Store`](crate::Store)
//! must pass and realistic series for compression and ingest figures. Not part of the stable API.

pub mod conformance;
pub mod series;
