//! The render stage: turns the core's events into the app's [`Update`]s on a thread of its own.
//!
//! An update about a message carries the message as the UI shows it (view and decrypted body),
//! read from the index after the fold committed. That read used to run on the driver task,
//! between two store commits: during a catch-up of 100k messages a quarter of the driver's
//! time went to rendering what it had just written (`perf`, BENCHMARKS.md "Catch-up: rendering
//! off the driver"). Here the driver hands each event over a bounded queue to one render
//! thread, which reads in its own read transactions (redb readers never wait for the writer)
//! and publishes in the order it was handed the events, so updates keep the core's order.
//! Updates the driver makes itself (connection state) go through the same queue for the same
//! reason. When the queue is full the driver task waits (asynchronously, so its runtime thread
//! serves other tasks meanwhile): rendering never falls further behind than
//! [`RENDER_QUEUE`] events, so memory stays bounded.

use crate::Update;
use std::collections::BTreeSet;
use tidings_engine::log::MAX_PAGE_LEN;
use tidings_engine::store::{MessageReader, Rendered};
use tidings_engine::wire::UserChange;
use tidings_engine::{Change, ConversationId, DeviceEvent, MessageId};
use tokio::sync::{broadcast, mpsc};

/// Events handed to the render thread and not rendered yet, at most.
pub(super) const RENDER_QUEUE: usize = 32;

enum Out {
    /// An event of the core, to render.
    Event(DeviceEvent),
    /// An update the driver made, to publish in order with the rendered ones.
    Ready(Update),
}

/// The driver's end of the render thread.
pub(super) struct Renderer {
    queue: Option<mpsc::Sender<Out>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Renderer {
    /// Starts the render thread: it renders with `reader` and publishes on `updates`.
    pub(super) fn start(
        reader: MessageReader,
        updates: broadcast::Sender<Update>,
        read_receipts: bool,
    ) -> std::io::Result<Self> {
        let (queue, mut events) = mpsc::channel::<Out>(RENDER_QUEUE);
        let thread = std::thread::Builder::new()
            .name("tidings-render".into())
            .spawn(move || {
                while let Some(out) = events.blocking_recv() {
                    match out {
                        Out::Ready(update) => {
                            // No subscriber is fine: the app reads state when it wants.
                            let _ = updates.send(update);
                        }
                        Out::Event(event) => {
                            // Nobody to render for: the messages are not read.
                            let reader = (updates.receiver_count() > 0).then_some(&reader);
                            for update in updates_of(event, reader, read_receipts) {
                                let _ = updates.send(update);
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Hands an event of the core to the render thread (waits while its queue is full).
    pub(super) async fn event(&self, event: DeviceEvent) {
        self.put(Out::Event(event)).await;
    }

    /// Publishes `update` after everything handed over before it.
    pub(super) async fn update(&self, update: Update) {
        self.put(Out::Ready(update)).await;
    }

    async fn put(&self, out: Out) {
        if let Some(queue) = &self.queue {
            if queue.send(out).await.is_err() {
                // The thread ended, which it does only when the queue closes or a render
                // panicked: the update is lost, the state is not.
                tracing::error!("the render thread is gone; an update was dropped");
            }
        }
    }

    /// Publishes what is queued and ends the thread, so its reader is released before the
    /// store closes.
    pub(super) async fn finish(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Renderer {
    /// A driver dropped where it stands (its runtime shut down, no close) still ends the
    /// thread before it is gone: the thread's reader holds the database, and a reopen of the
    /// same files right after must find it released. The thread has at most
    /// [`RENDER_QUEUE`] events left to render, so the wait is short.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The messages `changes` name, rendered from the index in one read per [`MAX_PAGE_LEN`]
/// (after the fold committed, so the index holds them); `None` each without a reader or
/// when the read fails (logged: the update still says what changed).
fn rendered(changes: &[Change], reader: Option<&MessageReader>) -> Vec<Option<Box<Rendered>>> {
    let wanted: Vec<(ConversationId, MessageId)> = changes
        .iter()
        .filter_map(|ch| match ch {
            Change::MessageAdded {
                conversation,
                message,
                ..
            }
            | Change::StatusChanged {
                conversation,
                message,
                ..
            } => Some((*conversation, *message)),
            _ => None,
        })
        .collect();
    let Some(reader) = reader else {
        return vec![None; wanted.len()];
    };
    let mut out = Vec::with_capacity(wanted.len());
    for chunk in wanted.chunks(MAX_PAGE_LEN) {
        match reader.messages(chunk) {
            Ok(found) => out.extend(found.into_iter().map(|r| r.map(Box::new))),
            Err(e) => {
                tracing::warn!(error = %e, "rendering updated messages failed");
                out.extend(chunk.iter().map(|_| None));
            }
        }
    }
    out
}

fn updates_of(
    event: DeviceEvent,
    reader: Option<&MessageReader>,
    read_receipts: bool,
) -> Vec<Update> {
    let shown = |r: Option<Box<Rendered>>| r.map(|r| Box::new(crate::as_shown(*r, read_receipts)));
    let shown_status = |s| crate::status_shown(s, read_receipts);
    match event {
        DeviceEvent::Changes(changes) => {
            let mut out = Vec::with_capacity(changes.len());
            let mut touched = BTreeSet::new();
            let mut views = rendered(&changes, reader).into_iter();
            for ch in changes {
                match ch {
                    Change::MessageAdded {
                        conversation,
                        message,
                        status,
                    } => out.push(Update::MessageAdded {
                        conversation,
                        message,
                        status: shown_status(status),
                        rendered: shown(views.next().flatten()),
                    }),
                    Change::StatusChanged {
                        conversation,
                        message,
                        from,
                        to,
                    } => {
                        let rendered = shown(views.next().flatten());
                        let (from, to) = (shown_status(from), shown_status(to));
                        // DELIVERED → READ with receipts off: nothing to show.
                        if from != to {
                            out.push(Update::StatusChanged {
                                conversation,
                                message,
                                from,
                                to,
                                rendered,
                            });
                        }
                    }
                    Change::MessageErased {
                        conversation,
                        message,
                        reason,
                    } => out.push(Update::MessageErased {
                        conversation,
                        message,
                        reason,
                    }),
                    Change::MarksChanged { conversation, .. }
                    | Change::KeyArrived { conversation, .. }
                    | Change::MembersChanged { conversation } => {
                        touched.insert(conversation);
                    }
                    _ => {}
                }
            }
            out.extend(
                touched
                    .into_iter()
                    .map(|conversation| Update::ConversationChanged { conversation }),
            );
            out
        }
        DeviceEvent::SyncProgress {
            conversation,
            received,
            target,
        } => vec![Update::SyncProgress {
            conversation,
            received,
            target,
        }],
        DeviceEvent::Refused {
            event,
            code,
            reason,
        } => vec![Update::Refused {
            event,
            code,
            reason,
        }],
        DeviceEvent::HistoryGap {
            conversation,
            from,
            to,
        } => vec![Update::HistoryGap {
            conversation,
            from,
            to,
        }],
        DeviceEvent::HistoryProgress {
            peer,
            events,
            keys,
            done,
        } => vec![Update::HistoryProgress {
            peer,
            events,
            keys,
            done,
        }],
        DeviceEvent::Chain(issue) => vec![Update::Chain(issue)],
        DeviceEvent::Ignored(refused) => vec![Update::Ignored(refused)],
        DeviceEvent::Directory(refused) => vec![Update::Directory(refused)],
        DeviceEvent::KeyShareRefused(refused) => vec![Update::KeyShareRefused(refused)],
        DeviceEvent::RemovalAhead(removal) => vec![Update::RemovalAhead(removal)],
        DeviceEvent::FailedExpired {
            conversation,
            messages,
        } => vec![Update::FailedExpired {
            conversation,
            messages,
        }],
        DeviceEvent::User(change) => match change {
            UserChange::Invited(i) => vec![Update::Invited(i)],
            UserChange::Accepted(info) => vec![Update::Accepted {
                conversation: info.conversation,
            }],
            UserChange::Declined(conversation) => vec![Update::Declined { conversation }],
            UserChange::Blocked(user) => vec![Update::Blocked { user }],
            UserChange::Unblocked(user) => vec![Update::Unblocked { user }],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_engine::DeviceId;

    #[test]
    fn history_progress_reaches_the_app() {
        let peer = DeviceId([7; 32]);
        let event = DeviceEvent::HistoryProgress {
            peer,
            events: 120,
            keys: 3,
            done: true,
        };
        match updates_of(event, None, true).as_slice() {
            [Update::HistoryProgress {
                peer: p,
                events: 120,
                keys: 3,
                done: true,
            }] => assert_eq!(*p, peer),
            other => panic!("{other:?}"),
        }
    }
}
