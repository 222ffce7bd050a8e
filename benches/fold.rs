//! Fold throughput: a conversation (sends, acks, cumulative receipts) folded into its
//! documents, committing every [`common::COMMIT_EVERY`] events, at several history lengths.
//!
//! `cargo bench --bench fold` (1k and 100k messages; set [`HISTORY_ENV`], e.g.
//! `FOLD_HISTORY=1000,10000,100000`, for other lengths: `scripts/fold_plot.py` plots them).
//! Throughput is in **messages**: the event count per message changes with the model.

mod common;

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tidings::engine::{ConversationDoc, Event, EventKind};

/// Comma-separated history lengths (messages) to fold.
const HISTORY_ENV: &str = "FOLD_HISTORY";
/// Lengths folded when [`HISTORY_ENV`] is unset: the 1k / 100k pair.
const DEFAULT_HISTORY: [u64; 2] = [1_000, 100_000];
/// The history of the split benches ("where the time goes").
const SPLIT_MESSAGES: u64 = 100_000;

fn fold_all(events: &[Event], doc: &mut ConversationDoc) {
    for chunk in events.chunks(common::COMMIT_EVERY) {
        for ev in chunk {
            black_box(doc.fold(ev).expect("fold"));
        }
        doc.commit();
    }
}

fn histories() -> Vec<u64> {
    match std::env::var(HISTORY_ENV) {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("FOLD_HISTORY: comma-separated integers")
            })
            .collect(),
        Err(_) => DEFAULT_HISTORY.to_vec(),
    }
}

fn fold<M: common::Clock>(c: &mut Criterion<M>) {
    let cast = common::Cast::new();
    let conv = common::conversation_id(0);

    let mut g = c.benchmark_group(common::group::<M>("fold"));
    common::slow_group_settings(&mut g, Duration::from_secs(40));
    for n_messages in histories() {
        let events = common::conversation(&cast, conv, n_messages);
        g.throughput(Throughput::Elements(n_messages));
        g.bench_function(format!("messages_commit_every_1000/{n_messages}"), |b| {
            b.iter_with_large_drop(|| {
                let mut doc = ConversationDoc::new(conv, common::actor(1));
                fold_all(&events, &mut doc);
                doc
            })
        });
    }
    g.finish();

    // Where the time goes: the same stream split by kind, each part folded on top of the
    // messages it refers to (acks and receipts need their messages to do their real work).
    let events = common::conversation(&cast, conv, SPLIT_MESSAGES);
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
