//! Client ops as protocol-neutral values: what a client asked for (`ClientOp`), the
//! reference its reply must carry (`Ref`), and why an op was refused (`ErrorCode`,
//! `OpError`). Each codec (`native`, later socket.io) decodes its wire format into these
//! and encodes replies from them; `protocol::handle` acts on them in one place.
//!
//! Sans-IO and wire-free: no JSON field names, no frames.

use std::fmt;

use bytes::Bytes;

use crate::envelope::Target;

/// One client op, owned (it may be answered after a mesh or Redis round trip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// Join a room; with `since`, also replay what the room got after that position.
    Join {
        room: String,
        since: Option<Since>,
    },
    Leave {
        room: String,
    },
    /// Publish to a room or a user; `data` is strict JSON (`crate::json::is_strict`).
    Publish {
        target: Target,
        data: Bytes,
        /// The event name recipients get it as; None for the default (`message`).
        /// Checked by `envelope::event_name`.
        event: Option<String>,
    },
    /// The client received (channel, seq).
    Ack {
        target: Target,
        seq: u64,
    },
    /// Replay what the client missed on a channel it already receives, after `since`.
    Recover {
        target: Target,
        since: Since,
    },
    /// An event volley does not handle itself, for the application (`--app-webhook`);
    /// refused as `unknown_op` when no webhook is set. The reply carries the hook's ack.
    Event {
        name: String,
        /// A JSON array: the event's arguments.
        args: serde_json::Value,
    },
}

/// Where a client is in a channel: the last seq it saw, and the epoch of the numbering that
/// seq belongs to (None from clients that do not send one: then only a seq ahead of the
/// channel reveals a restarted numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    pub seq: u64,
    pub epoch: Option<u64>,
}

/// One decoded op with the reference its reply carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub reference: Option<Ref>,
    pub op: ClientOp,
}

/// A client's correlation id, echoed in the reply to its op. Owned so the caller can keep
/// it past the read buffer (an op answered later, after a mesh round trip).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    /// An integer in i64 range.
    Int(i64),
    /// An integer above i64::MAX (so each number has exactly one form).
    UInt(u64),
    /// A string (native: at most `native::REF_BYTES_MAX` bytes).
    Str(String),
}

impl From<i64> for Ref {
    fn from(n: i64) -> Ref {
        Ref::Int(n)
    }
}

impl From<u64> for Ref {
    fn from(n: u64) -> Ref {
        match i64::try_from(n) {
            Ok(small) => Ref::Int(small),
            Err(_) => Ref::UInt(n),
        }
    }
}

/// The `error.code` of a reply. The first four come from `decode_op`; the others are the
/// server's answers to a well-formed op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, not an object, a field given twice, or `data` strict parsers refuse.
    /// The client has a bug: log it, do not retry the same text.
    BadJson,
    /// `op` is a string this volley does not know (maybe a newer client): do not retry.
    UnknownOp,
    /// A field is missing, of the wrong type, or holds a value the field never allows.
    BadField,
    /// A name or `data` is over the server's limit: shrink it.
    TooLarge,
    /// The connection may not do this (publish to a room it is not in, another user).
    Forbidden,
    /// Too many ops too fast: slow down; repeating it gets the connection closed (1008).
    RateLimited,
    /// The room, user or message does not exist (for example leaving a room not joined).
    NotFound,
    /// volley's fault: the op may be retried later.
    Internal,
}

impl ErrorCode {
    /// Every code, in wire order of the docs.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownOp,
        ErrorCode::BadField,
        ErrorCode::TooLarge,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::NotFound,
        ErrorCode::Internal,
    ];

    /// The code as it appears in `error.code`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadField => "bad_field",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an op was refused. The caller answers with the connection's codec, counts a strike
/// against the connection, and keeps it open (the client gets to learn from the reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// The op's ref when the JSON parsed far enough to read a valid one, so the client can
    /// match the error to its request.
    pub reference: Option<Ref>,
    pub code: ErrorCode,
    /// For humans: says which field is wrong and why.
    pub message: String,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for OpError {}
