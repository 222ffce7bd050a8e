//! The automerge fold of a relay page, run beside the device core's next work.
//!
//! A catch-up's pace is set by the device core's handling of each page (docs/BENCHMARKS.md,
//! "The driver is the serial stage"), and the fold into the conversation documents is about a
//! quarter of it. The engine runs no threads of its own, so the shell that embeds the store may
//! hand it a [`FoldRunner`] ([`Store::set_fold_runner`]). Inside a deferred scope
//! ([`Store::defer_sync`], a relay page) a page of at least [`OFFLOAD_MIN_EVENTS`] admitted
//! events then leaves as a [`FoldJob`]: the documents it folds into are taken out of the
//! store with their events, and the runner starts the job (the replica: on tokio's blocking
//! pool). The core goes on with the page (cursors, receipts, the fsync) and with the next
//! page's log transaction, while the job folds.
//!
//! A document that is out counts as loaded. Work on it (a fold of the page's own receipt, the
//! gate's membership change) queues behind the job; anything that reads or writes it, and the
//! next page's fold, first takes the job back ([`Store::settle_folds`]): it waits for it,
//! puts the documents back, does what queued, writes the snapshots the fold made due and keeps
//! the fold's changes for [`Store::take_late_changes`]. The device core hands those out with
//! its next events; the replica also settles whenever no frame is waiting, so a page's
//! messages show without waiting for the next page. Documents hold no durable state (the log
//! is the truth), so a job may outlive the page's fsync; a failed or lost job drops its
//! documents, which reload from the log.
//!
//! Without a runner (the simulator, tests, a store used alone) every fold runs in place, as
//! it always did.

use super::*;

/// Smallest page whose fold leaves as a [`FoldJob`] by default
/// ([`StoreConfig::offload_min_events`]): below it, handing the work over costs more than it
/// saves.
pub const OFFLOAD_MIN_EVENTS: usize = 128;

/// Starts a [`FoldJob`] somewhere (another thread) and returns how to wait for its result:
/// the returned function blocks until the job is done, `None` if it was lost (panicked).
pub type FoldRunner = Box<dyn Fn(FoldJob) -> FoldHandle + Send>;

/// Waits for a started [`FoldJob`] (see [`FoldRunner`]).
pub type FoldHandle = Box<dyn FnOnce() -> Option<FoldDone> + Send>;

/// Documents taken out of the store with the events to fold into them.
#[derive(Debug)]
pub struct FoldJob {
    items: Vec<JobItem>,
    snapshot_every: u64,
}

/// One document out with the events (at their log positions) to fold into it.
type JobItem = (ConversationId, Loaded, Vec<(u64, Event)>);

/// What a [`FoldJob`] gives back: per conversation, the document and the changes the fold
/// made, or why it failed (the document is then dropped, and reloads from the log).
#[derive(Debug)]
pub struct FoldDone {
    items: Vec<(ConversationId, Result<Folded, DocError>)>,
}

#[derive(Debug)]
struct Folded {
    loaded: Loaded,
    changes: Vec<Change>,
    /// The snapshot the fold made due: its parts, saved in the job.
    snapshot: Option<Vec<(PartId, Vec<u8>)>>,
}

impl FoldJob {
    /// Folds every event into its document (the work [`Store`] does in place without a
    /// runner). Pure CPU: call it on any thread.
    pub fn run(self) -> FoldDone {
        let every = self.snapshot_every;
        let items = self
            .items
            .into_iter()
            .map(|(conversation, mut l, events)| {
                let folded = l.fold(events.iter().map(|(p, e)| (*p, e))).map(|changes| {
                    let snapshot = (l.since_snapshot >= every).then(|| {
                        l.since_snapshot = 0;
                        l.doc.save_parts()
                    });
                    Folded {
                        loaded: l,
                        changes,
                        snapshot,
                    }
                });
                (conversation, folded)
            })
            .collect();
        FoldDone { items }
    }
}

/// A job started and not taken back yet.
struct Running {
    /// The conversations whose documents are out.
    out: HashSet<ConversationId>,
    /// What was done to those documents meanwhile (the page's own receipts, the gate's
    /// membership changes): done after the job's fold, in this order.
    queued: Vec<(ConversationId, Queued)>,
    handle: FoldHandle,
}

/// Work on a document that is out, done when it is back.
enum Queued {
    Fold(u64, Box<Event>),
    Members(ServerSeq, Vec<UserId>),
}

/// The store's side of the offloaded fold.
#[derive(Default)]
pub(super) struct Offload {
    runner: Option<FoldRunner>,
    running: Option<Running>,
    /// Changes of folds taken back, not handed out yet.
    late: Vec<Change>,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload")
            .field("runner", &self.runner.is_some())
            .field("running", &self.running.as_ref().map(|r| r.out.len()))
            .field("late", &self.late.len())
            .finish()
    }
}

impl Store {
    /// Lets a relay page's fold run beside the rest of its work (see the module doc).
    pub fn set_fold_runner(&mut self, runner: FoldRunner) {
        self.offload.runner = Some(runner);
    }

    /// Whether `conversation`'s document is out with a running fold.
    pub(super) fn is_out(&self, conversation: ConversationId) -> bool {
        self.offload
            .running
            .as_ref()
            .is_some_and(|r| r.out.contains(&conversation))
    }

    /// Drops the changes of folds taken back (their documents were dropped too).
    pub(super) fn offload_late_clear(&mut self) {
        self.offload.late.clear();
    }

    /// Changes made by folds that ran beside the core and were taken back since the last
    /// call: the device core hands them out ahead of its next changes.
    pub fn take_late_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.offload.late)
    }

    /// Folds a page's admitted events, per conversation in log order: as a job beside the
    /// rest of the page when a runner is set, the scope is deferred and the page is large
    /// enough; in place otherwise. Returns the changes of the folds made in place.
    pub(super) fn fold_page(
        &mut self,
        page: Vec<(ConversationId, Vec<(u64, &Event)>)>,
    ) -> Result<Vec<Change>, StoreError> {
        let n: usize = page.iter().map(|(_, evs)| evs.len()).sum();
        let offload = self.deferred
            && n >= self.config.offload_min_events.max(1)
            && self.offload.runner.is_some();
        let mut changes = Vec::new();
        if !offload {
            for (conv, evs) in page {
                changes.extend(self.fold_new(conv, &evs)?);
            }
            return Ok(changes);
        }
        self.settle_folds()?;
        let mut items = Vec::with_capacity(page.len());
        for (conv, evs) in page {
            match self.docs.remove(&conv) {
                Some(l) => items.push((
                    conv,
                    l,
                    evs.into_iter().map(|(p, e)| (p, e.clone())).collect(),
                )),
                // Not loaded: the fold in place says so, as it always did.
                None => changes.extend(self.fold_new(conv, &evs)?),
            }
        }
        if items.is_empty() {
            return Ok(changes);
        }
        let out = items.iter().map(|(c, _, _)| *c).collect();
        let job = FoldJob {
            items,
            snapshot_every: self.config.snapshot_every,
        };
        let Some(runner) = self.offload.runner.as_ref() else {
            return Err(StoreError::Doc(DocError::Op("no fold runner".into())));
        };
        let handle = runner(job);
        self.offload.running = Some(Running {
            out,
            queued: Vec::new(),
            handle,
        });
        Ok(changes)
    }

    /// Queues `events` behind the running job when their conversation's document is out;
    /// false when it is not (fold them in place).
    pub(super) fn queue_behind_job(
        &mut self,
        conversation: ConversationId,
        events: &[(u64, &Event)],
    ) -> bool {
        let Some(r) = self.offload.running.as_mut() else {
            return false;
        };
        if !r.out.contains(&conversation) {
            return false;
        }
        r.queued.extend(
            events
                .iter()
                .map(|(p, e)| (conversation, Queued::Fold(*p, Box::new((*e).clone())))),
        );
        true
    }

    /// Queues the gate's membership change at `seq` behind the running job when the
    /// conversation's document is out; false when it is not (set it in place).
    pub(super) fn queue_members_behind_job(
        &mut self,
        conversation: ConversationId,
        seq: ServerSeq,
        members: &[UserId],
    ) -> bool {
        let Some(r) = self.offload.running.as_mut() else {
            return false;
        };
        if !r.out.contains(&conversation) {
            return false;
        }
        r.queued
            .push((conversation, Queued::Members(seq, members.to_vec())));
        true
    }

    /// Takes a running job's documents back (waiting for it), folds what queued behind it,
    /// writes the snapshots it made due and keeps its changes for
    /// [`Store::take_late_changes`]. A document whose fold failed, or the job's documents if
    /// the job was lost, are dropped: they reload from the log on next use. Nothing to do
    /// when no job runs.
    pub fn settle_folds(&mut self) -> Result<(), StoreError> {
        let Some(r) = self.offload.running.take() else {
            return Ok(());
        };
        let mut failed: Option<DocError> = None;
        match (r.handle)() {
            None => failed = Some(DocError::Op("the fold job was lost".into())),
            Some(done) => {
                for (conversation, result) in done.items {
                    match result {
                        Ok(mut f) => {
                            if let Some(parts) = &f.snapshot {
                                let position = f.loaded.position;
                                self.log.write_lazy(|t| {
                                    for (part, bytes) in parts {
                                        t.put_snapshot_part(
                                            conversation,
                                            part.to_u64(),
                                            position,
                                            bytes,
                                        )?;
                                    }
                                    Ok(())
                                })?;
                            }
                            self.tick += 1;
                            f.loaded.last_used = self.tick;
                            self.docs.insert(conversation, f.loaded);
                            self.offload.late.append(&mut f.changes);
                        }
                        Err(e) => {
                            tracing::warn!(%conversation, err = %e, "a page's fold failed; the document reloads from the log");
                            failed.get_or_insert(e);
                        }
                    }
                }
            }
        }
        // What queued behind the job, in the order it came. A dropped document is left
        // alone: it reloads from the log, which holds all of it.
        for (c, op) in r.queued {
            if !self.docs.contains_key(&c) {
                continue;
            }
            let changes = match op {
                Queued::Fold(position, ev) => self.fold_new(c, &[(position, &ev)])?,
                Queued::Members(seq, members) => self.loaded(c)?.doc.set_members(seq, members)?,
            };
            self.offload.late.extend(changes);
        }
        match failed {
            Some(e) => Err(StoreError::Doc(e)),
            None => Ok(()),
        }
    }
}
