//! The server: routes, the OpenAPI document, binding and serving, and the bootstrap of a
//! tenant's first admin.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentspace_audit::AuditLog;
use agentspace_core::Name;
use axum::Router;
use axum::routing::{delete, get, post, put};
use utoipa::OpenApi;

use crate::api::{self, App, AppState};
use crate::approvals::ApprovalStore;
use crate::auth::{Accounts, NewToken};
use crate::error::ServerError;
use crate::store::Db;
use crate::{console, events};

/// How the control plane runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The state directory (tasks, audit keys, policy, secrets, and `server/control.db`
    /// unless `database_url` is given).
    pub state_dir: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The control-plane tables in PostgreSQL (`postgres://...`, migrated with
    /// [`migrate`]) instead of SQLite in the state directory.
    pub database_url: Option<String>,
    /// The audit store (`postgres://...`, `sqlite:PATH`); when `None`, the database of
    /// `database_url`, else SQLite in the state directory. See [`audit_url`].
    pub audit_url: Option<String>,
    /// The `agentspace` binary that starts tasks (`agentspace run`); `None`: this server
    /// does not start tasks.
    pub runner: Option<PathBuf>,
    /// The gateway config file (`resolve`, `upstreamCa`, `limits`) that tasks started
    /// through the API run with (`agentspace run --config`), when their definition has
    /// a boundary: the host operator's choice, never an API caller's.
    pub gateway_config: Option<PathBuf>,
    /// Announce each approval request here (`http(s)://...`), with a Slack-compatible
    /// JSON body.
    pub approval_webhook: Option<String>,
    /// Let tenant webhooks reach loopback, private and link-local addresses (for an
    /// operator whose chat server is on the private network); refused by default.
    pub allow_private_webhooks: bool,
    /// Mark the console's cookies `Secure`, so browsers send them over HTTPS only: set
    /// it when browsers reach the console through a TLS-terminating proxy.
    pub secure_cookies: bool,
}

/// The audit store the control plane uses: `audit_url` when given, else the PostgreSQL
/// database of `database_url` (state and audit in one database), else `None` (SQLite in
/// the state directory).
pub fn audit_url(database_url: Option<&str>, audit_url: Option<&str>) -> Option<String> {
    audit_url.or(database_url).map(str::to_owned)
}

/// Creates or updates the control-plane tables and the role `agentspace_control` in the
/// PostgreSQL database at `database_url`, and the audit tables and their writer role in
/// the audit store (`audit_url`, or the same database) when that is PostgreSQL too.
/// Returns the control-plane schema versions it applied (none when it was current). Run
/// it once as the database owner before the first `agentspace serve`, and after each
/// upgrade; it is idempotent.
pub fn migrate(database_url: &str, audit_url: Option<&str>) -> Result<Vec<i64>, ServerError> {
    let applied = crate::store::migrate(database_url)?;
    if let Some(url) = self::audit_url(Some(database_url), audit_url)
        && crate::store::is_postgres_url(&url)
    {
        agentspace_audit::migrate_postgres(&url)?;
    }
    Ok(applied)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Agent Space control plane",
        description = "Definitions, tasks, approvals, audit, revocations, secrets (names only), budgets, tenants, users and roles. Every endpoint under /v1 takes `Authorization: Bearer <token>` and sees only the caller's tenant. Errors are `{\"error\": ..., \"detail\": ...}`."
    ),
    paths(
        api::me, api::tenants,
        api::users, api::add_user, api::set_roles, api::delete_user,
        api::tokens, api::create_token, api::delete_token,
        api::register_definition, api::definitions, api::definition,
        api::definition_versions, api::definition_version, api::definition_diff,
        api::tasks, api::start_task, api::task, api::stop_task, api::task_logs, api::task_budget, api::budgets,
        api::approvals, api::approval, api::approve, api::deny,
        api::audit_events, api::audit_verify, api::audit_export,
        api::revocations, api::revoke, api::lift,
        api::secrets,
        api::tenant_webhook, api::set_tenant_webhook, api::delete_tenant_webhook,
        events::events,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the API, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}

fn router(app: AppState) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/v1/me", get(api::me))
        .route("/v1/tenants", get(api::tenants))
        .route(
            "/v1/tenant/webhook",
            get(api::tenant_webhook)
                .put(api::set_tenant_webhook)
                .delete(api::delete_tenant_webhook),
        )
        .route("/v1/users", get(api::users).post(api::add_user))
        .route("/v1/users/{name}", delete(api::delete_user))
        .route("/v1/users/{name}/roles", put(api::set_roles))
        .route(
            "/v1/users/{name}/tokens",
            get(api::tokens).post(api::create_token),
        )
        .route("/v1/tokens/{id}", delete(api::delete_token))
        .route(
            "/v1/definitions",
            get(api::definitions).post(api::register_definition),
        )
        .route("/v1/definitions/{name}", get(api::definition))
        .route(
            "/v1/definitions/{name}/versions",
            get(api::definition_versions),
        )
        .route(
            "/v1/definitions/{name}/versions/{version}",
            get(api::definition_version),
        )
        .route("/v1/definitions/{name}/diff", get(api::definition_diff))
        .route("/v1/tasks", get(api::tasks).post(api::start_task))
        .route("/v1/tasks/{id}/stop", post(api::stop_task))
        .route("/v1/tasks/{id}", get(api::task))
        .route("/v1/tasks/{id}/logs", get(api::task_logs))
        .route("/v1/tasks/{id}/budget", get(api::task_budget))
        .route("/v1/budgets", get(api::budgets))
        .route("/v1/approvals", get(api::approvals))
        .route("/v1/approvals/{id}", get(api::approval))
        .route("/v1/approvals/{id}/approve", post(api::approve))
        .route("/v1/approvals/{id}/deny", post(api::deny))
        .route("/v1/audit/events", get(api::audit_events))
        .route("/v1/audit/verify", get(api::audit_verify))
        .route("/v1/audit/export", get(api::audit_export))
        .route("/v1/revocations", get(api::revocations).post(api::revoke))
        .route("/v1/revocations/lift", post(api::lift))
        .route("/v1/secrets", get(api::secrets))
        .route("/v1/events", get(events::events))
        .route(
            "/console",
            get(|| async { axum::response::Redirect::permanent("/console/") }),
        )
        .route("/console/", get(console::home))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/console/state", get(console::state))
        .route("/console/events", get(console::stream))
        .route("/console/tasks", post(console::start_task))
        .route("/console/tasks/{id}", get(console::task_page))
        .route("/console/tasks/{id}/log", get(console::task_log))
        .route("/console/tasks/{id}/stop", post(console::stop_task))
        .route(
            "/console/login",
            get(console::login_form).post(console::login),
        )
        .route("/console/logout", post(console::logout))
        .route("/console/audit", get(console::audit))
        .route("/console/definitions", get(console::definitions))
        .route("/console/definitions/{name}", get(console::definition))
        .route("/console/approvals/{id}", get(console::approval_page))
        .route("/console/approvals/{id}/{verb}", post(console::decide))
        .fallback(api::not_found)
        .layer(axum::middleware::map_response(safe_headers))
        .with_state(app)
}

/// Headers every answer carries, errors and extractor rejections included: no content
/// sniffing (so no answer can be loaded as a script or style from another page), not
/// readable across origins, no referrer. Pages set their own CSP on top.
async fn safe_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let h = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            axum::http::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            axum::http::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

fn open_audit(state_dir: &Path, audit_url: Option<&str>) -> Result<AuditLog, ServerError> {
    Ok(match audit_url {
        Some(url) => AuditLog::open_url(state_dir, url)?,
        None => AuditLog::open(state_dir)?,
    })
}

/// A bound, not yet serving, control plane.
pub struct Server {
    app: AppState,
    listener: tokio::net::TcpListener,
    announcer: Arc<crate::webhook::Announcer>,
}

impl Server {
    /// Opens the state (control database, audit log, revocations) and binds the listener.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        let ServerConfig {
            state_dir,
            listen,
            database_url,
            audit_url,
            runner,
            gateway_config,
            approval_webhook,
            allow_private_webhooks,
            secure_cookies,
        } = config;
        let webhook = approval_webhook
            .map(|url| {
                crate::client::Client::new(&url, None)
                    .map_err(|e| ServerError::Io(format!("invalid approval webhook: {e}")))
            })
            .transpose()?;
        let app = tokio::task::spawn_blocking(move || -> Result<App, ServerError> {
            let db = Arc::new(Db::open(&state_dir, database_url.as_deref())?);
            let audit_url = self::audit_url(database_url.as_deref(), audit_url.as_deref());
            let audit = open_audit(&state_dir, audit_url.as_deref())?;
            let revocations = crate::revocations::revocations(&state_dir, database_url.as_deref())?;
            Ok(App {
                runner: crate::runner::Runner::new(runner, database_url, audit_url, gateway_config),
                approvals: ApprovalStore::new(Arc::clone(&db), audit.clone()),
                state_dir,
                db,
                audit,
                revocations,
                allow_private_webhooks,
                secure_cookies,
                streams: Arc::default(),
            })
        })
        .await
        .map_err(|e| ServerError::Io(format!("cannot open the control plane's state: {e}")))??;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ServerError::Io(format!("cannot listen on `{listen}`: {e}")))?;
        let announcer = Arc::new(crate::webhook::Announcer::new(
            Arc::clone(&app.db),
            app.audit.clone(),
            webhook,
            allow_private_webhooks,
        ));
        Ok(Self {
            app: Arc::new(app),
            listener,
            announcer,
        })
    }

    /// The address it listens on (the port chosen, when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener
            .local_addr()
            .map_err(|e| ServerError::Io(format!("cannot read the listening address: {e}")))
    }

    /// The approval store, for a gateway in the same process.
    pub fn approvals(&self) -> ApprovalStore {
        self.app.approvals.clone()
    }

    /// Serves until `shutdown` completes. Approvals past their deadline are denied every
    /// second (also those left pending across a restart).
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let approvals = self.app.approvals.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let store = approvals.clone();
                // A failing sweep is retried on the next tick; waiters expire on their own.
                let _ = tokio::task::spawn_blocking(move || store.expire_overdue()).await;
            }
        });
        // Announces every second: the operator's webhook (if any) and tenants' webhooks.
        let announcer = {
            let announcer = Arc::clone(&self.announcer);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    announcer.round().await;
                }
            })
        };
        let result = serve_connections(self.listener, router(self.app), shutdown).await;
        sweeper.abort();
        announcer.abort();
        result
    }
}

/// How long a client may take to send a request's headers before the connection is
/// closed (slow or idle clients cannot hold connections for ever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 1024;

/// Accepts and serves HTTP/1.1 connections until `shutdown`, with a header read timeout
/// and a cap on open connections (axum's own loop has neither).
async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot
                .map_err(|e| ServerError::Io(format!("the connection limit failed: {e}")))?,
            () = &mut shutdown => return Ok(()),
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors or a connection reset before accept: wait, go on.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            // A connection's error (reset, timeout, malformed request) ends only it.
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
            drop(slot);
        });
    }
}

/// Creates `tenant` with its first admin `admin` and returns the admin's token (shown
/// once). Refuses a tenant that exists. Audited in the tenant's log. `database_url` and
/// `audit_url` are as in [`ServerConfig`].
pub fn bootstrap_admin(
    state_dir: &Path,
    database_url: Option<&str>,
    audit_url: Option<&str>,
    tenant: &Name,
    admin: &str,
) -> Result<NewToken, ServerError> {
    let db = Db::open(state_dir, database_url)?;
    let audit = open_audit(
        state_dir,
        self::audit_url(database_url, audit_url).as_deref(),
    )?;
    Accounts {
        db: &db,
        audit: &audit,
    }
    .bootstrap(tenant, admin)
}

/// Registers the definition in `file` for `tenant` on behalf of the server host's
/// operator `by`: a host-trusted version, which may name host paths and host commands
/// (workspace, read-only directories, policy files, stdio tool servers) and whose
/// relative paths resolve against `file`'s directory when the control plane starts it.
/// The text registered now is what runs; a later change to the file takes a new
/// registration. Audited as `definition_change` with `details.via = "host"`.
/// `database_url` and `audit_url` are as in [`ServerConfig`].
pub fn register_on_host(
    state_dir: &Path,
    database_url: Option<&str>,
    audit_url: Option<&str>,
    tenant: &Name,
    by: &str,
    file: &Path,
) -> Result<crate::Registered, ServerError> {
    crate::auth::valid_user(by)?;
    let source = std::path::absolute(file)
        .map_err(|e| ServerError::Io(format!("cannot resolve `{}`: {e}", file.display())))?;
    let text = std::fs::read_to_string(&source).map_err(|e| {
        ServerError::Io(format!(
            "cannot read definition `{}`: {e}",
            source.display()
        ))
    })?;
    let db = Db::open(state_dir, database_url)?;
    let audit = open_audit(
        state_dir,
        self::audit_url(database_url, audit_url).as_deref(),
    )?;
    crate::definitions::Registry {
        db: &db,
        audit: &audit,
        state_dir,
    }
    .register_from(tenant, by, &text, crate::definitions::Origin::Host(&source))
}
