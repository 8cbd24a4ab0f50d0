//! RFC 8785 (JSON Canonicalization Scheme) for the values audit records use.
//!
//! Audit records carry only strings, integers, booleans, null, arrays and objects.
//! Integers are written in plain decimal, which is what RFC 8785's ECMAScript number
//! formatting gives for every integer of magnitude below 2^53. Numbers that are not
//! integers, or are outside that range, are refused rather than rounded: a value that
//! has no exact canonical spelling must not be hashed.

use std::cmp::Ordering;

use serde_json::Value;

/// The largest integer that JSON numbers (IEEE 754 doubles) carry exactly: 2^53 - 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A number with a fraction, or beyond ±(2^53 - 1).
    #[error(
        "number `{0}` is not an integer between -(2^53-1) and 2^53-1; audit records carry integers only (write it as a string)"
    )]
    UnsupportedNumber(String),
}

/// Writes the RFC 8785 canonical form of `value` to `out`.
pub(crate) fn canonicalize_into(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonicalize_into(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| utf16_cmp(a.0, b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                canonicalize_into(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// The RFC 8785 canonical form of `value`.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    canonicalize_into(value, &mut out)?;
    Ok(out)
}

/// Property names sort by their UTF-16 code units (RFC 8785 section 3.2.3).
fn utf16_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    let unsupported = || CanonicalError::UnsupportedNumber(n.to_string());
    if let Some(u) = n.as_u64() {
        if u > MAX_SAFE_INTEGER {
            return Err(unsupported());
        }
        out.extend_from_slice(u.to_string().as_bytes());
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(unsupported());
        }
        out.extend_from_slice(i.to_string().as_bytes());
    } else {
        return Err(unsupported());
    }
    Ok(())
}

/// ECMAScript `JSON.stringify` string escaping, as RFC 8785 section 3.2.2.2 requires.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            0x00..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(json: &str) -> String {
        String::from_utf8(canonicalize(&serde_json::from_str(json).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn rfc8785_string_example() {
        // RFC 8785 section 3.2.2.2.
        let input = r#""\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/""#;
        assert_eq!(canon(input), "\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"");
    }

    #[test]
    fn rfc8785_sorting_example() {
        // RFC 8785 section 3.2.3: keys sort by UTF-16 code units, so the emoji (a
        // surrogate pair) sorts before U+FB33 although its code point is larger.
        let input = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canon(input), expected);
    }

    #[test]
    fn rfc8785_literals_and_nesting() {
        // The non-number part of RFC 8785 section 3.2.2's example.
        let input = r#"{ "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false] }"#;
        assert_eq!(
            canon(input),
            "{\"literals\":[null,true,false],\"string\":\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
        );
        assert_eq!(
            canon(r#"{"b":[1,{"d":-2,"c":0}],"a":{}}"#),
            r#"{"a":{},"b":[1,{"c":0,"d":-2}]}"#
        );
    }

    #[test]
    fn integers_only_within_the_safe_range() {
        assert_eq!(canon("9007199254740991"), "9007199254740991");
        assert_eq!(canon("-9007199254740991"), "-9007199254740991");
        for bad in ["9007199254740992", "1.5", "1e3", "-9007199254740992"] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(canonicalize(&v).is_err(), "{bad} must be refused");
        }
    }
}
