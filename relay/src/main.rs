//! `tidings-relay`: parse flags, load the config, start tracing, run the relay until SIGINT or
//! SIGTERM, then shut down gracefully (final commit, every device told).

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use tidings_relay::RelayConfig;

#[derive(Debug, Parser)]
#[command(name = "tidings-relay", version, about = "tidings relay node")]
struct Args {
    /// TOML config file (see the `config` module docs for keys and defaults).
    #[arg(long, conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Development mode: loopback on a free port, self-signed certificate, data in
    /// --data-dir or a fresh temporary directory.
    #[arg(long)]
    dev: bool,
    /// Data directory (overrides the config's `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// QUIC listen address (overrides the config's `listen`).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Metrics HTTP address (overrides the config's `metrics_listen`).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
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
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(a) = args.listen {
        config.listen = a;
    }
    if args.metrics_listen.is_some() {
        config.metrics_listen = args.metrics_listen;
    }
    let relay = tidings_relay::start(config.clone())
        .await
        .context("starting the relay")?;
    println!("tidings-relay listening on {}", relay.addr());
    println!("relay id:              {}", relay.relay_id());
    println!("certificate sha256:    {}", relay.fingerprint());
    println!("data dir:              {}", config.data_dir.display());
    if let Some(m) = relay.metrics_addr() {
        println!("metrics:               http://{m}/metrics");
    }
    wait_for_signal().await?;
    relay.shutdown().await.context("shutting down")?;
    Ok(())
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
