//! `agentspace audit verify|query|tail|export|prove|checkpoint|keys|migrate`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentspace_audit::{
    AuditError, AuditLog, Entry, Filter, SignedCheckpoint, TrustedKeys, VerifyOptions,
};
use agentspace_core::{AuditDecision, AuditKind, Name, parse_audit_time};
use anyhow::{Context, Result, bail};

use crate::state::StateDir;

/// Exit code of `audit verify` when the log does not verify.
const EXIT_TAMPERED: u8 = 1;

/// `agentspace audit` and its store.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Audit store: `postgres://USER:PASS@HOST/DB` or `sqlite:PATH` (default: the control
    /// plane's database when AGENTSPACE_DATABASE_URL is set, else SQLite in the state
    /// directory).
    #[arg(
        long,
        global = true,
        env = "AGENTSPACE_AUDIT_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    audit_url: Option<String>,

    /// `verify`, `query` and `export` through a control plane, in the token's tenant.
    #[command(flatten)]
    server: crate::remote::ServerArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Check every hash, signature, sequence number and checkpoint; exit 1 at the first bad event.
    Verify {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// A checkpoint kept outside the log (from `audit checkpoint --out`); detects a cut tail.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Trust only the keys in this JWKS (from `audit keys`), not the key files on this host.
        #[arg(long, value_name = "FILE")]
        keys: Option<PathBuf>,
    },
    /// Print events that match every filter given.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// `table` for people, `jsonl` for programs.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Print the last events, and with `-f` follow new ones as they are written.
    Tail {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// How many past events to show first, per tenant.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// Keep printing new events until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
        /// `table` for people, `jsonl` for programs.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Write every event as JSON Lines or as OCSF API Activity events.
    Export {
        /// `jsonl` (events as hashed, with hash and signature) or `ocsf`.
        #[arg(long, default_value = "jsonl")]
        format: ExportFormat,
        #[command(flatten)]
        filter: FilterArgs,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print an inclusion proof (`--seq N`) or a consistency proof (`--from A --to B`) as JSON.
    Prove {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The event to prove is in the log.
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present_all = ["from", "to"])]
        seq: Option<u64>,
        /// The older tree size.
        #[arg(long, requires = "to")]
        from: Option<u64>,
        /// The newer tree size.
        #[arg(long, requires = "from")]
        to: Option<u64>,
    },
    /// Write a signed checkpoint over the tenant's log now, for an outside party to keep.
    Checkpoint {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Write the checkpoint here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the tenant's public audit keys as a JWKS.
    Keys {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Create the PostgreSQL tables, triggers and writer role (run once, as the database owner).
    Migrate,
}

#[derive(clap::Args)]
struct FilterArgs {
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this task.
    #[arg(long)]
    task: Option<String>,
    /// Only this user.
    #[arg(long)]
    user: Option<String>,
    /// Only this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only this kind (`http_request`, `task_start`, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Only this decision (`allow`, `deny`, `approval_required`).
    #[arg(long)]
    decision: Option<String>,
    /// Only events whose resource contains this text.
    #[arg(long, value_name = "TEXT")]
    resource: Option<String>,
    /// Only events at or after this UTC time (`2026-01-02`, `2026-01-02T03:04:05Z`).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only events before this UTC time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Jsonl,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Jsonl,
    Ocsf,
}

/// Accepts a date, a time to the second or the event time format, all UTC.
fn parse_time(flag: &str, text: &str) -> Result<u64> {
    let full = match text.len() {
        10 => format!("{text}T00:00:00.000000000Z"),
        20 => format!("{}.000000000Z", text.trim_end_matches('Z')),
        _ => text.to_owned(),
    };
    parse_audit_time(&full).with_context(|| {
        format!("`--{flag} {text}` is not a UTC time: use `2026-01-02`, `2026-01-02T03:04:05Z` or `2026-01-02T03:04:05.000000000Z`")
    })
}

impl FilterArgs {
    fn resolve(self) -> Result<Filter> {
        let kind = match &self.kind {
            Some(k) => Some(AuditKind::parse(k).with_context(|| {
                let all: Vec<&str> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("`--kind {k}` is not a kind: use one of {}", all.join(", "))
            })?),
            None => None,
        };
        let decision = match &self.decision {
            Some(d) => Some(AuditDecision::parse(d).with_context(|| {
                format!("`--decision {d}` is not a decision: use allow, deny or approval_required")
            })?),
            None => None,
        };
        Ok(Filter {
            tenant: self.tenant,
            task: self.task,
            user: self.user,
            agent: self.agent,
            kind,
            decision,
            resource_contains: self.resource,
            since_ns: self
                .since
                .as_deref()
                .map(|t| parse_time("since", t))
                .transpose()?,
            until_ns: self
                .until
                .as_deref()
                .map(|t| parse_time("until", t))
                .transpose()?,
        })
    }
}

fn tenant_name(tenant: &str) -> Result<Name> {
    Name::new(tenant).context("invalid `--tenant`")
}

/// The audit log at `url`, or the state directory's.
pub(crate) fn open(state: &StateDir, url: Option<&str>) -> Result<AuditLog> {
    let log = match url {
        Some(url) => AuditLog::open_url(state.path(), url),
        None => AuditLog::open(state.path()),
    };
    log.context("cannot open the audit log")
}

fn table_header(out: &mut impl Write) -> Result<()> {
    writeln!(
        out,
        "{:<10} {:<30} {:<12} {:<18} {:<8} {:<9} RESOURCE",
        "SEQ", "TIME", "TENANT", "KIND", "ACTION", "DECISION"
    )?;
    Ok(())
}

fn print_entry(out: &mut impl Write, entry: &Entry, format: Format) -> Result<()> {
    let e = &entry.event;
    match format {
        Format::Jsonl => writeln!(
            out,
            "{}",
            serde_json::to_string(&agentspace_audit::to_jsonl(entry))?
        )?,
        Format::Table => writeln!(
            out,
            "{:<10} {:<30} {:<12} {:<18} {:<8} {:<9} {}",
            e.seq,
            e.time,
            e.tenant,
            e.kind.as_str(),
            e.action,
            e.decision.map_or("-", AuditDecision::as_str),
            e.resource.as_deref().unwrap_or("-")
        )?,
    }
    Ok(())
}

/// Runs `each` on every event that passes `filter` until it returns `Ok(false)` or fails.
fn for_each_entry(
    log: &AuditLog,
    filter: &Filter,
    mut each: impl FnMut(Entry) -> Result<bool>,
) -> Result<()> {
    let mut failed = None;
    log.query(filter, |entry| match each(entry) {
        Ok(go_on) => Ok(go_on),
        Err(e) => {
            failed = Some(e);
            Ok(false)
        }
    })?;
    failed.map_or(Ok(()), Err)
}

pub(crate) fn run(state: &StateDir, args: Args) -> Result<ExitCode> {
    if let Some(remote) = args.server.remote()? {
        return run_remote(&remote, args.command);
    }
    // The control plane's PostgreSQL database holds the audit log unless told otherwise.
    let url = args
        .audit_url
        .or_else(|| crate::state::Stores::from_env().database_url);
    let url = url.as_deref();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.command {
        Command::Migrate => {
            let Some(url) = url else {
                bail!("`audit migrate` needs `--audit-url postgres://...`")
            };
            agentspace_audit::migrate_postgres(url)?;
            writeln!(
                out,
                "audit tables and role `{}` are ready",
                agentspace_audit::WRITER_ROLE
            )?;
        }
        Command::Verify {
            tenant,
            checkpoint,
            keys,
        } => {
            let log = open(state, url)?;
            let checkpoint: Option<SignedCheckpoint> = match checkpoint {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read checkpoint `{}`", path.display()))?;
                    Some(serde_json::from_str(&text).with_context(|| {
                        format!(
                            "`{}` is not a checkpoint written by `agentspace audit checkpoint`",
                            path.display()
                        )
                    })?)
                }
                None => None,
            };
            let trusted_keys = match keys {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read JWKS `{}`", path.display()))?;
                    Some(TrustedKeys::from_jwks(&text)?)
                }
                None => None,
            };
            let options = VerifyOptions {
                tenant,
                checkpoint,
                trusted_keys,
            };
            match log.verify(&options) {
                Ok(report) => {
                    for t in &report {
                        writeln!(
                            out,
                            "tenant `{}`: {} events and {} checkpoints verified; head {}, root {}",
                            t.tenant, t.events, t.checkpoints, t.head, t.root
                        )?;
                    }
                    if report.is_empty() {
                        writeln!(out, "the audit log is empty")?;
                    }
                }
                Err(AuditError::Tampered(failure)) => {
                    eprintln!("agentspace: audit log does not verify: {failure}");
                    if let Some(seq) = failure.seq {
                        eprintln!("first bad sequence number: {seq}");
                    }
                    return Ok(ExitCode::from(EXIT_TAMPERED));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Query {
            filter,
            limit,
            format,
        } => {
            let log = open(state, url)?;
            let filter = filter.resolve()?;
            if matches!(format, Format::Table) {
                table_header(&mut out)?;
            }
            let mut left = limit.unwrap_or(u64::MAX);
            for_each_entry(&log, &filter, |entry| {
                if left == 0 {
                    return Ok(false);
                }
                left -= 1;
                print_entry(&mut out, &entry, format)?;
                Ok(true)
            })?;
        }
        Command::Tail {
            tenant,
            lines,
            follow,
            format,
        } => {
            let log = open(state, url)?;
            if matches!(format, Format::Table) {
                table_header(&mut out)?;
            }
            // Next sequence number to print, per tenant.
            let mut next: std::collections::BTreeMap<String, u64> = Default::default();
            let mut first = true;
            loop {
                let tenants = match &tenant {
                    Some(t) => vec![t.clone()],
                    None => log.tenants()?,
                };
                for t in tenants {
                    let from = match next.get(&t) {
                        Some(n) => *n,
                        None => {
                            // Start `lines` events before the end.
                            let end = log.chain_len(&t)?;
                            if first { end.saturating_sub(lines) } else { 0 }
                        }
                    };
                    let entries = log.events_from(&t, from, 4096)?;
                    let mut n = from;
                    for entry in &entries {
                        print_entry(&mut out, entry, format)?;
                        n = entry.event.seq + 1;
                    }
                    next.insert(t, n);
                }
                out.flush()?;
                first = false;
                if !follow {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Command::Export {
            format,
            filter,
            out: path,
        } => {
            let log = open(state, url)?;
            let filter = filter.resolve()?;
            let mut sink: Box<dyn Write> = match &path {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create `{}`", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(&mut out)),
            };
            for_each_entry(&log, &filter, |entry| {
                let value = match format {
                    ExportFormat::Jsonl => agentspace_audit::to_jsonl(&entry),
                    ExportFormat::Ocsf => agentspace_audit::to_ocsf(&entry),
                };
                serde_json::to_writer(&mut sink, &value)?;
                sink.write_all(b"\n")?;
                Ok(true)
            })?;
            sink.flush()?;
        }
        Command::Prove {
            tenant,
            seq,
            from,
            to,
        } => {
            let log = open(state, url)?;
            let tenant = tenant_name(&tenant)?;
            let json = match (seq, from, to) {
                (Some(seq), _, _) => {
                    serde_json::to_string_pretty(&log.prove_inclusion(&tenant, seq)?)?
                }
                (None, Some(from), Some(to)) => {
                    serde_json::to_string_pretty(&log.prove_consistency(&tenant, from, to)?)?
                }
                _ => bail!("give `--seq N`, or `--from SIZE1 --to SIZE2`"),
            };
            writeln!(out, "{json}")?;
        }
        Command::Checkpoint { tenant, out: path } => {
            let log = open(state, url)?;
            let cp = log.checkpoint(&tenant_name(&tenant)?)?;
            let json = serde_json::to_string(&cp)?;
            match path {
                Some(p) => std::fs::write(&p, format!("{json}\n"))
                    .with_context(|| format!("cannot write `{}`", p.display()))?,
                None => writeln!(out, "{json}")?,
            }
        }
        Command::Keys { tenant } => {
            let log = open(state, url)?;
            let jwks = log.public_jwks(&tenant_name(&tenant)?)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&jwks)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Most events the control plane returns for one query.
const MAX_REMOTE_EVENTS: u64 = 10_000;

/// `verify`, `query` and `export` through a control plane: the token's tenant, checked
/// with the keys on the server host; the output is as on the state directory.
fn run_remote(remote: &crate::remote::Remote, command: Command) -> Result<ExitCode> {
    use crate::remote::query;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // The filters as the API takes them; the tenant is the token's.
    let filter_query = |filter: FilterArgs, extra: Vec<(&'static str, Option<String>)>| {
        remote.tenant(filter.tenant.as_deref())?;
        let f = filter.resolve()?;
        let time = |t: Option<u64>| t.map(agentspace_core::format_audit_time);
        let mut pairs = vec![
            ("task", f.task),
            ("user", f.user),
            ("agent", f.agent),
            ("kind", f.kind.map(|k| k.as_str().to_owned())),
            ("decision", f.decision.map(|d| d.as_str().to_owned())),
            ("resource", f.resource_contains),
            ("since", time(f.since_ns)),
            ("until", time(f.until_ns)),
        ];
        pairs.extend(extra);
        anyhow::Ok(query(&pairs))
    };
    match command {
        Command::Verify {
            tenant,
            checkpoint,
            keys,
        } => {
            if checkpoint.is_some() || keys.is_some() {
                bail!(
                    "--checkpoint and --keys check the log against what you hold, so they verify on the host that has the log: run `agentspace audit verify` there (the control plane verifies with the keys on its host)"
                );
            }
            let tenant = remote.tenant(tenant.as_deref())?;
            let report = remote.get("/v1/audit/verify")?;
            let s = |k: &str| {
                report
                    .get(k)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("-")
            };
            let n = |k: &str| {
                report
                    .get(k)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0)
            };
            if report.get("ok").and_then(serde_json::Value::as_bool) != Some(true) {
                eprintln!("agentspace: audit log does not verify: {}", s("problem"));
                if let Some(seq) = report.get("bad_seq").and_then(serde_json::Value::as_u64) {
                    eprintln!("first bad sequence number: {seq}");
                }
                return Ok(ExitCode::from(EXIT_TAMPERED));
            }
            if n("events") == 0 {
                writeln!(out, "the audit log is empty")?;
            } else {
                writeln!(
                    out,
                    "tenant `{tenant}`: {} events and {} checkpoints verified; head {}, root {}",
                    n("events"),
                    n("checkpoints"),
                    s("head"),
                    s("root")
                )?;
            }
        }
        Command::Query {
            filter,
            limit,
            format,
        } => {
            let want = limit.unwrap_or(MAX_REMOTE_EVENTS).min(MAX_REMOTE_EVENTS);
            let q = filter_query(filter, vec![("limit", Some(want.to_string()))])?;
            let events = remote.get(&format!("/v1/audit/events{q}"))?;
            let events = events.as_array().cloned().unwrap_or_default();
            if matches!(format, Format::Table) {
                table_header(&mut out)?;
            }
            for e in &events {
                print_entry(&mut out, &entry_from_json(e)?, format)?;
            }
            if events.len() as u64 == MAX_REMOTE_EVENTS && limit.is_none_or(|l| l > want) {
                eprintln!(
                    "agentspace: showing the first {MAX_REMOTE_EVENTS} events, the most the control plane returns at once: narrow the filters (--since, --kind, ...) or use `audit export`"
                );
            }
        }
        Command::Export {
            format,
            filter,
            out: path,
        } => {
            let format = match format {
                ExportFormat::Jsonl => "jsonl",
                ExportFormat::Ocsf => "ocsf",
            };
            let q = filter_query(filter, vec![("format", Some(format.to_owned()))])?;
            let body = remote.get_raw(&format!("/v1/audit/export{q}"))?.body;
            match &path {
                Some(p) => std::fs::write(p, &body)
                    .with_context(|| format!("cannot write `{}`", p.display()))?,
                None => out.write_all(&body)?,
            }
        }
        Command::Tail { .. }
        | Command::Prove { .. }
        | Command::Checkpoint { .. }
        | Command::Keys { .. }
        | Command::Migrate => bail!(
            "through a control plane, `audit` does verify, query and export; run this one on the host with the state directory (without --server and AGENTSPACE_SERVER)"
        ),
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// An event as the control plane exports it (`{"event", "hash", "sig"}`).
fn entry_from_json(value: &serde_json::Value) -> Result<Entry> {
    let text = |k: &str| {
        value
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(Entry {
        event: serde_json::from_value(value.get("event").cloned().unwrap_or_default())
            .context("the control plane sent an audit event this version cannot read")?,
        hash: text("hash"),
        sig: text("sig"),
    })
}

/// The audit records of one `agentspace run` task: `task_start` (durable before the
/// cell starts; if it cannot be written the task must not run) and `task_exit`.
pub(crate) struct TaskAudit {
    log: AuditLog,
    base: agentspace_core::AuditEvent,
}

impl TaskAudit {
    /// Records the task start from the task manifest's JSON (tenant, task, user, agent,
    /// definition digest, limits, command) in the audit store at `url` (the state
    /// directory's when `None`).
    pub(crate) fn start(
        state: &StateDir,
        url: Option<&str>,
        manifest: &serde_json::Value,
    ) -> Result<Self> {
        let field = |name: &str| {
            manifest
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let tenant = tenant_name(&field("tenant").unwrap_or_default())?;
        let log = open(state, url)?;
        let mut base = agentspace_core::AuditEvent::new(&tenant, AuditKind::TaskStart, "start");
        base.task = field("task");
        base.user = field("user");
        base.agent = field("agent");
        base.resource = field("definition");
        let mut start = base.clone();
        for key in ["definition_digest", "limits", "command"] {
            if let Some(v) = manifest.get(key) {
                start.details.insert(key.to_owned(), v.clone());
            }
        }
        log.append(start)
            .context("cannot record the task start in the audit log")?;
        Ok(Self { log, base })
    }

    /// Records the task exit from the finished manifest's JSON (exit code, state,
    /// limits hit, error).
    pub(crate) fn exit(&self, manifest: &serde_json::Value) -> Result<()> {
        let mut exit = self.base.clone();
        exit.kind = AuditKind::TaskExit;
        exit.action = "exit".to_owned();
        exit.status = manifest
            .get("exit_code")
            .and_then(serde_json::Value::as_i64);
        for key in ["state", "limits_hit", "error", "exit_code"] {
            if let Some(v) = manifest.get(key).filter(|v| !v.is_null()) {
                let name = if key == "exit_code" {
                    "exit_status"
                } else {
                    key
                };
                exit.details.insert(name.to_owned(), v.clone());
            }
        }
        exit.reason = manifest
            .get("error")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        self.log
            .append(exit)
            .context("cannot record the task exit in the audit log")?;
        Ok(())
    }
}

/// Records one administrative event (a revocation, a key rotation) in the tenant's
/// audit log; uses `AGENTSPACE_AUDIT_URL`, else `AGENTSPACE_DATABASE_URL`, when set.
pub(crate) fn record_admin_event(
    state: &StateDir,
    tenant: &Name,
    kind: AuditKind,
    action: &str,
    resource: String,
    details: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let log = open(state, crate::state::Stores::from_env().audit().as_deref())?;
    let mut event = agentspace_core::AuditEvent::new(tenant, kind, action);
    event.resource = Some(resource);
    event.user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok();
    for (k, v) in details {
        event.details.insert(k, v);
    }
    log.append(event)
        .context("cannot record the event in the audit log")?;
    Ok(())
}

/// The audit sink of `agentspace revoke`: one event per revocation and per lift.
pub(crate) struct RevocationSink<'a> {
    pub(crate) state: &'a StateDir,
    pub(crate) tenant: Name,
}

impl agentspace_policy::RevocationAudit for RevocationSink<'_> {
    fn revocation(
        &self,
        record: &agentspace_policy::RevocationRecord,
        lifted: bool,
    ) -> std::result::Result<(), String> {
        let mut details = serde_json::Map::new();
        details.insert("reason".into(), record.reason.clone().into());
        details.insert("revoked_at".into(), record.revoked_at.into());
        record_admin_event(
            self.state,
            &self.tenant,
            AuditKind::Revocation,
            if lifted { "lift" } else { "revoke" },
            record.revocation.to_string(),
            details,
        )
        .map_err(|e| format!("{e:#}"))
    }
}
