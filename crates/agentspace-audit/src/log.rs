//! [`AuditLog`]: the handle every part of Agent Space appends through.
//!
//! Each handle owns one writer thread with one database connection. `append` hands the
//! event to that thread and blocks until the transaction that holds it has committed
//! durably (group commit: every append waiting at that moment shares one transaction
//! and one fsync). Several handles, threads and processes may write to the same store;
//! each transaction holds the tenant's chain lock while it reads the head and inserts.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentspace_core::{AUDIT_SCHEMA_VERSION, AuditEvent, AuditKind, Name, format_audit_time};
use ed25519_dalek::VerifyingKey;

use crate::answer::{self, AnswerSender};
use crate::canonical::canonicalize;
use crate::chain::{Checkpoint, GENESIS, SignedCheckpoint, chain_hash, sign_event};
use crate::error::AuditError;
use crate::keys::{KeyStore, TenantKey, TrustedKeys, jwks};
use crate::merkle::{CompactRange, leaf_hash};
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{CheckpointRow, Row, Store, WriteTx};

/// Tuning for an [`AuditLog`]; the defaults suit a single host.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Write a signed checkpoint at least every this many events of a tenant.
    pub checkpoint_every: u64,
    /// ... and at least this often while a tenant has events no checkpoint covers.
    pub checkpoint_interval: Duration,
    /// The most events one group commit holds.
    pub max_batch: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1024,
            checkpoint_interval: Duration::from_secs(10),
            max_batch: 8192,
        }
    }
}

/// Proof that an event is in the log: returned by [`AuditLog::append`] only after the
/// event is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The tenant whose chain holds the event.
    pub tenant: String,
    /// The event's sequence number in that chain.
    pub seq: u64,
    /// The chain hash after the event, hex.
    pub hash: String,
    /// The time the log gave the event.
    pub time: String,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Backend {
    fn connect(&self) -> Result<Box<dyn Store>, AuditError> {
        Ok(match self {
            Backend::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            Backend::Postgres(url) => Box::new(PostgresStore::open(url)?),
        })
    }
}

/// Where the writer sends a job's answer: to a caller blocked on a channel, or to one
/// awaiting it ([`AuditLog::append_async`]).
enum Reply<T> {
    Blocking(mpsc::SyncSender<Result<T, AuditError>>),
    Awaiting(AnswerSender<Result<T, AuditError>>),
}

impl<T> Reply<T> {
    fn send(self, answer: Result<T, AuditError>) {
        match self {
            // A caller that went away no longer needs the answer.
            Self::Blocking(tx) => {
                let _ = tx.send(answer);
            }
            Self::Awaiting(tx) => tx.send(answer),
        }
    }
}

enum Job {
    Append {
        events: Vec<AuditEvent>,
        reply: Reply<Vec<Receipt>>,
    },
    Checkpoint {
        tenant: String,
        reply: Reply<SignedCheckpoint>,
    },
    RotateKey {
        tenant: String,
        reply: Reply<Receipt>,
    },
}

/// An append-only, hash-chained, signed audit log with one chain per tenant.
///
/// Cloning is cheap and shares the writer. Every error from a write means nothing was
/// recorded: treat it as a deny.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    keys: Arc<KeyStore>,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    reader: Mutex<Option<Box<dyn Store>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it holds, then stop.
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn writer_stopped() -> AuditError {
    AuditError::WriterStopped("the writer thread exited".to_owned())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
    let (what, path) = (what.to_owned(), path.to_owned());
    move |e| AuditError::io(&what, &path, &e)
}

impl AuditLog {
    /// Opens the default SQLite log under `<state_dir>/audit/`, creating it if needed.
    pub fn open(state_dir: &Path) -> Result<Self, AuditError> {
        Self::open_with(state_dir, None, AuditOptions::default())
    }

    /// Opens the log named by `url`: `postgres://...` (or `postgresql://...`) for
    /// PostgreSQL, `sqlite:PATH` for a SQLite file elsewhere. Keys stay under
    /// `<state_dir>/audit/keys/` either way.
    pub fn open_url(state_dir: &Path, url: &str) -> Result<Self, AuditError> {
        Self::open_with(state_dir, Some(url), AuditOptions::default())
    }

    /// [`Self::open`] or [`Self::open_url`] with explicit options.
    pub fn open_with(
        state_dir: &Path,
        url: Option<&str>,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        let audit_dir = state_dir.join("audit");
        std::fs::create_dir_all(&audit_dir).map_err(io_err("create directory", &audit_dir))?;
        let backend = match url {
            None => Backend::Sqlite(audit_dir.join("audit.db")),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Backend::Postgres(u.to_owned())
            }
            Some(u) => match u.strip_prefix("sqlite:") {
                Some(path) => Backend::Sqlite(PathBuf::from(path)),
                None => {
                    return Err(AuditError::Request(format!(
                        "audit url `{u}` is neither `postgres://...` nor `sqlite:PATH`"
                    )));
                }
            },
        };
        let keys = Arc::new(KeyStore::new(audit_dir.join("keys")));
        // Connect here so that a bad store fails the open, not the first append.
        let store = backend.connect()?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            store,
            keys: keys.clone(),
            options,
            dirty: HashMap::new(),
        };
        let handle = std::thread::Builder::new()
            .name("agentspace-audit-writer".to_owned())
            .spawn(move || writer.run(&rx))
            .map_err(|e| AuditError::WriterStopped(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                keys,
                jobs: Some(tx),
                writer: Some(handle),
                reader: Mutex::new(None),
            }),
        })
    }

    fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, AuditError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let jobs = self.inner.jobs.as_ref().ok_or_else(writer_stopped)?;
        jobs.send(make(Reply::Blocking(reply)))
            .map_err(|_| writer_stopped())?;
        answer.recv().map_err(|_| writer_stopped())?
    }

    /// Appends one event to its tenant's chain and returns once it is durable. The log
    /// sets `v`, `seq`, `time` and `kid`. An error means the event was not recorded.
    pub fn append(&self, event: AuditEvent) -> Result<Receipt, AuditError> {
        let mut receipts = self.append_batch(vec![event])?;
        receipts
            .pop()
            .ok_or_else(|| AuditError::WriterStopped("no receipt returned".to_owned()))
    }

    /// [`AuditLog::append`] for async callers: the returned future resolves once the
    /// event is durable (same group commit, same guarantees) without holding a thread
    /// while it waits. Dropping the future does not withdraw the event.
    pub fn append_async(
        &self,
        event: AuditEvent,
    ) -> impl std::future::Future<Output = Result<Receipt, AuditError>> + Send + 'static {
        let submitted = Name::new(&event.tenant)
            .map_err(|err| AuditError::InvalidEvent(err.to_string()))
            .and_then(|_| {
                let (reply, answer) = answer::answer();
                let jobs = self.inner.jobs.as_ref().ok_or_else(writer_stopped)?;
                jobs.send(Job::Append {
                    events: vec![event],
                    reply: Reply::Awaiting(reply),
                })
                .map_err(|_| writer_stopped())?;
                Ok(answer)
            });
        async move {
            let mut receipts = submitted?.await.ok_or_else(writer_stopped)??;
            receipts
                .pop()
                .ok_or_else(|| AuditError::WriterStopped("no receipt returned".to_owned()))
        }
    }

    /// Appends events in order, all or none, and returns once they are durable.
    pub fn append_batch(&self, events: Vec<AuditEvent>) -> Result<Vec<Receipt>, AuditError> {
        for e in &events {
            Name::new(&e.tenant).map_err(|err| AuditError::InvalidEvent(err.to_string()))?;
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(|reply| Job::Append { events, reply })
    }

    /// Writes a signed checkpoint over everything `tenant` has now (or returns the
    /// latest one if nothing was added since), for export to an outside party.
    pub fn checkpoint(&self, tenant: &Name) -> Result<SignedCheckpoint, AuditError> {
        let tenant = tenant.as_str().to_owned();
        self.submit(|reply| Job::Checkpoint { tenant, reply })
    }

    /// Rotates `tenant`'s audit key: writes a `key_rotation` event signed with the old
    /// key that names the new one, then signs everything after it with the new key.
    pub fn rotate_key(&self, tenant: &Name) -> Result<Receipt, AuditError> {
        let tenant = tenant.as_str().to_owned();
        self.submit(|reply| Job::RotateKey { tenant, reply })
    }

    /// `tenant`'s public audit keys as a JWKS document, for an outside verifier.
    pub fn public_jwks(&self, tenant: &Name) -> Result<serde_json::Value, AuditError> {
        let keys: Vec<VerifyingKey> = self.inner.keys.public_keys(tenant.as_str())?;
        Ok(jwks(tenant.as_str(), &keys))
    }

    /// The public keys in this state directory's key store, for every tenant.
    pub fn local_trusted_keys(&self) -> Result<TrustedKeys, AuditError> {
        self.inner.keys.trusted()
    }

    /// Runs `f` with this handle's read connection (opened on first use).
    pub(crate) fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let mut guard = self
            .inner
            .reader
            .lock()
            .map_err(|_| AuditError::WriterStopped("reader lock poisoned".to_owned()))?;
        if guard.is_none() {
            *guard = Some(self.inner.backend.connect()?);
        }
        match guard.as_mut() {
            Some(store) => f(store.as_mut()),
            None => Err(AuditError::WriterStopped("no reader connection".to_owned())),
        }
    }

    /// Every tenant with events or checkpoints in the store.
    pub fn tenants(&self) -> Result<Vec<String>, AuditError> {
        self.with_reader(|s| s.tenants())
    }
}

/// An event sealed into its chain, waiting for its signature and insert.
struct Sealed {
    row: Row,
    hash: [u8; 32],
    /// The Merkle leaf hash, for the next checkpoint.
    leaf: [u8; 32],
    key: Arc<TenantKey>,
    receipt: Receipt,
}

struct Writer {
    store: Box<dyn Store>,
    keys: Arc<KeyStore>,
    options: AuditOptions,
    /// Tenants this writer appended to since their last checkpoint, and when.
    dirty: HashMap<String, Instant>,
}

impl Writer {
    fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        let tick = (self.options.checkpoint_interval / 2).max(Duration::from_millis(10));
        loop {
            let first = match jobs.recv_timeout(tick) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.checkpoint_idle();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.checkpoint_idle();
                    return;
                }
            };
            let mut appends = Vec::new();
            let mut count = 0;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Append { events, reply } => {
                        count += events.len();
                        appends.push((events, reply));
                    }
                    Job::Checkpoint { tenant, reply } => {
                        reply.send(self.checkpoint(&tenant, true).and_then(|cp| {
                            cp.ok_or_else(|| {
                                AuditError::Request("no checkpoint was written".to_owned())
                            })
                        }));
                    }
                    Job::RotateKey { tenant, reply } => {
                        reply.send(self.rotate_key(&tenant));
                    }
                }
                if count < self.options.max_batch {
                    next = jobs.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
        }
    }

    /// Writes every waiting append in one transaction, then answers each caller.
    fn commit(&mut self, jobs: Vec<(Vec<AuditEvent>, Reply<Vec<Receipt>>)>) {
        let tenants: Vec<String> = jobs
            .iter()
            .flat_map(|(events, _)| events.iter().map(|e| e.tenant.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut results: Vec<Option<Result<Vec<Receipt>, AuditError>>> = vec![None; jobs.len()];
        let mut keys: HashMap<String, Arc<TenantKey>> = HashMap::new();
        for t in &tenants {
            match self.keys.signing_key(t) {
                Ok(k) => {
                    keys.insert(t.clone(), k);
                }
                Err(e) => {
                    for ((events, _), slot) in jobs.iter().zip(results.iter_mut()) {
                        if events.iter().any(|ev| &ev.tenant == t) {
                            *slot = Some(Err(e.clone()));
                        }
                    }
                }
            }
        }
        let options = self.options.clone();
        let mut checkpointed = Vec::new();
        let outcome = self.store.write(&tenants, &mut |tx| {
            checkpointed.clear();
            let now = now_ns();
            let events: Vec<&[AuditEvent]> = jobs.iter().map(|(e, _)| e.as_slice()).collect();
            let mut failed: Vec<Option<AuditError>> = results
                .iter()
                .map(|r| r.as_ref().and_then(|r| r.as_ref().err().cloned()))
                .collect();
            let (mut sealed, per_job) = seal_jobs(tx, &events, &mut failed, &keys, now)?;
            for (slot, f) in results.iter_mut().zip(failed) {
                if let Some(e) = f {
                    *slot = Some(Err(e));
                }
            }
            sign_all(&mut sealed);
            let rows: Vec<&Row> = sealed.iter().map(|s| &s.row).collect();
            if !rows.is_empty() {
                tx.insert_events(&rows)?;
            }
            for (t, key) in &keys {
                let recent: Vec<(u64, [u8; 32])> = sealed
                    .iter()
                    .filter(|x| &x.row.tenant == t)
                    .map(|x| (x.row.seq, x.leaf))
                    .collect();
                if !recent.is_empty()
                    && maybe_checkpoint(tx, t, key, now, &options, false, &recent)?.is_some()
                {
                    checkpointed.push(t.clone());
                }
            }
            for (i, range) in per_job.into_iter().enumerate() {
                if let Some(slot) = results.get_mut(i)
                    && slot.is_none()
                {
                    let receipts = sealed
                        .get(range)
                        .unwrap_or_default()
                        .iter()
                        .map(|s| s.receipt.clone());
                    *slot = Some(Ok(receipts.collect()));
                }
            }
            Ok(())
        });
        let now = Instant::now();
        for t in &tenants {
            if checkpointed.contains(t) {
                self.dirty.remove(t);
            } else {
                self.dirty.entry(t.clone()).or_insert(now);
            }
        }
        for ((_, reply), result) in jobs.into_iter().zip(results) {
            let answer = match (&outcome, result) {
                (_, Some(Err(e))) => Err(e),
                (Err(e), _) => Err(e.clone()),
                (Ok(()), Some(ok)) => ok,
                (Ok(()), None) => Err(AuditError::WriterStopped("event was not sealed".to_owned())),
            };
            reply.send(answer);
        }
    }

    /// Checkpoints tenants whose un-checkpointed events have waited long enough.
    fn checkpoint_idle(&mut self) {
        let due: Vec<String> = self
            .dirty
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.options.checkpoint_interval)
            .map(|(t, _)| t.clone())
            .collect();
        for t in due {
            // A failure here loses nothing: the events are stored, and the next append
            // or tick tries again.
            if self.checkpoint(&t, false).is_ok() {
                self.dirty.remove(&t);
            }
        }
    }

    fn checkpoint(
        &mut self,
        tenant: &str,
        force: bool,
    ) -> Result<Option<SignedCheckpoint>, AuditError> {
        let key = self.keys.signing_key(tenant)?;
        let options = self.options.clone();
        let mut out = None;
        self.store.write(&[tenant.to_owned()], &mut |tx| {
            out = maybe_checkpoint(tx, tenant, &key, now_ns(), &options, force, &[])?;
            Ok(())
        })?;
        Ok(out)
    }

    fn rotate_key(&mut self, tenant: &str) -> Result<Receipt, AuditError> {
        let old = self.keys.signing_key(tenant)?;
        let new = self.keys.new_key(tenant)?;
        let name = Name::new(tenant).map_err(|e| AuditError::InvalidEvent(e.to_string()))?;
        let mut event = AuditEvent::new(&name, AuditKind::KeyRotation, "rotate");
        event.resource = Some("audit-key".to_owned());
        event
            .details
            .insert("old_kid".to_owned(), old.kid.clone().into());
        event
            .details
            .insert("new_kid".to_owned(), new.kid.clone().into());
        event.details.insert(
            "new_public_key".to_owned(),
            hex::encode(new.signing.verifying_key().as_bytes()).into(),
        );
        let mut receipt = None;
        self.store.write(&[tenant.to_owned()], &mut |tx| {
            let keys = HashMap::from([(tenant.to_owned(), old.clone())]);
            let mut failed = vec![None];
            let (mut sealed, _) = seal_jobs(
                tx,
                &[std::slice::from_ref(&event)],
                &mut failed,
                &keys,
                now_ns(),
            )?;
            if let Some(Some(e)) = failed.pop() {
                return Err(e);
            }
            sign_all(&mut sealed);
            let rows: Vec<&Row> = sealed.iter().map(|s| &s.row).collect();
            tx.insert_events(&rows)?;
            receipt = sealed.pop().map(|s| s.receipt);
            Ok(())
        })?;
        // Only once the rotation is on record does the new key start signing.
        self.keys.make_current(tenant, &new)?;
        receipt.ok_or_else(|| AuditError::WriterStopped("no receipt returned".to_owned()))
    }
}

/// Seals the events of every job not already failed, in order: places them in their
/// chains (sequence number, time, key id), encodes them (in parallel), then chains the
/// hashes. A job with an event that cannot be encoded fails alone, and the others are
/// placed again without it, so that no sequence number is skipped.
fn seal_jobs(
    tx: &mut dyn WriteTx,
    jobs: &[&[AuditEvent]],
    failed: &mut [Option<AuditError>],
    keys: &HashMap<String, Arc<TenantKey>>,
    now: u64,
) -> Result<(Vec<Sealed>, Vec<std::ops::Range<usize>>), AuditError> {
    // Each tenant's chain head as stored: (hash, next seq, time of the last event).
    let mut heads: HashMap<String, ([u8; 32], u64, u64)> = HashMap::new();
    loop {
        let mut next: HashMap<&str, (u64, u64)> = HashMap::new();
        // (job, event, seq, time, key): where each event goes; the copying and encoding
        // happen on two threads below.
        let mut placed: Vec<(usize, &AuditEvent, u64, u64, Arc<TenantKey>)> = Vec::new();
        let mut ranges = Vec::with_capacity(jobs.len());
        for (i, events) in jobs.iter().enumerate() {
            let start = placed.len();
            if failed.get(i).is_some_and(Option::is_none) {
                for ev in events.iter() {
                    let Some(key) = keys.get(&ev.tenant) else {
                        continue;
                    };
                    if !heads.contains_key(&ev.tenant) {
                        let head = tx
                            .head(&ev.tenant)?
                            .map_or((GENESIS, 0, 0), |h| (h.hash, h.seq + 1, h.time_ns));
                        heads.insert(ev.tenant.clone(), head);
                    }
                    let (_, first_seq, last_time) =
                        heads.get(&ev.tenant).copied().unwrap_or((GENESIS, 0, 0));
                    let pos = next
                        .entry(ev.tenant.as_str())
                        .or_insert((first_seq, last_time));
                    // Time never goes backwards along a chain, even if the clock does.
                    let time_ns = now.max(pos.1);
                    placed.push((i, ev, pos.0, time_ns, key.clone()));
                    *pos = (pos.0 + 1, time_ns);
                }
            }
            ranges.push(start..placed.len());
        }
        let encoded = par_map(&placed, |(_, ev, seq, time_ns, key)| {
            let mut event = (*ev).clone();
            event.v = AUDIT_SCHEMA_VERSION;
            event.seq = *seq;
            event.time = format_audit_time(*time_ns);
            event.kid.clone_from(&key.kid);
            let value = serde_json::to_value(&event)
                .map_err(|e| AuditError::InvalidEvent(e.to_string()))?;
            let bytes =
                canonicalize(&value).map_err(|e| AuditError::InvalidEvent(e.to_string()))?;
            let leaf = leaf_hash(&bytes);
            Ok::<_, AuditError>((bytes, leaf))
        });
        let mut retry = false;
        for ((i, ..), bytes) in placed.iter().zip(&encoded) {
            if let (Err(e), Some(slot)) = (bytes, failed.get_mut(*i)) {
                slot.get_or_insert_with(|| e.clone());
                retry = true;
            }
        }
        if retry {
            continue;
        }
        let mut prev: HashMap<String, [u8; 32]> =
            heads.iter().map(|(t, h)| (t.clone(), h.0)).collect();
        let mut sealed = Vec::with_capacity(placed.len());
        for ((_, ev, seq, time_ns, key), encoded) in placed.into_iter().zip(encoded) {
            let (bytes, leaf) = encoded?;
            let link = prev.entry(ev.tenant.clone()).or_insert(GENESIS);
            let hash = chain_hash(link, &bytes);
            *link = hash;
            let receipt = Receipt {
                tenant: ev.tenant.clone(),
                seq,
                hash: hex::encode(hash),
                time: format_audit_time(time_ns),
            };
            sealed.push(Sealed {
                row: Row {
                    tenant: ev.tenant.clone(),
                    seq,
                    time_ns,
                    kind: ev.kind.as_str().to_owned(),
                    task: ev.task.clone(),
                    event: bytes,
                    hash: hash.to_vec(),
                    sig: Vec::new(),
                },
                hash,
                leaf,
                key,
                receipt,
            });
        }
        return Ok((sealed, ranges));
    }
}

/// Maps `f` over `items` on two threads when there are enough of them to pay for it:
/// encoding and signing are most of an append's CPU cost.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 64 {
        return items.iter().map(&f).collect();
    }
    let (a, b) = items.split_at(items.len() / 2);
    std::thread::scope(|scope| {
        let left = scope.spawn(|| a.iter().map(&f).collect::<Vec<R>>());
        let right: Vec<R> = b.iter().map(&f).collect();
        let mut out = left.join().unwrap_or_else(|_| a.iter().map(&f).collect());
        out.extend(right);
        out
    })
}

/// Signs every sealed event.
fn sign_all(sealed: &mut [Sealed]) {
    let sigs = par_map(sealed, |s| sign_event(&s.key.signing, &s.hash));
    for (s, sig) in sealed.iter_mut().zip(sigs) {
        s.row.sig = sig.to_vec();
    }
}

/// Writes a checkpoint for `tenant` if one is due (or `force`), inside `tx`. `recent`
/// holds the (seq, leaf hash) of events this transaction wrote, so they are not read back.
fn maybe_checkpoint(
    tx: &mut dyn WriteTx,
    tenant: &str,
    key: &TenantKey,
    now: u64,
    options: &AuditOptions,
    force: bool,
    recent: &[(u64, [u8; 32])],
) -> Result<Option<SignedCheckpoint>, AuditError> {
    let head = tx.head(tenant)?;
    let size = head.map_or(0, |h| h.seq + 1);
    let last = tx.last_checkpoint(tenant)?;
    let corrupt = |why: &str| AuditError::Store {
        store: "audit_checkpoints".to_owned(),
        message: format!(
            "stored checkpoint of tenant `{tenant}` is unreadable ({why}); run `agentspace audit verify`"
        ),
    };
    let (mut range, last_time, last_signed) = match &last {
        Some(cp) => {
            let range = CompactRange::from_bytes(cp.size, &cp.frontier)
                .ok_or_else(|| corrupt("frontier"))?;
            let body: Checkpoint = serde_json::from_slice(&cp.body).map_err(|_| corrupt("body"))?;
            let time =
                agentspace_core::parse_audit_time(&body.time).ok_or_else(|| corrupt("time"))?;
            let signed = SignedCheckpoint {
                checkpoint: body,
                sig: hex::encode(&cp.sig),
            };
            (range, Some(time), Some(signed))
        }
        None => (CompactRange::default(), None, None),
    };
    if size <= range.size() {
        return Ok(if force { last_signed } else { None });
    }
    let every = options.checkpoint_every.max(1);
    let interval = u64::try_from(options.checkpoint_interval.as_nanos()).unwrap_or(u64::MAX);
    let due = force
        || size / every > range.size() / every
        || last_time.is_none_or(|t| now.saturating_sub(t) >= interval);
    if !due {
        return Ok(None);
    }
    // Events up to this transaction's are read back; its own leaves are known.
    let known_from = recent
        .first()
        .map_or(size, |(seq, _)| *seq)
        .max(range.size());
    for bytes in tx.event_bytes(tenant, range.size(), known_from)? {
        range.push(leaf_hash(&bytes));
    }
    for (seq, leaf) in recent {
        if *seq == range.size() {
            range.push(*leaf);
        }
    }
    if range.size() != size {
        return Err(corrupt("events missing below the head"));
    }
    let checkpoint = Checkpoint {
        v: 1,
        tenant: tenant.to_owned(),
        size,
        root: hex::encode(range.root()),
        head: hex::encode(head.map_or(GENESIS, |h| h.hash)),
        time: format_audit_time(now.max(head.map_or(0, |h| h.time_ns))),
        kid: key.kid.clone(),
    };
    let body = checkpoint.canonical()?;
    let signed = checkpoint.sign(&key.signing)?;
    let sig = hex::decode(&signed.sig).map_err(|e| AuditError::InvalidEvent(e.to_string()))?;
    tx.insert_checkpoint(&CheckpointRow {
        tenant: tenant.to_owned(),
        size,
        body,
        sig,
        frontier: range.to_bytes(),
    })?;
    Ok(Some(signed))
}
