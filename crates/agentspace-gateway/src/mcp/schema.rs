//! Validating tool arguments against a tool's `inputSchema` and structured results
//! against its `outputSchema`, with `boon` (JSON Schema 2020-12, the dialect MCP names).
//!
//! Schemas come from tool servers, so they are compiled with no loader: a `$ref` to
//! anything outside the schema itself (a file, a URL) fails to compile instead of making
//! the gateway read files or reach the network. A schema that does not compile fails
//! closed: the tool cannot be called.

use boon::{Compiler, SchemaIndex, Schemas, UrlLoader};
use serde_json::Value;

/// The compiled schema of one tool's input or output.
pub(crate) struct Validator {
    schemas: Schemas,
    index: SchemaIndex,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").finish_non_exhaustive()
    }
}

/// Refuses every external document.
struct NoLoader;

impl UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(
            format!("the gateway does not load schemas from outside the tool's own (`{url}`)")
                .into(),
        )
    }
}

/// Where the tool's schema is registered; it only names the document.
const LOCATION: &str = "urn:agentspace:tool-schema";

impl Validator {
    /// Compiles `schema`; the error says why, for the audit log and the agent.
    pub(crate) fn compile(schema: &Value) -> Result<Self, String> {
        let mut compiler = Compiler::new();
        compiler.use_loader(Box::new(NoLoader));
        compiler
            .add_resource(LOCATION, schema.clone())
            .map_err(|e| format!("the schema cannot be read: {e}"))?;
        let mut schemas = Schemas::new();
        let index = compiler
            .compile(LOCATION, &mut schemas)
            .map_err(|e| format!("the schema does not compile: {e}"))?;
        Ok(Self { schemas, index })
    }

    /// Checks `value`; the error is one line per failed keyword (at most ten).
    pub(crate) fn validate(&self, value: &Value) -> Result<(), String> {
        self.schemas.validate(value, self.index).map_err(|e| {
            let text = format!("{e:#}");
            let lines: Vec<&str> = text.lines().take(10).collect();
            lines.join("; ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_are_checked() {
        let v = Validator::compile(&json!({
            "type": "object",
            "properties": {"customer_id": {"type": "string", "pattern": "^c-[0-9]{3}$"}},
            "required": ["customer_id"],
            "additionalProperties": false,
        }))
        .unwrap();
        assert!(v.validate(&json!({"customer_id": "c-001"})).is_ok());
        let e = v.validate(&json!({"customer_id": 1})).unwrap_err();
        assert!(e.contains("customer_id"), "{e}");
        assert!(v.validate(&json!({})).is_err());
        assert!(
            v.validate(&json!({"customer_id": "c-001", "x": 1}))
                .is_err()
        );
    }

    #[test]
    fn external_references_do_not_compile() {
        for r in ["file:///etc/passwd", "http://127.0.0.1:1/schema.json"] {
            let e = Validator::compile(&json!({"$ref": r})).unwrap_err();
            assert!(e.contains("does not compile"), "{e}");
        }
        assert!(Validator::compile(&json!({"type": "nonsense"})).is_err());
    }
}
