//! Sans-IO HTTP/1.1 for the server side (RFC 9112): request heads, chunked
//! request bodies, and the few responses we write.
//!
//! This module owns the parsing limits (head bytes, header count, body bytes)
//! and the framing rules that decide where a request body ends, so that a
//! request is either understood exactly or refused with a status code. It does
//! no I/O, holds no clock and knows nothing of routes: `front` reads bytes and
//! calls [`parse_head`] and the chunked decoder, `api` routes on the [`Head`] and
//! builds [`response`] / [`json_error`], and `ws::handshake` checks the upgrade
//! headers.

use std::borrow::Cow;
use std::fmt;

/// The most header slots kept on the stack; more come from the heap.
const HEADER_SLOTS_ON_STACK: usize = 64;

/// Longest chunk-size line (size, extensions, CRLF) we accept. Extensions are
/// ignored, so a long line is only a way to make us scan bytes for nothing.
pub const CHUNK_LINE_BYTES_MAX: usize = 4096;

/// Most trailer bytes we skip after the last chunk (RFC 9112 §7.1.2).
pub const TRAILER_BYTES_MAX: usize = 8192;

/// Request method. The ones the router knows get a variant; anything else is
/// kept as sent so it can be logged and answered with 405.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    /// Any other token (methods are case-sensitive, RFC 9110 §9.1).
    Other(String),
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method token as it appears on the request line.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Other(token) => token,
        }
    }
}

/// How the request body is framed (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// Neither Content-Length nor Transfer-Encoding: the body is empty.
    None,
    /// Exactly this many bytes follow the head (already checked against
    /// `Limits::body_bytes_max`).
    ContentLength(usize),
    /// A chunked body follows; decode it with [`ChunkedDecoder`].
    Chunked,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    /// The request target without the query: "/ws" for "/ws?user=a". For an
    /// absolute-form target (RFC 9112 §3.2.2) this is its path part.
    pub path: String,
    /// The raw query after '?', not percent-decoded; `None` when there is no '?'.
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header lines in order, names lowercased, values with surrounding
    /// whitespace trimmed. Repeated names stay repeated.
    pub headers: Vec<(String, String)>,
    pub body: BodyKind,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// Bytes of the head, including the blank line: the body (or the next
    /// pipelined request) starts at `buf[head_len..]`.
    pub head_len: usize,
}

impl Head {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the headers called `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The raw (not percent-decoded) value of the first `key` in the query;
    /// `Some("")` for a bare `key` or `key=`. Decode with [`percent_decode`].
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then_some(v)
        })
    }
}

/// Decodes `%XX` escapes and `+` (as a space, per the form encoding query
/// strings use). Returns `None` for a bad escape or a result that is not UTF-8.
pub fn percent_decode(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_value(bytes.next()?)?;
                let lo = hex_value(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parsing limits; all come from `Config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line, headers, blank line) we read.
    pub head_bytes_max: usize,
    /// Most header lines in one head.
    pub headers_max: usize,
    /// Largest request body, by Content-Length or after chunked decoding.
    pub body_bytes_max: usize,
}

/// Why a request cannot be served. Each variant maps to the status the caller
/// answers with (via [`json_error`]) before closing the connection, since after
/// a framing error the next request's start is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// 431: the head did not end within `head_bytes_max`; answer and close.
    HeadTooLarge,
    /// 431: more than `headers_max` header lines; answer and close.
    TooManyHeaders,
    /// 400: the bytes are not an HTTP/1.x request we can frame (the text says
    /// which part); answer and close.
    Malformed(&'static str),
    /// 400 (RFC 9112 §6.3): both Content-Length and Transfer-Encoding, or
    /// Content-Length values that differ; answer and close.
    ConflictingLength,
    /// 400 (RFC 9110 §8.6): a Content-Length that is not a decimal number;
    /// answer and close.
    BadContentLength,
    /// 501 (RFC 9112 §6.1): a transfer coding other than plain `chunked`;
    /// answer and close.
    UnsupportedTransferEncoding,
    /// 413: the body is larger than `body_bytes_max`; answer and close.
    BodyTooLarge,
    /// 505: an HTTP version other than 1.0 or 1.1; answer and close.
    UnsupportedVersion,
}

impl Error {
    /// The response status for this error.
    pub const fn status(&self) -> u16 {
        match self {
            Error::HeadTooLarge | Error::TooManyHeaders => 431,
            Error::Malformed(_) | Error::ConflictingLength | Error::BadContentLength => 400,
            Error::UnsupportedTransferEncoding => 501,
            Error::BodyTooLarge => 413,
            Error::UnsupportedVersion => 505,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::HeadTooLarge => f.write_str("request head too large"),
            Error::TooManyHeaders => f.write_str("too many request headers"),
            Error::Malformed(what) => write!(f, "malformed request: {what}"),
            Error::ConflictingLength => f.write_str("conflicting body length headers"),
            Error::BadContentLength => f.write_str("invalid Content-Length"),
            Error::UnsupportedTransferEncoding => f.write_str("unsupported Transfer-Encoding"),
            Error::BodyTooLarge => f.write_str("request body too large"),
            Error::UnsupportedVersion => f.write_str("HTTP version not supported"),
        }
    }
}

impl std::error::Error for Error {}

/// Parses a request head from the start of `buf`.
///
/// Returns `Ok(None)` when the head is not complete yet and `buf` is still
/// shorter than `head_bytes_max`: read more and call again with the whole
/// buffer (re-parsing is bounded by `head_bytes_max`). On success the body
/// or the next pipelined request starts at `buf[head.head_len..]`.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, Error> {
    // The head must fit in `head_bytes_max`, so never look further.
    let window = &buf[..buf.len().min(limits.head_bytes_max)];
    let mut stack_slots = [httparse::EMPTY_HEADER; HEADER_SLOTS_ON_STACK];
    let mut heap_slots = Vec::new();
    let slots: &mut [httparse::Header<'_>] = if limits.headers_max <= HEADER_SLOTS_ON_STACK {
        &mut stack_slots[..limits.headers_max]
    } else {
        heap_slots.resize(limits.headers_max, httparse::EMPTY_HEADER);
        &mut heap_slots
    };
    let mut request = httparse::Request::new(slots);
    let head_len = match request.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.head_bytes_max => {
            return Err(Error::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(map_httparse_error(err, buf)),
    };

    // httparse fills these three on Complete; the fallbacks keep this total.
    let method = Method::from_token(request.method.unwrap_or_default());
    let minor_version = request.version.unwrap_or_default();
    let (path, query) = split_target(request.path.unwrap_or_default(), &method)?;

    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value);
            (
                h.name.to_ascii_lowercase(),
                value.trim_matches([' ', '\t']).to_owned(),
            )
        })
        .collect();

    let body = body_kind(&headers, minor_version, limits)?;

    // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status
    // code to any HTTP/1.1 request message that lacks a Host header field and
    // to any request message that contains more than one Host header field
    // line or a Host header field with an invalid field value."
    let mut hosts = headers.iter().filter(|(n, _)| n == "host");
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(Error::Malformed("more than one Host header")),
        (None, None) if minor_version >= 1 => return Err(Error::Malformed("missing Host header")),
        (Some((_, v)), None) if v.is_empty() && minor_version >= 1 => {
            return Err(Error::Malformed("empty Host header"))
        }
        _ => {}
    }

    // RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with
    // "keep-alive".
    let has_token = |token: &str| {
        headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .any(|(_, v)| contains_token(v, token))
    };
    let keep_alive = if has_token("close") {
        false
    } else if minor_version >= 1 {
        true
    } else {
        has_token("keep-alive")
    };

    Ok(Some(Head {
        method,
        path,
        query,
        minor_version,
        headers,
        body,
        keep_alive,
        head_len,
    }))
}

fn map_httparse_error(err: httparse::Error, buf: &[u8]) -> Error {
    match err {
        httparse::Error::TooManyHeaders => Error::TooManyHeaders,
        // 505 only for a real HTTP version we do not speak ("HTTP/2.0"); a request line
        // that is not HTTP at all is a plain 400.
        httparse::Error::Version if names_an_http_version(buf) => Error::UnsupportedVersion,
        httparse::Error::Version => Error::Malformed("not an HTTP/1.x request line"),
        httparse::Error::HeaderName => Error::Malformed("invalid header name"),
        httparse::Error::HeaderValue => Error::Malformed("invalid header value"),
        httparse::Error::NewLine => Error::Malformed("invalid line ending"),
        httparse::Error::Token => Error::Malformed("invalid token in request line"),
        httparse::Error::Status => Error::Malformed("invalid status"),
    }
}

/// True when the request line ends in `HTTP/<digit>...`.
fn names_an_http_version(buf: &[u8]) -> bool {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_end];
    let Some(space) = line.iter().rposition(|&b| b == b' ') else {
        return false;
    };
    let version = &line[space + 1..];
    version.starts_with(b"HTTP/") && version.get(5).is_some_and(u8::is_ascii_digit)
}

/// Splits the request target into path and query (RFC 9112 §3.2).
fn split_target(target: &str, method: &Method) -> Result<(String, Option<String>), Error> {
    let path_and_query = if target.starts_with('/') {
        target
    } else if target == "*" && *method == Method::Options {
        // §3.2.4 asterisk-form.
        return Ok(("*".to_owned(), None));
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        // §3.2.2: "a server MUST accept the absolute-form in requests".
        match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => &rest[at..],
            Some(at) => return Ok(("/".to_owned(), Some(rest[at + 1..].to_owned()))),
            None => "/",
        }
    } else {
        return Err(Error::Malformed("request target"));
    };
    Ok(match path_and_query.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (path_and_query.to_owned(), None),
    })
}

/// Decides how the body is framed (RFC 9112 §6.3) and checks its size.
fn body_kind(
    headers: &[(String, String)],
    minor_version: u8,
    limits: &Limits,
) -> Result<BodyKind, Error> {
    let mut content_length: Option<usize> = None;
    let mut codings: Vec<&str> = Vec::new();
    for (name, value) in headers {
        match name.as_str() {
            "content-length" => {
                // RFC 9110 §8.6: Content-Length = 1*DIGIT; a list of identical
                // values may be taken as one.
                for part in value.split(',') {
                    let part = part.trim_matches([' ', '\t']);
                    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(Error::BadContentLength);
                    }
                    // Digits only, so the one failure left is overflow: far
                    // over any limit.
                    let len: usize = part.parse().map_err(|_| Error::BodyTooLarge)?;
                    match content_length {
                        Some(seen) if seen != len => return Err(Error::ConflictingLength),
                        _ => content_length = Some(len),
                    }
                }
            }
            "transfer-encoding" => {
                codings.extend(value.split(',').map(|c| c.trim_matches([' ', '\t'])))
            }
            _ => {}
        }
    }
    let has_te = headers.iter().any(|(n, _)| n == "transfer-encoding");
    match (content_length, has_te) {
        // §6.3: "A server MAY reject a request that contains both
        // Content-Length and Transfer-Encoding": a smuggling vector, so we do.
        (Some(_), true) => Err(Error::ConflictingLength),
        (Some(len), false) if len > limits.body_bytes_max => Err(Error::BodyTooLarge),
        (Some(len), false) => Ok(BodyKind::ContentLength(len)),
        (None, false) => Ok(BodyKind::None),
        (None, true) => {
            // §6.1: HTTP/1.0 has no transfer codings; its framing is faulty.
            if minor_version == 0 {
                return Err(Error::Malformed("Transfer-Encoding in HTTP/1.0"));
            }
            // §6.3: chunked must be the final coding, else the length of a
            // request body cannot be known: 400.
            if !codings
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case("chunked"))
            {
                return Err(Error::Malformed(
                    "Transfer-Encoding does not end in chunked",
                ));
            }
            // §6.1: "A sender MUST NOT apply the chunked transfer coding more
            // than once": `chunked, chunked` (in one header or two) is a framing
            // error, not a coding we lack, so 400 rather than 501.
            let earlier = codings.split_last().map_or(&[][..], |(_, e)| e);
            if earlier.iter().any(|c| c.eq_ignore_ascii_case("chunked")) {
                return Err(Error::Malformed("Transfer-Encoding applies chunked twice"));
            }
            // §6.1: a coding we do not implement is 501.
            if codings.len() > 1 {
                return Err(Error::UnsupportedTransferEncoding);
            }
            Ok(BodyKind::Chunked)
        }
    }
}

/// Whether the comma-separated `list` holds `token` (case-insensitive),
/// RFC 9110 §5.6.1.
pub fn contains_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
}

/// What a [`ChunkedDecoder::feed`] call achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// All input was used and the body is not finished: feed the next read.
    NeedMore,
    /// The body is finished after `consumed` bytes of this input; the rest is
    /// the next pipelined request.
    Done { consumed: usize },
}

/// Where the decoder is in the chunked grammar (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex chunk-size; `digits` so far.
    Size { size: u64, digits: u32 },
    /// In chunk extensions (ignored) up to the CR.
    Extension { size: u64 },
    /// Expecting the LF of the chunk-size line.
    SizeLf { size: u64 },
    /// Copying chunk data.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    /// Inside a trailer field line (skipped) up to its CR.
    Trailer,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Sans-IO decoder of a chunked request body (RFC 9112 §7.1). Feed it each
/// read; it appends the decoded body to its own buffer, bounded by
/// `body_bytes_max`. Chunk extensions are ignored and trailer fields skipped.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    body: Vec<u8>,
    body_bytes_max: usize,
    /// Bytes of the current size line or of all trailers so far, for the limits.
    line_bytes: usize,
}

impl ChunkedDecoder {
    /// A decoder for one body of at most `body_bytes_max` decoded bytes.
    pub fn new(body_bytes_max: usize) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { size: 0, digits: 0 },
            body: Vec::new(),
            body_bytes_max,
            line_bytes: 0,
        }
    }

    /// The body decoded so far.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Takes the decoded body.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Decodes the next bytes of the body. After `Done` further calls return
    /// `Done { consumed: 0 }`. An error means the connection must be closed:
    /// the end of the body is unknown.
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, Error> {
        let mut at = 0;
        while at < input.len() {
            let b = input[at];
            match self.state {
                ChunkState::Done => return Ok(Progress::Done { consumed: at }),
                ChunkState::Data { remaining } => {
                    // `remaining` was checked against the body budget, so it fits.
                    let take = usize::try_from(remaining)
                        .map_or(input.len() - at, |r| r.min(input.len() - at));
                    self.body.extend_from_slice(&input[at..at + take]);
                    at += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining }
                    };
                    continue;
                }
                ChunkState::Size { size, digits } => {
                    self.count_line_byte(CHUNK_LINE_BYTES_MAX, "chunk-size line too long")?;
                    if let Some(v) = hex_value(b) {
                        // 16 hex digits fill a u64; one more cannot be a size
                        // any budget allows (leading zeros included, to stay simple).
                        if digits >= 16 {
                            return Err(Error::BodyTooLarge);
                        }
                        let size = size << 4 | u64::from(v);
                        // Fail as soon as the size alone would break the budget.
                        let budget = self.body_bytes_max.saturating_sub(self.body.len());
                        if size > budget as u64 {
                            return Err(Error::BodyTooLarge);
                        }
                        self.state = ChunkState::Size {
                            size,
                            digits: digits + 1,
                        };
                    } else if digits == 0 {
                        return Err(Error::Malformed("chunk-size missing"));
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        // §7.1.1: chunk-ext, with BWS before ';'.
                        self.state = ChunkState::Extension { size };
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf { size };
                    } else {
                        return Err(Error::Malformed("bad chunk-size"));
                    }
                }
                ChunkState::Extension { size } => {
                    self.count_line_byte(CHUNK_LINE_BYTES_MAX, "chunk-size line too long")?;
                    match b {
                        b'\r' => self.state = ChunkState::SizeLf { size },
                        b'\n' => return Err(Error::Malformed("bare LF in chunk extension")),
                        _ => {}
                    }
                }
                ChunkState::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(Error::Malformed("chunk-size line not ended by CRLF"));
                    }
                    self.line_bytes = 0;
                    self.state = if size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data { remaining: size }
                    };
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(Error::Malformed("chunk data not followed by CRLF"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(Error::Malformed("chunk data not followed by CRLF"));
                    }
                    self.state = ChunkState::Size { size: 0, digits: 0 };
                }
                ChunkState::TrailerStart => {
                    self.count_line_byte(TRAILER_BYTES_MAX, "trailers too long")?;
                    self.state = if b == b'\r' {
                        ChunkState::FinalLf
                    } else {
                        ChunkState::Trailer
                    };
                }
                ChunkState::Trailer => {
                    self.count_line_byte(TRAILER_BYTES_MAX, "trailers too long")?;
                    match b {
                        b'\r' => self.state = ChunkState::TrailerLf,
                        b'\n' => return Err(Error::Malformed("bare LF in trailer")),
                        _ => {}
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(Error::Malformed("trailer line not ended by CRLF"));
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::FinalLf => {
                    if b != b'\n' {
                        return Err(Error::Malformed("chunked body not ended by CRLF"));
                    }
                    self.state = ChunkState::Done;
                    return Ok(Progress::Done { consumed: at + 1 });
                }
            }
            at += 1;
        }
        Ok(match self.state {
            ChunkState::Done => Progress::Done { consumed: at },
            _ => Progress::NeedMore,
        })
    }

    fn count_line_byte(&mut self, max: usize, what: &'static str) -> Result<(), Error> {
        self.line_bytes += 1;
        if self.line_bytes > max {
            return Err(Error::Malformed(what));
        }
        Ok(())
    }
}

/// The reason phrase for `status` (RFC 9110 §15); empty for codes we never
/// send, which RFC 9112 §4 allows.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Whether a header name or value is safe to write: no CR, LF or NUL, so a
/// value can never start a new header line (response splitting).
fn header_safe(text: &str) -> bool {
    !text.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// A complete HTTP/1.1 response: status line, Content-Type (omitted when
/// `content_type` is empty), Content-Length, Connection, `extra_headers`, body.
///
/// RFC 9110 §8.6: 1xx and 204 responses carry neither Content-Length nor a
/// body. An extra header containing CR, LF or NUL is a caller bug: it trips a
/// debug assertion and is left out in release builds.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let bodiless = status < 200 || status == 204;
    debug_assert!(
        !bodiless || body.is_empty(),
        "status {status} must not have a body"
    );
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut header = |name: &str, value: &str| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    if !content_type.is_empty() && !bodiless && header_safe(content_type) {
        header("Content-Type", content_type);
    }
    if !bodiless {
        header("Content-Length", &body.len().to_string());
    }
    header(
        "Connection",
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (name, value) in extra_headers {
        let safe = !name.is_empty() && header_safe(name) && header_safe(value);
        debug_assert!(safe, "unsafe response header {name:?}");
        if safe {
            header(name, value);
        }
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(body);
    }
    out
}

/// The JSON body `{"error":"<message>"}` with `message` escaped per RFC 8259 §7.
pub fn json_error_body(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    out.extend_from_slice(b"{\"error\":\"");
    for c in message.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            // RFC 8259 §7: all other control characters as \u00XX.
            c if u32::from(c) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let n = u32::from(c) as usize;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[n >> 4]);
                out.push(HEX[n & 0xF]);
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.extend_from_slice(b"\"}");
    out
}

/// A JSON error response: `{"error":"<message>"}` with status `status`.
pub fn json_error(status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    response(
        status,
        "application/json",
        &json_error_body(message),
        keep_alive,
        &[],
    )
}

/// Cuts a response built by [`response`] down to its head, for a HEAD request: RFC 9110
/// §9.3.2, the server sends the headers it would send for GET (Content-Length included)
/// and no content. A response without a blank line is left as it is.
pub fn strip_body(response: &mut Vec<u8>) {
    if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(at + 4);
    }
}

/// Fuzz entry point: runs [`parse_head`] and [`ChunkedDecoder`] on arbitrary
/// bytes. It must never panic; it asserts the invariants a caller relies on.
pub fn fuzz_one(data: &[u8]) {
    let limits = Limits {
        head_bytes_max: 512,
        headers_max: 8,
        body_bytes_max: 64,
    };
    match parse_head(data, &limits) {
        Ok(Some(head)) => {
            assert!(head.head_len <= data.len() && head.head_len <= limits.head_bytes_max);
            assert!(head.headers.len() <= limits.headers_max);
            if let BodyKind::ContentLength(len) = head.body {
                assert!(len <= limits.body_bytes_max);
            }
            // A head ends at its blank line, so a shorter prefix is never complete.
            let prefix = parse_head(&data[..head.head_len.saturating_sub(1)], &limits);
            assert!(
                !matches!(prefix, Ok(Some(_))),
                "prefix taken for a complete head"
            );
        }
        Ok(None) => assert!(data.len() < limits.head_bytes_max),
        Err(err) => assert!(matches!(err.status(), 400 | 413 | 431 | 501 | 505)),
    }
    let whole = chunked_outcome(data, data.len().max(1));
    let bytewise = chunked_outcome(data, 1);
    assert_eq!(whole, bytewise, "chunked decoding depends on the split");
}

type ChunkedOutcome = (Vec<u8>, Result<Option<usize>, Error>);

fn chunked_outcome(data: &[u8], step: usize) -> ChunkedOutcome {
    let mut decoder = ChunkedDecoder::new(64);
    let mut start = 0;
    while start < data.len() {
        let end = data.len().min(start + step);
        match decoder.feed(&data[start..end]) {
            Ok(Progress::NeedMore) => start = end,
            Ok(Progress::Done { consumed }) => {
                assert!(consumed <= end - start);
                assert!(decoder.body().len() <= 64);
                return (decoder.into_body(), Ok(Some(start + consumed)));
            }
            Err(err) => return (decoder.into_body(), Err(err)),
        }
    }
    (decoder.into_body(), Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        head_bytes_max: 1024,
        headers_max: 16,
        body_bytes_max: 100,
    };

    fn parse(text: &str) -> Result<Option<Head>, Error> {
        parse_head(text.as_bytes(), &LIMITS)
    }

    fn parse_ok(text: &str) -> Head {
        match parse(text) {
            Ok(Some(head)) => head,
            other => panic!("expected a head, got {other:?}"),
        }
    }

    fn parse_err(text: &str) -> Error {
        match parse(text) {
            Err(err) => err,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    const WS_REQUEST: &str = "GET /ws?user=alice&rooms=a%2Cb&flag HTTP/1.1\r\n\
        Host: example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\n\
        X-Padded:   spaced value  \r\n\
        \r\n";

    #[test]
    fn parses_a_complete_head() {
        let head = parse_ok(WS_REQUEST);
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query.as_deref(), Some("user=alice&rooms=a%2Cb&flag"));
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.header("HOST"), Some("example.com"));
        assert_eq!(head.header("x-padded"), Some("spaced value"));
        assert_eq!(head.headers[0].0, "host");
        assert_eq!(head.body, BodyKind::None);
        assert!(head.keep_alive);
        assert_eq!(head.head_len, WS_REQUEST.len());
        assert_eq!(head.query_param("user"), Some("alice"));
        assert_eq!(head.query_param("rooms"), Some("a%2Cb"));
        assert_eq!(head.query_param("flag"), Some(""));
        assert_eq!(head.query_param("missing"), None);
        assert_eq!(percent_decode("a%2Cb+c").as_deref(), Some("a,b c"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(Method::Other("BREW".into()).as_str(), "BREW");
    }

    #[test]
    fn every_byte_split_is_incomplete_until_the_end() {
        let bytes = WS_REQUEST.as_bytes();
        for end in 0..bytes.len() {
            assert_eq!(
                parse_head(&bytes[..end], &LIMITS),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
        assert!(parse_head(bytes, &LIMITS).expect("valid").is_some());
    }

    #[test]
    fn pipelined_requests_are_found_by_head_len() {
        let first = "POST /publish HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
        let second = "GET /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let all = format!("{first}hello{second}");
        let head = parse_head(all.as_bytes(), &LIMITS)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.method, Method::Post);
        assert_eq!(head.body, BodyKind::ContentLength(5));
        assert_eq!(&all.as_bytes()[head.head_len..head.head_len + 5], b"hello");
        let rest = &all.as_bytes()[head.head_len + 5..];
        let next = parse_head(rest, &LIMITS).expect("valid").expect("complete");
        assert_eq!(next.path, "/health");
        assert!(!next.keep_alive);
        assert_eq!(next.head_len, rest.len());
    }

    #[test]
    fn keep_alive_rules() {
        assert!(parse_ok("GET / HTTP/1.1\r\nHost: h\r\n\r\n").keep_alive);
        assert!(!parse_ok("GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!parse_ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        let head = parse_ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(head.keep_alive);
        assert_eq!(head.minor_version, 0);
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            parse_err("GET / HTTP/1.1\r\n\r\n"),
            Error::Malformed("missing Host header")
        );
        assert_eq!(
            parse_err("GET / HTTP/1.1\r\nHost:\r\n\r\n"),
            Error::Malformed("empty Host header")
        );
        assert_eq!(
            parse_err("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Error::Malformed("more than one Host header")
        );
        assert_eq!(parse_err("GET / HTTP/1.1\r\n\r\n").status(), 400);
        // HTTP/1.0 predates Host.
        assert!(parse("GET / HTTP/1.0\r\n\r\n").expect("valid").is_some());
    }

    #[test]
    fn request_targets() {
        let head = parse_ok("GET http://example.com/a/b?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(
            (head.path.as_str(), head.query.as_deref()),
            ("/a/b", Some("x=1"))
        );
        let head = parse_ok("GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(head.path, "/");
        let head = parse_ok("GET http://example.com?q HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(
            (head.path.as_str(), head.query.as_deref()),
            ("/", Some("q"))
        );
        assert_eq!(parse_ok("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").path, "*");
        assert_eq!(
            parse_err("GET * HTTP/1.1\r\nHost: h\r\n\r\n"),
            Error::Malformed("request target")
        );
        assert_eq!(
            parse_err("GET ws HTTP/1.1\r\nHost: h\r\n\r\n").status(),
            400
        );
    }

    #[test]
    fn size_limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(2000));
        assert_eq!(parse_err(&long), Error::HeadTooLarge);
        assert_eq!(Error::HeadTooLarge.status(), 431);
        // Incomplete but already at the limit: no point waiting for more.
        let endless = "GET / HTTP/1.1\r\nX: ".to_owned() + &"v".repeat(1100);
        assert_eq!(parse_err(&endless), Error::HeadTooLarge);
        let endless = "GET / HTTP/1.1\r\nX: ".to_owned() + &"v".repeat(100);
        assert_eq!(parse(&endless), Ok(None));

        let many: String = (0..17).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n");
        assert_eq!(parse_err(&text), Error::TooManyHeaders);
        assert_eq!(Error::TooManyHeaders.status(), 431);
        // More slots than the stack array holds come from the heap.
        let roomy = Limits {
            headers_max: 100,
            ..LIMITS
        };
        let head = parse_head(text.as_bytes(), &roomy)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.headers.len(), 18);
    }

    #[test]
    fn body_framing_errors() {
        let cl = |v: &str| format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {v}\r\n\r\n");
        assert_eq!(parse_ok(&cl("100")).body, BodyKind::ContentLength(100));
        assert_eq!(parse_ok(&cl("7, 7")).body, BodyKind::ContentLength(7));
        assert_eq!(parse_err(&cl("101")), Error::BodyTooLarge);
        assert_eq!(Error::BodyTooLarge.status(), 413);
        assert_eq!(
            parse_err(&cl("99999999999999999999999")),
            Error::BodyTooLarge
        );
        for bad in ["-1", "1.5", "0x10", "+5", "", "5,"] {
            assert_eq!(parse_err(&cl(bad)), Error::BadContentLength, "{bad:?}");
        }
        assert_eq!(Error::BadContentLength.status(), 400);
        assert_eq!(parse_err(&cl("5, 6")), Error::ConflictingLength);
        let dup = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(parse_err(dup), Error::ConflictingLength);
        let same = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(parse_ok(same).body, BodyKind::ContentLength(5));
        let both =
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_err(both), Error::ConflictingLength);
        assert_eq!(Error::ConflictingLength.status(), 400);

        let te = |v: &str| format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {v}\r\n\r\n");
        assert_eq!(parse_ok(&te("chunked")).body, BodyKind::Chunked);
        assert_eq!(parse_ok(&te("Chunked")).body, BodyKind::Chunked);
        assert_eq!(
            parse_err(&te("gzip, chunked")),
            Error::UnsupportedTransferEncoding
        );
        assert_eq!(Error::UnsupportedTransferEncoding.status(), 501);
        assert_eq!(parse_err(&te("gzip")).status(), 400);
        assert_eq!(parse_err(&te("chunked, gzip")).status(), 400);
        // RFC 9112 §6.1: chunked at most once, whether in one header or two.
        for twice in [
            "chunked, chunked",
            "Chunked,chunked",
            "chunked, gzip, chunked",
        ] {
            assert_eq!(
                parse_err(&te(twice)),
                Error::Malformed("Transfer-Encoding applies chunked twice"),
                "{twice}"
            );
        }
        let two_headers = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\
                           Transfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_err(two_headers).status(), 400);
        let old = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_err(old).status(), 400);
    }

    #[test]
    fn strip_body_keeps_the_head_and_its_content_length() {
        let mut full = response(200, "application/json", b"{\"ok\":true}", true, &[]);
        let head_len = full.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = full[..head_len].to_vec();
        strip_body(&mut full);
        assert_eq!(full, head);
        assert!(String::from_utf8(full)
            .unwrap()
            .contains("Content-Length: 11\r\n"));
        // A body that itself holds a blank line is cut at the first one, the head's end.
        let mut tricky = response(200, "text/plain", b"a\r\n\r\nb", false, &[]);
        strip_body(&mut tricky);
        assert!(tricky.ends_with(b"Connection: close\r\n\r\n"));
        let mut partial = b"HTTP/1.1 200 OK\r\n".to_vec();
        strip_body(&mut partial);
        assert_eq!(partial, b"HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn malformed_and_version_errors() {
        assert_eq!(
            parse_err("GET / HTTP/2.0\r\nHost: h\r\n\r\n"),
            Error::UnsupportedVersion
        );
        assert_eq!(Error::UnsupportedVersion.status(), 505);
        assert_eq!(parse_err("this is not http\r\n\r\n").status(), 400);
        assert_eq!(parse_err("GET / FTP/1.1\r\n\r\n").status(), 400);
        assert_eq!(
            parse_err("GET / HTTP/1.1\r\nBad Name: v\r\n\r\n").status(),
            400
        );
        assert_eq!(parse_err("G\0T / HTTP/1.1\r\n\r\n").status(), 400);
        assert_eq!(Error::Malformed("x").to_string(), "malformed request: x");
        assert_eq!(Error::HeadTooLarge.to_string(), "request head too large");
    }

    fn decode_chunked(input: &[u8], max: usize, step: usize) -> Result<(Vec<u8>, usize), Error> {
        let mut decoder = ChunkedDecoder::new(max);
        let mut start = 0;
        while start < input.len() {
            let end = input.len().min(start + step);
            match decoder.feed(&input[start..end])? {
                Progress::NeedMore => start = end,
                Progress::Done { consumed } => return Ok((decoder.into_body(), start + consumed)),
            }
        }
        Err(Error::Malformed("test: body did not end"))
    }

    #[test]
    fn chunked_body_across_every_split() {
        let body =
            b"5;name=value\r\nhello\r\n7 ; ext\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        for step in 1..=body.len() {
            assert_eq!(
                decode_chunked(body, 100, step),
                Ok((b"hello, world".to_vec(), end)),
                "step {step}"
            );
        }
        for split in 0..end {
            let mut decoder = ChunkedDecoder::new(100);
            assert_eq!(
                decoder.feed(&body[..split]),
                Ok(Progress::NeedMore),
                "split {split}"
            );
            let done = decoder.feed(&body[split..]).expect("valid");
            assert_eq!(
                done,
                Progress::Done {
                    consumed: end - split
                }
            );
            assert_eq!(decoder.body(), b"hello, world");
            assert_eq!(decoder.feed(b"more"), Ok(Progress::Done { consumed: 0 }));
        }
        assert_eq!(
            decode_chunked(b"A\r\n0123456789\r\n0\r\n\r\n", 100, 3),
            Ok((b"0123456789".to_vec(), 20))
        );
    }

    #[test]
    fn chunked_body_over_the_limit_is_413() {
        // One chunk over the budget fails at its size line, before any data.
        let mut decoder = ChunkedDecoder::new(10);
        assert_eq!(decoder.feed(b"b"), Err(Error::BodyTooLarge));
        // The sum of chunks counts.
        let input = b"6\r\n123456\r\n5\r\n12345\r\n0\r\n\r\n";
        assert_eq!(decode_chunked(input, 10, 1), Err(Error::BodyTooLarge));
        assert_eq!(decode_chunked(input, 11, 4).map(|(b, _)| b.len()), Ok(11));
        // A size with too many digits.
        assert_eq!(
            decode_chunked(b"00000000000000001\r\n", usize::MAX, 1),
            Err(Error::BodyTooLarge)
        );
    }

    #[test]
    fn chunked_syntax_errors() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b";ext\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"5\r\nhello\rX",
            b"0\r\nX: y\nZ",
            b"0\r\n\rX",
            b"1;a\nb",
        ] {
            let result = decode_chunked(bad, 100, 1);
            assert!(
                matches!(result, Err(Error::Malformed(_))),
                "{bad:?}: {result:?}"
            );
        }
        let long_ext = format!("1;{}\r\n", "e".repeat(CHUNK_LINE_BYTES_MAX));
        assert!(matches!(
            decode_chunked(long_ext.as_bytes(), 100, 64),
            Err(Error::Malformed(_))
        ));
        let long_trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(TRAILER_BYTES_MAX));
        assert!(matches!(
            decode_chunked(long_trailer.as_bytes(), 100, 64),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn responses() {
        let out = response(200, "text/plain", b"hi", true, &[("X-A", "1")]);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhi"
        );
        let out = response(204, "", b"", false, &[]);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        let out = response(599, "", b"", false, &[]);
        assert!(out.starts_with(b"HTTP/1.1 599 \r\nContent-Length: 0\r\n"));
        assert_eq!(reason_phrase(413), "Content Too Large");
        assert_eq!(reason_phrase(426), "Upgrade Required");
    }

    #[test]
    fn json_error_escapes() {
        let body = json_error_body("say \"hi\"\\ \n\t\r\u{1}\u{8}\u{c}\u{1f} é");
        assert_eq!(
            std::str::from_utf8(&body).expect("UTF-8"),
            r#"{"error":"say \"hi\"\\ \n\t\r\u0001\b\f\u001f é"}"#
        );
        let out = json_error(404, "no route", false);
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"));
        assert!(text.contains("Content-Length: 20\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"no route\"}"));
    }

    struct Rng(u64);

    impl Rng {
        /// xorshift64*: tiny, seeded, reproducible.
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn fuzz_one_on_seeded_random_and_mutated_inputs() {
        let seeds: [&[u8]; 5] = [
            WS_REQUEST.as_bytes(),
            b"POST /publish HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
            b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
        ];
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for round in 0..5_000 {
            let data: Vec<u8> = if round % 3 == 0 {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            } else {
                let mut data = seeds[rng.below(seeds.len())].to_vec();
                for _ in 0..rng.below(4) + 1 {
                    if data.is_empty() {
                        break;
                    }
                    let at = rng.below(data.len());
                    match rng.below(4) {
                        0 => data[at] = rng.next() as u8,
                        1 => data[at] = b"\r\n:; ,0aA"[rng.below(9)],
                        2 => data.truncate(at),
                        _ => data.insert(at, rng.next() as u8),
                    }
                }
                data
            };
            fuzz_one(&data);
        }
    }
}
