//! The event loop: one bus of [`AppEvent`]s, the [`App`] that takes them, the backend that
//! carries out its [`Action`]s, and the draw after each.

use crate::app::{Action, App, AppEvent, PAGE_LEN};
use crate::model::ChatBackend;
use crate::ui::draw;
use ratatui::backend::Backend;
use ratatui::Terminal;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// Events queued on the bus at most (keys, updates); a full bus makes the producers wait.
pub const BUS_LEN: usize = 1024;

/// A new bus: hand the sender to every producer (keys, replica updates).
pub fn bus() -> (mpsc::Sender<AppEvent>, mpsc::Receiver<AppEvent>) {
    mpsc::channel(BUS_LEN)
}

/// An [`App`] wired to a backend.
#[derive(Debug)]
pub struct Session<B> {
    app: App,
    backend: B,
}

impl<B: ChatBackend> Session<B> {
    /// A session of `app` over `backend`.
    pub fn new(app: App, backend: B) -> Session<B> {
        Session { app, backend }
    }

    /// The state, for drawing or checking.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The first reads (conversation list, outbox), settled.
    pub async fn start(&mut self) {
        let actions = self.app.start();
        self.act(actions).await;
    }

    /// Takes one event and everything it leads to, until the app asks for nothing more: the
    /// state is settled when this returns (tests check it, the loop draws it).
    pub async fn step(&mut self, event: AppEvent) {
        let actions = self.app.handle(event);
        self.act(actions).await;
    }

    async fn act(&mut self, actions: Vec<Action>) {
        let mut todo: VecDeque<Action> = actions.into();
        while let Some(action) = todo.pop_front() {
            let result = self.perform(action).await;
            let event = match result {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => AppEvent::Error(format!("{e:#}")),
            };
            todo.extend(self.app.handle(event));
        }
    }

    async fn perform(&self, action: Action) -> anyhow::Result<Option<AppEvent>> {
        let b = &self.backend;
        Ok(match action {
            Action::LoadConversations => Some(AppEvent::Conversations(b.conversations().await?)),
            Action::LoadLatest(c) => Some(AppEvent::Page {
                conversation: c,
                lines: b.page(c, None, PAGE_LEN).await?,
                older: false,
            }),
            Action::LoadOlder(c, before) => Some(AppEvent::Page {
                conversation: c,
                lines: b.page(c, Some(before), PAGE_LEN).await?,
                older: true,
            }),
            Action::Send(c, text) => {
                b.send(c, text).await?;
                None
            }
            Action::MarkRead(c) => {
                b.mark_read(c).await?;
                None
            }
            Action::Retry(m) => {
                b.retry(m).await?;
                None
            }
            Action::LoadOutbox => Some(AppEvent::Outbox(b.outbox_len().await?)),
        })
    }

    /// Draws, takes the next event off the bus, and again, until the user quits or every
    /// producer is gone.
    pub async fn run<T: Backend>(
        mut self,
        terminal: &mut Terminal<T>,
        mut events: mpsc::Receiver<AppEvent>,
    ) -> anyhow::Result<()> {
        self.start().await;
        loop {
            terminal.draw(|f| draw(f, &self.app))?;
            let Some(event) = events.recv().await else {
                return Ok(());
            };
            self.step(event).await;
            if self.app.quit {
                return Ok(());
            }
        }
    }
}
