//! Reading events back: filters for `agentspace audit query`, paging for `tail -f`.

use agentspace_core::{AuditDecision, AuditEvent, AuditKind, parse_audit_time};

use crate::error::AuditError;
use crate::log::AuditLog;

/// One stored event with its chain hash and signature.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The event as recorded.
    pub event: AuditEvent,
    /// The chain hash after the event, hex.
    pub hash: String,
    /// The Ed25519 signature, hex.
    pub sig: String,
}

/// Which events a query returns; every set field must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this task.
    pub task: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this kind.
    pub kind: Option<AuditKind>,
    /// Only this decision.
    pub decision: Option<AuditDecision>,
    /// Only events whose resource contains this text.
    pub resource_contains: Option<String>,
    /// Only events at or after this time (nanoseconds since the Unix epoch).
    pub since_ns: Option<u64>,
    /// Only events before this time (nanoseconds since the Unix epoch).
    pub until_ns: Option<u64>,
}

impl Filter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| have.as_deref() == Some(w.as_str()))
        };
        let time = parse_audit_time(&event.time).unwrap_or(0);
        self.tenant.as_ref().is_none_or(|t| *t == event.tenant)
            && eq(&self.task, &event.task)
            && eq(&self.user, &event.user)
            && eq(&self.agent, &event.agent)
            && self.kind.is_none_or(|k| k == event.kind)
            && self.decision.is_none_or(|d| Some(d) == event.decision)
            && self.resource_contains.as_ref().is_none_or(|r| {
                event
                    .resource
                    .as_deref()
                    .is_some_and(|have| have.contains(r.as_str()))
            })
            && self.since_ns.is_none_or(|s| time >= s)
            && self.until_ns.is_none_or(|u| time < u)
    }
}

impl AuditLog {
    /// Up to `limit` events of `tenant` from sequence number `from` on, in order.
    pub fn events_from(
        &self,
        tenant: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<Entry>, AuditError> {
        let rows = self.with_reader(|s| s.events(tenant, from, limit))?;
        parse_rows(tenant, rows)
    }

    /// Up to `limit` events of `tenant`'s task `task` from sequence number `from` on, in
    /// order; reads only that task's events (an index), however long the chain.
    pub fn task_events_from(
        &self,
        tenant: &str,
        task: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<Entry>, AuditError> {
        let rows = self.with_reader(|s| s.task_events(tenant, task, from, limit))?;
        parse_rows(tenant, rows)
    }

    /// The number of events in `tenant`'s chain: the sequence number the next event will
    /// get (0 for a tenant with none). One indexed read, for followers that start at the
    /// end of the chain.
    pub fn chain_len(&self, tenant: &str) -> Result<u64, AuditError> {
        self.with_reader(|s| s.chain_len(tenant))
    }

    /// Calls `each` for every event that passes `filter`, tenant by tenant in sequence
    /// order, until it returns `Ok(false)`.
    pub fn query(
        &self,
        filter: &Filter,
        mut each: impl FnMut(Entry) -> Result<bool, AuditError>,
    ) -> Result<(), AuditError> {
        let tenants = match &filter.tenant {
            Some(t) => vec![t.clone()],
            None => self.tenants()?,
        };
        for tenant in tenants {
            let mut from = 0;
            loop {
                // A task's events come by the index, not by reading the whole chain.
                let page = match &filter.task {
                    Some(task) => self.task_events_from(&tenant, task, from, 4096)?,
                    None => self.events_from(&tenant, from, 4096)?,
                };
                let Some(last) = page.last() else { break };
                from = last.event.seq + 1;
                for entry in page {
                    if filter.matches(&entry.event) && !each(entry)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Stored rows as entries; a row that does not parse is an error naming it.
fn parse_rows(tenant: &str, rows: Vec<crate::store::Row>) -> Result<Vec<Entry>, AuditError> {
    rows.into_iter()
            .map(|row| {
                let event: AuditEvent = serde_json::from_slice(&row.event).map_err(|e| {
                    AuditError::Request(format!(
                        "event {} of tenant `{tenant}` does not parse as schema v1 ({e}); run `agentspace audit verify`",
                        row.seq
                    ))
                })?;
                Ok(Entry { event, hash: hex::encode(&row.hash), sig: hex::encode(&row.sig) })
            })
        .collect()
}
