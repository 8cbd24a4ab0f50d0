//! Fixtures shared by the integration tests of several crates. Test code only: it panics
//! on any failure, which is what a test fixture should do.
//!
//! [`TestDatabase`]: a PostgreSQL database of one test, on the server
//! `AGENTSPACE_TEST_POSTGRES_URL` names (`. scripts/services` starts one and sets it), with
//! login roles made for it; all dropped at the end. Without the variable, tests skip with a
//! message, except under CI (`CI=true`), where they fail.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fixture fails its test by panicking"
)]

use std::sync::Mutex;

/// The variable that names the PostgreSQL server tests use (as a superuser URL).
pub const POSTGRES_URL_VAR: &str = "AGENTSPACE_TEST_POSTGRES_URL";

/// Whether PostgreSQL tests can run: `true` when the server is named; otherwise a
/// message and `false`, or, under CI, a panic (CI must never skip them).
pub fn postgres_available() -> bool {
    if std::env::var(POSTGRES_URL_VAR).is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{POSTGRES_URL_VAR} is not set: CI must start PostgreSQL and set it (`. scripts/services` does)"
    );
    eprintln!(
        "skipping the PostgreSQL test: set {POSTGRES_URL_VAR}=postgres://USER:PASS@127.0.0.1/DB (`. scripts/services` as root does)"
    );
    false
}

/// A name no other test (in this or another process) uses at the same time.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// `url` with its database replaced, and its login when given (`user:password`).
fn with_db(url: &str, db: &str, login: Option<&str>) -> String {
    let (base, _) = url.rsplit_once('/').unwrap();
    let base = match login {
        Some(login) => {
            let (scheme, rest) = base.split_once("://").unwrap();
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{login}@{host}")
        }
        None => base.to_owned(),
    };
    format!("{base}/{db}")
}

/// A fresh, empty PostgreSQL database for one test, dropped (with the login roles made
/// for it) when this is dropped.
pub struct TestDatabase {
    server_url: String,
    name: String,
    roles: Mutex<Vec<String>>,
}

impl TestDatabase {
    /// A new database named after `prefix`; `None` when PostgreSQL tests cannot run here
    /// (see [`postgres_available`]).
    pub fn new(prefix: &str) -> Option<Self> {
        if !postgres_available() {
            return None;
        }
        let server_url = std::env::var(POSTGRES_URL_VAR).unwrap();
        let name = unique(prefix);
        postgres::Client::connect(&server_url, postgres::NoTls)
            .unwrap()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        Some(Self {
            server_url,
            name,
            roles: Mutex::new(Vec::new()),
        })
    }

    /// The database's URL, as the superuser (its owner, for migrations).
    pub fn url(&self) -> String {
        with_db(&self.server_url, &self.name, None)
    }

    /// A connection as the owner.
    pub fn owner(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }

    /// A new login role that is a member of `roles` (and holds nothing else); its URL.
    pub fn login(&self, roles: &[&str]) -> String {
        let mut made = self.roles.lock().unwrap();
        let role = format!("{}_login{}", self.name, made.len());
        self.owner()
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD 'test-pass' IN ROLE {}",
                roles.join(", ")
            ))
            .unwrap();
        made.push(role.clone());
        with_db(
            &self.server_url,
            &self.name,
            Some(&format!("{role}:test-pass")),
        )
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut server) = postgres::Client::connect(&self.server_url, postgres::NoTls) {
            let _ = server.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
            let roles = self.roles.lock().map(|r| r.clone()).unwrap_or_default();
            for role in roles {
                let _ = server.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
            }
        }
    }
}
