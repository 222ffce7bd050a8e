//! The group commit: signing one statement per conversation run, writing the batch in one
//! durable transaction, then answering submitters (or refusing them on a store failure).

use super::consent::Consent;
use super::sequencing::{self, Resolved, ToPlace};
use super::staged::{Inflight, PendingSubmit, Slot, Staged, StagedEvent};
use super::store::{self, CommitBatch, ConversationRecord, SequencedRecord, StoreError};
use super::RelayCore;
use crate::storage::Storage;
use std::collections::{BTreeMap, HashMap, HashSet};
use tidings_engine::event::DecodeError;
use tidings_engine::wire::{ErrorCode, ServerFrame};
use tidings_engine::{ConversationId, DeviceId, EventId, Membership};

/// One group commit taken out of the core by [`RelayCore::start_commit`]: write it with
/// [`CommitJob::write`] (on any thread), then hand it back with [`RelayCore::finish_commit`].
#[derive(Debug)]
pub struct CommitJob {
    staged: Staged,
    records: Vec<(ConversationId, ConversationRecord)>,
}

impl CommitJob {
    /// Writes the job in one durable transaction.
    pub fn write(&self, store: &impl Storage) -> Result<(), StoreError> {
        let mut batch = CommitBatch::default();
        for s in &self.staged.events {
            batch.events.push(SequencedRecord {
                conversation: s.event.conversation(),
                seq: s.seq,
                index_key: store::index_key(&s.event),
                prev: s.event.header().prev,
                event: s.event.bytes(),
                ack: &[],
            });
        }
        for (c, first, st) in &self.staged.statements {
            batch.statements.push((*c, *first, st));
        }
        for (c, rec) in &self.records {
            batch.conversations.push((*c, rec));
        }
        batch
            .membership_changed
            .extend(self.staged.membership_changed.iter().copied());
        batch.former.extend(self.staged.former.iter().copied());
        for r in &self.staged.registrations {
            batch.devices.push(&r.cert);
        }
        for r in &self.staged.revocations {
            batch.revocations.push(&r.revocation);
        }
        for ((d, c), s) in &self.staged.cursors {
            batch.cursors.push((*d, *c, *s));
        }
        batch
            .invitations
            .extend_from_slice(&self.staged.invitations);
        for r in &self.staged.user_requests {
            batch.invitations.extend_from_slice(&r.rows);
            batch.blocks.extend_from_slice(&r.blocks);
        }
        store.commit(&batch)
    }

    /// Events in the job.
    pub fn n_events(&self) -> usize {
        self.staged.events.len()
    }
}

/// Below this many conversations in a commit, statements are signed on the calling thread.
pub(super) const MIN_PARALLEL_SIGN: usize = 8;

impl<S: Storage> RelayCore<S> {
    /// Signs the statements of a commit: per conversation, its staged events (consecutive
    /// sequences) in statements of up to `MAX_SEQUENCED_ENTRIES`, chained after the
    /// conversation's head; conversations spread over threads (the result does not depend on
    /// their number). One signature per statement, not per event.
    pub(super) fn sign_statements(&mut self, staged: &mut Staged) -> Result<(), DecodeError> {
        let mut runs: BTreeMap<ConversationId, Vec<ToPlace<'_>>> = BTreeMap::new();
        for (index, e) in staged.events.iter().enumerate() {
            runs.entry(e.event.conversation())
                .or_default()
                .push(ToPlace {
                    index,
                    event: &e.event,
                    seq: e.seq,
                    ts_ms: e.ts_ms,
                });
        }
        let jobs: Vec<(ConversationId, EventId, Vec<ToPlace<'_>>)> = runs
            .into_iter()
            .map(|(c, run)| {
                let last = self.convs.get(&c).map(|cv| cv.head.last_ack);
                (c, last.unwrap_or(EventId([0; 32])), run)
            })
            .collect();
        let n_threads = self.sign_threads.min(jobs.len()).max(1);
        let key = &self.key;
        let sign = |job: &(ConversationId, EventId, Vec<ToPlace<'_>>)| {
            sequencing::sign_run(key, job.0, job.1, &job.2)
        };
        let signed: Vec<Result<Vec<sequencing::Signed>, DecodeError>> =
            if n_threads == 1 || jobs.len() < MIN_PARALLEL_SIGN {
                jobs.iter().map(sign).collect()
            } else {
                let per_thread = jobs.len().div_ceil(n_threads);
                std::thread::scope(|scope| {
                    let handles: Vec<_> = jobs
                        .chunks(per_thread)
                        .map(|part| {
                            scope.spawn(move || {
                                let mut out = Vec::new();
                                for job in part {
                                    out.extend(sign(job)?);
                                }
                                Ok(out)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or(Err(DecodeError::Malformed("statement signer panicked")))
                        })
                        .collect()
                })
            };
        drop(jobs);
        for part in signed {
            for st in part? {
                if let Some(c) = self.convs.get_mut(&st.conversation) {
                    // Runs are signed in order, so the last write per conversation wins.
                    c.head.last_ack = st.id;
                }
                for &i in &st.places {
                    if let Some(e) = staged.events.get_mut(i) {
                        e.statement = Some(st.envelope.clone());
                    }
                }
                staged
                    .statements
                    .push((st.conversation, st.first, st.envelope));
            }
        }
        Ok(())
    }

    /// Events staged for the next commit.
    pub fn n_staged_events(&self) -> usize {
        self.staged.events.len()
    }

    /// Whether anything waits for a commit.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// When the staged work must be committed at the latest (ms), if any is staged.
    pub fn commit_deadline(&self) -> Option<u64> {
        self.staged
            .since_ms
            .filter(|_| self.has_staged())
            .map(|t| t.saturating_add(self.limits.commit_window_ms))
    }

    /// Whether to commit now rather than wait for more input: the batch is full or its
    /// window has passed. (A shell also commits whenever no input is waiting.)
    pub fn wants_commit(&self, now_ms: u64) -> bool {
        self.has_staged()
            && (self.staged.events.len() >= self.limits.max_commit_batch
                || self.commit_deadline().is_some_and(|d| now_ms >= d))
    }

    /// Writes everything staged in one durable transaction, then answers the submitters,
    /// confirms registrations and pushes the new events to online member devices
    /// ([`RelayCore::start_commit`], [`CommitJob::write`] and [`RelayCore::finish_commit`] in
    /// one call). On a store error the staged events are refused with [`ErrorCode::INTERNAL`]
    /// and the sequencer goes back to the last committed state. Does nothing while a job from
    /// `start_commit` is out.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let Some(job) = self.start_commit()? else {
            return Ok(());
        };
        let result = job.write(&self.store);
        let out = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Failed(e.to_string())),
        };
        self.finish_commit(job, result);
        out
    }

    /// Whether a job from [`RelayCore::start_commit`] is being written.
    pub fn commit_in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Takes everything staged as one group commit and signs its acks. The caller writes the
    /// job ([`CommitJob::write`], e.g. on a writer thread, while the core goes on staging the
    /// next batch) and hands it back with [`RelayCore::finish_commit`]; nothing of it is
    /// answered before that. `None` if nothing is staged or a job is already out (one at a
    /// time, so commits reach the disk in sequence order).
    pub fn start_commit(&mut self) -> Result<Option<CommitJob>, StoreError> {
        if self.inflight.is_some() || !self.has_staged() {
            return Ok(None);
        }
        let mut staged = std::mem::take(&mut self.staged);
        if let Err(e) = self.sign_statements(&mut staged) {
            let e = StoreError::Ack(e);
            self.reset_heads();
            self.fail(staged, &e.to_string());
            self.admit_waiting();
            return Err(e);
        }
        let records = staged
            .touched
            .iter()
            .filter_map(|c| self.convs.get(c).map(|conv| (*c, conv.head.clone())))
            .collect();
        self.inflight = Some(Inflight {
            placed: staged
                .events
                .iter()
                .filter_map(|e| Some((e.event.id(), (e.seq, e.statement.clone()?))))
                .collect(),
            registrations: staged
                .registrations
                .iter()
                .map(|r| (r.device, r.user))
                .collect(),
            certs: staged
                .registrations
                .iter()
                .map(|r| r.cert.clone())
                .collect(),
            revocations: staged
                .revocations
                .iter()
                .map(|r| r.revocation.device)
                .collect(),
            convs: staged.touched.clone(),
            chain: staged
                .events
                .iter()
                .map(|e| {
                    let h = e.event.header();
                    (
                        (h.conversation, h.author, h.counter),
                        (e.event.id(), h.prev),
                    )
                })
                .collect(),
        });
        // The next batch fills from the waiting submits while this one is written.
        self.admit_waiting();
        Ok(Some(CommitJob { staged, records }))
    }

    /// The outcome of writing `job`. On success its submitters get their acks and its events
    /// are pushed; on failure they are refused with [`ErrorCode::INTERNAL`], and so is
    /// everything staged since (its sequences followed the failed ones), and the sequencer
    /// goes back to the last committed state.
    pub fn finish_commit(&mut self, job: CommitJob, result: Result<(), StoreError>) {
        self.inflight = None;
        let waiters = std::mem::take(&mut self.inflight_waiters);
        match result {
            Ok(()) => {
                self.after_commit(job.staged, job.records);
                for p in waiters {
                    self.answer(p, None);
                }
            }
            Err(
                StoreError::Conflict { conversation, .. } | StoreError::Duplicate { conversation },
            ) => {
                self.retry_without(job, conversation, waiters);
            }
            Err(e) => {
                let msg = format!("store failure: {e}");
                let touched: Vec<ConversationId> = job
                    .staged
                    .touched
                    .iter()
                    .chain(self.staged.touched.iter())
                    .copied()
                    .collect();
                self.reset_heads();
                self.fail(job.staged, &msg);
                let later = std::mem::take(&mut self.staged);
                self.fail(later, &msg);
                self.refresh_convs(&touched);
                for p in waiters {
                    self.answer(p, Some(&msg));
                }
                self.admit_waiting();
            }
        }
    }

    /// After a commit refused because another relay node appended to `conv` first: the
    /// events of `conv` (in the job and staged after it) are refused with
    /// [`ErrorCode::INTERNAL`] (their devices resubmit them, and they are sequenced after what
    /// the other node wrote), the conversation is read again, and the rest of the job (other
    /// conversations, cursors, registrations, consent) is written again at once on this
    /// thread, with what is staged after it kept. A further race is handled the same way, one
    /// conversation less each time.
    fn retry_without(
        &mut self,
        mut job: CommitJob,
        conv: ConversationId,
        mut waiters: Vec<PendingSubmit>,
    ) {
        let refused = sequencing::lost("another relay node appended to the conversation first");
        let (statements, n_job) = job.staged.take_out(&conv, &refused);
        job.records.retain(|(c, _)| *c != conv);
        let (_, n_later) = self.staged.take_out(&conv, &refused);
        Staged::lose_inflight(&mut self.staged.submits, &statements, &refused);
        Staged::lose_inflight(&mut waiters, &statements, &refused);
        // A submit of the next batch left without a staged event is not in any commit any
        // more: answered now, or with the job if it still waits for places in it. (Left in the
        // batch, it was never answered when no event was staged after it.)
        let (kept, unstaged): (Vec<_>, Vec<_>) = std::mem::take(&mut self.staged.submits)
            .into_iter()
            .partition(|p| p.slots.iter().any(|s| matches!(s, Slot::Staged(_))));
        self.staged.submits = kept;
        for p in unstaged {
            if p.slots.iter().any(|s| matches!(s, Slot::Inflight(..))) {
                waiters.push(p);
            } else {
                self.answer(p, None);
            }
        }
        self.metrics.rejected(n_job + n_later);
        let committed = self.convs.get(&conv).and_then(|c| c.committed.clone());
        match committed {
            Some(rec) => {
                if let Some(c) = self.convs.get_mut(&conv) {
                    c.head = rec;
                }
            }
            None => {
                self.convs.remove(&conv);
            }
        }
        self.refresh_convs(&[conv]);
        let result = job.write(&self.store);
        self.inflight_waiters = waiters;
        self.finish_commit(job, result);
    }

    /// Every conversation back to its committed state (uncommitted ones forgotten), and
    /// the users' consent back to what is stored (if it cannot be read, staged invitations
    /// stay counted: the caps err on the safe side).
    pub(super) fn reset_heads(&mut self) {
        if let Ok(c) = Consent::load(&self.store) {
            self.consent = c;
        }
        self.convs.retain(|_, conv| match &conv.committed {
            Some(rec) => {
                conv.head = rec.clone();
                true
            }
            None => false,
        });
    }

    /// Answers a submit whose slots are all decided; with `failure`, places that depended on
    /// an unwritten commit become INTERNAL refusals.
    pub(super) fn answer(&mut self, p: PendingSubmit, failure: Option<&str>) {
        let resolved = p.slots.into_iter().map(|s| match (s, failure) {
            (Slot::Done(o), _) => Resolved::Outcome(o),
            (Slot::Stored(seq, st), _) | (Slot::Inflight(seq, st), None) => {
                Resolved::Placed(seq, st)
            }
            (Slot::Inflight(..) | Slot::Staged(_), Some(msg)) => {
                Resolved::Outcome(sequencing::lost(msg))
            }
            (Slot::Staged(_), None) => Resolved::Outcome(sequencing::lost("lost staged event")),
        });
        let (outcomes, records) = sequencing::submit_answer(resolved, self.frame_budget());
        self.send_live(
            p.session,
            ServerFrame::SubmitResult {
                request_id: p.request_id,
                outcomes,
                records,
            },
        );
    }

    /// Bytes of envelopes one frame may carry (room left for its other fields).
    pub(super) fn frame_budget(&self) -> usize {
        self.limits.max_frame_len.saturating_sub(4096)
    }

    pub(super) fn fail(&mut self, staged: Staged, msg: &str) {
        self.metrics.rejected(staged.events.len());
        for p in staged.submits {
            self.answer(p, Some(msg));
        }
        let refused = |request_id| ServerFrame::Refused {
            request_id,
            code: ErrorCode::INTERNAL,
            message: msg.to_string(),
        };
        for r in staged.registrations {
            self.send_live(r.session, refused(r.request_id));
        }
        for r in staged.user_requests {
            self.send_live(r.session, refused(r.request_id));
        }
        // Revocations that were not durable are forgotten, unless stored before (the relay
        // refuses only for what it keeps); the user sends them again. The stored ones are read
        // once; if they cannot be read, every revocation is kept (the safe side).
        let stored: Option<HashSet<DeviceId>> = if staged.revocations.is_empty() {
            None
        } else {
            self.store
                .revocations()
                .ok()
                .map(|all| all.iter().map(|d| d.device).collect())
        };
        for r in staged.revocations {
            let durable = stored
                .as_ref()
                .is_none_or(|s| s.contains(&r.revocation.device));
            if !durable {
                self.revoked.remove(&r.revocation.device);
            }
            self.send_live(r.session, refused(r.request_id));
        }
    }

    pub(super) fn after_commit(
        &mut self,
        staged: Staged,
        records: Vec<(ConversationId, ConversationRecord)>,
    ) {
        self.metrics.committed();
        self.metrics.accepted(staged.events.len());
        self.metrics.add_stored_events(staged.events.len());
        // Membership before this batch, for the conversations it changed: fan-out replays
        // the batch from there so that every event reaches the members at its place.
        let mut replay: HashMap<ConversationId, Option<Membership>> = HashMap::new();
        for c in &staged.membership_changed {
            let before = self
                .convs
                .get(c)
                .and_then(|cv| cv.committed.as_ref())
                .map(|r| r.membership.clone());
            replay.insert(*c, before);
        }
        for (c, rec) in records {
            let Some(conv) = self.convs.get_mut(&c) else {
                continue;
            };
            let before = conv.committed.as_ref().map_or(0, |r| r.max_seq);
            if before > rec.max_seq {
                // The change feed brought a newer record meanwhile (it holds this commit).
                continue;
            }
            if conv.pushed >= before {
                // This commit's events are pushed below; nothing of another node's is
                // between them and what was pushed before.
                conv.pushed = rec.max_seq;
            }
            if staged.membership_changed.contains(&c) {
                if let Some(old) = &conv.committed {
                    for m in old.membership.members() {
                        if !rec.membership.is_member(m) {
                            if let Some(set) = self.user_convs.get_mut(m) {
                                set.remove(&c);
                            }
                        }
                    }
                }
                for m in rec.membership.members() {
                    self.user_convs.entry(*m).or_default().insert(c);
                }
            }
            conv.committed = Some(rec);
        }
        for (c, u) in &staged.former {
            self.user_former.entry(*u).or_default().insert(*c);
        }
        for r in staged.registrations {
            self.add_device(r.device, r.user);
            let newer = self
                .certs
                .get(&r.device)
                .is_none_or(|c| c.issued_ms < r.cert.issued_ms);
            if newer {
                self.certs.insert(r.device, r.cert);
            }
            self.send_live(
                r.session,
                ServerFrame::Registered {
                    request_id: r.request_id,
                    user: r.user,
                    device: r.device,
                },
            );
        }
        for r in staged.revocations {
            self.send_live(
                r.session,
                ServerFrame::Revoked {
                    request_id: r.request_id,
                    user: r.revocation.user,
                    device: r.revocation.device,
                },
            );
        }
        let budget = self.frame_budget();
        for p in staged.submits {
            let resolved = p.slots.into_iter().map(|s| match s {
                Slot::Done(o) => Resolved::Outcome(o),
                Slot::Staged(i) => match staged.events.get(i) {
                    Some(StagedEvent {
                        seq,
                        statement: Some(st),
                        ..
                    }) => Resolved::Placed(*seq, st.clone()),
                    _ => Resolved::Outcome(sequencing::lost("lost staged event")),
                },
                Slot::Inflight(seq, st) | Slot::Stored(seq, st) => Resolved::Placed(seq, st),
            });
            let (outcomes, records) = sequencing::submit_answer(resolved, budget);
            self.send_live(
                p.session,
                ServerFrame::SubmitResult {
                    request_id: p.request_id,
                    outcomes,
                    records,
                },
            );
        }
        self.settle_consent(staged.invitations, staged.user_requests);
        self.fan_out(&staged.events, replay);
        self.update_fanout_metric();
    }
}
