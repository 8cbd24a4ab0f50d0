//! Agent Space secrets: credentials the gateway injects on the way out, never seen by
//! the agent. Each tenant's secrets are sealed at rest under `<state>/secrets/<tenant>/`
//! with ChaCha20-Poly1305 and a per-tenant key (`master.key`, 0600, in a 0700
//! directory); each sealed file is bound to its tenant and name, so files cannot be
//! swapped. Values are held in zeroized memory and never printed: [`SecretValue`]'s
//! `Debug` shows only its length.
//!
//! The key sits next to the sealed files: sealing protects against copies of the
//! secrets directory without the key (backups, logs, a misplaced `tar`), not against
//! someone who can read the whole state directory as its owner.
#![forbid(unsafe_code)]

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use agentspace_core::Name;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The first bytes of every sealed file (format version 1).
const MAGIC: &[u8; 4] = b"ASS1";
const KEY_FILE: &str = "master.key";
const SUFFIX: &str = ".sealed";
/// Largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Why a secret could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The name is not a valid secret name.
    #[error(
        "invalid secret name `{0}`: use 1-64 characters from a-z, 0-9, `-`, `_` and `.`, starting with a letter or digit"
    )]
    InvalidName(String),
    /// No secret of that name.
    #[error(
        "no secret `{name}` in tenant `{tenant}`; set it with `agentspace secret set --tenant {tenant} {name}`"
    )]
    NotFound {
        /// The tenant.
        tenant: String,
        /// The secret's name.
        name: String,
    },
    /// The value is empty or too long.
    #[error("secret `{0}` must be 1 to {MAX_SECRET_BYTES} bytes long")]
    InvalidValue(String),
    /// A file could not be read or written.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A sealed file or the key is damaged, or was moved from another name or tenant.
    #[error(
        "secret file `{0}` cannot be opened: it is damaged or does not belong to this tenant and name; set the secret again"
    )]
    Corrupt(PathBuf),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// A secret value: zeroized when dropped, never shown by `Debug`.
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// The value's bytes. Handle with care: never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(<{} bytes redacted>)", self.0.len())
    }
}

/// The secrets of every tenant under one state directory.
#[derive(Clone, Debug)]
pub struct SecretStore {
    root: PathBuf,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SecretError {
    let path = path.to_owned();
    move |source| SecretError::Io {
        action,
        path,
        source,
    }
}

fn check_name(name: &str) -> Result<(), SecretError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        });
    if ok {
        Ok(())
    } else {
        Err(SecretError::InvalidName(name.to_owned()))
    }
}

fn aad(tenant: &Name, name: &str) -> String {
    format!("agentspace-secret:v1:{}:{name}", tenant.as_str())
}

/// Writes `bytes` to `path` through a temporary file and a rename, with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SecretError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))
}

impl SecretStore {
    /// The store under `<state_dir>/secrets/`.
    pub fn open(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("secrets"),
        }
    }

    fn tenant_dir(&self, tenant: &Name) -> Result<PathBuf, SecretError> {
        let dir = self.root.join(tenant.as_str());
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("create", &dir))?;
        Ok(dir)
    }

    /// The tenant's key, created on first use.
    fn key(&self, dir: &Path) -> Result<LessSafeKey, SecretError> {
        let path = dir.join(KEY_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut fresh = Zeroizing::new(vec![0u8; 32]);
                SystemRandom::new()
                    .fill(&mut fresh)
                    .map_err(|_| SecretError::Random)?;
                // create_new: two writers racing keep the first key.
                match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                {
                    Ok(mut f) => {
                        f.write_all(&fresh)
                            .and_then(|()| f.sync_all())
                            .map_err(io("write", &path))?;
                        fresh
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Zeroizing::new(fs::read(&path).map_err(io("read", &path))?)
                    }
                    Err(e) => return Err(io("create", &path)(e)),
                }
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| SecretError::Corrupt(path.clone()))?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Stores `value` as `name` in `tenant`, replacing any previous value.
    pub fn set(&self, tenant: &Name, name: &str, value: &[u8]) -> Result<(), SecretError> {
        check_name(name)?;
        if value.is_empty() || value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::InvalidValue(name.to_owned()));
        }
        let dir = self.tenant_dir(tenant)?;
        let key = self.key(&dir)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut sealed = Zeroizing::new(value.to_vec());
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(tenant, name).as_bytes()),
            &mut *sealed,
        )
        .map_err(|_| SecretError::Random)?;
        let mut file = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&sealed);
        write_atomic(&dir.join(format!("{name}{SUFFIX}")), &file, 0o600)
    }

    /// The value of `name` in `tenant`.
    pub fn get(&self, tenant: &Name, name: &str) -> Result<SecretValue, SecretError> {
        check_name(name)?;
        let dir = self.root.join(tenant.as_str());
        let path = dir.join(format!("{name}{SUFFIX}"));
        let file = match fs::read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretError::NotFound {
                    tenant: tenant.as_str().to_owned(),
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        let corrupt = || SecretError::Corrupt(path.clone());
        let rest = file.strip_prefix(MAGIC.as_slice()).ok_or_else(corrupt)?;
        let nonce = rest.get(..NONCE_LEN).ok_or_else(corrupt)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
        let mut sealed = Zeroizing::new(rest.get(NONCE_LEN..).ok_or_else(corrupt)?.to_vec());
        let key = self.key(&dir)?;
        let plain = key
            .open_in_place(nonce, Aad::from(aad(tenant, name).as_bytes()), &mut sealed)
            .map_err(|_| corrupt())?;
        Ok(SecretValue(Zeroizing::new(plain.to_vec())))
    }

    /// The names of `tenant`'s secrets, sorted.
    pub fn list(&self, tenant: &Name) -> Result<Vec<String>, SecretError> {
        let dir = self.root.join(tenant.as_str());
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("read", &dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("read", &dir))?;
            if let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|f| f.strip_suffix(SUFFIX))
                && check_name(name).is_ok()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes `name` from `tenant`; whether it existed.
    pub fn remove(&self, tenant: &Name, name: &str) -> Result<bool, SecretError> {
        check_name(name)?;
        let path = self
            .root
            .join(tenant.as_str())
            .join(format!("{name}{SUFFIX}"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn tenant(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn secrets_round_trip_sealed_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(dir.path());
        let acme = tenant("acme");
        store.set(&acme, "stripe-key", b"sk_test_123").unwrap();
        assert_eq!(
            store.get(&acme, "stripe-key").unwrap().expose(),
            b"sk_test_123"
        );
        assert_eq!(store.list(&acme).unwrap(), vec!["stripe-key".to_owned()]);
        // Sealed: the value is not in any file.
        let tdir = dir.path().join("secrets/acme");
        for entry in fs::read_dir(&tdir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            assert!(!bytes.windows(11).any(|w| w == b"sk_test_123"), "{path:?}");
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            fs::metadata(&tdir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Debug never shows the value.
        let shown = format!("{:?}", store.get(&acme, "stripe-key").unwrap());
        assert!(!shown.contains("sk_test"), "{shown}");
        // Replace, remove.
        store.set(&acme, "stripe-key", b"sk_test_456").unwrap();
        assert_eq!(
            store.get(&acme, "stripe-key").unwrap().expose(),
            b"sk_test_456"
        );
        assert!(store.remove(&acme, "stripe-key").unwrap());
        assert!(!store.remove(&acme, "stripe-key").unwrap());
        assert!(matches!(
            store.get(&acme, "stripe-key"),
            Err(SecretError::NotFound { .. })
        ));
    }

    #[test]
    fn a_sealed_file_moved_to_another_name_or_tenant_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(dir.path());
        let acme = tenant("acme");
        store.set(&acme, "a", b"value-a").unwrap();
        store.set(&acme, "b", b"value-b").unwrap();
        let root = dir.path().join("secrets/acme");
        fs::copy(root.join("a.sealed"), root.join("b.sealed")).unwrap();
        assert!(matches!(
            store.get(&acme, "b"),
            Err(SecretError::Corrupt(_))
        ));
        // Another tenant has another key.
        let other = tenant("globex");
        store.set(&other, "x", b"y").unwrap();
        fs::copy(
            root.join("a.sealed"),
            dir.path().join("secrets/globex/a.sealed"),
        )
        .unwrap();
        assert!(matches!(
            store.get(&other, "a"),
            Err(SecretError::Corrupt(_))
        ));
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(dir.path());
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "UPPER",
            "x".repeat(65).as_str(),
        ] {
            let e = store.set(&tenant("acme"), bad, b"v").unwrap_err();
            assert!(matches!(e, SecretError::InvalidName(_)), "{bad}: {e}");
        }
        assert!(matches!(
            store.set(&tenant("acme"), "empty", b""),
            Err(SecretError::InvalidValue(_))
        ));
    }
}
