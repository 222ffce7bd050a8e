//! A user's consent requests (`Accept`, `Decline`, `Block`, `Unblock`): checked when they
//! arrive, applied and answered once durable.

use super::staged::{PendingUserRequest, UserRequest};
use super::store::{Decision, InvitationRecord};
use super::{RelayCore, SessionId};
use crate::storage::Storage;
use tidings_engine::wire::{self, ConversationInfo, ErrorCode, ServerFrame, UserChange};
use tidings_engine::UserId;

impl<S: Storage> RelayCore<S> {
    /// Accept, Decline, Block or Unblock from one of the user's devices: checked now,
    /// answered with `UserState` once durable (and told to the user's other devices).
    pub(super) fn on_user_request(
        &mut self,
        session: SessionId,
        request_id: u64,
        request: UserRequest,
        now_ms: u64,
    ) {
        let Some((_, user)) = self.registered(session) else {
            let msg = "device is not registered to its user";
            return self.refuse(session, request_id, ErrorCode::NOT_REGISTERED, msg);
        };
        let mut rows = Vec::new();
        let mut blocks = Vec::new();
        match request {
            UserRequest::Accept(c) | UserRequest::Decline(c) => {
                if !self.is_member(&user, &c) {
                    let msg = "unknown conversation or not a member";
                    return self.refuse(session, request_id, ErrorCode::NOT_MEMBER, msg);
                }
                let decision = match request {
                    UserRequest::Accept(_) => Decision::Accepted,
                    _ => Decision::Declined,
                };
                let inviter = self
                    .consent
                    .inviter(&user, &c)
                    .or_else(|| self.convs.get(&c).map(|cv| cv.head.membership.creator()))
                    .unwrap_or(user);
                rows.push(InvitationRecord {
                    user,
                    conversation: c,
                    decision,
                    inviter,
                });
            }
            UserRequest::Block(other) => {
                if other == user {
                    let msg = "a user cannot block itself";
                    return self.refuse(session, request_id, ErrorCode::FORBIDDEN, msg);
                }
                if !self.consent.can_block(&user, &other) {
                    let msg = format!("already blocking {} users", wire::MAX_BLOCKED_USERS);
                    return self.refuse(session, request_id, ErrorCode::BLOCK_LIST_FULL, &msg);
                }
                for c in self.consent.pending_from(&user, &other) {
                    rows.push(InvitationRecord {
                        user,
                        conversation: c,
                        decision: Decision::Declined,
                        inviter: other,
                    });
                }
                blocks.push((user, other, true));
            }
            UserRequest::Unblock(other) => blocks.push((user, other, false)),
        }
        self.staged.since_ms.get_or_insert(now_ms);
        self.staged.user_requests.push(PendingUserRequest {
            session,
            request_id,
            user,
            request,
            rows,
            blocks,
        });
    }

    /// The change a durable user request made, as `session` sees it.
    pub(super) fn user_change(&self, request: UserRequest, session: SessionId) -> UserChange {
        match request {
            UserRequest::Accept(c) => UserChange::Accepted(ConversationInfo {
                conversation: c,
                max_seq: self.committed_seq(&c).unwrap_or(0),
                cursor: self
                    .sessions
                    .get(&session)
                    .and_then(|s| s.cursors.get(&c).copied())
                    .unwrap_or(0),
            }),
            UserRequest::Decline(c) => UserChange::Declined(c),
            UserRequest::Block(u) => UserChange::Blocked(u),
            UserRequest::Unblock(u) => UserChange::Unblocked(u),
        }
    }

    /// The authenticated sessions of `user`'s devices.
    pub(super) fn user_sessions(&self, user: &UserId) -> Vec<SessionId> {
        self.user_devices
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|d| self.device_sessions.get(d).copied())
            .filter(|sid| self.registered(*sid).is_some())
            .collect()
    }

    /// Applies durable user requests and new invitations: answers the requests, and tells
    /// every other online device of each user what changed.
    pub(super) fn settle_consent(
        &mut self,
        invitations: Vec<InvitationRecord>,
        requests: Vec<PendingUserRequest>,
    ) {
        for r in requests {
            for row in &r.rows {
                self.consent
                    .set(row.user, row.conversation, row.decision, row.inviter);
            }
            for (u, o, on) in &r.blocks {
                self.consent.set_block(*u, *o, *on);
            }
            let change = self.user_change(r.request, r.session);
            self.send_live(
                r.session,
                ServerFrame::UserState {
                    request_id: r.request_id,
                    change,
                },
            );
            for sid in self.user_sessions(&r.user) {
                if sid != r.session {
                    let change = self.user_change(r.request, sid);
                    self.send(sid, ServerFrame::UserChanged { change });
                }
            }
        }
        for row in invitations {
            if row.decision != Decision::Pending {
                continue;
            }
            let change = UserChange::Invited(wire::Invitation {
                conversation: row.conversation,
                inviter: row.inviter,
            });
            for sid in self.user_sessions(&row.user) {
                self.send(
                    sid,
                    ServerFrame::UserChanged {
                        change: change.clone(),
                    },
                );
            }
        }
    }
}
