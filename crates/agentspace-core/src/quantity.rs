//! Quantities written in definitions: sizes (`256Mi`), durations (`60s`, `15m`) and CPU
//! shares (`1.0`). Each parses in its `Deserialize` so an error carries the YAML location.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A size in bytes, written like Kubernetes quantities: `256Mi`, `1Gi`, `500M`, `4096`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(u64);

impl Size {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// A size of `bytes` bytes.
    pub fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    /// Parses `256Mi`, `1Gi`, `2G`, `512k` or a plain number of bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let expected = || format!("expected a size such as 256Mi or 1Gi, found `{text}`");
        let number: u64 = digits.parse().map_err(|_| expected())?;
        let factor: u64 = match unit {
            "" => 1,
            "k" | "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => return Err(expected()),
        };
        number
            .checked_mul(factor)
            .map(Self)
            .ok_or_else(|| format!("size `{text}` is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, factor) in [
            ("Ti", 1u64 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if b >= factor && b.is_multiple_of(factor) {
                return write!(f, "{}{unit}", b / factor);
            }
        }
        write!(f, "{b}")
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = StringOrNumber::deserialize(d)?;
        Size::parse(&raw.0).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Size {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "a size in bytes: a number, or a number with a unit (k, M, G, T, Ki, Mi, Gi, Ti), e.g. 256Mi",
            "type": ["string", "integer"],
            "pattern": "^[0-9]+(k|K|M|G|T|Ki|Mi|Gi|Ti)?$",
            "minimum": 0
        })
    }
}

/// A wall-clock duration written as `60s`, `15m`, `1h`, `500ms` or `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// Parses a duration such as `60s` or `15m`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        humantime::parse_duration(text)
            .map(Self)
            .map_err(|_| format!("expected a duration such as 60s, 15m or 1h, found `{text}`"))
    }

    /// The duration as a standard duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// Wraps a standard duration.
    pub fn from_std(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Duration::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "a duration: a number with a unit (ms, s, m, h, d), e.g. 60s, 15m, 1h 30m",
            "type": "string",
            "pattern": "^\\s*[0-9]+\\s*[a-z]+(\\s*[0-9]+\\s*[a-z]+)*\\s*$"
        })
    }
}

/// CPU time as a number of cores (`0.5`, `1.0`, `2`), enforced as a CFS quota.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Cpu(f64);

impl Cpu {
    /// The number of cores.
    pub fn cores(self) -> f64 {
        self.0
    }

    /// Checks that `cores` is between 0.01 and 1024.
    pub fn new(cores: f64) -> Result<Self, String> {
        if cores.is_finite() && (0.01..=1024.0).contains(&cores) {
            Ok(Self(cores))
        } else {
            Err(format!(
                "expected a number of cores between 0.01 and 1024, such as 1.0, found `{cores}`"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = f64::deserialize(d)?;
        Cpu::new(raw).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Cpu {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cpu".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "CPU time as a number of cores, e.g. 0.5 or 1.0",
            "type": "number",
            "minimum": 0.01,
            "maximum": 1024
        })
    }
}

/// Accepts `256Mi` and `1048576` alike.
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StringOrNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 256Mi")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(Size::parse("256Mi").unwrap().bytes(), 256 << 20);
        assert_eq!(Size::parse("1G").unwrap().bytes(), 1_000_000_000);
        assert_eq!(Size::parse("4096").unwrap().bytes(), 4096);
        assert_eq!(Size::parse("256Mi").unwrap().to_string(), "256Mi");
        for bad in ["", "Mi", "12XB", "-1Mi", "1.5Gi", "99999999999Ti"] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_cpu_parse() {
        assert_eq!(Duration::parse("60s").unwrap().get().as_secs(), 60);
        assert_eq!(Duration::parse("15m").unwrap().get().as_secs(), 900);
        assert_eq!(Duration::parse("1h 30m").unwrap().get().as_secs(), 5400);
        assert!(Duration::parse("soon").is_err());
        assert!(Cpu::new(0.5).is_ok());
        assert!(Cpu::new(0.0).is_err());
        assert!(Cpu::new(f64::NAN).is_err());
    }
}
