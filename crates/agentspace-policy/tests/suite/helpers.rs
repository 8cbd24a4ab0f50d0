//! Shared fixtures: definitions on disk, principals, requests.

use std::path::{Path, PathBuf};

use agentspace_core::{Actor, Definition, Name, Principal, TaskRef, UserId};
use agentspace_policy::{Action, Request, RequestContext, Resource};

/// The credit officer of issue 3, as written, plus a spawn list.
pub(crate) const CREDIT_OFFICER: &str = r#"apiVersion: agentspace/v1
kind: Agent
metadata:
  name: credit-officer
  tenant: acme
spec:
  egress:
    - name: scoring                      # a capability: budgets and audit name it
      hosts: [scoring.internal.example]
      methods: [POST]
      paths: ["/v1/score", "/v1/score/*"]
      budget: {requests: 100}
    - name: payments
      hosts: [api.stripe.com]
      methods: [GET, POST]
      paths: ["/v1/charges*"]
      approval:
        when: 'context.body.amount > 1000'   # Cedar expression over the request context
        timeout: 10m
  budgets: {requests: 1000, timeout: 15m}
  policies: [./policies/credit-officer.cedar]  # extra permit/forbid policies, validated against the schema
"#;

pub(crate) const CREDIT_OFFICER_CEDAR: &str = r#"// Lending rules on top of the definition.
@id("no-pii-to-scoring")
@reason("data labelled pii must not be sent to the scoring service")
forbid (
  principal,
  action == AgentSpace::Action::"POST",
  resource == AgentSpace::Host::"scoring.internal.example"
) when { context.labels.contains("pii") };

@id("office-hours-only")
@reason("payments are made during office hours (08-18 UTC)")
forbid (principal, action, resource == AgentSpace::Host::"api.stripe.com")
when { context.time.hour < 8 || context.time.hour >= 18 };
"#;

/// A temporary directory with a definition file and its policy files.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) definition: Definition,
}

impl Fixture {
    pub(crate) fn new(definition: &str, policies: &[(&str, &str)]) -> Self {
        Self::try_new(definition, policies).unwrap()
    }

    pub(crate) fn try_new(
        definition: &str,
        policies: &[(&str, &str)],
    ) -> Result<Self, agentspace_core::DefinitionError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in policies {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, definition).unwrap();
        let definition = Definition::parse(&path, definition)?;
        Ok(Self { dir, definition })
    }

    pub(crate) fn credit_officer() -> Self {
        Self::new(
            CREDIT_OFFICER,
            &[("policies/credit-officer.cedar", CREDIT_OFFICER_CEDAR)],
        )
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub(crate) fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

pub(crate) fn actor(agent: &str, task: &str) -> Actor {
    Actor::new(name(agent), TaskRef::new(task).unwrap())
}

pub(crate) fn principal(agent: &str, task: &str) -> Principal {
    Principal::new(
        name("acme"),
        UserId::new("alice@acme.example").unwrap(),
        actor(agent, task),
    )
}

/// 2026-01-05 (a Monday) at 10:00 UTC: office hours.
pub(crate) const OFFICE_HOURS: u64 = 1_767_607_200;
/// The same day at 22:00 UTC.
pub(crate) const NIGHT: u64 = OFFICE_HOURS + 12 * 3600;

pub(crate) fn http(p: &Principal, method: &str, host: &str, path: &str) -> Request {
    Request {
        principal: p.clone(),
        action: Action::Http {
            method: method.to_owned(),
        },
        resource: Resource {
            host: Some(host.to_owned()),
            port: Some(443),
            path: Some(path.to_owned()),
            ..Resource::default()
        },
        context: RequestContext {
            time: Some(OFFICE_HOURS),
            ..RequestContext::default()
        },
    }
}

pub(crate) fn with_body(mut r: Request, body: serde_json::Value) -> Request {
    r.context.body = Some(body);
    r
}

pub(crate) fn spawn(p: &Principal, target: &str) -> Request {
    Request {
        principal: p.clone(),
        action: Action::Spawn,
        resource: Resource {
            agent: Some(name(target)),
            ..Resource::default()
        },
        context: RequestContext::default(),
    }
}
