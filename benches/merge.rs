//! Merge: two documents of 100k messages that diverged by 1,000 events each (one automerge
//! change per event, as live traffic commits), merged; then the merged view.
//!
//! `cargo bench --bench merge`

mod common;

use automerge::AutoCommit;
use criterion::{BatchSize, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tidings::engine::{ConversationDoc, Event};

const N_MESSAGES: u64 = 100_000;
/// Events each replica folds that the other has not seen.
const N_DIVERGED: usize = 1_000;

fn fold_committing_each(doc: &mut ConversationDoc, events: &[Event]) {
    for ev in events {
        doc.fold(ev).expect("fold");
        doc.commit();
    }
}

fn merge<M: common::Clock>(c: &mut Criterion<M>) {
    let cast = common::Cast::new();
    let conv = common::conversation_id(0);
    let mut base = Vec::new();
    let mut stream = common::Stream::new(&cast, conv, &mut base);
    stream.messages(N_MESSAGES, &mut base);
    let mut tail = Vec::new();
    while tail.len() < 2 * N_DIVERGED {
        stream.messages(1, &mut tail);
    }
    let (tail_a, tail_b) = tail[..2 * N_DIVERGED].split_at(N_DIVERGED);

    let mut a = ConversationDoc::new(conv, common::actor(1));
    for chunk in base.chunks(common::COMMIT_EVERY) {
        for ev in chunk {
            a.fold(ev).expect("fold");
        }
        a.commit();
    }
    let shared = a.save();
    let mut b = ConversationDoc::load(conv, &shared, common::actor(2)).expect("load");
    fold_committing_each(&mut a, tail_a);
    fold_committing_each(&mut b, tail_b);
    let bytes_a = a.save();
    let bytes_b = b.save();
    drop((a, b));

    let raw_a = AutoCommit::load(&bytes_a).expect("load a");
    let raw_b = AutoCommit::load(&bytes_b).expect("load b");

    let mut g = c.benchmark_group(common::group::<M>("merge"));
    common::slow_group_settings(&mut g, Duration::from_secs(20));
    g.bench_function("automerge_merge_only", |bench| {
        bench.iter_batched(
            || (raw_a.clone(), raw_b.clone()),
            |(mut x, mut y)| {
                black_box(x.merge(&mut y).expect("merge"));
                (x, y)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("merge_and_merged_view_latest_50", |bench| {
        bench.iter_batched(
            || {
                let x = ConversationDoc::load(conv, &bytes_a, common::actor(1)).expect("a");
                let y = ConversationDoc::load(conv, &bytes_b, common::actor(2)).expect("b");
                (x, y)
            },
            |(mut x, mut y)| {
                black_box(x.merge(&mut y).expect("merge"));
                black_box(x.state().latest(50));
                (x, y)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn main() {
    common::main(merge, merge);
}
