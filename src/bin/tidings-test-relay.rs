//! The relay as a process of this package, for the crash tests (`tests/crash_relay.rs`): the
//! same command line as `tidings-relay` (see `tidings_relay::cli`). Integration tests can only
//! start binaries of their own package, hence this one-line copy.

fn main() {
    if let Err(e) = tidings::relay::cli::main() {
        eprintln!("tidings-test-relay: {e:#}");
        std::process::exit(1);
    }
}
