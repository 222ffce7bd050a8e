//! Devices in the simulation: timers, dialing, frames in, errors, crashes and restarts.

use super::*;

impl Sim {
    pub(super) fn device_timer(&mut self, i: usize, at: u64) -> Result<(), Violation> {
        self.now = self.now.max(at);
        let now = self.devices[i].dev_now(self.now);
        let r = self.core(i)?.handle_timeout(now);
        if let Err(e) = r {
            return self.device_failed(i, e, "handle_timeout");
        }
        self.drain_device(i)?;
        self.maybe_dial(i);
        self.refresh_wake(i);
        if let Some(w) = self.devices[i].wake {
            if w <= self.now {
                let dev_now = self.devices[i].dev_now(self.now);
                let core = self.core(i)?;
                let state = core.connection();
                let outbox: Vec<String> = core
                    .store_mut()
                    .outbox()
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|e| {
                        format!(
                            "{:?} {:?} due {:+} ms",
                            e.message,
                            e.state,
                            e.next_attempt_ms as i64 - dev_now as i64
                        )
                    })
                    .collect();
                return fail(format!(
                    "device {} asks to be woken at or before now right after handling its \
                     timeout (state {state:?}, outbox {outbox:?}): its shell would spin",
                    self.devices[i].name
                ));
            }
        }
        Ok(())
    }

    pub(super) fn refresh_wake(&mut self, i: usize) {
        let d = &mut self.devices[i];
        let skew = d.skew_ms;
        d.wake = match (&mut d.core, d.conn, d.dialing) {
            (None, _, _) | (Some(_), None, Some(_)) => None,
            (Some(core), _, _) => core.poll_timeout().map(|t| {
                let v = t.saturating_add_signed(-skew);
                v.max(self.now)
            }),
        };
    }

    pub(super) fn maybe_dial(&mut self, i: usize) {
        let d = &self.devices[i];
        let now = d.dev_now(self.now);
        let wants = d.conn.is_none()
            && d.dialing.is_none()
            && d.core.as_ref().is_some_and(|c| c.poll_connect(now));
        if !wants {
            return;
        }
        let dial = self.next_dial;
        self.next_dial += 1;
        let rtt = 2 * self.delay(i);
        let inc = self.devices[i].inc;
        self.devices[i].dialing = Some(dial);
        self.devices[i].wake = None;
        tr!(self, "{} dials", self.devices[i].name);
        self.queue.push(
            self.now + rtt,
            Ev::DialDone {
                device: i,
                inc,
                dial,
            },
        );
    }

    pub(super) fn dial_done(&mut self, i: usize, inc: u64, dial: u64) -> Result<(), Violation> {
        let d = &self.devices[i];
        if d.inc != inc || d.dialing != Some(dial) {
            return Ok(());
        }
        let reachable = self.relay.core.is_some() && d.partition == Partition::None && d.os_online;
        if !reachable {
            let wait = if d.os_online {
                self.rng.random_range(500..5_000)
            } else {
                0
            };
            self.queue.push(
                self.now + wait,
                Ev::DialFailed {
                    device: i,
                    inc,
                    dial,
                },
            );
            return Ok(());
        }
        let binding: [u8; 32] = self.rng.random();
        let nonce: [u8; 32] = self.rng.random();
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1));
        let relay = self.relay.core.as_mut().ok_or("relay down")?;
        let session = match relay.handle_connect(ip, binding, nonce) {
            Ok(s) => s,
            Err(e) => return fail(format!("relay refused a connection: {e}")),
        };
        let id = self.next_conn;
        self.next_conn += 1;
        self.stats.connections += 1;
        self.conns
            .insert(id, Conn::new(i, inc, self.relay.inc, session, self.now));
        self.relay.sessions.insert(session, id);
        let d = &mut self.devices[i];
        d.dialing = None;
        d.conn = Some(id);
        let now = d.dev_now(self.now);
        tr!(
            self,
            "{} connected: conn {id}, session {session}",
            self.devices[i].name
        );
        self.core(i)?.handle_connected(binding, now);
        self.drain_device(i)?;
        self.refresh_wake(i);
        Ok(())
    }

    pub(super) fn dial_failed(&mut self, i: usize, inc: u64, dial: u64) -> Result<(), Violation> {
        let d = &mut self.devices[i];
        if d.inc != inc || d.dialing != Some(dial) {
            return Ok(());
        }
        d.dialing = None;
        self.stats.dial_failures += 1;
        let now = d.dev_now(self.now);
        tr!(self, "{} dial failed", self.devices[i].name);
        self.core(i)?.handle_connect_failed(now);
        self.refresh_wake(i);
        Ok(())
    }

    pub(super) fn deliver_to_device(
        &mut self,
        conn: ConnId,
        frame: ServerFrame,
    ) -> Result<(), Violation> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let i = c.device;
        let d = &self.devices[i];
        if !c.dev_attached || d.conn != Some(conn) || d.inc != c.device_inc {
            return Ok(());
        }
        if self.now > c.down_cut {
            self.stats.frames_lost_to_dead_connections += 1;
            tr!(
                self,
                "{} <- {} LOST (connection dead)",
                d.name,
                server_frame_name(&frame)
            );
            return Ok(());
        }
        tr!(self, "{} <- {}", d.name, server_frame_name(&frame));
        if frame.answers().is_some_and(|id| id > ADVERSARY_REQUESTS) {
            // The adversary's shell keeps the answers to what it wrote.
            return self.adversary_answer(frame);
        }
        let now = d.dev_now(self.now);
        let r = self.core(i)?.handle_frame(frame, now);
        // The replica takes a page's fold back when no frame waits; here, every other frame.
        let r = r.and_then(|()| {
            if self.rng.random_bool(0.5) {
                self.core(i)
                    .map_err(|_| DeviceError::Protocol("no core"))?
                    .settle_folds()
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => {
                self.drain_device(i)?;
                self.maybe_dial(i);
                self.refresh_wake(i);
                Ok(())
            }
            Err(e) => self.device_failed(i, e, "handle_frame"),
        }
    }

    /// A device core call returned an error.
    pub(super) fn device_failed(
        &mut self,
        i: usize,
        e: DeviceError,
        call: &str,
    ) -> Result<(), Violation> {
        if self.devices[i].disk.is_dead() {
            self.stats.device_power_cuts += 1;
            tr!(
                self,
                "{} POWER CUT during {call}: {e}",
                self.devices[i].name
            );
            return self.crash_device(i);
        }
        let name = self.devices[i].name.clone();
        match &e {
            DeviceError::Store(_) => {
                return fail(format!(
                    "device {name}: store error in {call} without a disk fault: {e}"
                ))
            }
            DeviceError::Closed { .. } => {}
            _ if self.profile.chaos.is_none() => {
                return fail(format!(
                    "device {name}: {call} failed over a faithful transport: {e}"
                ))
            }
            _ => {}
        }
        self.stats.device_errors += 1;
        tr!(self, "{name} drops its connection: {e}");
        self.device_drops_conn(i)
    }

    /// The device's shell closes its connection (error or the OS network went away).
    pub(super) fn device_drops_conn(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.devices[i].dev_now(self.now);
        if let Some(conn) = self.devices[i].conn.take() {
            let told = self.now + self.devices[i].latency_ms;
            self.kill_conn(conn, None, Some(told));
            if let Some(c) = self.conns.get_mut(&conn) {
                c.dev_attached = false;
            }
        }
        self.core_disconnected(i, now)
    }

    pub(super) fn device_told(&mut self, conn: ConnId) -> Result<(), Violation> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let i = c.device;
        if !c.dev_attached || self.devices[i].conn != Some(conn) {
            return Ok(());
        }
        c.dev_attached = false;
        self.devices[i].conn = None;
        tr!(self, "{} told conn {conn} is dead", self.devices[i].name);
        let now = self.devices[i].dev_now(self.now);
        self.core_disconnected(i, now)
    }

    /// Tells device `i`'s core its connection is gone, then lets it write and redial.
    fn core_disconnected(&mut self, i: usize, now: u64) -> Result<(), Violation> {
        let r = self.core(i)?.handle_disconnected(now);
        if let Err(e) = r {
            return self.device_failed(i, e, "handle_disconnected");
        }
        self.drain_device(i)?;
        self.maybe_dial(i);
        self.refresh_wake(i);
        Ok(())
    }

    /// Moves what the core wants written onto its connection, and notes visible changes.
    pub(super) fn drain_device(&mut self, i: usize) -> Result<(), Violation> {
        let Some(core) = self.devices[i].core.as_mut() else {
            return Ok(());
        };
        let mut frames = Vec::new();
        while let Some(f) = core.poll_transmit() {
            frames.push(f);
        }
        let mut changed = false;
        let mut states = Vec::new();
        let mut chain = Vec::new();
        let mut invited = Vec::new();
        let mut gaps = Vec::new();
        while let Some(ev) = core.poll_event() {
            match ev {
                DeviceEvent::Changes(c) => changed |= !c.is_empty(),
                DeviceEvent::Connection(state) => states.push(state),
                DeviceEvent::Chain(issue) => chain.push(issue),
                // Every user here takes every invitation to a real conversation, as an app
                // does when its user taps "accept" (the relay keeps the conversation from the
                // device till then); a flooder's stay pending.
                DeviceEvent::User(UserChange::Invited(inv)) => invited.push(inv.conversation),
                DeviceEvent::KeyShareRefused(_) => self.stats.key_shares_refused += 1,
                DeviceEvent::HistoryGap {
                    conversation,
                    from,
                    to,
                } => gaps.push((conversation, from, to)),
                DeviceEvent::Ignored(refused) => {
                    return fail(format!(
                        "{} ignored an honest event: {refused:?}",
                        self.devices[i].name
                    ))
                }
                _ => {}
            }
        }
        for c in invited {
            if self.convs.iter().any(|s| s.id == c) {
                core.accept(c);
            }
        }
        while let Some(f) = core.poll_transmit() {
            frames.push(f);
        }
        self.devices[i].dirty |= changed;
        for (conversation, from, to) in gaps {
            self.device_hears_gap(i, conversation, from, to)?;
        }
        for issue in chain {
            if self.equivocation_report(i, &issue) {
                continue;
            }
            // Every device here is honest and so is the relay (but for the equivocation
            // above): no author signs two events for one place and no link breaks. A gap can
            // be honest for a while (a message that went FAILED at its author while later
            // ones were acked).
            match issue {
                ChainIssue::Gap {
                    author, missing, ..
                } => {
                    self.stats.chain_gaps += 1;
                    tr!(
                        self,
                        "{} reports a gap in {author}'s chain: {missing:?}",
                        self.devices[i].name
                    );
                }
                other => {
                    return fail(format!(
                        "{} reports a broken chain with honest parties: {other:?}",
                        self.devices[i].name
                    ))
                }
            }
        }
        for state in states {
            // Ready: the relay holds the device's certificate.
            self.attacks.registered[i] |= state == ConnectionState::Syncing;
            tr!(self, "{} is {state:?}", self.devices[i].name);
        }
        for f in frames {
            match self.devices[i].conn {
                Some(conn) => self.send_up(conn, f),
                None => {
                    return fail(format!(
                        "device {} wrote {} with no connection",
                        self.devices[i].name,
                        client_frame_name(&f)
                    ))
                }
            }
        }
        Ok(())
    }

    /// An app call returned: drain it, or handle its failure.
    pub(super) fn after_app_call(
        &mut self,
        i: usize,
        r: Result<(), DeviceError>,
        call: &str,
    ) -> Result<(), Violation> {
        match r {
            Ok(()) => {
                self.devices[i].dirty = true;
                self.drain_device(i)?;
                self.maybe_dial(i);
                self.refresh_wake(i);
                Ok(())
            }
            Err(e) if self.devices[i].disk.is_dead() => self.device_failed(i, e, call),
            Err(e) => fail(format!(
                "device {}: {call} failed without a disk fault: {e}",
                self.devices[i].name
            )),
        }
    }

    pub(super) fn crash_device(&mut self, i: usize) -> Result<(), Violation> {
        let d = &mut self.devices[i];
        if d.core.is_none() {
            return Ok(());
        }
        // The disk first: the dying process's database can then write nothing more.
        d.disk.crash();
        d.core = None;
        d.inc += 1;
        d.dialing = None;
        d.wake = None;
        d.dirty = false;
        let conn = d.conn.take();
        tr!(self, "{} CRASHED", self.devices[i].name);
        if let Some(conn) = conn {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.dev_attached = false;
            }
            let told = self.now + self.rng.random_range(0..IDLE_MS);
            self.kill_conn(conn, None, Some(told));
        }
        let after = if self.healing {
            0
        } else {
            self.rng.random_range(200..20_000)
        };
        self.queue
            .push(self.now + after, Ev::DeviceRestart { device: i });
        Ok(())
    }

    pub(super) fn device_restart(&mut self, i: usize) -> Result<(), Violation> {
        let relay_id = self.relay.key.device();
        let seed: u64 = self.rng.random();
        if self.devices[i].inc > 0 && self.rng.random_bool(0.25) {
            self.devices[i].skew_ms = self.rng.random_range(-300_000..=300_000);
            self.stats.clock_changes += 1;
        }
        let d = &mut self.devices[i];
        let log = EventLog::with_backend(d.disk.backend())
            .map_err(|e| format!("device {} cannot reopen its durable image: {e}", d.name))?;
        let mut config = StoreConfig::new(relay_id);
        // Half the incarnations fold relay pages beside the core, as the replica does: the
        // job runs when it is taken back, so the trace stays the seed's. Every page leaves,
        // so the queueing behind a job is exercised, not only catch-up's big pages.
        let fold_beside = self.rng.random_bool(0.5) && std::env::var("NO_FOLD").is_err();
        if fold_beside {
            config.offload_min_events = 1;
        }
        // Keys and nonces from the seed too: the same seed gives the same trace.
        let mut entropy = [0u8; 32];
        entropy[..8].copy_from_slice(&seed.to_le_bytes());
        entropy[8] = i as u8;
        let mut store = Store::new(log, d.key.clone(), config, entropy);
        if fold_beside {
            store.set_fold_runner(Box::new(|job| Box::new(move || Some(job.run()))));
        }
        let mut core = DeviceCore::new(store, relay_id, d.config.clone(), seed);
        if !d.os_online {
            let now = d.dev_now(self.now);
            core.network_changed(false, now)
                .map_err(|e| format!("network_changed after restart: {e}"))?;
        }
        d.core = Some(core);
        d.dirty = true;
        if d.inc > 0 {
            self.stats.device_restarts += 1;
        }
        tr!(
            self,
            "{} starts (incarnation {}, clock skew {} ms)",
            self.devices[i].name,
            self.devices[i].inc,
            self.devices[i].skew_ms
        );
        self.drain_device(i)?;
        self.maybe_dial(i);
        self.refresh_wake(i);
        Ok(())
    }

    pub(super) fn set_os_online(&mut self, i: usize, online: bool) -> Result<(), Violation> {
        self.devices[i].os_online = online;
        tr!(
            self,
            "{} network {}",
            self.devices[i].name,
            if online { "ON" } else { "OFF" }
        );
        if self.devices[i].core.is_none() {
            return Ok(());
        }
        let now = self.devices[i].dev_now(self.now);
        let r = self.core(i)?.network_changed(online, now);
        if let Err(e) = r {
            return self.after_app_call(i, Err(e), "network_changed");
        }
        if !online {
            return self.device_drops_conn(i);
        }
        self.after_app_call(i, Ok(()), "network_changed")
    }
}
