//! Registered agent definitions: each registration that changes the text is a new
//! version; the text is kept as given, validated with the same parser as `agentspace run`.

use std::path::{Path, PathBuf};

use agentspace_audit::AuditLog;
use agentspace_core::{AuditKind, Definition, Name};
use serde::Serialize;

use crate::audit::{AdminEvent, details, record};
use crate::auth::Caller;
use crate::error::{DefinitionProblem, ServerError};
use crate::store::{Db, Row, format_ms, now_ms};

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

pub(crate) struct Registry<'a> {
    pub(crate) db: &'a Db,
    pub(crate) audit: &'a AuditLog,
    pub(crate) state_dir: &'a Path,
}

/// The columns [`to_version`] reads, in order.
const VERSION_COLUMNS: &str = "name, version, digest, registered_by, registered_at";

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
        text: if with_text { Some(row.text(5)?) } else { None },
    })
}

impl Registry<'_> {
    /// Validates and stores `text` for the caller's tenant (a new version when it differs
    /// from the current one), audited as `definition_change`.
    pub(crate) fn register(&self, caller: &Caller, text: &str) -> Result<Registered, ServerError> {
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
        let definition = Definition::parse(&source_path(self.state_dir, &caller.tenant), text)?;
        if definition.tenant != caller.tenant {
            return Err(ServerError::Definition(vec![DefinitionProblem {
                field: Some("metadata.tenant".into()),
                line: text
                    .lines()
                    .position(|l| l.trim_start().starts_with("tenant:"))
                    .map(|i| i + 1),
                column: None,
                message: format!(
                    "the definition belongs to tenant `{}` but you are registering it in tenant `{}`; set `metadata.tenant: {}`",
                    definition.tenant, caller.tenant, caller.tenant
                ),
            }]));
        }
        let tenant = &caller.tenant;
        let name = definition.name.as_str();
        self.db.transaction(tenant.as_str(), |tx| {
            let current = tx.query_opt(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM definition
                     WHERE tenant = $1 AND name = $2 ORDER BY version DESC LIMIT 1"
                ),
                &[&tenant.as_str(), &name],
            )?;
            let next = match current {
                Some(row) if row.text(2)? == definition.digest => {
                    return Ok(Registered {
                        version: to_version(&row, false)?,
                        created: false,
                    });
                }
                Some(row) => to_version(&row, false)?.version.saturating_add(1),
                None => 1,
            };
            let now = now_ms();
            tx.execute(
                "INSERT INTO definition (tenant, name, version, digest, text, registered_by, registered_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &tenant.as_str(),
                    &name,
                    &i64::from(next),
                    &definition.digest,
                    &text,
                    &caller.user,
                    &now,
                ],
            )?;
            record(
                self.audit,
                AdminEvent {
                    tenant,
                    kind: AuditKind::DefinitionChange,
                    action: "register",
                    resource: format!("definition/{name}"),
                    by: &caller.user,
                    details: details([
                        ("version", next.into()),
                        ("definition_digest", definition.digest.clone().into()),
                    ]),
                },
            )?;
            Ok(Registered {
                version: DefinitionVersion {
                    name: name.to_owned(),
                    version: next,
                    digest: definition.digest.clone(),
                    registered_by: caller.user.clone(),
                    registered_at: format_ms(now),
                    text: None,
                },
                created: true,
            })
        })
    }

    /// The current version of each of the tenant's definitions.
    pub(crate) fn list(&self, tenant: &Name) -> Result<Vec<DefinitionVersion>, ServerError> {
        let rows = self.db.run(|c| {
            c.query(
                "SELECT d.name, d.version, d.digest, d.registered_by, d.registered_at FROM definition d
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
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM definition
                     WHERE tenant = $1 AND name = $2 ORDER BY version"
                ),
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
        let row = self.db.run(|c| {
            c.query_opt(
                &format!(
                    "SELECT {VERSION_COLUMNS}, text FROM definition
                     WHERE tenant = $1 AND name = $2 AND (CAST($3 AS BIGINT) IS NULL OR version = $3)
                     ORDER BY version DESC LIMIT 1"
                ),
                &[&tenant.as_str(), &name, &version.map(i64::from)],
            )
        })?;
        match row {
            Some(row) => to_version(&row, true),
            None => Err(match version {
                Some(v) => ServerError::not_found(
                    format!("definition `{name}` of tenant `{tenant}` has no version {v}"),
                    format!("list its versions with GET /v1/definitions/{name}/versions"),
                ),
                None => no_definition(tenant, name),
            }),
        }
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
