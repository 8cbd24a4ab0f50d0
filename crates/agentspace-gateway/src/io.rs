//! A stream with bytes already read put back in front, so the gateway can look at the
//! first byte of a tunnel (TLS or plain HTTP?) and still hand the whole stream on.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Implements `AsyncWrite` for a stream wrapper by passing every call to its `inner`
/// field: the wrappers here only ever watch or extend the read side.
macro_rules! delegate_async_write {
    (impl[$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*> tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
pub(crate) use delegate_async_write;

/// `inner` with `prefix` read first.
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            let chunk = this.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// A stream that holds something (a connection permit) for as long as it lives, also
/// once hyper hands it over to a CONNECT tunnel.
pub(crate) struct Held<T, H> {
    inner: T,
    _held: H,
}

impl<T, H> Held<T, H> {
    pub(crate) fn new(inner: T, held: H) -> Self {
        Self { inner, _held: held }
    }
}

impl<T: AsyncRead + Unpin, H: Unpin> AsyncRead for Held<T, H> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

/// A stream that adds the bytes read from it to a shared count, so a relay that ends
/// abruptly (reset, task closed) still knows what passed.
pub(crate) struct Counted<T> {
    inner: T,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, read: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self { inner, read }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        this.read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        polled
    }
}

delegate_async_write!(impl[T: AsyncWrite + Unpin] Counted<T>);
delegate_async_write!(impl[T: AsyncWrite + Unpin] Rewind<T>);
delegate_async_write!(impl[T: AsyncWrite + Unpin, H: Unpin] Held<T, H>);
