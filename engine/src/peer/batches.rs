//! Items frames under construction: the events one side sends, each with the relay statement
//! that places it, cut to the frame limits.

use super::{PeerFrame, MAX_ITEMS_BYTES};
use crate::event::Event;
use crate::ids::EventId;
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
}

impl Batches {
    /// Adds `event` of the log: with the statement that places it, or, for a statement, with
    /// the events it places (the receiver takes an event only with its statement in the same
    /// frame), or as unplaced.
    pub(super) fn add(&mut self, log: &EventLog, event: &Event) -> Result<(), LogError> {
        if event.kind().is_sequencing() {
            for p in event.placements() {
                if let Some(placed) = log.get(&p.event)? {
                    self.pair(&placed, event);
                }
            }
        } else if let Some((seq, _)) = log.ack_of(&event.id())? {
            let statement = match log.statement_at(event.conversation(), seq)? {
                Some(id) => log.get(&id)?,
                None => None,
            };
            if let Some(statement) = statement {
                self.pair(event, &statement);
            }
        } else {
            self.early(event);
        }
        Ok(())
    }

    /// Adds `event` with the statement that places it.
    fn pair(&mut self, event: &Event, statement: &Event) {
        if self.sent.contains(&event.id()) || self.here.contains(&event.id()) {
            return;
        }
        let mut need = event.bytes().len();
        if !self.here.contains(&statement.id()) {
            need += statement.bytes().len();
        }
        let full = self.events.len() + 1 > MAX_PAGE_ITEMS
            || self.records.len() + 1 > MAX_PAGE_ITEMS
            || self.bytes + need > MAX_ITEMS_BYTES;
        if full {
            self.cut();
        }
        if self.here.insert(statement.id()) {
            self.bytes += statement.bytes().len();
            self.records.push(Envelope(statement.bytes().to_vec()));
        }
        self.here.insert(event.id());
        self.n_events += 1;
        self.bytes += event.bytes().len();
        self.events.push(Envelope(event.bytes().to_vec()));
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
        if self.events.is_empty() {
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
