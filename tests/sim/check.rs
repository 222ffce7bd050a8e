//! The oracle: what the simulator saw happen, and the invariants checked against it.
//!
//! - Every statement the relay emitted (in a SubmitResult, Push or Page) is recorded; one
//!   sequence per event, one event per sequence, across relay restarts; the statements of a
//!   conversation form one chain (each names the one ending right before it, and no two end
//!   at the same sequence).
//! - Per device and message, the highest status rank ever shown: it may never go down, not
//!   even across a crash of the device (every status comes from durably committed events).
//! - Per device, the messages ever shown: none may disappear.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tidings::engine::{
    ConversationId, DeviceCore, Event, EventId, EventKind, MessageId, MessageView, ServerSeq,
    Status, UserId,
};
use tidings::relay::core::store::is_kept;
use tidings::relay::core::RelayStore;

pub type Violation = String;

/// Most events read per page when walking the relay's store.
const STORE_PAGE: usize = 256;

#[derive(Debug, Default)]
pub struct Oracle {
    /// (conversation, seq) → the event the relay acked at that seq.
    by_seq: BTreeMap<(ConversationId, ServerSeq), EventId>,
    /// event → where the relay acked it.
    seq_of: HashMap<EventId, (ConversationId, ServerSeq)>,
    /// (conversation, last seq it places) → the statement's id.
    statements: HashMap<(ConversationId, ServerSeq), EventId>,
    /// Messages whose `send` returned Ok: message → (conversation, device index).
    pub sent: BTreeMap<MessageId, (ConversationId, usize)>,
    /// Per message sent, the members its author's device knew then (its gate's): the
    /// recipients a peer receipt before the relay placed it is measured against.
    pub sent_members: HashMap<MessageId, BTreeSet<UserId>>,
    /// Per device: (conversation, message) → highest status rank shown.
    ranks: Vec<HashMap<(ConversationId, MessageId), u8>>,
    /// Per device: (conversation, message) → its author's user, for the messages of other
    /// devices last shown before the relay placed them (taken early from a peer).
    early_shown: Vec<HashMap<(ConversationId, MessageId), UserId>>,
    pub n_acks: u64,
    /// The user of each device (by index).
    device_users: Vec<UserId>,
    /// (conversation, seq) → the server time its statement gives.
    server_ts: HashMap<(ConversationId, ServerSeq), u64>,
    /// Per device: conversation → the highest `Received` that reached the relay.
    received: Vec<HashMap<ConversationId, ServerSeq>>,
    /// Per conversation: the relay's retention floor (sequences at or below may be gone).
    floors: HashMap<ConversationId, ServerSeq>,
}

impl Oracle {
    pub fn new(device_users: Vec<UserId>) -> Oracle {
        Oracle {
            ranks: vec![HashMap::new(); device_users.len()],
            early_shown: vec![HashMap::new(); device_users.len()],
            received: vec![HashMap::new(); device_users.len()],
            device_users,
            ..Oracle::default()
        }
    }

    /// A statement envelope the relay emitted: its chain link and every place it gives.
    pub fn record_statement(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        let st = Event::decode_trusted(bytes)
            .map_err(|e| format!("relay emitted a statement that does not decode: {e}"))?;
        let (Some(last), false) = (st.last_placed(), st.placements().is_empty()) else {
            return Err(format!(
                "relay emitted a non-statement as a statement: {:?}",
                st.kind()
            ));
        };
        let conv = st.conversation();
        let h = st.header();
        if let Some(before) = self.statements.get(&(conv, h.counter.saturating_sub(1))) {
            if h.prev != Some(*before) {
                return Err(format!(
                    "relay statement {} from seq {} of {conv} does not chain to {before}",
                    st.id(),
                    h.counter
                ));
            }
        }
        match self.statements.insert((conv, last), st.id()) {
            Some(other) if other != st.id() => {
                return Err(format!(
                    "relay signed two statements ending at seq {last} of {conv}: {other}, {}",
                    st.id()
                ))
            }
            _ => {}
        }
        for p in st.placements() {
            self.record_place(conv, p.event, p.seq)?;
            self.server_ts.insert((conv, p.seq), p.server_ts_ms);
        }
        Ok(())
    }

    /// The relay's retention floor of `conv` as last seen (0: nothing dropped).
    pub fn floor(&self, conv: &ConversationId) -> ServerSeq {
        self.floors.get(conv).copied().unwrap_or(0)
    }

    /// The relay's floor after a prune: it never goes back.
    pub fn raise_floor(&mut self, conv: ConversationId, floor: ServerSeq) -> Result<(), Violation> {
        let old = self.floor(&conv);
        if floor < old {
            return Err(format!(
                "relay retention floor of {conv} went back from {old} to {floor}"
            ));
        }
        self.floors.insert(conv, floor);
        Ok(())
    }

    /// A `Received` from device `dev` reached the relay.
    pub fn record_received(&mut self, dev: usize, conv: ConversationId, up_to: ServerSeq) {
        let at = self.received[dev].entry(conv).or_insert(0);
        *at = (*at).max(up_to);
    }

    /// The highest `Received` of device `dev` in `conv` that reached the relay.
    pub fn received(&self, dev: usize, conv: ConversationId) -> ServerSeq {
        self.received[dev].get(&conv).copied().unwrap_or(0)
    }

    /// The acked events of `conv` in `after + 1..=up_to`, by sequence.
    pub fn events_between(
        &self,
        conv: ConversationId,
        after: ServerSeq,
        up_to: ServerSeq,
    ) -> Vec<(ServerSeq, EventId)> {
        if up_to <= after {
            return Vec::new();
        }
        self.by_seq
            .range((conv, after + 1)..=(conv, up_to))
            .map(|((_, s), e)| (*s, *e))
            .collect()
    }

    /// The relay may drop `seq` of `conv` at `now`: it was committed at least `ttl_ms` ago, or
    /// every device the relay knows (`known`, by index) of every user who was a member at
    /// `seq` and still is confirmed it.
    pub fn check_droppable(
        &self,
        conv: ConversationId,
        seq: ServerSeq,
        now: u64,
        ttl_ms: u64,
        line: Option<&Timeline>,
        known: &[bool],
    ) -> Result<(), Violation> {
        let ts = self.server_ts.get(&(conv, seq)).copied();
        if ts.is_some_and(|t| t.saturating_add(ttl_ms) <= now) {
            return Ok(());
        }
        let members = line
            .and_then(|l| l.versions.range(..=seq).next_back().map(|(_, m)| (l, m)))
            .map(|(l, m)| m.intersection(&l.current).copied().collect::<BTreeSet<_>>())
            .unwrap_or_default();
        for (dev, user) in self.device_users.iter().enumerate() {
            if !members.contains(user) || !known.get(dev).copied().unwrap_or(false) {
                continue;
            }
            let confirmed = self.received(dev, conv);
            if confirmed < seq {
                return Err(format!(
                    "relay dropped seq {seq} of {conv} (committed at {ts:?}, now {now}, TTL \
                     {ttl_ms} ms) though device #{dev} of a member confirmed only up to \
                     {confirmed}"
                ));
            }
        }
        Ok(())
    }

    fn record_place(
        &mut self,
        conv: ConversationId,
        event: EventId,
        seq: ServerSeq,
    ) -> Result<(), Violation> {
        let (event, seq) = (&event, &seq);
        match self.by_seq.get(&(conv, *seq)) {
            Some(prev) if prev != event => {
                return Err(format!(
                    "relay acked two events at seq {seq} of {conv}: {prev} then {event} \
                     (an acknowledged event was lost or the sequencer reused a seq)"
                ))
            }
            Some(_) => {}
            None => {
                self.by_seq.insert((conv, *seq), *event);
                self.n_acks += 1;
            }
        }
        match self.seq_of.get(event) {
            Some(&(c, s)) if (c, s) != (conv, *seq) => Err(format!(
                "relay acked event {event} twice: seq {s} of {c}, then seq {seq} of {conv}"
            )),
            Some(_) => Ok(()),
            None => {
                self.seq_of.insert(*event, (conv, *seq));
                Ok(())
            }
        }
    }

    /// Every ack ever emitted is in the relay's store, with the same event at the same seq,
    /// and every conversation's sequences there are 1..=max without a gap — but for what
    /// retention dropped at or below the conversation's floor.
    pub fn check_relay_store(&self, store: &RelayStore) -> Result<(), Violation> {
        let records = store
            .conversations()
            .map_err(|e| format!("relay store unreadable: {e}"))?;
        let mut stored: HashMap<(ConversationId, ServerSeq), EventId> = HashMap::new();
        let mut floors: HashMap<ConversationId, ServerSeq> = HashMap::new();
        let mut n_total = 0u64;
        for (conv, rec) in &records {
            let floor = retained_floor(store, conv)?;
            floors.insert(*conv, floor);
            let mut after = 0;
            for (ev, seq) in stored_events(store, conv)? {
                after = seq;
                stored.insert((*conv, seq), ev.id());
                n_total += 1;
            }
            if after != rec.max_seq && rec.max_seq > floor {
                return Err(format!(
                    "relay store of {conv}: events up to seq {after}, record says {} (floor \
                     {floor})",
                    rec.max_seq
                ));
            }
        }
        let n_events = store
            .n_events()
            .map_err(|e| format!("relay store count: {e}"))?;
        if n_events != n_total {
            return Err(format!(
                "relay store holds {n_events} events, its conversations account for {n_total}"
            ));
        }
        for ((conv, seq), event) in &self.by_seq {
            match stored.get(&(*conv, *seq)) {
                Some(e) if e == event => {}
                Some(e) => {
                    return Err(format!(
                        "acknowledged event {event} (seq {seq} of {conv}) was replaced by {e} \
                         in the relay's store"
                    ))
                }
                None if *seq <= floors.get(conv).copied().unwrap_or(0) => {}
                None => {
                    return Err(format!(
                        "acknowledged event {event} (seq {seq} of {conv}) is missing from the \
                         relay's store"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Checks one device's view of `conv` and raises its status high-water marks.
    /// `member`: whether the device's user is a member. `shown_other_history`: the relay
    /// showed this device another history of `conv` than it acked (an equivocation the
    /// simulator staged), so the seqs it shows are not compared with the acks.
    pub fn check_device_view(
        &mut self,
        dev: usize,
        core: &mut DeviceCore,
        conv: ConversationId,
        member: bool,
        shown_other_history: bool,
    ) -> Result<(), Violation> {
        let me = core.store().key().device();
        // The members where the device's gate stands: an early message of a user no longer
        // among them may leave the view (see below).
        let gate_members: Vec<UserId> = core
            .store()
            .log()
            .conversation_meta(conv)
            .map_err(|e| format!("store error reading {conv}: {e}"))?
            .and_then(|m| m.members)
            .map(|(_, users)| users)
            .unwrap_or_default();
        let c = core
            .store_mut()
            .conversation(conv)
            .map_err(|e| format!("store error reading {conv}: {e}"))?;
        if !member {
            if c.members().is_some() || !c.is_empty() {
                return Err(format!(
                    "a device of a non-member holds conversation {conv} ({} messages)",
                    c.len()
                ));
            }
            return Ok(());
        }
        let view = c.messages();
        check_unique(&view)?;
        let early = &mut self.early_shown[dev];
        for m in &view {
            if m.seq.is_none() && m.record.author != me {
                early.insert((conv, m.id), m.record.user);
            } else {
                early.remove(&(conv, m.id));
            }
        }
        let ranks = &mut self.ranks[dev];
        let mut shown: HashSet<MessageId> = HashSet::with_capacity(view.len());
        for m in &view {
            shown.insert(m.id);
            let r = m.status.rank();
            let best = ranks.entry((conv, m.id)).or_insert(r);
            if r < *best {
                return Err(format!(
                    "status of message {} went backwards: rank {} → {:?} (rank {r})",
                    m.id, *best, m.status
                ));
            }
            *best = r;
            if let Some(seq) = m.seq.filter(|_| !shown_other_history) {
                match self.by_seq.get(&(conv, seq)) {
                    Some(e) if *e == m.record.event => {}
                    Some(e) => {
                        return Err(format!(
                            "message {} shown at seq {seq}, but the relay acked {e} there",
                            m.id
                        ))
                    }
                    None => {
                        return Err(format!(
                            "message {} shown at seq {seq}, an ack the relay never emitted",
                            m.id
                        ))
                    }
                }
            }
        }
        // A message of another device shown before the relay placed it leaves the view when the
        // gate finds its author's user removed first (PROTOCOL.md, "Before the relay has seen
        // it": retracted, and held for a place the relay will not give it unless the user
        // comes back); every other shown message stays.
        let mut retracted = Vec::new();
        for (c2, id) in ranks.keys() {
            if *c2 == conv && !shown.contains(id) {
                match early.get(&(conv, *id)) {
                    Some(author) if !gate_members.contains(author) => retracted.push(*id),
                    _ => return Err(format!("message {id} was shown before and disappeared")),
                }
            }
        }
        for id in retracted {
            ranks.remove(&(conv, id));
            early.remove(&(conv, id));
        }
        Ok(())
    }
}

/// A conversation's membership as the relay's store orders it.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Members after the last sequenced event.
    pub current: BTreeSet<UserId>,
    /// Per user, the sequence of their first join (1 for the `Create` list).
    pub first_join: HashMap<UserId, ServerSeq>,
    /// Per user no longer a member, the sequence of their (last) removal.
    pub removed_at: HashMap<UserId, ServerSeq>,
    /// The members after each change, by its sequence.
    pub versions: BTreeMap<ServerSeq, BTreeSet<UserId>>,
}

impl Timeline {
    /// Walks the relay's store of `conv` in server order.
    pub fn of(store: &RelayStore, conv: &ConversationId) -> Result<Timeline, Violation> {
        let mut t = Timeline::default();
        for (ev, seq) in stored_events(store, conv)? {
            match ev.kind() {
                EventKind::Create { members } => {
                    for u in members.iter().chain([&ev.header().user]) {
                        t.join(*u, seq);
                    }
                }
                EventKind::AddMember { user, .. } => t.join(*user, seq),
                EventKind::RemoveMember { user } => {
                    t.current.remove(user);
                    t.removed_at.insert(*user, seq);
                }
                _ => continue,
            }
            t.versions.insert(seq, t.current.clone());
        }
        Ok(t)
    }

    /// Whether a user of `sent_to` (the members the author's device knew when it sent the
    /// message) is no member at `seq`, the message's place: removed in between.
    pub fn recipient_removed_before(&self, sent_to: &BTreeSet<UserId>, seq: ServerSeq) -> bool {
        let Some((_, members)) = self.versions.range(..=seq).next_back() else {
            return false;
        };
        sent_to.iter().any(|u| !members.contains(u))
    }

    /// For a message of `author` at `seq`: whether it has recipients (the other members at
    /// its seq), and whether they all are members still (`None` before the `Create`).
    pub fn recipients_stayed(&self, author: UserId, seq: ServerSeq) -> Option<(bool, bool)> {
        let (_, members) = self.versions.range(..=seq).next_back()?;
        let mut recipients = members.iter().filter(|u| **u != author).peekable();
        let has = recipients.peek().is_some();
        Some((has, recipients.all(|u| self.current.contains(u))))
    }

    fn join(&mut self, user: UserId, seq: ServerSeq) {
        self.current.insert(user);
        self.first_join.entry(user).or_insert(seq);
        self.removed_at.remove(&user);
    }
}

/// The sequences in `after + 1..=up_to` of `conv` whose events the relay keeps whatever its
/// floor (membership changes, epoch openings: see `is_kept`).
pub fn kept_seqs(
    store: &RelayStore,
    conv: &ConversationId,
    after: ServerSeq,
    up_to: ServerSeq,
) -> Result<BTreeSet<ServerSeq>, Violation> {
    Ok(stored_events(store, conv)?
        .into_iter()
        .filter(|(ev, seq)| (after + 1..=up_to).contains(seq) && is_kept(ev.bytes()))
        .map(|(_, seq)| seq)
        .collect())
}

/// The relay's retention floor of `conv`.
fn retained_floor(store: &RelayStore, conv: &ConversationId) -> Result<ServerSeq, Violation> {
    store
        .retained_floor(conv)
        .map_err(|e| format!("relay retained floor: {e}"))
}

/// Every event the relay stored in `conv`, in server order, with the seq of its ack (checked
/// to name it): consecutive, but where retention dropped events at or below the floor.
fn stored_events(
    store: &RelayStore,
    conv: &ConversationId,
) -> Result<Vec<(Event, ServerSeq)>, Violation> {
    let floor = retained_floor(store, conv)?;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (items, records, more) = store
            .page(conv, after, STORE_PAGE, usize::MAX)
            .map_err(|e| format!("relay store page: {e}"))?;
        let mut places = HashMap::new();
        for r in &records {
            let st = Event::decode_trusted(&r.0)
                .map_err(|e| format!("stored statement does not decode: {e}"))?;
            for p in st.placements() {
                places.insert(p.event, p.seq);
            }
        }
        for it in &items {
            let ev = Event::decode_trusted(&it.0)
                .map_err(|e| format!("stored event does not decode: {e}"))?;
            let Some(&seq) = places.get(&ev.id()) else {
                return Err(format!("stored event {} has no statement", ev.id()));
            };
            if seq <= after || (seq != after + 1 && seq - 1 > floor) {
                return Err(format!(
                    "stored event {} at seq {seq} after {after} (retention floor {floor})",
                    ev.id()
                ));
            }
            after = seq;
            out.push((ev, seq));
        }
        if !more || items.is_empty() {
            return Ok(out);
        }
    }
}

/// No message twice, no two messages at one seq.
pub fn check_unique(view: &[MessageView]) -> Result<(), Violation> {
    let mut ids = BTreeSet::new();
    let mut seqs = BTreeMap::new();
    for m in view {
        if !ids.insert(m.id) {
            return Err(format!("message {} appears twice", m.id));
        }
        if let Some(s) = m.seq {
            if let Some(other) = seqs.insert(s, m.id) {
                return Err(format!("messages {other} and {} share seq {s}", m.id));
            }
        }
    }
    Ok(())
}

/// The final-state requirements on a converged conversation view. A message's recipients
/// are the members at its sequence; it must be DELIVERED when it has some and all of them
/// are still members (one removed since may never have received it).
///
/// `told_late(seq)`: what made a message at `seq` DELIVERED may never reach this device (the
/// relay's retention dropped it first, and said so), so the rule does not hold there.
pub fn check_final_view(
    conv: ConversationId,
    view: &[MessageView],
    timeline: &Timeline,
    told_late: impl Fn(ServerSeq) -> bool,
) -> Result<(), Violation> {
    for m in view {
        let Some(seq) = m.seq else {
            return Err(format!("message {} of {conv} never got a seq", m.id));
        };
        let Some((has_recipients, all_stayed)) = timeline.recipients_stayed(m.record.user, seq)
        else {
            return Err(format!(
                "message {} of {conv} sequenced before its Create",
                m.id
            ));
        };
        if has_recipients
            && all_stayed
            && !told_late(seq)
            && m.status.rank() < Status::Delivered.rank()
        {
            return Err(format!(
                "message {} of {conv} reached every member device but shows {:?}, not DELIVERED",
                m.id, m.status
            ));
        }
    }
    Ok(())
}
