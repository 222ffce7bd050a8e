//! The store's device directory: certificates and revocations taken in from the relay, the
//! gates they unblock, and the loading every write that judges events against it needs.

use super::*;

impl Store {
    /// Takes in device certificates and revocations from the relay: each is verified here
    /// (see [`DeviceDirectory`]) and kept in the log; conversations waiting for certificates
    /// are judged again. `answered` names the users this answer settles (the relay's
    /// complete answer about them is in): an author of theirs that is still unknown is
    /// refused as uncertified (pass the users of a request sent for [`ApplyOutcome::waiting`]
    /// whose last page arrived; an answer to an earlier request settles nobody). Statements
    /// the directory refuses (a changed agreement key, say) are in
    /// [`ApplyOutcome::directory_refused`].
    pub fn absorb_devices(
        &mut self,
        registrations: &[DeviceRegistration],
        revocations: &[DeviceRevocation],
        answered: &[UserId],
    ) -> Result<ApplyOutcome, StoreError> {
        let lookup = |u: &UserId| {
            if answered.contains(u) {
                AuthorLookup::Answered
            } else {
                AuthorLookup::Asking
            }
        };
        self.absorb_with(registrations, revocations, &lookup)
    }

    /// The relay gave no complete answer about `users` after the device asked as often as it
    /// asks ([`crate::device::MAX_DEVICE_ASKS`]): events of their authors still unknown get
    /// their final verdict, [`Refusal::Unanswered`].
    pub fn give_up_on(&mut self, users: &[UserId]) -> Result<ApplyOutcome, StoreError> {
        let lookup = |u: &UserId| {
            if users.contains(u) {
                AuthorLookup::GaveUp
            } else {
                AuthorLookup::Asking
            }
        };
        self.absorb_with(&[], &[], &lookup)
    }

    pub(super) fn absorb_with(
        &mut self,
        registrations: &[DeviceRegistration],
        revocations: &[DeviceRevocation],
        lookup: &dyn Fn(&UserId) -> AuthorLookup,
    ) -> Result<ApplyOutcome, StoreError> {
        self.ensure_directory()?;
        let dir = self.directory.get_or_insert_with(DeviceDirectory::new);
        let mut certs = Vec::new();
        let mut revs = Vec::new();
        let mut directory_refused = Vec::new();
        // Certificates first: a revocation counts only against its user's certificate.
        for c in registrations {
            match dir.certify(c) {
                Ok(Certified::New) => certs.push(c.clone()),
                Ok(Certified::Revoked(r)) => {
                    certs.push(c.clone());
                    revs.push(r);
                }
                Ok(Certified::Held) => {}
                Err(e) => directory_refused.push(e),
            }
        }
        for r in revocations {
            match dir.revoke(r) {
                Ok(Revoked::New) => revs.push(r.clone()),
                Ok(Revoked::Held | Revoked::Pending) => {}
                Err(e) => directory_refused.push(e),
            }
        }
        let waiting: Vec<ConversationId> = self.waiting.iter().copied().collect();
        for c in &waiting {
            self.ensure_loaded(*c)?;
        }
        let me = self.key.device();
        let directory = self.loaded_directory()?;
        let runs = self.log.write(|t| {
            for c in &certs {
                t.put_statement(Ok(c))?;
            }
            for r in &revs {
                t.put_statement(Err(r))?;
            }
            let mut runs = Vec::with_capacity(waiting.len());
            for c in &waiting {
                runs.push((*c, t.advance_gate(*c, directory, me, lookup)?));
            }
            Ok(runs)
        })?;
        let mut outcome = ApplyOutcome {
            directory_refused,
            ..ApplyOutcome::default()
        };
        self.fold_runs(HashMap::new(), &runs, &mut outcome)?;
        Ok(outcome)
    }

    /// Judges again every conversation whose gate stopped at an event of an author it could
    /// not place yet. The stalled gates are found in the log, so this covers gates that
    /// stopped before a restart or whose certificate request was lost with its connection.
    /// Call once per connection: the outcome's `waiting` names the users to ask about.
    pub fn recheck_gates(&mut self) -> Result<ApplyOutcome, StoreError> {
        let stalled = self.log.stalled_gates()?;
        self.waiting.extend(stalled);
        self.absorb_devices(&[], &[], &[])
    }

    /// The device directory (certificates and revocations this device verified).
    pub fn directory(&mut self) -> Result<&DeviceDirectory, StoreError> {
        self.ensure_directory()?;
        self.loaded_directory()
    }

    /// The directory once [`Store::ensure_directory`] ran (borrowing only `self`, so a write
    /// can judge events against it).
    pub(super) fn loaded_directory(&self) -> Result<&DeviceDirectory, StoreError> {
        self.directory
            .as_ref()
            .ok_or(StoreError::Doc(DocError::Op("directory not loaded".into())))
    }

    /// Loads the documents of `convs` and the directory: what a write that judges events
    /// against the gate needs first.
    pub(super) fn ready_to_judge(
        &mut self,
        convs: impl IntoIterator<Item = ConversationId>,
    ) -> Result<(), StoreError> {
        for c in convs {
            self.ensure_loaded(c)?;
        }
        self.ensure_directory()
    }

    pub(super) fn ensure_directory(&mut self) -> Result<(), StoreError> {
        if self.directory.is_none() {
            let (certs, revs) = self.log.directory()?;
            let mut dir = DeviceDirectory::new();
            // Verified when they were taken in; verified again here, cheaply enough for the
            // few hundred devices a device meets.
            for r in dir.absorb(&certs, &revs) {
                tracing::warn!(%r, "a stored directory statement no longer verifies");
            }
            self.directory = Some(dir);
        }
        Ok(())
    }
}
