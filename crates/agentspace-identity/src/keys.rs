//! Per-tenant Ed25519 signing keys on disk, rotation, and the JWKS.
//!
//! Layout under `<state>/identity/tenants/<tenant>/` (directories 0700, files 0600):
//! `signing-key.pem` holds the active private key (PKCS#8 PEM) and is the only file with
//! secret material; `keyring.json` holds the public half of the active key and of retired
//! keys that still verify; `lock` serialises creation and rotation across processes.
//! A retired key's private half is deleted at rotation: it only ever needs to verify.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agentspace_core::Name;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::IdentityError;
use crate::{MAX_CLOCK_SKEW_SECS, MAX_TOKEN_LIFETIME_SECS};

const SIGNING_KEY_FILE: &str = "signing-key.pem";
const KEYRING_FILE: &str = "keyring.json";
const LOCK_FILE: &str = "lock";

/// How long a retired key keeps verifying: long enough for every token it signed to expire.
pub(crate) const RETIRED_KEY_GRACE_SECS: u64 = MAX_TOKEN_LIFETIME_SECS + MAX_CLOCK_SKEW_SECS;

/// A JSON Web Key Set (RFC 7517) of a tenant's verification keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The active key first, then retired keys that still verify.
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key as a JWK (RFC 8037).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    /// Key id: the RFC 7638 thumbprint of the key.
    pub kid: String,
    /// Always `EdDSA`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub key_use: String,
}

/// What a rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The new active key's id.
    pub new_kid: String,
    /// The retired key's id (it still verifies until `retired_verifies_until`).
    pub retired_kid: String,
    /// When the retired key stops verifying (seconds since the Unix epoch).
    pub retired_verifies_until: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    keys: Vec<KeyringEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringEntry {
    kid: String,
    /// Public key, base64url.
    x: String,
    created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at: Option<u64>,
}

impl KeyringEntry {
    fn usable_at(&self, now: u64) -> bool {
        self.retired_at
            .is_none_or(|r| now <= r.saturating_add(RETIRED_KEY_GRACE_SECS))
    }
}

/// The active signing key of a tenant, with its header precomputed.
pub(crate) struct ActiveKey {
    pub(crate) kid: String,
    pub(crate) header_b64: String,
    pub(crate) key: SigningKey,
}

impl std::fmt::Debug for ActiveKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

struct PublicKey {
    entry: KeyringEntry,
    key: VerifyingKey,
}

/// Identifies one version of `keyring.json`: rewritten by rename, so the inode changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

#[derive(Default)]
struct TenantKeys {
    stamp: Option<FileStamp>,
    public: Vec<PublicKey>,
    active: Option<Arc<ActiveKey>>,
}

/// All tenants' keys under `<state>/identity/tenants/`, cached in memory and reloaded
/// when another process rotates.
pub(crate) struct KeyStore {
    root: PathBuf,
    cache: Mutex<HashMap<Name, Arc<TenantKeys>>>,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_owned();
    move |source| IdentityError::Io {
        action,
        path,
        source,
    }
}

fn corrupt(path: &Path, why: impl ToString) -> IdentityError {
    IdentityError::CorruptKeyStore {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// The RFC 7638 JWK thumbprint of an Ed25519 key, used as its `kid`.
fn thumbprint(key: &VerifyingKey) -> String {
    let x = URL_SAFE_NO_PAD.encode(key.as_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn stamp(path: &Path) -> Result<Option<FileStamp>, IdentityError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(FileStamp {
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            len: m.len(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// Writes `bytes` to `path` atomically with mode 0600: temp file, fsync, rename, fsync dir.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))?;
    Ok(())
}

fn read_keyring(path: &Path) -> Result<KeyringFile, IdentityError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyringFile { keys: Vec::new() }),
        Err(e) => Err(io("read", path)(e)),
    }
}

fn read_signing_key(path: &Path) -> Result<Option<SigningKey>, IdentityError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", path)(e)),
    };
    let mode = file
        .metadata()
        .map_err(io("read", path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecureKeyFile {
            path: path.to_owned(),
            mode,
        });
    }
    let pem = std::io::read_to_string(file).map_err(io("read", path))?;
    // The parse error never contains key bytes; it is reported without the file's text.
    SigningKey::from_pkcs8_pem(&pem)
        .map(Some)
        .map_err(|e| corrupt(path, format!("not a PKCS#8 Ed25519 key: {e}")))
}

fn public_keys(path: &Path, ring: &KeyringFile) -> Result<Vec<PublicKey>, IdentityError> {
    ring.keys
        .iter()
        .map(|entry| {
            let bytes = URL_SAFE_NO_PAD
                .decode(&entry.x)
                .map_err(|_| corrupt(path, format!("key `{}` is not base64url", entry.kid)))?;
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|_| corrupt(path, format!("key `{}` is not 32 bytes", entry.kid)))?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                corrupt(path, format!("key `{}` is not an Ed25519 point", entry.kid))
            })?;
            if thumbprint(&key) != entry.kid {
                return Err(corrupt(
                    path,
                    format!("key `{}` does not match its id", entry.kid),
                ));
            }
            Ok(PublicKey {
                entry: entry.clone(),
                key,
            })
        })
        .collect()
}

/// Holds the tenant's lock file locked until dropped.
struct TenantLock(File);

impl Drop for TenantLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl KeyStore {
    /// The key store under `identity_dir` (`<state>/identity`). Nothing is created until a
    /// tenant's key is first needed.
    pub(crate) fn new(identity_dir: PathBuf) -> Self {
        Self {
            root: identity_dir.join("tenants"),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn tenant_dir(&self, tenant: &Name) -> PathBuf {
        self.root.join(tenant.as_str())
    }

    fn lock(&self, dir: &Path) -> Result<TenantLock, IdentityError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create directory", dir))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        file.lock().map_err(io("lock", &path))?;
        Ok(TenantLock(file))
    }

    /// Under the tenant's lock: makes sure an active key exists and `keyring.json` lists
    /// it (creating the key on first use, repairing after a crash between the two writes).
    fn ensure_active_locked(
        &self,
        dir: &Path,
        now: u64,
    ) -> Result<(KeyringFile, SigningKey), IdentityError> {
        let key_path = dir.join(SIGNING_KEY_FILE);
        let ring_path = dir.join(KEYRING_FILE);
        let mut ring = read_keyring(&ring_path)?;
        let key = match read_signing_key(&key_path)? {
            Some(key) => key,
            None => {
                let key = generate_key(&key_path)?;
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| corrupt(&key_path, e))?;
                write_private(&key_path, pem.as_bytes())?;
                key
            }
        };
        let kid = thumbprint(&key.verifying_key());
        let listed_active = ring
            .keys
            .iter()
            .any(|e| e.kid == kid && e.retired_at.is_none());
        let others_active = ring
            .keys
            .iter()
            .any(|e| e.kid != kid && e.retired_at.is_none());
        if !listed_active || others_active {
            for entry in &mut ring.keys {
                if entry.kid != kid && entry.retired_at.is_none() {
                    entry.retired_at = Some(now);
                }
            }
            ring.keys.retain(|e| e.kid != kid && e.usable_at(now));
            ring.keys.insert(
                0,
                KeyringEntry {
                    kid,
                    x: URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
                    created_at: now,
                    retired_at: None,
                },
            );
            write_keyring(&ring_path, &ring)?;
        }
        Ok((ring, key))
    }

    /// Loads a tenant's keys from disk into the cache.
    fn load(
        &self,
        tenant: &Name,
        with_signer: bool,
        now: u64,
    ) -> Result<Arc<TenantKeys>, IdentityError> {
        let dir = self.tenant_dir(tenant);
        let ring_path = dir.join(KEYRING_FILE);
        let (ring, active, stamp) = if with_signer {
            let _lock = self.lock(&dir)?;
            let (ring, key) = self.ensure_active_locked(&dir, now)?;
            let kid = thumbprint(&key.verifying_key());
            let active = ActiveKey {
                header_b64: crate::jws::encoded_header(&kid),
                kid,
                key,
            };
            (ring, Some(Arc::new(active)), stamp(&ring_path)?)
        } else {
            // Stamp first: if the file changes while being read, the next call reloads.
            let stamp = stamp(&ring_path)?;
            (read_keyring(&ring_path)?, None, stamp)
        };
        let keys = Arc::new(TenantKeys {
            stamp,
            public: public_keys(&ring_path, &ring)?,
            active,
        });
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(tenant.clone(), Arc::clone(&keys));
        }
        Ok(keys)
    }

    /// The cached keys if `keyring.json` has not changed since they were loaded.
    fn cached(&self, tenant: &Name) -> Result<Option<Arc<TenantKeys>>, IdentityError> {
        let cached = self.cache.lock().ok().and_then(|c| c.get(tenant).cloned());
        let Some(keys) = cached else { return Ok(None) };
        let current = stamp(&self.tenant_dir(tenant).join(KEYRING_FILE))?;
        Ok((current == keys.stamp).then_some(keys))
    }

    /// The tenant's active signing key, created on first use.
    pub(crate) fn active_key(
        &self,
        tenant: &Name,
        now: u64,
    ) -> Result<Arc<ActiveKey>, IdentityError> {
        if let Some(active) = self.cached(tenant)?.and_then(|k| k.active.clone()) {
            return Ok(active);
        }
        let keys = self.load(tenant, true, now)?;
        keys.active
            .clone()
            .ok_or_else(|| corrupt(&self.tenant_dir(tenant), "no active key after loading"))
    }

    /// The key `kid` of `tenant` if it may verify tokens at `now`.
    pub(crate) fn verifying_key(
        &self,
        tenant: &Name,
        kid: &str,
        now: u64,
    ) -> Result<Option<VerifyingKey>, IdentityError> {
        let keys = match self.cached(tenant)? {
            Some(keys) => keys,
            None => self.load(tenant, false, now)?,
        };
        Ok(keys
            .public
            .iter()
            .find(|k| k.entry.kid == kid && k.entry.usable_at(now))
            .map(|k| k.key))
    }

    /// The tenant's JWKS (creating its first key if it has none).
    pub(crate) fn jwks(&self, tenant: &Name, now: u64) -> Result<Jwks, IdentityError> {
        self.active_key(tenant, now)?;
        let keys = match self.cached(tenant)? {
            Some(keys) => keys,
            None => self.load(tenant, false, now)?,
        };
        let keys = keys
            .public
            .iter()
            .filter(|k| k.entry.usable_at(now))
            .map(|k| Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: k.entry.x.clone(),
                kid: k.entry.kid.clone(),
                alg: "EdDSA".into(),
                key_use: "sig".into(),
            })
            .collect();
        Ok(Jwks { keys })
    }

    /// Makes a new active key; the old one verifies for [`RETIRED_KEY_GRACE_SECS`] more.
    pub(crate) fn rotate(&self, tenant: &Name, now: u64) -> Result<Rotation, IdentityError> {
        let dir = self.tenant_dir(tenant);
        let _lock = self.lock(&dir)?;
        let (_, old) = self.ensure_active_locked(&dir, now)?;
        let retired_kid = thumbprint(&old.verifying_key());
        drop(old);
        let key_path = dir.join(SIGNING_KEY_FILE);
        let key = generate_key(&key_path)?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| corrupt(&key_path, e))?;
        // The new private key replaces the old one first; ensure_active_locked then lists
        // it and retires the old one, the same repair a crash between the writes gets.
        write_private(&key_path, pem.as_bytes())?;
        drop(pem);
        self.ensure_active_locked(&dir, now)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(tenant);
        }
        Ok(Rotation {
            new_kid: thumbprint(&key.verifying_key()),
            retired_kid,
            retired_verifies_until: now.saturating_add(RETIRED_KEY_GRACE_SECS),
        })
    }
}

fn write_keyring(path: &Path, ring: &KeyringFile) -> Result<(), IdentityError> {
    let mut bytes = serde_json::to_vec_pretty(ring)?;
    bytes.push(b'\n');
    write_private(path, &bytes)
}

/// A new key from the operating system's random source (an error, not a panic, if it fails).
fn generate_key(path: &Path) -> Result<SigningKey, IdentityError> {
    use rand_core::RngCore as _;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand_core::OsRng
        .try_fill_bytes(seed.as_mut())
        .map_err(|e| IdentityError::Io {
            action: "get random bytes for a new key for",
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_rfc_7638_thumbprints() {
        // RFC 8037, appendix A.3.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let key = VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        assert_eq!(
            thumbprint(&key),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
