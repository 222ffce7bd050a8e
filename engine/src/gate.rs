//! The device's own check of every event at its place in the server order.
//!
//! A relay sequences events and claims it checked them; a device does not take its word. The
//! [`Gate`] of a conversation walks the sequenced events in server order and, for each one,
//! decides whether it may be shown:
//! - its author device must be certified by the user named in the event (the device
//!   [`DeviceDirectory`] verifies certificates under the user's key), and not revoked before
//!   the relay sequenced it;
//! - the event must meet its own rules ([`Event::check_rules`]: a message id is bound to its
//!   author), exactly as the relay checks them;
//! - the user must be allowed to do what the event does, by the [`Membership`] rules, under the
//!   membership in force at that point of the order (so a removed member's later events, and
//!   anything from a non-member, are refused whatever the relay accepted).
//!
//! Refused events stay in the log (they are evidence) but are never folded into the
//! conversation; each one is reported once. An event whose author the directory does not know
//! yet makes the gate wait for that user's certificates; once the relay's complete answer is in
//! and the device is still unknown (or its certificate did not verify), the event is refused as
//! uncertified, and when the relay gave no complete answer after the device asked a bounded
//! number of times, as unanswered. Every event gets a final verdict in bounded time.

use crate::directory::DeviceDirectory;
use crate::event::{Event, EventKind};
use crate::ids::{ConversationId, DeviceId, EventId, ServerSeq, UserId};
use crate::membership::{Membership, MembershipError};
use serde::{Deserialize, Serialize};

/// Why a device refused a sequenced event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The membership rules refuse it at its place in the order.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// An event before the conversation's `Create`.
    #[error("event before the conversation was created")]
    NotCreated,
    /// The author device is certified for another user than the event names.
    #[error("device {device} acts for user {certified}, not {claimed}")]
    WrongUser {
        /// The author device.
        device: DeviceId,
        /// The user its certificate names.
        certified: UserId,
        /// The user the event names.
        claimed: UserId,
    },
    /// The author device was revoked before the relay sequenced the event.
    #[error("device {0} was revoked")]
    Revoked(DeviceId),
    /// The relay sequenced, in this conversation, an event that names another one (the
    /// event stays held for its own conversation's gate).
    #[error("event of conversation {0} sequenced in another conversation")]
    OtherConversation(ConversationId),
    /// The event breaks a rule it must meet by itself ([`Event::check_rules`]): a `Send` of a
    /// message id that is not bound to its author (an attempt to take over someone else's
    /// message).
    #[error(transparent)]
    Shape(#[from] crate::event::DecodeError),
    /// The user's certificates were fetched and none certifies the author device.
    #[error("device {device} is not certified by user {user}")]
    Uncertified {
        /// The author device.
        device: DeviceId,
        /// The user the event names.
        user: UserId,
    },
    /// The relay gave no complete answer about the user's certificates, however often the
    /// device asked: the author device is unproven.
    #[error("no answer about the certificates of user {user} (author device {device})")]
    Unanswered {
        /// The author device.
        device: DeviceId,
        /// The user the event names.
        user: UserId,
    },
}

/// Where a device stands in learning a user's certificates, for [`Gate::judge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorLookup {
    /// Not asked, or asked and not answered yet: wait.
    Asking,
    /// The relay's complete answer about the user is in the directory.
    Answered,
    /// The device asked as often as it asks, without a complete answer.
    GaveUp,
}

/// What the gate decided about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed: fold it. `membership_changed` when it changed who is a member.
    Admit {
        /// Whether the event changed the membership (a `Create` included).
        membership_changed: bool,
    },
    /// Refused: keep it out of the conversation and report it.
    Refuse(Refusal),
    /// The author device is unknown: fetch this user's certificates and judge again.
    Wait(UserId),
}

/// The gate of one conversation: the membership at the point of the order it reached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// The membership after the last judged event (`None` before the `Create`).
    pub membership: Option<Membership>,
    /// The `Create` event.
    pub created_by: Option<EventId>,
    /// Highest server sequence judged: every event up to it was admitted or refused.
    pub through: ServerSeq,
    /// Sequence of the last admitted membership change (the `Create` included).
    pub changed_at: ServerSeq,
    /// Per current member, the sequence at which they (last) joined.
    pub joined: std::collections::BTreeMap<UserId, ServerSeq>,
}

impl Gate {
    /// Judges `event`, sequenced at `seq` at `server_ts_ms`, and applies it when admitted.
    /// The device's own events (author `me`) need no certificate. `lookup(user)` says
    /// whether the relay answered a request for `user`'s certificates since this event was
    /// first held (then an unknown author is refused instead of waited for), or whether the
    /// device gave up asking (refused too).
    pub fn judge(
        &mut self,
        event: &Event,
        seq: ServerSeq,
        server_ts_ms: u64,
        directory: &DeviceDirectory,
        me: DeviceId,
        lookup: &dyn Fn(&UserId) -> AuthorLookup,
    ) -> Verdict {
        let h = event.header();
        // The same rule the relay applies when it decodes a submission: an event that breaks
        // it is refused here too, whoever sequenced it.
        if let Err(e) = event.check_rules() {
            return Verdict::Refuse(e.into());
        }
        if h.author != me {
            if let Err(r) = author_check(h.author, h.user, server_ts_ms, directory, lookup) {
                return r;
            }
        }
        let changed = match (&mut self.membership, event.kind()) {
            (None, EventKind::Create { members }) => match Membership::create(h.user, members) {
                Ok(m) => {
                    self.membership = Some(m);
                    self.created_by = Some(event.id());
                    true
                }
                Err(e) => return Verdict::Refuse(e.into()),
            },
            (None, _) => return Verdict::Refuse(Refusal::NotCreated),
            (Some(m), kind) => match m.apply(h.user, kind) {
                Ok(changed) => changed,
                Err(e) => return Verdict::Refuse(e.into()),
            },
        };
        if changed {
            self.changed_at = seq;
            match event.kind() {
                EventKind::Create { .. } => {
                    self.joined = self.members().into_iter().map(|u| (u, seq)).collect();
                }
                EventKind::AddMember { user, .. } => {
                    self.joined.insert(*user, seq);
                }
                EventKind::RemoveMember { user } => {
                    self.joined.remove(user);
                }
                _ => {}
            }
        }
        Verdict::Admit {
            membership_changed: changed,
        }
    }

    /// Member users now (empty before the `Create`).
    pub fn members(&self) -> Vec<UserId> {
        self.membership
            .as_ref()
            .map(|m| m.members().copied().collect())
            .unwrap_or_default()
    }
}

fn author_check(
    device: DeviceId,
    user: UserId,
    server_ts_ms: u64,
    directory: &DeviceDirectory,
    lookup: &dyn Fn(&UserId) -> AuthorLookup,
) -> Result<(), Verdict> {
    let certified = match directory.revocation(&device) {
        Some((owner, at)) => {
            if server_ts_ms >= at {
                return Err(Verdict::Refuse(Refusal::Revoked(device)));
            }
            Some(owner)
        }
        None => directory.user_of(&device),
    };
    match certified {
        Some(owner) if owner == user => Ok(()),
        Some(owner) => Err(Verdict::Refuse(Refusal::WrongUser {
            device,
            certified: owner,
            claimed: user,
        })),
        None => match lookup(&user) {
            AuthorLookup::Answered => Err(Verdict::Refuse(Refusal::Uncertified { device, user })),
            AuthorLookup::GaveUp => Err(Verdict::Refuse(Refusal::Unanswered { device, user })),
            AuthorLookup::Asking => Err(Verdict::Wait(user)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceKey;
    use crate::ids::MessageId;
    use crate::wire::DeviceRevocation;
    use ed25519_dalek::SigningKey;

    const ME: DeviceId = DeviceId([0; 32]);

    struct U {
        key: SigningKey,
        id: UserId,
        dev: DeviceKey,
    }

    fn user(seed: u8) -> U {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let id = UserId(key.verifying_key().to_bytes());
        let dev = DeviceKey::from_seed([seed + 100; 32], id);
        U { key, id, dev }
    }

    fn ev(u: &U, counter: u64, kind: EventKind) -> Event {
        let h = u
            .dev
            .header(ConversationId([7; 16]), counter, None, counter, 0);
        let kind = h.bind(kind);
        Event::sign(u.dev.signing_key(), h, kind).expect("sign")
    }

    fn send(u: &U, counter: u64) -> Event {
        let kind = EventKind::Send {
            message: MessageId([counter as u8; 16]),
            body: vec![],
            media: vec![],
        };
        ev(u, counter, kind)
    }

    #[test]
    fn membership_is_judged_at_each_place_in_the_order() {
        let (a, b, c) = (user(1), user(2), user(3));
        let mut dir = DeviceDirectory::new();
        for u in [&a, &b, &c] {
            dir.certify(&u.dev.certificate(&u.key, 1)).expect("cert");
        }
        let never = |_: &UserId| AuthorLookup::Asking;
        let mut g = Gate::default();
        let create = ev(
            &a,
            1,
            EventKind::Create {
                members: vec![a.id, b.id],
            },
        );
        assert_eq!(
            g.judge(&send(&b, 1), 1, 0, &dir, ME, &never),
            Verdict::Refuse(Refusal::NotCreated)
        );
        assert_eq!(
            g.judge(&create, 1, 0, &dir, ME, &never),
            Verdict::Admit {
                membership_changed: true
            }
        );
        assert_eq!(
            g.judge(&send(&c, 1), 2, 0, &dir, ME, &never),
            Verdict::Refuse(Refusal::Membership(MembershipError::NotMember(c.id)))
        );
        let add = ev(
            &a,
            2,
            EventKind::AddMember {
                user: c.id,
                admin: false,
            },
        );
        assert_eq!(
            g.judge(&add, 3, 0, &dir, ME, &never),
            Verdict::Admit {
                membership_changed: true
            }
        );
        assert_eq!(g.changed_at, 3);
        assert_eq!(
            g.judge(&send(&c, 2), 4, 0, &dir, ME, &never),
            Verdict::Admit {
                membership_changed: false
            }
        );
        let remove = ev(&a, 3, EventKind::RemoveMember { user: c.id });
        assert!(matches!(
            g.judge(&remove, 5, 0, &dir, ME, &never),
            Verdict::Admit { .. }
        ));
        assert_eq!(
            g.judge(&send(&c, 3), 6, 0, &dir, ME, &never),
            Verdict::Refuse(Refusal::Membership(MembershipError::NotMember(c.id)))
        );
        assert_eq!(g.members().len(), 2);
    }

    #[test]
    fn authors_must_be_certified_and_not_revoked() {
        let (a, b) = (user(1), user(2));
        let mut dir = DeviceDirectory::new();
        dir.certify(&a.dev.certificate(&a.key, 1)).expect("cert");
        let mut g = Gate::default();
        let create = ev(
            &a,
            1,
            EventKind::Create {
                members: vec![a.id, b.id],
            },
        );
        assert!(matches!(
            g.judge(&create, 1, 0, &dir, ME, &|_| AuthorLookup::Asking),
            Verdict::Admit { .. }
        ));
        // b's device is unknown: wait for b's certificates, refuse once they came without it.
        assert_eq!(
            g.judge(&send(&b, 1), 2, 0, &dir, ME, &|_| AuthorLookup::Asking),
            Verdict::Wait(b.id)
        );
        assert_eq!(
            g.judge(&send(&b, 1), 2, 0, &dir, ME, &|_| AuthorLookup::Answered),
            Verdict::Refuse(Refusal::Uncertified {
                device: b.dev.device(),
                user: b.id
            })
        );
        // No complete answer after every ask: a final verdict all the same.
        assert_eq!(
            g.judge(&send(&b, 1), 2, 0, &dir, ME, &|_| AuthorLookup::GaveUp),
            Verdict::Refuse(Refusal::Unanswered {
                device: b.dev.device(),
                user: b.id
            })
        );
        // A device that claims another user than its certificate names.
        let mut liar_dir = dir.clone();
        let lie = DeviceKey::from_seed([101; 32], b.id);
        let h = lie.header(ConversationId([7; 16]), 1, None, 1, 0);
        let forged = Event::sign(
            lie.signing_key(),
            h,
            EventKind::Read {
                up_to: 1,
                head: None,
            },
        )
        .expect("sign");
        assert_eq!(
            g.judge(&forged, 2, 0, &liar_dir, ME, &|_| AuthorLookup::Asking),
            Verdict::Refuse(Refusal::WrongUser {
                device: a.dev.device(),
                certified: a.id,
                claimed: b.id
            })
        );
        // Revoked at t=100: events the relay sequenced before stay, later ones are refused.
        let rev = DeviceRevocation::sign(&a.key, a.dev.device(), 100);
        liar_dir.revoke(&rev).expect("revoke");
        assert!(matches!(
            g.judge(&send(&a, 2), 2, 99, &liar_dir, ME, &|_| {
                AuthorLookup::Asking
            }),
            Verdict::Admit { .. }
        ));
        assert_eq!(
            g.judge(&send(&a, 3), 3, 100, &liar_dir, ME, &|_| {
                AuthorLookup::Asking
            }),
            Verdict::Refuse(Refusal::Revoked(a.dev.device()))
        );
    }
}
