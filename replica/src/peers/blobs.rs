//! Serving blobs to peers: the listener's side of a blob connection
//! ([`tidings_transport::PEER_BLOB_ALPN`]). Each bidirectional stream carries
//! [`BlobRequest`]s and gets one [`BlobReply`] per request, in order, as at the relay; a peer
//! serves only `Fetch`. Who may fetch what is the engine's rule
//! ([`tidings_engine::peer::judge_blob_fetch`], run on the driver); this module reads the
//! request, asks, and sends the groups from the files (not hashed again: the fetching side
//! verifies every group against the root).

use super::PeerCommand;
use crate::media::Holding;
use crate::{Replica, ReplicaError};
use bytes::Bytes;
use std::fs::File;
use std::sync::Arc;
use tidings_engine::media::verify::encode_piece;
use tidings_engine::media::wire::{
    decode_request, piece_frame, BlobRefusal, BlobReply, BlobRequest,
};
use tidings_engine::wire::{frame_bytes, MAX_FRAME_LEN};
use tidings_engine::DeviceId;
use tidings_transport::{FrameReader, MAX_PEER_STREAMS};

/// Serves the blob streams of one connection until the peer closes it.
pub(super) async fn serve_link(replica: Replica, peer: DeviceId, conn: quinn::Connection) {
    let streams = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_STREAMS as usize));
    while let Ok((send, recv)) = conn.accept_bi().await {
        let Ok(permit) = streams.clone().acquire_owned().await else {
            return;
        };
        let replica = replica.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_stream(&replica, peer, send, recv).await {
                tracing::info!(%peer, error = %e, "peer blob stream ended");
            }
        });
    }
}

async fn serve_stream(
    replica: &Replica,
    peer: DeviceId,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), ReplicaError> {
    let net = |e: &dyn std::fmt::Display| ReplicaError::Network(e.to_string());
    let mut reader = FrameReader::new(recv, MAX_FRAME_LEN);
    while let Some(body) = reader.read_body().await.map_err(|e| net(&e))? {
        let request = decode_request(Bytes::from(body)).map_err(|e| net(&e))?;
        let reply = answer(replica, peer, request).await?;
        let mut parts = match &reply {
            BlobReply::Piece(piece) => piece_frame(piece).map_err(|e| net(&e))?.to_vec(),
            other => vec![Bytes::from(frame_bytes(other).map_err(|e| net(&e))?)],
        };
        send.write_all_chunks(&mut parts)
            .await
            .map_err(|e| net(&e))?;
    }
    let _ = send.finish();
    Ok(())
}

async fn answer(
    replica: &Replica,
    peer: DeviceId,
    request: BlobRequest,
) -> Result<BlobReply, ReplicaError> {
    let BlobRequest::Fetch {
        conversation,
        blob,
        first_group,
        n_groups,
    } = request
    else {
        let only = "a peer serves fetches only".to_string();
        return Ok(BlobReply::Refused(BlobRefusal::Other(only)));
    };
    let holding = replica
        .media
        .holding(blob)
        .map_err(crate::media::MediaError::from)?;
    let held = holding.as_ref().map(|h| h.held.clone());
    let judged = replica
        .peer_call(|r| PeerCommand::BlobFetch(peer, conversation, (first_group, n_groups), held, r))
        .await?;
    let (groups, Some(holding)) = (judged, holding) else {
        return Ok(BlobReply::Refused(BlobRefusal::NotFound));
    };
    let groups = match groups {
        Ok(g) => g,
        Err(refusal) => return Ok(BlobReply::Refused(refusal)),
    };
    let piece = tokio::task::spawn_blocking(move || read_piece(&holding, groups))
        .await
        .map_err(|_| ReplicaError::Closed)?;
    Ok(match piece {
        Ok(p) => BlobReply::Piece(p),
        Err(e) => {
            tracing::warn!(%blob, error = %e, "a held blob does not read");
            BlobReply::Refused(BlobRefusal::NotFound)
        }
    })
}

fn read_piece(
    holding: &Holding,
    groups: std::ops::Range<u64>,
) -> Result<tidings_engine::media::Piece, crate::media::MediaError> {
    let data = File::open(&holding.data)?;
    let outboard = File::open(&holding.outboard)?;
    let n = groups.end - groups.start;
    Ok(encode_piece(
        holding.held.cipher_len,
        &outboard,
        &data,
        groups.start,
        n,
    )?)
}
