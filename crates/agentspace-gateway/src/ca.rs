//! The per-tenant certificate authority of TLS interception: created on first use under
//! `<state>/gateway/ca/<tenant>/` (directory 0700, `ca.key.pem` 0600, `ca.pem` 0644),
//! leaf certificates minted per host name and cached.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use agentspace_core::Name;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::error::GatewayError;

/// Leaf certificates are valid this long; a cached leaf is re-minted after a week.
const LEAF_VALIDITY: Duration = Duration::days(30);
const LEAF_REUSE: StdDuration = StdDuration::from_secs(7 * 24 * 3600);
/// Cached leaves per tenant; past this the cache starts over (a client naming endless
/// hosts costs key generations, not memory).
const LEAF_CACHE: usize = 4096;

/// The ALPN protocols the gateway offers to agents.
pub(crate) const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The CAs of every tenant, loaded or created on first use.
pub struct CaStore {
    root: PathBuf,
    provider: Arc<CryptoProvider>,
    tenants: Mutex<HashMap<String, Arc<TenantCa>>>,
}

impl CaStore {
    /// The store under `<state_dir>/gateway/ca/`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("gateway").join("ca"),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The CA of `tenant`, created on first use.
    pub fn tenant(&self, tenant: &Name) -> Result<Arc<TenantCa>, GatewayError> {
        let mut tenants = self.tenants.lock().map_err(|_| GatewayError::Certificate {
            action: "load the tenant CA".into(),
            detail: "a thread panicked while holding the CA table".into(),
        })?;
        if let Some(ca) = tenants.get(tenant.as_str()) {
            return Ok(Arc::clone(ca));
        }
        let ca = Arc::new(TenantCa::load_or_create(
            &self.root.join(tenant.as_str()),
            tenant.as_str(),
            Arc::clone(&self.provider),
        )?);
        tenants.insert(tenant.as_str().to_owned(), Arc::clone(&ca));
        Ok(ca)
    }
}

/// One tenant's interception CA.
pub struct TenantCa {
    cert_path: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<HashMap<String, (Arc<ServerConfig>, Instant)>>,
}

impl std::fmt::Debug for TenantCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

fn cert_error(action: &str, e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Certificate {
        action: action.to_owned(),
        detail: e.to_string(),
    }
}

fn state_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GatewayError {
    let path = path.to_owned();
    move |source| GatewayError::State {
        action,
        path,
        source,
    }
}

/// The CA's subject and key usages: fixed, so a CA reloaded from its key alone issues
/// leaves whose issuer matches the stored certificate.
fn ca_params(tenant: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Agent Space");
    dn.push(
        DnType::CommonName,
        format!("Agent Space interception CA for tenant {tenant}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes `contents` to `path` only if it does not exist yet, atomically (written to a
/// temporary file, then hard-linked), so concurrent gateways agree on one file.
fn write_once(path: &Path, contents: &[u8], mode: u32) -> Result<(), GatewayError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(state_error("create", &tmp))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(state_error("write", &tmp))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(state_error("create", path)(e)),
    }
}

impl TenantCa {
    fn load_or_create(
        dir: &Path,
        tenant: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, GatewayError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(state_error("create", dir))?;
        let key_path = dir.join("ca.key.pem");
        let cert_path = dir.join("ca.pem");
        if !key_path.exists() {
            let key = KeyPair::generate().map_err(|e| cert_error("generate the CA key", e))?;
            write_once(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        }
        let key_pem = fs::read_to_string(&key_path).map_err(state_error("read", &key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            cert_error(
                &format!("load the CA key `{}`", key_path.display()),
                format!("{e}; remove the directory to start a new CA (agents must then trust the new one)"),
            )
        })?;
        if !cert_path.exists() {
            let now = OffsetDateTime::now_utc();
            let mut params = ca_params(tenant);
            params.not_before = now - Duration::days(1);
            params.not_after = now + Duration::days(3650);
            let cert = params
                .self_signed(&key)
                .map_err(|e| cert_error("sign the CA certificate", e))?;
            write_once(&cert_path, cert.pem().as_bytes(), 0o644)?;
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(state_error("read", &cert_path))?;
        Ok(Self {
            cert_path,
            cert_pem,
            issuer: Issuer::new(ca_params(tenant), key),
            provider,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate file the cell's trust store must include.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server configuration presenting a leaf for `host` (a DNS name or an IP
    /// address), minted on first use and cached.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, GatewayError> {
        let host = host.to_ascii_lowercase();
        if let Ok(leaves) = self.leaves.lock()
            && let Some((config, minted)) = leaves.get(&host)
            && minted.elapsed() < LEAF_REUSE
        {
            return Ok(Arc::clone(config));
        }
        let config = Arc::new(self.mint(&host)?);
        if let Ok(mut leaves) = self.leaves.lock() {
            if leaves.len() >= LEAF_CACHE {
                leaves.clear();
            }
            leaves.insert(host, (Arc::clone(&config), Instant::now()));
        }
        Ok(config)
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, GatewayError> {
        let action = format!("mint a certificate for `{host}`");
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| cert_error(&action, e))?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|e| cert_error(&action, e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| cert_error(&action, e))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| cert_error(&action, e))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| cert_error(&action, e))?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_created_once_with_private_key_mode_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = Name::new("acme").unwrap();
        let store = CaStore::new(dir.path());
        let ca = store.tenant(&tenant).unwrap();
        let key = dir.path().join("gateway/ca/acme/ca.key.pem");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let ca_dir = dir.path().join("gateway/ca/acme");
        assert_eq!(
            fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let first = ca.cert_pem().to_owned();
        ca.server_config("api.example.com").unwrap();
        ca.server_config("127.0.0.1").unwrap();
        // A second gateway (or a restart) keeps the same CA.
        let again = CaStore::new(dir.path()).tenant(&tenant).unwrap();
        assert_eq!(again.cert_pem(), first);
    }
}
