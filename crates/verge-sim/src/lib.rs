//! Running Verge corridors on one machine: real `verge node` processes on 127.0.0.1 with ports the
//! OS hands out, their certificates and configs in a temporary directory, and an admin client to
//! ask them what they see.
//!
//! `verge demo` and the process-level tests use [`LocalCluster`], and [`CloudProc`] for a reference
//! cloud process; later, `verge sim` adds scenarios, faults and invariant checks on top of them. This crate starts processes and talks to them only
//! through their config files, signals and admin endpoints: it never reaches into node internals.

mod admin;
pub mod check;
mod cloud;
mod cluster;
pub mod netns;
pub mod report;
pub mod report_html;
pub mod runner;
pub mod scenario;
pub mod sumo;

pub use admin::{AdminClient, AdminError};
pub use cloud::{CloudProc, CloudSpec};
pub use cluster::{
    ClusterError, ClusterSpec, LocalCluster, NodeProc, free_tcp_port, free_udp_port,
};
