//! Shared scenario builder for the engine's property tests.
#![allow(dead_code)]

use proptest::prelude::*;
use tidings_engine::{ConversationId, DeviceKey, Event, EventId, EventKind, MessageId, UserId};

pub const CONV: ConversationId = ConversationId([7; 16]);

/// Two users: Alice with a phone and a laptop, Bob with a phone; and the relay.
pub struct Cast {
    pub devices: Vec<DeviceKey>,
    pub relay: DeviceKey,
}

pub fn cast() -> Cast {
    let alice = UserId([0xa1; 32]);
    let bob = UserId([0xb0; 32]);
    Cast {
        devices: vec![
            DeviceKey::from_seed([1; 32], alice),
            DeviceKey::from_seed([2; 32], alice),
            DeviceKey::from_seed([3; 32], bob),
        ],
        relay: DeviceKey::from_seed([9; 32], UserId([9; 32])),
    }
}

/// A script of what happens in one conversation, before signing.
#[derive(Clone, Debug)]
pub struct Script {
    /// Messages: the sending device index.
    pub messages: Vec<usize>,
    /// For each message: whether the relay acked it, and the order the relay saw them in.
    pub acked: Vec<bool>,
    pub relay_order: Vec<usize>,
    /// Receipts: (device index, read?, fraction of the max seq in 0..=100).
    pub receipts: Vec<(usize, bool, u8)>,
}

pub fn script() -> impl Strategy<Value = Script> {
    (1usize..12).prop_flat_map(|n| {
        (
            proptest::collection::vec(0usize..3, n),
            proptest::collection::vec(any::<bool>(), n),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            proptest::collection::vec((0usize..3, any::<bool>(), 0u8..=100), 0..8),
        )
            .prop_map(|(messages, acked, relay_order, receipts)| Script {
                messages,
                acked,
                relay_order,
                receipts,
            })
    })
}

/// Signs the script's events: a Create (seq 1), the Sends, the relay's acks in relay order, and
/// receipts. Per-device counters and prev hashes chain as a real device would write them.
pub fn events(cast: &Cast, s: &Script) -> Vec<Event> {
    let mut out = Vec::new();
    let mut heads: Vec<(u64, Option<EventId>)> = vec![(0, None); cast.devices.len()];
    let mut lamport = 0u64;
    let mut author = |dev: usize, kind: EventKind, lamport: u64, out: &mut Vec<Event>| {
        let key = &cast.devices[dev];
        let (c, prev) = heads[dev];
        let h = key.header(CONV, c + 1, prev, lamport, 1_000 + lamport);
        // A Send carries the id bound to its header, as a real device writes it.
        let kind = h.bind(kind);
        let ev = Event::sign(key.signing_key(), h, kind).expect("sign");
        heads[dev] = (c + 1, Some(ev.id()));
        out.push(ev.clone());
        ev
    };
    lamport += 1;
    let create = author(
        0,
        EventKind::Create {
            members: vec![cast.devices[0].user(), cast.devices[2].user()],
        },
        lamport,
        &mut out,
    );
    let mut acks = vec![ack(cast, &create, None, 1, 0, None)];
    let mut sends = Vec::new();
    for (i, dev) in s.messages.iter().enumerate() {
        lamport += 1;
        let ev = author(
            *dev,
            EventKind::Send {
                message: MessageId::default(),
                body: format!("message {i}").into_bytes(),
                media: vec![],
            },
            lamport,
            &mut out,
        );
        let message = ev.message().expect("a Send");
        sends.push((ev, message));
    }
    let mut seq = 1;
    for &i in &s.relay_order {
        if s.acked[i] {
            seq += 1;
            let prev = acks.last().map(|a: &Event| a.id());
            let (ev, message) = &sends[i];
            acks.push(ack(cast, ev, Some(*message), seq, seq * 10, prev));
        }
    }
    for &(dev, read, frac) in &s.receipts {
        lamport += 1;
        let up_to = seq * u64::from(frac) / 100;
        let kind = if read {
            EventKind::Read { up_to, head: None }
        } else {
            EventKind::Delivered { up_to, head: None }
        };
        author(dev, kind, lamport, &mut out);
    }
    out.extend(acks);
    out
}

fn ack(
    cast: &Cast,
    ev: &Event,
    message: Option<MessageId>,
    seq: u64,
    ts: u64,
    prev: Option<EventId>,
) -> Event {
    let h = cast.relay.header(CONV, seq, prev, ev.header().lamport, ts);
    Event::sign(
        cast.relay.signing_key(),
        h,
        EventKind::ServerAck {
            event: ev.id(),
            message,
            seq,
            server_ts_ms: ts,
        },
    )
    .expect("sign ack")
}
