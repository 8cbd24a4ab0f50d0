//! The tool sections of an agent definition: MCP tool servers (`spec.tools`) and
//! data-flow rules (`spec.flows`).
//!
//! As elsewhere, two layers: the `Raw*` serde model as written (strict, with a JSON
//! Schema) and the validated form ([`ToolServer`], [`FlowRule`]) that
//! `agentspace-policy` compiles to Cedar and flow checks, and the gateway serves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::governance::{Approval, DEFAULT_APPROVAL_TIMEOUT, RawApproval};
use crate::ids::Name;

/// Most characters of an MCP tool name (as the MCP specification bounds them).
const MAX_TOOL_NAME: usize = 128;
/// Most characters of a data label.
const MAX_LABEL: usize = 64;

/// One MCP tool server as written under `spec.tools`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawToolServer {
    /// The server's name: policies, flow rules and the audit log refer to it, and the
    /// agent sees its tools under it. Distinct from every other server and egress rule.
    pub server: Name,
    /// A stdio server: the program and its arguments, started by the boundary OUTSIDE
    /// the cell (working directory: the definition's directory) on the first call and
    /// stopped with the task. Exactly one of `command` and `url`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// A streamable-HTTP server (`http://host[:port]/path`). Exactly one of `command`
    /// and `url`.
    #[serde(default)]
    pub url: Option<String>,
    /// The tools the agent may see and call. Omitted or empty: none (the agent never
    /// sees this server).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Data labels this server's results carry (`pii`): a result taints the task's
    /// session with them.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Data labels this server may receive (in addition to `spec.flows`). A server is
    /// always cleared for the labels its own results carry.
    #[serde(default)]
    pub cleared_for: Vec<String>,
    /// Hold this server's tool calls for a human's approval; `when` is a Cedar
    /// expression over the call (`context.tool`, `context.arguments`).
    #[serde(default)]
    pub approval: Option<RawApproval>,
    /// What to do with a result that looks like a prompt injection (instructions aimed
    /// at the model, role markers, tool-call look-alikes, hidden unicode): `flag` it
    /// (default), `redact` the strings that do, or `block` the whole result.
    #[serde(default)]
    pub injection: Option<InjectionAction>,
    /// The resources the agent may list and read, as URI patterns (`customer://*`,
    /// `file:///srv/reports/*`; `*` matches any run of characters, `*` alone every
    /// resource). Omitted or empty: none.
    #[serde(default)]
    pub resources: Vec<String>,
    /// The prompts the agent may list and get, by name. Omitted or empty: none.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// What this server may send the agent's client through the boundary: requests
    /// (`sampling`, `elicitation`, `roots`; each decided by policy and audited, the
    /// answer checked against the flow rules on its way back) and notifications
    /// (`progress`, `logging`, `listChanged`). Omitted or empty: nothing; such requests
    /// are refused and audited.
    #[serde(default)]
    pub relay: Vec<Relay>,
    /// A credential the gateway adds to every request to this streamable-HTTP server
    /// (`url`), from the tenant's secret store, as for `spec.egress[].credential`
    /// (`header`, `basic` or `query`). Neither the agent nor anything it can read ever
    /// holds it; a response that echoes it is redacted.
    #[serde(default)]
    pub credential: Option<crate::governance::RawCredential>,
    /// For a stdio server: what its own cell may reach, as `spec.egress` rules (with
    /// brokered `credential`s). Omitted or empty: its cell has no network. The server's
    /// requests go through a gateway of its own, decided by these rules, and the
    /// credentials are added there: the server process never holds them.
    #[serde(default)]
    pub egress: Vec<crate::governance::RawEgressRule>,
}

/// What a tool server may send the agent's client through the boundary.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Relay {
    /// `sampling/createMessage`: the server asks the agent's model for a completion.
    Sampling,
    /// `elicitation/create`: the server asks the user (through the agent's client).
    Elicitation,
    /// `roots/list`: the server asks for the client's roots.
    Roots,
    /// `notifications/progress` of a call in flight.
    Progress,
    /// `notifications/message`: log messages.
    Logging,
    /// `notifications/tools/list_changed` and its resources and prompts siblings.
    ListChanged,
}

impl Relay {
    /// What a message of `method` from a server is, if it is one a definition can relay.
    pub fn of_method(method: &str) -> Option<Self> {
        Some(match method {
            "sampling/createMessage" => Self::Sampling,
            "elicitation/create" => Self::Elicitation,
            "roots/list" => Self::Roots,
            "notifications/progress" => Self::Progress,
            "notifications/message" => Self::Logging,
            "notifications/tools/list_changed"
            | "notifications/resources/list_changed"
            | "notifications/prompts/list_changed" => Self::ListChanged,
            _ => return None,
        })
    }

    /// The name as a definition writes it (`listChanged`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sampling => "sampling",
            Self::Elicitation => "elicitation",
            Self::Roots => "roots",
            Self::Progress => "progress",
            Self::Logging => "logging",
            Self::ListChanged => "listChanged",
        }
    }

    /// The request method, for the kinds that are requests (`sampling`, `elicitation`,
    /// `roots`).
    pub fn request_method(self) -> Option<&'static str> {
        match self {
            Self::Sampling => Some("sampling/createMessage"),
            Self::Elicitation => Some("elicitation/create"),
            Self::Roots => Some("roots/list"),
            Self::Progress | Self::Logging | Self::ListChanged => None,
        }
    }
}

/// What the MCP gateway does with a tool result that looks like a prompt injection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InjectionAction {
    /// Pass it on, flagged (`_meta["agentspace/flags"]` and the audit log).
    #[default]
    Flag,
    /// Replace each string that looks like one, and flag the result.
    Redact,
    /// Withhold the whole result: the agent gets an error.
    Block,
}

/// One data-flow rule as written under `spec.flows`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFlowRule {
    /// The data label (`pii`).
    pub label: String,
    /// The destinations cleared for it: egress rule names and tool server names. Once
    /// a task's session carries the label, every other destination is denied (`flow`).
    pub may_flow_to: Vec<Name>,
    /// Instead of denying, hold a request to a destination not cleared for the label
    /// for a human's approval (`{}` for the default timeout of 10m).
    #[serde(default)]
    pub approval: Option<RawFlowApproval>,
}

/// How long a flow violation waits for approval.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFlowApproval {
    /// How long the request is held before it is denied (default 10m).
    #[serde(default)]
    pub timeout: Option<crate::quantity::Duration>,
}

/// How the boundary reaches a tool server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ToolTransport {
    /// A program speaking MCP over stdin/stdout, started outside the cell.
    Stdio {
        /// The program and its arguments.
        command: Vec<String>,
        /// Its working directory: the definition's directory.
        cwd: PathBuf,
    },
    /// A streamable-HTTP MCP endpoint.
    Http {
        /// The endpoint URL.
        url: String,
    },
}

/// A validated tool server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ToolServer {
    /// The server's name.
    pub name: Name,
    /// How to reach it.
    pub transport: ToolTransport,
    /// The tools the agent may see and call, in file order.
    pub allow: Vec<String>,
    /// Labels its results carry.
    pub labels: BTreeSet<String>,
    /// Labels it may receive besides those of `spec.flows` and its own.
    pub cleared_for: BTreeSet<String>,
    /// The approval requirement of its calls, if any.
    pub approval: Option<Approval>,
    /// What happens to results that look like prompt injections.
    pub injection: InjectionAction,
    /// URI patterns of the resources the agent may list and read, in file order.
    pub resources: Vec<String>,
    /// The prompts the agent may list and get, in file order.
    pub prompts: Vec<String>,
    /// What the server may send the agent's client.
    pub relay: BTreeSet<Relay>,
    /// The credential the gateway adds to every request to this (HTTP) server.
    pub credential: Option<crate::governance::CredentialRef>,
    /// A stdio server's own egress rules, as written (checked here; they become the
    /// `spec.egress` of the server's cell, whose gateway enforces them).
    pub egress: Vec<crate::governance::RawEgressRule>,
}

impl ToolServer {
    /// Whether the agent may read the resource at `uri` of this server (a pattern of
    /// `resources` matches it).
    pub fn allows_resource(&self, uri: &str) -> bool {
        self.resources
            .iter()
            .any(|p| glob(p.as_bytes(), uri.as_bytes()))
    }

    /// Whether every URI the resource template `template` (RFC 6570, `{...}`
    /// expressions) can produce is one the agent may read: the template with each
    /// expression read as `*` is matched by a pattern whose literal characters never
    /// stand where an expression is.
    pub fn allows_template(&self, template: &str) -> bool {
        // Each expression becomes one `\0`, which no pattern character but `*` matches.
        let mut shape = Vec::with_capacity(template.len());
        let mut depth = 0usize;
        for b in template.bytes() {
            match (b, depth) {
                (b'{', 0) => {
                    depth = 1;
                    shape.push(0);
                }
                (b'{', _) => return false,
                (b'}', 1) => depth = 0,
                (_, 1) => {}
                (b, _) => shape.push(b),
            }
        }
        depth == 0 && self.resources.iter().any(|p| glob(p.as_bytes(), &shape))
    }

    /// Whether the agent may get the prompt `name` of this server.
    pub fn allows_prompt(&self, name: &str) -> bool {
        self.prompts.iter().any(|p| p == name)
    }
}

/// Whether `pattern` (`*` matches any run of bytes, everything else itself) matches all
/// of `text`: the semantics of Cedar's `like` for patterns without escapes, which is
/// what the compiled policies use, so the gateway's listing and Cedar agree.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // A template's expressions are `\0` in `text`: only `*` matches them.
    wildcard_match(pattern, text, |p| *p == b'*', |p, t| p == t && *t != 0)
}

/// Whether `pattern` matches all of `text`, where `any(p)` says `p` is the wildcard
/// (it matches any run of elements, none included) and `same(p, t)` whether pattern
/// element `p` matches text element `t`: the matching of Cedar's `like`. Iterative with
/// one backtrack point, so linear in practice and never exponential.
pub fn wildcard_match<P, T>(
    pattern: &[P],
    text: &[T],
    any: impl Fn(&P) -> bool,
    same: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // The last wildcard seen and the text position it is matched up to so far.
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = text.get(t) {
        match pattern.get(p) {
            Some(x) if any(x) => {
                star = Some((p, t));
                p += 1;
            }
            Some(x) if same(x, c) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(any))
}

/// A validated data-flow rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRule {
    /// The label.
    pub label: String,
    /// Egress rule names and tool server names cleared for it.
    pub may_flow_to: Vec<Name>,
    /// When set, a request to a destination not cleared for the label is held this long
    /// for a human's approval instead of denied.
    pub approval: Option<std::time::Duration>,
}

/// The validated tool sections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tools {
    /// Tool servers, in file order.
    pub servers: Vec<ToolServer>,
    /// Flow rules, in file order.
    pub flows: Vec<FlowRule>,
}

impl Tools {
    /// The server named `name`.
    pub fn server(&self, name: &str) -> Option<&ToolServer> {
        self.servers.iter().find(|s| s.name.as_str() == name)
    }

    /// Whether `destination` (an egress rule or tool server name) may receive data
    /// labelled `label`: a flow rule names it, or it is a server that lists the label in
    /// `clearedFor` or carries the label itself.
    pub fn cleared(&self, destination: &str, label: &str) -> bool {
        self.flows
            .iter()
            .any(|f| f.label == label && f.may_flow_to.iter().any(|d| d.as_str() == destination))
            || self
                .server(destination)
                .is_some_and(|s| s.cleared_for.contains(label) || s.labels.contains(label))
    }
}

type FieldError = (String, String);

/// Checks `spec.tools` and `spec.flows` against each other and the egress rule names.
pub(crate) fn validate_tools(
    servers: &[RawToolServer],
    flows: &[RawFlowRule],
    egress_names: &[&str],
    base: &Path,
) -> Result<Tools, FieldError> {
    let mut out = Tools::default();
    let mut names = BTreeSet::new();
    for (i, raw) in servers.iter().enumerate() {
        let field = |sub: &str| format!("spec.tools[{i}].{sub}");
        let name = raw.server.as_str();
        if !names.insert(name) {
            return Err((
                field("server"),
                format!("server `{name}` is defined twice; give each server its own name"),
            ));
        }
        if egress_names.contains(&name) {
            return Err((
                field("server"),
                format!(
                    "`{name}` is also an egress rule name; flow rules name both, so give the server another name"
                ),
            ));
        }
        let transport = match (&raw.command, &raw.url) {
            (Some(command), None) => {
                if command.is_empty() || command.first().is_some_and(String::is_empty) {
                    return Err((
                        field("command"),
                        "give the program and its arguments, e.g. `[python3, ./server.py]`"
                            .to_owned(),
                    ));
                }
                if command.iter().any(|a| a.contains('\0')) {
                    return Err((
                        field("command"),
                        "an argument contains a NUL byte".to_owned(),
                    ));
                }
                ToolTransport::Stdio {
                    command: command.clone(),
                    cwd: base.to_path_buf(),
                }
            }
            (None, Some(url)) => {
                check_url(url).map_err(|m| (field("url"), m))?;
                ToolTransport::Http { url: url.clone() }
            }
            (Some(_), Some(_)) => {
                return Err((
                    field("command"),
                    "give either `command` (a stdio server) or `url` (a streamable-HTTP server), not both".to_owned(),
                ));
            }
            (None, None) => {
                return Err((
                    field("server"),
                    "give `command` (a stdio server started outside the cell) or `url` (a streamable-HTTP server)".to_owned(),
                ));
            }
        };
        let mut allow = Vec::new();
        for tool in &raw.allow {
            check_tool_name(tool).map_err(|m| (field("allow"), m))?;
            if allow.contains(tool) {
                return Err((field("allow"), format!("tool `{tool}` is listed twice")));
            }
            allow.push(tool.clone());
        }
        let labels = label_set(&raw.labels).map_err(|m| (field("labels"), m))?;
        let cleared_for = label_set(&raw.cleared_for).map_err(|m| (field("clearedFor"), m))?;
        let approval = match &raw.approval {
            Some(a) => Some(validate_approval(a).map_err(|(sub, m)| (field(&sub), m))?),
            None => None,
        };
        let mut resources = Vec::new();
        for pattern in &raw.resources {
            check_uri_pattern(pattern).map_err(|m| (field("resources"), m))?;
            if resources.contains(pattern) {
                return Err((field("resources"), format!("`{pattern}` is listed twice")));
            }
            resources.push(pattern.clone());
        }
        let mut prompts = Vec::new();
        for prompt in &raw.prompts {
            check_tool_name(prompt)
                .map_err(|_| (field("prompts"), format!("`{prompt}` is not a prompt name (1-{MAX_TOOL_NAME} letters, digits, `_`, `-` or `.`; list each prompt by its exact name)")))?;
            if prompts.contains(prompt) {
                return Err((
                    field("prompts"),
                    format!("prompt `{prompt}` is listed twice"),
                ));
            }
            prompts.push(prompt.clone());
        }
        let mut relay = BTreeSet::new();
        for r in &raw.relay {
            if !relay.insert(*r) {
                return Err((field("relay"), format!("`{}` is listed twice", r.name())));
            }
        }
        let credential = match (&raw.credential, &transport) {
            (None, _) => None,
            (Some(_), ToolTransport::Stdio { .. }) => {
                return Err((
                    field("credential"),
                    "a stdio server is given no credential (it would hold it); the gateway brokers credentials for a `url` server only".to_owned(),
                ));
            }
            (Some(c), ToolTransport::Http { .. }) => {
                let c = crate::governance::validate_credential(c)
                    .map_err(|(sub, m)| (field(&format!("credential.{sub}")), m))?;
                if let crate::governance::CredentialApply::AwsSigV4 { .. } = c.apply {
                    return Err((
                        field("credential.awsSigV4"),
                        "AWS signing is for egress rules; give a tool server `header`, `basic` or `query`".to_owned(),
                    ));
                }
                Some(c)
            }
        };
        if !raw.egress.is_empty() {
            if let ToolTransport::Http { .. } = transport {
                return Err((
                    field("egress"),
                    "egress rules are for a stdio server's own cell; a `url` server's network is not the boundary's to give".to_owned(),
                ));
            }
            crate::governance::validate_egress(&raw.egress).map_err(|(f, m)| {
                let sub = f.strip_prefix("spec.egress").unwrap_or(&f);
                (format!("spec.tools[{i}].egress{sub}"), m)
            })?;
        }
        out.servers.push(ToolServer {
            name: raw.server.clone(),
            transport,
            allow,
            labels,
            cleared_for,
            approval,
            injection: raw.injection.unwrap_or_default(),
            resources,
            prompts,
            relay,
            credential,
            egress: raw.egress.clone(),
        });
    }

    let mut labels = BTreeSet::new();
    for (i, raw) in flows.iter().enumerate() {
        let field = |sub: &str| format!("spec.flows[{i}].{sub}");
        check_label(&raw.label).map_err(|m| (field("label"), m))?;
        if !labels.insert(raw.label.as_str()) {
            return Err((
                field("label"),
                format!(
                    "label `{}` has two rules; list all its destinations in one",
                    raw.label
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for dest in &raw.may_flow_to {
            let d = dest.as_str();
            if !seen.insert(d) {
                return Err((field("mayFlowTo"), format!("`{d}` is listed twice")));
            }
            if !egress_names.contains(&d) && !names.contains(d) {
                return Err((
                    field("mayFlowTo"),
                    format!(
                        "`{d}` is neither an egress rule (`spec.egress[].name`) nor a tool server (`spec.tools[].server`) of this definition"
                    ),
                ));
            }
        }
        out.flows.push(FlowRule {
            label: raw.label.clone(),
            may_flow_to: raw.may_flow_to.clone(),
            approval: raw
                .approval
                .as_ref()
                .map(|a| a.timeout.map_or(DEFAULT_APPROVAL_TIMEOUT, |t| t.get())),
        });
    }
    Ok(out)
}

fn validate_approval(a: &RawApproval) -> Result<Approval, FieldError> {
    if let Some(when) = &a.when {
        if when.trim().is_empty() {
            return Err((
                "approval.when".to_owned(),
                "the condition is empty; write a Cedar expression or omit `when` to always require approval".to_owned(),
            ));
        }
        if when.len() > 4096 {
            return Err((
                "approval.when".to_owned(),
                "the condition is longer than 4096 characters".to_owned(),
            ));
        }
    }
    let timeout = a
        .timeout
        .map_or(DEFAULT_APPROVAL_TIMEOUT, crate::quantity::Duration::get);
    if timeout.is_zero() {
        return Err((
            "approval.timeout".to_owned(),
            "must be longer than zero".to_owned(),
        ));
    }
    Ok(Approval {
        when: a.when.clone(),
        timeout,
    })
}

/// An MCP tool name: 1-128 of letters, digits, `_`, `-` and `.`.
fn check_tool_name(tool: &str) -> Result<(), String> {
    let ok = !tool.is_empty()
        && tool.len() <= MAX_TOOL_NAME
        && tool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{tool}` is not a tool name (1-{MAX_TOOL_NAME} letters, digits, `_`, `-` or `.`; list each tool by its exact name)"
        ))
    }
}

/// A resource URI pattern: `*` alone, or a URI scheme (`customer:`) and then any
/// characters but whitespace, control characters and `\` (Cedar's `like` escape);
/// `*` matches any run of characters.
fn check_uri_pattern(pattern: &str) -> Result<(), String> {
    let hint = "write a URI pattern such as `customer://*` or `file:///srv/reports/*` (`*` matches any characters), or `*` for every resource";
    if pattern.len() > 2048 {
        return Err(format!(
            "the pattern is longer than 2048 characters; {hint}"
        ));
    }
    if pattern
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err(format!(
            "`{pattern}` has whitespace, a control character or `\\`; {hint}"
        ));
    }
    if pattern == "*" {
        return Ok(());
    }
    let scheme = pattern.split(':').next().unwrap_or_default();
    let scheme_ok = pattern.contains(':')
        && scheme
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b));
    if scheme_ok {
        Ok(())
    } else {
        Err(format!(
            "`{pattern}` does not start with a URI scheme; {hint}"
        ))
    }
}

/// A data label: 1-64 lowercase letters, digits, `-` and `_`.
fn check_label(label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{label}` is not a label (1-{MAX_LABEL} lowercase letters, digits, `-` or `_`, e.g. `pii`)"
        ))
    }
}

fn label_set(list: &[String]) -> Result<BTreeSet<String>, String> {
    let mut set = BTreeSet::new();
    for label in list {
        check_label(label)?;
        if !set.insert(label.clone()) {
            return Err(format!("`{label}` is listed twice"));
        }
    }
    Ok(set)
}

/// `http://` or `https://`, a host, no credentials, whitespace or fragment.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        return Err(format!(
            "`{url}` is not an `http://` or `https://` URL of a streamable-HTTP MCP endpoint"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "`{url}` has no host, or has user info (put credentials in the secret store, not the URL)"
        ));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '#')
    {
        return Err(format!("`{url}` has whitespace or a fragment"));
    }
    if url.len() > 2048 {
        return Err("the URL is longer than 2048 characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_urls() {
        assert!(check_tool_name("lookup_customer").is_ok());
        assert!(check_tool_name("a/b").is_err());
        assert!(check_tool_name("*").is_err());
        assert!(check_label("pii").is_ok());
        assert!(check_label("PII").is_err());
        assert!(check_url("http://hr.internal.example/mcp").is_ok());
        assert!(check_url("https://127.0.0.1:8080/mcp").is_ok());
        for bad in ["ftp://x", "http://", "http://u:p@x/", "http://x/ y", "x"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        for good in ["*", "customer://*", "file:///srv/a b", "x-y+z.1:abc"] {
            let ok = check_uri_pattern(good).is_ok();
            assert_eq!(ok, !good.contains(' '), "{good}");
        }
        for bad in ["customer", "//x", "1x:y", "a:\\*", ""] {
            assert!(check_uri_pattern(bad).is_err(), "{bad}");
        }
    }

    fn server(resources: &[&str]) -> ToolServer {
        ToolServer {
            name: Name::new("s").unwrap(),
            transport: ToolTransport::Http {
                url: "http://x/mcp".into(),
            },
            allow: Vec::new(),
            labels: BTreeSet::new(),
            cleared_for: BTreeSet::new(),
            approval: None,
            injection: InjectionAction::Flag,
            resources: resources.iter().map(|s| (*s).to_owned()).collect(),
            prompts: vec!["brief".into()],
            relay: BTreeSet::new(),
            credential: None,
            egress: Vec::new(),
        }
    }

    #[test]
    fn resource_patterns_match_like_cedar() {
        let s = server(&["customer://*", "file:///srv/*/report.txt"]);
        assert!(s.allows_resource("customer://c-001"));
        assert!(s.allows_resource("customer://"));
        assert!(!s.allows_resource("customers://c-001"));
        assert!(s.allows_resource("file:///srv/2024/report.txt"));
        assert!(s.allows_resource("file:///srv/a/b/report.txt"));
        assert!(!s.allows_resource("file:///srv/report.txt.bak"));
        assert!(!s.allows_resource("file:///etc/passwd"));
        assert!(server(&["*"]).allows_resource("anything:at-all"));
        assert!(!server(&[]).allows_resource("customer://c-001"));
        assert!(s.allows_prompt("brief") && !s.allows_prompt("brie"));
    }

    #[test]
    fn a_template_is_allowed_only_when_every_expansion_is() {
        let s = server(&["customer://*", "file:///srv/*/report.txt"]);
        assert!(s.allows_template("customer://{id}"));
        assert!(s.allows_template("file:///srv/{year}/report.txt"));
        assert!(!s.allows_template("file:///srv/{year}/{name}"));
        assert!(!s.allows_template("{scheme}://c-001"));
        assert!(!server(&["customer://c-*"]).allows_template("customer://{id}"));
        assert!(!s.allows_template("customer://{id"));
        assert!(!s.allows_template("customer://{{id}}"));
        assert!(server(&["*"]).allows_template("{anything}"));
    }
}
