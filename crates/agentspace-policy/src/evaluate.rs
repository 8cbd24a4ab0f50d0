//! Evaluating one request against compiled policies with Cedar: no state, no I/O.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use agentspace_core::HTTP_METHODS;
use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, RestrictedExpression,
};

use crate::compile::{CompiledPolicies, action_entities};
use crate::decision::{Decision, DenyReason};
use crate::prefilter::{
    ACTION, AGENT, Facts, Guarded, HOST, MCP_RESOURCE, MCP_SERVER, PROMPT, TASK, TENANT, TOOL,
    USER, attr_bit,
};
use crate::request::{Action, Request, Usage};

/// Most nested levels and values taken from a JSON body or tool arguments; the rest is
/// dropped (and reading it in a policy is an evaluation error, which never allows).
const MAX_DEPTH: usize = 16;
pub(crate) const MAX_VALUES: usize = 10_000;

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
        let facts = Facts::new(request, usage, now);
        // Only the policies whose scope can match, less those whose leading conditions
        // are certainly false for this request (see `prefilter`): Cedar would find them
        // false without error, so they could not change the response. The context gets
        // only the attributes the remaining policies read.
        let chosen = self
            .slice(
                request.action.cedar_name(),
                (facts.resource.0, &facts.resource.1),
            )
            .map(|c| c.select(&facts))
            .unwrap_or_default();
        let wanted = chosen.iter().fold(0, |bits, g| bits | g.reads);
        let sets = match self.set_cache.get(&chosen) {
            Ok(sets) => sets,
            Err(e) => {
                return denied(
                    DenyReason::Error,
                    format!("the request cannot be evaluated: {e}"),
                );
            }
        };
        let (base, approvals) = &*sets;
        let built = build(&facts, wanted)
            .and_then(|r| Ok((r, self.entity_cache.get(&facts, &self.statics)?)));
        let (cedar_request, entities) = match built {
            Ok(v) => v,
            Err(e) => {
                return denied(
                    DenyReason::Error,
                    format!("the request cannot be evaluated: {e}"),
                );
            }
        };
        self.decide_sets(
            request,
            &cedar_request,
            &entities,
            (base, approvals),
            approved,
        )
    }

    /// [`Self::evaluate_full`] the plain way: every policy handed to Cedar (no index, no
    /// pre-evaluation), the whole context, every action entity, no caches. The reference
    /// the property tests compare against.
    #[cfg(test)]
    pub(crate) fn evaluate_unsliced(
        &self,
        request: &Request,
        usage: Usage,
        now: u64,
        approved: bool,
    ) -> Evaluated {
        if let Err(message) = self.check_request(request) {
            return Evaluated {
                decision: Decision::deny(DenyReason::InvalidRequest, message),
                capabilities: Vec::new(),
            };
        }
        let facts = Facts::new(request, usage, now);
        let built = build(&facts, crate::prefilter::ALL_ATTRS)
            .and_then(|r| Ok((r, request_entities(&facts, &self.full_statics)?)));
        match built {
            Ok((cedar_request, entities)) => self.decide_sets(
                request,
                &cedar_request,
                &entities,
                (&self.base, &self.approvals),
                approved,
            ),
            Err(e) => Evaluated {
                decision: Decision::deny(
                    DenyReason::Error,
                    format!("the request cannot be evaluated: {e}"),
                ),
                capabilities: Vec::new(),
            },
        }
    }

    /// The Cedar part of a decision, given the (base, approval) policies to evaluate.
    fn decide_sets(
        &self,
        request: &Request,
        cedar_request: &cedar_policy::Request,
        entities: &Entities,
        (base, approvals): (&PolicySet, &PolicySet),
        approved: bool,
    ) -> Evaluated {
        let denied = |reason, message: String| Evaluated {
            decision: Decision::deny(reason, message),
            capabilities: Vec::new(),
        };
        if base.is_empty() {
            // What Cedar answers for no policies, without asking it.
            return denied(
                DenyReason::NotPermitted,
                format!("no policy permits {} (default deny)", describe(request)),
            );
        }
        let authorizer = Authorizer::new();
        let response = authorizer.is_authorized(cedar_request, base, entities);
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
            && let Some(decision) = self.approval(approvals, cedar_request, entities, &what)
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
            Action::Dns | Action::Tunnel => check_host(r.host.as_deref())?,
            Action::Mcp | Action::McpResource | Action::McpPrompt => {
                let (what, field) = match &request.action {
                    Action::McpResource => ("resource.uri", r.uri.as_deref()),
                    Action::McpPrompt => ("resource.prompt", r.prompt.as_deref()),
                    _ => ("resource.tool", r.tool.as_deref()),
                };
                if r.server.as_deref().is_none_or(str::is_empty) || field.is_none_or(str::is_empty)
                {
                    return Err(format!(
                        "an `{}` request needs `resource.server` and `{what}`",
                        request.action.cedar_name()
                    ));
                }
            }
            Action::McpServerRequest { method } => {
                if r.server.as_deref().is_none_or(str::is_empty) || method.is_empty() {
                    return Err(
                        "an `mcp_server_request` request needs `resource.server` and a method"
                            .to_owned(),
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
        // An IPv6 literal, as the gateway writes it (canonical, no brackets).
        Some(h) if h.parse::<std::net::Ipv6Addr>().is_ok() => Ok(()),
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
        Action::Tunnel => format!(
            "TLS connection to `{}:{}`",
            r.host.as_deref().unwrap_or("?"),
            r.port.unwrap_or(443)
        ),
        Action::Mcp => format!(
            "MCP call `{}/{}`",
            r.server.as_deref().unwrap_or("?"),
            r.tool.as_deref().unwrap_or("?")
        ),
        Action::McpResource => format!(
            "MCP resource read `{}` of `{}`",
            r.uri.as_deref().unwrap_or("?"),
            r.server.as_deref().unwrap_or("?")
        ),
        Action::McpPrompt => format!(
            "MCP prompt `{}/{}`",
            r.server.as_deref().unwrap_or("?"),
            r.prompt.as_deref().unwrap_or("?")
        ),
        Action::McpServerRequest { method } => format!(
            "request `{method}` of MCP server `{}`",
            r.server.as_deref().unwrap_or("?")
        ),
        Action::Spawn => format!(
            "starting agent `{}`",
            r.agent.as_ref().map_or("?", |a| a.as_str())
        ),
    }
}

/// Parses an entity type name, once per process for the schema's own.
fn type_name(name: &str) -> Result<EntityTypeName, String> {
    static KNOWN: OnceLock<Vec<(&'static str, EntityTypeName)>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        [
            TASK,
            AGENT,
            TENANT,
            USER,
            HOST,
            TOOL,
            MCP_SERVER,
            MCP_RESOURCE,
            PROMPT,
            ACTION,
        ]
        .into_iter()
        .filter_map(|n| n.parse().ok().map(|t| (n, t)))
        .collect()
    });
    match known.iter().find(|(n, _)| *n == name) {
        Some((_, t)) => Ok(t.clone()),
        None => name.parse().map_err(|e| format!("{e}")),
    }
}

pub(crate) fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(
        type_name(ty)?,
        EntityId::new(id),
    ))
}

/// The Cedar request for the request behind `facts`, with the context attributes in
/// `wanted` ([`attr_bit`]s): those the policies to evaluate read. An attribute no
/// evaluated policy reads cannot change the response, and converting the context is most
/// of the cost of building the request.
fn build(facts: &Facts<'_>, wanted: u32) -> Result<cedar_policy::Request, String> {
    let request = facts.request;
    let p = &request.principal;
    let r = &request.resource;
    let task = uid(TASK, p.current().task.as_str())?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut pairs: Vec<(String, RestrictedExpression)> = Vec::new();
    let mut add = |name: &str, value: &dyn Fn() -> Result<RestrictedExpression, String>| {
        if wanted & attr_bit(name) != 0 {
            pairs.push((name.to_owned(), value()?));
        }
        Ok::<(), String>(())
    };
    let string = |s: &str| Ok(RestrictedExpression::new_string(s.to_owned()));
    let longs = |names: [&str; 4], values: [i64; 4]| {
        RestrictedExpression::new_record(
            names
                .into_iter()
                .zip(values)
                .map(|(n, v)| (n.to_owned(), RestrictedExpression::new_long(v))),
        )
        .map_err(|e| err(&e))
    };
    add("tenant", &|| string(p.tenant().as_str()))?;
    add("user", &|| string(p.user().as_str()))?;
    add("agent", &|| string(p.current().agent.as_str()))?;
    add("task", &|| string(p.current().task.as_str()))?;
    add("chain", &|| {
        Ok(RestrictedExpression::new_set(p.delegators().iter().map(
            |a| RestrictedExpression::new_string(a.agent.to_string()),
        )))
    })?;
    add("depth", &|| Ok(RestrictedExpression::new_long(facts.depth)))?;
    add("labels", &|| {
        Ok(RestrictedExpression::new_set(
            request
                .context
                .labels
                .iter()
                .map(|l| RestrictedExpression::new_string(l.clone())),
        ))
    })?;
    add("usage", &|| {
        longs(["requests", "bytes", "tokens", "seconds"], facts.usage)
    })?;
    add("time", &|| {
        longs(["unix", "hour", "minute", "weekday"], facts.time)
    })?;
    match &request.action {
        Action::Http { method } => {
            add("method", &|| string(method))?;
            add("host", &|| string(&facts.host))?;
            add("port", &|| Ok(RestrictedExpression::new_long(facts.port)))?;
            add("path", &|| string(facts.path))?;
            add("query", &|| string(&request.context.query))?;
            if wanted & attr_bit("headers") == 0 && !facts.headers_lowercase {
                // Header names that collide once lowercased cannot be evaluated, whether
                // or not a policy reads them.
                RestrictedExpression::new_record(
                    request
                        .context
                        .headers
                        .keys()
                        .map(|k| (k.to_ascii_lowercase(), RestrictedExpression::new_bool(true))),
                )
                .map_err(|e| err(&e))?;
            }
            add("headers", &|| {
                RestrictedExpression::new_record(request.context.headers.iter().map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        RestrictedExpression::new_string(v.clone()),
                    )
                }))
                .map_err(|e| err(&e))
            })?;
            add("body", &|| {
                json_record(request.context.body.as_ref(), &mut { MAX_VALUES }).map_err(|e| err(&e))
            })?;
        }
        Action::Dns => add("host", &|| string(&facts.host))?,
        Action::Tunnel => {
            add("host", &|| string(&facts.host))?;
            add("port", &|| Ok(RestrictedExpression::new_long(facts.port)))?;
        }
        Action::Mcp | Action::McpResource | Action::McpPrompt => {
            add("server", &|| {
                string(r.server.as_deref().unwrap_or_default())
            })?;
            match &request.action {
                Action::McpResource => {
                    add("uri", &|| string(r.uri.as_deref().unwrap_or_default()))?;
                }
                Action::McpPrompt => {
                    add("prompt", &|| {
                        string(r.prompt.as_deref().unwrap_or_default())
                    })?;
                }
                _ => add("tool", &|| string(r.tool.as_deref().unwrap_or_default()))?,
            }
            if !matches!(request.action, Action::McpResource) {
                add("arguments", &|| {
                    json_record(request.context.arguments.as_ref(), &mut { MAX_VALUES })
                        .map_err(|e| err(&e))
                })?;
            }
        }
        Action::McpServerRequest { method } => {
            add("server", &|| {
                string(r.server.as_deref().unwrap_or_default())
            })?;
            add("method", &|| string(method))?;
            add("params", &|| {
                json_record(request.context.arguments.as_ref(), &mut { MAX_VALUES })
                    .map_err(|e| err(&e))
            })?;
        }
        Action::Spawn => add("target", &|| string(&facts.resource.1))?,
    }
    let resource = uid(facts.resource.0, &facts.resource.1)?;
    let action = uid(ACTION, request.action.cedar_name())?;
    let context = Context::from_pairs(pairs).map_err(|e| err(&e))?;
    // No schema here: the open records (`body`, `headers`, `arguments`) would not pass
    // the schema's closed record types. Policies were validated against it instead.
    let request =
        cedar_policy::Request::new(task, action, resource, context, None).map_err(|e| err(&e))?;
    Ok(request)
}

/// The entities of the request behind `facts`: `statics` (the schema's actions, the
/// tenant and the agent, made once per definition) plus the user, the task and the
/// resource. No schema check: these are our own entities, shaped by the schema.
fn request_entities(facts: &Facts<'_>, statics: &Entities) -> Result<Entities, String> {
    let p = &facts.request.principal;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let tenant = uid(TENANT, p.tenant().as_str())?;
    let user = uid(USER, p.user().as_str())?;
    let agent = uid(AGENT, p.current().agent.as_str())?;
    let task = uid(TASK, p.current().task.as_str())?;
    let resource = uid(facts.resource.0, &facts.resource.1)?;
    let action = uid(ACTION, facts.request.action.cedar_name())?;
    let mut entities = Vec::with_capacity(5);
    // Already among the statics when they hold every action; identical, so no conflict.
    if let Some(a) = action_entities()?.get(&action) {
        entities.push(a.clone());
    }
    entities.extend([
        Entity::new_no_attrs(user.clone(), HashSet::from([tenant.clone()])),
        Entity::new(
            task,
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
            HashSet::from([agent.clone(), tenant]),
        )
        .map_err(|e| err(&e))?,
    ]);
    // Starting another instance of this agent: its entity is among the statics.
    if resource != agent {
        let mut parents = HashSet::new();
        if let Some((ty, id)) = &facts.resource_parent {
            let parent = uid(ty, id)?;
            // The MCP server of a tool (the tenant of a started agent is a static).
            if !matches!(facts.request.action, Action::Spawn) {
                entities.push(Entity::new_no_attrs(parent.clone(), HashSet::new()));
            }
            parents.insert(parent);
        }
        entities.push(Entity::new_no_attrs(resource, parents));
    }
    statics
        .clone()
        .add_entities(entities, None)
        .map_err(|e| err(&e))
}

/// The (base, approval) policy sets Cedar was given recently, by the policies chosen:
/// the same few combinations come again and again, and a policy set costs allocations
/// and copies to build. Cleared when full; a clone of the policies starts empty.
#[derive(Default)]
pub(crate) struct SetCache(RwLock<HashMap<Vec<usize>, Arc<Sets>>>);

/// The base policies and the `@approval` policies Cedar evaluates for one decision.
type Sets = (PolicySet, PolicySet);

/// Most combinations remembered per definition (each a few policies, about 1 KiB).
const SET_CACHE: usize = 1024;

impl Clone for SetCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for SetCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetCache")
    }
}

impl SetCache {
    /// The policy sets of `chosen` (in definition order).
    fn get(&self, chosen: &[&Arc<Guarded>]) -> Result<Arc<Sets>, String> {
        let key: Vec<usize> = chosen.iter().map(|g| g.order()).collect();
        if let Ok(cache) = self.0.read()
            && let Some(sets) = cache.get(&key)
        {
            return Ok(Arc::clone(sets));
        }
        let mut base = PolicySet::new();
        let mut approvals = PolicySet::new();
        for g in chosen {
            let set = if g.approval {
                &mut approvals
            } else {
                &mut base
            };
            set.add(g.policy.clone()).map_err(|e| e.to_string())?;
        }
        let sets = Arc::new((base, approvals));
        if let Ok(mut cache) = self.0.write() {
            if cache.len() >= SET_CACHE {
                cache.clear();
            }
            cache.insert(key, Arc::clone(&sets));
        }
        Ok(sets)
    }
}

/// The entities of the (action, user, task, resource) a definition decided recently.
/// They are the same for every request of a task to one resource, and building them
/// (Cedar computes the transitive closure of the hierarchy) costs more than the rest of
/// a decision. Cleared when full; a clone of the policies starts empty.
#[derive(Default)]
pub(crate) struct EntityCache(RwLock<HashMap<u64, (EntityKey, Arc<Entities>)>>);

/// Action, user, task, resource (type, id) and the resource's parent: everything the
/// entities of a request depend on besides the definition's tenant and agent.
type EntityKey = (
    String,
    String,
    String,
    &'static str,
    String,
    Option<(&'static str, String)>,
);

/// Most (action, user, task, resource) remembered per definition: each holds a few
/// entities (under 2 KiB), so at most about 2 MiB per definition.
const ENTITY_CACHE: usize = 1024;

impl Clone for EntityCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for EntityCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntityCache")
    }
}

impl EntityCache {
    /// The entities of the request behind `facts`, built with `statics` unless known.
    /// A poisoned lock only means building them again.
    fn get(&self, facts: &Facts<'_>, statics: &Entities) -> Result<Arc<Entities>, String> {
        let p = &facts.request.principal;
        let key: EntityKey = (
            facts.request.action.cedar_name().to_owned(),
            p.user().as_str().to_owned(),
            p.current().task.as_str().to_owned(),
            facts.resource.0,
            facts.resource.1.clone(),
            facts.resource_parent.clone(),
        );
        // Keyed by a digest of the key, so that growing the map rehashes integers, not
        // strings (a rehash of hundreds of string keys showed in the p99); the key is
        // kept and compared, so a collision is only a miss.
        let digest = {
            let mut h = std::hash::DefaultHasher::new();
            key.hash(&mut h);
            h.finish()
        };
        if let Ok(cache) = self.0.read()
            && let Some((k, entities)) = cache.get(&digest)
            && *k == key
        {
            return Ok(Arc::clone(entities));
        }
        let entities = Arc::new(request_entities(facts, statics)?);
        if let Ok(mut cache) = self.0.write() {
            if cache.len() >= ENTITY_CACHE {
                cache.clear();
            }
            cache.insert(digest, (key, Arc::clone(&entities)));
        }
        Ok(entities)
    }
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
