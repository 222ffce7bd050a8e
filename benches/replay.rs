//! Replay: rebuild 1,000 conversations × 100 messages from a file-backed log with no
//! snapshots, then open all of them again from their snapshots.
//!
//! `cargo bench --bench replay`

mod common;

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tidings::engine::{ConversationId, EventLog, Store, StoreConfig};

const N_CONVERSATIONS: u64 = 1_000;
const N_MESSAGES: u64 = 100;

/// Drops every document, then loads each conversation (snapshot if any, then the log tail).
fn load_all(store: &mut Store, ids: &[ConversationId]) {
    store.unload_all();
    for c in ids {
        black_box(store.conversation(*c).expect("load").len());
    }
}

fn replay<M: common::Clock>(c: &mut Criterion<M>) {
    let cast = common::Cast::new();
    let convs = common::conversations(&cast, N_CONVERSATIONS, N_MESSAGES);
    let n_events: usize = convs.iter().map(Vec::len).sum();
    let ids: Vec<ConversationId> = convs.iter().map(|c| c[0].conversation()).collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path().join("replay.redb")).expect("open log");
    for events in &convs {
        log.write_lazy(|t| {
            for e in events {
                t.append(e)?;
            }
            Ok(())
        })
        .expect("append");
    }
    log.write(|_| Ok(())).expect("durable commit");
    drop(convs);

    let mut config = StoreConfig::new(cast.relay_id());
    // Keep every document in memory: an eviction would snapshot it and the next round would
    // no longer be a replay from the log.
    config.max_loaded_docs = 2 * N_CONVERSATIONS as usize;
    let mut store = Store::new(log, cast.alice.clone(), config, [3; 32]);

    let mut g = c.benchmark_group(common::group::<M>("replay"));
    common::slow_group_settings(&mut g, Duration::from_secs(40));
    g.throughput(Throughput::Elements(n_events as u64));
    g.bench_function("rebuild_1000x100_from_log_no_snapshots", |b| {
        b.iter(|| load_all(&mut store, &ids))
    });
    g.finish();

    // Load everything first: with a filter on the command line the rebuild above did not run.
    load_all(&mut store, &ids);
    store.snapshot_all().expect("snapshot");
    let mut g = c.benchmark_group(common::group::<M>("replay_snapshot"));
    common::slow_group_settings(&mut g, Duration::from_secs(20));
    g.bench_function("open_1000x100_from_snapshots", |b| {
        b.iter(|| load_all(&mut store, &ids))
    });
    g.finish();
}

fn main() {
    common::main(replay, replay);
}
