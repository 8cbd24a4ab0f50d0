//! `agentspace policy test`: a table of requests and the decisions expected of them.

use std::fmt::Write as _;

use agentspace_core::Principal;
use serde::Deserialize;

use crate::compile::CompiledPolicies;
use crate::decision::Decision;
use crate::request::Request;

/// A file of test cases (YAML).
///
/// ```yaml
/// principal: {tenant: acme, user: alice, chain: [{agent: credit-officer, task: t1}]}
/// cases:
///   - name: scoring is allowed
///     request: {action: {http: {method: POST}}, resource: {host: scoring.internal.example, path: /v1/score}}
///     expect: allow
///   - name: other hosts are denied
///     request: {action: {http: {method: GET}}, resource: {host: evil.example}}
///     expect: deny
///     reason: not-permitted
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCases {
    /// The principal of every case that does not give its own.
    #[serde(default)]
    pub principal: Option<Principal>,
    /// The cases, run in order.
    pub cases: Vec<TestCase>,
}

impl TestCases {
    /// Parses a YAML file of cases; the error names the line and field.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }
}

/// One case.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// A name for the report.
    pub name: String,
    /// The request, as in `policy explain` (its `principal` may be omitted).
    pub request: serde_json::Value,
    /// `allow`, `deny` or `approval-required`.
    pub expect: String,
    /// For `deny`: the expected reason code (`not-permitted`, `forbidden`, ...).
    #[serde(default)]
    pub reason: Option<String>,
    /// The determining policies, if the case checks them (exact set).
    #[serde(default)]
    pub policies: Option<Vec<String>>,
}

/// The outcome of running a file of cases.
#[derive(Clone, Debug, Default)]
pub struct TestReport {
    /// Cases that matched.
    pub passed: usize,
    /// Mismatches, each as a short diff.
    pub failures: Vec<String>,
}

impl TestReport {
    /// Whether every case matched.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs `cases` against `policies` with [`CompiledPolicies::evaluate`] (Cedar only: no
/// budget store, loop breaker or revocations; `context.usage` may be set per case).
pub fn run_cases(policies: &CompiledPolicies, cases: &TestCases) -> TestReport {
    let mut report = TestReport::default();
    for case in &cases.cases {
        let mut value = case.request.clone();
        if let (Some(p), Some(obj)) = (&cases.principal, value.as_object_mut())
            && !obj.contains_key("principal")
        {
            obj.insert(
                "principal".to_owned(),
                serde_json::to_value(p).unwrap_or_default(),
            );
        }
        let request: Request = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                report
                    .failures
                    .push(format!("FAIL {}: the request is malformed: {e}", case.name));
                continue;
            }
        };
        let decision = policies.evaluate(&request);
        let mut diff = String::new();
        if decision.kind() != case.expect {
            let _ = writeln!(
                diff,
                "  - decision: {}\n  + decision: {}",
                case.expect,
                decision.kind()
            );
        }
        if let Some(reason) = &case.reason {
            let actual = decision.deny_reason().map_or("-", |r| r.code());
            if actual != reason {
                let _ = writeln!(diff, "  - reason: {reason}\n  + reason: {actual}");
            }
        }
        if let Some(expected) = &case.policies {
            let mut e = expected.clone();
            e.sort();
            let mut a = decision.policies().to_vec();
            a.sort();
            if e != a {
                let _ = writeln!(
                    diff,
                    "  - policies: [{}]\n  + policies: [{}]",
                    e.join(", "),
                    a.join(", ")
                );
            }
        }
        if diff.is_empty() {
            report.passed += 1;
        } else {
            report.failures.push(format!(
                "FAIL {}\n{diff}  ({})",
                case.name,
                describe(&decision)
            ));
        }
    }
    report
}

fn describe(d: &Decision) -> String {
    d.to_string()
}
