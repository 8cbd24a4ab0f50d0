//! Credential brokering: the upstream sees the credential, the agent never does.

use agentspace_gateway::{Apply, Credential};
use pretty_assertions::assert_eq;

use super::helpers::{AGENT, Harness};

const SECRET: &[u8] = b"sk_live_5uP3r-S3cr3t";
const SECRET_STR: &str = "sk_live_5uP3r-S3cr3t";

fn bearer() -> Credential {
    Credential {
        secret: "stripe-key".into(),
        apply: Apply::Header {
            name: "Authorization".into(),
            format: "Bearer {}".into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_brokered_credential_and_the_agent_never_sees_it() {
    let h = Harness::start_full(AGENT, vec![("items", bearer())], &[("stripe-key", SECRET)]).await;
    for version in ["--http1.1", "--http2"] {
        let out = h
            .curl(&[
                version,
                "-H",
                "Authorization: Bearer agent-forged",
                "-H",
                "X-Api-Key: agent-forged",
                "https://api.example.com/v1/items/7",
            ])
            .await;
        assert_eq!(out.status, 200, "{version}: {}", out.body);
        // The echo reflects what the upstream received: the brokered credential, which
        // the gateway redacts on the way back.
        let seen = out.json();
        assert_eq!(
            seen["headers"]["authorization"], "Bearer [REDACTED]",
            "{version}"
        );
        assert!(seen["headers"].get("x-api-key").is_none());
        assert!(!out.body.contains(SECRET_STR) && !out.headers.contains(SECRET_STR));
    }
    let upstream = h.upstream_seen.lock().unwrap().clone();
    assert_eq!(upstream.len(), 2);
    for line in &upstream {
        assert!(
            line.contains(&format!("authorization=Bearer {SECRET_STR} ")),
            "{line}"
        );
    }
    // The audit log names the secret, never its value.
    let events = h.events().await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(SECRET_STR));
    assert_eq!(events[0]["details"]["credential"], "stripe-key");
    // Requests under other capabilities carry no credential.
    let out = h.curl(&["http://plain.example.com/x"]).await;
    assert_eq!(out.status, 200);
    assert!(
        h.upstream_seen
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .contains("authorization=- ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_credential_replaces_the_agents_and_is_redacted_from_the_echo() {
    let query = Credential {
        secret: "maps-key".into(),
        apply: Apply::Query {
            param: "key".into(),
        },
    };
    let h = Harness::start_full(AGENT, vec![("items", query)], &[("maps-key", SECRET)]).await;
    let out = h
        .curl(&["https://api.example.com/v1/items?key=forged&q=1"])
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.json()["query"], "q=1&key=[REDACTED]");
    let upstream = h.upstream_seen.lock().unwrap().clone();
    assert!(
        upstream[0].contains(&format!("/v1/items?q=1&key={SECRET_STR} ")),
        "{upstream:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_denies_the_request_instead_of_sending_it_bare() {
    let h = Harness::start_full(AGENT, vec![("items", bearer())], &[]).await;
    let out = h.curl(&["https://api.example.com/v1/items"]).await;
    assert_eq!(out.status, 403, "{}", out.body);
    let body = out.json();
    assert_eq!(body["code"], "credential", "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("stripe-key"),
        "{body}"
    );
    assert!(h.upstream_seen.lock().unwrap().is_empty());
    assert_eq!(h.events().await[0]["decision"], "deny");
}
