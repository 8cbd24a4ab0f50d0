//! RFC 8785 (JSON Canonicalization Scheme) for the values audit records use.
//!
//! Numbers follow RFC 8785 section 3.2.2.3: the ECMAScript `Number.prototype.toString`
//! form of the IEEE 754 double (shortest round-trip digits). Integers that a double
//! cannot hold exactly (magnitude 2^53 or more) are refused rather than rounded: a value
//! whose canonical form would differ from what the caller wrote must not be hashed.

use std::cmp::Ordering;

use serde_json::Value;

/// The largest integer that JSON numbers (IEEE 754 doubles) carry exactly: 2^53 - 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// An integer beyond ±(2^53 - 1), which a JSON number cannot carry exactly.
    #[error("integer `{0}` is outside ±(2^53-1) and would be rounded; write it as a string")]
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
    } else if let Some(f) = n.as_f64() {
        out.extend_from_slice(es_number(f).as_bytes());
    } else {
        return Err(unsupported());
    }
    Ok(())
}

/// ECMAScript `Number.prototype.toString` for a finite double (ECMA-262 section
/// 6.1.6.1.20). The digits come from serde_json's formatting (Ryu: the shortest digits
/// that round-trip, and of those the closest, as ECMAScript requires); only the layout
/// is ECMAScript's.
fn es_number(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        // JSON has no NaN or infinity; -0 prints as 0.
        return "0".to_owned();
    }
    let sign = if f < 0.0 { "-" } else { "" };
    let text =
        serde_json::Number::from_f64(f.abs()).map_or_else(|| "0".to_owned(), |n| n.to_string());
    let (mantissa, exp) = text.split_once(['e', 'E']).unwrap_or((text.as_str(), "0"));
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let exp: i32 = exp.parse().unwrap_or(0);
    let all = format!("{int}{frac}");
    let trimmed = all.trim_start_matches('0');
    // The decimal point sits after `n` of the significant digits.
    let n = i32::try_from(int.len()).unwrap_or(0) + exp
        - i32::try_from(all.len() - trimmed.len()).unwrap_or(0);
    let digits = trimmed.trim_end_matches('0').to_owned();
    let k = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let zeros = |count: i32| "0".repeat(usize::try_from(count).unwrap_or(0));
    let split = |at: i32| digits.split_at(usize::try_from(at).unwrap_or(0).min(digits.len()));
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", zeros(n - k))
    } else if 0 < n && n <= 21 {
        let (int, frac) = split(n);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", zeros(-n))
    } else {
        let (first, rest) = split(1);
        let e = n - 1;
        let e_sign = if e < 0 { "-" } else { "+" };
        let dot = if rest.is_empty() { "" } else { "." };
        format!("{first}{dot}{rest}e{e_sign}{}", e.abs())
    };
    format!("{sign}{body}")
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
    fn integers_beyond_the_safe_range_are_refused() {
        assert_eq!(canon("9007199254740991"), "9007199254740991");
        assert_eq!(canon("-9007199254740991"), "-9007199254740991");
        for bad in [
            "9007199254740992",
            "-9007199254740992",
            "18446744073709551615",
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(canonicalize(&v).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn rfc8785_number_examples() {
        // RFC 8785 appendix B (IEEE 754 bit patterns and their canonical form),
        // checked against Node.js `String(x)` as well.
        let cases = [
            (0x0000000000000000_u64, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, want) in cases {
            assert_eq!(es_number(f64::from_bits(bits)), want, "{bits:016x}");
        }
        assert_eq!(canon("[1.0, 0.5, -2.5e-7, 1e21]"), "[1,0.5,-2.5e-7,1e+21]");
    }
}
