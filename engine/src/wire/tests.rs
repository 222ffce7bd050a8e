use super::*;

fn check_round_trip<F: Frame + PartialEq + fmt::Debug>(frame: F) {
    let bytes = frame_bytes(&frame).expect("encode");
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    // Byte by byte: the decoder must wait for whole frames.
    let mut got = None;
    for b in &bytes {
        dec.push(std::slice::from_ref(b));
        if let Some(f) = dec.poll_frame::<F>().expect("decode") {
            got = Some(f);
        }
    }
    assert_eq!(got, Some(frame));
    assert_eq!(dec.buffered(), 0);
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

#[test]
fn frames_round_trip() {
    let user = key(1);
    let dev = key(2);
    let device = DeviceId(dev.verifying_key().to_bytes());
    let user_id = UserId(user.verifying_key().to_bytes());
    check_round_trip(ClientFrame::Hello {
        protocol_version: PROTOCOL_VERSION,
        device,
        user: user_id,
    });
    check_round_trip(ClientFrame::Auth {
        signature: sign_auth(&dev, &user_id, &[3; 32], &[4; 32]),
    });
    check_round_trip(ClientFrame::RegisterDevice {
        request_id: 7,
        registration: DeviceRegistration::sign(&user, device, [8; 32], 99),
    });
    check_round_trip(ClientFrame::Submit {
        request_id: u64::MAX,
        events: vec![Envelope(vec![1, 2, 3]), Envelope(vec![])],
    });
    check_round_trip(ClientFrame::Pull {
        request_id: 1,
        conversation: ConversationId([5; 16]),
        after_seq: 10,
        limit: 100,
        history_since_ms: Some(1_700_000_000_000),
    });
    check_round_trip(ClientFrame::Sync {
        request_id: 2,
        after: None,
    });
    check_round_trip(ClientFrame::Sync {
        request_id: 2,
        after: Some(ConversationId([5; 16])),
    });
    check_round_trip(ClientFrame::Accept {
        request_id: 10,
        conversation: ConversationId([5; 16]),
    });
    check_round_trip(ClientFrame::Decline {
        request_id: 11,
        conversation: ConversationId([5; 16]),
    });
    check_round_trip(ClientFrame::Block {
        request_id: 12,
        user: user_id,
    });
    check_round_trip(ClientFrame::Unblock {
        request_id: 13,
        user: user_id,
    });
    check_round_trip(ServerFrame::UserState {
        request_id: 12,
        change: UserChange::Blocked(user_id),
    });
    check_round_trip(ServerFrame::UserChanged {
        change: UserChange::Invited(Invitation {
            conversation: ConversationId([5; 16]),
            inviter: user_id,
        }),
    });
    check_round_trip(ServerFrame::UserChanged {
        change: UserChange::Accepted(ConversationInfo {
            conversation: ConversationId([5; 16]),
            max_seq: 3,
            cursor: 1,
        }),
    });
    check_round_trip(ClientFrame::Received {
        conversation: ConversationId([5; 16]),
        up_to: 3,
    });
    check_round_trip(ServerFrame::Challenge { nonce: [9; 32] });
    check_round_trip(ServerFrame::Welcome(Welcome {
        relay: device,
        registered: true,
        idle_timeout_ms: 30_000,
        limits: WireLimits {
            max_frame_len: 1,
            max_submit_batch: 2,
            max_page_items: 3,
            max_inflight_requests: 4,
            push_window: 5,
        },
    }));
    check_round_trip(ServerFrame::Error {
        code: ErrorCode::FRAME_TOO_LARGE,
        message: "too big".into(),
    });
    check_round_trip(ServerFrame::Refused {
        request_id: 3,
        code: ErrorCode::NOT_MEMBER,
        message: "no".into(),
    });
    check_round_trip(ServerFrame::Registered {
        request_id: 3,
        user: user_id,
        device,
    });
    check_round_trip(ServerFrame::SubmitResult {
        request_id: 4,
        outcomes: vec![
            SubmitOutcome::Accepted { seq: 40 },
            SubmitOutcome::Rejected {
                code: ErrorCode::RATE_LIMITED,
                reason: "slow down".into(),
            },
        ],
        records: vec![Envelope(vec![3; 30])],
    });
    let (events, records) = (vec![Envelope(vec![1; 10])], vec![Envelope(vec![2; 20])]);
    check_round_trip(ServerFrame::Page {
        request_id: 5,
        conversation: ConversationId([5; 16]),
        events: events.clone(),
        records: records.clone(),
        more: true,
    });
    check_round_trip(ServerFrame::HistoryGap {
        request_id: 5,
        conversation: ConversationId([5; 16]),
        from: 3,
        to: 900,
        events: events.clone(),
        records: records.clone(),
        more: false,
    });
    check_round_trip(ServerFrame::Conversations {
        request_id: 6,
        conversations: vec![ConversationInfo {
            conversation: ConversationId([5; 16]),
            max_seq: 10,
            cursor: 4,
        }],
        next: Some(ConversationId([5; 16])),
        invitations: vec![Invitation {
            conversation: ConversationId([6; 16]),
            inviter: user_id,
        }],
        blocked: vec![UserId([7; 32])],
    });
    check_round_trip(ServerFrame::Push { events, records });
    check_round_trip(ServerFrame::PullMode);
    check_round_trip(ClientFrame::Revoke {
        request_id: 8,
        revocation: DeviceRevocation::sign(&user, device, 100),
    });
    check_round_trip(ClientFrame::Devices {
        request_id: 9,
        users: vec![user_id, UserId([7; 32])],
        after: Some(device),
    });
    check_round_trip(ServerFrame::Revoked {
        request_id: 8,
        user: user_id,
        device,
    });
    check_round_trip(ServerFrame::Devices {
        request_id: 9,
        registrations: vec![DeviceRegistration::sign(&user, device, [8; 32], 99)],
        revocations: vec![DeviceRevocation::sign(&user, device, 100)],
        complete: 1,
        resume_after: Some(device),
    });
}

/// Golden bytes: a change here is a wire format change (bump PROTOCOL_VERSION and
/// update docs/PROTOCOL.md).
#[test]
fn golden_layout() {
    let hello = ClientFrame::Hello {
        protocol_version: 1,
        device: DeviceId([0xaa; 32]),
        user: UserId([0xbb; 32]),
    };
    let bytes = frame_bytes(&hello).expect("encode");
    let mut want = vec![0, 0, 0, 66, 0, 1];
    want.extend_from_slice(&[0xaa; 32]);
    want.extend_from_slice(&[0xbb; 32]);
    assert_eq!(bytes, want);

    let received = ClientFrame::Received {
        conversation: ConversationId([1; 16]),
        up_to: 300,
    };
    let bytes = frame_bytes(&received).expect("encode");
    let mut want = vec![0, 0, 0, 19, 6];
    want.extend_from_slice(&[1; 16]);
    want.extend_from_slice(&[0xac, 0x02]);
    assert_eq!(bytes, want);

    let sub = ClientFrame::Submit {
        request_id: 1,
        events: vec![Envelope(vec![7, 8])],
    };
    assert_eq!(
        frame_bytes(&sub).expect("encode"),
        vec![0, 0, 0, 6, 3, 1, 1, 2, 7, 8]
    );
    assert_eq!(
        frame_bytes(&ServerFrame::PullMode).expect("encode"),
        vec![0, 0, 0, 1, 9]
    );
}

#[test]
fn oversized_length_is_refused_before_reading() {
    let mut dec = FrameDecoder::new(1024);
    dec.push(&(1025u32).to_be_bytes());
    assert_eq!(
        dec.poll_frame::<ClientFrame>(),
        Err(WireError::FrameTooLarge {
            len: 1025,
            max: 1024
        })
    );
    assert_eq!(
        decode_len(u32::MAX.to_be_bytes(), MAX_FRAME_LEN),
        Err(WireError::FrameTooLarge {
            len: u32::MAX as usize,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn garbage_is_malformed() {
    assert!(matches!(
        decode_body::<ClientFrame>(&[200, 1, 2, 3]),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        decode_body::<ClientFrame>(&[]),
        Err(WireError::Malformed(_))
    ));
    // Valid frame followed by a stray byte.
    let mut b = frame_bytes(&ClientFrame::Sync {
        request_id: 1,
        after: None,
    })
    .expect("encode");
    b.push(0);
    assert!(matches!(
        decode_body::<ClientFrame>(&b[FRAME_HEADER_LEN..]),
        Err(WireError::Malformed(_))
    ));
    // A submit with more envelopes than allowed.
    let sub = ClientFrame::Submit {
        request_id: 1,
        events: vec![Envelope(vec![]); MAX_SUBMIT_BATCH + 1],
    };
    let mut body = Vec::new();
    body = postcard::to_extend(&sub, body).expect("encode");
    assert_eq!(
        decode_body::<ClientFrame>(&body),
        Err(WireError::FieldTooLarge {
            field: "events",
            len: MAX_SUBMIT_BATCH + 1,
            max: MAX_SUBMIT_BATCH
        })
    );
}

mod props {
    use super::super::*;
    use proptest::prelude::*;

    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (any::<u16>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(v, d, u)| {
                ClientFrame::Hello {
                    protocol_version: v,
                    device: DeviceId(d),
                    user: UserId(u),
                }
            }),
            (
                any::<u64>(),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)
            )
                .prop_map(|(id, evs)| ClientFrame::Submit {
                    request_id: id,
                    events: evs.into_iter().map(Envelope).collect(),
                }),
            (
                any::<u64>(),
                any::<[u8; 16]>(),
                any::<u64>(),
                any::<u32>(),
                any::<Option<u64>>()
            )
                .prop_map(|(id, c, after, limit, since)| ClientFrame::Pull {
                    request_id: id,
                    conversation: ConversationId(c),
                    after_seq: after,
                    limit,
                    history_since_ms: since,
                }),
            (any::<[u8; 16]>(), any::<u64>()).prop_map(|(c, up_to)| ClientFrame::Received {
                conversation: ConversationId(c),
                up_to,
            }),
            (any::<u64>(), revocation()).prop_map(|(id, revocation)| ClientFrame::Revoke {
                request_id: id,
                revocation,
            }),
            (
                any::<u64>(),
                proptest::collection::vec(any::<[u8; 32]>(), 0..8),
                proptest::option::of(any::<[u8; 32]>())
            )
                .prop_map(|(id, users, after)| ClientFrame::Devices {
                    request_id: id,
                    users: users.into_iter().map(UserId).collect(),
                    after: after.map(DeviceId),
                }),
            (
                any::<u64>(),
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(id, slot, sealed)| ClientFrame::LinkDeposit {
                    request_id: id,
                    slot: LinkSlot(slot),
                    sealed,
                }),
            any::<[u8; 32]>().prop_map(|slot| ClientFrame::LinkTake {
                slot: LinkSlot(slot)
            }),
        ]
    }

    fn signature() -> impl Strategy<Value = SignatureBytes> {
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
            let mut s = [0u8; 64];
            s[..32].copy_from_slice(&a);
            s[32..].copy_from_slice(&b);
            SignatureBytes(s)
        })
    }

    fn registration() -> impl Strategy<Value = DeviceRegistration> {
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            signature(),
        )
            .prop_map(
                |(u, d, agreement, issued_ms, signature)| DeviceRegistration {
                    user: UserId(u),
                    device: DeviceId(d),
                    agreement,
                    issued_ms,
                    signature,
                },
            )
    }

    fn revocation() -> impl Strategy<Value = DeviceRevocation> {
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            signature(),
        )
            .prop_map(|(u, d, issued_ms, signature)| DeviceRevocation {
                user: UserId(u),
                device: DeviceId(d),
                issued_ms,
                signature,
            })
    }

    fn server_frame() -> impl Strategy<Value = ServerFrame> {
        prop_oneof![
            (any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(id, u, d)| {
                ServerFrame::Revoked {
                    request_id: id,
                    user: UserId(u),
                    device: DeviceId(d),
                }
            }),
            (
                any::<u64>(),
                proptest::collection::vec(registration(), 0..6),
                proptest::collection::vec(revocation(), 0..6),
                any::<u32>(),
                proptest::option::of(any::<[u8; 32]>())
            )
                .prop_map(|(id, registrations, revocations, complete, resume)| {
                    ServerFrame::Devices {
                        request_id: id,
                        registrations,
                        revocations,
                        complete,
                        resume_after: resume.map(DeviceId),
                    }
                }),
            any::<u16>().prop_map(|c| ServerFrame::Error {
                code: ErrorCode(c),
                message: format!("code {c}"),
            }),
            (any::<u64>(), any::<[u8; 32]>(), any::<u64>()).prop_map(|(id, slot, t)| {
                ServerFrame::LinkDeposited {
                    request_id: id,
                    slot: LinkSlot(slot),
                    expires_ms: t,
                }
            }),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|sealed| ServerFrame::LinkBundle { sealed }),
        ]
    }

    proptest! {
        /// Encoding then decoding gives the frame back, whatever the chunking.
        #[test]
        fn client_frames_round_trip(f in client_frame(), split in 0usize..64) {
            let bytes = frame_bytes(&f).expect("encode");
            let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
            let (a, b) = bytes.split_at(split.min(bytes.len()));
            dec.push(a);
            let first = dec.poll_frame::<ClientFrame>().expect("decode");
            dec.push(b);
            let got = match first {
                Some(f) => f,
                None => dec.poll_frame::<ClientFrame>().expect("decode").expect("whole"),
            };
            prop_assert_eq!(got, f);
        }

        /// The same for the relay's frames, the device list answer included.
        #[test]
        fn server_frames_round_trip(f in server_frame(), split in 0usize..64) {
            let bytes = frame_bytes(&f).expect("encode");
            let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
            let (a, b) = bytes.split_at(split.min(bytes.len()));
            dec.push(a);
            let first = dec.poll_frame::<ServerFrame>().expect("decode");
            dec.push(b);
            let got = match first {
                Some(f) => f,
                None => dec.poll_frame::<ServerFrame>().expect("decode").expect("whole"),
            };
            prop_assert_eq!(got, f);
        }

        /// The counted length is the encoded length, and before authentication exactly
        /// the handshake frames decode (every other kind is refused by its variant).
        #[test]
        fn client_frames_count_and_handshake(f in client_frame()) {
            let bytes = frame_bytes(&f).expect("encode");
            prop_assert_eq!(encoded_len(&f), bytes.len());
            let got = decode_handshake(&bytes[FRAME_HEADER_LEN..]);
            if f.is_handshake() {
                prop_assert_eq!(got, Ok(f));
            } else {
                prop_assert!(matches!(got, Err(WireError::NotHandshake { .. })), "{:?}", got);
            }
        }

        /// The same count for the relay's frames.
        #[test]
        fn server_frames_count(f in server_frame()) {
            prop_assert_eq!(encoded_len(&f), frame_bytes(&f).expect("encode").len());
        }

        /// Untrusted bytes never panic the decoders: a frame or a typed error.
        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body::<ClientFrame>(&bytes);
            let _ = decode_body::<ServerFrame>(&bytes);
            let mut dec = FrameDecoder::new(1024);
            dec.push(&bytes);
            while let Ok(Some(_)) = dec.poll_frame::<ClientFrame>() {}
        }
    }
}

#[test]
fn link_take_is_the_variant_the_handshake_decoder_admits() {
    let take = ClientFrame::LinkTake {
        slot: LinkSlot([5; 32]),
    };
    let bytes = frame_bytes(&take).expect("encode");
    assert_eq!(bytes[FRAME_HEADER_LEN], LINK_TAKE_VARIANT);
    assert_eq!(decode_handshake(&bytes[FRAME_HEADER_LEN..]), Ok(take));
    let deposit = ClientFrame::LinkDeposit {
        request_id: 1,
        slot: LinkSlot([5; 32]),
        sealed: vec![0; MAX_LINK_BUNDLE_LEN + 1],
    };
    let bytes = frame_bytes(&deposit).expect("encode");
    assert_eq!(
        decode_body::<ClientFrame>(&bytes[FRAME_HEADER_LEN..]),
        Err(WireError::FieldTooLarge {
            field: "sealed",
            len: MAX_LINK_BUNDLE_LEN + 1,
            max: MAX_LINK_BUNDLE_LEN
        })
    );
}

#[test]
fn signatures_bind_their_inputs() {
    let user = key(1);
    let dev = key(2);
    let device = DeviceId(dev.verifying_key().to_bytes());
    let user_id = UserId(user.verifying_key().to_bytes());
    let sig = sign_auth(&dev, &user_id, &[3; 32], &[4; 32]);
    assert!(verify_auth(&sig, &device, &user_id, &[3; 32], &[4; 32]));
    assert!(!verify_auth(&sig, &device, &user_id, &[3; 32], &[5; 32]));
    assert!(!verify_auth(&sig, &device, &user_id, &[6; 32], &[4; 32]));
    assert!(!verify_auth(
        &sig,
        &device,
        &UserId([0; 32]),
        &[3; 32],
        &[4; 32]
    ));

    let reg = DeviceRegistration::sign(&user, device, [8; 32], 5);
    assert!(reg.verify());
    let mut forged = reg.clone();
    forged.device = DeviceId([9; 32]);
    assert!(!forged.verify());
    // The agreement key is certified too.
    let mut swapped = reg.clone();
    swapped.agreement = [9; 32];
    assert!(!swapped.verify());
    // Signed by the device itself instead of the user key.
    let self_signed = DeviceRegistration::sign(&dev, device, [8; 32], 5);
    let claimed = DeviceRegistration {
        user: user_id,
        ..self_signed
    };
    assert!(!claimed.verify());

    let rev = DeviceRevocation::sign(&user, device, 6);
    assert!(rev.verify());
    let mut forged = rev.clone();
    forged.device = DeviceId([9; 32]);
    assert!(!forged.verify());
    // A registration signature is not a revocation signature (separate domains).
    let as_rev = DeviceRevocation {
        user: user_id,
        device,
        issued_ms: 5,
        signature: reg.signature,
    };
    assert!(!as_rev.verify());
    let by_device = DeviceRevocation {
        user: user_id,
        ..DeviceRevocation::sign(&dev, device, 6)
    };
    assert!(!by_device.verify());
}

/// Which frame answers which, stated once: every request kind has a request id and each of
/// its answers (refusal included) names it; unasked frames answer nothing.
#[test]
fn requests_and_their_answers() {
    let user = key(1);
    let device = DeviceId(key(2).verifying_key().to_bytes());
    let user_id = UserId(user.verifying_key().to_bytes());
    let requests = [
        ClientFrame::RegisterDevice {
            request_id: 1,
            registration: DeviceRegistration::sign(&user, device, [8; 32], 1),
        },
        ClientFrame::Submit {
            request_id: 2,
            events: vec![],
        },
        ClientFrame::Pull {
            request_id: 3,
            conversation: ConversationId([5; 16]),
            after_seq: 0,
            limit: 1,
            history_since_ms: None,
        },
        ClientFrame::Sync {
            request_id: 4,
            after: None,
        },
        ClientFrame::Revoke {
            request_id: 5,
            revocation: DeviceRevocation::sign(&user, device, 1),
        },
        ClientFrame::Devices {
            request_id: 6,
            users: vec![],
            after: None,
        },
        ClientFrame::Accept {
            request_id: 7,
            conversation: ConversationId([5; 16]),
        },
        ClientFrame::Decline {
            request_id: 8,
            conversation: ConversationId([5; 16]),
        },
        ClientFrame::Block {
            request_id: 9,
            user: user_id,
        },
        ClientFrame::Unblock {
            request_id: 10,
            user: user_id,
        },
    ];
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(r.request_id(), Some(i as u64 + 1), "{r:?}");
        assert!(!r.is_handshake());
    }
    let unanswered = [
        ClientFrame::Hello {
            protocol_version: PROTOCOL_VERSION,
            device,
            user: user_id,
        },
        ClientFrame::Auth {
            signature: SignatureBytes([0; 64]),
        },
        ClientFrame::Received {
            conversation: ConversationId([5; 16]),
            up_to: 1,
        },
    ];
    assert!(unanswered.iter().all(|f| f.request_id().is_none()));
    let answers = [
        ServerFrame::Refused {
            request_id: 9,
            code: ErrorCode::INTERNAL,
            message: String::new(),
        },
        ServerFrame::Registered {
            request_id: 9,
            user: user_id,
            device,
        },
        ServerFrame::SubmitResult {
            request_id: 9,
            outcomes: vec![],
            records: vec![],
        },
        ServerFrame::Page {
            request_id: 9,
            conversation: ConversationId([5; 16]),
            events: vec![],
            records: vec![],
            more: false,
        },
        ServerFrame::Conversations {
            request_id: 9,
            conversations: vec![],
            next: None,
            invitations: vec![],
            blocked: vec![],
        },
        ServerFrame::UserState {
            request_id: 9,
            change: UserChange::Unblocked(user_id),
        },
        ServerFrame::Revoked {
            request_id: 9,
            user: user_id,
            device,
        },
        ServerFrame::Devices {
            request_id: 9,
            registrations: vec![],
            revocations: vec![],
            complete: 0,
            resume_after: None,
        },
    ];
    assert!(answers.iter().all(|f| f.answers() == Some(9)));
    let unasked = [
        ServerFrame::Challenge { nonce: [0; 32] },
        ServerFrame::Error {
            code: ErrorCode::INTERNAL,
            message: String::new(),
        },
        ServerFrame::Push {
            events: vec![],
            records: vec![],
        },
        ServerFrame::PullMode,
    ];
    assert!(unasked.iter().all(|f| f.answers().is_none()));
}

#[test]
fn device_lists_are_bounded() {
    let users = ClientFrame::Devices {
        request_id: 1,
        users: vec![UserId([0; 32]); MAX_DEVICE_QUERY_USERS + 1],
        after: None,
    };
    let body = postcard::to_stdvec(&users).expect("encode");
    assert_eq!(
        decode_body::<ClientFrame>(&body),
        Err(WireError::FieldTooLarge {
            field: "users",
            len: MAX_DEVICE_QUERY_USERS + 1,
            max: MAX_DEVICE_QUERY_USERS
        })
    );
    let rev = DeviceRevocation {
        user: UserId([1; 32]),
        device: DeviceId([2; 32]),
        issued_ms: 0,
        signature: SignatureBytes([0; 64]),
    };
    let devices = ServerFrame::Devices {
        request_id: 1,
        registrations: vec![],
        revocations: vec![rev; MAX_LISTED_DEVICES + 1],
        complete: 0,
        resume_after: None,
    };
    let body = postcard::to_stdvec(&devices).expect("encode");
    assert!(matches!(
        decode_body::<ServerFrame>(&body),
        Err(WireError::FieldTooLarge {
            field: "revocations",
            ..
        })
    ));
}
