//! Revocations in the control plane's PostgreSQL database, for several hosts: a
//! revocation made on any host (through the API, `agentspace revoke`, or a task's stop)
//! is seen by the next decision of every `agentspace run` on every host that shares the
//! database. Without a database URL they stay in the state directory's SQLite file, as
//! the policy crate keeps them.
//!
//! Each change bumps `revocation_version` in its transaction, and each decision reads
//! that one number: the table itself is re-read only after a change.

use std::path::Path;

use agentspace_policy::{RevocationBackend, Revocations, StoredRevocation};

use crate::error::ServerError;
use crate::store::{Conn, Db};

/// The revocation store of `state_dir`, or of the PostgreSQL database at `database_url`
/// (migrated with [`crate::migrate`]).
pub fn revocations(
    state_dir: &Path,
    database_url: Option<&str>,
) -> Result<Revocations, ServerError> {
    Ok(match database_url {
        Some(url) => Revocations::with_backend(Box::new(Shared {
            db: Db::open_postgres(url)?,
        })),
        None => Revocations::open(state_dir)?,
    })
}

/// Revocations in the control-plane database.
struct Shared {
    db: Db,
}

/// Every revocation change takes this write lock (no tenant's: revocations are read
/// across tenants by every decision).
const SCOPE: &str = "revocations";

fn bump(tx: &mut dyn Conn) -> Result<(), ServerError> {
    tx.execute(
        "UPDATE revocation_version SET version = version + 1 WHERE id = 1",
        &[],
    )?;
    Ok(())
}

impl RevocationBackend for Shared {
    fn describe(&self) -> String {
        self.db.display().to_owned()
    }

    fn put(&self, r: &StoredRevocation) -> Result<(), String> {
        self.db
            .transaction(SCOPE, |tx| {
                tx.execute(
                    "INSERT INTO revocation (kind, tenant, subject, detail, reason, revoked_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (kind, tenant, subject, detail)
                     DO UPDATE SET reason = excluded.reason, revoked_at = excluded.revoked_at",
                    &[
                        &r.kind,
                        &r.tenant,
                        &r.subject,
                        &r.detail,
                        &r.reason,
                        &r.revoked_at,
                    ],
                )?;
                bump(tx)
            })
            .map_err(|e| e.to_string())
    }

    fn remove(&self, r: &StoredRevocation) -> Result<bool, String> {
        self.db
            .transaction(SCOPE, |tx| {
                let n = tx.execute(
                    "DELETE FROM revocation WHERE kind = $1 AND tenant = $2 AND subject = $3 AND detail = $4",
                    &[&r.kind, &r.tenant, &r.subject, &r.detail],
                )?;
                if n > 0 {
                    bump(tx)?;
                }
                Ok(n > 0)
            })
            .map_err(|e| e.to_string())
    }

    fn all(&self) -> Result<Vec<StoredRevocation>, String> {
        let rows = self
            .db
            .run(|c| {
                c.query(
                    "SELECT kind, tenant, subject, detail, reason, revoked_at FROM revocation
                     ORDER BY revoked_at, kind, tenant, subject, detail",
                    &[],
                )
            })
            .map_err(|e| e.to_string())?;
        rows.iter()
            .map(|r| {
                Ok(StoredRevocation {
                    kind: r.text(0)?,
                    tenant: r.text(1)?,
                    subject: r.text(2)?,
                    detail: r.text(3)?,
                    reason: r.text(4)?,
                    revoked_at: r.int(5)?,
                })
            })
            .collect::<Result<_, ServerError>>()
            .map_err(|e| e.to_string())
    }

    fn version(&self) -> Result<i64, String> {
        self.db
            .run(|c| {
                c.query_one("SELECT version FROM revocation_version WHERE id = 1", &[])?
                    .int(0)
            })
            .map_err(|e| e.to_string())
    }
}
