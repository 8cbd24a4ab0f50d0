//! Who is acting: the tenant, the user an agent acts for, and the chain of agent tasks
//! that led to the one acting now (delegation).
//!
//! Plain data with validation and no I/O: identity tokens (`agentspace-identity`) carry
//! it as `sub` and a nested RFC 8693 `act` claim, and decisions (`agentspace-policy`) read
//! it from the verified token. Authority is never part of it: what the current agent may
//! do comes from its own definition and the user, looked up by the decision point.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{Name, TaskId};

/// How many agents deep a delegation chain may go (the user's first agent counts as one).
/// A bound keeps tokens small and stops runaway spawn recursion at the identity layer too.
pub const MAX_DELEGATION_DEPTH: usize = 8;

/// Why a principal, user, task reference or SPIFFE id was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrincipalError {
    /// The user id is empty, too long or has whitespace or control characters.
    #[error("`{0}` is not a valid user id: use 1-256 printable characters without whitespace")]
    InvalidUser(String),
    /// The task reference is not a safe SPIFFE path segment.
    #[error(
        "`{0}` is not a valid task reference: use 1-128 of a-z, A-Z, 0-9, `.`, `_` and `-` (not `.` or `..`)"
    )]
    InvalidTask(String),
    /// The text is not `spiffe://TENANT/agent/AGENT/task/TASK`.
    #[error(
        "`{value}` is not an agent task SPIFFE id: {why} (expected `spiffe://TENANT/agent/AGENT/task/TASK`)"
    )]
    InvalidSpiffeId {
        /// The rejected text.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The chain has no agent in it.
    #[error("a principal needs at least one acting agent task")]
    EmptyChain,
    /// The chain is longer than [`MAX_DELEGATION_DEPTH`].
    #[error(
        "delegation chain is {0} agents deep, more than the limit of {MAX_DELEGATION_DEPTH}: an agent that starts agents that start agents is stopped here"
    )]
    TooDeep(usize),
}

/// The id of the human an agent acts for (`sub` of every token), such as
/// `alice@acme.example`. Opaque to Agent Space beyond a sanity check.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Checks `value`: 1-256 bytes, no whitespace or control characters.
    pub fn new(value: &str) -> Result<Self, PrincipalError> {
        let ok = !value.is_empty()
            && value.len() <= 256
            && !value.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(PrincipalError::InvalidUser(value.to_owned()))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = PrincipalError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> Self {
        value.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task as it appears in a SPIFFE id: a [`TaskId`] or any other safe path segment
/// (`42` in `spiffe://acme/agent/credit-officer/task/42`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskRef(String);

impl TaskRef {
    /// Checks `value` is a SPIFFE path segment: 1-128 of `[A-Za-z0-9._-]`, not `.` or `..`.
    pub fn new(value: &str) -> Result<Self, PrincipalError> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value != "."
            && value != ".."
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(PrincipalError::InvalidTask(value.to_owned()))
        }
    }

    /// The reference as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&TaskId> for TaskRef {
    fn from(id: &TaskId) -> Self {
        // A task id is 26 lowercase base32 characters, always a valid segment.
        Self(id.as_str().to_owned())
    }
}

impl TryFrom<String> for TaskRef {
    type Error = PrincipalError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<TaskRef> for String {
    fn from(value: TaskRef) -> Self {
        value.0
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One agent task in a delegation chain: which agent definition, which run of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The agent definition's name.
    pub agent: Name,
    /// The task (run) of that agent.
    pub task: TaskRef,
}

impl Actor {
    /// An actor from its parts.
    pub fn new(agent: Name, task: TaskRef) -> Self {
        Self { agent, task }
    }

    /// This actor's SPIFFE id in `tenant`'s trust domain.
    pub fn spiffe_id(&self, tenant: &Name) -> SpiffeId {
        SpiffeId {
            tenant: tenant.clone(),
            actor: self.clone(),
        }
    }
}

/// `spiffe://TENANT/agent/AGENT/task/TASK`: an agent task's workload id. The tenant is
/// the SPIFFE trust domain, so ids never collide across tenants.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    tenant: Name,
    actor: Actor,
}

impl SpiffeId {
    /// The trust domain (tenant).
    pub fn tenant(&self) -> &Name {
        &self.tenant
    }

    /// The agent task it names.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/agent/{}/task/{}",
            self.tenant, self.actor.agent, self.actor.task
        )
    }
}

impl FromStr for SpiffeId {
    type Err = PrincipalError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let fail = |why: &str| PrincipalError::InvalidSpiffeId {
            value: value.to_owned(),
            why: why.to_owned(),
        };
        let rest = value
            .strip_prefix("spiffe://")
            .ok_or_else(|| fail("it does not start with `spiffe://`"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [tenant, "agent", agent, "task", task] = parts.as_slice() else {
            return Err(fail("the path is not `/agent/AGENT/task/TASK`"));
        };
        let tenant = Name::new(tenant).map_err(|e| fail(&e.to_string()))?;
        let agent = Name::new(agent).map_err(|e| fail(&e.to_string()))?;
        let task = TaskRef::new(task).map_err(|e| fail(&e.to_string()))?;
        Ok(Self {
            tenant,
            actor: Actor { agent, task },
        })
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Who is acting: the current agent task for `user` in `tenant`, started by the user
/// directly or by the agent tasks before it (its delegators).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPrincipal", into = "RawPrincipal")]
pub struct Principal {
    tenant: Name,
    user: UserId,
    /// Root first (the agent the user started); empty when the user started `current`.
    delegators: Vec<Actor>,
    current: Actor,
}

/// The serde form: the chain written root first, current actor last.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    tenant: Name,
    user: UserId,
    chain: Vec<Actor>,
}

impl TryFrom<RawPrincipal> for Principal {
    type Error = PrincipalError;
    fn try_from(raw: RawPrincipal) -> Result<Self, Self::Error> {
        Self::from_chain(raw.tenant, raw.user, raw.chain)
    }
}

impl From<Principal> for RawPrincipal {
    fn from(p: Principal) -> Self {
        let mut chain = p.delegators;
        chain.push(p.current);
        Self {
            tenant: p.tenant,
            user: p.user,
            chain,
        }
    }
}

impl Principal {
    /// An agent task the user started directly.
    pub fn new(tenant: Name, user: UserId, actor: Actor) -> Self {
        Self {
            tenant,
            user,
            delegators: Vec::new(),
            current: actor,
        }
    }

    /// A principal from a whole chain (root first, current actor last).
    pub fn from_chain(
        tenant: Name,
        user: UserId,
        mut chain: Vec<Actor>,
    ) -> Result<Self, PrincipalError> {
        if chain.len() > MAX_DELEGATION_DEPTH {
            return Err(PrincipalError::TooDeep(chain.len()));
        }
        let current = chain.pop().ok_or(PrincipalError::EmptyChain)?;
        Ok(Self {
            tenant,
            user,
            delegators: chain,
            current,
        })
    }

    /// The principal of an agent task that the current actor starts for the same user:
    /// same tenant and user, with `child` acting for the chain so far. The child gets the
    /// user's identity and its own name, nothing of its parent's authority.
    pub fn delegate(&self, child: Actor) -> Result<Self, PrincipalError> {
        let depth = self.depth() + 1;
        if depth > MAX_DELEGATION_DEPTH {
            return Err(PrincipalError::TooDeep(depth));
        }
        let mut delegators = self.delegators.clone();
        delegators.push(self.current.clone());
        Ok(Self {
            tenant: self.tenant.clone(),
            user: self.user.clone(),
            delegators,
            current: child,
        })
    }

    /// The tenant everything here belongs to.
    pub fn tenant(&self) -> &Name {
        &self.tenant
    }

    /// The user the agents act for.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The agent task acting now: the one whose definition bounds what may happen.
    pub fn current(&self) -> &Actor {
        &self.current
    }

    /// The agent tasks that started the current one, root first (empty when the user
    /// started it directly).
    pub fn delegators(&self) -> &[Actor] {
        &self.delegators
    }

    /// Every actor from the root (started by the user) to the current one.
    pub fn actors(&self) -> impl DoubleEndedIterator<Item = &Actor> {
        self.delegators.iter().chain(std::iter::once(&self.current))
    }

    /// How many agents are in the chain, the current one included.
    pub fn depth(&self) -> usize {
        self.delegators.len() + 1
    }

    /// The current actor's SPIFFE id.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.current.spiffe_id(&self.tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(agent: &str, task: &str) -> Actor {
        Actor::new(Name::new(agent).unwrap(), TaskRef::new(task).unwrap())
    }

    #[test]
    fn spiffe_ids_round_trip_and_reject_other_shapes() {
        let id: SpiffeId = "spiffe://acme/agent/credit-officer/task/42"
            .parse()
            .unwrap();
        assert_eq!(id.tenant().as_str(), "acme");
        assert_eq!(id.actor(), &actor("credit-officer", "42"));
        assert_eq!(id.to_string(), "spiffe://acme/agent/credit-officer/task/42");
        for bad in [
            "spiffe://acme/agent/a/task/..",
            "spiffe://acme/agent/a/task/1/x",
            "spiffe://acme/agent/A/task/1",
            "https://acme/agent/a/task/1",
            "spiffe://acme/user/a/task/1",
            "spiffe://acme/agent/a/task/",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn delegation_keeps_the_user_and_puts_the_child_in_front() {
        let user = UserId::new("alice@acme.example").unwrap();
        let a = Principal::new(Name::new("acme").unwrap(), user.clone(), actor("a", "1"));
        let b = a.delegate(actor("b", "2")).unwrap();
        assert_eq!(b.user(), &user);
        assert_eq!(b.current(), &actor("b", "2"));
        assert_eq!(b.delegators(), &[actor("a", "1")]);
        assert_eq!(b.depth(), 2);
        let json = serde_json::to_value(&b).unwrap();
        let back: Principal = serde_json::from_value(json).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn delegation_depth_is_bounded() {
        let mut p = Principal::new(
            Name::new("acme").unwrap(),
            UserId::new("u").unwrap(),
            actor("a", "0"),
        );
        for i in 1..MAX_DELEGATION_DEPTH {
            p = p.delegate(actor("a", &i.to_string())).unwrap();
        }
        assert_eq!(
            p.delegate(actor("a", "x")),
            Err(PrincipalError::TooDeep(MAX_DELEGATION_DEPTH + 1))
        );
    }

    #[test]
    fn user_ids_and_task_refs_are_checked() {
        assert!(UserId::new("alice@acme.example").is_ok());
        for bad in ["", "a b", "a\nb", &"x".repeat(257)] {
            assert!(UserId::new(bad).is_err(), "{bad:?}");
        }
        assert!(TaskRef::new("01jb2x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(TaskRef::new(bad).is_err(), "{bad:?}");
        }
    }
}
