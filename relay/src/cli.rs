//! The `tidings-relay` command line: flags, config, tracing, then the relay until SIGINT or
//! SIGTERM, then a graceful shutdown (final commit, every device told).
//!
//! In the library so that other binaries can run the same relay (the workspace's crash tests
//! start it as a process they can SIGKILL); `main.rs` only calls [`main`]. Being a binary's
//! logic, it reports errors with anyhow.

use anyhow::Context;
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

use crate::RelayConfig;

/// The relay's flags.
#[derive(Debug, Parser)]
#[command(name = "tidings-relay", version, about = "tidings relay node")]
pub struct Args {
    /// TOML config file (see the `config` module docs for keys and defaults).
    #[arg(long, conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Development mode: loopback on a free port, self-signed certificate, data in
    /// --data-dir or a fresh temporary directory. With --data-dir the port is kept in
    /// DATA_DIR/dev-listen and taken again at the next start, so devices pinned to the relay
    /// find it after a restart.
    #[arg(long)]
    pub dev: bool,
    /// Data directory (overrides the config's `data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// QUIC listen address (overrides the config's `listen`).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Metrics HTTP address (overrides the config's `metrics_listen`).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Parses the process's flags, starts tracing and a tokio runtime, and runs the relay.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // stdout carries the address and pin for scripts; logs go to stderr.
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(args))
}

/// Runs the relay with `args` until SIGINT or SIGTERM. Prints the address, relay id and
/// certificate fingerprint on stdout once it listens.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut _temp = None;
    let mut config = if args.dev {
        let dir = match &args.data_dir {
            Some(d) => d.clone(),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("tidings-relay-")
                    .tempdir()
                    .context("creating a temporary data directory")?;
                let p = t.path().to_path_buf();
                _temp = Some(t);
                p
            }
        };
        RelayConfig::dev(dir)
    } else if let Some(path) = &args.config {
        RelayConfig::load(path)?
    } else {
        anyhow::bail!("give --config relay.toml or --dev (see --help)");
    };
    let keep_port = args.dev && args.data_dir.is_some() && args.listen.is_none();
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    let dev_listen = config.data_dir.join(DEV_LISTEN_FILE);
    if keep_port {
        if let Some(a) = read_dev_listen(&dev_listen) {
            config.listen = a;
        }
    }
    if let Some(a) = args.listen {
        config.listen = a;
    }
    if args.metrics_listen.is_some() {
        config.metrics_listen = args.metrics_listen;
    }
    let relay = crate::start(config.clone())
        .await
        .context("starting the relay")?;
    if keep_port {
        std::fs::write(&dev_listen, relay.addr().to_string())
            .with_context(|| format!("writing {}", dev_listen.display()))?;
    }
    let mut banner = format!(
        "tidings-relay listening on {}\nrelay id:              {}\ncertificate sha256:    {}\n\
         pin:                   {}@{}\ndata dir:              {}\n",
        relay.addr(),
        relay.relay_id(),
        relay.fingerprint(),
        relay.relay_id(),
        relay.fingerprint(),
        config.data_dir.display()
    );
    if let Some(m) = relay.metrics_addr() {
        banner.push_str(&format!("metrics:               http://{m}/metrics\n"));
    }
    // Whoever started the relay may have closed our stdout (a script that read the pin and
    // went away): that is no reason to stop serving, where `println!` would panic.
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(banner.as_bytes()).and_then(|()| out.flush()) {
        tracing::warn!("could not print the relay's address and pin to stdout: {e}");
    }
    drop(out);
    wait_for_signal().await?;
    relay.shutdown().await.context("shutting down")?;
    Ok(())
}

/// The file in a `--dev` relay's data directory that keeps its listen address.
pub const DEV_LISTEN_FILE: &str = "dev-listen";

/// The address a `--dev` relay listened on last time, if it recorded one.
fn read_dev_listen(path: &std::path::Path) -> Option<std::net::SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
