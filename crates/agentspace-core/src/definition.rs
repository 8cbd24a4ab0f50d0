//! The agent definition format, `apiVersion: agentspace/v1`.
//!
//! Two layers, resolved in one step: [`AgentDefinition`] is the file as written (serde
//! model, strict: unknown fields are errors), [`Definition`] is the validated form every
//! other crate uses (absolute paths, limits in bytes and durations, a digest of the file).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::governance::{
    Governance, RawBudgets, RawEgressRule, validate_budgets, validate_egress, validate_loop_limit,
    validate_spawn,
};
use crate::ids::Name;
use crate::quantity::{Cpu, Duration, Size};
use crate::tools::{RawFlowRule, RawToolServer, Tools, validate_tools};

/// An agent definition as written in YAML.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "Agent Space agent definition (agentspace/v1)")]
pub struct AgentDefinition {
    /// The format version; must be `agentspace/v1`.
    pub api_version: ApiVersion,
    /// The kind of object; must be `Agent`.
    pub kind: Kind,
    /// Who the agent is and which tenant owns it.
    pub metadata: Metadata,
    /// What the agent may use.
    pub spec: Spec,
}

/// The only supported format version.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum ApiVersion {
    /// Version 1 of the definition format.
    #[serde(rename = "agentspace/v1")]
    V1,
}

/// The kind of object a definition file describes.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum Kind {
    /// An agent.
    Agent,
}

/// Identity of the agent definition.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The agent's name: the hostname inside its cell and part of every task's identity.
    pub name: Name,
    /// The tenant (organisation) that owns the agent; nothing is shared across tenants.
    pub tenant: Name,
    /// Free-form labels for search and display.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What the agent may use.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Host directory (relative to the definition file) mounted read-write at /workspace.
    /// The cell writes to an overlay: the host directory is never modified during the run.
    #[serde(default)]
    pub workspace: Option<String>,
    /// Environment variables set in the cell. Nothing from the host environment is passed.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra filesystem access.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Resource limits for the whole task.
    #[serde(default)]
    pub resources: Resources,
    /// Outbound capabilities: what the agent may reach through the control boundary.
    /// Everything not listed is denied.
    #[serde(default)]
    pub egress: Vec<RawEgressRule>,
    /// Limits on requests, bytes, LLM tokens and time.
    #[serde(default)]
    pub budgets: Option<RawBudgets>,
    /// Extra Cedar policy files (relative to this file), validated against the Agent
    /// Space schema when the definition is loaded.
    #[serde(default)]
    pub policies: Vec<String>,
    /// MCP tool servers the agent may use through the boundary's MCP endpoint. A server
    /// not listed, and a tool not in its `allow` list, does not exist for the agent.
    #[serde(default)]
    pub tools: Vec<RawToolServer>,
    /// Data-flow rules: where data with a label may go once the task has read it.
    #[serde(default)]
    pub flows: Vec<RawFlowRule>,
    /// The same request (action, resource and arguments) more than this many times in a
    /// row is denied with reason `loop` (default 3).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub loop_limit: Option<u32>,
    /// Agents of the same tenant this agent may start. The started agent gets the user's
    /// identity and its own definition's authority, never this agent's.
    #[serde(default)]
    pub spawn: Vec<Name>,
}

/// Extra filesystem access.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Filesystem {
    /// Host directories (relative to the definition file) bound read-only at
    /// `/mnt/<basename>`. Basenames must be distinct.
    #[serde(default)]
    pub read_only: Vec<String>,
}

/// Resource limits. Each has a default, so a definition without `resources` is still
/// bounded.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// Memory for every process in the cell together (default 512Mi). The out-of-memory
    /// killer acts inside the cell only.
    #[serde(default = "default_memory")]
    pub memory: Size,
    /// Most processes and threads alive at once (default 256).
    #[serde(default = "default_pids")]
    pub pids: u32,
    /// CPU time in cores (default 1.0).
    #[serde(default = "default_cpu")]
    pub cpu: Cpu,
    /// Wall-clock limit for the whole task (default 1h); the cell is killed after it.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory: default_memory(),
            pids: default_pids(),
            cpu: default_cpu(),
            timeout: default_timeout(),
        }
    }
}

fn default_memory() -> Size {
    Size::from_bytes(512 << 20)
}
fn default_pids() -> u32 {
    256
}
fn default_cpu() -> Cpu {
    Cpu::new(1.0).unwrap_or_else(|_| unreachable_cpu())
}
fn default_timeout() -> Duration {
    Duration::from_std(std::time::Duration::from_secs(3600))
}
#[expect(
    clippy::panic,
    reason = "1.0 is a valid cpu value; this cannot be reached"
)]
fn unreachable_cpu() -> Cpu {
    panic!("1.0 cores is valid")
}

/// A validated agent definition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Definition {
    /// The file it came from (as given), for messages.
    pub source: PathBuf,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    /// The agent's name.
    pub name: Name,
    /// The owning tenant.
    pub tenant: Name,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The workspace directory on the host, if any (absolute when `source` is).
    pub workspace: Option<PathBuf>,
    /// Environment set in the cell.
    pub env: BTreeMap<String, String>,
    /// Read-only binds: host path and the path inside the cell.
    pub read_only: Vec<(PathBuf, PathBuf)>,
    /// Limits.
    pub limits: Limits,
    /// Egress capabilities, budgets, extra policies, loop limit and spawn list.
    pub governance: Governance,
}

/// Resource limits in plain units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Limits {
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Most processes.
    pub pids: u32,
    /// CPU cores.
    pub cpu: f64,
    /// Wall clock.
    pub timeout: std::time::Duration,
}

/// Why a definition was refused: the file, where, which field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted path of the field, when known (`spec.resources.memory`).
    pub field: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid definition `{}`", self.file)?;
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
            if let Some(col) = self.column {
                write!(f, " column {col}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Environment names the cell manages itself; a definition may not override them.
const RESERVED_ENV: &[&str] = &["HOME", "USER", "LOGNAME", "HOSTNAME", "AGENTSPACE_TASK_ID"];

impl Definition {
    /// Parses and validates the text of a definition file. `source` names the file in
    /// errors and anchors relative paths; no file is read here.
    pub fn parse(source: &Path, text: &str) -> Result<Self, DefinitionError> {
        let file = source.display().to_string();
        let raw: AgentDefinition =
            serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
                .map_err(|e| yaml_error(&file, &e))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
        let base = source.parent().unwrap_or(Path::new("."));
        let error = |field: &str, message: String| DefinitionError {
            file: file.clone(),
            line: find_line(text, field),
            column: None,
            field: Some(field.to_owned()),
            message,
        };

        let workspace = match &raw.spec.workspace {
            Some(w) => Some(resolve_path(base, w).map_err(|m| error("spec.workspace", m))?),
            None => None,
        };

        for key in raw.spec.env.keys() {
            let valid = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(error(
                    "spec.env",
                    format!(
                        "`{key}` is not a valid environment variable name (use letters, digits and `_`, not starting with a digit)"
                    ),
                ));
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                return Err(error(
                    "spec.env",
                    format!(
                        "`{key}` is set by Agent Space inside the cell and cannot be overridden; remove it"
                    ),
                ));
            }
        }
        if let Some((key, _)) = raw.spec.env.iter().find(|(_, v)| v.contains('\0')) {
            return Err(error(
                "spec.env",
                format!("the value of `{key}` contains a NUL byte"),
            ));
        }

        let mut read_only = Vec::new();
        for entry in &raw.spec.filesystem.read_only {
            let host =
                resolve_path(base, entry).map_err(|m| error("spec.filesystem.readOnly", m))?;
            let Some(basename) = host.file_name() else {
                return Err(error(
                    "spec.filesystem.readOnly",
                    format!("`{entry}` has no final path component to name its mount point"),
                ));
            };
            let inside = Path::new("/mnt").join(basename);
            if read_only.iter().any(|(_, existing)| *existing == inside) {
                return Err(error(
                    "spec.filesystem.readOnly",
                    format!(
                        "two entries would both mount at `{}`; give the directories distinct names",
                        inside.display()
                    ),
                ));
            }
            read_only.push((host, inside));
        }

        let resources = &raw.spec.resources;
        if resources.memory.bytes() < 8 << 20 {
            return Err(error(
                "spec.resources.memory",
                format!(
                    "`{}` is too small to start a process; use at least 8Mi",
                    resources.memory
                ),
            ));
        }
        if resources.pids < 2 {
            return Err(error(
                "spec.resources.pids",
                "must be at least 2 (the cell's init and the agent)".to_owned(),
            ));
        }
        if resources.timeout.get().is_zero() {
            return Err(error(
                "spec.resources.timeout",
                "must be longer than zero".to_owned(),
            ));
        }

        let governed = |(field, message): (String, String)| DefinitionError {
            file: file.clone(),
            line: find_line(text, &field),
            column: None,
            field: Some(field),
            message,
        };
        let egress = validate_egress(&raw.spec.egress).map_err(governed)?;
        let budgets =
            validate_budgets(&raw.spec.budgets.clone().unwrap_or_default()).map_err(governed)?;
        let mut policies: Vec<PathBuf> = Vec::new();
        for (i, written) in raw.spec.policies.iter().enumerate() {
            let field = format!("spec.policies[{i}]");
            if !written.ends_with(".cedar") {
                return Err(governed((
                    field,
                    format!("`{written}` is not a `.cedar` file"),
                )));
            }
            let path = resolve_path(base, written).map_err(|m| governed((field.clone(), m)))?;
            if policies.contains(&path) {
                return Err(governed((field, format!("`{written}` is listed twice"))));
            }
            policies.push(path);
        }
        let governance = Governance {
            egress,
            budgets,
            policies,
            loop_limit: validate_loop_limit(raw.spec.loop_limit).map_err(governed)?,
            spawn: validate_spawn(&raw.spec.spawn).map_err(governed)?,
            tools: Tools::default(),
        };
        let egress_names: Vec<&str> = governance.egress.iter().map(|r| r.name.as_str()).collect();
        let tools = validate_tools(&raw.spec.tools, &raw.spec.flows, &egress_names, base)
            .map_err(governed)?;
        let governance = Governance {
            tools,
            ..governance
        };

        Ok(Self {
            source: source.to_path_buf(),
            digest,
            name: raw.metadata.name,
            tenant: raw.metadata.tenant,
            labels: raw.metadata.labels,
            workspace,
            env: raw.spec.env,
            read_only,
            limits: Limits {
                memory_bytes: resources.memory.bytes(),
                pids: resources.pids,
                cpu: resources.cpu.cores(),
                timeout: resources.timeout.get(),
            },
            governance,
        })
    }
}

/// Resolves a path written in a definition against the definition's directory, lexically.
/// `..` is allowed (a workspace beside the definitions folder is common) but the result is
/// normalised so messages and manifests show the real location.
fn resolve_path(base: &Path, written: &str) -> Result<PathBuf, String> {
    if written.is_empty() {
        return Err("the path is empty".to_owned());
    }
    if written.contains('\0') {
        return Err("the path contains a NUL byte".to_owned());
    }
    let joined = base.join(written);
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::ParentDir => {
                if !out.pop() {
                    return Err(format!("`{written}` climbs above the filesystem root"));
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

fn yaml_error(file: &str, e: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> DefinitionError {
    let inner = e.inner();
    let location = inner.location();
    let mut message = inner.to_string();
    // serde_yaml formats errors as "path: message at line L column C"; keep the message
    // only, since the field path (exact, from serde_path_to_error) and location are
    // structured.
    if let Some(idx) = message.rfind(" at line ") {
        message.truncate(idx);
    }
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.contains(' ')
        && prefix.contains(|c: char| c.is_ascii_alphabetic())
    {
        message = rest.to_owned();
    }
    let path = e.path().to_string();
    DefinitionError {
        file: file.to_owned(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        field: (path != "." && !path.is_empty()).then_some(path),
        message,
    }
}

/// Finds the line of a dotted field path (`spec.egress[1].approval.when`), for errors
/// found after parsing: each key is searched after the previous one, and `[i]` picks the
/// i-th `- ` item of a block list. Best effort: a flow list (`[a, b]`) yields the line of
/// its key.
fn find_line(text: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let is_key = |line: &str, key: &str| {
        let t = line.trim_start().trim_start_matches("- ");
        t.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    };
    let mut start = 0;
    let mut found = None;
    for segment in field.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let pos = start + lines.iter().skip(start).position(|l| is_key(l, key))?;
        found = Some(pos);
        start = pos + 1;
        if let Some(i) = index {
            let items: Vec<(usize, usize)> = lines
                .iter()
                .enumerate()
                .skip(start)
                .filter(|(_, l)| l.trim_start().starts_with("- "))
                .map(|(n, l)| (n, l.len() - l.trim_start().len()))
                .collect();
            let indent = items.first().map(|(_, indent)| *indent);
            let item = items.iter().filter(|(_, ind)| Some(*ind) == indent).nth(i);
            match item {
                Some((n, _)) => {
                    found = Some(*n);
                    start = *n;
                }
                None => break,
            }
        }
    }
    found.map(|i| i + 1)
}

/// The JSON Schema of the definition format, as published in
/// `docs/agent-definition.schema.json`.
pub fn definition_json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(AgentDefinition);
    serde_json::to_value(&schema).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn parse(text: &str) -> Result<Definition, DefinitionError> {
        Definition::parse(Path::new("/defs/agent.yaml"), text)
    }

    const HELLO: &str = "apiVersion: agentspace/v1
kind: Agent
metadata:
  name: hello
  tenant: acme
spec:
  workspace: ./workspace
  resources:
    memory: 256Mi
    pids: 64
    cpu: 1.0
    timeout: 60s
";

    #[test]
    fn hello_resolves_paths_and_limits() {
        let d = parse(HELLO).unwrap();
        assert_eq!(d.name.as_str(), "hello");
        assert_eq!(d.workspace, Some(PathBuf::from("/defs/workspace")));
        assert_eq!(d.limits.memory_bytes, 256 << 20);
        assert_eq!(d.limits.pids, 64);
        assert_eq!(d.limits.timeout.as_secs(), 60);
        assert!(d.digest.starts_with("sha256:"));
    }

    #[test]
    fn bad_size_names_field_line_and_expectation() {
        let e = parse(&HELLO.replace("256Mi", "lots")).unwrap_err();
        assert_eq!(e.line, Some(9));
        assert_eq!(e.field.as_deref(), Some("spec.resources.memory"));
        assert!(e.message.contains("expected a size such as 256Mi"), "{e}");
        assert!(
            e.to_string()
                .starts_with("invalid definition `/defs/agent.yaml` at line 9"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = parse(&HELLO.replace("    pids: 64", "    pid: 64")).unwrap_err();
        assert_eq!(e.line, Some(10));
        assert!(e.message.contains("unknown field `pid`"), "{e}");
    }

    /// The `spec` of issue 6, as written, with an egress rule `scoring` and a server
    /// `templates` for the flow rule to name.
    const TOOLS: &str = r#"apiVersion: agentspace/v1
kind: Agent
metadata:
  name: credit-officer
  tenant: acme
spec:
  egress:
    - name: scoring
      hosts: [scoring.internal.example]
  tools:
    - server: customer-db
      command: [python3, ./servers/customer_db.py]   # started OUTSIDE the cell by the boundary
      allow: [lookup_customer]
      labels: [pii]                                  # what this source's results carry
      resources: ["customer://*"]
      prompts: [credit_brief]
      relay: [sampling, elicitation, progress, listChanged]
    - server: hr
      url: http://hr.internal.example/mcp            # a streamable-HTTP server
      allow: []                                      # nothing: the agent never sees it
      credential: {secret: hr-token, header: Authorization, format: "Bearer {}"}
    - server: mail
      command: [python3, ./servers/mail.py]
      allow: [send_mail]
      clearedFor: []                                 # may not receive pii
      approval: {when: 'true', timeout: 10m}
      egress:
        - name: smtp-api
          hosts: [mail.provider.example]
          methods: [POST]
          credential: {secret: mail-key, header: Authorization, format: "Bearer {}"}
    - server: templates
      command: [python3, ./servers/templates.py]
      allow: [render]
  flows:
    - label: pii
      mayFlowTo: [scoring, templates]                # egress rules and tool servers cleared for pii
  loopLimit: 3
"#;

    #[test]
    fn issue_6_tools_and_flows_are_accepted_as_written() {
        let d = parse(TOOLS).unwrap();
        let t = &d.governance.tools;
        assert_eq!(t.servers.len(), 4);
        let db = &t.servers[0];
        assert_eq!(db.name.as_str(), "customer-db");
        assert_eq!(
            db.transport,
            crate::ToolTransport::Stdio {
                command: vec!["python3".into(), "./servers/customer_db.py".into()],
                cwd: PathBuf::from("/defs"),
            }
        );
        assert_eq!(db.allow, vec!["lookup_customer"]);
        assert!(db.labels.contains("pii"));
        assert_eq!(db.resources, vec!["customer://*"]);
        assert_eq!(db.prompts, vec!["credit_brief"]);
        assert_eq!(
            db.relay.iter().map(|r| r.name()).collect::<Vec<_>>(),
            ["sampling", "elicitation", "progress", "listChanged"]
        );
        assert!(t.servers[1].relay.is_empty());
        let cred = t.servers[1].credential.as_ref().unwrap();
        assert_eq!(cred.secret, "hr-token");
        assert_eq!(
            cred.apply,
            crate::CredentialApply::Header {
                name: "Authorization".into(),
                format: "Bearer {}".into()
            }
        );
        assert!(db.credential.is_none());
        assert!(t.servers[1].resources.is_empty() && t.servers[1].prompts.is_empty());
        assert_eq!(
            t.servers[1].transport,
            crate::ToolTransport::Http {
                url: "http://hr.internal.example/mcp".into()
            }
        );
        assert!(t.servers[1].allow.is_empty());
        let mail = &t.servers[2];
        assert!(mail.cleared_for.is_empty());
        assert_eq!(mail.egress.len(), 1);
        assert_eq!(mail.egress[0].name.as_str(), "smtp-api");
        assert_eq!(
            mail.egress[0].credential.as_ref().unwrap().secret,
            "mail-key"
        );
        // Written back as it was read (what the server's own cell is given).
        let again: Vec<crate::RawEgressRule> =
            serde_json::from_value(serde_json::to_value(&mail.egress).unwrap()).unwrap();
        assert_eq!(again, mail.egress);
        let approval = mail.approval.as_ref().unwrap();
        assert_eq!(approval.when.as_deref(), Some("true"));
        assert_eq!(approval.timeout.as_secs(), 600);
        assert_eq!(t.flows.len(), 1);
        assert_eq!(t.flows[0].label, "pii");
        assert!(t.cleared("scoring", "pii"));
        assert!(t.cleared("templates", "pii"));
        assert!(
            t.cleared("customer-db", "pii"),
            "a source is cleared for its own labels"
        );
        assert!(!t.cleared("mail", "pii"));
        assert!(!t.cleared("hr", "pii"));
        assert_eq!(d.governance.loop_limit, 3);
    }

    #[test]
    fn bad_tools_and_flows_name_the_field() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "- server: hr",
                "- server: mail",
                "spec.tools[2].server",
                "defined twice",
            ),
            (
                "- server: templates",
                "- server: scoring",
                "spec.tools[3].server",
                "also an egress rule",
            ),
            (
                "url: http://hr.internal.example/mcp",
                "url: http://hr.internal.example/mcp\n      command: [x]",
                "spec.tools[1].command",
                "not both",
            ),
            (
                "url: http://hr.internal.example/mcp",
                "allow: []\n      labels: []",
                "spec.tools[1]",
                "",
            ),
            (
                "url: http://hr.internal.example/mcp",
                "url: ftp://hr.internal.example/mcp",
                "spec.tools[1].url",
                "not an `http://`",
            ),
            (
                "allow: [send_mail]",
                "allow: [send_mail, send_mail]",
                "spec.tools[2].allow",
                "listed twice",
            ),
            (
                "allow: [send_mail]",
                "allow: [\"mail/*\"]",
                "spec.tools[2].allow",
                "not a tool name",
            ),
            (
                "resources: [\"customer://*\"]",
                "resources: [\"customer\"]",
                "spec.tools[0].resources",
                "URI scheme",
            ),
            (
                "prompts: [credit_brief]",
                "prompts: [credit_brief, \"a b\"]",
                "spec.tools[0].prompts",
                "not a prompt name",
            ),
            (
                "relay: [sampling, elicitation, progress, listChanged]",
                "relay: [sampling, sampling]",
                "spec.tools[0].relay",
                "listed twice",
            ),
            (
                "relay: [sampling, elicitation, progress, listChanged]",
                "relay: [everything]",
                "spec.tools[0].relay",
                "",
            ),
            (
                "format: \"Bearer {}\"}",
                "format: \"Bearer\"}",
                "spec.tools[1].credential.format",
                "exactly one `{}`",
            ),
            (
                "header: Authorization, format: \"Bearer {}\"}",
                "awsSigV4: {region: us-east-1, service: s3}}",
                "spec.tools[1].credential.awsSigV4",
                "egress rules",
            ),
            (
                "      labels: [pii]                                  # what this source's results carry\n",
                "      labels: [pii]\n      credential: {secret: db, header: X-Key}\n",
                "spec.tools[0].credential",
                "stdio server",
            ),
            (
                "hosts: [mail.provider.example]",
                "hosts: [\"mail.provider.example/x\"]",
                "spec.tools[2].egress[0].hosts",
                "",
            ),
            (
                "      allow: []                                      # nothing: the agent never sees it\n",
                "      allow: []\n      egress: [{name: x, hosts: [x.example]}]\n",
                "spec.tools[1].egress",
                "stdio server",
            ),
            (
                "labels: [pii]",
                "labels: [PII]",
                "spec.tools[0].labels",
                "not a label",
            ),
            (
                "mayFlowTo: [scoring, templates]",
                "mayFlowTo: [scoring, payroll]",
                "spec.flows[0].mayFlowTo",
                "`payroll` is neither an egress rule",
            ),
            (
                "timeout: 10m}",
                "timeout: 0s}",
                "spec.tools[2].approval.timeout",
                "longer than zero",
            ),
            (
                "command: [python3, ./servers/mail.py]",
                "command: []",
                "spec.tools[2].command",
                "program",
            ),
        ];
        for (from, to, field, message) in cases {
            assert!(TOOLS.contains(from), "{from}");
            let to = to.replace("\\n", "\n");
            let e = parse(&TOOLS.replacen(from, &to, 1)).unwrap_err();
            assert!(
                e.field.as_deref().is_some_and(|f| f.starts_with(field)),
                "{from} -> {e}"
            );
            assert!(e.message.contains(message), "{from} -> {e}");
            // Keys inside a flow mapping (`{when: .., timeout: ..}`) have no line of
            // their own to find.
            if !field.contains("approval") && !field.contains("credential.") {
                assert!(e.line.is_some(), "{e}");
            }
        }
        let e = parse(&TOOLS.replace("  loopLimit: 3", "    - label: pii\n      mayFlowTo: []"))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spec.flows[1].label"), "{e}");
        let e = parse(&TOOLS.replace("labels: [pii]", "labels: [pii]\n      env: {}")).unwrap_err();
        assert!(e.message.contains("unknown field `env`"), "{e}");
    }

    /// The `spec` of issue 3, as written, under the metadata of the credit officer.
    const GOVERNED: &str = r#"apiVersion: agentspace/v1
kind: Agent
metadata:
  name: credit-officer
  tenant: acme
spec:
  egress:
    - name: scoring                      # a capability: budgets and audit name it
      hosts: [scoring.internal.example]
      methods: [POST]
      paths: ["/v1/score", "/v1/score/*"]
      budget: {requests: 100}
    - name: payments
      hosts: [api.stripe.com]
      methods: [GET, POST]
      paths: ["/v1/charges*"]
      approval:
        when: 'context.body.amount > 1000'   # Cedar expression over the request context
        timeout: 10m
  budgets: {requests: 1000, timeout: 15m}
  policies: [./policies/credit-officer.cedar]  # extra permit/forbid policies, validated against the schema
"#;

    #[test]
    fn issue_3_governed_sections_are_accepted_as_written() {
        let d = parse(GOVERNED).unwrap();
        let g = &d.governance;
        assert_eq!(g.egress.len(), 2);
        let scoring = &g.egress[0];
        assert_eq!(scoring.name.as_str(), "scoring");
        assert_eq!(scoring.hosts, vec!["scoring.internal.example"]);
        assert_eq!(scoring.methods, vec!["POST"]);
        assert_eq!(scoring.paths, vec!["/v1/score", "/v1/score/*"]);
        assert_eq!(scoring.budget.requests, Some(100));
        assert!(scoring.approval.is_none());
        let payments = &g.egress[1];
        let approval = payments.approval.as_ref().unwrap();
        assert_eq!(approval.when.as_deref(), Some("context.body.amount > 1000"));
        assert_eq!(approval.timeout.as_secs(), 600);
        assert_eq!(g.budgets.task.requests, Some(1000));
        assert_eq!(g.budgets.task_time.map(|t| t.as_secs()), Some(900));
        assert_eq!(
            g.policies,
            vec![PathBuf::from("/defs/policies/credit-officer.cedar")]
        );
        assert_eq!(g.loop_limit, 3);
        assert!(g.spawn.is_empty());
    }

    #[test]
    fn loop_limit_spawn_and_per_user_budgets_parse() {
        let text = format!(
            "{HELLO}  loopLimit: 5\n  spawn: [scorer, summarizer]\n  budgets:\n    tokens: 50000\n    bytes: 10Mi\n    perUser: {{window: 24h, requests: 500}}\n"
        );
        let d = parse(&text).unwrap();
        let g = &d.governance;
        assert_eq!(g.loop_limit, 5);
        assert_eq!(
            g.spawn.iter().map(Name::as_str).collect::<Vec<_>>(),
            ["scorer", "summarizer"]
        );
        assert_eq!(g.budgets.task.tokens, Some(50000));
        assert_eq!(g.budgets.task.bytes, Some(10 << 20));
        let w = g.budgets.per_user.unwrap();
        assert_eq!(w.window.as_secs(), 86_400);
        assert_eq!(w.quota.requests, Some(500));
    }

    #[test]
    fn bad_governed_fields_name_the_field_and_line() {
        let cases: &[(&str, &str, &str, usize)] = &[
            (
                "hosts: [api.stripe.com]",
                "hosts: [\"api.stripe.com:443\"]",
                "spec.egress[1].hosts",
                14,
            ),
            (
                "methods: [GET, POST]",
                "methods: [GET, FETCH]",
                "spec.egress[1].methods",
                15,
            ),
            (
                "paths: [\"/v1/charges*\"]",
                "paths: [\"v1/charges\"]",
                "spec.egress[1].paths",
                16,
            ),
            (
                "budget: {requests: 100}",
                "budget: {requests: 0}",
                "spec.egress[0].budget",
                12,
            ),
            (
                "- name: payments",
                "- name: scoring",
                "spec.egress[1].name",
                13,
            ),
            (
                "timeout: 10m\n  budgets",
                "timeout: 0s\n  budgets",
                "spec.egress[1].approval.timeout",
                19,
            ),
            (
                "credit-officer.cedar]",
                "credit-officer.txt]",
                "spec.policies[0]",
                21,
            ),
        ];
        for (from, to, field, line) in cases {
            assert!(GOVERNED.contains(from), "{from}");
            let e = parse(&GOVERNED.replace(from, to)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(*field), "{e}");
            assert_eq!(e.line, Some(*line), "{e}");
        }
        let e = parse(&GOVERNED.replace("timeout: 10m", "timeout: 10m\n        whenever: x"))
            .unwrap_err();
        assert!(e.message.contains("unknown field `whenever`"), "{e}");
        let e = parse(&format!("{HELLO}  loopLimit: 0\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spec.loopLimit"));
        let e = parse(&format!("{HELLO}  spawn: [a, a]\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spec.spawn"));
        let e = parse(&format!("{HELLO}  spawn: [Bad_Name]\n")).unwrap_err();
        assert!(e.message.contains("not a valid name"), "{e}");
    }

    #[test]
    fn schema_documents_the_governed_fields() {
        let schema = definition_json_schema().to_string();
        for field in [
            "egress",
            "budgets",
            "policies",
            "loopLimit",
            "spawn",
            "perUser",
            "approval",
            "tools",
            "flows",
            "mayFlowTo",
            "clearedFor",
        ] {
            assert!(
                schema.contains(&format!("\"{field}\"")),
                "{field} missing from the schema"
            );
        }
    }

    #[test]
    fn wrong_version_and_kind_are_refused() {
        assert!(parse(&HELLO.replace("agentspace/v1", "agentspace/v2")).is_err());
        assert!(parse(&HELLO.replace("kind: Agent", "kind: Pod")).is_err());
    }

    #[test]
    fn reserved_and_invalid_env_are_refused() {
        let e = parse(&format!("{HELLO}  env: {{HOME: /root}}\n")).unwrap_err();
        assert!(e.message.contains("`HOME`"), "{e}");
        let e = parse(&format!("{HELLO}  env: {{\"A-B\": x}}\n")).unwrap_err();
        assert!(e.message.contains("`A-B`"), "{e}");
    }

    #[test]
    fn read_only_binds_mount_under_mnt_with_distinct_names() {
        let d = parse(&format!(
            "{HELLO}  filesystem: {{readOnly: [./ref, ../data/ref2]}}\n"
        ))
        .unwrap();
        assert_eq!(
            d.read_only,
            vec![
                (PathBuf::from("/defs/ref"), PathBuf::from("/mnt/ref")),
                (PathBuf::from("/data/ref2"), PathBuf::from("/mnt/ref2")),
            ]
        );
        assert!(
            parse(&format!(
                "{HELLO}  filesystem: {{readOnly: [./a/ref, ./b/ref]}}\n"
            ))
            .is_err()
        );
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            "[",
            "apiVersion: [",
            "\0",
            "spec: {resources: {cpu: .nan}}",
            "- - -",
        ] {
            assert!(parse(text).is_err());
        }
    }
}
