//! Limits: connections per address prefix, rates per device and user, bounded buckets,
//! clock jumps, one answer per request, fair commits.

use super::*;

#[test]
fn rate_and_connection_limits() {
    let mut net = Net::new(
        Limits::default()
            .with_rate(10, 3)
            .with_connections_per_prefix(3),
    );
    let mut a = net.connect(1, 10);
    let mut evs = vec![create(&mut a, 1, &[1])];
    for i in 0..4 {
        evs.push(send(&mut a, 1, &format!("m{i}")));
    }
    let out = net.submit(&a, &evs);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, SubmitOutcome::Accepted { .. }))
            .count(),
        3
    );
    assert_eq!(code_of(&out[3]), ErrorCode::RATE_LIMITED);
    // A second later the budget is back.
    net.now += 1_000;
    assert_eq!(seq_of(&net.submit(&a, &evs[3..4])[0]), 4);

    let ip = "127.0.0.1".parse().expect("ip");
    net.core
        .handle_connect(ip, [0; 32], [0; 32])
        .expect("second");
    net.core
        .handle_connect(ip, [0; 32], [0; 32])
        .expect("third");
    assert!(matches!(
        net.core.handle_connect(ip, [0; 32], [0; 32]),
        Err(ConnectError::TooManyFromAddress { .. })
    ));
    let other = "127.0.0.2".parse().expect("ip");
    net.core
        .handle_connect(other, [0; 32], [0; 32])
        .expect("other address");
}

// ---- Relay resource limits (issue 12): address prefixes, rates, server stamps, answers ----

/// Connection limits count by address prefix: every address of an IPv6 /64 shares one limit
/// (an attacker holds 2^64 of them), an IPv4-mapped IPv6 address counts as its IPv4 address,
/// and the IPv4 prefix length is configurable.
#[test]
fn connections_are_limited_per_address_prefix() {
    let mut limits = Limits::default().with_connections_per_prefix(2);
    let mut net = Net::new(limits.clone());
    let connect = |net: &mut Net, ip: &str| {
        let ip: IpAddr = ip.parse().expect("ip");
        net.core.handle_connect(ip, [0; 32], [0; 32])
    };
    connect(&mut net, "2001:db8::1").expect("first of the /64");
    connect(&mut net, "2001:db8::2").expect("second of the /64");
    assert!(
        matches!(
            connect(&mut net, "2001:db8::ffff:3"),
            Err(ConnectError::TooManyFromAddress { .. })
        ),
        "a third address of the same /64 is refused"
    );
    connect(&mut net, "2001:db8:0:1::1").expect("another /64");
    connect(&mut net, "10.0.0.1").expect("v4");
    connect(&mut net, "10.0.0.1").expect("v4 again");
    assert!(
        connect(&mut net, "::ffff:10.0.0.1").is_err(),
        "an IPv4-mapped address counts as the IPv4 address"
    );
    connect(&mut net, "10.0.0.2").expect("IPv4 counts per /32 by default");

    limits.ipv4_prefix_len = 24;
    let mut net = Net::new(limits);
    connect(&mut net, "10.0.0.1").expect("first of the /24");
    connect(&mut net, "10.0.0.2").expect("second of the /24");
    assert!(connect(&mut net, "10.0.0.3").is_err(), "/24 configured");
    connect(&mut net, "10.0.1.1").expect("another /24");
}

/// The event rate belongs to the device and to its user, not to a connection: reconnecting
/// does not refill the device's bucket, and a user's devices share the user's bucket.
#[test]
fn rates_are_per_device_and_per_user_across_reconnects() {
    let mut net = Net::new(Limits::default().with_rate(10, 3).with_user_rate(10, 5));
    let mut a = net.connect(1, 10);
    let mut evs = vec![create(&mut a, 1, &[1])];
    for i in 0..3 {
        evs.push(send(&mut a, 1, &format!("m{i}")));
    }
    let out = net.submit(&a, &evs);
    assert_eq!(seq_of(&out[2]), 3);
    assert_eq!(code_of(&out[3]), ErrorCode::RATE_LIMITED);

    // Same instant, new connection: the device's budget is still spent.
    net.core.handle_disconnect(a.session);
    let a = Dev {
        session: net.connect(1, 10).session,
        ..a
    };
    let out = net.submit(&a, &evs[3..4]);
    assert_eq!(
        code_of(&out[0]),
        ErrorCode::RATE_LIMITED,
        "a reconnect must not refill the device's bucket"
    );

    // A second device of the same user: its own bucket is full, the user's has 2 left.
    let mut b = net.connect(1, 11);
    let evs: Vec<Event> = (0..3).map(|i| send(&mut b, 1, &format!("b{i}"))).collect();
    let out = net.submit(&b, &evs);
    assert_eq!(seq_of(&out[0]), 4);
    assert_eq!(seq_of(&out[1]), 5);
    assert_eq!(
        code_of(&out[2]),
        ErrorCode::RATE_LIMITED,
        "the user's devices share the user's bucket"
    );
    // Another user is not affected.
    let mut c = net.connect(2, 20);
    let ev = create(&mut c, 2, &[2]);
    let out = net.submit(&c, &[ev]);
    assert_eq!(seq_of(&out[0]), 1);
}

/// Rate buckets are bounded: past the limit, idle (refilled) buckets are dropped, and a
/// dropped bucket behaves like a full one.
#[test]
fn rate_buckets_stay_bounded() {
    let mut limits = Limits::default().with_rate(1_000, 1);
    limits.max_rate_buckets = 4;
    let mut net = Net::new(limits);
    for u in 1..=6u8 {
        let mut d = net.connect(u, 100 + u);
        let ev = create(&mut d, u, &[u]);
        let out = net.submit(&d, &[ev]);
        assert_eq!(seq_of(&out[0]), 1, "user {u}");
        net.now += 10;
    }
    assert!(net.core.n_rate_buckets() <= 4);
}

/// A relay clock that jumped a year ahead and came back does not stamp a year ahead forever;
/// a small step back is absorbed (stamps do not decrease); sequences stay in order.
#[test]
fn a_forward_clock_jump_does_not_stick() {
    const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
    let t0 = 1_800_000_000_000;
    let mut net = Net::new(Limits::default());
    net.now = t0;
    let mut a = net.connect(1, 10);
    let ev = create(&mut a, 1, &[1]);
    net.submit(&a, std::slice::from_ref(&ev));
    assert_eq!(ts_of(&net, &ev), t0);

    net.now = t0 + YEAR_MS;
    let ev = send(&mut a, 1, "from the future");
    net.submit(&a, std::slice::from_ref(&ev));
    assert_eq!(ts_of(&net, &ev), t0 + YEAR_MS);

    net.now = t0 + 1_000;
    let ev = send(&mut a, 1, "back to now");
    let out = net.submit(&a, std::slice::from_ref(&ev));
    assert_eq!(seq_of(&out[0]), 3);
    assert_eq!(
        ts_of(&net, &ev),
        t0 + 1_000,
        "the stamp follows the clock once it is far behind the previous stamp"
    );

    // A small step back (under the lead limit) keeps stamps non-decreasing.
    net.now = t0 + 1_000 - 500;
    let ev = send(&mut a, 1, "small step back");
    let out = net.submit(&a, std::slice::from_ref(&ev));
    assert_eq!(seq_of(&out[0]), 4);
    assert_eq!(ts_of(&net, &ev), t0 + 1_000);
}

/// Every request gets exactly one answer naming it, refusals included: the shell's metering
/// (one in-flight permit per request, released by its answer) relies on it.
#[test]
fn every_request_gets_exactly_one_answer() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let create_ev = create(&mut a, 1, &[1]);
    let stranger = DeviceKey::from_seed([99; 32], user_id(9));
    let unregistered = net.handshake(&stranger);
    let requests = [
        ClientFrame::Submit {
            request_id: 41,
            events: vec![Envelope(create_ev.bytes().to_vec())],
        },
        ClientFrame::Submit {
            request_id: 42,
            events: vec![Envelope(vec![1, 2, 3])],
        },
        ClientFrame::Pull {
            request_id: 43,
            conversation: ConversationId([1; 16]),
            after_seq: 0,
            limit: 10,
            history_since_ms: None,
        },
        ClientFrame::Pull {
            request_id: 44,
            conversation: ConversationId([77; 16]),
            after_seq: 0,
            limit: 10,
            history_since_ms: None,
        },
        ClientFrame::Sync {
            request_id: 45,
            after: None,
        },
        ClientFrame::Devices {
            request_id: 46,
            users: vec![user_id(1)],
            after: None,
        },
        ClientFrame::Accept {
            request_id: 49,
            conversation: ConversationId([1; 16]),
        },
        ClientFrame::Block {
            request_id: 50,
            user: user_id(7),
        },
        ClientFrame::Revoke {
            request_id: 47,
            revocation: DeviceRevocation::sign(&user_key(2), stranger.device(), 1),
        },
        ClientFrame::RegisterDevice {
            request_id: 48,
            registration: DeviceRegistration::sign(&user_key(1), a.key.device(), [10; 32], 1),
        },
    ];
    for session in [a.session, unregistered] {
        for r in &requests {
            let id = r.request_id().expect("a request");
            let got = net.frame(session, r.clone());
            let answers: Vec<&ServerFrame> = got.iter().filter(|f| f.answers().is_some()).collect();
            assert!(
                matches!(answers[..], [f] if f.answers() == Some(id)),
                "{r:?} on session {session}: {got:?}"
            );
        }
    }
}

/// A device that queues many submits cannot hold another back: a commit takes at most
/// `max_commit_batch` events (plus the rest of one submit), one submit per session per round,
/// so a light device's submit is answered by the next commit however many the flooder queued
/// before it, and the flooder's backlog follows in later commits, in its own order.
#[test]
fn commits_take_sessions_round_robin_within_the_batch_cap() {
    let limits = Limits {
        max_commit_batch: 4,
        ..Limits::default()
    };
    let mut net = Net::new(limits);
    let mut a = net.connect(1, 10);
    let mut b = net.connect(2, 20);
    let c = create(&mut a, 1, &[1, 2]);
    assert_eq!(seq_of(&net.submit(&a, &[c])[0]), 1);
    accept(&mut net, &b, 1);
    let submit = |net: &mut Net, dev: &Dev, evs: &[Event], id: u64| {
        net.core.handle_frame(
            dev.session,
            ClientFrame::Submit {
                request_id: id,
                events: evs.iter().map(|e| Envelope(e.bytes().to_vec())).collect(),
            },
            net.now,
        );
    };
    // The flooder queues 4 submits of 4 events, then the light device one of 1 event.
    for id in 10..14 {
        let evs: Vec<Event> = (0..4)
            .map(|i| send(&mut a, 1, &format!("a{id}.{i}")))
            .collect();
        submit(&mut net, &a, &evs, id);
    }
    let light = send(&mut b, 1, "b");
    submit(&mut net, &b, std::slice::from_ref(&light), 20);
    let answered = |net: &mut Net| -> Vec<(SessionId, u64)> {
        net.pump();
        let mut out = Vec::new();
        for (s, frames) in std::mem::take(&mut net.inbox) {
            for f in frames {
                if let ServerFrame::SubmitResult {
                    request_id,
                    outcomes,
                    ..
                } = f
                {
                    assert!(outcomes
                        .iter()
                        .all(|o| matches!(o, SubmitOutcome::Accepted { .. })));
                    out.push((s, request_id));
                }
            }
        }
        out
    };
    let commits: Vec<Vec<(SessionId, u64)>> = (0..8).map(|_| answered(&mut net)).collect();
    assert_eq!(
        commits[0],
        vec![(a.session, 10)],
        "the first commit was full with the flooder's first submit"
    );
    assert!(
        commits[1].contains(&(b.session, 20)),
        "the light device waits behind the flooder's backlog: {commits:?}"
    );
    for c in &commits {
        assert!(
            c.len() <= 2,
            "a commit past its cap of 4 events: {commits:?}"
        );
    }
    let order: Vec<u64> = commits
        .iter()
        .flatten()
        .filter(|(s, _)| *s == a.session)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(
        order,
        vec![10, 11, 12, 13],
        "the flooder's submits, each once, in order"
    );
    assert!(!net.core.has_staged());
}
