//! Retention on both stores, through the relay core on virtual time: three member devices
//! confirm up to a point and what is below it is dropped, a resubmission keeps its place
//! within the dedup window and is refused (never sequenced twice) after it, and a device that
//! pulls below what is left gets the exact range it missed. redb and PostgreSQL must answer
//! every step the same (PostgreSQL is started by `support/pg.rs`; never skipped).

mod support;

use anyhow::{bail, Result};
use support::cluster::{user_id, user_key, Author, CONV};
use support::pg::PgServer;
use tidings_engine::wire::{
    self, ClientFrame, DeviceRegistration, Envelope, ErrorCode, ServerFrame, SubmitOutcome,
    PROTOCOL_VERSION,
};
use tidings_engine::{DeviceKey, Event, ServerSeq, UserId};
use tidings_relay::core::{Output, RelayCore, RelayStore, Retention, SessionId};
use tidings_relay::storage::{PgStore, Storage};
use tidings_relay::Limits;

const DAY_MS: u64 = 24 * 3600 * 1000;

struct Net<S: Storage> {
    core: RelayCore<S>,
    now: u64,
}

impl<S: Storage> Net<S> {
    fn frame(&mut self, s: SessionId, f: ClientFrame) -> Result<Vec<ServerFrame>> {
        self.core.handle_frame(s, f, self.now);
        self.core.commit()?;
        let mut out = Vec::new();
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Frame { session, frame } if session == s => out.push(frame),
                Output::Frame { .. } => {}
                Output::Close { code, .. } => bail!("closed: {code:?}"),
            }
        }
        Ok(out)
    }

    /// The answer to request `id` among what `s` got.
    fn ask(&mut self, s: SessionId, f: ClientFrame) -> Result<ServerFrame> {
        let id = f.request_id();
        let got = self.frame(s, f)?;
        match got.into_iter().find(|f| f.answers() == id) {
            Some(f) => Ok(f),
            None => bail!("no answer"),
        }
    }

    fn connect(&mut self, author: &Author, user_seed: u8) -> Result<SessionId> {
        let key: &DeviceKey = &author.key;
        let binding = [key.device().0[0]; 32];
        let s = self
            .core
            .handle_connect("127.0.0.1".parse()?, binding, [7; 32])?;
        let got = self.frame(
            s,
            ClientFrame::Hello {
                protocol_version: PROTOCOL_VERSION,
                device: key.device(),
                user: key.user(),
            },
        )?;
        let [ServerFrame::Challenge { nonce }] = got[..] else {
            bail!("{got:?}")
        };
        let signature = wire::sign_auth(key.signing_key(), &key.user(), &nonce, &binding);
        self.frame(s, ClientFrame::Auth { signature })?;
        let registration =
            DeviceRegistration::sign(&user_key(user_seed), key.device(), [user_seed; 32], 1);
        self.ask(
            s,
            ClientFrame::RegisterDevice {
                request_id: 1,
                registration,
            },
        )?;
        Ok(s)
    }

    fn submit(&mut self, s: SessionId, ev: &Event) -> Result<SubmitOutcome> {
        let f = ClientFrame::Submit {
            request_id: 9,
            events: vec![Envelope(ev.bytes().to_vec())],
        };
        match self.ask(s, f)? {
            ServerFrame::SubmitResult { mut outcomes, .. } if outcomes.len() == 1 => {
                Ok(outcomes.remove(0))
            }
            other => bail!("{other:?}"),
        }
    }

    fn received(&mut self, s: SessionId, up_to: ServerSeq) -> Result<()> {
        self.frame(
            s,
            ClientFrame::Received {
                conversation: CONV,
                up_to,
            },
        )?;
        Ok(())
    }

    /// (gap range, number of events) of a pull after `after_seq`.
    fn pull(&mut self, s: SessionId, after_seq: ServerSeq) -> Result<(Option<(u64, u64)>, usize)> {
        let f = ClientFrame::Pull {
            request_id: 7,
            conversation: CONV,
            after_seq,
            limit: 100,
            history_since_ms: None,
        };
        match self.ask(s, f)? {
            ServerFrame::Page { events, .. } => Ok((None, events.len())),
            ServerFrame::HistoryGap {
                from, to, events, ..
            } => Ok((Some((from, to)), events.len())),
            other => bail!("{other:?}"),
        }
    }
}

/// Runs the scenario; returns what it observed, step by step.
fn scenario<S: Storage>(store: S) -> Result<Vec<String>> {
    let key = DeviceKey::from_seed([0xee; 32], UserId([0; 32]));
    let mut net = Net {
        core: RelayCore::new(store, key, Limits::default())?,
        now: 1_000,
    };
    net.core.set_retention(Retention::default());
    let mut log = Vec::new();
    let mut a = Author::new(1, 11);
    let (b, c) = (Author::new(2, 22), Author::new(3, 33));
    let sa = net.connect(&a, 1)?;
    let sb = net.connect(&b, 2)?;
    let sc = net.connect(&c, 3)?;
    let create = a.create(&[1, 2, 3]);
    log.push(format!("create {:?}", net.submit(sa, &create)?));
    let sent: Vec<Event> = (0..10).map(|i| a.send(&format!("m{i}"))).collect();
    for e in &sent {
        net.submit(sa, e)?;
    }
    for s in [sa, sb, sc] {
        net.received(s, 6)?;
    }
    let stats = net.core.handle_retention(net.now)?;
    log.push(format!("pruned {}", stats.n_bodies));
    log.push(format!("stored {}", net.core.store().n_events()?));
    // Below the confirmed point: gone but for the Create, told as a gap.
    log.push(format!("pull 0 {:?}", net.pull(sc, 0)?));
    log.push(format!("pull 6 {:?}", net.pull(sc, 6)?));
    // Inside the dedup window: the original place.
    log.push(format!("resubmit {:?}", net.submit(sa, &sent[2])?));
    // c goes silent; past the TTL the rest goes too.
    net.now += Retention::default().ttl_ms() + DAY_MS;
    let late = a.send("late");
    log.push(format!("late {:?}", net.submit(sa, &late)?));
    net.core.handle_retention(net.now)?;
    log.push(format!("pull 6 after ttl {:?}", net.pull(sc, 6)?));
    log.push(format!(
        "resubmit after window {:?}",
        net.submit(sa, &sent[2])?
    ));
    log.push(format!("resubmit newer {:?}", net.submit(sa, &late)?));
    Ok(log)
}

#[test]
fn redb_and_postgres_retain_the_same() -> Result<()> {
    let pg = PgServer::start(true, &[])?;
    let url = pg.create_database("retention")?;
    let on_redb = scenario(RelayStore::in_memory()?)?;
    let on_pg = scenario(PgStore::connect(&url)?)?;
    assert_eq!(on_redb, on_pg);
    let seq = |s: u64| format!("{:?}", SubmitOutcome::Accepted { seq: s });
    let expired = format!("{:?}", ErrorCode::EXPIRED);
    assert_eq!(on_redb[0], format!("create {}", seq(1)));
    assert_eq!(on_redb[1], "pruned 5", "2..=6 (the Create stays)");
    assert_eq!(on_redb[2], "stored 6");
    assert_eq!(
        on_redb[3], "pull 0 (Some((1, 6)), 6)",
        "the Create and 7..=11"
    );
    assert_eq!(on_redb[4], "pull 6 (None, 5)");
    assert_eq!(on_redb[5], format!("resubmit {}", seq(4)));
    assert_eq!(on_redb[6], format!("late {}", seq(12)));
    assert_eq!(on_redb[7], "pull 6 after ttl (Some((7, 11)), 1)");
    assert!(on_redb[8].contains(&expired), "{}", on_redb[8]);
    assert_eq!(on_redb[9], format!("resubmit newer {}", seq(12)));
    let _ = user_id(1);
    Ok(())
}
