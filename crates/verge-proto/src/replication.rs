//! Messages of the replication protocol between a stream's owner and its replicas.
//!
//! (Filled in by the replication work; see `verge-replica`.)
