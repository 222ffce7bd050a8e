//! Sequencing: statements chain, resubmissions keep their place, commits pipeline, pages and
//! cursors, and a restart continues the sequence.

use super::*;

#[test]
fn sequences_and_acks_chain() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1, 2]);
    let s1 = send(&mut a, 1, "hi");
    let s2 = send(&mut a, 1, "there");
    let out = net.submit(&a, &[c.clone(), s1.clone(), s2.clone()]);
    assert_eq!(out.iter().map(seq_of).collect::<Vec<_>>(), vec![1, 2, 3]);
    // One commit, one conversation: one statement, one signature, for the three events.
    let st = net.statement_of(&c).clone();
    assert_eq!(net.statement_of(&s2), &st);
    assert_eq!((st.header().counter, st.header().prev), (1, None));
    let places = st.placements();
    assert_eq!(
        places.iter().map(|p| (p.event, p.seq)).collect::<Vec<_>>(),
        vec![(c.id(), 1), (s1.id(), 2), (s2.id(), 3)]
    );
    assert!(places[1].message.is_some());
    // The next commit's statement continues the chain.
    let s3 = send(&mut a, 1, "again");
    assert_eq!(seq_of(&net.submit(&a, std::slice::from_ref(&s3))[0]), 4);
    let next = net.statement_of(&s3);
    assert_eq!(
        (next.header().counter, next.header().prev),
        (4, Some(st.id()))
    );
    assert_eq!(net.core.store().n_events().expect("n"), 4);
}

#[test]
fn resubmission_returns_the_same_ack_and_stores_nothing_twice() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1]);
    let s = send(&mut a, 1, "once");
    let first = net.submit(&a, &[c, s.clone()]);
    let again = net.submit(&a, std::slice::from_ref(&s));
    assert_eq!(again[0], first[1]);
    // Twice in one batch, not yet committed: one sequence.
    let t = send(&mut a, 1, "twice");
    let both = net.submit(&a, &[t.clone(), t]);
    assert_eq!(both[0], both[1]);
    assert_eq!(seq_of(&both[0]), 3);
    assert_eq!(net.core.store().n_events().expect("n"), 3);
}

#[test]
fn pages_respect_limits_and_order() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1]);
    let mut evs = vec![c];
    for i in 0..9 {
        evs.push(send(&mut a, 1, &format!("m{i}")));
    }
    net.submit(&a, &evs);
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let got = net.frame(
            a.session,
            ClientFrame::Pull {
                request_id: 1,
                conversation: ConversationId([1; 16]),
                after_seq: after,
                limit: 4,
                history_since_ms: None,
            },
        );
        let [ServerFrame::Page {
            events,
            records,
            more,
            ..
        }] = &got[..]
        else {
            panic!("{got:?}")
        };
        assert!(events.len() <= 4);
        for (_, seq) in placed(events, records) {
            seen.push(seq);
            after = seq;
        }
        if !more {
            break;
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
}

#[test]
fn restart_keeps_committed_events_and_continues_the_sequence() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c = create(&mut a, 1, &[1]);
    let s = send(&mut a, 1, "before");
    let out = net.submit(&a, &[c, s.clone()]);
    // Staged but never committed: lost in the crash, never acknowledged.
    let lost = send(&mut a, 1, "in flight");
    net.core.handle_frame(
        a.session,
        ClientFrame::Submit {
            request_id: 1,
            events: vec![Envelope(lost.bytes().to_vec())],
        },
        net.now,
    );
    assert_eq!(net.core.stats().staged_events, 1);
    let store = std::mem::replace(&mut net.core, {
        let key = DeviceKey::from_seed(RELAY_SEED, UserId([0; 32]));
        RelayCore::new(
            RelayStore::in_memory().expect("store"),
            key,
            Limits::default(),
        )
        .expect("core")
    })
    .into_store();
    let db = store.into_database().expect("sole owner of the database");
    let mut net = Net::on_store(
        RelayStore::open(db, false).expect("reopen"),
        Limits::default(),
    );
    let a = Dev {
        session: net.connect(1, 10).session,
        ..a
    };
    let before = net.submit(&a, std::slice::from_ref(&s));
    assert_eq!(before[0], out[1]);
    let after = net.submit(&a, std::slice::from_ref(&lost));
    assert_eq!(seq_of(&after[0]), 3);
    // The chain continues from the statement stored before the restart.
    let prev = net.statement_of(&s).id();
    assert_eq!(net.statement_of(&lost).header().prev, Some(prev));
}

#[test]
fn cursors_persist_and_drive_the_backlog() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let b = net.connect(2, 20);
    let mut evs = vec![create(&mut a, 1, &[1, 2])];
    for i in 0..4 {
        evs.push(send(&mut a, 1, &format!("m{i}")));
    }
    net.submit(&a, &evs);
    accept(&mut net, &b, 1);
    let backlog = |net: &Net| {
        net.core
            .stats()
            .device_backlog
            .into_iter()
            .find(|(d, _)| *d == b.key.device())
            .map(|(_, n)| n)
    };
    assert_eq!(backlog(&net), Some(5));
    net.frame(
        b.session,
        ClientFrame::Received {
            conversation: ConversationId([1; 16]),
            up_to: 3,
        },
    );
    assert_eq!(backlog(&net), Some(2));
    // A second connection of the same device replaces the first and sees the stored cursor.
    let s = net.handshake(&b.key);
    assert_eq!(net.closed.get(&b.session), Some(&ErrorCode::REPLACED));
    let got = net.frame(
        s,
        ClientFrame::Sync {
            request_id: 1,
            after: None,
        },
    );
    let [ServerFrame::Conversations { conversations, .. }] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!((conversations[0].max_seq, conversations[0].cursor), (5, 3));
}

/// Acks signed on several threads chain exactly as when signed on one.
#[test]
fn parallel_ack_signing_matches_serial() {
    let run = |threads: usize| {
        let mut net = Net::new(Limits {
            ack_sign_threads: threads,
            ..Limits::default()
        });
        let mut a = net.connect(1, 10);
        let mut evs = Vec::new();
        for conv in 1..=3 {
            evs.push(create(&mut a, conv, &[1]));
        }
        for i in 0..150 {
            evs.push(send(&mut a, 1 + (i % 3) as u8, &format!("m{i}")));
        }
        let mut outcomes = Vec::new();
        for chunk in evs.chunks(wire::MAX_SUBMIT_BATCH) {
            // One commit for the whole batch: above the parallel threshold.
            net.core.handle_frame(
                a.session,
                ClientFrame::Submit {
                    request_id: 1,
                    events: chunk.iter().map(|e| Envelope(e.bytes().to_vec())).collect(),
                },
                net.now,
            );
        }
        net.pump();
        let mut sts = Vec::new();
        for f in net.take(a.session) {
            if let ServerFrame::SubmitResult {
                outcomes: o,
                records,
                ..
            } = f
            {
                outcomes.extend(o);
                sts.extend(statements(&records));
            }
        }
        (outcomes, sts)
    };
    let serial = run(1);
    let parallel = run(2);
    assert_eq!(serial.0.len(), 153);
    assert_eq!(serial, parallel);
    // One statement per conversation of the commit; per conversation, sequences 1..
    // without gaps, each statement's prev the previous statement.
    assert_eq!(parallel.1.len(), 3);
    let mut last: HashMap<ConversationId, (ServerSeq, EventId)> = HashMap::new();
    for st in &parallel.1 {
        let prev = last.get(&st.conversation()).copied();
        assert_eq!(st.header().counter, prev.map_or(1, |(s, _)| s + 1));
        assert_eq!(st.header().prev, prev.map(|(_, id)| id));
        let end = st.last_placed().expect("places events");
        assert_eq!(end, 51);
        last.insert(st.conversation(), (end, st.id()));
    }
}

/// A commit being written while the next batch is staged: duplicates of in-flight events get
/// the in-flight ack only once it is durable; a failed write refuses it and everything staged
/// after it, and the sequence resumes from the last durable state.
#[test]
fn pipelined_commits() {
    let (mut net, mut a, m1, job) = one_send_in_a_started_job("one");
    assert!(net.core.commit_in_flight());
    // While it is written: a duplicate, and a new event.
    submit_nowait(&mut net, &a, std::slice::from_ref(&m1), 2);
    let m2 = send(&mut a, 1, "two");
    submit_nowait(&mut net, &a, std::slice::from_ref(&m2), 3);
    assert!(
        submit_results(&mut net).is_empty(),
        "nothing answered before the write"
    );
    assert!(
        net.core.start_commit().expect("ok").is_none(),
        "one job at a time"
    );
    let r = job.write(net.core.store());
    net.core.finish_commit(job, r);
    let got = submit_results(&mut net);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(got[&1], got[&2]);
    assert_eq!(seq_of(&got[&1][0]), 2);
    net.core.commit().expect("commit");
    assert_eq!(seq_of(&submit_results(&mut net)[&3][0]), 3);

    // A failed write: its events and those staged after it are refused.
    let m3 = send(&mut a, 1, "three");
    submit_nowait(&mut net, &a, std::slice::from_ref(&m3), 4);
    let job = net.core.start_commit().expect("sign").expect("a job");
    let m4 = send(&mut a, 1, "four");
    submit_nowait(&mut net, &a, std::slice::from_ref(&m4), 5);
    net.core
        .finish_commit(job, Err(StoreError::Failed("disk on fire".into())));
    let got = submit_results(&mut net);
    assert_eq!(code_of(&got[&4][0]), ErrorCode::INTERNAL);
    assert_eq!(code_of(&got[&5][0]), ErrorCode::INTERNAL);
    assert!(!net.core.has_staged());
    // Resubmitted, they get the sequences the failed ones would have had.
    assert_eq!(
        net.submit(&a, &[m3, m4])
            .iter()
            .map(seq_of)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert_eq!(net.core.store().n_events().expect("n"), 5);
}
