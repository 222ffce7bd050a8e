//! The store's reads: records, devices, invitations, cursors, lookups by event, chains and
//! pages. Each runs in one read transaction, beside the writer.

use super::*;

impl RelayStore {
    /// Every conversation record.
    pub fn conversations(&self) -> Result<Vec<(ConversationId, ConversationRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONVERSATIONS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let rec: ConversationRecord = postcard::from_bytes(v.value())
                .map_err(|_| StoreError::Corrupt("conversation record"))?;
            out.push((ConversationId(k.value()), rec));
        }
        Ok(out)
    }

    /// One conversation's record.
    pub fn conversation(
        &self,
        id: &ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONVERSATIONS)?;
        let Some(v) = table.get(id.0)? else {
            return Ok(None);
        };
        let rec: ConversationRecord = postcard::from_bytes(v.value())
            .map_err(|_| StoreError::Corrupt("conversation record"))?;
        Ok(Some(rec))
    }

    /// Every (conversation, user) a user was removed from.
    pub fn former_members(&self) -> Result<Vec<(ConversationId, UserId)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FORMER)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, _) = row?;
            let k = k.value();
            let mut c = [0u8; 16];
            c.copy_from_slice(&k[..16]);
            let mut u = [0u8; 32];
            u.copy_from_slice(&k[16..]);
            out.push((ConversationId(c), UserId(u)));
        }
        Ok(out)
    }

    /// Every device registration, as (device, user).
    pub fn devices(&self) -> Result<Vec<(DeviceId, UserId)>, StoreError> {
        Ok(self
            .registrations()?
            .into_iter()
            .map(|r| (r.device, r.user))
            .collect())
    }

    /// Every device certificate, as stored (verified when it was accepted).
    pub fn registrations(&self) -> Result<Vec<DeviceRegistration>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEVICES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let r: DeviceRegistration = postcard::from_bytes(v.value())
                .map_err(|_| StoreError::Corrupt("device certificate"))?;
            if r.device.0 != k.value() {
                return Err(StoreError::Corrupt("device certificate under another key"));
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Every device revocation, as stored (verified when it was accepted).
    pub fn revocations(&self) -> Result<Vec<DeviceRevocation>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REVOCATIONS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let r: DeviceRevocation = postcard::from_bytes(v.value())
                .map_err(|_| StoreError::Corrupt("device revocation"))?;
            if r.device.0 != k.value() {
                return Err(StoreError::Corrupt("device revocation under another key"));
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Every row of the `invitations` table.
    pub fn invitations(&self) -> Result<Vec<InvitationRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INVITATIONS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (k, v) = (k.value(), v.value());
            let decision = match v[0] {
                0 => Decision::Pending,
                1 => Decision::Accepted,
                2 => Decision::Declined,
                _ => return Err(StoreError::Corrupt("invitation decision")),
            };
            let mut user = [0u8; 32];
            user.copy_from_slice(&k[..32]);
            let mut conv = [0u8; 16];
            conv.copy_from_slice(&k[32..]);
            let mut inviter = [0u8; 32];
            inviter.copy_from_slice(&v[1..]);
            out.push(InvitationRecord {
                user: UserId(user),
                conversation: ConversationId(conv),
                decision,
                inviter: UserId(inviter),
            });
        }
        Ok(out)
    }

    /// Every (user, blocked user) pair.
    pub fn blocked(&self) -> Result<Vec<(UserId, UserId)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOCKED)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, _) = row?;
            let k = k.value();
            let mut u = [0u8; 32];
            u.copy_from_slice(&k[..32]);
            let mut o = [0u8; 32];
            o.copy_from_slice(&k[32..]);
            out.push((UserId(u), UserId(o)));
        }
        Ok(out)
    }

    /// A device's stored cursors.
    pub fn cursors(&self, device: &DeviceId) -> Result<HashMap<ConversationId, u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CURSORS)?;
        let lo = cursor_key(device, &ConversationId([0; 16]));
        let hi = cursor_key(device, &ConversationId([0xff; 16]));
        let mut out = HashMap::new();
        for row in table.range(lo..=hi)? {
            let (k, v) = row?;
            let mut c = [0u8; 16];
            c.copy_from_slice(&k.value()[32..]);
            out.insert(ConversationId(c), v.value());
        }
        Ok(out)
    }

    /// For each id, where it was sequenced and its ack, if it was.
    pub fn lookup(&self, keys: &[IndexKey]) -> Result<Vec<Option<Sequenced>>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(EVENT_INDEX)?;
        let events = txn.open_table(EVENTS)?;
        let statements = txn.open_table(STATEMENTS)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some((k, _)) = index.get(key)?.map(|v| split_index_value(&v.value())) else {
                out.push(None);
                continue;
            };
            let (conv, seq) = split_seq_key(&k);
            let record = stored_record(&events, &statements, &k)?;
            out.push(Some((conv, seq, record)));
        }
        Ok(out)
    }

    /// For each event, what the store holds at its place in its author's chain: the event
    /// itself (a resubmission), another event with its counter (a fork), the author's events
    /// at `counter - 1` and `counter + 1`.
    pub fn chain(&self, events: &[&Event]) -> Result<Vec<ChainInfo>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(EVENT_INDEX)?;
        let table = txn.open_table(EVENTS)?;
        let statements = txn.open_table(STATEMENTS)?;
        let pruned = txn.open_table(PRUNED_CHAINS)?;
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let h = ev.header();
            let id = ev.id();
            let mut info = ChainInfo::default();
            let (lo, hi) = slot_range(&h.conversation, &h.author, h.counter);
            for row in index.range(lo..=hi)? {
                let (k, v) = row?;
                let other = id_of(&k.value());
                if other == id {
                    let (sk, _) = split_index_value(&v.value());
                    let (conv, seq) = split_seq_key(&sk);
                    let record = stored_record(&table, &statements, &sk)?;
                    info.stored = Some((conv, seq, record));
                } else {
                    info.fork.get_or_insert(other);
                }
            }
            if let Some(before) = h.counter.checked_sub(1) {
                let (lo, hi) = slot_range(&h.conversation, &h.author, before);
                if let Some(row) = index.range(lo..=hi)?.next() {
                    info.pred = Some(id_of(&row?.0.value()));
                }
            }
            if let Some(after) = h.counter.checked_add(1) {
                let (lo, hi) = slot_range(&h.conversation, &h.author, after);
                if let Some(row) = index.range(lo..=hi)?.next() {
                    info.succ_prev = Some(split_index_value(&row?.1.value()).1);
                }
            }
            if info.stored.is_none() {
                info.expired = RelayStore::pruned_counter(&pruned, &h.conversation, &h.author)?
                    .is_some_and(|c| h.counter <= c);
            }
            out.push(info);
        }
        Ok(out)
    }

    /// Events of `conv` after `after_seq` in sequence order, with the relay records that
    /// place them (each once): at most `limit` events and about `max_bytes` of envelopes
    /// (always at least one event if any exists). The flag says whether more exist.
    pub fn page(
        &self,
        conv: &ConversationId,
        after_seq: ServerSeq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Envelope>, Vec<Envelope>, bool), StoreError> {
        let txn = self.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let statements = txn.open_table(STATEMENTS)?;
        let lo = seq_key(conv, after_seq.saturating_add(1));
        let hi = seq_key(conv, u64::MAX);
        let (mut out, mut records) = (Vec::new(), Vec::new());
        let mut last_statement: Option<SeqKey> = None;
        let mut bytes = 0usize;
        let mut more = false;
        for row in events.range(lo..=hi)? {
            let (k, v) = row?;
            let (event, ack) = v.value();
            if event.is_empty() {
                // A legacy row whose body retention dropped.
                continue;
            }
            let k = k.value();
            // A statement placing several events of the page travels (and counts) once.
            let record = if ack.is_empty() {
                let (sk, guard) = covering_statement(&statements, &k)?;
                (last_statement != Some(sk)).then(|| (Some(sk), guard.value().to_vec()))
            } else {
                Some((None, ack.to_vec()))
            };
            let size = event.len() + record.as_ref().map_or(0, |(_, r)| r.len()) + 16;
            if out.len() >= limit || (!out.is_empty() && bytes + size > max_bytes) {
                more = true;
                break;
            }
            bytes += size;
            out.push(Envelope(event.to_vec()));
            if let Some((key, record)) = record {
                last_statement = key;
                records.push(Envelope(record));
            }
        }
        Ok((out, records, more))
    }

    /// The statements of `conv` placing sequences in `from..=to` that the store still holds,
    /// in order, about `max_bytes` (at least one if any), and whether all of them came (see
    /// [`crate::storage::Storage::statements_between`]).
    pub fn statements_between(
        &self,
        conv: &ConversationId,
        from: ServerSeq,
        to: ServerSeq,
        max_bytes: usize,
    ) -> Result<(Vec<Envelope>, bool), StoreError> {
        let txn = self.db.begin_read()?;
        let statements = txn.open_table(STATEMENTS)?;
        if to < from {
            return Ok((Vec::new(), true));
        }
        // The statement covering `from` starts at or below it (statements of a conversation
        // cover consecutive ranges); retention may have dropped it, then the range starts later.
        let covering = statements
            .range(seq_key(conv, 0)..=seq_key(conv, from))?
            .next_back()
            .transpose()?
            .map_or(seq_key(conv, from), |(k, _)| k.value());
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for row in statements.range(covering..=seq_key(conv, to))? {
            let (_, v) = row?;
            let st = v.value();
            if !out.is_empty() && bytes + st.len() > max_bytes {
                return Ok((out, false));
            }
            bytes += st.len();
            out.push(Envelope(st.to_vec()));
        }
        Ok((out, true))
    }

    /// Number of stored events (for tests and the metrics).
    pub fn n_events(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(EVENTS)?.len()?)
    }
}
