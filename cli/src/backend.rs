//! The real [`ChatBackend`]: a [`Replica`], and the task that turns its updates into
//! [`AppEvent`]s on the bus.

use crate::app::AppEvent;
use crate::home::Home;
use crate::model::{ChatBackend, ChatLine, Conn, ConvItem, Shown};
use anyhow::Context;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tidings_engine::{ConversationId, MessageId, UserId};
use tidings_replica::{Body, ConnectionStatus, PageCursor, Rendered, Replica, Update};
use tokio::sync::mpsc;

/// Who is who, for showing authors and conversations by name.
#[derive(Clone, Debug, Default)]
pub struct Names {
    me: Option<UserId>,
    users: HashMap<UserId, String>,
    conversations: HashMap<ConversationId, String>,
}

impl Names {
    /// The names in `home`'s contacts, `me` being this user.
    pub fn load(home: &Home, me: UserId) -> anyhow::Result<Names> {
        let mut names = Names {
            me: Some(me),
            ..Names::default()
        };
        for c in home.contacts()? {
            if let (Some(u), Some(conv)) = (
                UserId::from_hex(&c.user),
                ConversationId::from_hex(&c.conversation),
            ) {
                names.users.insert(u, c.name.clone());
                names.conversations.insert(conv, c.name);
            }
        }
        Ok(names)
    }

    /// A user as shown.
    pub fn user(&self, u: UserId) -> String {
        if Some(u) == self.me {
            return "me".into();
        }
        self.users
            .get(&u)
            .cloned()
            .unwrap_or_else(|| u.to_string()[..8].to_string())
    }

    /// A conversation as shown.
    pub fn conversation(&self, c: ConversationId) -> String {
        self.conversations
            .get(&c)
            .cloned()
            .unwrap_or_else(|| c.to_string()[..8].to_string())
    }

    /// A message as the client shows it.
    pub fn line(&self, r: &Rendered) -> ChatLine {
        let shown = match &r.body {
            _ if !r.view.record.media.is_empty() => {
                Shown::WaitingForMedia(format!("{} attachment(s)", r.view.record.media.len()))
            }
            Body::Text(t) | Body::Clear(t) => Shown::Text(printable(t)),
            Body::WaitingForKey(_) => Shown::WaitingForKey,
            Body::Media(m) => Shown::WaitingForMedia(format!(
                "{} ({} attachment(s), tap to download)",
                printable(&m.caption),
                m.media.len()
            )),
            _ => Shown::Unreadable,
        };
        ChatLine {
            id: r.view.id,
            mine: Some(r.view.record.user) == self.me,
            author: self.user(r.view.record.user),
            shown,
            status: r.view.status,
        }
    }
}

/// The connection as the status bar shows it.
pub fn conn(s: &ConnectionStatus) -> Conn {
    Conn {
        state: s.state,
        problem: s
            .problem
            .as_ref()
            .map(|p| printable(p.to_string().as_bytes())),
    }
}

/// Text from someone else (a contact's message, a relay's refusal) as it may reach a terminal:
/// control characters, escape sequences among them, would let the sender clear the screen,
/// fake lines or set the clipboard. Line breaks and tabs become spaces, the rest U+FFFD.
pub fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| match c {
            '\n' | '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// [`ChatBackend`] over a replica.
#[derive(Debug, Clone)]
pub struct ReplicaBackend {
    replica: Replica,
    names: Arc<Names>,
    /// Where each message shown sits, to scroll back from it.
    cursors: Arc<Mutex<HashMap<MessageId, PageCursor>>>,
}

impl ReplicaBackend {
    /// A backend over `replica`.
    pub fn new(replica: Replica, names: Names) -> ReplicaBackend {
        ReplicaBackend {
            replica,
            names: Arc::new(names),
            cursors: Arc::default(),
        }
    }

    /// Puts the replica's updates on the bus until it closes or the bus is gone.
    pub fn forward_updates(&self, bus: mpsc::Sender<AppEvent>) {
        let mut updates = self.replica.updates();
        let names = Arc::clone(&self.names);
        tokio::spawn(async move {
            while let Some(u) = updates.next().await {
                let event = match u {
                    Update::MessageAdded {
                        conversation,
                        rendered: Some(r),
                        ..
                    }
                    | Update::StatusChanged {
                        conversation,
                        rendered: Some(r),
                        ..
                    } => AppEvent::Message {
                        conversation,
                        line: names.line(&r),
                    },
                    Update::MessageAdded { .. }
                    | Update::StatusChanged { .. }
                    | Update::ConversationChanged { .. }
                    | Update::Accepted { .. } => AppEvent::Changed,
                    Update::Lagged { .. } => AppEvent::Resync,
                    Update::Connection(s) => AppEvent::Connection(conn(&s)),
                    Update::SyncProgress {
                        received, target, ..
                    } => AppEvent::Progress(received, target),
                    _ => continue,
                };
                if bus.send(event).await.is_err() {
                    return;
                }
            }
        });
    }
}

impl ChatBackend for ReplicaBackend {
    async fn conversations(&self) -> anyhow::Result<Vec<ConvItem>> {
        let list = self.replica.conversations().await?;
        Ok(list
            .into_iter()
            .filter(|s| s.members.is_some())
            .map(|s| ConvItem {
                id: s.id,
                name: self.names.conversation(s.id),
                unread: s.unread,
            })
            .collect())
    }

    async fn page(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        n: usize,
    ) -> anyhow::Result<Vec<ChatLine>> {
        let cursor = match before {
            Some(m) => Some(
                self.cursors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&m)
                    .cloned()
                    .context("scrolled back from a message not shown")?,
            ),
            None => None,
        };
        let page = self.replica.page(conversation, cursor, n).await?;
        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        Ok(page
            .iter()
            .map(|r| {
                cursors.insert(r.view.id, PageCursor::of(&r.view));
                self.names.line(r)
            })
            .collect())
    }

    async fn send(&self, conversation: ConversationId, text: String) -> anyhow::Result<()> {
        self.replica.send(conversation, text.into_bytes()).await?;
        Ok(())
    }

    async fn mark_read(&self, conversation: ConversationId) -> anyhow::Result<()> {
        self.replica.mark_read(conversation, None).await?;
        Ok(())
    }

    async fn retry(&self, message: MessageId) -> anyhow::Result<()> {
        self.replica.retry(message).await?;
        Ok(())
    }

    async fn outbox_len(&self) -> anyhow::Result<usize> {
        Ok(self.replica.outbox().await?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escape_sequences_never_reach_the_terminal() {
        let shown = printable(b"hi\x1b]52;c;aGk=\x07\x1b[2J\r\nthere\tyou");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            shown,
            "hi\u{FFFD}]52;c;aGk=\u{FFFD}\u{FFFD}[2J\u{FFFD} there you"
        );
    }
}
