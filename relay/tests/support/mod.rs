//! Helpers shared by the relay's integration tests.
pub mod pg;
