//! Exact pre-evaluation of the leading conditions of each policy, so that a decision
//! hands Cedar only the policies that can still be satisfied or fail.
//!
//! Cedar evaluates a policy as `scope && c1 && c2 && ...` — each `when` body split at
//! its top-level `&&`, each `unless` body negated — left to right, stopping at the first
//! `false`; the scope never raises an error. So when `c1 .. ck-1` are `true`, `ck` is
//! `false` and none of them can raise an error, the policy is `false` without an error:
//! it cannot determine the decision, be among its reasons or among its errors, and
//! leaving it out of the set Cedar evaluates changes nothing in the response.
//!
//! [`Guarded::may_apply`] decides such leading conditions from the request itself, for
//! a few forms (literals, context attributes, `==`, `!=`, `<`.., `&&`, `||`, `!`,
//! `like`, `has`, `contains`, `in` and `==` on the principal, action and resource). For
//! anything else — an attribute of `body` or `arguments`, an entity attribute, an
//! extension function, a value of the wrong type, a missing attribute (an error in
//! Cedar) — it answers "don't know" and the policy is kept. Every answer it does give
//! must equal Cedar's: the property test in `evaluate.rs` compares decisions with and
//! without this filter.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cedar_policy::Policy;
use serde_json::Value as Json;

use crate::evaluate::MAX_VALUES;
use crate::request::{Action, Request, Usage};

/// Every attribute a decision's context can have. What a policy reads is a bit set over
/// them ([`attr_bit`]).
const CONTEXT_ATTRS: [&str; 23] = [
    "tenant",
    "user",
    "agent",
    "task",
    "chain",
    "depth",
    "labels",
    "usage",
    "time",
    "method",
    "host",
    "port",
    "path",
    "query",
    "headers",
    "body",
    "server",
    "tool",
    "arguments",
    "target",
    "uri",
    "prompt",
    "params",
];

/// All of [`CONTEXT_ATTRS`].
pub(crate) const ALL_ATTRS: u32 = (1 << CONTEXT_ATTRS.len()) - 1;

/// The bit of a context attribute; 0 for a name the context never has (reading it is an
/// error whatever the context holds).
pub(crate) fn attr_bit(name: &str) -> u32 {
    CONTEXT_ATTRS
        .iter()
        .position(|a| *a == name)
        .map_or(0, |i| 1 << i)
}

/// A policy and the leading conditions that can be decided without Cedar.
#[derive(Clone, Debug)]
pub(crate) struct Guarded {
    pub(crate) policy: Policy,
    /// An `@approval` forbid (evaluated only once the rest allows).
    pub(crate) approval: bool,
    /// The context attributes the policy reads ([`attr_bit`]s), or [`ALL_ATTRS`].
    pub(crate) reads: u32,
    /// Position in the definition's policies: Cedar sees the chosen ones in this order.
    order: usize,
    guard: Vec<Cond>,
}

impl Guarded {
    pub(crate) fn new(policy: Policy, approval: bool, order: usize) -> Self {
        // A policy whose JSON form cannot be had gets no guard (always kept) and the
        // whole context.
        let (guard, reads) = match policy.to_json() {
            Ok(est) => {
                let mut names = BTreeSet::new();
                let reads = if context_reads(&est, &mut names) {
                    names.iter().fold(0, |bits, n| bits | attr_bit(n))
                } else {
                    ALL_ATTRS
                };
                (guard_of(&est), reads)
            }
            Err(_) => (Vec::new(), ALL_ATTRS),
        };
        Self {
            policy,
            approval,
            reads,
            order,
            guard,
        }
    }

    /// Position in the definition's policies.
    pub(crate) fn order(&self) -> usize {
        self.order
    }

    /// `false` only when the policy certainly evaluates to `false`, without an error,
    /// for the request behind `facts`.
    pub(crate) fn may_apply(&self, facts: &Facts<'_>) -> bool {
        for cond in &self.guard {
            match cond.eval(facts) {
                Some(Val::Bool(true)) => {}
                Some(Val::Bool(false)) => return false,
                _ => return true,
            }
        }
        true
    }

    /// How many leading conditions are decided here (for tests).
    #[cfg(test)]
    pub(crate) fn guard_len(&self) -> usize {
        self.guard.len()
    }
}

/// Adds to `reads` the context attributes a policy (in its JSON form) reads; `false`
/// when it uses `context` other than as `context.name` or `context has name`, so that
/// every attribute may matter.
pub(crate) fn context_reads(est: &Json, reads: &mut BTreeSet<String>) -> bool {
    match est {
        Json::Array(items) => items.iter().all(|i| context_reads(i, reads)),
        Json::Object(obj) => {
            if obj.get("Var").and_then(Json::as_str) == Some("context") {
                return false;
            }
            for (key, value) in obj {
                if (key == "." || key == "has")
                    && value
                        .get("left")
                        .and_then(|l| l.get("Var"))
                        .and_then(Json::as_str)
                        == Some("context")
                {
                    match value.get("attr") {
                        Some(Json::String(name)) => {
                            reads.insert(name.clone());
                        }
                        // `context has a.b`: the first name is the context's.
                        Some(Json::Array(names)) => match names.first().and_then(Json::as_str) {
                            Some(name) => {
                                reads.insert(name.to_owned());
                            }
                            None => return false,
                        },
                        _ => return false,
                    }
                    continue;
                }
                if !context_reads(value, reads) {
                    return false;
                }
            }
            true
        }
        _ => true,
    }
}

/// The policies of one slice of the index, bucketed by the fact their first condition
/// tests, so that a decision does not even look at the policies whose first condition
/// is certainly false: `context.labels.contains("l")` by label,
/// `context.headers has "h"` by header, `context.a.b == literal` by value. Every bucket a
/// request selects still goes through [`Guarded::may_apply`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Candidates {
    always: Vec<Arc<Guarded>>,
    by_label: HashMap<String, Vec<Arc<Guarded>>>,
    by_header: HashMap<String, Vec<Arc<Guarded>>>,
    /// A context attribute path, and the policies by the literal it is compared with.
    by_value: Vec<(Cond, ByLiteral)>,
}

#[derive(Clone, Debug, Default)]
struct ByLiteral {
    longs: HashMap<i64, Vec<Arc<Guarded>>>,
    strings: HashMap<String, Vec<Arc<Guarded>>>,
}

impl ByLiteral {
    #[cfg(test)]
    fn all(&self) -> impl Iterator<Item = &Arc<Guarded>> {
        self.longs.values().chain(self.strings.values()).flatten()
    }
}

/// What the first condition of a policy tests, when it is one of the bucketed forms.
enum Key {
    Label(String),
    Header(String),
    Long(Cond, i64),
    Str(Cond, String),
}

/// `context.a` or `context.a.b`...
fn is_context_path(c: &Cond) -> bool {
    match c {
        Cond::Var(Var::Context) => true,
        Cond::Attr(inner, _) => is_context_path(inner),
        _ => false,
    }
}

fn key_of(first: &Cond) -> Option<Key> {
    let context_attr = |c: &Cond, name: &str| matches!(c, Cond::Attr(inner, n) if n == name && **inner == Cond::Var(Var::Context));
    match first {
        Cond::Contains(set, item) if context_attr(set, "labels") => match &**item {
            Cond::Str(l) => Some(Key::Label(l.clone())),
            _ => None,
        },
        Cond::Has(record, name) if context_attr(record, "headers") => {
            Some(Key::Header(name.clone()))
        }
        Cond::Cmp(CmpOp::Eq, l, r) => {
            let (path, lit) = match (&**l, &**r) {
                (p, lit) | (lit, p) if is_context_path(p) && !matches!(p, Cond::Var(_)) => (p, lit),
                _ => return None,
            };
            match lit {
                Cond::Long(n) => Some(Key::Long(path.clone(), *n)),
                Cond::Str(s) => Some(Key::Str(path.clone(), s.clone())),
                _ => None,
            }
        }
        _ => None,
    }
}

impl Candidates {
    pub(crate) fn push(&mut self, g: Arc<Guarded>) {
        let by_value = |list: &mut Vec<(Cond, ByLiteral)>, path: Cond| -> usize {
            match list.iter().position(|(p, _)| *p == path) {
                Some(i) => i,
                None => {
                    list.push((path, ByLiteral::default()));
                    list.len() - 1
                }
            }
        };
        match g.guard.first().and_then(key_of) {
            Some(Key::Label(l)) => self.by_label.entry(l).or_default().push(g),
            Some(Key::Header(h)) => self.by_header.entry(h).or_default().push(g),
            Some(Key::Long(path, n)) => {
                let i = by_value(&mut self.by_value, path);
                if let Some((_, lits)) = self.by_value.get_mut(i) {
                    lits.longs.entry(n).or_default().push(g);
                }
            }
            Some(Key::Str(path, v)) => {
                let i = by_value(&mut self.by_value, path);
                if let Some((_, lits)) = self.by_value.get_mut(i) {
                    lits.strings.entry(v).or_default().push(g);
                }
            }
            None => self.always.push(g),
        }
    }

    /// Every policy, for tests.
    #[cfg(test)]
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Guarded>> {
        self.always
            .iter()
            .chain(self.by_label.values().flatten())
            .chain(self.by_header.values().flatten())
            .chain(self.by_value.iter().flat_map(|(_, lits)| lits.all()))
    }

    /// The policies that may apply to the request behind `facts`, in definition order.
    pub(crate) fn select<'s>(&'s self, facts: &Facts<'_>) -> Vec<&'s Arc<Guarded>> {
        let mut out: Vec<&Arc<Guarded>> = Vec::new();
        let mut consider = |list: &'s [Arc<Guarded>]| {
            out.extend(list.iter().filter(|g| g.may_apply(facts)));
        };
        consider(&self.always);
        // `labels` is in every context.
        for label in facts.labels {
            if let Some(list) = self.by_label.get(label) {
                consider(list);
            }
        }
        if !self.by_header.is_empty() {
            if facts.headers_lowercase && matches!(facts.request.action, Action::Http { .. }) {
                for name in facts.request.context.headers.keys() {
                    if let Some(list) = self.by_header.get(name) {
                        consider(list);
                    }
                }
            } else {
                // Names Cedar sees lowercased, or no `headers` at all (an error): let
                // each guard decide.
                for list in self.by_header.values() {
                    consider(list);
                }
            }
        }
        for (path, lits) in &self.by_value {
            match path.eval(facts) {
                Some(Val::Long(n)) => {
                    if let Some(list) = lits.longs.get(&n) {
                        consider(list);
                    }
                }
                Some(Val::Str(v)) => {
                    if let Some(list) = lits.strings.get(v) {
                        consider(list);
                    }
                }
                // A boolean or an entity equals no long or string.
                Some(Val::Bool(_) | Val::Entity(..)) => {}
                // Unknown, or a record or set (left to Cedar): let each guard decide.
                _ => {
                    for list in lits.longs.values().chain(lits.strings.values()) {
                        consider(list);
                    }
                }
            }
        }
        out.sort_by_key(|g| g.order);
        out
    }
}

/// The leading conditions of a policy in its JSON (EST) form, up to the first one of a
/// form not handled here.
fn guard_of(est: &Json) -> Vec<Cond> {
    let mut conjuncts: Vec<Option<Cond>> = Vec::new();
    for clause in est
        .get("conditions")
        .and_then(Json::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        let body = clause.get("body");
        match (clause.get("kind").and_then(Json::as_str), body) {
            (Some("when"), Some(body)) => flatten_and(body, &mut conjuncts),
            (Some("unless"), Some(body)) => {
                conjuncts.push(expr(body).map(|e| Cond::Not(Box::new(e))));
            }
            _ => conjuncts.push(None),
        }
    }
    conjuncts.into_iter().map_while(|c| c).collect()
}

/// Splits `a && b && c` into `a`, `b`, `c`, in evaluation order.
fn flatten_and(e: &Json, out: &mut Vec<Option<Cond>>) {
    if let Some(and) = e.get("&&")
        && let (Some(left), Some(right)) = (and.get("left"), and.get("right"))
    {
        flatten_and(left, out);
        flatten_and(right, out);
        return;
    }
    out.push(expr(e));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Principal,
    Action,
    Resource,
    Context,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pat {
    Char(char),
    Any,
}

/// An expression of a form this module can decide (when its operands are known).
#[derive(Clone, Debug, PartialEq)]
enum Cond {
    Bool(bool),
    Long(i64),
    Str(String),
    /// An entity literal: type name and id.
    Entity(String, String),
    /// A set literal (only of use on the right of `in`).
    Set(Vec<Cond>),
    Var(Var),
    Attr(Box<Cond>, String),
    Has(Box<Cond>, String),
    Not(Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Cmp(CmpOp, Box<Cond>, Box<Cond>),
    Like(Box<Cond>, Vec<Pat>),
    Contains(Box<Cond>, Box<Cond>),
    In(Box<Cond>, Box<Cond>),
}

fn operands(j: &Json) -> Option<(Box<Cond>, Box<Cond>)> {
    Some((
        Box::new(expr(j.get("left")?)?),
        Box::new(expr(j.get("right")?)?),
    ))
}

/// One EST expression, or `None` for a form not handled here.
fn expr(j: &Json) -> Option<Cond> {
    let obj = j.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    let (op, arg) = obj.iter().next()?;
    let cmp = |op| operands(arg).map(|(l, r)| Cond::Cmp(op, l, r));
    match op.as_str() {
        "Value" => match arg {
            Json::Bool(b) => Some(Cond::Bool(*b)),
            Json::Number(n) => n.as_i64().map(Cond::Long),
            Json::String(s) => Some(Cond::Str(s.clone())),
            Json::Object(o) => {
                let e = o.get("__entity")?;
                if o.len() != 1 {
                    return None;
                }
                Some(Cond::Entity(
                    e.get("type")?.as_str()?.to_owned(),
                    e.get("id")?.as_str()?.to_owned(),
                ))
            }
            _ => None,
        },
        "Var" => match arg.as_str()? {
            "principal" => Some(Cond::Var(Var::Principal)),
            "action" => Some(Cond::Var(Var::Action)),
            "resource" => Some(Cond::Var(Var::Resource)),
            "context" => Some(Cond::Var(Var::Context)),
            _ => None,
        },
        "Set" => arg
            .as_array()?
            .iter()
            .map(expr)
            .collect::<Option<Vec<_>>>()
            .map(Cond::Set),
        "." => Some(Cond::Attr(
            Box::new(expr(arg.get("left")?)?),
            arg.get("attr")?.as_str()?.to_owned(),
        )),
        // The extended form (`has a.b`, an array of names) is left to Cedar.
        "has" => Some(Cond::Has(
            Box::new(expr(arg.get("left")?)?),
            arg.get("attr")?.as_str()?.to_owned(),
        )),
        "!" => Some(Cond::Not(Box::new(expr(arg.get("arg")?)?))),
        "&&" => operands(arg).map(|(l, r)| Cond::And(l, r)),
        "||" => operands(arg).map(|(l, r)| Cond::Or(l, r)),
        "==" => cmp(CmpOp::Eq),
        "!=" => cmp(CmpOp::Ne),
        "<" => cmp(CmpOp::Lt),
        "<=" => cmp(CmpOp::Le),
        ">" => cmp(CmpOp::Gt),
        ">=" => cmp(CmpOp::Ge),
        "contains" => operands(arg).map(|(l, r)| Cond::Contains(l, r)),
        "in" => operands(arg).map(|(l, r)| Cond::In(l, r)),
        "like" => {
            let left = expr(arg.get("left")?)?;
            let mut pattern = Vec::new();
            for elem in arg.get("pattern")?.as_array()? {
                match elem {
                    Json::String(w) if w == "Wildcard" => pattern.push(Pat::Any),
                    Json::Object(o) if o.len() == 1 => {
                        pattern.extend(o.get("Literal")?.as_str()?.chars().map(Pat::Char));
                    }
                    _ => return None,
                }
            }
            Some(Cond::Like(Box::new(left), pattern))
        }
        _ => None,
    }
}

/// The records of the context whose every attribute is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rec {
    Context,
    Time,
    Usage,
    Headers,
    /// `body` (HTTP) or `arguments` (MCP): the JSON object the request carried.
    Json,
}

/// The sets of strings of the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StrSet {
    Labels,
    Chain,
}

/// A value during pre-evaluation.
#[derive(Clone, Copy, Debug)]
enum Val<'a> {
    Bool(bool),
    Long(i64),
    Str(&'a str),
    Entity(&'a str, &'a str),
    Rec(Rec),
    StrSet(StrSet),
    /// A set literal of entities, for the right of `in`.
    Entities(&'a [Cond]),
}

/// An attribute of a record: its value, certainly absent, or not known here.
enum Field<'a> {
    Is(Val<'a>),
    Absent,
    Unknown,
}

/// Entity type names of the schema.
pub(crate) const TASK: &str = "AgentSpace::Task";
pub(crate) const AGENT: &str = "AgentSpace::Agent";
pub(crate) const TENANT: &str = "AgentSpace::Tenant";
pub(crate) const USER: &str = "AgentSpace::User";
pub(crate) const HOST: &str = "AgentSpace::Host";
pub(crate) const TOOL: &str = "AgentSpace::Tool";
pub(crate) const MCP_SERVER: &str = "AgentSpace::McpServer";
pub(crate) const MCP_RESOURCE: &str = "AgentSpace::McpResource";
pub(crate) const PROMPT: &str = "AgentSpace::Prompt";
pub(crate) const ACTION: &str = "AgentSpace::Action";

/// What a decision knows about a request, computed once and used both to build the
/// Cedar request ([`crate::evaluate`]) and to pre-evaluate conditions, so the two
/// cannot disagree.
pub(crate) struct Facts<'a> {
    pub(crate) request: &'a Request,
    /// The host, lowercase (HTTP and DNS).
    pub(crate) host: String,
    pub(crate) path: &'a str,
    pub(crate) port: i64,
    pub(crate) depth: i64,
    /// `usage` as Cedar longs: requests, bytes, tokens, seconds.
    pub(crate) usage: [i64; 4],
    /// `time` as Cedar longs: unix, hour, minute, weekday.
    pub(crate) time: [i64; 4],
    /// The resource entity: type name, id, and its one parent (type name, id) if any.
    pub(crate) resource: (&'static str, String),
    pub(crate) resource_parent: Option<(&'static str, String)>,
    /// Whether every header name is lowercase already (otherwise header reads are left
    /// to Cedar, which sees them lowercased).
    pub(crate) headers_lowercase: bool,
    /// The body (HTTP) or the arguments (MCP).
    json: Option<&'a Json>,
    /// Whether `json` has at most `MAX_VALUES` values, so that none is dropped on the
    /// way into Cedar.
    json_whole: bool,
    labels: &'a BTreeSet<String>,
}

/// A `u64` as a Cedar long, saturating.
pub(crate) fn long(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl<'a> Facts<'a> {
    pub(crate) fn new(request: &'a Request, usage: Usage, now: u64) -> Self {
        let r = &request.resource;
        let p = &request.principal;
        let host = r.host.as_deref().unwrap_or("").to_ascii_lowercase();
        let unix = long(now);
        let day_seconds = unix.rem_euclid(86_400);
        // 1970-01-01 was a Thursday (ISO weekday 4).
        let weekday = (unix.div_euclid(86_400) + 3).rem_euclid(7) + 1;
        let json = match &request.action {
            Action::Http { .. } => request.context.body.as_ref(),
            Action::Mcp | Action::McpPrompt | Action::McpServerRequest { .. } => {
                request.context.arguments.as_ref()
            }
            Action::Dns | Action::Spawn | Action::Tunnel | Action::McpResource => None,
        };
        let (resource, resource_parent) = match &request.action {
            Action::Http { .. } | Action::Dns | Action::Tunnel => ((HOST, host.clone()), None),
            Action::Mcp => {
                let server = r.server.clone().unwrap_or_default();
                let tool = r.tool.as_deref().unwrap_or_default();
                (
                    (TOOL, format!("{server}/{tool}")),
                    Some((MCP_SERVER, server)),
                )
            }
            Action::McpResource | Action::McpPrompt => {
                let server = r.server.clone().unwrap_or_default();
                let (ty, name) = if matches!(request.action, Action::McpResource) {
                    (MCP_RESOURCE, r.uri.as_deref().unwrap_or_default())
                } else {
                    (PROMPT, r.prompt.as_deref().unwrap_or_default())
                };
                ((ty, format!("{server}/{name}")), Some((MCP_SERVER, server)))
            }
            Action::McpServerRequest { .. } => {
                ((MCP_SERVER, r.server.clone().unwrap_or_default()), None)
            }
            Action::Spawn => (
                (
                    AGENT,
                    r.agent
                        .as_ref()
                        .map(|a| a.as_str().to_owned())
                        .unwrap_or_default(),
                ),
                Some((TENANT, p.tenant().as_str().to_owned())),
            ),
        };
        Self {
            request,
            host,
            path: r.path.as_deref().unwrap_or("/"),
            port: i64::from(r.port.unwrap_or(443)),
            depth: i64::try_from(p.depth()).unwrap_or(i64::MAX),
            usage: [
                long(usage.requests),
                long(usage.bytes),
                long(usage.tokens),
                long(usage.seconds),
            ],
            time: [unix, day_seconds / 3600, day_seconds % 3600 / 60, weekday],
            resource,
            resource_parent,
            headers_lowercase: request
                .context
                .headers
                .keys()
                .all(|k| !k.bytes().any(|b| b.is_ascii_uppercase())),
            labels: &request.context.labels,
            json,
            json_whole: json.is_none_or(|j| count_values(j, MAX_VALUES + 1) <= MAX_VALUES),
        }
    }

    fn field(&self, rec: Rec, name: &str) -> Field<'_> {
        let req = self.request;
        let p = &req.principal;
        let is = Field::Is;
        match rec {
            Rec::Time => match name {
                "unix" => is(Val::Long(self.time[0])),
                "hour" => is(Val::Long(self.time[1])),
                "minute" => is(Val::Long(self.time[2])),
                "weekday" => is(Val::Long(self.time[3])),
                _ => Field::Absent,
            },
            Rec::Usage => match name {
                "requests" => is(Val::Long(self.usage[0])),
                "bytes" => is(Val::Long(self.usage[1])),
                "tokens" => is(Val::Long(self.usage[2])),
                "seconds" => is(Val::Long(self.usage[3])),
                _ => Field::Absent,
            },
            Rec::Json => self.json_field(name),
            Rec::Headers => {
                if !self.headers_lowercase {
                    return Field::Unknown;
                }
                match req.context.headers.get(name) {
                    Some(v) => is(Val::Str(v)),
                    None => Field::Absent,
                }
            }
            Rec::Context => {
                match name {
                    "tenant" => return is(Val::Str(p.tenant().as_str())),
                    "user" => return is(Val::Str(p.user().as_str())),
                    "agent" => return is(Val::Str(p.current().agent.as_str())),
                    "task" => return is(Val::Str(p.current().task.as_str())),
                    "chain" => return is(Val::StrSet(StrSet::Chain)),
                    "depth" => return is(Val::Long(self.depth)),
                    "labels" => return is(Val::StrSet(StrSet::Labels)),
                    "usage" => return is(Val::Rec(Rec::Usage)),
                    "time" => return is(Val::Rec(Rec::Time)),
                    _ => {}
                }
                let r = &req.resource;
                match (&req.action, name) {
                    (Action::Http { method }, "method") => is(Val::Str(method)),
                    (Action::Http { .. } | Action::Dns | Action::Tunnel, "host") => {
                        is(Val::Str(&self.host))
                    }
                    (Action::Http { .. } | Action::Tunnel, "port") => is(Val::Long(self.port)),
                    (Action::Http { .. }, "path") => is(Val::Str(self.path)),
                    (Action::Http { .. }, "query") => is(Val::Str(&req.context.query)),
                    (Action::Http { .. }, "headers") => is(Val::Rec(Rec::Headers)),
                    (Action::Http { .. }, "body")
                    | (Action::Mcp | Action::McpPrompt, "arguments") => is(Val::Rec(Rec::Json)),
                    (Action::Mcp | Action::McpResource | Action::McpPrompt, "server") => {
                        is(Val::Str(r.server.as_deref().unwrap_or("")))
                    }
                    (Action::Mcp, "tool") => is(Val::Str(r.tool.as_deref().unwrap_or(""))),
                    (Action::McpResource, "uri") => is(Val::Str(r.uri.as_deref().unwrap_or(""))),
                    (Action::McpPrompt, "prompt") => {
                        is(Val::Str(r.prompt.as_deref().unwrap_or("")))
                    }
                    (Action::McpServerRequest { .. }, "server") => {
                        is(Val::Str(r.server.as_deref().unwrap_or("")))
                    }
                    (Action::McpServerRequest { method }, "method") => is(Val::Str(method)),
                    (Action::McpServerRequest { .. }, "params") => is(Val::Rec(Rec::Json)),
                    (Action::Spawn, "target") => is(Val::Str(&self.resource.1)),
                    _ => Field::Absent,
                }
            }
        }
    }

    /// A top-level attribute of the body (HTTP) or arguments (MCP) as the context has
    /// it (see `evaluate::json_record`): JSON `null` is left out, integers are longs;
    /// anything but a string, boolean or integer is left to Cedar, and so is every
    /// attribute of a JSON value too large to be taken whole.
    fn json_field(&self, name: &str) -> Field<'_> {
        let Some(serde_json::Value::Object(map)) = self.json else {
            // No body, or not an object: the record is empty.
            return Field::Absent;
        };
        if !self.json_whole {
            return Field::Unknown;
        }
        match map.get(name) {
            None | Some(Json::Null) => Field::Absent,
            Some(Json::Bool(b)) => Field::Is(Val::Bool(*b)),
            Some(Json::String(s)) => Field::Is(Val::Str(s)),
            Some(Json::Number(n)) => n
                .as_i64()
                .map_or(Field::Unknown, |n| Field::Is(Val::Long(n))),
            Some(Json::Array(_) | Json::Object(_)) => Field::Unknown,
        }
    }

    fn contains(&self, set: StrSet, s: &str) -> bool {
        match set {
            StrSet::Labels => self.labels.contains(s),
            StrSet::Chain => self
                .request
                .principal
                .delegators()
                .iter()
                .any(|a| a.agent.as_str() == s),
        }
    }

    /// Whether entity `(ty, id)` is `target` or one of its ancestors, for the entities
    /// the request is made of; `None` for any other entity (the store decides).
    fn entity_in(&self, ty: &str, id: &str, target: (&str, &str)) -> Option<bool> {
        if (ty, id) == target {
            return Some(true);
        }
        let p = &self.request.principal;
        if ty == TASK && id == p.current().task.as_str() {
            // The task is in its agent, which is in the tenant.
            return Some(
                target == (AGENT, p.current().agent.as_str())
                    || target == (TENANT, p.tenant().as_str()),
            );
        }
        if ty == ACTION && id == self.request.action.cedar_name() {
            let is_http = matches!(self.request.action, Action::Http { .. });
            return Some(is_http && target == (ACTION, "http"));
        }
        if (ty, id) == (self.resource.0, self.resource.1.as_str()) {
            return Some(
                self.resource_parent
                    .as_ref()
                    .is_some_and(|(t, i)| target == (*t, i.as_str())),
            );
        }
        None
    }
}

impl Cond {
    /// The value of `self` for the request, or `None` when it is not known here
    /// (including every case where Cedar would raise an error).
    fn eval<'a>(&'a self, f: &'a Facts<'a>) -> Option<Val<'a>> {
        let p = &f.request.principal;
        Some(match self {
            Self::Bool(b) => Val::Bool(*b),
            Self::Long(n) => Val::Long(*n),
            Self::Str(s) => Val::Str(s),
            Self::Entity(t, i) => Val::Entity(t, i),
            Self::Set(items) => Val::Entities(items),
            Self::Var(Var::Principal) => Val::Entity(TASK, p.current().task.as_str()),
            Self::Var(Var::Action) => Val::Entity(ACTION, f.request.action.cedar_name()),
            Self::Var(Var::Resource) => Val::Entity(f.resource.0, &f.resource.1),
            Self::Var(Var::Context) => Val::Rec(Rec::Context),
            Self::Attr(e, name) => match e.eval(f)? {
                Val::Rec(rec) => match f.field(rec, name) {
                    Field::Is(v) => v,
                    Field::Absent | Field::Unknown => return None,
                },
                _ => return None,
            },
            Self::Has(e, name) => match e.eval(f)? {
                Val::Rec(rec) => match f.field(rec, name) {
                    Field::Is(_) => Val::Bool(true),
                    Field::Absent => Val::Bool(false),
                    Field::Unknown => return None,
                },
                _ => return None,
            },
            Self::Not(e) => match e.eval(f)? {
                Val::Bool(b) => Val::Bool(!b),
                _ => return None,
            },
            Self::And(l, r) => match l.eval(f)? {
                Val::Bool(false) => Val::Bool(false),
                Val::Bool(true) => match r.eval(f)? {
                    Val::Bool(b) => Val::Bool(b),
                    _ => return None,
                },
                _ => return None,
            },
            Self::Or(l, r) => match l.eval(f)? {
                Val::Bool(true) => Val::Bool(true),
                Val::Bool(false) => match r.eval(f)? {
                    Val::Bool(b) => Val::Bool(b),
                    _ => return None,
                },
                _ => return None,
            },
            Self::Cmp(op, l, r) => {
                let (l, r) = (l.eval(f)?, r.eval(f)?);
                match op {
                    CmpOp::Eq => Val::Bool(equal(l, r)?),
                    CmpOp::Ne => Val::Bool(!equal(l, r)?),
                    _ => {
                        let (Val::Long(a), Val::Long(b)) = (l, r) else {
                            return None;
                        };
                        Val::Bool(match op {
                            CmpOp::Lt => a < b,
                            CmpOp::Le => a <= b,
                            CmpOp::Gt => a > b,
                            _ => a >= b,
                        })
                    }
                }
            }
            Self::Like(e, pattern) => match e.eval(f)? {
                Val::Str(s) => Val::Bool(like(s, pattern)),
                _ => return None,
            },
            Self::Contains(set, item) => match (set.eval(f)?, item.eval(f)?) {
                (Val::StrSet(set), Val::Str(s)) => Val::Bool(f.contains(set, s)),
                _ => return None,
            },
            Self::In(l, r) => {
                let Val::Entity(ty, id) = l.eval(f)? else {
                    return None;
                };
                match r.eval(f)? {
                    Val::Entity(t, i) => Val::Bool(f.entity_in(ty, id, (t, i))?),
                    Val::Entities(items) => {
                        let mut any = false;
                        for item in items {
                            let Self::Entity(t, i) = item else {
                                return None;
                            };
                            any |= f.entity_in(ty, id, (t, i))?;
                        }
                        Val::Bool(any)
                    }
                    _ => return None,
                }
            }
        })
    }
}

/// How many values `json` holds below its root (every array item and object member,
/// nested ones included), counting no further than `limit`.
fn count_values(json: &Json, limit: usize) -> usize {
    let mut count = 0;
    let mut stack: Vec<&Json> = vec![json];
    while let Some(v) = stack.pop() {
        match v {
            Json::Array(items) => {
                count += items.len();
                stack.extend(items.iter());
            }
            Json::Object(map) => {
                count += map.len();
                stack.extend(map.values());
            }
            _ => {}
        }
        if count >= limit {
            return count;
        }
    }
    count
}

/// Cedar `==` on values known here: values of different types are not equal; records
/// and sets are left to Cedar.
fn equal(l: Val<'_>, r: Val<'_>) -> Option<bool> {
    Some(match (l, r) {
        (Val::Bool(a), Val::Bool(b)) => a == b,
        (Val::Long(a), Val::Long(b)) => a == b,
        (Val::Str(a), Val::Str(b)) => a == b,
        (Val::Entity(t, i), Val::Entity(u, j)) => t == u && i == j,
        (Val::Rec(_) | Val::StrSet(_) | Val::Entities(_), _)
        | (_, Val::Rec(_) | Val::StrSet(_) | Val::Entities(_)) => return None,
        _ => false,
    })
}

/// Cedar's `like`: the whole string matches, `*` matches any characters.
fn like(text: &str, pattern: &[Pat]) -> bool {
    let text: Vec<char> = text.chars().collect();
    agentspace_core::wildcard_match(
        pattern,
        &text,
        |p| *p == Pat::Any,
        |p, c| *p == Pat::Char(*c),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Vec<Pat> {
        s.chars()
            .map(|c| if c == '*' { Pat::Any } else { Pat::Char(c) })
            .collect()
    }

    fn reads(text: &str) -> Option<Vec<String>> {
        let policy = Policy::parse(None, text).unwrap();
        let mut reads = BTreeSet::new();
        context_reads(&policy.to_json().unwrap(), &mut reads).then(|| reads.into_iter().collect())
    }

    #[test]
    fn context_reads_names_the_attributes_or_gives_up() {
        assert_eq!(
            reads(
                r#"forbid (principal, action, resource) when { context.path like "/a*" && context has body && context.body.x == 1 } unless { context.headers["h"] == "v" };"#
            ),
            Some(vec!["body".into(), "headers".into(), "path".into()])
        );
        assert_eq!(reads("permit (principal, action, resource);"), Some(vec![]));
        assert_eq!(
            reads("forbid (principal, action, resource) when { context == {} };"),
            None
        );
        assert_eq!(
            reads(r#"forbid (principal, action, resource) when { {a: context}.a.depth > 1 };"#),
            None
        );
    }

    /// `Facts::entity_in` knows the action hierarchy without the schema: every HTTP
    /// method is in `http` and nothing else is in anything.
    #[test]
    fn the_action_hierarchy_is_what_pre_evaluation_assumes() {
        let actions = crate::compile::schema().unwrap().action_entities().unwrap();
        let http: cedar_policy::EntityUid = r#"AgentSpace::Action::"http""#.parse().unwrap();
        let mut seen = 0;
        for action in actions.iter() {
            let uid = action.uid();
            let name = uid.id().unescaped().to_owned();
            let ancestors: Vec<String> = actions
                .ancestors(&uid)
                .map(|a| a.map(ToString::to_string).collect())
                .unwrap_or_default();
            if agentspace_core::HTTP_METHODS.contains(&name.as_str()) {
                assert_eq!(ancestors, vec![http.to_string()], "{name}");
                seen += 1;
            } else {
                assert!(ancestors.is_empty(), "{name}: {ancestors:?}");
            }
        }
        assert_eq!(seen, agentspace_core::HTTP_METHODS.len());
    }

    #[test]
    fn like_matches_whole_strings_with_stars() {
        assert!(like("/v1/score", &pat("/v1/score")));
        assert!(!like("/v1/score/x", &pat("/v1/score")));
        assert!(like("/v1/score/x", &pat("/v1/score/*")));
        assert!(like("", &pat("*")));
        assert!(like("abcbc", &pat("a*bc")));
        assert!(!like("abcbd", &pat("a*bc")));
        assert!(like("a.example.com", &pat("*.example.com")));
        assert!(!like("example.com", &pat("*.example.com")));
        assert!(like("ü/x", &pat("ü*")));
    }
}

/// The index and the pre-evaluation must never change a decision: the same requests
/// decided with every policy handed to Cedar give the same answer, message and all.
#[cfg(test)]
mod equivalence {
    use std::path::Path;

    use agentspace_core::{Actor, Definition, Name, Principal, TaskRef, UserId};
    use proptest::prelude::*;

    use crate::compile::CompiledPolicies;
    use crate::request::{Action, Request, RequestContext, Resource, Usage};

    const DEFINITION: &str = r#"apiVersion: agentspace/v1
kind: Agent
metadata: {name: officer, tenant: acme}
spec:
  policies: [./extra.cedar]
  spawn: [helper]
  egress:
    - name: api
      hosts: [api.example]
      methods: [GET, POST]
      paths: ["/v1/*"]
      approval: {when: 'context.body has amount && context.body.amount > 100'}
    - name: multi
      hosts: [a.example, "*.b.example"]
      paths: ["/x*"]
    - name: plain
      hosts: [c.example]
"#;

    /// User policies of every form the pre-evaluation decides, and some it does not
    /// (open records, `is`, errors when an attribute is missing).
    const POOL: &[&str] = &[
        r#"@id("label") forbid (principal, action == AgentSpace::Action::"POST", resource) when { context.labels.contains("pii") };"#,
        r#"@id("hour") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.time.hour == 3 && context.path like "/v1/admin*" };"#,
        r#"@id("env") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.headers has "x-env" && context.headers["x-env"] == "prod" };"#,
        r#"@id("env-unguarded") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.headers["x-env"] == "prod" };"#,
        r#"@id("amount") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.body.amount > 1500 };"#,
        r#"@id("depth") forbid (principal, action, resource) unless { context.depth < 2 };"#,
        r#"@id("chain") forbid (principal, action, resource) when { context.chain.contains("rogue") };"#,
        r#"@id("tenant-user") forbid (principal, action, resource) unless { principal in AgentSpace::Tenant::"acme" };"#,
        r#"@id("bob") permit (principal, action in AgentSpace::Action::"http", resource) when { context.user == "bob@acme.example" && context.path like "/bob/*" };"#,
        r#"@id("query") forbid (principal, action == AgentSpace::Action::"GET", resource) when { context.query like "*debug=1*" };"#,
        r#"@id("port") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.port != 443 && !(context.method == "GET") };"#,
        r#"@id("tunnel-port") permit (principal, action == AgentSpace::Action::"tunnel", resource) when { context.port == 443 && context.host like "*.example" };"#,
        r#"@id("host-when") permit (principal, action == AgentSpace::Action::"GET", resource) when { resource == AgentSpace::Host::"d.example" || context.host like "*.d.example" };"#,
        r#"@id("mcp") permit (principal, action == AgentSpace::Action::"mcp", resource in AgentSpace::McpServer::"fs") when { context.tool like "read*" };"#,
        r#"@id("mcp-in") permit (principal, action == AgentSpace::Action::"mcp", resource) when { resource in AgentSpace::McpServer::"db" && context.server == "db" };"#,
        r#"@id("mcp-args") forbid (principal, action == AgentSpace::Action::"mcp", resource) when { context.arguments has path && context.arguments.path like "/etc/*" };"#,
        r#"@id("dns") permit (principal, action == AgentSpace::Action::"dns", resource) when { context.host like "*.internal" };"#,
        r#"@id("spawn-budget") forbid (principal, action == AgentSpace::Action::"spawn", resource) when { context.target == "helper" && context.usage.requests > 5 };"#,
        r#"@id("spawn-in") permit (principal, action == AgentSpace::Action::"spawn", resource) when { resource in AgentSpace::Tenant::"acme" && context.depth < 3 };"#,
        r#"@id("weekend") @approval("weekend or secret") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.time.weekday >= 6 || context.labels.contains("secret") };"#,
        r#"@id("approve-y") @approval("y") forbid (principal, action == AgentSpace::Action::"POST", resource) when { context.body.y == 1 };"#,
        r#"@id("action-in") forbid (principal, action, resource) when { action in [AgentSpace::Action::"DELETE", AgentSpace::Action::"dns"] && context.agent == "officer" && context.host == "c.example" };"#,
        r#"@id("has-path") forbid (principal, action in AgentSpace::Action::"http", resource) when { context has path && context.path == "/v1/forbidden" };"#,
        r#"@id("agent-task") forbid (principal, action, resource) unless { principal in AgentSpace::Agent::"officer" && context.task != "t0" };"#,
        r#"@id("task-scope") permit (principal == AgentSpace::Task::"t9", action in AgentSpace::Action::"http", resource);"#,
        r#"@id("minute") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.time.minute >= 58 && context.time.unix > 0 };"#,
        r#"@id("mode") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.headers has "x-mode" && context.headers["x-mode"] like "deny*" };"#,
        r#"@id("public") permit (principal, action == AgentSpace::Action::"GET", resource) when { context.path like "/public/*" };"#,
        r#"@id("uri") permit (principal, action == AgentSpace::Action::"mcp_resource", resource in AgentSpace::McpServer::"fs") when { context.uri like "file:///v1/*" };"#,
        r#"@id("uri-deny") forbid (principal, action == AgentSpace::Action::"mcp_resource", resource) when { context.uri == "file:///bob/1" || context.server == "db" };"#,
        r#"@id("prompt") permit (principal, action == AgentSpace::Action::"mcp_prompt", resource == AgentSpace::Prompt::"fs/read_file") when { context.prompt like "read*" };"#,
        r#"@id("prompt-args") forbid (principal, action == AgentSpace::Action::"mcp_prompt", resource) when { context.arguments has path && context.arguments.path like "/etc/*" };"#,
        r#"@id("relay") permit (principal, action == AgentSpace::Action::"mcp_server_request", resource == AgentSpace::McpServer::"fs") when { context.method == "sampling/createMessage" };"#,
        r#"@id("relay-params") forbid (principal, action == AgentSpace::Action::"mcp_server_request", resource) when { context.params has path && context.server == "db" };"#,
        r#"@id("is-tool") forbid (principal, action == AgentSpace::Action::"mcp", resource) when { resource is AgentSpace::Tool && context.tool == "drop" };"#,
        r#"@id("user-attr") forbid (principal, action in AgentSpace::Action::"http", resource) when { principal.user == AgentSpace::User::"eve@acme.example" };"#,
        r#"@id("memo") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.body has memo && context.body.memo == "x" };"#,
        r#"@id("flag") forbid (principal, action == AgentSpace::Action::"POST", resource) when { context.body has flag && context.body.flag };"#,
        r#"@id("ratio") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.body has ratio && context.body.ratio == "1.5" };"#,
        r#"@id("nested") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.body has customer && context.body.customer.country == "xx" };"#,
        r#"@id("big") @approval("big amounts") forbid (principal, action in AgentSpace::Action::"http", resource) when { context.body has amount && context.body.amount > 2500 };"#,
        r#"@id("no-amount") forbid (principal, action == AgentSpace::Action::"PUT", resource) unless { context.body has amount };"#,
        r#"@id("get-is-http") forbid (principal, action == AgentSpace::Action::"DELETE", resource) when { AgentSpace::Action::"GET" in AgentSpace::Action::"http" && context.path like "/v1/*" };"#,
        r#"@id("scoped-path") forbid (principal, action == AgentSpace::Action::"POST", resource == AgentSpace::Host::"api.example") when { context.path like "/v1/admin/*" };"#,
    ];

    fn compile(policies: &[&str]) -> CompiledPolicies {
        let def = Definition::parse(Path::new("/defs/officer.yaml"), DEFINITION).unwrap();
        CompiledPolicies::compile_with_files(
            &def,
            vec![("extra.cedar".into(), policies.join("\n"))],
        )
        .unwrap()
    }

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    const CHAINS: &[&[&str]] = &[&[], &["planner"], &["rogue"], &["planner", "rogue"]];

    fn principal() -> impl Strategy<Value = Principal> {
        (
            prop::sample::select(
                &["alice@acme.example", "bob@acme.example", "eve@acme.example"][..],
            ),
            prop::sample::select(&["t0", "t1", "t9"][..]),
            prop::sample::select(CHAINS),
        )
            .prop_map(|(user, task, chain)| {
                let actor = Actor::new(name("officer"), TaskRef::new(task).unwrap());
                let mut agents = chain.iter();
                let Some(root) = agents.next() else {
                    return Principal::new(name("acme"), UserId::new(user).unwrap(), actor);
                };
                let mut p = Principal::new(
                    name("acme"),
                    UserId::new(user).unwrap(),
                    Actor::new(name(root), TaskRef::new("r").unwrap()),
                );
                for a in agents {
                    p = p
                        .delegate(Actor::new(name(a), TaskRef::new("m").unwrap()))
                        .unwrap();
                }
                p.delegate(actor).unwrap()
            })
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            4 => prop::sample::select(&["GET", "POST", "PUT", "DELETE"][..])
                .prop_map(|m| Action::Http { method: m.to_owned() }),
            1 => Just(Action::Dns),
            1 => Just(Action::Mcp),
            1 => Just(Action::McpResource),
            1 => Just(Action::McpPrompt),
            1 => prop::sample::select(&["sampling/createMessage", "roots/list"][..])
                .prop_map(|m| Action::McpServerRequest { method: m.to_owned() }),
            1 => Just(Action::Spawn),
            1 => Just(Action::Tunnel),
        ]
    }

    fn body() -> impl Strategy<Value = Option<serde_json::Value>> {
        prop_oneof![
            Just(None),
            prop::sample::select(&["x", "y"][..])
                .prop_map(|m| Some(serde_json::json!({"memo": m, "flag": m == "x"}))),
            Just(Some(
                serde_json::json!({"ratio": 1.5, "customer": {"country": "xx"}, "flag": false})
            )),
            // More values than are taken into Cedar: attributes are left to Cedar.
            Just(Some(
                serde_json::json!({"items": vec![0; 10_001], "amount": 2600})
            )),
            (0i64..3000).prop_map(|a| Some(serde_json::json!({"amount": a}))),
            (0i64..3).prop_map(|y| Some(serde_json::json!({"y": y, "amount": null}))),
            Just(Some(serde_json::json!(["not", "an", "object"]))),
        ]
    }

    prop_compose! {
        fn request()(
            principal in principal(),
            action in action(),
            host in prop::sample::select(&["api.example", "api.example", "api.example", "API.example", "a.example", "x.b.example", "c.example", "d.example", "e.d.example", "q.internal", "other.com"][..]),
            path in prop::sample::select(&["/", "/v1/a", "/v1/a", "/v1/admin/x", "/v1/forbidden", "/x1", "/bob/1", "/public/p"][..]),
            port in prop::sample::select(&[443u16, 8443][..]),
            query in prop::sample::select(&["", "debug=1", "a=1&debug=1"][..]),
            header in prop::collection::vec((
                prop::sample::select(&["x-env", "X-Env", "x-mode", "X-Mode"][..]),
                prop::sample::select(&["prod", "deny-all", "dev"][..]),
            ), 0..=2),
            labels in prop::sample::subsequence(&["pii", "secret"][..], 0..=2),
            body in body(),
            tool in prop::sample::select(&[("fs", "read_file"), ("fs", "write_file"), ("db", "drop"), ("db", "query")][..]),
            arguments in prop::sample::select(&[None, Some("/etc/passwd"), Some("/tmp/x")][..]),
            target in prop::sample::select(&["helper", "officer", "other"][..]),
            time in 0u64..14 * 86_400,
        ) -> Request {
            let resource = match action {
                Action::Http { .. } => Resource { host: Some(host.to_owned()), port: Some(port), path: Some(path.to_owned()), ..Resource::default() },
                Action::Dns => Resource { host: Some(host.to_owned()), ..Resource::default() },
                Action::Mcp => Resource { server: Some(tool.0.to_owned()), tool: Some(tool.1.to_owned()), ..Resource::default() },
                Action::McpResource => Resource { server: Some(tool.0.to_owned()), uri: Some(format!("file://{}", path)), ..Resource::default() },
                Action::McpPrompt => Resource { server: Some(tool.0.to_owned()), prompt: Some(tool.1.to_owned()), ..Resource::default() },
                Action::McpServerRequest { .. } => Resource { server: Some(tool.0.to_owned()), ..Resource::default() },
                Action::Spawn => Resource { agent: Some(name(target)), ..Resource::default() },
                Action::Tunnel => Resource { host: Some(host.to_owned()), port: Some(port), ..Resource::default() },
            };
            Request {
                principal,
                action,
                resource,
                context: RequestContext {
                    query: query.to_owned(),
                    headers: header.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
                    body,
                    arguments: arguments.map(|a| serde_json::json!({"path": a})),
                    labels: labels.into_iter().map(str::to_owned).collect(),
                    time: Some(1_767_571_200 + time),
                    usage: None,
                },
            }
        }
    }

    #[test]
    fn every_pool_policy_compiles_with_the_definition() {
        let c = compile(POOL);
        // The generated policies and most user policies have leading conditions decided
        // here; otherwise the filter would be vacuous.
        let guarded = c
            .index
            .values()
            .flat_map(|s| s.any().all())
            .filter(|g| g.guard_len() > 0)
            .count();
        assert!(guarded > 20, "{guarded}");
    }

    #[test]
    fn conditions_left_to_cedar_still_decide() {
        let c = compile(&[]);
        let p = Principal::new(
            name("acme"),
            UserId::new("alice@acme.example").unwrap(),
            Actor::new(name("officer"), TaskRef::new("t1").unwrap()),
        );
        let post = |body: serde_json::Value| Request {
            principal: p.clone(),
            action: Action::Http {
                method: "POST".into(),
            },
            resource: Resource {
                host: Some("api.example".into()),
                path: Some("/v1/a".into()),
                ..Resource::default()
            },
            context: RequestContext {
                body: Some(body),
                time: Some(1_767_571_200),
                ..RequestContext::default()
            },
        };
        for (body, kind) in [
            (serde_json::json!({"amount": 500}), "approval-required"),
            (serde_json::json!({"amount": 50}), "allow"),
            (serde_json::json!({"amount": null}), "allow"),
            (serde_json::json!({}), "allow"),
        ] {
            let r = post(body.clone());
            let sliced = c.evaluate_full(&r, Usage::default(), 1_767_571_200, false);
            let unsliced = c.evaluate_unsliced(&r, Usage::default(), 1_767_571_200, false);
            assert_eq!(sliced.decision, unsliced.decision, "{body}");
            assert_eq!(sliced.decision.kind(), kind, "{body}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn the_sliced_decision_equals_the_unsliced_decision(
            chosen in prop::sample::subsequence(POOL, 0..=10),
            requests in prop::collection::vec(request(), 24),
            requests_used in 0u64..10,
        ) {
            let c = compile(&chosen);
            for r in &requests {
                let usage = Usage { requests: requests_used, ..Usage::default() };
                let now = r.context.time.unwrap_or_default();
                for approved in [false, true] {
                    let sliced = c.evaluate_full(r, usage, now, approved);
                    let unsliced = c.evaluate_unsliced(r, usage, now, approved);
                    prop_assert_eq!(&sliced.decision, &unsliced.decision, "request {:?}", r);
                    prop_assert_eq!(&sliced.capabilities, &unsliced.capabilities);
                }
            }
        }
    }
}
