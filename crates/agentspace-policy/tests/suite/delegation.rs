//! Spawning and delegation: no transitive trust.

use agentspace_core::{TaskRef, UserId};
use agentspace_policy::{
    CompiledPolicies, DenyReason, NoAudit, PolicyEngine, Revocation, Revocations,
};
use pretty_assertions::assert_eq;

use super::helpers::*;

const PLANNER: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: planner, tenant: acme}
spec:
  egress:
    - name: crm
      hosts: [crm.internal.example]
  spawn: [scorer]
";

const SCORER: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: scorer, tenant: acme}
spec:
  egress:
    - name: scoring
      hosts: [scoring.internal.example]
  policies: [./scorer.cedar]
";

const SCORER_CEDAR: &str = "@id(\"not-for-interns\")\n@reason(\"interns may not score\")\nforbid (principal, action, resource) when { context.user like \"intern-*\" };\n";

struct World {
    _planner_fixture: Fixture,
    _scorer_fixture: Fixture,
    planner: PolicyEngine,
    scorer: PolicyEngine,
    state: std::path::PathBuf,
}

fn world() -> World {
    let pf = Fixture::new(PLANNER, &[]);
    let sf = Fixture::new(SCORER, &[("scorer.cedar", SCORER_CEDAR)]);
    let state = pf.state();
    let planner = PolicyEngine::load(&pf.definition, &state).unwrap();
    let scorer = PolicyEngine::load(&sf.definition, &state).unwrap();
    World {
        _planner_fixture: pf,
        _scorer_fixture: sf,
        planner,
        scorer,
        state,
    }
}

#[test]
fn an_agent_may_start_only_the_agents_it_lists() {
    let w = world();
    let a = principal("planner", "a1");
    let d = w.planner.decide(&spawn(&a, "scorer"));
    assert!(d.is_allow(), "{d}");
    assert_eq!(d.policies(), ["spawn.scorer"]);
    assert_eq!(
        w.planner.decide(&spawn(&a, "payer")).deny_reason(),
        Some(DenyReason::NotPermitted)
    );
    // The scorer lists nothing, so it may start nothing, not even what its parent may.
    let b = a.delegate(actor("scorer", "b1")).unwrap();
    assert_eq!(
        w.scorer.decide(&spawn(&b, "scorer")).deny_reason(),
        Some(DenyReason::NotPermitted)
    );
}

#[test]
fn the_started_agent_has_its_own_authority_not_its_parents() {
    let w = world();
    let a = principal("planner", "a1");
    let b = a.delegate(actor("scorer", "b1")).unwrap();
    // B uses its own capability.
    assert!(
        w.scorer
            .decide(&http(&b, "GET", "scoring.internal.example", "/s"))
            .is_allow()
    );
    // B cannot use a capability only A has.
    let d = w
        .scorer
        .decide(&http(&b, "GET", "crm.internal.example", "/customers"));
    assert_eq!(d.deny_reason(), Some(DenyReason::NotPermitted), "{d}");
    // Nor can B be decided by A's definition: each agent is decided by its own.
    let d = w
        .planner
        .decide(&http(&b, "GET", "crm.internal.example", "/customers"));
    assert_eq!(d.deny_reason(), Some(DenyReason::InvalidRequest), "{d}");
    // And A does not gain B's capability by having started it.
    let d = w
        .planner
        .decide(&http(&a, "GET", "scoring.internal.example", "/s"));
    assert_eq!(d.deny_reason(), Some(DenyReason::NotPermitted), "{d}");
}

#[test]
fn the_users_restrictions_follow_into_started_agents() {
    let w = world();
    let intern = agentspace_core::Principal::new(
        name("acme"),
        UserId::new("intern-bo").unwrap(),
        actor("planner", "a1"),
    );
    let b = intern.delegate(actor("scorer", "b1")).unwrap();
    let d = w
        .scorer
        .decide(&http(&b, "GET", "scoring.internal.example", "/s"));
    assert_eq!(d.policies(), ["not-for-interns"], "{d}");
}

#[test]
fn revoking_the_parent_stops_the_childs_work() {
    let w = world();
    let admin = Revocations::open(&w.state).unwrap();
    let a = principal("planner", "a1");
    let b = a.delegate(actor("scorer", "b1")).unwrap();
    let standalone = principal("scorer", "b2");
    assert!(
        w.scorer
            .decide(&http(&b, "GET", "scoring.internal.example", "/1"))
            .is_allow()
    );

    let parent_task = Revocation::Task {
        tenant: name("acme"),
        task: TaskRef::new("a1").unwrap(),
    };
    admin.revoke(parent_task.clone(), "stop", &NoAudit).unwrap();
    let d = w
        .scorer
        .decide(&http(&b, "GET", "scoring.internal.example", "/2"));
    assert_eq!(d.deny_reason(), Some(DenyReason::Revoked), "{d}");
    assert!(d.message().contains("(which started this task)"), "{d}");
    assert!(
        w.scorer
            .decide(&http(&standalone, "GET", "scoring.internal.example", "/2"))
            .is_allow()
    );
    admin.lift(&parent_task, &NoAudit).unwrap();

    // Revoking the user's use of the planner stops what the planner started for them.
    admin
        .revoke(
            Revocation::UserAgent {
                tenant: name("acme"),
                user: UserId::new("alice@acme.example").unwrap(),
                agent: name("planner"),
            },
            "",
            &NoAudit,
        )
        .unwrap();
    assert_eq!(
        w.scorer
            .decide(&http(&b, "GET", "scoring.internal.example", "/3"))
            .deny_reason(),
        Some(DenyReason::Revoked)
    );
    assert!(
        w.scorer
            .decide(&http(&standalone, "GET", "scoring.internal.example", "/3"))
            .is_allow()
    );
}

#[test]
fn policies_can_read_the_delegation_chain() {
    let f = Fixture::new(
        &SCORER.replace("./scorer.cedar", "./chain.cedar"),
        &[(
            "chain.cedar",
            "@id(\"only-direct\")\nforbid (principal, action, resource) when { context.chain.contains(\"planner\") || context.depth > 2 };\n",
        )],
    );
    let c = CompiledPolicies::compile(&f.definition).unwrap();
    let direct = principal("scorer", "s1");
    assert!(
        c.evaluate(&http(&direct, "GET", "scoring.internal.example", "/"))
            .is_allow()
    );
    let via = principal("planner", "a1")
        .delegate(actor("scorer", "b1"))
        .unwrap();
    assert_eq!(
        c.evaluate(&http(&via, "GET", "scoring.internal.example", "/"))
            .policies(),
        ["only-direct"]
    );
}
