//! Real relays and replicas on loopback, and a UDP proxy that can cut the path.

use super::User;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidings::engine::{ConversationId, DeviceKey, MessageId, RetryPolicy, Status};
use tidings::relay::config::RelayConfig;
use tidings::relay::server::{self, RelayHandle};
use tidings::relay::Limits;
use tidings::replica::{PageCursor, Rendered, Replica, ReplicaConfig};
use tokio::net::UdpSocket;

/// A relay on 127.0.0.1:0 with its data in `dir`.
pub async fn relay(dir: &Path, limits: Limits) -> RelayHandle {
    server::start(RelayConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.to_path_buf(),
        limits,
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts")
}

/// Device settings for tests: quick retries and reconnects, a dead path noticed in ~2 s.
pub fn config(
    relay: &RelayHandle,
    addr: SocketAddr,
    key: &DeviceKey,
    user: &User,
) -> ReplicaConfig {
    let fp = relay.fingerprint();
    let mut c = ReplicaConfig::new(addr, relay.relay_id(), fp);
    c.keepalive = Duration::from_millis(300);
    c.idle_timeout = Duration::from_secs(2);
    c.device.registration = Some(key.certificate(&user.key, 0));
    c.device.retry = RetryPolicy {
        base_ms: 100,
        max_ms: 1_000,
        max_attempts: 50,
        jitter_pct: 20,
    };
    c.device.reconnect = RetryPolicy {
        base_ms: 50,
        max_ms: 500,
        max_attempts: u32::MAX,
        jitter_pct: 20,
    };
    c.device.ack_timeout_ms = 1_000;
    c
}

pub async fn open(dir: &Path, name: &str, key: DeviceKey, config: ReplicaConfig) -> Replica {
    Replica::open(dir.join(name), key, config)
        .await
        .expect("replica opens")
}

/// A device of `user` (its key from `seed`) opened as `dir/name` on `relay` with [`config`].
pub async fn open_device(
    relay: &RelayHandle,
    dir: &Path,
    name: &str,
    user: &User,
    seed: u8,
) -> (Replica, DeviceKey) {
    let (key, _) = crate::common::device(user, seed);
    let cfg = config(relay, relay.addr(), &key, user);
    (open(dir, name, key.clone(), cfg).await, key)
}

/// Polls until `check` holds, panicking with `what` after `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first update on `updates` that `pick` takes, panicking with `what` after `secs`
/// seconds or when the stream ends.
pub async fn next_update<T>(
    updates: &mut tidings::replica::Updates,
    secs: u64,
    what: &str,
    mut pick: impl FnMut(tidings::replica::Update) -> Option<T>,
) -> T {
    use futures::StreamExt;
    let found = tokio::time::timeout(Duration::from_secs(secs), async {
        while let Some(u) = updates.next().await {
            if let Some(t) = pick(u) {
                return Some(t);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(t)) => t,
        Ok(None) => panic!("the updates ended before {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits until the relay has told `r` of its invitation to `conv`, then accepts it (what
/// the invited user's app does when the user taps "accept").
pub async fn accept_invitation(r: &Replica, conv: ConversationId) {
    eventually(20, "the invitation", || async {
        r.invitations()
            .await
            .map(|inv| inv.iter().any(|i| i.conversation == conv))
            .unwrap_or(false)
    })
    .await;
    r.accept(conv).await.expect("accept");
}

/// `creator` starts `conv` with `invited_user`, whose device `invited` accepts, and every
/// device of `everyone` sees its members within `secs` seconds.
pub async fn start_conversation(
    creator: &Replica,
    invited: &Replica,
    invited_user: tidings::engine::UserId,
    conv: ConversationId,
    everyone: &[Replica],
    secs: u64,
) {
    creator
        .create_conversation(conv, vec![invited_user])
        .await
        .expect("create");
    accept_invitation(invited, conv).await;
    for d in everyone {
        eventually(secs, "the conversation everywhere", || async {
            d.conversation(conv)
                .await
                .is_ok_and(|s| s.members.is_some())
        })
        .await;
    }
}

/// Every message of `conv` in view order, read a page of `PAGE` at a time from the latest
/// back (index reads beside the driver, no document load).
pub async fn all_pages(r: &Replica, conv: ConversationId) -> Vec<Rendered> {
    const PAGE: usize = 100;
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = r.page(conv, before, PAGE).await.expect("page");
        let Some(first) = page.first() else {
            return out;
        };
        before = Some(PageCursor::of(&first.view));
        out.splice(0..0, page);
    }
}

/// Message ids in view order.
pub async fn ids(r: &Replica, conv: ConversationId) -> Vec<MessageId> {
    all_pages(r, conv).await.iter().map(|m| m.view.id).collect()
}

/// Statuses of `ids` as `r` sees them (Pending for an unknown one).
pub async fn statuses(r: &Replica, conv: ConversationId, want: &[MessageId]) -> Vec<Status> {
    let shown: HashMap<MessageId, Status> = all_pages(r, conv)
        .await
        .iter()
        .map(|m| (m.view.id, m.view.status))
        .collect();
    want.iter()
        .map(|id| shown.get(id).copied().unwrap_or(Status::Pending))
        .collect()
}

/// True when every message in `want` is at least `status` on `r`.
pub async fn all_at_least(
    r: &Replica,
    conv: ConversationId,
    want: &[MessageId],
    status: Status,
) -> bool {
    statuses(r, conv, want)
        .await
        .iter()
        .all(|s| s.rank() >= status.rank())
}

/// A UDP forwarder between one client and the relay that can drop either direction.
pub struct Proxy {
    pub addr: SocketAddr,
    pub drop_to_server: Arc<AtomicBool>,
    pub drop_to_client: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        back.connect(upstream).await.expect("connect");
        let addr = front.local_addr().expect("addr");
        let drop_to_server = Arc::new(AtomicBool::new(false));
        let drop_to_client = Arc::new(AtomicBool::new(false));
        let (ds, dc) = (drop_to_server.clone(), drop_to_client.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut a = vec![0u8; 65_536];
            let mut b = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        if !ds.load(Ordering::Relaxed) {
                            let _ = back.send(&a[..n]).await;
                        }
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { return };
                        if let (Some(c), false) = (client, dc.load(Ordering::Relaxed)) {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Proxy {
            addr,
            drop_to_server,
            drop_to_client,
            task,
        }
    }

    /// Both directions dropped (`false`) or passed (`true`).
    pub fn set_up(&self, up: bool) {
        self.drop_to_server.store(!up, Ordering::Relaxed);
        self.drop_to_client.store(!up, Ordering::Relaxed);
    }
}
