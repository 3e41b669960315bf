//! The HTTP/1.1 WebSocket upgrade (RFC 6455 section 4.2), sans-IO: the server side.
//!
//! What it is: [`parse`] looks at the bytes a new connection has sent so far and says whether
//! to read more, to accept (with the `101 Switching Protocols` bytes to write), or to reject
//! (with a canned response to write before closing). tungstenite parses the request (httparse)
//! and checks it (`GET`, HTTP/1.1, `Connection: Upgrade`, `Upgrade: websocket`,
//! `Sec-WebSocket-Version: 13`, a well-formed `Sec-WebSocket-Key`) and derives the accept key.
//!
//! What it is not:
//!
//! - Not an HTTP server: there is no routing (a valid upgrade on any path is accepted), no
//!   keep-alive, no request body, and every rejection ends the connection.
//! - No extensions: the response never carries `Sec-WebSocket-Extensions`, whatever the client
//!   offers, so permessage-deflate is never on and a frame with RSV1 set is a protocol error.
//! - No subprotocol: a `Sec-WebSocket-Protocol` offer is ignored and none is selected. The
//!   response then has no `Sec-WebSocket-Protocol` header, which a client must accept
//!   (RFC 6455 section 4.1 only fails a server that picks one the client did not offer); the
//!   connection speaks the middleman protocol either way.
//! - No policy: the `Origin` header is reported in [`Upgrade::Accept`], not checked. Whether
//!   to refuse an origin is the caller's decision.
//!
//! Invariants:
//!
//! - At most `request_bytes_max` bytes are ever examined, and the outcome does not depend on
//!   how the request was split across reads: a request head of up to `request_bytes_max` bytes
//!   is parsed, a longer one is rejected with [`REQUEST_TOO_LARGE`].
//! - `consumed` is the length of the request head; the bytes after it are the client's first
//!   WebSocket bytes (a client may send frames before it reads the `101`).

use tungstenite::{
    error::CapacityError,
    handshake::{
        machine::TryParse,
        server::{create_response, write_response, Request},
    },
};

/// The outcome of looking at the bytes a new connection sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The request is not complete yet; read more (unless `request_bytes_max` was reached,
    /// which [`parse`] reports as `Reject`).
    Incomplete,
    /// A valid upgrade: write `response`, then treat `buf[consumed..]` as WebSocket bytes.
    ///
    /// `origin` is the request's `Origin` header, if it sent one (browsers always do; other
    /// clients usually do not), for the caller to check or log.
    Accept { consumed: usize, response: Vec<u8>, origin: Option<String> },
    /// Not a valid upgrade: write `response` and close.
    Reject { response: &'static [u8] },
}

/// `400 Bad Request`, for anything that is not a WebSocket upgrade.
///
/// `Sec-WebSocket-Version: 13` tells a client that offered another version which one we speak
/// (RFC 6455 section 4.4).
pub const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Connection: close\r\n\
Content-Type: text/plain\r\n\
Content-Length: 29\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n\
expected a WebSocket upgrade\n";

/// `431 Request Header Fields Too Large`, for a request head longer than `request_bytes_max`
/// bytes (or with more headers than the parser holds).
///
/// The limit bounds what a connection that has not yet proven to be a WebSocket client can
/// make us buffer and parse.
pub const REQUEST_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
Connection: close\r\n\
Content-Type: text/plain\r\n\
Content-Length: 25\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n\
request header too large\n";

/// `403 Forbidden`, for an upgrade from an `Origin` not in `--allowed-origin`.
pub const FORBIDDEN: &[u8] = b"HTTP/1.1 403 Forbidden\r\n\
Connection: close\r\n\
Content-Type: text/plain\r\n\
Content-Length: 19\r\n\
\r\n\
origin not allowed\n";

/// `503 Service Unavailable`, sent at the connection limit.
pub const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Connection: close\r\n\
Content-Type: text/plain\r\n\
Content-Length: 27\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n\
server at connection limit\n";

/// Room for the `101` response: a 34-byte status line, `Connection` and `Upgrade` (41 bytes)
/// and the 50-byte `Sec-WebSocket-Accept` line, plus the blank line, with some slack.
const RESPONSE_BYTES_CAPACITY: usize = 160;

/// Parses the upgrade request at the front of `buf`.
///
/// `buf` is everything the connection has sent so far; call again with more bytes after
/// [`Upgrade::Incomplete`].
pub fn parse(buf: &[u8], request_bytes_max: usize) -> Upgrade {
    // Parse no more than the limit, so that a head of up to `request_bytes_max` bytes is
    // accepted and a longer one rejected however the reads split it.
    let head = &buf[..buf.len().min(request_bytes_max)];
    let (consumed, request) = match Request::try_parse(head) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if buf.len() >= request_bytes_max => return reject(REQUEST_TOO_LARGE),
        Ok(None) => return Upgrade::Incomplete,
        Err(tungstenite::Error::Capacity(CapacityError::TooManyHeaders)) => {
            return reject(REQUEST_TOO_LARGE)
        }
        // Not HTTP, or not a GET (tungstenite refuses other methods while parsing).
        Err(_) => return reject(BAD_REQUEST),
    };
    let Ok(response) = create_response(&request) else {
        return reject(BAD_REQUEST);
    };
    let mut bytes = Vec::with_capacity(RESPONSE_BYTES_CAPACITY);
    // Cannot fail: writing into a Vec does no I/O, the response version is HTTP/1.1 (which
    // tungstenite sets on every request it parses), and the headers `create_response` sets
    // are ASCII (`Upgrade`, `websocket` and a base64 key).
    write_response(&mut bytes, &response).expect("101 response formats into a Vec");
    let origin = request
        .headers()
        .get("Origin")
        .map(|origin| String::from_utf8_lossy(origin.as_bytes()).into_owned());
    Upgrade::Accept { consumed, response: bytes, origin }
}

fn reject(response: &'static [u8]) -> Upgrade {
    Upgrade::Reject { response }
}

#[cfg(test)]
mod tests {
    //! `parse` on byte vectors: browser requests split at every offset, pipelined frames,
    //! every kind of rejection, the size limit, and the canned responses' framing.

    use super::*;

    /// What Chrome sends, extensions and a subprotocol offer included.
    const BROWSER: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\n\
Host: example.com:8080\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
\r\n";

    const MAX: usize = 8192;

    fn request(request_line: &str, headers: &[&str]) -> Vec<u8> {
        let mut out = format!("{request_line}\r\n");
        for header in headers {
            out.push_str(header);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    const UPGRADE_HEADERS: [&str; 5] = [
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    fn accepted(upgrade: Upgrade) -> (usize, String, Option<String>) {
        match upgrade {
            Upgrade::Accept { consumed, response, origin } => {
                (consumed, String::from_utf8(response).unwrap(), origin)
            }
            other => panic!("expected Accept, got {other:?}"),
        }
    }

    fn header<'r>(response: &'r str, name: &str) -> Option<&'r str> {
        response.split("\r\n").find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    #[test]
    fn rfc_sample_key_gets_the_rfc_accept_value() {
        let (consumed, response, _) = accepted(parse(BROWSER, MAX));
        assert_eq!(consumed, BROWSER.len());
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\n"));
        assert_eq!(header(&response, "Sec-WebSocket-Accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(header(&response, "Upgrade"), Some("websocket"));
        assert_eq!(header(&response, "Connection"), Some("Upgrade"));
        assert!(response.len() <= RESPONSE_BYTES_CAPACITY);
    }

    #[test]
    fn browser_request_is_accepted_at_every_split() {
        for end in 0..BROWSER.len() {
            assert_eq!(parse(&BROWSER[..end], MAX), Upgrade::Incomplete, "{end}");
        }
        let (consumed, response, origin) = accepted(parse(BROWSER, MAX));
        assert_eq!(consumed, BROWSER.len());
        assert_eq!(origin.as_deref(), Some("https://example.com"));
        // Extensions and subprotocols offered are not taken up.
        assert_eq!(header(&response, "Sec-WebSocket-Extensions"), None);
        assert_eq!(header(&response, "Sec-WebSocket-Protocol"), None);
        assert!(!response.contains("deflate"));
    }

    #[test]
    fn pipelined_websocket_bytes_are_not_consumed() {
        let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        let mut buf = BROWSER.to_vec();
        buf.extend_from_slice(&frame);
        let (consumed, _, _) = accepted(parse(&buf, MAX));
        assert_eq!(consumed, BROWSER.len());
        assert_eq!(buf[consumed..], frame);
        // Even when the request plus the frame exceed the limit.
        let (consumed, _, _) = accepted(parse(&buf, BROWSER.len()));
        assert_eq!(consumed, BROWSER.len());
    }

    #[test]
    fn any_path_is_accepted_and_origin_is_optional() {
        for path in ["/", "/ws", "/a/b/c?x=1&y=2", "*"] {
            let buf = request(&format!("GET {path} HTTP/1.1"), &UPGRADE_HEADERS);
            let (consumed, _, origin) = accepted(parse(&buf, MAX));
            assert_eq!((consumed, origin), (buf.len(), None), "{path}");
        }
        // Header names and the Upgrade/Connection tokens are case-insensitive.
        let buf = request(
            "GET / HTTP/1.1",
            &[
                "host: localhost",
                "upgrade: WebSocket",
                "connection: keep-alive, upgrade",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
                "sec-websocket-version: 13",
                "origin: http://localhost:3000",
            ],
        );
        let (_, _, origin) = accepted(parse(&buf, MAX));
        assert_eq!(origin.as_deref(), Some("http://localhost:3000"));
    }

    #[test]
    fn requests_that_are_not_upgrades_get_400() {
        let without = |name: &str| -> Vec<&str> {
            UPGRADE_HEADERS.iter().copied().filter(|h| !h.starts_with(name)).collect()
        };
        let with = |name: &str, replacement: &'static str| -> Vec<&str> {
            let mut headers = without(name);
            headers.push(replacement);
            headers
        };
        let cases = [
            request("GET / HTTP/1.1", &["Host: localhost"]),
            request("GET /index.html HTTP/1.1", &["Host: a", "Accept: */*"]),
            request("POST / HTTP/1.1", &UPGRADE_HEADERS),
            request("HEAD / HTTP/1.1", &UPGRADE_HEADERS),
            request("GET / HTTP/1.0", &UPGRADE_HEADERS),
            request("GET / HTTP/1.1", &without("Upgrade")),
            request("GET / HTTP/1.1", &without("Connection")),
            request("GET / HTTP/1.1", &without("Sec-WebSocket-Key")),
            request("GET / HTTP/1.1", &without("Sec-WebSocket-Version")),
            request("GET / HTTP/1.1", &with("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8")),
            request("GET / HTTP/1.1", &with("Sec-WebSocket-Key", "Sec-WebSocket-Key: short")),
            request("GET / HTTP/1.1", &with("Upgrade", "Upgrade: h2c")),
            request("GET / HTTP/1.1", &with("Connection", "Connection: keep-alive")),
        ];
        for buf in cases {
            assert_eq!(
                parse(&buf, MAX),
                Upgrade::Reject { response: BAD_REQUEST },
                "{}",
                String::from_utf8_lossy(&buf)
            );
        }
    }

    #[test]
    fn garbage_gets_400() {
        let cases: &[&[u8]] = &[
            // A TLS ClientHello: someone speaking https to a plain port.
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"\0\0\0\0",
            b"hello\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\xff\x01\r\n\r\n",
        ];
        for buf in cases {
            assert_eq!(parse(buf, MAX), Upgrade::Reject { response: BAD_REQUEST }, "{buf:?}");
        }
    }

    #[test]
    fn oversize_requests_get_431() {
        let too_large = Upgrade::Reject { response: REQUEST_TOO_LARGE };
        // Incomplete at the limit.
        let endless = [b"GET / HTTP/1.1\r\nX-Pad: ".as_slice(), &[b'a'; 200]].concat();
        assert_eq!(parse(&endless[..99], 100), Upgrade::Incomplete);
        assert_eq!(parse(&endless[..100], 100), too_large);
        assert_eq!(parse(&endless, 100), too_large);
        // Complete but longer than the limit, however it arrived.
        assert_eq!(parse(BROWSER, BROWSER.len() - 1), too_large);
        // Exactly the limit is fine.
        assert!(matches!(parse(BROWSER, BROWSER.len()), Upgrade::Accept { .. }));
        // An empty buffer is only incomplete.
        assert_eq!(parse(b"", 100), Upgrade::Incomplete);
    }

    #[test]
    fn too_many_headers_get_431() {
        let padding: Vec<String> = (0..200).map(|i| format!("X-Pad-{i}: x")).collect();
        let mut headers: Vec<&str> = UPGRADE_HEADERS.to_vec();
        headers.extend(padding.iter().map(String::as_str));
        let buf = request("GET / HTTP/1.1", &headers);
        assert_eq!(parse(&buf, 1 << 20), Upgrade::Reject { response: REQUEST_TOO_LARGE });
    }

    #[test]
    fn canned_responses_are_well_formed() {
        let cases = [
            (BAD_REQUEST, "HTTP/1.1 400 Bad Request"),
            (REQUEST_TOO_LARGE, "HTTP/1.1 431 Request Header Fields Too Large"),
            (SERVICE_UNAVAILABLE, "HTTP/1.1 503 Service Unavailable"),
        ];
        for (response, status_line) in cases {
            let response = std::str::from_utf8(response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            let mut lines = head.split("\r\n");
            assert_eq!(lines.next(), Some(status_line));
            for line in lines {
                assert!(line.split_once(": ").is_some(), "{line}");
            }
            assert_eq!(header(head, "Connection"), Some("close"));
            assert_eq!(header(head, "Content-Type"), Some("text/plain"));
            assert_eq!(header(head, "Sec-WebSocket-Version"), Some("13"));
            assert_eq!(
                header(head, "Content-Length"),
                Some(body.len().to_string().as_str()),
                "{status_line}"
            );
            assert!(!body.is_empty() && body.ends_with('\n'));
        }
    }
}
