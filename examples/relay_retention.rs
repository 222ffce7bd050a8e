//! Relay disk use under a steady load, with retention on or off (issue 17): the relay core
//! (sans-IO, in this process, on a redb file) sequences `--events` messages spread round-robin
//! over `--conversations` conversations of three member devices. Every `--confirm-every`
//! events all three devices confirm (`Received`) what they hold and a retention pass runs, as
//! a relay's pass every minute would, on virtual time. Prints the file size along the way and
//! at the end, and after a compaction.
//!
//! ```text
//! cargo run --release --example relay_retention -- --retention on [--events 1000000]
//!     [--conversations 1000] [--body-bytes 200] [--confirm-every 50000] [--dir /tmp/x]
//!     [--dedup-window-secs 600]
//! ```

use anyhow::{bail, Context, Result};
use clap::Parser;
use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use std::time::Instant;
use tidings::engine::wire::{self, ClientFrame, DeviceRegistration, Envelope, ServerFrame};
use tidings::engine::{ConversationId, DeviceKey, Event, EventId, EventKind, MessageId, UserId};
use tidings::relay::core::{Output, RelayCore, RelayStore, Retention, SessionId};
use tidings::relay::Limits;

#[derive(Debug, Parser)]
struct Args {
    /// `on` or `off`.
    #[arg(long)]
    retention: String,
    /// Messages sequenced in all.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Conversations the load is spread over.
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    /// Body size of a message (opaque bytes, as a ciphertext would be).
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
    /// Events between two confirmations by every device (and retention passes).
    #[arg(long, default_value_t = 50_000)]
    confirm_every: usize,
    /// The dedup window in seconds of virtual time (default: the relay's, 30 days; the load
    /// advances one second per 256 events).
    #[arg(long)]
    dedup_window_secs: Option<u64>,
    /// Where the relay's file goes (a temporary directory if not given).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

struct Relay {
    core: RelayCore,
    now: u64,
}

impl Relay {
    fn frame(&mut self, s: SessionId, f: ClientFrame) -> Result<Vec<ServerFrame>> {
        self.core.handle_frame(s, f, self.now);
        self.core.commit()?;
        let mut out = Vec::new();
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Frame { session, frame } if session == s => out.push(frame),
                Output::Frame { .. } => {}
                Output::Close { code, message, .. } => bail!("closed: {code:?} {message}"),
            }
        }
        Ok(out)
    }

    fn connect(&mut self, user: &SigningKey, key: &DeviceKey, seed: u8) -> Result<SessionId> {
        let binding = [seed; 32];
        let s = self
            .core
            .handle_connect("127.0.0.1".parse()?, binding, [7; 32])?;
        let hello = ClientFrame::Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            device: key.device(),
            user: key.user(),
        };
        let [ServerFrame::Challenge { nonce }] = self.frame(s, hello)?[..] else {
            bail!("no challenge")
        };
        let signature = wire::sign_auth(key.signing_key(), &key.user(), &nonce, &binding);
        self.frame(s, ClientFrame::Auth { signature })?;
        let registration = DeviceRegistration::sign(user, key.device(), [seed; 32], 1);
        self.frame(
            s,
            ClientFrame::RegisterDevice {
                request_id: 1,
                registration,
            },
        )?;
        Ok(s)
    }
}

/// A device's chains, one per conversation.
struct Author {
    key: DeviceKey,
    chains: HashMap<ConversationId, (u64, EventId)>,
    lamport: u64,
}

impl Author {
    fn event(&mut self, conv: ConversationId, kind: EventKind, ts: u64) -> Result<Event> {
        self.lamport += 1;
        let (n, prev) = match self.chains.get(&conv) {
            Some(&(n, id)) => (n + 1, Some(id)),
            None => (1, None),
        };
        let h = self.key.header(conv, n, prev, self.lamport, ts);
        let kind = h.bind(kind);
        let ev = Event::sign(self.key.signing_key(), h, kind)?;
        self.chains.insert(conv, (n, ev.id()));
        Ok(ev)
    }
}

fn conv_id(i: usize) -> ConversationId {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    ConversationId(c)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let retention = match args.retention.as_str() {
        "on" => match args.dedup_window_secs {
            Some(secs) => Retention::default().with_dedup_window_secs(secs),
            None => Retention::default(),
        },
        "off" => Retention::off(),
        other => bail!("--retention on|off, not {other}"),
    };
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "relay-retention-{}-{}.redb",
        args.retention,
        args.dedup_window_secs.unwrap_or(0)
    ));
    let _ = std::fs::remove_file(&path);
    let store = RelayStore::open_path(&path, false)?;
    let relay_key = DeviceKey::from_seed([0xee; 32], UserId([0; 32]));
    let mut relay = Relay {
        core: RelayCore::new(store.clone(), relay_key, Limits::default())?,
        now: 1_000_000,
    };
    relay.core.set_retention(retention);
    let users: Vec<SigningKey> = (1..=3u8)
        .map(|s| SigningKey::from_bytes(&[s; 32]))
        .collect();
    let mut authors = Vec::new();
    let mut sessions = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let seed = 10 * (i as u8 + 1);
        let key = DeviceKey::from_seed([seed; 32], UserId(u.verifying_key().to_bytes()));
        sessions.push(relay.connect(u, &key, seed)?);
        authors.push(Author {
            key,
            chains: HashMap::new(),
            lamport: 0,
        });
    }
    let members: Vec<UserId> = users
        .iter()
        .map(|u| UserId(u.verifying_key().to_bytes()))
        .collect();
    let mut heads: Vec<u64> = vec![0; args.conversations];
    let submit = |relay: &mut Relay, s: SessionId, events: &[Event]| -> Result<Vec<u64>> {
        let f = ClientFrame::Submit {
            request_id: 9,
            events: events
                .iter()
                .map(|e| Envelope(e.bytes().to_vec()))
                .collect(),
        };
        for frame in relay.frame(s, f)? {
            if let ServerFrame::SubmitResult { outcomes, .. } = frame {
                return outcomes
                    .into_iter()
                    .map(|o| match o {
                        wire::SubmitOutcome::Accepted { seq } => Ok(seq),
                        other => bail!("refused: {other:?}"),
                    })
                    .collect();
            }
        }
        bail!("no SubmitResult")
    };
    for (i, head) in heads.iter_mut().enumerate() {
        let create = authors[0].event(
            conv_id(i),
            EventKind::Create {
                members: members.clone(),
            },
            relay.now,
        )?;
        *head = submit(&mut relay, sessions[0], &[create])?[0];
        // At most 32 pending invitations from one user: the others accept as they come.
        for &s in &sessions[1..] {
            let accept = ClientFrame::Accept {
                request_id: 3,
                conversation: conv_id(i),
            };
            relay.frame(s, accept)?;
        }
    }
    let started = Instant::now();
    let body = vec![0x5a; args.body_bytes];
    let batch = 256usize;
    let mut sent = 0usize;
    let mut next_confirm = args.confirm_every;
    let mut conv = 0usize;
    println!("events,file_bytes,stored_events,elapsed_s");
    while sent < args.events {
        let n = batch.min(args.events - sent);
        let mut events = Vec::with_capacity(n);
        let mut convs = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = EventKind::Send {
                message: MessageId::default(),
                body: body.clone(),
                media: vec![],
            };
            events.push(authors[0].event(conv_id(conv), kind, relay.now)?);
            convs.push(conv);
            conv = (conv + 1) % args.conversations;
        }
        for (c, seq) in convs.iter().zip(submit(&mut relay, sessions[0], &events)?) {
            heads[*c] = heads[*c].max(seq);
        }
        sent += n;
        // One second of virtual time per batch: a steady load.
        relay.now += 1000;
        if sent >= next_confirm || sent == args.events {
            next_confirm += args.confirm_every;
            for &s in &sessions {
                for (i, head) in heads.iter().enumerate() {
                    relay.core.handle_frame(
                        s,
                        ClientFrame::Received {
                            conversation: conv_id(i),
                            up_to: *head,
                        },
                        relay.now,
                    );
                }
            }
            relay.core.commit()?;
            while relay.core.poll_output().is_some() {}
            relay.core.handle_retention(relay.now)?;
            let size = std::fs::metadata(&path)?.len();
            println!(
                "{sent},{size},{},{:.1}",
                store.n_events()?,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let size = std::fs::metadata(&path)?.len();
    drop(relay);
    let mut store = store;
    store.compact().context("compact")?;
    drop(store);
    let compacted = std::fs::metadata(&path)?.len();
    println!(
        "retention {}: {} events over {} conversations, file {} bytes ({:.1} MiB), after compaction {} bytes ({:.1} MiB), {:.0} s",
        args.retention,
        args.events,
        args.conversations,
        size,
        size as f64 / 1048576.0,
        compacted,
        compacted as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
