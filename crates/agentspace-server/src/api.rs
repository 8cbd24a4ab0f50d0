//! The REST API under `/v1`: one handler per endpoint, each checking the caller's role
//! and confining every read and write to the caller's tenant.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentspace_audit::{AuditError, AuditLog, Filter, VerifyOptions};
use agentspace_core::{AuditDecision, AuditKind, Name, TaskId, UserId, parse_audit_time};
use agentspace_policy::{Revocation, Revocations};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::approvals::{Approval, ApprovalState, ApprovalStore, Outcome};
use crate::auth::{Accounts, Caller, NewToken, Role, TokenInfo, User};
use crate::definitions::{DefinitionVersion, Registered, Registry};
use crate::error::ServerError;
use crate::extract::{Body, Path, Query};
use crate::store::Db;
use crate::webhook::{TenantWebhook, Webhooks};

/// Everything the handlers share.
pub(crate) struct App {
    pub(crate) state_dir: PathBuf,
    pub(crate) db: Arc<Db>,
    pub(crate) audit: AuditLog,
    pub(crate) approvals: ApprovalStore,
    pub(crate) revocations: Revocations,
    pub(crate) runner: crate::runner::Runner,
    /// The operator lets tenant webhooks reach private addresses.
    pub(crate) allow_private_webhooks: bool,
    /// The console's cookies carry `Secure` (browsers reach it over HTTPS).
    pub(crate) secure_cookies: bool,
    /// The event streams open now (limited per caller and in all).
    pub(crate) streams: Arc<crate::events::StreamSlots>,
}

pub(crate) type AppState = Arc<App>;

impl App {
    pub(crate) fn accounts(&self) -> Accounts<'_> {
        Accounts {
            db: &self.db,
            audit: &self.audit,
        }
    }

    pub(crate) fn webhooks(&self) -> Webhooks<'_> {
        Webhooks {
            db: &self.db,
            audit: &self.audit,
            allow_private: self.allow_private_webhooks,
        }
    }

    pub(crate) fn registry(&self) -> Registry<'_> {
        Registry {
            db: &self.db,
            audit: &self.audit,
            state_dir: &self.state_dir,
        }
    }
}

/// Runs `f` on a blocking thread (SQLite and the audit log's durable appends block).
pub(crate) async fn blocking<T: Send + 'static>(
    app: &AppState,
    f: impl FnOnce(&App) -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| ServerError::Io(format!("a request handler failed: {e}")))?
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ServerError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let fix = "send `Authorization: Bearer <token>`; an admin makes tokens with POST /v1/users/{name}/tokens (the first with `agentspace serve --bootstrap-admin`)";
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ServerError::unauthenticated("no bearer token", fix));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        let Some(token) = token else {
            return Err(ServerError::unauthenticated(
                "the Authorization header is not `Bearer <token>`",
                fix,
            ));
        };
        let caller = blocking(app, move |app| app.accounts().authenticate(&token)).await?;
        caller.ok_or_else(|| {
            ServerError::unauthenticated(
                "the bearer token is not valid (unknown, revoked or malformed)",
                fix,
            )
        })
    }
}

const ANY: &[Role] = &[Role::Admin, Role::Approver, Role::Auditor, Role::Developer];
const ADMIN: &[Role] = &[Role::Admin];
pub(crate) const AUDIT_READERS: &[Role] = &[Role::Admin, Role::Auditor];
const APPROVAL_READERS: &[Role] = &[Role::Admin, Role::Approver, Role::Auditor];
const APPROVERS: &[Role] = &[Role::Admin, Role::Approver];
const DEFINITION_WRITERS: &[Role] = &[Role::Admin, Role::Developer];

type Json<T> = axum::Json<T>;
type ApiResult<T> = Result<Json<T>, ServerError>;

// ---------------------------------------------------------------- who am I, tenants

/// The caller as the server sees them.
#[derive(Serialize, ToSchema)]
pub(crate) struct Me {
    tenant: String,
    user: String,
    roles: Vec<Role>,
    token_id: String,
}

/// The caller's tenant, user and roles.
#[utoipa::path(get, path = "/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn me(caller: Caller) -> ApiResult<Me> {
    caller.require(ANY)?;
    Ok(axum::Json(Me {
        tenant: caller.tenant.to_string(),
        user: caller.user,
        roles: caller.roles.into_iter().collect(),
        token_id: caller.token_id,
    }))
}

/// A tenant.
#[derive(Serialize, ToSchema)]
pub(crate) struct Tenant {
    name: String,
}

/// The tenants the caller can see: only their own. Tenants are made with
/// `agentspace serve --bootstrap-admin NAME --tenant T` on the server host.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = [Tenant]), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn tenants(caller: Caller) -> ApiResult<Vec<Tenant>> {
    caller.require(ANY)?;
    Ok(axum::Json(vec![Tenant {
        name: caller.tenant.to_string(),
    }]))
}

// ---------------------------------------------------------------- users, roles, tokens

/// A new user.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    /// The user's name (what tasks act for).
    name: String,
    /// The user's roles.
    roles: Vec<Role>,
}

/// A user's roles.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolesBody {
    /// The roles (replacing the current ones).
    roles: Vec<Role>,
}

/// A token request.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    /// A label to recognise the token by.
    #[serde(default)]
    label: String,
}

/// The tenant's users (admin).
#[utoipa::path(get, path = "/v1/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = [User]), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn users(State(app): State<AppState>, caller: Caller) -> ApiResult<Vec<User>> {
    caller.require(ADMIN)?;
    Ok(axum::Json(
        blocking(&app, move |app| app.accounts().users(&caller.tenant)).await?,
    ))
}

/// Adds a user to the tenant (admin); audited.
#[utoipa::path(post, path = "/v1/users", tag = "users", security(("bearer" = [])), request_body = NewUser,
    responses((status = 201, body = User), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn add_user(
    State(app): State<AppState>,
    caller: Caller,
    Body(body): Body<NewUser>,
) -> Result<(StatusCode, Json<User>), ServerError> {
    caller.require(ADMIN)?;
    let roles: BTreeSet<Role> = body.roles.into_iter().collect();
    let user = blocking(&app, move |app| {
        app.accounts().put_user(&caller, &body.name, &roles, true)
    })
    .await?;
    Ok((StatusCode::CREATED, axum::Json(user)))
}

/// Replaces a user's roles (admin); audited. The tenant keeps at least one admin.
#[utoipa::path(put, path = "/v1/users/{name}/roles", tag = "users", security(("bearer" = [])), request_body = RolesBody,
    params(("name" = String, Path, description = "the user")),
    responses((status = 200, body = User), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn set_roles(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(body): Body<RolesBody>,
) -> ApiResult<User> {
    caller.require(ADMIN)?;
    let roles: BTreeSet<Role> = body.roles.into_iter().collect();
    Ok(axum::Json(
        blocking(&app, move |app| {
            app.accounts().put_user(&caller, &name, &roles, false)
        })
        .await?,
    ))
}

/// Removes a user and their tokens (admin); audited.
#[utoipa::path(delete, path = "/v1/users/{name}", tag = "users", security(("bearer" = [])),
    params(("name" = String, Path, description = "the user")),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn delete_user(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ServerError> {
    caller.require(ADMIN)?;
    blocking(&app, move |app| app.accounts().delete_user(&caller, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn self_or_admin(caller: &Caller, user: &str) -> Result<(), ServerError> {
    if caller.user == user {
        caller.require(ANY)
    } else {
        caller.require(ADMIN)
    }
}

/// A user's tokens, without secrets (admin, or the user themself).
#[utoipa::path(get, path = "/v1/users/{name}/tokens", tag = "users", security(("bearer" = [])),
    params(("name" = String, Path, description = "the user")),
    responses((status = 200, body = [TokenInfo]), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn tokens(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Vec<TokenInfo>> {
    self_or_admin(&caller, &name)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            app.accounts().tokens(&caller.tenant, &name)
        })
        .await?,
    ))
}

/// Makes a token for a user (admin, or the user themself); the secret is in this answer
/// only. Audited.
#[utoipa::path(post, path = "/v1/users/{name}/tokens", tag = "users", security(("bearer" = [])), request_body = TokenRequest,
    params(("name" = String, Path, description = "the user")),
    responses((status = 201, body = NewToken), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn create_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(body): Body<TokenRequest>,
) -> Result<(StatusCode, Json<NewToken>), ServerError> {
    self_or_admin(&caller, &name)?;
    let token = blocking(&app, move |app| {
        app.accounts().create_token(&caller, &name, &body.label)
    })
    .await?;
    Ok((StatusCode::CREATED, axum::Json(token)))
}

/// Revokes a token (admin, or the token's own user); audited.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "the token id")),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn delete_token(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ServerError> {
    caller.require(ANY)?;
    blocking(&app, move |app| {
        if !caller.roles.contains(&Role::Admin) {
            let own = app.accounts().tokens(&caller.tenant, &caller.user)?;
            if !own.iter().any(|t| t.id == id) {
                return Err(ServerError::forbidden(
                    format!("token `{id}` is not yours"),
                    "an admin can revoke any token of the tenant",
                ));
            }
        }
        app.accounts().delete_token(&caller, &id)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- definitions

/// A definition to register.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBody {
    /// The definition's YAML text (`apiVersion: agentspace/v1`).
    definition: String,
}

/// Registers a definition (admin, developer): validated like `agentspace run` does; a
/// refusal lists each problem with field, line and column. A changed text is a new
/// version; audited as `definition_change`. A name whose current version the host's
/// operator registered (`agentspace definition register`) is refused (409, audited):
/// the API cannot take over a host-trusted agent's name.
#[utoipa::path(post, path = "/v1/definitions", tag = "definitions", security(("bearer" = [])), request_body = RegisterBody,
    responses((status = 201, body = Registered), (status = 200, body = Registered, description = "unchanged"),
        (status = 409, body = crate::error::ErrorBody, description = "the name is host-trusted"),
        (status = 422, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn register_definition(
    State(app): State<AppState>,
    caller: Caller,
    Body(body): Body<RegisterBody>,
) -> Result<(StatusCode, Json<Registered>), ServerError> {
    caller.require(DEFINITION_WRITERS)?;
    let registered = blocking(&app, move |app| {
        app.registry().register(&caller, &body.definition)
    })
    .await?;
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(registered)))
}

/// The current version of each definition.
#[utoipa::path(get, path = "/v1/definitions", tag = "definitions", security(("bearer" = [])),
    responses((status = 200, body = [DefinitionVersion])))]
pub(crate) async fn definitions(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Vec<DefinitionVersion>> {
    caller.require(ANY)?;
    Ok(axum::Json(
        blocking(&app, move |app| app.registry().list(&caller.tenant)).await?,
    ))
}

/// The current version of one definition, with its text.
#[utoipa::path(get, path = "/v1/definitions/{name}", tag = "definitions", security(("bearer" = [])),
    params(("name" = String, Path, description = "the agent's name")),
    responses((status = 200, body = DefinitionVersion), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn definition(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<DefinitionVersion> {
    caller.require(ANY)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            app.registry().get(&caller.tenant, &name, None)
        })
        .await?,
    ))
}

/// Every version of a definition.
#[utoipa::path(get, path = "/v1/definitions/{name}/versions", tag = "definitions", security(("bearer" = [])),
    params(("name" = String, Path, description = "the agent's name")),
    responses((status = 200, body = [DefinitionVersion]), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn definition_versions(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Vec<DefinitionVersion>> {
    caller.require(ANY)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            app.registry().versions(&caller.tenant, &name)
        })
        .await?,
    ))
}

/// One version of a definition, with its text.
#[utoipa::path(get, path = "/v1/definitions/{name}/versions/{version}", tag = "definitions", security(("bearer" = [])),
    params(("name" = String, Path, description = "the agent's name"), ("version" = u32, Path, description = "the version")),
    responses((status = 200, body = DefinitionVersion), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn definition_version(
    State(app): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, u32)>,
) -> ApiResult<DefinitionVersion> {
    caller.require(ANY)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            app.registry().get(&caller.tenant, &name, Some(version))
        })
        .await?,
    ))
}

/// Which versions to compare.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiffQuery {
    /// The older version.
    from: u32,
    /// The newer version.
    to: u32,
}

/// A unified line diff between two versions (text/plain).
#[utoipa::path(get, path = "/v1/definitions/{name}/diff", tag = "definitions", security(("bearer" = [])),
    params(("name" = String, Path, description = "the agent's name"), DiffQuery),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn definition_diff(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, ServerError> {
    caller.require(ANY)?;
    let diff = blocking(&app, move |app| {
        app.registry().diff(&caller.tenant, &name, q.from, q.to)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], diff).into_response())
}

// ---------------------------------------------------------------- tasks and budgets

pub(crate) fn read_manifests(app: &App, tenant: &Name) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(app.state_dir.join("tasks")) else {
        return out;
    };
    for entry in entries.flatten() {
        if let Some(m) = read_manifest(&entry.path().join("manifest.json"))
            && m.get("tenant").and_then(|t| t.as_str()) == Some(tenant.as_str())
        {
            out.push(m);
        }
    }
    out.sort_by(|a, b| {
        let task =
            |v: &serde_json::Value| v.get("task").and_then(|t| t.as_str()).map(str::to_owned);
        task(b).cmp(&task(a))
    });
    out
}

fn read_manifest(path: &std::path::Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.is_object().then_some(v)
}

pub(crate) fn task_manifest(
    app: &App,
    tenant: &Name,
    id: &str,
) -> Result<serde_json::Value, ServerError> {
    let missing = || {
        ServerError::not_found(
            format!("tenant `{tenant}` has no task `{id}`"),
            "list tasks with GET /v1/tasks",
        )
    };
    let id = TaskId::parse(id).map_err(|_| missing())?;
    let m = read_manifest(
        &app.state_dir
            .join("tasks")
            .join(id.as_str())
            .join("manifest.json"),
    )
    .ok_or_else(missing)?;
    if m.get("tenant").and_then(|t| t.as_str()) != Some(tenant.as_str()) {
        return Err(missing());
    }
    Ok(m)
}

/// The tenant's tasks (their manifests), newest first.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])),
    responses((status = 200, body = [Object])))]
pub(crate) async fn tasks(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Vec<serde_json::Value>> {
    caller.require(ANY)?;
    Ok(axum::Json(
        blocking(&app, move |app| Ok(read_manifests(app, &caller.tenant))).await?,
    ))
}

/// A task to start.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartTask {
    /// The registered definition's name.
    agent: String,
    /// Its version (default: the current one).
    #[serde(default)]
    version: Option<u32>,
    /// The program to run in the cell and its arguments.
    command: Vec<String>,
}

/// A started task.
#[derive(Serialize, ToSchema)]
pub(crate) struct StartedTask {
    pub(crate) task: String,
    agent: String,
    version: u32,
    /// The user the task acts for: the caller.
    user: String,
}

/// Starts a task from a registered definition, acting for the caller (admin,
/// developer). The server runs `agentspace run` as its child; the task is audited by
/// it (`task_start`, `task_exit`). Definitions naming host paths or host commands are
/// refused (422) unless the version was registered on the server host by its operator
/// (`agentspace definition register`).
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), request_body = StartTask,
    responses((status = 201, body = StartedTask), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub(crate) async fn start_task(
    State(app): State<AppState>,
    caller: Caller,
    Body(body): Body<StartTask>,
) -> Result<(StatusCode, Json<StartedTask>), ServerError> {
    let started = blocking(&app, move |app| {
        start_registered(app, &caller, &body.agent, body.version, &body.command)
    })
    .await?;
    Ok((StatusCode::CREATED, axum::Json(started)))
}

/// Starts a task of a registered definition acting for `caller` (admin, developer),
/// for the API and the console alike. Host-bound fields are refused (422) unless the
/// version was registered on the host by its operator.
pub(crate) fn start_registered(
    app: &App,
    caller: &Caller,
    agent: &str,
    version: Option<u32>,
    command: &[String],
) -> Result<StartedTask, ServerError> {
    caller.require(DEFINITION_WRITERS)?;
    let stored = app.registry().stored(&caller.tenant, agent, version)?;
    let definition = stored.parse(&app.state_dir, &caller.tenant)?;
    let host_source = stored.host_source.as_deref();
    if host_source.is_none() {
        let problems = crate::runner::host_bound(&definition);
        if !problems.is_empty() {
            return Err(ServerError::Definition(problems));
        }
    }
    let task = app.runner.start(
        &app.state_dir,
        &caller.tenant,
        crate::runner::Start {
            text: &stored.text,
            host_source,
            user: &caller.user,
            command,
            boundary: !definition.governance.egress.is_empty()
                || !definition.governance.tools.servers.is_empty(),
        },
    )?;
    Ok(StartedTask {
        task,
        agent: stored.version.name,
        version: stored.version.version,
        user: caller.user.clone(),
    })
}

/// What a stop did.
#[derive(Serialize, ToSchema)]
pub(crate) struct Stopped {
    /// The task is revoked: every further action of it is denied.
    revoked: bool,
    /// Its `agentspace run` was sent SIGTERM (only for tasks this server started and
    /// that still ran).
    signalled: bool,
}

/// Stops a task (admin, or the user it acts for): revokes it (audited, effective on its
/// next decision) and, when this server started it, sends its `agentspace run` SIGTERM,
/// which the agent receives; the exit is recorded in the manifest and the audit log.
#[utoipa::path(post, path = "/v1/tasks/{id}/stop", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the task id")),
    responses((status = 200, body = Stopped), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn stop_task(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Stopped> {
    Ok(axum::Json(
        blocking(&app, move |app| stop(app, &caller, &id)).await?,
    ))
}

/// Stops task `id` for `caller` (admin, or the user it acts for), for the API and the
/// console alike: revokes it (audited) and signals its `agentspace run` if this server
/// started it.
pub(crate) fn stop(app: &App, caller: &Caller, id: &str) -> Result<Stopped, ServerError> {
    caller.require(ANY)?;
    let m = task_manifest(app, &caller.tenant, id)?;
    let user = m.get("user").and_then(|u| u.as_str()).unwrap_or_default();
    if user != caller.user {
        caller.require(ADMIN)?;
    }
    let sink = RevocationSink {
        audit: &app.audit,
        tenant: &caller.tenant,
        by: &caller.user,
    };
    let what = Revocation::Task {
        tenant: caller.tenant.clone(),
        task: agentspace_core::TaskRef::new(id).map_err(|e| {
            ServerError::bad_request(e.to_string(), "give a task id from GET /v1/tasks")
        })?,
    };
    app.revocations.revoke(
        what,
        &format!("stopped by `{}` through the control plane", caller.user),
        &sink,
    )?;
    Ok(Stopped {
        revoked: true,
        signalled: app.runner.stop(id),
    })
}

/// One task's manifest.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the task id")),
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn task(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    caller.require(ANY)?;
    Ok(axum::Json(
        blocking(&app, move |app| task_manifest(app, &caller.tenant, &id)).await?,
    ))
}

/// Which log and how much of it.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    /// `stdout` (default) or `stderr`.
    stream: Option<String>,
    /// Only the last this many bytes (default and most: 1 MiB). Not with `offset`.
    tail_bytes: Option<u64>,
    /// Start at this byte of the log instead of its tail (at most 1 MiB is returned):
    /// to follow a log, ask again from `Agentspace-Log-Next`.
    offset: Option<u64>,
    /// With `offset`: when the log has nothing after it yet and the task still runs,
    /// wait up to this many seconds (at most 30) for more before answering.
    wait: Option<u64>,
}

/// Largest piece of a log returned at once.
const MAX_LOG: u64 = 1024 * 1024;

/// Longest a log request waits for new output.
const MAX_LOG_WAIT: Duration = Duration::from_secs(30);

/// How often a waiting log request looks for new output: first after 100 ms, then
/// twice as long each time up to 500 ms, so that hundreds of followers of quiet tasks
/// cost little (bench/serve.sh) while a chatty task's output still flows at once.
const LOG_POLL: Duration = Duration::from_millis(100);
const LOG_POLL_MAX: Duration = Duration::from_millis(500);

/// One read of a task's log.
struct LogPiece {
    bytes: Vec<u8>,
    /// The offset after the last byte read.
    next: u64,
    /// The task has ended and nothing follows `next`.
    complete: bool,
}

/// Reads a task's log (`file` is `stdout.log` or `stderr.log`) from `offset`, or its
/// last `tail` bytes.
fn read_log(
    app: &App,
    id: &str,
    file: &str,
    offset: Option<u64>,
    tail: u64,
) -> Result<LogPiece, ServerError> {
    use std::io::{Read, Seek, SeekFrom};
    let dir = app.state_dir.join("tasks").join(id);
    // Whether the task has ended is read before the log: once `agentspace run` records
    // the end, every byte of the log is written, so a length read afterwards is final.
    // For a run this server started, its process exiting says so (a cheap check, made
    // many times a second by waiting followers); otherwise the manifest does.
    let ended = match app.runner.ended(id) {
        Some(ended) => ended,
        None => read_manifest(&dir.join("manifest.json"))
            .is_some_and(|m| m.get("state").and_then(|s| s.as_str()) != Some("running")),
    };
    let path = dir.join(file);
    let Ok(mut f) = std::fs::File::open(&path) else {
        let at = offset.unwrap_or(0);
        return Ok(LogPiece {
            bytes: Vec::new(),
            next: at,
            complete: ended,
        });
    };
    let failed =
        |e: std::io::Error| ServerError::Io(format!("cannot read `{}`: {e}", path.display()));
    let len = f.metadata().map_err(failed)?.len();
    let start = offset.unwrap_or(len.saturating_sub(tail)).min(len);
    f.seek(SeekFrom::Start(start)).map_err(failed)?;
    let mut bytes = Vec::new();
    f.take(MAX_LOG.min(tail))
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    let next = start + bytes.len() as u64;
    Ok(LogPiece {
        bytes,
        next,
        complete: ended && next >= len,
    })
}

/// A task's stdout or stderr log, as the agent wrote it (text/plain; admin, auditor,
/// developer): its end, or (`offset`) the bytes from an offset on, optionally waiting
/// for them (`wait`), to follow a running task. `Agentspace-Log-Next` is the offset
/// after the last byte sent; `Agentspace-Log-Complete: true` says the task has ended
/// and nothing follows it.
#[utoipa::path(get, path = "/v1/tasks/{id}/logs", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the task id"), LogQuery),
    responses((status = 200, body = String, content_type = "text/plain", headers(
            ("Agentspace-Log-Next" = u64, description = "the offset after the last byte sent: ask again from here to follow the log"),
            ("Agentspace-Log-Complete" = bool, description = "`true` when the task has ended and the log has nothing after `Agentspace-Log-Next`"))),
        (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn task_logs(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ServerError> {
    caller.require(&[Role::Admin, Role::Auditor, Role::Developer])?;
    let file = match q.stream.as_deref().unwrap_or("stdout") {
        "stdout" => "stdout.log",
        "stderr" => "stderr.log",
        other => {
            return Err(ServerError::bad_request(
                format!("`stream={other}` is not a log"),
                "use stdout or stderr",
            ));
        }
    };
    if q.offset.is_some() && q.tail_bytes.is_some() {
        return Err(ServerError::bad_request(
            "`offset` and `tail_bytes` both given",
            "give `tail_bytes` for the end of the log, or `offset` to read (and follow) it from there",
        ));
    }
    if q.wait.is_some() && q.offset.is_none() {
        return Err(ServerError::bad_request(
            "`wait` without `offset`",
            "give `offset` (0 for the start) to wait for the output after it",
        ));
    }
    let tail = if q.offset.is_some() {
        MAX_LOG
    } else {
        q.tail_bytes.unwrap_or(MAX_LOG).min(MAX_LOG)
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(0)).min(MAX_LOG_WAIT);
    let checked = {
        let id = id.clone();
        blocking(&app, move |app| {
            task_manifest(app, &caller.tenant, &id).map(|_| ())
        })
        .await
    };
    checked?;
    let mut nap = LOG_POLL;
    let piece = loop {
        // The id was checked to be one of the caller's tasks: it names no other path.
        let id = id.clone();
        let piece = blocking(&app, move |app| read_log(app, &id, file, q.offset, tail)).await?;
        if !piece.bytes.is_empty() || piece.complete || tokio::time::Instant::now() >= deadline {
            break piece;
        }
        tokio::time::sleep(nap).await;
        nap = (nap * 2).min(LOG_POLL_MAX);
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (
                header::HeaderName::from_static("agentspace-log-next"),
                piece.next.to_string(),
            ),
            (
                header::HeaderName::from_static("agentspace-log-complete"),
                piece.complete.to_string(),
            ),
        ],
        piece.bytes,
    )
        .into_response())
}

/// A task's budget use and its definition's budgets.
#[derive(Serialize, ToSchema)]
pub(crate) struct TaskBudget {
    task: String,
    agent: String,
    /// Requests, bytes, tokens and seconds used so far.
    #[schema(value_type = Object)]
    usage: agentspace_policy::Usage,
    /// The registered definition's budgets.
    #[schema(value_type = Object)]
    budgets: serde_json::Value,
}

/// What a task has used of its budgets. Needs the task's agent to be registered.
#[utoipa::path(get, path = "/v1/tasks/{id}/budget", tag = "budgets", security(("bearer" = [])),
    params(("id" = String, Path, description = "the task id")),
    responses((status = 200, body = TaskBudget), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn task_budget(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<TaskBudget> {
    caller.require(ANY)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            let m = task_manifest(app, &caller.tenant, &id)?;
            let agent = m
                .get("agent")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let definition = registered_definition(app, &caller.tenant, &agent)?;
            let usage = task_usage(app, &caller.tenant, &m, &definition)?;
            Ok(TaskBudget {
                task: id,
                agent,
                usage,
                budgets: serde_json::to_value(&definition.governance.budgets).unwrap_or_default(),
            })
        })
        .await?,
    ))
}

/// What the task of manifest `m` has used of its budgets, counted by the policy state
/// of `definition` (its generated policies only: `spec.policies` files are never read
/// here, and usage needs no policy).
pub(crate) fn task_usage(
    app: &App,
    tenant: &Name,
    m: &serde_json::Value,
    definition: &agentspace_core::Definition,
) -> Result<agentspace_policy::Usage, ServerError> {
    let field = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let (id, agent, user) = (field("task"), field("agent"), field("user"));
    let policies = agentspace_policy::CompiledPolicies::compile_with_files(definition, Vec::new())?;
    let engine =
        agentspace_policy::PolicyEngine::with_policies(definition, policies, &app.state_dir)?;
    let bad = |e: &dyn std::fmt::Display| {
        ServerError::Io(format!("task `{id}` has a malformed manifest: {e}"))
    };
    let principal = agentspace_core::Principal::new(
        tenant.clone(),
        UserId::new(user).map_err(|e| bad(&e))?,
        agentspace_core::Actor::new(
            Name::new(agent).map_err(|e| bad(&e))?,
            agentspace_core::TaskRef::new(id).map_err(|e| bad(&e))?,
        ),
    );
    Ok(engine.task_usage(&principal)?)
}

fn registered_definition(
    app: &App,
    tenant: &Name,
    agent: &str,
) -> Result<agentspace_core::Definition, ServerError> {
    app.registry()
        .stored(tenant, agent, None)?
        .parse(&app.state_dir, tenant)
}

/// One definition's budgets.
#[derive(Serialize, ToSchema)]
pub(crate) struct DefinitionBudgets {
    agent: String,
    version: u32,
    /// Per task, per task time, per user and window.
    #[schema(value_type = Object)]
    budgets: serde_json::Value,
}

/// The budgets of every registered definition (current versions).
#[utoipa::path(get, path = "/v1/budgets", tag = "budgets", security(("bearer" = [])),
    responses((status = 200, body = [DefinitionBudgets])))]
pub(crate) async fn budgets(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Vec<DefinitionBudgets>> {
    caller.require(ANY)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            let mut out = Vec::new();
            for v in app.registry().list(&caller.tenant)? {
                let definition = registered_definition(app, &caller.tenant, &v.name)?;
                out.push(DefinitionBudgets {
                    agent: v.name,
                    version: v.version,
                    budgets: serde_json::to_value(&definition.governance.budgets)
                        .unwrap_or_default(),
                });
            }
            Ok(out)
        })
        .await?,
    ))
}

// ---------------------------------------------------------------- approvals

/// Which approvals to list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApprovalQuery {
    /// `pending` (default), `approved`, `denied`, `timed_out` or `all`.
    state: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

/// A decision's comment.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    /// Why (kept in the approval and the audit log).
    #[serde(default)]
    comment: String,
}

/// The tenant's approvals, pending ones by default, oldest first.
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", security(("bearer" = [])), params(ApprovalQuery),
    responses((status = 200, body = [Approval]), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn approvals(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<ApprovalQuery>,
) -> ApiResult<Vec<Approval>> {
    caller.require(APPROVAL_READERS)?;
    let state = match q.state.as_deref().unwrap_or("pending") {
        "pending" => Some(ApprovalState::Pending),
        "approved" => Some(ApprovalState::Approved),
        "denied" => Some(ApprovalState::Denied),
        "timed_out" => Some(ApprovalState::TimedOut),
        "all" => None,
        other => {
            return Err(ServerError::bad_request(
                format!("`state={other}` is not a state"),
                "use pending, approved, denied, timed_out or all",
            ));
        }
    };
    let limit = q.limit.unwrap_or(100).min(1000);
    Ok(axum::Json(
        blocking(&app, move |app| {
            app.approvals.list(&caller.tenant, state, limit)
        })
        .await?,
    ))
}

/// One approval with its full context.
#[utoipa::path(get, path = "/v1/approvals/{id}", tag = "approvals", security(("bearer" = [])),
    params(("id" = String, Path, description = "the approval id")),
    responses((status = 200, body = Approval), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn approval(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Approval> {
    caller.require(APPROVAL_READERS)?;
    Ok(axum::Json(
        blocking(&app, move |app| app.approvals.get(&caller.tenant, &id)).await?,
    ))
}

async fn decide(
    app: AppState,
    caller: Caller,
    id: String,
    outcome: Outcome,
    comment: String,
) -> ApiResult<Approval> {
    caller.require(APPROVERS)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            app.approvals
                .decide(&caller.tenant, &id, &caller.user, outcome, &comment)
        })
        .await?,
    ))
}

/// Approves a held action (admin, approver); audited. Four-eyes: the requesting user
/// cannot approve their own when the definition says so.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "approvals", security(("bearer" = [])),
    params(("id" = String, Path, description = "the approval id")), request_body = DecisionBody,
    responses((status = 200, body = Approval), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn approve(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<DecisionBody>,
) -> ApiResult<Approval> {
    decide(app, caller, id, Outcome::Approve, body.comment).await
}

/// Denies a held action with a comment (admin, approver); audited.
#[utoipa::path(post, path = "/v1/approvals/{id}/deny", tag = "approvals", security(("bearer" = [])),
    params(("id" = String, Path, description = "the approval id")), request_body = DecisionBody,
    responses((status = 200, body = Approval), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn deny(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<DecisionBody>,
) -> ApiResult<Approval> {
    decide(app, caller, id, Outcome::Deny, body.comment).await
}

// ---------------------------------------------------------------- audit

/// Audit filters; the tenant is always the caller's.
#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// Only this task.
    pub(crate) task: Option<String>,
    /// Only this user.
    pub(crate) user: Option<String>,
    /// Only this agent.
    pub(crate) agent: Option<String>,
    /// Only this kind (`http_request`, `task_start`, ...).
    pub(crate) kind: Option<String>,
    /// Only this decision (`allow`, `deny`, `approval_required`).
    pub(crate) decision: Option<String>,
    /// Only events whose resource contains this text.
    pub(crate) resource: Option<String>,
    /// Only events at or after this time (`2026-01-02T03:04:05.000000000Z`).
    pub(crate) since: Option<String>,
    /// Only events before this time.
    pub(crate) until: Option<String>,
    /// At most this many events (query: default 1000, at most 10000).
    pub(crate) limit: Option<u64>,
    /// Export format: `jsonl` (default) or `ocsf`.
    pub(crate) format: Option<String>,
}

impl AuditQuery {
    pub(crate) fn filter(&self, tenant: &Name) -> Result<Filter, ServerError> {
        let kind = self
            .kind
            .as_deref()
            .map(|k| {
                AuditKind::parse(k).ok_or_else(|| {
                    let all: Vec<&str> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
                    ServerError::bad_request(
                        format!("`kind={k}` is not an event kind"),
                        format!("use one of {}", all.join(", ")),
                    )
                })
            })
            .transpose()?;
        let decision = self
            .decision
            .as_deref()
            .map(|d| {
                AuditDecision::parse(d).ok_or_else(|| {
                    ServerError::bad_request(
                        format!("`decision={d}` is not a decision"),
                        "use allow, deny or approval_required",
                    )
                })
            })
            .transpose()?;
        let time = |name: &str, t: &Option<String>| {
            t.as_deref()
                .map(|t| {
                    parse_audit_time(t).ok_or_else(|| {
                        ServerError::bad_request(
                            format!("`{name}={t}` is not an event time"),
                            "use the event time format, `2026-01-02T03:04:05.000000000Z`",
                        )
                    })
                })
                .transpose()
        };
        Ok(Filter {
            tenant: Some(tenant.to_string()),
            task: self.task.clone(),
            user: self.user.clone(),
            agent: self.agent.clone(),
            kind,
            decision,
            resource_contains: self.resource.clone(),
            since_ns: time("since", &self.since)?,
            until_ns: time("until", &self.until)?,
        })
    }
}

/// Events of the tenant's audit log that match every filter, in order, each with its
/// chain hash and signature (admin, auditor).
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = [Object]), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn audit_events(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Vec<serde_json::Value>> {
    caller.require(AUDIT_READERS)?;
    let filter = q.filter(&caller.tenant)?;
    let mut left = q.limit.unwrap_or(1000).min(10_000);
    Ok(axum::Json(
        blocking(&app, move |app| {
            let mut out = Vec::new();
            app.audit.query(&filter, |entry| {
                if left == 0 {
                    return Ok(false);
                }
                left -= 1;
                out.push(agentspace_audit::to_jsonl(&entry));
                Ok(true)
            })?;
            Ok(out)
        })
        .await?,
    ))
}

/// The result of verifying the tenant's chain.
#[derive(Serialize, ToSchema)]
pub(crate) struct VerifyReport {
    /// Whether every hash, signature, sequence number and checkpoint verified.
    ok: bool,
    /// Events verified.
    events: u64,
    /// Checkpoints verified.
    checkpoints: u64,
    /// The chain hash of the last event.
    head: Option<String>,
    /// The Merkle root over all events.
    root: Option<String>,
    /// The first bad sequence number, when it does not verify.
    bad_seq: Option<u64>,
    /// What is wrong, when it does not verify.
    problem: Option<String>,
}

/// Verifies the tenant's audit chain with the keys on the server host (admin, auditor).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = VerifyReport), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn audit_verify(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<VerifyReport> {
    caller.require(AUDIT_READERS)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            let options = VerifyOptions {
                tenant: Some(caller.tenant.to_string()),
                ..VerifyOptions::default()
            };
            match app.audit.verify(&options) {
                Ok(report) => {
                    let t = report.into_iter().next();
                    Ok(VerifyReport {
                        ok: true,
                        events: t.as_ref().map_or(0, |t| t.events),
                        checkpoints: t.as_ref().map_or(0, |t| t.checkpoints),
                        head: t.as_ref().map(|t| t.head.clone()),
                        root: t.map(|t| t.root),
                        bad_seq: None,
                        problem: None,
                    })
                }
                Err(AuditError::Tampered(f)) => Ok(VerifyReport {
                    ok: false,
                    events: 0,
                    checkpoints: 0,
                    head: None,
                    root: None,
                    bad_seq: f.seq,
                    problem: Some(f.problem),
                }),
                Err(e) => Err(e.into()),
            }
        })
        .await?,
    ))
}

/// The tenant's matching events as JSON Lines, as hashed (`jsonl`) or as OCSF API
/// Activity events (`ocsf`) (admin, auditor).
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = String, content_type = "application/x-ndjson"), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn audit_export(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ServerError> {
    caller.require(AUDIT_READERS)?;
    let filter = q.filter(&caller.tenant)?;
    let ocsf = match q.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => false,
        "ocsf" => true,
        other => {
            return Err(ServerError::bad_request(
                format!("`format={other}` is not an export format"),
                "use jsonl or ocsf",
            ));
        }
    };
    let body = blocking(&app, move |app| {
        let mut out = Vec::new();
        app.audit.query(&filter, |entry| {
            let value = if ocsf {
                agentspace_audit::to_ocsf(&entry)
            } else {
                agentspace_audit::to_jsonl(&entry)
            };
            out.extend_from_slice(value.to_string().as_bytes());
            out.push(b'\n');
            Ok(true)
        })?;
        Ok(out)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

// ---------------------------------------------------------------- revocations

/// What to revoke or lift, in the caller's tenant.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum RevocationBody {
    /// One task, and the work of every agent it started.
    Task {
        /// The task id.
        task: String,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Every task of an agent.
    Agent {
        /// The agent.
        agent: String,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// One user's use of an agent.
    UserAgent {
        /// The user.
        user: String,
        /// The agent.
        agent: String,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// One capability (egress rule) of an agent.
    Capability {
        /// The agent.
        agent: String,
        /// The capability.
        capability: String,
        /// Why.
        #[serde(default)]
        reason: String,
    },
}

impl RevocationBody {
    fn resolve(self, tenant: &Name) -> Result<(Revocation, String), ServerError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            ServerError::bad_request(format!("invalid {what}: {e}"), "see /openapi.json")
        };
        let name = |what: &str, v: &str| Name::new(v).map_err(|e| bad(what, &e));
        let tenant = tenant.clone();
        Ok(match self {
            Self::Task { task, reason } => (
                Revocation::Task {
                    tenant,
                    task: agentspace_core::TaskRef::new(&task).map_err(|e| bad("task", &e))?,
                },
                reason,
            ),
            Self::Agent { agent, reason } => (
                Revocation::Agent {
                    tenant,
                    agent: name("agent", &agent)?,
                },
                reason,
            ),
            Self::UserAgent {
                user,
                agent,
                reason,
            } => (
                Revocation::UserAgent {
                    tenant,
                    user: UserId::new(&user).map_err(|e| bad("user", &e))?,
                    agent: name("agent", &agent)?,
                },
                reason,
            ),
            Self::Capability {
                agent,
                capability,
                reason,
            } => (
                Revocation::Capability {
                    tenant,
                    agent: name("agent", &agent)?,
                    capability: name("capability", &capability)?,
                },
                reason,
            ),
        })
    }
}

fn revocation_tenant(r: &Revocation) -> &Name {
    match r {
        Revocation::Task { tenant, .. }
        | Revocation::Agent { tenant, .. }
        | Revocation::UserAgent { tenant, .. }
        | Revocation::Capability { tenant, .. } => tenant,
    }
}

/// Records each revocation and lift in the tenant's audit log.
struct RevocationSink<'a> {
    audit: &'a AuditLog,
    tenant: &'a Name,
    by: &'a str,
}

impl agentspace_policy::RevocationAudit for RevocationSink<'_> {
    fn revocation(
        &self,
        record: &agentspace_policy::RevocationRecord,
        lifted: bool,
    ) -> Result<(), String> {
        crate::audit::record(
            self.audit,
            crate::audit::AdminEvent {
                tenant: self.tenant,
                kind: AuditKind::Revocation,
                action: if lifted { "lift" } else { "revoke" },
                resource: record.revocation.to_string(),
                by: self.by,
                details: crate::audit::details([
                    ("reason", record.reason.clone().into()),
                    ("revoked_at", record.revoked_at.into()),
                ]),
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

/// Revocations in force in the tenant (admin, auditor, approver).
#[utoipa::path(get, path = "/v1/revocations", tag = "revocations", security(("bearer" = [])),
    responses((status = 200, body = [Object]), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn revocations(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Vec<serde_json::Value>> {
    caller.require(APPROVAL_READERS)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            let list = app.revocations.list()?;
            Ok(list
                .into_iter()
                .filter(|r| *revocation_tenant(&r.revocation) == caller.tenant)
                .filter_map(|r| serde_json::to_value(r).ok())
                .collect())
        })
        .await?,
    ))
}

/// Revokes, effective on the next decision anywhere (admin); audited.
#[utoipa::path(post, path = "/v1/revocations", tag = "revocations", security(("bearer" = [])), request_body = RevocationBody,
    responses((status = 201, body = Object), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn revoke(
    State(app): State<AppState>,
    caller: Caller,
    Body(body): Body<RevocationBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ServerError> {
    caller.require(ADMIN)?;
    let (what, reason) = body.resolve(&caller.tenant)?;
    let record = blocking(&app, move |app| {
        let sink = RevocationSink {
            audit: &app.audit,
            tenant: &caller.tenant,
            by: &caller.user,
        };
        Ok(app.revocations.revoke(what, &reason, &sink)?)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::to_value(record).unwrap_or_default()),
    ))
}

/// Whether a lift found a revocation.
#[derive(Serialize, ToSchema)]
pub(crate) struct Lifted {
    lifted: bool,
}

/// Lifts a revocation (admin); audited.
#[utoipa::path(post, path = "/v1/revocations/lift", tag = "revocations", security(("bearer" = [])), request_body = RevocationBody,
    responses((status = 200, body = Lifted), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn lift(
    State(app): State<AppState>,
    caller: Caller,
    Body(body): Body<RevocationBody>,
) -> ApiResult<Lifted> {
    caller.require(ADMIN)?;
    let (what, _) = body.resolve(&caller.tenant)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            let sink = RevocationSink {
                audit: &app.audit,
                tenant: &caller.tenant,
                by: &caller.user,
            };
            Ok(Lifted {
                lifted: app.revocations.lift(&what, &sink)?,
            })
        })
        .await?,
    ))
}

// ---------------------------------------------------------------- secrets

/// The names of the tenant's secrets, never their values (admin, developer).
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", security(("bearer" = [])),
    responses((status = 200, body = [String]), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn secrets(State(app): State<AppState>, caller: Caller) -> ApiResult<Vec<String>> {
    caller.require(DEFINITION_WRITERS)?;
    Ok(axum::Json(
        blocking(&app, move |app| {
            Ok(agentspace_secrets::SecretStore::open(&app.state_dir).list(&caller.tenant)?)
        })
        .await?,
    ))
}

// ---------------------------------------------------------------- tenant webhook

/// The webhook body: where to announce the tenant's approval requests.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookBody {
    /// `https://...` (or `http://...`) of a public host.
    url: String,
}

/// The tenant's webhook: its origin and digest, never the URL (admin).
#[utoipa::path(get, path = "/v1/tenant/webhook", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = TenantWebhook), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn tenant_webhook(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<TenantWebhook> {
    caller.require(ADMIN)?;
    Ok(axum::Json(
        blocking(&app, move |app| app.webhooks().get(&caller.tenant)).await?,
    ))
}

/// Sets the webhook the tenant's approval requests are announced to (admin); audited. A
/// URL whose host resolves to a loopback, private, link-local or other special address is
/// refused (400, and audited) unless the operator allows private webhooks.
#[utoipa::path(put, path = "/v1/tenant/webhook", tag = "tenants", security(("bearer" = [])), request_body = WebhookBody,
    responses((status = 200, body = TenantWebhook), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn set_tenant_webhook(
    State(app): State<AppState>,
    caller: Caller,
    Body(body): Body<WebhookBody>,
) -> ApiResult<TenantWebhook> {
    caller.require(ADMIN)?;
    Ok(axum::Json(
        blocking(&app, move |app| app.webhooks().set(&caller, &body.url)).await?,
    ))
}

/// Removes the tenant's webhook (admin); audited.
#[utoipa::path(delete, path = "/v1/tenant/webhook", tag = "tenants", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn delete_tenant_webhook(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<StatusCode, ServerError> {
    caller.require(ADMIN)?;
    blocking(&app, move |app| app.webhooks().remove(&caller)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer for a path that is not an endpoint.
pub(crate) async fn not_found() -> ServerError {
    ServerError::not_found(
        "no such endpoint",
        "the endpoints are listed in /openapi.json",
    )
}
