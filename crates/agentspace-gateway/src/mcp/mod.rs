//! The MCP gateway: one MCP endpoint per task, through which the agent reaches the tool
//! servers its definition allows (`spec.tools`), each call governed like an HTTP request.
//!
//! The endpoint speaks streamable HTTP (JSON-RPC over `POST /mcp`, sessions by
//! `Mcp-Session-Id`, the `initialize` handshake of MCP 2025-03-26 to 2025-11-25; a
//! `server/discover` probe of a 2026 client is answered "method not found", which makes
//! it fall back to the handshake). Responses are plain JSON, except for a call that may
//! meet a tool server's request or notification (its server has a `relay` list), which
//! is answered as an SSE stream carrying those first; a session's `GET` stream carries
//! the rest ([`relay`]). Like the HTTP door, the listener belongs to one task: who acts
//! comes from the listener, never from what the client sends.
//!
//! `tools/list` shows only allowed tools; any other name gets the answer a tool that does
//! not exist gets, and is audited. Resources and prompts (`resources/list`,
//! `resources/templates/list`, `resources/read`, `prompts/list`, `prompts/get`) are
//! allowlisted the same way (URI patterns, prompt names) and governed by the same
//! pipeline. Each `tools/call` runs: content checks on the
//! arguments (secrets and personal data become labels) → the task's policy engine
//! (Cedar with the tool and arguments in the context, approvals, loop breaker, flow
//! rules over the session's taint, budgets) → the tool's `inputSchema` → a per-call
//! identity token → audit (durable before anything is forwarded) → the tool server →
//! its `outputSchema` → prompt-injection checks on the result → taint → audit.
//!
//! # Why no MCP SDK here
//!
//! The official Rust SDK (`rmcp` 3.x) was weighed and not used. The gateway is a proxy
//! that must read a few fields of each message and pass everything else through
//! unchanged; `rmcp` is built to be an MCP client or server with typed handlers, so a
//! proxy on it re-serialises every message through its model (dropping or rejecting what
//! a newer revision adds) and fights its session management on both sides. Its
//! streamable-HTTP client and server features also bring `reqwest`, `axum`/`tower`,
//! `tokio-util`, `futures`, `uuid`, `oauth2` and `schemars`, while this crate already has
//! hyper and serde_json. The protocol surface used here is small — a typed JSON-RPC
//! envelope ([`jsonrpc`]), `initialize`, `tools/list`, `tools/call`, SSE frames from
//! HTTP tool servers — and is tested against the official Python SDK on both sides.
//!
//! JSON Schema validation uses `boon` (drafts 4 to 2020-12, compiled once per tool)
//! rather than `jsonschema`, whose default features bring an HTTP client and whose
//! lean build still pulls more crates; `boon` runs here with no loader at all, so a
//! tool's schema cannot make the gateway read a file or reach the network.

mod content;
mod jsonrpc;
mod national_ids;
mod relay;
mod schema;
mod server;
mod upstream;

pub use server::{MCP_DOOR_PORT, MCP_PATH, McpGateway};
pub use upstream::StdioSandbox;

/// Runs the parsers and scanners an MCP message from a client or a tool server meets:
/// an HTTP tool server's SSE stream, JSON, the JSON-RPC envelope, the argument scan,
/// the result scan and redaction. For the cargo-fuzz target `mcp_message`; it must
/// never panic, whatever the bytes.
#[doc(hidden)]
pub fn fuzz_message(bytes: &[u8]) {
    upstream::fuzz_sse(bytes);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let mut result = value.clone();
    let _ = content::scan_arguments(&value);
    let flags = content::scan_result(&value);
    let _ = content::apply_injection(
        agentspace_core::InjectionAction::Redact,
        &mut result,
        &flags,
    );
    let _ = jsonrpc::parse(value);
}
