//! `tidings-relay` as a process of this package, for `tests/e2e.rs`: the same command line.

fn main() {
    if let Err(e) = tidings_relay::cli::main() {
        eprintln!("tidings-cli-test-relay: {e:#}");
        std::process::exit(1);
    }
}
