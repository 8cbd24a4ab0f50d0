//! Rules naming internal services: `internal: true` lets an exactly named host reach a
//! loopback or private address; nothing else does, and every refusal is audited.

use pretty_assertions::assert_eq;

use super::helpers::Harness;

const INTERNAL: &str = r#"apiVersion: agentspace/v1
kind: Agent
metadata:
  name: shopper
  tenant: acme
spec:
  egress:
    - name: db
      hosts: [localhost]
      internal: true
    - name: loopback-address
      hosts: ["127.0.0.1"]
      internal: true
    - name: not-internal
      hosts: ["::1"]
    - name: metadata
      hosts: ["169.254.169.254"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_rule_reaches_the_service_it_names_and_nothing_else() {
    let h = Harness::start_with(INTERNAL).await;
    let port = h.upstream_plain.port();
    // Named internal service: allowed, to the address that was checked.
    for url in [
        format!("http://localhost:{port}/v1/db"),
        format!("http://127.0.0.1:{port}/v1/by-address"),
    ] {
        let out = h.curl(&[&url]).await;
        assert_eq!(out.status, 200, "{url}: {}", out.body);
    }
    // A name that resolves to loopback without `internal: true` (DNS-rebinding style),
    // the IPv6 loopback and cloud metadata: refused, audited, never connected.
    for url in [
        format!("http://[::1]:{port}/v1/v6"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let out = h.curl(&[&url]).await;
        assert_eq!(out.status, 403, "{url}: {}", out.body);
        let body = out.json();
        assert_eq!(body["code"], "ssrf", "{url}: {body}");
        assert!(
            body["reason"].as_str().unwrap().contains("internal: true"),
            "{body}"
        );
    }
    let seen = h.upstream_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let events = h.events().await;
    assert_eq!(events.len(), 4);
    assert!(
        events[..2]
            .iter()
            .all(|e| e["decision"] == "allow" && e["details"]["internal"] == true)
    );
    assert!(
        events[2..]
            .iter()
            .all(|e| e["decision"] == "deny" && e["details"]["code"] == "ssrf")
    );
    assert_eq!(h.verified_events().await, 4);

    // The same name without `internal: true`: it resolves to loopback (as a rebinding
    // name would), so it is refused and audited.
    let h = Harness::start_with(&INTERNAL.replace("      internal: true\n", "")).await;
    let out = h
        .curl(&[&format!("http://localhost:{port}/v1/rebound")])
        .await;
    assert_eq!(out.status, 403, "{}", out.body);
    assert_eq!(out.json()["code"], "ssrf");
    let events = h.events().await;
    assert_eq!(events[0]["decision"], "deny");
    assert_eq!(events[0]["details"]["code"], "ssrf");
    assert!(h.upstream_seen.lock().unwrap().is_empty());
}

/// Internal services learn who a call is for: each request of an `internal: true` rule
/// carries a one-time `Agentspace-Identity` token that verifies against the tenant's keys
/// and names the user and the agent; a token the agent forges is dropped, and a rule
/// with `identity: false` sends none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_receive_a_verifiable_per_call_identity_and_never_the_agents() {
    let h = Harness::start_with(INTERNAL).await;
    let port = h.upstream_plain.port();
    let forged = "Agentspace-Identity: eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    let url = format!("http://localhost:{port}/v1/who?x=1");
    let out = h.curl(&["-H", forged, &url]).await;
    assert_eq!(out.status, 200, "{}", out.body);
    let token = out.json()["headers"]["agentspace-identity"]
        .as_str()
        .unwrap_or_else(|| panic!("no identity token upstream: {}", out.body))
        .to_owned();
    assert!(
        !token.contains("eyJzdWIiOiJhZG1pbiJ9"),
        "the forged token went through"
    );
    let state = h.dir.path().join("state");
    let identity = agentspace_identity::Identity::open(&state);
    let tenant = agentspace_core::Name::new("acme").unwrap();
    let target =
        agentspace_identity::CallTarget::new("GET", &format!("http://localhost:{port}/v1/who"))
            .unwrap();
    let expected = agentspace_identity::Expected::call(&tenant, &target);
    let verified = identity
        .verify(&token, &expected, &agentspace_identity::NothingRevoked)
        .unwrap_or_else(|e| panic!("{e}: {token}"));
    assert_eq!(verified.principal(), &super::helpers::principal("t1"));
    // One-time: the service refuses it a second time.
    assert!(
        identity
            .verify(&token, &expected, &agentspace_identity::NothingRevoked)
            .is_err()
    );
    // The audit event names the token's id, not the token.
    let events = h.events().await;
    let jti = events[0]["details"]["identity_jti"].as_str().unwrap();
    assert_eq!(jti, verified.claims().jti);
    assert!(!events[0].to_string().contains(&token));

    assert_eq!(h.verified_events().await, 1);

    // `identity: false`: no token, and the agent's forged one is still dropped.
    let h = Harness::start_with(&INTERNAL.replacen(
        "      internal: true\n",
        "      internal: true\n      identity: false\n",
        1,
    ))
    .await;
    let out = h
        .curl(&["-H", forged, &format!("http://localhost:{port}/v1/quiet")])
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(
        out.json()["headers"].get("agentspace-identity"),
        None,
        "{}",
        out.body
    );
}
