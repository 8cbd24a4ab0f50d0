//! Tool allowlists, tool approvals and data-flow rules (taint).

use agentspace_policy::{
    Action, Decision, DenyReason, PolicyEngine, Request, RequestContext, Resource,
};
use pretty_assertions::assert_eq;

use super::helpers::*;

/// The credit officer's tools, as issue 6 writes them, with the destinations its flow
/// rule names.
const TOOLS: &str = "apiVersion: agentspace/v1
kind: Agent
metadata: {name: credit-officer, tenant: acme}
spec:
  egress:
    - name: scoring
      hosts: [scoring.internal.example]
    - name: public-web
      hosts: [www.example.org]
  tools:
    - server: customer-db
      command: [python3, ./servers/customer_db.py]
      allow: [lookup_customer]
      labels: [pii]
    - server: templates
      command: [python3, ./servers/templates.py]
      allow: [render_letter]
    - server: hr
      url: http://hr.internal.example/mcp
      allow: []
    - server: mail
      command: [python3, ./servers/mail.py]
      allow: [send_mail]
      clearedFor: []
      approval: {when: 'context.arguments has to && context.arguments.to like \"*@external.example\"', timeout: 10m}
  flows:
    - label: pii
      mayFlowTo: [scoring, templates]
";

fn mcp(
    p: &agentspace_core::Principal,
    server: &str,
    tool: &str,
    args: serde_json::Value,
) -> Request {
    Request {
        principal: p.clone(),
        action: Action::Mcp,
        resource: Resource {
            server: Some(server.to_owned()),
            tool: Some(tool.to_owned()),
            ..Resource::default()
        },
        context: RequestContext {
            arguments: Some(args),
            time: Some(OFFICE_HOURS),
            ..RequestContext::default()
        },
    }
}

#[test]
fn allowed_tools_are_permitted_and_nothing_else() {
    let f = Fixture::new(TOOLS, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    let d = e.decide(&mcp(
        &p,
        "customer-db",
        "lookup_customer",
        serde_json::json!({"id": "c-001"}),
    ));
    assert!(d.is_allow(), "{d}");
    assert_eq!(d.policies(), ["tools.customer-db.lookup_customer"]);
    for (server, tool) in [
        ("customer-db", "delete_customer"),
        ("hr", "list_salaries"),
        ("medical", "get_record"),
    ] {
        let d = e.decide(&mcp(&p, server, tool, serde_json::json!({})));
        assert_eq!(d.deny_reason(), Some(DenyReason::NotPermitted), "{d}");
    }
}

#[test]
fn tool_approval_conditions_read_the_arguments() {
    let f = Fixture::new(TOOLS, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    let inside = e.decide(&mcp(
        &p,
        "mail",
        "send_mail",
        serde_json::json!({"to": "bob@acme.example"}),
    ));
    assert!(inside.is_allow(), "{inside}");
    let outside = e.decide(&mcp(
        &p,
        "mail",
        "send_mail",
        serde_json::json!({"to": "eve@external.example"}),
    ));
    let Decision::ApprovalRequired {
        policies, timeout, ..
    } = &outside
    else {
        panic!("{outside}");
    };
    assert_eq!(policies, &["tools.mail.approval"]);
    assert_eq!(timeout.as_secs(), 600);
}

#[test]
fn taint_limits_every_destination_of_the_session_to_cleared_ones() {
    let f = Fixture::new(TOOLS, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    let mail = mcp(
        &p,
        "mail",
        "send_mail",
        serde_json::json!({"to": "bob@acme.example", "body": "hi"}),
    );
    // Before the session has read anything, mail and the web are open.
    assert!(e.decide(&mail).is_allow());
    assert!(
        e.decide(&http(&p, "GET", "www.example.org", "/"))
            .is_allow()
    );

    let new = e.taint(&p, ["pii".to_owned()]).unwrap();
    assert_eq!(new.into_iter().collect::<Vec<_>>(), ["pii"]);
    assert!(
        e.taint(&p, ["pii".to_owned()]).unwrap().is_empty(),
        "taint is a set"
    );
    assert_eq!(e.session_labels(&p).unwrap().len(), 1);

    let d = e.decide(&mail);
    assert_eq!(d.deny_reason(), Some(DenyReason::Flow), "{d}");
    assert!(d.message().contains("`mail` is not cleared"), "{d}");
    let d = e.decide(&http(&p, "GET", "www.example.org", "/"));
    assert_eq!(d.deny_reason(), Some(DenyReason::Flow), "{d}");
    assert!(d.message().contains("`public-web` is not cleared"), "{d}");
    // Cleared destinations: an egress rule and a tool server named by the flow rule, and
    // the source itself.
    assert!(
        e.decide(&http(&p, "POST", "scoring.internal.example", "/v1/score"))
            .is_allow()
    );
    assert!(
        e.decide(&mcp(
            &p,
            "templates",
            "render_letter",
            serde_json::json!({"n": 1})
        ))
        .is_allow()
    );
    assert!(
        e.decide(&mcp(
            &p,
            "customer-db",
            "lookup_customer",
            serde_json::json!({"id": "c-002"})
        ))
        .is_allow()
    );
    // DNS carries no session data.
    let dns = Request {
        action: Action::Dns,
        resource: Resource {
            host: Some("www.example.org".into()),
            ..Resource::default()
        },
        ..http(&p, "GET", "www.example.org", "/")
    };
    assert!(e.decide(&dns).is_allow());
    // Another task of the same agent is untainted.
    let q = principal("credit-officer", "t2");
    assert!(
        e.decide(&http(&q, "GET", "www.example.org", "/"))
            .is_allow()
    );
}

#[test]
fn labels_found_in_a_request_are_checked_like_session_labels() {
    let f = Fixture::new(TOOLS, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    let mut r = mcp(&p, "mail", "send_mail", serde_json::json!({"body": "key"}));
    r.context.labels.insert("secret".into());
    let d = e.decide(&r);
    assert_eq!(d.deny_reason(), Some(DenyReason::Flow), "{d}");
    // The request's own labels do not taint the session.
    assert!(e.session_labels(&p).unwrap().is_empty());
}

#[test]
fn policies_see_the_session_labels() {
    let f = Fixture::new(
        &format!("{TOOLS}  policies: [./no-pii-scoring.cedar]\n"),
        &[(
            "no-pii-scoring.cedar",
            r#"@id("no-pii-to-scoring") forbid (principal, action, resource == AgentSpace::Host::"scoring.internal.example") when { context.labels.contains("pii") };"#,
        )],
    );
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    let score = http(&p, "POST", "scoring.internal.example", "/v1/score");
    assert!(e.decide(&score).is_allow());
    e.taint(&p, ["pii".to_owned()]).unwrap();
    let d = e.decide(&score);
    assert_eq!(d.deny_reason(), Some(DenyReason::Forbidden), "{d}");
    assert_eq!(d.policies(), ["no-pii-to-scoring"]);
}

#[test]
fn tools_compile_to_readable_cedar() {
    let f = Fixture::new(TOOLS, &[]);
    let text = agentspace_policy::CompiledPolicies::compile(&f.definition)
        .unwrap()
        .cedar_text();
    assert!(
        text.contains(r#"resource == AgentSpace::Tool::"customer-db/lookup_customer""#),
        "{text}"
    );
    assert!(
        text.contains(r#"resource in AgentSpace::McpServer::"mail""#),
        "{text}"
    );
    assert!(!text.contains("hr/"), "{text}");
}

#[test]
fn a_bad_tool_approval_condition_names_the_field() {
    let f = Fixture::new(
        &TOOLS.replace(
            "context.arguments has to &&",
            "context.arguments has to &&&",
        ),
        &[],
    );
    let e = agentspace_policy::CompiledPolicies::compile(&f.definition).unwrap_err();
    assert!(e.to_string().contains("spec.tools[3].approval.when"), "{e}");
}

#[test]
fn a_flow_rule_with_approval_holds_what_it_would_deny() {
    let text = TOOLS.replace(
        "      mayFlowTo: [scoring, templates]\n",
        "      mayFlowTo: [scoring, templates]\n      approval: {timeout: 5m}\n",
    );
    let f = Fixture::new(&text, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    e.taint(&p, ["pii".to_owned()]).unwrap();
    let web = http(&p, "GET", "www.example.org", "/");
    match e.decide(&web) {
        Decision::ApprovalRequired {
            policies, timeout, ..
        } => {
            assert_eq!(policies, ["flow.pii"]);
            assert_eq!(timeout, std::time::Duration::from_secs(300));
        }
        other => panic!("expected approval-required, got {other}"),
    }
    // Approved by a person, it goes on; cleared destinations never needed approval.
    assert!(e.decide_approved(&web).is_allow());
    assert!(
        e.decide(&http(&p, "POST", "scoring.internal.example", "/v1/score"))
            .is_allow()
    );
    // A rule without approval still denies.
    let f = Fixture::new(TOOLS, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    e.taint(&p, ["pii".to_owned()]).unwrap();
    assert!(e.decide_approved(&web).deny_reason() == Some(DenyReason::Flow));
}

fn read(p: &agentspace_core::Principal, server: &str, uri: &str) -> Request {
    Request {
        principal: p.clone(),
        action: Action::McpResource,
        resource: Resource {
            server: Some(server.to_owned()),
            uri: Some(uri.to_owned()),
            ..Resource::default()
        },
        context: RequestContext {
            time: Some(OFFICE_HOURS),
            ..RequestContext::default()
        },
    }
}

fn prompt(
    p: &agentspace_core::Principal,
    server: &str,
    name: &str,
    args: serde_json::Value,
) -> Request {
    Request {
        principal: p.clone(),
        action: Action::McpPrompt,
        resource: Resource {
            server: Some(server.to_owned()),
            prompt: Some(name.to_owned()),
            ..Resource::default()
        },
        context: RequestContext {
            arguments: Some(args),
            time: Some(OFFICE_HOURS),
            ..RequestContext::default()
        },
    }
}

/// The credit officer's definition with resources and prompts allowed on two servers.
fn with_resources() -> String {
    TOOLS
        .replace(
            "      labels: [pii]\n",
            "      labels: [pii]\n      resources: [\"customer://*\", \"file:///srv/*/report.txt\"]\n      prompts: [credit_brief]\n",
        )
        .replace(
            "      allow: [send_mail]\n",
            "      allow: [send_mail]\n      resources: [\"mail://outbox\"]\n      prompts: [letter]\n",
        )
}

#[test]
fn resources_and_prompts_are_allowed_by_pattern_and_name_only() {
    let f = Fixture::new(&with_resources(), &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    let d = e.decide(&read(&p, "customer-db", "customer://c-001"));
    assert!(d.is_allow(), "{d}");
    assert_eq!(d.policies(), ["resources.customer-db"]);
    assert!(
        e.decide(&read(&p, "customer-db", "file:///srv/2024/report.txt"))
            .is_allow()
    );
    for (server, uri) in [
        ("customer-db", "file:///etc/passwd"),
        ("customer-db", "file:///srv/2024/report.txt.bak"),
        ("customer-db", "customers://c-001"),
        ("hr", "customer://c-001"),
        ("templates", "customer://c-001"),
    ] {
        let d = e.decide(&read(&p, server, uri));
        assert_eq!(
            d.deny_reason(),
            Some(DenyReason::NotPermitted),
            "{uri}: {d}"
        );
    }
    let d = e.decide(&prompt(
        &p,
        "customer-db",
        "credit_brief",
        serde_json::json!({"customer_id": "c-001"}),
    ));
    assert!(d.is_allow(), "{d}");
    assert_eq!(d.policies(), ["prompts.customer-db.credit_brief"]);
    for (server, name) in [("customer-db", "letter"), ("hr", "credit_brief")] {
        let d = e.decide(&prompt(&p, server, name, serde_json::json!({})));
        assert_eq!(d.deny_reason(), Some(DenyReason::NotPermitted), "{d}");
    }
    // The tool approval of `mail` is about its tools, not its resources.
    assert!(e.decide(&read(&p, "mail", "mail://outbox")).is_allow());
}

#[test]
fn resource_reads_and_prompts_obey_the_flow_rules_and_the_loop_breaker() {
    let f = Fixture::new(&with_resources(), &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    e.taint(&p, ["pii".to_owned()]).unwrap();
    // mail is not cleared for pii: neither its resources nor its prompts may be asked.
    let d = e.decide(&read(&p, "mail", "mail://outbox"));
    assert_eq!(d.deny_reason(), Some(DenyReason::Flow), "{d}");
    let d = e.decide(&prompt(&p, "mail", "letter", serde_json::json!({})));
    assert_eq!(d.deny_reason(), Some(DenyReason::Flow), "{d}");
    // The source itself is.
    let same = read(&p, "customer-db", "customer://c-002");
    for _ in 0..3 {
        assert!(e.decide(&same).is_allow());
    }
    assert_eq!(e.decide(&same).deny_reason(), Some(DenyReason::Loop));
}

#[test]
fn extra_policies_read_the_uri_and_the_prompt_arguments() {
    let f = Fixture::new(
        &format!("{}  policies: [./narrow.cedar]\n", with_resources()),
        &[(
            "narrow.cedar",
            r#"@id("no-c-002") forbid (principal, action == AgentSpace::Action::"mcp_resource", resource in AgentSpace::McpServer::"customer-db") when { context.uri == "customer://c-002" };
@id("brief-c-001-only") forbid (principal, action == AgentSpace::Action::"mcp_prompt", resource == AgentSpace::Prompt::"customer-db/credit_brief") unless { context.arguments has customer_id && context.arguments.customer_id == "c-001" };"#,
        )],
    );
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    assert!(
        e.decide(&read(&p, "customer-db", "customer://c-001"))
            .is_allow()
    );
    let d = e.decide(&read(&p, "customer-db", "customer://c-002"));
    assert_eq!(d.deny_reason(), Some(DenyReason::Forbidden), "{d}");
    let ok = prompt(
        &p,
        "customer-db",
        "credit_brief",
        serde_json::json!({"customer_id": "c-001"}),
    );
    assert!(e.decide(&ok).is_allow());
    let d = e.decide(&prompt(
        &p,
        "customer-db",
        "credit_brief",
        serde_json::json!({"customer_id": "c-002"}),
    ));
    assert_eq!(d.policies(), ["brief-c-001-only"], "{d}");
}

fn server_request(p: &agentspace_core::Principal, server: &str, method: &str) -> Request {
    Request {
        principal: p.clone(),
        action: Action::McpServerRequest {
            method: method.to_owned(),
        },
        resource: Resource {
            server: Some(server.to_owned()),
            ..Resource::default()
        },
        context: RequestContext {
            arguments: Some(serde_json::json!({"maxTokens": 50})),
            time: Some(OFFICE_HOURS),
            ..RequestContext::default()
        },
    }
}

#[test]
fn server_requests_are_permitted_per_server_by_relay() {
    let text = TOOLS
        .replace(
            "      labels: [pii]\n",
            "      labels: [pii]\n      relay: [sampling, progress]\n",
        )
        .replace(
            "      allow: [send_mail]\n",
            "      allow: [send_mail]\n      relay: [elicitation, roots]\n",
        );
    let f = Fixture::new(&text, &[]);
    let e = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    let p = principal("credit-officer", "t1");
    let d = e.decide(&server_request(&p, "customer-db", "sampling/createMessage"));
    assert!(d.is_allow(), "{d}");
    assert_eq!(d.policies(), ["relay.customer-db"]);
    assert!(
        e.decide(&server_request(&p, "mail", "roots/list"))
            .is_allow()
    );
    for (server, method) in [
        ("customer-db", "elicitation/create"),
        ("customer-db", "roots/list"),
        ("mail", "sampling/createMessage"),
        ("templates", "sampling/createMessage"),
    ] {
        let d = e.decide(&server_request(&p, server, method));
        assert_eq!(d.deny_reason(), Some(DenyReason::NotPermitted), "{d}");
    }
    // Not the agent's request: never a loop, however often a server asks.
    for _ in 0..6 {
        assert!(
            e.decide(&server_request(&p, "customer-db", "sampling/createMessage"))
                .is_allow()
        );
    }
    // The client's answer goes to the server: a tainted session may not answer a server
    // that is not cleared for the taint.
    e.taint(&p, ["pii".to_owned()]).unwrap();
    let d = e.decide(&server_request(&p, "mail", "roots/list"));
    assert_eq!(d.deny_reason(), Some(DenyReason::Flow), "{d}");
    assert!(
        e.decide(&server_request(&p, "customer-db", "sampling/createMessage"))
            .is_allow()
    );
}

#[test]
fn taint_survives_a_restart_and_is_shared_by_every_engine_of_the_task() {
    let f = Fixture::new(TOOLS, &[]);
    let p = principal("credit-officer", "t1");
    let mail = mcp(
        &p,
        "mail",
        "send_mail",
        serde_json::json!({"to": "bob@acme.example"}),
    );
    {
        let first = PolicyEngine::load(&f.definition, &f.state()).unwrap();
        // A second gateway of the same task, running at the same time.
        let second = PolicyEngine::load(&f.definition, &f.state()).unwrap();
        assert!(second.decide(&mail).is_allow());
        first.taint(&p, ["pii".to_owned()]).unwrap();
        let d = second.decide(&mail);
        assert_eq!(d.deny_reason(), Some(DenyReason::Flow), "{d}");
        // Already known to the session, whichever engine is asked: nothing new.
        assert!(second.taint(&p, ["pii".to_owned()]).unwrap().is_empty());
    }
    // The gateway restarts: the session still carries pii.
    let restarted = PolicyEngine::load(&f.definition, &f.state()).unwrap();
    assert_eq!(
        restarted.session_labels(&p).unwrap(),
        std::collections::BTreeSet::from(["pii".to_owned()])
    );
    let d = restarted.decide(&mcp(
        &p,
        "mail",
        "send_mail",
        serde_json::json!({"to": "c@acme.example"}),
    ));
    assert_eq!(d.deny_reason(), Some(DenyReason::Flow), "{d}");
    // Another task of the same agent is not tainted.
    let other = principal("credit-officer", "t2");
    assert!(restarted.session_labels(&other).unwrap().is_empty());
}

#[test]
fn a_task_started_by_a_tainted_task_is_tainted() {
    let parent_def = Fixture::new(TOOLS, &[]);
    let child_def = Fixture::new(&TOOLS.replace("name: credit-officer", "name: helper"), &[]);
    // Both engines share the state directory, as the gateways of one machine do.
    let state = parent_def.state();
    let parent_engine = PolicyEngine::load(&parent_def.definition, &state).unwrap();
    let child_engine = PolicyEngine::load(&child_def.definition, &state).unwrap();
    let parent = principal("credit-officer", "t1");
    let child = parent.delegate(actor("helper", "t1-child")).unwrap();
    let mail = |p: &agentspace_core::Principal| {
        mcp(
            p,
            "mail",
            "send_mail",
            serde_json::json!({"to": "bob@acme.example"}),
        )
    };
    assert!(child_engine.decide(&mail(&child)).is_allow());
    // What the parent reads, before or after it starts the child, the child may hold.
    parent_engine.taint(&parent, ["pii".to_owned()]).unwrap();
    let d = child_engine.decide(&mail(&child));
    assert_eq!(d.deny_reason(), Some(DenyReason::Flow), "{d}");
    assert!(child_engine.session_labels(&child).unwrap().contains("pii"));
    // The parent does not inherit what the child reads.
    child_engine.taint(&child, ["secret".to_owned()]).unwrap();
    assert!(
        !parent_engine
            .session_labels(&parent)
            .unwrap()
            .contains("secret")
    );
}
