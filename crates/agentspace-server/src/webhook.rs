//! Announcing approval requests to webhooks with a Slack-compatible JSON body
//! (`{"text": ...}`, plus the approval itself under `approval`), so a team channel sees
//! what waits.
//!
//! Two kinds of webhook: the operator's (`agentspace serve --approval-webhook`), told of
//! every tenant's approvals, and one per tenant, set by the tenant's admin through the
//! API and told only of that tenant's. Every pending approval is announced once to each,
//! whichever process held it: a server claims an announcement in the database before it
//! delivers (so several servers on one PostgreSQL do not announce twice), marks it
//! delivered after a 2xx answer, and gives the claim back on failure, to be tried again
//! on the next round. A claim left by a server that died is taken over after
//! [`LEASE_MS`].
//!
//! A tenant's webhook is a URL chosen by a tenant admin that the server then POSTs to:
//! without care, a way to make the server reach its own loopback, the private network or
//! the cloud metadata service (SSRF). So, unless the operator allows private addresses
//! (`--allow-private-webhooks`), a tenant webhook whose host resolves to a loopback,
//! private, link-local, shared, multicast or otherwise special address is refused when it
//! is set, and checked again at every delivery against what its name resolves to then;
//! the connection goes to the address that was checked (no second lookup to rebind), no
//! redirect is followed, and nothing of the answer is shown to the tenant. A refused
//! delivery is recorded in the tenant's audit log and not tried again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use agentspace_audit::AuditLog;
use agentspace_core::{AuditDecision, AuditEvent, AuditKind, Name};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::approvals::Approval;
use crate::audit::{AdminEvent, details, record, record_refusal};
use crate::auth::Caller;
use crate::client::Client;
use crate::error::ServerError;
use crate::store::{Conn, Db, format_ms, now_ms};

/// How long a claimed announcement stays with the server that claimed it.
const LEASE_MS: i64 = 60_000;

/// How long one delivery may take (a slow tenant webhook must not hold the others up).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Most deliveries in flight at once, per server.
const MAX_DELIVERIES: usize = 32;

/// Longest webhook URL accepted.
const MAX_URL: usize = 2048;

/// The `hook` of announcements to the operator's webhook.
const SERVER_HOOK: &str = "server";

/// The `hook` of announcements to a tenant's webhook.
const TENANT_HOOK: &str = "tenant";

/// The webhook body for `approval`.
pub(crate) fn body(approval: &Approval) -> serde_json::Value {
    let c = &approval.context;
    let text = format!(
        "Approval needed in tenant `{}`: `{}`{} wants {} {}{}. Until {}. Decide with `agentspace approvals approve|deny {}` or in the console.",
        c.tenant,
        c.user,
        c.agent
            .as_deref()
            .map(|a| format!(" (agent `{a}`)"))
            .unwrap_or_default(),
        c.action,
        c.resource,
        c.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default(),
        approval.expires_at,
        approval.id
    );
    serde_json::json!({ "text": text, "approval": approval })
}

/// Why an address is no place for a tenant's webhook, or `None` when it is a public one.
pub(crate) fn special_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local (and the cloud metadata service, 169.254.169.254)"
    } else if a == 0 {
        "this-network (0.0.0.0/8)"
    } else if a == 100 && (64..128).contains(&b) {
        "shared address space (100.64.0.0/10, carrier NAT and some metadata services)"
    } else if a == 192 && b == 0 && c == 0 {
        "IETF protocol assignments (192.0.0.0/24)"
    } else if a == 198 && (18..20).contains(&b) {
        "benchmarking (198.18.0.0/15)"
    } else if ip.is_multicast() {
        "multicast"
    } else if a >= 240 {
        "reserved or broadcast (240.0.0.0/4)"
    } else {
        return None;
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    let [s0, s1, ..] = segments;
    // An IPv4 address inside an IPv6 one reaches that IPv4 address: judge it as such.
    let embedded = |bytes: [u8; 4]| special_v4(Ipv4Addr::from(bytes));
    let o = ip.octets();
    let tail = [o[12], o[13], o[14], o[15]];
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_unique_local() {
        "unique local (fc00::/7, also the cloud metadata service fd00:ec2::254)"
    } else if ip.is_unicast_link_local() || (s0 & 0xffc0) == 0xfec0 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if segments[..6] == [0; 6] {
        // IPv4-compatible (::a.b.c.d), deprecated: never a public webhook.
        "IPv4-compatible"
    } else if s0 == 0x64 && s1 == 0xff9b {
        // NAT64 (64:ff9b::/96 and 64:ff9b:1::/48) reaches the embedded IPv4 address.
        return embedded(tail).map(|_| "NAT64 of a special IPv4 address");
    } else if s0 == 0x2002 {
        // 6to4 carries the IPv4 address in the next 32 bits.
        let [_, _, a, b, c, d, ..] = o;
        return embedded([a, b, c, d]).map(|_| "6to4 of a special IPv4 address");
    } else if s0 == 0x2001 && s1 == 0 {
        "Teredo (2001::/32)"
    } else if s0 == 0x2001 && s1 == 0x0db8 {
        "documentation (2001:db8::/32)"
    } else {
        return None;
    })
}

/// Why a tenant webhook cannot be delivered now.
#[derive(Debug)]
pub(crate) enum Undeliverable {
    /// Its host does not resolve (perhaps for a while): try again later.
    Unresolved(String),
    /// It reaches an address a tenant webhook may not: never.
    Refused(String),
}

/// Where a tenant webhook may be delivered: every address its host resolves to now, if
/// all are allowed. The connection goes to the first; a name that resolves to one public
/// and one private address is refused.
pub(crate) fn destination(
    client: &Client,
    allow_private: bool,
) -> Result<SocketAddr, Undeliverable> {
    let addresses = client
        .addresses()
        .map_err(|e| Undeliverable::Unresolved(format!("its host does not resolve: {e}")))?;
    let first = *addresses
        .first()
        .ok_or_else(|| Undeliverable::Unresolved("its host resolves to no address".to_owned()))?;
    if !allow_private {
        for a in &addresses {
            if let Some(why) = special_address(a.ip()) {
                return Err(Undeliverable::Refused(format!(
                    "its host resolves to {}, a {why} address, which a tenant webhook may not reach",
                    a.ip()
                )));
            }
        }
    }
    Ok(first)
}

/// `scheme://host[:port]` of a URL, without path or query (which may hold a secret, as
/// Slack's do): what the API and the audit log show of a tenant webhook.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    format!("{scheme}://{authority}")
}

fn url_digest(url: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(url.as_bytes())))
}

/// A tenant's webhook as the API shows it: never the URL itself, whose path is often a
/// credential, only its origin and digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TenantWebhook {
    /// `scheme://host[:port]` of the URL.
    pub origin: String,
    /// `sha256:<hex>` of the whole URL, to check which one is set.
    pub digest: String,
    /// The admin who set it.
    pub set_by: String,
    /// When.
    pub set_at: String,
}

/// The audit event of setting the caller's tenant's webhook to `url` (accepted or not).
fn set_event<'a>(caller: &'a Caller, url: &str) -> AdminEvent<'a> {
    AdminEvent {
        tenant: &caller.tenant,
        kind: AuditKind::PolicyChange,
        action: "webhook_set",
        resource: "webhook".to_owned(),
        by: &caller.user,
        details: details([
            ("origin", origin(url).into()),
            ("url_digest", url_digest(url).into()),
        ]),
    }
}

/// Tenant webhooks in the control-plane database.
pub(crate) struct Webhooks<'a> {
    pub(crate) db: &'a Db,
    pub(crate) audit: &'a AuditLog,
    /// The operator allows private and loopback addresses.
    pub(crate) allow_private: bool,
}

fn no_webhook(tenant: &Name) -> ServerError {
    ServerError::not_found(
        format!("tenant `{tenant}` has no webhook"),
        "set one with PUT /v1/tenant/webhook {\"url\": \"https://...\"}",
    )
}

impl Webhooks<'_> {
    /// The tenant's webhook.
    pub(crate) fn get(&self, tenant: &Name) -> Result<TenantWebhook, ServerError> {
        let row = self.db.run(|c| {
            c.query_opt(
                "SELECT url, set_by, set_at FROM tenant_webhook WHERE tenant = $1",
                &[&tenant.as_str()],
            )
        })?;
        let row = row.ok_or_else(|| no_webhook(tenant))?;
        let url = row.text(0)?;
        Ok(TenantWebhook {
            origin: origin(&url),
            digest: url_digest(&url),
            set_by: row.text(1)?,
            set_at: format_ms(row.int(2)?),
        })
    }

    /// Sets the caller's tenant's webhook, audited; refuses (and audits the refusal) a
    /// URL that is malformed or reaches a special address.
    pub(crate) fn set(&self, caller: &Caller, url: &str) -> Result<TenantWebhook, ServerError> {
        let tenant = &caller.tenant;
        if let Err(problem) = self.check(url) {
            let fix = if self.allow_private {
                "give an `https://` URL of a host that resolves"
            } else {
                "give an `https://` URL of a public host; an operator who wants webhooks on a private network starts `agentspace serve --allow-private-webhooks`"
            };
            // The attempt is on record even though nothing changed; a failing audit log
            // does not turn the refusal into anything else.
            let _ = record_refusal(self.audit, set_event(caller, url), &problem);
            return Err(ServerError::bad_request(
                format!("webhook `{}` is refused: {problem}", origin(url)),
                fix,
            ));
        }
        let now = now_ms();
        self.db.transaction(tenant.as_str(), |tx| {
            tx.execute(
                "INSERT INTO tenant_webhook (tenant, url, set_by, set_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant) DO UPDATE SET url = excluded.url, set_by = excluded.set_by, set_at = excluded.set_at",
                &[&tenant.as_str(), &url, &caller.user, &now],
            )?;
            record(self.audit, set_event(caller, url))?;
            Ok(())
        })?;
        Ok(TenantWebhook {
            origin: origin(url),
            digest: url_digest(url),
            set_by: caller.user.clone(),
            set_at: format_ms(now),
        })
    }

    /// Removes the caller's tenant's webhook, audited.
    pub(crate) fn remove(&self, caller: &Caller) -> Result<(), ServerError> {
        let tenant = &caller.tenant;
        self.db.transaction(tenant.as_str(), |tx| {
            let n = tx.execute(
                "DELETE FROM tenant_webhook WHERE tenant = $1",
                &[&tenant.as_str()],
            )?;
            if n == 0 {
                return Err(no_webhook(tenant));
            }
            record(
                self.audit,
                AdminEvent {
                    tenant,
                    kind: AuditKind::PolicyChange,
                    action: "webhook_remove",
                    resource: "webhook".to_owned(),
                    by: &caller.user,
                    details: serde_json::Map::new(),
                },
            )?;
            Ok(())
        })
    }

    /// Why `url` cannot be a tenant webhook, in words.
    fn check(&self, url: &str) -> Result<(), String> {
        if url.len() > MAX_URL {
            return Err(format!("it is longer than {MAX_URL} bytes"));
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err("it is not an `https://` (or `http://`) URL".to_owned());
        }
        // Not the client's message: it would repeat the URL, path and all, into the log.
        let client = Client::new(url, None).map_err(|_| {
            "it is not `http(s)://HOST[:PORT]/PATH` (no user name, no spaces or control characters)"
                .to_owned()
        })?;
        match destination(&client, self.allow_private) {
            Ok(_) => Ok(()),
            Err(Undeliverable::Unresolved(why) | Undeliverable::Refused(why)) => Err(why),
        }
    }
}

/// One announcement due: an approval and the webhook it goes to.
struct Due {
    approval: Approval,
    hook: &'static str,
    /// The tenant's URL, for [`TENANT_HOOK`].
    url: Option<String>,
}

/// Announces pending approvals every round; owned by the server.
pub(crate) struct Announcer {
    pub(crate) db: Arc<Db>,
    pub(crate) audit: AuditLog,
    /// The operator's webhook.
    pub(crate) server_hook: Option<Client>,
    pub(crate) allow_private: bool,
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
}

impl Announcer {
    /// An announcer with room for [`MAX_DELIVERIES`] deliveries at once.
    pub(crate) fn new(
        db: Arc<Db>,
        audit: AuditLog,
        server_hook: Option<Client>,
        allow_private: bool,
    ) -> Self {
        Self {
            db,
            audit,
            server_hook,
            allow_private,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_DELIVERIES)),
        }
    }

    /// Claims what is due and starts a delivery for each (on blocking threads, not
    /// waited for: a slow webhook holds up only its own announcements).
    pub(crate) async fn round(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let claimed = tokio::task::spawn_blocking(move || me.claim_due()).await;
        let Ok(Ok(claimed)) = claimed else { return };
        for due in claimed {
            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                return;
            };
            let me = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                me.deliver(due);
                drop(slot);
            });
        }
    }

    /// Every announcement due now that this server could claim.
    fn claim_due(&self) -> Result<Vec<Due>, ServerError> {
        let now = now_ms();
        let stale = now.saturating_sub(LEASE_MS);
        let unclaimed =
            "NOT EXISTS (SELECT 1 FROM approval_notice n WHERE n.id = a.id AND n.hook = $1
                           AND (n.state <> 'claimed' OR n.at > $2))";
        let mut due = Vec::new();
        let (server, tenant) = self.db.run(|c| {
            let server = if self.server_hook.is_some() {
                c.query(
                    &format!(
                        "SELECT {} FROM approval a WHERE a.state = 'pending' AND {unclaimed}
                         ORDER BY a.requested_at, a.id LIMIT 100",
                        crate::approvals::COLUMNS
                    ),
                    &[&SERVER_HOOK, &stale],
                )?
            } else {
                Vec::new()
            };
            let tenant = c.query(
                &format!(
                    "SELECT {}, w.url FROM approval a JOIN tenant_webhook w ON w.tenant = a.tenant
                     WHERE a.state = 'pending' AND {unclaimed}
                     ORDER BY a.requested_at, a.id LIMIT 100",
                    crate::approvals::COLUMNS
                ),
                &[&TENANT_HOOK, &stale],
            )?;
            Ok((server, tenant))
        })?;
        for (rows, hook) in [(server, SERVER_HOOK), (tenant, TENANT_HOOK)] {
            for row in rows {
                let approval = crate::approvals::to_approval(&row)?;
                let url = if hook == TENANT_HOOK {
                    Some(row.text(8)?)
                } else {
                    None
                };
                if self.db.run(|c| claim(c, &approval.id, hook, now, stale))? {
                    due.push(Due {
                        approval,
                        hook,
                        url,
                    });
                }
            }
        }
        Ok(due)
    }

    /// Delivers one claimed announcement and settles its claim.
    fn deliver(&self, due: Due) {
        let id = due.approval.id.clone();
        let outcome = match (&due.url, &self.server_hook) {
            (Some(url), _) => self.deliver_to_tenant(url, &due.approval),
            (None, Some(client)) => Ok(client
                .post("", &body(&due.approval))
                .is_ok_and(|r| (200..300).contains(&r.status))),
            (None, None) => Ok(false),
        };
        let settle = match outcome {
            Ok(true) => Some("delivered"),
            Ok(false) => None,
            Err(()) => Some("refused"),
        };
        // A failure to settle leaves the claim to lapse; it is retried after the lease.
        let _ = self.db.run(|c| match settle {
            Some(state) => c.execute(
                "UPDATE approval_notice SET state = $3, at = $4 WHERE id = $1 AND hook = $2",
                &[&id, &due.hook, &state, &now_ms()],
            ),
            None => c.execute(
                "DELETE FROM approval_notice WHERE id = $1 AND hook = $2 AND state = 'claimed'",
                &[&id, &due.hook],
            ),
        });
    }

    /// `Ok(true)` when delivered, `Ok(false)` to retry, `Err` when refused for good (and
    /// audited).
    fn deliver_to_tenant(&self, url: &str, approval: &Approval) -> Result<bool, ()> {
        let checked = Client::new(url, None)
            .map_err(|_| Undeliverable::Refused("it is not a valid URL".to_owned()))
            .and_then(|client| {
                let address = destination(&client, self.allow_private)?;
                Ok((client, address))
            });
        let problem = match checked {
            Ok((client, address)) => {
                return Ok(client
                    .with_timeout(DELIVERY_TIMEOUT)
                    .post_to(address, "", &body(approval))
                    .is_ok_and(|r| (200..300).contains(&r.status)));
            }
            Err(Undeliverable::Unresolved(_)) => return Ok(false),
            Err(Undeliverable::Refused(problem)) => problem,
        };
        let c = &approval.context;
        let mut event = AuditEvent::new(&c.tenant, AuditKind::HttpRequest, "POST");
        event.resource = Some(origin(url));
        event.task.clone_from(&c.task);
        event.agent.clone_from(&c.agent);
        event.decision = Some(AuditDecision::Deny);
        event.reason = Some(format!("tenant webhook refused: {problem}"));
        event.details = details([
            ("via", "control-plane".into()),
            ("webhook", TENANT_HOOK.into()),
            ("approval", approval.id.clone().into()),
            ("url_digest", url_digest(url).into()),
        ]);
        // Refused whether or not the record could be written.
        let _ = self.audit.append(event);
        Err(())
    }
}

/// Claims the announcement of approval `id` to `hook` for this server: a new claim, or
/// one another server left longer than the lease ago. `true` when this call claimed it.
fn claim(
    c: &mut dyn Conn,
    id: &str,
    hook: &str,
    now: i64,
    stale: i64,
) -> Result<bool, ServerError> {
    let n = c.execute(
        "INSERT INTO approval_notice (id, hook, state, at) VALUES ($1, $2, 'claimed', $3)
         ON CONFLICT (id, hook) DO UPDATE SET at = excluded.at
         WHERE approval_notice.state = 'claimed' AND approval_notice.at <= $4",
        &[&id, &hook, &now, &stale],
    )?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::{origin, special_address};
    use std::net::IpAddr;

    #[test]
    fn special_addresses_are_named_and_public_ones_pass() {
        for (ip, special) in [
            ("127.0.0.1", true),
            ("127.9.9.9", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.100.100.200", true),
            ("0.0.0.0", true),
            ("255.255.255.255", true),
            ("224.0.0.1", true),
            ("192.0.0.192", true),
            ("::1", true),
            ("::", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("::127.0.0.1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("2002:7f00:1::", true),
            ("fd00:ec2::254", true),
            ("fe80::1", true),
            ("ff02::1", true),
            ("8.8.8.8", false),
            ("172.32.0.1", false),
            ("1.1.1.1", false),
            ("::ffff:8.8.8.8", false),
            ("64:ff9b::808:808", false),
            ("2a00:1450:4001:80b::200e", false),
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(special_address(addr).is_some(), special, "{ip}");
        }
    }

    #[test]
    fn the_origin_leaves_out_path_and_query() {
        assert_eq!(
            origin("https://hooks.slack.com/services/T0/B0/SECRET"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            origin("http://chat.example:8080?token=x"),
            "http://chat.example:8080"
        );
    }
}
