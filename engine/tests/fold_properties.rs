//! Laws of the fold: order independence, idempotence, doc-level merge = event-level union,
//! monotonic statuses, stable pending order.

mod common;

use automerge::ActorId;
use common::{cast, events, script, CONV};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::HashMap;
use tidings_engine::{ConversationDoc, ConversationView, Event, MessageId, Status};

fn fold_all(events: &[Event], actor: u8) -> ConversationDoc {
    let mut doc = ConversationDoc::new(CONV, ActorId::from([actor; 16]));
    for e in events {
        doc.fold(e).expect("fold");
    }
    doc.commit();
    doc
}

fn view(events: &[Event]) -> ConversationView {
    fold_all(events, 1).state().view()
}

/// `picks` chooses events by index (any order, any repetition) — a delivery schedule.
fn schedule(events: &[Event], picks: &[prop::sample::Index]) -> Vec<Event> {
    let mut out: Vec<Event> = picks
        .iter()
        .map(|i| events[i.index(events.len())].clone())
        .collect();
    out.extend(events.iter().cloned());
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/proptest-regressions/fold_properties.txt"))),
        ..ProptestConfig::default()
    })]

    /// 1. Any permutation, with any duplicates, gives the same view.
    #[test]
    fn any_order_any_duplicates_same_view(
        s in script(),
        seed in any::<u64>(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let c = cast();
        let evs = events(&c, &s);
        let reference = view(&evs);
        let mut shuffled = schedule(&evs, &picks);
        // A seeded Fisher-Yates keeps the case reproducible from the proptest seed alone.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(view(&shuffled), reference);
    }

    /// 2. Merging two devices' documents equals folding the union on one device.
    #[test]
    fn doc_merge_equals_event_union(
        s in script(),
        left in prop::collection::vec(any::<bool>(), 64),
        right in prop::collection::vec(any::<bool>(), 64),
    ) {
        let c = cast();
        let evs = events(&c, &s);
        let pick = |mask: &[bool]| -> Vec<Event> {
            evs.iter().enumerate().filter(|(i, _)| mask[i % mask.len()]).map(|(_, e)| e.clone()).collect()
        };
        let (a, b) = (pick(&left), pick(&right));
        let mut union: Vec<Event> = a.clone();
        union.extend(b.iter().cloned());
        let expected = view(&union);

        let mut da = fold_all(&a, 1);
        let mut db = fold_all(&b, 2);
        da.merge(&mut db).expect("merge");
        prop_assert_eq!(da.state().view(), expected.clone());
        // The other way round, and after a save/load round trip of the merged document.
        let mut da2 = fold_all(&a, 1);
        db.merge(&mut da2).expect("merge");
        prop_assert_eq!(db.state().view(), expected.clone());
        let bytes = db.save();
        let loaded = ConversationDoc::load(CONV, &bytes, ActorId::from([3u8; 16])).expect("load");
        prop_assert_eq!(loaded.state().view(), expected);
    }

    /// 3. For every prefix of every delivery order, no status goes down, no message disappears,
    ///    and pending messages keep their relative order.
    #[test]
    fn statuses_are_monotonic(
        s in script(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let c = cast();
        let evs = events(&c, &s);
        let order = schedule(&evs, &picks);
        let mut doc = ConversationDoc::new(CONV, ActorId::from([1u8; 16]));
        let mut seen: HashMap<MessageId, Status> = HashMap::new();
        let mut pending_order: Vec<MessageId> = Vec::new();
        for e in &order {
            let changes = doc.fold(e).expect("fold");
            for ch in changes {
                if let tidings_engine::Change::StatusChanged { from, to, .. } = ch {
                    prop_assert!(to.rank() >= from.rank(), "{from:?} -> {to:?}");
                }
            }
            let msgs = doc.state().messages();
            for m in &msgs {
                if let Some(prev) = seen.get(&m.id) {
                    prop_assert!(m.status.rank() >= prev.rank(), "{:?} went {:?} -> {:?}", m.id, prev, m.status);
                }
            }
            prop_assert!(msgs.len() >= seen.len());
            seen = msgs.iter().map(|m| (m.id, m.status)).collect();
            // Pending messages: the survivors of the previous pending list keep their order.
            let now_pending: Vec<MessageId> = msgs.iter().filter(|m| m.seq.is_none()).map(|m| m.id).collect();
            let survivors: Vec<MessageId> = pending_order.iter().copied().filter(|m| now_pending.contains(m)).collect();
            let now_filtered: Vec<MessageId> = now_pending.iter().copied().filter(|m| survivors.contains(m)).collect();
            prop_assert_eq!(survivors, now_filtered);
            pending_order = now_pending;
        }
    }
}

#[test]
fn statuses_walk_the_ticks() {
    let c = cast();
    // One message from Alice's phone, acked, delivered to Bob, read by Bob.
    let s = common::Script {
        messages: vec![0],
        acked: vec![true],
        relay_order: vec![0],
        receipts: vec![],
    };
    let evs = events(&c, &s);
    let mut doc = ConversationDoc::new(CONV, ActorId::from([1u8; 16]));
    let (create, send, acks) = (&evs[0], &evs[1], &evs[2..]);
    doc.fold(create).expect("fold");
    doc.fold(send).expect("fold");
    let id = send.message().expect("a Send");
    assert_eq!(doc.state().status(&id), Some(Status::Pending));
    for a in acks {
        doc.fold(a).expect("fold");
    }
    assert_eq!(doc.state().status(&id), Some(Status::Sent));
    let bob = &c.devices[2];
    let seq = doc.state().message(&id).and_then(|m| m.seq).expect("seq");
    let receipt = |kind, counter| {
        let h = bob.header(CONV, counter, None, 10 + counter, 0);
        Event::sign(bob.signing_key(), h, kind).expect("sign")
    };
    doc.fold(&receipt(
        tidings_engine::EventKind::Delivered {
            up_to: seq,
            head: None,
        },
        1,
    ))
    .expect("fold");
    assert_eq!(doc.state().status(&id), Some(Status::Delivered));
    assert_eq!(doc.state().unread_count(bob.user()), 1);
    doc.fold(&receipt(
        tidings_engine::EventKind::Read {
            up_to: seq,
            head: None,
        },
        2,
    ))
    .expect("fold");
    assert_eq!(doc.state().status(&id), Some(Status::Read));
    assert_eq!(doc.state().unread_count(bob.user()), 0);
    // An older receipt arriving late changes nothing and writes nothing.
    let before = doc.uncommitted();
    let changes = doc
        .fold(&receipt(
            tidings_engine::EventKind::Delivered {
                up_to: 1,
                head: None,
            },
            3,
        ))
        .expect("fold");
    assert!(changes.is_empty());
    assert_eq!(doc.uncommitted(), before);
    let r = doc.state().recipients(&id);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, Status::Read);
}
