//! `tls: passthrough` rules: a passed-through connection is decided as the `tunnel`
//! action on host and port only, charged as one request, and never as HTTP.

use agentspace_policy::{
    Action, CompiledPolicies, Decision, DenyReason, PolicyEngine, Request, Resource,
};
use pretty_assertions::assert_eq;

use super::helpers::*;

const PINNED: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: pinner, tenant: acme}
spec:
  egress:
    - name: pinned
      hosts: [pinned.example.com]
      tls: passthrough
      budget: {requests: 5}
    - name: api
      hosts: [api.example.com]
  loopLimit: 1
";

fn tunnel(host: &str, port: u16) -> Request {
    Request {
        principal: principal("pinner", "t1"),
        action: Action::Tunnel,
        resource: Resource {
            host: Some(host.to_owned()),
            port: Some(port),
            ..Resource::default()
        },
        context: Default::default(),
    }
}

#[test]
fn a_passthrough_rule_permits_tunnels_to_its_hosts_and_nothing_else() {
    let f = Fixture::new(PINNED, &[]);
    let text = CompiledPolicies::compile(&f.definition)
        .unwrap()
        .cedar_text();
    assert!(
        text.contains("action == AgentSpace::Action::\"tunnel\""),
        "{text}"
    );
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    // Repeated connections are not a loop (loopLimit is 1 here).
    for _ in 0..3 {
        match e.decide(&tunnel("pinned.example.com", 443)) {
            Decision::Allow { capabilities, .. } => assert_eq!(capabilities, ["pinned"]),
            other => panic!("{other:?}"),
        }
    }
    // Not intercepted HTTP on the passthrough host, and no tunnel to intercepted hosts.
    let get = http(&principal("pinner", "t1"), "GET", "pinned.example.com", "/");
    assert_eq!(e.decide(&get).deny_reason(), Some(DenyReason::NotPermitted));
    assert_eq!(
        e.decide(&tunnel("api.example.com", 443)).deny_reason(),
        Some(DenyReason::NotPermitted)
    );
    // Each tunnel is one request of the capability's budget.
    for _ in 0..2 {
        assert!(matches!(
            e.decide(&tunnel("pinned.example.com", 8443)),
            Decision::Allow { .. }
        ));
    }
    assert_eq!(
        e.decide(&tunnel("pinned.example.com", 443)).deny_reason(),
        Some(DenyReason::Budget)
    );
}

#[test]
fn extra_policies_can_read_a_tunnels_host_and_port() {
    let f = Fixture::new(
        &format!("{PINNED}  policies: [./ports.cedar]\n"),
        &[(
            "ports.cedar",
            "@id(\"only-443\") forbid (principal, action == AgentSpace::Action::\"tunnel\", resource) when { context.port != 443 };",
        )],
    );
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    assert!(matches!(
        e.decide(&tunnel("pinned.example.com", 443)),
        Decision::Allow { .. }
    ));
    let d = e.decide(&tunnel("pinned.example.com", 8443));
    assert_eq!(d.deny_reason(), Some(DenyReason::Forbidden), "{d:?}");
}
