//! Prefetch: the media of received messages fetched before anyone taps, by the app's policy
//! ([`Replica::set_prefetch`]): blobs up to a size, and only on an unmetered network if the
//! policy says so ([`Replica::set_metered`], the app's word: the operating system knows
//! whether the network costs money, this library does not).
//!
//! What is fetched is the blob's **ciphertext**, every piece verified against its root, into
//! the same partial-download file [`Replica::download_media`] uses: a tap then decrypts it
//! locally without the network, and nothing is held in clear before the user asks for it.
//! A prefetch that fails for lack of a network, or because the sender's upload has not
//! finished yet (the caption travels before the photo), is tried again with backoff; the
//! queue is bounded ([`MAX_PREFETCH_QUEUE`]) and lives in memory (after a restart, a tap
//! still resumes whatever was fetched). One blob is fetched at a time, so a prefetch never
//! takes more than one transfer stream from what the user asks for.
//!
//! The prefetcher subscribes to the replica's updates only while a policy is on: with it off
//! (the default) no message body is rendered for it.

use super::{MediaError, MediaShared};
use crate::{Replica, ReplicaError, Update};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tidings_engine::media::wire::BlobRefusal;
use tidings_engine::media::BlobDescriptor;
use tidings_engine::store::Body;
use tidings_engine::{BlobId, ConversationId, DeviceId};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Most blobs waiting to be prefetched; past it, new ones are not queued (a tap still
/// fetches them).
pub const MAX_PREFETCH_QUEUE: usize = 256;
/// First wait before a failed prefetch is tried again; it doubles up to
/// [`PREFETCH_RETRY_MAX`].
pub const PREFETCH_RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest wait between two tries of one prefetch.
pub const PREFETCH_RETRY_MAX: Duration = Duration::from_secs(60);
/// Tries of one prefetch before it is given up (the blob is still fetched on a tap).
pub const PREFETCH_MAX_ATTEMPTS: u32 = 30;

/// Which received media is fetched before a tap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchPolicy {
    /// Largest blob (plaintext bytes) fetched ahead; 0 turns prefetch off.
    pub max_bytes: u64,
    /// Only while the network is unmetered ([`Replica::set_metered`]): "Wi-Fi only".
    pub unmetered_only: bool,
}

impl PrefetchPolicy {
    /// No prefetch (the default): media is fetched when the app asks.
    pub const OFF: PrefetchPolicy = PrefetchPolicy {
        max_bytes: 0,
        unmetered_only: false,
    };

    /// Blobs of at most `max_bytes`, on any network.
    pub fn up_to(max_bytes: u64) -> PrefetchPolicy {
        PrefetchPolicy {
            max_bytes,
            unmetered_only: false,
        }
    }

    /// The same, only while the network is unmetered.
    pub fn unmetered_only(mut self) -> PrefetchPolicy {
        self.unmetered_only = true;
        self
    }

    /// Prefetch is off.
    pub fn is_off(&self) -> bool {
        self.max_bytes == 0
    }

    fn wants(&self, media: &BlobDescriptor) -> bool {
        media.len <= self.max_bytes
    }

    /// Fetching may go on now, on a network that is `metered` or not.
    fn allows(&self, metered: bool) -> bool {
        let waits_for_wifi = self.unmetered_only && metered;
        !self.is_off() && !waits_for_wifi
    }
}

/// A blob waiting to be prefetched.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    conversation: ConversationId,
    media: BlobDescriptor,
    attempts: u32,
    not_before: Instant,
}

/// The blobs waiting, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct PrefetchQueue {
    waiting: VecDeque<Pending>,
    /// The one being fetched.
    current: Option<BlobId>,
}

impl PrefetchQueue {
    fn push(&mut self, conversation: ConversationId, media: BlobDescriptor) {
        let known = self.current == Some(media.blob)
            || self.waiting.iter().any(|p| p.media.blob == media.blob);
        if known {
            return;
        }
        if self.waiting.len() >= MAX_PREFETCH_QUEUE {
            tracing::debug!(blob = %media.blob, "prefetch queue full; fetched on a tap");
            return;
        }
        self.waiting.push_back(Pending {
            conversation,
            media,
            attempts: 0,
            not_before: Instant::now(),
        });
    }

    /// The first blob due now, taken out.
    fn take_due(&mut self, now: Instant) -> Option<Pending> {
        let at = self.waiting.iter().position(|p| p.not_before <= now)?;
        let p = self.waiting.remove(at)?;
        self.current = Some(p.media.blob);
        Some(p)
    }

    /// When the next one is due, if none is now.
    fn next_due(&self) -> Option<Instant> {
        self.waiting.iter().map(|p| p.not_before).min()
    }

    /// A try of `p` failed for a passing reason: it waits, then goes again.
    fn retry(&mut self, mut p: Pending) {
        self.current = None;
        p.attempts += 1;
        if p.attempts >= PREFETCH_MAX_ATTEMPTS {
            tracing::info!(blob = %p.media.blob, "prefetch given up; fetched on a tap");
            return;
        }
        let wait = PREFETCH_RETRY_BASE
            .saturating_mul(1 << p.attempts.min(16))
            .min(PREFETCH_RETRY_MAX);
        p.not_before = Instant::now() + wait;
        self.waiting.push_back(p);
    }
}

impl Replica {
    /// Sets which received media is fetched before a tap (see [`PrefetchPolicy`]); applies to
    /// messages that arrive from now on. [`PrefetchPolicy::OFF`] (the default) stops it and
    /// forgets what waited.
    pub fn set_prefetch(&self, policy: PrefetchPolicy) {
        let shared = &self.media;
        shared.prefetch.send_replace(policy);
        if policy.is_off() || shared.prefetching.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(updates) = self.updates.upgrade() else {
            shared.prefetching.store(false, Ordering::SeqCst);
            return;
        };
        let rx = updates.subscribe();
        shared.runtime.spawn(run(shared.clone(), self.device, rx));
    }

    /// Tells the replica whether the network costs money now (a phone on mobile data: `true`;
    /// back on Wi-Fi: `false`, the default). A policy that is [`PrefetchPolicy::unmetered_only`]
    /// waits while it is metered.
    pub fn set_metered(&self, metered: bool) {
        self.media.metered.send_replace(metered);
    }

    /// The blobs waiting to be prefetched (the one being fetched first, if any).
    pub fn prefetch_queue(&self) -> Vec<BlobId> {
        let q = self.media.lock_prefetch();
        q.current
            .into_iter()
            .chain(q.waiting.iter().map(|p| p.media.blob))
            .collect()
    }
}

/// The prefetcher: queues what arrives, fetches one blob at a time while the policy, the
/// network's cost and the connection allow. Ends when the policy goes off or the replica
/// closes.
async fn run(shared: Arc<MediaShared>, me: DeviceId, mut updates: broadcast::Receiver<Update>) {
    let mut policy_rx = shared.prefetch.subscribe();
    let mut metered_rx = shared.metered.subscribe();
    let mut link = shared.link.clone();
    let mut in_flight: Option<tokio::task::JoinHandle<(Pending, Result<(), ReplicaError>)>> = None;
    loop {
        let policy = *policy_rx.borrow_and_update();
        if policy.is_off() {
            shared.lock_prefetch().waiting.clear();
            shared.prefetching.store(false, Ordering::SeqCst);
            // Turned on again meanwhile: go on rather than leave it unserved.
            if shared.prefetch.borrow().is_off() || shared.prefetching.swap(true, Ordering::SeqCst)
            {
                return;
            }
            continue;
        }
        let metered = *metered_rx.borrow_and_update();
        let connected = link.borrow_and_update().is_some();
        // Otherwise a change of the network's cost, the policy or the link wakes the loop.
        let can_fetch = connected && policy.allows(metered);
        if in_flight.is_none() && can_fetch {
            if let Some(p) = shared.lock_prefetch().take_due(Instant::now()) {
                let shared = shared.clone();
                in_flight = Some(tokio::spawn(async move {
                    let r = prefetch_one(&shared, &p).await;
                    (p, r)
                }));
            }
        }
        let next_due = shared.lock_prefetch().next_due();
        tokio::select! {
            u = updates.recv() => match u {
                Ok(Update::MessageAdded { conversation, rendered: Some(r), .. }) => {
                    if r.view.record.author == me {
                        continue;
                    }
                    if let Body::Media(body) = r.body {
                        let mut q = shared.lock_prefetch();
                        for m in body.media.into_iter().filter(|m| policy.wants(m)) {
                            q.push(conversation, m);
                        }
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "prefetcher fell behind; missed media is fetched on a tap");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = policy_rx.changed() => {}
            _ = metered_rx.changed() => {}
            _ = link.changed() => {}
            done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                match done {
                    Ok((p, r)) => settle(&shared, p, r),
                    Err(e) => {
                        shared.lock_prefetch().current = None;
                        tracing::warn!(error = %e, "prefetch task ended abnormally");
                    }
                }
            }
            // Only when fetching may go on: anything due now was taken above, so this waits
            // for a retry's time and never spins.
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if can_fetch && next_due.is_some() && in_flight.is_none() => {}
        }
    }
    if let Some(t) = in_flight {
        t.abort();
    }
    shared.prefetching.store(false, Ordering::SeqCst);
}

/// Fetches one blob's ciphertext into its partial download, under the blob's lock.
async fn prefetch_one(shared: &Arc<MediaShared>, p: &Pending) -> Result<(), ReplicaError> {
    let _held = shared.lock_blob(p.media.blob).await;
    shared.fetch_cipher(p.conversation, &p.media).await?;
    Ok(())
}

/// What a finished try leaves: the app told the blob is ready, a retry later, or nothing.
fn settle(shared: &MediaShared, p: Pending, r: Result<(), ReplicaError>) {
    match r {
        Ok(()) => {
            shared.lock_prefetch().current = None;
            if let Some(tx) = shared.updates.upgrade() {
                let _ = tx.send(Update::MediaReady {
                    conversation: p.conversation,
                    blob: p.media.blob,
                });
            }
        }
        Err(ReplicaError::Media(
            MediaError::Offline
            | MediaError::Connection(_)
            | MediaError::Refused(BlobRefusal::Incomplete { .. }),
        )) => shared.lock_prefetch().retry(p),
        Err(e) => {
            shared.lock_prefetch().current = None;
            tracing::info!(blob = %p.media.blob, error = %e, "prefetch failed; fetched on a tap");
        }
    }
}
