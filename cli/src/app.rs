//! The terminal client's state and the one place it changes: [`App::handle`] takes an
//! [`AppEvent`] off the bus and returns the [`Action`]s the session carries out against the
//! backend. No IO here: a test feeds events and reads the state (or draws it).

use crate::model::{ChatLine, Conn, ConvItem};
use tidings_engine::{ConnectionState, ConversationId, MessageId, Status};

/// Messages read per page of the message pane (and per scroll back).
pub const PAGE_LEN: usize = 50;
/// Longest compose text, in characters (the replica's body limit is larger; a terminal line
/// is not the place for more).
pub const MAX_COMPOSE_CHARS: usize = 4096;

/// A key, as the client understands it (the session maps the terminal's keys to these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A character typed into the compose box.
    Char(char),
    /// Send the compose box.
    Enter,
    /// Delete the last character.
    Backspace,
    /// The conversation above.
    Up,
    /// The conversation below.
    Down,
    /// Older messages.
    PageUp,
    /// Retry the FAILED messages shown (Ctrl-R).
    Retry,
    /// Leave (Esc, Ctrl-C).
    Quit,
}

/// Everything that happens, on one bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppEvent {
    /// The user pressed a key.
    Key(Key),
    /// The conversation list, read again.
    Conversations(Vec<ConvItem>),
    /// A page of a conversation: the latest (`older == false`) or one before what is shown.
    Page {
        /// Conversation.
        conversation: ConversationId,
        /// Oldest first.
        lines: Vec<ChatLine>,
        /// Scrolled back (prepend) rather than the latest screen (replace).
        older: bool,
    },
    /// A message arrived or its ticks moved.
    Message {
        /// Conversation.
        conversation: ConversationId,
        /// The message as shown now.
        line: ChatLine,
    },
    /// Something about a conversation changed (unread counts, members): read the list again.
    Changed,
    /// Updates were missed (the subscriber lagged): read the list and the open pane again.
    Resync,
    /// The connection moved.
    Connection(Conn),
    /// Catch-up progress (received, target) of some conversation.
    Progress(u64, u64),
    /// Messages waiting to reach the relay.
    Outbox(usize),
    /// A backend call failed.
    Error(String),
}

/// What the session does for the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the conversation list.
    LoadConversations,
    /// Read the latest page of a conversation.
    LoadLatest(ConversationId),
    /// Read the page before `before`.
    LoadOlder(ConversationId, MessageId),
    /// Send the text.
    Send(ConversationId, String),
    /// Mark the conversation read (it is on screen).
    MarkRead(ConversationId),
    /// Retry a FAILED message.
    Retry(MessageId),
    /// Read the outbox length.
    LoadOutbox,
}

/// The terminal client's state.
#[derive(Clone, Debug)]
pub struct App {
    /// This user's name, for the title.
    pub me: String,
    /// The conversation list.
    pub conversations: Vec<ConvItem>,
    /// The selected conversation's index in `conversations`.
    pub selected: usize,
    /// The selected conversation's messages on screen, oldest first.
    pub lines: Vec<ChatLine>,
    /// Whether scrolling back may find more.
    pub more_before: bool,
    /// The compose box.
    pub compose: String,
    /// The connection.
    pub connection: Conn,
    /// Messages waiting to reach the relay.
    pub outbox: usize,
    /// Catch-up progress while syncing.
    pub progress: Option<(u64, u64)>,
    /// The last error, shown until the next key.
    pub notice: Option<String>,
    /// The user asked to leave.
    pub quit: bool,
}

impl App {
    /// An empty screen for user `me`, offline until told otherwise.
    pub fn new(me: impl Into<String>) -> App {
        App {
            me: me.into(),
            conversations: Vec::new(),
            selected: 0,
            lines: Vec::new(),
            more_before: false,
            compose: String::new(),
            connection: Conn {
                state: ConnectionState::Offline,
                problem: None,
            },
            outbox: 0,
            progress: None,
            notice: None,
            quit: false,
        }
    }

    /// What the session does first.
    pub fn start(&self) -> Vec<Action> {
        vec![Action::LoadConversations, Action::LoadOutbox]
    }

    /// The selected conversation.
    pub fn current(&self) -> Option<&ConvItem> {
        self.conversations.get(self.selected)
    }

    fn current_id(&self) -> Option<ConversationId> {
        self.current().map(|c| c.id)
    }

    /// Takes one event; returns what the session must do.
    pub fn handle(&mut self, event: AppEvent) -> Vec<Action> {
        match event {
            AppEvent::Key(key) => {
                self.notice = None;
                self.key(key)
            }
            AppEvent::Conversations(list) => self.conversations_read(list),
            AppEvent::Page {
                conversation,
                lines,
                older,
            } => self.page_read(conversation, lines, older),
            AppEvent::Message { conversation, line } => self.message(conversation, line),
            AppEvent::Changed => vec![Action::LoadConversations],
            AppEvent::Resync => {
                let mut actions = vec![Action::LoadConversations];
                actions.extend(self.current_id().map(Action::LoadLatest));
                actions
            }
            AppEvent::Connection(c) => {
                if c.state == ConnectionState::Online {
                    self.progress = None;
                }
                self.connection = c;
                vec![Action::LoadOutbox]
            }
            AppEvent::Progress(received, target) => {
                self.progress = (received < target).then_some((received, target));
                Vec::new()
            }
            AppEvent::Outbox(n) => {
                self.outbox = n;
                Vec::new()
            }
            AppEvent::Error(e) => {
                self.notice = Some(e);
                Vec::new()
            }
        }
    }

    fn key(&mut self, key: Key) -> Vec<Action> {
        match key {
            Key::Char(c) => {
                if self.compose.chars().count() < MAX_COMPOSE_CHARS {
                    self.compose.push(c);
                }
                Vec::new()
            }
            Key::Backspace => {
                self.compose.pop();
                Vec::new()
            }
            Key::Enter => {
                let text = self.compose.trim().to_string();
                match self.current_id() {
                    Some(c) if !text.is_empty() => {
                        self.compose.clear();
                        vec![Action::Send(c, text), Action::LoadOutbox]
                    }
                    _ => Vec::new(),
                }
            }
            Key::Up => self.select(self.selected.saturating_sub(1)),
            Key::Down => self.select(self.selected + 1),
            Key::PageUp => match (self.current_id(), self.lines.first()) {
                (Some(c), Some(first)) if self.more_before => vec![Action::LoadOlder(c, first.id)],
                _ => Vec::new(),
            },
            Key::Retry => self
                .lines
                .iter()
                .filter(|l| l.mine && l.status == Status::Failed)
                .map(|l| Action::Retry(l.id))
                .collect(),
            Key::Quit => {
                self.quit = true;
                Vec::new()
            }
        }
    }

    fn select(&mut self, index: usize) -> Vec<Action> {
        if index >= self.conversations.len() || index == self.selected {
            return Vec::new();
        }
        self.selected = index;
        self.lines.clear();
        self.more_before = false;
        self.current_id()
            .map(|c| vec![Action::LoadLatest(c)])
            .unwrap_or_default()
    }

    fn conversations_read(&mut self, list: Vec<ConvItem>) -> Vec<Action> {
        let before = self.current_id();
        self.conversations = list;
        self.selected = before
            .and_then(|id| self.conversations.iter().position(|c| c.id == id))
            .unwrap_or(0);
        match self.current_id() {
            Some(c) if Some(c) != before || self.lines.is_empty() => vec![Action::LoadLatest(c)],
            _ => Vec::new(),
        }
    }

    fn page_read(
        &mut self,
        conversation: ConversationId,
        lines: Vec<ChatLine>,
        older: bool,
    ) -> Vec<Action> {
        if Some(conversation) != self.current_id() {
            return Vec::new();
        }
        self.more_before = lines.len() >= PAGE_LEN;
        if older {
            self.lines.splice(0..0, lines);
            return Vec::new();
        }
        self.lines = lines;
        self.read_on_view(conversation, false)
    }

    fn message(&mut self, conversation: ConversationId, line: ChatLine) -> Vec<Action> {
        if Some(conversation) != self.current_id() {
            // Its unread count moved.
            return vec![Action::LoadConversations];
        }
        let arrived = !line.mine;
        match self.lines.iter_mut().find(|l| l.id == line.id) {
            Some(shown) => *shown = line,
            None => self.lines.push(line),
        }
        self.read_on_view(conversation, arrived)
    }

    /// A conversation on screen is read: what is shown has been seen. `arrived`: a message
    /// from someone else just appeared on screen.
    fn read_on_view(&mut self, conversation: ConversationId, arrived: bool) -> Vec<Action> {
        let unread = self
            .conversations
            .iter()
            .find(|c| c.id == conversation)
            .is_some_and(|c| c.unread > 0);
        if unread || arrived {
            vec![Action::MarkRead(conversation)]
        } else {
            Vec::new()
        }
    }
}
