//! The device library against a real relay on 127.0.0.1 over QUIC.

mod common;

use common::net::{
    accept_invitation, all_at_least, all_pages, config, eventually, ids, open, open_device, relay,
    statuses, Proxy,
};
use common::{device, user};
use futures::StreamExt;
use std::time::Duration;
use tidings::engine::{ConversationId, MessageId, RetryPolicy, Status};
use tidings::relay::Limits;
use tidings::replica::{Body, ReplicaError, Update};

fn conv(n: u8) -> ConversationId {
    ConversationId([n; 16])
}

/// Alice's phone, Alice's laptop and Bob's phone, all connected, in one conversation.
struct Trio {
    _dir: tempfile::TempDir,
    relay: tidings::relay::server::RelayHandle,
    phone: tidings::replica::Replica,
    laptop: tidings::replica::Replica,
    bob: tidings::replica::Replica,
    conv: ConversationId,
}

async fn trio(limits: Limits) -> Trio {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir.path().join("relay"), limits).await;
    let (alice, bobu) = (user(1), user(2));
    let (phone, _) = open_device(&relay, dir.path(), "phone", &alice, 11).await;
    let (laptop, _) = open_device(&relay, dir.path(), "laptop", &alice, 12).await;
    let (bob, _) = open_device(&relay, dir.path(), "bob", &bobu, 21).await;
    let c = conv(1);
    phone
        .create_conversation(c, vec![bobu.id])
        .await
        .expect("create");
    accept_invitation(&bob, c).await;
    for r in [&phone, &laptop, &bob] {
        eventually(20, "conversation everywhere", || async {
            r.conversation(c).await.is_ok_and(|s| s.members.is_some())
        })
        .await;
    }
    // The epoch's shares to the devices the relay named (queued when its answer came) have
    // left too: the tests count what they queue themselves.
    eventually(20, "the phone's outbox is empty", || async {
        phone.outbox().await.is_ok_and(|o| o.is_empty())
    })
    .await;
    Trio {
        _dir: dir,
        relay,
        phone,
        laptop,
        bob,
        conv: c,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airplane_mode_sends_show_pending_then_go_out_in_order() {
    let t = trio(Limits::default()).await;
    t.phone.network_changed(false).await.expect("offline");
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            t.phone
                .send(t.conv, format!("offline {i}").into_bytes())
                .await
                .expect("send"),
        );
        // Visible at once, PENDING, in send order, before any network.
        assert_eq!(ids(&t.phone, t.conv).await, sent);
        assert_eq!(
            statuses(&t.phone, t.conv, &sent).await,
            vec![Status::Pending; sent.len()]
        );
    }
    assert_eq!(t.phone.outbox().await.expect("outbox").len(), 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        statuses(&t.phone, t.conv, &sent).await,
        vec![Status::Pending; 5],
        "still offline"
    );

    t.phone.network_changed(true).await.expect("online");
    eventually(20, "SENT on the phone", || {
        all_at_least(&t.phone, t.conv, &sent, Status::Sent)
    })
    .await;
    eventually(20, "Bob has them", || async {
        ids(&t.bob, t.conv).await == sent
    })
    .await;
    // Server order equals send order.
    let snap = t.bob.conversation(t.conv).await.expect("conv");
    let seqs: Vec<u64> = snap
        .messages
        .iter()
        .map(|m| m.view.seq.expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The messages left; key events written after the catch-up (the epoch shared with Bob's
    // newly learned device) may still be on their way: the outbox drains.
    eventually(20, "the phone's outbox drains", || async {
        t.phone.outbox().await.expect("outbox").is_empty()
    })
    .await;
    t.relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_device_delivers_its_outbox_exactly_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir.path().join("relay"), Limits::default()).await;
    let (alice, bobu) = (user(1), user(2));
    let (k1, _) = device(&alice, 11);
    let (k3, _) = device(&bobu, 21);
    let bob = open(
        dir.path(),
        "bob",
        k3.clone(),
        config(&relay, relay.addr(), &k3, &bobu),
    )
    .await;
    let c = conv(2);
    let cfg = config(&relay, relay.addr(), &k1, &alice);

    // The phone runs on its own runtime so that it can be killed without any cleanup.
    let (d, k, cfg2, bob_id) = (dir.path().to_path_buf(), k1.clone(), cfg.clone(), bobu.id);
    let sent: Vec<MessageId> = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("rt");
        let sent = rt.block_on(async move {
            let phone = open(&d, "phone", k, cfg2).await;
            phone.network_changed(false).await.expect("offline");
            phone
                .create_conversation(c, vec![bob_id])
                .await
                .expect("create");
            let mut sent = Vec::new();
            for i in 0..10 {
                sent.push(
                    phone
                        .send(c, format!("before crash {i}").into_bytes())
                        .await
                        .expect("send"),
                );
            }
            // The handle is never dropped: the driver gets no close, takes no snapshot.
            std::mem::forget(phone);
            sent
        });
        // Every task is dropped where it stands.
        rt.shutdown_timeout(Duration::from_secs(2));
        sent
    })
    .join()
    .expect("device thread");
    // First reopened where no relay answers (a bound socket that never replies), so what
    // survived is counted before anything can leave.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("silent socket");
    let mut offline_cfg = cfg.clone();
    offline_cfg.relay_addr = silent.local_addr().expect("addr");
    let phone = open(dir.path(), "phone", k1.clone(), offline_cfg).await;
    assert_eq!(
        phone.outbox().await.expect("outbox").len(),
        12,
        "create, the first epoch's keys and 10 sends survived"
    );
    phone.close().await.expect("close");
    drop(phone);
    let phone = open(dir.path(), "phone", k1, cfg).await;
    assert_eq!(ids(&phone, c).await, sent);
    accept_invitation(&bob, c).await;
    eventually(20, "Bob has all ten", || async {
        ids(&bob, c).await.len() == 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&bob, c).await, sent, "exactly once, in order");
    eventually(20, "phone outbox drained", || async {
        phone.outbox().await.expect("o").is_empty()
    })
    .await;
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_ack_is_retried_and_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir.path().join("relay"), Limits::default()).await;
    let proxy = Proxy::start(relay.addr()).await;
    let (alice, bobu) = (user(1), user(2));
    let (k1, _) = device(&alice, 11);
    let (k2, _) = device(&alice, 12);
    let (k3, _) = device(&bobu, 21);
    // The phone talks through the proxy; the others directly.
    let phone = open(
        dir.path(),
        "phone",
        k1.clone(),
        config(&relay, proxy.addr, &k1, &alice),
    )
    .await;
    let laptop = open(
        dir.path(),
        "laptop",
        k2.clone(),
        config(&relay, relay.addr(), &k2, &alice),
    )
    .await;
    let bob = open(
        dir.path(),
        "bob",
        k3.clone(),
        config(&relay, relay.addr(), &k3, &bobu),
    )
    .await;
    let c = conv(3);
    phone
        .create_conversation(c, vec![bobu.id])
        .await
        .expect("create");
    accept_invitation(&bob, c).await;
    eventually(20, "bob sees the conversation", || async {
        bob.conversation(c).await.is_ok_and(|s| s.members.is_some())
    })
    .await;

    // The relay gets the submission, its ack never comes back.
    proxy
        .drop_to_client
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let m = phone
        .send(c, b"did you get this?".to_vec())
        .await
        .expect("send");
    eventually(20, "the relay accepted it (Bob has it)", || async {
        ids(&bob, c).await == vec![m]
    })
    .await;
    assert_eq!(
        statuses(&phone, c, std::slice::from_ref(&m)).await,
        vec![Status::Pending],
        "no ack reached the phone"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await; // ack timeout, retries, dead path
    proxy.set_up(true);
    eventually(30, "SENT on the phone", || {
        all_at_least(&phone, c, std::slice::from_ref(&m), Status::Sent)
    })
    .await;
    eventually(20, "the laptop has it", || async {
        ids(&laptop, c).await == vec![m]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in [&phone, &laptop, &bob] {
        assert_eq!(
            ids(r, c).await,
            vec![m],
            "one message only, on every device"
        );
    }
    let seq = |snap: tidings::replica::ConversationSnapshot| snap.messages[0].view.seq;
    let s = seq(bob.conversation(c).await.expect("c"));
    assert_eq!(
        seq(phone.conversation(c).await.expect("c")),
        s,
        "the resubmission got the same sequence"
    );
    relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_catches_up_on_a_thousand_messages() {
    let t = trio(Limits::default()).await;
    t.bob.network_changed(false).await.expect("bob offline");
    let mut sent = Vec::new();
    for i in 0..1_000 {
        sent.push(
            t.phone
                .send(t.conv, format!("m{i}").into_bytes())
                .await
                .expect("send"),
        );
    }
    eventually(60, "all SENT", || {
        all_at_least(&t.phone, t.conv, &sent, Status::Sent)
    })
    .await;
    t.bob.network_changed(true).await.expect("bob online");
    eventually(60, "Bob has all 1,000", || async {
        ids(&t.bob, t.conv).await.len() == 1_000
    })
    .await;
    let snap = t.bob.conversation(t.conv).await.expect("conv");
    assert_eq!(
        snap.messages.iter().map(|m| m.view.id).collect::<Vec<_>>(),
        sent,
        "server order = send order"
    );
    assert_eq!(snap.unread, 1_000);
    for r in [&t.phone, &t.laptop] {
        eventually(60, "DELIVERED on Alice's devices", || {
            all_at_least(r, t.conv, &sent, Status::Delivered)
        })
        .await;
    }
    t.relay.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_device_sent_on_laptop_read_state_on_phone() {
    let t = trio(Limits::default()).await;
    let m = t
        .phone
        .send(t.conv, b"from the phone".to_vec())
        .await
        .expect("send");
    eventually(20, "SENT on the laptop", || {
        all_at_least(&t.laptop, t.conv, std::slice::from_ref(&m), Status::Sent)
    })
    .await;
    let b = t
        .bob
        .send(t.conv, b"hi alice".to_vec())
        .await
        .expect("send");
    eventually(20, "phone got Bob's", || async {
        ids(&t.phone, t.conv).await.contains(&b)
    })
    .await;
    eventually(20, "laptop got Bob's", || async {
        ids(&t.laptop, t.conv).await.contains(&b)
    })
    .await;
    assert_eq!(t.phone.conversation(t.conv).await.expect("c").unread, 1);
    t.laptop
        .mark_read(t.conv, None)
        .await
        .expect("read on laptop");
    eventually(20, "unread 0 on the phone", || async {
        t.phone.conversation(t.conv).await.expect("c").unread == 0
    })
    .await;
    let list = t.phone.conversations().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].unread, 0);
    eventually(20, "Bob sees his message read", || {
        all_at_least(&t.bob, t.conv, std::slice::from_ref(&b), Status::Read)
    })
    .await;
    t.relay.shutdown().await.expect("shutdown");
}

/// A relay that takes one event per second per device (a burst of three), Alice's phone with
/// two quick attempts per event (and `failed_report_after_ms`), and Bob's device.
async fn rate_limited_pair(
    failed_report_after_ms: Option<u64>,
) -> (
    tempfile::TempDir,
    tidings::relay::server::RelayHandle,
    tidings::replica::Replica,
    tidings::replica::Replica,
    common::User,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay(&dir.path().join("relay"), Limits::default().with_rate(1, 3)).await;
    let (alice, bobu) = (user(1), user(2));
    let (k1, _) = device(&alice, 11);
    let mut cfg = config(&relay, relay.addr(), &k1, &alice);
    cfg.device.retry = RetryPolicy {
        base_ms: 20,
        max_ms: 40,
        max_attempts: 2,
        jitter_pct: 0,
    };
    cfg.device.failed_report_after_ms = failed_report_after_ms;
    let phone = open(dir.path(), "phone", k1, cfg).await;
    let (bob, _) = open_device(&relay, dir.path(), "bob", &bobu, 21).await;
    (dir, relay, phone, bob, bobu)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fail_and_retry_delivers() {
    // One event per second per device, a burst of three: the create, the first epoch's
    // keys and one message pass; the second message is refused until the rate refills.
    let (_dir, relay, phone, bob, bobu) = rate_limited_pair(None).await;
    let c = conv(6);
    phone
        .create_conversation(c, vec![bobu.id])
        .await
        .expect("create");
    let first = phone.send(c, b"one".to_vec()).await.expect("send");
    let second = phone.send(c, b"two".to_vec()).await.expect("send");
    eventually(20, "first SENT", || {
        all_at_least(&phone, c, std::slice::from_ref(&first), Status::Sent)
    })
    .await;
    eventually(20, "second FAILED", || async {
        statuses(&phone, c, std::slice::from_ref(&second)).await == vec![Status::Failed]
    })
    .await;
    // The rate refills. The phone learns Bob's device after the create is acked and shares
    // the epoch with it: that event keeps retrying (events without a retry button never
    // give up) and takes the first token back, so wait for two.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    phone.retry(second).await.expect("retry");
    eventually(20, "second SENT after retry", || {
        all_at_least(&phone, c, std::slice::from_ref(&second), Status::Sent)
    })
    .await;
    // Bob takes the invitation (a request, not an event: it costs the phone no token).
    accept_invitation(&bob, c).await;
    eventually(20, "second reaches Bob", || async {
        ids(&bob, c).await == vec![first, second]
    })
    .await;
    eventually(20, "DELIVERED after retry", || {
        all_at_least(&phone, c, std::slice::from_ref(&second), Status::Delivered)
    })
    .await;
    relay.shutdown().await.expect("shutdown");
}

/// The first update Bob's device publishes for `message`, with what it carries.
async fn added(
    updates: &mut tidings::replica::Updates,
    message: MessageId,
) -> Option<Box<tidings::replica::Rendered>> {
    let wait = async {
        loop {
            match updates.next().await.expect("updates") {
                Update::MessageAdded {
                    message: m,
                    rendered,
                    ..
                } if m == message => return rendered,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("the message arrives")
}

/// A UI renders an incoming message from its update alone: the update carries the message's
/// view and decrypted body, read from the index after the fold. The sender's own update
/// carries its body too; pages and single reads give the same message, and after `close`
/// the reads answer `Closed` and the data directory opens again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_message_arrives_rendered_with_its_body() {
    let t = trio(Limits::default()).await;
    let mut on_bob = t.bob.updates();
    let mut on_phone = t.phone.updates();
    let m = t
        .phone
        .send(t.conv, b"rendered in the update".to_vec())
        .await
        .expect("send");
    let own = added(&mut on_phone, m)
        .await
        .expect("rendered for the sender");
    assert_eq!(own.body, Body::Text(b"rendered in the update".to_vec()));
    let shown = added(&mut on_bob, m)
        .await
        .expect("rendered for the recipient");
    assert_eq!(shown.view.id, m);
    assert_eq!(shown.body, Body::Text(b"rendered in the update".to_vec()));
    let one = t
        .bob
        .message(t.conv, m)
        .await
        .expect("read")
        .expect("shown");
    assert_eq!(one.body, shown.body);
    assert_eq!(
        all_pages(&t.bob, t.conv).await.last().map(|r| r.view.id),
        Some(m)
    );

    t.bob.close().await.expect("close");
    assert!(matches!(
        t.bob.page(t.conv, None, 10).await,
        Err(ReplicaError::Closed)
    ));
    // The handle still lives; its reader went with the driver, so the file opens again.
    let bobu = user(2);
    let (k3, _) = device(&bobu, 21);
    let cfg = config(&t.relay, t.relay.addr(), &k3, &bobu);
    let again = open(t._dir.path(), "bob", k3, cfg).await;
    let read = again
        .message(t.conv, m)
        .await
        .expect("read")
        .expect("shown");
    assert_eq!(read.body, shown.body);
    t.relay.shutdown().await.expect("shutdown");
}

/// Issue 17: a FAILED message stays FAILED (and in the outbox) until the app acts; once it
/// has been FAILED for the configured age the app hears of it once, and dropping it (on the
/// app's word) takes it out of every view without stopping what the device sends after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_is_reported_once_and_dropped_only_on_the_apps_word() {
    // As above: the create, the epoch's keys and `first` pass; `second` is refused until the
    // rate refills, and its two attempts run out.
    let (_dir, relay, phone, bob, bobu) = rate_limited_pair(Some(200)).await;
    let mut updates = phone.updates();
    let c = conv(7);
    phone
        .create_conversation(c, vec![bobu.id])
        .await
        .expect("create");
    let first = phone.send(c, b"one".to_vec()).await.expect("send");
    let second = phone.send(c, b"two".to_vec()).await.expect("send");
    let reported = async {
        loop {
            if let Update::FailedExpired {
                conversation,
                messages,
            } = updates.next().await.expect("updates")
            {
                return (conversation, messages);
            }
        }
    };
    let (conversation, messages) = tokio::time::timeout(Duration::from_secs(20), reported)
        .await
        .expect("the FAILED message is reported");
    assert_eq!(conversation, c);
    assert_eq!(
        messages.iter().map(|m| m.message).collect::<Vec<_>>(),
        vec![second]
    );
    // Reported, not dropped: still FAILED, still listed.
    assert_eq!(statuses(&phone, c, &[second]).await, vec![Status::Failed]);
    let listed = phone.failed_messages(Duration::ZERO).await.expect("list");
    assert_eq!(listed, messages);
    // A SENT message is not FAILED: refused, and nothing dropped.
    assert!(phone.discard_failed(vec![second, first]).await.is_err());
    assert_eq!(ids(&phone, c).await, vec![first, second]);

    let dropped = phone.discard_failed(vec![second]).await.expect("discard");
    assert_eq!(dropped, messages);
    assert_eq!(ids(&phone, c).await, vec![first]);
    let outbox = phone.outbox().await.expect("outbox");
    assert!(outbox.iter().all(|e| e.message != Some(second)));
    assert!(phone
        .failed_messages(Duration::ZERO)
        .await
        .expect("list")
        .is_empty());
    // The chain goes on past the dropped event: the next message reaches Bob, the dropped
    // one never does.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let third = phone.send(c, b"three".to_vec()).await.expect("send");
    accept_invitation(&bob, c).await;
    eventually(20, "third reaches Bob", || async {
        ids(&bob, c).await == vec![first, third]
    })
    .await;
    relay.shutdown().await.expect("shutdown");
}
