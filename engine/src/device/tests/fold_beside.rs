//! A relay page's fold run beside the core (`Store::set_fold_runner`): the same messages,
//! statuses and changes as the fold in place, and nothing lost when the job is.

use super::*;
use crate::conversation::MessageView;
use crate::store::{FoldRunner, OFFLOAD_MIN_EVENTS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bob's Create and `n` messages after it, chained.
fn bobs_messages(n: usize, t0: u64) -> Vec<Event> {
    let (create, _) = bobs_conversation(t0);
    let bob = bob();
    let mut events = vec![create];
    for i in 0..n as u64 {
        let prev = events.last().map(Event::id);
        let h = bob.header(CONV, i + 2, prev, i + 2, t0 + i);
        let kind = EventKind::Send {
            message: h.message_id(),
            body: format!("m{i}").into_bytes(),
            media: vec![],
        };
        events.push(Event::sign(bob.signing_key(), h, kind).expect("sign"));
    }
    events
}

/// A ready core (with `runner` if any) told that CONV holds `events`, placed at 1, 2, ...,
/// after it handled one page holding them all.
fn caught_up(events: &[Event], runner: Option<FoldRunner>, t0: u64) -> DeviceCore {
    let config = DeviceConfig {
        pull_limit: crate::wire::MAX_PAGE_ITEMS as u32,
        ..DeviceConfig::default()
    };
    let (mut core, pulls) = catching_up_with(CONV, events.len() as u64, config, t0);
    if let Some(r) = runner {
        core.store_mut().set_fold_runner(r);
    }
    let (request_id, _, _) = pulls[0];
    core.handle_frame(
        ServerFrame::Page {
            request_id,
            conversation: CONV,
            events: events
                .iter()
                .map(|e| Envelope(e.bytes().to_vec()))
                .collect(),
            records: events
                .iter()
                .zip(1u64..)
                .map(|(e, seq)| Envelope(ack(e, seq, t0).into_bytes()))
                .collect(),
            more: false,
        },
        t0,
    )
    .expect("page");
    core
}

/// Every change the core reported, as text, sorted (a fold beside the core reports its
/// changes later than the fold in place, not other ones).
fn changes(core: &mut DeviceCore) -> Vec<String> {
    let mut out: Vec<String> = std::iter::from_fn(|| core.poll_event())
        .filter_map(|e| match e {
            DeviceEvent::Changes(c) => Some(c),
            _ => None,
        })
        .flatten()
        .map(|c| format!("{c:?}"))
        .collect();
    out.sort();
    out
}

fn messages(core: &mut DeviceCore) -> Vec<MessageView> {
    core.store_mut()
        .conversation(CONV)
        .expect("conversation")
        .messages()
}

/// Runs each job on a thread of its own, counting the jobs.
fn on_threads(jobs: Arc<AtomicUsize>) -> FoldRunner {
    Box::new(move |job| {
        jobs.fetch_add(1, Ordering::SeqCst);
        let h = std::thread::spawn(move || job.run());
        Box::new(move || h.join().ok())
    })
}

#[test]
fn a_page_folded_beside_the_core_shows_what_the_fold_in_place_shows() {
    let t0 = 1_000_000;
    let events = bobs_messages(OFFLOAD_MIN_EVENTS + 72, t0);
    let mut in_place = caught_up(&events, None, t0);
    let jobs = Arc::new(AtomicUsize::new(0));
    let mut beside = caught_up(&events, Some(on_threads(jobs.clone())), t0);
    assert_eq!(
        jobs.load(Ordering::SeqCst),
        1,
        "the page's fold left as a job"
    );
    // What the replica does when no frame waits.
    beside.settle_folds().expect("settled");

    let (want, got) = (changes(&mut in_place), changes(&mut beside));
    assert!(want.len() > events.len(), "{} changes", want.len());
    assert_eq!(got, want);
    let want = messages(&mut in_place);
    assert_eq!(want.len(), events.len() - 1);
    assert_eq!(messages(&mut beside), want);
    // The receipt for the page went out either way.
    assert_eq!(
        delivered_receipts(&drain(&mut beside)),
        vec![events.len() as u64]
    );
}

#[test]
fn a_document_read_while_its_page_folds_beside_waits_for_the_fold() {
    let t0 = 1_000_000;
    let events = bobs_messages(OFFLOAD_MIN_EVENTS, t0);
    let jobs = Arc::new(AtomicUsize::new(0));
    let mut core = caught_up(&events, Some(on_threads(jobs.clone())), t0);
    assert_eq!(jobs.load(Ordering::SeqCst), 1);
    // No settle first: the read takes the job back itself.
    assert_eq!(messages(&mut core).len(), events.len() - 1);
    // Its changes are handed out with the core's next events.
    let shown = changes(&mut core);
    assert!(
        shown.iter().filter(|c| c.contains("MessageAdded")).count() >= events.len() - 1,
        "{shown:?}"
    );
}

#[test]
fn a_lost_fold_job_loses_no_message() {
    let t0 = 1_000_000;
    let events = bobs_messages(OFFLOAD_MIN_EVENTS, t0);
    let lost: FoldRunner = Box::new(|job| {
        drop(job);
        Box::new(|| None)
    });
    let mut core = caught_up(&events, Some(lost), t0);
    let settled = core.settle_folds();
    assert!(settled.is_err(), "{settled:?}");
    // The document reloads from the log, which holds the whole page.
    assert_eq!(messages(&mut core).len(), events.len() - 1);
    assert_eq!(
        core.store()
            .log()
            .cursor(&cursor_key(&CONV))
            .expect("cursor"),
        events.len() as u64
    );
}
