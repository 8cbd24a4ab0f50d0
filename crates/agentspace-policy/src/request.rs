//! What the gateway asks: who (principal), what (action), to what (resource) and the
//! request's details (context). The JSON form is documented in docs/policy.md and is the
//! input of `agentspace policy explain` and `policy test`.

use std::collections::{BTreeMap, BTreeSet};

use agentspace_core::{Name, Principal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One decision request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Who is acting: tenant, user, and the chain of agent tasks (root first, the acting
    /// task last), as carried by the verified task token.
    pub principal: Principal,
    /// What the agent wants to do.
    pub action: Action,
    /// What it wants to do it to.
    pub resource: Resource,
    /// Details of the request.
    #[serde(default)]
    pub context: RequestContext,
}

/// What the agent wants to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    /// An HTTP request (`{"http": {"method": "POST"}}`); the resource names host, port
    /// and path.
    Http {
        /// The HTTP method, uppercase.
        method: String,
    },
    /// A DNS lookup (`"dns"`) of `resource.host`.
    Dns,
    /// An MCP tool call (`"mcp"`) of `resource.server` / `resource.tool`.
    Mcp,
    /// Reading an MCP resource (`"mcp_resource"`): `resource.uri` of `resource.server`.
    #[serde(rename = "mcp_resource")]
    McpResource,
    /// Getting an MCP prompt (`"mcp_prompt"`): `resource.prompt` of `resource.server`,
    /// with its arguments in `context.arguments`.
    #[serde(rename = "mcp_prompt")]
    McpPrompt,
    /// A request a tool server sends the agent's client through the boundary
    /// (`{"mcp_server_request": {"method": "sampling/createMessage"}}`): of
    /// `resource.server`, its parameters in `context.arguments`.
    #[serde(rename = "mcp_server_request")]
    McpServerRequest {
        /// The method the server asks for.
        method: String,
    },
    /// Starting another agent (`"spawn"`) named by `resource.agent`.
    Spawn,
    /// A TLS connection passed through without interception (`"tunnel"`) to
    /// `resource.host` and `resource.port`: decided on the server name and port only.
    Tunnel,
}

impl Action {
    /// The action's name in the Cedar schema (`POST`, `dns`, `mcp`, `spawn`).
    pub fn cedar_name(&self) -> &str {
        match self {
            Self::Http { method } => method,
            Self::Dns => "dns",
            Self::Mcp => "mcp",
            Self::McpResource => "mcp_resource",
            Self::McpPrompt => "mcp_prompt",
            Self::McpServerRequest { .. } => "mcp_server_request",
            Self::Spawn => "spawn",
            Self::Tunnel => "tunnel",
        }
    }
}

/// The target of the action. Which fields are needed depends on the action: `host`
/// (and `port`, `path`) for HTTP, `host` for DNS, `server` and `tool` for MCP tool
/// calls, `server` and `uri` for resource reads, `server` and `prompt` for prompts,
/// `agent` for spawn.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// Host name (HTTP, DNS); compared lowercase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// TCP port (HTTP and tunnels; default 443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// URL path, starting with `/` (HTTP; default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// MCP server name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// MCP tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// MCP resource URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// MCP prompt name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The agent to start (spawn), in the principal's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Name>,
}

/// Details of the request that policies may read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestContext {
    /// The raw query string, without `?`.
    #[serde(default)]
    pub query: String,
    /// Selected request headers; names are lowercased.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body fields from the gateway's bounded inspection window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// MCP tool-call or prompt arguments; the parameters of a server's request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// Data labels the session has read (`pii`, `confidential`).
    #[serde(default)]
    pub labels: BTreeSet<String>,
    /// Decision time in seconds since the Unix epoch; the current time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// Usage so far, for `policy explain` and `policy test` only: a [`crate::PolicyEngine`]
    /// ignores it and reads the budget store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Resources used so far or to be charged: requests, bytes, LLM tokens, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Requests.
    #[serde(default)]
    pub requests: u64,
    /// Bytes sent and received.
    #[serde(default)]
    pub bytes: u64,
    /// LLM tokens.
    #[serde(default)]
    pub tokens: u64,
    /// Wall-clock seconds since the task's first decision.
    #[serde(default)]
    pub seconds: u64,
}

impl Request {
    /// A digest of the action, the resource and the arguments (query, body, tool
    /// arguments), for the loop breaker: two requests with the same digest are "the same
    /// request". Headers, labels and time are left out since they vary between retries.
    pub fn digest(&self) -> [u8; 32] {
        let key = serde_json::json!({
            "action": self.action,
            "resource": self.resource,
            "query": self.context.query,
            "body": self.context.body,
            "arguments": self.context.arguments,
        });
        let mut hasher = Sha256::new();
        canonical(&key, &mut hasher);
        hasher.finalize().into()
    }
}

/// Feeds `value` to `hasher` with object keys sorted, whatever map type serde_json was
/// built with; strings are length-prefixed so no two values share an encoding.
fn canonical(value: &serde_json::Value, hasher: &mut Sha256) {
    use serde_json::Value;
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(b) => hasher.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            let text = n.to_string();
            hasher.update(b"#");
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
        }
        Value::String(s) => {
            hasher.update(b"s");
            hasher.update((s.len() as u64).to_be_bytes());
            hasher.update(s.as_bytes());
        }
        Value::Array(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_be_bytes());
            for item in items {
                canonical(item, hasher);
            }
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            hasher.update(b"{");
            hasher.update((entries.len() as u64).to_be_bytes());
            for (k, v) in entries {
                hasher.update((k.len() as u64).to_be_bytes());
                hasher.update(k.as_bytes());
                canonical(v, hasher);
            }
        }
    }
}
