//! The heal, convergence, and the checks at every step and at the end.

use super::retention::in_gaps;
use super::*;

impl Sim {
    pub(super) fn heal(&mut self) -> Result<(), Violation> {
        self.healing = true;
        self.heal_start = self.now;
        tr!(self, "HEAL: faults stop");
        self.relay.disk.disarm();
        if self.relay.core.is_none() {
            self.relay_restart()?;
        }
        for i in 0..self.devices.len() {
            self.devices[i].disk.disarm();
            if self.devices[i].partition != Partition::None {
                self.heal_partition(i);
            }
            if self.devices[i].core.is_none() {
                self.device_restart(i)?;
            }
            if !self.devices[i].os_online {
                self.set_os_online(i, true)?;
            }
        }
        let tainted: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.alive && c.tainted)
            .map(|(id, _)| *id)
            .collect();
        for conn in tainted {
            let a = self.now + self.rng.random_range(0..2_000);
            let b = self.now + self.rng.random_range(0..2_000);
            self.kill_conn(conn, Some(a), Some(b));
        }
        self.equivocation_follow_up()?;
        self.queue.push(self.now + HEAL_TICK_MS, Ev::HealTick);
        Ok(())
    }

    pub(super) fn heal_tick(&mut self) -> Result<(), Violation> {
        for i in 0..self.devices.len() {
            self.app_retry(i, true)?;
        }
        if self.converged()? {
            let ms = self.now - self.heal_start;
            tr!(self, "CONVERGED {ms} ms after the heal");
            self.stats.converge_ms_max = ms;
            self.stats.converge_ms_sum = ms;
            self.done = true;
            return Ok(());
        }
        if self.now - self.heal_start > HEAL_BOUND_MS {
            return fail(format!(
                "no convergence within {HEAL_BOUND_MS} ms of the heal: {}",
                self.divergence()?
            ));
        }
        self.queue.push(self.now + HEAL_TICK_MS, Ev::HealTick);
        Ok(())
    }

    /// Relay max seq per conversation.
    pub(super) fn relay_heads(&self) -> Result<BTreeMap<ConversationId, u64>, Violation> {
        let core = self.relay.core.as_ref().ok_or("relay down")?;
        store_heads(core.store())
    }

    /// Each conversation's membership as the relay's store orders it.
    pub(super) fn timelines(&self) -> Result<BTreeMap<ConversationId, Timeline>, Violation> {
        let core = self.relay.core.as_ref().ok_or("relay down")?;
        let mut out = BTreeMap::new();
        for spec in &self.convs {
            out.insert(spec.id, Timeline::of(core.store(), &spec.id)?);
        }
        Ok(out)
    }

    /// What still differs (for the failure message), or "" when converged.
    pub(super) fn divergence(&mut self) -> Result<String, Violation> {
        if self.relay.core.as_ref().is_none_or(|r| r.has_staged()) {
            return Ok("relay down or has staged work".into());
        }
        let heads = self.relay_heads()?;
        let lines = self.timelines()?;
        let is_member = |conv: &ConversationId, user: UserId| {
            lines.get(conv).is_some_and(|t| t.current.contains(&user))
        };
        let mut why = Vec::new();
        for i in 0..self.devices.len() {
            let name = self.devices[i].name.clone();
            let user_id = self.users[self.devices[i].user].id;
            let core = self.devices[i].core.as_mut().ok_or("device down")?;
            // What a removed member's device still holds for that conversation (refused,
            // FAILED) never goes; it is not waited for.
            let outbox: Vec<_> = core
                .store_mut()
                .outbox()
                .map_err(|e| format!("outbox of {name}: {e}"))?
                .into_iter()
                .filter(|e| is_member(&e.conversation, user_id))
                .collect();
            if let Some(first) = outbox.first() {
                let shown = match first.message {
                    Some(m) => core
                        .store_mut()
                        .conversation(first.conversation)
                        .map_err(|e| format!("{e}"))?
                        .message(&m)
                        .map(|v| format!("shown {:?} at seq {:?}", v.status, v.seq)),
                    None => None,
                };
                why.push(format!(
                    "{name}: {} outbox entries (first: {first:?}, {shown:?})",
                    outbox.len(),
                ));
            }
            // A gate waiting for an author's certificate has not judged (nor shown) all the
            // device holds: a receipt in it may be what makes a message DELIVERED there.
            let stalled = core
                .store()
                .log()
                .stalled_gates()
                .map_err(|e| format!("gates of {name}: {e}"))?;
            for spec in &self.convs {
                if !is_member(&spec.id, user_id) {
                    continue;
                }
                if stalled.contains(&spec.id) {
                    why.push(format!(
                        "{name}: the gate of {} waits for a certificate",
                        spec.id
                    ));
                }
                let head = heads.get(&spec.id).copied().unwrap_or(0);
                // Its own events come back as acks, not pages, so the pull cursor may lag;
                // what matters is that the device holds everything the relay sequenced.
                let held = core
                    .store()
                    .log()
                    .conversation_meta(spec.id)
                    .map_err(|e| format!("meta: {e}"))?
                    .map_or(0, |m| m.max_seq);
                let mut key = b"pull/".to_vec();
                key.extend_from_slice(&spec.id.0);
                let cursor = core
                    .store()
                    .log()
                    .cursor(&key)
                    .map_err(|e| format!("cursor: {e}"))?;
                // What lies in a gap the device was told of is not waited for.
                let gaps = core
                    .store()
                    .log()
                    .history_gaps(spec.id)
                    .map_err(|e| format!("gaps: {e}"))?;
                let held_all = (held + 1..=head).all(|s| in_gaps(&gaps, s));
                if !held_all || cursor != head {
                    why.push(format!(
                        "{name}: holds {} up to seq {held}, cursor {cursor}, relay head {head} \
                         ({:?})",
                        spec.id,
                        core.connection()
                    ));
                }
            }
        }
        let ids: Vec<ConversationId> = self.convs.iter().map(|c| c.id).collect();
        let exempt = self.equivocation.as_ref().and_then(|e| e.exempt());
        for id in ids {
            let mut shown = Vec::new();
            for i in 0..self.devices.len() {
                // The victim of the relay's lie was shown another history of it.
                if !is_member(&id, self.users[self.devices[i].user].id) || exempt == Some((i, id)) {
                    continue;
                }
                let mut view = self.shown(i, id)?.view();
                if self.peers.is_some() {
                    // A peer's receipt (`Holds`) reaches only the two devices of a session; the
                    // relay's receipt of a recipient removed since may never come. Whether such
                    // a message shows DELIVERED depends on the sessions a device had. "Since"
                    // counts from the send: a recipient whose peer receipt made the message
                    // DELIVERED before the relay placed it (a max-register) may have been
                    // removed before its place.
                    let line = lines.get(&id);
                    for m in &mut view.messages {
                        let removed = m
                            .seq
                            .and_then(|s| line.and_then(|l| l.recipients_stayed(m.record.user, s)));
                        let before_place = m.seq.is_some_and(|s| {
                            let sent_to = self.oracle.sent_members.get(&m.id);
                            line.zip(sent_to)
                                .is_some_and(|(l, to)| l.recipient_removed_before(to, s))
                        });
                        if m.status == Status::Delivered
                            && (removed.is_some_and(|(_, all)| !all) || before_place)
                        {
                            m.status = Status::Sent;
                        }
                    }
                }
                shown.push(Shown {
                    name: self.devices[i].name.clone(),
                    gaps: self.gaps_of(i, id)?,
                    view,
                });
            }
            // The reference: the first device told of no gap, when there is one.
            let at = shown.iter().position(|s| s.gaps.is_empty()).unwrap_or(0);
            if at < shown.len() {
                let reference = shown.remove(at);
                for other in &shown {
                    if let Some(diff) = reference.differs(other) {
                        why.push(format!(
                            "{id} differs between {} and {}: {diff}",
                            reference.name, other.name
                        ));
                    }
                }
            }
        }
        Ok(why.join("; "))
    }

    pub(super) fn converged(&mut self) -> Result<bool, Violation> {
        Ok(self.divergence()?.is_empty())
    }

    pub(super) fn finish(&mut self) -> Result<Report, Violation> {
        let core = self.relay.core.as_ref().ok_or("relay down at the end")?;
        self.oracle.check_relay_store(core.store())?;
        // Nothing an adversarial device forged was sequenced or reached any device.
        let keys: Vec<_> = self
            .forged
            .iter()
            .map(tidings::relay::core::store::index_key)
            .collect();
        let found = core.store().lookup(&keys).map_err(|e| e.to_string())?;
        if let Some((ev, _)) = self.forged.iter().zip(&found).find(|(_, f)| f.is_some()) {
            return fail(format!("the relay sequenced a forged event {}", ev.id()));
        }
        for d in &self.devices {
            if let Some(core) = d.core.as_ref() {
                for ev in &self.forged {
                    if core
                        .store()
                        .log()
                        .contains(&ev.id())
                        .map_err(|e| e.to_string())?
                    {
                        return fail(format!("{} holds the forged event {}", d.name, ev.id()));
                    }
                }
            }
        }
        self.check_attacks()?;
        self.check_equivocation()?;
        for i in 0..self.devices.len() {
            self.devices[i].dirty = true;
        }
        self.check_dirty()?;
        let lines = self.timelines()?;
        self.check_membership_windows(&lines)?;
        let mut sent: Vec<(MessageId, ConversationId)> = Vec::new();
        for (m, (c, author)) in self.oracle.sent.clone() {
            let author_user = self.users[self.devices[author].user].id;
            if !lines
                .get(&c)
                .is_some_and(|t| t.current.contains(&author_user))
            {
                // Sent by a member removed since: it must reach everyone only if the relay
                // sequenced it (before the removal); otherwise it stays FAILED at its author.
                let seq = self.shown(author, c)?.message(&m).and_then(|v| v.seq);
                if seq.is_none() {
                    continue;
                }
            }
            sent.push((m, c));
        }
        for spec_idx in 0..self.convs.len() {
            let id = self.convs[spec_idx].id;
            let timeline = lines.get(&id).ok_or("no timeline")?;
            let mut digest = Vec::new();
            let members: Vec<usize> = (0..self.devices.len())
                .filter(|i| {
                    timeline
                        .current
                        .contains(&self.users[self.devices[*i].user].id)
                })
                .collect();
            // Every gap a member device was told of: a message in one may never have reached
            // that device, so it may stay short of DELIVERED everywhere.
            let mut all_gaps = Vec::new();
            for &i in &members {
                all_gaps.extend(self.gaps_of(i, id)?);
            }
            for &i in &members {
                let name = self.devices[i].name.clone();
                let gaps = self.gaps_of(i, id)?;
                let view = self.shown(i, id)?.messages();
                check_unique(&view)?;
                // A receipt in a gap of this device never reached it.
                let told_late = |seq: ServerSeq| {
                    in_gaps(&all_gaps, seq) || gaps.iter().any(|(_, to)| *to > seq)
                };
                check_final_view(id, &view, timeline, told_late)
                    .map_err(|e| format!("{name}: {e}"))?;
                self.check_bodies(i, &view, timeline)?;
                for (m, conv) in &sent {
                    if *conv != id || view.iter().any(|v| v.id == *m) {
                        continue;
                    }
                    // Gone before it reached this device: then it was told so.
                    let author = self
                        .oracle
                        .sent
                        .get(m)
                        .map(|(_, d)| *d)
                        .ok_or("no author")?;
                    let seq = self.shown(author, id)?.message(m).and_then(|v| v.seq);
                    if seq.is_some_and(|s| in_gaps(&gaps, s)) {
                        continue;
                    }
                    return fail(format!(
                        "message {m} sent in {id} (send returned Ok, seq {seq:?}) never \
                         reached {name}, and no history gap it was told of covers it"
                    ));
                }
                let exempt = self.equivocation.as_ref().and_then(|e| e.exempt());
                if digest.is_empty() && exempt != Some((i, id)) {
                    for m in &view {
                        digest.extend_from_slice(&m.id.0);
                        digest.extend_from_slice(&m.seq.unwrap_or(0).to_be_bytes());
                        digest.push(m.status.rank());
                    }
                }
                self.stats.messages_delivered_everywhere += view.len() as u64;
            }
            self.trace.absorb(&digest);
        }
        self.stats.seeds = 1;
        self.stats.steps = self.step;
        self.stats.acks = self.oracle.n_acks;
        self.stats.virtual_ms = self.now - T0;
        tr!(
            self,
            "END: {} acks, all invariants hold",
            self.oracle.n_acks
        );
        Ok(Report {
            trace_hash: self.trace.hash_hex(),
            stats: self.stats.clone(),
        })
    }

    /// No honest message reads as anything but what was sent, on a member device that may
    /// read it (its user a member since before its seq): poisoned epoch-key shares may leave a
    /// body waiting for its key, never decrypted with a wrong one.
    fn check_bodies(
        &mut self,
        i: usize,
        view: &[tidings::engine::MessageView],
        timeline: &Timeline,
    ) -> Result<(), Violation> {
        let name = self.devices[i].name.clone();
        let user = self.users[self.devices[i].user].id;
        let joined = timeline.first_join.get(&user).copied().unwrap_or(0);
        for m in view {
            if m.seq.is_none_or(|s| s < joined) {
                continue;
            }
            let Some(sent) = self.bodies.get(&m.id).cloned() else {
                continue;
            };
            let body = self
                .core(i)?
                .store_mut()
                .body(m)
                .map_err(|e| format!("{name}: {e}"))?;
            match body {
                Body::Text(t) if t == sent => self.stats.bodies_checked += 1,
                Body::WaitingForKey(_) => self.stats.bodies_waiting += 1,
                other => {
                    return fail(format!(
                        "{name} reads message {} as {other:?}, not as sent",
                        m.id
                    ))
                }
            }
        }
        Ok(())
    }

    /// What membership changes promise, on every device: a member removed for good holds no
    /// message the relay sequenced after the removal, and a user added later reads no message
    /// sequenced before they first joined (they may hold it, sealed).
    fn check_membership_windows(
        &mut self,
        lines: &BTreeMap<ConversationId, Timeline>,
    ) -> Result<(), Violation> {
        for spec_idx in 0..self.convs.len() {
            let id = self.convs[spec_idx].id;
            let Some(t) = lines.get(&id) else { continue };
            for i in 0..self.devices.len() {
                let user = self.users[self.devices[i].user].id;
                let removed = t.removed_at.get(&user).copied();
                let joined = t.first_join.get(&user).copied().unwrap_or(0);
                if removed.is_none() && joined <= 1 {
                    continue;
                }
                let name = self.devices[i].name.clone();
                let view = self.shown(i, id)?.messages();
                for m in &view {
                    let Some(seq) = m.seq else { continue };
                    if removed.is_some_and(|r| seq > r) {
                        return fail(format!(
                            "{name} holds message {} (seq {seq} of {id}), sequenced after its \
                             user was removed at seq {removed:?}",
                            m.id
                        ));
                    }
                    if seq < joined {
                        let body = self
                            .core(i)?
                            .store_mut()
                            .body(m)
                            .map_err(|e| format!("{e}"))?;
                        if matches!(body, Body::Text(_)) {
                            return fail(format!(
                                "{name} reads message {} (seq {seq} of {id}) from before its \
                                 user joined at seq {joined}",
                                m.id
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Per-step checks of every device whose view changed (and of all of them now and then).
    pub(super) fn check_dirty(&mut self) -> Result<(), Violation> {
        let all = self.step.is_multiple_of(FULL_CHECK_EVERY);
        let exempt = self.equivocation.as_ref().and_then(|e| e.exempt());
        for i in 0..self.devices.len() {
            if !(self.devices[i].dirty || all) {
                continue;
            }
            self.devices[i].dirty = false;
            let user = self.devices[i].user;
            let name = self.devices[i].name.clone();
            let Some(core) = self.devices[i].core.as_mut() else {
                continue;
            };
            for spec in &self.convs {
                let member = spec.ever.contains(&user);
                let shown_other_history = exempt == Some((i, spec.id));
                self.oracle
                    .check_device_view(i, core, spec.id, member, shown_other_history)
                    .map_err(|e| format!("device {name}: {e}"))?;
            }
        }
        Ok(())
    }
}
/// What one member device shows of a conversation, and the history gaps it was told of.
struct Shown {
    name: String,
    view: tidings::engine::ConversationView,
    gaps: Vec<(ServerSeq, ServerSeq)>,
}

impl Shown {
    /// How `other` differs from this view, or `None` when they agree. Two devices told of no
    /// gap show the same. Otherwise, what a device was told is gone it may lack: it shows
    /// every other message at the same place, and a status at most the other's when only it
    /// was told of gaps (a receipt in its gap never reached it).
    fn differs(&self, other: &Shown) -> Option<String> {
        let (a, b) = (&self.view, &other.view);
        if a.members != b.members {
            return Some(format!("members {:?} vs {:?}", a.members, b.members));
        }
        if self.gaps.is_empty() && other.gaps.is_empty() {
            return (a != b).then(|| describe_diff(a, b));
        }
        for (x, y) in [(self, other), (other, self)] {
            // x was told of no gap, so y was: y may show less.
            let lower_only = x.gaps.is_empty();
            for m in &x.view.messages {
                if m.seq.is_some_and(|s| in_gaps(&y.gaps, s)) {
                    continue;
                }
                let Some(n) = y.view.messages.iter().find(|n| n.id == m.id) else {
                    return Some(format!(
                        "{} shows message {} (seq {:?}), {} does not",
                        x.name, m.id, m.seq, y.name
                    ));
                };
                if n.seq != m.seq {
                    return Some(format!(
                        "message {} at seq {:?} on {}, {:?} on {}",
                        m.id, m.seq, x.name, n.seq, y.name
                    ));
                }
                if lower_only && n.status.rank() > m.status.rank() {
                    return Some(format!(
                        "message {} is {:?} on {} (told of gaps), {:?} on {}",
                        m.id, n.status, y.name, m.status, x.name
                    ));
                }
            }
        }
        None
    }
}

fn describe_diff(
    a: &tidings::engine::ConversationView,
    b: &tidings::engine::ConversationView,
) -> String {
    if a.messages.len() != b.messages.len() {
        return format!("{} vs {} messages", a.messages.len(), b.messages.len());
    }
    for (x, y) in a.messages.iter().zip(&b.messages) {
        if x != y {
            return format!(
                "message {} (seq {:?}, {:?}) vs {} (seq {:?}, {:?})",
                x.id, x.seq, x.status, y.id, y.seq, y.status
            );
        }
    }
    if a.devices != b.devices {
        return format!("device marks {:?} vs {:?}", a.devices, b.devices);
    }
    "?".into()
}

/// Highest sequence per conversation in a relay store.
pub(super) fn store_heads(store: &RelayStore) -> Result<BTreeMap<ConversationId, u64>, Violation> {
    Ok(store
        .conversations()
        .map_err(|e| format!("relay store: {e}"))?
        .into_iter()
        .map(|(c, r)| (c, r.max_seq))
        .collect())
}
