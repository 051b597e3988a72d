//! RFC 7692 permessage-deflate for the server side: negotiation in the
//! opening handshake, compressing a broadcast once for every recipient, and
//! inflating compressed client messages under a size cap.
//!
//! This module owns the extension's rules and its DEFLATE state. It does no
//! I/O, reads no clock and knows nothing of connections, users or rooms. It
//! does not parse HTTP (`crate::http`), frame headers (`ws::frame`) or decide
//! which connections get a message (`fanout`, the hub).
//!
//! # Choices
//! - **We never keep a compression context** (`server_no_context_takeover` in
//!   every answer, RFC 7692 §7.1.1.1 lets the server add it unasked). Each
//!   broadcast is deflated from a fresh state, so the same compressed frame is
//!   valid for every recipient, whatever each one received before. That is
//!   what lets `fanout` compress once and clone the `Bytes`.
//! - **We ask clients not to keep theirs either** (`client_no_context_takeover`
//!   in the answer; §7.1.1.2 lets a server include it whether or not it was
//!   offered) unless [`Policy::client_context_takeover_allowed`]. Then the
//!   inflate state lives only while a compressed message is arriving and an
//!   idle connection holds none of it.
//! - **Backend**: flate2 with its default pure-Rust `miniz_oxide` backend. It
//!   writes raw DEFLATE and resets a compressor without reallocating, but has
//!   no window-size control (`new_with_window_bits` needs a zlib backend).
//!   Inflating is unaffected: a 32 KiB window decodes any smaller one. For
//!   deflating, a client offer with `server_max_window_bits=N` (N < 15) is
//!   accepted and echoed (§7.1.2.1 "the same or smaller value"), and honoured
//!   by sending only messages of at most 2^N bytes compressed
//!   ([`Agreement::compressed_fits`]): a back-reference never reaches further
//!   back than the start of its message, and each message starts afresh. The
//!   `zlib-rs` feature of flate2 would lift that at the cost of a second
//!   DEFLATE implementation in the build.
//! - miniz_oxide's streaming inflater checks a back-reference only against its
//!   32 KiB window, not against the start of the stream, so a client that
//!   wrongly keeps its context after we said `client_no_context_takeover`
//!   inflates to wrong bytes (zeros) instead of [`Error::Corrupt`]. The state
//!   is new for each such message, so no earlier message can show through.
//! - `client_max_window_bits=N` is answered only when offered (§7.1.2.2 forbids
//!   it otherwise), with `N = min(offered, Policy::client_window_bits_max)`.
//!   With miniz_oxide it does not shrink our inflate state (the window buffer
//!   is always 32 KiB); it is there for a zlib backend and for clients that
//!   want it. Never below 9: zlib-based clients cannot deflate with an 8-bit
//!   raw window (python websockets asserts 9..=15, zlib issue 171).
//!
//! # Memory
//! Measured by `cargo test --lib ws::deflate::tests::memory_figures -- --nocapture`
//! (a counting global allocator in the test build; miniz_oxide 0.9.1 via
//! flate2 1.1.11, x86_64):
//! - an idle [`Inflater`] is 16 bytes inline and **0 bytes** of heap;
//! - while a compressed message arrives it holds one `Box<Decompress>`:
//!   **43,320 bytes** of heap (miniz_oxide's `InflateState`: the 32 KiB window,
//!   the Huffman tables; plus the 24-byte `Decompress` box), freed after the message unless the
//!   client keeps its context, plus the inflated message itself (bounded by
//!   `inflated_bytes_max`). A zip bomb (16 MiB of zeros in 16 KiB) against a
//!   64 KiB cap peaks at 108,857 bytes: the 65,537-byte output plus the state
//!   (`zip_bomb_stops_at_the_cap_with_bounded_memory`, same command);
//! - one [`Compressor`] per shard: **319,326 bytes** (312 KiB) of heap for miniz_oxide's
//!   `CompressorOxide` (hash chains, dictionary, output buffers), plus a
//!   scratch buffer that keeps at most [`SCRATCH_KEEP_BYTES_MAX`] between
//!   messages.
//!
//! # Wiring (done: `front::upgrade`, `hub::frames`, `conn`, `config::WireArgs`)
//! 1. **Handshake** (`shard`/`api`, after `ws::handshake::check` succeeds): call
//!    `deflate::negotiate(head.headers_named("sec-websocket-extensions"), &policy)`.
//!    On `Some(agreement)`, insert the line
//!    `Sec-WebSocket-Extensions: {agreement.response_value()}\r\n` before the
//!    blank line of `handshake::response_101` (it should grow an
//!    `extensions: Option<&str>` argument), and store the [`Agreement`] (5
//!    bytes, `Copy`) and an [`Inflater::new`] (16 bytes, no heap) in the
//!    `Conn`: 21 bytes inline per compressed connection, 0 bytes of heap idle.
//!    On `None` send the 101 unchanged: the connection simply is not
//!    compressed (RFC 6455 §9.1).
//! 2. **Fan-out** (`fanout`, once per published message): keep the plain frame
//!    as today. If any recipient has an agreement and
//!    [`worth_compressing`]`(payload.len(), config.compression_min_bytes)`, call
//!    the shard's [`Compressor::encode_frame`] once; `Ok(None)` (not smaller)
//!    or `Err` (count it) means everyone gets the plain frame. Each recipient
//!    gets the compressed `Bytes` when it has an agreement and
//!    [`Agreement::compressed_fits`] holds, else the plain one. Both are shared
//!    `Bytes`; no per-recipient work. Frames encoded per client (replays,
//!    acks) may use the same path or stay plain: plain is always allowed
//!    (RFC 7692 §6: RSV1 is per message).
//! 3. **Read path** (`ws::frame` + `conn`): `frame::parse_header` must accept
//!    RSV1 when the connection has an agreement (today it rejects every RSV
//!    bit) and report it with the frame; a text message that is compressed
//!    must skip frame.rs's streaming UTF-8 check (the bytes on the wire are
//!    DEFLATE). Then either
//!    - per frame: give every data and control frame's unmasked payload to
//!      [`Inflater::frame`], which enforces the RSV1 placement rules (§6.1)
//!      and returns [`Step::Plain`] (use the payload as before),
//!      [`Step::Partial`] or [`Step::Message`] (`out` holds the whole inflated
//!      message, UTF-8 already checked for text); or
//!    - per message: let frame.rs assemble the compressed message as it does
//!      any other (its `message_bytes_max` then bounds the compressed size),
//!      reject RSV1 on continuation and control frames there, and call
//!      [`Inflater::message`] on the assembled payload.
//!
//!    On `Err(e)` send `frame::encode_close(e.close_code(), &e.to_string())`
//!    and drop the connection, as for `frame::Error`. `inflated_bytes_max`
//!    should be the existing `message_bytes_max`, so a compressed message can
//!    never be larger after inflating than a plain one may be.
//! 4. **Config** (`config.rs`): `--compression` (off by default until measured
//!    in production), `--compression-level` (checked with [`Level::new`]),
//!    `--compression-min-bytes`, and the two [`Policy`] fields.

use std::fmt;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::OpCode;

/// The extension token (RFC 7692 §7, IANA "WebSocket Extension Name Registry").
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// RFC 7692 §7.2.1: the four octets a sync flush leaves at the end of the
/// compressed data, which the sender removes and the receiver appends back
/// (§7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Most extension offers (permessage-deflate or not, over every
/// `Sec-WebSocket-Extensions` line) we read before giving up and declining.
/// Browsers send one or two; the limit bounds the work a hostile header costs.
pub const OFFERS_MAX: usize = 16;

/// The largest window RFC 7692 §7.1.2 allows (2^15 = 32 KiB, DEFLATE's own).
pub const WINDOW_BITS_MAX: u8 = 15;

/// The smallest window RFC 7692 §7.1.2 allows.
pub const WINDOW_BITS_MIN: u8 = 8;

/// The smallest `client_max_window_bits` we answer: zlib cannot deflate with
/// an 8-bit raw window (it silently uses 9, zlib issue 171), so clients built
/// on it refuse 8.
pub const CLIENT_WINDOW_BITS_ANSWER_MIN: u8 = 9;

/// The compressor's scratch buffer keeps at most this much capacity between
/// messages, so one large broadcast does not pin its size in the shard.
pub const SCRATCH_KEEP_BYTES_MAX: usize = 64 * 1024;

/// Output is inflated at most this many bytes per step before the size cap is
/// checked again (the cap itself may be smaller).
const INFLATE_STEP_BYTES: usize = 16 * 1024;

/// What the server is willing to agree to. Checked values: see each field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Let a client keep its LZ77 window between messages (RFC 7692 §7.1.1.2)
    /// when it did not offer `client_no_context_takeover`. Better ratios for
    /// chatty clients, but each such connection then holds its inflate state
    /// (43 KiB, see the module head) from its first compressed message
    /// until it closes. Off by default: volley's clients mostly listen.
    pub client_context_takeover_allowed: bool,
    /// The largest `client_max_window_bits` we answer when the client offers
    /// that parameter; clamped to `9..=15` (see
    /// [`CLIENT_WINDOW_BITS_ANSWER_MIN`]).
    pub client_window_bits_max: u8,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            client_context_takeover_allowed: false,
            client_window_bits_max: WINDOW_BITS_MAX,
        }
    }
}

/// The terms of an accepted permessage-deflate offer, kept per connection
/// (5 bytes, `Copy`). The server side always uses no context takeover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// The client may reuse its LZ77 window across messages, so its inflate
    /// state must live as long as the connection (RFC 7692 §7.1.1.2).
    pub client_context_takeover: bool,
    /// `Some(n)`: we answered `client_max_window_bits=n` (only allowed when the
    /// client offered the parameter, §7.1.2.2). `None`: the client uses 15.
    pub client_window_bits: Option<u8>,
    /// `Some(n)`: the client asked `server_max_window_bits=n` and we echoed it
    /// (§7.1.2.1), so our compressed messages must fit a 2^n-byte window.
    pub server_window_bits: Option<u8>,
}

const _: () = assert!(std::mem::size_of::<Agreement>() == 5);

impl Agreement {
    /// The value of the `Sec-WebSocket-Extensions` response header (RFC 7692
    /// §5: the server answers with exactly the one offer it accepted).
    pub fn response_value(&self) -> String {
        let mut value = String::with_capacity(112);
        value.push_str(EXTENSION_NAME);
        // §7.1.1.1: the server may always add this; we never keep a context.
        value.push_str("; server_no_context_takeover");
        if !self.client_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_window_bits {
            value.push_str("; server_max_window_bits=");
            push_bits(&mut value, bits);
        }
        if let Some(bits) = self.client_window_bits {
            value.push_str("; client_max_window_bits=");
            push_bits(&mut value, bits);
        }
        value
    }

    /// Whether a compressed message of `payload_len` uncompressed bytes may go
    /// to this client: with `server_max_window_bits=n` only messages of at
    /// most 2^n bytes, since then no back-reference can be further than 2^n
    /// (each message is compressed from a fresh state, RFC 7692 §7.1.2.1).
    pub const fn compressed_fits(&self, payload_len: usize) -> bool {
        match self.server_window_bits {
            None => true,
            Some(bits) => payload_len <= 1usize << bits,
        }
    }
}

/// Writes window bits (8..=15) as decimal without leading zeros.
fn push_bits(value: &mut String, bits: u8) {
    if bits >= 10 {
        value.push('1');
    }
    value.push(char::from(b'0' + bits % 10));
}

/// `--compression-min-bytes`: whether a payload is large enough to be worth
/// compressing at all. Tiny messages rarely shrink (the DEFLATE block header
/// and Huffman tables cost more than they save) and still cost a compressor
/// pass.
pub const fn worth_compressing(payload_len: usize, compression_min_bytes: usize) -> bool {
    payload_len >= compression_min_bytes
}

/// Chooses the first acceptable permessage-deflate offer among the values of
/// every `Sec-WebSocket-Extensions` request header, in order (RFC 7692 §5:
/// offers are listed in the client's order of preference).
///
/// Returns `None` to decline: the 101 then carries no extension header and the
/// connection is not compressed. That is always a valid answer, so nothing in
/// this header fails the handshake:
/// - a value that does not follow RFC 6455 §9.1's grammar declines everything
///   (we cannot be sure where its offers begin and end);
/// - an offer with an unknown parameter, a repeated parameter or an invalid
///   value is declined and the next one is tried (RFC 7692 §7.1: "the server
///   MUST decline an extension negotiation offer" in those cases);
/// - more than [`OFFERS_MAX`] offers in all declines everything.
pub fn negotiate<'a, I>(header_values: I, policy: &Policy) -> Option<Agreement>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut chosen = None;
    let mut offers = 0usize;
    for value in header_values {
        let mut cursor = Cursor::new(value);
        // The whole header is parsed even after a choice, so that a syntax
        // error anywhere declines (see above).
        let parsed = cursor.list(&mut |offer| {
            offers += 1;
            if offers > OFFERS_MAX {
                return Err(Syntax);
            }
            if chosen.is_none() {
                chosen = offer.and_then(|o| o.accept(policy));
            }
            Ok(())
        });
        if parsed.is_err() {
            return None;
        }
    }
    chosen
}

/// A `Sec-WebSocket-Extensions` value that does not follow RFC 6455 §9.1.
#[derive(Debug)]
struct Syntax;

/// The parameters of one permessage-deflate offer (RFC 7692 §7.1).
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// §7.1.2.1: a value is required.
    server_max_window_bits: Option<u8>,
    /// §7.1.2.2: `Some(None)` when offered without a value.
    client_max_window_bits: Option<Option<u8>>,
    /// A parameter broke a §7.1 rule, so the offer must be declined.
    invalid: bool,
}

impl Offer {
    /// Records one parameter. `value` is already unquoted; `None` when there
    /// was no `=`. Any broken rule marks the whole offer invalid (§7.1).
    fn param(&mut self, name: &str, value: Option<&str>) {
        let ok = if name.eq_ignore_ascii_case("server_no_context_takeover") {
            // §7.1.1.1: "This extension parameter has no value", once.
            value.is_none() && !std::mem::replace(&mut self.server_no_context_takeover, true)
        } else if name.eq_ignore_ascii_case("client_no_context_takeover") {
            // §7.1.1.2: likewise.
            value.is_none() && !std::mem::replace(&mut self.client_no_context_takeover, true)
        } else if name.eq_ignore_ascii_case("server_max_window_bits") {
            // §7.1.2.1: a value from 8 to 15 is required.
            match value.and_then(window_bits) {
                Some(bits) if self.server_max_window_bits.is_none() => {
                    self.server_max_window_bits = Some(bits);
                    true
                }
                _ => false,
            }
        } else if name.eq_ignore_ascii_case("client_max_window_bits") {
            // §7.1.2.2: the value may be absent; if present it is 8 to 15.
            let bits = match value {
                None => Some(None),
                Some(text) => window_bits(text).map(Some),
            };
            match bits {
                Some(bits) if self.client_max_window_bits.is_none() => {
                    self.client_max_window_bits = Some(bits);
                    true
                }
                _ => false,
            }
        } else {
            // §7.1: "an extension parameter not defined for use in an offer".
            false
        };
        self.invalid |= !ok;
    }

    /// The agreement for this offer under `policy`, or `None` to try the next.
    fn accept(&self, policy: &Policy) -> Option<Agreement> {
        if self.invalid {
            return None;
        }
        let client_bits_max = policy
            .client_window_bits_max
            .clamp(CLIENT_WINDOW_BITS_ANSWER_MIN, WINDOW_BITS_MAX);
        Some(Agreement {
            client_context_takeover: policy.client_context_takeover_allowed
                && !self.client_no_context_takeover,
            // §7.1.2.2: answered only when offered, never larger than offered.
            client_window_bits: self.client_max_window_bits.map(|offered| {
                offered
                    .unwrap_or(WINDOW_BITS_MAX)
                    .clamp(CLIENT_WINDOW_BITS_ANSWER_MIN, client_bits_max)
            }),
            // §7.1.2.1: echoed as is; honoured by `compressed_fits`.
            server_window_bits: self.server_max_window_bits,
        })
    }
}

/// RFC 7692 §7.1.2.1/§7.1.2.2: "a decimal integer value without leading
/// zeroes between 8 to 15, inclusive".
fn window_bits(text: &str) -> Option<u8> {
    match text.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// RFC 9110 §5.6.2 `tchar`.
const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// A hand-written parser for RFC 6455 §9.1:
/// ```text
/// extension-list = 1#extension
/// extension      = extension-token *( ";" extension-param )
/// extension-param = token [ "=" (token | quoted-string) ]
/// ```
/// with the RFC 9110 §5.6.1 list rules (empty elements and optional
/// whitespace around `,`, `;` and `=` are allowed).
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor { text, at: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn token(&mut self) -> Result<&'a str, Syntax> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        // tchars are ASCII, so both ends are char boundaries.
        match self.text.get(start..self.at) {
            Some(token) if !token.is_empty() => Ok(token),
            _ => Err(Syntax),
        }
    }

    /// RFC 9110 §5.6.4 quoted-string, unquoted into `buf` when it fits. The
    /// only values we accept are 1-2 digits, so a longer one is returned as
    /// `None` ("not a valid value") rather than copied.
    fn quoted<'b>(&mut self, buf: &'b mut [u8; 2]) -> Result<Option<&'b str>, Syntax> {
        let mut len = 0usize;
        let mut fits = true;
        loop {
            let b = self.peek().ok_or(Syntax)?;
            self.at += 1;
            let b = match b {
                b'"' => break,
                b'\\' => {
                    let escaped = self.peek().ok_or(Syntax)?;
                    self.at += 1;
                    escaped
                }
                _ => b,
            };
            // qdtext and quoted-pair exclude controls other than HTAB.
            if (b < 0x20 && b != b'\t') || b == 0x7f {
                return Err(Syntax);
            }
            match buf.get_mut(len) {
                Some(slot) if fits => {
                    *slot = b;
                    len += 1;
                }
                _ => fits = false,
            }
        }
        if !fits {
            return Ok(None);
        }
        // Non-ASCII or a non-token value is simply not a valid value.
        Ok(buf
            .get(..len)
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| v.bytes().all(is_tchar)))
    }

    /// Parses the whole list, calling `on_offer` with the parsed offer when
    /// it is permessage-deflate and `None` for any other extension.
    fn list(
        &mut self,
        on_offer: &mut dyn FnMut(Option<Offer>) -> Result<(), Syntax>,
    ) -> Result<(), Syntax> {
        let mut elements = 0usize;
        loop {
            self.skip_ows();
            match self.peek() {
                None => break,
                // RFC 9110 §5.6.1: empty list elements are allowed.
                Some(b',') => {
                    self.at += 1;
                    continue;
                }
                Some(_) => {}
            }
            on_offer(self.extension()?)?;
            elements += 1;
            self.skip_ows();
            match self.peek() {
                None => break,
                Some(b',') => self.at += 1,
                Some(_) => return Err(Syntax),
            }
        }
        // RFC 6455 §9.1: `1#extension`, at least one.
        if elements == 0 {
            return Err(Syntax);
        }
        Ok(())
    }

    fn extension(&mut self) -> Result<Option<Offer>, Syntax> {
        let name = self.token()?;
        let ours = name.eq_ignore_ascii_case(EXTENSION_NAME);
        let mut offer = Offer::default();
        loop {
            self.skip_ows();
            if !self.eat(b';') {
                break;
            }
            self.skip_ows();
            let param = self.token()?;
            self.skip_ows();
            let mut buf = [0u8; 2];
            let value = if self.eat(b'=') {
                self.skip_ows();
                if self.eat(b'"') {
                    match self.quoted(&mut buf)? {
                        Some(v) => Some(v),
                        // A quoted value we cannot use: the offer is invalid.
                        None => {
                            offer.invalid = true;
                            Some("")
                        }
                    }
                } else {
                    Some(self.token()?)
                }
            } else {
                None
            };
            if ours {
                offer.param(param, value);
            }
        }
        Ok(ours.then_some(offer))
    }
}

/// The compression level, 0 (stored, no compression) to 9 (smallest, slowest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level(u8);

impl Level {
    /// Fast, and within a few percent of level 6 on short JSON
    /// (see BENCHMARKS.md, "permessage-deflate").
    pub const FAST: Level = Level(1);
    /// zlib's default.
    pub const DEFAULT: Level = Level(6);

    /// `None` for a level above 9.
    pub const fn new(level: u8) -> Option<Level> {
        if level <= 9 {
            Some(Level(level))
        } else {
            None
        }
    }

    /// The number 0..=9.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// Something went wrong compressing or inflating. Inflate errors come from
/// the client: the caller sends `frame::encode_close(err.close_code(),
/// &err.to_string())` and drops the connection. [`Error::Deflate`] is ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// RFC 7692 §6.1: RSV1 on a continuation or control frame ("an endpoint
    /// MUST NOT set the Per-Message Compressed bit of control frames and
    /// non-first fragments"); close with 1002.
    Rsv1Misplaced,
    /// A Text or Binary frame while a compressed message is still arriving
    /// (RFC 6455 §5.4); frame.rs reports it first when wired in front. Close
    /// with 1002.
    ExpectedContinuation,
    /// The payload is not a valid DEFLATE stream (RFC 7692 §7.2.2), or has
    /// bytes after its final block; close with 1007, as for any payload that
    /// is not what its message type says (RFC 6455 §7.4.1).
    Corrupt,
    /// Inflating would exceed `inflated_bytes_max`: a message too big to
    /// process, possibly a zip bomb; close with 1009. Inflating stopped at
    /// most one step past the limit.
    TooBig {
        /// The limit in force.
        max_bytes: usize,
    },
    /// An inflated text message is not UTF-8 (RFC 6455 §8.1); close with 1007.
    InvalidUtf8,
    /// The compressor refused its input. Our bug, never the client's: count
    /// it and send the plain frame.
    Deflate,
}

impl Error {
    /// The status code to put in the close frame we answer with.
    pub const fn close_code(&self) -> u16 {
        use super::frame::close_code;
        match self {
            Error::Rsv1Misplaced | Error::ExpectedContinuation => close_code::PROTOCOL,
            Error::Corrupt | Error::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            Error::TooBig { .. } => close_code::TOO_BIG,
            Error::Deflate => close_code::INTERNAL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rsv1Misplaced => f.write_str("RSV1 on a continuation or control frame"),
            Error::ExpectedContinuation => {
                f.write_str("new message inside a compressed fragmented one")
            }
            Error::Corrupt => f.write_str("invalid deflate data"),
            Error::TooBig { max_bytes } => {
                write!(f, "inflated message over the {max_bytes}-byte limit")
            }
            Error::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Error::Deflate => f.write_str("deflate failed"),
        }
    }
}

impl std::error::Error for Error {}

/// One compressor per shard, reset between messages, so a broadcast costs one
/// DEFLATE pass and no compressor allocation.
pub struct Compressor {
    /// Reset before every message: no context takeover (module head).
    deflate: Compress,
    /// Holds the compressed bytes of the message being encoded, so the frame
    /// can then be allocated at its exact size. Capacity kept between
    /// messages, at most [`SCRATCH_KEEP_BYTES_MAX`].
    scratch: Vec<u8>,
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("scratch_capacity", &self.scratch.capacity())
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// A raw-DEFLATE compressor (no zlib header, RFC 7692 §7.2.1).
    pub fn new(level: Level) -> Self {
        Compressor {
            deflate: Compress::new(Compression::new(u32::from(level.get())), false),
            scratch: Vec::new(),
        }
    }

    /// The compressed payload of one message: a raw DEFLATE stream from a
    /// fresh state, sync-flushed, without the trailing `00 00 ff ff`
    /// (RFC 7692 §7.2.1). Not yet a frame; see [`encode_compressed`].
    pub fn compress(&mut self, payload: &[u8]) -> Result<Bytes, Error> {
        self.deflate_into_scratch(payload)?;
        let out = Bytes::copy_from_slice(&self.scratch);
        self.trim_scratch();
        Ok(out)
    }

    /// The whole server frame for a message (FIN and RSV1 set), in one buffer
    /// of exactly its size, ready to be cloned to every recipient.
    ///
    /// `Ok(None)` when compressing does not make the payload smaller: send the
    /// plain frame instead (RFC 7692 §6: compression is per message).
    pub fn encode_frame(&mut self, opcode: OpCode, payload: &[u8]) -> Result<Option<Bytes>, Error> {
        self.deflate_into_scratch(payload)?;
        let frame = if self.scratch.len() < payload.len() {
            Some(encode_compressed(opcode, &self.scratch))
        } else {
            None
        };
        self.trim_scratch();
        Ok(frame)
    }

    /// Deflates `payload` into `scratch`, tail removed.
    fn deflate_into_scratch(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.deflate.reset();
        self.scratch.clear();
        // Most messages fit in one step: DEFLATE expands incompressible data
        // by 5 bytes per 64 KiB stored block at most, plus the flush.
        self.scratch
            .reserve(payload.len() + payload.len() / 1024 + 64);
        let start_in = self.deflate.total_in();
        let mut consumed = 0usize;
        loop {
            let rest = payload.get(consumed..).ok_or(Error::Deflate)?;
            if self.scratch.capacity() - self.scratch.len() < 64 {
                self.scratch.reserve(self.scratch.len().max(256));
            }
            let written_before = self.scratch.len();
            self.deflate
                .compress_vec(rest, &mut self.scratch, FlushCompress::Sync)
                .map_err(|_| Error::Deflate)?;
            let consumed_now =
                usize::try_from(self.deflate.total_in() - start_in).map_err(|_| Error::Deflate)?;
            let stuck = consumed_now == consumed && self.scratch.len() == written_before;
            consumed = consumed_now;
            // The flush is complete once all input is in and the compressor
            // stopped before filling the buffer.
            if consumed == payload.len() && self.scratch.len() < self.scratch.capacity() {
                break;
            }
            // With 64 bytes of room or more the compressor always moves; a
            // step that does not would repeat forever.
            if stuck {
                return Err(Error::Deflate);
            }
        }
        // RFC 7692 §7.2.1: a sync flush ends with an empty stored block whose
        // last four octets are 00 00 ff ff; remove them.
        if !self.scratch.ends_with(&TAIL) {
            return Err(Error::Deflate);
        }
        self.scratch.truncate(self.scratch.len() - TAIL.len());
        Ok(())
    }

    fn trim_scratch(&mut self) {
        if self.scratch.capacity() > SCRATCH_KEEP_BYTES_MAX {
            self.scratch.clear();
            self.scratch.shrink_to(SCRATCH_KEEP_BYTES_MAX);
        }
    }
}

/// One message compressed with a compressor of its own: for tools and tests.
/// A shard keeps a [`Compressor`] instead (about 300 KiB to allocate).
pub fn compress_message(payload: &[u8], level: Level) -> Result<Bytes, Error> {
    Compressor::new(level).compress(payload)
}

/// Largest stored (uncompressed) DEFLATE block: its LEN field is 16 bits (RFC 1951 §3.2.4).
const STORED_BLOCK_BYTES_MAX: usize = 0xFFFF;

/// `payload` as raw DEFLATE stored blocks, without the final `00 00 ff ff` (RFC 7692
/// §7.2.1): valid compressed data for any window size, since it holds no back-reference.
/// The empty message is the single byte `00` (§7.2.3.6).
pub fn stored_blocks(payload: &[u8]) -> Vec<u8> {
    let blocks = payload.len().div_ceil(STORED_BLOCK_BYTES_MAX);
    let mut out = Vec::with_capacity(payload.len() + 5 * blocks + 1);
    for chunk in payload.chunks(STORED_BLOCK_BYTES_MAX) {
        // BFINAL 0, BTYPE 00, padded to the byte; then LEN and NLEN, little-endian.
        let len = chunk.len() as u16;
        out.push(0x00);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    // The receiver appends 00 00 ff ff, an empty stored block: it completes our last block
    // header for an empty message, and follows the last stored block otherwise.
    if payload.is_empty() {
        out.push(0x00);
    }
    out
}

/// Encodes one unfragmented server frame whose payload is `compressed`
/// (RFC 6455 §5.2 with RSV1, the "Per-Message Compressed" bit of RFC 7692
/// §6, set on it).
///
/// `ws::frame::encode` has no RSV1 argument, so the header is written here;
/// `frame_header_matches_frame_encode` pins it to frame.rs's. frame.rs should
/// grow an RSV1 flag and this function call it.
pub fn encode_compressed(opcode: OpCode, compressed: &[u8]) -> Bytes {
    debug_assert!(
        matches!(opcode, OpCode::Text | OpCode::Binary),
        "RFC 7692 §6.1: only the first frame of a data message is compressed"
    );
    let len = compressed.len();
    // RFC 6455 §5.2: the minimal length form.
    let len_bytes = match len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    let mut out = Vec::with_capacity(2 + len_bytes + len);
    // FIN | RSV1 | opcode.
    out.push(0x80 | 0x40 | opcode.as_u8());
    match len {
        // The arm bounds make each cast lossless.
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(compressed);
    debug_assert_eq!(out.len(), out.capacity(), "frame buffer sized exactly");
    Bytes::from(out)
}

/// What [`Inflater::frame`] made of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not part of a compressed message (or a control frame): the caller uses
    /// the payload as it would without the extension.
    Plain,
    /// Part of a compressed message was inflated into `out`; more follows.
    Partial,
    /// `out` holds the whole inflated message (UTF-8 checked for text).
    Message,
}

/// Per-connection inflater of compressed client messages.
///
/// Idle it is 16 bytes and owns no heap: the DEFLATE state is allocated on the
/// first compressed frame and freed when the message ends, unless the client
/// keeps its context (then it lives until the connection closes).
#[derive(Default)]
pub struct Inflater {
    /// `None` until a compressed frame arrives, and again after each message
    /// without context takeover. Boxed so the idle size is one pointer.
    state: Option<Box<Decompress>>,
    /// [`Agreement::client_context_takeover`]: keep `state` between messages.
    context_takeover: bool,
    /// A compressed message has started and not finished.
    in_message: bool,
    /// That message is text, so its inflated bytes must be UTF-8.
    text: bool,
    /// That message's DEFLATE stream already ended with a final block
    /// (RFC 7692 §7.2.3.4), so its remaining fragments must be empty.
    ended: bool,
}

const _: () = assert!(std::mem::size_of::<Inflater>() <= 16);

impl fmt::Debug for Inflater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inflater")
            .field("allocated", &self.state.is_some())
            .field("context_takeover", &self.context_takeover)
            .field("in_message", &self.in_message)
            .finish()
    }
}

impl Inflater {
    /// An inflater for a connection with this agreement; allocates nothing.
    pub fn new(agreement: &Agreement) -> Self {
        Inflater {
            state: None,
            context_takeover: agreement.client_context_takeover,
            in_message: false,
            text: false,
            ended: false,
        }
    }

    /// True when the inflater holds DEFLATE state (between messages only
    /// with client context takeover).
    pub fn is_allocated(&self) -> bool {
        self.state.is_some()
    }

    /// Handles one frame's unmasked payload, in arrival order, control frames
    /// included (RFC 7692 §6.1: RSV1 marks the first frame of a compressed
    /// message; continuation and control frames must not carry it).
    ///
    /// For a compressed message, `out` is cleared on its first frame and
    /// receives the inflated bytes; `out.len()` never exceeds
    /// `inflated_bytes_max` on success. On `Err` the caller closes with
    /// [`Error::close_code`]; the inflater has freed its state.
    pub fn frame(
        &mut self,
        opcode: OpCode,
        rsv1: bool,
        fin: bool,
        payload: &[u8],
        inflated_bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<Step, Error> {
        let result = self.frame_inner(opcode, rsv1, fin, payload, inflated_bytes_max, out);
        if result.is_err() {
            self.abort();
        }
        result
    }

    /// Inflates one whole compressed message that frame.rs assembled (all its
    /// fragments' payloads joined): `out` receives exactly the message.
    pub fn message(
        &mut self,
        text: bool,
        compressed: &[u8],
        inflated_bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        match self.frame(opcode, true, true, compressed, inflated_bytes_max, out)? {
            Step::Message => Ok(()),
            // A FIN frame with RSV1 always completes its message.
            Step::Plain | Step::Partial => {
                self.abort();
                Err(Error::Corrupt)
            }
        }
    }

    fn frame_inner(
        &mut self,
        opcode: OpCode,
        rsv1: bool,
        fin: bool,
        payload: &[u8],
        inflated_bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<Step, Error> {
        match opcode {
            _ if opcode.is_control() => {
                return if rsv1 {
                    Err(Error::Rsv1Misplaced)
                } else {
                    Ok(Step::Plain)
                };
            }
            OpCode::Continuation => {
                if rsv1 {
                    return Err(Error::Rsv1Misplaced);
                }
                if !self.in_message {
                    // A plain fragmented message (or frame.rs's error to report).
                    return Ok(Step::Plain);
                }
            }
            _ => {
                if self.in_message {
                    return Err(Error::ExpectedContinuation);
                }
                if !rsv1 {
                    return Ok(Step::Plain);
                }
                self.in_message = true;
                self.text = opcode == OpCode::Text;
                self.ended = false;
                out.clear();
            }
        }
        let state = self
            .state
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        let mut ended = self.ended;
        if ended {
            // RFC 7692 §7.2.3.4 allows a final block, but no data may follow
            // it in the same message (empty fragments may).
            if !payload.is_empty() {
                return Err(Error::Corrupt);
            }
        } else {
            ended = inflate(state, payload, inflated_bytes_max, out)?;
        }
        if !fin {
            self.ended = ended;
            return Ok(Step::Partial);
        }
        // RFC 7692 §7.2.2: append 00 00 ff ff, then inflate. A message that
        // ended with a BFINAL block (§7.2.3.4) has no use for it.
        if !ended {
            ended = inflate(state, &TAIL, inflated_bytes_max, out)?;
        }
        self.in_message = false;
        self.ended = false;
        if !self.context_takeover {
            self.state = None;
        } else if ended {
            // After a final block the stream is over; the next message starts
            // a new one. (Its window is lost: a client that keeps its context
            // and also sends BFINAL blocks would fail with `Corrupt` on a
            // back-reference into the old window. None is known to do both.)
            state.reset(false);
        }
        if self.text && std::str::from_utf8(out).is_err() {
            return Err(Error::InvalidUtf8);
        }
        Ok(Step::Message)
    }

    /// Forgets the message in progress and frees the state.
    fn abort(&mut self) {
        self.state = None;
        self.in_message = false;
        self.ended = false;
    }
}

/// Inflates all of `input` into `out`, never growing `out` past
/// `inflated_bytes_max + 1` bytes of content. Returns whether the DEFLATE
/// stream ended (a block with BFINAL set); input after that end is an error.
fn inflate(
    state: &mut Decompress,
    mut input: &[u8],
    inflated_bytes_max: usize,
    out: &mut Vec<u8>,
) -> Result<bool, Error> {
    loop {
        // One byte over the limit is how we learn the limit was crossed.
        let room = (inflated_bytes_max + 1)
            .saturating_sub(out.len())
            .min(INFLATE_STEP_BYTES);
        if room == 0 {
            return Err(Error::TooBig {
                max_bytes: inflated_bytes_max,
            });
        }
        // `reserve_exact` grows only to what we allow; spare capacity a reused
        // buffer already had may be filled too, but that memory is already held.
        out.reserve_exact(room);
        let before_in = state.total_in();
        let before_out = out.len();
        let status = state
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|_| Error::Corrupt)?;
        let consumed = usize::try_from(state.total_in() - before_in).map_err(|_| Error::Corrupt)?;
        input = input.get(consumed..).ok_or(Error::Corrupt)?;
        if out.len() > inflated_bytes_max {
            return Err(Error::TooBig {
                max_bytes: inflated_bytes_max,
            });
        }
        let filled = out.len() == out.capacity();
        match status {
            Status::StreamEnd => {
                return if input.is_empty() {
                    Ok(true)
                } else {
                    Err(Error::Corrupt)
                };
            }
            // The inflater may still hold output when it filled the buffer.
            Status::Ok | Status::BufError if !input.is_empty() || filled => {
                if consumed == 0 && out.len() == before_out && !filled {
                    // No progress with input left and room to write: the
                    // stream is stuck, which valid data never is.
                    return Err(Error::Corrupt);
                }
            }
            Status::Ok | Status::BufError => return Ok(false),
        }
    }
}

/// Fuzz entry point; must never panic. The first byte picks a mode, the rest
/// is the input:
/// - negotiation: `data` as a header value must give `None` or an agreement
///   whose response value negotiates back to itself;
/// - inflating: `data` as a sequence of frames of random flags, checked
///   against the size cap;
/// - round trip: compressing `data` and inflating it gives `data` back.
pub fn fuzz_one(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            let policy = Policy {
                client_context_takeover_allowed: mode & 0x10 != 0,
                client_window_bits_max: mode >> 4,
            };
            if let Some(agreement) = negotiate(text.split('\n'), &policy) {
                let value = agreement.response_value();
                assert!(value.starts_with(EXTENSION_NAME));
                // Our own answer is a valid offer that we accept as it is.
                let again = negotiate([value.as_str()], &policy);
                assert!(again.is_some(), "{value}");
            }
        }
        1 => {
            let cap = usize::from(mode >> 2) * 16;
            let agreement = Agreement {
                client_context_takeover: mode & 0x40 != 0,
                client_window_bits: None,
                server_window_bits: None,
            };
            let mut inflater = Inflater::new(&agreement);
            let mut out = Vec::new();
            let mut frames = rest;
            while let Some((&flags, tail)) = frames.split_first() {
                let len = usize::from(flags >> 4).min(tail.len());
                let (payload, tail) = tail.split_at(len);
                frames = tail;
                let opcode = [
                    OpCode::Continuation,
                    OpCode::Text,
                    OpCode::Binary,
                    OpCode::Ping,
                ][usize::from(flags & 3)];
                let step = inflater.frame(
                    opcode,
                    flags & 4 != 0,
                    flags & 8 != 0,
                    payload,
                    cap,
                    &mut out,
                );
                match step {
                    Ok(Step::Partial | Step::Message) => assert!(out.len() <= cap),
                    Ok(Step::Plain) => {}
                    Err(_) => assert!(!inflater.is_allocated()),
                }
            }
        }
        _ => {
            let level = Level::new(mode % 10).unwrap_or(Level::FAST);
            let Ok(compressed) = compress_message(rest, level) else {
                return;
            };
            let mut inflater = Inflater::default();
            let mut out = Vec::new();
            let inflated = inflater.message(false, &compressed, rest.len(), &mut out);
            assert_eq!(inflated, Ok(()));
            assert_eq!(out, rest);
            assert!(!inflater.is_allocated());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::ws::frame;

    fn offer(values: &[&str]) -> Option<Agreement> {
        negotiate(values.iter().copied(), &Policy::default())
    }

    /// The agreement we reach when a client sends only the given values,
    /// as the response header value.
    fn answer(values: &[&str]) -> Option<String> {
        offer(values).map(|a| a.response_value())
    }

    const NO_TAKEOVER: Agreement = Agreement {
        client_context_takeover: false,
        client_window_bits: None,
        server_window_bits: None,
    };

    #[test]
    fn browsers_and_libraries_offers() {
        // Chrome, Node's ws (client default) and python websockets (client
        // default, checked with websockets 17.4) all send this.
        let chrome = "permessage-deflate; client_max_window_bits";
        assert_eq!(
            answer(&[chrome]).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 client_max_window_bits=15"
            )
        );
        // Firefox and Safari send the bare token.
        assert_eq!(
            answer(&["permessage-deflate"]).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        assert_eq!(offer(&["permessage-deflate"]), Some(NO_TAKEOVER));
        // Old WebKit's draft extension alone is declined, and skipped when
        // listed after ours.
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(
            offer(&["x-webkit-deflate-frame, permessage-deflate"]),
            Some(NO_TAKEOVER)
        );
        // Node ws when configured with every parameter.
        let full = "permessage-deflate; server_no_context_takeover; \
                    client_no_context_takeover; server_max_window_bits=10; \
                    client_max_window_bits=12";
        assert_eq!(
            offer(&[full]),
            Some(Agreement {
                client_context_takeover: false,
                client_window_bits: Some(12),
                server_window_bits: Some(10),
            })
        );
        assert_eq!(
            answer(&[full]).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10; client_max_window_bits=12"
            )
        );
    }

    #[test]
    fn policy_shapes_the_answer() {
        let takeover = Policy {
            client_context_takeover_allowed: true,
            client_window_bits_max: 10,
        };
        let got = negotiate(["permessage-deflate; client_max_window_bits"], &takeover);
        assert_eq!(
            got,
            Some(Agreement {
                client_context_takeover: true,
                client_window_bits: Some(10),
                server_window_bits: None,
            })
        );
        // The client's own no-takeover wins over our permission.
        let got = negotiate(
            ["permessage-deflate; client_no_context_takeover"],
            &takeover,
        );
        assert_eq!(got.map(|a| a.client_context_takeover), Some(false));
        // Never larger than offered, never below 9.
        let got = negotiate(["permessage-deflate; client_max_window_bits=9"], &takeover);
        assert_eq!(got.and_then(|a| a.client_window_bits), Some(9));
        let got = negotiate(["permessage-deflate; client_max_window_bits=8"], &takeover);
        assert_eq!(got.and_then(|a| a.client_window_bits), Some(9));
        let tiny = Policy {
            client_window_bits_max: 0,
            ..Policy::default()
        };
        let got = negotiate(["permessage-deflate; client_max_window_bits"], &tiny);
        assert_eq!(got.and_then(|a| a.client_window_bits), Some(9));
    }

    #[test]
    fn invalid_offers_fall_through_to_the_next() {
        let fallback = "permessage-deflate";
        for bad in [
            // RFC 7692 §7.1: duplicates.
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            // Values where none is allowed, missing where one is required.
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; server_max_window_bits",
            // Out of range, leading zeros, not a number.
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=\"100\"",
            // Unknown parameters.
            "permessage-deflate; mux",
            "permessage-deflate; x=y",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
            let both = format!("{bad}, {fallback}");
            assert_eq!(offer(&[&both]), Some(NO_TAKEOVER), "{both}");
            // And across header lines.
            assert_eq!(offer(&[bad, fallback]), Some(NO_TAKEOVER), "{bad}");
        }
        // The first acceptable offer wins, in the client's order.
        let got = offer(&["permessage-deflate; server_max_window_bits=9, permessage-deflate"]);
        assert_eq!(got.and_then(|a| a.server_window_bits), Some(9));
    }

    #[test]
    fn quoted_values_and_whitespace() {
        let got = offer(&["permessage-deflate ;client_max_window_bits = \"10\" "]);
        assert_eq!(got.and_then(|a| a.client_window_bits), Some(10));
        let got = offer(&["permessage-deflate; server_max_window_bits=\"1\\2\""]);
        assert_eq!(got.and_then(|a| a.server_window_bits), Some(12));
        // Case of the tokens does not matter.
        assert_eq!(
            offer(&["Permessage-Deflate; Client_No_Context_Takeover"]),
            Some(NO_TAKEOVER)
        );
        // Empty list elements are allowed (RFC 9110 §5.6.1).
        assert_eq!(offer(&[" , permessage-deflate ,, "]), Some(NO_TAKEOVER));
        // A quoted comma does not split offers; this offer is invalid.
        assert_eq!(offer(&["permessage-deflate; x=\"a,b\""]), None);
        assert_eq!(
            offer(&["permessage-deflate; x=\"a,b\", permessage-deflate"]),
            Some(NO_TAKEOVER)
        );
    }

    #[test]
    fn bad_syntax_declines_without_failing() {
        for bad in [
            "",
            " ",
            ",",
            ";",
            "permessage-deflate;",
            "permessage-deflate; ",
            "permessage-deflate client_max_window_bits",
            "permessage-deflate; =10",
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage-deflate; client_max_window_bits=\"1\\",
            "permessage-deflate; a=\"\x01\"",
            "permessage-deflate, permessage-deflate; @",
            "\"permessage-deflate\"",
            "permessage-deflate\u{e9}",
            "permessage-deflate; client_max_window_bits=1 0",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad:?}");
            // A broken line declines even a good one beside it.
            assert_eq!(offer(&["permessage-deflate", bad]), None, "{bad:?}");
        }
        // Too many offers.
        let many = vec!["x-foo"; OFFERS_MAX];
        let mut with_ours = many.clone();
        with_ours.push("permessage-deflate");
        assert_eq!(offer(&with_ours), None);
        let mut within = many[1..].to_vec();
        within.push("permessage-deflate");
        assert_eq!(offer(&within), Some(NO_TAKEOVER));
    }

    #[test]
    fn server_window_limit_is_honoured_by_size() {
        let agreement = offer(&["permessage-deflate; server_max_window_bits=10"]);
        let Some(agreement) = agreement else {
            panic!("accepted")
        };
        assert!(agreement.compressed_fits(1024));
        assert!(!agreement.compressed_fits(1025));
        assert!(NO_TAKEOVER.compressed_fits(usize::MAX));
        assert!(worth_compressing(300, 256));
        assert!(!worth_compressing(255, 256));
    }

    /// Inflates raw DEFLATE with flate2's reader, a decoder independent of
    /// our `Inflater` loop.
    fn reference_inflate(compressed: &[u8]) -> Vec<u8> {
        let mut data = compressed.to_vec();
        data.extend_from_slice(&TAIL);
        let mut out = Vec::new();
        let mut decoder = flate2::read::DeflateDecoder::new(&data[..]);
        // The stream has no final block, so the reader ends with an
        // "unexpected EOF"-style error or Ok once all input is used; take
        // what was decoded either way.
        let _ = decoder.read_to_end(&mut out);
        out
    }

    fn json(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0u32;
        while out.len() < len {
            out.extend_from_slice(
                format!(
                    "{{\"room\":\"lobby-{}\",\"seq\":{},\"user\":\"u{}\",\"text\":\"hello there\"}},",
                    i % 7,
                    1000 + i,
                    i * 37 % 101
                )
                .as_bytes(),
            );
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn round_trip_through_a_reference_decoder() {
        let mut compressor = Compressor::new(Level::FAST);
        for payload in [
            Vec::new(),
            b"x".to_vec(),
            json(300),
            json(4096),
            json(200_000),
            (0..70_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        ] {
            for level in [
                Level::new(0),
                Some(Level::FAST),
                Some(Level::DEFAULT),
                Level::new(9),
            ] {
                let level = level.unwrap();
                let compressed = compress_message(&payload, level).unwrap();
                assert_eq!(reference_inflate(&compressed), payload);
            }
            // The shard's reused compressor gives the same as a fresh one.
            let reused = compressor.compress(&payload).unwrap();
            assert_eq!(reused, compress_message(&payload, Level::FAST).unwrap());
            let mut inflater = Inflater::default();
            let mut out = Vec::new();
            inflater
                .message(true, &reused, payload.len(), &mut out)
                .unwrap_or_else(|e| assert!(payload.len() > 200_000 || e == Error::InvalidUtf8));
            if std::str::from_utf8(&payload).is_ok() {
                assert_eq!(out, payload);
            }
        }
        assert!(compressor.scratch.capacity() <= SCRATCH_KEEP_BYTES_MAX);
    }

    #[test]
    fn stored_blocks_inflate_to_the_payload() {
        for len in [0usize, 1, 300, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let stored = stored_blocks(&payload);
            assert_eq!(reference_inflate(&stored), payload, "len {len}");
            let mut out = Vec::new();
            Inflater::default()
                .message(false, &stored, 1 << 20, &mut out)
                .unwrap();
            assert_eq!(out, payload, "len {len}");
        }
    }

    #[test]
    fn tail_is_removed() {
        // RFC 7692 §7.2.3.6: an empty message compresses to a single 0x00.
        assert_eq!(&compress_message(b"", Level::FAST).unwrap()[..], &[0x00]);
        for payload in [json(1), json(300), json(5000)] {
            let compressed = compress_message(&payload, Level::FAST).unwrap();
            // Without the tail, the stream ends in the first byte of the
            // empty stored block (RFC 7692 §7.2.1); with the tail put back
            // it is a complete sync flush.
            let mut full = compressed.to_vec();
            full.extend_from_slice(&TAIL);
            let mut raw = Compress::new(Compression::fast(), false);
            let mut expected = Vec::with_capacity(payload.len() + 64);
            raw.compress_vec(&payload, &mut expected, FlushCompress::Sync)
                .unwrap();
            assert_eq!(full, expected);
            assert!(expected.ends_with(&TAIL));
        }
    }

    #[test]
    fn rfc_7692_examples_inflate() {
        let mut out = Vec::new();
        // §7.2.3.1 a message with a fixed Huffman block, §7.2.3.3 a stored
        // block, §7.2.3.4 a block with BFINAL set, §7.2.3.5 two blocks, one
        // flushed in the middle, §7.2.3.6 an empty message.
        for (hex, expected) in [
            (
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00][..],
                &b"Hello"[..],
            ),
            (
                &[
                    0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
                ],
                b"Hello",
            ),
            (&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], b"Hello"),
            (
                &[
                    0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
                ],
                b"Hello",
            ),
            (&[0x00], b""),
        ] {
            let mut inflater = Inflater::new(&NO_TAKEOVER);
            inflater.message(true, hex, 100, &mut out).unwrap();
            assert_eq!(out, expected);
            assert!(!inflater.is_allocated());
        }
        // §7.2.3.2: with context takeover the second "Hello" is a
        // back-reference into the first message.
        let takeover = Agreement {
            client_context_takeover: true,
            ..NO_TAKEOVER
        };
        let first = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let second = [0xf2, 0x00, 0x11, 0x00, 0x00];
        let mut inflater = Inflater::new(&takeover);
        inflater.message(true, &first, 100, &mut out).unwrap();
        assert!(inflater.is_allocated(), "kept for the next message");
        inflater.message(true, &second, 100, &mut out).unwrap();
        assert_eq!(out, b"Hello");
        // Without takeover the same bytes reach back before the message.
        // miniz_oxide's streaming inflater does not catch that distance (it
        // only checks it against its 32 KiB window, which starts zeroed), so
        // the client gets zeros back instead of an error. Nothing of an
        // earlier message can show through: the state is new per message.
        let mut inflater = Inflater::new(&NO_TAKEOVER);
        inflater.message(true, &first, 100, &mut out).unwrap();
        inflater.message(true, &second, 100, &mut out).unwrap();
        assert_ne!(out, b"Hello");
        // A bad block type is caught.
        assert_eq!(
            inflater.message(true, &[0xff, 0xff], 100, &mut out),
            Err(Error::Corrupt)
        );
        assert_eq!(Error::Corrupt.close_code(), 1007);
    }

    #[test]
    fn fragmented_compressed_messages() {
        let payload = json(3000);
        let compressed = compress_message(&payload, Level::FAST).unwrap();
        let (a, rest) = compressed.split_at(compressed.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut inflater = Inflater::default();
        let mut out = vec![1, 2, 3];
        let max = 10_000;
        assert_eq!(
            inflater.frame(OpCode::Text, true, false, a, max, &mut out),
            Ok(Step::Partial)
        );
        assert!(inflater.is_allocated());
        // A ping between fragments is plain and changes nothing.
        assert_eq!(
            inflater.frame(OpCode::Ping, false, true, b"p", max, &mut out),
            Ok(Step::Plain)
        );
        // An empty continuation.
        assert_eq!(
            inflater.frame(OpCode::Continuation, false, false, b"", max, &mut out),
            Ok(Step::Partial)
        );
        assert_eq!(
            inflater.frame(OpCode::Continuation, false, false, b, max, &mut out),
            Ok(Step::Partial)
        );
        assert_eq!(
            inflater.frame(OpCode::Continuation, false, true, c, max, &mut out),
            Ok(Step::Message)
        );
        assert_eq!(out, payload);
        assert!(!inflater.is_allocated(), "freed after the message");

        // A plain fragmented message passes through untouched.
        assert_eq!(
            inflater.frame(OpCode::Binary, false, false, b"ab", max, &mut out),
            Ok(Step::Plain)
        );
        assert_eq!(
            inflater.frame(OpCode::Continuation, false, true, b"cd", max, &mut out),
            Ok(Step::Plain)
        );
        assert!(!inflater.is_allocated(), "plain frames allocate nothing");

        // RSV1 on a continuation or a control frame (RFC 7692 §6.1).
        inflater
            .frame(OpCode::Text, true, false, a, max, &mut out)
            .unwrap();
        assert_eq!(
            inflater.frame(OpCode::Continuation, true, true, b, max, &mut out),
            Err(Error::Rsv1Misplaced)
        );
        assert!(!inflater.is_allocated(), "freed on error");
        assert_eq!(
            inflater.frame(OpCode::Ping, true, true, b"", max, &mut out),
            Err(Error::Rsv1Misplaced)
        );
        assert_eq!(Error::Rsv1Misplaced.close_code(), 1002);
        // A new message inside a compressed one.
        inflater
            .frame(OpCode::Text, true, false, a, max, &mut out)
            .unwrap();
        assert_eq!(
            inflater.frame(OpCode::Binary, false, true, b"x", max, &mut out),
            Err(Error::ExpectedContinuation)
        );
        // A final block may be followed by empty fragments only.
        let mut inflater = Inflater::default();
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        for last in [&b""[..], b"\x00"] {
            assert_eq!(
                inflater.frame(OpCode::Text, true, false, &bfinal, max, &mut out),
                Ok(Step::Partial)
            );
            assert_eq!(
                inflater.frame(OpCode::Continuation, false, false, b"", max, &mut out),
                Ok(Step::Partial)
            );
            let expected = if last.is_empty() {
                Ok(Step::Message)
            } else {
                Err(Error::Corrupt)
            };
            assert_eq!(
                inflater.frame(OpCode::Continuation, false, true, last, max, &mut out),
                expected
            );
        }
        assert_eq!(out, b"Hello");
        // Trailing garbage after a final block.
        let mut garbage = bfinal.to_vec();
        garbage.push(0x42);
        assert_eq!(
            inflater.message(true, &garbage, max, &mut out),
            Err(Error::Corrupt)
        );
    }

    #[test]
    fn text_must_inflate_to_utf8() {
        let compressed = compress_message(&[b'a', 0xff, b'b'], Level::FAST).unwrap();
        let mut inflater = Inflater::default();
        let mut out = Vec::new();
        assert_eq!(
            inflater.message(true, &compressed, 100, &mut out),
            Err(Error::InvalidUtf8)
        );
        assert_eq!(Error::InvalidUtf8.close_code(), 1007);
        inflater.message(false, &compressed, 100, &mut out).unwrap();
        assert_eq!(out, [b'a', 0xff, b'b']);
    }

    #[test]
    fn size_cap_is_exact() {
        let payload = json(1000);
        let compressed = compress_message(&payload, Level::FAST).unwrap();
        let mut inflater = Inflater::default();
        let mut out = Vec::new();
        inflater.message(true, &compressed, 1000, &mut out).unwrap();
        assert_eq!(
            inflater.message(true, &compressed, 999, &mut out),
            Err(Error::TooBig { max_bytes: 999 })
        );
        assert_eq!(Error::TooBig { max_bytes: 999 }.close_code(), 1009);
        assert!(!inflater.is_allocated());
        // Zero is a valid cap: only empty messages.
        inflater.message(true, &[0x00], 0, &mut out).unwrap();
        assert!(out.is_empty());
    }

    /// Heap bytes allocated and freed by this thread, so parallel tests do
    /// not disturb the figures.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        pub struct Counting;

        thread_local! {
            static LIVE: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        fn add(bytes: isize) {
            // `try_with` because allocations happen during thread teardown.
            let _ = LIVE.try_with(|live| {
                let now = live.get() + bytes;
                live.set(now);
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
            });
        }

        // SAFETY: forwards to `System` unchanged; only counts.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                add(layout.size() as isize);
                unsafe { System.alloc(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                add(-(layout.size() as isize));
                unsafe { System.dealloc(ptr, layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                add(new_size as isize - layout.size() as isize);
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        /// Live bytes now, and resets the peak to it.
        pub fn live() -> isize {
            let now = LIVE.with(Cell::get);
            PEAK.with(|p| p.set(now));
            now
        }

        pub fn peak() -> isize {
            PEAK.with(Cell::get)
        }
    }

    #[global_allocator]
    static COUNTING: counting::Counting = counting::Counting;

    #[test]
    fn memory_figures() {
        // The inflate state: allocated on the first compressed frame.
        let compressed = compress_message(&json(300), Level::FAST).unwrap();
        // Room beyond the cap, so the output buffer never grows here.
        let mut out = Vec::with_capacity(4096);
        let mut inflater = Inflater::default();
        let before = counting::live();
        inflater
            .frame(OpCode::Text, true, false, &compressed, 1024, &mut out)
            .unwrap();
        let state_bytes = counting::live() - before;
        inflater
            .frame(OpCode::Continuation, false, true, b"", 1024, &mut out)
            .unwrap();
        assert_eq!(counting::live(), before, "freed after the message");
        // Printed only now: printing allocates in the test harness.
        println!("inflate state: {state_bytes} bytes");
        assert!((30_000..60_000).contains(&state_bytes), "{state_bytes}");

        let before = counting::live();
        let compressor = Compressor::new(Level::FAST);
        let compressor_bytes = counting::live() - before;
        println!("compressor: {compressor_bytes} bytes");
        assert!(compressor_bytes < 1 << 20, "{compressor_bytes}");
        drop(compressor);
        println!(
            "idle Inflater: {} bytes inline, 0 heap",
            std::mem::size_of::<Inflater>()
        );
    }

    #[test]
    fn zip_bomb_stops_at_the_cap_with_bounded_memory() {
        // 16 MiB of zeros deflate to about 16 KiB.
        let bomb = compress_message(&vec![0u8; 16 << 20], Level::DEFAULT).unwrap();
        assert!(bomb.len() < 32 * 1024, "{}", bomb.len());
        let cap = 64 * 1024;
        let mut out = Vec::new();
        let mut inflater = Inflater::default();
        let before = counting::live();
        let result = inflater.message(false, &bomb, cap, &mut out);
        let peak = counting::peak() - before;
        assert_eq!(result, Err(Error::TooBig { max_bytes: cap }));
        // The output (cap + 1, reserved exactly) and the inflate state, never
        // the 16 MiB.
        println!("zip bomb peak: {peak} bytes over a {cap}-byte cap");
        assert!(peak < (cap + 1) as isize + 60_000, "{peak}");
        assert!(!inflater.is_allocated());
        // The same bomb in fragments fails as early.
        let mut inflater = Inflater::default();
        let mut result = Ok(Step::Plain);
        for (i, chunk) in bomb.chunks(100).enumerate() {
            let opcode = if i == 0 {
                OpCode::Binary
            } else {
                OpCode::Continuation
            };
            result = inflater.frame(opcode, i == 0, false, chunk, cap, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(Error::TooBig { max_bytes: cap }));
        assert!(out.len() <= cap + 1);
    }

    #[test]
    fn frame_header_matches_frame_encode() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536] {
            let payload = vec![7u8; len];
            for opcode in [OpCode::Text, OpCode::Binary] {
                let ours = encode_compressed(opcode, &payload);
                let mut theirs = frame::encode(opcode, &payload).to_vec();
                theirs[0] |= 0x40;
                assert_eq!(&ours[..], &theirs[..], "len {len}");
            }
        }
        let mut compressor = Compressor::new(Level::FAST);
        let payload = json(300);
        let Some(frame) = compressor.encode_frame(OpCode::Text, &payload).unwrap() else {
            panic!("300 bytes of JSON shrink")
        };
        assert_eq!(frame[0], 0xC1, "FIN | RSV1 | text");
        let body = &frame[2..];
        assert_eq!(usize::from(frame[1]), body.len());
        assert_eq!(reference_inflate(body), payload);
        // Incompressible data is not worth a compressed frame.
        let noise: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert_eq!(compressor.encode_frame(OpCode::Binary, &noise), Ok(None));
    }

    #[test]
    fn error_display_is_words() {
        assert_eq!(
            Error::TooBig { max_bytes: 10 }.to_string(),
            "inflated message over the 10-byte limit"
        );
        assert_eq!(Error::Corrupt.to_string(), "invalid deflate data");
        assert_eq!(Error::Deflate.close_code(), 1011);
    }

    /// Reads one client frame: the first header byte and the unmasked payload.
    fn read_client_frame(sock: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
        use std::io::Read as _;
        let mut head = [0u8; 2];
        sock.read_exact(&mut head).unwrap();
        assert_ne!(head[1] & 0x80, 0, "client frames are masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                sock.read_exact(&mut b).unwrap();
                usize::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                sock.read_exact(&mut b).unwrap();
                usize::try_from(u64::from_be_bytes(b)).unwrap()
            }
            n => usize::from(n),
        };
        let mut mask = [0u8; 4];
        sock.read_exact(&mut mask).unwrap();
        let mut payload = vec![0u8; len];
        sock.read_exact(&mut payload).unwrap();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        (head[0], payload)
    }

    /// A real client: python `websockets` (17.4 here) negotiates with our
    /// answer, decodes our compressed frames and echoes each message, which
    /// it compresses itself; our `Inflater` must give the message back.
    /// Needs python3 with `websockets`, which tools/test.sh installs.
    #[test]
    fn python_websockets_client_accepts_our_frames() {
        use std::io::{Read as _, Write as _};
        use std::net::TcpListener;
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant};

        let messages: Vec<(OpCode, Vec<u8>)> = vec![
            (OpCode::Text, json(300)),
            (OpCode::Text, json(4096)),
            (OpCode::Text, Vec::new()),
            (
                OpCode::Binary,
                (0..2000u32).map(|i| (i % 251) as u8).collect(),
            ),
            (OpCode::Text, json(100_000)),
            (OpCode::Text, b"plain".to_vec()),
        ];
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!(
            "ws://127.0.0.1:{}/ws",
            listener.local_addr().unwrap().port()
        );
        let script = "import sys\n\
            from websockets.sync.client import connect\n\
            with connect(sys.argv[1], compression='deflate', open_timeout=10, close_timeout=5) as ws:\n\
            \x20   print('EXT', ws.protocol.extensions, flush=True)\n\
            \x20   for _ in range(int(sys.argv[2])):\n\
            \x20       ws.send(ws.recv(timeout=10))\n";
        let mut child = Command::new("python3")
            .args(["-c", script, &url, &messages.len().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sock = loop {
            match listener.accept() {
                Ok((sock, _)) => break sock,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "no connection: {e}; {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        };
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();

        // The handshake, wired as the module head says.
        let mut request = Vec::new();
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut buf = [0u8; 1024];
            let n = sock.read(&mut buf).unwrap();
            assert!(n > 0, "EOF in the request head");
            request.extend_from_slice(&buf[..n]);
        }
        let limits = crate::http::Limits {
            head_bytes_max: 8192,
            headers_max: 32,
            body_bytes_max: 0,
        };
        let head = crate::http::parse_head(&request, &limits).unwrap().unwrap();
        let offers: Vec<&str> = head.headers_named("sec-websocket-extensions").collect();
        assert_eq!(offers, ["permessage-deflate; client_max_window_bits"]);
        let accept = crate::ws::handshake::check(&head).unwrap();
        let agreement = negotiate(offers, &Policy::default()).unwrap();
        let mut response = crate::ws::handshake::response_101(&accept);
        response.truncate(response.len() - 2);
        response.extend_from_slice(
            format!(
                "Sec-WebSocket-Extensions: {}\r\n\r\n",
                agreement.response_value()
            )
            .as_bytes(),
        );
        sock.write_all(&response).unwrap();

        let mut compressor = Compressor::new(Level::FAST);
        let mut inflater = Inflater::new(&agreement);
        let mut out = Vec::new();
        let mut compressed_echoes = 0;
        for (opcode, payload) in &messages {
            let wire = if payload.as_slice() == b"plain" {
                frame::encode(*opcode, payload)
            } else {
                // The empty message is sent compressed even though it grows
                // (one 0x00 byte), to check the client takes §7.2.3.6's form.
                compressor
                    .encode_frame(*opcode, payload)
                    .unwrap()
                    .unwrap_or_else(|| {
                        encode_compressed(*opcode, &compressor.compress(payload).unwrap())
                    })
            };
            assert_eq!(wire[0] & 0x40 != 0, payload.as_slice() != b"plain");
            sock.write_all(&wire).unwrap();
            // The echo, possibly fragmented, possibly compressed.
            loop {
                let (b0, data) = read_client_frame(&mut sock);
                let op = match b0 & 0x0f {
                    0 => OpCode::Continuation,
                    1 => OpCode::Text,
                    2 => OpCode::Binary,
                    other => panic!("client sent opcode {other:#x}: {data:?}"),
                };
                let fin = b0 & 0x80 != 0;
                match inflater.frame(op, b0 & 0x40 != 0, fin, &data, 1 << 20, &mut out) {
                    Ok(Step::Message) => {
                        assert_eq!(&out, payload);
                        compressed_echoes += 1;
                        break;
                    }
                    Ok(Step::Plain) if fin && op != OpCode::Continuation => {
                        assert_eq!(&data, payload);
                        break;
                    }
                    other => assert!(matches!(other, Ok(Step::Partial)), "{other:?}"),
                }
            }
            assert!(!inflater.is_allocated(), "client_no_context_takeover");
        }
        // The client closes after the last echo; answer its close.
        let (b0, _) = read_client_frame(&mut sock);
        assert_eq!(b0 & 0x0f, 8, "close");
        sock.write_all(&frame::encode_close(1000, "")).unwrap();
        // RFC 6455 §7.1.1: the server closes the TCP connection first.
        drop(sock);
        assert!(
            compressed_echoes >= messages.len() - 1,
            "{compressed_echoes}"
        );
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("PerMessageDeflate"), "{stdout}");
        println!("{stdout}");
    }

    /// xorshift64*: a tiny seeded PRNG so the fuzz test is reproducible.
    struct Rng(u64);

    impl Rng {
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

    /// A plausible input for each fuzz mode, to be mutated.
    fn plausible(rng: &mut Rng) -> Vec<u8> {
        let mode = rng.next() as u8;
        let mut data = vec![mode];
        match mode % 3 {
            0 => {
                let parts = [
                    "permessage-deflate",
                    "; client_max_window_bits",
                    "; client_max_window_bits=10",
                    "; server_max_window_bits=\"12\"",
                    "; server_no_context_takeover",
                    "; client_no_context_takeover",
                    ", ",
                    "\n",
                    "x-webkit-deflate-frame",
                    "; x=\"a,b\"",
                ];
                for _ in 0..rng.below(8) + 1 {
                    data.extend_from_slice(parts[rng.below(parts.len())].as_bytes());
                }
            }
            1 => {
                let message = json(rng.below(400));
                let compressed = compress_message(&message, Level::FAST).unwrap();
                let mut rest = &compressed[..];
                let mut first = true;
                while !rest.is_empty() || first {
                    let len = rng.below(16).min(rest.len());
                    let (chunk, tail) = rest.split_at(len);
                    rest = tail;
                    let opcode = if first { 1 } else { 0 };
                    let rsv1 = if first { 4 } else { 0 };
                    let fin = if rest.is_empty() { 8 } else { 0 };
                    data.push(((len as u8) << 4) | fin | rsv1 | opcode);
                    data.extend_from_slice(chunk);
                    first = false;
                }
            }
            _ => data.extend(json(rng.below(500))),
        }
        data
    }

    #[test]
    fn fuzz_one_on_seeded_random_and_mutated_inputs() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..6_000 {
            let data: Vec<u8> = match round % 4 {
                0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                1 => plausible(&mut rng),
                _ => {
                    let mut data = plausible(&mut rng);
                    for _ in 0..rng.below(3) + 1 {
                        if data.len() < 2 {
                            break;
                        }
                        // Keep the mode byte so each mode sees mutated input.
                        let at = 1 + rng.below(data.len() - 1);
                        match rng.below(3) {
                            0 => data[at] ^= 1 << rng.below(8),
                            1 => data[at] = rng.next() as u8,
                            _ => data.truncate(at),
                        }
                    }
                    data
                }
            };
            fuzz_one(&data);
        }
    }
}
