use super::*;
use crate::identity::DeviceKey;

fn check_round_trip(kind: EventKind) {
    let key = DeviceKey::from_seed([7; 32], UserId([1; 32]));
    let header = key.header(ConversationId([2; 16]), 1, None, 1, 1000);
    let kind = header.bind(kind);
    let ev = Event::sign(key.signing_key(), header, kind).expect("sign");
    let back = Event::decode(ev.bytes()).expect("decode");
    assert_eq!(back, ev);
}

/// A `Send` of a message id not bound to its author is refused wherever an envelope is
/// decoded (relay and device, single or batch), and the bound id is accepted.
#[test]
fn a_send_must_carry_the_message_id_bound_to_its_author() {
    let alice = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let mallory = DeviceKey::from_seed([2; 32], UserId([2; 32]));
    let conv = ConversationId([2; 16]);
    let h = alice.header(conv, 1, None, 1, 1000);
    let taken = h.message_id();
    let send = |m| EventKind::Send {
        message: m,
        body: b"x".to_vec(),
        media: vec![],
    };
    let honest = Event::sign(alice.signing_key(), h, send(taken)).expect("sign");
    assert!(Event::decode(honest.bytes()).is_ok());
    // Mallory signs a Send of Alice's message id, whatever his header says.
    for wall in 0..8 {
        let hm = mallory.header(conv, 1, None, 1, wall);
        let hijack = Event::sign(mallory.signing_key(), hm, send(taken)).expect("sign");
        let expected = Err(DecodeError::UnboundMessage {
            event: hijack.id(),
            message: taken,
        });
        assert_eq!(Event::decode(hijack.bytes()), expected);
        assert_eq!(Event::decode_batch(&[hijack.bytes()])[0], expected);
    }
    // Ids differ per conversation, author and counter.
    let other = [
        alice.header(ConversationId([3; 16]), 1, None, 1, 1000),
        mallory.header(conv, 1, None, 1, 1000),
        alice.header(conv, 2, None, 1, 1000),
    ];
    assert!(other.iter().all(|h| h.message_id() != taken));
}

#[test]
fn round_trips_every_kind() {
    check_round_trip(EventKind::Create {
        members: vec![UserId([1; 32]), UserId([3; 32])],
    });
    check_round_trip(EventKind::Send {
        message: MessageId([9; 16]),
        body: b"hello".to_vec(),
        media: vec![MediaRef {
            blob: BlobId([4; 32]),
            len: 10,
            mime: "image/png".into(),
        }],
    });
    check_round_trip(EventKind::ServerAck {
        event: EventId([5; 32]),
        message: Some(MessageId([9; 16])),
        seq: 42,
        server_ts_ms: 77,
    });
    check_round_trip(EventKind::Delivered {
        up_to: 3,
        head: None,
    });
    check_round_trip(EventKind::Read {
        up_to: u64::MAX,
        head: None,
    });
    check_round_trip(EventKind::Delivered {
        up_to: 3,
        head: Some(EventId([4; 32])),
    });
    check_round_trip(EventKind::Read {
        up_to: 9,
        head: Some(EventId([5; 32])),
    });
    check_round_trip(EventKind::Sequenced {
        entries: vec![SeqEntry {
            event: EventId([6; 32]),
            message: Some(MessageId([7; 16])),
            server_ts_ms: 8,
        }],
    });
    check_round_trip(EventKind::AddMember {
        user: UserId([7; 32]),
        admin: true,
    });
    check_round_trip(EventKind::RemoveMember {
        user: UserId([7; 32]),
    });
    check_round_trip(EventKind::EpochKeys {
        epoch: None,
        commitment: Some([0xC0; 32]),
        keys: vec![SealedKey {
            device: DeviceId([8; 32]),
            sealed: vec![0xAB; 80],
        }],
    });
    // An opening written before commitments (tag 8) still decodes.
    check_round_trip(EventKind::EpochKeys {
        epoch: None,
        commitment: None,
        keys: vec![SealedKey {
            device: DeviceId([8; 32]),
            sealed: vec![0xAB; 80],
        }],
    });
    check_round_trip(EventKind::EpochKeys {
        epoch: Some(EventId([6; 32])),
        commitment: None,
        keys: vec![],
    });
    check_round_trip(EventKind::KeyRequest {
        epoch: EventId([6; 32]),
    });
    check_round_trip(EventKind::SetRetention {
        policy: crate::retention::RetentionPolicy::Disappear {
            after_read_secs: 60,
        },
    });
    check_round_trip(EventKind::Unknown {
        tag: 999,
        payload: vec![1, 2, 3],
    });
}

/// An `Unknown` kind is refused at signing when its tag names a kind of this build: what
/// the encoder writes must read back as itself. Found by the fuzz smoke test (tag 9, then
/// `KeyRequest`, read back as `Malformed`).
#[test]
fn an_unknown_kind_never_takes_a_known_tag() {
    let key = DeviceKey::from_seed([7; 32], UserId([1; 32]));
    for tag in 0..=64u16 {
        let header = key.header(ConversationId([2; 16]), 1, None, 1, 1000);
        let kind = EventKind::Unknown {
            tag,
            payload: vec![],
        };
        match Event::sign(key.signing_key(), header, kind) {
            Ok(ev) => assert_eq!(Event::decode_trusted(ev.bytes()), Ok(ev), "tag {tag}"),
            Err(e) => {
                assert!(super::tag::is_known(tag), "tag {tag} refused: {e}");
            }
        }
    }
}

#[test]
fn typed_errors() {
    let key = DeviceKey::from_seed([7; 32], UserId([1; 32]));
    let header = key.header(ConversationId([2; 16]), 1, None, 1, 1000);
    let ev = Event::sign(
        key.signing_key(),
        header,
        EventKind::Read {
            up_to: 1,
            head: None,
        },
    )
    .expect("ok");
    let b = ev.bytes().to_vec();
    assert_eq!(Event::decode(&[]), Err(DecodeError::Truncated { len: 0 }));
    assert_eq!(
        Event::decode(&b[..50]),
        Err(DecodeError::Truncated { len: 50 })
    );
    let mut v = b.clone();
    v[0] = 2;
    assert_eq!(Event::decode(&v), Err(DecodeError::UnknownVersion(2)));
    let mut v = b.clone();
    v[1] ^= 1;
    assert!(matches!(
        Event::decode(&v),
        Err(DecodeError::IdMismatch { .. })
    ));
    let mut v = b.clone();
    v[40] ^= 1;
    assert_eq!(Event::decode(&v), Err(DecodeError::BadSignature(ev.id())));
    let big = vec![1u8; MAX_EVENT_LEN + 1];
    assert!(matches!(
        Event::decode(&big),
        Err(DecodeError::TooLarge { .. })
    ));
    let body = vec![0u8; MAX_BODY_LEN + 1];
    let header = key.header(ConversationId([2; 16]), 1, None, 1, 1000);
    assert!(matches!(
        Event::sign(
            key.signing_key(),
            header,
            EventKind::Send {
                message: MessageId([0; 16]),
                body,
                media: vec![]
            }
        ),
        Err(DecodeError::FieldTooLarge { field: "body", .. })
    ));
}

#[test]
fn batch_isolates_bad_signatures() {
    let key = DeviceKey::from_seed([7; 32], UserId([1; 32]));
    let mut envs: Vec<Vec<u8>> = (1..=8)
        .map(|i| {
            let h = key.header(ConversationId([2; 16]), i, None, i, 0);
            Event::sign(
                key.signing_key(),
                h,
                EventKind::Delivered {
                    up_to: i,
                    head: None,
                },
            )
            .expect("sign")
            .into_bytes()
        })
        .collect();
    envs[3][50] ^= 0xff;
    let res = Event::decode_batch(&envs);
    assert_eq!(res.iter().filter(|r| r.is_ok()).count(), 7);
    assert!(matches!(res[3], Err(DecodeError::BadSignature(_))));
}
