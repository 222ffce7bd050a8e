//! Event envelopes (`engine/src/event`): one envelope decoded every way there is, signed events
//! built from the input and damaged, and batches of both.

use super::{patch, string, Reader};
use tidings_engine::event::{DecodeError, MAX_EVENT_LEN};
use tidings_engine::{
    ConversationId, DeviceId, DeviceKey, Event, EventHeader, EventId, EventKind, MediaRef,
    MessageId, UserId,
};
use tidings_relay::verify::{verify_batch_cached, KeyCache};

/// Event envelopes. Mode 0: the bytes as one envelope. Mode 1: an event built from the input
/// and signed, which must decode to itself; then damaged, which must be refused. Mode 2: a batch
/// of valid and damaged envelopes, whose batch results must equal the one-by-one results.
pub fn check_event_envelope(data: &[u8]) {
    let mut r = Reader::new(data);
    match r.u8() % 3 {
        0 => {
            one_envelope(r.rest());
        }
        1 => {
            let Some(event) = signed_event(&mut r) else {
                return;
            };
            let bytes = event.bytes().to_vec();
            assert_eq!(Event::decode(&bytes), Ok(event.clone()));
            assert_eq!(one_envelope(&bytes), Some(event));
            let (damaged, changed) = patch(&bytes, r.rest());
            let decoded = one_envelope(&damaged);
            if changed {
                // The id covers the version and body, the signature covers the id: no single
                // change anywhere gives an envelope that verifies.
                assert!(decoded.is_none(), "a damaged envelope verified");
            }
        }
        _ => {
            let mut batch = Vec::new();
            for _ in 0..r.u8() % 6 + 1 {
                match r.u8() % 3 {
                    0 => batch.push(r.bytes(600)),
                    _ => match signed_event(&mut r) {
                        Some(e) => {
                            let n = usize::from(r.u8() % 3) * 4;
                            let patches = r.bytes(n);
                            batch.push(patch(e.bytes(), &patches).0);
                        }
                        None => batch.push(Vec::new()),
                    },
                }
            }
            let together = Event::decode_batch(&batch);
            let alone: Vec<_> = batch.iter().map(|b| Event::decode(b)).collect();
            assert_eq!(together.len(), batch.len());
            for (t, a) in together.iter().zip(&alone) {
                assert_eq!(t.is_ok(), a.is_ok(), "batch {t:?} alone {a:?}");
                if let (Ok(t), Ok(a)) = (t, a) {
                    assert_eq!(t, a);
                }
            }
            let relay = verify_batch_cached(&batch, &mut KeyCache::default());
            assert_eq!(relay, together);
        }
    }
}

/// Decodes one envelope every way there is; they must agree. The verified event, if any.
fn one_envelope(bytes: &[u8]) -> Option<Event> {
    let full = Event::decode(bytes);
    let trusted = Event::decode_trusted(bytes);
    let batch = Event::decode_batch(&[bytes]);
    let relay = verify_batch_cached(&[bytes], &mut KeyCache::default());
    assert_eq!(batch.len(), 1);
    assert_eq!(batch, relay);
    match (&full, &batch[0]) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("decode {a:?} but decode_batch {b:?}"),
    }
    if let Ok(e) = &trusted {
        assert_eq!(e.bytes(), bytes);
        assert!(bytes.len() <= MAX_EVENT_LEN);
    }
    match full {
        Ok(e) => {
            assert_eq!(trusted.as_ref(), Ok(&e), "verified but not decodable");
            assert_eq!(e.bytes(), bytes);
            Some(e)
        }
        Err(DecodeError::BadSignature(EventId(id))) | Err(DecodeError::BadKey(DeviceId(id))) => {
            // The envelope parsed: the trusted decoder (no signature check) agrees on it.
            if let Ok(t) = &trusted {
                assert!(t.id().0 == id || t.header().author.0 == id);
            }
            None
        }
        Err(_) => {
            assert!(
                trusted.is_err(),
                "parses without the signature, not with it"
            );
            None
        }
    }
}

/// A signing key chosen by the input (a few fixed seeds: signing must stay cheap).
fn key(r: &mut Reader<'_>) -> DeviceKey {
    let seed = r.u8() % 4 + 1;
    DeviceKey::from_seed([seed; 32], UserId([seed; 32]))
}

fn kind(r: &mut Reader<'_>) -> EventKind {
    match r.u8() % 6 {
        0 => EventKind::Create {
            members: (0..r.u8() % 4).map(|_| UserId(r.array())).collect(),
        },
        1 => EventKind::Send {
            message: MessageId(r.array()),
            body: r.bytes(300),
            media: (0..r.u8() % 3)
                .map(|_| MediaRef {
                    blob: tidings_engine::BlobId(r.array()),
                    len: r.u64(),
                    mime: string(r),
                })
                .collect(),
        },
        2 => EventKind::ServerAck {
            event: EventId(r.array()),
            message: (r.u8() & 1 == 1).then(|| MessageId(r.array())),
            seq: r.u64(),
            server_ts_ms: r.u64(),
        },
        3 => EventKind::Delivered {
            up_to: r.u64(),
            head: None,
        },
        4 => EventKind::Read {
            up_to: r.u64(),
            head: None,
        },
        _ => EventKind::Unknown {
            tag: r.uint(2) as u16,
            payload: r.bytes(200),
        },
    }
}

/// An event built and signed from the input; `None` when its fields are over a limit (or it is
/// an `Unknown` kind given a tag this build knows, which `Event::sign` refuses).
fn signed_event(r: &mut Reader<'_>) -> Option<Event> {
    let key = key(r);
    let header = EventHeader {
        conversation: ConversationId(r.array()),
        author: key.device(),
        user: key.user(),
        counter: r.u64(),
        prev: (r.u8() & 1 == 1).then(|| EventId(r.array())),
        lamport: r.u64(),
        wall_ms: r.u64(),
    };
    let kind = header.bind(kind(r));
    let event = Event::sign(key.signing_key(), header, kind).ok()?;
    // What the encoder writes, the decoder reads back as the same event.
    let decoded = Event::decode_trusted(event.bytes());
    assert_eq!(
        decoded.as_ref(),
        Ok(&event),
        "a signed event does not decode to itself"
    );
    Some(event)
}
