//! [`Storage`] on PostgreSQL: several relay nodes share one database.
//!
//! Mapping (every id and envelope a `bytea`, sequences `int8`):
//! - `conversations (id PK, max_seq, record)`: the conversation row is its sequencer. A
//!   commit inserts the rows of its conversations (`ON CONFLICT DO NOTHING`), then locks them
//!   `FOR UPDATE` in id order (two commits over the same conversations never deadlock), checks
//!   that each conversation's first new sequence follows `max_seq` ([`StoreError::Conflict`]
//!   otherwise) and moves `max_seq` on: sequences stay dense whatever number of nodes append.
//! - `events (conversation, seq) PK, UNIQUE (conversation, event_id)`: an event id is stored
//!   once per conversation forever ([`StoreError::Duplicate`]); range reads by primary key;
//!   `(conversation, author, counter)` indexed for the chain checks. Counters are stored
//!   order-preserving as `int8` (`counter ^ 2^63`), since a device may send any `u64`.
//! - `statements (conversation, first_seq) PK`: the signed `Sequenced` statements.
//! - `cursors (device, conversation) PK`: written as `GREATEST(old, new)`.
//! - `device_certs`, `revocations`, `former_members`, `invitations`, `blocked`: the directory
//!   and consent rows, as in redb (an unblock keeps its row, `active = false`, so that other
//!   nodes see it in the feed). Written in key order, so two commits never deadlock on them.
//! - The change feed ([`super::feed`]): a commit that writes directory, consent or
//!   membership rows takes the next `change_seq` (the `tidings_meta` row of that name,
//!   incremented in the commit's transaction, after the conversation rows are locked) and
//!   stamps every such row with it. The counter's row lock orders these commits, so a reader
//!   that sees position `n` sees every change up to `n`; appends that change no membership
//!   do not touch it.
//! - A connection lost during `COMMIT` leaves the outcome unknown: the store reconnects and
//!   looks for the commit's first event before answering, so a written commit is reported
//!   written (and pushed) rather than refused.
//!
//! One transaction per group commit, committed with `synchronous_commit = on` (durable on the
//! primary, and on a synchronous standby if one is configured), whatever the server's default,
//! unless the relay is configured `durable = false`. Every session carries statement, lock and
//! idle-in-transaction timeouts and TCP keepalives, so a silent network or a partitioned node
//! cannot hold the core thread or another node's locked rows for long. No `NOTIFY`
//! inside it (a notifying commit takes a global lock). The `postgres` client runs a runtime of
//! its own, so each connection lives on a thread of this module (one for commits, one for
//! reads) and callers block on a channel: it works from plain threads and from inside a tokio
//! runtime alike. A connection found closed is opened again before the next call.

mod read;
mod retention;
mod write;
use write::{placing, Rows};

use super::{ChangeSeq, Changes, Page, Storage};
use crate::core::store::{
    ChainInfo, CommitBatch, ConversationRecord, Decision, InvitationRecord, PrunePlan, PruneStats,
    StoreError,
};
use postgres::{Client, NoTls};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tidings_engine::wire::{DeviceRegistration, DeviceRevocation, Envelope};
use tidings_engine::{ConversationId, DeviceId, Event, EventId, ServerSeq, UserId};

/// Version of the table layout this build writes.
pub const PG_SCHEMA_VERSION: i64 = 3;
/// A schema this build opens by creating the tables it lacks (2: the retention tables).
const PG_SCHEMA_UPGRADABLE: i64 = 2;

/// Key of the advisory lock that serializes schema creation between nodes starting together.
const SCHEMA_LOCK: i64 = 0x7469_6469_6e67;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tidings_meta (key text PRIMARY KEY, value int8 NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    id bytea PRIMARY KEY, max_seq int8 NOT NULL, record bytea,
    change_seq int8 NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS conversations_changes ON conversations (change_seq);
CREATE TABLE IF NOT EXISTS events (
    conversation bytea NOT NULL, seq int8 NOT NULL, event_id bytea NOT NULL,
    author bytea NOT NULL, counter int8 NOT NULL, prev bytea NOT NULL,
    event bytea NOT NULL, ack bytea NOT NULL,
    PRIMARY KEY (conversation, seq),
    CONSTRAINT events_once UNIQUE (conversation, event_id));
CREATE INDEX IF NOT EXISTS events_chain ON events (conversation, author, counter);
CREATE TABLE IF NOT EXISTS statements (
    conversation bytea NOT NULL, first_seq int8 NOT NULL, statement bytea NOT NULL,
    PRIMARY KEY (conversation, first_seq));
CREATE TABLE IF NOT EXISTS former_members (
    conversation bytea NOT NULL, user_id bytea NOT NULL, change_seq int8 NOT NULL,
    PRIMARY KEY (conversation, user_id));
CREATE INDEX IF NOT EXISTS former_changes ON former_members (change_seq);
CREATE TABLE IF NOT EXISTS device_certs (
    device bytea PRIMARY KEY, cert bytea NOT NULL, change_seq int8 NOT NULL);
CREATE INDEX IF NOT EXISTS device_certs_changes ON device_certs (change_seq);
CREATE TABLE IF NOT EXISTS revocations (
    device bytea PRIMARY KEY, revocation bytea NOT NULL, change_seq int8 NOT NULL);
CREATE INDEX IF NOT EXISTS revocations_changes ON revocations (change_seq);
CREATE TABLE IF NOT EXISTS cursors (
    device bytea NOT NULL, conversation bytea NOT NULL, seq int8 NOT NULL,
    PRIMARY KEY (device, conversation));
CREATE TABLE IF NOT EXISTS invitations (
    user_id bytea NOT NULL, conversation bytea NOT NULL, decision int2 NOT NULL,
    inviter bytea NOT NULL, change_seq int8 NOT NULL, PRIMARY KEY (user_id, conversation));
CREATE INDEX IF NOT EXISTS invitations_changes ON invitations (change_seq);
CREATE TABLE IF NOT EXISTS blocked (
    user_id bytea NOT NULL, other bytea NOT NULL, active bool NOT NULL,
    change_seq int8 NOT NULL, PRIMARY KEY (user_id, other));
CREATE INDEX IF NOT EXISTS blocked_changes ON blocked (change_seq);
CREATE TABLE IF NOT EXISTS retained (conversation bytea PRIMARY KEY, floor int8 NOT NULL);
CREATE TABLE IF NOT EXISTS seq_times (
    conversation bytea NOT NULL, seq int8 NOT NULL, ts_ms int8 NOT NULL,
    PRIMARY KEY (conversation, seq));
CREATE TABLE IF NOT EXISTS pruned_chains (
    conversation bytea NOT NULL, author bytea NOT NULL, counter int8 NOT NULL,
    PRIMARY KEY (conversation, author));
INSERT INTO tidings_meta (key, value) VALUES ('change_seq', 0) ON CONFLICT (key) DO NOTHING;
";

type Job = Box<dyn FnOnce(&mut Option<Client>) + Send>;

/// One connection on its own thread.
#[derive(Debug)]
struct Conn {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long a connect may take when the connection string does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A dead peer on a silent network is noticed after this (keepalives, unacknowledged data).
const DEAD_PEER_AFTER: Duration = Duration::from_secs(30);
/// Server-side bounds for every session: no statement, lock wait or open transaction of a
/// node can hold the core thread, or another node's rows, for longer. A partitioned node's
/// transaction (and its `FOR UPDATE` locks) is ended by the server.
const SESSION_BOUNDS: &str = "SET statement_timeout = '30s'; SET lock_timeout = '10s'; \
     SET idle_in_transaction_session_timeout = '30s'";

/// Opens one session with the bounds above; `durable` asks for `synchronous_commit = on`
/// whatever the server's default, so that an ack always follows a durable commit.
fn open_client(url: &str, durable: bool) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config
        .keepalives(true)
        .keepalives_idle(DEAD_PEER_AFTER)
        .tcp_user_timeout(DEAD_PEER_AFTER);
    let mut client = config.connect(NoTls)?;
    client.batch_execute(SESSION_BOUNDS)?;
    if durable {
        client.batch_execute("SET synchronous_commit = on")?;
    }
    Ok(client)
}

impl Conn {
    fn spawn(url: &str, name: &str, durable: bool) -> Result<Conn, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let url = url.to_string();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut client = match open_client(&url, durable) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Ok(job) = rx.recv() {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = match open_client(&url, durable) {
                            Ok(c) => Some(c),
                            Err(e) => {
                                tracing::warn!(error = %e, "reconnecting to postgres");
                                None
                            }
                        };
                    }
                    job(&mut client);
                }
            })
            .map_err(|_| StoreError::ConnectionGone)?;
        ready_rx.recv().map_err(|_| StoreError::ConnectionGone)??;
        Ok(Conn {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the connection's thread and waits for its answer.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |client: &mut Option<Client>| {
            let r = match client {
                Some(c) => f(c),
                None => Err(StoreError::ConnectionGone),
            };
            let _ = tx.send(r);
        });
        self.jobs
            .as_ref()
            .ok_or(StoreError::ConnectionGone)?
            .send(job)
            .map_err(|_| StoreError::ConnectionGone)?;
        rx.recv().map_err(|_| StoreError::ConnectionGone)?
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The relay's store in PostgreSQL (see the module docs). Clones share the connections.
#[derive(Debug, Clone)]
pub struct PgStore {
    writer: Arc<Conn>,
    reader: Arc<Conn>,
}

fn seq_i64(seq: ServerSeq) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt("sequence beyond int8"))
}

fn seq_u64(seq: i64) -> Result<ServerSeq, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt("negative sequence"))
}

/// A `u64` counter as an `int8` in the same order.
fn counter_key(counter: u64) -> i64 {
    (counter ^ (1 << 63)) as i64
}

fn counter_of(key: i64) -> u64 {
    (key as u64) ^ (1 << 63)
}

fn arr<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt(what))
}

fn decision_code(d: Decision) -> i16 {
    match d {
        Decision::Pending => 0,
        Decision::Accepted => 1,
        Decision::Declined => 2,
    }
}

fn unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// The key of a consent row: (user, conversation) for an invitation (its value: decision
/// and inviter), (user, other) for a block.
type PairKey = (Vec<u8>, Vec<u8>);

impl PgStore {
    /// Connects to the database at `url` (a libpq-style connection string or URL), creating
    /// the tables if needed, with durable commits. A database written by another schema
    /// version is refused.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        Self::connect_with(url, true)
    }

    /// [`PgStore::connect`]; `durable = false` leaves `synchronous_commit` to the server (a
    /// relay configured with `durable = false`, for benchmarks).
    pub fn connect_with(url: &str, durable: bool) -> Result<PgStore, StoreError> {
        let writer = Conn::spawn(url, "tidings-pg-writer", durable)?;
        writer.call(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
            // The version first: the tables of another version are left as they are.
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS tidings_meta (key text PRIMARY KEY, value int8 NOT NULL)",
            )?;
            let found: Option<i64> = tx
                .query_opt("SELECT value FROM tidings_meta WHERE key = 'schema'", &[])?
                .map(|r| r.try_get(0))
                .transpose()?;
            let found = found.filter(|f| *f != PG_SCHEMA_UPGRADABLE);
            if let Some(found) = found.filter(|f| *f != PG_SCHEMA_VERSION) {
                return Err(StoreError::Schema {
                    found: u64::try_from(found).unwrap_or(0),
                    expected: PG_SCHEMA_VERSION as u64,
                });
            }
            tx.batch_execute(SCHEMA)?;
            tx.execute(
                "INSERT INTO tidings_meta (key, value) VALUES ('schema', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&PG_SCHEMA_VERSION],
            )?;
            tx.commit()?;
            Ok(())
        })?;
        let reader = Conn::spawn(url, "tidings-pg-reader", durable)?;
        Ok(PgStore {
            writer: Arc::new(writer),
            reader: Arc::new(reader),
        })
    }

    fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.reader.call(f)
    }
}

impl Storage for PgStore {
    fn commit(&self, batch: &CommitBatch<'_>) -> Result<(), StoreError> {
        let rows = Rows::of(batch)?;
        let marker = rows.marker();
        match self.writer.call(move |c| rows.write(c)) {
            Err(StoreError::CommitUnknown(why)) => {
                // Found out on a new connection: a transaction is all or nothing, so its
                // first event stored means all of it is.
                let Some((conv, id)) = marker else {
                    return Err(StoreError::CommitUnknown(why));
                };
                let found = self.writer.call(move |c| {
                    Ok(c.query_opt(
                        "SELECT 1 FROM events WHERE conversation = $1 AND event_id = $2",
                        &[&conv, &id],
                    )?
                    .is_some())
                });
                match found {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(StoreError::Failed(format!("not written: {why}"))),
                    Err(e) => Err(StoreError::CommitUnknown(format!("{why}; then {e}"))),
                }
            }
            other => other,
        }
    }

    fn conversations(&self) -> Result<Vec<(ConversationId, ConversationRecord)>, StoreError> {
        self.read(|c| {
            read::conversation_rows(
                c,
                "SELECT id, record FROM conversations WHERE record IS NOT NULL ORDER BY id",
                &[],
            )
        })
    }
    fn conversation(&self, id: &ConversationId) -> Result<Option<ConversationRecord>, StoreError> {
        let id = id.0.to_vec();
        self.read(move |c| {
            let row = c.query_opt(
                "SELECT record FROM conversations WHERE id = $1 AND record IS NOT NULL",
                &[&id],
            )?;
            match row {
                Some(r) => Ok(Some(read::decode_record(r.try_get::<_, &[u8]>(0)?)?)),
                None => Ok(None),
            }
        })
    }

    fn former_members(&self) -> Result<Vec<(ConversationId, UserId)>, StoreError> {
        self.read(|c| {
            read::former_rows(
                c,
                "SELECT conversation, user_id FROM former_members ORDER BY conversation, user_id",
                &[],
            )
        })
    }
    fn registrations(&self) -> Result<Vec<DeviceRegistration>, StoreError> {
        self.read(|c| {
            read::per_device(
                c,
                "SELECT device, cert FROM device_certs ORDER BY device",
                &[],
                ("device certificate", "device certificate under another key"),
                |r: &DeviceRegistration| r.device,
            )
        })
    }
    fn revocations(&self) -> Result<Vec<DeviceRevocation>, StoreError> {
        self.read(|c| {
            read::per_device(
                c,
                "SELECT device, revocation FROM revocations ORDER BY device",
                &[],
                ("device revocation", "device revocation under another key"),
                |r: &DeviceRevocation| r.device,
            )
        })
    }
    fn invitations(&self) -> Result<Vec<InvitationRecord>, StoreError> {
        self.read(|c| {
            read::invitation_rows(
                c,
                "SELECT user_id, conversation, decision, inviter FROM invitations \
                 ORDER BY user_id, conversation",
                &[],
            )
        })
    }
    fn blocked(&self) -> Result<Vec<(UserId, UserId)>, StoreError> {
        self.read(|c| {
            let rows = read::block_rows(
                c,
                "SELECT user_id, other, active FROM blocked WHERE active \
                 ORDER BY user_id, other",
                &[],
            )?;
            Ok(rows.into_iter().map(|(u, o, _)| (u, o)).collect())
        })
    }
    fn cursors(&self, device: &DeviceId) -> Result<HashMap<ConversationId, u64>, StoreError> {
        let device = device.0.to_vec();
        self.read(move |c| {
            let mut out = HashMap::new();
            for row in c.query(
                "SELECT conversation, seq FROM cursors WHERE device = $1",
                &[&device],
            )? {
                out.insert(
                    ConversationId(arr(row.try_get(0)?, "conversation id")?),
                    seq_u64(row.try_get(1)?)?,
                );
            }
            Ok(out)
        })
    }

    fn chain(&self, events: &[&Event]) -> Result<Vec<ChainInfo>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut conv = Vec::with_capacity(events.len());
        let mut author = Vec::with_capacity(events.len());
        let mut lo = Vec::with_capacity(events.len());
        let mut hi = Vec::with_capacity(events.len());
        let mut slots = Vec::with_capacity(events.len());
        for ev in events {
            let h = ev.header();
            conv.push(h.conversation.0.to_vec());
            author.push(h.author.0.to_vec());
            lo.push(counter_key(h.counter.saturating_sub(1)));
            hi.push(counter_key(h.counter.saturating_add(1)));
            slots.push((h.conversation, h.counter, ev.id(), h.author));
        }
        self.read(move |c| {
            let rows = c.query(
                "SELECT u.i, e.counter, e.event_id, e.seq, e.prev, e.ack \
                 FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[], $4::int8[]) \
                 WITH ORDINALITY AS u(c, a, lo, hi, i) \
                 JOIN events e ON e.conversation = u.c AND e.author = u.a \
                 AND e.counter BETWEEN u.lo AND u.hi \
                 ORDER BY u.i, e.counter, e.event_id",
                &[&conv, &author, &lo, &hi],
            )?;
            let mut out = vec![ChainInfo::default(); slots.len()];
            for row in rows {
                let i = usize::try_from(row.try_get::<_, i64>(0)? - 1)
                    .map_err(|_| StoreError::Corrupt("ordinality"))?;
                let (Some(&(cid, counter, id, _)), Some(info)) = (slots.get(i), out.get_mut(i))
                else {
                    continue;
                };
                let stored_counter = counter_of(row.try_get(1)?);
                let other = EventId(arr(row.try_get(2)?, "event id")?);
                if stored_counter == counter {
                    if other == id {
                        let seq: i64 = row.try_get(3)?;
                        let record = placing(c, &cid.0, seq, row.try_get(5)?)?;
                        info.stored = Some((cid, seq_u64(seq)?, record));
                    } else {
                        info.fork.get_or_insert(other);
                    }
                } else if counter.checked_sub(1) == Some(stored_counter) {
                    info.pred.get_or_insert(other);
                } else if counter.checked_add(1) == Some(stored_counter) && info.succ_prev.is_none()
                {
                    let prev: &[u8] = row.try_get(4)?;
                    info.succ_prev = Some(if prev.is_empty() {
                        None
                    } else {
                        Some(EventId(arr(prev, "event id")?))
                    });
                }
            }
            retention::mark_expired(c, &slots, &mut out)?;
            Ok(out)
        })
    }

    fn page(
        &self,
        conv: &ConversationId,
        after_seq: ServerSeq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        let conv = conv.0.to_vec();
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        self.read(move |c| {
            let rows = c.query(
                "SELECT seq, event, ack FROM events WHERE conversation = $1 AND seq > $2 \
                 AND length(event) > 0 ORDER BY seq LIMIT $3",
                &[&conv, &after, &fetch],
            )?;
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                return Ok((Vec::new(), Vec::new(), false));
            };
            let (first, last): (i64, i64) = (first.try_get(0)?, last.try_get(0)?);
            // The statements covering [first, last]: the one at or below `first`, and after.
            let statements: Vec<(i64, Vec<u8>)> = c
                .query(
                    "SELECT first_seq, statement FROM statements WHERE conversation = $1 \
                     AND first_seq <= $3 AND first_seq >= COALESCE((SELECT max(first_seq) \
                     FROM statements WHERE conversation = $1 AND first_seq <= $2), 0) \
                     ORDER BY first_seq",
                    &[&conv, &first, &last],
                )?
                .into_iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, postgres::Error>>()?;
            let (mut out, mut records) = (Vec::new(), Vec::new());
            let mut last_statement: Option<i64> = None;
            let mut bytes = 0usize;
            let mut more = false;
            for row in rows {
                let seq: i64 = row.try_get(0)?;
                let event: Vec<u8> = row.try_get(1)?;
                let ack: Vec<u8> = row.try_get(2)?;
                let record = if ack.is_empty() {
                    let Some((sk, st)) = statements.iter().rev().find(|(f, _)| *f <= seq) else {
                        return Err(StoreError::Corrupt("an event no statement places"));
                    };
                    (last_statement != Some(*sk)).then(|| (Some(*sk), st.clone()))
                } else {
                    Some((None, ack))
                };
                let size = event.len() + record.as_ref().map_or(0, |(_, r)| r.len()) + 16;
                if out.len() >= limit || (!out.is_empty() && bytes + size > max_bytes) {
                    more = true;
                    break;
                }
                bytes += size;
                out.push(Envelope(event));
                if let Some((key, record)) = record {
                    last_statement = key;
                    records.push(Envelope(record));
                }
            }
            Ok((out, records, more))
        })
    }

    fn statements_between(
        &self,
        conv: &ConversationId,
        from: ServerSeq,
        to: ServerSeq,
        max_bytes: usize,
    ) -> Result<(Vec<Envelope>, bool), StoreError> {
        if to < from {
            return Ok((Vec::new(), true));
        }
        let conv = conv.0.to_vec();
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let to = i64::try_from(to).unwrap_or(i64::MAX);
        // A statement takes more than this many bytes (a signature alone is 64): no more rows
        // than fit in `max_bytes` are read.
        const MIN_STATEMENT_LEN: usize = 64;
        let fetch = i64::try_from(max_bytes / MIN_STATEMENT_LEN + 1).unwrap_or(i64::MAX);
        self.read(move |c| {
            // The statement covering `from` (at or below it), and those after, up to `to`.
            let rows = c.query(
                "SELECT statement FROM statements WHERE conversation = $1 \
                 AND first_seq <= $3 AND first_seq >= COALESCE((SELECT max(first_seq) \
                 FROM statements WHERE conversation = $1 AND first_seq <= $2), 0) \
                 ORDER BY first_seq LIMIT $4",
                &[&conv, &from, &to, &fetch],
            )?;
            let all = i64::try_from(rows.len()).unwrap_or(i64::MAX) < fetch;
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            for row in rows {
                let st: Vec<u8> = row.try_get(0)?;
                if !out.is_empty() && bytes + st.len() > max_bytes {
                    return Ok((out, false));
                }
                bytes += st.len();
                out.push(Envelope(st));
            }
            Ok((out, all))
        })
    }

    fn retained_floor(&self, conv: &ConversationId) -> Result<ServerSeq, StoreError> {
        PgStore::retained_floor(self, conv)
    }
    fn sequenced_before(&self, conv: &ConversationId, ts_ms: u64) -> Result<ServerSeq, StoreError> {
        PgStore::sequenced_before(self, conv, ts_ms)
    }
    fn prune(&self, plans: &[PrunePlan]) -> Result<PruneStats, StoreError> {
        PgStore::prune(self, plans)
    }
    fn n_events(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 = c
                .query_one("SELECT count(*) FROM events WHERE length(event) > 0", &[])?
                .try_get(0)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn changes(&self, after: ChangeSeq) -> Result<Changes, StoreError> {
        self.read(move |c| read::changes(c, after))
    }

    fn change_position(&self) -> Result<ChangeSeq, StoreError> {
        self.read(read::position)
    }

    fn heads(
        &self,
        ids: &[ConversationId],
    ) -> Result<Vec<(ConversationId, ServerSeq)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Vec<u8>> = ids.iter().map(|i| i.0.to_vec()).collect();
        self.read(move |c| {
            let mut out = Vec::with_capacity(ids.len());
            for row in c.query(
                "SELECT id, max_seq FROM conversations WHERE id = ANY($1::bytea[])",
                &[&ids],
            )? {
                out.push((
                    ConversationId(arr(row.try_get(0)?, "conversation id")?),
                    seq_u64(row.try_get(1)?)?,
                ));
            }
            Ok(out)
        })
    }
}
