//! Peer sync load tool (issue 14): two device cores reconcile over the peer protocol, every
//! frame through the codec, in one process (sans-IO: the relay core fills the logs first, then
//! only the two devices talk). Two scenes, each run with protocol 3's set reconciliation and
//! with version vectors alone (`PeerSession::vectors_only`, the protocol 2 exchange):
//!
//! - **missing**: Bob's phone was away while Alice's phone sent `--missing` messages; one
//!   session brings them. Messages per second, and bytes on the wire beyond the envelopes of
//!   the missing events.
//! - **differ**: Alice's laptop sent `--held` messages; her phone and Bob's phone each got them
//!   from it over a peer link that lost `--differ / 2` scattered messages each (different
//!   ones), so each holds about `--held` events and they differ by `--differ`. Bytes and round
//!   trips of the session between the two phones.
//!
//! `cargo run --release --example peer_sync -- --missing 10000 --held 100000 --differ 10`

#[path = "../tests/common/mod.rs"]
mod common;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use common::{dropping, user, World, CONV};
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::time::Instant;
use tidings::engine::peer::{PeerFrame, PeerSession};
use tidings::engine::wire::{frame_bytes, FrameDecoder, MAX_FRAME_LEN};
use tidings::engine::{EventId, MessageId};

#[derive(Parser, Debug)]
struct Args {
    /// Messages Bob's phone misses in the first scene.
    #[arg(long, default_value_t = 10_000)]
    missing: usize,
    /// Messages both phones hold in the second scene.
    #[arg(long, default_value_t = 100_000)]
    held: usize,
    /// Messages by which the two phones differ in the second scene (half lost on each).
    #[arg(long, default_value_t = 10)]
    differ: usize,
    /// Seed of the scattered losses.
    #[arg(long, default_value_t = 14)]
    seed: u64,
    /// Run only this scene: `missing` or `differ`.
    #[arg(long)]
    only: Option<String>,
}

/// What one measured session moved.
#[derive(Debug, Default)]
struct Figures {
    secs: f64,
    /// Events each side received (a's, b's), before deduplication.
    received: (u64, u64),
    /// Events each side lacked before the session (a's, b's).
    lacked: (usize, usize),
    /// Bytes of the envelopes of the events either side lacked.
    missing_bytes: usize,
    /// Frames and bytes on the wire, both directions.
    frames: usize,
    bytes: usize,
    /// Rounds of the loop in which something moved: each is one flight from a, then one
    /// from b.
    round_trips: usize,
    /// Messages each side showed before and after the session (a's, b's): a hole holds back
    /// the fold of every message after it, until it fills.
    shown_before: (usize, usize),
    shown_after: (usize, usize),
    /// Bytes per kind of frame.
    by_kind: std::collections::BTreeMap<&'static str, usize>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("# peer_sync {args:?}");
    println!(
        "| scene | protocol | session | rate | events received (a + b) | events lacked | frames | bytes | missing envelopes | bytes beyond them | round trips |"
    );
    let scenes: Vec<&str> = match args.only.as_deref() {
        Some(s) => vec![s],
        None => vec!["missing", "differ"],
    };
    for scene in scenes {
        for vectors_only in [true, false] {
            let started = Instant::now();
            let (mut w, a, b) = match scene {
                "missing" => missing_scene(args.missing)?,
                "differ" => differ_scene(args.held, args.differ, args.seed)?,
                other => anyhow::bail!("unknown scene {other}"),
            };
            let setup = started.elapsed().as_secs_f64();
            let f = measure(&mut w, a, b, vectors_only)?;
            let protocol = if vectors_only {
                "vectors only"
            } else {
                "vectors + negentropy"
            };
            let received = f.received.0 + f.received.1;
            println!(
                "| {scene} | {protocol} | {:.3} s | {:.0} events/s | {} ({} + {}) | {} | {} | {} | {} | {} | {} |   (setup {setup:.1} s)",
                f.secs,
                received as f64 / f.secs,
                received,
                f.received.0,
                f.received.1,
                f.lacked.0 + f.lacked.1,
                f.frames,
                f.bytes,
                f.missing_bytes,
                f.bytes.saturating_sub(f.missing_bytes),
                f.round_trips,
            );
            println!(
                "    messages shown before → after: a {} → {}, b {} → {}; bytes by frame: {:?}",
                f.shown_before.0, f.shown_after.0, f.shown_before.1, f.shown_after.1, f.by_kind
            );
        }
    }
    Ok(())
}

/// Device `from` sends `n` messages through the relay (the world run every 512 of them and
/// until they are placed).
fn send_many(w: &mut World, from: usize, n: usize) -> Vec<MessageId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(w.send_text(from, &format!("message {i}")));
        if i % 512 == 511 {
            w.run(1_000);
        }
    }
    w.run(60_000);
    ids
}

/// Alice's phone and Bob's phone in CONV; Bob's phone away while Alice's sends `n`.
fn missing_scene(n: usize) -> Result<(World, usize, usize)> {
    let (alice, bob) = (user(1), user(2));
    let mut w = World::new(9);
    let [phone, bob_phone] = w.online_in_conversation([&alice, &bob]);
    w.set_online(bob_phone, false);
    send_many(&mut w, phone, n);
    ensure!(
        w.shown_ids(phone).len() == n,
        "the phone holds every message"
    );
    Ok((w, phone, bob_phone))
}

/// Alice's laptop sends `n` messages; her phone and Bob's phone each get them from it over a
/// link that loses `differ / 2` scattered ones (different on each).
fn differ_scene(n: usize, differ: usize, seed: u64) -> Result<(World, usize, usize)> {
    let (alice, bob) = (user(1), user(2));
    let mut w = World::new(9);
    let [phone, laptop, bob_phone] = w.phone_laptop_and_bob(&alice, &bob);
    w.set_online(phone, false);
    w.set_online(bob_phone, false);
    let ids = send_many(&mut w, laptop, n);
    ensure!(
        w.shown_ids(laptop).len() == n,
        "the laptop holds every message"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut lost = BTreeSet::new();
    while lost.len() < differ.min(n) {
        lost.insert(rng.random_range(0..n));
    }
    let lost: Vec<usize> = lost.into_iter().collect();
    // Alternate, so each phone loses scattered messages the other holds.
    for (idx, parity) in [(phone, 0), (bob_phone, 1)] {
        let messages: Vec<MessageId> = lost
            .iter()
            .enumerate()
            .filter(|(k, _)| k % 2 == parity)
            .map(|(_, i)| ids[*i])
            .collect();
        let drop: BTreeSet<Vec<u8>> = w
            .send_envelopes(laptop, laptop, &messages)
            .into_iter()
            .collect();
        // Sessions until nothing more comes (one session sends at most MAX_SESSION_EVENTS).
        while w.peer_sync(laptop, idx, dropping(|e| drop.contains(e))) > 0 {}
    }
    Ok((w, phone, bob_phone))
}

fn held(w: &World, idx: usize) -> BTreeSet<EventId> {
    w.devices[idx]
        .core
        .store()
        .log()
        .ids_above(CONV, |_| 0, usize::MAX)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

/// One session between `a` and `b`, timed, every frame encoded and decoded.
fn measure(w: &mut World, a: usize, b: usize, vectors_only: bool) -> Result<Figures> {
    let (on_a, on_b) = (held(w, a), held(w, b));
    let mut missing_bytes = 0;
    for (from, id) in on_a
        .difference(&on_b)
        .map(|id| (a, id))
        .chain(on_b.difference(&on_a).map(|id| (b, id)))
    {
        let event = w.devices[from].core.store().log().get(id)?;
        missing_bytes += event.map(|e| e.bytes().len()).unwrap_or(0);
    }
    let shown_before = (w.shown_ids(a).len(), w.shown_ids(b).len());
    let (ida, idb) = (w.device_id(a), w.device_id(b));
    let start = if vectors_only {
        PeerSession::vectors_only
    } else {
        PeerSession::new
    };
    let started = Instant::now();
    let mut sa = start(&mut w.devices[a].core, idb)?;
    let mut sb = start(&mut w.devices[b].core, ida)?;
    let mut f = Figures {
        lacked: (
            on_b.difference(&on_a).count(),
            on_a.difference(&on_b).count(),
        ),
        missing_bytes,
        ..Figures::default()
    };
    loop {
        let there = flight(w, b, &mut sa, &mut sb, &mut f)?;
        let back = flight(w, a, &mut sb, &mut sa, &mut f)?;
        if !(there || back) {
            break;
        }
        f.round_trips += 1;
    }
    f.secs = started.elapsed().as_secs_f64();
    ensure!(sa.is_done() && sb.is_done(), "both sides said Done");
    f.received = (sa.n_received(), sb.n_received());
    f.shown_before = shown_before;
    f.shown_after = (w.shown_ids(a).len(), w.shown_ids(b).len());
    Ok(f)
}

/// Every frame `from` has queued, through the codec, into `to` (device `to_idx`). Whether any
/// moved.
fn flight(
    w: &mut World,
    to_idx: usize,
    from: &mut PeerSession,
    to: &mut PeerSession,
    f: &mut Figures,
) -> Result<bool> {
    let now = w.now;
    let mut moved = false;
    while let Some(frame) = from.poll_transmit() {
        let bytes = frame_bytes(&frame)?;
        f.frames += 1;
        f.bytes += bytes.len();
        *f.by_kind.entry(kind(&frame)).or_default() += bytes.len();
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        decoder.push(&bytes);
        let frame = decoder
            .poll_frame::<PeerFrame>()?
            .context("a whole frame")?;
        to.handle_frame(&mut w.devices[to_idx].core, frame, now)?;
        moved = true;
    }
    Ok(moved)
}

fn kind(frame: &PeerFrame) -> &'static str {
    match frame {
        PeerFrame::Hello { .. } => "Hello",
        PeerFrame::Directory { .. } => "Directory",
        PeerFrame::Items { .. } => "Items",
        PeerFrame::Done => "Done",
        PeerFrame::HistoryKeys { .. } => "HistoryKeys",
        PeerFrame::Unsequenced { .. } => "Unsequenced",
        PeerFrame::Holds { .. } => "Holds",
        PeerFrame::Above { .. } => "Above",
        PeerFrame::Reconcile { .. } => "Reconcile",
        PeerFrame::Want { .. } => "Want",
        _ => "other",
    }
}
