//! Bounded documents: a sequenced message is one automerge operation, no document holds more
//! than a segment's worth of sequences, and the head is rebuilt instead of growing.

mod common;

use automerge::ActorId;
use common::{cast, events, Script, CONV};
use tidings_engine::doc::{MAX_HEAD_OPS, SEGMENT_SEQS};
use tidings_engine::{ConversationDoc, Event, EventKind, PartId};

fn script(n: usize) -> Script {
    Script {
        messages: (0..n).map(|i| [0, 2][i % 2]).collect(),
        acked: vec![true; n],
        relay_order: (0..n).collect(),
        receipts: vec![],
    }
}

fn doc() -> ConversationDoc {
    ConversationDoc::new(CONV, ActorId::from([1u8; 16]))
}

/// One page (the script's Sends and their acks) folded between two commits.
fn fold_page(doc: &mut ConversationDoc, events: &[Event]) {
    for e in events {
        doc.fold(e).expect("fold");
    }
    doc.commit();
}

#[test]
fn a_sequenced_page_is_one_operation_per_message() {
    let c = cast();
    let n = 40;
    let evs = events(&c, &script(n));
    let mut d = doc();
    fold_page(&mut d, &evs);
    // The Create (head) and one record per message (its segment); the acks write nothing
    // of their own, and the Create's ack places no message.
    assert_eq!(d.n_ops(), 1 + n as u64);
    assert_eq!(d.state().messages().len(), n);
    assert!(d.state().messages().iter().all(|m| m.seq.is_some()));
}

#[test]
fn the_order_within_a_page_does_not_matter() {
    let c = cast();
    let n = 20;
    let mut evs = events(&c, &script(n));
    // Acks first, as `Store::apply` sorts a batch.
    evs.sort_by_key(|e| !e.kind().is_sequencing());
    let mut d = doc();
    fold_page(&mut d, &evs);
    assert_eq!(d.n_ops(), 1 + n as u64);
}

#[test]
fn a_send_placed_later_costs_one_operation_at_placement() {
    let c = cast();
    let evs = events(&c, &script(1));
    let (sends, acks): (Vec<Event>, Vec<Event>) =
        evs.into_iter().partition(|e| !e.kind().is_sequencing());
    let mut d = doc();
    fold_page(&mut d, &sends);
    assert_eq!(
        d.n_ops(),
        2,
        "the Create and the pending message, in the head"
    );
    fold_page(&mut d, &acks);
    assert_eq!(d.n_ops(), 3, "one put into the segment at placement");
    assert!(d.state().messages()[0].seq.is_some());
}

#[test]
fn no_segment_holds_more_than_its_sequences() {
    let c = cast();
    let n = 2 * SEGMENT_SEQS as usize + 10;
    let evs = events(&c, &script(n));
    let mut d = doc();
    for page in evs.chunks(500) {
        fold_page(&mut d, page);
    }
    let sizes = d.part_sizes();
    let segments: Vec<usize> = sizes
        .iter()
        .filter(|(p, _)| matches!(p, PartId::Segment(_)))
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(segments.len(), 3);
    assert!(
        segments.iter().all(|k| *k as u64 <= SEGMENT_SEQS),
        "{sizes:?}"
    );
    // The whole conversation is still there, and survives a save and load.
    let view = d.state().view();
    assert_eq!(view.messages.len(), n);
    let loaded = ConversationDoc::load(CONV, &d.save(), ActorId::from([2u8; 16])).expect("load");
    assert_eq!(loaded.state().view(), view);
}

#[test]
fn the_head_is_rebuilt_instead_of_growing() {
    let c = cast();
    // Own sends committed before their places: each leaves its head record behind.
    let n = MAX_HEAD_OPS as usize + 100;
    let evs = events(&c, &script(n));
    let (sends, acks): (Vec<Event>, Vec<Event>) =
        evs.into_iter().partition(|e| !e.kind().is_sequencing());
    let mut d = doc();
    for (i, s) in sends.iter().enumerate() {
        fold_page(&mut d, std::slice::from_ref(s));
        if let Some(a) = acks.get(i) {
            fold_page(&mut d, std::slice::from_ref(a));
        }
    }
    fold_page(&mut d, &acks);
    let head = d
        .part_sizes()
        .into_iter()
        .find(|(p, _)| *p == PartId::Head)
        .map(|(_, n)| n)
        .expect("a head");
    assert!(head as u64 <= MAX_HEAD_OPS, "head holds {head} keys");
    let view = d.state().view();
    assert_eq!(view.messages.len(), n);
    assert!(view.messages.iter().all(|m| m.seq.is_some()));
    let loaded = ConversationDoc::load(CONV, &d.save(), ActorId::from([2u8; 16])).expect("load");
    assert_eq!(loaded.state().view(), view);
}

#[test]
fn receipts_between_two_commits_are_one_operation_per_device() {
    let c = cast();
    let n = 10;
    let evs = events(&c, &script(n));
    let mut d = doc();
    fold_page(&mut d, &evs);
    let before = d.n_ops();
    let bob = &c.devices[2];
    let receipts: Vec<Event> = (1..=n as u64)
        .map(|up_to| {
            let h = bob.header(CONV, 100 + up_to, None, 100 + up_to, 0);
            Event::sign(
                bob.signing_key(),
                h,
                EventKind::Delivered { up_to, head: None },
            )
            .expect("sign")
        })
        .collect();
    fold_page(&mut d, &receipts);
    assert_eq!(d.n_ops(), before + 1);
    let marks = d.state().device_marks(&bob.device()).expect("marks");
    assert_eq!(marks.delivered, n as u64);
}
