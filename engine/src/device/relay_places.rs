//! Which events the relay statements of one frame place: the one rule the device core and
//! the frame-level test client (`tidings_relay::client`) share.

use crate::event::{DecodeError, Event, Placement};
use crate::ids::{ConversationId, DeviceId, EventId};
use std::collections::HashMap;

/// What the relay statements of one frame place, once checked: the statements themselves
/// and, per placed event, its conversation, its place and the statement that placed it.
#[derive(Debug, Default)]
pub struct RelayPlaces {
    /// The sequencing statements `relay` signed, in the frame's order.
    pub statements: Vec<Event>,
    /// Per placed event: (conversation, place, id of the statement).
    pub places: HashMap<EventId, (ConversationId, Placement, EventId)>,
    /// Records that are not `relay`'s sequencing statements (their ids), or that did not
    /// verify: they place nothing.
    pub refused: Vec<Result<EventId, DecodeError>>,
}

impl RelayPlaces {
    /// Keeps the records that are sequencing statements signed by `relay` (each already
    /// decoded with its signature checked) and indexes what they place.
    pub fn of(
        relay: DeviceId,
        records: impl IntoIterator<Item = Result<Event, DecodeError>>,
    ) -> RelayPlaces {
        let mut out = RelayPlaces::default();
        for record in records {
            match record {
                Ok(st) if st.header().author == relay && st.kind().is_sequencing() => {
                    for p in st.placements() {
                        out.places.insert(p.event, (st.conversation(), p, st.id()));
                    }
                    out.statements.push(st);
                }
                Ok(st) => out.refused.push(Ok(st.id())),
                Err(e) => out.refused.push(Err(e)),
            }
        }
        out
    }
}
