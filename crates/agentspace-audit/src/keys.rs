//! Per-tenant Ed25519 audit keys on disk, key ids and JWKS publication.
//!
//! Layout under `<state>/audit/keys/<tenant>/` (directory mode 0700):
//! - `<kid>.key.pem`: the PKCS#8 private key, mode 0600, never leaves the machine;
//! - `<kid>.pub.pem`: the SubjectPublicKeyInfo public key, mode 0644;
//! - `current`: the id of the key that signs new events.
//!
//! Old keys stay after a rotation so that old events keep verifying. The key id is the
//! RFC 7638 JWK thumbprint of the public key (RFC 8037 `OKP` members `crv`, `kty`, `x`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::AuditError;

/// The key that signs a tenant's new events.
#[derive(Debug)]
pub(crate) struct TenantKey {
    pub(crate) kid: String,
    pub(crate) signing: SigningKey,
}

/// Public keys a verifier trusts, by tenant and key id.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    by_tenant: BTreeMap<String, BTreeMap<String, VerifyingKey>>,
}

impl TrustedKeys {
    /// Trusts `key` for `tenant`.
    pub fn insert(&mut self, tenant: &str, key: VerifyingKey) {
        self.by_tenant
            .entry(tenant.to_owned())
            .or_default()
            .insert(kid_of(&key), key);
    }

    /// The key with id `kid` if it is trusted for `tenant`.
    pub(crate) fn get(&self, tenant: &str, kid: &str) -> Option<&VerifyingKey> {
        self.by_tenant.get(tenant)?.get(kid)
    }

    /// Reads a JWKS document (as written by [`jwks`]) whose keys carry an
    /// `agentspace_tenant` member naming the tenant they sign for.
    pub fn from_jwks(text: &str) -> Result<Self, AuditError> {
        let bad = |why: &str| AuditError::Io(format!("cannot read JWKS: {why}"));
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| bad("no `keys` array"))?;
        let mut out = Self::default();
        for k in keys {
            let field = |name: &str| k.get(name).and_then(|v| v.as_str()).unwrap_or_default();
            if field("kty") != "OKP" || field("crv") != "Ed25519" {
                return Err(bad("a key is not `kty: OKP`, `crv: Ed25519`"));
            }
            let tenant = field("agentspace_tenant");
            if tenant.is_empty() {
                return Err(bad("a key has no `agentspace_tenant`"));
            }
            let raw = URL_SAFE_NO_PAD
                .decode(field("x"))
                .map_err(|_| bad("`x` is not base64url"))?;
            let bytes: [u8; 32] = raw.try_into().map_err(|_| bad("`x` is not 32 bytes"))?;
            let key =
                VerifyingKey::from_bytes(&bytes).map_err(|_| bad("`x` is not an Ed25519 point"))?;
            if !field("kid").is_empty() && field("kid") != kid_of(&key) {
                return Err(bad("a `kid` is not the RFC 7638 thumbprint of its key"));
            }
            out.insert(tenant, key);
        }
        Ok(out)
    }
}

/// The RFC 7638 thumbprint of an Ed25519 public key, base64url without padding.
pub fn kid_of(key: &VerifyingKey) -> String {
    let x = URL_SAFE_NO_PAD.encode(key.as_bytes());
    let members = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(members.as_bytes()))
}

/// A JWKS document publishing `keys` for `tenant` (`use: sig`, `alg: EdDSA`).
pub fn jwks(tenant: &str, keys: &[VerifyingKey]) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                "kid": kid_of(k), "x": URL_SAFE_NO_PAD.encode(k.as_bytes()),
                "agentspace_tenant": tenant,
            })
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

/// The key directory `<state>/audit/keys`.
#[derive(Debug)]
pub(crate) struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn tenant_dir(&self, tenant: &str) -> PathBuf {
        // Tenants are checked against the name rule before they get here, so the
        // tenant is one safe path component.
        self.dir.join(tenant)
    }

    fn key_error(tenant: &str, message: String) -> AuditError {
        AuditError::Key {
            tenant: tenant.to_owned(),
            message,
        }
    }

    /// The current signing key of `tenant`, created on first use.
    pub(crate) fn signing_key(&self, tenant: &str) -> Result<Arc<TenantKey>, AuditError> {
        let dir = self.tenant_dir(tenant);
        let current = dir.join("current");
        match fs::read_to_string(&current) {
            Ok(kid) => self.load(tenant, kid.trim()).map(Arc::new),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.create(tenant, true),
            Err(e) => Err(Self::key_error(
                tenant,
                format!("cannot read `{}`: {e}", current.display()),
            )),
        }
    }

    /// Writes a new key pair for `tenant` without making it current (see [`Self::make_current`]).
    pub(crate) fn new_key(&self, tenant: &str) -> Result<Arc<TenantKey>, AuditError> {
        self.create(tenant, false)
    }

    /// Makes `key` the one that signs `tenant`'s new events; old keys stay for verification.
    pub(crate) fn make_current(&self, tenant: &str, key: &TenantKey) -> Result<(), AuditError> {
        let dir = self.tenant_dir(tenant);
        let tmp = dir.join(format!("current.{}.tmp", key.kid));
        let current = dir.join("current");
        write_new(&tmp, key.kid.as_bytes(), 0o644)
            .and_then(|()| fs::rename(&tmp, &current))
            .map_err(|e| {
                Self::key_error(
                    tenant,
                    format!("cannot replace `{}`: {e}", current.display()),
                )
            })
    }

    fn load(&self, tenant: &str, kid: &str) -> Result<TenantKey, AuditError> {
        if kid.is_empty()
            || !kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Self::key_error(
                tenant,
                format!("`current` names no valid key id: `{kid}`"),
            ));
        }
        let path = self.tenant_dir(tenant).join(format!("{kid}.key.pem"));
        let pem = fs::read_to_string(&path).map_err(|e| {
            Self::key_error(tenant, format!("cannot read `{}`: {e}", path.display()))
        })?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            Self::key_error(
                tenant,
                format!("`{}` is not a PKCS#8 Ed25519 key: {e}", path.display()),
            )
        })?;
        if kid_of(&signing.verifying_key()) != kid {
            return Err(Self::key_error(
                tenant,
                format!("`{}` does not hold key `{kid}`", path.display()),
            ));
        }
        Ok(TenantKey {
            kid: kid.to_owned(),
            signing,
        })
    }

    /// Writes a new key pair; with `first`, also links it in as the tenant's first
    /// current key (or returns the key another process linked in first).
    fn create(&self, tenant: &str, first: bool) -> Result<Arc<TenantKey>, AuditError> {
        let dir = self.tenant_dir(tenant);
        let io = |what: &str, p: &Path, e: std::io::Error| {
            Self::key_error(tenant, format!("cannot {what} `{}`: {e}", p.display()))
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io("create directory", &dir, e))?;
        let signing = SigningKey::generate(&mut rand_core::OsRng);
        let public = signing.verifying_key();
        let kid = kid_of(&public);
        let private_pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Self::key_error(tenant, format!("cannot encode key: {e}")))?;
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Self::key_error(tenant, format!("cannot encode public key: {e}")))?;
        let key_path = dir.join(format!("{kid}.key.pem"));
        write_new(&key_path, private_pem.as_bytes(), 0o600)
            .map_err(|e| io("write", &key_path, e))?;
        let pub_path = dir.join(format!("{kid}.pub.pem"));
        write_new(&pub_path, public_pem.as_bytes(), 0o644)
            .map_err(|e| io("write", &pub_path, e))?;
        if first {
            // `current` appears atomically, so a reader never sees it half written, and
            // linking fails if another process created the tenant's first key already.
            let current = dir.join("current");
            let tmp = dir.join(format!("current.{kid}.tmp"));
            write_new(&tmp, kid.as_bytes(), 0o644).map_err(|e| io("write", &tmp, e))?;
            let linked = fs::hard_link(&tmp, &current);
            let _ = fs::remove_file(&tmp);
            if let Err(e) = linked {
                let _ = fs::remove_file(&key_path);
                let _ = fs::remove_file(&pub_path);
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    return self.signing_key(tenant);
                }
                return Err(io("write", &current, e));
            }
        }
        Ok(Arc::new(TenantKey { kid, signing }))
    }

    /// Every public key of `tenant` found in its key directory.
    pub(crate) fn public_keys(&self, tenant: &str) -> Result<Vec<VerifyingKey>, AuditError> {
        let dir = self.tenant_dir(tenant);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Self::key_error(
                    tenant,
                    format!("cannot list `{}`: {e}", dir.display()),
                ));
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.to_string_lossy().ends_with(".pub.pem") {
                continue;
            }
            let pem = fs::read_to_string(&path).map_err(|e| {
                Self::key_error(tenant, format!("cannot read `{}`: {e}", path.display()))
            })?;
            let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
                Self::key_error(
                    tenant,
                    format!("`{}` is not an Ed25519 public key: {e}", path.display()),
                )
            })?;
            out.push(key);
        }
        out.sort_by_key(kid_of);
        Ok(out)
    }

    /// The tenants that have a key directory.
    pub(crate) fn tenants(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        out.sort();
        out
    }

    /// Trusted keys from this directory, for every tenant in it.
    pub(crate) fn trusted(&self) -> Result<TrustedKeys, AuditError> {
        let mut trusted = TrustedKeys::default();
        for tenant in self.tenants() {
            for key in self.public_keys(&tenant)? {
                trusted.insert(&tenant, key);
            }
        }
        Ok(trusted)
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
