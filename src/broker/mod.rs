//! Cluster mode: each shard's own Redis links (`client`) over a sans-IO RESP codec (`resp`),
//! and every Redis name and script volley uses (`keys`). Present only when `--redis` is set;
//! standalone volley never touches this module. Used by `backend::redis` and `shard`.

pub mod client;
pub mod keys;
pub mod resp;

use std::fmt;

pub use client::Broker;

/// Why a Redis command did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The link is down or broke while waiting; the text says why. Answer 503 and name the
    /// broker: never pretend a publish went out.
    Unavailable(String),
    /// Redis answered with an error (e.g. NOPERM, MISCONF); its words are kept. Answer 502.
    Reply(String),
    /// The command was written but no answer came (Redis stalled, or the link broke after
    /// the write): it may or may not have been carried out. Answer 504 with what lets the
    /// caller find out or retry safely (the message id, `Idempotency-Key`).
    Unknown(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable(why) => write!(f, "Redis unavailable: {why}"),
            Error::Reply(e) => write!(f, "Redis refused the command: {e}"),
            Error::Unknown(why) => {
                write!(f, "Redis did not answer ({why}); the outcome is unknown")
            }
        }
    }
}

impl std::error::Error for Error {}
