//! Arbitrary bytes as an MCP message from the agent or a tool server: JSON, the JSON-RPC
//! envelope, the secret/PII argument scan, the injection scan and redaction must never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agentspace_gateway::fuzz_message(data);
});
