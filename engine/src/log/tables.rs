//! The log's redb tables and their key and value types (layouts in `docs/FORMAT.md`).

use redb::TableDefinition;

pub(super) type Conv = &'static [u8; 16];
pub(super) type Id32 = &'static [u8; 32];
/// (conversation, device, counter)
pub(super) type AuthorKey = (Conv, Id32, u64);
/// (conversation, message id)
pub(super) type UnseqKey = (Conv, &'static [u8; 16]);
/// (user, delivered, read)
pub(super) type MarksValue = (Id32, u64, u64);

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
// The events themselves (`entries`, `event_pos`): see `super::entries`.
/// (conversation, fold position) → event id: the events admitted to the conversation's fold,
/// in the order they were admitted (own events and relay acks at once, others' events when
/// the [`Gate`] passed them)
pub(super) const CONV_LOG: TableDefinition<(&[u8; 16], u64), &[u8; 32]> =
    TableDefinition::new("conv_log");
/// (conversation, author device, counter) → event id
pub(super) const BY_AUTHOR: TableDefinition<AuthorKey, &[u8; 32]> =
    TableDefinition::new("by_author");
/// (conversation, server seq) → id of the sequenced event (any kind)
pub(super) const BY_SEQ: TableDefinition<(&[u8; 16], u64), &[u8; 32]> =
    TableDefinition::new("by_seq");
/// (conversation, server seq) → id of the `Send` event at that seq (the fast message view)
pub(super) const MSG_BY_SEQ: TableDefinition<(&[u8; 16], u64), &[u8; 32]> =
    TableDefinition::new("msg_by_seq");
/// (conversation, message id) → id of the `Send` event admitted to the conversation's fold
/// with that message id (the first one): how [`LogReader::message`] finds a message (format 3)
pub(super) const MSG_BY_ID: TableDefinition<UnseqKey, Id32> = TableDefinition::new("msg_by_id");
/// (conversation, message id) → (lamport, `Send` event id), for messages without a seq yet
pub(super) const UNSEQUENCED: TableDefinition<UnseqKey, (u64, Id32)> =
    TableDefinition::new("unsequenced");
/// acknowledged event id → (seq, server ts, ack event id)
pub(super) const ACKS: TableDefinition<&[u8; 32], (u64, u64, &[u8; 32])> =
    TableDefinition::new("acks");
/// (conversation, device) → (user, delivered up to, read up to)
pub(super) const MARKS: TableDefinition<(Conv, Id32), MarksValue> = TableDefinition::new("marks");
/// conversation → postcard([`ConversationMeta`])
pub(super) const CONVS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("conversations");
/// outbox position → postcard([`OutboxEntry`])
pub(super) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// event id → outbox position
pub(super) const OUTBOX_BY_EVENT: TableDefinition<&[u8; 32], u64> =
    TableDefinition::new("outbox_by_event");
/// free-form cursor name → value (e.g. the last pulled server seq of a conversation)
pub(super) const CURSORS: TableDefinition<&[u8], u64> = TableDefinition::new("cursors");
/// (conversation, document: a segment number, or `u64::MAX` for the head) → (log position
/// covered, saved automerge document). The head's row is written at every snapshot and its
/// position is the one all of the conversation's rows cover (see [`crate::doc::PartId`]).
pub(super) const SNAPSHOTS: TableDefinition<(Conv, u64), SnapshotValue> =
    TableDefinition::new("doc_snapshots");
/// A `doc_snapshots` row: (log position covered, saved automerge document).
pub(super) type SnapshotValue = (u64, &'static [u8]);
/// The table of one document per conversation that `doc_snapshots` replaced: dropped at open
/// (snapshots are derived; the documents are rebuilt from the log).
pub(super) const OLD_SNAPSHOTS: TableDefinition<&[u8; 16], (u64, &[u8])> =
    TableDefinition::new("snapshots");
/// The `doc_snapshots` row of a conversation's head document.
pub(super) const HEAD_PART: u64 = u64::MAX;
/// conversation → postcard([`Gate`]): how far the device's own checks got
pub(super) const GATES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("gates");
/// event id → (): stored events of others waiting for the gate
pub(super) const HELD: TableDefinition<&[u8; 32], ()> = TableDefinition::new("held");
/// event id → (conversation, the refusal for people): events the gate refused
pub(super) const REFUSED: TableDefinition<&[u8; 32], (&[u8; 16], &str)> =
    TableDefinition::new("refused");
/// (conversation, epoch) → the epoch key and what is known of it, sealed under the device's
/// storage key (see [`crate::store`])
pub(super) const EPOCH_KEYS: TableDefinition<(&[u8; 16], &[u8; 32]), &[u8]> =
    TableDefinition::new("epoch_keys");
/// (device, 0 = certificate / 1 = revocation) → the signed statement (postcard), as this
/// device verified it
pub(super) const DIRECTORY: TableDefinition<(&[u8; 32], u8), &[u8]> =
    TableDefinition::new("directory");
/// (conversation, seq of a membership change the gate admitted) → postcard(`Vec<UserId>`): the
/// members after it. A message's recipients are the members at its seq.
pub(super) const MEMBERSHIPS: TableDefinition<(&[u8; 16], u64), &[u8]> =
    TableDefinition::new("memberships");
/// (event id, conversation of the statement) → server seq: places a relay statement gave to
/// events the log does not hold yet (a statement covers a whole group commit; a page may bring
/// only part of its events). Moved into `by_seq` of the statement's conversation when the
/// event arrives (whatever conversation the event names: the gate there judges it), so that a
/// cursor never passes an event the log lacks.
pub(super) const WAITING: TableDefinition<(&[u8; 32], &[u8; 16]), u64> =
    TableDefinition::new("waiting");
/// (conversation, last seq placed) → (id, first seq placed) of the relay statement
/// (`Sequenced`, or a legacy `ServerAck` written from now on) placing that range: the relay's
/// hash chain, checked like an author's chain but by sequence range, and the chain head a
/// receipt names.
pub(super) const STATEMENTS: TableDefinition<(&[u8; 16], u64), StatementValue> =
    TableDefinition::new("statements");
/// n → a [`ChainIssue`] this log found (postcard), in the order found: kept so that a report
/// the process found but died before the app took is reported again by the next process (see
/// [`EventLog::chain_reports`]). Gaps and withheld sequences are not kept: the device derives
/// them again after every catch-up. At most [`MAX_CHAIN_REPORTS`] rows.
pub(super) const CHAIN_REPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("chain_reports");
/// Most chain reports a log keeps (the first ones: one is enough to know the relay or an
/// author misbehaved, and a hostile relay must not grow the log without bound).
pub const MAX_CHAIN_REPORTS: u64 = 256;
/// A conversation's document snapshots: (log position covered, (part number, bytes) each).
pub type SnapshotParts = (u64, Vec<(u64, Vec<u8>)>);
/// A `statements` row: (statement id, first seq it places).
pub(super) type StatementValue = (&'static [u8; 32], u64);
