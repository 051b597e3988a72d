//! Application hooks, sans-IO: the JSON documents volley POSTs to `--app-webhook` (a client
//! connecting, a client event volley does not handle itself), what the application may
//! answer (`Outcome`: refuse, ack, emit, join, leave), and the HTTP/1.1 client side of the
//! exchange (the request bytes, a response parser over httparse and `http::ChunkedDecoder`).
//!
//! Owns the wire format of the hook, version [`HOOK_VERSION`] (docs/API.md, "Application
//! hooks"). Does not own sockets, the pool, timeouts or what an outcome does to rooms: that
//! is `services::hooks`. Protocol-neutral: the native codec and the socket.io codec describe
//! their clients with the same documents.

use serde_json::{Map, Value};

use crate::http::{ChunkedDecoder, Progress};

/// The version of the documents below, sent as `"v"`. A response may carry `"v"`; any
/// other value than this one is refused, so a backend written for a later format fails
/// loudly instead of being half understood.
pub const HOOK_VERSION: u64 = 1;

/// Events one answer may emit back: a handful is normal, hundreds is a loop in the app.
pub const EMITS_MAX: usize = 64;

/// Rooms one answer may join plus leave (each is also bounded by the connection's room
/// limit, `--rooms-per-connection-max`).
pub const ROOM_CHANGES_MAX: usize = 64;

/// Longest event name in an emit, in bytes.
pub const EVENT_NAME_BYTES_MAX: usize = 256;

/// Longest refusal message kept from an answer, in bytes (it is shown to a client).
pub const MESSAGE_BYTES_MAX: usize = 1024;

/// Headers of the client's upgrade request a connect hook may see, lowercase. An allow-list:
/// never `cookie` or `authorization` (credentials of the user's other sessions), never the
/// WebSocket key material. Identity reaches the hook as `user` (from the verified token) and
/// the client's `auth` payload instead.
pub const VISIBLE_HEADERS: [&str; 8] = [
    "user-agent",
    "origin",
    "referer",
    "accept-language",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

/// The headers of `headers` (names lowercase, as `http::Head` holds them) a connect hook may
/// see, in order: what a server keeps from the upgrade request for a later connect (a
/// socket.io namespace CONNECT arrives after the upgrade).
pub fn visible_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| VISIBLE_HEADERS.contains(&name.as_str()))
        .cloned()
        .collect()
}

/// Header slots parsed in a webhook response head: more is a broken backend.
const RESPONSE_HEADERS_MAX: usize = 64;

/// Who a hook document is about: the same for connects and events.
#[derive(Debug, Clone, Copy)]
pub struct Socket<'a> {
    /// `native` or `socket.io`.
    pub protocol: &'a str,
    /// The socket.io namespace (`/`, `/admin`); None for native clients.
    pub namespace: Option<&'a str>,
    /// The socket's id, unique in the cluster while it is connected.
    pub id: &'a str,
    /// The user from the verified token (or `?user=` in open mode); None when anonymous.
    pub user: Option<&'a str>,
}

/// A client connecting (a native upgrade, a socket.io namespace CONNECT).
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    pub socket: Socket<'a>,
    /// socket.io's CONNECT payload (`auth` option of the client); None when absent.
    pub auth: Option<&'a Value>,
    /// The upgrade request's headers, names lowercase; only [`VISIBLE_HEADERS`] are sent.
    pub headers: &'a [(String, String)],
}

/// A client event volley does not handle itself.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub socket: Socket<'a>,
    pub name: &'a str,
    /// A JSON array: the event's arguments, without the ack callback.
    pub args: &'a Value,
    /// Whether the client waits for an answer (socket.io: an ack id; native: a `ref`).
    pub ack: bool,
}

fn socket_fields(kind: &str, node: &str, socket: &Socket<'_>) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert("v".into(), HOOK_VERSION.into());
    doc.insert("type".into(), kind.into());
    doc.insert("node".into(), node.into());
    doc.insert("protocol".into(), socket.protocol.into());
    doc.insert("namespace".into(), socket.namespace.into());
    doc.insert("socket".into(), socket.id.into());
    doc.insert("user".into(), socket.user.into());
    doc
}

/// The body of a connect hook:
/// `{"v":1,"type":"connect","node":..,"protocol":..,"namespace":..,"socket":..,"user":..,
/// "auth":..,"headers":{..}}`.
pub fn connect_json(node: &str, connect: &Connect<'_>) -> Vec<u8> {
    let mut doc = socket_fields("connect", node, &connect.socket);
    doc.insert("auth".into(), connect.auth.cloned().unwrap_or(Value::Null));
    let mut headers = Map::new();
    for (name, value) in connect.headers {
        if VISIBLE_HEADERS.contains(&name.as_str()) && !headers.contains_key(name) {
            headers.insert(name.clone(), value.as_str().into());
        }
    }
    doc.insert("headers".into(), Value::Object(headers));
    Value::Object(doc).to_string().into_bytes()
}

/// The body of an event hook:
/// `{"v":1,"type":"event","node":..,"protocol":..,"namespace":..,"socket":..,"user":..,
/// "event":..,"args":[..],"ack":true}`.
pub fn event_json(node: &str, event: &Event<'_>) -> Vec<u8> {
    let mut doc = socket_fields("event", node, &event.socket);
    doc.insert("event".into(), event.name.into());
    doc.insert("args".into(), event.args.clone());
    doc.insert("ack".into(), event.ack.into());
    Value::Object(doc).to_string().into_bytes()
}

/// One event the application emits back to the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub event: String,
    /// A JSON array.
    pub args: Value,
}

/// What the application answered, checked. Acted on in this order: refuse (then nothing
/// else happens), leave, join, emit, ack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Refuse the connect (socket.io CONNECT_ERROR, native 403) or the event (an error
    /// reply), with this message for the client.
    pub refuse: Option<String>,
    /// The ack's value when the answer has an `ack` field (`null` included); None when it
    /// has none. socket.io: an array is the ack's arguments, anything else its one argument.
    pub ack: Option<Value>,
    pub emit: Vec<Emit>,
    pub join: Vec<String>,
    pub leave: Vec<String>,
}

/// Parses a webhook answer. An empty body is an empty outcome (accept, no ack value).
pub fn parse_outcome(body: &[u8]) -> Result<Outcome, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Outcome::default());
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let Value::Object(mut doc) = value else {
        return Err("the answer must be a JSON object".into());
    };
    if let Some(v) = doc.get("v") {
        if v.as_u64() != Some(HOOK_VERSION) {
            return Err(format!(
                "the answer has \"v\":{v}; this volley speaks hook version {HOOK_VERSION}"
            ));
        }
    }
    let mut outcome = Outcome::default();
    match doc.remove("error") {
        None | Some(Value::Null) => {}
        Some(Value::String(message)) => {
            let mut end = message.len().min(MESSAGE_BYTES_MAX);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            outcome.refuse = Some(message[..end].to_string());
        }
        Some(_) => return Err("\"error\" must be a string (the refusal message)".into()),
    }
    outcome.ack = doc.remove("ack");
    if let Some(emit) = doc.remove("emit") {
        let Value::Array(emit) = emit else {
            return Err("\"emit\" must be an array of {\"event\":..,\"args\":[..]}".into());
        };
        if emit.len() > EMITS_MAX {
            return Err(format!(
                "\"emit\" has {} events; at most {EMITS_MAX}",
                emit.len()
            ));
        }
        for one in emit {
            let Value::Object(mut one) = one else {
                return Err("each \"emit\" entry must be {\"event\":..,\"args\":[..]}".into());
            };
            let event = match one.remove("event") {
                Some(Value::String(event))
                    if !event.is_empty() && event.len() <= EVENT_NAME_BYTES_MAX =>
                {
                    event
                }
                _ => {
                    return Err(format!(
                        "each \"emit\" entry needs \"event\", a string of 1..={EVENT_NAME_BYTES_MAX} bytes"
                    ))
                }
            };
            let args = match one.remove("args") {
                None | Some(Value::Null) => Value::Array(Vec::new()),
                Some(args @ Value::Array(_)) => args,
                Some(_) => return Err(format!("\"emit\" {event:?}: \"args\" must be an array")),
            };
            outcome.emit.push(Emit { event, args });
        }
    }
    outcome.join = rooms(&mut doc, "join")?;
    outcome.leave = rooms(&mut doc, "leave")?;
    if outcome.join.len() + outcome.leave.len() > ROOM_CHANGES_MAX {
        return Err(format!(
            "\"join\" and \"leave\" name {} rooms; at most {ROOM_CHANGES_MAX} in one answer",
            outcome.join.len() + outcome.leave.len()
        ));
    }
    Ok(outcome)
}

fn rooms(doc: &mut Map<String, Value>, field: &str) -> Result<Vec<String>, String> {
    match doc.remove(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(rooms)) => rooms
            .into_iter()
            .map(|room| match room {
                Value::String(room) => Ok(room),
                _ => Err(format!("\"{field}\" must be an array of room names")),
            })
            .collect(),
        Some(_) => Err(format!("\"{field}\" must be an array of room names")),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1, client side.

/// A webhook POST: `kind` (`connect`, `event`) also goes in `X-Volley-Hook`, so a backend
/// can route before it parses the body.
pub fn request(host: &str, path: &str, kind: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: volley/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Volley-Hook: {kind}\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    out
}

/// A complete webhook response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The connection may carry the next request (HTTP/1.1 without `Connection: close`, the
    /// body delimited, nothing sent after it).
    pub reusable: bool,
}

/// Why a response could not be read: the connection is closed, the call fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// Not HTTP/1.x: the webhook URL points at something else.
    Malformed(String),
    /// The head or the body is over its limit.
    TooLarge { what: &'static str, max: usize },
    /// The connection ended before the response did.
    Truncated,
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::Malformed(e) => write!(f, "not an HTTP/1.1 response ({e})"),
            ResponseError::TooLarge { what, max } => {
                write!(f, "the response {what} is over {max} bytes")
            }
            ResponseError::Truncated => f.write_str("the connection closed mid-response"),
        }
    }
}

enum Body {
    /// Reading the head into `head`.
    Head,
    Length {
        remaining: usize,
    },
    Chunked(ChunkedDecoder),
    /// Delimited by the end of the connection (RFC 9112 §6.3, last rule).
    UntilClose,
}

/// Reads one response from the bytes of a connection, however they are split.
pub struct ResponseParser {
    head_bytes_max: usize,
    body_bytes_max: usize,
    /// The head so far, then the body (non-chunked).
    buf: Vec<u8>,
    body: Body,
    status: u16,
    keep_alive: bool,
}

impl ResponseParser {
    pub fn new(head_bytes_max: usize, body_bytes_max: usize) -> ResponseParser {
        ResponseParser {
            head_bytes_max,
            body_bytes_max,
            buf: Vec::new(),
            body: Body::Head,
            status: 0,
            keep_alive: false,
        }
    }

    /// Whether any byte of the response arrived (a reused connection that closes before
    /// any may be retried on a new one: the request was never handled).
    pub fn started(&self) -> bool {
        !self.buf.is_empty() || !matches!(self.body, Body::Head)
    }

    /// Feeds bytes read from the connection: the response once complete.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<Response>, ResponseError> {
        if !matches!(self.body, Body::Head) {
            return self.feed_body(input);
        }
        self.buf.extend_from_slice(input);
        loop {
            let Some(consumed) = self.parse_head()? else {
                return Ok(None);
            };
            let rest = self.buf.split_off(consumed);
            if matches!(self.body, Body::Head) {
                // An interim 1xx response: the real one follows.
                self.buf = rest;
                continue;
            }
            self.buf.clear();
            return self.feed_body(&rest);
        }
    }

    /// The connection ended: a body delimited by the close is complete, anything else is
    /// truncated.
    pub fn finish(&mut self) -> Result<Response, ResponseError> {
        match self.body {
            Body::UntilClose => Ok(Response {
                status: self.status,
                body: std::mem::take(&mut self.buf),
                reusable: false,
            }),
            _ => Err(ResponseError::Truncated),
        }
    }

    /// Parses the head in `buf`: the bytes it took, or None for more.
    fn parse_head(&mut self) -> Result<Option<usize>, ResponseError> {
        let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        let consumed = match response.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > self.head_bytes_max {
                    return Err(ResponseError::TooLarge {
                        what: "head",
                        max: self.head_bytes_max,
                    });
                }
                return Ok(None);
            }
            Err(e) => return Err(ResponseError::Malformed(e.to_string())),
        };
        if consumed > self.head_bytes_max {
            return Err(ResponseError::TooLarge {
                what: "head",
                max: self.head_bytes_max,
            });
        }
        let status = response.code.unwrap_or(0);
        let minor = response.version.unwrap_or(0);
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(ResponseError::Malformed("101 to a POST".into()));
            }
            return Ok(Some(consumed));
        }
        let mut keep_alive = minor == 1;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        for header in response.headers.iter() {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| ResponseError::Malformed("a header is not UTF-8".into()))?
                .trim();
            if header.name.eq_ignore_ascii_case("connection") {
                if crate::http::contains_token(value, "close") {
                    keep_alive = false;
                } else if crate::http::contains_token(value, "keep-alive") {
                    keep_alive = true;
                }
            } else if header.name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .parse::<usize>()
                    .map_err(|_| ResponseError::Malformed(format!("Content-Length {value:?}")))?;
                if length.is_some_and(|m| m != n) {
                    return Err(ResponseError::Malformed("two Content-Lengths".into()));
                }
                length = Some(n);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                if !value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
                {
                    return Err(ResponseError::Malformed(format!(
                        "Transfer-Encoding {value:?}"
                    )));
                }
                chunked = true;
            }
        }
        self.status = status;
        self.keep_alive = keep_alive;
        self.body = if status == 204 || status == 304 {
            Body::Length { remaining: 0 }
        } else if chunked {
            // RFC 9112 §6.3: with both, chunked wins and the connection must close.
            if length.is_some() {
                self.keep_alive = false;
            }
            Body::Chunked(ChunkedDecoder::new(self.body_bytes_max))
        } else if let Some(length) = length {
            if length > self.body_bytes_max {
                return Err(ResponseError::TooLarge {
                    what: "body",
                    max: self.body_bytes_max,
                });
            }
            Body::Length { remaining: length }
        } else {
            self.keep_alive = false;
            Body::UntilClose
        };
        Ok(Some(consumed))
    }

    fn feed_body(&mut self, input: &[u8]) -> Result<Option<Response>, ResponseError> {
        match &mut self.body {
            Body::Head => Ok(None),
            Body::Length { remaining } => {
                let take = input.len().min(*remaining);
                self.buf.extend_from_slice(&input[..take]);
                *remaining -= take;
                if *remaining > 0 {
                    return Ok(None);
                }
                Ok(Some(Response {
                    status: self.status,
                    body: std::mem::take(&mut self.buf),
                    // Bytes after the body were never asked for: do not trust the socket.
                    reusable: self.keep_alive && take == input.len(),
                }))
            }
            Body::Chunked(decoder) => match decoder.feed(input) {
                Ok(Progress::NeedMore) => Ok(None),
                Ok(Progress::Done { consumed }) => {
                    let decoder =
                        std::mem::replace(decoder, ChunkedDecoder::new(self.body_bytes_max));
                    Ok(Some(Response {
                        status: self.status,
                        body: decoder.into_body(),
                        reusable: self.keep_alive && consumed == input.len(),
                    }))
                }
                Err(e) => Err(match e.status() {
                    413 => ResponseError::TooLarge {
                        what: "body",
                        max: self.body_bytes_max,
                    },
                    _ => ResponseError::Malformed(e.to_string()),
                }),
            },
            Body::UntilClose => {
                if self.buf.len() + input.len() > self.body_bytes_max {
                    return Err(ResponseError::TooLarge {
                        what: "body",
                        max: self.body_bytes_max,
                    });
                }
                self.buf.extend_from_slice(input);
                Ok(None)
            }
        }
    }
}

/// Parses arbitrary bytes as a webhook answer and as a response, split everywhere; must
/// never panic.
pub fn fuzz_one(data: &[u8]) {
    let _ = parse_outcome(data);
    for split in [0, 1, data.len() / 2, data.len()] {
        let split = split.min(data.len());
        let mut parser = ResponseParser::new(512, 1024);
        if let Ok(None) = parser.feed(&data[..split]) {
            if let Ok(None) = parser.feed(&data[split..]) {
                let _ = parser.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_all(parts: &[&[u8]]) -> Result<Option<Response>, ResponseError> {
        let mut parser = ResponseParser::new(1024, 64);
        let mut last = Ok(None);
        for part in parts {
            last = parser.feed(part);
            if !matches!(last, Ok(None)) {
                return last;
            }
        }
        last
    }

    #[test]
    fn documents_carry_what_the_app_needs_and_no_credentials() {
        let headers = vec![
            ("user-agent".to_string(), "test".to_string()),
            ("cookie".to_string(), "sid=secret".to_string()),
            ("authorization".to_string(), "Bearer secret".to_string()),
            ("origin".to_string(), "https://app".to_string()),
        ];
        let socket = Socket {
            protocol: "socket.io",
            namespace: Some("/"),
            id: "abc",
            user: Some("ann"),
        };
        let auth = json!({"token": "t"});
        let doc: Value = serde_json::from_slice(&connect_json(
            "n1",
            &Connect {
                socket,
                auth: Some(&auth),
                headers: &headers,
            },
        ))
        .unwrap();
        assert_eq!(doc["v"], 1);
        assert_eq!(doc["type"], "connect");
        assert_eq!(doc["user"], "ann");
        assert_eq!(doc["auth"]["token"], "t");
        assert_eq!(
            doc["headers"],
            json!({"user-agent": "test", "origin": "https://app"})
        );
        assert_eq!(
            visible_headers(&headers),
            vec![
                ("user-agent".to_string(), "test".to_string()),
                ("origin".to_string(), "https://app".to_string())
            ]
        );
        assert!(!String::from_utf8(connect_json(
            "n1",
            &Connect {
                socket,
                auth: None,
                headers: &headers
            }
        ))
        .unwrap()
        .contains("secret"));
        let args = json!([{"text": "hi"}]);
        let doc: Value = serde_json::from_slice(&event_json(
            "n1",
            &Event {
                socket: Socket {
                    protocol: "native",
                    namespace: None,
                    id: "n1-0-1.1",
                    user: None,
                },
                name: "chat",
                args: &args,
                ack: true,
            },
        ))
        .unwrap();
        assert_eq!(
            doc,
            json!({"v": 1, "type": "event", "node": "n1", "protocol": "native", "namespace": null,
                   "socket": "n1-0-1.1", "user": null, "event": "chat", "args": [{"text": "hi"}], "ack": true})
        );
    }

    #[test]
    fn outcomes() {
        assert_eq!(parse_outcome(b"").unwrap(), Outcome::default());
        assert_eq!(parse_outcome(b"{}").unwrap(), Outcome::default());
        let outcome = parse_outcome(
            br#"{"v":1,"ack":{"n":1},"emit":[{"event":"hi","args":[1]},{"event":"bye"}],"join":["a"],"leave":["b"],"extra":0}"#,
        )
        .unwrap();
        assert_eq!(outcome.ack, Some(json!({"n": 1})));
        assert_eq!(outcome.emit.len(), 2);
        assert_eq!(outcome.emit[1].args, json!([]));
        assert_eq!(
            (outcome.join, outcome.leave),
            (vec!["a".into()], vec!["b".into()])
        );
        assert_eq!(
            parse_outcome(br#"{"ack":null}"#).unwrap().ack,
            Some(Value::Null)
        );
        assert_eq!(
            parse_outcome(br#"{"error":"no"}"#)
                .unwrap()
                .refuse
                .as_deref(),
            Some("no")
        );
        for bad in [
            &br#"[]"#[..],
            br#"{"v":2}"#,
            br#"{"error":1}"#,
            br#"{"emit":{}}"#,
            br#"{"emit":[{"args":[]}]}"#,
            br#"{"emit":[{"event":"x","args":1}]}"#,
            br#"{"join":"a"}"#,
            br#"{"leave":[1]}"#,
            b"not json",
        ] {
            assert!(
                parse_outcome(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = json!({"emit": vec![json!({"event": "x"}); EMITS_MAX + 1]}).to_string();
        assert!(parse_outcome(many.as_bytes())
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn responses_by_length_chunked_and_close_split_anywhere() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for split in 0..whole.len() {
            let response = read_all(&[&whole[..split], &whole[split..]])
                .unwrap()
                .unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(response.body, b"hello");
            assert!(response.reusable);
        }
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        for split in 0..chunked.len() {
            let response = read_all(&[&chunked[..split], &chunked[split..]])
                .unwrap()
                .unwrap();
            assert_eq!(response.body, b"abcde");
            assert!(response.reusable);
        }
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        assert!(!read_all(&[close]).unwrap().unwrap().reusable);
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(!read_all(&[old]).unwrap().unwrap().reusable);
        let mut parser = ResponseParser::new(1024, 64);
        assert_eq!(parser.feed(b"HTTP/1.1 200 OK\r\n\r\n{\"a\"").unwrap(), None);
        assert_eq!(parser.feed(b":1}").unwrap(), None);
        let response = parser.finish().unwrap();
        assert_eq!(
            (response.body.as_slice(), response.reusable),
            (&b"{\"a\":1}"[..], false)
        );
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(read_all(&[interim]).unwrap().unwrap().status, 204);
        let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab";
        assert!(!read_all(&[extra]).unwrap().unwrap().reusable);
    }

    #[test]
    fn bad_and_oversized_responses() {
        assert!(matches!(
            read_all(&[b"SSH-2.0-OpenSSH\r\n\r\n"]),
            Err(ResponseError::Malformed(_))
        ));
        assert_eq!(
            read_all(&[b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n"]),
            Err(ResponseError::TooLarge {
                what: "body",
                max: 64
            })
        );
        let big_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n";
        assert!(matches!(
            read_all(&[big_chunk, &[b'x'; 65]]),
            Err(ResponseError::TooLarge { .. })
        ));
        let long_head = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 2000]].concat();
        assert!(matches!(
            read_all(&[&long_head]),
            Err(ResponseError::TooLarge { what: "head", .. })
        ));
        let mut parser = ResponseParser::new(1024, 64);
        assert!(!parser.started());
        assert_eq!(
            parser
                .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na")
                .unwrap(),
            None
        );
        assert!(parser.started());
        assert_eq!(parser.finish(), Err(ResponseError::Truncated));
        let text = String::from_utf8(request("h:1", "/p", "event", b"{}")).unwrap();
        assert!(text.starts_with("POST /p HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\nX-Volley-Hook: event\r\n\r\n{}"));
    }

    #[test]
    fn fuzz_seeds_do_not_panic() {
        for seed in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\nffffffffffffffffffff\r\n"
                [..],
            b"HTTP/1.1 100 x\r\n\r\nHTTP/1.1 100 x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"{\"error\":\"\xc3\xa9\"}",
            b"",
        ] {
            fuzz_one(seed);
        }
    }
}
