//! A commit that lost a race with another relay node on one conversation (the shared store
//! answered `Conflict`): only that conversation's events are refused.

use super::*;

#[test]
fn a_conflict_on_one_conversation_refuses_only_its_events() {
    let mut net = Net::new(Limits::default());
    let mut a = net.connect(1, 10);
    let c1 = create(&mut a, 1, &[1]);
    let c2 = create(&mut a, 2, &[1]);
    assert_eq!(
        net.submit(&a, &[c1, c2])
            .iter()
            .map(seq_of)
            .collect::<Vec<_>>(),
        vec![1, 1]
    );
    let in_1 = send(&mut a, 1, "in the raced conversation");
    let in_2 = send(&mut a, 2, "in another");
    submit_nowait(&mut net, &a, std::slice::from_ref(&in_1), 1);
    submit_nowait(&mut net, &a, std::slice::from_ref(&in_2), 2);
    net.core.handle_frame(
        a.session,
        ClientFrame::Received {
            conversation: ConversationId([2; 16]),
            up_to: 1,
        },
        net.now,
    );
    let job = net.core.start_commit().expect("sign").expect("a job");
    // Staged while the job is written, after it: one event in each conversation.
    let later_1 = send(&mut a, 1, "later, raced");
    let later_2 = send(&mut a, 2, "later, other");
    submit_nowait(&mut net, &a, std::slice::from_ref(&later_1), 3);
    submit_nowait(&mut net, &a, std::slice::from_ref(&later_2), 4);
    let raced = ConversationId([1; 16]);
    net.core.finish_commit(
        job,
        Err(StoreError::Conflict {
            conversation: raced,
            expected: 1,
            found: 1,
        }),
    );
    net.core.commit().expect("commit");
    let got = submit_results(&mut net);
    assert_eq!(code_of(&got[&1][0]), ErrorCode::INTERNAL);
    assert_eq!(
        seq_of(&got[&2][0]),
        2,
        "the other conversation's event is written"
    );
    assert_eq!(code_of(&got[&3][0]), ErrorCode::INTERNAL);
    assert_eq!(seq_of(&got[&4][0]), 3, "staged after it, kept");
    let cursors = net.core.store().cursors(&a.key.device()).expect("cursors");
    assert_eq!(
        cursors.get(&ConversationId([2; 16])),
        Some(&1),
        "cursor kept"
    );
    // Resubmitted, the raced events are sequenced after the stored head.
    assert_eq!(
        net.submit(&a, &[in_1, later_1])
            .iter()
            .map(seq_of)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(net.core.store().n_events().expect("n"), 6);
}

/// A submit staged after the job whose only events are in the raced conversation is taken out
/// with them and answered at once. Before, it stayed in the next batch, which had no event
/// left, so no commit ever took it and its device waited for an answer forever (found by
/// `relay/tests/cluster.rs`'s hot-conversation race, which hung about one run in fifteen).
#[test]
fn a_later_submit_left_with_nothing_staged_is_answered() {
    let (mut net, mut a, _, job) = one_send_in_a_started_job("in the raced conversation");
    let later = send(&mut a, 1, "later, raced too");
    submit_nowait(&mut net, &a, std::slice::from_ref(&later), 2);
    net.core.finish_commit(
        job,
        Err(StoreError::Conflict {
            conversation: ConversationId([1; 16]),
            expected: 1,
            found: 1,
        }),
    );
    net.core.commit().expect("commit");
    let got = submit_results(&mut net);
    assert_eq!(code_of(&got[&1][0]), ErrorCode::INTERNAL);
    let later_answer = got.get(&2).expect("the later submit is answered");
    assert_eq!(code_of(&later_answer[0]), ErrorCode::INTERNAL);
    assert!(!net.core.has_staged());
}
