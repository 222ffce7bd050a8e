//! Blob transfers on their own QUIC streams ([`tidings_engine::media::wire`]): an upload
//! from the relay's offset with pieces pipelined, and fetches of chunk groups checked against
//! the root before anything is kept.

use super::MediaError;
use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::future::Future;
use std::ops::Range;
use tidings_engine::media::wire::{decode_reply, put_frame, BlobReply, BlobRequest};
use tidings_engine::media::{
    n_groups, verify::encode_piece, verify_piece, Piece, VerifiedPiece, MAX_PIECE_GROUPS,
};
use tidings_engine::wire::{self, FRAME_HEADER_LEN};
use tidings_engine::{BlobId, ConversationId};

/// Pieces sent ahead of the relay's answers: keeps the stream busy across the round trip
/// and the relay's periodic sync without holding more than this many MiB unanswered.
pub const UPLOAD_WINDOW: usize = 8;
/// Piece requests sent ahead of the relay's answers on a download (each answer at most
/// 1 MiB): the relay reads the next piece while this one travels.
pub const FETCH_WINDOW: usize = 4;

/// One blob stream.
pub(crate) struct BlobStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl BlobStream {
    pub(crate) async fn open(conn: &quinn::Connection) -> Result<BlobStream, MediaError> {
        let (send, recv) = conn.open_bi().await.map_err(lost)?;
        Ok(BlobStream { send, recv })
    }

    async fn write(&mut self, request: &BlobRequest) -> Result<(), MediaError> {
        let bytes = wire::frame_bytes(request).map_err(|e| MediaError::Protocol(e.to_string()))?;
        self.send
            .write_chunk(Bytes::from(bytes))
            .await
            .map_err(lost)
    }

    /// Sends a piece as read from the files, not copied into a frame.
    async fn put(&mut self, blob: BlobId, piece: &Piece) -> Result<(), MediaError> {
        let mut parts = put_frame(blob, piece).map_err(|e| MediaError::Protocol(e.to_string()))?;
        self.send.write_all_chunks(&mut parts).await.map_err(lost)
    }

    async fn read(&mut self) -> Result<BlobReply, MediaError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.recv.read_exact(&mut header).await.map_err(lost)?;
        let len = wire::decode_len(header, wire::MAX_FRAME_LEN)
            .map_err(|e| MediaError::Protocol(e.to_string()))?;
        // Gathered from quinn's chunks without zeroing the buffer first. A piece stays in it
        // until it is written: verified as views of it.
        let mut body = BytesMut::with_capacity(len);
        while body.len() < len {
            match self.recv.read_chunk(len - body.len(), true).await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(lost("the stream ended inside a frame")),
                Err(e) => return Err(lost(e)),
            }
        }
        match decode_reply(body.freeze()) {
            Ok(BlobReply::Refused(r)) => Err(MediaError::Refused(r)),
            Ok(reply) => Ok(reply),
            Err(e) => Err(MediaError::Protocol(e.to_string())),
        }
    }

    async fn ask(&mut self, request: &BlobRequest) -> Result<BlobReply, MediaError> {
        self.write(request).await?;
        self.read().await
    }

    /// Begins (or resumes) an upload; returns the relay's verified offset.
    pub(crate) async fn begin(
        &mut self,
        conversation: ConversationId,
        blob: BlobId,
        len: u64,
    ) -> Result<u64, MediaError> {
        let request = BlobRequest::Upload {
            conversation,
            blob,
            len,
        };
        state(self.ask(&request).await?)
    }

    /// References a blob the relay holds for `from` from `to` too.
    pub(crate) async fn attach(
        &mut self,
        blob: BlobId,
        from: ConversationId,
        to: ConversationId,
    ) -> Result<u64, MediaError> {
        state(self.ask(&BlobRequest::Attach { blob, from, to }).await?)
    }

    /// Sends the blob from `verified` to the end from the local files, `UPLOAD_WINDOW`
    /// pieces ahead of the answers; `progress` sees each offset the relay confirms. Returns
    /// the ciphertext bytes sent.
    pub(crate) async fn upload_from(
        &mut self,
        blob: BlobId,
        len: u64,
        files: (&File, &File),
        verified: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, MediaError> {
        let groups = n_groups(len);
        let mut next = verified / tidings_engine::media::CHUNK_GROUP_LEN;
        let mut unanswered = 0usize;
        let mut sent = 0u64;
        let (data, outboard) = files;
        while next < groups || unanswered > 0 {
            if next < groups && unanswered < UPLOAD_WINDOW {
                let n = (groups - next).min(MAX_PIECE_GROUPS);
                let piece = encode_piece(len, outboard, data, next, n)?;
                let span = tidings_engine::media::verify::group_bytes(len, next, n);
                sent += span.end - span.start;
                self.put(blob, &piece).await?;
                next += n;
                unanswered += 1;
                continue;
            }
            let done = state(self.read().await?)?;
            unanswered -= 1;
            progress(done);
        }
        Ok(sent)
    }

    /// Fetches groups `groups` of a blob, verified, in order, [`FETCH_WINDOW`] requests
    /// ahead of the answers; `each` gets every verified piece. A piece that fails
    /// verification ends the fetch with [`MediaError::Corrupt`] before anything of it is
    /// handed on.
    pub(crate) async fn fetch<F: Future<Output = Result<(), MediaError>>>(
        &mut self,
        conversation: ConversationId,
        blob: BlobId,
        len: u64,
        groups: Range<u64>,
        mut each: impl FnMut(VerifiedPiece) -> F,
    ) -> Result<(), MediaError> {
        let mut asked = groups.start;
        let mut expected = std::collections::VecDeque::with_capacity(FETCH_WINDOW);
        while asked < groups.end || !expected.is_empty() {
            if asked < groups.end && expected.len() < FETCH_WINDOW {
                let n = (groups.end - asked).min(MAX_PIECE_GROUPS);
                let request = BlobRequest::Fetch {
                    conversation,
                    blob,
                    first_group: asked,
                    n_groups: n,
                };
                self.write(&request).await?;
                expected.push_back((asked, n));
                asked += n;
                continue;
            }
            let Some((first, n)) = expected.pop_front() else {
                break;
            };
            let piece = match self.read().await? {
                BlobReply::Piece(p) if p.first_group == first && p.n_groups == n => p,
                other => return Err(MediaError::Protocol(format!("unexpected {other:?}"))),
            };
            let verified = verify_piece(blob, len, &piece).map_err(|r| match r.error {
                tidings_engine::media::MediaError::Corrupt { group } => {
                    MediaError::Corrupt { group }
                }
                e => MediaError::Engine(e),
            })?;
            each(verified).await?;
        }
        Ok(())
    }

    /// Ends the stream: every answer was read, so nothing is cut.
    pub(crate) fn finish(mut self) {
        let _ = self.send.finish();
    }
}

fn state(reply: BlobReply) -> Result<u64, MediaError> {
    match reply {
        BlobReply::State { verified, .. } => Ok(verified),
        other => Err(MediaError::Protocol(format!("unexpected {other:?}"))),
    }
}

fn lost(e: impl std::fmt::Display) -> MediaError {
    MediaError::Connection(e.to_string())
}
