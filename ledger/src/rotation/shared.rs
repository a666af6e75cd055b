//! The checkpoint keys of a log shared through PostgreSQL: a new pair is staged in each
//! gateway's key directory first and promoted once the log's database names it (see the
//! parent module and `crate::PgLedger::activate_staged`).

use std::path::Path;

use zeroize::Zeroizing;

use super::*;

/// The key file of `keys_dir` as a rotation rewrites it: `ledger-keys.json`, or the first
/// seed files' pair in that form (they must be there: a rotation never creates a first key).
fn rotated_or_first(keys_dir: &Path) -> Result<RotatedKeys> {
    // Every gateway sharing a log signs with the same pair, copied to each as a file: a
    // key that cannot leave its token cannot be shared that way.
    let on_token = || {
        LedgerError::Key(format!(
            "the log key in {} is on a PKCS#11 token: a ledger shared through PostgreSQL \
             keeps its checkpoint keys in files copied to every gateway",
            keys_dir.display()
        ))
    };
    if let Some(file) = read_rotated(keys_dir)? {
        if file.log_token_key.is_some() {
            return Err(on_token());
        }
        return Ok(file);
    }
    if keys_dir.join(ED25519_TOKEN_FILE).exists() {
        return Err(on_token());
    }
    let seed = |name: &str| -> Result<String> {
        let path = keys_dir.join(name);
        let bytes = read_secret(&path).map_err(|e| LedgerError::Key(e.to_string()))?;
        let text = Zeroizing::new(String::from_utf8_lossy(&bytes).trim().to_string());
        seed_from_hex(&text, &path)?;
        Ok(text.to_string())
    };
    Ok(RotatedKeys {
        format: ROTATED_KEYS_FORMAT.to_string(),
        log_seed: seed(ED25519_FILE)?,
        log_token_key: None,
        cosigner_seed: seed(MLDSA_FILE)?,
        retired: Vec::new(),
        staged: None,
    })
}

/// Stages a new pair in the key directory of a log shared through PostgreSQL (`keys rotate
/// --purpose ledger --prepare`): it is written next to the current pair (one atomic
/// replacement of `ledger-keys.json`, 0600) and held by every gateway that loads the file,
/// but signs nothing until the log's database names it ([`crate::PgLedger::activate_staged`]).
/// Copy the file to every gateway sharing the log before activating. Staging again
/// returns the pair already staged. Returns its public keys.
pub fn stage_ledger_keys(keys_dir: &Path, origin: &str) -> Result<LedgerPublicKeys> {
    let mut file = rotated_or_first(keys_dir)?;
    let path = keys_dir.join(ROTATED_KEYS_FILE);
    let staged = match &file.staged {
        Some(s) => s,
        None => {
            file.staged = Some(StagedSeeds {
                log_seed: new_seed()?.to_string(),
                cosigner_seed: new_seed()?.to_string(),
            });
            write_rotated(keys_dir, &file)?;
            remove_first_seeds(keys_dir);
            file.staged.as_ref().expect("just staged")
        }
    };
    Ok(LedgerKeys::from_seeds(
        origin,
        &*seed_from_hex(&staged.log_seed, &path)?,
        &*seed_from_hex(&staged.cosigner_seed, &path)?,
    )?
    .public_keys())
}

/// After the shared log's database made the staged pair current (`history`: its keys now),
/// rewrites the key directory to match: the staged pair becomes the current one, the old
/// seeds go, the retired pairs are `history`'s, and `public-keys.json` is rewritten. A
/// directory already promoted is left as it is.
pub fn promote_staged(keys_dir: &Path, history: &LedgerPublicKeys) -> Result<()> {
    let path = keys_dir.join(ROTATED_KEYS_FILE);
    let mut file = rotated_or_first(keys_dir)?;
    let pair = |log: &str, cosigner: &str| -> Result<LedgerPublicKeys> {
        Ok(LedgerKeys::from_seeds(
            &history.origin,
            &*seed_from_hex(log, &path)?,
            &*seed_from_hex(cosigner, &path)?,
        )?
        .public_keys())
    };
    let names = |p: &LedgerPublicKeys| {
        p.log_key == history.log_key && p.cosigner_key == history.cosigner_key
    };
    if !names(&pair(&file.log_seed, &file.cosigner_seed)?) {
        let staged = file.staged.take().ok_or_else(|| {
            LedgerError::Key(format!(
                "{} holds no staged pair: nothing to promote",
                keys_dir.display()
            ))
        })?;
        if !names(&pair(&staged.log_seed, &staged.cosigner_seed)?) {
            return Err(LedgerError::Key(format!(
                "the pair staged in {} is not the one the shared log signs with",
                keys_dir.display()
            )));
        }
        file.log_seed.clone_from(&staged.log_seed);
        file.cosigner_seed.clone_from(&staged.cosigner_seed);
    }
    file.retired.clone_from(&history.retired);
    write_rotated(keys_dir, &file)?;
    remove_first_seeds(keys_dir);
    write_atomic(
        &keys_dir.join(crate::store::PUBLIC_KEYS_FILE),
        public_keys_json(history).as_bytes(),
        0o644,
    )
    .map_err(|e| LedgerError::Damaged(e.to_string()))
}
