//! # tidings-cli
//!
//! The `tidings` command: a user's identity and devices, contacts, a scriptable `send`, and
//! `tidings chat`, a terminal client (ratatui) that proves the library end to end.
//!
//! # Layout
//! - [`home`]: the data directory (key store, settings, contacts).
//! - [`model`]: what the client shows, and [`model::ChatBackend`], the one seam to the
//!   device library.
//! - [`app`]: the state and [`app::App::handle`], the only place it changes.
//! - [`ui`]: [`ui::draw`], a pure function of the state.
//! - [`session`]: the event bus and the loop (event → state → actions → draw).
//! - [`backend`]: the backend over a [`tidings_replica::Replica`].
//!
//! Structure after gurk-rs: one bus, a pure draw, the replica behind a trait, so tests drive
//! the screens with ratatui's `TestBackend` and no network.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod app;
pub mod backend;
pub mod home;
pub mod model;
pub mod session;
pub mod ui;
