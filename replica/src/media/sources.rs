//! Where a blob comes from: peer devices that may hold it, then the relay.
//!
//! A download asks the peers this device synced with lately ([`PeerLink::sync`] notes them)
//! before the relay: two phones on one Wi-Fi, the relay out of reach, still pass a photo. A
//! peer is dialed on a connection of blob streams of its own
//! ([`tidings_transport::PEER_BLOB_ALPN`]), the same [`BlobRequest::Fetch`] frames as at the
//! relay, and every piece is verified against the root as from the relay: a bad group ends
//! that source at that group (nothing of its piece is kept) and the next source goes on from
//! there. The first verified group decides nothing: sources are tried in turn until the blob
//! is whole.
//!
//! [`PeerLink::sync`]: crate::peers::PeerLink::sync
//! [`BlobRequest::Fetch`]: tidings_engine::media::wire::BlobRequest::Fetch

use super::transfer::BlobStream;
use super::{MediaError, MediaShared};
use crate::peers::PeerAddr;
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings_engine::media::{VerifiedPiece, CHUNK_GROUP_LEN};
use tidings_engine::peer::HeldBlob;
use tidings_engine::{BlobId, ConversationId};
use tidings_transport::{client_endpoint, PeerConfig, PEER_SERVER_NAME};

/// Peers remembered as blob sources (the most recently synced first).
pub const MAX_BLOB_PEERS: usize = 8;
/// Longest wait for a blob connection to a peer: a peer that went away costs at most this
/// before the next source is asked.
pub const PEER_BLOB_DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// The peers a download may ask, and how to dial them (set while a peer link is open).
#[derive(Debug, Default)]
pub(crate) struct PeerSources {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    config: Option<PeerConfig>,
    peers: VecDeque<PeerAddr>,
}

impl PeerSources {
    /// The peer link's settings (`None` when it closes: no peer is asked then).
    pub(crate) fn set_config(&self, config: Option<PeerConfig>) {
        self.lock().config = config;
    }

    /// A peer this device synced with: asked first from now on.
    pub(crate) fn note(&self, peer: PeerAddr) {
        let mut inner = self.lock();
        inner.peers.retain(|p| p.device != peer.device);
        inner.peers.push_front(peer);
        inner.peers.truncate(MAX_BLOB_PEERS);
    }

    fn candidates(&self) -> Option<(PeerConfig, Vec<PeerAddr>)> {
        let inner = self.lock();
        let config = inner.config.clone()?;
        Some((config, inner.peers.iter().copied().collect()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A blob this device may serve to peers, and its files.
#[derive(Debug)]
pub(crate) struct Holding {
    pub(crate) held: HeldBlob,
    pub(crate) data: PathBuf,
    pub(crate) outboard: PathBuf,
}

impl MediaShared {
    /// What this device holds of `blob` to serve: its own sealed blob while an upload job
    /// names it, else a fetched ciphertext whose parents were kept.
    pub(crate) fn holding(&self, blob: BlobId) -> std::io::Result<Option<Holding>> {
        let jobs: Vec<_> = self
            .dir
            .jobs()?
            .into_iter()
            .filter(|j| j.blob == blob)
            .collect();
        let own = jobs.iter().find(|j| j.kind == super::JobKind::Upload);
        let (data, outboard) = (self.dir.cipher_path(blob), self.dir.outboard_path(blob));
        if let Some(job) = own.filter(|_| data.exists() && outboard.exists()) {
            let mut referenced_in = std::collections::BTreeSet::new();
            for j in &jobs {
                referenced_in.insert(j.conversation);
                if let super::JobKind::Attach { from } = j.kind {
                    referenced_in.insert(from);
                }
            }
            let held = HeldBlob {
                cipher_len: job.cipher_len,
                verified: job.cipher_len,
                referenced_in,
            };
            return Ok(Some(Holding {
                held,
                data,
                outboard,
            }));
        }
        let part = self.dir.scratch(&hex::encode(blob.0));
        let served = super::partial::recorded(&part).and_then(|r| Some((r.held, r.served?)));
        let Some((verified, (cipher_len, conversation))) = served else {
            return Ok(None);
        };
        Ok(Some(Holding {
            held: HeldBlob {
                cipher_len,
                verified,
                referenced_in: [conversation].into(),
            },
            data: part.clone(),
            outboard: part.with_extension("pobao"),
        }))
    }

    /// Fetches chunk groups `groups` of a blob of `len` ciphertext bytes, in order, every
    /// piece verified against the root before `each` sees it: from the peers first (see the
    /// module doc), then from the relay. An error of `each` (the local side: a file, a
    /// segment that does not open) ends it at once; a source's error moves on to the next.
    /// When every source failed, the answer is the relay's error, or the first peer's when
    /// the relay is out of reach (offline, or the connection broke).
    pub(crate) async fn fetch_groups<F: Future<Output = Result<(), MediaError>>>(
        self: &Arc<Self>,
        conversation: ConversationId,
        blob: BlobId,
        len: u64,
        groups: Range<u64>,
        each: impl FnMut(VerifiedPiece) -> F,
    ) -> Result<(), MediaError> {
        let sink = Sink {
            next: AtomicU64::new(groups.start),
            local_failed: AtomicBool::new(false),
        };
        let mut each = each;
        let sink = &sink;
        // Notes where the fetch stands after each piece `each` took, or that it failed.
        let mut take = |v: VerifiedPiece| {
            let end = v.end();
            let taken = each(v);
            async move {
                if let Err(e) = taken.await {
                    sink.local_failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                if let Some(end) = end {
                    sink.next
                        .store(end.div_ceil(CHUNK_GROUP_LEN), Ordering::Relaxed);
                }
                Ok(())
            }
        };
        let mut peer_error = None;
        if let Some((config, peers)) = self.peers.candidates() {
            for peer in peers {
                if sink.next() >= groups.end {
                    return Ok(());
                }
                let wanted = sink.next()..groups.end;
                match fetch_from_peer(&config, peer, (conversation, blob, len), wanted, &mut take)
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(e) if sink.local_failed() => return Err(e),
                    Err(e) => {
                        tracing::info!(peer = %peer.device, %blob, error = %e, "blob not fetched from a peer");
                        peer_error.get_or_insert(e);
                    }
                }
            }
        }
        if sink.next() >= groups.end {
            return Ok(());
        }
        let wanted = sink.next()..groups.end;
        let from_relay = async {
            let conn = self.connection()?;
            let mut stream = BlobStream::open(&conn).await?;
            stream.fetch(conversation, blob, len, wanted, take).await?;
            stream.finish();
            Ok(())
        };
        match from_relay.await {
            Ok(()) => Ok(()),
            Err(e @ (MediaError::Offline | MediaError::Connection(_))) if !sink.local_failed() => {
                Err(peer_error.unwrap_or(e))
            }
            Err(e) => Err(e),
        }
    }
}

/// Where a fetch stands and whether the caller's `each` itself failed. Atomics, not plain
/// fields: the futures `each` returns are awaited after the call that made them, and note
/// the outcome then.
struct Sink {
    /// The next group wanted.
    next: AtomicU64,
    local_failed: AtomicBool,
}

impl Sink {
    fn next(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    fn local_failed(&self) -> bool {
        self.local_failed.load(Ordering::Relaxed)
    }
}

/// Dials `peer` for blob streams and fetches `groups` from it.
async fn fetch_from_peer<F: Future<Output = Result<(), MediaError>>>(
    config: &PeerConfig,
    peer: PeerAddr,
    (conversation, blob, len): (ConversationId, BlobId, u64),
    groups: Range<u64>,
    each: impl FnMut(VerifiedPiece) -> F,
) -> Result<(), MediaError> {
    let lost = |e: &dyn std::fmt::Display| MediaError::Connection(e.to_string());
    let dial = config.dial_blobs(peer.device).map_err(|e| lost(&e))?;
    let endpoint = client_endpoint(peer.addr, dial).map_err(|e| lost(&e))?;
    let connecting = endpoint
        .connect(peer.addr, PEER_SERVER_NAME)
        .map_err(|e| lost(&e))?;
    let conn = tokio::time::timeout(PEER_BLOB_DIAL_TIMEOUT, connecting)
        .await
        .map_err(|_| MediaError::Connection("the peer did not answer".into()))?
        .map_err(|e| lost(&e))?;
    let fetched = async {
        let mut stream = BlobStream::open(&conn).await?;
        stream.fetch(conversation, blob, len, groups, each).await?;
        stream.finish();
        Ok(())
    }
    .await;
    conn.close(0u32.into(), b"fetched");
    endpoint.wait_idle().await;
    fetched
}
