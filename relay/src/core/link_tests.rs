//! The link mailbox through the core, frame by frame on virtual time: deposits by registered
//! devices only, one take per bundle, expiry, the bounds, and the pre-auth rate limit.

use super::*;
use ed25519_dalek::SigningKey;
use tidings_engine::link::{LinkSecret, LinkSlot};
use tidings_engine::wire::{self, ClientFrame, PROTOCOL_VERSION};

struct Net {
    core: RelayCore,
    now: u64,
    inbox: BTreeMap<SessionId, Vec<ServerFrame>>,
    closed: BTreeMap<SessionId, ErrorCode>,
}

fn user_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

impl Net {
    fn new(limits: Limits) -> Net {
        let key = DeviceKey::from_seed([0xee; 32], UserId([0; 32]));
        Net {
            core: RelayCore::new(RelayStore::in_memory().expect("store"), key, limits)
                .expect("core"),
            now: 1_000,
            inbox: BTreeMap::new(),
            closed: BTreeMap::new(),
        }
    }

    fn frame(&mut self, s: SessionId, f: ClientFrame) -> Vec<ServerFrame> {
        self.core.handle_frame(s, f, self.now);
        self.core.commit().expect("commit");
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Frame { session, frame } => {
                    self.inbox.entry(session).or_default().push(frame)
                }
                Output::Close { session, code, .. } => {
                    self.closed.insert(session, code);
                }
            }
        }
        self.inbox.remove(&s).unwrap_or_default()
    }

    fn session(&mut self, peer: &str, binding: u8) -> SessionId {
        self.core
            .handle_connect(peer.parse().expect("ip"), [binding; 32], [7; 32])
            .expect("connect")
    }

    /// Device `dev` of user `user`, authenticated; registered when `register`.
    fn device(&mut self, user: u8, dev: u8, register: bool) -> SessionId {
        let uk = user_key(user);
        let key = DeviceKey::from_seed([dev; 32], UserId(uk.verifying_key().to_bytes()));
        let s = self.session("127.0.0.1", dev);
        let hello = ClientFrame::Hello {
            protocol_version: PROTOCOL_VERSION,
            device: key.device(),
            user: key.user(),
        };
        let [ServerFrame::Challenge { nonce }] = self.frame(s, hello)[..] else {
            panic!("no challenge")
        };
        let signature = wire::sign_auth(key.signing_key(), &key.user(), &nonce, &[dev; 32]);
        let got = self.frame(s, ClientFrame::Auth { signature });
        assert!(matches!(got[..], [ServerFrame::Welcome(_)]), "{got:?}");
        if register {
            let registration = key.certificate(&uk, 0);
            let got = self.frame(
                s,
                ClientFrame::RegisterDevice {
                    request_id: 1,
                    registration,
                },
            );
            assert!(
                matches!(got[..], [ServerFrame::Registered { .. }]),
                "{got:?}"
            );
        }
        s
    }

    fn deposit(&mut self, s: SessionId, slot: LinkSlot, sealed: Vec<u8>) -> ServerFrame {
        let mut got = self.frame(
            s,
            ClientFrame::LinkDeposit {
                request_id: 9,
                slot,
                sealed,
            },
        );
        assert_eq!(got.len(), 1, "{got:?}");
        got.remove(0)
    }

    /// A take on a fresh connection from `peer`: the bundle, or the code it was closed with.
    fn take(&mut self, peer: &str, slot: LinkSlot) -> Result<Vec<u8>, ErrorCode> {
        let s = self.session(peer, 0x55);
        let got = self.frame(s, ClientFrame::LinkTake { slot });
        let result = match (&got[..], self.closed.get(&s)) {
            ([ServerFrame::LinkBundle { sealed }], None) => Ok(sealed.clone()),
            ([], Some(code)) => Err(*code),
            other => panic!("{other:?}"),
        };
        self.core.handle_disconnect(s);
        result
    }
}

fn slot(n: u8) -> LinkSlot {
    LinkSecret::from_bytes([n; 16]).slot()
}

#[test]
fn a_bundle_is_taken_once_and_then_is_gone() {
    let mut net = Net::new(Limits::default());
    let alice = net.device(1, 10, true);
    let got = net.deposit(alice, slot(1), b"sealed".to_vec());
    let ServerFrame::LinkDeposited { expires_ms, .. } = got else {
        panic!("{got:?}")
    };
    assert_eq!(expires_ms, net.now + Limits::default().link_ttl_ms);
    // The same deposit again (an answer lost with a connection) gets the same answer.
    assert_eq!(net.deposit(alice, slot(1), b"sealed".to_vec()), got);
    assert_eq!(
        net.take("10.0.0.1", slot(2)),
        Err(ErrorCode::LINK_NOT_FOUND)
    );
    assert_eq!(net.take("10.0.0.1", slot(1)), Ok(b"sealed".to_vec()));
    assert_eq!(
        net.take("10.0.0.1", slot(1)),
        Err(ErrorCode::LINK_NOT_FOUND)
    );
    assert_eq!(net.core.n_link_bundles(), 0);
}

#[test]
fn a_bundle_expires_after_the_ttl() {
    let mut net = Net::new(Limits::default().with_link_ttl_ms(60_000));
    let alice = net.device(1, 10, true);
    net.deposit(alice, slot(1), b"x".to_vec());
    net.deposit(alice, slot(2), b"y".to_vec());
    net.now += 59_999;
    assert_eq!(net.take("10.0.0.1", slot(1)), Ok(b"x".to_vec()));
    net.now += 1;
    assert_eq!(
        net.take("10.0.0.2", slot(2)),
        Err(ErrorCode::LINK_NOT_FOUND)
    );
}

#[test]
fn only_a_registered_device_deposits_and_the_mailbox_is_bounded() {
    let limits = Limits {
        max_link_slots: 3,
        max_link_slots_per_user: 2,
        ..Limits::default()
    };
    let mut net = Net::new(limits);
    let stranger = net.device(9, 90, false);
    let got = net.deposit(stranger, slot(1), b"x".to_vec());
    assert!(
        matches!(got, ServerFrame::Refused { code, .. } if code == ErrorCode::NOT_REGISTERED),
        "{got:?}"
    );
    let alice = net.device(1, 10, true);
    let bob = net.device(2, 20, true);
    net.deposit(alice, slot(1), b"a".to_vec());
    net.deposit(alice, slot(2), b"a".to_vec());
    let full = |f: &ServerFrame| matches!(f, ServerFrame::Refused { code, .. } if *code == ErrorCode::LINK_FULL);
    let got = net.deposit(alice, slot(3), b"a".to_vec());
    assert!(full(&got), "per user: {got:?}");
    let got = net.deposit(bob, slot(4), b"b".to_vec());
    assert!(matches!(got, ServerFrame::LinkDeposited { .. }), "{got:?}");
    let got = net.deposit(bob, slot(5), b"b".to_vec());
    assert!(full(&got), "in total: {got:?}");
    // Someone else's slot is not overwritten.
    let got = net.deposit(bob, slot(1), b"mine now".to_vec());
    assert!(
        matches!(got, ServerFrame::Refused { code, .. } if code == ErrorCode::FORBIDDEN),
        "{got:?}"
    );
    assert_eq!(net.take("10.0.0.1", slot(1)), Ok(b"a".to_vec()));
    // A take frees room.
    let got = net.deposit(bob, slot(5), b"b".to_vec());
    assert!(matches!(got, ServerFrame::LinkDeposited { .. }), "{got:?}");
}

#[test]
fn takes_are_rate_limited_per_address_and_read_nothing_after() {
    let mut net = Net::new(Limits::default().with_link_takes(1, 3));
    for _ in 0..3 {
        assert_eq!(
            net.take("10.0.0.1", slot(7)),
            Err(ErrorCode::LINK_NOT_FOUND)
        );
    }
    assert_eq!(net.take("10.0.0.1", slot(7)), Err(ErrorCode::RATE_LIMITED));
    // Another address has its own budget; the first one's refills with time.
    assert_eq!(
        net.take("10.0.0.2", slot(7)),
        Err(ErrorCode::LINK_NOT_FOUND)
    );
    net.now += 1_000;
    assert_eq!(
        net.take("10.0.0.1", slot(7)),
        Err(ErrorCode::LINK_NOT_FOUND)
    );

    // After an answered take the connection reads nothing: not even a Hello.
    let alice = net.device(1, 10, true);
    net.deposit(alice, slot(8), b"z".to_vec());
    let s = net.session("10.0.0.3", 0x66);
    let got = net.frame(s, ClientFrame::LinkTake { slot: slot(8) });
    assert!(
        matches!(got[..], [ServerFrame::LinkBundle { .. }]),
        "{got:?}"
    );
    let key = DeviceKey::from_seed([3; 32], UserId([3; 32]));
    let hello = ClientFrame::Hello {
        protocol_version: PROTOCOL_VERSION,
        device: key.device(),
        user: key.user(),
    };
    assert!(net.frame(s, hello).is_empty());
    assert_eq!(net.closed.get(&s), Some(&ErrorCode::UNEXPECTED_FRAME));
    // A take is not a request of an authenticated session either.
    let got = net.frame(alice, ClientFrame::LinkTake { slot: slot(8) });
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(net.closed.get(&alice), Some(&ErrorCode::UNEXPECTED_FRAME));
}
