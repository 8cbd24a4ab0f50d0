//! The cell's resolver.
//!
//! Every DNS query of a cell ends here: the cell's `resolv.conf` names `127.0.0.1`, and
//! its firewall redirects UDP and TCP port 53 to any address to the same place. Nothing
//! is ever forwarded to a real resolver:
//!
//! - a name no rule allows gets NXDOMAIN, and the refusal is audited;
//! - an allowed name gets a **synthetic** address from `198.18.0.0/15` (RFC 2544's
//!   benchmarking range, never a real upstream), one per name for the life of the task.
//!   The gateway maps the address back to the name when the cell connects to it, so a
//!   connection is decided by the name the agent looked up, the cell learns nothing about
//!   real or internal addresses, and a lookup never leaks to the outside. AAAA queries
//!   of allowed names get an empty answer (the cell has no IPv6 route), so clients fall
//!   back to IPv4 at once;
//! - DNS tunnelling is refused and audited: only A and AAAA are answered (TXT, NULL,
//!   ANY, ... are refused), names with long or high-entropy labels are refused even
//!   under an allowed wildcard, and a task that keeps getting refusals (a flood) has its
//!   lookups suspended for a while, with one audit event.
//!
//! The first lookup of each name in a task is decided and audited; later lookups of the
//! same name are answered from the task's table (the HTTP requests that follow are each
//! decided anyway).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentspace_core::{AuditDecision, AuditKind};
use agentspace_policy::{Action, Decision, DenyReason, Request as PolicyRequest, Resource};
use serde_json::json;
use simple_dns::rdata::{A, RData};
use simple_dns::{CLASS, Name, OPCODE, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::door::Task;
use crate::proxy::Gateway;

/// The first address of the synthetic range (`198.18.0.0/15`).
pub const SYNTHETIC_NETWORK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The prefix length of the synthetic range.
pub const SYNTHETIC_PREFIX: u8 = 15;
/// Names one task may have resolved; past this, lookups of new names are refused.
const MAX_NAMES: u32 = 4096;
/// The TTL of an answer: the mapping holds for the task's life anyway.
const TTL: u32 = 300;
/// Refusals within `FLOOD_WINDOW` that make a flood.
const FLOOD_LIMIT: usize = 32;
const FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// How long a flooding task's lookups stay suspended.
const SUSPENSION: Duration = Duration::from_secs(30);
/// Queries answered at once per task (each may wait for the audit log).
const CONCURRENT_QUERIES: usize = 64;
/// Time a TCP client has to send its next query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries on one TCP connection.
const TCP_QUERIES: usize = 256;

/// Whether `ip` lies in the synthetic range the cell's resolver hands out.
pub fn is_synthetic(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 198 && (b == 18 || b == 19)
}

/// The names a task has looked up and their synthetic addresses, and its refusal count.
#[derive(Debug, Default)]
pub(crate) struct Names {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// Addresses handed out so far (never reused, even when one is taken back).
    assigned: u32,
    refusals: VecDeque<Instant>,
    suspended_until: Option<Instant>,
}

/// What counting one more refusal means.
#[derive(Debug, PartialEq, Eq)]
enum Flood {
    /// Under the limit.
    No,
    /// This refusal crossed the limit: lookups are suspended from now on.
    Started,
}

impl Names {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; if it ever did, the table is still
        // consistent (every update is a single insert pair).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The name a synthetic address was handed out for.
    pub(crate) fn name_of(&self, ip: Ipv4Addr) -> Option<String> {
        self.lock().by_addr.get(&ip).cloned()
    }

    fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        self.lock().by_name.get(name).copied()
    }

    /// The address of `name`, assigning the next free one (`true` when it is new);
    /// `None` when the task has used up its names.
    fn assign(&self, name: &str) -> Option<(Ipv4Addr, bool)> {
        let mut inner = self.lock();
        if let Some(ip) = inner.by_name.get(name) {
            return Some((*ip, false));
        }
        if inner.assigned >= MAX_NAMES {
            return None;
        }
        inner.assigned += 1;
        // .0.0 is the network itself; start at .0.1.
        let ip = Ipv4Addr::from(u32::from(SYNTHETIC_NETWORK) + inner.assigned);
        inner.by_name.insert(name.to_owned(), ip);
        inner.by_addr.insert(ip, name.to_owned());
        Some((ip, true))
    }

    /// Takes back an address whose lookup could not be recorded, so that no later lookup
    /// is answered from the table without a decision on the record. Its address is not
    /// handed out again.
    fn forget(&self, name: &str, ip: Ipv4Addr) {
        let mut inner = self.lock();
        if inner.by_name.get(name) == Some(&ip) {
            inner.by_name.remove(name);
            inner.by_addr.remove(&ip);
        }
    }

    fn suspended(&self, now: Instant) -> bool {
        self.lock().suspended_until.is_some_and(|t| now < t)
    }

    fn count_refusal(&self, now: Instant) -> Flood {
        let mut inner = self.lock();
        while inner
            .refusals
            .front()
            .is_some_and(|t| now.duration_since(*t) > FLOOD_WINDOW)
        {
            inner.refusals.pop_front();
        }
        inner.refusals.push_back(now);
        if inner.refusals.len() >= FLOOD_LIMIT {
            inner.refusals.clear();
            inner.suspended_until = Some(now + SUSPENSION);
            Flood::Started
        } else {
            Flood::No
        }
    }
}

/// A query the resolver understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The query id, echoed in the answer.
    pub id: u16,
    /// Whether the client asked for recursion (echoed).
    pub recursion_desired: bool,
    /// The name, lowercase, without the trailing dot.
    pub name: String,
    /// The question as asked, for the answer.
    pub kind: QueryKind,
}

/// The types of query the resolver tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// An IPv4 address lookup.
    A,
    /// An IPv6 address lookup.
    Aaaa,
    /// Anything else (TXT, NULL, ANY, MX, ...), with its type code.
    Other(u16),
}

/// Why a packet is not a query the resolver answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Not a DNS message at all; nothing is sent back.
    #[error("not a DNS message")]
    Garbage,
    /// A DNS response, not a query; nothing is sent back.
    #[error("a DNS response, not a query")]
    Response,
    /// A malformed query (bad name, not exactly one question); answered FORMERR.
    #[error("malformed DNS query: {detail}")]
    Malformed {
        /// The query id.
        id: u16,
        /// What is wrong.
        detail: String,
    },
    /// An opcode other than QUERY; answered NOTIMP.
    #[error("DNS opcode not supported")]
    NotImplemented {
        /// The query id.
        id: u16,
    },
}

/// Parses one DNS query message (UDP payload, or a TCP message without its length).
/// Never panics, whatever the input.
pub fn parse_query(bytes: &[u8]) -> Result<Query, QueryError> {
    let id = match bytes {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => return Err(QueryError::Garbage),
    };
    let packet = Packet::parse(bytes).map_err(|e| {
        if bytes.len() >= 12 {
            QueryError::Malformed {
                id,
                detail: e.to_string(),
            }
        } else {
            QueryError::Garbage
        }
    })?;
    if packet.has_flags(PacketFlag::RESPONSE) {
        return Err(QueryError::Response);
    }
    if packet.opcode() != OPCODE::StandardQuery {
        return Err(QueryError::NotImplemented { id });
    }
    let [question] = packet.questions.as_slice() else {
        return Err(QueryError::Malformed {
            id,
            detail: format!(
                "{} questions; exactly one is answered",
                packet.questions.len()
            ),
        });
    };
    let name = name_text(&question.qname).ok_or_else(|| QueryError::Malformed {
        id,
        detail: "the name has characters a host name cannot have".to_owned(),
    })?;
    let in_class = matches!(question.qclass, QCLASS::CLASS(CLASS::IN));
    let kind = match question.qtype {
        QTYPE::TYPE(TYPE::A) if in_class => QueryKind::A,
        QTYPE::TYPE(TYPE::AAAA) if in_class => QueryKind::Aaaa,
        other => QueryKind::Other(qtype_code(other)),
    };
    Ok(Query {
        id,
        recursion_desired: packet.has_flags(PacketFlag::RECURSION_DESIRED),
        name,
        kind,
    })
}

fn qtype_code(q: QTYPE) -> u16 {
    match q {
        QTYPE::TYPE(t) => u16::from(t),
        QTYPE::IXFR => 251,
        QTYPE::AXFR => 252,
        QTYPE::MAILB => 253,
        QTYPE::MAILA => 254,
        QTYPE::ANY => 255,
    }
}

/// The name as lowercase text, or `None` if a label holds anything but letters, digits,
/// `-` and `_`.
fn name_text(name: &Name<'_>) -> Option<String> {
    let mut out = String::new();
    for label in name.as_bytes() {
        if label.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        for b in label {
            if !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
                return None;
            }
            out.push(char::from(b.to_ascii_lowercase()));
        }
    }
    Some(out)
}

/// Why `name` looks like DNS tunnelling (data smuggled in the labels), or `None`.
pub fn tunnelling(name: &str) -> Option<String> {
    if name.len() > 120 {
        return Some(format!(
            "a name of {} characters (at most 120 are answered)",
            name.len()
        ));
    }
    let labels = name.split('.').count();
    if labels > 10 {
        return Some(format!(
            "a name of {labels} labels (at most 10 are answered)"
        ));
    }
    for label in name.split('.') {
        if label.len() > 40 {
            return Some(format!(
                "a label of {} characters (at most 40 are answered)",
                label.len()
            ));
        }
        if label.len() >= 20 && label.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(format!(
                "the label `{label}` is {} hex digits (encoded data)",
                label.len()
            ));
        }
        if label.len() >= 20 {
            let bits = entropy(label);
            if bits >= 3.9 {
                return Some(format!(
                    "the label `{label}` looks like encoded data ({bits:.1} bits of entropy per character)"
                ));
            }
        }
    }
    None
}

/// Shannon entropy of `s` in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = f64::from(u32::try_from(s.len()).unwrap_or(u32::MAX));
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

/// The answer to a query, as wire bytes.
fn answer(query: &Query, rcode: RCODE, address: Option<Ipv4Addr>) -> Option<Vec<u8>> {
    let mut packet = Packet::new_reply(query.id);
    packet.set_flags(PacketFlag::AUTHORITATIVE_ANSWER | PacketFlag::RECURSION_AVAILABLE);
    if query.recursion_desired {
        packet.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    *packet.rcode_mut() = rcode;
    let name = Name::new(&query.name).ok()?;
    let qtype = match query.kind {
        QueryKind::A => QTYPE::TYPE(TYPE::A),
        QueryKind::Aaaa => QTYPE::TYPE(TYPE::AAAA),
        QueryKind::Other(code) => QTYPE::try_from(code).ok()?,
    };
    packet.questions.push(Question::new(
        name.clone(),
        qtype,
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    if let Some(ip) = address {
        packet.answers.push(simple_dns::ResourceRecord::new(
            name,
            CLASS::IN,
            TTL,
            RData::A(A::from(ip)),
        ));
    }
    packet.build_bytes_vec().ok()
}

/// A bare error answer when the query could only be half understood.
fn error_answer(id: u16, rcode: RCODE) -> Option<Vec<u8>> {
    let mut packet = Packet::new_reply(id);
    *packet.rcode_mut() = rcode;
    packet.build_bytes_vec().ok()
}

impl Gateway {
    /// Answers the DNS queries of `task` arriving on `socket` (the cell's port 53/udp)
    /// until the task closes.
    pub async fn serve_dns(self: Arc<Self>, socket: UdpSocket, task: Arc<Task>) {
        let socket = Arc::new(socket);
        let permits = Arc::new(Semaphore::new(CONCURRENT_QUERIES));
        let mut buf = vec![0u8; 4096];
        loop {
            let received = tokio::select! {
                r = socket.recv_from(&mut buf) => r,
                () = task.wait_closed() => return,
            };
            let Ok((n, peer)) = received else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let Some(bytes) = buf.get(..n).map(<[u8]>::to_vec) else {
                continue;
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                // Too many queries in flight: drop this one, as a busy resolver would.
                continue;
            };
            let gw = Arc::clone(&self);
            let task = Arc::clone(&task);
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                if let Some(reply) = gw.resolve(&bytes, &task).await {
                    let _ = socket.send_to(&reply, peer).await;
                }
                drop(permit);
            });
        }
    }

    /// Answers DNS over TCP for `task` on `listener` (the cell's port 53/tcp) until the
    /// task closes.
    pub async fn serve_dns_tcp(self: Arc<Self>, listener: TcpListener, task: Arc<Task>) {
        let permits = Arc::new(Semaphore::new(CONCURRENT_QUERIES));
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = task.wait_closed() => return,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                continue;
            };
            let gw = Arc::clone(&self);
            let task = Arc::clone(&task);
            tokio::spawn(async move {
                tokio::select! {
                    () = gw.dns_tcp_connection(stream, &task) => {}
                    () = task.wait_closed() => {}
                }
                drop(permit);
            });
        }
    }

    async fn dns_tcp_connection(&self, mut stream: TcpStream, task: &Arc<Task>) {
        for _ in 0..TCP_QUERIES {
            let mut len = [0u8; 2];
            let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await
            else {
                return;
            };
            let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(len))];
            let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut bytes)).await
            else {
                return;
            };
            let Some(reply) = self.resolve(&bytes, task).await else {
                return;
            };
            let Ok(n) = u16::try_from(reply.len()) else {
                return;
            };
            let mut framed = n.to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }

    /// The answer to one query message of `task`, or `None` to stay silent.
    async fn resolve(&self, bytes: &[u8], task: &Arc<Task>) -> Option<Vec<u8>> {
        let query = match parse_query(bytes) {
            Ok(q) => q,
            Err(QueryError::Garbage | QueryError::Response) => return None,
            Err(QueryError::Malformed { id, .. }) => return error_answer(id, RCODE::FormatError),
            Err(QueryError::NotImplemented { id }) => {
                return error_answer(id, RCODE::NotImplemented);
            }
        };
        let now = Instant::now();
        if task.names.suspended(now) {
            return answer(&query, RCODE::Refused, None);
        }
        if let QueryKind::Other(code) = query.kind {
            let message = format!(
                "only A and AAAA lookups are answered; a type {code} lookup of `{}` is refused (TXT, NULL and ANY carry DNS tunnels)",
                query.name
            );
            return self
                .refuse(task, &query, "dns-type", message, RCODE::Refused, now)
                .await;
        }
        if let Some(why) = tunnelling(&query.name) {
            let message = format!("`{}` looks like DNS tunnelling: {why}", query.name);
            return self
                .refuse(task, &query, "dns-tunnelling", message, RCODE::Refused, now)
                .await;
        }
        if let Some(ip) = task.names.address_of(&query.name) {
            return answer(&query, RCODE::NoError, address_for(&query, ip));
        }
        let request = PolicyRequest {
            principal: task.principal.clone(),
            action: Action::Dns,
            resource: Resource {
                host: Some(query.name.clone()),
                ..Resource::default()
            },
            context: Default::default(),
        };
        let policy = Arc::clone(&task.policy);
        let decision = tokio::task::spawn_blocking(move || policy.decide(&request))
            .await
            .unwrap_or_else(|e| Decision::Deny {
                reason: DenyReason::Error,
                policies: Vec::new(),
                message: format!("the decision point failed: {e}"),
            });
        match decision {
            Decision::Allow { policies, .. } => {
                let Some((ip, fresh)) = task.names.assign(&query.name) else {
                    let message = format!(
                        "the task has looked up {MAX_NAMES} names; `{}` is one too many",
                        query.name
                    );
                    return self
                        .refuse(task, &query, "dns-names", message, RCODE::Refused, now)
                        .await;
                };
                let mut event = self.dns_event(task, &query);
                event.decision = Some(AuditDecision::Allow);
                event.policies = policies;
                event
                    .details
                    .insert("address".into(), json!(ip.to_string()));
                match self.append(event).await {
                    Ok(_) => answer(&query, RCODE::NoError, address_for(&query, ip)),
                    // Fail closed: no answer that is not on the record, now or later.
                    Err(_) => {
                        if fresh {
                            task.names.forget(&query.name, ip);
                        }
                        answer(&query, RCODE::ServerFailure, None)
                    }
                }
            }
            Decision::Deny {
                reason,
                policies,
                message,
            } => {
                let mut event = self.dns_event(task, &query);
                event.decision = Some(AuditDecision::Deny);
                event.policies = policies;
                event.reason = Some(message);
                event.details.insert("code".into(), json!(reason.code()));
                self.finish_refusal(task, &query, event, RCODE::NameError, now)
                    .await
            }
            Decision::ApprovalRequired {
                policies, message, ..
            } => {
                let mut event = self.dns_event(task, &query);
                event.decision = Some(AuditDecision::Deny);
                event.policies = policies;
                event.reason = Some(message);
                event.details.insert("code".into(), json!("approval"));
                self.finish_refusal(task, &query, event, RCODE::NameError, now)
                    .await
            }
        }
    }

    async fn refuse(
        &self,
        task: &Arc<Task>,
        query: &Query,
        code: &str,
        message: String,
        rcode: RCODE,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let mut event = self.dns_event(task, query);
        event.decision = Some(AuditDecision::Deny);
        event.reason = Some(message);
        event.details.insert("code".into(), json!(code));
        self.finish_refusal(task, query, event, rcode, now).await
    }

    /// Audits a refusal (and, when it starts a flood, the suspension) and answers it.
    async fn finish_refusal(
        &self,
        task: &Arc<Task>,
        query: &Query,
        event: agentspace_core::AuditEvent,
        rcode: RCODE,
        now: Instant,
    ) -> Option<Vec<u8>> {
        if self.append(event).await.is_err() {
            return answer(query, RCODE::ServerFailure, None);
        }
        if task.names.count_refusal(now) == Flood::Started {
            let mut event = self.dns_event(task, query);
            event.decision = Some(AuditDecision::Deny);
            event.reason = Some(format!(
                "{FLOOD_LIMIT} refused lookups within {} s: the task's DNS is suspended for {} s (DNS tunnelling or flooding)",
                FLOOD_WINDOW.as_secs(),
                SUSPENSION.as_secs()
            ));
            event.details.insert("code".into(), json!("dns-flood"));
            let _ = self.append(event).await;
        }
        answer(query, rcode, None)
    }

    fn dns_event(&self, task: &Task, query: &Query) -> agentspace_core::AuditEvent {
        let mut event = crate::proxy::base_event(task, "dns", query.name.clone());
        event.kind = AuditKind::DnsLookup;
        let qtype = match query.kind {
            QueryKind::A => "A".to_owned(),
            QueryKind::Aaaa => "AAAA".to_owned(),
            QueryKind::Other(code) => format!("TYPE{code}"),
        };
        event.request.insert("qtype".into(), json!(qtype));
        event
    }
}

/// The address record of an answer: A queries get the address; AAAA get none (NODATA).
fn address_for(query: &Query, ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (query.kind == QueryKind::A).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: TYPE) -> Vec<u8> {
        let mut p = Packet::new_query(0x1234);
        p.set_flags(PacketFlag::RECURSION_DESIRED);
        p.questions.push(Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(qtype),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        p.build_bytes_vec().unwrap()
    }

    #[test]
    fn queries_parse_to_lowercase_names_and_types() {
        let q = parse_query(&query("API.Stripe.com", TYPE::A)).unwrap();
        assert_eq!(q.name, "api.stripe.com");
        assert_eq!(q.kind, QueryKind::A);
        assert_eq!(q.id, 0x1234);
        assert!(q.recursion_desired);
        let q = parse_query(&query("example.com", TYPE::TXT)).unwrap();
        assert_eq!(q.kind, QueryKind::Other(16));
        assert_eq!(parse_query(b""), Err(QueryError::Garbage));
        assert_eq!(parse_query(b"\x01"), Err(QueryError::Garbage));
        assert!(matches!(
            parse_query(b"\x12\x34garbage-garbage"),
            Err(QueryError::Malformed { id: 0x1234, .. })
        ));
    }

    #[test]
    fn answers_carry_the_synthetic_address() {
        let q = parse_query(&query("api.stripe.com", TYPE::A)).unwrap();
        let bytes = answer(&q, RCODE::NoError, Some(Ipv4Addr::new(198, 18, 0, 1))).unwrap();
        let p = Packet::parse(&bytes).unwrap();
        assert!(p.has_flags(PacketFlag::RESPONSE));
        assert_eq!(p.id(), 0x1234);
        let [rr] = p.answers.as_slice() else {
            panic!("one answer expected")
        };
        assert_eq!(rr.rdata, RData::A(A::from(Ipv4Addr::new(198, 18, 0, 1))));
        let bytes = answer(&q, RCODE::NameError, None).unwrap();
        assert_eq!(Packet::parse(&bytes).unwrap().rcode(), RCODE::NameError);
    }

    #[test]
    fn names_get_stable_synthetic_addresses() {
        let names = Names::default();
        let (a, fresh) = names.assign("a.example").unwrap();
        assert!(fresh);
        let (b, _) = names.assign("b.example").unwrap();
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(b, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(names.assign("a.example"), Some((a, false)));
        assert_eq!(names.name_of(b).as_deref(), Some("b.example"));
        assert!(is_synthetic(a) && is_synthetic(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!is_synthetic(Ipv4Addr::new(198, 20, 0, 1)));
        // A forgotten name's address is never handed to another name.
        names.forget("a.example", a);
        assert_eq!(names.name_of(a), None);
        assert_eq!(
            names.assign("c.example"),
            Some((Ipv4Addr::new(198, 18, 0, 3), true))
        );
        for i in 3..MAX_NAMES {
            assert!(names.assign(&format!("n{i}.example")).is_some());
        }
        assert_eq!(names.assign("one-too-many.example"), None);
    }

    #[test]
    fn tunnelling_names_are_recognised_and_ordinary_ones_are_not() {
        for ok in [
            "api.stripe.com",
            "prod-eu-west-1-api-gateway.example.com",
            "storage.googleapis.com",
            "my-bucket-name.s3.us-east-1.amazonaws.com",
            "api.anthropic.com",
            "customer-records-service.internal.example",
        ] {
            assert_eq!(tunnelling(ok), None, "{ok} is an ordinary name");
        }
        for bad in [
            "mzxw6ytboi4dsnzqgm2tkmbrgy3tqojq.exfil.example.com",
            "4a6f686e20446f652c20313233.x.example",
            "dGhlIHNlY3JldCBwYXNzd29yZA.example.com",
            "a.b.c.d.e.f.g.h.i.j.k.example",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example",
        ] {
            assert!(tunnelling(bad).is_some(), "{bad} looks like a tunnel");
        }
    }

    #[test]
    fn a_flood_of_refusals_suspends_lookups() {
        let names = Names::default();
        let now = Instant::now();
        for _ in 1..FLOOD_LIMIT {
            assert_eq!(names.count_refusal(now), Flood::No);
        }
        assert!(!names.suspended(now));
        assert_eq!(names.count_refusal(now), Flood::Started);
        assert!(names.suspended(now));
        assert!(!names.suspended(now + SUSPENSION + Duration::from_secs(1)));
    }
}
