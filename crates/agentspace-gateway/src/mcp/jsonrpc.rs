//! A small typed JSON-RPC 2.0 layer: what the gateway needs to read a message, route it
//! and answer it. Parameters and results stay `serde_json::Value`: the gateway inspects
//! the few fields it governs (`name`, `arguments`, `tools`) and passes the rest through
//! untouched, so a field a newer MCP revision adds is neither lost nor misread.

use serde_json::{Map, Value, json};

/// Invalid JSON.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC message, or a batch (removed from MCP in 2025-06-18).
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// A method the gateway does not serve.
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
/// Bad parameters; also an unknown tool, as the MCP specification says.
pub(crate) const INVALID_PARAMS: i64 = -32602;
/// The upstream failed or could not be reached.
pub(crate) const INTERNAL_ERROR: i64 = -32603;
/// The gateway denied the call (`data.reason` says why).
pub(crate) const DENIED: i64 = -32010;
/// The call needs a human's approval first (`data.reason` = `approval required`).
pub(crate) const APPROVAL_REQUIRED: i64 = -32011;

/// One message as read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Message {
    /// A request: it has an id and expects a response.
    Request {
        /// A string or an integer.
        id: Value,
        /// The method.
        method: String,
        /// The parameters (an object), when given.
        params: Option<Map<String, Value>>,
    },
    /// A notification: no id, no response.
    Notification {
        /// The method.
        method: String,
        /// The parameters (an object), when given.
        params: Option<Map<String, Value>>,
    },
    /// A response (to a request the other side was sent).
    Response {
        /// The id it answers.
        id: Value,
        /// `result` or `error`, as sent.
        body: Map<String, Value>,
    },
}

/// Reads one JSON-RPC message; the error is a JSON-RPC error code and a message.
pub(crate) fn parse(value: Value) -> Result<Message, (i64, String)> {
    let Value::Object(mut obj) = value else {
        return Err((
            INVALID_REQUEST,
            "a message is a JSON object (batches are not part of MCP)".to_owned(),
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((INVALID_REQUEST, "`jsonrpc` must be \"2.0\"".to_owned()));
    }
    let id = obj.remove("id");
    if let Some(id) = &id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        return Err((
            INVALID_REQUEST,
            "`id` must be a string or an integer".to_owned(),
        ));
    }
    match (obj.remove("method"), id) {
        (Some(Value::String(method)), id) => {
            let params = match obj.remove("params") {
                None | Some(Value::Null) => None,
                Some(Value::Object(p)) => Some(p),
                Some(_) => {
                    return Err((INVALID_PARAMS, "`params` must be an object".to_owned()));
                }
            };
            Ok(match id {
                Some(id) => Message::Request { id, method, params },
                None => Message::Notification { method, params },
            })
        }
        (Some(_), _) => Err((INVALID_REQUEST, "`method` must be a string".to_owned())),
        (None, Some(id)) if obj.contains_key("result") || obj.contains_key("error") => {
            Ok(Message::Response { id, body: obj })
        }
        (None, _) => Err((
            INVALID_REQUEST,
            "a message needs `method` (a request or notification) or `result`/`error` (a response)"
                .to_owned(),
        )),
    }
}

/// A success response.
pub(crate) fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response (`id` null when the request's id could not be read).
pub(crate) fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let (Some(data), Some(obj)) = (data, error.as_object_mut()) {
        obj.insert("data".to_owned(), data);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// A request the gateway sends upstream.
pub(crate) fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// A notification the gateway sends upstream.
pub(crate) fn notification(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": method})
}

/// A message with `method` and `params` (a request when `id` is given).
pub(crate) fn message(
    id: Option<&Value>,
    method: &str,
    params: Option<&Map<String, Value>>,
) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), json!("2.0"));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    m.insert("method".into(), json!(method));
    if let Some(p) = params {
        m.insert("params".into(), Value::Object(p.clone()));
    }
    Value::Object(m)
}

/// A response with `body` (`result` or `error`, as the answering side sent it).
pub(crate) fn response(id: &Value, body: &Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), json!("2.0"));
    m.insert("id".into(), id.clone());
    for key in ["result", "error"] {
        if let Some(v) = body.get(key) {
            m.insert(key.into(), v.clone());
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_told_apart() {
        let m = parse(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).unwrap();
        assert!(
            matches!(m, Message::Request { method, params: None, .. } if method == "tools/list")
        );
        let m = parse(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).unwrap();
        assert!(matches!(m, Message::Notification { .. }));
        let m = parse(json!({"jsonrpc": "2.0", "id": "a", "result": {}})).unwrap();
        assert!(matches!(m, Message::Response { .. }));
        for bad in [
            json!([{"jsonrpc": "2.0", "id": 1, "method": "x"}]),
            json!({"id": 1, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": 1.5, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": null, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]}),
            json!({"jsonrpc": "2.0", "id": 1}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }
}
