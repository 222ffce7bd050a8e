//! The step trace: every line is hashed (blake3), the last few are kept for failure reports,
//! and with `SEED=<n>` every line is printed as it happens.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use tidings::engine::wire::{ClientFrame, ServerFrame, SubmitOutcome};

/// Lines kept for a failure report.
pub const TAIL_LINES: usize = 30;

#[derive(Debug)]
pub struct Trace {
    hasher: blake3::Hasher,
    tail: VecDeque<String>,
    verbose: bool,
    buf: String,
}

impl Trace {
    pub fn new(verbose: bool) -> Trace {
        Trace {
            hasher: blake3::Hasher::new(),
            tail: VecDeque::with_capacity(TAIL_LINES),
            verbose,
            buf: String::new(),
        }
    }

    /// Records one line (`now_ms` is virtual time since the start of the run).
    pub fn line(&mut self, step: u64, now_ms: u64, args: fmt::Arguments<'_>) {
        self.buf.clear();
        let _ = write!(
            self.buf,
            "#{step:<6} {:>4}.{:03}s ",
            now_ms / 1000,
            now_ms % 1000
        );
        let _ = self.buf.write_fmt(args);
        self.hasher.update(self.buf.as_bytes());
        self.hasher.update(b"\n");
        if self.verbose {
            println!("{}", self.buf);
        }
        let mut slot = if self.tail.len() >= TAIL_LINES {
            self.tail.pop_front().unwrap_or_default()
        } else {
            String::new()
        };
        slot.clear();
        slot.push_str(&self.buf);
        self.tail.push_back(slot);
    }

    /// Feeds bytes into the hash without a visible line (e.g. a digest of the final state).
    pub fn absorb(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    pub fn hash_hex(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

pub fn client_frame_name(f: &ClientFrame) -> String {
    match f {
        ClientFrame::Hello { .. } => "Hello".into(),
        ClientFrame::Auth { .. } => "Auth".into(),
        ClientFrame::RegisterDevice { request_id, .. } => format!("RegisterDevice#{request_id}"),
        ClientFrame::Submit { request_id, events } => {
            format!("Submit#{request_id}({})", events.len())
        }
        ClientFrame::Pull {
            request_id,
            after_seq,
            conversation,
            ..
        } => format!("Pull#{request_id}({conversation} after {after_seq})"),
        ClientFrame::Sync { request_id, after } => match after {
            None => format!("Sync#{request_id}"),
            Some(a) => format!("Sync#{request_id}(after {a})"),
        },
        ClientFrame::Accept {
            request_id,
            conversation,
        } => format!("Accept#{request_id}({conversation})"),
        ClientFrame::Decline {
            request_id,
            conversation,
        } => format!("Decline#{request_id}({conversation})"),
        ClientFrame::Block { request_id, .. } => format!("Block#{request_id}"),
        ClientFrame::Unblock { request_id, .. } => format!("Unblock#{request_id}"),
        ClientFrame::Received {
            conversation,
            up_to,
        } => format!("Received({conversation} up to {up_to})"),
        ClientFrame::Devices {
            request_id, users, ..
        } => {
            format!("Devices#{request_id}({} users)", users.len())
        }
        _ => "frame".into(),
    }
}

pub fn server_frame_name(f: &ServerFrame) -> String {
    match f {
        ServerFrame::Challenge { .. } => "Challenge".into(),
        ServerFrame::Welcome(w) => format!("Welcome(registered {})", w.registered),
        ServerFrame::Error { code, .. } => format!("Error({})", code.0),
        ServerFrame::Refused {
            request_id, code, ..
        } => format!("Refused#{request_id}({})", code.0),
        ServerFrame::Registered { request_id, .. } => format!("Registered#{request_id}"),
        ServerFrame::SubmitResult {
            request_id,
            outcomes,
            ..
        } => {
            let ok = outcomes
                .iter()
                .filter(|o| matches!(o, SubmitOutcome::Accepted { .. }))
                .count();
            format!("SubmitResult#{request_id}({ok}/{} ok)", outcomes.len())
        }
        ServerFrame::Page {
            request_id,
            conversation,
            events,
            records,
            more,
        } => format!(
            "Page#{request_id}({conversation}, {} events, {} statements, more {more})",
            events.len(),
            records.len()
        ),
        ServerFrame::Conversations {
            request_id,
            conversations,
            next,
            invitations,
            ..
        } => format!(
            "Conversations#{request_id}({}, {} invitations, more {})",
            conversations.len(),
            invitations.len(),
            next.is_some()
        ),
        ServerFrame::UserState { request_id, change } => {
            format!("UserState#{request_id}({change:?})")
        }
        ServerFrame::UserChanged { change } => format!("UserChanged({change:?})"),
        ServerFrame::Push { events, records } => {
            format!("Push({}, {} statements)", events.len(), records.len())
        }
        ServerFrame::PullMode => "PullMode".into(),
        ServerFrame::Devices {
            request_id,
            registrations,
            revocations,
            ..
        } => format!(
            "Devices#{request_id}({} certificates, {} revocations)",
            registrations.len(),
            revocations.len()
        ),
        _ => "frame".into(),
    }
}
