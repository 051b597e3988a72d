//! The server side of the WebSocket opening handshake (RFC 6455 §4.2.1 and
//! §4.2.2): checks an upgrade request and builds the 101 response.
//!
//! This module owns only the RFC's rules for the upgrade headers. It does not
//! parse HTTP (that is `crate::http`), route paths, authenticate users or do
//! any I/O. `front::upgrade` calls [`check`] on the parsed head of a `GET /ws`;
//! on `Ok` it writes [`response_101`] and hands the socket to the shard, on `Err`
//! it answers with the reject's status and reason and closes.

use std::fmt;

use crate::http::{self, BodyKind, Head, Method};

/// The only protocol version we speak (RFC 6455 §4.1, §11.6).
pub const WEBSOCKET_VERSION: &str = "13";

/// Why an upgrade request was refused. The caller writes
/// [`Reject::response`] and closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// RFC 6455 §4.2.1 (1): "An HTTP/1.1 or higher GET request". The router
    /// answers other methods with 405 first; here it is 400.
    NotGet,
    /// RFC 6455 §4.2.1 (1): HTTP/1.0 cannot upgrade; 400.
    HttpVersion,
    /// RFC 6455 §4.2.1 (2): no (or an empty) Host header; 400.
    MissingHost,
    /// RFC 6455 §4.2.1 (3): no `websocket` token in Upgrade; 400.
    NotWebSocketUpgrade,
    /// RFC 6455 §4.2.1 (4): no `upgrade` token in Connection; 400.
    NotConnectionUpgrade,
    /// RFC 6455 §4.2.1 (5): Sec-WebSocket-Key missing, repeated, or not the
    /// base64 of 16 bytes; 400.
    BadKey,
    /// RFC 6455 §4.2.1 (6): Sec-WebSocket-Version missing. We answer 426 with
    /// the version we speak rather than 400, so the client learns what to
    /// send (§4.4 asks for that header on a version mismatch).
    MissingVersion,
    /// RFC 6455 §4.4: a version other than 13, or the header repeated; 426
    /// with `Sec-WebSocket-Version: 13`.
    UnsupportedVersion,
    /// The upgrade request announces a body (a non-zero Content-Length, or
    /// chunked). RFC 6455 §4.1 has the client send a bare GET, and RFC 9112
    /// §6.3 makes a body part of the request: anything that honours the
    /// framing sees the WebSocket stream start after the body, while we would
    /// decode the body as client frames. Refusing (400) removes the ambiguity.
    HasBody,
}

impl Reject {
    /// The HTTP status to answer with: 426 for version problems, else 400.
    pub const fn status(&self) -> u16 {
        match self {
            Reject::MissingVersion | Reject::UnsupportedVersion => 426,
            Reject::NotGet
            | Reject::HttpVersion
            | Reject::MissingHost
            | Reject::NotWebSocketUpgrade
            | Reject::NotConnectionUpgrade
            | Reject::BadKey
            | Reject::HasBody => 400,
        }
    }

    /// A short explanation for the response body and the logs.
    pub const fn reason(&self) -> &'static str {
        match self {
            Reject::NotGet => "websocket upgrade must use GET",
            Reject::HttpVersion => "websocket upgrade needs HTTP/1.1",
            Reject::MissingHost => "missing Host header",
            Reject::NotWebSocketUpgrade => "Upgrade header must include websocket",
            Reject::NotConnectionUpgrade => "Connection header must include upgrade",
            Reject::BadKey => "Sec-WebSocket-Key must be the base64 of 16 bytes",
            Reject::MissingVersion => "missing Sec-WebSocket-Version (13 is supported)",
            Reject::UnsupportedVersion => "unsupported Sec-WebSocket-Version (13 is supported)",
            Reject::HasBody => "websocket upgrade must not carry a body",
        }
    }

    /// Headers the response must carry besides the usual ones: RFC 6455 §4.4
    /// asks a 426 to name the versions we understand.
    pub const fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self.status() {
            426 => &[("Sec-WebSocket-Version", WEBSOCKET_VERSION)],
            _ => &[],
        }
    }

    /// The complete HTTP response (JSON error body, `Connection: close`).
    pub fn response(&self) -> Vec<u8> {
        http::response(
            self.status(),
            "application/json",
            &http::json_error_body(self.reason()),
            false,
            self.extra_headers(),
        )
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Reject {}

/// Checks an upgrade request (RFC 6455 §4.2.1) and returns the value for the
/// `Sec-WebSocket-Accept` header (§4.2.2 (5)).
///
/// Checks run in the RFC's order, so the first failing rule is reported.
pub fn check(head: &Head) -> Result<String, Reject> {
    if head.method != Method::Get {
        return Err(Reject::NotGet);
    }
    if head.minor_version < 1 {
        return Err(Reject::HttpVersion);
    }
    if head.header("host").is_none_or(str::is_empty) {
        return Err(Reject::MissingHost);
    }
    // RFC 9110 §7.8 and §7.6.1: both are comma lists, possibly over several lines.
    if !head
        .headers_named("upgrade")
        .any(|v| http::contains_token(v, "websocket"))
    {
        return Err(Reject::NotWebSocketUpgrade);
    }
    if !head
        .headers_named("connection")
        .any(|v| http::contains_token(v, "upgrade"))
    {
        return Err(Reject::NotConnectionUpgrade);
    }
    // §11.3.1: Sec-WebSocket-Key "MUST NOT appear more than once".
    let key = single(head, "sec-websocket-key").ok_or(Reject::BadKey)?;
    if !is_valid_key(key) {
        return Err(Reject::BadKey);
    }
    let mut versions = head.headers_named("sec-websocket-version");
    match (versions.next(), versions.next()) {
        (None, _) => return Err(Reject::MissingVersion),
        (Some(WEBSOCKET_VERSION), None) => {}
        _ => return Err(Reject::UnsupportedVersion),
    }
    if !matches!(head.body, BodyKind::None | BodyKind::ContentLength(0)) {
        return Err(Reject::HasBody);
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The value of `name` when it appears exactly once.
fn single<'a>(head: &'a Head, name: &'a str) -> Option<&'a str> {
    let mut values = head.headers_named(name);
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// RFC 6455 §4.2.1 (5): the key is "a base64-encoded value that, when decoded,
/// is 16 bytes in length". 16 bytes are 128 bits: 21 full sextets plus 2 bits,
/// so 22 base64 characters whose last one has its low 4 bits zero, then "==".
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let [data @ .., last, b'=', b'='] = bytes else {
        return false;
    };
    if bytes.len() != 24 {
        return false;
    }
    data.iter().all(|&b| base64_value(b).is_some())
        && base64_value(*last).is_some_and(|v| v & 0x0F == 0)
}

/// The 6-bit value of a character of the standard base64 alphabet
/// (RFC 4648 §4).
fn base64_value(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// The 101 response that completes the handshake (RFC 6455 §4.2.2 (5)).
/// No subprotocol or extension is selected, so neither header is sent.
pub fn response_101(accept: &str) -> Vec<u8> {
    response_101_with(accept, None)
}

/// [`response_101`] with a `Sec-WebSocket-Extensions` line when `extensions`
/// is set (RFC 6455 §9.1, RFC 7692 §5: the one offer the server accepted).
pub fn response_101_with(accept: &str, extensions: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + extensions.map_or(0, str::len));
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    if let Some(extensions) = extensions {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(extensions.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// Fuzz entry point: parses `data` as a request head with [`http::parse_head`]
/// and, when a complete head comes out, runs [`check`] on it. It must never
/// panic; it asserts what the caller relies on: an accepted key gives a
/// 28-character base64 accept value (a SHA-1) and a 101 that ends its head,
/// and a refusal has a 400 or 426 status and a complete response.
pub fn fuzz_one(data: &[u8]) {
    let limits = http::Limits {
        head_bytes_max: 1024,
        headers_max: 16,
        body_bytes_max: 0,
    };
    let Ok(Some(head)) = http::parse_head(data, &limits) else {
        return;
    };
    match check(&head) {
        Ok(accept) => {
            assert_eq!(head.method, Method::Get);
            assert_eq!(accept.len(), 28, "base64 of a 20-byte SHA-1");
            assert!(accept.ends_with('='));
            assert!(accept[..27].bytes().all(|b| base64_value(b).is_some()));
            let response = response_101(&accept);
            assert!(response.starts_with(b"HTTP/1.1 101 "));
            assert!(response.ends_with(b"\r\n\r\n"));
        }
        Err(reject) => {
            assert!(matches!(reject.status(), 400 | 426));
            let response = reject.response();
            let text = String::from_utf8_lossy(&response);
            assert!(text.starts_with(&format!("HTTP/1.1 {} ", reject.status())));
            assert!(text.contains("\r\n\r\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_head, Limits};

    const LIMITS: Limits = Limits {
        head_bytes_max: 4096,
        headers_max: 32,
        body_bytes_max: 0,
    };

    /// The RFC 6455 §1.3 example key.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    const GOOD: [(&str, &str); 5] = [
        ("Host", "server.example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ];

    fn head_from(request_line: &str, headers: &[(&str, &str)]) -> Head {
        let mut text = format!("{request_line}\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        match parse_head(text.as_bytes(), &LIMITS) {
            Ok(Some(head)) => head,
            other => panic!("test request did not parse: {other:?}"),
        }
    }

    fn with(name: &str, value: Option<&str>) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = GOOD
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        if let Some(value) = value {
            headers.push((name.to_owned(), value.to_owned()));
        }
        headers
    }

    fn check_with(name: &str, value: Option<&str>) -> Result<String, Reject> {
        let headers = with(name, value);
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        check(&head_from("GET /ws HTTP/1.1", &refs))
    }

    /// RFC 6455 §1.3: the key "dGhlIHNhbXBsZSBub25jZQ==" gives
    /// "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" (also what `openssl sha1 | base64`
    /// gives for the key followed by the GUID).
    #[test]
    fn rfc_example_key() {
        let head = head_from("GET /chat HTTP/1.1", &GOOD);
        assert_eq!(check(&head).as_deref(), Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn response_101_bytes() {
        assert_eq!(
            response_101("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn method_and_version() {
        assert_eq!(
            check(&head_from("POST /ws HTTP/1.1", &GOOD)),
            Err(Reject::NotGet)
        );
        assert_eq!(Reject::NotGet.status(), 400);
        let without_host: Vec<_> = GOOD.iter().copied().filter(|(n, _)| *n != "Host").collect();
        assert_eq!(
            check(&head_from("GET /ws HTTP/1.0", &without_host)),
            Err(Reject::HttpVersion)
        );
        assert_eq!(
            check(&head_from("GET /ws HTTP/1.0", &GOOD)),
            Err(Reject::HttpVersion)
        );
        assert_eq!(Reject::HttpVersion.status(), 400);
    }

    #[test]
    fn host_required() {
        // http::parse_head already refuses a missing Host on HTTP/1.1; check
        // does not rely on that.
        let mut head = head_from("GET /ws HTTP/1.1", &GOOD);
        head.headers.retain(|(n, _)| n != "host");
        assert_eq!(check(&head), Err(Reject::MissingHost));
        assert_eq!(Reject::MissingHost.status(), 400);
    }

    #[test]
    fn upgrade_token_lists() {
        assert!(check_with("Upgrade", Some("WebSocket")).is_ok());
        assert!(check_with("Upgrade", Some("foo/2, websocket")).is_ok());
        assert_eq!(
            check_with("Upgrade", Some("h2c")),
            Err(Reject::NotWebSocketUpgrade)
        );
        assert_eq!(
            check_with("Upgrade", Some("websockets")),
            Err(Reject::NotWebSocketUpgrade)
        );
        assert_eq!(
            check_with("Upgrade", None),
            Err(Reject::NotWebSocketUpgrade)
        );
        assert_eq!(Reject::NotWebSocketUpgrade.status(), 400);

        assert!(check_with("Connection", Some("keep-alive, Upgrade")).is_ok());
        assert!(check_with("Connection", Some("UPGRADE")).is_ok());
        assert_eq!(
            check_with("Connection", Some("keep-alive")),
            Err(Reject::NotConnectionUpgrade)
        );
        assert_eq!(
            check_with("Connection", Some("upgrades")),
            Err(Reject::NotConnectionUpgrade)
        );
        assert_eq!(
            check_with("Connection", None),
            Err(Reject::NotConnectionUpgrade)
        );
        assert_eq!(Reject::NotConnectionUpgrade.status(), 400);
        // The token may sit on a second Connection line.
        let mut headers = GOOD.to_vec();
        headers[2] = ("Connection", "keep-alive");
        headers.push(("Connection", "Upgrade"));
        assert!(check(&head_from("GET /ws HTTP/1.1", &headers)).is_ok());
    }

    #[test]
    fn version_rules() {
        assert_eq!(
            check_with("Sec-WebSocket-Version", Some("8")),
            Err(Reject::UnsupportedVersion)
        );
        assert_eq!(
            check_with("Sec-WebSocket-Version", Some("13, 8")),
            Err(Reject::UnsupportedVersion)
        );
        assert_eq!(
            check_with("Sec-WebSocket-Version", Some("013")),
            Err(Reject::UnsupportedVersion)
        );
        assert_eq!(
            check_with("Sec-WebSocket-Version", None),
            Err(Reject::MissingVersion)
        );
        let mut headers = GOOD.to_vec();
        headers.push(("Sec-WebSocket-Version", "13"));
        assert_eq!(
            check(&head_from("GET /ws HTTP/1.1", &headers)),
            Err(Reject::UnsupportedVersion)
        );
        for reject in [Reject::UnsupportedVersion, Reject::MissingVersion] {
            assert_eq!(reject.status(), 426);
            assert_eq!(reject.extra_headers(), &[("Sec-WebSocket-Version", "13")]);
            let text = String::from_utf8(reject.response()).expect("UTF-8");
            assert!(
                text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
                "{text}"
            );
            assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
            assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        }
        assert!(Reject::BadKey.extra_headers().is_empty());
        let text = String::from_utf8(Reject::BadKey.response()).expect("UTF-8");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.ends_with("{\"error\":\"Sec-WebSocket-Key must be the base64 of 16 bytes\"}"));
    }

    #[test]
    fn key_rules() {
        for good in [
            KEY,
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "+/+/+/+/+/+/+/+/+/+/+w==",
            "x3JJHMbDL1EzLkh9GBhXDw==",
        ] {
            assert!(
                check_with("Sec-WebSocket-Key", Some(good)).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",    // no padding
            "dGhlIHNhbXBsZSBub25jZQ=",   // one '='
            "dGhlIHNhbXBsZSBub25jZR==",  // low bits of 'R' set: not canonical
            "dGhlIHNhbXBsZSBub25jZQ===", // too long
            "dGhlIHNhbXBsZSBub25j====",  // 15 bytes
            "dGhlIHNhbXBsZSBub25jZXg=",  // 17 bytes
            "dGhlIHNhbXBs ZSBub25jZQ==", // space
            "dGhlIHNhbXBsZSBub25jZQ-_",  // URL-safe alphabet, no padding
            "dGhlIHNhbXBsZS*ub25jZQ==",  // bad char
        ] {
            assert_eq!(
                check_with("Sec-WebSocket-Key", Some(bad)),
                Err(Reject::BadKey),
                "{bad:?}"
            );
        }
        assert_eq!(check_with("Sec-WebSocket-Key", None), Err(Reject::BadKey));
        let mut headers = GOOD.to_vec();
        headers.push(("Sec-WebSocket-Key", KEY));
        assert_eq!(
            check(&head_from("GET /ws HTTP/1.1", &headers)),
            Err(Reject::BadKey)
        );
        assert_eq!(Reject::BadKey.status(), 400);
    }

    #[test]
    fn upgrade_with_a_body_is_refused() {
        let mut headers = GOOD.to_vec();
        headers.push(("Content-Length", "0"));
        assert!(check(&head_from("GET /ws HTTP/1.1", &headers)).is_ok());
        let limits = Limits {
            body_bytes_max: 64,
            ..LIMITS
        };
        for extra in ["Content-Length: 8", "Transfer-Encoding: chunked"] {
            let mut text = "GET /ws HTTP/1.1\r\n".to_owned();
            for (name, value) in GOOD {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str(&format!("{extra}\r\n\r\n"));
            let head = parse_head(text.as_bytes(), &limits)
                .expect("parses")
                .expect("complete");
            assert_eq!(check(&head), Err(Reject::HasBody), "{extra}");
        }
        assert_eq!(Reject::HasBody.status(), 400);
    }

    #[test]
    fn display_and_reason_agree() {
        assert_eq!(Reject::NotGet.to_string(), Reject::NotGet.reason());
    }

    #[test]
    fn fuzz_one_on_every_prefix_and_byte_flip_of_a_good_request() {
        let mut good = b"GET /ws HTTP/1.1\r\n".to_vec();
        for (name, value) in GOOD {
            good.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        good.extend_from_slice(b"\r\n");
        for end in 0..=good.len() {
            fuzz_one(&good[..end]);
        }
        for at in 0..good.len() {
            for bit in 0..8 {
                let mut data = good.clone();
                data[at] ^= 1 << bit;
                fuzz_one(&data);
            }
        }
    }
}
