//! Keys held on a PKCS#11 token (a hardware security module; SoftHSM2 in tests),
//! through the `cryptoki` crate.
//!
//! A key store whose directory holds [`HSM_CONFIG_FILE`] keeps its receipt keys on the
//! token named there: they are generated on the token as non-extractable, sensitive
//! private keys (`CKA_EXTRACTABLE` false, `CKA_SENSITIVE` true), found again by `CKA_ID`
//! (the key id, SHA-256 of the public key) and used through `CKM_EDDSA`. The key store
//! keeps only a reference (`secret/<id>.json` of format [`TOKEN_KEY_FORMAT`]) and the
//! public record. ML-DSA-65 manifest keys go on the token only when it offers PKCS#11 3.2's
//! ML-DSA ([`Token::offers_ml_dsa`]), else they stay in software: SoftHSM2 2.6 and most HSMs
//! in service do not implement it.
//!
//! The user PIN is read from a file (owner-only, [`crate::filestore::read_secret`]) each
//! time the token needs a login, handed to the module and wiped; it is never in an
//! argument, a log line or an error (errors name the token, the operation and the
//! PKCS#11 return value).
//!
//! A process loads each module once and initialises it once (`C_Initialize` may be called
//! once per process): contexts and logged-in sessions are shared by every store that names
//! the same module and token. A session the token closed (a removed or restarted device)
//! is opened again, and the operation tried once more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};

use crate::error::{CryptoError, Result};
use crate::filestore::{read_secret, write_atomic};
use crate::keys::{Algorithm, KeyId};

mod keys;

pub use keys::TokenKey;

/// The file in a key store's directory that puts its Ed25519 keys on a token.
pub const HSM_CONFIG_FILE: &str = "pkcs11.json";
const HSM_CONFIG_FORMAT: &str = "trackshift.pkcs11.v1";
/// Format of the reference a key store keeps for a key held on the token.
pub const TOKEN_KEY_FORMAT: &str = "trackshift.pkcs11-key.v1";
/// PKCS#11 token labels are 32 bytes, blank-padded.
const MAX_LABEL: usize = 32;
/// `CKA_EC_PARAMS` for Ed25519: the printable string "edwards25519" (RFC 8410 names it by
/// OID too; this form is the one every Ed25519-capable token accepts).
const ED25519_PARAMS: &[u8] = b"\x13\x0cedwards25519";

/// Which PKCS#11 module and token a key store uses, and where the user PIN is.
/// Not secret: the PIN itself stays in `pin_file` (owner-only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    format: String,
    /// The PKCS#11 module (shared library), an absolute path.
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The file holding the user PIN, an absolute path.
    pub pin_file: PathBuf,
}

impl HsmConfig {
    /// Checks and builds a configuration: the module and PIN file must exist (both made
    /// absolute), the label must be 1 to 32 bytes; the PIN file is read once to check its
    /// permissions (owner-only) and that it is not empty.
    pub fn new(module: &Path, token: &str, pin_file: &Path) -> Result<Self> {
        let module = std::fs::canonicalize(module)
            .map_err(|e| CryptoError::io("finding the PKCS#11 module", module, e))?;
        let pin_file = std::fs::canonicalize(pin_file)
            .map_err(|e| CryptoError::io("finding the PIN file", pin_file, e))?;
        if token.is_empty() || token.len() > MAX_LABEL {
            return Err(CryptoError::malformed(
                "token label",
                format!("{token:?} must be 1 to {MAX_LABEL} bytes"),
            ));
        }
        let cfg = Self {
            format: HSM_CONFIG_FORMAT.into(),
            module,
            token: token.into(),
            pin_file,
        };
        cfg.read_pin()?;
        Ok(cfg)
    }

    /// The configuration in key store directory `dir`, if it has one.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(HSM_CONFIG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CryptoError::io("reading", &path, e)),
        };
        let cfg: Self = serde_json::from_slice(&bytes).map_err(|e| {
            CryptoError::malformed("PKCS#11 configuration", format!("{}: {e}", path.display()))
        })?;
        if cfg.format != HSM_CONFIG_FORMAT {
            return Err(CryptoError::malformed(
                "PKCS#11 configuration",
                format!("{}: format {:?}", path.display(), cfg.format),
            ));
        }
        Ok(Some(cfg))
    }

    /// Writes the configuration into key store directory `dir` (atomically, 0644).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).expect("config serialises") + "\n";
        write_atomic(&dir.join(HSM_CONFIG_FILE), json.as_bytes(), 0o644)
    }

    /// The PIN, from the PIN file (one line; a final newline is not part of it).
    fn read_pin(&self) -> Result<AuthPin> {
        let bytes = read_secret(&self.pin_file)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            CryptoError::malformed(
                "PIN file",
                format!("{} is not UTF-8 text", self.pin_file.display()),
            )
        })?;
        let pin = text.strip_suffix('\n').unwrap_or(text);
        let pin = pin.strip_suffix('\r').unwrap_or(pin);
        if pin.is_empty() || pin.contains('\n') {
            return Err(CryptoError::malformed(
                "PIN file",
                format!(
                    "{} must hold the PIN alone on one line",
                    self.pin_file.display()
                ),
            ));
        }
        Ok(AuthPin::new(pin.into()))
    }
}

/// The reference a key store keeps for a key on the token (no secret material).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenKeyRef {
    pub format: String,
    pub key_id: KeyId,
    pub algorithm: Algorithm,
    /// The token's label when the key was made (a key found on another token is refused).
    pub token: String,
}

/// A logged-in connection to one token of one module, shared in the process.
pub struct Token {
    cfg: HsmConfig,
    ctx: Pkcs11,
    slot: Slot,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.cfg.module)
            .field("token", &self.cfg.token)
            .finish_non_exhaustive()
    }
}

/// Modules loaded and initialised in this process, by path; tokens opened, by module and
/// label. Never unloaded: `C_Finalize` would end every other user's sessions.
fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static M: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// Open tokens by module path and label.
type Tokens = Mutex<HashMap<(PathBuf, String), Arc<Token>>>;

fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// Loads and initialises `module` once per process.
pub fn module(module: &Path) -> Result<Pkcs11> {
    let mut map = modules().lock().expect("module lock");
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| hsm_error(module, "loading the module", e))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(hsm_error(module, "initialising the module", e)),
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

fn hsm_error(module: &Path, action: &'static str, source: CkError) -> CryptoError {
    CryptoError::Hsm {
        token: module.display().to_string(),
        action,
        source: Box::new(source),
    }
}

/// True for the errors after which a new session (and login) may succeed.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent,
            _
        )
    )
}

impl Token {
    /// The token `cfg` names, logged in as its user (shared by every caller in the
    /// process that names the same module and label).
    pub fn open(cfg: &HsmConfig) -> Result<Arc<Self>> {
        let key = (cfg.module.clone(), cfg.token.clone());
        if let Some(t) = tokens().lock().expect("token lock").get(&key)
            && t.cfg == *cfg
        {
            return Ok(t.clone());
        }
        let ctx = module(&cfg.module)?;
        let slot = find_slot(&ctx, cfg)?;
        let token = Arc::new(Self {
            cfg: cfg.clone(),
            ctx,
            slot,
            session: Mutex::new(None),
        });
        token.with_session("logging in", |_| Ok(()))?;
        tokens()
            .lock()
            .expect("token lock")
            .insert(key, token.clone());
        Ok(token)
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.cfg.token
    }

    fn error(&self, action: &'static str, source: CkError) -> CryptoError {
        CryptoError::Hsm {
            token: format!("token {:?}", self.cfg.token),
            action,
            source: Box::new(source),
        }
    }

    /// Opens a read-write session and logs in (a login other sessions already made counts).
    fn login(&self) -> Result<Session> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(|e| self.error("opening a session", e))?;
        let pin = self.cfg.read_pin()?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, Function::Login)) => {
                Ok(session)
            }
            Err(e) => Err(self.error("logging in (check the PIN file)", e)),
        }
    }

    /// Runs `f` on the shared session, opening (and logging in) one when there is none or
    /// when the token lost the last one, then trying once more.
    fn with_session<T>(
        &self,
        action: &'static str,
        f: impl Fn(&Session) -> std::result::Result<T, CkError>,
    ) -> Result<T> {
        let mut guard = self.session.lock().expect("session lock");
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.login()?);
            }
            match f(guard.as_ref().expect("just opened")) {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && session_lost(&e) => *guard = None,
                Err(e) => return Err(self.error(action, e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Whether the token offers PKCS#11 3.2's ML-DSA key generation and signing: then a key
    /// store on it keeps its ML-DSA-65 manifest keys there too, else in software.
    pub fn offers_ml_dsa(&self) -> Result<bool> {
        let list = self
            .ctx
            .get_mechanism_list(self.slot)
            .map_err(|e| self.error("listing mechanisms", e))?;
        Ok(list.contains(&MechanismType::ML_DSA_KEY_PAIR_GEN)
            && list.contains(&MechanismType::ML_DSA))
    }

    /// Generates a key pair with `mechanism` on the token, both objects labelled `label`, the
    /// public one with `param` (its curve or parameter set), the private one sensitive,
    /// non-extractable and for signing only.
    fn generate_pair(
        &self,
        what: &'static str,
        mechanism: &Mechanism,
        param: Attribute,
        label: &str,
    ) -> Result<(ObjectHandle, ObjectHandle)> {
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            param,
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        self.with_session(what, |s| {
            s.generate_key_pair(mechanism, &public_template, &private_template)
        })
    }

    /// The bytes of attribute `what` (`CKA_EC_POINT`, `CKA_VALUE`) of a public key object.
    fn read_attribute(&self, object: ObjectHandle, what: AttributeType) -> Result<Vec<u8>> {
        let attrs = self.with_session("reading the public key", |s| {
            s.get_attributes(object, &[what])
        })?;
        attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(v) | Attribute::Value(v) => Some(v),
                _ => None,
            })
            .ok_or_else(|| {
                CryptoError::malformed("token key", format!("no {what} on the public key"))
            })
    }

    /// Gives both objects of a new pair the key id as `CKA_ID`.
    fn identify_pair(&self, public: ObjectHandle, private: ObjectHandle, id: &KeyId) -> Result<()> {
        self.with_session("labelling the key", |s| {
            s.update_attributes(public, &[Attribute::Id(id.0.to_vec())])?;
            s.update_attributes(private, &[Attribute::Id(id.0.to_vec())])
        })
    }

    /// The Ed25519 private key object of key `id`, if the token holds it.
    fn find_private(&self, id: &KeyId) -> Result<Option<ObjectHandle>> {
        self.find_private_of(id, KeyType::EC_EDWARDS)
    }

    /// The private key object of key `id` and type `key_type`, if the token holds it.
    fn find_private_of(&self, id: &KeyId, key_type: KeyType) -> Result<Option<ObjectHandle>> {
        let template = [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(key_type),
            Attribute::Id(id.0.to_vec()),
        ];
        let found = self.with_session("finding a key", |s| s.find_objects(&template))?;
        Ok(found.into_iter().next())
    }

    /// Destroys key `id`'s objects on the token (a revoked key never signs again).
    /// Returns how many objects went.
    pub fn destroy(&self, id: &KeyId) -> Result<usize> {
        let template = [Attribute::Id(id.0.to_vec())];
        let found = self.with_session("finding a key", |s| s.find_objects(&template))?;
        for &h in &found {
            self.with_session("destroying a revoked key", |s| s.destroy_object(h))?;
        }
        Ok(found.len())
    }

    /// Runs `f` on a logged-in session of this token (tests read attributes with it).
    pub fn inspect<T>(&self, f: impl Fn(&Session) -> std::result::Result<T, CkError>) -> Result<T> {
        self.with_session("inspecting the token", f)
    }

    /// The private key object of key `id` (tests inspect its attributes).
    pub fn private_key_object(&self, id: &KeyId) -> Result<Option<ObjectHandle>> {
        self.find_private(id)
    }
}

fn find_slot(ctx: &Pkcs11, cfg: &HsmConfig) -> Result<Slot> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| hsm_error(&cfg.module, "listing slots", e))?;
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| hsm_error(&cfg.module, "reading token information", e))?;
        if info.label() == cfg.token {
            return Ok(slot);
        }
    }
    Err(CryptoError::malformed(
        "PKCS#11 configuration",
        format!(
            "module {} has no token labelled {:?}",
            cfg.module.display(),
            cfg.token
        ),
    ))
}

/// Initialises a token in a free slot of `module` with `label`, the security officer's PIN
/// and the user's PIN, as an HSM's own tools do (`softhsm2-util --init-token`), but through
/// PKCS#11 so that no PIN is on a command line. For tests and a first setup of SoftHSM2;
/// the PINs are the caller's to keep secret.
pub fn init_token(module_path: &Path, label: &str, so_pin: &str, user_pin: &str) -> Result<()> {
    let ctx = module(module_path)?;
    // One at a time in the process: two callers would pick the same free slot.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().expect("init lock");
    let err = |action| move |e| hsm_error(module_path, action, e);
    let slots = ctx.get_all_slots().map_err(err("listing slots"))?;
    let mut free = None;
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(err("reading token information"))?;
        if info.label() == label && info.token_initialized() {
            return Err(CryptoError::malformed(
                "token label",
                format!("a token labelled {label:?} exists already"),
            ));
        }
        if free.is_none() && !info.token_initialized() {
            free = Some(slot);
        }
    }
    let slot = free.ok_or_else(|| {
        CryptoError::malformed("PKCS#11 module", "no free slot to initialise a token in")
    })?;
    let so = AuthPin::new(so_pin.into());
    ctx.init_token(slot, &so, label)
        .map_err(err("initialising the token"))?;
    // The slot of the new token (SoftHSM2 gives it a new id).
    let slot = ctx
        .get_slots_with_token()
        .map_err(err("listing slots"))?
        .into_iter()
        .find(|&s| ctx.get_token_info(s).is_ok_and(|i| i.label() == label))
        .ok_or_else(|| CryptoError::malformed("token label", "the new token is not listed"))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(err("opening a session"))?;
    session
        .login(UserType::So, Some(&so))
        .map_err(err("logging in as security officer"))?;
    session
        .init_pin(&AuthPin::new(user_pin.into()))
        .map_err(err("setting the user PIN"))?;
    session.logout().map_err(err("logging out"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_label_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("module.so");
        std::fs::write(&module, b"").unwrap();
        let pin = dir.path().join("pin");
        write_atomic(&pin, b"1234\n", 0o600).unwrap();
        let cfg = HsmConfig::new(&module, "ts", &pin).unwrap();
        {
            use secrecy::ExposeSecret as _;
            assert_eq!(cfg.read_pin().unwrap().expose_secret(), "1234");
        }
        assert!(HsmConfig::new(&module, "", &pin).is_err());
        assert!(HsmConfig::new(&module, &"x".repeat(33), &pin).is_err());
        assert!(HsmConfig::new(&dir.path().join("none.so"), "ts", &pin).is_err());
        // A PIN file others may read is refused, and the error names the fix, not the PIN.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = HsmConfig::new(&module, "ts", &pin).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("1234"), "{e}");
        // Two lines, or an empty file, are not a PIN.
        write_atomic(&pin, b"12\n34\n", 0o600).unwrap();
        assert!(HsmConfig::new(&module, "ts", &pin).is_err());
        write_atomic(&pin, b"\n", 0o600).unwrap();
        assert!(HsmConfig::new(&module, "ts", &pin).is_err());
        // Saved and loaded again as it was.
        write_atomic(&pin, b"1234", 0o600).unwrap();
        let cfg = HsmConfig::new(&module, "ts", &pin).unwrap();
        cfg.save(dir.path()).unwrap();
        assert_eq!(HsmConfig::load(dir.path()).unwrap(), Some(cfg));
        assert_eq!(HsmConfig::load(&dir.path().join("none")).unwrap(), None);
    }
}
