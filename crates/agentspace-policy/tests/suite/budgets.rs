//! Budgets: persisted, per task, per capability, per user window; no double spend across
//! threads and processes.

use std::process::Command;
use std::sync::Arc;

use agentspace_policy::{DenyReason, PolicyEngine, Usage};
use pretty_assertions::assert_eq;

use super::helpers::*;

const SCORER: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: scorer, tenant: acme}
spec:
  egress:
    - name: scoring
      hosts: [scoring.internal.example]
      paths: [\"/v1/*\"]
      budget: {requests: 100}
    - name: search
      hosts: [search.example]
  budgets:
    requests: 150
    tokens: 1000
    perUser: {window: 24h, requests: 400}
";

fn engine(f: &Fixture) -> PolicyEngine {
    PolicyEngine::load(&f.definition, &f.state()).unwrap()
}

fn score(task: &str, i: usize) -> agentspace_policy::Request {
    http(
        &principal("scorer", task),
        "POST",
        "scoring.internal.example",
        &format!("/v1/score/{i}"),
    )
}

#[test]
fn capability_budget_stops_the_capability_only_and_survives_restarts() {
    let f = Fixture::new(SCORER, &[]);
    let e = engine(&f);
    for i in 0..60 {
        assert!(e.decide(&score("t1", i)).is_allow(), "{i}");
    }
    drop(e);
    // A new engine (a restarted gateway) continues from the stored counters.
    let e = engine(&f);
    for i in 60..100 {
        assert!(e.decide(&score("t1", i)).is_allow(), "{i}");
    }
    let d = e.decide(&score("t1", 100));
    assert_eq!(d.deny_reason(), Some(DenyReason::Budget), "{d}");
    assert!(
        d.message()
            .contains("requests budget of capability `scoring` is spent (100 of 100 used)"),
        "{d}"
    );
    // Other capabilities of the task still work, and another task has its own budget.
    let p = principal("scorer", "t1");
    assert!(
        e.decide(&http(&p, "GET", "search.example", "/q"))
            .is_allow()
    );
    assert!(e.decide(&score("t2", 0)).is_allow());
    assert_eq!(e.task_usage(&p).unwrap().requests, 101);
}

#[test]
fn task_budget_counts_every_capability() {
    let f = Fixture::new(SCORER, &[]);
    let e = engine(&f);
    let p = principal("scorer", "t1");
    for i in 0..150 {
        let r = if i % 2 == 0 {
            score("t1", i)
        } else {
            http(&p, "GET", "search.example", &format!("/q/{i}"))
        };
        assert!(e.decide(&r).is_allow(), "{i}");
    }
    let d = e.decide(&http(&p, "GET", "search.example", "/last"));
    assert!(
        d.message()
            .contains("requests budget of the task is spent (150 of 150 used)"),
        "{d}"
    );
}

#[test]
fn per_user_window_spans_tasks() {
    let f = Fixture::new(SCORER, &[]);
    let e = engine(&f);
    let mut allowed = 0;
    for task in 0..5 {
        let p = principal("scorer", &format!("w{task}"));
        for i in 0..100 {
            if e.decide(&http(&p, "GET", "search.example", &format!("/q/{i}")))
                .is_allow()
            {
                allowed += 1;
            }
        }
    }
    assert_eq!(allowed, 400);
    // Another user has their own window.
    let bob = agentspace_core::Principal::new(
        name("acme"),
        agentspace_core::UserId::new("bob").unwrap(),
        actor("scorer", "b1"),
    );
    assert!(
        e.decide(&http(&bob, "GET", "search.example", "/q"))
            .is_allow()
    );
}

#[test]
fn reported_tokens_stop_the_next_request() {
    let f = Fixture::new(SCORER, &[]);
    let e = engine(&f);
    let p = principal("scorer", "t1");
    assert!(
        e.decide(&http(&p, "GET", "search.example", "/a"))
            .is_allow()
    );
    e.record_usage(
        &p,
        &["search".to_owned()],
        Usage {
            tokens: 1000,
            bytes: 5000,
            ..Usage::default()
        },
    )
    .unwrap();
    let d = e.decide(&http(&p, "GET", "search.example", "/b"));
    assert!(
        d.message()
            .contains("tokens budget of the task is spent (1000 of 1000 used)"),
        "{d}"
    );
    let u = e.task_usage(&p).unwrap();
    assert_eq!((u.requests, u.bytes, u.tokens), (1, 5000, 1000));
}

#[test]
fn usage_is_visible_to_policies() {
    let f = Fixture::new(
        &SCORER.replace("budgets:", "policies: [./p.cedar]\n  budgets:"),
        &[(
            "p.cedar",
            "@id(\"slow-down\")\nforbid (principal, action, resource == AgentSpace::Host::\"search.example\") when { context.usage.requests >= 2 };\n",
        )],
    );
    let e = engine(&f);
    let p = principal("scorer", "t1");
    assert!(
        e.decide(&http(&p, "GET", "search.example", "/1"))
            .is_allow()
    );
    assert!(
        e.decide(&http(&p, "GET", "search.example", "/2"))
            .is_allow()
    );
    assert_eq!(
        e.decide(&http(&p, "GET", "search.example", "/3"))
            .policies(),
        ["slow-down"]
    );
}

#[test]
fn time_budget_ends_outbound_actions() {
    let f = Fixture::new(
        &SCORER.replace("tokens: 1000", "tokens: 1000\n    timeout: 1s"),
        &[],
    );
    let e = engine(&f);
    let p = principal("scorer", "t1");
    assert!(
        e.decide(&http(&p, "GET", "search.example", "/1"))
            .is_allow()
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let d = e.decide(&http(&p, "GET", "search.example", "/2"));
    assert_eq!(d.deny_reason(), Some(DenyReason::Budget), "{d}");
    assert!(d.message().contains("time budget"), "{d}");
}

#[test]
fn no_double_spend_across_threads() {
    let f = Fixture::new(SCORER, &[]);
    let e = Arc::new(engine(&f));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                (0..40)
                    .filter(|i| e.decide(&score("t1", t * 1000 + i)).is_allow())
                    .count()
            })
        })
        .collect();
    let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(allowed, 100);
}

const CHILD_ENV: &str = "AGENTSPACE_POLICY_TEST_CHILD";

/// Not a test by itself: run by `no_double_spend_across_processes` in child processes.
#[test]
fn child_charges_budget() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let (def, state, id) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let text = std::fs::read_to_string(def).unwrap();
    let definition = agentspace_core::Definition::parse(std::path::Path::new(def), &text).unwrap();
    let e = Arc::new(PolicyEngine::load(&definition, std::path::Path::new(state)).unwrap());
    let id: usize = id.parse().unwrap();
    let handles: Vec<_> = (0..3)
        .map(|t| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                (0..20)
                    .filter(|i| {
                        e.decide(&score("shared", id * 10_000 + t * 100 + i))
                            .is_allow()
                    })
                    .count()
            })
        })
        .collect();
    let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    println!("allowed={allowed}");
}

#[test]
fn no_double_spend_across_processes() {
    let f = Fixture::new(SCORER, &[]);
    let exe = std::env::current_exe().unwrap();
    let def = f.path().join("agent.yaml");
    // 4 processes × 3 threads × 20 attempts = 240 attempts on a budget of 100, plus this
    // process hammering at the same time.
    let children: Vec<_> = (0..4)
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "suite::budgets::child_charges_budget",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    CHILD_ENV,
                    format!(
                        "{}|{}|{id}",
                        def.display(),
                        f.state().display(),
                        id = id + 1
                    ),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let e = engine(&f);
    let mine = (0..30)
        .filter(|i| e.decide(&score("shared", *i)).is_allow())
        .count();
    let mut total = mine;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let n: usize = stdout
            .lines()
            .find_map(|l| l.split_once("allowed=").map(|(_, n)| n))
            .unwrap_or_else(|| panic!("child printed no count: {stdout}"))
            .trim()
            .parse()
            .unwrap();
        total += n;
    }
    assert_eq!(total, 100, "exactly the budget is spent, never more");
    assert_eq!(
        e.task_usage(&principal("scorer", "shared"))
            .unwrap()
            .requests,
        100
    );
}
