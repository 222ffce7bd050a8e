//! Messages with their bodies, read beside the store: the index tables through a
//! [`LogReader`] and the epoch keys from their sealed records, so a UI thread reads a page or
//! one message without waiting for the thread that owns the [`Store`] (which may be folding a
//! catch-up page). Bodies are decrypted only for the messages returned.

use super::keys::{body_of, open_epoch, Body};
use super::{Store, StoreError};
use crate::conversation::MessageView;
use crate::crypto::{EpochKey, StorageKey};
use crate::ids::{ConversationId, EventId, MessageId};
use crate::log::{LogReader, PageCursor};
use std::collections::HashMap;

/// A message as a UI renders it: its view (status included) and its body, decrypted or in
/// a typed state (waiting for its epoch's key, unreadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The message.
    pub view: MessageView,
    /// Its body.
    pub body: Body,
}

/// Reads messages with their bodies from the log, on any thread (see the module doc).
///
/// Made by [`Store::reader`]. It holds the storage key that opens epoch records and shares
/// the log's database: it keeps the database file open while it lives.
#[derive(Clone)]
pub struct MessageReader {
    log: LogReader,
    storage: StorageKey,
}

impl std::fmt::Debug for MessageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageReader").finish_non_exhaustive()
    }
}

impl MessageReader {
    /// Up to `n` messages just before `before` in view order (the latest for `None`), with
    /// their bodies (see [`LogReader::page`]).
    pub fn page(
        &self,
        conversation: ConversationId,
        before: Option<PageCursor>,
        n: usize,
    ) -> Result<Vec<Rendered>, StoreError> {
        let views = self.log.page(conversation, before, n)?;
        let mut keys = Keys::default();
        views
            .into_iter()
            .map(|view| self.render(&mut keys, view))
            .collect()
    }

    /// One message with its body, if it is visible in the conversation.
    pub fn message(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Option<Rendered>, StoreError> {
        Ok(self.messages(&[(conversation, message)])?.pop().flatten())
    }

    /// Several messages with their bodies, from one read of the index (see
    /// [`LogReader::messages`]); each epoch key is opened once.
    pub fn messages(
        &self,
        wanted: &[(ConversationId, MessageId)],
    ) -> Result<Vec<Option<Rendered>>, StoreError> {
        let views = self.log.messages(wanted)?;
        let mut keys = Keys::default();
        views
            .into_iter()
            .map(|v| v.map(|view| self.render(&mut keys, view)).transpose())
            .collect()
    }

    /// The index reads without bodies (unread counts, say).
    pub fn log(&self) -> &LogReader {
        &self.log
    }

    fn render(&self, keys: &mut Keys, view: MessageView) -> Result<Rendered, StoreError> {
        let body = body_of(&view, |epoch| self.key(keys, view.conversation, epoch))?;
        Ok(Rendered { view, body })
    }

    fn key(
        &self,
        keys: &mut Keys,
        conversation: ConversationId,
        epoch: EventId,
    ) -> Result<Option<EpochKey>, StoreError> {
        if let Some(known) = keys.0.get(&(conversation, epoch)) {
            return Ok(known.clone());
        }
        let key = self
            .log
            .epoch_key(conversation, epoch)?
            .and_then(|sealed| open_epoch(&self.storage, conversation, epoch, &sealed))
            .map(|e| e.key());
        keys.0.insert((conversation, epoch), key.clone());
        Ok(key)
    }
}

/// Epoch keys opened during one read (each record is opened once per read).
#[derive(Default)]
struct Keys(HashMap<(ConversationId, EventId), Option<EpochKey>>);

impl Store {
    /// A reader of messages with their bodies that works beside this store, on any thread
    /// (see [`MessageReader`]). Make it after [`Store::set_storage_key`].
    pub fn reader(&self) -> MessageReader {
        MessageReader {
            log: self.log.reader(),
            storage: self.storage.clone(),
        }
    }
}
