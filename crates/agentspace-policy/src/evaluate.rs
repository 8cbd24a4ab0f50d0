//! Evaluating one request against compiled policies with Cedar: no state, no I/O.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use agentspace_core::HTTP_METHODS;
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    RestrictedExpression,
};

use crate::compile::{CompiledPolicies, schema};
use crate::decision::{Decision, DenyReason};
use crate::request::{Action, Request, Usage};

/// Most nested levels and values taken from a JSON body or tool arguments; the rest is
/// dropped (and reading it in a policy is an evaluation error, which never allows).
const MAX_DEPTH: usize = 16;
const MAX_VALUES: usize = 10_000;

/// A Cedar decision before budgets: what [`CompiledPolicies::evaluate`] returns, with the
/// capabilities the engine charges.
pub(crate) struct Evaluated {
    pub(crate) decision: Decision,
    pub(crate) capabilities: Vec<String>,
}

impl CompiledPolicies {
    /// Decides `request` with Cedar alone: no budgets, loop breaker or revocations (the
    /// [`crate::PolicyEngine`] adds those). `context.usage` and `context.time` of the
    /// request are used as given (zero and now when absent).
    pub fn evaluate(&self, request: &Request) -> Decision {
        let usage = request.context.usage.unwrap_or_default();
        let now = request.context.time.unwrap_or_else(crate::store::unix_now);
        self.evaluate_full(request, usage, now, false).decision
    }

    pub(crate) fn evaluate_full(
        &self,
        request: &Request,
        usage: Usage,
        now: u64,
        approved: bool,
    ) -> Evaluated {
        let denied = |reason, message: String| Evaluated {
            decision: Decision::deny(reason, message),
            capabilities: Vec::new(),
        };
        if let Err(message) = self.check_request(request) {
            return denied(DenyReason::InvalidRequest, message);
        }
        let (cedar_request, entities) = match build(request, usage, now) {
            Ok(v) => v,
            Err(e) => {
                return denied(
                    DenyReason::Error,
                    format!("the request cannot be evaluated: {e}"),
                );
            }
        };
        let action_key = cedar_request
            .action()
            .map(ToString::to_string)
            .unwrap_or_default();
        let resource_key = cedar_request
            .resource()
            .map(ToString::to_string)
            .unwrap_or_default();
        let Some((base, approvals)) = self.slice(&action_key, &resource_key) else {
            return denied(
                DenyReason::NotPermitted,
                format!("no policy permits {} (default deny)", describe(request)),
            );
        };
        let authorizer = Authorizer::new();
        let response = authorizer.is_authorized(&cedar_request, base, &entities);
        let determining: Vec<PolicyId> = sorted(response.diagnostics().reason());
        let errored: Vec<(PolicyId, String)> =
            response.diagnostics().errors().map(policy_error).collect();
        let forbid_errors: Vec<&(PolicyId, String)> = errored
            .iter()
            .filter(|(id, _)| self.meta.get(id).is_none_or(|m| m.forbid))
            .collect();
        let what = describe(request);

        if !forbid_errors.is_empty() {
            // A forbid that could not be evaluated might have applied: fail closed.
            let details: Vec<String> = forbid_errors
                .iter()
                .map(|(id, e)| format!("`{id}`: {e}"))
                .collect();
            return Evaluated {
                decision: Decision::Deny {
                    reason: DenyReason::Error,
                    policies: forbid_errors.iter().map(|(id, _)| id.to_string()).collect(),
                    message: format!(
                        "{what} is denied because a forbid policy could not be evaluated ({}); guard attribute reads with `has`",
                        details.join("; ")
                    ),
                },
                capabilities: Vec::new(),
            };
        }
        if response.decision() == cedar_policy::Decision::Deny {
            if determining.is_empty() {
                let mut message = format!("no policy permits {what} (default deny)");
                if !errored.is_empty() {
                    let ids: Vec<String> =
                        errored.iter().map(|(id, _)| format!("`{id}`")).collect();
                    message.push_str(&format!(
                        "; permit policies {} could not be evaluated",
                        ids.join(", ")
                    ));
                }
                return denied(DenyReason::NotPermitted, message);
            }
            let reasons: Vec<String> = determining
                .iter()
                .map(
                    |id| match self.meta.get(id).and_then(|m| m.reason.as_deref()) {
                        Some(r) => format!("`{id}`: {r}"),
                        None => format!("`{id}`"),
                    },
                )
                .collect();
            return Evaluated {
                decision: Decision::Deny {
                    reason: DenyReason::Forbidden,
                    policies: determining.iter().map(ToString::to_string).collect(),
                    message: format!("{what} is forbidden by {}", reasons.join("; ")),
                },
                capabilities: Vec::new(),
            };
        }

        let capabilities: Vec<String> = determining
            .iter()
            .filter_map(|id| self.meta.get(id).and_then(|m| m.capability.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let policies: Vec<String> = determining.iter().map(ToString::to_string).collect();

        if !approved
            && !approvals.is_empty()
            && let Some(decision) = self.approval(approvals, &cedar_request, &entities, &what)
        {
            return Evaluated {
                decision,
                capabilities,
            };
        }
        let under = if capabilities.is_empty() {
            String::new()
        } else {
            format!(
                " under capability {}",
                capabilities
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let message = format!(
            "{what} is allowed by {}{under}",
            policies
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Evaluated {
            decision: Decision::Allow {
                policies,
                capabilities: capabilities.clone(),
                message,
            },
            capabilities,
        }
    }

    /// Evaluates the `@approval` forbids of an otherwise allowed request. One that holds,
    /// or that cannot be evaluated, means a human must decide.
    fn approval(
        &self,
        approvals: &cedar_policy::PolicySet,
        request: &cedar_policy::Request,
        entities: &Entities,
        what: &str,
    ) -> Option<Decision> {
        let response = Authorizer::new().is_authorized(request, approvals, entities);
        let mut ids: Vec<PolicyId> = sorted(response.diagnostics().reason());
        let errors: Vec<(PolicyId, String)> =
            response.diagnostics().errors().map(policy_error).collect();
        for (id, _) in &errors {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        if ids.is_empty() {
            return None;
        }
        let mut prompts = Vec::new();
        let mut timeout: Option<Duration> = None;
        for id in &ids {
            if let Some(m) = self.meta.get(id) {
                prompts.push(m.approval.clone().unwrap_or_else(|| id.to_string()));
                timeout = Some(timeout.map_or(m.timeout, |t| t.min(m.timeout)));
            }
        }
        let mut message = format!("{what} needs approval: {}", prompts.join("; "));
        for (id, e) in &errors {
            message.push_str(&format!(
                " (the condition of `{id}` could not be evaluated: {e})"
            ));
        }
        Some(Decision::ApprovalRequired {
            policies: ids.iter().map(ToString::to_string).collect(),
            prompt: prompts.join("; "),
            timeout: timeout.unwrap_or(agentspace_core::DEFAULT_APPROVAL_TIMEOUT),
            message,
        })
    }

    /// Checks that the request is for this definition and has what its action needs.
    fn check_request(&self, request: &Request) -> Result<(), String> {
        let p = &request.principal;
        if p.tenant().as_str() != self.tenant {
            return Err(format!(
                "the principal is of tenant `{}` but this definition belongs to tenant `{}`",
                p.tenant(),
                self.tenant
            ));
        }
        if p.current().agent.as_str() != self.agent {
            return Err(format!(
                "the acting agent is `{}` but this definition is agent `{}`; each agent is decided by its own definition",
                p.current().agent,
                self.agent
            ));
        }
        let r = &request.resource;
        match &request.action {
            Action::Http { method } => {
                if !HTTP_METHODS.contains(&method.as_str()) {
                    return Err(format!(
                        "HTTP method `{method}` is not forwarded; use one of {}",
                        HTTP_METHODS.join(", ")
                    ));
                }
                check_host(r.host.as_deref())?;
                if let Some(path) = &r.path {
                    check_path(path)?;
                }
            }
            Action::Dns => check_host(r.host.as_deref())?,
            Action::Mcp => {
                if r.server.as_deref().is_none_or(str::is_empty)
                    || r.tool.as_deref().is_none_or(str::is_empty)
                {
                    return Err(
                        "an `mcp` request needs `resource.server` and `resource.tool`".to_owned(),
                    );
                }
            }
            Action::Spawn => {
                if r.agent.is_none() {
                    return Err("a `spawn` request needs `resource.agent`".to_owned());
                }
            }
        }
        Ok(())
    }
}

fn check_host(host: Option<&str>) -> Result<(), String> {
    match host {
        Some(h)
            if !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            Ok(())
        }
        Some(h) => Err(format!("`{h}` is not a host name")),
        None => Err("the request needs `resource.host`".to_owned()),
    }
}

/// Refuses paths that a prefix rule could be tricked by: dot segments, encoded dots or
/// slashes, and anything that is not an absolute path.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path `{path}` does not start with `/`"));
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || path.contains('\\')
    {
        return Err(format!(
            "path `{path}` has an encoded `.`, `/` or `\\`; the gateway must normalise paths before asking"
        ));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!(
            "path `{path}` has a `.` or `..` segment; the gateway must normalise paths before asking"
        ));
    }
    if path.contains('?') || path.contains('#') {
        return Err(format!(
            "path `{path}` contains a query or fragment; pass the query as `context.query`"
        ));
    }
    Ok(())
}

/// The failing policy and the error, without the policy id repeated.
fn policy_error(e: &cedar_policy::AuthorizationError) -> (PolicyId, String) {
    match e {
        cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
            (e.policy_id().clone(), e.inner().to_string())
        }
    }
}

fn sorted<'a>(ids: impl Iterator<Item = &'a PolicyId>) -> Vec<PolicyId> {
    let mut v: Vec<PolicyId> = ids.cloned().collect();
    v.sort_by_key(ToString::to_string);
    v
}

/// `POST api.stripe.com/v1/charges` and the like, for messages.
pub(crate) fn describe(request: &Request) -> String {
    let r = &request.resource;
    match &request.action {
        Action::Http { method } => format!(
            "`{method} {}{}`",
            r.host.as_deref().unwrap_or("?"),
            r.path.as_deref().unwrap_or("/")
        ),
        Action::Dns => format!("DNS lookup of `{}`", r.host.as_deref().unwrap_or("?")),
        Action::Mcp => format!(
            "MCP call `{}/{}`",
            r.server.as_deref().unwrap_or("?"),
            r.tool.as_deref().unwrap_or("?")
        ),
        Action::Spawn => format!(
            "starting agent `{}`",
            r.agent.as_ref().map_or("?", |a| a.as_str())
        ),
    }
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    name.parse().map_err(|e| format!("{e}"))
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(
        type_name(ty)?,
        EntityId::new(id),
    ))
}

/// The Cedar request and entities for `request`.
fn build(
    request: &Request,
    usage: Usage,
    now: u64,
) -> Result<(cedar_policy::Request, Entities), String> {
    let p = &request.principal;
    let tenant = uid("AgentSpace::Tenant", p.tenant().as_str())?;
    let user = uid("AgentSpace::User", p.user().as_str())?;
    let agent = uid("AgentSpace::Agent", p.current().agent.as_str())?;
    let task = uid("AgentSpace::Task", p.current().task.as_str())?;
    let err = |e: &dyn std::fmt::Display| e.to_string();

    let mut entities = vec![
        Entity::new_no_attrs(tenant.clone(), HashSet::new()),
        Entity::new_no_attrs(user.clone(), HashSet::from([tenant.clone()])),
        Entity::new_no_attrs(agent.clone(), HashSet::from([tenant.clone()])),
        Entity::new(
            task.clone(),
            HashMap::from([
                (
                    "user".to_owned(),
                    RestrictedExpression::new_entity_uid(user),
                ),
                (
                    "agent".to_owned(),
                    RestrictedExpression::new_entity_uid(agent.clone()),
                ),
            ]),
            HashSet::from([agent, tenant.clone()]),
        )
        .map_err(|e| err(&e))?,
    ];

    let chain: Vec<RestrictedExpression> = p
        .delegators()
        .iter()
        .map(|a| RestrictedExpression::new_string(a.agent.to_string()))
        .collect();
    let depth = i64::try_from(p.depth()).unwrap_or(i64::MAX);
    let labels = RestrictedExpression::new_set(
        request
            .context
            .labels
            .iter()
            .map(|l| RestrictedExpression::new_string(l.clone())),
    );
    let mut pairs: Vec<(String, RestrictedExpression)> = vec![
        (
            "tenant".into(),
            RestrictedExpression::new_string(p.tenant().to_string()),
        ),
        (
            "user".into(),
            RestrictedExpression::new_string(p.user().to_string()),
        ),
        (
            "agent".into(),
            RestrictedExpression::new_string(p.current().agent.to_string()),
        ),
        (
            "task".into(),
            RestrictedExpression::new_string(p.current().task.to_string()),
        ),
        ("chain".into(), RestrictedExpression::new_set(chain)),
        ("depth".into(), RestrictedExpression::new_long(depth)),
        ("labels".into(), labels),
        ("usage".into(), usage_record(usage).map_err(|e| err(&e))?),
        ("time".into(), time_record(now).map_err(|e| err(&e))?),
    ];
    let r = &request.resource;
    let host = r.host.as_deref().unwrap_or("").to_ascii_lowercase();
    let (action_name, resource) = match &request.action {
        Action::Http { method } => {
            let mut budget = MAX_VALUES;
            pairs.extend([
                (
                    "method".into(),
                    RestrictedExpression::new_string(method.clone()),
                ),
                (
                    "host".into(),
                    RestrictedExpression::new_string(host.clone()),
                ),
                (
                    "port".into(),
                    RestrictedExpression::new_long(i64::from(r.port.unwrap_or(443))),
                ),
                (
                    "path".into(),
                    RestrictedExpression::new_string(
                        r.path.clone().unwrap_or_else(|| "/".to_owned()),
                    ),
                ),
                (
                    "query".into(),
                    RestrictedExpression::new_string(request.context.query.clone()),
                ),
                (
                    "headers".into(),
                    RestrictedExpression::new_record(request.context.headers.iter().map(
                        |(k, v)| {
                            (
                                k.to_ascii_lowercase(),
                                RestrictedExpression::new_string(v.clone()),
                            )
                        },
                    ))
                    .map_err(|e| err(&e))?,
                ),
                (
                    "body".into(),
                    json_record(request.context.body.as_ref(), &mut budget).map_err(|e| err(&e))?,
                ),
            ]);
            let resource = uid("AgentSpace::Host", &host)?;
            entities.push(Entity::new_no_attrs(resource.clone(), HashSet::new()));
            (method.as_str(), resource)
        }
        Action::Dns => {
            pairs.push((
                "host".into(),
                RestrictedExpression::new_string(host.clone()),
            ));
            let resource = uid("AgentSpace::Host", &host)?;
            entities.push(Entity::new_no_attrs(resource.clone(), HashSet::new()));
            ("dns", resource)
        }
        Action::Mcp => {
            let server = r.server.clone().unwrap_or_default();
            let tool = r.tool.clone().unwrap_or_default();
            let mut budget = MAX_VALUES;
            pairs.extend([
                (
                    "server".into(),
                    RestrictedExpression::new_string(server.clone()),
                ),
                (
                    "tool".into(),
                    RestrictedExpression::new_string(tool.clone()),
                ),
                (
                    "arguments".into(),
                    json_record(request.context.arguments.as_ref(), &mut budget)
                        .map_err(|e| err(&e))?,
                ),
            ]);
            let server_uid = uid("AgentSpace::McpServer", &server)?;
            let resource = uid("AgentSpace::Tool", &format!("{server}/{tool}"))?;
            entities.push(Entity::new_no_attrs(server_uid.clone(), HashSet::new()));
            entities.push(Entity::new_no_attrs(
                resource.clone(),
                HashSet::from([server_uid]),
            ));
            ("mcp", resource)
        }
        Action::Spawn => {
            let target = r
                .agent
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            pairs.push((
                "target".into(),
                RestrictedExpression::new_string(target.clone()),
            ));
            let resource = uid("AgentSpace::Agent", &target)?;
            if resource != uid("AgentSpace::Agent", p.current().agent.as_str())? {
                entities.push(Entity::new_no_attrs(
                    resource.clone(),
                    HashSet::from([tenant]),
                ));
            }
            ("spawn", resource)
        }
    };
    let action = uid("AgentSpace::Action", action_name)?;
    let context = Context::from_pairs(pairs).map_err(|e| err(&e))?;
    // No schema here: the open records (`body`, `headers`, `arguments`) would not pass
    // the schema's closed record types. Policies were validated against it instead.
    let request =
        cedar_policy::Request::new(task, action, resource, context, None).map_err(|e| err(&e))?;
    // The action hierarchy (`POST` in `http`) comes from the schema, computed once;
    // validating our own entities against the schema on every request would only cost.
    let actions = action_entities()?;
    let entities =
        Entities::from_entities(entities.into_iter().chain(actions.iter().cloned()), None)
            .map_err(|e| err(&e))?;
    Ok((request, entities))
}

/// The schema's action entities, computed once per process.
fn action_entities() -> Result<&'static [Entity], String> {
    static ACTIONS: std::sync::OnceLock<Result<Vec<Entity>, String>> = std::sync::OnceLock::new();
    ACTIONS
        .get_or_init(|| {
            let schema = schema().map_err(|e| e.to_string())?;
            let entities = schema.action_entities().map_err(|e| e.to_string())?;
            Ok(entities.iter().cloned().collect())
        })
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

fn usage_record(u: Usage) -> Result<RestrictedExpression, impl std::fmt::Display> {
    let long = |v: u64| RestrictedExpression::new_long(i64::try_from(v).unwrap_or(i64::MAX));
    RestrictedExpression::new_record([
        ("requests".to_owned(), long(u.requests)),
        ("bytes".to_owned(), long(u.bytes)),
        ("tokens".to_owned(), long(u.tokens)),
        ("seconds".to_owned(), long(u.seconds)),
    ])
}

fn time_record(now: u64) -> Result<RestrictedExpression, impl std::fmt::Display> {
    let unix = i64::try_from(now).unwrap_or(i64::MAX);
    let day_seconds = unix.rem_euclid(86_400);
    // 1970-01-01 was a Thursday (ISO weekday 4).
    let weekday = (unix.div_euclid(86_400) + 3).rem_euclid(7) + 1;
    RestrictedExpression::new_record([
        ("unix".to_owned(), RestrictedExpression::new_long(unix)),
        (
            "hour".to_owned(),
            RestrictedExpression::new_long(day_seconds / 3600),
        ),
        (
            "minute".to_owned(),
            RestrictedExpression::new_long(day_seconds % 3600 / 60),
        ),
        (
            "weekday".to_owned(),
            RestrictedExpression::new_long(weekday),
        ),
    ])
}

/// A JSON object as a Cedar record (anything else, or nothing, is an empty record).
fn json_record(
    value: Option<&serde_json::Value>,
    budget: &mut usize,
) -> Result<RestrictedExpression, cedar_policy::ExpressionConstructionError> {
    match value {
        Some(serde_json::Value::Object(map)) => RestrictedExpression::new_record(
            map.iter()
                .filter_map(|(k, v)| json_value(v, 1, budget).map(|e| (k.clone(), e))),
        ),
        _ => RestrictedExpression::new_record(std::iter::empty()),
    }
}

/// A JSON value as a Cedar value: integers are `Long`, other numbers are strings (Cedar
/// has no floating point), arrays are sets, `null` and anything past the bounds is left
/// out.
fn json_value(
    value: &serde_json::Value,
    depth: usize,
    budget: &mut usize,
) -> Option<RestrictedExpression> {
    use serde_json::Value;
    if depth > MAX_DEPTH || *budget == 0 {
        return None;
    }
    *budget -= 1;
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => RestrictedExpression::new_string(n.to_string()),
        },
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => RestrictedExpression::new_set(
            items
                .iter()
                .filter_map(|v| json_value(v, depth + 1, budget))
                .collect::<Vec<_>>(),
        ),
        Value::Object(map) => RestrictedExpression::new_record(
            map.iter()
                .filter_map(|(k, v)| json_value(v, depth + 1, budget).map(|e| (k.clone(), e)))
                .collect::<Vec<_>>(),
        )
        .ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_escape_a_prefix_are_refused() {
        assert!(check_path("/v1/score/x").is_ok());
        for bad in [
            "/v1/score/../admin",
            "/v1/./x",
            "/v1/%2e%2e/x",
            "/v1%2fx",
            "v1",
            "/a?b",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weekday_of_the_epoch_is_thursday() {
        // Smoke test of the arithmetic: 1970-01-01 is a Thursday, 1970-01-05 a Monday.
        let weekday = |unix: i64| (unix.div_euclid(86_400) + 3).rem_euclid(7) + 1;
        assert_eq!(weekday(0), 4);
        assert_eq!(weekday(4 * 86_400), 1);
    }
}
