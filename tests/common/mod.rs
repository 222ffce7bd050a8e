//! Shared helpers for the end-to-end tests: cast of users and devices, and a sans-IO world
//! that wires device cores to a relay core on virtual time.
#![allow(dead_code)]

pub mod media;
pub mod net;

use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use tidings::engine::peer::{PeerFrame, PeerSession};
use tidings::engine::wire::{
    frame_bytes, DeviceRegistration, FrameDecoder, UserChange, MAX_FRAME_LEN,
};
use tidings::engine::{
    ConversationId, DeviceConfig, DeviceCore, DeviceEvent, DeviceId, DeviceKey, EventKind,
    EventLog, MessageId, ServerSeq, Store, StoreConfig, UserId,
};
use tidings::relay::core::{Output, RelayCore, RelayStore, SessionId};
use tidings::relay::Limits;

/// A user: identity key and its id.
pub struct User {
    pub key: SigningKey,
    pub id: UserId,
}

/// A peer-frame filter: `Items` lose the events whose envelope `drop` names (their statements
/// still pass), so the receiver ends up holding authors' events with holes.
pub fn dropping(drop: impl Fn(&[u8]) -> bool) -> impl Fn(PeerFrame) -> PeerFrame {
    move |f| match f {
        PeerFrame::Items { events, records } => PeerFrame::Items {
            events: events.into_iter().filter(|e| !drop(&e.0)).collect(),
            records,
        },
        f => f,
    }
}

/// A peer frame through the codec, as the transport carries it.
pub fn carried(frame: PeerFrame) -> PeerFrame {
    let bytes = frame_bytes(&frame).expect("encode");
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    decoder.push(&bytes);
    decoder
        .poll_frame::<PeerFrame>()
        .expect("decode")
        .expect("a whole frame")
}

pub fn user(seed: u8) -> User {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let id = UserId(key.verifying_key().to_bytes());
    User { key, id }
}

/// A device key of `user`, with the registration its user signed for it.
pub fn device(user: &User, seed: u8) -> (DeviceKey, DeviceRegistration) {
    let key = DeviceKey::from_seed([seed; 32], user.id);
    let reg = key.certificate(&user.key, 0);
    (key, reg)
}

pub const CONV: ConversationId = ConversationId([0xc0; 16]);

/// One device in the sans-IO world.
pub struct SimDevice {
    pub core: DeviceCore,
    pub session: Option<SessionId>,
    pub reachable: bool,
    pub events: Vec<DeviceEvent>,
}

impl SimDevice {
    /// Keeps what the core reports; like an app whose user takes every invitation, accepts
    /// each one as it arrives (the relay holds the conversation back until then).
    fn take_events(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            if let DeviceEvent::User(UserChange::Invited(inv)) = &ev {
                self.core.accept(inv.conversation);
            }
            self.events.push(ev);
        }
    }
}

/// Devices and a relay core, connected by perfect in-memory links, on virtual time.
pub struct World {
    pub relay: RelayCore,
    pub devices: Vec<SimDevice>,
    pub now: u64,
    sessions: HashMap<SessionId, usize>,
}

impl World {
    pub fn new(relay_seed: u8) -> World {
        let relay_key = DeviceKey::from_seed([relay_seed; 32], UserId([0; 32]));
        let relay_key = DeviceKey::from_seed([relay_seed; 32], UserId(relay_key.device().0));
        let relay = RelayCore::new(
            RelayStore::in_memory().expect("relay store"),
            relay_key,
            Limits::default(),
        )
        .expect("relay core");
        World {
            relay,
            devices: Vec::new(),
            now: 1_000_000,
            sessions: HashMap::new(),
        }
    }

    /// Adds a device of `user` whose key comes from `seed` ([`device`]).
    pub fn add_device_of(&mut self, user: &User, seed: u8) -> usize {
        let (key, reg) = device(user, seed);
        self.add_device(key, reg)
    }

    pub fn add_device(&mut self, key: DeviceKey, reg: DeviceRegistration) -> usize {
        let relay_id = self.relay.relay_id();
        let store = Store::new(
            EventLog::in_memory().expect("log"),
            key,
            StoreConfig::new(relay_id),
            [4; 32],
        );
        let config = DeviceConfig {
            registration: Some(reg),
            ..DeviceConfig::default()
        };
        let idx = self.devices.len();
        self.devices.push(SimDevice {
            core: DeviceCore::new(store, relay_id, config, idx as u64),
            session: None,
            reachable: false,
            events: Vec::new(),
        });
        idx
    }

    /// One online device per user (keys from seeds 11, 21, 31, …), the first user creating
    /// [`CONV`] with the others as members, and the world run until they all have it.
    /// Returns the devices, in the users' order.
    pub fn online_in_conversation<const N: usize>(&mut self, users: [&User; N]) -> [usize; N] {
        let mut devices = [0; N];
        for ((slot, u), i) in devices.iter_mut().zip(users).zip(0u8..) {
            *slot = self.add_device_of(u, 10 * (i + 1) + 1);
        }
        for d in &devices {
            self.set_online(*d, true);
        }
        let members = users.iter().skip(1).map(|u| u.id).collect();
        let now = self.now;
        self.devices[devices[0]]
            .core
            .create_conversation(CONV, members, now)
            .expect("create");
        self.run(5_000);
        devices
    }

    /// Device `idx`'s id.
    pub fn device_id(&self, idx: usize) -> DeviceId {
        self.devices[idx].core.store().key().device()
    }

    /// Runs one peer session between devices `a` and `b` to its end, every frame through the
    /// codec ([`carried`]), and those from `a` to `b` through `tamper` too. Returns the events
    /// `b` received.
    pub fn peer_sync(
        &mut self,
        a: usize,
        b: usize,
        tamper: impl Fn(PeerFrame) -> PeerFrame,
    ) -> u64 {
        self.peer_sync_both(a, b, tamper).1
    }

    /// [`World::peer_sync`], returning the events each side received: (`a`'s, `b`'s).
    pub fn peer_sync_both(
        &mut self,
        a: usize,
        b: usize,
        tamper: impl Fn(PeerFrame) -> PeerFrame,
    ) -> (u64, u64) {
        let (ida, idb) = (self.device_id(a), self.device_id(b));
        let mut sa = PeerSession::new(&mut self.devices[a].core, idb).expect("a admits b");
        let mut sb = PeerSession::new(&mut self.devices[b].core, ida).expect("b admits a");
        let now = self.now;
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(f) = sa.poll_transmit() {
                sb.handle_frame(&mut self.devices[b].core, tamper(carried(f)), now)
                    .expect("b takes a's frame");
                moved = true;
            }
            while let Some(f) = sb.poll_transmit() {
                sa.handle_frame(&mut self.devices[a].core, carried(f), now)
                    .expect("a takes b's frame");
                moved = true;
            }
            if !moved {
                break;
            }
        }
        assert!(sa.is_done() && sb.is_done(), "both sides said Done");
        (sa.n_received(), sb.n_received())
    }

    /// Device `d` sends `text` in [`CONV`], 10 ms after the last thing that happened.
    pub fn send_text(&mut self, d: usize, text: &str) -> MessageId {
        self.now += 10;
        let now = self.now;
        self.devices[d]
            .core
            .send(CONV, text.as_bytes().to_vec(), vec![], now)
            .expect("send")
    }

    /// The cursor device `d` last confirmed to the relay in [`CONV`] (`Received`; 0 if none).
    pub fn relay_cursor(&self, d: usize) -> ServerSeq {
        self.relay
            .store()
            .cursors(&self.device_id(d))
            .expect("cursors")
            .get(&CONV)
            .copied()
            .unwrap_or(0)
    }

    /// The relay's highest sequence of [`CONV`].
    pub fn relay_head(&self) -> ServerSeq {
        self.relay
            .store()
            .conversation(&CONV)
            .expect("read")
            .expect("conv")
            .max_seq
    }

    /// The messages device `d`'s document of [`CONV`] shows, in order, with their places.
    pub fn shown_places(&mut self, d: usize) -> Vec<(MessageId, Option<ServerSeq>)> {
        self.devices[d]
            .core
            .store_mut()
            .conversation(CONV)
            .expect("conversation")
            .messages()
            .iter()
            .map(|m| (m.id, m.seq))
            .collect()
    }

    /// The messages device `d`'s document of [`CONV`] shows, in order.
    pub fn shown_ids(&mut self, d: usize) -> Vec<MessageId> {
        self.shown_places(d).into_iter().map(|(m, _)| m).collect()
    }

    /// Alice's phone (key seed 11) and laptop (12) and Bob's phone (21), all online; the phone
    /// creates [`CONV`] with Bob and the world runs until everyone has it. Returns
    /// `[phone, laptop, bob_phone]`.
    pub fn phone_laptop_and_bob(&mut self, alice: &User, bob: &User) -> [usize; 3] {
        let devices = [
            self.add_device_of(alice, 11),
            self.add_device_of(alice, 12),
            self.add_device_of(bob, 21),
        ];
        for d in devices {
            self.set_online(d, true);
        }
        let now = self.now;
        self.devices[devices[0]]
            .core
            .create_conversation(CONV, vec![bob.id], now)
            .expect("create");
        self.run(5_000);
        devices
    }

    /// Alice's phone (seed 11) and Bob's (21), online, sharing `conv`, which the phone
    /// created.
    pub fn phone_and_bob(&mut self, alice: &User, bob: &User, conv: ConversationId) -> [usize; 2] {
        let devices = [self.add_device_of(alice, 11), self.add_device_of(bob, 21)];
        for d in devices {
            self.set_online(d, true);
        }
        let now = self.now;
        self.devices[devices[0]]
            .core
            .create_conversation(conv, vec![bob.id], now)
            .expect("create");
        self.run(5_000);
        devices
    }

    /// Device `who` sends `n` messages in `c` ("`tag` i", i = 0..n) in one group commit, 10 ms
    /// after the last action (the relay is not run).
    pub fn send_batch(&mut self, who: usize, c: ConversationId, n: usize, tag: &str) {
        self.now += 10;
        let batch = (0..n)
            .map(|i| tidings::engine::store::Outgoing {
                conversation: c,
                body: format!("{tag} {i}").into_bytes(),
                media: vec![],
            })
            .collect();
        let now = self.now;
        for r in self.devices[who].core.send_all(batch, now) {
            r.expect("send");
        }
    }

    /// The envelopes of the `Send` events of `messages` that device `author` wrote, as device
    /// `idx`'s log holds them.
    pub fn send_envelopes(
        &self,
        idx: usize,
        author: usize,
        messages: &[MessageId],
    ) -> Vec<Vec<u8>> {
        self.devices[idx]
            .core
            .store()
            .log()
            .author_events_after(CONV, self.device_id(author), 0, usize::MAX)
            .expect("events")
            .into_iter()
            .filter(|e| {
                matches!(e.kind(), EventKind::Send { message, .. } if messages.contains(message))
            })
            .map(|e| e.bytes().to_vec())
            .collect()
    }

    /// Cuts or restores a device's network (the OS signal goes to the core too).
    pub fn set_online(&mut self, idx: usize, online: bool) {
        let now = self.now;
        let d = &mut self.devices[idx];
        d.reachable = online;
        d.core
            .network_changed(online, now)
            .expect("network_changed");
        if !online {
            if let Some(s) = d.session.take() {
                self.sessions.remove(&s);
                self.relay.handle_disconnect(s);
                d.core.handle_disconnected(now).expect("disconnected");
            }
        }
    }

    /// Moves frames until nothing moves, advancing time by `step_ms` between rounds, for at
    /// most `max_ms` of virtual time.
    pub fn run(&mut self, max_ms: u64) {
        let end = self.now + max_ms;
        loop {
            let moved = self.round();
            if !moved {
                // Jump to the next timer, if any is due before the end.
                let next = self
                    .devices
                    .iter_mut()
                    .filter_map(|d| d.core.poll_timeout())
                    .filter(|t| *t > self.now)
                    .min();
                match next {
                    Some(t) if t <= end => self.now = t,
                    _ => break,
                }
            }
            if self.now > end {
                break;
            }
        }
    }

    fn round(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        for idx in 0..self.devices.len() {
            let d = &mut self.devices[idx];
            if d.session.is_none() && d.reachable && d.core.poll_connect(now) {
                let binding = [idx as u8 + 1; 32];
                let s = self
                    .relay
                    .handle_connect("127.0.0.1".parse().expect("ip"), binding, [idx as u8; 32])
                    .expect("connect");
                d.session = Some(s);
                self.sessions.insert(s, idx);
                d.core.handle_connected(binding, now);
                moved = true;
            }
            d.core.handle_timeout(now).expect("timeout");
            while let Some(frame) = d.core.poll_transmit() {
                if let Some(s) = d.session {
                    self.relay.handle_frame(s, frame, now);
                    moved = true;
                }
            }
            d.take_events();
        }
        if self.relay.has_staged() {
            self.relay.commit().expect("relay commit");
        }
        while let Some(out) = self.relay.poll_output() {
            moved = true;
            match out {
                Output::Frame { session, frame } => {
                    if let Some(&idx) = self.sessions.get(&session) {
                        let d = &mut self.devices[idx];
                        if let Err(e) = d.core.handle_frame(frame, now) {
                            panic!("device {idx} refused a frame: {e}");
                        }
                        d.take_events();
                    }
                }
                Output::Close {
                    session,
                    code,
                    message,
                } => {
                    if let Some(idx) = self.sessions.remove(&session) {
                        panic!("relay closed device {idx}: {code:?} {message}");
                    }
                }
            }
        }
        moved
    }
}
