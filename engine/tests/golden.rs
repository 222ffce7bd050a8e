//! Golden fixtures: the exact bytes of version-1 envelopes. A change to the event format makes
//! these fail; if the change is intended, bump EVENT_VERSION and document it in docs/FORMAT.md.

use tidings_engine::{ConversationId, DeviceKey, Event, EventId, EventKind, MessageId, UserId};

fn fixtures() -> Vec<(&'static str, Event)> {
    let key = DeviceKey::from_seed([0x11; 32], UserId([0x22; 32]));
    let conv = ConversationId([0x33; 16]);
    let sign = |counter, prev, kind| {
        let h = key.header(conv, counter, prev, counter + 4, 1_700_000_000_000);
        let kind = h.bind(kind);
        Event::sign(key.signing_key(), h, kind).expect("sign")
    };
    vec![
        (
            "send",
            sign(
                1,
                None,
                EventKind::Send {
                    message: MessageId([0x44; 16]),
                    body: b"Just took off".to_vec(),
                    media: vec![],
                },
            ),
        ),
        (
            "read",
            sign(
                2,
                Some(EventId([0x55; 32])),
                EventKind::Read {
                    up_to: 300,
                    head: None,
                },
            ),
        ),
    ]
}

const GOLDEN: &[(&str, &str)] = &[
    ("send", include_str!("golden/send.hex")),
    ("read", include_str!("golden/read.hex")),
];

#[test]
fn envelopes_match_golden_bytes() {
    let regenerate = std::env::var_os("TIDINGS_REGENERATE_GOLDEN").is_some();
    for (name, ev) in fixtures() {
        let hex_now = hex::encode(ev.bytes());
        if regenerate {
            std::fs::write(format!("tests/golden/{name}.hex"), &hex_now).expect("write golden");
            continue;
        }
        let expected = GOLDEN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, h)| h.trim())
            .expect("fixture");
        assert_eq!(hex_now, expected, "{name}: the envelope bytes changed");
        let bytes = hex::decode(expected).expect("hex");
        assert_eq!(Event::decode(&bytes).expect("golden decodes"), ev);
    }
}
