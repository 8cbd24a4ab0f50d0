//! `agentspace policy check|explain|test|schema`: compile definitions to Cedar, decide
//! requests and run tables of expected decisions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentspace_core::Definition;
use agentspace_policy::{CompiledPolicies, Decision, Request, TestCases, run_cases};
use anyhow::{Context, Result};

/// `agentspace policy` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Compile a definition to Cedar and validate it and its extra policies.
    Check {
        /// The agent definition.
        #[arg(short = 'f', long = "file", value_name = "DEFINITION")]
        file: PathBuf,
        /// Print the generated Cedar and the extra policies.
        #[arg(long)]
        show: bool,
    },
    /// Decide one request (JSON, see docs/policy.md) and explain the decision.
    Explain {
        /// The agent definition.
        #[arg(short = 'f', long = "file", value_name = "DEFINITION")]
        file: PathBuf,
        /// The request as JSON.
        #[arg(long, value_name = "REQUEST.json")]
        request: PathBuf,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a table of requests and expected decisions; exit 1 on any mismatch.
    Test {
        /// The agent definition.
        #[arg(short = 'f', long = "file", value_name = "DEFINITION")]
        file: PathBuf,
        /// The cases (YAML, see docs/policy.md).
        #[arg(value_name = "CASES.yaml")]
        cases: PathBuf,
    },
    /// Print the Agent Space Cedar schema.
    Schema,
}

pub(crate) fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Check { file, show } => {
            let Some(policies) = compile(&file)? else {
                return Ok(ExitCode::from(1));
            };
            if show {
                print!("{}", policies.cedar_text());
            }
            for w in policies.warnings() {
                eprintln!("warning: {w}");
            }
            eprintln!(
                "{}: ok, {} Cedar policies valid against the schema",
                file.display(),
                policies.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            file,
            request,
            json,
        } => {
            let Some(policies) = compile(&file)? else {
                return Ok(ExitCode::from(1));
            };
            let text = std::fs::read_to_string(&request)
                .with_context(|| format!("cannot read request `{}`", request.display()))?;
            let request: Request = serde_json::from_str(&text).with_context(|| {
                format!(
                    "invalid request `{}` (see docs/policy.md for the format)",
                    request.display()
                )
            })?;
            let decision = policies.evaluate(&request);
            if json {
                println!("{}", serde_json::to_string_pretty(&decision)?);
            } else {
                print_decision(&decision);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { file, cases } => {
            let Some(policies) = compile(&file)? else {
                return Ok(ExitCode::from(1));
            };
            let text = std::fs::read_to_string(&cases)
                .with_context(|| format!("cannot read cases `{}`", cases.display()))?;
            let cases_parsed = TestCases::from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("invalid cases `{}`: {e}", cases.display()))?;
            let report = run_cases(&policies, &cases_parsed);
            for failure in &report.failures {
                println!("{failure}");
            }
            println!("{} passed, {} failed", report.passed, report.failures.len());
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Schema => {
            print!("{}", agentspace_policy::SCHEMA);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads, validates and compiles a definition; prints the error and returns `None` when
/// the definition or its policies are invalid (exit 1, not 125: the input is wrong).
fn compile(file: &Path) -> Result<Option<CompiledPolicies>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read definition `{}`", file.display()))?;
    let definition = match Definition::parse(file, &text) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("agentspace: {e}");
            return Ok(None);
        }
    };
    match CompiledPolicies::compile(&definition) {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            eprintln!("agentspace: {e}");
            Ok(None)
        }
    }
}

fn print_decision(d: &Decision) {
    println!("decision: {}", d.kind());
    match d {
        Decision::Deny { reason, .. } => println!("reason:   {reason}"),
        Decision::ApprovalRequired {
            prompt, timeout, ..
        } => {
            println!("approval: {prompt}");
            println!("timeout:  {}s", timeout.as_secs());
        }
        Decision::Allow { capabilities, .. } => {
            if !capabilities.is_empty() {
                println!("capabilities: {}", capabilities.join(", "));
            }
        }
    }
    let policies = d.policies();
    println!(
        "policies: {}",
        if policies.is_empty() {
            "(none)".to_owned()
        } else {
            policies.join(", ")
        }
    );
    println!("message:  {}", d.message());
}
