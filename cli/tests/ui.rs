//! The terminal client's main screens, driven through the event bus with a fake backend and
//! drawn on ratatui's `TestBackend`: what a person would see, cell by cell.

use ratatui::backend::TestBackend;
use ratatui::style::Color;
use ratatui::Terminal;
use std::sync::{Arc, Mutex};
use tidings_cli::app::{App, AppEvent, Key};
use tidings_cli::model::{ChatBackend, ChatLine, Conn, ConvItem, Shown};
use tidings_cli::session::Session;
use tidings_cli::ui::draw;
use tidings_engine::{ConnectionState, ConversationId, MessageId, Status};

const W: u16 = 64;
const H: u16 = 10;

/// A backend in memory: conversations and their lines; records what the app asked for.
#[derive(Clone, Debug, Default)]
struct Fake {
    convs: Vec<ConvItem>,
    lines: Arc<Mutex<Vec<(ConversationId, ChatLine)>>>,
    outbox: usize,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn log(&self, s: String) {
        self.calls.lock().expect("lock").push(s);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
}

impl ChatBackend for Fake {
    async fn conversations(&self) -> anyhow::Result<Vec<ConvItem>> {
        Ok(self.convs.clone())
    }
    async fn page(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        n: usize,
    ) -> anyhow::Result<Vec<ChatLine>> {
        let all: Vec<ChatLine> = self
            .lines
            .lock()
            .expect("lock")
            .iter()
            .filter(|(c, _)| *c == conversation)
            .map(|(_, l)| l.clone())
            .collect();
        let end = match before {
            Some(m) => all.iter().position(|l| l.id == m).unwrap_or(0),
            None => all.len(),
        };
        Ok(all[end.saturating_sub(n)..end].to_vec())
    }
    async fn send(&self, conversation: ConversationId, text: String) -> anyhow::Result<()> {
        self.log(format!("send {text}"));
        let id = MessageId([self.lines.lock().expect("lock").len() as u8 + 100; 16]);
        self.lines
            .lock()
            .expect("lock")
            .push((conversation, line(id, true, "me", &text, Status::Pending)));
        Ok(())
    }
    async fn mark_read(&self, conversation: ConversationId) -> anyhow::Result<()> {
        self.log(format!("read {}", conversation.0[0]));
        Ok(())
    }
    async fn retry(&self, message: MessageId) -> anyhow::Result<()> {
        self.log(format!("retry {}", message.0[0]));
        Ok(())
    }
    async fn outbox_len(&self) -> anyhow::Result<usize> {
        Ok(self.outbox)
    }
}

fn conv(n: u8) -> ConversationId {
    ConversationId([n; 16])
}

fn line(id: MessageId, mine: bool, author: &str, text: &str, status: Status) -> ChatLine {
    ChatLine {
        id,
        mine,
        author: author.into(),
        shown: Shown::Text(text.into()),
        status,
    }
}

fn msg(n: u8) -> MessageId {
    MessageId([n; 16])
}

fn online() -> AppEvent {
    AppEvent::Connection(Conn {
        state: ConnectionState::Online,
        problem: None,
    })
}

/// The screen as text, one string per row (trailing spaces trimmed).
fn screen(session: &Session<Fake>) -> (Vec<String>, Terminal<TestBackend>) {
    let mut terminal = Terminal::new(TestBackend::new(W, H)).expect("terminal");
    terminal.draw(|f| draw(f, session.app())).expect("draw");
    let buf = terminal.backend().buffer().clone();
    let rows = (0..H)
        .map(|y| {
            let mut row = String::new();
            let mut x = 0;
            while x < W {
                let cell = &buf[(x, y)];
                row.push_str(cell.symbol());
                // A wide symbol covers the next cell.
                x += unicode_width(cell.symbol());
            }
            row.trim_end().to_string()
        })
        .collect();
    (rows, terminal)
}

fn unicode_width(s: &str) -> u16 {
    if s.chars().any(|c| c == '⏰') {
        2
    } else {
        1
    }
}

fn check(rows: &[String], want: &[&str]) {
    let got: Vec<&str> = rows.iter().map(String::as_str).collect();
    assert_eq!(got, want, "\n{}", rows.join("\n"));
}

fn bob_and_carol() -> Fake {
    Fake {
        convs: vec![
            ConvItem {
                id: conv(1),
                name: "bob".into(),
                unread: 0,
            },
            ConvItem {
                id: conv(2),
                name: "carol".into(),
                unread: 2,
            },
        ],
        ..Fake::default()
    }
}

#[tokio::test]
async fn empty() {
    let mut s = Session::new(App::new("alice"), Fake::default());
    s.start().await;
    s.step(online()).await;
    let (rows, _) = screen(&s);
    check(
        &rows,
        &[
            " tidings · alice · online",
            "┌ chats ─────────────┐┌ no conversation ───────────────────────┐",
            "│                    ││No conversations yet.                   │",
            "│                    ││Add a contact: tidings contacts add     │",
            "│                    ││<code>                                  │",
            "│                    ││                                        │",
            "└────────────────────┘└────────────────────────────────────────┘",
            "┌ Enter sends · ↑↓ chats · PgUp older · Esc quits ─────────────┐",
            "│>                                                             │",
            "└──────────────────────────────────────────────────────────────┘",
        ],
    );
}

#[tokio::test]
async fn chatting_with_ticks_and_mark_read_on_view() {
    let fake = bob_and_carol();
    {
        let mut lines = fake.lines.lock().expect("lock");
        lines.push((conv(1), line(msg(1), true, "me", "hi bob", Status::Read)));
        lines.push((
            conv(1),
            line(msg(2), false, "bob", "hi alice", Status::Sent),
        ));
        lines.push((
            conv(1),
            line(msg(3), true, "me", "lunch?", Status::Delivered),
        ));
        lines.push((conv(1), line(msg(4), true, "me", "at noon", Status::Sent)));
        lines.push((conv(2), line(msg(5), false, "carol", "ping", Status::Sent)));
    }
    let mut s = Session::new(App::new("alice"), fake.clone());
    s.start().await;
    s.step(online()).await;
    for c in "see you".chars() {
        s.step(AppEvent::Key(Key::Char(c))).await;
    }
    let (rows, terminal) = screen(&s);
    check(
        &rows,
        &[
            " tidings · alice · online",
            "┌ chats ─────────────┐┌ bob ───────────────────────────────────┐",
            "│bob                 ││me: hi bob ✓✓                           │",
            "│carol (2)           ││bob: hi alice                           │",
            "│                    ││me: lunch? ✓✓                           │",
            "│                    ││me: at noon ✓                           │",
            "└────────────────────┘└────────────────────────────────────────┘",
            "┌ Enter sends · ↑↓ chats · PgUp older · Esc quits ─────────────┐",
            "│> see you                                                     │",
            "└──────────────────────────────────────────────────────────────┘",
        ],
    );
    // Read is the blue ✓✓, delivered the grey one.
    let buf = terminal.backend().buffer();
    assert_eq!(buf[(34, 2)].symbol(), "✓");
    assert_eq!(buf[(34, 2)].fg, Color::Blue);
    assert_eq!(buf[(34, 4)].fg, Color::Gray);

    // Enter sends and shows the message pending.
    s.step(AppEvent::Key(Key::Enter)).await;
    assert!(fake.calls().contains(&"send see you".to_string()));
    s.step(AppEvent::Changed).await;
    let sent = s
        .app()
        .lines
        .iter()
        .find(|l| l.author == "me" && l.shown == Shown::Text("see you".into()));
    assert!(sent.is_none(), "shown only when the replica reports it");
    let id = MessageId([105; 16]);
    s.step(AppEvent::Message {
        conversation: conv(1),
        line: line(id, true, "me", "see you", Status::Pending),
    })
    .await;
    let (rows, _) = screen(&s);
    assert_eq!(
        rows[5],
        "│                    ││me: see you ⏰                          │"
    );

    // Carol's conversation has unread messages: viewing it marks it read.
    s.step(AppEvent::Key(Key::Down)).await;
    assert!(
        fake.calls().contains(&"read 2".to_string()),
        "{:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn offline_with_pending() {
    let fake = Fake {
        outbox: 2,
        ..bob_and_carol()
    };
    {
        let mut lines = fake.lines.lock().expect("lock");
        lines.push((conv(1), line(msg(1), true, "me", "one", Status::Pending)));
        lines.push((conv(1), line(msg(2), true, "me", "two", Status::Pending)));
    }
    let mut s = Session::new(App::new("alice"), fake);
    s.start().await;
    s.step(AppEvent::Connection(Conn {
        state: ConnectionState::Offline,
        problem: Some("the relay is unreachable: timed out".into()),
    }))
    .await;
    let (rows, _) = screen(&s);
    check(
        &rows[..4],
        &[
            " tidings · alice · OFFLINE · 2 messages waiting to send · the re",
            "┌ chats ─────────────┐┌ bob ───────────────────────────────────┐",
            "│bob                 ││me: one ⏰                              │",
            "│carol (2)           ││me: two ⏰                              │",
        ],
    );
}

#[tokio::test]
async fn waiting_for_key() {
    let fake = bob_and_carol();
    fake.lines.lock().expect("lock").push((
        conv(1),
        ChatLine {
            id: msg(1),
            mine: false,
            author: "bob".into(),
            shown: Shown::WaitingForKey,
            status: Status::Sent,
        },
    ));
    let mut s = Session::new(App::new("alice"), fake);
    s.start().await;
    s.step(online()).await;
    let (rows, _) = screen(&s);
    assert_eq!(
        rows[2],
        "│bob                 ││bob: (waiting for key)                  │"
    );
}

#[tokio::test]
async fn failed_with_retry() {
    let fake = bob_and_carol();
    fake.lines
        .lock()
        .expect("lock")
        .push((conv(1), line(msg(7), true, "me", "lost", Status::Failed)));
    let mut s = Session::new(App::new("alice"), fake.clone());
    s.start().await;
    s.step(online()).await;
    let (rows, terminal) = screen(&s);
    assert_eq!(
        rows[2],
        "│bob                 ││me: lost FAILED (Ctrl-R retries)        │"
    );
    assert_eq!(terminal.backend().buffer()[(32, 2)].fg, Color::Red);
    s.step(AppEvent::Key(Key::Retry)).await;
    assert!(
        fake.calls().contains(&"retry 7".to_string()),
        "{:?}",
        fake.calls()
    );
}

/// Updates the client missed (its subscriber lagged) are read again: the open pane shows a
/// message that arrived with no `Message` event for it. `Changed` alone reads only the list.
#[tokio::test]
async fn a_lagged_stream_reloads_the_open_pane() {
    let fake = bob_and_carol();
    fake.lines
        .lock()
        .expect("lock")
        .push((conv(1), line(msg(1), false, "bob", "first", Status::Sent)));
    let mut s = Session::new(App::new("alice"), fake.clone());
    s.start().await;
    s.step(online()).await;
    fake.lines
        .lock()
        .expect("lock")
        .push((conv(1), line(msg(2), false, "bob", "missed", Status::Sent)));
    let shows_missed = |s: &Session<Fake>| {
        s.app()
            .lines
            .iter()
            .any(|l| l.shown == Shown::Text("missed".into()))
    };
    s.step(AppEvent::Changed).await;
    assert!(!shows_missed(&s), "the list alone was read");
    s.step(AppEvent::Resync).await;
    assert!(shows_missed(&s), "the pane was not read again after a lag");
}
