//! Users' requests: the conversation list, invitations, consent and blocking.

use super::*;

/// More conversations than one Sync answer holds: every one of them is still listed, the
/// last in byte order included (it used to be cut at 16,384).
#[test]
fn sync_lists_every_conversation_however_many() {
    let mut net = Net::new(Limits::default().with_rate(1_000_000, 1_000_000));
    let mut a = net.connect(1, 10);
    let n = wire::MAX_LISTED_CONVERSATIONS as u32 + 100;
    let evs: Vec<Event> = (0..n)
        .map(|i| create_numbered(&mut a, i, &[user_id(1)]))
        .collect();
    assert_eq!(submit_all(&mut net, &a, &evs, &[]), n as usize);
    let listed = sync_all(&mut net, &a);
    assert_eq!(listed.len(), n as usize);
    let mut last = [0u8; 16];
    last[12..].copy_from_slice(&(n - 1).to_be_bytes());
    assert!(listed
        .iter()
        .any(|c| c.conversation == ConversationId(last)));
}

/// A stranger lists the victim in more conversations than one Sync answer holds, with ids
/// that sort before the victim's real ones: the victim's conversations still sync.
#[test]
fn stranger_flood_does_not_push_real_conversations_out_of_sync() {
    let mut net = Net::new(Limits::default().with_rate(1_000_000, 1_000_000));
    let mut stranger = net.connect(3, 30);
    let mut victim = net.connect(2, 20);
    let n = wire::MAX_LISTED_CONVERSATIONS as u32 + 100;
    let flood: Vec<Event> = (0..n)
        .map(|i| create_numbered(&mut stranger, i, &[user_id(3), user_id(2)]))
        .collect();
    // However many of these the relay takes, none may cost the victim its conversations.
    submit_all(&mut net, &stranger, &flood, &[ErrorCode::INVITATIONS_FULL]);
    let real = create_numbered(&mut victim, u32::MAX, &[user_id(2)]);
    assert_eq!(
        submit_all(&mut net, &victim, std::slice::from_ref(&real), &[]),
        1
    );
    let listed = sync_all(&mut net, &victim);
    assert!(
        listed.iter().any(|c| c.conversation == real.conversation()),
        "the victim's own conversation is missing from {} listed",
        listed.len()
    );
}

/// Invitations are listed apart and capped; acceptance on one device reaches the user's other
/// device at once and lists the conversation; a blocked user's Create and AddMember listing
/// the blocker are refused; all of it survives a restart.
#[test]
fn invitations_are_accepted_declined_and_blocked_per_user() {
    let mut net = Net::new(Limits::default().with_rate(1_000_000, 1_000_000));
    let mut alice = net.connect(1, 10);
    let bob1 = net.connect(2, 20);
    let bob2 = net.connect(2, 21);
    let mut eve = net.connect(3, 30);

    // Alice invites Bob; both of Bob's devices are told; nothing is listed yet.
    let c = create(&mut alice, 1, &[1, 2]);
    seq_of(&net.submit(&alice, &[c])[0]);
    let (convs, invitations, _) = sync_state(&mut net, &bob1);
    assert!(convs.is_empty());
    assert_eq!(
        invitations,
        vec![wire::Invitation {
            conversation: ConversationId([1; 16]),
            inviter: user_id(1)
        }]
    );
    net.take(bob2.session);
    // Bob accepts on one device: the other hears it without asking.
    accept(&mut net, &bob1, 1);
    let got = net.take(bob2.session);
    assert!(
        matches!(&got[..], [ServerFrame::UserChanged { change: UserChange::Accepted(i) }] if i.conversation == ConversationId([1; 16]) && i.max_seq == 1),
        "{got:?}"
    );
    let (convs, invitations, _) = sync_state(&mut net, &bob2);
    assert_eq!(convs.len(), 1);
    assert!(invitations.is_empty());

    // One stranger holds at most MAX_INVITATIONS_PER_INVITER of Bob's invitations.
    let n = wire::MAX_INVITATIONS_PER_INVITER as u32 + 5;
    let flood: Vec<Event> = (0..n)
        .map(|i| create_numbered(&mut eve, 1000 + i, &[user_id(3), user_id(2)]))
        .collect();
    let taken = submit_all(&mut net, &eve, &flood, &[ErrorCode::INVITATIONS_FULL]);
    assert_eq!(taken, wire::MAX_INVITATIONS_PER_INVITER);
    assert_eq!(
        sync_state(&mut net, &bob1).1.len(),
        wire::MAX_INVITATIONS_PER_INVITER
    );
    // Bob declines one, then blocks Eve: her pending invitations go, her new ones are refused.
    let declined = flood[0].conversation();
    let f = ClientFrame::Decline {
        request_id: 5,
        conversation: declined,
    };
    assert_eq!(
        user_request(&mut net, &bob1, f),
        Ok(UserChange::Declined(declined))
    );
    let f = ClientFrame::Block {
        request_id: 6,
        user: user_id(3),
    };
    assert_eq!(
        user_request(&mut net, &bob2, f),
        Ok(UserChange::Blocked(user_id(3)))
    );
    let (_, invitations, blocked) = sync_state(&mut net, &bob1);
    assert!(invitations.is_empty());
    assert_eq!(blocked, vec![user_id(3)]);
    let again = create_numbered(&mut eve, 5000, &[user_id(3), user_id(2)]);
    assert_eq!(code_of(&net.submit(&eve, &[again])[0]), ErrorCode::BLOCKED);
    let mut own = create(&mut eve, 7, &[3]);
    seq_of(&net.submit(&eve, std::slice::from_ref(&own))[0]);
    let add_bob = add(&mut eve, 7, 2, false);
    assert_eq!(
        code_of(&net.submit(&eve, &[add_bob])[0]),
        ErrorCode::BLOCKED
    );
    // Others may still invite Bob; a user cannot block itself.
    let f = ClientFrame::Block {
        request_id: 7,
        user: user_id(2),
    };
    assert_eq!(user_request(&mut net, &bob1, f), Err(ErrorCode::FORBIDDEN));
    own = create(&mut alice, 2, &[1, 2]);
    seq_of(&net.submit(&alice, &[own])[0]);

    // After a restart: the acceptance, the block and the pending invitation are still there.
    let mut net = restart(net);
    let bob = net.connect(2, 20);
    let mut eve = net.connect(3, 30);
    let (convs, invitations, blocked) = sync_state(&mut net, &bob);
    assert_eq!(
        convs.iter().map(|c| c.conversation).collect::<Vec<_>>(),
        vec![ConversationId([1; 16])]
    );
    assert_eq!(
        invitations
            .iter()
            .map(|i| i.conversation)
            .collect::<Vec<_>>(),
        vec![ConversationId([2; 16])]
    );
    assert_eq!(blocked, vec![user_id(3)]);
    let again = create_numbered(&mut eve, 6000, &[user_id(3), user_id(2)]);
    assert_eq!(code_of(&net.submit(&eve, &[again])[0]), ErrorCode::BLOCKED);
    // Unblocked, Eve may invite Bob again.
    let f = ClientFrame::Unblock {
        request_id: 8,
        user: user_id(3),
    };
    assert_eq!(
        user_request(&mut net, &bob, f),
        Ok(UserChange::Unblocked(user_id(3)))
    );
    let again = create_numbered(&mut eve, 6001, &[user_id(3), user_id(2)]);
    assert_eq!(submit_all(&mut net, &eve, &[again], &[]), 1);
}

/// An invitation whose inviter has since left the conversation no longer counts toward the
/// inviter's cap: it speaks for nobody in the conversation (issue 12, stale invitations).
#[test]
fn a_stale_invitation_does_not_count_toward_the_caps() {
    let mut net = Net::new(Limits::default().with_rate(1_000_000, 1_000_000));
    let mut alice = net.connect(1, 10);
    let _bob = net.connect(2, 20);
    let mut eve = net.connect(3, 30);
    // In each of Alice's conversations Eve is an admin and invites Bob.
    let n = u8::try_from(wire::MAX_INVITATIONS_PER_INVITER).expect("fits");
    for conv in 1..=n {
        let c = create(&mut alice, conv, &[1]);
        let a = add(&mut alice, conv, 3, true);
        assert_eq!(submit_all(&mut net, &alice, &[c, a], &[]), 2);
        let b = add(&mut eve, conv, 2, false);
        assert_eq!(submit_all(&mut net, &eve, &[b], &[]), 1);
    }
    let more = create_numbered(&mut eve, 9000, &[user_id(3), user_id(2)]);
    assert_eq!(
        code_of(&net.submit(&eve, &[more])[0]),
        ErrorCode::INVITATIONS_FULL
    );
    // Eve leaves one of them: that invitation no longer speaks for her, one slot is free.
    let leave = remove(&mut eve, 1, 3);
    assert_eq!(submit_all(&mut net, &eve, &[leave], &[]), 1);
    let more = create_numbered(&mut eve, 9001, &[user_id(3), user_id(2)]);
    assert_eq!(
        submit_all(&mut net, &eve, &[more], &[]),
        1,
        "a stale invitation still counts toward the inviter's cap"
    );
    let more = create_numbered(&mut eve, 9002, &[user_id(3), user_id(2)]);
    assert_eq!(
        code_of(&net.submit(&eve, &[more])[0]),
        ErrorCode::INVITATIONS_FULL
    );
}
