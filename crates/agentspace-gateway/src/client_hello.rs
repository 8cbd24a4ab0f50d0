//! Reading a TLS ClientHello without terminating TLS: the server name (SNI) a
//! passed-through connection is decided on, and whether it offers Encrypted Client Hello
//! (which would hide the real name). The bytes read are kept so they can be relayed.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most bytes of TLS records read before the ClientHello must be complete. A ClientHello
/// with post-quantum key shares is under 2 KiB; 16 KiB leaves room for large extension
/// lists without letting a client make the gateway hold much.
pub(crate) const MAX_HELLO: usize = 16 * 1024;

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

/// What the gateway needs from a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientHello {
    /// The host name of the server_name extension, lowercase, one trailing dot removed.
    pub(crate) sni: Option<String>,
    /// Whether the client offers Encrypted Client Hello.
    pub(crate) ech: bool,
}

/// Why the first bytes of a connection are not a ClientHello the gateway accepts.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HelloError {
    /// The connection does not start with a TLS handshake record.
    #[error("the connection does not start with a TLS handshake")]
    NotTls,
    /// The first handshake message is not a ClientHello.
    #[error("the first TLS handshake message is not a ClientHello")]
    NotClientHello,
    /// A length or field does not add up.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello is longer than the gateway reads.
    #[error("the ClientHello is longer than {MAX_HELLO} bytes")]
    TooLarge,
    /// The server name is not a DNS host name.
    #[error("the TLS server name is not a host name")]
    BadName,
    /// The connection closed or failed before the ClientHello was complete.
    #[error("the connection closed before the ClientHello was complete")]
    Closed,
}

/// Reads from `io` into `held` until `held` holds a complete ClientHello, and parses it.
/// Everything read stays in `held`, to be relayed or replayed.
pub(crate) async fn read<IO: AsyncRead + Unpin>(
    io: &mut IO,
    held: &mut BytesMut,
) -> Result<ClientHello, HelloError> {
    loop {
        if let Some(hello) = parse(held)? {
            return Ok(hello);
        }
        if held.len() >= MAX_HELLO + 5 {
            return Err(HelloError::TooLarge);
        }
        held.reserve(4096);
        match io.read_buf(held).await {
            Ok(0) | Err(_) => return Err(HelloError::Closed),
            Ok(_) => {}
        }
    }
}

/// Parses the ClientHello at the start of `buf`, which may span several TLS records;
/// `Ok(None)` when more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<ClientHello>, HelloError> {
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        let Some(header) = rest.get(..5) else {
            return Ok(None);
        };
        let [kind, major, _minor, len_hi, len_lo] = [
            header.first(),
            header.get(1),
            header.get(2),
            header.get(3),
            header.get(4),
        ]
        .map(|b| b.copied().unwrap_or(0));
        if kind != HANDSHAKE {
            return Err(if message.is_empty() {
                HelloError::NotTls
            } else {
                HelloError::Malformed("a record other than a handshake inside the ClientHello")
            });
        }
        if major != 3 {
            return Err(HelloError::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if len == 0 || len > 16_384 {
            return Err(HelloError::Malformed("a record length out of range"));
        }
        let Some(payload) = rest.get(5..5 + len) else {
            return Ok(None);
        };
        message.extend_from_slice(payload);
        rest = rest.get(5 + len..).unwrap_or(&[]);
        let mut r = Reader(&message);
        let Some(msg_type) = r.u8() else {
            continue;
        };
        if msg_type != CLIENT_HELLO {
            return Err(HelloError::NotClientHello);
        }
        let Some(body_len) = r.u24() else {
            continue;
        };
        if body_len > MAX_HELLO {
            return Err(HelloError::TooLarge);
        }
        if let Some(body) = r.bytes(body_len) {
            return client_hello(body).map(Some);
        }
        if message.len() > MAX_HELLO {
            return Err(HelloError::TooLarge);
        }
    }
}

fn client_hello(body: &[u8]) -> Result<ClientHello, HelloError> {
    let bad = HelloError::Malformed;
    let mut r = Reader(body);
    r.bytes(2 + 32)
        .ok_or(bad("too short for version and random"))?;
    r.vec8().ok_or(bad("session id"))?;
    r.vec16().ok_or(bad("cipher suites"))?;
    r.vec8().ok_or(bad("compression methods"))?;
    let mut hello = ClientHello {
        sni: None,
        ech: false,
    };
    if r.0.is_empty() {
        // No extensions at all (TLS 1.2 allows it): no server name.
        return Ok(hello);
    }
    let mut exts = Reader(r.vec16().ok_or(bad("extensions"))?);
    let mut seen_sni = false;
    while !exts.0.is_empty() {
        let kind = exts.u16().ok_or(bad("extension type"))?;
        let data = exts.vec16().ok_or(bad("extension length"))?;
        match kind {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return Err(bad("two server_name extensions"));
                }
                seen_sni = true;
                hello.sni = server_name(data)?;
            }
            EXT_ENCRYPTED_CLIENT_HELLO => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// The host_name entry of a server_name extension (RFC 6066: at most one per type).
fn server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let bad = HelloError::Malformed;
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16().ok_or(bad("server name list"))?);
    if !outer.0.is_empty() {
        return Err(bad("bytes after the server name list"));
    }
    let mut name = None;
    while !list.0.is_empty() {
        let kind = list.u8().ok_or(bad("server name type"))?;
        let value = list.vec16().ok_or(bad("server name length"))?;
        if kind != 0 {
            continue;
        }
        if name.is_some() {
            return Err(bad("two host names in server_name"));
        }
        let text = std::str::from_utf8(value).map_err(|_| HelloError::BadName)?;
        let text = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let ok = !text.is_empty()
            && text.len() <= 253
            && text.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok {
            return Err(HelloError::BadName);
        }
        name = Some(text);
    }
    Ok(name)
}

/// A cursor over bytes that never reads past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.0.get(..n)?;
        self.0 = self.0.get(n..)?;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.bytes(3)?;
        Some(
            usize::from(*b.first()?) << 16 | usize::from(*b.get(1)?) << 8 | usize::from(*b.get(2)?),
        )
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    /// The first flight of a real TLS client (rustls) for `name`.
    fn real_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_real_client_hello_names_its_server() {
        let bytes = real_hello("Pinned.Example.com");
        assert_eq!(
            parse(&bytes),
            Ok(Some(ClientHello {
                sni: Some("pinned.example.com".into()),
                ech: false
            }))
        );
        // Every prefix asks for more, never errs or panics.
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "{cut}");
        }
        // An IP address is not sent as a server name.
        assert_eq!(parse(&real_hello("10.0.0.1")).unwrap().unwrap().sni, None);
    }

    #[test]
    fn a_client_hello_split_over_records_is_reassembled() {
        let bytes = real_hello("pinned.example.com");
        let payload = &bytes[5..];
        let (a, b) = payload.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(
            parse(&split).unwrap().unwrap().sni.as_deref(),
            Some("pinned.example.com")
        );
    }

    #[test]
    fn other_protocols_and_bad_names_are_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(
            parse(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(HelloError::NotClientHello)
        );
        let mut bytes = real_hello("pinned.example.com");
        let at = bytes
            .windows(18)
            .position(|w| w == b"pinned.example.com")
            .unwrap();
        bytes[at + 6] = b'/';
        assert_eq!(parse(&bytes), Err(HelloError::BadName));
    }

    /// A hand-made ClientHello with the given extensions.
    fn hello_with(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([0u8; 32]);
        body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
        let mut exts = Vec::new();
        for (kind, data) in extensions {
            exts.extend(kind.to_be_bytes());
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![CLIENT_HELLO, 0];
        msg.extend((body.len() as u16).to_be_bytes());
        msg.extend(body);
        let mut record = vec![HANDSHAKE, 3, 1];
        record.extend((msg.len() as u16).to_be_bytes());
        record.extend(msg);
        record
    }

    fn sni(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name);
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        list
    }

    #[test]
    fn encrypted_client_hello_is_noticed_and_duplicate_names_refused() {
        let hello = parse(&hello_with(&[
            (EXT_SERVER_NAME, sni(b"public.example.com")),
            (EXT_ENCRYPTED_CLIENT_HELLO, vec![0, 1, 2, 3]),
        ]))
        .unwrap()
        .unwrap();
        assert!(hello.ech);
        assert_eq!(hello.sni.as_deref(), Some("public.example.com"));
        assert_eq!(
            parse(&hello_with(&[
                (EXT_SERVER_NAME, sni(b"a.example.com")),
                (EXT_SERVER_NAME, sni(b"b.example.com")),
            ])),
            Err(HelloError::Malformed("two server_name extensions"))
        );
        assert_eq!(
            parse(&hello_with(&[(
                EXT_SERVER_NAME,
                sni(b"trailing.example.com.")
            )]))
            .unwrap()
            .unwrap()
            .sni
            .as_deref(),
            Some("trailing.example.com")
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_client_hellos_never_panic(at in 0usize..600, value in any::<u8>()) {
            let mut bytes = real_hello("pinned.example.com");
            if let Some(b) = bytes.get_mut(at) {
                *b = value;
            }
            let _ = parse(&bytes);
        }
    }
}
