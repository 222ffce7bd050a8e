//! The relay in the simulation: frames in, group commits, outputs, crashes and restarts.

use super::*;

impl Sim {
    pub(super) fn relay_restart(&mut self) -> Result<(), Violation> {
        let db = redb::Database::builder()
            .create_with_backend(self.relay.disk.backend())
            .map_err(|e| format!("relay cannot reopen its durable image: {e}"))?;
        let store =
            RelayStore::open(db, true).map_err(|e| format!("relay store does not open: {e}"))?;
        self.oracle.check_relay_store(&store)?;
        let heads = end::store_heads(&store)?;
        if heads != self.relay.committed_heads {
            return fail(format!(
                "relay restarted with sequences {heads:?}, but had committed {:?}: a durable \
                 commit was lost",
                self.relay.committed_heads
            ));
        }
        let mut core = RelayCore::new(store, self.relay.key.clone(), self.relay.limits.clone())
            .map_err(|e| format!("relay core does not start: {e}"))?;
        if let Some(r) = self.profile.retention.as_ref() {
            core.set_retention(r.config());
        }
        self.relay.core = Some(core);
        self.schedule_retention();
        if self.relay.inc > 0 {
            self.stats.relay_restarts += 1;
        }
        tr!(self, "relay starts (incarnation {})", self.relay.inc);
        Ok(())
    }

    pub(super) fn crash_relay(&mut self) -> Result<(), Violation> {
        if self.relay.core.is_none() {
            return Ok(());
        }
        self.relay.disk.crash();
        self.relay.core = None;
        self.relay.inc += 1;
        self.relay.commit_pending = false;
        self.relay.job = None;
        self.relay.sessions.clear();
        tr!(self, "relay CRASHED");
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.relay_attached)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.relay_attached = false;
            }
            let told = self.now + self.rng.random_range(0..IDLE_MS);
            self.kill_conn(id, Some(told), None);
        }
        let after = if self.healing {
            0
        } else {
            self.rng.random_range(100..15_000)
        };
        self.queue.push(self.now + after, Ev::RelayRestart);
        Ok(())
    }

    pub(super) fn deliver_to_relay(
        &mut self,
        conn: ConnId,
        frame: ClientFrame,
    ) -> Result<(), Violation> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let name = &self.devices[c.device].name;
        if !c.relay_attached || c.relay_inc != self.relay.inc || self.relay.core.is_none() {
            return Ok(());
        }
        if self.now > c.up_cut {
            self.stats.frames_lost_to_dead_connections += 1;
            tr!(
                self,
                "relay <- {name} {} LOST (connection dead)",
                client_frame_name(&frame)
            );
            return Ok(());
        }
        tr!(self, "relay <- {name} {}", client_frame_name(&frame));
        let session = c.session;
        if let ClientFrame::Received {
            conversation,
            up_to,
        } = frame
        {
            let device = c.device;
            self.relay_hears_received(device, conversation, up_to)?;
        }
        let now = self.now;
        if let Some(core) = self.relay.core.as_mut() {
            core.handle_frame(session, frame, now);
        }
        self.after_relay_call()
    }

    pub(super) fn relay_told(&mut self, conn: ConnId) -> Result<(), Violation> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if !c.relay_attached || c.relay_inc != self.relay.inc {
            return Ok(());
        }
        c.relay_attached = false;
        let session = c.session;
        self.relay.sessions.remove(&session);
        tr!(self, "relay told conn {conn} is dead");
        if let Some(core) = self.relay.core.as_mut() {
            core.handle_disconnect(session);
        }
        self.after_relay_call()
    }

    /// The shell hands the staged batch to its writer (the relay's pipelined group commit):
    /// the job is written now or when the write completes (either is what a crash in between
    /// may find on disk), and answered only then; meanwhile the core goes on staging.
    pub(super) fn relay_commit(&mut self, inc: u64) -> Result<(), Violation> {
        if inc != self.relay.inc {
            return Ok(());
        }
        self.relay.commit_pending = false;
        if self.relay.job.is_some() {
            return Ok(());
        }
        let Some(core) = self.relay.core.as_mut() else {
            return Ok(());
        };
        let job = match core.start_commit() {
            Ok(Some(job)) => job,
            Ok(None) => return self.after_relay_call(),
            Err(e) => return fail(format!("relay could not start a commit: {e}")),
        };
        let early = self.rng.random_bool(0.5);
        let written = early.then(|| job.write(core.store()));
        let n = job.n_events();
        let id = self.relay.next_job;
        self.relay.next_job += 1;
        self.relay.job = Some(CommitInFlight { id, job, written });
        let latency = self.rng.random_range(0..15);
        tr!(
            self,
            "relay starts commit {id} of {n} events ({latency} ms, written early: {early})"
        );
        if self.written_durably()? {
            self.queue.push(
                self.now + latency,
                Ev::RelayCommitDone {
                    inc: self.relay.inc,
                    job: id,
                },
            );
        }
        self.after_relay_call()
    }

    /// The write of a commit job completes: it is answered (acks, pushes) or refused.
    pub(super) fn relay_commit_done(&mut self, inc: u64, job: u64) -> Result<(), Violation> {
        if inc != self.relay.inc {
            return Ok(());
        }
        let Some(mut c) = self.relay.job.take_if(|c| c.id == job) else {
            return Ok(());
        };
        let Some(core) = self.relay.core.as_mut() else {
            return Ok(());
        };
        if c.written.is_none() {
            c.written = Some(c.job.write(core.store()));
            self.relay.job = Some(c);
            if !self.written_durably()? {
                return Ok(());
            }
            c = self.relay.job.take().ok_or("commit job vanished")?;
        }
        let n = c.job.n_events();
        let result = c.written.take().ok_or("commit job not written")?;
        let core = self.relay.core.as_mut().ok_or("relay down")?;
        core.finish_commit(c.job, result);
        tr!(self, "relay answers commit {job} of {n} events");
        self.after_relay_call()
    }

    /// After a job's write: a power cut crashes the relay (false); a write error without one
    /// is a failure; a successful write moves the committed heads, which never go back.
    fn written_durably(&mut self) -> Result<bool, Violation> {
        if self.relay.disk.is_dead() {
            self.stats.relay_power_cuts += 1;
            tr!(self, "relay POWER CUT while writing a commit");
            self.crash_relay()?;
            return Ok(false);
        }
        match self.relay.job.as_ref().and_then(|c| c.written.as_ref()) {
            Some(Err(e)) => return fail(format!("relay commit failed without a disk fault: {e}")),
            Some(Ok(())) => {}
            None => return Ok(true),
        }
        let heads = self.relay_heads()?;
        for (c, seq) in &heads {
            let before = self.relay.committed_heads.get(c).copied().unwrap_or(0);
            if *seq < before {
                return fail(format!(
                    "relay sequence of {c} went back from {before} to {seq}"
                ));
            }
        }
        self.relay.committed_heads = heads;
        Ok(true)
    }

    pub(super) fn after_relay_call(&mut self) -> Result<(), Violation> {
        if self.relay.disk.is_dead() {
            self.stats.relay_power_cuts += 1;
            tr!(self, "relay POWER CUT");
            return self.crash_relay();
        }
        let Some(core) = self.relay.core.as_mut() else {
            return Ok(());
        };
        let mut outs = Vec::new();
        while let Some(o) = core.poll_output() {
            outs.push(o);
        }
        if core.has_staged() && !self.relay.commit_pending && self.relay.job.is_none() {
            self.relay.commit_pending = true;
            let at = self.now + self.rng.random_range(0..3);
            self.queue.push(
                at,
                Ev::RelayCommit {
                    inc: self.relay.inc,
                },
            );
        }
        for o in outs {
            match o {
                Output::Frame { session, frame } => {
                    self.record_acks(&frame)?;
                    match self.relay.sessions.get(&session) {
                        Some(&conn) => self.send_down(conn, frame),
                        None => {
                            return fail(format!(
                                "relay wrote {} to session {session}, which it was told is gone",
                                server_frame_name(&frame)
                            ))
                        }
                    }
                }
                Output::Close {
                    session,
                    code,
                    message,
                } => self.relay_closes(session, code, message)?,
            }
        }
        Ok(())
    }

    pub(super) fn record_acks(&mut self, frame: &ServerFrame) -> Result<(), Violation> {
        match frame {
            ServerFrame::SubmitResult { records, .. }
            | ServerFrame::Push { records, .. }
            | ServerFrame::Page { records, .. } => {
                for r in records {
                    self.oracle.record_statement(&r.0)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn relay_closes(
        &mut self,
        session: SessionId,
        code: ErrorCode,
        message: String,
    ) -> Result<(), Violation> {
        self.stats.relay_closes += 1;
        let Some(conn) = self.relay.sessions.remove(&session) else {
            return fail(format!("relay closed unknown session {session}"));
        };
        if code != ErrorCode::REPLACED && self.profile.chaos.is_none() {
            return fail(format!(
                "relay closed a session over a faithful transport: code {} ({message})",
                code.0
            ));
        }
        let name = self.devices[self.conns[&conn].device].name.clone();
        tr!(
            self,
            "relay closes {name} conn {conn}: code {} {message}",
            code.0
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.relay_attached = false;
        }
        let was_alive = self.conns.get(&conn).is_some_and(|c| c.alive);
        self.send_down(conn, ServerFrame::Error { code, message });
        let last = self.conns.get(&conn).map_or(self.now, |c| c.down_last);
        self.kill_conn(conn, Some(last + 1), None);
        if let (Some(c), true) = (self.conns.get_mut(&conn), was_alive) {
            // A graceful close: what was written before the Error frame, and the frame itself,
            // still arrive.
            c.down_cut = last;
        }
        Ok(())
    }
}
