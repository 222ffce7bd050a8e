//! Pulls across conversations: a catch-up of many conversations keeps a bounded number of
//! pulls in flight, so the requests made meanwhile are not queued behind all of its pages.

use super::*;

/// The pulls among `frames`: (request id, conversation).
fn pulls_of(frames: Vec<ClientFrame>) -> Vec<(u64, ConversationId)> {
    frames
        .into_iter()
        .filter_map(|f| match f {
            ClientFrame::Pull {
                request_id,
                conversation,
                ..
            } => Some((request_id, conversation)),
            _ => None,
        })
        .collect()
}

/// Found measuring `examples/catchup` (100k messages in 100 conversations): the device sent
/// a pull per conversation at once, four each, about 400 requests. The relay reads a
/// connection's requests in order, so the certificate request that opens the gate for the
/// authors came after every page: the whole catch-up was stored held, and read back and
/// folded again once the answer came, 3.5 s after the last page. A message the user sent
/// meanwhile waited behind the same pages. Now the device keeps at most
/// [`MAX_PULLS_IN_FLIGHT`] pulls in flight over all conversations (and at most half of the
/// relay's request window), serving the conversations in turn, and still pulls every one.
#[test]
fn a_catch_up_of_many_conversations_keeps_few_pulls_in_flight() {
    let t0 = 1_000_000;
    let mut core = ready(DeviceConfig::default(), t0);
    let (request_id, _) = sync_request(&drain(&mut core));
    let conversations: Vec<ConversationId> = (0..100u8).map(|i| ConversationId([i; 16])).collect();
    core.handle_frame(
        ServerFrame::Conversations {
            request_id,
            conversations: conversations
                .iter()
                .map(|c| crate::wire::ConversationInfo {
                    conversation: *c,
                    max_seq: 5_000,
                    cursor: 0,
                })
                .collect(),
            next: None,
            invitations: vec![],
            blocked: vec![],
        },
        t0,
    )
    .expect("list");
    let mut in_flight: VecDeque<(u64, ConversationId)> = pulls_of(drain(&mut core)).into();
    let mut most = in_flight.len();
    let mut order = Vec::new();
    while let Some((request_id, conversation)) = in_flight.pop_front() {
        if !order.contains(&conversation) {
            order.push(conversation);
        }
        core.handle_frame(
            ServerFrame::Page {
                request_id,
                conversation,
                events: vec![],
                records: vec![],
                more: false,
            },
            t0,
        )
        .expect("page");
        in_flight.extend(pulls_of(drain(&mut core)));
        most = most.max(in_flight.len());
    }
    // The scripted relay's window is 8 requests: half of it for pulls.
    assert!(
        most <= 4,
        "{most} pulls in flight at once (at most half of the relay's 8)"
    );
    assert_eq!(order, conversations, "every conversation pulled, in turn");
    assert_eq!(core.connection(), ConnectionState::Online);
}
