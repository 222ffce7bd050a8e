//! One group commit's rows and the transaction that writes them: conversation heads locked
//! in id order, dense sequences, the change feed.

use super::*;

/// A commit's rows, owned (the connection thread outlives the borrowed batch).
#[derive(Default)]
pub(super) struct Rows {
    /// Per conversation: (first new seq, last new seq, record) for the sequencer check.
    heads: BTreeMap<[u8; 16], Head>,
    ev_conv: Vec<Vec<u8>>,
    ev_seq: Vec<i64>,
    ev_id: Vec<Vec<u8>>,
    ev_author: Vec<Vec<u8>>,
    ev_counter: Vec<i64>,
    ev_prev: Vec<Vec<u8>>,
    ev_bytes: Vec<Vec<u8>>,
    ev_ack: Vec<Vec<u8>>,
    st_conv: Vec<Vec<u8>>,
    st_first: Vec<i64>,
    st_bytes: Vec<Vec<u8>>,
    /// (conversation, head, server ts) of each conversation record written: `seq_times`.
    times: (Vec<Vec<u8>>, Vec<i64>, Vec<i64>),
    former_conv: Vec<Vec<u8>>,
    former_user: Vec<Vec<u8>>,
    // The directory and consent rows by key (the last write of a key in the batch wins),
    // so that they are written in key order: two nodes' commits lock them in the same order
    // and never deadlock.
    devices: BTreeMap<Vec<u8>, Vec<u8>>,
    revocations: BTreeMap<Vec<u8>, Vec<u8>>,
    cursors: BTreeMap<(DeviceId, ConversationId), i64>,
    invitations: BTreeMap<PairKey, (i16, Vec<u8>)>,
    /// (user, other) → blocks.
    blocks: BTreeMap<PairKey, bool>,
}

#[derive(Default)]
struct Head {
    /// Created, or its membership changed: announced in the change feed.
    changed: bool,
    first: Option<ServerSeq>,
    last: Option<ServerSeq>,
    record: Option<(ServerSeq, Vec<u8>)>,
}

impl Head {
    /// The stored head the commit was sequenced after.
    fn expected(&self) -> ServerSeq {
        match (self.first, &self.record) {
            (Some(f), _) => f.saturating_sub(1),
            (None, Some((m, _))) => *m,
            (None, None) => 0,
        }
    }

    fn new_max(&self) -> ServerSeq {
        let rec = self.record.as_ref().map_or(0, |(m, _)| *m);
        self.last.unwrap_or(0).max(rec)
    }
}

impl Rows {
    pub(super) fn of(batch: &CommitBatch<'_>) -> Result<Rows, StoreError> {
        let mut r = Rows::default();
        for e in &batch.events {
            let k = &e.index_key;
            let h = r.heads.entry(e.conversation.0).or_default();
            h.first = Some(h.first.map_or(e.seq, |f| f.min(e.seq)));
            h.last = Some(h.last.map_or(e.seq, |l| l.max(e.seq)));
            r.ev_conv.push(e.conversation.0.to_vec());
            r.ev_seq.push(seq_i64(e.seq)?);
            r.ev_id.push(k[56..].to_vec());
            r.ev_author.push(k[16..48].to_vec());
            r.ev_counter
                .push(counter_key(u64::from_be_bytes(arr(&k[48..56], "counter")?)));
            r.ev_prev
                .push(e.prev.map(|p| p.0.to_vec()).unwrap_or_default());
            r.ev_bytes.push(e.event.to_vec());
            r.ev_ack.push(e.ack.to_vec());
        }
        for (c, first, bytes) in &batch.statements {
            r.st_conv.push(c.0.to_vec());
            r.st_first.push(seq_i64(*first)?);
            r.st_bytes.push(bytes.to_vec());
        }
        for (c, rec) in &batch.conversations {
            let bytes = postcard::to_stdvec(rec)
                .map_err(|_| StoreError::Corrupt("unencodable conversation record"))?;
            r.heads.entry(c.0).or_default().record = Some((rec.max_seq, bytes));
            if rec.max_seq > 0 {
                r.times.0.push(c.0.to_vec());
                r.times.1.push(seq_i64(rec.max_seq)?);
                r.times
                    .2
                    .push(i64::try_from(rec.last_ts_ms).unwrap_or(i64::MAX));
            }
        }
        for c in &batch.membership_changed {
            // Only a conversation the batch writes (a flag alone is no head to check).
            if let Some(h) = r.heads.get_mut(&c.0) {
                h.changed = true;
            }
        }
        for (c, u) in &batch.former {
            r.former_conv.push(c.0.to_vec());
            r.former_user.push(u.0.to_vec());
        }
        for d in &batch.devices {
            let bytes = postcard::to_stdvec(d)
                .map_err(|_| StoreError::Corrupt("unencodable registration"))?;
            r.devices.insert(d.device.0.to_vec(), bytes);
        }
        for d in &batch.revocations {
            let bytes = postcard::to_stdvec(d)
                .map_err(|_| StoreError::Corrupt("unencodable revocation"))?;
            r.revocations.insert(d.device.0.to_vec(), bytes);
        }
        for (d, c, s) in &batch.cursors {
            let s = seq_i64(*s)?;
            let slot = r.cursors.entry((*d, *c)).or_insert(s);
            *slot = (*slot).max(s);
        }
        for i in &batch.invitations {
            r.invitations.insert(
                (i.user.0.to_vec(), i.conversation.0.to_vec()),
                (decision_code(i.decision), i.inviter.0.to_vec()),
            );
        }
        for (u, o, on) in &batch.blocks {
            r.blocks.insert((u.0.to_vec(), o.0.to_vec()), *on);
        }
        Ok(r)
    }

    /// Whether the commit writes rows other nodes must see (the change feed).
    fn changes_directory(&self) -> bool {
        self.heads.values().any(|h| h.changed)
            || !self.former_conv.is_empty()
            || !self.devices.is_empty()
            || !self.revocations.is_empty()
            || !self.invitations.is_empty()
            || !self.blocks.is_empty()
    }

    pub(super) fn write(self, client: &mut Client) -> Result<(), StoreError> {
        let mut tx = client.transaction()?;
        let mut change_seq = 0i64;
        if !self.heads.is_empty() {
            // The conversation rows are the sequencers: create missing ones, then lock them
            // all in id order.
            let ids: Vec<Vec<u8>> = self.heads.keys().map(|k| k.to_vec()).collect();
            tx.execute(
                "INSERT INTO conversations (id, max_seq) \
                 SELECT id, 0 FROM UNNEST($1::bytea[]) AS u(id) ORDER BY id \
                 ON CONFLICT (id) DO NOTHING",
                &[&ids],
            )?;
            let rows = tx.query(
                "SELECT id, max_seq FROM conversations WHERE id = ANY($1::bytea[]) \
                 ORDER BY id FOR UPDATE",
                &[&ids],
            )?;
            for row in rows {
                let id: Vec<u8> = row.try_get(0)?;
                let id: [u8; 16] = arr(&id, "conversation id")?;
                let found = seq_u64(row.try_get(1)?)?;
                let Some(h) = self.heads.get(&id) else {
                    continue;
                };
                if found != h.expected() {
                    return Err(StoreError::Conflict {
                        conversation: ConversationId(id),
                        expected: h.expected(),
                        found,
                    });
                }
            }
            // With the rows locked no other commit appends to these conversations: a stored
            // id found now stays the only copy.
            if !self.ev_id.is_empty() {
                let dup = tx.query_opt(
                    "SELECT e.conversation FROM events e \
                     JOIN UNNEST($1::bytea[], $2::bytea[]) AS u(c, id) \
                     ON e.conversation = u.c AND e.event_id = u.id LIMIT 1",
                    &[&self.ev_conv, &self.ev_id],
                )?;
                if let Some(row) = dup {
                    let c: Vec<u8> = row.try_get(0)?;
                    return Err(StoreError::Duplicate {
                        conversation: ConversationId(arr(&c, "conversation id")?),
                    });
                }
            }
            if self.changes_directory() {
                change_seq = next_change_seq(&mut tx)?;
            }
            let mut max_seq = Vec::with_capacity(ids.len());
            let mut records: Vec<Option<Vec<u8>>> = Vec::with_capacity(ids.len());
            let mut changed = Vec::with_capacity(ids.len());
            for h in self.heads.values() {
                max_seq.push(seq_i64(h.new_max())?);
                records.push(h.record.as_ref().map(|(_, b)| b.clone()));
                changed.push(h.changed);
            }
            tx.execute(
                "UPDATE conversations AS c SET max_seq = u.m, record = COALESCE(u.r, c.record), \
                 change_seq = CASE WHEN u.ch THEN $5 ELSE c.change_seq END \
                 FROM UNNEST($1::bytea[], $2::int8[], $3::bytea[], $4::bool[]) AS u(id, m, r, ch) \
                 WHERE c.id = u.id",
                &[&ids, &max_seq, &records, &changed, &change_seq],
            )?;
        } else if self.changes_directory() {
            change_seq = next_change_seq(&mut tx)?;
        }
        if !self.ev_seq.is_empty() {
            let inserted = tx.execute(
                "INSERT INTO events \
                 (conversation, seq, event_id, author, counter, prev, event, ack) \
                 SELECT * FROM UNNEST($1::bytea[], $2::int8[], $3::bytea[], $4::bytea[], \
                 $5::int8[], $6::bytea[], $7::bytea[], $8::bytea[])",
                &[
                    &self.ev_conv,
                    &self.ev_seq,
                    &self.ev_id,
                    &self.ev_author,
                    &self.ev_counter,
                    &self.ev_prev,
                    &self.ev_bytes,
                    &self.ev_ack,
                ],
            );
            if let Err(e) = inserted {
                // Only a batch that repeats an id or a sequence within itself gets here.
                if unique_violation(&e) {
                    let conversation = ConversationId(arr(&self.ev_conv[0], "conversation id")?);
                    return Err(StoreError::Duplicate { conversation });
                }
                return Err(e.into());
            }
        }
        if !self.st_first.is_empty() {
            tx.execute(
                "INSERT INTO statements (conversation, first_seq, statement) \
                 SELECT * FROM UNNEST($1::bytea[], $2::int8[], $3::bytea[])",
                &[&self.st_conv, &self.st_first, &self.st_bytes],
            )?;
        }
        if !self.times.0.is_empty() {
            tx.execute(
                "INSERT INTO seq_times (conversation, seq, ts_ms) \
                 SELECT * FROM UNNEST($1::bytea[], $2::int8[], $3::int8[]) \
                 ON CONFLICT DO NOTHING",
                &[&self.times.0, &self.times.1, &self.times.2],
            )?;
        }
        if !self.former_conv.is_empty() {
            tx.execute(
                "INSERT INTO former_members (conversation, user_id, change_seq) \
                 SELECT u.c, u.u, $3 FROM UNNEST($1::bytea[], $2::bytea[]) AS u(c, u) \
                 ORDER BY u.c, u.u ON CONFLICT DO NOTHING",
                &[&self.former_conv, &self.former_user, &change_seq],
            )?;
        }
        for (d, bytes) in &self.devices {
            tx.execute(
                "INSERT INTO device_certs (device, cert, change_seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (device) DO UPDATE SET cert = EXCLUDED.cert, \
                 change_seq = EXCLUDED.change_seq",
                &[d, bytes, &change_seq],
            )?;
        }
        for (d, bytes) in &self.revocations {
            tx.execute(
                "INSERT INTO revocations (device, revocation, change_seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (device) DO UPDATE SET revocation = EXCLUDED.revocation, \
                 change_seq = EXCLUDED.change_seq",
                &[d, bytes, &change_seq],
            )?;
        }
        if !self.cursors.is_empty() {
            let mut dev = Vec::with_capacity(self.cursors.len());
            let mut conv = Vec::with_capacity(self.cursors.len());
            let mut seq = Vec::with_capacity(self.cursors.len());
            for ((d, c), s) in &self.cursors {
                dev.push(d.0.to_vec());
                conv.push(c.0.to_vec());
                seq.push(*s);
            }
            tx.execute(
                "INSERT INTO cursors (device, conversation, seq) \
                 SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[]) \
                 ON CONFLICT (device, conversation) \
                 DO UPDATE SET seq = GREATEST(cursors.seq, EXCLUDED.seq)",
                &[&dev, &conv, &seq],
            )?;
        }
        for ((u, c), (d, inviter)) in &self.invitations {
            tx.execute(
                "INSERT INTO invitations (user_id, conversation, decision, inviter, change_seq) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, conversation) \
                 DO UPDATE SET decision = EXCLUDED.decision, inviter = EXCLUDED.inviter, \
                 change_seq = EXCLUDED.change_seq",
                &[u, c, d, inviter, &change_seq],
            )?;
        }
        for ((u, o), on) in &self.blocks {
            tx.execute(
                "INSERT INTO blocked (user_id, other, active, change_seq) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id, other) \
                 DO UPDATE SET active = EXCLUDED.active, change_seq = EXCLUDED.change_seq",
                &[u, o, on, &change_seq],
            )?;
        }
        tx.commit().map_err(|e| {
            if e.as_db_error().is_some() {
                StoreError::Postgres(e)
            } else {
                // The server may have committed before the connection went.
                StoreError::CommitUnknown(e.to_string())
            }
        })
    }

    /// The commit's first event, by which a commit whose outcome is unknown is found.
    pub(super) fn marker(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((self.ev_conv.first()?.clone(), self.ev_id.first()?.clone()))
    }
}

/// Takes the next change feed position in `tx` (holding the counter's row lock until the
/// transaction ends orders the commits that change the directory).
fn next_change_seq(tx: &mut postgres::Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
            "UPDATE tidings_meta SET value = value + 1 WHERE key = 'change_seq' RETURNING value",
            &[],
        )?
        .try_get(0)?)
}

/// The record placing a stored event: its legacy ack, else the statement covering `seq`.
pub(super) fn placing(
    client: &mut Client,
    conv: &[u8],
    seq: i64,
    ack: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    if !ack.is_empty() {
        return Ok(ack);
    }
    let row = client.query_opt(
        "SELECT statement FROM statements WHERE conversation = $1 AND first_seq <= $2 \
         ORDER BY first_seq DESC LIMIT 1",
        &[&conv, &seq],
    )?;
    match row {
        Some(r) => Ok(r.try_get(0)?),
        None => Err(StoreError::Corrupt("an event no statement places")),
    }
}
