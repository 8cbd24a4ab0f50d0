//! Decision latency: Agent Space (Cedar) against the same decisions written in Rego and
//! evaluated by `regorus`, in the same process and run.
//!
//! Load: 100 agent definitions × 20 egress rules (every 5th with an approval condition),
//! 50 extra tenant-wide policies shared by all definitions, 20,000 requests drawn from
//! them (80 % aimed at a rule, 20 % at nothing). Every request is decided by both engines
//! and the outcomes must agree. Run with `bench/policy.sh`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    reason = "a benchmark program fails loudly"
)]

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use agentspace_core::{Actor, Definition, Name, Principal, TaskRef, UserId};
use agentspace_policy::{
    Action, CompiledPolicies, Decision, PolicyEngine, Request, RequestContext, Resource,
};

const DEFINITIONS: usize = 100;
const RULES: usize = 20;
const EXTRA: usize = 50;
const REQUESTS: usize = 20_000;
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// A small deterministic generator (xorshift), so every run draws the same load.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn host(def: usize, rule: usize) -> String {
    format!("svc{rule}.d{def}.example")
}

fn rule_methods(rule: usize) -> Vec<&'static str> {
    vec![METHODS[rule % 4], METHODS[(rule + 1) % 4]]
}

fn definition_yaml(def: usize) -> String {
    let mut y = format!(
        "apiVersion: agentspace/v1\nkind: Agent\nmetadata: {{name: agent{def}, tenant: acme}}\nspec:\n  policies: [./shared.cedar]\n  loopLimit: 1000000\n  egress:\n"
    );
    for r in 0..RULES {
        let _ = write!(
            y,
            "    - name: rule{r}\n      hosts: [{}]\n      methods: [{}]\n      paths: [\"/api/v{r}\", \"/api/v{r}/*\"]\n",
            host(def, r),
            rule_methods(r).join(", ")
        );
        if r % 5 == 0 {
            y.push_str(
                "      approval: {when: 'context.body has amount && context.body.amount > 1000'}\n",
            );
        }
    }
    y
}

/// The 50 shared policies, in Cedar, and the same facts as Rego data.
fn extra_policies() -> (String, serde_json::Value) {
    let mut cedar = String::new();
    let (mut hosts, mut labels, mut hours, mut envs) = (vec![], vec![], vec![], vec![]);
    for k in 0..EXTRA {
        match k % 4 {
            0 => {
                let h = host(k * 2 % DEFINITIONS, k % RULES);
                let _ = writeln!(
                    cedar,
                    "@id(\"x{k}\")\nforbid (principal, action in AgentSpace::Action::\"http\", resource == AgentSpace::Host::\"{h}\");"
                );
                hosts.push(h);
            }
            1 => {
                let l = format!("label{k}");
                let _ = writeln!(
                    cedar,
                    "@id(\"x{k}\")\nforbid (principal, action == AgentSpace::Action::\"POST\", resource) when {{ context.labels.contains(\"{l}\") }};"
                );
                labels.push(l);
            }
            2 => {
                let (h, p) = (k % 24, format!("/api/v{}/admin", k % RULES));
                let _ = writeln!(
                    cedar,
                    "@id(\"x{k}\")\nforbid (principal, action in AgentSpace::Action::\"http\", resource) when {{ context.time.hour == {h} && context.path like \"{p}*\" }};"
                );
                hours.push(serde_json::json!({"hour": h, "prefix": p}));
            }
            _ => {
                let e = format!("prod{k}");
                let _ = writeln!(
                    cedar,
                    "@id(\"x{k}\")\nforbid (principal, action in AgentSpace::Action::\"http\", resource) when {{ context.headers has \"x-env\" && context.headers[\"x-env\"] == \"{e}\" }};"
                );
                envs.push(e);
            }
        }
    }
    let data = serde_json::json!({"forbid": {"hosts": hosts, "labels": labels, "hours": hours, "envs": envs}});
    (cedar, data)
}

const REGO: &str = r#"
package agentspace

import rego.v1

rules := data.defs[input.agent].rules

matched contains i if {
	some i, r in rules
	input.host in r.hosts
	input.method in r.methods
	path_ok(r)
}

path_ok(r) if input.path == r.exact
path_ok(r) if startswith(input.path, r.prefix)

forbidden if input.host in data.forbid.hosts
forbidden if {
	input.method == "POST"
	some l in input.labels
	l in data.forbid.labels
}
forbidden if {
	some h in data.forbid.hours
	input.hour == h.hour
	startswith(input.path, h.prefix)
}
forbidden if input.headers["x-env"] in data.forbid.envs

needs_approval if {
	some i in matched
	rules[i].approval
	input.body.amount > 1000
}

decision := "deny" if {
	forbidden
} else := "approval-required" if {
	count(matched) > 0
	needs_approval
} else := "allow" if {
	count(matched) > 0
} else := "deny"
"#;

fn rego_data(extra: serde_json::Value) -> serde_json::Value {
    let mut defs = serde_json::Map::new();
    for d in 0..DEFINITIONS {
        let rules: Vec<serde_json::Value> = (0..RULES)
            .map(|r| {
                serde_json::json!({
                    "hosts": [host(d, r)],
                    "methods": rule_methods(r),
                    "exact": format!("/api/v{r}"),
                    "prefix": format!("/api/v{r}/"),
                    "approval": r % 5 == 0,
                })
            })
            .collect();
        defs.insert(format!("agent{d}"), serde_json::json!({"rules": rules}));
    }
    let mut data = extra;
    data["defs"] = serde_json::Value::Object(defs);
    data
}

fn request(rng: &mut Rng, unix: u64) -> (usize, Request, String) {
    let d = rng.below(DEFINITIONS);
    let r = rng.below(RULES);
    let aimed = rng.below(10) < 8;
    let (h, method, path) = if aimed {
        let m = rule_methods(r)[rng.below(2)];
        let p = match rng.below(3) {
            0 => format!("/api/v{r}"),
            1 => format!("/api/v{r}/items/{}", rng.below(1000)),
            _ => format!("/api/v{r}/admin/{}", rng.below(10)),
        };
        (host(d, r), m, p)
    } else {
        (
            format!("other{}.example", rng.below(50)),
            METHODS[rng.below(4)],
            format!("/x/{}", rng.below(100)),
        )
    };
    let mut ctx = RequestContext {
        time: Some(unix + 3600 * rng.below(24) as u64),
        ..RequestContext::default()
    };
    if rng.below(4) == 0 {
        ctx.labels.insert(format!("label{}", 1 + 4 * rng.below(13)));
    }
    if rng.below(4) == 0 {
        ctx.headers
            .insert("x-env".into(), format!("prod{}", 3 + 4 * rng.below(13)));
    }
    if rng.below(2) == 0 {
        ctx.body = Some(serde_json::json!({"amount": rng.below(2000), "memo": "invoice 7"}));
    }
    let principal = Principal::new(
        Name::new("acme").unwrap(),
        UserId::new("alice@acme.example").unwrap(),
        Actor::new(
            Name::new(&format!("agent{d}")).unwrap(),
            TaskRef::new(&format!("t{d}")).unwrap(),
        ),
    );
    let hour = (ctx.time.unwrap() % 86_400) / 3600;
    let input = serde_json::json!({
        "agent": format!("agent{d}"), "method": method, "host": h, "path": path,
        "labels": ctx.labels, "headers": ctx.headers, "body": ctx.body.clone().unwrap_or(serde_json::json!({})),
        "hour": hour,
    });
    let req = Request {
        principal,
        action: Action::Http {
            method: method.to_owned(),
        },
        resource: Resource {
            host: Some(h),
            port: Some(443),
            path: Some(path),
            ..Resource::default()
        },
        context: ctx,
    };
    (d, req, input.to_string())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (cedar_extra, extra_data) = extra_policies();
    std::fs::write(dir.path().join("shared.cedar"), &cedar_extra).unwrap();
    let load_start = Instant::now();
    let mut compiled = Vec::new();
    let mut definitions = Vec::new();
    for d in 0..DEFINITIONS {
        let path = dir.path().join(format!("agent{d}.yaml"));
        let text = definition_yaml(d);
        std::fs::write(&path, &text).unwrap();
        let def = Definition::parse(&path, &text).unwrap();
        compiled.push(CompiledPolicies::compile(&def).unwrap());
        definitions.push(def);
    }
    let cedar_load = load_start.elapsed();

    let load_start = Instant::now();
    let mut rego = regorus::Engine::new();
    rego.add_policy("agentspace.rego".into(), REGO.into())
        .unwrap();
    rego.add_data_json(&rego_data(extra_data).to_string())
        .unwrap();
    let rego_load = load_start.elapsed();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base_unix = 1_767_571_200; // 2026-01-05 00:00 UTC
    let requests: Vec<(usize, Request, String)> = (0..REQUESTS)
        .map(|_| request(&mut rng, base_unix))
        .collect();

    // Warm up both, and check that they agree on every request.
    let mut counts = std::collections::BTreeMap::new();
    for (d, req, input) in &requests {
        let c = compiled[*d].evaluate(req);
        rego.set_input_json(input).unwrap();
        let r = rego.eval_rule("data.agentspace.decision".into()).unwrap();
        let r = r.as_string().map(|s| s.to_string()).unwrap_or_default();
        assert_eq!(c.kind(), r, "engines disagree on {input}: cedar {c}");
        *counts.entry(c.kind()).or_insert(0usize) += 1;
    }

    let mut cedar_times = Vec::with_capacity(REQUESTS);
    let mut rego_times = Vec::with_capacity(REQUESTS);
    // Interleave the two so that machine noise hits both alike.
    for (d, req, input) in &requests {
        let t = Instant::now();
        let decision: Decision = compiled[*d].evaluate(req);
        cedar_times.push(t.elapsed());
        std::hint::black_box(decision);
        let t = Instant::now();
        rego.set_input_json(input).unwrap();
        let v = rego.eval_rule("data.agentspace.decision".into()).unwrap();
        rego_times.push(t.elapsed());
        std::hint::black_box(v);
    }

    // The same requests, each from a task never seen before: the per-definition cache of
    // Cedar entities (user, task, resource) misses every time.
    let cold: Vec<(usize, Request)> = requests
        .iter()
        .take(5_000)
        .enumerate()
        .map(|(i, (d, req, _))| {
            let mut req = req.clone();
            req.principal = Principal::new(
                Name::new("acme").unwrap(),
                UserId::new("alice@acme.example").unwrap(),
                Actor::new(
                    Name::new(&format!("agent{d}")).unwrap(),
                    TaskRef::new(&format!("cold{i}")).unwrap(),
                ),
            );
            (*d, req)
        })
        .collect();
    let mut cold_times = Vec::with_capacity(cold.len());
    for (d, req) in &cold {
        let t = Instant::now();
        let decision = compiled[*d].evaluate(req);
        cold_times.push(t.elapsed());
        std::hint::black_box(decision);
    }

    // The full decision point: revocation check, loop breaker, SQLite budgets (one
    // IMMEDIATE transaction per allowed request).
    let state = dir.path().join("state");
    let engines: Vec<PolicyEngine> = definitions
        .iter()
        .zip(compiled.iter())
        .map(|(def, c)| PolicyEngine::with_policies(def, c.clone(), &state).unwrap())
        .collect();
    let mut engine_times = Vec::with_capacity(REQUESTS);
    for (d, req, _) in requests.iter().take(5_000) {
        let t = Instant::now();
        let decision = engines[*d].decide(req);
        engine_times.push(t.elapsed());
        std::hint::black_box(decision);
    }

    for v in [
        &mut cedar_times,
        &mut rego_times,
        &mut cold_times,
        &mut engine_times,
    ] {
        v.sort();
    }
    let row = |name: &str, v: &[Duration]| {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            v.len(),
            us(percentile(v, 0.5)),
            us(percentile(v, 0.99)),
            us(*v.last().unwrap())
        );
    };
    println!(
        "load: {DEFINITIONS} definitions x {RULES} rules + {EXTRA} shared policies; Cedar compile+validate {:.0} ms, Rego load {:.0} ms",
        cedar_load.as_secs_f64() * 1000.0,
        rego_load.as_secs_f64() * 1000.0
    );
    println!("outcomes: {counts:?} (both engines agree on all {REQUESTS})");
    println!("policies per Cedar definition: {}", compiled[0].len());
    println!();
    println!("| engine | decisions | p50 µs | p99 µs | max µs |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    row(
        "Agent Space, Cedar evaluation (`CompiledPolicies::evaluate`)",
        &cedar_times,
    );
    row(
        "Rego, regorus (`set_input_json` + `eval_rule`)",
        &rego_times,
    );
    row(
        "Agent Space, Cedar evaluation, every request from a new task (entity cache misses)",
        &cold_times,
    );
    row(
        "Agent Space, full decision (`PolicyEngine::decide`: + revocation, loop, SQLite budgets)",
        &engine_times,
    );
    println!();
    println!(
        "ratio Rego / Cedar: p50 {:.2}x, p99 {:.2}x",
        us(percentile(&rego_times, 0.5)) / us(percentile(&cedar_times, 0.5)),
        us(percentile(&rego_times, 0.99)) / us(percentile(&cedar_times, 0.99)),
    );
    let _ = Path::new(".");
}
