//! [`Connectivity::Os`](crate::Connectivity::Os): the operating system's interface changes,
//! fed to the same command as [`Replica::network_changed`](crate::Replica::network_changed).

use crate::Command;
use futures_util::StreamExt;
use if_watch::{IfEvent, IpNet};
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
        let mut addresses = Addresses::default();
        while let Some(event) = watcher.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "interface watcher");
                    continue;
                }
            };
            let Some(online) = addresses.take(event) else {
                continue;
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

/// The addresses the interfaces hold, and what a change of them means for the device.
#[derive(Debug, Default)]
struct Addresses {
    up: HashSet<IpNet>,
}

impl Addresses {
    /// `Some(true)`: an address appeared (online, retry now); `Some(false)`: the last one went
    /// (offline); `None`: nothing to say (an address seen already, or one of several went).
    fn take(&mut self, event: IfEvent) -> Option<bool> {
        match event {
            IfEvent::Up(net) => self.up.insert(net).then_some(true),
            IfEvent::Down(net) => (self.up.remove(&net) && self.up.is_empty()).then_some(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    /// What the watcher tells the device, from the events the OS gives. Changing the machine's
    /// addresses for real needs root (or a network namespace), which a test cannot count on;
    /// the watcher's own start is checked by `the_os_watcher_starts_and_sees_an_address`.
    #[test]
    fn the_last_address_going_is_offline_and_a_new_one_is_online() {
        let mut a = Addresses::default();
        assert_eq!(a.take(IfEvent::Up(net("127.0.0.1/8"))), Some(true));
        assert_eq!(
            a.take(IfEvent::Up(net("127.0.0.1/8"))),
            None,
            "seen already"
        );
        assert_eq!(a.take(IfEvent::Up(net("192.168.1.7/24"))), Some(true));
        assert_eq!(
            a.take(IfEvent::Down(net("192.168.1.7/24"))),
            None,
            "one left"
        );
        assert_eq!(a.take(IfEvent::Down(net("10.0.0.1/8"))), None, "never up");
        assert_eq!(a.take(IfEvent::Down(net("127.0.0.1/8"))), Some(false));
        assert_eq!(a.take(IfEvent::Up(net("10.0.0.2/8"))), Some(true));
    }

    /// The real watcher (netlink on Linux, no privileges needed to listen) starts and reports
    /// the addresses the machine has: at least loopback's.
    #[tokio::test]
    async fn the_os_watcher_starts_and_sees_an_address() {
        let mut watcher = if_watch::tokio::IfWatcher::new().expect("watcher");
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), watcher.next())
            .await
            .expect("an event within 10 s")
            .expect("a stream")
            .expect("an event");
        let mut a = Addresses::default();
        assert!(matches!(first, IfEvent::Up(_)), "{first:?}");
        assert_eq!(a.take(first), Some(true));
    }
}
