//! The log's keys in the database: signing with the pair the record names, reading and
//! checking the record, and activating a staged pair.

use super::*;

impl PgLedger {
    /// Signs with the pair `public` names as current (a writer only).
    pub(super) fn sign(
        &self,
        public: &LedgerPublicKeys,
        size: u64,
        root: [u8; 32],
    ) -> Result<String> {
        self.keys
            .as_ref()
            .ok_or_else(|| LedgerError::InvalidRequest("the ledger is open read-only".into()))?
            .sign_checkpoint_as(public, size, root)
    }

    /// The log's keys as its database records them now (a writer; an auditor's handle keeps
    /// the keys it was given). A changed record is accepted only when this gateway holds
    /// the pair it names as current and its key files name every retired pair it lists
    /// that the record held before did not.
    pub(super) async fn read_keys(
        &self,
        client: &impl deadpool_postgres::GenericClient,
    ) -> Result<Arc<LedgerPublicKeys>> {
        let Some(keys) = &self.keys else {
            return Ok(self.public_keys_held());
        };
        let text: String = client
            .query_opt(
                "SELECT public_keys FROM ledger_meta WHERE origin = $1",
                &[&self.origin],
            )
            .await
            .map_err(db)?
            .ok_or_else(|| {
                LedgerError::Damaged(format!("the shared log {} has no keys", self.origin))
            })?
            .get(0);
        let (held_text, held) = self.public.read().expect("keys lock").clone();
        if text == held_text {
            return Ok(held);
        }
        let refused = |why: String| {
            LedgerError::Key(format!(
                "the shared log {}'s keys in the database (ledger_meta) are refused: {why}",
                self.origin
            ))
        };
        let record: LedgerPublicKeys = serde_json::from_str(&text)
            .map_err(|e| refused(format!("not the log's public keys ({e})")))?;
        if record.origin != self.origin {
            return Err(refused(format!("they are for the log {}", record.origin)));
        }
        if !keys.holds(&record)? {
            return Err(LedgerError::Key(format!(
                "the shared log {} signs with the ledger key {}, which {} does not hold: give \
                 every gateway the same ledger keys (copy {} from the gateway that rotated \
                 them)",
                self.origin,
                record.log_key,
                keys.dir().display(),
                crate::rotation::ROTATED_KEYS_FILE
            )));
        }
        for r in &record.retired {
            if !held.retired.contains(r) && !keys.knows_pair(&r.log_key, &r.cosigner_key)? {
                return Err(refused(format!(
                    "the retired key {} is not one this gateway's key files name",
                    r.log_key
                )));
            }
        }
        let record = Arc::new(record);
        if !held_text.is_empty() && (record.log_key != held.log_key) {
            tracing::info!(
                origin = self.origin,
                log_key = record.log_key,
                retired = record.retired.len(),
                "the shared log's keys rotated"
            );
            self.write_public_file(&record)?;
        }
        *self.public.write().expect("keys lock") = (text, record.clone());
        Ok(record)
    }

    /// Writes the log's public keys next to the key files, for `keys export-public`.
    pub(super) fn write_public_file(&self, public: &LedgerPublicKeys) -> Result<()> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let path = keys.dir().join(crate::store::PUBLIC_KEYS_FILE);
        trackshift_crypto::filestore::write_atomic(
            &path,
            public_keys_json(public).as_bytes(),
            0o644,
        )
        .map_err(|e| LedgerError::Damaged(e.to_string()))
    }

    pub(super) fn public_keys_held(&self) -> Arc<LedgerPublicKeys> {
        self.public.read().expect("keys lock").1.clone()
    }

    /// Makes the pair staged in this gateway's key directory ([`crate::stage_ledger_keys`])
    /// the log's current pair, for every gateway sharing the log: under the log's lock, the
    /// pair in force is retired with its window ending after the last checkpoint it signed
    /// (whatever the gateways' clocks) and the database's record names the staged pair.
    /// Then this gateway's key directory is rewritten to match ([`crate::promote_staged`]).
    /// Activating a staged pair that is current already (another gateway activated it)
    /// only promotes it here. Returns the log's keys now.
    pub async fn activate_staged(&self) -> Result<LedgerPublicKeys> {
        let keys = self
            .keys
            .as_ref()
            .ok_or_else(|| LedgerError::InvalidRequest("the ledger is open read-only".into()))?;
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock_id])
            .await
            .map_err(db)?;
        let current = self.read_keys(&tx).await?;
        let staged = keys.staged_public()?;
        match staged {
            // Activated before (by this gateway or another with the same staged pair).
            Some(staged)
                if staged.log_key == current.log_key
                    && staged.cosigner_key == current.cosigner_key => {}
            Some(staged) => {
                let last = latest_checkpoint(&tx, &self.origin, &current)
                    .await?
                    .ok_or_else(|| {
                        LedgerError::Damaged("the shared log has no checkpoint".into())
                    })?;
                let signed_at = verify_checkpoint(&last.note, &current)?.cosigned_at;
                let mut retired = current.retired.clone();
                retired.push(trackshift_crypto::RetiredLedgerKeys {
                    log_key: current.log_key.clone(),
                    cosigner_key: current.cosigner_key.clone(),
                    not_after: trackshift_crypto::Timestamp::from_unix(
                        now_secs().max(signed_at).saturating_add(1),
                    ),
                });
                let new = LedgerPublicKeys { retired, ..staged };
                tx.execute(
                    "UPDATE ledger_meta SET public_keys = $2 WHERE origin = $1",
                    &[
                        &self.origin,
                        &serde_json::to_string(&new).expect("keys serialise"),
                    ],
                )
                .await
                .map_err(db)?;
            }
            None => {
                return Err(LedgerError::Key(format!(
                    "{} holds no staged pair: stage one first (`keys rotate --prepare`)",
                    keys.dir().display()
                )));
            }
        }
        tx.commit().await.map_err(db)?;
        drop(client);
        let new = {
            let client = self.pool.get().await.map_err(db)?;
            self.read_keys(&client).await?
        };
        crate::rotation::promote_staged(keys.dir(), &new)?;
        Ok((*new).clone())
    }
}
