//! Compiling definitions and validating extra policies against the schema.

use agentspace_policy::{CompiledPolicies, PolicyError};
use pretty_assertions::assert_eq;

use super::helpers::*;

#[test]
fn issue_3_definition_compiles_to_validated_cedar() {
    let f = Fixture::credit_officer();
    let compiled = CompiledPolicies::compile(&f.definition).unwrap();
    assert_eq!(
        compiled.policy_ids(),
        [
            "egress.payments",
            "egress.payments.approval",
            "egress.payments.dns",
            "egress.scoring",
            "egress.scoring.dns",
            "no-pii-to-scoring",
            "office-hours-only",
            "tenant",
        ]
    );
    let text = compiled.cedar_text();
    assert!(
        text.contains("@approval(\"capability `payments` when context.body.amount > 1000\")"),
        "{text}"
    );
    assert!(text.contains("context.path like \"/v1/score/*\""), "{text}");
    assert!(text.contains("// budget: task requests <= 1000"), "{text}");
    assert!(text.contains("// loopLimit: 3"), "{text}");
    assert!(text.contains("credit-officer.cedar ----"), "{text}");
    // The generated text is Cedar: it parses back.
    let generated = text.split("// ----").next().unwrap();
    assert!(generated.parse::<cedar_policy::PolicySet>().is_ok());
}

#[test]
fn missing_policy_file_names_the_path() {
    let f = Fixture::new(CREDIT_OFFICER, &[]);
    let e = CompiledPolicies::compile(&f.definition).unwrap_err();
    assert!(matches!(e, PolicyError::ReadPolicyFile { .. }), "{e}");
    assert!(
        e.to_string().contains("policies/credit-officer.cedar"),
        "{e}"
    );
}

fn compile_with(cedar: &str) -> Result<CompiledPolicies, PolicyError> {
    let f = Fixture::new(CREDIT_OFFICER, &[("policies/credit-officer.cedar", cedar)]);
    CompiledPolicies::compile(&f.definition)
}

fn located(e: &PolicyError) -> (usize, usize, String) {
    match e {
        PolicyError::Policy {
            file,
            line,
            column,
            message,
        } => {
            assert!(file.ends_with("policies/credit-officer.cedar"), "{file}");
            (*line, *column, message.clone())
        }
        other => panic!("expected a located policy error, got {other}"),
    }
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let e = compile_with(
        "// ok\npermit (principal, action, resource);\n\nforbid (principal, action resource);\n",
    )
    .unwrap_err();
    let (line, column, message) = located(&e);
    assert_eq!((line, column), (4, 27), "{message}");
    assert!(e.to_string().contains("credit-officer.cedar:4:27: "), "{e}");
}

#[test]
fn schema_violations_name_file_line_and_column() {
    let e = compile_with("permit (principal, action, resource);\n\npermit (principal, action, resource)\nwhen { context.pathh == \"/\" };\n").unwrap_err();
    let (line, column, message) = located(&e);
    assert_eq!(line, 4, "{message}");
    assert_eq!(column, 8, "{message}");
    assert!(message.contains("pathh"), "{message}");

    let e = compile_with("permit (principal, action, resource == AgentSpace::Hots::\"x\");\n")
        .unwrap_err();
    let (line, _, message) = located(&e);
    assert_eq!(line, 1);
    assert!(message.contains("Hots"), "{message}");

    let e =
        compile_with("permit (principal, action == AgentSpace::Action::\"FETCH\", resource);\n")
            .unwrap_err();
    assert!(located(&e).2.contains("FETCH"), "{e}");

    // Type errors are schema violations too.
    let e = compile_with(
        "forbid (principal, action, resource) when { context.usage.requests like \"x\" };\n",
    )
    .unwrap_err();
    assert_eq!(located(&e).0, 1, "{e}");
}

#[test]
fn open_records_accept_any_attribute() {
    compile_with(
        "forbid (principal, action in AgentSpace::Action::\"http\", resource) when { context.body has customer && context.body.customer.country == \"XX\" };\n\
         forbid (principal, action == AgentSpace::Action::\"GET\", resource) when { context.headers has \"x-debug\" && context.headers[\"x-debug\"] == \"1\" };\n\
         forbid (principal, action == AgentSpace::Action::\"mcp\", resource) when { context.arguments.path like \"/etc/*\" };\n",
    )
    .unwrap();
}

#[test]
fn approval_annotation_belongs_on_forbid() {
    let e =
        compile_with("@approval(\"big\")\npermit (principal, action, resource);\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("`@approval` belongs on a `forbid` policy"),
        "{e}"
    );
    let e = compile_with(
        "@approval(\"big\")\n@timeout(\"soon\")\nforbid (principal, action, resource);\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("@timeout"), "{e}");
}

#[test]
fn duplicate_ids_are_refused() {
    let e = compile_with("@id(\"egress.scoring\")\nforbid (principal, action, resource);\n")
        .unwrap_err();
    assert!(e.to_string().contains("already used"), "{e}");
}

#[test]
fn approval_conditions_are_expressions_not_policy_text() {
    let bad = [
        "true }; permit (principal, action, resource) when { true",
        "true } unless { false",
        "context.body.amount >",
    ];
    for when in bad {
        let def = CREDIT_OFFICER.replace("'context.body.amount > 1000'", &format!("'{when}'"));
        let f = Fixture::new(&def, &[("policies/credit-officer.cedar", "")]);
        let e = CompiledPolicies::compile(&f.definition).unwrap_err();
        assert!(
            e.to_string()
                .contains("field `spec.egress[1].approval.when`"),
            "{when}: {e}"
        );
    }
    // A trailing comment cannot swallow the closing brace.
    let def = CREDIT_OFFICER.replace(
        "'context.body.amount > 1000'",
        "'context.body.amount > 1000 // big'",
    );
    let f = Fixture::new(&def, &[("policies/credit-officer.cedar", "")]);
    CompiledPolicies::compile(&f.definition).unwrap();
    // Type errors in the condition name the field.
    let def = CREDIT_OFFICER.replace("'context.body.amount > 1000'", "'context.path > 1000'");
    let f = Fixture::new(&def, &[("policies/credit-officer.cedar", "")]);
    let e = CompiledPolicies::compile(&f.definition).unwrap_err();
    assert!(
        e.to_string().contains("spec.egress[1].approval.when"),
        "{e}"
    );
}

#[test]
fn policies_without_id_are_named_by_file_and_line() {
    let c =
        compile_with("\n\npermit (principal, action == AgentSpace::Action::\"GET\", resource);\n")
            .unwrap();
    assert!(
        c.policy_ids()
            .contains(&"credit-officer.cedar:3".to_owned()),
        "{:?}",
        c.policy_ids()
    );
}
