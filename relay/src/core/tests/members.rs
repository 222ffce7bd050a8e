//! Devices and members: registration, revocation, certificates served to co-members only,
//! membership in server order, chains.

use super::*;

#[test]
fn registration_rules() {
    let mut net = Net::new(Limits::default());
    let key = DeviceKey::from_seed([40; 32], user_id(4));
    let s = net.handshake(&key);
    // Unregistered: no submit, pull or sync.
    let got = net.frame(
        s,
        ClientFrame::Sync {
            request_id: 1,
            after: None,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::NOT_REGISTERED,
                ..
            }]
        ),
        "{got:?}"
    );
    // Signed by the wrong key.
    let bad = DeviceRegistration::sign(&user_key(5), key.device(), [0; 32], 0);
    let bad = DeviceRegistration {
        user: user_id(4),
        ..bad
    };
    let got = net.frame(
        s,
        ClientFrame::RegisterDevice {
            request_id: 2,
            registration: bad,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::BAD_REGISTRATION,
                ..
            }]
        ),
        "{got:?}"
    );
    let good = DeviceRegistration::sign(&user_key(4), key.device(), [0; 32], 0);
    let got = net.frame(
        s,
        ClientFrame::RegisterDevice {
            request_id: 3,
            registration: good,
        },
    );
    assert!(
        matches!(got[..], [ServerFrame::Registered { .. }]),
        "{got:?}"
    );
    // The same device for another user.
    let other = DeviceRegistration::sign(&user_key(5), key.device(), [0; 32], 0);
    let got = net.frame(
        s,
        ClientFrame::RegisterDevice {
            request_id: 4,
            registration: other,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::DEVICE_TAKEN,
                ..
            }]
        ),
        "{got:?}"
    );
}

#[test]
fn a_revoked_device_cannot_auth_submit_or_register_again() {
    let mut net = Net::new(Limits::default());
    let mut a1 = net.connect(1, 10);
    let a2 = net.connect(1, 11);
    let c = create(&mut a1, 1, &[1]);
    seq_of(&net.submit(&a1, &[c])[0]);
    // Signed before the revocation, submitted after: refused too.
    let late = send(&mut a1, 1, "from a lost phone");

    let rev = DeviceRevocation::sign(&user_key(1), a1.key.device(), 5);
    let got = revoke(&mut net, a2.session, rev.clone());
    assert!(
        matches!(got, ServerFrame::Revoked { device, .. } if device == a1.key.device()),
        "{got:?}"
    );
    assert_eq!(net.closed.get(&a1.session), Some(&ErrorCode::REVOKED));
    assert_eq!(code_of(&net.submit(&a2, &[late])[0]), ErrorCode::REVOKED);
    // Sending it again is answered the same way.
    assert!(matches!(
        revoke(&mut net, a2.session, rev),
        ServerFrame::Revoked { .. }
    ));

    // Survives a restart: Auth is refused with a clear code, so is registering again.
    let mut net = restart(net);
    let s = net
        .core
        .handle_connect("127.0.0.1".parse().expect("ip"), [1; 32], [7; 32])
        .expect("connect");
    net.frame(
        s,
        ClientFrame::Hello {
            protocol_version: PROTOCOL_VERSION,
            device: a1.key.device(),
            user: a1.key.user(),
        },
    );
    let signature = wire::sign_auth(a1.key.signing_key(), &a1.key.user(), &[7; 32], &[1; 32]);
    net.frame(s, ClientFrame::Auth { signature });
    assert_eq!(net.closed.get(&s), Some(&ErrorCode::REVOKED));

    let a2 = net.connect(1, 11);
    let again = DeviceRegistration::sign(&user_key(1), a1.key.device(), [3; 32], 99);
    let got = net.frame(
        a2.session,
        ClientFrame::RegisterDevice {
            request_id: 4,
            registration: again,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::REVOKED,
                ..
            }]
        ),
        "{got:?}"
    );
}

#[test]
fn forged_revocations_are_refused() {
    let mut net = Net::new(Limits::default());
    let a = net.connect(1, 10);
    let b = net.connect(2, 20);
    // User 2 revoking user 1's device, with a valid signature of user 2.
    let rev = DeviceRevocation::sign(&user_key(2), a.key.device(), 1);
    let got = revoke(&mut net, b.session, rev);
    assert!(
        matches!(
            got,
            ServerFrame::Refused {
                code: ErrorCode::BAD_REVOCATION,
                ..
            }
        ),
        "{got:?}"
    );
    // Claims user 1 but signed by user 2.
    let rev = DeviceRevocation {
        user: user_id(1),
        ..DeviceRevocation::sign(&user_key(2), a.key.device(), 1)
    };
    let got = revoke(&mut net, b.session, rev);
    assert!(
        matches!(
            got,
            ServerFrame::Refused {
                code: ErrorCode::BAD_REVOCATION,
                ..
            }
        ),
        "{got:?}"
    );
    assert!(!net.closed.contains_key(&a.session));
    assert!(net.core.store().revocations().expect("read").is_empty());
}

#[test]
fn devices_lists_verified_certificates_of_co_members_only() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let b = net.connect(2, 20);
    let b2 = net.connect(2, 21);
    let stranger = net.connect(3, 30);
    let c = create(&mut a, 1, &[1, 2]);
    seq_of(&net.submit(&a, &[c])[0]);
    let rev = DeviceRevocation::sign(&user_key(2), b2.key.device(), 7);
    assert!(matches!(
        revoke(&mut net, b.session, rev.clone()),
        ServerFrame::Revoked { .. }
    ));
    let ask = |net: &mut Net, dev: &Dev, users: &[u8]| {
        let got = net.frame(
            dev.session,
            ClientFrame::Devices {
                request_id: 8,
                users: users.iter().map(|&u| user_id(u)).collect(),
                after: None,
            },
        );
        match &got[..] {
            [ServerFrame::Devices {
                registrations,
                revocations,
                ..
            }] => (registrations.clone(), revocations.clone()),
            other => panic!("{other:?}"),
        }
    };
    let (regs, revs) = ask(&mut net, &a, &[1, 2, 3]);
    let mut devices: Vec<DeviceId> = regs.iter().map(|r| r.device).collect();
    devices.sort();
    let mut want = vec![a.key.device(), b.key.device(), b2.key.device()];
    want.sort();
    assert_eq!(devices, want, "user 3 shares nothing with user 1");
    assert!(regs.iter().all(|r| r.verify()));
    let b_cert = regs.iter().find(|r| r.device == b.key.device()).expect("b");
    assert_eq!(b_cert.agreement, [20; 32]);
    assert_eq!(revs, vec![rev]);
    assert!(revs.iter().all(|r| r.verify()));
    // The stranger sees only itself.
    let (regs, revs) = ask(&mut net, &stranger, &[1, 2, 3]);
    assert_eq!(
        regs.iter().map(|r| r.device).collect::<Vec<_>>(),
        vec![stranger.key.device()]
    );
    assert!(revs.is_empty());
    // Certificates survive a restart.
    let mut net = restart(net);
    let a = net.connect(1, 10);
    let (regs, _) = ask(&mut net, &a, &[2]);
    assert_eq!(regs.len(), 2);
}

#[test]
fn devices_keeps_serving_certificates_across_a_removal_but_not_to_strangers() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let mut b = net.connect(2, 20);
    let c = net.connect(3, 30);
    let stranger = net.connect(4, 40);
    let created = create(&mut a, 1, &[1, 2, 3]);
    seq_of(&net.submit(&a, &[created])[0]);
    let said = send(&mut b, 1, "before I leave");
    seq_of(&net.submit(&b, &[said])[0]);
    let gone = remove(&mut a, 1, 2);
    seq_of(&net.submit(&a, &[gone])[0]);
    let ask = |net: &mut Net, dev: &Dev, users: &[u8]| -> Vec<DeviceId> {
        let got = net.frame(
            dev.session,
            ClientFrame::Devices {
                request_id: 9,
                users: users.iter().map(|&u| user_id(u)).collect(),
                after: None,
            },
        );
        // Pushes of the events above may come first.
        let listed = got.iter().find_map(|f| match f {
            ServerFrame::Devices { registrations, .. } => Some(registrations),
            _ => None,
        });
        let mut d: Vec<DeviceId> = listed
            .unwrap_or_else(|| panic!("{got:?}"))
            .iter()
            .map(|r| r.device)
            .collect();
        d.sort();
        d
    };
    // c catches up on b's message after b left: it still needs b's certificate.
    let mut want = vec![a.key.device(), b.key.device(), c.key.device()];
    want.sort();
    assert_eq!(ask(&mut net, &c, &[1, 2, 3]), want);
    // The removed member may still hold unverified events from its time as a member.
    let mut want = vec![a.key.device(), c.key.device()];
    want.sort();
    assert_eq!(ask(&mut net, &b, &[1, 3]), want);
    // A stranger still learns nothing.
    assert_eq!(
        ask(&mut net, &stranger, &[1, 2, 3, 4]),
        vec![stranger.key.device()]
    );
    // The former member is remembered across a restart.
    let mut net = restart(net);
    let c = net.connect(3, 30);
    assert_eq!(ask(&mut net, &c, &[2]), vec![b.key.device()]);
    let b = net.connect(2, 20);
    assert_eq!(ask(&mut net, &b, &[3]), vec![c.key.device()]);
}

#[test]
fn membership_rules_are_enforced_in_server_order() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let mut b = net.connect(2, 20);
    let mut c = net.connect(3, 30);
    let created = create(&mut a, 1, &[1, 2]);
    seq_of(&net.submit(&a, &[created])[0]);
    // A non-member writes nothing.
    let e = send(&mut c, 1, "let me in");
    assert_eq!(code_of(&net.submit(&c, &[e])[0]), ErrorCode::NOT_MEMBER);
    // A member who is not an admin adds nobody, and nobody removes the creator.
    let e = add(&mut b, 1, 3, false);
    let out = net.submit(&b, &[e]);
    assert_eq!(code_of(&out[0]), ErrorCode::FORBIDDEN);
    let SubmitOutcome::Rejected { reason, .. } = &out[0] else {
        panic!()
    };
    assert!(reason.contains("not an admin"), "{reason}");
    let e = remove(&mut b, 1, 1);
    assert_eq!(code_of(&net.submit(&b, &[e])[0]), ErrorCode::FORBIDDEN);
    // The admin adds user 3 and removes user 2 in one batch, with a message of 2 between
    // them: in server order, 2 is still a member for the message and not after.
    let e1 = add(&mut a, 1, 3, false);
    let e2 = remove(&mut a, 1, 2);
    let out = net.submit(&a, &[e1, e2]);
    assert_eq!((seq_of(&out[0]), seq_of(&out[1])), (2, 3));
    let e = send(&mut b, 1, "still here?");
    assert_eq!(code_of(&net.submit(&b, &[e])[0]), ErrorCode::NOT_MEMBER);
    let e = send(&mut c, 1, "hello all");
    assert_eq!(seq_of(&net.submit(&c, &[e])[0]), 4);
}

#[test]
fn added_members_read_and_get_pushes_removed_members_do_not() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let b = net.connect(2, 20);
    let c = net.connect(3, 30);
    let created = create(&mut a, 1, &[1, 2]);
    seq_of(&net.submit(&a, &[created])[0]);
    assert_eq!(pull(&mut net, &c, 1).err(), Some(ErrorCode::NOT_MEMBER));
    net.take(b.session);
    accept(&mut net, &b, 1);

    let e = add(&mut a, 1, 3, false);
    seq_of(&net.submit(&a, &[e])[0]);
    // The added member is told of its invitation (nothing pushed before it accepts), and
    // can read the conversation.
    let got = net.take(c.session);
    assert!(
        matches!(&got[..], [ServerFrame::UserChanged { change: UserChange::Invited(i) }] if i.inviter == user_id(1)),
        "{got:?}"
    );
    accept(&mut net, &c, 1);
    assert_eq!(pull(&mut net, &c, 1).map(|i| i.len()), Ok(2));
    let got = net.frame(
        c.session,
        ClientFrame::Sync {
            request_id: 6,
            after: None,
        },
    );
    assert!(
        matches!(&got[..], [ServerFrame::Conversations { conversations, .. }] if conversations.len() == 1),
        "{got:?}"
    );
    let e = send(&mut a, 1, "welcome");
    seq_of(&net.submit(&a, &[e])[0]);
    assert_eq!(pushed(&net.take(c.session)).len(), 1);
    assert_eq!(pushed(&net.take(b.session)).len(), 2);

    // The removed member is told of its removal, then nothing more.
    let e = remove(&mut a, 1, 2);
    seq_of(&net.submit(&a, &[e])[0]);
    assert_eq!(pushed(&net.take(b.session)).len(), 1);
    let e = send(&mut a, 1, "after b left");
    seq_of(&net.submit(&a, &[e])[0]);
    assert!(pushed(&net.take(b.session)).is_empty());
    assert_eq!(pull(&mut net, &b, 1).err(), Some(ErrorCode::NOT_MEMBER));

    // All of it survives a restart.
    let mut net = restart(net);
    let b = net.connect(2, 20);
    let mut c = net.connect(3, 30);
    assert_eq!(pull(&mut net, &b, 1).err(), Some(ErrorCode::NOT_MEMBER));
    assert_eq!(pull(&mut net, &c, 1).map(|i| i.len()), Ok(5));
    let e = send(&mut c, 1, "after restart");
    assert_eq!(seq_of(&net.submit(&c, &[e])[0]), 6);
    let e = event(
        &mut Dev {
            key: b.key.clone(),
            session: b.session,
            counter: 50,
            chain: BTreeMap::new(),
        },
        1,
        EventKind::Read {
            up_to: 1,
            head: None,
        },
    );
    assert_eq!(code_of(&net.submit(&b, &[e])[0]), ErrorCode::NOT_MEMBER);
}

#[test]
fn chains_refuse_forks_and_broken_prev_but_resubmission_is_idempotent() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let created = create(&mut a, 1, &[1]);
    let first = send(&mut a, 1, "one");
    let out = net.submit(&a, &[created, first.clone()]);
    let ack = out[1].clone();
    seq_of(&ack);
    // Identical resubmission: the same ack.
    assert_eq!(net.submit(&a, std::slice::from_ref(&first))[0], ack);

    // Another event at the same counter (2): a fork.
    let mut twin = Dev {
        key: a.key.clone(),
        session: a.session,
        counter: 90,
        chain: BTreeMap::new(),
    };
    twin.chain
        .insert(1, (1, first.header().prev.expect("the create")));
    let fork = send(&mut twin, 1, "two-faced");
    assert_eq!(fork.header().counter, 2);
    assert_eq!(code_of(&net.submit(&a, &[fork])[0]), ErrorCode::CHAIN_FORK);

    // Counter 3 whose prev is not the stored counter 2.
    let mut skew = Dev {
        key: a.key.clone(),
        session: a.session,
        counter: 95,
        chain: BTreeMap::new(),
    };
    skew.chain.insert(1, (2, EventId([0x55; 32])));
    let broken = send(&mut skew, 1, "out of line");
    assert_eq!(
        code_of(&net.submit(&a, &[broken])[0]),
        ErrorCode::BROKEN_CHAIN
    );

    // A staged event at counter 4 (the relay does not hold 3): then a counter 3 that the
    // held counter 4 does not name as its prev.
    let mut ahead = Dev {
        key: a.key.clone(),
        session: a.session,
        counter: 97,
        chain: BTreeMap::new(),
    };
    ahead.chain.insert(1, (3, EventId([0x66; 32])));
    let four = send(&mut ahead, 1, "four");
    seq_of(&net.submit(&a, &[four])[0]);
    let three = send(&mut a, 1, "three");
    assert_eq!(three.header().counter, 3);
    assert_eq!(
        code_of(&net.submit(&a, &[three])[0]),
        ErrorCode::BROKEN_CHAIN
    );

    // Counter 1 with a prev is malformed.
    let mut bad = Dev {
        key: a.key.clone(),
        session: a.session,
        counter: 99,
        chain: BTreeMap::new(),
    };
    bad.chain.insert(2, (0, EventId([1; 32])));
    let created2 = create(&mut bad, 2, &[1]);
    assert_eq!(
        code_of(&net.submit(&a, &[created2])[0]),
        ErrorCode::BROKEN_CHAIN
    );
    // And all of it after a restart, against the stored chain.
    let mut net = restart(net);
    let a2 = net.connect(1, 10);
    assert_eq!(net.submit(&a2, &[first])[0], ack);
}

/// Issue #12, "Device-registration freeze": a user could register any number of devices,
/// until a `Devices` answer about them was over its limit and refused.
#[test]
fn devices_per_user_are_capped_revoked_ones_included() {
    let mut net = Net::new(Limits::default());
    let a = net.connect(1, 10);
    let cap = tidings_engine::directory::MAX_DEVICES_PER_USER;
    // Device 10 is one already.
    let mut refused = Vec::new();
    for n in 1..cap + 40 {
        if let ServerFrame::Refused { code, .. } =
            register_for(&mut net, a.session, 1, device_seed(1, n))
        {
            refused.push((n, code));
        }
    }
    assert_eq!(
        refused.first(),
        Some(&(cap, ErrorCode::TOO_MANY_DEVICES)),
        "{} devices registered for one user",
        cap + 40 - refused.len()
    );
    assert_eq!(refused.len(), 40);
    // Revoking one does not free its place: revoked ids are kept for good.
    let gone = DeviceKey::from_seed(device_seed(1, 1), user_id(1)).device();
    let rev = DeviceRevocation::sign(&user_key(1), gone, net.now);
    assert!(matches!(
        revoke(&mut net, a.session, rev),
        ServerFrame::Revoked { .. }
    ));
    assert!(matches!(
        register_for(&mut net, a.session, 1, device_seed(1, 9_999)),
        ServerFrame::Refused {
            code: ErrorCode::TOO_MANY_DEVICES,
            ..
        }
    ));
    // The cap survives a restart.
    let mut net = restart(net);
    let a = net.connect(1, 10);
    assert!(matches!(
        register_for(&mut net, a.session, 1, device_seed(1, 9_998)),
        ServerFrame::Refused {
            code: ErrorCode::TOO_MANY_DEVICES,
            ..
        }
    ));
}

/// Issue #12, "Device-registration freeze": one `Devices` answer held every statement asked
/// for, and was refused over 4,096 devices (or went over the frame length): an honest
/// 1,024-user ask could not be answered. Pages now stay within both limits, and the asker
/// goes on from where a page stopped.
#[test]
fn devices_answers_are_paged_within_the_frame_length() {
    let limits = Limits::default().with_max_frame_len(0);
    let max_frame_len = limits.clone().clamped().max_frame_len;
    let mut net = Net::new(limits);
    let mut a = net.connect(1, 10);
    let users: Vec<u8> = vec![2, 3, 4];
    let mut want = vec![a.key.device()];
    for &u in &users {
        let d = net.connect(u, u * 10);
        want.push(d.key.device());
        for n in 0..150 {
            let seed = device_seed(u, n);
            assert!(matches!(
                register_for(&mut net, d.session, u, seed),
                ServerFrame::Registered { .. }
            ));
            want.push(DeviceKey::from_seed(seed, user_id(u)).device());
        }
    }
    let created = create(&mut a, 1, &[1, 2, 3, 4]);
    seq_of(&net.submit(&a, &[created])[0]);
    let mut asked: Vec<UserId> = [1, 2, 3, 4].iter().map(|&u| user_id(u)).collect();
    let mut after = None;
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 100, "no end to the pages");
        let frames = net.frame(
            a.session,
            ClientFrame::Devices {
                request_id: 40,
                users: asked.clone(),
                after,
            },
        );
        let page = frames
            .into_iter()
            .find(|f| matches!(f, ServerFrame::Devices { .. } | ServerFrame::Refused { .. }))
            .expect("an answer");
        let len = wire::frame_bytes(&page).expect("encode").len();
        assert!(
            len <= max_frame_len,
            "a {len}-byte answer, frame limit {max_frame_len}"
        );
        let ServerFrame::Devices {
            registrations,
            complete,
            resume_after,
            ..
        } = page
        else {
            panic!("{page:?}");
        };
        got.extend(registrations.iter().map(|r| r.device));
        let complete = complete as usize;
        if complete >= asked.len() {
            break;
        }
        asked.drain(..complete);
        after = resume_after;
    }
    assert!(pages > 1);
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// Issue #12, "Re-certification takeover": a newer certificate of a registered device with
/// another X25519 key replaced the stored one ("newer wins"); whoever held the user key then
/// received that device's epoch keys.
#[test]
fn recertifying_a_device_with_another_agreement_key_is_refused() {
    let mut net = Net::new(Limits::default());
    let a = net.connect(1, 10);
    let takeover = DeviceRegistration::sign(&user_key(1), a.key.device(), [66; 32], net.now + 5);
    let got = net.frame(
        a.session,
        ClientFrame::RegisterDevice {
            request_id: 3,
            registration: takeover,
        },
    );
    assert!(
        matches!(
            got[..],
            [ServerFrame::Refused {
                code: ErrorCode::AGREEMENT_KEY_CHANGED,
                ..
            }]
        ),
        "{got:?}"
    );
    let stored = net.core.store().registrations().expect("read");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].agreement, [10; 32]);
    // A renewal with the same keys is stored.
    let renewal = DeviceRegistration::sign(&user_key(1), a.key.device(), [10; 32], net.now + 6);
    let got = net.frame(
        a.session,
        ClientFrame::RegisterDevice {
            request_id: 4,
            registration: renewal.clone(),
        },
    );
    assert!(
        matches!(got[..], [ServerFrame::Registered { .. }]),
        "{got:?}"
    );
    assert_eq!(
        net.core.store().registrations().expect("read"),
        vec![renewal]
    );
}

/// Issue #12, "Smaller ones": the conversation record held every user ever removed, and
/// every commit touching the conversation rewrote it whole.
#[test]
fn a_conversation_record_does_not_grow_with_its_former_members() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let created = create(&mut a, 1, &[1]);
    seq_of(&net.submit(&a, &[created])[0]);
    let record_len = |net: &Net| {
        let convs = net.core.store().conversations().expect("read");
        postcard::to_stdvec(&convs[0].1).expect("encode").len()
    };
    let before = record_len(&net);
    for u in 2..40u8 {
        let add = add(&mut a, 1, u, false);
        seq_of(&net.submit(&a, &[add])[0]);
        let gone = remove(&mut a, 1, u);
        seq_of(&net.submit(&a, &[gone])[0]);
    }
    let after = record_len(&net);
    assert!(
        after <= before + 16,
        "the record grew from {before} to {after} bytes with 38 former members"
    );
}
