//! Laws of the log and the store: replay equals live state, snapshot + tail equals full replay,
//! the fast index view equals the document view, the codec rejects every mutation it cannot
//! verify, and an interrupted transaction leaves nothing behind.

mod common;

use common::{cast, events, script, CONV};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tidings_engine::log::PageCursor;
use tidings_engine::{
    Appended, DecodeError, DeviceKey, Event, EventLog, LogError, Store, StoreConfig,
};

fn config(cast: &common::Cast, snapshot_every: u64) -> StoreConfig {
    let mut c = StoreConfig::new(cast.relay.device());
    c.snapshot_every = snapshot_every;
    c
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/log_properties.txt"
        ))),
        ..ProptestConfig::default()
    })]

    /// 4. Rebuilding from the log equals the live state; snapshot + tail equals full replay;
    ///    the index-table view of the latest messages equals the document's.
    #[test]
    fn replay_equals_live(
        s in script(),
        batch in 1usize..6,
        snapshot_every in 1u64..8,
        page_len in 1usize..5,
    ) {
        let c = cast();
        let evs = events(&c, &s);
        let bob = c.devices[2].clone();
        let mut store = Store::new(EventLog::in_memory().expect("log"), bob.clone(), config(&c, snapshot_every), [2; 32]);
        for chunk in evs.chunks(batch) {
            store.apply(chunk).expect("apply");
        }
        let live = store.conversation(CONV).expect("conv").view();
        for n in [1usize, 3, 50] {
            let fast = store.latest(CONV, n).expect("latest");
            let slow = store.conversation(CONV).expect("conv").latest(n);
            prop_assert_eq!(fast, slow);
        }
        check_pages(&mut store, page_len)?;
        prop_assert_eq!(
            store.log().unread_count(CONV, bob.user()).expect("unread"),
            store.conversation(CONV).expect("conv").unread_count(bob.user())
        );
        // Snapshot + tail.
        store.unload_all();
        prop_assert_eq!(store.conversation(CONV).expect("conv").view(), live.clone());
        // Full replay, snapshots ignored.
        let mut fresh = Store::new(EventLog::in_memory().expect("log"), bob, config(&c, u64::MAX), [2; 32]);
        let mut all = Vec::new();
        for (_, e) in store.log().conversation_events(CONV, 0).expect("events") {
            all.push(e);
        }
        fresh.apply(&all).expect("apply");
        prop_assert_eq!(fresh.conversation(CONV).expect("conv").view(), live);
    }

    /// 5. Every mutation of a valid encoding is rejected with a typed error, or decodes to a
    ///    valid event that is exactly those bytes.
    #[test]
    fn codec_mutations_are_rejected_or_valid(
        s in script(),
        which in any::<prop::sample::Index>(),
        mutation in 0u8..4,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let c = cast();
        let evs = events(&c, &s);
        let ev = &evs[which.index(evs.len())];
        prop_assert_eq!(&Event::decode(ev.bytes()).expect("valid"), ev);
        let mut b = ev.bytes().to_vec();
        let i = at.index(b.len());
        match mutation {
            0 => b[i] ^= byte | 1,
            1 => b.truncate(i),
            2 => b.insert(i, byte),
            _ => { b.remove(i); }
        }
        match Event::decode(&b) {
            Ok(back) => {
                prop_assert_eq!(back.bytes(), b.as_slice());
                prop_assert_eq!(Event::decode(back.bytes()), Ok(back.clone()));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// No byte string makes the decoder panic.
    #[test]
    fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), version_ok in any::<bool>()) {
        let mut b = bytes;
        if version_ok && !b.is_empty() {
            b[0] = 1;
        }
        let _ = Event::decode(&b);
        let _ = Event::decode_batch(&[b.clone(), b]);
    }
}

/// Pages of `len` messages read back from the latest one, each before the first message of
/// the last, give the document's whole view in order; each message read by id is its view.
fn check_pages(store: &mut Store, len: usize) -> Result<(), TestCaseError> {
    let slow = store.conversation(CONV).expect("conv").messages();
    let reader = store.log().reader();
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = reader.page(CONV, before, len).expect("page");
        prop_assert!(page.len() <= len);
        let Some(first) = page.first() else { break };
        before = Some(PageCursor::of(first));
        paged.splice(0..0, page);
    }
    prop_assert_eq!(&paged, &slow);
    for m in &slow {
        let one = reader.message(CONV, m.id).expect("message");
        prop_assert_eq!(one.as_ref(), Some(m));
    }
    Ok(())
}

/// 6. A write transaction interrupted before commit leaves the previous state: by an error in
///    the middle of it, and by a panic in the middle of it.
#[test]
fn interrupted_transaction_leaves_previous_state() {
    let c = cast();
    let s = common::Script {
        messages: vec![0, 1, 2],
        acked: vec![true, true, false],
        relay_order: vec![0, 1, 2],
        receipts: vec![(2, false, 100)],
    };
    let evs = events(&c, &s);
    let log = EventLog::in_memory().expect("log");
    log.append(&evs[..2]).expect("append");
    let before_head = log.head().expect("head");
    let before_outbox = log.outbox().expect("outbox");

    let err = log.write(|t| {
        for e in &evs[2..] {
            t.append(e)?;
            t.enqueue(e, 0)?;
        }
        Err::<(), _>(LogError::Corrupt {
            table: "test",
            detail: "abort".into(),
        })
    });
    assert!(err.is_err());
    assert_eq!(log.head().expect("head"), before_head);
    assert_eq!(log.outbox().expect("outbox"), before_outbox);
    for e in &evs[2..] {
        assert!(!log.contains(&e.id()).expect("contains"));
    }

    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = log.write(|t| {
            t.append(&evs[2])?;
            panic!("power cut");
            #[allow(unreachable_code)]
            Ok(())
        });
    }));
    assert!(panicked.is_err());
    assert_eq!(log.head().expect("head"), before_head);
    assert!(!log.contains(&evs[2].id()).expect("contains"));
    // The log still works afterwards.
    assert!(matches!(
        log.append(&evs[2..3]).expect("append")[0],
        Appended::New { .. }
    ));
}

#[test]
fn append_is_idempotent_and_says_so() {
    let c = cast();
    let evs = events(
        &c,
        &common::Script {
            messages: vec![0],
            acked: vec![true],
            relay_order: vec![0],
            receipts: vec![],
        },
    );
    let log = EventLog::in_memory().expect("log");
    assert!(log
        .append(&evs)
        .expect("append")
        .iter()
        .all(|a| matches!(a, Appended::New { .. })));
    assert!(log
        .append(&evs)
        .expect("append")
        .iter()
        .all(|a| *a == Appended::Duplicate));
    assert_eq!(log.head().expect("head"), evs.len() as u64);
}

#[test]
fn local_send_is_durable_with_its_outbox_entry_and_leaves_on_ack() {
    let c = cast();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.redb");
    let phone = c.devices[0].clone();
    let (send_id, message) = {
        let mut store = Store::new(
            EventLog::open(&path).expect("open"),
            phone.clone(),
            config(&c, 1000),
            [2; 32],
        );
        store
            .create_conversation(CONV, vec![c.devices[2].user()], 1)
            .expect("create");
        let (ev, changes) = store.send(CONV, b"hi".to_vec(), vec![], 2).expect("send");
        assert!(!changes.is_empty());
        assert_eq!(
            store.latest(CONV, 10).expect("latest")[0].status,
            tidings_engine::Status::Pending
        );
        (ev.id(), ev.message().expect("a Send"))
        // Dropped without any shutdown: a crash.
    };
    let mut store = Store::new(
        EventLog::open(&path).expect("reopen"),
        phone,
        config(&c, 1000),
        [2; 32],
    );
    let outbox = store.outbox().expect("outbox");
    assert_eq!(
        outbox.len(),
        3,
        "create, the first epoch's keys and the send are all queued"
    );
    assert_eq!(outbox[2].event, send_id);
    assert_eq!(outbox[2].message, Some(message));
    // The relay acks the send: it leaves the outbox and shows SENT.
    let sent = store.log().get(&send_id).expect("get").expect("present");
    let h = c.relay.header(CONV, 2, None, sent.header().lamport, 99);
    let ack = Event::sign(
        c.relay.signing_key(),
        h,
        tidings_engine::EventKind::ServerAck {
            event: send_id,
            message: Some(message),
            seq: 2,
            server_ts_ms: 99,
        },
    )
    .expect("sign");
    let out = store.apply(&[ack]).expect("apply");
    assert_eq!(out.acked, vec![send_id]);
    assert_eq!(store.outbox().expect("outbox").len(), 2);
    assert_eq!(
        store.conversation(CONV).expect("conv").status(&message),
        Some(tidings_engine::Status::Sent)
    );
}

#[test]
fn untrusted_acks_are_refused() {
    let c = cast();
    let evs = events(
        &c,
        &common::Script {
            messages: vec![0],
            acked: vec![true],
            relay_order: vec![0],
            receipts: vec![],
        },
    );
    let mut cfg = config(&c, 1000);
    cfg.sequencers = vec![c.devices[1].device()];
    let mut store = Store::new(
        EventLog::in_memory().expect("log"),
        c.devices[2].clone(),
        cfg,
        [2; 32],
    );
    let out = store.apply(&evs).expect("apply");
    assert_eq!(out.rejected.len(), 2, "both relay acks are refused");
    assert!(out
        .rejected
        .iter()
        .all(|(_, e)| matches!(e, tidings_engine::StoreError::UntrustedAck { .. })));
}

#[test]
fn foreign_and_newer_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Not a database at all.
    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, vec![0x42u8; 8192]).expect("write");
    assert!(EventLog::open(&junk).is_err());
    // A redb database of someone else's.
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).expect("create");
        let t = db.begin_write().expect("write");
        t.open_table(redb::TableDefinition::<&str, u64>::new("theirs"))
            .expect("table")
            .insert("x", 1)
            .expect("insert");
        t.commit().expect("commit");
    }
    assert!(matches!(EventLog::open(&other), Err(LogError::NotOurs(_))));
    // Ours, from a newer build.
    let newer = dir.path().join("newer.redb");
    drop(EventLog::open(&newer).expect("create"));
    {
        let db = redb::Database::create(&newer).expect("open");
        let t = db.begin_write().expect("write");
        t.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
            .expect("meta")
            .insert("format", 99u32.to_le_bytes().as_slice())
            .expect("insert");
        t.commit().expect("commit");
    }
    assert!(matches!(
        EventLog::open(&newer),
        Err(LogError::NewerFormat { found: 99, .. })
    ));
    // The refused file is left as it was: still refused, never reset.
    assert!(matches!(
        EventLog::open(&newer),
        Err(LogError::NewerFormat { found: 99, .. })
    ));
}

#[test]
fn corrupt_snapshot_is_rebuilt_from_the_log() {
    let c = cast();
    let evs = events(
        &c,
        &common::Script {
            messages: vec![0, 2],
            acked: vec![true, false],
            relay_order: vec![0, 1],
            receipts: vec![(2, true, 100)],
        },
    );
    let mut store = Store::new(
        EventLog::in_memory().expect("log"),
        c.devices[2].clone(),
        config(&c, 1),
        [2; 32],
    );
    store.apply(&evs).expect("apply");
    let live = store.conversation(CONV).expect("conv").view();
    let head = store.log().head().expect("head");
    store
        .log()
        .write(|t| t.put_snapshot(CONV, head, b"\x85\x6f\x4a\x83garbage"))
        .expect("write");
    store.unload_all();
    assert_eq!(store.conversation(CONV).expect("conv").view(), live);
    // A truncated real snapshot, too.
    store.snapshot_all().expect("snapshot");
    store.unload_all();
    let snap = store
        .log()
        .snapshot(CONV)
        .expect("snap")
        .expect("present")
        .1;
    store
        .log()
        .write(|t| t.put_snapshot(CONV, head, &snap[..snap.len() / 2]))
        .expect("write");
    store.unload_all();
    assert_eq!(store.conversation(CONV).expect("conv").view(), live);
}

#[test]
fn sign_rejects_oversized_fields() {
    let key = DeviceKey::from_seed([5; 32], tidings_engine::UserId([5; 32]));
    let h = key.header(CONV, 1, None, 1, 0);
    let members = vec![tidings_engine::UserId([1; 32]); tidings_engine::event::MAX_MEMBERS + 1];
    assert!(matches!(
        Event::sign(
            key.signing_key(),
            h,
            tidings_engine::EventKind::Create { members }
        ),
        Err(DecodeError::FieldTooLarge {
            field: "members",
            ..
        })
    ));
}
