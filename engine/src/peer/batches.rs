//! Items frames under construction: the events one side sends, each with the relay statement
//! that places it, cut to the frame limits.

use super::{PeerFrame, MAX_ITEMS_BYTES};
use crate::event::Event;
use crate::ids::{ConversationId, EventId};
use crate::log::{EventLog, LogError};
use crate::wire::{Envelope, MAX_PAGE_ITEMS};
use std::collections::HashSet;

/// Items frames under construction: every event goes out with the statement that places it,
/// in the same frame, and each frame keeps to the limits.
#[derive(Default)]
pub(super) struct Batches {
    frames: Vec<PeerFrame>,
    events: Vec<Envelope>,
    records: Vec<Envelope>,
    bytes: usize,
    /// Ids of the events and statements in the current frame.
    here: HashSet<EventId>,
    /// Events sent in an earlier frame (each event goes once; a statement goes with each
    /// frame that carries one of its events, as the receiver places each frame on its own).
    sent: HashSet<EventId>,
    /// Events added so far.
    pub(super) n_events: usize,
    /// Unsequenced frames, and the one under construction with its bytes.
    early_frames: Vec<PeerFrame>,
    early: Vec<Envelope>,
    early_bytes: usize,
    /// The ids being sent, when the sender knows the peer holds every other event of the
    /// conversation it could need (a set reconciliation found them): a statement outside it
    /// is not attached, the receiver finds it in its own log.
    known: Option<HashSet<EventId>>,
    /// Conversations whose unplaced events the peer does not get: a removal of its user
    /// waits for its place (see [`crate::log::EventLog::pending_removals`]).
    withheld: HashSet<ConversationId>,
}

impl Batches {
    /// Batches of exactly `ids`, which a set reconciliation found the peer lacks: a statement
    /// goes only if it is among them, with those of its events that are.
    pub(super) fn sending(ids: &[EventId]) -> Batches {
        Batches {
            known: Some(ids.iter().copied().collect()),
            ..Batches::default()
        }
    }

    /// The same batches, without the unplaced events of `withheld` conversations.
    pub(super) fn withholding(mut self, withheld: &HashSet<ConversationId>) -> Batches {
        self.withheld = withheld.clone();
        self
    }

    /// Adds `event` of the log: with the statement that places it, or, for a statement, with
    /// the events it places (the receiver takes an event only with its statement in the same
    /// frame, or one it holds already), or as unplaced.
    pub(super) fn add(&mut self, log: &EventLog, event: &Event) -> Result<(), LogError> {
        let sent = |known: &Option<HashSet<EventId>>, id: &EventId| {
            known.as_ref().is_none_or(|k| k.contains(id))
        };
        if event.kind().is_sequencing() {
            let mut carried = false;
            for p in event.placements() {
                if !sent(&self.known, &p.event) {
                    continue;
                }
                if let Some(placed) = log.get(&p.event)? {
                    self.put(Some(&placed), Some(event));
                    carried = true;
                }
            }
            if !carried && self.known.is_some() {
                // The peer holds every event it places (or none is here): the statement alone.
                self.put(None, Some(event));
            }
        } else if let Some((seq, _)) = log.ack_of(&event.id())? {
            let statement = match log.statement_at(event.conversation(), seq)? {
                Some(id) => log.get(&id)?,
                None => None,
            };
            match statement {
                Some(st) if sent(&self.known, &st.id()) => self.put(Some(event), Some(&st)),
                Some(_) => self.put(Some(event), None),
                None => {}
            }
        } else if !self.withheld.contains(&event.conversation()) {
            self.early(event);
        }
        Ok(())
    }

    /// Adds a relay statement alone (the peer holds, or gets in this session, the events it
    /// places); nothing if it went already.
    pub(super) fn statement(&mut self, statement: &Event) {
        self.put(None, Some(statement));
    }

    /// Adds an event, a statement, or an event with the statement that places it, to the
    /// frame under construction (each event once; a statement once per frame).
    fn put(&mut self, event: Option<&Event>, statement: Option<&Event>) {
        let first = match (event, statement) {
            (Some(e), _) | (None, Some(e)) => e.id(),
            (None, None) => return,
        };
        if self.sent.contains(&first) || self.here.contains(&first) {
            return;
        }
        let len = |e: Option<&Event>| e.map_or(0, |e| e.bytes().len());
        let record = statement.filter(|s| !self.here.contains(&s.id()));
        let full = self.events.len() + usize::from(event.is_some()) > MAX_PAGE_ITEMS
            || self.records.len() + usize::from(record.is_some()) > MAX_PAGE_ITEMS
            || self.bytes + len(event) + len(record) > MAX_ITEMS_BYTES;
        if full {
            self.cut();
        }
        if let Some(statement) = statement {
            if self.here.insert(statement.id()) {
                self.bytes += statement.bytes().len();
                self.records.push(Envelope(statement.bytes().to_vec()));
            }
        }
        if let Some(event) = event {
            self.here.insert(event.id());
            self.n_events += 1;
            self.bytes += event.bytes().len();
            self.events.push(Envelope(event.bytes().to_vec()));
        }
    }

    /// Adds an event the relay has not placed yet.
    fn early(&mut self, event: &Event) {
        let len = event.bytes().len();
        if self.early.len() + 1 > MAX_PAGE_ITEMS || self.early_bytes + len > MAX_ITEMS_BYTES {
            self.cut_early();
        }
        self.n_events += 1;
        self.early_bytes += len;
        self.early.push(Envelope(event.bytes().to_vec()));
    }

    fn cut_early(&mut self) {
        if self.early.is_empty() {
            return;
        }
        self.early_bytes = 0;
        self.early_frames.push(PeerFrame::Unsequenced {
            events: std::mem::take(&mut self.early),
        });
    }

    fn cut(&mut self) {
        if self.events.is_empty() && self.records.is_empty() {
            return;
        }
        self.sent.extend(self.here.drain());
        self.bytes = 0;
        self.frames.push(PeerFrame::Items {
            events: std::mem::take(&mut self.events),
            records: std::mem::take(&mut self.records),
        });
    }

    /// Every frame: the placed events first, then the unplaced ones.
    pub(super) fn finish(mut self) -> Vec<PeerFrame> {
        self.cut();
        self.cut_early();
        self.frames.append(&mut self.early_frames);
        self.frames
    }
}
