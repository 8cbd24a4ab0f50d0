//! Request and response bodies: streamed through, with only a bounded window of a JSON
//! request body held for the decision.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use agentspace_policy::Usage;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::door::Task;
use crate::usage::UsageScanner;

/// Errors carried by bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of everything the gateway sends, both ways.
pub(crate) type GwBody = UnsyncBoxBody<Bytes, BoxError>;

/// An empty or fixed body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> GwBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A request body on its way upstream: the bytes held for inspection, then the rest as
/// the client sends it, cut off with an error past `max` bytes in all.
pub(crate) struct RequestBody {
    held: Option<Bytes>,
    rest: Option<Incoming>,
    seen: u64,
    max: u64,
    /// Bytes forwarded so far, read by the usage meter.
    sent: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body is longer than the gateway's limit of {0} bytes")]
struct TooLong(u64);

impl RequestBody {
    /// Reads up to `window` bytes of `body`. Returns the body to forward and, when the
    /// whole body fit in the window, its bytes.
    pub(crate) async fn inspect(
        mut body: Incoming,
        window: usize,
        max: u64,
    ) -> Result<(Self, Option<Bytes>), hyper::Error> {
        let mut held = BytesMut::new();
        loop {
            if held.len() > window {
                let held = held.freeze();
                let seen = held.len() as u64;
                return Ok((
                    Self {
                        held: Some(held),
                        rest: Some(body),
                        seen,
                        max,
                        sent: Arc::default(),
                    },
                    None,
                ));
            }
            match body.frame().await {
                None => break,
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        held.extend_from_slice(&data);
                    }
                }
            }
        }
        let held = held.freeze();
        Ok((
            Self {
                seen: held.len() as u64,
                held: Some(held.clone()),
                rest: None,
                max,
                sent: Arc::default(),
            },
            Some(held),
        ))
    }

    /// The whole body, when it is at most `window` bytes: read now (up to `window` bytes
    /// held) unless it was read for inspection already. `None` when it is longer; it then
    /// streams on as it comes, the bytes held first.
    pub(crate) async fn whole(&mut self, window: usize) -> Result<Option<Bytes>, hyper::Error> {
        if self.held.is_none()
            && let Some(rest) = self.rest.take()
        {
            let (read, whole) = Self::inspect(rest, window, self.max).await?;
            self.held = read.held;
            self.rest = read.rest;
            self.seen = read.seen;
            return Ok(whole);
        }
        Ok(match (&self.held, &self.rest) {
            (Some(held), None) => Some(held.clone()),
            (None, None) => Some(Bytes::new()),
            _ => None,
        })
    }

    /// The count of bytes forwarded so far.
    pub(crate) fn sent(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.sent)
    }

    /// The body streamed as it comes.
    pub(crate) fn stream(body: Incoming, max: u64) -> Self {
        Self {
            held: None,
            rest: Some(body),
            seen: 0,
            max,
            sent: Arc::default(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take()
            && !held.is_empty()
        {
            if this.seen > this.max {
                return Poll::Ready(Some(Err(Box::new(TooLong(this.max)))));
            }
            this.sent.fetch_add(held.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(held))));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.max {
                        this.rest = None;
                        return Poll::Ready(Some(Err(Box::new(TooLong(this.max)))));
                    }
                    this.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                this.rest = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.as_ref().is_none_or(Bytes::is_empty)
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |b| b.len() as u64);
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        // Upper first: a lower bound above the current upper bound panics.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint.set_lower(rest.lower().saturating_add(held));
        hint
    }
}

/// A response body from a pooled upstream connection: the connection goes back to the
/// pool when the body has been read to its end (not when it is dropped early, since the
/// connection then still holds unread bytes).
pub(crate) struct PooledBody {
    inner: Incoming,
    back: Option<(crate::upstream::Pool, crate::upstream::Pooled)>,
    meter: Option<Meter>,
}

/// Counts the bytes of one allowed request both ways and charges them to the task's
/// budgets when the response body is done (or dropped).
pub(crate) struct Meter {
    pub(crate) task: Arc<Task>,
    pub(crate) capabilities: Vec<String>,
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) received: u64,
    /// LLM token usage reported by the response.
    pub(crate) usage: UsageScanner,
}

impl Drop for Meter {
    fn drop(&mut self) {
        let bytes = self
            .received
            .saturating_add(self.sent.load(Ordering::Relaxed));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tokens = self.usage.tokens();
        let mut unrecorded = UNRECORDED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let same = |(task, capabilities, ..): &&mut Unrecorded| {
            Arc::ptr_eq(task, &self.task) && *capabilities == self.capabilities
        };
        match unrecorded.usage.iter_mut().find(same) {
            Some((_, _, b, t)) => {
                *b = b.saturating_add(bytes);
                *t = t.saturating_add(tokens);
            }
            None => unrecorded.usage.push((
                Arc::clone(&self.task),
                std::mem::take(&mut self.capabilities),
                bytes,
                tokens,
            )),
        }
        if !unrecorded.queued {
            unrecorded.queued = true;
            drop(unrecorded);
            let flush = Flush;
            // Dropping `flush` records; a runtime shutting down drops the closure
            // without running it, which records all the same.
            runtime.spawn_blocking(move || drop(flush));
        }
    }
}

/// Usage of finished responses not yet recorded: task, capabilities, bytes, tokens.
type Unrecorded = (Arc<Task>, Vec<String>, u64, u64);

/// Usage waiting for the recording queued on the blocking pool. Responses that end
/// while one is queued are added to it, so under load one budget transaction per task
/// covers many responses (at low load each response is still recorded on its own, at
/// once).
struct Pending {
    usage: Vec<Unrecorded>,
    /// Whether a [`Flush`] is queued that has not taken `usage` yet.
    queued: bool,
}

static UNRECORDED: std::sync::Mutex<Pending> = std::sync::Mutex::new(Pending {
    usage: Vec::new(),
    queued: false,
});

/// Records everything in [`UNRECORDED`] when dropped.
struct Flush;

impl Drop for Flush {
    fn drop(&mut self) {
        let usage = {
            let mut pending = UNRECORDED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.queued = false;
            std::mem::take(&mut pending.usage)
        };
        for (task, capabilities, bytes, tokens) in usage {
            let usage = Usage {
                bytes,
                tokens,
                ..Usage::default()
            };
            // It has happened: charged unconditionally; a store error only loses the
            // count (the next decision reads the store and fails closed if it is
            // unavailable).
            let _ = task
                .policy
                .record_usage(&task.principal, &capabilities, usage);
        }
    }
}

impl PooledBody {
    pub(crate) fn new(
        inner: Incoming,
        pool: crate::upstream::Pool,
        conn: crate::upstream::Pooled,
        meter: Meter,
    ) -> Self {
        Self {
            inner,
            back: Some((pool, conn)),
            meter: Some(meter),
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some((pool, conn)) = this.back.take() {
                    crate::upstream::checkin(&pool, conn);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.back = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(meter)) = (frame.data_ref(), this.meter.as_mut()) {
                    meter.received = meter.received.saturating_add(data.len() as u64);
                    meter.usage.feed(data);
                }
                // hyper stops polling once `is_end_stream` says so: give the connection
                // back on the last frame, not only on `None`.
                if this.inner.is_end_stream()
                    && let Some((pool, conn)) = this.back.take()
                {
                    crate::upstream::checkin(&pool, conn);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing left (an empty one is never polled) still frees its
        // connection; one dropped half-read does not.
        if self.inner.is_end_stream()
            && let Some((pool, conn)) = self.back.take()
        {
            crate::upstream::checkin(&pool, conn);
        }
    }
}
