//! Placeholder: the replication core is being written.
