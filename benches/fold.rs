//! Fold throughput: a 100k-message conversation (sends, acks, cumulative receipts) folded into
//! one automerge document, committing every [`common::COMMIT_EVERY`] events.
//!
//! `cargo bench --bench fold`

mod common;

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tidings::engine::{ConversationDoc, Event, EventKind};

const N_MESSAGES: u64 = 100_000;

fn fold_all(events: &[Event], doc: &mut ConversationDoc) {
    for chunk in events.chunks(common::COMMIT_EVERY) {
        for ev in chunk {
            black_box(doc.fold(ev).expect("fold"));
        }
        doc.commit();
    }
}

fn fold<M: common::Clock>(c: &mut Criterion<M>) {
    let cast = common::Cast::new();
    let conv = common::conversation_id(0);
    let events = common::conversation(&cast, conv, N_MESSAGES);

    let mut g = c.benchmark_group(common::group::<M>("fold"));
    common::slow_group_settings(&mut g, Duration::from_secs(40));
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("100k_messages_commit_every_1000", |b| {
        b.iter_with_large_drop(|| {
            let mut doc = ConversationDoc::new(conv, common::actor(1));
            fold_all(&events, &mut doc);
            doc
        })
    });
    g.finish();

    // Where the time goes: the same stream split by kind, each part folded on top of the
    // messages it refers to (acks and receipts need their messages to do their real work).
    let sends: Vec<Event> = events
        .iter()
        .filter(|e| matches!(e.kind(), EventKind::Create { .. } | EventKind::Send { .. }))
        .cloned()
        .collect();
    let rest: Vec<Event> = events
        .iter()
        .filter(|e| !matches!(e.kind(), EventKind::Create { .. } | EventKind::Send { .. }))
        .cloned()
        .collect();
    let mut g = c.benchmark_group(common::group::<M>("fold_split"));
    common::slow_group_settings(&mut g, Duration::from_secs(20));
    g.throughput(Throughput::Elements(sends.len() as u64));
    g.bench_function("sends_only", |b| {
        b.iter_with_large_drop(|| {
            let mut doc = ConversationDoc::new(conv, common::actor(1));
            fold_all(&sends, &mut doc);
            doc
        })
    });
    g.throughput(Throughput::Elements(rest.len() as u64));
    g.bench_function("acks_and_receipts_after_sends", |b| {
        b.iter_batched(
            || {
                let mut doc = ConversationDoc::new(conv, common::actor(1));
                fold_all(&sends, &mut doc);
                doc
            },
            |mut doc| {
                fold_all(&rest, &mut doc);
                doc
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn main() {
    common::main(fold, fold);
}
