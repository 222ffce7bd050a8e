//! tidings: offline-first messaging.
pub use tidings_engine as engine;
pub use tidings_relay as relay;
pub use tidings_replica as replica;
pub use tidings_transport as transport;
