//! What the app asks of the device: conversations, sends, members, invitations, blocks,
//! read marks and retries. Each is durable before it returns and queued for the relay.

use super::*;

impl DeviceCore {
    /// Creates a conversation (see [`Store::create_conversation`]).
    pub fn create_conversation(
        &mut self,
        conversation: ConversationId,
        members: Vec<crate::ids::UserId>,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let (_, changes) = self
            .store
            .create_conversation(conversation, members, now_ms)?;
        self.emit(changes);
        self.flush(now_ms)
    }

    /// Sends a message: durable and visible (PENDING) before this returns.
    /// Returns the message's id, bound to this device ([`crate::EventHeader::message_id`]).
    pub fn send(
        &mut self,
        conversation: ConversationId,
        body: Vec<u8>,
        media: Vec<MediaRef>,
        now_ms: u64,
    ) -> Result<MessageId, DeviceError> {
        let (event, changes) = self.store.send(conversation, body, media, now_ms)?;
        self.emit(changes);
        self.flush(now_ms)?;
        Ok(event.header().message_id())
    }

    /// Sends a message with media ([`Store::send_media`]): the caption and the blobs'
    /// descriptors sealed in its body, durable and visible (PENDING) before this returns.
    /// The blobs travel apart (the replica's upload queue).
    pub fn send_media(
        &mut self,
        conversation: ConversationId,
        body: &crate::media::MediaBody,
        now_ms: u64,
    ) -> Result<MessageId, DeviceError> {
        let (event, changes) = self.store.send_media(conversation, body, now_ms)?;
        self.emit(changes);
        self.flush(now_ms)?;
        Ok(event.header().message_id())
    }

    /// Sends several messages with one durable commit ([`Store::send_all`]): each is durable
    /// and visible (PENDING) before this returns, with its own outcome, in order. The outbox
    /// is offered to the relay once, after the commit. A failure to offer it is logged, not
    /// returned: the messages are durable and queued, and go at the next wake-up.
    pub fn send_all(
        &mut self,
        outgoing: Vec<Outgoing>,
        now_ms: u64,
    ) -> Vec<Result<MessageId, DeviceError>> {
        let results = self.store.send_all(outgoing, now_ms);
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.push(match r {
                Ok((event, changes)) => {
                    self.emit(changes);
                    Ok(event.header().message_id())
                }
                Err(e) => Err(e.into()),
            });
        }
        if let Err(e) = self.flush(now_ms) {
            tracing::warn!(error = %e, "could not offer the outbox after a send batch");
        }
        out
    }

    /// Adds `user` to a conversation (an admin's act); the next message starts a new epoch.
    pub fn add_member(
        &mut self,
        conversation: ConversationId,
        user: UserId,
        admin: bool,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let (_, changes) = self.store.add_member(conversation, user, admin, now_ms)?;
        self.emit(changes);
        self.flush(now_ms)
    }

    /// Removes `user` from a conversation (an admin's act, or leaving it); the next message
    /// starts a new epoch without the removed user's devices.
    pub fn remove_member(
        &mut self,
        conversation: ConversationId,
        user: UserId,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        let (_, changes) = self.store.remove_member(conversation, user, now_ms)?;
        self.emit(changes);
        self.flush(now_ms)
    }

    /// Accepts an invitation (or takes back a decline): the relay lists and pushes the
    /// conversation to every device of the user from then on, and this device catches up
    /// on it. Sent when connected; [`DeviceEvent::User`] reports it once durable.
    pub fn accept(&mut self, conversation: ConversationId) {
        self.user_action(UserAction::Accept(conversation));
    }

    /// Declines an invitation: never listed or pushed to the user's devices (unless
    /// accepted later).
    pub fn decline(&mut self, conversation: ConversationId) {
        self.user_action(UserAction::Decline(conversation));
    }

    /// Blocks a user: the relay refuses its Creates and AddMembers listing this user, and
    /// declines its pending invitations.
    pub fn block(&mut self, user: UserId) {
        self.user_action(UserAction::Block(user));
    }

    /// Unblocks a user.
    pub fn unblock(&mut self, user: UserId) {
        self.user_action(UserAction::Unblock(user));
    }

    /// Pending invitations, as the relay last told this device.
    pub fn invitations(&self) -> Vec<Invitation> {
        self.invitations.values().cloned().collect()
    }

    /// Users this user blocks, as the relay last told this device.
    pub fn blocked(&self) -> Vec<UserId> {
        self.blocked.iter().copied().collect()
    }

    pub(super) fn user_action(&mut self, action: UserAction) {
        if self.state == State::Ready {
            self.send_user_action(action);
        } else {
            self.user_actions.push_back(action);
        }
    }

    pub(super) fn send_user_action(&mut self, action: UserAction) {
        let request_id = self.request_id();
        self.requests.insert(request_id, Request::User(action));
        self.transmit.push_back(match action {
            UserAction::Accept(conversation) => ClientFrame::Accept {
                request_id,
                conversation,
            },
            UserAction::Decline(conversation) => ClientFrame::Decline {
                request_id,
                conversation,
            },
            UserAction::Block(user) => ClientFrame::Block { request_id, user },
            UserAction::Unblock(user) => ClientFrame::Unblock { request_id, user },
        });
    }

    /// Marks everything up to `up_to` read on this device: by default everything it holds
    /// without a gap, and never more (a receipt is a watermark; it must not cover messages that
    /// have not arrived, even when the device's own later messages are acknowledged).
    pub fn mark_read(
        &mut self,
        conversation: ConversationId,
        up_to: Option<ServerSeq>,
        now_ms: u64,
    ) -> Result<(), DeviceError> {
        // A receipt is a watermark: it may cover only what the device holds without a gap (its
        // own messages acknowledged past a gap are not "everything up to" them).
        let held = self.store.log().cursor(&cursor_key(&conversation))?;
        let up_to = up_to.unwrap_or(held).min(held);
        if !self.config.read_receipts {
            return self.mark_read_locally(conversation, up_to);
        }
        if let Some((_, changes)) = self.store.mark_read(conversation, up_to, now_ms)? {
            self.emit(changes);
        }
        self.flush(now_ms)
    }

    /// Read receipts off: the read mark stays on this device, nothing is sent.
    pub(super) fn mark_read_locally(
        &mut self,
        conversation: ConversationId,
        up_to: ServerSeq,
    ) -> Result<(), DeviceError> {
        let key = crate::log::local_read_key(&conversation);
        if up_to <= self.store.log().cursor(&key)? {
            return Ok(());
        }
        self.store.log().write(|t| t.set_cursor(&key, up_to))?;
        let key = self.store.key();
        let (device, user) = (key.device(), key.user());
        self.emit(vec![Change::MarksChanged {
            conversation,
            device,
            user,
        }]);
        Ok(())
    }

    /// Puts a FAILED message back in the queue and tries it now.
    pub fn retry(&mut self, message: MessageId, now_ms: u64) -> Result<(), DeviceError> {
        let (_, changes) = self.store.retry(message, now_ms)?;
        self.emit(changes);
        self.flush(now_ms)
    }
}
