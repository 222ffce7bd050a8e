//! [`Connectivity::Os`](crate::Connectivity::Os): the operating system's interface changes,
//! fed to the same command as [`Replica::network_changed`](crate::Replica::network_changed).

use crate::Command;
use futures_util::StreamExt;
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};

/// Watches interfaces until the driver is gone. An address appearing says "online, retry
/// now"; the last address going says "offline". Holds the command queue weakly, so it never
/// keeps a driver alive.
pub(crate) fn watch(commands: mpsc::WeakSender<Command>) {
    let mut watcher = match if_watch::tokio::IfWatcher::new() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no interface watcher; connectivity comes from the app only");
            return;
        }
    };
    tokio::spawn(async move {
        let mut up = HashSet::new();
        while let Some(event) = watcher.next().await {
            let online = match event {
                Ok(if_watch::IfEvent::Up(net)) => {
                    if !up.insert(net) {
                        continue;
                    }
                    true
                }
                Ok(if_watch::IfEvent::Down(net)) => {
                    up.remove(&net);
                    if !up.is_empty() {
                        continue;
                    }
                    false
                }
                Err(e) => {
                    tracing::debug!(error = %e, "interface watcher");
                    continue;
                }
            };
            let Some(tx) = commands.upgrade() else { return };
            let (reply, _) = oneshot::channel();
            if tx
                .send(Command::NetworkChanged(online, reply))
                .await
                .is_err()
            {
                return;
            }
        }
    });
}
