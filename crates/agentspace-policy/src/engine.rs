//! The decision point the gateway calls: Cedar plus revocation, the loop breaker and
//! budgets, with state shared through `<state>/policy/`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use agentspace_core::{Definition, Principal};

use crate::budget::{self, BudgetStore, Charge, Counter};
use crate::compile::CompiledPolicies;
use crate::decision::{Decision, DenyReason};
use crate::error::PolicyError;
use crate::evaluate::describe;
use crate::flow::Taint;
use crate::request::{Action, Request, Usage};
use crate::revocation::Revocations;
use crate::store;

/// Most tasks the loop breaker remembers at once; past this it forgets them all, which
/// at worst lets a looping task repeat `loopLimit` more times.
const LOOP_MEMORY: usize = 65_536;

/// The decision point for one agent definition.
///
/// `decide` never fails: a store that cannot be read or written, a poisoned lock or a
/// Cedar error is a [`Decision::Deny`] with reason [`DenyReason::Error`].
pub struct PolicyEngine {
    definition: Definition,
    policies: CompiledPolicies,
    budgets: BudgetStore,
    revocations: Revocations,
    /// Per task: the digest of its last request and how many times in a row it came.
    loops: Mutex<HashMap<String, ([u8; 32], u32)>>,
    /// Per task: the data labels its session has read (see [`crate::flow`]).
    taint: Taint,
}

impl PolicyEngine {
    /// Compiles `definition` (reading its `spec.policies` files) and opens the budget,
    /// revocation and taint stores under `<state_dir>/policy/`.
    pub fn load(definition: &Definition, state_dir: &Path) -> Result<Self, PolicyError> {
        let policies = CompiledPolicies::compile(definition)?;
        Self::with_policies(definition, policies, state_dir)
    }

    /// Like [`PolicyEngine::load`], with revocations kept in `revocations` instead of the
    /// state directory's (a store several hosts share).
    pub fn load_with_revocations(
        definition: &Definition,
        state_dir: &Path,
        revocations: Revocations,
    ) -> Result<Self, PolicyError> {
        let policies = CompiledPolicies::compile(definition)?;
        Self::assemble(definition, policies, state_dir, revocations)
    }

    /// Like [`PolicyEngine::load`] with policies compiled already.
    pub fn with_policies(
        definition: &Definition,
        policies: CompiledPolicies,
        state_dir: &Path,
    ) -> Result<Self, PolicyError> {
        Self::assemble(
            definition,
            policies,
            state_dir,
            Revocations::open(state_dir)?,
        )
    }

    fn assemble(
        definition: &Definition,
        policies: CompiledPolicies,
        state_dir: &Path,
        revocations: Revocations,
    ) -> Result<Self, PolicyError> {
        Ok(Self {
            definition: definition.clone(),
            policies,
            budgets: BudgetStore::open(state_dir)?,
            revocations,
            loops: Mutex::new(HashMap::new()),
            taint: Taint::open(state_dir)?,
        })
    }

    /// The compiled policies.
    pub fn policies(&self) -> &CompiledPolicies {
        &self.policies
    }

    /// The definition's tool servers and flow rules (what the MCP gateway serves).
    pub fn tools(&self) -> &agentspace_core::Tools {
        &self.definition.governance.tools
    }

    /// The agent definition this engine decides for (the gateway reads its egress rules'
    /// TLS mode and `internal` flag from it).
    pub fn definition(&self) -> &Definition {
        &self.definition
    }

    /// Decides `request`: revocation, loop breaker, time budget, Cedar (default deny,
    /// forbid overrides permit, `@approval` forbids hold), capability revocation, then an
    /// atomic charge of one request to every budget that applies. Only
    /// [`Decision::Allow`] charges.
    pub fn decide(&self, request: &Request) -> Decision {
        self.decide_inner(request, false)
    }

    /// Decides a request a human has approved: as [`PolicyEngine::decide`] without the
    /// `@approval` policies. Everything else (revocation, budgets, forbids) still applies.
    pub fn decide_approved(&self, request: &Request) -> Decision {
        self.decide_inner(request, true)
    }

    fn decide_inner(&self, request: &Request, approved: bool) -> Decision {
        match self.try_decide(request, approved) {
            Ok(d) => d,
            Err(e) => Decision::deny(
                DenyReason::Error,
                format!(
                    "{} is denied because the policy state is unavailable: {e}",
                    describe(request)
                ),
            ),
        }
    }

    fn try_decide(&self, request: &Request, approved: bool) -> Result<Decision, PolicyError> {
        // The session's labels join the request's own (those the gateway found in it),
        // so policies see them as `context.labels` and the flow check covers both.
        let tainted = self.taint.with_session_labels(request)?;
        let request = tainted.as_ref().unwrap_or(request);
        let p = &request.principal;
        if let Some(why) = self.revocations.check(p, &[])? {
            return Ok(Decision::deny(
                DenyReason::Revoked,
                format!("{} is denied: {why}", describe(request)),
            ));
        }
        // A passed-through connection is not a request: clients open one per request or
        // reconnect at will, and its host and port are all there is to compare. A tool
        // server's request is not the agent's: counting it would break the agent's run
        // of identical calls (call, sampling, call, ...) and hide its loop.
        if !matches!(
            request.action,
            Action::Tunnel | Action::McpServerRequest { .. }
        ) && let Some(d) = self.loop_check(request)
        {
            return Ok(d);
        }

        let now_ms = store::unix_millis();
        let tenant = p.tenant().as_str();
        let task = p.current().task.as_str();
        let task_scope = budget::task_scope(tenant, task);
        let started = self.budgets.task_started(&task_scope, now_ms)?;
        let seconds = u64::try_from((now_ms - started).max(0) / 1000).unwrap_or(0);
        let gov = &self.definition.governance;
        if let Some(limit) = gov.budgets.task_time
            && now_ms - started >= i64::try_from(limit.as_millis()).unwrap_or(i64::MAX)
        {
            return Ok(Decision::deny(
                DenyReason::Budget,
                format!(
                    "{} is denied: the task's time budget of {}s is spent",
                    describe(request),
                    limit.as_secs()
                ),
            ));
        }
        let task_counters = counters(&task_scope, 0);
        let usage = budget::usage_from(&self.budgets.read(&task_counters)?, seconds);

        let now = request.context.time.unwrap_or_else(store::unix_now);
        let evaluated = self.policies.evaluate_full(request, usage, now, approved);
        let Decision::Allow { .. } = &evaluated.decision else {
            return Ok(evaluated.decision);
        };
        if let Some(denied) =
            crate::flow::check(&gov.tools, request, &evaluated.capabilities, approved)
        {
            return Ok(denied);
        }
        if let Some(why) = self.revocations.check(p, &evaluated.capabilities)? {
            return Ok(Decision::deny(
                DenyReason::Revoked,
                format!("{} is denied: {why}", describe(request)),
            ));
        }
        if !charges_budgets(&request.action) {
            return Ok(evaluated.decision);
        }

        // Bytes and tokens are reported after the fact, so they can only stop the next
        // request; requests are charged here, all or nothing.
        let mut charges = Vec::new();
        let mut spent = Vec::new();
        let mut add = |scope: &str, bucket: i64, quota: &agentspace_core::Quota| {
            charges.push(Charge {
                counter: Counter {
                    scope: scope.to_owned(),
                    bucket,
                    metric: "requests",
                },
                amount: 1,
                limit: quota.requests,
            });
            for (metric, limit) in [("bytes", quota.bytes), ("tokens", quota.tokens)] {
                if let Some(limit) = limit {
                    spent.push((
                        Counter {
                            scope: scope.to_owned(),
                            bucket,
                            metric,
                        },
                        limit,
                    ));
                }
            }
        };
        add(&task_scope, 0, &gov.budgets.task);
        if let Some(w) = &gov.budgets.per_user {
            let scope =
                budget::user_scope(tenant, self.definition.name.as_str(), p.user().as_str());
            add(&scope, window_bucket(store::unix_now(), w.window), &w.quota);
        }
        for cap in &evaluated.capabilities {
            if let Some(rule) = gov.egress.iter().find(|r| r.name.as_str() == cap) {
                add(
                    &budget::capability_scope(tenant, task, cap),
                    0,
                    &rule.budget,
                );
            }
        }
        let spent_counters: Vec<Counter> = spent.iter().map(|(c, _)| c.clone()).collect();
        let values = self.budgets.read(&spent_counters)?;
        for ((counter, limit), used) in spent.iter().zip(values) {
            if used >= *limit {
                return Ok(budget_denial(request, counter, used, *limit));
            }
        }
        if let Some(ex) = self.budgets.charge(&charges)? {
            return Ok(budget_denial(request, &ex.counter, ex.used, ex.limit));
        }
        Ok(evaluated.decision)
    }

    /// Records bytes and LLM tokens the gateway measured for an allowed request, against
    /// the task, the user's window and the given capabilities. Unconditional (it has
    /// happened); once a limit is reached, the next request is denied with `budget`.
    pub fn record_usage(
        &self,
        principal: &Principal,
        capabilities: &[String],
        usage: Usage,
    ) -> Result<(), PolicyError> {
        let tenant = principal.tenant().as_str();
        let task = principal.current().task.as_str();
        let gov = &self.definition.governance;
        let mut scopes = vec![(budget::task_scope(tenant, task), 0)];
        if let Some(w) = &gov.budgets.per_user {
            scopes.push((
                budget::user_scope(
                    tenant,
                    self.definition.name.as_str(),
                    principal.user().as_str(),
                ),
                window_bucket(store::unix_now(), w.window),
            ));
        }
        for cap in capabilities {
            scopes.push((budget::capability_scope(tenant, task, cap), 0));
        }
        let mut charges = Vec::new();
        for (scope, bucket) in scopes {
            for (metric, amount) in [("bytes", usage.bytes), ("tokens", usage.tokens)] {
                if amount > 0 {
                    charges.push(Charge {
                        counter: Counter {
                            scope: scope.clone(),
                            bucket,
                            metric,
                        },
                        amount,
                        limit: None,
                    });
                }
            }
        }
        self.budgets.charge(&charges).map(|_| ())
    }

    /// Taints the session of `principal`'s task with `labels` (read from a tool server's
    /// result): from now on, every action of the task, and of every task it starts, is
    /// allowed only to destinations cleared for them. Durable (`<state>/policy/taint.db`)
    /// before it returns. Returns the labels that are new to the session.
    pub fn taint(
        &self,
        principal: &Principal,
        labels: impl IntoIterator<Item = String>,
    ) -> Result<std::collections::BTreeSet<String>, PolicyError> {
        self.taint.add(principal, labels)
    }

    /// The data labels the session of `principal`'s task carries: its own and those of
    /// the tasks that started it.
    pub fn session_labels(
        &self,
        principal: &Principal,
    ) -> Result<std::collections::BTreeSet<String>, PolicyError> {
        self.taint.labels(principal)
    }

    /// What a task has used so far (requests, bytes, tokens, seconds).
    pub fn task_usage(&self, principal: &Principal) -> Result<Usage, PolicyError> {
        let scope = budget::task_scope(
            principal.tenant().as_str(),
            principal.current().task.as_str(),
        );
        let values = self.budgets.read(&counters(&scope, 0))?;
        Ok(budget::usage_from(&values, 0))
    }

    /// Counts `request` in its task's run of identical requests; denies past the limit.
    fn loop_check(&self, request: &Request) -> Option<Decision> {
        let limit = self.definition.governance.loop_limit;
        let key = format!(
            "{}/{}",
            request.principal.tenant(),
            request.principal.current().task
        );
        let digest = request.digest();
        let Ok(mut loops) = self.loops.lock() else {
            return Some(Decision::deny(
                DenyReason::Error,
                "the loop breaker's state is unavailable (a thread panicked)",
            ));
        };
        if loops.len() >= LOOP_MEMORY && !loops.contains_key(&key) {
            loops.clear();
        }
        let entry = loops.entry(key).or_insert((digest, 0));
        if entry.0 == digest {
            entry.1 = entry.1.saturating_add(1);
        } else {
            *entry = (digest, 1);
        }
        let count = entry.1;
        (count > limit).then(|| {
            Decision::deny(
                DenyReason::Loop,
                format!(
                    "{} is denied: the same request came {count} times in a row, more than the loop limit of {limit}",
                    describe(request)
                ),
            )
        })
    }
}

fn counters(scope: &str, bucket: i64) -> Vec<Counter> {
    ["requests", "bytes", "tokens"]
        .into_iter()
        .map(|metric| Counter {
            scope: scope.to_owned(),
            bucket,
            metric,
        })
        .collect()
}

fn window_bucket(now: u64, window: std::time::Duration) -> i64 {
    let secs = window.as_secs().max(1);
    i64::try_from(now / secs).unwrap_or(i64::MAX)
}

/// HTTP and MCP calls (and passed-through connections, each counted as one request) are
/// what budgets count; DNS lookups and spawns are not.
fn charges_budgets(action: &Action) -> bool {
    match action {
        Action::Http { .. }
        | Action::Mcp
        | Action::McpResource
        | Action::McpPrompt
        | Action::Tunnel => true,
        Action::Dns | Action::Spawn | Action::McpServerRequest { .. } => false,
    }
}

fn budget_denial(request: &Request, counter: &Counter, used: u64, limit: u64) -> Decision {
    let whose = if counter.scope.starts_with("cap/") {
        format!(
            "capability `{}`",
            counter.scope.rsplit('/').next().unwrap_or("?")
        )
    } else if counter.scope.starts_with("user/") {
        "this user's window for this agent".to_owned()
    } else {
        "the task".to_owned()
    };
    Decision::deny(
        DenyReason::Budget,
        format!(
            "{} is denied: the {} budget of {whose} is spent ({used} of {limit} used)",
            describe(request),
            counter.metric
        ),
    )
}
