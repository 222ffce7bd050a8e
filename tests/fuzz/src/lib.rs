//! The checks behind the fuzz targets: every decoder of untrusted bytes, fed bytes, must give a
//! value or a typed error, never a panic, and what it accepts must round-trip.
//!
//! Each `check_*` function takes the raw fuzz input and panics when an invariant breaks. The
//! cargo-fuzz targets in `fuzz_targets/` call them; `tests/fuzz_smoke.rs` at the workspace root
//! includes this file (`#[path]`) and runs the same checks under proptest in `cargo test`.
//!
//! Inputs are interpreted, not only passed through: the first byte picks a mode, and most modes
//! build a *valid* value (frame, signed event, redb file, automerge document) from the following
//! bytes and then damage it at fuzz-chosen places. Random bytes alone rarely get past a hash or
//! a checksum, so this reaches the code behind them.
//!
//! # Layout
//! - [`wire::check_wire_frames`]: `decode_body` and `FrameDecoder` for both frame directions.
//! - [`events::check_event_envelope`]: `Event::decode`, `decode_trusted`, `decode_batch` and the relay's
//!   cached batch verifier.
//! - [`check_stored_records`]: postcard records of the device log and the relay store, decoded
//!   directly and planted in a real database behind the public read API.
//! - [`check_event_log_file`]: `EventLog` (and a `Store` over it) on a damaged redb file.
//! - [`check_relay_store_file`]: `RelayStore` and `RelayCore::new` on a damaged redb file.
//! - [`check_conversation_doc`]: `ConversationDoc::load` on damaged automerge bytes.
//! - [`blobs::check_blob_pieces`]: blob pieces, range plans and blob stream frames.
//! - [`reconcile::check_peer_reconcile`]: negentropy messages as the peer protocol takes them.
#![allow(clippy::unwrap_used)]

pub mod blobs;
pub mod events;
pub mod reconcile;
pub mod wire;

use automerge::ActorId;
use redb::{Database, StorageBackend, TableDefinition};
use std::sync::{Arc, Mutex, OnceLock};
use tidings_engine::log::ConversationMeta;
use tidings_engine::wire::{DeviceRegistration, SignatureBytes};
use tidings_engine::{
    ConversationDoc, ConversationId, DeviceId, DeviceKey, Event, EventId, EventKind, EventLog,
    MessageId, OutboxEntry, Store, StoreConfig, UserId,
};
use tidings_relay::core::store::{CommitBatch, ConversationRecord, SequencedRecord};
use tidings_relay::core::{RelayCore, RelayStore};
use tidings_relay::Limits;

/// For the file targets: lets a panic raised inside redb unwind instead of aborting at once
/// (libfuzzer-sys's hook aborts on every panic, caught or not). `guarded_open` in the engine
/// catches the panics redb raises while opening a damaged file and returns an error; a redb
/// panic anywhere else is not caught, reaches `fuzz_target!`'s own `catch_unwind` and aborts
/// there, so it is still reported as a crash. Every other panic aborts here, as before.
pub fn let_redb_panics_unwind() {
    let abort_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_redb = info.location().is_some_and(|l| l.file().contains("/redb-"));
        if !in_redb {
            abort_hook(info);
        }
    }));
}

/// Reads an input front to back; past the end every read gives zeros, so any input is usable.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A little-endian integer of `n` bytes (at most 8).
    pub fn uint(&mut self, n: usize) -> u64 {
        (0..n).fold(0u64, |acc, i| acc | (u64::from(self.u8()) << (8 * i)))
    }

    /// A u64 that is often small (one byte picks how many bytes follow).
    pub fn u64(&mut self) -> u64 {
        let n = usize::from(self.u8() % 9);
        self.uint(n)
    }

    /// `N` bytes.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.u8();
        }
        out
    }

    /// A byte string of at most `max` bytes (length from the input).
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = (self.uint(2) as usize).min(max).min(self.data.len());
        let (a, b) = self.data.split_at(len);
        self.data = b;
        a.to_vec()
    }

    /// What is left.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Damages `base` as the rest of the input says: 4 bytes per patch, a 24-bit offset and a byte
/// XORed in (zero inverts the byte). Returns the damaged bytes and whether they differ.
pub fn patch(base: &[u8], patches: &[u8]) -> (Vec<u8>, bool) {
    let mut out = base.to_vec();
    if out.is_empty() {
        return (out, false);
    }
    for p in patches.chunks_exact(4) {
        let at = (usize::from(p[0]) | usize::from(p[1]) << 8 | usize::from(p[2]) << 16) % out.len();
        out[at] ^= if p[3] == 0 { 0xff } else { p[3] };
    }
    let changed = out != base;
    (out, changed)
}

fn string(r: &mut Reader<'_>) -> String {
    String::from_utf8_lossy(&r.bytes(64)).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Stored records

const LOG_OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const LOG_CONVS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("conversations");
const RELAY_CONVS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("conversations");

/// The postcard records of the device log (`OutboxEntry`, `ConversationMeta`) and the relay
/// store (`ConversationRecord`), picked by the first byte: decoded directly (what decodes
/// round-trips). When bit 7 of the first byte is set, the bytes are also written into a real
/// database under the table's name and read back through the public API, which must return
/// exactly what the direct decode gave, or the store's `Corrupt` error (opening databases is
/// slow: the direct path gets most of the executions).
pub fn check_stored_records(data: &[u8]) {
    let mut r = Reader::new(data);
    let first = r.u8();
    let (mode, plant) = (first % 3, first & 0x80 != 0);
    let bytes = r.rest();
    if !plant {
        match mode {
            0 => {
                round_trip!(OutboxEntry, bytes);
            }
            1 => {
                round_trip!(ConversationMeta, bytes);
            }
            _ => {
                round_trip!(ConversationRecord, bytes);
            }
        }
        return;
    }
    match mode {
        0 => {
            let direct = round_trip!(OutboxEntry, bytes);
            let file = planted(empty_log_file(), |db| {
                let txn = db.begin_write().unwrap();
                txn.open_table(LOG_OUTBOX)
                    .unwrap()
                    .insert(1, bytes)
                    .unwrap();
                txn.commit().unwrap();
            });
            let log = EventLog::with_backend(file).expect("the planted log opens");
            match (direct, log.outbox()) {
                (Some(e), Ok(got)) => assert_eq!(got, vec![e]),
                (None, Err(tidings_engine::LogError::Corrupt { table, .. })) => {
                    assert_eq!(table, "outbox")
                }
                (d, got) => panic!("direct {d:?}, through the log {got:?}"),
            }
        }
        1 => {
            let direct = round_trip!(ConversationMeta, bytes);
            let conv = [7u8; 16];
            let file = planted(empty_log_file(), |db| {
                let txn = db.begin_write().unwrap();
                txn.open_table(LOG_CONVS)
                    .unwrap()
                    .insert(&conv, bytes)
                    .unwrap();
                txn.commit().unwrap();
            });
            let log = EventLog::with_backend(file).expect("the planted log opens");
            let one = log.conversation_meta(ConversationId(conv));
            match (direct, log.conversations()) {
                (Some(m), Ok(got)) => {
                    assert_eq!(got, vec![(ConversationId(conv), m.clone())]);
                    assert_eq!(one.expect("meta"), Some(m));
                }
                (None, Err(tidings_engine::LogError::Corrupt { table, .. })) => {
                    assert_eq!(table, "conversations");
                    assert!(one.is_err());
                }
                (d, got) => panic!("direct {d:?}, through the log {got:?}"),
            }
        }
        _ => {
            let direct = round_trip!(ConversationRecord, bytes);
            let conv = [7u8; 16];
            let file = planted(empty_relay_file(), |db| {
                let txn = db.begin_write().unwrap();
                txn.open_table(RELAY_CONVS)
                    .unwrap()
                    .insert(conv, bytes)
                    .unwrap();
                txn.commit().unwrap();
            });
            let db = Database::builder()
                .create_with_backend(file)
                .expect("the planted store opens");
            let store = RelayStore::open(db, false).expect("the planted store opens");
            match (direct, store.conversations()) {
                (Some(rec), Ok(got)) => {
                    assert_eq!(got, vec![(ConversationId(conv), rec)]);
                    // The relay loads it at start (membership, sequencer state).
                    RelayCore::new(store, relay_key(), Limits::default())
                        .expect("a relay starts on a decodable store");
                }
                (None, Err(tidings_relay::core::StoreError::Corrupt(_))) => {
                    assert!(RelayCore::new(store, relay_key(), Limits::default()).is_err());
                }
                (d, got) => panic!("direct {d:?}, through the store {got:?}"),
            }
        }
    }
}

/// Decodes a postcard record of type `$t`; what decodes re-encodes (never longer) and decodes
/// the same. A macro rather than a generic function so that the including test crate needs no
/// direct serde dependency.
macro_rules! round_trip {
    ($t:ty, $bytes:expr) => {{
        let bytes: &[u8] = $bytes;
        match postcard::from_bytes::<$t>(bytes) {
            Ok(value) => {
                let again = postcard::to_stdvec(&value).expect("a decoded record encodes");
                assert!(again.len() <= bytes.len());
                assert_eq!(
                    postcard::from_bytes::<$t>(&again).ok().as_ref(),
                    Some(&value)
                );
                Some(value)
            }
            Err(_) => None,
        }
    }};
}
use round_trip;

/// Opens a copy of `base` as a raw database, lets `f` write into it, and returns the file.
fn planted(base: &[u8], f: impl FnOnce(&Database)) -> MemFile {
    let file = MemFile::from_bytes(base);
    let db = Database::builder()
        .create_with_backend(file.clone())
        .expect("the base file opens");
    f(&db);
    drop(db);
    file
}

// ---------------------------------------------------------------------------------------------
// redb files

/// A redb storage backend over a shared byte vector: a file image that tests can copy and damage.
#[derive(Debug, Clone, Default)]
pub struct MemFile(Arc<Mutex<Vec<u8>>>);

impl MemFile {
    /// A file holding `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> MemFile {
        MemFile(Arc::new(Mutex::new(bytes.to_vec())))
    }

    /// The file's bytes now.
    pub fn bytes(&self) -> Vec<u8> {
        self.data().clone()
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn out_of_range() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end")
}

impl StorageBackend for MemFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.data().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let data = self.data();
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(out.len()).ok_or_else(out_of_range)?;
        out.copy_from_slice(data.get(start..end).ok_or_else(out_of_range)?);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        self.data().resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), std::io::Error> {
        let mut data = self.data();
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(bytes.len()).ok_or_else(out_of_range)?;
        if end > data.len() {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(bytes);
        Ok(())
    }
}

/// The conversation of the fixtures.
pub const CONV: ConversationId = ConversationId([0xc0; 16]);

fn relay_key() -> DeviceKey {
    let k = DeviceKey::from_seed([9; 32], UserId([0; 32]));
    DeviceKey::from_seed([9; 32], UserId(k.device().0))
}

fn alice() -> DeviceKey {
    DeviceKey::from_seed([1; 32], UserId([0xa1; 32]))
}

fn bob_user_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[0xb0; 32])
}

fn bob() -> DeviceKey {
    DeviceKey::from_seed([2; 32], UserId(bob_user_key().verifying_key().to_bytes()))
}

/// The events of the fixture conversation: a create, messages from two users, the relay's acks
/// for all of them, receipts.
pub fn fixture_events() -> &'static [Event] {
    static EVENTS: OnceLock<Vec<Event>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        let (a, b) = (alice(), bob());
        let mut f = Fixture::default();
        f.acked(
            &a,
            EventKind::Create {
                members: vec![a.user(), b.user()],
            },
        );
        for i in 0..12u8 {
            let who = if i % 3 == 0 { &b } else { &a };
            let seq = f.acked(
                who,
                EventKind::Send {
                    message: MessageId([i + 1; 16]),
                    body: format!("message {i}").into_bytes(),
                    media: Vec::new(),
                },
            );
            if i % 4 == 3 {
                f.acked(
                    &b,
                    EventKind::Delivered {
                        up_to: seq,
                        head: None,
                    },
                );
                f.acked(
                    &b,
                    EventKind::Read {
                        up_to: seq - 1,
                        head: None,
                    },
                );
            }
        }
        // One message still waiting for its ack.
        let pending = f.sign(
            &a,
            EventKind::Send {
                message: MessageId([0xee; 16]),
                body: b"pending".to_vec(),
                media: Vec::new(),
            },
        );
        f.events.push(pending);
        f.events
    })
}

/// Builds the fixture: per-device chains, lamport clocks and the relay's acks.
#[derive(Default)]
struct Fixture {
    events: Vec<Event>,
    chains: std::collections::HashMap<DeviceId, (u64, Option<EventId>)>,
    lamport: u64,
    seq: u64,
}

impl Fixture {
    fn sign(&mut self, key: &DeviceKey, kind: EventKind) -> Event {
        self.lamport += 1;
        let (counter, prev) = self.chains.entry(key.device()).or_insert((0, None));
        *counter += 1;
        let header = key.header(CONV, *counter, *prev, self.lamport, 1_000 + self.lamport);
        let kind = header.bind(kind);
        let e = Event::sign(key.signing_key(), header, kind).expect("fixture event");
        *prev = Some(e.id());
        e
    }

    /// Signs an event and the relay's ack for it; the event's sequence.
    fn acked(&mut self, key: &DeviceKey, kind: EventKind) -> u64 {
        let e = self.sign(key, kind);
        self.seq += 1;
        let message = match e.kind() {
            EventKind::Send { message, .. } => Some(*message),
            _ => None,
        };
        let relay = relay_key();
        let (counter, prev) = self.chains.entry(relay.device()).or_insert((0, None));
        *counter += 1;
        let header = relay.header(CONV, *counter, *prev, e.header().lamport, 5_000 + self.seq);
        let ack = Event::sign(
            relay.signing_key(),
            header,
            EventKind::ServerAck {
                event: e.id(),
                message,
                seq: self.seq,
                server_ts_ms: 5_000 + self.seq,
            },
        )
        .expect("fixture ack");
        *prev = Some(ack.id());
        self.events.push(e);
        self.events.push(ack);
        self.seq
    }
}

/// Alice's device log after the fixture: every event applied, a snapshot of the document, an
/// outbox entry and a cursor. Returned as a cleanly closed file image.
pub fn event_log_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| build_event_log(true))
}

/// The same log as a file left open (its "needs repair" flag set), as after a crash: opening it
/// runs redb's recovery, which verifies checksums.
pub fn event_log_file_unclean() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| build_event_log(false))
}

fn build_event_log(clean: bool) -> Vec<u8> {
    let file = MemFile::default();
    let log = EventLog::with_backend(file.clone()).expect("fixture log");
    let mut store = Store::new(
        log,
        alice(),
        StoreConfig::new(relay_key().device()),
        [5; 32],
    );
    // Alice's device verified Bob's device certificate (a Devices answer).
    let cert = bob().certificate(&bob_user_key(), 1);
    store
        .absorb_devices(&[cert], &[], &[])
        .expect("fixture directory");
    let (remote, own): (Vec<Event>, Vec<Event>) = fixture_events()
        .iter()
        .cloned()
        .partition(|e| e.header().author != alice().device());
    // Own events first (as the device wrote them), then what the relay sent: the gate
    // judges the whole order from the Create on.
    store.log().append(&own).expect("fixture own events");
    store.apply(&remote).expect("fixture apply");
    let last = own.last().expect("own events").clone();
    store
        .log()
        .write(|t| {
            t.enqueue(&last, 1)?;
            t.set_cursor(b"pull/c0", 7)
        })
        .expect("fixture outbox");
    store.conversation(CONV).expect("fixture conversation");
    store.snapshot_all().expect("fixture snapshot");
    if clean {
        drop(store);
        file.bytes()
    } else {
        let bytes = file.bytes();
        drop(store);
        bytes
    }
}

fn empty_log_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let file = MemFile::default();
        drop(EventLog::with_backend(file.clone()).expect("empty log"));
        file.bytes()
    })
}

fn empty_relay_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let file = MemFile::default();
        let db = Database::builder()
            .create_with_backend(file.clone())
            .expect("empty relay db");
        drop(RelayStore::open(db, false).expect("empty relay store"));
        file.bytes()
    })
}

/// Everything the device reads from its log, through the public API. Errors are fine; a panic
/// is not.
fn read_event_log(log: EventLog) -> Result<(), Box<dyn std::error::Error>> {
    log.head()?;
    log.outbox()?;
    log.cursor(b"pull/c0")?;
    let convs = log.conversations()?;
    for (c, _) in &convs {
        for (_, e) in log.conversation_events(*c, 0)? {
            assert_eq!(
                e.conversation(),
                *c,
                "an event listed under another conversation"
            );
            log.ack_of(&e.id())?;
            log.get(&e.id())?;
        }
        log.latest_messages(*c, 50)?;
        log.unread_count(*c, alice().user())?;
        log.device_marks(*c, bob().device())?;
        log.chain_head(*c, alice().device())?;
        log.snapshot(*c)?;
        log.gate(*c)?;
        log.epoch_keys(*c)?;
    }
    // The store on top: loads the snapshot (or rebuilds the document from the log).
    let mut store = Store::new(
        log,
        alice(),
        StoreConfig::new(relay_key().device()),
        [5; 32],
    );
    store.outbox()?;
    for (c, _) in convs {
        let view = store.conversation(c)?;
        view.messages();
        store.latest(c, 20)?;
    }
    Ok(())
}

/// The device's event log on a damaged file: mode bit 0 picks the clean or the unclean image,
/// bit 1 truncates it at the first patch's offset; the rest are patches. Opening and reading
/// everything gives data or errors, never a panic.
pub fn check_event_log_file(data: &[u8]) {
    let mut r = Reader::new(data);
    let mode = r.u8();
    let base = if mode & 1 == 0 {
        event_log_file()
    } else {
        event_log_file_unclean()
    };
    let (mut bytes, _) = patch(base, r.rest());
    if mode & 2 != 0 {
        let at = r_offset(data, bytes.len());
        bytes.truncate(at);
    }
    if let Ok(log) = EventLog::with_backend(MemFile::from_bytes(&bytes)) {
        let _ = read_event_log(log);
    }
}

fn r_offset(data: &[u8], len: usize) -> usize {
    let mut r = Reader::new(data.get(1..).unwrap_or_default());
    (r.uint(3) as usize) % len.max(1)
}

/// A relay store holding the fixture conversation: events, acks, a registration, a cursor.
pub fn relay_store_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let file = MemFile::default();
        let db = Database::builder()
            .create_with_backend(file.clone())
            .expect("fixture relay db");
        let store = RelayStore::open(db, false).expect("fixture relay store");
        let events = fixture_events();
        let pairs: Vec<(&Event, &Event)> = events
            .chunks_exact(2)
            .map(|p| (&p[0], &p[1]))
            .filter(|(_, a)| matches!(a.kind(), EventKind::ServerAck { .. }))
            .collect();
        let records: Vec<SequencedRecord<'_>> = pairs
            .iter()
            .enumerate()
            .map(|(i, (e, a))| SequencedRecord {
                conversation: CONV,
                seq: i as u64 + 1,
                index_key: tidings_relay::core::store::index_key(e),
                prev: e.header().prev,
                event: e.bytes(),
                ack: a.bytes(),
            })
            .collect();
        // The fixture users are plain ids, not keys: the relay verifies certificates when
        // it accepts them, not when it loads them.
        let certs = [alice(), bob()].map(|d| DeviceRegistration {
            user: d.user(),
            device: d.device(),
            agreement: d.device().0,
            issued_ms: 0,
            signature: SignatureBytes([0; 64]),
        });
        let rec = ConversationRecord {
            membership: tidings_engine::Membership::create(
                alice().user(),
                &[alice().user(), bob().user()],
            )
            .expect("fixture membership"),
            max_seq: records.len() as u64,
            last_ack: pairs.last().map(|(_, a)| a.id()).expect("acks"),
            last_ts_ms: 5_000 + records.len() as u64,
        };
        store
            .commit(&CommitBatch {
                // Rows as relays before schema 6 wrote them: each with its own ServerAck.
                events: records,
                statements: vec![],
                conversations: vec![(CONV, &rec)],
                membership_changed: vec![CONV],
                former: vec![],
                devices: certs.iter().collect(),
                revocations: vec![],
                cursors: vec![(bob().device(), CONV, 3)],
                invitations: vec![],
                blocks: vec![],
            })
            .expect("fixture commit");
        drop(store);
        file.bytes()
    })
}

/// The relay's store on a damaged file (mode bit 1 truncates, as for the event log). Opening
/// it, reading every table and starting a relay core on it gives data or errors, never a panic.
pub fn check_relay_store_file(data: &[u8]) {
    let mut r = Reader::new(data);
    let mode = r.u8();
    let (mut bytes, _) = patch(relay_store_file(), r.rest());
    if mode & 2 != 0 {
        let at = r_offset(data, bytes.len());
        bytes.truncate(at);
    }
    let Ok(store) = RelayStore::open_backend(MemFile::from_bytes(&bytes), false) else {
        return;
    };
    let _ = read_relay_store(&store);
    let _ = RelayCore::new(store, relay_key(), Limits::default());
}

fn read_relay_store(store: &RelayStore) -> Result<(), tidings_relay::core::StoreError> {
    store.n_events()?;
    for (c, _) in store.conversations()? {
        let mut after = 0;
        loop {
            let (items, _, more) = store.page(&c, after, 5, 4096)?;
            after += items.len() as u64;
            if !more || items.is_empty() {
                break;
            }
        }
    }
    for (d, _) in store.devices()? {
        store.cursors(&d)?;
    }
    let keys: Vec<_> = fixture_events()
        .iter()
        .map(tidings_relay::core::store::index_key)
        .collect();
    store.lookup(&keys)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Automerge documents

/// The fixture conversation's document as a snapshot would hold it.
pub fn doc_bytes() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ConversationDoc::new(CONV, ActorId::from([1u8; 16]));
        for e in fixture_events() {
            doc.fold(e).expect("fixture fold");
        }
        doc.commit();
        doc.save()
    })
}

/// Automerge documents loaded from disk. Mode 0: the bytes as a document. Mode 1: the fixture
/// document damaged by patches. Mode 2: the fixture document cut short. A load gives a document
/// or an error, never a panic; a loaded document saves and loads again to the same view, and
/// still folds events.
pub fn check_conversation_doc(data: &[u8]) {
    let mut r = Reader::new(data);
    let bytes = match r.u8() % 3 {
        0 => r.rest().to_vec(),
        1 => patch(doc_bytes(), r.rest()).0,
        _ => {
            let base = doc_bytes();
            let at = (r.uint(3) as usize) % base.len().max(1);
            base[..at].to_vec()
        }
    };
    let Ok(mut doc) = ConversationDoc::load(CONV, &bytes, ActorId::from([2u8; 16])) else {
        return;
    };
    let (messages, members) = (
        doc.state().messages(),
        doc.state().members().map(<[UserId]>::to_vec),
    );
    let saved = doc.save();
    let again = ConversationDoc::load(CONV, &saved, ActorId::from([3u8; 16]))
        .expect("a document this build saved loads");
    assert_eq!(again.state().messages(), messages);
    assert_eq!(again.state().members().map(<[UserId]>::to_vec), members);
    for e in fixture_events().iter().take(4) {
        let _ = doc.fold(e);
    }
}
