//! `tidings-relay`: flags, config, tracing, then the relay (all in [`tidings_relay::cli`]).

fn main() -> anyhow::Result<()> {
    tidings_relay::cli::main()
}
