//! `agentspace doctor`: what this host supports for cells.

use std::process::ExitCode;

use anyhow::Result;

/// Arguments of `agentspace doctor`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let report = agentspace_cell::host_report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("kernel {}", report.kernel);
        for c in &report.checks {
            println!(
                "{:<4} {:<16} {}",
                if c.ok { "ok" } else { "MISSING" },
                c.name,
                c.detail
            );
            if let Some(fix) = c.fix {
                println!("     {:<16} fix: {fix}", "");
            }
        }
        println!(
            "{}",
            if report.ready() {
                "this host can run cells"
            } else {
                "this host cannot run cells until the items marked MISSING are fixed"
            }
        );
    }
    Ok(if report.ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
