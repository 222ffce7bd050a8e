//! Wire frames (`engine/src/wire`): the relay's and the device's frame decoders, fed streams of
//! bytes and valid frames damaged at fuzz-chosen places.

use super::{patch, string, Reader};
use tidings_engine::wire::{
    decode_body, frame_bytes, ClientFrame, ConversationInfo, DeviceRegistration, Envelope,
    ErrorCode, FrameDecoder, ServerFrame, SignatureBytes, SubmitOutcome, Welcome, WireLimits,
    FRAME_HEADER_LEN, MAX_FRAME_LEN,
};
use tidings_engine::{ConversationId, DeviceId, UserId};

/// Wire frames. Mode 0: the bytes as a stream of frames and as one body, both directions.
/// Modes 1 and 2: a valid client (server) frame built from the input, encoded, checked to
/// round-trip exactly, then damaged and decoded again.
pub fn check_wire_frames(data: &[u8]) {
    let mut r = Reader::new(data);
    let mode = r.u8() % 3;
    let chunk = usize::from(r.u8()) + 1;
    match mode {
        0 => raw_frames(r.rest(), chunk),
        1 => {
            let frame = client_frame(&mut r);
            let Ok(bytes) = frame_bytes(&frame) else {
                return;
            };
            assert_eq!(
                decode_body::<ClientFrame>(&bytes[FRAME_HEADER_LEN..]),
                Ok(frame.clone())
            );
            assert_eq!(stream::<ClientFrame>(&bytes, chunk).0, vec![frame]);
            raw_frames(&patch(&bytes, r.rest()).0, chunk);
        }
        _ => {
            let frame = server_frame(&mut r);
            let Ok(bytes) = frame_bytes(&frame) else {
                return;
            };
            assert_eq!(
                decode_body::<ServerFrame>(&bytes[FRAME_HEADER_LEN..]),
                Ok(frame.clone())
            );
            assert_eq!(stream::<ServerFrame>(&bytes, chunk).0, vec![frame]);
            raw_frames(&patch(&bytes, r.rest()).0, chunk);
        }
    }
}

fn raw_frames(bytes: &[u8], chunk: usize) {
    raw_frames_as::<ClientFrame>(bytes, chunk);
    raw_frames_as::<ServerFrame>(bytes, chunk);
}

fn raw_frames_as<F>(bytes: &[u8], chunk: usize)
where
    F: tidings_engine::wire::Frame + PartialEq + std::fmt::Debug + Clone,
{
    // One body: what decodes re-encodes to something that decodes to the same frame, no longer
    // than the input (the encoder writes the shortest varints).
    if let Ok(frame) = decode_body::<F>(bytes) {
        let again = frame_bytes(&frame).expect("a decoded frame encodes");
        assert!(again.len() - FRAME_HEADER_LEN <= bytes.len());
        assert_eq!(decode_body::<F>(&again[FRAME_HEADER_LEN..]), Ok(frame));
    }
    // A stream: the frames and the error do not depend on how the bytes were cut.
    let (whole, whole_err) = stream::<F>(bytes, bytes.len().max(1));
    let (chunked, chunked_err) = stream::<F>(bytes, chunk);
    assert_eq!(whole, chunked);
    assert_eq!(whole_err, chunked_err);
    for f in whole {
        let again = frame_bytes(&f).expect("a decoded frame encodes");
        assert_eq!(stream::<F>(&again, chunk).0, vec![f]);
    }
}

/// Feeds `bytes` to a decoder `chunk` bytes at a time; the frames and the first error.
fn stream<F>(bytes: &[u8], chunk: usize) -> (Vec<F>, Option<tidings_engine::wire::WireError>)
where
    F: tidings_engine::wire::Frame,
{
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.poll_frame::<F>() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn client_frame(r: &mut Reader<'_>) -> ClientFrame {
    match r.u8() % 7 {
        0 => ClientFrame::Hello {
            protocol_version: r.uint(2) as u16,
            device: DeviceId(r.array()),
            user: UserId(r.array()),
        },
        1 => ClientFrame::Auth {
            signature: SignatureBytes(r.array()),
        },
        2 => ClientFrame::RegisterDevice {
            request_id: r.u64(),
            registration: DeviceRegistration {
                user: UserId(r.array()),
                device: DeviceId(r.array()),
                agreement: r.array(),
                issued_ms: r.u64(),
                signature: SignatureBytes(r.array()),
            },
        },
        3 => ClientFrame::Submit {
            request_id: r.u64(),
            events: (0..r.u8() % 8).map(|_| Envelope(r.bytes(512))).collect(),
        },
        4 => ClientFrame::Pull {
            request_id: r.u64(),
            conversation: ConversationId(r.array()),
            after_seq: r.u64(),
            limit: r.uint(4) as u32,
            history_since_ms: (r.u8() & 1 == 1).then(|| r.u64()),
        },
        5 => ClientFrame::Sync {
            request_id: r.u64(),
            after: (r.u8() & 1 == 1).then(|| ConversationId(r.array())),
        },
        _ => ClientFrame::Received {
            conversation: ConversationId(r.array()),
            up_to: r.u64(),
        },
    }
}

fn envelopes(r: &mut Reader<'_>) -> Vec<Envelope> {
    (0..r.u8() % 8).map(|_| Envelope(r.bytes(256))).collect()
}

fn server_frame(r: &mut Reader<'_>) -> ServerFrame {
    match r.u8() % 10 {
        0 => ServerFrame::Challenge { nonce: r.array() },
        1 => ServerFrame::Welcome(Welcome {
            relay: DeviceId(r.array()),
            registered: r.u8() & 1 == 1,
            limits: WireLimits {
                max_frame_len: r.uint(4) as u32,
                max_submit_batch: r.uint(4) as u32,
                max_page_items: r.uint(4) as u32,
                max_inflight_requests: r.uint(4) as u32,
                push_window: r.uint(4) as u32,
            },
            idle_timeout_ms: r.uint(4) as u32,
        }),
        2 => ServerFrame::Error {
            code: ErrorCode(r.uint(2) as u16),
            message: string(r),
        },
        3 => ServerFrame::Refused {
            request_id: r.u64(),
            code: ErrorCode(r.uint(2) as u16),
            message: string(r),
        },
        4 => ServerFrame::Registered {
            request_id: r.u64(),
            user: UserId(r.array()),
            device: DeviceId(r.array()),
        },
        5 => ServerFrame::SubmitResult {
            request_id: r.u64(),
            outcomes: (0..r.u8() % 8)
                .map(|_| {
                    if r.u8() & 1 == 0 {
                        SubmitOutcome::Accepted { seq: r.u64() }
                    } else {
                        SubmitOutcome::Rejected {
                            code: ErrorCode(r.uint(2) as u16),
                            reason: string(r),
                        }
                    }
                })
                .collect(),
            records: envelopes(r),
        },
        6 => ServerFrame::Page {
            request_id: r.u64(),
            conversation: ConversationId(r.array()),
            events: envelopes(r),
            records: envelopes(r),
            more: r.u8() & 1 == 1,
        },
        7 => ServerFrame::Conversations {
            request_id: r.u64(),
            conversations: (0..r.u8() % 8)
                .map(|_| ConversationInfo {
                    conversation: ConversationId(r.array()),
                    max_seq: r.u64(),
                    cursor: r.u64(),
                })
                .collect(),
            next: (r.u8() & 1 == 1).then(|| ConversationId(r.array())),
            invitations: (0..r.u8() % 4)
                .map(|_| tidings_engine::wire::Invitation {
                    conversation: ConversationId(r.array()),
                    inviter: UserId(r.array()),
                })
                .collect(),
            blocked: (0..r.u8() % 4).map(|_| UserId(r.array())).collect(),
        },
        8 => ServerFrame::Push {
            events: envelopes(r),
            records: envelopes(r),
        },
        _ => ServerFrame::PullMode,
    }
}
