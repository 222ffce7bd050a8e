//! Unit tests of the relay's redb store.

use super::*;

#[test]
fn commit_then_read_back() {
    let store = RelayStore::in_memory().expect("open");
    let cert = DeviceRegistration {
        user: UserId([2; 32]),
        device: DeviceId([6; 32]),
        agreement: [8; 32],
        issued_ms: 1,
        signature: tidings_engine::wire::SignatureBytes([0; 64]),
    };
    let rev = DeviceRevocation {
        user: UserId([2; 32]),
        device: DeviceId([6; 32]),
        issued_ms: 2,
        signature: tidings_engine::wire::SignatureBytes([0; 64]),
    };
    let conv = ConversationId([1; 16]);
    let rec = ConversationRecord {
        membership: Membership::create(UserId([2; 32]), &[UserId([2; 32])]).expect("create"),
        max_seq: 2,
        last_ack: EventId([3; 32]),
        last_ts_ms: 10,
    };
    let batch = CommitBatch {
        events: vec![
            SequencedRecord {
                conversation: conv,
                seq: 1,
                index_key: [4; 88],
                prev: None,
                event: b"e1",
                ack: b"a1",
            },
            SequencedRecord {
                conversation: conv,
                seq: 2,
                index_key: [5; 88],
                prev: Some(EventId([4; 32])),
                event: b"e2",
                ack: b"a2",
            },
            SequencedRecord {
                conversation: conv,
                seq: 3,
                index_key: [6; 88],
                prev: None,
                event: b"e3",
                ack: b"",
            },
            SequencedRecord {
                conversation: conv,
                seq: 4,
                index_key: [7; 88],
                prev: None,
                event: b"e4",
                ack: b"",
            },
            SequencedRecord {
                conversation: conv,
                seq: 5,
                index_key: [8; 88],
                prev: None,
                event: b"e5",
                ack: b"",
            },
        ],
        // Rows 1 and 2 as written before schema 6 (an ack each); 3..=5 placed by
        // statements from 3 and from 5.
        statements: vec![(conv, 3, b"s3"), (conv, 5, b"s5")],
        conversations: vec![(conv, &rec)],
        membership_changed: vec![conv],
        former: vec![(conv, UserId([9; 32]))],
        devices: vec![&cert],
        revocations: vec![&rev],
        cursors: vec![(DeviceId([6; 32]), conv, 1)],
        invitations: vec![InvitationRecord {
            user: UserId([7; 32]),
            conversation: conv,
            decision: Decision::Declined,
            inviter: UserId([2; 32]),
        }],
        blocks: vec![
            (UserId([7; 32]), UserId([2; 32]), true),
            (UserId([7; 32]), UserId([3; 32]), true),
            (UserId([7; 32]), UserId([3; 32]), false),
        ],
    };
    store.commit(&batch).expect("commit");
    assert_eq!(
        store.invitations().expect("read"),
        batch.invitations.clone()
    );
    assert_eq!(
        store.blocked().expect("read"),
        vec![(UserId([7; 32]), UserId([2; 32]))]
    );
    assert_eq!(store.conversations().expect("read"), vec![(conv, rec)]);
    assert_eq!(
        store.former_members().expect("read"),
        vec![(conv, UserId([9; 32]))]
    );
    assert_eq!(
        store.devices().expect("read"),
        vec![(DeviceId([6; 32]), UserId([2; 32]))]
    );
    assert_eq!(store.registrations().expect("read"), vec![cert.clone()]);
    assert_eq!(store.revocations().expect("read"), vec![rev.clone()]);
    assert_eq!(
        store.cursors(&DeviceId([6; 32])).expect("read").get(&conv),
        Some(&1)
    );
    let found = store.lookup(&[[5; 88], [9; 88], [7; 88]]).expect("lookup");
    assert_eq!(
        found,
        vec![
            Some((conv, 2, b"a2".to_vec())),
            None,
            Some((conv, 4, b"s3".to_vec()))
        ]
    );
    let bytes = |v: &[Envelope]| v.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    let (items, records, more) = store.page(&conv, 0, 1, 1 << 20).expect("page");
    assert!(more);
    assert_eq!(
        (bytes(&items), bytes(&records)),
        (vec![b"e1".to_vec()], vec![b"a1".to_vec()])
    );
    // Each statement once, however many events of the page it places.
    let (items, records, more) = store.page(&conv, 1, 10, 1 << 20).expect("page");
    assert!(!more);
    assert_eq!(items.len(), 4);
    assert_eq!(
        bytes(&records),
        vec![b"a2".to_vec(), b"s3".to_vec(), b"s5".to_vec()]
    );
    // A page starting inside a statement's range still carries it.
    let (items, records, _) = store.page(&conv, 3, 1, 1 << 20).expect("page");
    assert_eq!(
        (bytes(&items), bytes(&records)),
        (vec![b"e4".to_vec()], vec![b"s3".to_vec()])
    );
    // The byte budget stops a page but never makes it empty.
    let (items, _, more) = store.page(&conv, 0, 10, 1).expect("page");
    assert_eq!((items.len(), more), (1, true));
    assert_eq!(store.n_events().expect("count"), 5);
}

/// A schema-5 file (every event row with its own signed ServerAck) opens as schema 6 and
/// serves its rows with those acks; new rows beside them are placed by statements.
#[test]
fn a_schema_5_store_opens_and_serves_its_acks() {
    let conv = ConversationId([1; 16]);
    let db = Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .expect("db");
    let txn = db.begin_write().expect("txn");
    {
        txn.open_table(META)
            .expect("meta")
            .insert("schema", 5)
            .expect("schema");
        txn.open_table(EVENTS)
            .expect("events")
            .insert(seq_key(&conv, 1), (&b"e1"[..], &b"a1"[..]))
            .expect("row");
    }
    txn.commit().expect("commit");
    let store = RelayStore::open(db, false).expect("opens as schema 6");
    let batch = CommitBatch {
        events: vec![SequencedRecord {
            conversation: conv,
            seq: 2,
            index_key: [4; 88],
            prev: None,
            event: b"e2",
            ack: b"",
        }],
        statements: vec![(conv, 2, b"s2")],
        ..CommitBatch::default()
    };
    store.commit(&batch).expect("commit");
    let (events, records, more) = store.page(&conv, 0, 10, 1 << 20).expect("page");
    assert!(!more);
    assert_eq!(events.len(), 2);
    let records: Vec<Vec<u8>> = records.into_iter().map(|r| r.0).collect();
    assert_eq!(records, vec![b"a1".to_vec(), b"s2".to_vec()]);
}

/// A schema-4 file (former members inside the conversation record) opens as schema 5,
/// its former members moved into their table.
#[test]
fn a_schema_4_store_is_migrated() {
    #[derive(Serialize)]
    struct V4 {
        membership: Membership,
        former: BTreeSet<UserId>,
        max_seq: ServerSeq,
        last_ack: EventId,
        last_ts_ms: u64,
    }
    let conv = ConversationId([1; 16]);
    let membership = Membership::create(UserId([2; 32]), &[UserId([2; 32])]).expect("create");
    let old = V4 {
        membership: membership.clone(),
        former: BTreeSet::from([UserId([9; 32]), UserId([8; 32])]),
        max_seq: 7,
        last_ack: EventId([3; 32]),
        last_ts_ms: 10,
    };
    let db = Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .expect("db");
    let txn = db.begin_write().expect("txn");
    {
        txn.open_table(META)
            .expect("meta")
            .insert("schema", 4)
            .expect("schema");
        let bytes = postcard::to_stdvec(&old).expect("encode");
        txn.open_table(CONVERSATIONS)
            .expect("convs")
            .insert(conv.0, bytes.as_slice())
            .expect("record");
    }
    txn.commit().expect("commit");
    let store = RelayStore::open(db, false).expect("migrated");
    let rec = ConversationRecord {
        membership,
        max_seq: 7,
        last_ack: EventId([3; 32]),
        last_ts_ms: 10,
    };
    assert_eq!(store.conversations().expect("read"), vec![(conv, rec)]);
    let mut former = store.former_members().expect("read");
    former.sort();
    assert_eq!(
        former,
        vec![(conv, UserId([8; 32])), (conv, UserId([9; 32]))]
    );
}
