//! Registered agent definitions: each registration that changes the text is a new
//! version; the text is kept as given, validated with the same parser as `agentspace run`.
//!
//! A version registered through the API may not name anything on the server host (the
//! runner refuses it); a version registered on the host by its operator
//! (`agentspace definition register`) is *host-trusted*: it keeps the path of the file
//! it came from, against whose directory its relative paths resolve.

use std::path::{Path, PathBuf};

use agentspace_audit::AuditLog;
use agentspace_core::{AuditKind, Definition, Name};
use serde::Serialize;

use crate::audit::{AdminEvent, details, record, record_refusal};
use crate::auth::Caller;
use crate::error::{DefinitionProblem, ServerError};
use crate::store::{Conn, Db, Row, format_ms, now_ms};

/// Largest definition accepted, in bytes.
pub(crate) const MAX_DEFINITION: usize = 256 * 1024;

/// Most lines a diff compares on each side.
const MAX_DIFF_LINES: usize = 2000;

/// One version of a registered definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DefinitionVersion {
    /// The agent's name.
    pub name: String,
    /// The version, from 1.
    pub version: u32,
    /// `sha256:<hex>` of the text.
    pub digest: String,
    /// Who registered it.
    pub registered_by: String,
    /// When.
    pub registered_at: String,
    /// Registered on the server host by its operator (`agentspace definition register`):
    /// it may name host paths and host commands, which the runner then allows.
    pub host: bool,
    /// The definition text (only on single-version answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The result of a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Registered {
    /// The version now current.
    #[serde(flatten)]
    pub version: DefinitionVersion,
    /// False when the text equals the current version (nothing new was stored).
    pub created: bool,
}

/// The path a registered definition is parsed as: relative paths in it resolve inside
/// the control plane's directory, never against the server's working directory.
pub(crate) fn source_path(state_dir: &Path, tenant: &Name) -> PathBuf {
    state_dir
        .join("server")
        .join("definitions")
        .join(tenant.as_str())
        .join("definition.yaml")
}

/// Where a registration comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Origin<'a> {
    /// The API or the console: the text may not name host paths or commands.
    Api,
    /// The server host's operator, from this file (absolute): trusted to name host
    /// paths and commands, resolved against the file's directory.
    Host(&'a Path),
}

impl Origin<'_> {
    fn host_source(self) -> Option<String> {
        match self {
            Self::Api => None,
            Self::Host(path) => Some(path.display().to_string()),
        }
    }
}

pub(crate) struct Registry<'a> {
    pub(crate) db: &'a Db,
    pub(crate) audit: &'a AuditLog,
    pub(crate) state_dir: &'a Path,
}

/// One version as read from a row of [`VERSION_COLUMNS`] (with its text when asked).
fn to_version(row: &Row, with_text: bool) -> Result<DefinitionVersion, ServerError> {
    let version = row.int(1)?;
    Ok(DefinitionVersion {
        name: row.text(0)?,
        version: u32::try_from(version).map_err(|_| ServerError::Store {
            path: "control-plane database".to_owned(),
            message: format!("stored definition version {version} is out of range"),
        })?,
        digest: row.text(2)?,
        registered_by: row.text(3)?,
        registered_at: format_ms(row.int(4)?),
        host: row.opt_text(6)?.is_some(),
        text: if with_text { Some(row.text(5)?) } else { None },
    })
}

/// A stored version from a row of [`VERSION_COLUMNS`].
fn to_stored(row: &Row) -> Result<StoredVersion, ServerError> {
    Ok(StoredVersion {
        version: to_version(row, true)?,
        text: row.text(5)?,
        host_source: row.opt_text(6)?.map(PathBuf::from),
    })
}

/// One stored version with everything the runner needs.
pub(crate) struct StoredVersion {
    /// The version as the API shows it (with its text).
    pub(crate) version: DefinitionVersion,
    /// The text as registered.
    pub(crate) text: String,
    /// For host-trusted versions, the file it was registered from (absolute).
    pub(crate) host_source: Option<PathBuf>,
}

impl StoredVersion {
    /// The path the text is parsed as: the original file for host-trusted versions
    /// (relative paths resolve as with `agentspace run -f` on it), else a path inside
    /// the control plane's directory.
    pub(crate) fn source(&self, state_dir: &Path, tenant: &Name) -> PathBuf {
        self.host_source
            .clone()
            .unwrap_or_else(|| source_path(state_dir, tenant))
    }

    /// The validated definition.
    pub(crate) fn parse(&self, state_dir: &Path, tenant: &Name) -> Result<Definition, ServerError> {
        Ok(Definition::parse(
            &self.source(state_dir, tenant),
            &self.text,
        )?)
    }
}

/// The columns [`to_version`] and [`to_stored`] read, in order.
const VERSION_COLUMNS: &str =
    "name, version, digest, registered_by, registered_at, text, host_source";

impl Registry<'_> {
    /// Validates and stores `text` for the caller's tenant (a new version when it differs
    /// from the current one), audited as `definition_change`.
    pub(crate) fn register(&self, caller: &Caller, text: &str) -> Result<Registered, ServerError> {
        self.register_from(&caller.tenant, &caller.user, text, Origin::Api)
    }

    /// Validates and stores `text` for `tenant` as registered by `by` from `origin`. A
    /// new version is made unless the current one has the same text and origin;
    /// audited as `definition_change` (`details.via` = `host` for the host's operator).
    pub(crate) fn register_from(
        &self,
        tenant: &Name,
        by: &str,
        text: &str,
        origin: Origin<'_>,
    ) -> Result<Registered, ServerError> {
        if text.len() > MAX_DEFINITION {
            return Err(ServerError::Definition(vec![DefinitionProblem {
                field: None,
                line: None,
                column: None,
                message: format!(
                    "the definition is {} bytes; the most accepted is {MAX_DEFINITION}",
                    text.len()
                ),
            }]));
        }
        let source = match origin {
            Origin::Api => source_path(self.state_dir, tenant),
            Origin::Host(path) => path.to_owned(),
        };
        let definition = Definition::parse(&source, text)?;
        if definition.tenant != *tenant {
            return Err(ServerError::Definition(vec![DefinitionProblem {
                field: Some("metadata.tenant".into()),
                line: text
                    .lines()
                    .position(|l| l.trim_start().starts_with("tenant:"))
                    .map(|i| i + 1),
                column: None,
                message: format!(
                    "the definition belongs to tenant `{}` but you are registering it in tenant `{tenant}`; set `metadata.tenant: {tenant}`",
                    definition.tenant
                ),
            }]));
        }
        let host_source = origin.host_source();
        let name = definition.name.as_str();
        self.db.transaction(tenant.as_str(), |tx| {
            if host_source.is_some() && !tenant_exists(tx, tenant)? {
                return Err(ServerError::not_found(
                    format!("there is no tenant `{tenant}`"),
                    format!(
                        "create it with `agentspace serve --bootstrap-admin USER --tenant {tenant}`"
                    ),
                ));
            }
            let current = current_version(tx, tenant, name)?;
            if let (None, Some(row)) = (&host_source, &current)
                && let Some(file) = row.opt_text(6)?
            {
                // The name is the host operator's: an API version would take it over,
                // and approvers and `--agent NAME` would get the API's text under the
                // name they trust.
                return Err(self.refuse_shadowing(tenant, by, name, &file));
            }
            let next = match current {
                Some(row)
                    if row.text(2)? == definition.digest && row.opt_text(6)? == host_source =>
                {
                    return Ok(Registered {
                        version: to_version(&row, false)?,
                        created: false,
                    });
                }
                Some(row) => to_version(&row, false)?.version.saturating_add(1),
                None => 1,
            };
            let now = now_ms();
            insert_version(
                tx,
                NewVersion {
                    tenant,
                    name,
                    version: next,
                    digest: &definition.digest,
                    text,
                    by,
                    at: now,
                    host_source: host_source.as_deref(),
                },
            )?;
            let mut details = details([
                ("version", next.into()),
                ("definition_digest", definition.digest.clone().into()),
            ]);
            if host_source.is_some() {
                details.insert("via".into(), "host".into());
                details.insert("host_trusted".into(), true.into());
            }
            record(
                self.audit,
                AdminEvent {
                    tenant,
                    kind: AuditKind::DefinitionChange,
                    action: "register",
                    resource: format!("definition/{name}"),
                    by,
                    details,
                },
            )?;
            Ok(Registered {
                version: DefinitionVersion {
                    name: name.to_owned(),
                    version: next,
                    digest: definition.digest.clone(),
                    registered_by: by.to_owned(),
                    registered_at: format_ms(now),
                    host: host_source.is_some(),
                    text: None,
                },
                created: true,
            })
        })
    }

    /// The refusal of an API registration of `name`, whose current version the host's
    /// operator registered from `file`; audited as a denied `definition_change`.
    fn refuse_shadowing(&self, tenant: &Name, by: &str, name: &str, file: &str) -> ServerError {
        let problem = format!(
            "definition `{name}` was registered on the server host by its operator (from `{file}`); a version registered through the API may not take over its name"
        );
        let refusal = record_refusal(
            self.audit,
            AdminEvent {
                tenant,
                kind: AuditKind::DefinitionChange,
                action: "register",
                resource: format!("definition/{name}"),
                by,
                details: details([("host_trusted_name", true.into())]),
            },
            &problem,
        );
        if let Err(e) = refusal {
            return e;
        }
        ServerError::conflict(
            problem,
            format!(
                "register under another `metadata.name`, or ask the host's operator to run `agentspace definition register -f {file} --tenant {tenant}` with your change"
            ),
        )
    }

    /// The current version of each of the tenant's definitions.
    pub(crate) fn list(&self, tenant: &Name) -> Result<Vec<DefinitionVersion>, ServerError> {
        let rows = self.db.run(|c| {
            c.query(
                "SELECT d.name, d.version, d.digest, d.registered_by, d.registered_at, '', d.host_source FROM definition d
                 WHERE d.tenant = $1 AND d.version = (SELECT MAX(version) FROM definition e WHERE e.tenant = d.tenant AND e.name = d.name)
                 ORDER BY d.name",
                &[&tenant.as_str()],
            )
        })?;
        rows.iter().map(|r| to_version(r, false)).collect()
    }

    /// Every version of one definition, oldest first (404 when there is none).
    pub(crate) fn versions(
        &self,
        tenant: &Name,
        name: &str,
    ) -> Result<Vec<DefinitionVersion>, ServerError> {
        let rows = self.db.run(|c| {
            c.query(
                "SELECT name, version, digest, registered_by, registered_at, '', host_source FROM definition
                 WHERE tenant = $1 AND name = $2 ORDER BY version",
                &[&tenant.as_str(), &name],
            )
        })?;
        if rows.is_empty() {
            return Err(no_definition(tenant, name));
        }
        rows.iter().map(|r| to_version(r, false)).collect()
    }

    /// One version with its text; the current one when `version` is `None`.
    pub(crate) fn get(
        &self,
        tenant: &Name,
        name: &str,
        version: Option<u32>,
    ) -> Result<DefinitionVersion, ServerError> {
        Ok(self.stored(tenant, name, version)?.version)
    }

    /// One version with its text and origin; the current one when `version` is `None`.
    pub(crate) fn stored(
        &self,
        tenant: &Name,
        name: &str,
        version: Option<u32>,
    ) -> Result<StoredVersion, ServerError> {
        let row = self.db.run(|c| {
            c.query_opt(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM definition
                     WHERE tenant = $1 AND name = $2 AND (CAST($3 AS BIGINT) IS NULL OR version = $3)
                     ORDER BY version DESC LIMIT 1"
                ),
                &[&tenant.as_str(), &name, &version.map(i64::from)],
            )
        })?;
        match row {
            Some(row) => to_stored(&row),
            None => Err(match version {
                Some(v) => ServerError::not_found(
                    format!("definition `{name}` of tenant `{tenant}` has no version {v}"),
                    format!("list its versions with GET /v1/definitions/{name}/versions"),
                ),
                None => no_definition(tenant, name),
            }),
        }
    }

    /// The newest version of `agent` whose text has `digest` (what a task ran), if any.
    pub(crate) fn by_digest(
        &self,
        tenant: &Name,
        agent: &str,
        digest: &str,
    ) -> Result<Option<StoredVersion>, ServerError> {
        let row = self.db.run(|c| {
            c.query_opt(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM definition
                     WHERE tenant = $1 AND name = $2 AND digest = $3
                     ORDER BY version DESC LIMIT 1"
                ),
                &[&tenant.as_str(), &agent, &digest],
            )
        })?;
        row.as_ref().map(to_stored).transpose()
    }

    /// A unified line diff between two versions.
    pub(crate) fn diff(
        &self,
        tenant: &Name,
        name: &str,
        from: u32,
        to: u32,
    ) -> Result<String, ServerError> {
        let a = self.get(tenant, name, Some(from))?;
        let b = self.get(tenant, name, Some(to))?;
        let (a, b) = (a.text.unwrap_or_default(), b.text.unwrap_or_default());
        let a: Vec<&str> = a.lines().collect();
        let b: Vec<&str> = b.lines().collect();
        if a.len() > MAX_DIFF_LINES || b.len() > MAX_DIFF_LINES {
            return Err(ServerError::bad_request(
                format!("the versions have more than {MAX_DIFF_LINES} lines"),
                "fetch both versions and compare them locally",
            ));
        }
        let mut out = format!("--- {name} v{from}\n+++ {name} v{to}\n");
        for (tag, line) in line_diff(&a, &b) {
            out.push(tag);
            out.push_str(line);
            out.push('\n');
        }
        Ok(out)
    }
}

/// Whether `tenant` exists.
fn tenant_exists(c: &mut dyn Conn, tenant: &Name) -> Result<bool, ServerError> {
    c.query_one(
        "SELECT EXISTS(SELECT 1 FROM tenant WHERE name = $1)",
        &[&tenant.as_str()],
    )?
    .bool(0)
}

/// The newest version of one definition.
fn current_version(
    c: &mut dyn Conn,
    tenant: &Name,
    name: &str,
) -> Result<Option<Row>, ServerError> {
    c.query_opt(
        &format!(
            "SELECT {VERSION_COLUMNS} FROM definition
             WHERE tenant = $1 AND name = $2 ORDER BY version DESC LIMIT 1"
        ),
        &[&tenant.as_str(), &name],
    )
}

/// A version to store.
struct NewVersion<'a> {
    tenant: &'a Name,
    name: &'a str,
    version: u32,
    digest: &'a str,
    text: &'a str,
    by: &'a str,
    at: i64,
    host_source: Option<&'a str>,
}

fn insert_version(c: &mut dyn Conn, v: NewVersion<'_>) -> Result<u64, ServerError> {
    c.execute(
        "INSERT INTO definition (tenant, name, version, digest, text, registered_by, registered_at, host_source)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &v.tenant.as_str(),
            &v.name,
            &i64::from(v.version),
            &v.digest,
            &v.text,
            &v.by,
            &v.at,
            &v.host_source,
        ],
    )
}

fn no_definition(tenant: &Name, name: &str) -> ServerError {
    ServerError::not_found(
        format!("tenant `{tenant}` has no definition `{name}`"),
        "list definitions with GET /v1/definitions; register one with POST /v1/definitions",
    )
}

/// Every line of `a` and `b` tagged ` `, `-` or `+`, from a longest common subsequence.
fn line_diff<'t>(a: &[&'t str], b: &[&'t str]) -> Vec<(char, &'t str)> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j] = length of the LCS of a[i..] and b[j..], in one flat vector.
    let width = m + 1;
    let mut lcs = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            let v = if a.get(i) == b.get(j) {
                lcs.get((i + 1) * width + j + 1).copied().unwrap_or(0) + 1
            } else {
                let down = lcs.get((i + 1) * width + j).copied().unwrap_or(0);
                let right = lcs.get(i * width + j + 1).copied().unwrap_or(0);
                down.max(right)
            };
            if let Some(cell) = lcs.get_mut(i * width + j) {
                *cell = v;
            }
        }
    }
    let at = |i: usize, j: usize| lcs.get(i * width + j).copied().unwrap_or(0);
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n + m);
    while i < n || j < m {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                out.push((' ', *x));
                i += 1;
                j += 1;
            }
            (Some(x), Some(_)) if at(i + 1, j) >= at(i, j + 1) => {
                out.push(('-', *x));
                i += 1;
            }
            (_, Some(y)) => {
                out.push(('+', *y));
                j += 1;
            }
            (Some(x), None) => {
                out.push(('-', *x));
                i += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn diff_marks_changed_lines() {
        let a = ["a", "b", "c"];
        let b = ["a", "x", "c", "d"];
        assert_eq!(
            line_diff(&a, &b),
            vec![(' ', "a"), ('-', "b"), ('+', "x"), (' ', "c"), ('+', "d")]
        );
    }
}
