//! One write transaction over every table of the log ([`LogTxn`]).

use super::*;

mod discard;
mod early;
pub(super) use early::EARLY;
pub use early::{goes_early, EarlyAppend};

/// One write transaction over the log's tables. Every table is opened once per transaction,
/// and per-conversation facts are cached and written back once, at the end.
pub struct LogTxn<'a> {
    events: super::entries::WriteEvents<'a>,
    conv_log: redb::Table<'a, (Conv, u64), Id32>,
    by_author: redb::Table<'a, AuthorKey, Id32>,
    by_seq: redb::Table<'a, (Conv, u64), Id32>,
    msg_by_seq: redb::Table<'a, (Conv, u64), Id32>,
    msg_by_id: redb::Table<'a, UnseqKey, Id32>,
    unsequenced: redb::Table<'a, UnseqKey, (u64, Id32)>,
    acks: redb::Table<'a, Id32, (u64, u64, Id32)>,
    marks: redb::Table<'a, (Conv, Id32), MarksValue>,
    convs: redb::Table<'a, Conv, &'static [u8]>,
    outbox: redb::Table<'a, u64, &'static [u8]>,
    outbox_by_event: redb::Table<'a, Id32, u64>,
    cursors: redb::Table<'a, &'static [u8], u64>,
    snapshots: redb::Table<'a, (Conv, u64), SnapshotValue>,
    gates: redb::Table<'a, Conv, &'static [u8]>,
    held: redb::Table<'a, Id32, ()>,
    refused: redb::Table<'a, Id32, (Conv, &'static str)>,
    directory: redb::Table<'a, (Id32, u8), &'static [u8]>,
    epoch_keys: redb::Table<'a, (Conv, Id32), &'static [u8]>,
    memberships: redb::Table<'a, (Conv, u64), &'static [u8]>,
    waiting: redb::Table<'a, (Id32, Conv), u64>,
    statements: redb::Table<'a, (Conv, u64), (Id32, u64)>,
    chain_reports: redb::Table<'a, u64, &'static [u8]>,
    pub(super) gaps: redb::Table<'a, (Conv, u64), u64>,
    early: redb::Table<'a, Id32, (Conv, u64)>,
    pub(super) erased: redb::Table<'a, Id32, super::erase::ErasedValue>,
    pub(super) retention: redb::Table<'a, (Conv, u64), &'static [u8]>,
    metas: HashMap<ConversationId, ConversationMeta>,
    /// Next fold position per conversation, once looked up.
    fold_next: HashMap<ConversationId, u64>,
    next_position: Option<u64>,
    dequeued: Vec<EventId>,
    chain_issues: Vec<ChainIssue>,
    /// Events of other devices stored in this transaction and not judged by their gate yet:
    /// the gate judges them from here (no read back and decode of what was just written), and
    /// only those still waiting when the transaction ends get a `held` row. Disjoint from the
    /// `held` table.
    fresh_held: HashMap<[u8; 32], Event>,
}

impl std::fmt::Debug for LogTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogTxn")
    }
}

impl<'a> LogTxn<'a> {
    pub(super) fn open(txn: &'a redb::WriteTransaction) -> Result<LogTxn<'a>, LogError> {
        Ok(LogTxn {
            events: super::entries::write(txn)?,
            conv_log: txn.open_table(CONV_LOG)?,
            by_author: txn.open_table(BY_AUTHOR)?,
            by_seq: txn.open_table(BY_SEQ)?,
            msg_by_seq: txn.open_table(MSG_BY_SEQ)?,
            msg_by_id: txn.open_table(MSG_BY_ID)?,
            unsequenced: txn.open_table(UNSEQUENCED)?,
            acks: txn.open_table(ACKS)?,
            marks: txn.open_table(MARKS)?,
            convs: txn.open_table(CONVS)?,
            outbox: txn.open_table(OUTBOX)?,
            outbox_by_event: txn.open_table(OUTBOX_BY_EVENT)?,
            cursors: txn.open_table(CURSORS)?,
            snapshots: txn.open_table(SNAPSHOTS)?,
            gates: txn.open_table(GATES)?,
            held: txn.open_table(HELD)?,
            refused: txn.open_table(REFUSED)?,
            directory: txn.open_table(DIRECTORY)?,
            epoch_keys: txn.open_table(EPOCH_KEYS)?,
            memberships: txn.open_table(MEMBERSHIPS)?,
            waiting: txn.open_table(WAITING)?,
            statements: txn.open_table(STATEMENTS)?,
            chain_reports: txn.open_table(CHAIN_REPORTS)?,
            gaps: txn.open_table(super::gaps::HISTORY_GAPS)?,
            early: txn.open_table(EARLY)?,
            erased: txn.open_table(super::erase::ERASED)?,
            retention: txn.open_table(super::erase::RETENTION)?,
            metas: HashMap::new(),
            fold_next: HashMap::new(),
            next_position: None,
            dequeued: Vec::new(),
            chain_issues: Vec::new(),
            fresh_held: HashMap::new(),
        })
    }

    /// Writes back the cached per-conversation facts.
    pub(super) fn finish(mut self) -> Result<(), LogError> {
        for (conv, meta) in std::mem::take(&mut self.metas) {
            self.convs.insert(&conv.0, encode(&meta).as_slice())?;
        }
        for id in std::mem::take(&mut self.fresh_held).into_keys() {
            self.held.insert(&id, ())?;
        }
        Ok(())
    }

    /// Whether a stored event waits for its gate.
    fn is_held(&self, id: &[u8; 32]) -> Result<bool, LogError> {
        Ok(self.fresh_held.contains_key(id) || self.held.get(id)?.is_some())
    }

    /// Takes an event out of the held set; whether it was held.
    fn unhold(&mut self, id: &[u8; 32]) -> Result<bool, LogError> {
        Ok(self.fresh_held.remove(id).is_some() || self.held.remove(id)?.is_some())
    }

    fn meta_mut(
        &mut self,
        conversation: ConversationId,
    ) -> Result<&mut ConversationMeta, LogError> {
        if !self.metas.contains_key(&conversation) {
            let meta = read_meta(&self.convs, &conversation)?.unwrap_or_default();
            self.metas.insert(conversation, meta);
        }
        self.metas
            .get_mut(&conversation)
            .ok_or_else(|| corrupt("conversations", "cache miss"))
    }

    /// Appends one verified event, updates every index and admits it to its conversation's
    /// fold at once (for the device's own events, relay acks and tests). A duplicate writes
    /// nothing.
    ///
    /// A relay statement that gives a sequence to another event than a statement this log
    /// already holds (the relay equivocated) is stored as evidence and reported
    /// ([`ChainIssue::Equivocation`]), but never folded: the places shown first stay, and the
    /// view never holds two messages claiming one sequence (one of them would vanish).
    pub fn append(&mut self, event: &Event) -> Result<Appended, LogError> {
        let contested = if event.kind().is_sequencing() && !self.contains_event(event)? {
            self.contested_places(event)?
        } else {
            Vec::new()
        };
        if !self.store(event)? {
            return Ok(Appended::Duplicate);
        }
        if !contested.is_empty() {
            self.chain_issues.extend(contested);
            return Ok(Appended::Held);
        }
        let position = self.admit(event)?;
        Ok(Appended::New { position })
    }

    fn contains_event(&self, event: &Event) -> Result<bool, LogError> {
        self.events.contains(&event.id().0)
    }

    /// The places `statement` gives that a statement this log holds gives to another event.
    fn contested_places(&self, statement: &Event) -> Result<Vec<ChainIssue>, LogError> {
        let conversation = statement.conversation();
        let mut issues = Vec::new();
        // The statement holding the previous place, decoded once for the places it covers.
        let mut held: Option<(EventId, Vec<Placement>)> = None;
        for p in statement.placements() {
            let Some(other) = covering_statement(&self.statements, &conversation, p.seq)? else {
                continue;
            };
            if other == statement.id() {
                continue;
            }
            if held.as_ref().is_none_or(|(id, _)| *id != other) {
                let Some(g) = self.events.get(&other.0)? else {
                    continue;
                };
                let ev = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
                held = Some((other, ev.placements()));
            }
            let theirs = held
                .as_ref()
                .and_then(|(_, places)| places.iter().find(|q| q.seq == p.seq))
                .map(|q| q.event);
            if let Some(first) = theirs.filter(|e| *e != p.event) {
                issues.push(ChainIssue::Equivocation {
                    conversation,
                    seq: p.seq,
                    first,
                    second: p.event,
                });
            }
        }
        Ok(issues)
    }

    /// Appends one verified event of another device: stored and chain-checked now, folded only
    /// once the conversation's gate passed it (relay acks are admitted at once: they come from
    /// a pinned key and carry no content of their own).
    pub fn append_held(&mut self, event: &Event) -> Result<Appended, LogError> {
        if event.kind().is_sequencing() {
            return self.append(event);
        }
        if !self.store(event)? {
            return Ok(Appended::Duplicate);
        }
        self.fresh_held.insert(event.id().0, event.clone());
        Ok(Appended::Held)
    }

    /// Writes the event and its append-time indexes. False for a duplicate.
    fn store(&mut self, event: &Event) -> Result<bool, LogError> {
        let id = event.id();
        if self.events.contains(&id.0)? || self.is_erased(&id)? {
            return Ok(false);
        }
        let position = match self.next_position {
            Some(p) => p,
            None => self.events.last_position()? + 1,
        };
        self.next_position = Some(position + 1);
        self.events.insert(&id.0, position, event.bytes())?;
        let h = event.header();
        let mut placed = Vec::new();
        for row in self
            .waiting
            .range((&id.0, &[0u8; 16])..=(&id.0, &[0xffu8; 16]))?
        {
            let (k, v) = row?;
            placed.push((*k.value().1, v.value()));
        }
        for (c, seq) in placed {
            self.waiting.remove((&id.0, &c))?;
            self.by_seq.insert((&c, seq), &id.0)?;
        }
        match event.last_placed() {
            Some(last) => self.check_statement_chain(event, last)?,
            None => self.check_chain(event)?,
        }
        let meta = self.meta_mut(h.conversation)?;
        meta.max_lamport = meta.max_lamport.max(h.lamport);
        meta.n_events += 1;
        Ok(true)
    }

    /// Puts a stored event in its conversation's fold order and updates the view indexes.
    fn admit(&mut self, event: &Event) -> Result<u64, LogError> {
        let id = event.id();
        let h = event.header();
        let conv = h.conversation;
        let c = &conv.0;
        let position = match self.fold_next.get(&conv) {
            Some(p) => *p,
            None => {
                self.conv_log
                    .range((c, 0u64)..=(c, u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1)
                    .unwrap_or(0)
                    + 1
            }
        };
        self.fold_next.insert(conv, position + 1);
        self.conv_log.insert((c, position), &id.0)?;
        match event.kind() {
            EventKind::Create { members } => {
                let meta = self.meta_mut(conv)?;
                if meta.members.is_none() {
                    meta.members = Some((id, members.clone()));
                }
            }
            EventKind::Send { message, .. } => {
                if self.msg_by_id.get((c, &message.0))?.is_none() {
                    self.msg_by_id.insert((c, &message.0), &id.0)?;
                }
                match self.acks.get(&id.0)?.map(|g| g.value().0) {
                    Some(seq) => {
                        self.msg_by_seq.insert((c, seq), &id.0)?;
                    }
                    None => {
                        self.unsequenced
                            .insert((c, &message.0), (h.lamport, &id.0))?;
                    }
                }
            }
            EventKind::ServerAck { .. } | EventKind::Sequenced { .. } => {
                let placements = event.placements();
                if let Some(last) = placements.last() {
                    let meta = self.meta_mut(conv)?;
                    meta.max_seq = meta.max_seq.max(last.seq);
                }
                for p in placements {
                    self.record_ack(conv, p, id)?;
                }
            }
            EventKind::Delivered { up_to, head } | EventKind::Read { up_to, head } => {
                if let Some(theirs) = *head {
                    let ours = covering_statement(&self.statements, &conv, *up_to)?;
                    if let Some(ours) = ours.filter(|o| *o != theirs) {
                        self.chain_issues.push(ChainIssue::HeadMismatch {
                            conversation: conv,
                            seq: *up_to,
                            ours,
                            theirs,
                            device: h.author,
                        });
                    }
                }
                let read = matches!(event.kind(), EventKind::Read { .. });
                let (d, r) = self
                    .marks
                    .get((c, &h.author.0))?
                    .map(|g| (g.value().1, g.value().2))
                    .unwrap_or((0, 0));
                let (d, r) = if read {
                    (d.max(*up_to), r.max(*up_to))
                } else {
                    (d.max(*up_to), r)
                };
                self.marks.insert((c, &h.author.0), (&h.user.0, d, r))?;
            }
            _ => {}
        }
        Ok(position)
    }

    /// Walks `conversation`'s sequenced events in server order from where its gate stopped,
    /// judging each one (see [`crate::gate`]), until a sequence the log lacks or an author
    /// the directory does not know. Admitted events of others join the fold order; refused
    /// ones are recorded and stay out of every view.
    pub fn advance_gate(
        &mut self,
        conversation: ConversationId,
        directory: &DeviceDirectory,
        me: DeviceId,
        lookup: &dyn Fn(&UserId) -> crate::gate::AuthorLookup,
    ) -> Result<GateRun, LogError> {
        let c = &conversation.0;
        let mut gate: Gate = match self.gates.get(c)? {
            Some(g) => postcard::from_bytes(g.value()).map_err(|e| corrupt("gates", e))?,
            None => Gate::default(),
        };
        let start = gate.through;
        let mut run = GateRun::default();
        loop {
            let seq = gate.through + 1;
            let Some(id) = self.by_seq.get((c, seq))?.map(|g| *g.value()) else {
                // Inside a history gap a missing sequence is gone: step to what is left.
                let Some(to) = super::gaps::gap_end(&self.gaps, &conversation, seq)? else {
                    break;
                };
                let next_held = self
                    .by_seq
                    .range((c, seq)..=(c, to))?
                    .next()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                gate.through = next_held.map_or(to, |s| s - 1);
                continue;
            };
            // Held since this transaction stored it: judged from memory.
            let fresh = self.fresh_held.remove(&id);
            let was_fresh = fresh.is_some();
            let event = match fresh {
                Some(event) => event,
                None => {
                    let Some(bytes) = self.events.get(&id)?.map(|g| g.value().1.to_vec()) else {
                        break;
                    };
                    Event::decode_trusted(&bytes).map_err(|e| corrupt("events", e))?
                }
            };
            let ts = self.acks.get(&id)?.map(|g| g.value().1).unwrap_or(0);
            // An ack in this conversation for an event of another one: the relay moved it.
            // Judged here it would be admitted into its own conversation's fold under this
            // conversation's membership.
            let foreign = event.conversation() != conversation;
            let verdict = if foreign {
                Verdict::Refuse(Refusal::OtherConversation(event.conversation()))
            } else {
                gate.judge(&event, seq, ts, directory, me, lookup)
            };
            match verdict {
                Verdict::Admit { membership_changed } => {
                    if let EventKind::SetRetention { policy } = event.kind() {
                        self.record_policy(conversation, seq, policy)?;
                    }
                    if membership_changed {
                        run.changes.push((seq, gate.members()));
                    }
                    // Own events, and events stored before gates existed, were admitted
                    // when they were written.
                    let held = was_fresh || self.held.remove(&id)?.is_some();
                    if held && event.header().author != me {
                        let position = self.admit(&event)?;
                        run.admitted.push((position, event));
                    } else {
                        self.settle_early(&event, true)?;
                    }
                }
                Verdict::Refuse(refusal) => {
                    if foreign {
                        // Stays held: its own conversation's gate judges it.
                        if was_fresh {
                            self.fresh_held.insert(id, event.clone());
                        }
                    } else {
                        if !was_fresh {
                            self.held.remove(&id)?;
                        }
                        if self.settle_early(&event, false)? {
                            run.retracted.push(event.id());
                        }
                    }
                    self.msg_by_seq.remove((c, seq))?;
                    let text = refusal.to_string();
                    self.refused.insert(&id, (c, text.as_str()))?;
                    run.refused.push((event, refusal));
                }
                Verdict::Wait(user) => {
                    if was_fresh {
                        self.fresh_held.insert(id, event);
                    }
                    run.waiting = Some(user);
                    break;
                }
            }
            gate.through = seq;
        }
        if !run.changes.is_empty() {
            let members = gate.members();
            let meta = self.meta_mut(conversation)?;
            let create = gate.created_by.unwrap_or(EventId([0; 32]));
            meta.members = Some((create, members));
            for (seq, members) in &run.changes {
                self.memberships
                    .insert((c, *seq), encode(members).as_slice())?;
            }
        }
        if gate.through != start || !run.changes.is_empty() {
            self.gates.insert(c, encode(&gate).as_slice())?;
        }
        if !run.changes.is_empty() {
            let retracted = self.rejudge_early(conversation, &gate, directory, me, lookup)?;
            run.retracted.extend(retracted);
        }
        run.gate = gate;
        Ok(run)
    }

    fn record_ack(
        &mut self,
        conversation: ConversationId,
        placement: Placement,
        ack_id: EventId,
    ) -> Result<(), LogError> {
        let Placement {
            event: acked,
            message,
            seq,
            server_ts_ms: ts,
        } = placement;
        let c = &conversation.0;
        // The place in this conversation's order, whatever other acks name the event: a
        // relay that acked it in another conversation first must not leave a hole here
        // (the gate refuses it there, see `advance_gate`, and judges it here). An event the
        // log does not hold yet waits for it: the gap-free cursor counts `by_seq` rows.
        if self.events.contains(&acked.0)? {
            let before = self
                .by_seq
                .insert((c, seq), &acked.0)?
                .map(|g| EventId(*g.value()));
            if let Some(before) = before.filter(|b| *b != acked) {
                // Two signed statements give one place to two events: the relay showed
                // two histories. The first keeps the place.
                self.by_seq.insert((c, seq), &before.0)?;
                self.chain_issues.push(ChainIssue::Equivocation {
                    conversation,
                    seq,
                    first: before,
                    second: acked,
                });
                return Ok(());
            }
        } else {
            self.waiting.insert((&acked.0, c), seq)?;
        }
        if self.acks.get(&acked.0)?.is_some_and(|g| g.value().0 <= seq) {
            return Ok(());
        }
        self.acks.insert(&acked.0, (seq, ts, &ack_id.0))?;
        // A Send that is already stored moves from the unsequenced to the sequenced index;
        // one stored later finds this ack when it is appended. (The ack names the message:
        // acks come from the trusted relay.)
        if let Some(message) = message {
            if self.events.contains(&acked.0)? && !self.is_held(&acked.0)? {
                self.unsequenced.remove((c, &message.0))?;
                self.msg_by_seq.insert((c, seq), &acked.0)?;
            }
        }
        // The relay has it: the outbox is done with it.
        let pos = self.outbox_by_event.remove(&acked.0)?.map(|g| g.value());
        if let Some(pos) = pos {
            self.outbox.remove(pos)?;
            self.dequeued.push(acked);
        }
        Ok(())
    }

    /// Events that left the outbox in this transaction because the relay acknowledged them.
    pub fn take_dequeued(&mut self) -> Vec<EventId> {
        std::mem::take(&mut self.dequeued)
    }

    /// Stores a sealed epoch key record (replacing an older record of the epoch).
    pub fn put_epoch_key(
        &mut self,
        conversation: ConversationId,
        epoch: EventId,
        sealed: &[u8],
    ) -> Result<(), LogError> {
        self.epoch_keys
            .insert((&conversation.0, &epoch.0), sealed)?;
        Ok(())
    }

    /// Keeps a verified certificate (replacing an older one of the device) or revocation.
    pub fn put_statement(
        &mut self,
        statement: Result<&DeviceRegistration, &DeviceRevocation>,
    ) -> Result<(), LogError> {
        let table = &mut self.directory;
        match statement {
            Ok(cert) => table.insert((&cert.device.0, 0u8), encode(cert).as_slice())?,
            Err(rev) => table.insert((&rev.device.0, 1u8), encode(rev).as_slice())?,
        };
        Ok(())
    }

    /// Breaks in authors' chains found by the appends of this transaction. Forks, broken
    /// links, equivocations and head mismatches are also kept in the log, within
    /// [`MAX_CHAIN_REPORTS`] (see [`EventLog::chain_reports`]).
    pub fn take_chain_issues(&mut self) -> Result<Vec<ChainIssue>, LogError> {
        let issues = std::mem::take(&mut self.chain_issues);
        let mut next = self.chain_reports.last()?.map_or(0, |(k, _)| k.value() + 1);
        for issue in &issues {
            if next >= MAX_CHAIN_REPORTS {
                break;
            }
            if matches!(issue, ChainIssue::Gap { .. } | ChainIssue::Withheld { .. }) {
                continue;
            }
            self.chain_reports.insert(next, encode(issue).as_slice())?;
            next += 1;
        }
        Ok(issues)
    }

    /// Indexes `event` at its place in its author's chain, and records a [`ChainIssue`] when
    /// that place is taken by another event, or when `prev` does not name the author's event
    /// before it (checked both ways: against the one before, and the one after if it arrived
    /// first). The event is stored either way: the issue is reported, the first event at a
    /// place keeps the index.
    fn check_chain(&mut self, event: &Event) -> Result<(), LogError> {
        let id = event.id();
        let h = event.header();
        let (conversation, author, counter) = (h.conversation, h.author, h.counter);
        let c = &conversation.0;
        let taken = self
            .by_author
            .get((c, &author.0, counter))?
            .map(|g| EventId(*g.value()));
        match taken {
            Some(first) if first != id => {
                self.chain_issues.push(ChainIssue::Fork {
                    conversation,
                    author,
                    counter,
                    first,
                    second: id,
                });
                return Ok(());
            }
            Some(_) => return Ok(()),
            None => {
                self.by_author.insert((c, &author.0, counter), &id.0)?;
            }
        }
        let broken = |found: Option<EventId>| ChainIssue::BrokenLink {
            conversation,
            author,
            counter,
            prev: h.prev,
            found,
        };
        // The first event of a chain names no predecessor; every other one does.
        if (counter <= 1) != h.prev.is_none() {
            self.chain_issues.push(broken(None));
            return Ok(());
        }
        if counter > 1 {
            let before = self
                .by_author
                .get((c, &author.0, counter - 1))?
                .map(|g| EventId(*g.value()));
            if let Some(before) = before {
                if Some(before) != h.prev {
                    self.chain_issues.push(broken(Some(before)));
                }
            }
        }
        let after = self
            .by_author
            .get((c, &author.0, counter.saturating_add(1)))?
            .map(|g| EventId(*g.value()));
        if let Some(after) = after {
            if let Some(g) = self.events.get(&after.0)? {
                let next = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
                if next.header().prev != Some(id) {
                    self.chain_issues.push(ChainIssue::BrokenLink {
                        conversation,
                        author,
                        counter: counter + 1,
                        prev: next.header().prev,
                        found: Some(id),
                    });
                }
            }
        }
        Ok(())
    }

    /// Indexes a relay statement by the last sequence it places, and records a [`ChainIssue`]
    /// when another statement ends at the same sequence (the relay signed two histories), or
    /// when `prev` does not name the statement that ends right before its first sequence
    /// (checked both ways, as for authors' chains).
    fn check_statement_chain(&mut self, event: &Event, last: ServerSeq) -> Result<(), LogError> {
        let id = event.id();
        let h = event.header();
        let (conversation, author, first) = (h.conversation, h.author, h.counter);
        let c = &conversation.0;
        let taken = self
            .statements
            .get((c, last))?
            .map(|g| EventId(*g.value().0));
        match taken {
            Some(other) if other != id => {
                self.chain_issues.push(ChainIssue::Fork {
                    conversation,
                    author,
                    counter: last,
                    first: other,
                    second: id,
                });
                return Ok(());
            }
            Some(_) => return Ok(()),
            None => {
                self.statements.insert((c, last), (&id.0, first))?;
            }
        }
        if (first <= 1) != h.prev.is_none() {
            self.chain_issues.push(ChainIssue::BrokenLink {
                conversation,
                author,
                counter: first,
                prev: h.prev,
                found: None,
            });
            return Ok(());
        }
        if first > 1 {
            if let Some(before) = self
                .statements
                .get((c, first - 1))?
                .map(|g| EventId(*g.value().0))
            {
                if Some(before) != h.prev {
                    self.chain_issues.push(ChainIssue::BrokenLink {
                        conversation,
                        author,
                        counter: first,
                        prev: h.prev,
                        found: Some(before),
                    });
                }
            }
        }
        let after = self
            .statements
            .range((c, last.saturating_add(1))..=(c, u64::MAX))?
            .next()
            .transpose()?
            .map(|(_, v)| EventId(*v.value().0));
        if let Some(after) = after {
            if let Some(g) = self.events.get(&after.0)? {
                let next = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
                let nh = next.header();
                if nh.counter == last.saturating_add(1) && nh.prev != Some(id) {
                    self.chain_issues.push(ChainIssue::BrokenLink {
                        conversation,
                        author,
                        counter: nh.counter,
                        prev: nh.prev,
                        found: Some(id),
                    });
                }
            }
        }
        Ok(())
    }

    /// Queues an event for the relay, at the end of the outbox.
    pub fn enqueue(&mut self, event: &Event, now_ms: u64) -> Result<OutboxEntry, LogError> {
        if let Some(pos) = self.outbox_by_event.get(&event.id().0)?.map(|g| g.value()) {
            if let Some(v) = self.outbox.get(pos)? {
                return postcard::from_bytes(v.value()).map_err(|e| corrupt("outbox", e));
            }
        }
        let position = self.outbox.last()?.map(|(k, _)| k.value()).unwrap_or(0) + 1;
        let entry = OutboxEntry {
            position,
            event: event.id(),
            conversation: event.conversation(),
            message: match event.kind() {
                EventKind::Send { message, .. } => Some(*message),
                _ => None,
            },
            attempts: 0,
            next_attempt_ms: now_ms,
            state: OutboxState::Queued,
        };
        self.outbox.insert(position, encode(&entry).as_slice())?;
        self.outbox_by_event.insert(&event.id().0, position)?;
        Ok(entry)
    }

    /// Rewrites an outbox entry (attempt count, next attempt, state). Gone entries are ignored.
    pub fn update_outbox(&mut self, entry: &OutboxEntry) -> Result<bool, LogError> {
        // The position alone does not say the entry is still there: positions start again at
        // 1 once the outbox empties, so a stale copy of an acknowledged entry would overwrite
        // whichever event was queued at its old position since.
        let current = self.outbox_by_event.get(&entry.event.0)?.map(|g| g.value());
        if current != Some(entry.position) {
            return Ok(false);
        }
        self.outbox
            .insert(entry.position, encode(entry).as_slice())?;
        Ok(true)
    }

    /// Whether the relay acknowledged this event.
    pub fn ack_of(&self, event: &EventId) -> Result<Option<(ServerSeq, u64)>, LogError> {
        Ok(self.acks.get(&event.0)?.map(|g| (g.value().0, g.value().1)))
    }

    /// The last event of `device` in `conversation`: (counter, id).
    pub fn chain_head(
        &self,
        conversation: ConversationId,
        device: DeviceId,
    ) -> Result<Option<(u64, EventId)>, LogError> {
        chain_head(&self.by_author, &conversation, &device)
    }

    /// Facts of one conversation, as of this transaction.
    pub fn conversation_meta(
        &mut self,
        conversation: ConversationId,
    ) -> Result<Option<ConversationMeta>, LogError> {
        match self.metas.get(&conversation) {
            Some(m) => Ok(Some(m.clone())),
            None => read_meta(&self.convs, &conversation),
        }
    }

    /// Watermarks of one device in a conversation: (delivered, read).
    pub fn device_marks(
        &self,
        conversation: ConversationId,
        device: DeviceId,
    ) -> Result<(ServerSeq, ServerSeq), LogError> {
        Ok(self
            .marks
            .get((&conversation.0, &device.0))?
            .map(|g| (g.value().1, g.value().2))
            .unwrap_or((0, 0)))
    }

    /// Sets a cursor.
    pub fn set_cursor(&mut self, name: &[u8], value: u64) -> Result<(), LogError> {
        self.cursors.insert(name, value)?;
        Ok(())
    }

    /// A cursor's value (0 when never set).
    pub fn cursor(&self, name: &[u8]) -> Result<u64, LogError> {
        Ok(self.cursors.get(name)?.map(|g| g.value()).unwrap_or(0))
    }

    /// Stores a conversation's head document as of log position `position`.
    pub fn put_snapshot(
        &mut self,
        conversation: ConversationId,
        position: u64,
        bytes: &[u8],
    ) -> Result<(), LogError> {
        self.put_snapshot_part(conversation, HEAD_PART, position, bytes)
    }

    /// Stores one document of a conversation (by part number, `u64::MAX` for the head) as of
    /// log position `position`.
    pub fn put_snapshot_part(
        &mut self,
        conversation: ConversationId,
        part: u64,
        position: u64,
        bytes: &[u8],
    ) -> Result<(), LogError> {
        self.snapshots
            .insert((&conversation.0, part), (position, bytes))?;
        Ok(())
    }

    /// Drops every document snapshot of a conversation (they will be rebuilt from the log).
    pub fn drop_snapshot(&mut self, conversation: ConversationId) -> Result<(), LogError> {
        let c = &conversation.0;
        self.snapshots
            .retain_in((c, 0u64)..=(c, u64::MAX), |_, _| false)?;
        Ok(())
    }
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard into a Vec fails only when a Serialize impl errors; these derive it.
    postcard::to_stdvec(value).unwrap_or_default()
}

pub(super) fn read_meta(
    table: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
    conversation: &ConversationId,
) -> Result<Option<ConversationMeta>, LogError> {
    match table.get(&conversation.0)? {
        Some(v) => postcard::from_bytes(v.value())
            .map(Some)
            .map_err(|e| corrupt("conversations", e)),
        None => Ok(None),
    }
}

pub(super) fn chain_head(
    table: &impl ReadableTable<AuthorKey, Id32>,
    conversation: &ConversationId,
    device: &DeviceId,
) -> Result<Option<(u64, EventId)>, LogError> {
    let lo = (&conversation.0, &device.0, 0u64);
    let hi = (&conversation.0, &device.0, u64::MAX);
    Ok(table
        .range(lo..=hi)?
        .next_back()
        .transpose()?
        .map(|(k, v)| {
            let (_, _, counter) = k.value();
            (counter, EventId(*v.value()))
        }))
}

/// Format 3 added `msg_by_id`: fills it from the two message listings of an older log (one
/// decode per sequenced message, once).
pub(super) fn migrate_msg_by_id(txn: &redb::WriteTransaction) -> Result<(), LogError> {
    let mut by_id = txn.open_table(MSG_BY_ID)?;
    let events = super::entries::write(txn)?;
    for row in txn.open_table(UNSEQUENCED)?.iter()? {
        let (k, v) = row?;
        let (c, m) = k.value();
        by_id.insert((c, m), v.value().1)?;
    }
    for row in txn.open_table(MSG_BY_SEQ)?.iter()? {
        let (k, id) = row?;
        let (c, _) = k.value();
        let Some(g) = events.get(id.value())? else {
            return Err(corrupt("msg_by_seq", "points at a missing event"));
        };
        let ev = Event::decode_trusted(g.value().1).map_err(|e| corrupt("events", e))?;
        if let EventKind::Send { message, .. } = ev.kind() {
            by_id.insert((c, &message.0), id.value())?;
        }
    }
    Ok(())
}
