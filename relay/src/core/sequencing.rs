//! The relay's signed statements (`Sequenced` events): one per conversation per group commit
//! (up to [`MAX_SEQUENCED_ENTRIES`] events each), chained by `prev` to the conversation's
//! previous statement, and how they travel with events in answers and pushes.

use std::sync::Arc;
use tidings_engine::event::{DecodeError, MAX_SEQUENCED_ENTRIES};
use tidings_engine::wire::{Envelope, ErrorCode, SubmitOutcome};
use tidings_engine::{
    ConversationId, DeviceKey, Event, EventHeader, EventId, EventKind, SeqEntry, ServerSeq, UserId,
};

/// A signed statement's envelope, shared by every frame that carries it.
pub(super) type Statement = Arc<[u8]>;

/// One event of a conversation's run to place: its index in the staged events, the event,
/// its sequence and server stamp.
pub(super) struct ToPlace<'a> {
    pub index: usize,
    pub event: &'a Event,
    pub seq: ServerSeq,
    pub ts_ms: u64,
}

/// A statement signed for a commit: its conversation, first sequence, envelope and id.
pub(super) struct Signed {
    pub conversation: ConversationId,
    pub first: ServerSeq,
    pub id: EventId,
    pub envelope: Statement,
    /// Indexes (into the staged events) of the events it places.
    pub places: Vec<usize>,
}

/// Signs one conversation's run of events (in sequence order, consecutive sequences) as
/// statements of at most [`MAX_SEQUENCED_ENTRIES`] entries, chained after the statement
/// `last` (the conversation's head; ignored when the run starts at sequence 1).
pub(super) fn sign_run(
    key: &DeviceKey,
    conversation: ConversationId,
    mut last: EventId,
    run: &[ToPlace<'_>],
) -> Result<Vec<Signed>, DecodeError> {
    let relay = key.device();
    let mut out = Vec::with_capacity(run.len().div_ceil(MAX_SEQUENCED_ENTRIES));
    for chunk in run.chunks(MAX_SEQUENCED_ENTRIES) {
        let (Some(head), Some(tail)) = (chunk.first(), chunk.last()) else {
            continue;
        };
        let entries = chunk
            .iter()
            .map(|p| SeqEntry {
                event: p.event.id(),
                message: match p.event.kind() {
                    EventKind::Send { message, .. } => Some(*message),
                    _ => None,
                },
                server_ts_ms: p.ts_ms,
            })
            .collect();
        let header = EventHeader {
            conversation,
            author: relay,
            user: UserId(relay.0),
            counter: head.seq,
            prev: (head.seq > 1).then_some(last),
            lamport: chunk
                .iter()
                .map(|p| p.event.header().lamport)
                .max()
                .unwrap_or(0),
            wall_ms: tail.ts_ms,
        };
        let statement = Event::sign(key.signing_key(), header, EventKind::Sequenced { entries })?;
        last = statement.id();
        out.push(Signed {
            conversation,
            first: head.seq,
            id: statement.id(),
            envelope: Arc::from(statement.into_bytes()),
            places: chunk.iter().map(|p| p.index).collect(),
        });
    }
    Ok(out)
}

/// What a submit's slot resolved to, for its answer.
pub(super) enum Resolved {
    /// Placed at `seq` by `statement`.
    Placed(ServerSeq, Statement),
    /// Not accepted, or accepted with this outcome already decided.
    Outcome(SubmitOutcome),
}

/// A submit answer's outcomes and the statements placing its accepted events (each once,
/// and at most `budget` bytes of them: a device that misses a statement submits the event
/// again and gets it with the duplicate's answer).
pub(super) fn submit_answer(
    slots: impl IntoIterator<Item = Resolved>,
    budget: usize,
) -> (Vec<SubmitOutcome>, Vec<Envelope>) {
    let mut outcomes = Vec::new();
    let mut records: Vec<Statement> = Vec::new();
    for slot in slots {
        match slot {
            Resolved::Placed(seq, statement) => {
                outcomes.push(SubmitOutcome::Accepted { seq });
                if !records
                    .iter()
                    .any(|r| Arc::ptr_eq(r, &statement) || **r == *statement)
                {
                    records.push(statement);
                }
            }
            Resolved::Outcome(o) => outcomes.push(o),
        }
    }
    let mut bytes = 0usize;
    let records = records
        .into_iter()
        .take_while(|r| {
            bytes += r.len() + 8;
            bytes <= budget
        })
        .map(|r| Envelope(r.to_vec()))
        .collect();
    (outcomes, records)
}

/// The refusal a submit's staged or in-flight event gets when its commit failed.
pub(super) fn lost(msg: &str) -> SubmitOutcome {
    SubmitOutcome::Rejected {
        code: ErrorCode::INTERNAL,
        reason: msg.to_string(),
    }
}

/// An event queued for a push, with the statement placing it.
#[derive(Clone)]
pub(super) struct Outgoing {
    pub event: Vec<u8>,
    pub statement: Statement,
}

/// Splits queued pushes into frames of at most `max_events` events and about `budget`
/// bytes, each frame carrying the statements of its events once.
pub(super) fn push_frames(
    items: Vec<Outgoing>,
    max_events: usize,
    budget: usize,
) -> Vec<(Vec<Envelope>, Vec<Envelope>)> {
    let mut out = Vec::new();
    let mut events: Vec<Envelope> = Vec::new();
    let mut records: Vec<Statement> = Vec::new();
    let mut bytes = 0;
    for it in items {
        let known = records.iter().any(|r| Arc::ptr_eq(r, &it.statement));
        let size = it.event.len() + 16 + if known { 0 } else { it.statement.len() };
        if !events.is_empty() && (events.len() >= max_events || bytes + size > budget) {
            let rs = records.drain(..).map(|r| Envelope(r.to_vec())).collect();
            out.push((std::mem::take(&mut events), rs));
            bytes = 0;
        }
        if !records.iter().any(|r| Arc::ptr_eq(r, &it.statement)) {
            bytes += it.statement.len();
            records.push(it.statement);
        }
        bytes += it.event.len() + 16;
        events.push(Envelope(it.event));
    }
    if !events.is_empty() {
        let rs = records.into_iter().map(|r| Envelope(r.to_vec())).collect();
        out.push((events, rs));
    }
    out
}
