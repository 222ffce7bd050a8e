//! The pure draw function: [`draw`] renders an [`App`] and nothing else, so a `TestBackend`
//! snapshot shows exactly what a person sees.

use crate::app::App;
use crate::model::{ChatLine, Shown};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, Paragraph, Wrap};
use ratatui::Frame;
use tidings_engine::{ConnectionState, Status};

/// Width of the conversation list.
const LIST_WIDTH: u16 = 22;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let [bar, body, compose] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(3),
    ])
    .areas(frame.area());
    let [list, pane] =
        Layout::horizontal([Constraint::Length(LIST_WIDTH), Constraint::Min(10)]).areas(body);
    frame.render_widget(status_bar(app), bar);
    frame.render_widget(conversation_list(app), list);
    draw_messages(frame, app, pane);
    frame.render_widget(compose_box(app), compose);
}

/// The top line: who, and the connection; an offline banner with what waits to go out.
fn status_bar(app: &App) -> Paragraph<'static> {
    let (text, style) = match (&app.connection.state, &app.connection.problem) {
        (ConnectionState::Online, _) => (
            format!(" tidings · {} · online", app.me),
            Style::new().fg(Color::Black).bg(Color::Green),
        ),
        (ConnectionState::Syncing, _) => {
            let progress = match app.progress {
                Some((got, of)) => format!(" {got}/{of}"),
                None => String::new(),
            };
            (
                format!(" tidings · {} · catching up{progress}", app.me),
                Style::new().fg(Color::Black).bg(Color::Yellow),
            )
        }
        (state, problem) => {
            let what = match state {
                ConnectionState::Authenticating => "connecting",
                _ => "OFFLINE",
            };
            let waiting = match app.outbox {
                0 => String::new(),
                1 => " · 1 message waiting to send".to_string(),
                n => format!(" · {n} messages waiting to send"),
            };
            let why = problem
                .as_ref()
                .map(|p| format!(" · {p}"))
                .unwrap_or_default();
            (
                format!(" tidings · {} · {what}{waiting}{why}", app.me),
                Style::new().fg(Color::White).bg(Color::Red),
            )
        }
    };
    Paragraph::new(text).style(style)
}

fn conversation_list(app: &App) -> List<'static> {
    let items: Vec<ListItem> = app
        .conversations
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let unread = if c.unread > 0 {
                format!(" ({})", c.unread)
            } else {
                String::new()
            };
            let style = if i == app.selected {
                Style::new().add_modifier(Modifier::REVERSED)
            } else if c.unread > 0 {
                Style::new().add_modifier(Modifier::BOLD)
            } else {
                Style::new()
            };
            ListItem::new(Line::styled(format!("{}{unread}", c.name), style))
        })
        .collect();
    List::new(items).block(Block::bordered().title(" chats "))
}

fn draw_messages(frame: &mut Frame, app: &App, area: Rect) {
    let title = match app.current() {
        Some(c) => format!(" {} ", c.name),
        None => " no conversation ".to_string(),
    };
    let block = Block::bordered().title(title);
    let inner_height = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = if app.conversations.is_empty() {
        vec![
            Line::raw("No conversations yet."),
            Line::raw("Add a contact: tidings contacts add <code>"),
        ]
    } else {
        let mut lines: Vec<Line> = app.lines.iter().map(message_line).collect();
        if app.more_before {
            lines.insert(
                0,
                Line::styled("… PgUp for older", Style::new().fg(Color::DarkGray)),
            );
        }
        // The latest at the bottom: keep the last lines that fit.
        let skip = lines.len().saturating_sub(inner_height);
        lines.split_off(skip)
    };
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}

/// One message: author, body, and on the user's own messages the ticks.
pub fn message_line(l: &ChatLine) -> Line<'static> {
    let mut spans = vec![Span::styled(
        format!("{}: ", l.author),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    spans.push(match &l.shown {
        Shown::Text(t) => Span::raw(t.clone()),
        Shown::WaitingForKey => Span::styled(
            "(waiting for key)",
            Style::new()
                .fg(Color::DarkGray)
                .add_modifier(Modifier::ITALIC),
        ),
        Shown::WaitingForMedia(what) => Span::styled(
            format!("(waiting for media: {what})"),
            Style::new()
                .fg(Color::DarkGray)
                .add_modifier(Modifier::ITALIC),
        ),
        Shown::Unreadable => Span::styled("(unreadable)", Style::new().fg(Color::Red)),
    });
    if l.mine {
        spans.push(Span::raw(" "));
        spans.push(tick(l.status));
    }
    Line::from(spans)
}

/// ⏰ pending, ✓ at the relay, ✓✓ delivered, blue ✓✓ read, FAILED with how to retry.
pub fn tick(status: Status) -> Span<'static> {
    match status {
        Status::Pending => Span::raw("⏰"),
        Status::Sent => Span::styled("✓", Style::new().fg(Color::Gray)),
        Status::Delivered => Span::styled("✓✓", Style::new().fg(Color::Gray)),
        Status::Read => Span::styled("✓✓", Style::new().fg(Color::Blue)),
        Status::Failed => Span::styled(
            "FAILED (Ctrl-R retries)",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    }
}

fn compose_box(app: &App) -> Paragraph<'static> {
    let title = match &app.notice {
        Some(n) => format!(" {n} "),
        None => " Enter sends · ↑↓ chats · PgUp older · Esc quits ".to_string(),
    };
    Paragraph::new(format!("> {}", app.compose)).block(Block::bordered().title(title))
}
