//! A watch on the bytes an HTTP/1 client sends, for what hyper normalises silently:
//! a request with both Content-Length and Transfer-Encoding (hyper drops the length) and
//! repeated identical Content-Length headers (hyper keeps one). Either is a sign of a
//! request-smuggling attempt, and the gateway refuses such a request instead of
//! guessing. The watch follows message framing (length, chunked) to find each head;
//! once it sees an ambiguous head, a CONNECT or an upgrade, it stops looking and leaves
//! the flag as it is.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads or chunk lines longer than this are left to hyper (which refuses them).
const LINE_LIMIT: usize = 256 * 1024;

enum State {
    /// Reading a request head.
    Head(Vec<u8>),
    /// Skipping a body of known length.
    Body(u64),
    /// A chunk-size line.
    ChunkSize(Vec<u8>),
    /// Chunk data, then its CRLF.
    ChunkData(u64),
    /// Trailer section after the last chunk.
    Trailers(Vec<u8>),
    /// No longer watched.
    Done,
}

/// `inner` watched for ambiguous framing; `ambiguous` is set when it is seen.
pub(crate) struct FramingGuard<T> {
    inner: T,
    state: State,
    ambiguous: Arc<AtomicBool>,
}

impl<T> FramingGuard<T> {
    pub(crate) fn new(inner: T, ambiguous: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            state: State::Head(Vec::new()),
            ambiguous,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Body(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = data
                        .get(usize::try_from(n).unwrap_or(usize::MAX)..)
                        .unwrap_or(&[]);
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkData(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = data
                        .get(usize::try_from(n).unwrap_or(usize::MAX)..)
                        .unwrap_or(&[]);
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Head(_) | State::ChunkSize(_) | State::Trailers(_) => {
                    let Some((&byte, rest)) = data.split_first() else {
                        return;
                    };
                    data = rest;
                    let state = std::mem::replace(&mut self.state, State::Done);
                    self.state = self.step(state, byte);
                }
            }
        }
    }

    fn step(&self, state: State, byte: u8) -> State {
        let too_long = |buf: &Vec<u8>| buf.len() > LINE_LIMIT;
        match state {
            // Blank lines before a request line are allowed (RFC 9112 §2.2).
            State::Head(buf) if buf.is_empty() && (byte == b'\r' || byte == b'\n') => {
                State::Head(buf)
            }
            State::Head(mut buf) => {
                buf.push(byte);
                if too_long(&buf) {
                    State::Done
                } else if buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n") {
                    self.after_head(&buf)
                } else {
                    State::Head(buf)
                }
            }
            State::ChunkSize(mut buf) => {
                buf.push(byte);
                if too_long(&buf) {
                    return State::Done;
                }
                if !buf.ends_with(b"\n") {
                    return State::ChunkSize(buf);
                }
                // The CRLF after a chunk's data arrives here as an empty line.
                let line = String::from_utf8_lossy(&buf);
                let size = line.split(';').next().unwrap_or("").trim();
                if size.is_empty() {
                    return State::ChunkSize(Vec::new());
                }
                match u64::from_str_radix(size, 16) {
                    Ok(0) => State::Trailers(Vec::new()),
                    Ok(n) => State::ChunkData(n),
                    Err(_) => State::Done,
                }
            }
            State::Trailers(mut buf) => {
                buf.push(byte);
                if too_long(&buf) {
                    State::Done
                } else if buf == b"\r\n"
                    || buf == b"\n"
                    || buf.ends_with(b"\r\n\r\n")
                    || buf.ends_with(b"\n\n")
                {
                    State::Head(Vec::new())
                } else {
                    State::Trailers(buf)
                }
            }
            other => other,
        }
    }

    fn after_head(&self, head: &[u8]) -> State {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
        let request_line = lines.next().unwrap_or("");
        let mut lengths = Vec::new();
        let mut te: Option<String> = None;
        let mut upgrade = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            match name.as_str() {
                "content-length" => lengths.push(value.to_owned()),
                "transfer-encoding" => {
                    te = Some(match te {
                        Some(t) => format!("{t}, {value}"),
                        None => value.to_owned(),
                    });
                }
                "upgrade" => upgrade = true,
                _ => {}
            }
        }
        if lengths.len() > 1 || (!lengths.is_empty() && te.is_some()) {
            self.ambiguous.store(true, Ordering::SeqCst);
            return State::Done;
        }
        if request_line.starts_with("CONNECT ") || upgrade {
            return State::Done;
        }
        if let Some(te) = te {
            let chunked = te
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            return if chunked {
                State::ChunkSize(Vec::new())
            } else {
                State::Done
            };
        }
        match lengths.first().map(|l| l.parse::<u64>()) {
            None => State::Head(Vec::new()),
            Some(Ok(0)) => State::Head(Vec::new()),
            Some(Ok(n)) => State::Body(n),
            Some(Err(_)) => State::Done,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && !matches!(this.state, State::Done)
        {
            this.feed(buf.filled().get(before..).unwrap_or(&[]));
        }
        polled
    }
}

crate::io::delegate_async_write!(impl[T: AsyncWrite + Unpin] FramingGuard<T>);

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(chunks: &[&[u8]]) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut g = FramingGuard::new((), Arc::clone(&flag));
        for c in chunks {
            g.feed(c);
        }
        flag.load(Ordering::SeqCst)
    }

    #[test]
    fn ambiguous_heads_are_seen_anywhere_in_a_keep_alive_stream() {
        assert!(watch(&[
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(watch(&[
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc"
        ]));
        // Split across reads, after a chunked request and a sized one.
        assert!(watch(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n0\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",
            b"cdGET / HTTP/1.1\r\nContent-Len",
            b"gth: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ]));
        // A body that merely contains such text is not a head.
        assert!(!watch(&[
            b"POST / HTTP/1.1\r\nContent-Length: 60\r\n\r\n",
            b"X: 1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0123456",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ]));
        assert!(!watch(&[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n"
        ]));
    }

    /// A well-formed request whose body may contain text that looks like a head.
    fn request(body: &[u8], chunked: bool, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        if chunked {
            out.extend_from_slice(
                b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            for part in body.chunks(chunk.max(1)) {
                out.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
        } else {
            out.extend_from_slice(
                format!(
                    "POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(body);
        }
        out
    }

    fn split_feed(stream: &[u8], cuts: &[usize]) -> bool {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts {
            chunks.push(&stream[at..c]);
            at = c;
        }
        chunks.push(&stream[at..]);
        watch(&chunks)
    }

    const DECOY: &[u8] =
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";

    proptest::proptest! {
        #[test]
        fn the_verdict_does_not_depend_on_how_reads_split_the_stream(
            bodies in proptest::collection::vec(
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), proptest::prelude::any::<bool>(), 1usize..50, proptest::prelude::any::<bool>()),
                1..6,
            ),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..12),
            smuggle in proptest::prelude::any::<bool>(),
        ) {
            let mut stream = Vec::new();
            for (body, chunked, chunk, decoy) in &bodies {
                let mut body = body.clone();
                if *decoy {
                    body.extend_from_slice(DECOY);
                }
                stream.extend(request(&body, *chunked, *chunk));
            }
            if smuggle {
                stream.extend_from_slice(DECOY);
            }
            proptest::prop_assert_eq!(split_feed(&stream, &cuts), smuggle);
        }
    }
}
