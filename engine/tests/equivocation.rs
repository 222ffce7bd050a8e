//! What a device shows when the relay equivocates: a second signed statement over sequences it
//! already placed, with two events swapped. The device must report it and keep showing every
//! message it holds, at the places it was shown first.

use tidings_engine::{
    ChainIssue, ConversationId, DeviceKey, Event, EventKind, EventLog, MessageId, SeqEntry,
    ServerSeq, Store, StoreConfig, UserId,
};

const CONV: ConversationId = ConversationId([7; 16]);
const T0: u64 = 1_000_000;

fn relay() -> DeviceKey {
    DeviceKey::from_seed([9; 32], UserId([9; 32]))
}

fn bob_user_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[2; 32])
}

fn bob() -> DeviceKey {
    DeviceKey::from_seed([2; 32], UserId(bob_user_key().verifying_key().to_bytes()))
}

/// This device's store (Alice's), with Bob's device certificate in its directory.
fn store() -> Store {
    let key = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let log = EventLog::in_memory().expect("in-memory log");
    let mut config = StoreConfig::new(relay().device());
    config.encrypt = false;
    let mut store = Store::new(log, key, config, [1; 32]);
    let cert = bob().certificate(&bob_user_key(), 1);
    store.absorb_devices(&[cert], &[], &[]).expect("directory");
    store
}

/// Bob's event at `counter` after `prev`.
fn bobs(counter: u64, prev: Option<&Event>, kind: EventKind) -> Event {
    let bob = bob();
    let h = bob.header(CONV, counter, prev.map(|e| e.id()), counter, T0);
    let kind = h.bind(kind);
    Event::sign(bob.signing_key(), h, kind).expect("sign")
}

fn message(text: &[u8]) -> EventKind {
    EventKind::Send {
        message: MessageId([0; 16]),
        body: text.to_vec(),
        media: vec![],
    }
}

/// The relay's statement placing `events` from `first` on, after the statement `prev`.
fn statement(events: &[&Event], first: ServerSeq, prev: Option<&Event>) -> Event {
    let relay = relay();
    let entries = events
        .iter()
        .map(|e| SeqEntry {
            event: e.id(),
            message: e.message(),
            server_ts_ms: T0,
        })
        .collect();
    let header = relay.header(CONV, first, prev.map(|p| p.id()), 1, T0);
    Event::sign(
        relay.signing_key(),
        header,
        EventKind::Sequenced { entries },
    )
    .expect("sign statement")
}

fn places(store: &mut Store) -> Vec<(MessageId, Option<ServerSeq>)> {
    let c = store.conversation(CONV).expect("conversation");
    c.messages().iter().map(|m| (m.id, m.seq)).collect()
}

/// Found by the simulator's equivocating relay (tests/sim, seed 193): the log kept the first
/// places and reported the second statement, but the statement was still folded into the
/// view, whose two places per message left one message at a sequence the other held: that
/// message vanished from the view.
#[test]
fn a_statement_contradicting_held_places_is_reported_and_changes_no_view() {
    let mut store = store();
    let create = bobs(
        1,
        None,
        EventKind::Create {
            members: vec![bob().user(), UserId([1; 32])],
        },
    );
    let m1 = bobs(2, Some(&create), message(b"first"));
    let m2 = bobs(3, Some(&m1), message(b"second"));
    let opening = statement(&[&create], 1, None);
    let honest = statement(&[&m1, &m2], 2, Some(&opening));
    let swapped = statement(&[&m2, &m1], 2, Some(&opening));
    let out = store
        .apply(&[create, m1.clone(), m2.clone(), opening, honest])
        .expect("honest history");
    assert!(out.chain_issues.is_empty(), "{:?}", out.chain_issues);
    let before = places(&mut store);
    assert_eq!(
        before,
        vec![
            (m1.message().expect("m1"), Some(2)),
            (m2.message().expect("m2"), Some(3))
        ]
    );
    let out = store.apply(&[swapped]).expect("second history");
    assert!(
        out.chain_issues
            .iter()
            .any(|i| matches!(i, ChainIssue::Fork { .. } | ChainIssue::Equivocation { .. })),
        "the second history went unreported: {:?}",
        out.chain_issues
    );
    assert_eq!(places(&mut store), before, "the view changed");
}

/// A statement continuing the relay's other history breaks the link to the one shown here.
#[test]
fn the_statement_after_another_history_is_a_broken_link() {
    let mut store = store();
    let create = bobs(
        1,
        None,
        EventKind::Create {
            members: vec![bob().user(), UserId([1; 32])],
        },
    );
    let m1 = bobs(2, Some(&create), message(b"first"));
    let m2 = bobs(3, Some(&m1), message(b"second"));
    let m3 = bobs(4, Some(&m2), message(b"third"));
    let opening = statement(&[&create], 1, None);
    let honest = statement(&[&m1, &m2], 2, Some(&opening));
    let swapped = statement(&[&m2, &m1], 2, Some(&opening));
    let next = statement(&[&m3], 4, Some(&honest));
    let out = store
        .apply(&[create, m1, m2, opening, swapped])
        .expect("the other history");
    assert!(out.chain_issues.is_empty(), "{:?}", out.chain_issues);
    let out = store.apply(&[m3, next]).expect("the next statement");
    assert!(
        out.chain_issues
            .iter()
            .any(|i| matches!(i, ChainIssue::BrokenLink { counter: 4, .. })),
        "{:?}",
        out.chain_issues
    );
}

/// Found by the simulator's equivocating relay (tests/sim, seed 566): the device stored the
/// statement that broke the relay's chain and queued the report, then its process died (a
/// power cut later in the same call) before the app took the report. The log kept the broken
/// chain, and nothing ever reported it again.
#[test]
fn a_chain_report_survives_a_restart_before_the_app_took_it() {
    use tidings_engine::{DeviceConfig, DeviceCore, DeviceEvent};
    let mut store = store();
    let create = bobs(
        1,
        None,
        EventKind::Create {
            members: vec![bob().user(), UserId([1; 32])],
        },
    );
    let m1 = bobs(2, Some(&create), message(b"first"));
    let m2 = bobs(3, Some(&m1), message(b"second"));
    let opening = statement(&[&create], 1, None);
    let swapped = statement(&[&m2, &m1], 2, Some(&opening));
    let honest = statement(&[&m1, &m2], 2, Some(&opening));
    store
        .apply(&[create, m1, m2, opening, swapped])
        .expect("the other history");
    let out = store.apply(&[honest]).expect("the honest statement");
    assert!(!out.chain_issues.is_empty(), "nothing found");
    // The process dies here; the next one starts over the same log.
    let mut core = DeviceCore::new(store, relay().device(), DeviceConfig::default(), 1);
    let reported: Vec<ChainIssue> = std::iter::from_fn(|| core.poll_event())
        .filter_map(|e| match e {
            DeviceEvent::Chain(issue) => Some(issue),
            _ => None,
        })
        .collect();
    assert_eq!(reported, out.chain_issues, "the report was lost");
}
