//! The async shell of a blob stream: reads [`BlobRequest`]s, asks the core who the session is
//! and whether they are a member, runs the store off the runtime's workers, writes one
//! [`BlobReply`] per request.
//!
//! Each transfer has its own QUIC stream, beside the connection's message stream: QUIC flow
//! control is per stream, so a large upload does not hold back a text message. A connection
//! has at most [`MAX_BLOB_STREAMS`] of them open at once (the relay's QUIC stream limit).

use super::{BlobError, BlobStore, DueSync};
use crate::core::BlobAccess;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tidings_engine::media::verify::group_bytes;
use tidings_engine::media::wire::{
    decode_request, piece_frame, BlobRefusal, BlobReply, BlobRequest, MAX_DETAIL_LEN,
};
use tidings_engine::media::MediaError;
use tidings_engine::wire::{self, WireError};
use tidings_engine::{BlobId, ConversationId, UserId};

/// Blob streams one connection may have open at once.
pub const MAX_BLOB_STREAMS: u32 = 4;

/// The store shared by every connection's blob streams.
#[derive(Debug)]
pub struct BlobService {
    store: Mutex<BlobStore>,
}

/// Why a blob stream ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A frame that does not decode or is over a limit.
    #[error("blob stream: {0}")]
    Wire(#[from] WireError),
    /// The peer's stream failed.
    #[error("blob stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Our side of the stream failed.
    #[error("blob stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The store's worker thread went away.
    #[error("blob store worker failed")]
    Worker,
}

impl BlobService {
    /// Wraps an opened store.
    pub fn new(store: BlobStore) -> Arc<BlobService> {
        Arc::new(BlobService {
            store: Mutex::new(store),
        })
    }

    /// Runs `f` on the store on a blocking thread (it does file i/o and fsyncs).
    async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut BlobStore) -> Result<T, BlobError> + Send + 'static,
    ) -> Result<Result<T, BlobError>, StreamError> {
        let svc = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = svc.store.lock().map_err(|_| StreamError::Worker)?;
            Ok(f(&mut store))
        })
        .await
        .map_err(|_| StreamError::Worker)?
    }

    /// Drops expired references and their blobs (see [`BlobStore::expire`]).
    pub async fn expire(self: &Arc<Self>, now_ms: u64) -> Result<Vec<BlobId>, BlobError> {
        self.with_store(move |s| s.expire(now_ms))
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Serves one blob stream until the device finishes it. `access` asks the core about the
    /// session and a conversation.
    pub async fn serve_stream<A, F>(
        self: &Arc<Self>,
        access: A,
        now_ms: impl Fn() -> u64,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<(), StreamError>
    where
        A: Fn(ConversationId) -> F,
        F: Future<Output = Option<BlobAccess>>,
    {
        // The upload this stream began: pieces are taken only for it, as its user.
        let mut uploading: Option<Uploading> = None;
        // The next request is read while the store handles this one (the device sends pieces
        // ahead), so the stream keeps moving during a piece's verify-write-sync.
        let mut next = ReadAhead(tokio::spawn(read_request(recv)));
        loop {
            let read = (&mut next.0).await.map_err(|_| StreamError::Worker)?;
            let Some((request, rest)) = read? else {
                if let Some(u) = uploading.as_mut() {
                    // Recorded if it passes; a failure has no one left to hear it.
                    let _ = self.finish_sync(&mut u.syncing).await?;
                }
                return Ok(());
            };
            next = ReadAhead(tokio::spawn(read_request(rest)));
            let reply = self
                .answer(request, &access, now_ms(), &mut uploading)
                .await?;
            // A piece goes out as it was read from the file, not copied into a frame.
            match &reply {
                BlobReply::Piece(piece) => send.write_all_chunks(&mut piece_frame(piece)?).await?,
                other => {
                    send.write_chunk(Bytes::from(wire::frame_bytes(other)?))
                        .await?
                }
            }
        }
    }

    async fn answer<A, F>(
        self: &Arc<Self>,
        request: BlobRequest,
        access: &A,
        now: u64,
        uploading: &mut Option<Uploading>,
    ) -> Result<BlobReply, StreamError>
    where
        A: Fn(ConversationId) -> F,
        F: Future<Output = Option<BlobAccess>>,
    {
        let result = match request {
            BlobRequest::Upload {
                conversation,
                blob,
                len,
            } => {
                let Some(a) = access(conversation).await else {
                    return Ok(BlobReply::Refused(BlobRefusal::NotMember));
                };
                let r = self
                    .with_store(move |s| {
                        s.begin_upload(a.user, conversation, a.is_member, blob, len, now)
                    })
                    .await?;
                if let Ok(s) = &r {
                    if let Some(u) = uploading.as_mut() {
                        let _ = self.finish_sync(&mut u.syncing).await?;
                    }
                    *uploading = Some(Uploading {
                        blob,
                        user: a.user,
                        len: s.len,
                        syncing: None,
                    });
                }
                r.map(state)
            }
            BlobRequest::Put { blob, piece } => match uploading.as_mut() {
                Some(u) if u.blob == blob => self.put(u, piece).await?.map(state),
                _ => {
                    return Ok(BlobReply::Refused(other(
                        "no upload of this blob begun on this stream",
                    )))
                }
            },
            BlobRequest::Fetch {
                conversation,
                blob,
                first_group,
                n_groups,
            } => {
                let Some(a) = access(conversation).await else {
                    return Ok(BlobReply::Refused(BlobRefusal::NotMember));
                };
                self.with_store(move |s| {
                    s.read_piece(blob, conversation, a.is_member, first_group, n_groups, now)
                })
                .await?
                .map(BlobReply::Piece)
            }
            BlobRequest::Attach { blob, from, to } => {
                let (Some(f), Some(t)) = (access(from).await, access(to).await) else {
                    return Ok(BlobReply::Refused(BlobRefusal::NotMember));
                };
                self.with_store(move |s| {
                    s.attach(blob, (from, f.is_member), (to, t.is_member), now)
                })
                .await?
                .map(state)
            }
            _ => return Ok(BlobReply::Refused(other("unknown request"))),
        };
        Ok(result.unwrap_or_else(|e| BlobReply::Refused(refusal(e))))
    }
}

impl BlobService {
    /// Takes a piece of this stream's upload. An interval's sync runs off the store's lock
    /// while the next pieces are verified and written (at most one per stream: the previous
    /// one is finished first); the piece that completes the blob waits for it, then is synced
    /// with everything before it ahead of its answer.
    async fn put(
        self: &Arc<Self>,
        u: &mut Uploading,
        piece: tidings_engine::media::Piece,
    ) -> Result<Result<super::UploadState, BlobError>, StreamError> {
        let last = group_bytes(u.len, piece.first_group, piece.n_groups).end >= u.len;
        if last {
            if let Err(e) = self.finish_sync(&mut u.syncing).await? {
                return Ok(Err(e));
            }
        }
        let (user, blob) = (u.user, u.blob);
        let put = self
            .with_store(move |s| Ok(s.put_piece_deferring_sync(user, blob, &piece)))
            .await?;
        let (state, due) = match put {
            Ok(put) => put,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(due) = due {
            if let Err(e) = self.finish_sync(&mut u.syncing).await? {
                return Ok(Err(e));
            }
            u.syncing = Some(tokio::task::spawn_blocking(move || {
                let synced = due.run();
                (due, synced)
            }));
        }
        Ok(state)
    }

    /// Waits for the stream's running sync, if any, and records it (or its failure).
    async fn finish_sync(
        self: &Arc<Self>,
        syncing: &mut Option<Syncing>,
    ) -> Result<Result<(), BlobError>, StreamError> {
        let Some(running) = syncing.take() else {
            return Ok(Ok(()));
        };
        let (due, synced) = running.await.map_err(|_| StreamError::Worker)?;
        self.with_store(move |s| s.finish_sync(&due, synced)).await
    }
}

/// The upload a stream began, and the interval sync it has running.
struct Uploading {
    blob: BlobId,
    user: UserId,
    /// Its ciphertext length.
    len: u64,
    syncing: Option<Syncing>,
}

/// A [`DueSync`] running on a blocking thread.
type Syncing = tokio::task::JoinHandle<(DueSync, std::io::Result<()>)>;

/// The read of the next request, stopped when the stream's task ends.
struct ReadAhead(tokio::task::JoinHandle<NextRequest>);

/// A request and the stream to read the next one from; `None` at the end of the stream.
type NextRequest = Result<Option<(BlobRequest, quinn::RecvStream)>, StreamError>;

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads one request; `None` at the end of the stream. Gives the stream back for the next.
async fn read_request(mut recv: quinn::RecvStream) -> NextRequest {
    let mut header = [0u8; wire::FRAME_HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = wire::decode_len(header, wire::MAX_FRAME_LEN)?;
    // Gathered from quinn's chunks without zeroing the buffer first. A piece stays in it from
    // here to the file: verified and written as views.
    let mut body = BytesMut::with_capacity(len);
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(quinn::ReadExactError::FinishedEarly(body.len()).into()),
            Err(e) => return Err(quinn::ReadExactError::ReadError(e).into()),
        }
    }
    Ok(Some((decode_request(body.freeze())?, recv)))
}

fn state(s: super::UploadState) -> BlobReply {
    BlobReply::State {
        verified: s.verified,
        len: s.len,
    }
}

fn other(detail: &str) -> BlobRefusal {
    let mut d = detail.to_string();
    if d.len() > MAX_DETAIL_LEN {
        let mut cut = MAX_DETAIL_LEN;
        while !d.is_char_boundary(cut) {
            cut -= 1;
        }
        d.truncate(cut);
    }
    BlobRefusal::Other(d)
}

/// The typed refusal a device gets for a store error.
pub fn refusal(e: BlobError) -> BlobRefusal {
    match e {
        BlobError::TooLarge { len, max } => BlobRefusal::TooLarge { len, max },
        BlobError::OverQuota { used, len, quota } => BlobRefusal::OverQuota { used, len, quota },
        BlobError::NotMember => BlobRefusal::NotMember,
        BlobError::NotFound => BlobRefusal::NotFound,
        BlobError::Incomplete { verified, len } => BlobRefusal::Incomplete { verified, len },
        BlobError::OutOfOrder { first, expected } => BlobRefusal::OutOfOrder { first, expected },
        BlobError::Media(MediaError::Corrupt { group }) => BlobRefusal::Corrupt { group },
        BlobError::Io(e) => {
            tracing::warn!(error = %e, "blob store i/o failed");
            other("relay storage fault")
        }
        e => other(&e.to_string()),
    }
}
