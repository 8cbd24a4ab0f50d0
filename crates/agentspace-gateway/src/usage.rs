//! LLM token usage read from responses as they stream by: the `usage` objects of
//! Anthropic- and OpenAI-style APIs, in a JSON body or in server-sent events.

use serde_json::Value;

/// Bytes of a JSON response body kept to read its `usage` (the body itself streams on).
const JSON_LIMIT: usize = 1024 * 1024;
/// Longest server-sent event line looked at.
const LINE_LIMIT: usize = 1024 * 1024;

/// What a response reported: the largest counts seen, since streamed counts are
/// cumulative (Anthropic's `message_delta`) or come once at the end (OpenAI's last chunk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    input: u64,
    output: u64,
    total: u64,
}

impl Counts {
    fn read(&mut self, usage: &Value) {
        let field = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
        let input = field("input_tokens")
            + field("cache_creation_input_tokens")
            + field("cache_read_input_tokens")
            + field("prompt_tokens");
        let output = field("output_tokens") + field("completion_tokens");
        self.input = self.input.max(input);
        self.output = self.output.max(output);
        self.total = self.total.max(field("total_tokens"));
    }

    /// `usage` at the top level or in `message` (Anthropic's `message_start`).
    fn read_event(&mut self, event: &Value) {
        for usage in [
            event.get("usage"),
            event.get("message").and_then(|m| m.get("usage")),
        ]
        .into_iter()
        .flatten()
        {
            self.read(usage);
        }
    }

    fn tokens(self) -> u64 {
        self.total.max(self.input.saturating_add(self.output))
    }
}

/// Watches one response body for token usage.
pub(crate) enum UsageScanner {
    /// A JSON body, kept up to [`JSON_LIMIT`] bytes.
    Json { buf: Vec<u8>, overflow: bool },
    /// Server-sent events, read line by line.
    Sse {
        line: Vec<u8>,
        skipping: bool,
        counts: Counts,
    },
    /// Nothing to look for.
    Off,
}

impl UsageScanner {
    /// The scanner for a response with this `Content-Type`.
    pub(crate) fn for_content_type(content_type: Option<&str>) -> Self {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Self::Sse {
                line: Vec::new(),
                skipping: false,
                counts: Counts::default(),
            }
        } else if ct.contains("json") {
            Self::Json {
                buf: Vec::new(),
                overflow: false,
            }
        } else {
            Self::Off
        }
    }

    pub(crate) fn feed(&mut self, data: &[u8]) {
        match self {
            Self::Off => {}
            Self::Json { buf, overflow } => {
                if buf.len() + data.len() > JSON_LIMIT {
                    *overflow = true;
                    buf.clear();
                } else if !*overflow {
                    buf.extend_from_slice(data);
                }
            }
            Self::Sse {
                line,
                skipping,
                counts,
            } => {
                for &b in data {
                    if b == b'\n' {
                        if !*skipping {
                            sse_line(line, counts);
                        }
                        line.clear();
                        *skipping = false;
                    } else if line.len() >= LINE_LIMIT {
                        *skipping = true;
                        line.clear();
                    } else if !*skipping {
                        line.push(b);
                    }
                }
            }
        }
    }

    /// The tokens the response reported, at its end.
    pub(crate) fn tokens(&mut self) -> u64 {
        match self {
            Self::Off => 0,
            Self::Json { buf, overflow } => {
                if *overflow {
                    return 0;
                }
                let mut counts = Counts::default();
                if let Ok(v) = serde_json::from_slice::<Value>(buf) {
                    counts.read_event(&v);
                }
                counts.tokens()
            }
            Self::Sse { line, counts, .. } => {
                sse_line(line, counts);
                line.clear();
                counts.tokens()
            }
        }
    }
}

fn sse_line(line: &[u8], counts: &mut Counts) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
        counts.read_event(&v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(ct: &str, chunks: &[&[u8]]) -> u64 {
        let mut s = UsageScanner::for_content_type(Some(ct));
        for c in chunks {
            s.feed(c);
        }
        s.tokens()
    }

    #[test]
    fn anthropic_and_openai_usage_is_read_from_json_and_event_streams() {
        assert_eq!(
            scan(
                "application/json",
                &[
                    br#"{"id":"m","usage":{"input_tokens":12,"#,
                    br#""output_tokens":30}}"#
                ]
            ),
            42
        );
        assert_eq!(
            scan(
                "application/json; charset=utf-8",
                &[br#"{"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#]
            ),
            12
        );
        let anthropic: &[&[u8]] = &[
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_",
            b"tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ];
        assert_eq!(scan("text/event-stream", anthropic), 40);
        let openai: &[&[u8]] = &[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n",
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\r\n\r\ndata: [DONE]\r\n\r\n",
        ];
        assert_eq!(scan("text/event-stream", openai), 12);
        assert_eq!(scan("text/plain", &[b"usage"]), 0);
    }
}
