//! Helpers shared by the relay's integration tests.
pub mod cluster;
pub mod pg;
