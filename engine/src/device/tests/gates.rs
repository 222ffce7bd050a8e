//! Gates and keys: a stalled gate asks again, an unanswered certificate request still reaches a
//! verdict, a refused key share is asked for again, a held removal is reported once.

use super::*;

/// Found by the simulator (tests/sim, seed 848): a device took in a conversation whose
/// creator's certificate it did not have, asked the relay, and lost the connection (and the
/// question) before the answer. On the next connections nothing new arrived in that
/// conversation, so nothing asked again: the gate stayed closed and the device never showed
/// the conversation. A restart lost even the memory of the stalled gate.
#[test]
fn a_stalled_gate_asks_again_on_the_next_connection_even_after_a_restart() {
    let t0 = 1_000_000;
    let (create, send) = bobs_conversation(t0);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.redb");
    let key = || DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let config = || {
        let mut c = StoreConfig::new(relay().device());
        c.encrypt = false;
        c
    };
    {
        // Bob's certificate is unknown here: his events wait behind the gate.
        let log = EventLog::open(&path).expect("log");
        let mut store = Store::new(log, key(), config(), [1; 32]);
        let events = [
            create.clone(),
            ack(&create, 1, t0),
            send.clone(),
            ack(&send, 2, t0),
        ];
        let out = store.apply(&events).expect("apply");
        assert_eq!(out.waiting, vec![bob_user()]);
        store
            .log()
            .write(|t| t.set_cursor(&cursor_key(&CONV), 2))
            .expect("cursor");
    }
    // Restarted: the question asked before is gone with the old connection.
    let log = EventLog::open(&path).expect("log");
    let store = Store::new(log, key(), config(), [1; 32]);
    let mut core = DeviceCore::new(store, relay().device(), DeviceConfig::default(), 1);
    handshake(&mut core, t0);
    let Some(ClientFrame::Sync { request_id, .. }) = drain(&mut core)
        .into_iter()
        .find(|f| matches!(f, ClientFrame::Sync { .. }))
    else {
        panic!("expected a Sync");
    };
    // Nothing new in the conversation.
    let listing = one_conversation_listed(request_id);
    core.handle_frame(listing, t0).expect("conversations");
    let asked: Vec<(u64, Vec<UserId>)> = drain(&mut core)
        .into_iter()
        .filter_map(|f| match f {
            ClientFrame::Devices {
                request_id, users, ..
            } => Some((request_id, users)),
            _ => None,
        })
        .collect();
    let Some((request_id, users)) = asked.iter().find(|(_, u)| u.contains(&bob_user())) else {
        panic!("no certificate request for Bob: {asked:?}");
    };
    // The answer opens the gate: the conversation shows, with Bob's message.
    let answer = ServerFrame::Devices {
        request_id: *request_id,
        registrations: vec![bob().certificate(&bob_user_key(), 1)],
        revocations: vec![],
        complete: users.len() as u32,
        resume_after: None,
    };
    core.handle_frame(answer, t0).expect("devices");
    let conv = core.store_mut().conversation(CONV).expect("conversation");
    assert_eq!(conv.members().map(<[_]>::len), Some(2));
    assert_eq!(conv.messages().len(), 1);
}

/// Issue #12, "Device-registration freeze": a relay that refuses (or never answers) the
/// request for an author's certificates — an answer over its size limit was refused — left
/// the gate waiting at that author's first event for good, and every event behind it with
/// it. The device asks a bounded number of times, then gives the event a final verdict.
#[test]
fn a_gate_whose_certificate_request_is_never_answered_reaches_a_verdict() {
    let t0 = 1_000_000;
    let (create, send) = bobs_conversation(t0);
    let key = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    let mut config = StoreConfig::new(relay().device());
    config.encrypt = false;
    // Bob's certificate is unknown here: his events wait behind the gate.
    let mut store = Store::new(EventLog::in_memory().expect("log"), key, config, [1; 32]);
    let events = [
        create.clone(),
        ack(&create, 1, t0),
        send.clone(),
        ack(&send, 2, t0),
    ];
    let out = store.apply(&events).expect("apply");
    assert_eq!(out.waiting, vec![bob_user()]);
    let mut core = DeviceCore::new(store, relay().device(), DeviceConfig::default(), 1);
    handshake(&mut core, t0);
    let mut now = t0;
    let mut ignored = Vec::new();
    let mut refusals = 0;
    for _ in 0..64 {
        for f in drain(&mut core) {
            match f {
                ClientFrame::Sync { request_id, .. } => {
                    let listing = one_conversation_listed(request_id);
                    core.handle_frame(listing, now).expect("conversations");
                }
                ClientFrame::Devices { request_id, .. } => {
                    refusals += 1;
                    let refused = ServerFrame::Refused {
                        request_id,
                        code: ErrorCode::BATCH_TOO_LARGE,
                        message: "over 4096 devices; ask for fewer users".into(),
                    };
                    core.handle_frame(refused, now).expect("refused");
                }
                _ => {}
            }
        }
        while let Some(e) = core.poll_event() {
            if let DeviceEvent::Ignored(r) = e {
                ignored.push(r);
            }
        }
        if !ignored.is_empty() {
            break;
        }
        now = core.poll_timeout().unwrap_or(now + 60_000).max(now + 1);
        core.handle_timeout(now).expect("timeout");
    }
    assert!(
        !ignored.is_empty(),
        "no verdict after {refusals} refused certificate requests: the gate waits forever"
    );
    assert_eq!(ignored[0].event, create.id());
    assert!(
        matches!(ignored[0].refusal, Refusal::Unanswered { user, .. } if user == bob_user()),
        "{:?}",
        ignored[0].refusal
    );
}

/// Issue #12, "Epoch-key poisoning", at the device core: the store refuses a share whose key
/// is not the one the epoch committed to and keeps the epoch missing; the core must then ask
/// again (a new `KeyRequest`), not stay with the one request it made for the epoch.
#[test]
fn a_refused_key_share_makes_the_device_ask_again() {
    use crate::crypto::EpochKey;
    use crate::e2ee::{self, EpochOrigin};
    let t0 = 1_000_000;
    let bob = bob();
    let me = DeviceKey::from_seed([1; 32], UserId([1; 32]));
    // Bob's conversation with me: his epoch, committed to `right` and sealed to him alone,
    // and his message under it.
    let right = EpochKey::from_bytes([0x51; 32]);
    let create = bobs(
        1,
        None,
        EventKind::Create {
            members: vec![bob.user(), me.user()],
        },
        t0,
    );
    let commitment = e2ee::epoch_commitment(CONV, bob.device(), 2, &right);
    let origin = EpochOrigin::New {
        author: bob.device(),
        counter: 2,
    };
    let keys = e2ee::seal_epoch_key(
        CONV,
        origin,
        &right,
        &[(bob.device(), bob.agreement_public())],
        &[[0x52; 32]],
    );
    let opening = bobs(
        2,
        Some(&create),
        EventKind::EpochKeys {
            epoch: None,
            commitment: Some(commitment),
            keys,
        },
        t0,
    );
    let epoch = opening.id();
    let h = bob.header(CONV, 3, Some(opening.id()), 3, t0);
    let message = h.message_id();
    let aad = e2ee::body_aad(CONV, bob.device(), bob.user(), message, 3, t0, &[]);
    let body = e2ee::seal_body(epoch, &right, &aad, b"for members", [0x53; 24]);
    let kind = EventKind::Send {
        message,
        body,
        media: vec![],
    };
    let send = Event::sign(bob.signing_key(), h, kind).expect("sign");
    let mut config = StoreConfig::new(relay().device());
    config.encrypt = true;
    let mut store = Store::new(
        EventLog::in_memory().expect("log"),
        me.clone(),
        config,
        [1; 32],
    );
    let cert = bob.certificate(&bob_user_key(), 1);
    store
        .absorb_devices(std::slice::from_ref(&cert), &[], &[])
        .expect("directory");
    let events = [
        create.clone(),
        ack(&create, 1, t0),
        opening.clone(),
        ack(&opening, 2, t0),
        send.clone(),
        ack(&send, 3, t0),
    ];
    store.apply(&events).expect("apply");
    store
        .log()
        .write(|t| t.set_cursor(&cursor_key(&CONV), 3))
        .expect("cursor");
    let mut core = DeviceCore::new(store, relay().device(), DeviceConfig::default(), 1);
    handshake(&mut core, t0);
    // Catch-up: the list, the members' certificates, a receipt; the device asks for the key.
    let certs = [cert];
    let mut seq = 3;
    let mut asked = Vec::new();
    for _ in 0..4 {
        asked.extend(relay_round(&mut core, &certs, &mut seq, t0));
    }
    assert_eq!(asked, vec![epoch], "one request for the missing key");
    // Bob answers with a key that is not the committed one.
    let wrong = EpochKey::from_bytes([0x66; 32]);
    let keys = e2ee::seal_epoch_key(
        CONV,
        EpochOrigin::Shared(epoch),
        &wrong,
        &[(me.device(), me.agreement_public())],
        &[[0x67; 32]],
    );
    let share = bobs(
        4,
        Some(&send),
        EventKind::EpochKeys {
            epoch: Some(epoch),
            commitment: None,
            keys,
        },
        t0,
    );
    seq += 1;
    core.handle_frame(push(&share, seq), t0).expect("push");
    let refused: Vec<DeviceEvent> = std::iter::from_fn(|| core.poll_event())
        .filter(|e| matches!(e, DeviceEvent::KeyShareRefused(_)))
        .collect();
    assert_eq!(refused.len(), 1, "the wrong share is refused and reported");
    let mut again = Vec::new();
    for _ in 0..4 {
        again.extend(relay_round(&mut core, &certs, &mut seq, t0));
    }
    assert_eq!(
        again,
        vec![epoch],
        "no new KeyRequest after the refused share"
    );
}

/// Issue #12, "Malicious relay": a removal pushed past a withheld sequence cannot be placed,
/// but the device holds it; it says so once (`DeviceEvent::RemovalAhead`), not on every frame.
#[test]
fn a_removal_held_past_a_withheld_sequence_is_reported_once() {
    let t0 = 1_000_000;
    let mut core = ready(DeviceConfig::default(), t0);
    drain(&mut core);
    let carol = UserId([3; 32]);
    let kind = EventKind::Create {
        members: vec![bob_user(), UserId([1; 32]), carol],
    };
    let create = bobs(1, None, kind, t0);
    let send = bobs(
        2,
        Some(&create),
        EventKind::Send {
            message: crate::ids::MessageId([0; 16]),
            body: b"withheld".to_vec(),
            media: vec![],
        },
        t0,
    );
    let removal = bobs(3, Some(&send), EventKind::RemoveMember { user: carol }, t0);
    let later = bobs(
        4,
        Some(&removal),
        EventKind::Read {
            up_to: 1,
            head: None,
        },
        t0,
    );
    // Sequence 2 (Bob's message) never comes.
    for frame in [push(&create, 1), push(&removal, 3), push(&later, 4)] {
        core.handle_frame(frame, t0).expect("push");
    }
    let reported: Vec<crate::store::RemovalEvidence> = std::iter::from_fn(|| core.poll_event())
        .filter_map(|e| match e {
            DeviceEvent::RemovalAhead(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(
        reported,
        vec![crate::store::RemovalEvidence {
            conversation: CONV,
            user: carol,
            event: removal.id(),
            seq: Some(3),
        }]
    );
}

/// Accepting an invitation from a user whose certificates the device lacks asks for them
/// before the conversation is pulled. Found measuring `examples/catchup` (a new device
/// accepting 100 invitations): the first page of each conversation came before anything had
/// asked for its creator's certificates, so the gate held it, asked then, and read every
/// event of it back and folded it only when the answer came: a round trip later, and a
/// third of the catch-up's store work done twice.
#[test]
fn accepting_an_invitation_asks_for_the_inviters_certificates_before_pulling() {
    use crate::wire::Invitation;
    let t0 = 1_000_000;
    let mut core = ready(DeviceConfig::default(), t0);
    let (request_id, _) = sync_request(&drain(&mut core));
    let carol = UserId([7; 32]);
    let conversation = ConversationId([3; 16]);
    let invitations = vec![
        Invitation {
            conversation,
            inviter: carol,
        },
        Invitation {
            conversation: CONV,
            inviter: bob_user(),
        },
    ];
    core.handle_frame(
        ServerFrame::Conversations {
            request_id,
            conversations: vec![],
            next: None,
            invitations,
            blocked: vec![],
        },
        t0,
    )
    .expect("list");
    drain(&mut core);
    let accepted = |core: &mut DeviceCore, c: ConversationId| {
        // In the order sent, a window of pulls counted once.
        let mut sent: Vec<String> = accept_answered(core, c, 40, t0)
            .into_iter()
            .filter_map(|f| match f {
                ClientFrame::Devices { users, .. } => Some(format!("devices {users:?}")),
                ClientFrame::Pull { conversation, .. } => {
                    Some(format!("pull {:?}", conversation.0[0]))
                }
                _ => None,
            })
            .collect();
        sent.dedup();
        sent
    };
    assert_eq!(
        accepted(&mut core, conversation),
        vec![format!("devices {:?}", vec![carol]), "pull 3".to_string()]
    );
    // Bob's certificate is in the store already: nothing to ask.
    assert_eq!(
        accepted(&mut core, CONV),
        vec![format!("pull {:?}", CONV.0[0])]
    );
}
