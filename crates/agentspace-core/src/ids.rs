//! Names and identifiers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A lowercase DNS-label-style name (agent names, tenants): `[a-z0-9]([a-z0-9-]*[a-z0-9])?`,
/// at most 63 characters. The same rule everywhere keeps names safe in paths, hostnames,
/// SPIFFE ids and cgroup names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// Why a string is not a valid [`Name`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{value}` is not a valid name: {why} (use 1-63 lowercase letters, digits and `-`, starting and ending with a letter or digit)"
)]
pub struct InvalidName {
    value: String,
    why: &'static str,
}

impl Name {
    /// Checks `value` against the name rule.
    pub fn new(value: &str) -> Result<Self, InvalidName> {
        let fail = |why| InvalidName {
            value: value.to_owned(),
            why,
        };
        if value.is_empty() {
            return Err(fail("it is empty"));
        }
        if value.len() > 63 {
            return Err(fail("it is longer than 63 characters"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(fail("it has a character other than a-z, 0-9 and `-`"));
        }
        if value.starts_with('-') || value.ends_with('-') {
            return Err(fail("it starts or ends with `-`"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(&s).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Name {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Name".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
            "description": "1-63 lowercase letters, digits and `-`, starting and ending with a letter or digit"
        })
    }
}

/// The id of one task (one run of one agent for one user). Task ids sort by creation
/// time and are safe in paths: 26 characters of Crockford base32, lowercase.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// Makes a task id from a creation time (milliseconds since the Unix epoch) and 80
    /// random bits; the caller supplies both so this crate stays free of I/O.
    pub fn from_parts(unix_millis: u64, random: u128) -> Self {
        const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
        let value: u128 =
            (u128::from(unix_millis & 0xffff_ffff_ffff) << 80) | (random & ((1u128 << 80) - 1));
        let mut out = String::with_capacity(26);
        for i in (0..26).rev() {
            let digit = ((value >> (i * 5)) & 31) as usize;
            out.push(char::from(*ALPHABET.get(digit).unwrap_or(&b'0')));
        }
        Self(out)
    }

    /// Parses a task id given by a user (for `tasks show`), rejecting anything that is not
    /// 26 base32 characters so an id can never name a path outside the state directory.
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let ok = value.len() == 26
            && value
                .bytes()
                .all(|b| b"0123456789abcdefghjkmnpqrstvwxyz".contains(&b));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidName {
                value: value.to_owned(),
                why: "a task id is 26 characters of 0-9 and a-z (without i, l, o, u)",
            })
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_dns_label_rule() {
        assert!(Name::new("credit-officer").is_ok());
        assert!(Name::new("a").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64), "../x"] {
            assert!(Name::new(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn task_ids_sort_by_time_and_round_trip() {
        let a = TaskId::from_parts(1_000, u128::MAX);
        let b = TaskId::from_parts(1_001, 0);
        assert!(a < b);
        assert_eq!(a.as_str().len(), 26);
        assert_eq!(TaskId::parse(a.as_str()).unwrap(), a);
        assert!(TaskId::parse("../../etc/passwd").is_err());
    }
}
