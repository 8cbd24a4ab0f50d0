//! Tenants, users, roles and API tokens.
//!
//! A token is `ast_<id>_<secret>`: `id` (16 random bytes, hex) finds the row, `secret`
//! (32 random bytes, hex) is never stored; the row keeps SHA-256 of it, compared in
//! constant time. A token is shown once, when it is made.

use std::collections::BTreeSet;
use std::fmt;

use agentspace_audit::AuditLog;
use agentspace_core::{AuditKind, Name, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::{AdminEvent, details, record};
use crate::error::ServerError;
use crate::store::{Conn, Db, format_ms, now_ms, random_hex};

/// What a user may do in their tenant.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in the tenant: users, roles, tokens, revocations, definitions.
    Admin,
    /// Approve or deny held actions; see the event stream and approvals.
    Approver,
    /// Read the audit log (query, verify, export), approvals, revocations.
    Auditor,
    /// Register definitions; see tasks and secret names.
    Developer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Approver, Role::Auditor, Role::Developer];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Developer => "developer",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn roles_text(roles: &BTreeSet<Role>) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn roles_parse(text: &str) -> BTreeSet<Role> {
    // An unknown stored role grants nothing (fail closed).
    text.split(',').filter_map(Role::parse).collect()
}

/// Who is calling: an authenticated user of one tenant.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// The tenant; every query is confined to it.
    pub(crate) tenant: Name,
    /// The user's name in the tenant.
    pub(crate) user: String,
    /// The user's roles.
    pub(crate) roles: BTreeSet<Role>,
    /// The id of the token used.
    pub(crate) token_id: String,
}

impl Caller {
    /// Ok when the caller holds one of `allowed`; a 403 naming them otherwise.
    pub(crate) fn require(&self, allowed: &[Role]) -> Result<(), ServerError> {
        if allowed.iter().any(|r| self.roles.contains(r)) {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        Err(ServerError::forbidden(
            format!(
                "user `{}` of tenant `{}` lacks the role for this: it needs one of {}",
                self.user,
                self.tenant,
                names.join(", ")
            ),
            "ask an admin of your tenant to grant the role (PUT /v1/users/{name}/roles)",
        ))
    }
}

/// A user as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// The tenant.
    pub tenant: String,
    /// The user's name.
    pub name: String,
    /// The user's roles.
    pub roles: Vec<Role>,
    /// When the user was added.
    pub created_at: String,
}

/// A token's metadata (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// The token's id (the part after `ast_`, before the secret).
    pub id: String,
    /// The user it belongs to.
    pub user: String,
    /// A label given when it was made.
    pub label: String,
    /// When it was made.
    pub created_at: String,
}

/// A new token: the only time its secret is shown.
#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    /// The token's metadata.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer token. Shown once; only its SHA-256 is kept.
    pub token: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("info", &self.info)
            .field("token", &"<redacted>")
            .finish()
    }
}

const TOKEN_PREFIX: &str = "ast_";

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) fn valid_user(name: &str) -> Result<(), ServerError> {
    // A user name is a UserId (what tasks act for) that is also safe in a URL path.
    UserId::new(name).map_err(|e| {
        ServerError::bad_request(e.to_string(), "use 1-256 characters without whitespace")
    })?;
    if name.contains('/') || name.contains('?') || name.contains('#') || name.contains('%') {
        return Err(ServerError::bad_request(
            format!("user name `{name}` contains `/`, `?`, `#` or `%`"),
            "use letters, digits and `._@-`",
        ));
    }
    Ok(())
}

/// Tenants, users and tokens in the control-plane database.
pub(crate) struct Accounts<'a> {
    pub(crate) db: &'a Db,
    pub(crate) audit: &'a AuditLog,
}

impl Accounts<'_> {
    /// Checks a bearer token; `None` (a 401 for the caller) for anything but a live token.
    pub(crate) fn authenticate(&self, token: &str) -> Result<Option<Caller>, ServerError> {
        let Some(rest) = token.strip_prefix(TOKEN_PREFIX) else {
            return Ok(None);
        };
        let Some((id, secret)) = rest.split_once('_') else {
            return Ok(None);
        };
        if id.len() != 32 || secret.len() != 64 {
            return Ok(None);
        }
        let row = self.db.run(|c| {
            c.query_opt(
                r#"SELECT t.tenant, t."user", t.hash, u.roles FROM token t
                   JOIN "user" u ON u.tenant = t.tenant AND u.name = t."user" WHERE t.id = $1"#,
                &[&id],
            )
        })?;
        let Some(row) = row else {
            // Hash anyway so a missing id costs the same as a wrong secret.
            let _ = hash_secret(secret);
            return Ok(None);
        };
        let given = hash_secret(secret);
        if !bool::from(given.as_bytes().ct_eq(row.text(2)?.as_bytes())) {
            return Ok(None);
        }
        let tenant = row.text(0)?;
        let tenant = Name::new(&tenant).map_err(|e| ServerError::Store {
            path: "control-plane database".to_owned(),
            message: format!("stored tenant `{tenant}` is not a valid name: {e}"),
        })?;
        Ok(Some(Caller {
            tenant,
            user: row.text(1)?,
            roles: roles_parse(&row.text(3)?),
            token_id: id.to_owned(),
        }))
    }

    /// Creates a tenant with its first admin and that admin's first token. Refuses a
    /// tenant that exists.
    pub(crate) fn bootstrap(&self, tenant: &Name, admin: &str) -> Result<NewToken, ServerError> {
        valid_user(admin)?;
        self.db.transaction(tenant.as_str(), |tx| {
            let exists = tx
                .query_one(
                    "SELECT EXISTS(SELECT 1 FROM tenant WHERE name = $1)",
                    &[&tenant.as_str()],
                )?
                .bool(0)?;
            if exists {
                return Err(ServerError::conflict(
                    format!("tenant `{tenant}` exists already"),
                    "an admin of the tenant adds users and tokens through the API (POST /v1/users, POST /v1/users/{name}/tokens)",
                ));
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO tenant (name, created_at) VALUES ($1, $2)",
                &[&tenant.as_str(), &now],
            )?;
            tx.execute(
                r#"INSERT INTO "user" (tenant, name, roles, created_at) VALUES ($1, $2, 'admin', $3)"#,
                &[&tenant.as_str(), &admin, &now],
            )?;
            let token = insert_token(tx, tenant, admin, "bootstrap")?;
            record(
                self.audit,
                AdminEvent {
                    tenant,
                    kind: AuditKind::PolicyChange,
                    action: "tenant_bootstrap",
                    resource: format!("user/{admin}"),
                    by: admin,
                    details: details([
                        ("roles", serde_json::json!(["admin"])),
                        ("token_id", token.info.id.clone().into()),
                    ]),
                },
            )?;
            Ok(token)
        })
    }

    /// The caller's tenant's users.
    pub(crate) fn users(&self, tenant: &Name) -> Result<Vec<User>, ServerError> {
        let rows = self.db.run(|c| {
            c.query(
                r#"SELECT name, roles, created_at FROM "user" WHERE tenant = $1 ORDER BY name"#,
                &[&tenant.as_str()],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(User {
                    tenant: tenant.to_string(),
                    name: r.text(0)?,
                    roles: roles_parse(&r.text(1)?).into_iter().collect(),
                    created_at: format_ms(r.int(2)?),
                })
            })
            .collect()
    }

    /// Adds a user (or, with `replace`, sets an existing user's roles), audited.
    pub(crate) fn put_user(
        &self,
        caller: &Caller,
        name: &str,
        roles: &BTreeSet<Role>,
        create: bool,
    ) -> Result<User, ServerError> {
        valid_user(name)?;
        let tenant = &caller.tenant;
        self.db.transaction(tenant.as_str(), |tx| {
            let existing = tx.query_opt(
                r#"SELECT created_at FROM "user" WHERE tenant = $1 AND name = $2"#,
                &[&tenant.as_str(), &name],
            )?;
            let now = now_ms();
            let created_at = match (create, existing) {
                (true, Some(_)) => {
                    return Err(ServerError::conflict(
                        format!("user `{name}` exists already in tenant `{tenant}`"),
                        format!("change the user's roles with PUT /v1/users/{name}/roles"),
                    ));
                }
                (false, None) => return Err(no_user(tenant, name)),
                (true, None) => {
                    tx.execute(
                        r#"INSERT INTO "user" (tenant, name, roles, created_at) VALUES ($1, $2, $3, $4)"#,
                        &[&tenant.as_str(), &name, &roles_text(roles), &now],
                    )?;
                    now
                }
                (false, Some(row)) => {
                    tx.execute(
                        r#"UPDATE "user" SET roles = $3 WHERE tenant = $1 AND name = $2"#,
                        &[&tenant.as_str(), &name, &roles_text(roles)],
                    )?;
                    ensure_an_admin(tx, tenant)?;
                    row.int(0)?
                }
            };
            let roles_json: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            record(
                self.audit,
                AdminEvent {
                    tenant,
                    kind: AuditKind::PolicyChange,
                    action: if create { "user_add" } else { "user_roles" },
                    resource: format!("user/{name}"),
                    by: &caller.user,
                    details: details([("roles", serde_json::json!(roles_json))]),
                },
            )?;
            Ok(User {
                tenant: tenant.to_string(),
                name: name.to_owned(),
                roles: roles.iter().copied().collect(),
                created_at: format_ms(created_at),
            })
        })
    }

    /// Removes a user and their tokens, audited. The last admin cannot be removed.
    pub(crate) fn delete_user(&self, caller: &Caller, name: &str) -> Result<(), ServerError> {
        let tenant = &caller.tenant;
        self.db.transaction(tenant.as_str(), |tx| {
            let n = tx.execute(
                r#"DELETE FROM "user" WHERE tenant = $1 AND name = $2"#,
                &[&tenant.as_str(), &name],
            )?;
            if n == 0 {
                return Err(no_user(tenant, name));
            }
            ensure_an_admin(tx, tenant)?;
            record(
                self.audit,
                AdminEvent {
                    tenant,
                    kind: AuditKind::PolicyChange,
                    action: "user_remove",
                    resource: format!("user/{name}"),
                    by: &caller.user,
                    details: serde_json::Map::new(),
                },
            )?;
            Ok(())
        })
    }

    /// Makes a token for `user` of the caller's tenant, audited.
    pub(crate) fn create_token(
        &self,
        caller: &Caller,
        user: &str,
        label: &str,
    ) -> Result<NewToken, ServerError> {
        let tenant = &caller.tenant;
        if label.len() > 200 || label.chars().any(char::is_control) {
            return Err(ServerError::bad_request(
                "the token label is longer than 200 characters or has control characters",
                "give a short, printable label",
            ));
        }
        self.db.transaction(tenant.as_str(), |tx| {
            if !user_exists(tx, tenant, user)? {
                return Err(no_user(tenant, user));
            }
            let token = insert_token(tx, tenant, user, label)?;
            record(
                self.audit,
                AdminEvent {
                    tenant,
                    kind: AuditKind::PolicyChange,
                    action: "token_create",
                    resource: format!("user/{user}"),
                    by: &caller.user,
                    details: details([("token_id", token.info.id.clone().into())]),
                },
            )?;
            Ok(token)
        })
    }

    /// A user's tokens (metadata only).
    pub(crate) fn tokens(&self, tenant: &Name, user: &str) -> Result<Vec<TokenInfo>, ServerError> {
        let rows = self.db.run(|c| {
            if !user_exists(c, tenant, user)? {
                return Err(no_user(tenant, user));
            }
            c.query(
                r#"SELECT id, "user", label, created_at FROM token WHERE tenant = $1 AND "user" = $2 ORDER BY created_at, id"#,
                &[&tenant.as_str(), &user],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.text(0)?,
                    user: r.text(1)?,
                    label: r.text(2)?,
                    created_at: format_ms(r.int(3)?),
                })
            })
            .collect()
    }

    /// Revokes a token of the caller's tenant, audited.
    pub(crate) fn delete_token(&self, caller: &Caller, id: &str) -> Result<(), ServerError> {
        let tenant = &caller.tenant;
        self.db.transaction(tenant.as_str(), |tx| {
            let row = tx.query_opt(
                r#"SELECT "user" FROM token WHERE tenant = $1 AND id = $2"#,
                &[&tenant.as_str(), &id],
            )?;
            let Some(row) = row else {
                return Err(ServerError::not_found(
                    format!("tenant `{tenant}` has no token `{id}`"),
                    "list a user's tokens with GET /v1/users/{name}/tokens",
                ));
            };
            let user = row.text(0)?;
            tx.execute(
                "DELETE FROM token WHERE tenant = $1 AND id = $2",
                &[&tenant.as_str(), &id],
            )?;
            record(
                self.audit,
                AdminEvent {
                    tenant,
                    kind: AuditKind::PolicyChange,
                    action: "token_revoke",
                    resource: format!("user/{user}"),
                    by: &caller.user,
                    details: details([("token_id", id.into())]),
                },
            )?;
            Ok(())
        })
    }
}

fn no_user(tenant: &Name, name: &str) -> ServerError {
    ServerError::not_found(
        format!("tenant `{tenant}` has no user `{name}`"),
        "list users with GET /v1/users; add one with POST /v1/users",
    )
}

fn user_exists(c: &mut dyn Conn, tenant: &Name, name: &str) -> Result<bool, ServerError> {
    c.query_one(
        r#"SELECT EXISTS(SELECT 1 FROM "user" WHERE tenant = $1 AND name = $2)"#,
        &[&tenant.as_str(), &name],
    )?
    .bool(0)
}

fn ensure_an_admin(tx: &mut dyn Conn, tenant: &Name) -> Result<(), ServerError> {
    let rows = tx.query(
        r#"SELECT roles FROM "user" WHERE tenant = $1"#,
        &[&tenant.as_str()],
    )?;
    for row in rows {
        if roles_parse(&row.text(0)?).contains(&Role::Admin) {
            return Ok(());
        }
    }
    Err(ServerError::conflict(
        format!("this would leave tenant `{tenant}` without an admin"),
        "grant another user the admin role first",
    ))
}

fn insert_token(
    tx: &mut dyn Conn,
    tenant: &Name,
    user: &str,
    label: &str,
) -> Result<NewToken, ServerError> {
    let id = random_hex::<16>()?;
    let secret = random_hex::<32>()?;
    let now = now_ms();
    tx.execute(
        r#"INSERT INTO token (id, tenant, "user", hash, label, created_at) VALUES ($1, $2, $3, $4, $5, $6)"#,
        &[&id, &tenant.as_str(), &user, &hash_secret(&secret), &label, &now],
    )?;
    Ok(NewToken {
        token: format!("{TOKEN_PREFIX}{id}_{secret}"),
        info: TokenInfo {
            id,
            user: user.to_owned(),
            label: label.to_owned(),
            created_at: format_ms(now),
        },
    })
}
