//! The governed sections of an agent definition: egress capabilities, budgets, extra
//! policies, the loop limit and the agents this one may start.
//!
//! As in [`crate::definition`], two layers: the `Raw*` serde model as written (strict,
//! with a JSON Schema) and the validated form ([`Governance`]) that `agentspace-policy`
//! compiles to Cedar. Nothing here reads files or parses Cedar: expressions and policy
//! files are checked by the policy crate, which has the engine.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::Name;
use crate::quantity::{Duration, Size};

/// HTTP methods an egress rule may name. `CONNECT` and `TRACE` are deliberately absent:
/// the gateway terminates TLS itself and never forwards either.
pub const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Default for `spec.loopLimit`: the same request more than this many times in a row is
/// denied with reason `loop`.
pub const DEFAULT_LOOP_LIMIT: u32 = 3;

/// Default for `approval.timeout`: how long a held request waits for a human.
pub const DEFAULT_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// One outbound capability as written under `spec.egress`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEgressRule {
    /// The capability's name: budgets, revocation and the audit log refer to it.
    pub name: Name,
    /// Host names it may reach, e.g. `api.stripe.com`, or `*.example.com` for any
    /// subdomain (not the domain itself). Case-insensitive.
    pub hosts: Vec<String>,
    /// HTTP methods (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS). Omitted: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// URL paths, starting with `/`; `*` matches any run of characters, `/` included
    /// (`/v1/charges*`). The query string is not part of the path. Omitted: every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Limits on this capability within one task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RawCapabilityBudget>,
    /// Hold matching requests for a human's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<RawApproval>,
    /// A credential the gateway injects into every request of this capability. The agent
    /// never sees it; one the agent sends itself is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<RawCredential>,
    /// `intercept` (default): the gateway terminates TLS and decides each request.
    /// `passthrough`: for clients that pin certificates; the gateway reads only the TLS
    /// server name, decides the connection on host and port, and relays the encrypted
    /// bytes. A passthrough rule cannot have `methods`, `paths` or `credential`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,
    /// The hosts are internal services (loopback or private addresses) the agent may
    /// reach. Each host must be an exact name or an IP address; cloud metadata and other
    /// link-local addresses stay refused unless named as an IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<bool>,
    /// Send a per-call identity token (`Agentspace-Identity`, a one-time EdDSA JWT naming
    /// the user and the agent) with every request of this capability, so the service can
    /// verify who the call is for. Default: `true` for `internal: true` rules, `false`
    /// otherwise (a third party need not learn the tenant's user names). Not possible with
    /// `tls: passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<bool>,
}

/// How the gateway handles TLS to a rule's hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Terminate TLS with the tenant's CA and decide every HTTP request.
    #[default]
    Intercept,
    /// Relay the TLS connection untouched; decide it on the server name and port.
    Passthrough,
}

/// How a brokered credential is applied: exactly one of `header`, `basic`, `query`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCredential {
    /// The secret's name in the tenant's store (`agentspace secret set`).
    pub secret: String,
    /// A header to set, e.g. `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The header's value, `{}` standing for the secret (default `{}`), e.g. `Bearer {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// HTTP basic authentication: the secret is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<RawBasicAuth>,
    /// A query parameter whose value is the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Sign every request with AWS Signature Version 4; the secret holds
    /// `ACCESS_KEY_ID:SECRET_ACCESS_KEY` or `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_sig_v4: Option<RawAwsSigV4>,
}

/// Where AWS Signature Version 4 signatures are scoped.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAwsSigV4 {
    /// The AWS region, e.g. `us-east-1`.
    pub region: String,
    /// The service's signing name, e.g. `s3`, `execute-api`, `bedrock`.
    pub service: String,
}

/// HTTP basic authentication.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBasicAuth {
    /// The user name.
    pub username: String,
}

/// A validated brokered credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CredentialRef {
    /// The secret's name in the tenant's store.
    pub secret: String,
    /// How it is applied.
    pub apply: CredentialApply,
}

/// How a credential is applied to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CredentialApply {
    /// A header whose value is `format` with `{}` replaced by the secret.
    Header {
        /// The header's name.
        name: String,
        /// The value pattern.
        format: String,
    },
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        username: String,
    },
    /// A query parameter.
    Query {
        /// The parameter's name.
        param: String,
    },
    /// AWS Signature Version 4 signing.
    AwsSigV4 {
        /// The region, e.g. `us-east-1`.
        region: String,
        /// The service's signing name, e.g. `s3`.
        service: String,
    },
}

pub(crate) fn validate_credential(c: &RawCredential) -> Result<CredentialRef, (String, String)> {
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !token_ok(&c.secret) {
        return Err((
            "secret".to_owned(),
            format!(
                "`{}` is not a secret name (1-128 letters, digits, `-`, `_`, `.`)",
                c.secret
            ),
        ));
    }
    let apply = match (&c.header, &c.basic, &c.query, &c.aws_sig_v4) {
        (None, None, None, Some(aws)) if c.format.is_none() => {
            let scope_ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            if !scope_ok(&aws.region) {
                return Err((
                    "awsSigV4.region".to_owned(),
                    format!(
                        "`{}` is not an AWS region (lowercase letters, digits and `-`, e.g. `us-east-1`)",
                        aws.region
                    ),
                ));
            }
            if !scope_ok(&aws.service) {
                return Err((
                    "awsSigV4.service".to_owned(),
                    format!(
                        "`{}` is not an AWS service signing name (lowercase letters, digits and `-`, e.g. `s3`)",
                        aws.service
                    ),
                ));
            }
            CredentialApply::AwsSigV4 {
                region: aws.region.clone(),
                service: aws.service.clone(),
            }
        }
        (Some(name), None, None, None) => {
            if !token_ok(name) {
                return Err((
                    "header".to_owned(),
                    format!("`{name}` is not a header name"),
                ));
            }
            let format = c.format.clone().unwrap_or_else(|| "{}".to_owned());
            if format.matches("{}").count() != 1 || format.contains(['\r', '\n']) {
                return Err(("format".to_owned(), "write the value with exactly one `{}` for the secret, on one line (e.g. `Bearer {}`)".to_owned()));
            }
            CredentialApply::Header {
                name: name.clone(),
                format,
            }
        }
        (None, Some(b), None, None) if c.format.is_none() => {
            if b.username.contains(':') || b.username.contains(['\r', '\n']) {
                return Err((
                    "basic.username".to_owned(),
                    "a basic-auth user name cannot contain `:` or line breaks".to_owned(),
                ));
            }
            CredentialApply::Basic {
                username: b.username.clone(),
            }
        }
        (None, None, Some(param), None) if c.format.is_none() => {
            if !token_ok(param) {
                return Err((
                    "query".to_owned(),
                    format!("`{param}` is not a query parameter name"),
                ));
            }
            CredentialApply::Query {
                param: param.clone(),
            }
        }
        _ => {
            return Err((
                "header".to_owned(),
                "give exactly one of `header` (with an optional `format`), `basic`, `query` or `awsSigV4`"
                    .to_owned(),
            ));
        }
    };
    Ok(CredentialRef {
        secret: c.secret.clone(),
        apply,
    })
}

/// When a request needs a human's approval.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawApproval {
    /// A Cedar expression over the request (`context.body.amount > 1000`). Omitted: every
    /// matching request needs approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// How long the request is held before it is denied (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Limits on one capability within one task.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCapabilityBudget {
    /// Most requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Most bytes sent and received, e.g. `10Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Size>,
    /// Most LLM tokens (input and output) reported by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

/// `spec.budgets` as written.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBudgets {
    /// Most outbound requests in one task, all capabilities together.
    #[serde(default)]
    pub requests: Option<u64>,
    /// Most bytes sent and received in one task.
    #[serde(default)]
    pub bytes: Option<Size>,
    /// Most LLM tokens in one task.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Wall-clock time after the task's first decision during which outbound actions
    /// are allowed, e.g. `15m`.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Limits for each user of this agent, summed over all of that user's tasks in a
    /// fixed window.
    #[serde(default)]
    pub per_user: Option<RawWindowBudget>,
}

/// Limits per user of an agent over a window of time.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawWindowBudget {
    /// The window, e.g. `24h`. Windows are fixed (aligned to the Unix epoch), not sliding.
    pub window: Duration,
    /// Most requests per window.
    #[serde(default)]
    pub requests: Option<u64>,
    /// Most bytes per window.
    #[serde(default)]
    pub bytes: Option<Size>,
    /// Most LLM tokens per window.
    #[serde(default)]
    pub tokens: Option<u64>,
}

/// Limits on requests, bytes and tokens; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Quota {
    /// Most requests.
    pub requests: Option<u64>,
    /// Most bytes.
    pub bytes: Option<u64>,
    /// Most LLM tokens.
    pub tokens: Option<u64>,
}

impl Quota {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.bytes.is_none() && self.tokens.is_none()
    }
}

/// A validated egress capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressRule {
    /// The capability's name.
    pub name: Name,
    /// Lowercase host names or `*.domain` patterns.
    pub hosts: Vec<String>,
    /// Uppercase methods; empty means every method.
    pub methods: Vec<String>,
    /// Path patterns (`*` wildcard); empty means every path.
    pub paths: Vec<String>,
    /// Per-task limits on this capability.
    pub budget: Quota,
    /// The approval requirement, if any.
    pub approval: Option<Approval>,
    /// The credential the gateway injects, if any.
    pub credential: Option<CredentialRef>,
    /// Whether TLS to these hosts is intercepted or passed through.
    pub tls: TlsMode,
    /// Whether the hosts are internal services the SSRF guard lets through.
    pub internal: bool,
    /// Whether requests of this capability carry a per-call identity token.
    pub identity: bool,
}

impl EgressRule {
    /// Whether `host` (lowercase, no trailing dot) is one of this rule's hosts: equal to
    /// an exact host, or a subdomain of a `*.domain` pattern.
    pub fn names_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|pattern| host_matches(pattern, host))
    }
}

/// Whether `host` matches `pattern` (`api.example.com`, or `*.example.com` for any
/// subdomain, not the domain itself).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => pattern == host,
    }
}

/// Whether some host could match both patterns.
fn patterns_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix("*."), b.strip_prefix("*.")) {
        (None, None) => a == b,
        (Some(_), None) => host_matches(a, b),
        (None, Some(_)) => host_matches(b, a),
        // `*.x.example.com` and `*.example.com` share `a.x.example.com`.
        (Some(da), Some(db)) => da == db || host_matches(a, db) || host_matches(b, da),
    }
}

/// A validated approval requirement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// The Cedar condition, as written; `None` means always.
    pub when: Option<String>,
    /// How long to hold the request.
    pub timeout: std::time::Duration,
}

/// Validated `spec.budgets`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Budgets {
    /// Per task.
    pub task: Quota,
    /// Wall-clock limit per task, from its first decision.
    pub task_time: Option<std::time::Duration>,
    /// Per user of this agent per window.
    pub per_user: Option<WindowBudget>,
}

/// Validated per-user window budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WindowBudget {
    /// The window length.
    pub window: std::time::Duration,
    /// The limits in each window.
    pub quota: Quota,
}

/// The validated governed sections of a definition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Governance {
    /// Outbound capabilities, in file order.
    pub egress: Vec<EgressRule>,
    /// Budgets.
    pub budgets: Budgets,
    /// Extra Cedar policy files, resolved against the definition's directory.
    pub policies: Vec<std::path::PathBuf>,
    /// The loop breaker threshold.
    pub loop_limit: u32,
    /// Agents (same tenant) this agent may start.
    pub spawn: Vec<Name>,
    /// MCP tool servers and data-flow rules.
    pub tools: crate::tools::Tools,
}

/// A problem in the governed sections: the dotted field and the message.
pub(crate) type FieldError = (String, String);

pub(crate) fn validate_egress(raw: &[RawEgressRule]) -> Result<Vec<EgressRule>, FieldError> {
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, rule) in raw.iter().enumerate() {
        let field = |sub: &str| format!("spec.egress[{i}].{sub}");
        if !names.insert(rule.name.clone()) {
            return Err((
                field("name"),
                format!(
                    "capability `{}` is defined twice; give each rule its own name",
                    rule.name
                ),
            ));
        }
        if rule.hosts.is_empty() {
            return Err((field("hosts"), "list at least one host".to_owned()));
        }
        let mut hosts = Vec::new();
        for host in &rule.hosts {
            let host = normalize_host(host).map_err(|m| (field("hosts"), m))?;
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        let internal = rule.internal.unwrap_or(false);
        if internal && let Some(wild) = hosts.iter().find(|h| h.starts_with("*.")) {
            return Err((
                field("hosts"),
                format!(
                    "`{wild}` is a wildcard, and an `internal: true` rule must name each internal service exactly (a name or an IP address), so that no other name can reach internal addresses"
                ),
            ));
        }
        let tls = rule.tls.unwrap_or_default();
        if tls == TlsMode::Passthrough {
            // Only the server name and port are visible in a passed-through connection.
            let unenforceable = [
                ("methods", rule.methods.is_some(), "methods"),
                ("paths", rule.paths.is_some(), "paths"),
                ("credential", rule.credential.is_some(), "a credential"),
                (
                    "identity",
                    rule.identity == Some(true),
                    "a per-call identity token",
                ),
                (
                    "budget.tokens",
                    rule.budget.as_ref().is_some_and(|b| b.tokens.is_some()),
                    "a token budget",
                ),
            ];
            if let Some((sub, _, what)) = unenforceable.iter().find(|(_, set, _)| *set) {
                return Err((
                    field(sub),
                    format!(
                        "a `tls: passthrough` rule cannot have {what}: the gateway does not see inside a passed-through connection, so it could not enforce it; remove `{sub}`, or remove `tls: passthrough` to have TLS intercepted"
                    ),
                ));
            }
        }
        let mut methods = Vec::new();
        if let Some(list) = &rule.methods {
            if list.is_empty() {
                return Err((
                    field("methods"),
                    "an empty list allows nothing; list methods or omit the field for all"
                        .to_owned(),
                ));
            }
            for m in list {
                let upper = m.to_ascii_uppercase();
                if !HTTP_METHODS.contains(&upper.as_str()) {
                    return Err((
                        field("methods"),
                        format!(
                            "`{m}` is not a method Agent Space forwards; use one of {}",
                            HTTP_METHODS.join(", ")
                        ),
                    ));
                }
                if !methods.contains(&upper) {
                    methods.push(upper);
                }
            }
        }
        let mut paths = Vec::new();
        if let Some(list) = &rule.paths {
            if list.is_empty() {
                return Err((
                    field("paths"),
                    "an empty list allows nothing; list paths or omit the field for all".to_owned(),
                ));
            }
            for p in list {
                check_path(p).map_err(|m| (field("paths"), m))?;
                if !paths.contains(p) {
                    paths.push(p.clone());
                }
            }
        }
        let budget = match &rule.budget {
            Some(b) => quota(b.requests, b.bytes, b.tokens).map_err(|m| (field("budget"), m))?,
            None => Quota::default(),
        };
        let approval = match &rule.approval {
            Some(a) => {
                if let Some(when) = &a.when {
                    if when.trim().is_empty() {
                        return Err((
                            field("approval.when"),
                            "the condition is empty; write a Cedar expression or omit `when` to always require approval".to_owned(),
                        ));
                    }
                    if when.len() > 4096 {
                        return Err((
                            field("approval.when"),
                            "the condition is longer than 4096 characters".to_owned(),
                        ));
                    }
                }
                let timeout = a.timeout.map_or(DEFAULT_APPROVAL_TIMEOUT, Duration::get);
                if timeout.is_zero() {
                    return Err((
                        field("approval.timeout"),
                        "must be longer than zero".to_owned(),
                    ));
                }
                Some(Approval {
                    when: a.when.clone(),
                    timeout,
                })
            }
            None => None,
        };
        let credential = match &rule.credential {
            Some(c) => Some(
                validate_credential(c)
                    .map_err(|(sub, m)| (field(&format!("credential.{sub}")), m))?,
            ),
            None => None,
        };
        out.push(EgressRule {
            name: rule.name.clone(),
            hosts,
            methods,
            paths,
            budget,
            approval,
            credential,
            tls,
            internal,
            // A passed-through connection has no headers to carry a token in.
            identity: rule.identity.unwrap_or(internal) && tls == TlsMode::Intercept,
        });
    }
    // A host is either intercepted or passed through, never both: which one must not
    // depend on the order of the rules.
    for (i, pass) in out.iter().enumerate() {
        if pass.tls != TlsMode::Passthrough {
            continue;
        }
        for other in out.iter().filter(|r| r.tls == TlsMode::Intercept) {
            for p in &pass.hosts {
                if let Some(o) = other.hosts.iter().find(|o| patterns_overlap(p, o)) {
                    return Err((
                        format!("spec.egress[{i}].hosts"),
                        format!(
                            "`{p}` is passed through here but rule `{}` intercepts `{o}`; a host is either intercepted or passed through, so give the two rules hosts that do not overlap",
                            other.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn validate_budgets(raw: &RawBudgets) -> Result<Budgets, FieldError> {
    let task =
        quota(raw.requests, raw.bytes, raw.tokens).map_err(|m| ("spec.budgets".to_owned(), m))?;
    let task_time = match raw.timeout {
        Some(t) if t.get().is_zero() => {
            return Err((
                "spec.budgets.timeout".to_owned(),
                "must be longer than zero".to_owned(),
            ));
        }
        Some(t) => Some(t.get()),
        None => None,
    };
    let per_user = match &raw.per_user {
        Some(w) => {
            if w.window.get().as_secs() == 0 {
                return Err((
                    "spec.budgets.perUser.window".to_owned(),
                    "must be at least one second".to_owned(),
                ));
            }
            let quota = quota(w.requests, w.bytes, w.tokens)
                .map_err(|m| ("spec.budgets.perUser".to_owned(), m))?;
            if quota.is_unlimited() {
                return Err((
                    "spec.budgets.perUser".to_owned(),
                    "set at least one of `requests`, `bytes` or `tokens`, or remove `perUser`"
                        .to_owned(),
                ));
            }
            Some(WindowBudget {
                window: w.window.get(),
                quota,
            })
        }
        None => None,
    };
    Ok(Budgets {
        task,
        task_time,
        per_user,
    })
}

pub(crate) fn validate_loop_limit(raw: Option<u32>) -> Result<u32, FieldError> {
    match raw {
        None => Ok(DEFAULT_LOOP_LIMIT),
        Some(0) => Err((
            "spec.loopLimit".to_owned(),
            "must be at least 1 (the number of identical requests in a row that are still allowed)"
                .to_owned(),
        )),
        Some(n) => Ok(n),
    }
}

pub(crate) fn validate_spawn(raw: &[Name]) -> Result<Vec<Name>, FieldError> {
    let mut seen = BTreeSet::new();
    for name in raw {
        if !seen.insert(name) {
            return Err(("spec.spawn".to_owned(), format!("`{name}` is listed twice")));
        }
    }
    Ok(raw.to_vec())
}

fn quota(requests: Option<u64>, bytes: Option<Size>, tokens: Option<u64>) -> Result<Quota, String> {
    if requests == Some(0) || tokens == Some(0) || bytes.is_some_and(|b| b.bytes() == 0) {
        return Err(
            "a limit of 0 allows nothing; use a positive number, or remove the capability"
                .to_owned(),
        );
    }
    Ok(Quota {
        requests,
        bytes: bytes.map(Size::bytes),
        tokens,
    })
}

/// A host as rules hold it: an IP address in its canonical form (`::1`, brackets
/// optional), or a lowercase DNS name, optionally prefixed `*.`.
fn normalize_host(host: &str) -> Result<String, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(ip.to_string());
    }
    let host = host.to_ascii_lowercase();
    check_host(&host)?;
    Ok(host)
}

/// A DNS name (lowercase labels of letters, digits and `-`), optionally prefixed `*.`.
fn check_host(host: &str) -> Result<(), String> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let bad = |why: &str| {
        Err(format!(
            "`{host}` is not a host name: {why} (write `api.example.com` or `*.example.com`)"
        ))
    };
    if bare.is_empty() || bare.len() > 253 {
        return bad("it is empty or longer than 253 characters");
    }
    if bare.contains('*') {
        return bad("`*` is only allowed as the whole first label");
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("a label is empty or longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad(
                "it has a character other than letters, digits, `-` and `.`; ports and schemes do not belong here",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with `-`");
        }
    }
    Ok(())
}

/// A path pattern: starts with `/`, printable ASCII without space, `"`, `\`, `?` or `#`.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') && path != "*" {
        return Err(format!("`{path}` does not start with `/`"));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "`{path}` has a query or fragment; paths match the path only, the query is `context.query`"
        ));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(format!(
            "`{path}` has a space, quote, backslash or non-ASCII character; percent-encode it"
        ));
    }
    if path.len() > 2048 {
        return Err("a path pattern is longer than 2048 characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_accept_names_and_leading_wildcards_only() {
        for ok in ["api.stripe.com", "*.example.com", "localhost", "10.0.0.1"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "*",
            "a.*.com",
            "api.stripe.com:443",
            "https://x",
            "a..b",
            "-a.com",
            "a b",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_must_be_absolute_and_plain() {
        assert!(check_path("/v1/charges*").is_ok());
        for bad in ["v1", "/a?b=1", "/a b", "/a\"", "/a\\b", "/é"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(quota(Some(0), None, None).is_err());
        assert!(quota(None, Some(Size::from_bytes(0)), None).is_err());
        assert_eq!(quota(Some(5), None, None).map(|q| q.requests), Ok(Some(5)));
    }
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    fn raw(yaml: &str) -> RawCredential {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn the_three_forms_validate() {
        let c = validate_credential(&raw(
            "{secret: stripe-key, header: Authorization, format: 'Bearer {}'}",
        ))
        .unwrap();
        assert_eq!(
            c.apply,
            CredentialApply::Header {
                name: "Authorization".into(),
                format: "Bearer {}".into()
            }
        );
        let c = validate_credential(&raw("{secret: s, basic: {username: bot}}")).unwrap();
        assert_eq!(
            c.apply,
            CredentialApply::Basic {
                username: "bot".into()
            }
        );
        let c = validate_credential(&raw("{secret: s, query: api_key}")).unwrap();
        assert_eq!(
            c.apply,
            CredentialApply::Query {
                param: "api_key".into()
            }
        );
    }

    #[test]
    fn ambiguous_or_malformed_credentials_are_refused() {
        for bad in [
            "{secret: s}",
            "{secret: s, header: A, query: q}",
            "{secret: s, header: A, format: 'no placeholder'}",
            "{secret: s, header: A, format: '{} {}'}",
            "{secret: s, query: q, format: '{}'}",
            "{secret: 'a b', header: A}",
            "{secret: s, header: 'X: y'}",
            "{secret: s, basic: {username: 'a:b'}}",
        ] {
            assert!(validate_credential(&raw(bad)).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod egress_tests {
    use super::*;

    fn egress(yaml: &str) -> Result<Vec<EgressRule>, FieldError> {
        let raw: Vec<RawEgressRule> = serde_yaml_ng::from_str(yaml).unwrap();
        validate_egress(&raw)
    }

    fn refused(yaml: &str, field: &str, words: &str) {
        let (f, m) = egress(yaml).unwrap_err();
        assert_eq!(f, field, "{m}");
        assert!(m.contains(words), "{m}");
    }

    #[test]
    fn aws_sig_v4_validates_region_and_service() {
        let rules =
            egress("[{name: s3, hosts: [s3.amazonaws.com], credential: {secret: aws-key, awsSigV4: {region: us-east-1, service: s3}}}]")
                .unwrap();
        assert_eq!(
            rules[0].credential.as_ref().unwrap().apply,
            CredentialApply::AwsSigV4 {
                region: "us-east-1".into(),
                service: "s3".into()
            }
        );
        refused(
            "[{name: s3, hosts: [a.com], credential: {secret: k, awsSigV4: {region: 'US East', service: s3}}}]",
            "spec.egress[0].credential.awsSigV4.region",
            "not an AWS region",
        );
        refused(
            "[{name: s3, hosts: [a.com], credential: {secret: k, header: A, awsSigV4: {region: us-east-1, service: s3}}}]",
            "spec.egress[0].credential.header",
            "exactly one",
        );
    }

    #[test]
    fn passthrough_rules_refuse_what_they_cannot_enforce() {
        let rules = egress("[{name: pinned, hosts: [pinned.example.com], tls: passthrough, budget: {requests: 3, bytes: 1Mi}}]").unwrap();
        assert_eq!(rules[0].tls, TlsMode::Passthrough);
        for (extra, field) in [
            (
                "credential: {secret: k, header: Authorization}",
                "spec.egress[0].credential",
            ),
            ("methods: [GET]", "spec.egress[0].methods"),
            ("paths: [/v1/*]", "spec.egress[0].paths"),
            ("budget: {tokens: 10}", "spec.egress[0].budget.tokens"),
            ("identity: true", "spec.egress[0].identity"),
        ] {
            refused(
                &format!("[{{name: pinned, hosts: [p.example.com], tls: passthrough, {extra}}}]"),
                field,
                "cannot have",
            );
        }
    }

    #[test]
    fn a_host_is_either_intercepted_or_passed_through() {
        refused(
            "[{name: api, hosts: ['*.example.com']}, {name: pinned, hosts: [pinned.example.com], tls: passthrough}]",
            "spec.egress[1].hosts",
            "either intercepted or passed through",
        );
        refused(
            "[{name: pinned, hosts: ['*.a.example.com'], tls: passthrough}, {name: api, hosts: ['*.example.com']}]",
            "spec.egress[0].hosts",
            "rule `api`",
        );
        assert!(egress("[{name: api, hosts: [api.example.com, '*.x.example.com']}, {name: pinned, hosts: [pinned.example.com, '*.example.org'], tls: passthrough}]").is_ok());
    }

    #[test]
    fn identity_tokens_go_to_internal_services_unless_the_rule_says_otherwise() {
        let rules = egress(
            "[{name: db, hosts: [db.corp], internal: true}, {name: api, hosts: [api.example.com]}, \
              {name: saas, hosts: [saas.example.com], identity: true}, \
              {name: quiet, hosts: [quiet.corp], internal: true, identity: false}, \
              {name: pinned, hosts: [pinned.corp], internal: true, tls: passthrough}]",
        )
        .unwrap();
        let identity: Vec<bool> = rules.iter().map(|r| r.identity).collect();
        assert_eq!(identity, [true, false, true, false, false]);
    }

    #[test]
    fn internal_rules_name_each_service_exactly() {
        let rules =
            egress("[{name: db, hosts: [db.corp, '10.0.0.5', '[FD00::1]'], internal: true}]")
                .unwrap();
        assert!(rules[0].internal);
        assert_eq!(rules[0].hosts, ["db.corp", "10.0.0.5", "fd00::1"]);
        refused(
            "[{name: db, hosts: ['*.corp'], internal: true}]",
            "spec.egress[0].hosts",
            "wildcard",
        );
        assert!(!egress("[{name: api, hosts: [a.com]}]").unwrap()[0].internal);
    }

    #[test]
    fn host_patterns_match_subdomains_only() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("api.example.com", "api.example.com"));
        assert!(patterns_overlap("*.example.com", "*.a.example.com"));
        assert!(!patterns_overlap("*.example.com", "*.example.org"));
    }
}
