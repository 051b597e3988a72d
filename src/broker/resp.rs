//! RESP2 glue over the redis-protocol crate: encode commands, decode replies and pub/sub
//! pushes (channel and pattern subscriptions) from a read buffer, and sort what arrives
//! into what the broker acts on. Sans-IO.
//!
//! RESP2 rather than RESP3: a subscriber connection in RESP2 receives only pub/sub frames,
//! which keeps the subscriber loop simple, and every Redis since 2.x speaks it.
//! Called by `broker::client`.

use std::fmt;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, BytesFrame};

/// Largest reply or push we accept before calling the link broken (a publish body is at most
/// `--body-bytes-max`, far below this).
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// A protocol-level failure on a Redis link. The caller drops the connection and reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The bytes are not RESP2.
    Protocol(String),
    /// A frame grew past `FRAME_BYTES_MAX` without completing.
    TooLarge(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => write!(f, "Redis sent bytes that are not RESP2: {e}"),
            Error::TooLarge(n) => write!(
                f,
                "Redis reply larger than {FRAME_BYTES_MAX} bytes ({n} buffered)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Appends one command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    // Encoding into a growable buffer only fails on a frame that cannot be encoded;
    // arrays of bulk strings always can.
    let _ = extend_encode_borrowed(out, &BorrowedFrame::Array(&parts), false);
}

/// Takes one complete frame off the front of `buf`; `Ok(None)` when more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<BytesFrame>, Error> {
    match decode_bytes_mut(buf) {
        Ok(Some((frame, _, _))) => Ok(Some(frame)),
        Ok(None) if buf.len() > FRAME_BYTES_MAX => Err(Error::TooLarge(buf.len())),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Protocol(e.to_string())),
    }
}

/// What a frame on a subscriber connection means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A published message on a channel we subscribed to.
    Message { channel: Bytes, payload: Bytes },
    /// Confirmation of SUBSCRIBE: the connection now has `count` subscriptions.
    Subscribed { channel: Bytes, count: i64 },
    /// Confirmation of UNSUBSCRIBE.
    Unsubscribed { channel: Bytes, count: i64 },
    /// Confirmation of PSUBSCRIBE (a pattern's messages arrive as [`Push::Message`] with
    /// the channel they were published on).
    PSubscribed { pattern: Bytes, count: i64 },
    /// Answer to PING on a subscribed connection.
    Pong,
    /// An error reply, in Redis's words (e.g. NOAUTH, WRONGPASS, MISCONF).
    Error(String),
    /// Anything else (a reply to AUTH/SELECT, or a frame we do not use).
    Other(BytesFrame),
}

fn bulk(frame: &BytesFrame) -> Option<Bytes> {
    match frame {
        BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Some(b.clone()),
        _ => None,
    }
}

/// Sorts a subscriber-connection frame.
pub fn classify(frame: BytesFrame) -> Push {
    match &frame {
        BytesFrame::Error(e) => return Push::Error(e.to_string()),
        BytesFrame::Array(parts) if !parts.is_empty() => {
            let kind = bulk(&parts[0]).unwrap_or_default();
            match (&kind[..], parts.len()) {
                (b"message", 3) => {
                    if let (Some(channel), Some(payload)) = (bulk(&parts[1]), bulk(&parts[2])) {
                        return Push::Message { channel, payload };
                    }
                }
                // A pattern subscription's message: the pattern it matched, then the
                // channel and payload, as a plain message has them.
                (b"pmessage", 4) => {
                    if let (Some(channel), Some(payload)) = (bulk(&parts[2]), bulk(&parts[3])) {
                        return Push::Message { channel, payload };
                    }
                }
                (b"psubscribe", 3) => {
                    if let (Some(pattern), BytesFrame::Integer(count)) =
                        (bulk(&parts[1]), &parts[2])
                    {
                        return Push::PSubscribed {
                            pattern,
                            count: *count,
                        };
                    }
                }
                (b"subscribe", 3) | (b"unsubscribe", 3) => {
                    if let (Some(channel), BytesFrame::Integer(count)) =
                        (bulk(&parts[1]), &parts[2])
                    {
                        return if &kind[..] == b"subscribe" {
                            Push::Subscribed {
                                channel,
                                count: *count,
                            }
                        } else {
                            Push::Unsubscribed {
                                channel,
                                count: *count,
                            }
                        };
                    }
                }
                (b"pong", _) => return Push::Pong,
                _ => {}
            }
        }
        BytesFrame::SimpleString(s) if &s[..] == b"PONG" => return Push::Pong,
        _ => {}
    }
    Push::Other(frame)
}

/// Decodes and classifies arbitrary bytes; must never panic.
pub fn fuzz_one(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decode(&mut buf) {
        let _ = classify(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_string_arrays() {
        let mut out = BytesMut::new();
        encode_command(&mut out, &[b"PUBLISH", b"volley:all", b"\x00bin"]);
        assert_eq!(
            &out[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$10\r\nvolley:all\r\n$4\r\n\x00bin\r\n"
        );
    }

    #[test]
    fn decodes_pushes_across_splits() {
        let wire = b"*3\r\n$9\r\nsubscribe\r\n$10\r\nvolley:all\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$10\r\nvolley:all\r\n$5\r\nhello\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n-NOAUTH Authentication required.\r\n";
        for split in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..split]);
            let mut pushes = Vec::new();
            while let Some(frame) = decode(&mut buf).unwrap() {
                pushes.push(classify(frame));
            }
            buf.extend_from_slice(&wire[split..]);
            while let Some(frame) = decode(&mut buf).unwrap() {
                pushes.push(classify(frame));
            }
            assert_eq!(
                pushes,
                vec![
                    Push::Subscribed {
                        channel: Bytes::from_static(b"volley:all"),
                        count: 1
                    },
                    Push::Message {
                        channel: Bytes::from_static(b"volley:all"),
                        payload: Bytes::from_static(b"hello")
                    },
                    Push::Pong,
                    Push::Error("NOAUTH Authentication required.".into()),
                ],
                "split at {split}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn pattern_pushes_carry_the_channel_they_came_on() {
        let wire = b"*3\r\n$10\r\npsubscribe\r\n$13\r\nsocket.io#/#*\r\n:2\r\n*4\r\n$8\r\npmessage\r\n$13\r\nsocket.io#/#*\r\n$15\r\nsocket.io#/#ab#\r\n$2\r\nhi\r\n";
        let mut buf = BytesMut::from(&wire[..]);
        let mut pushes = Vec::new();
        while let Some(frame) = decode(&mut buf).unwrap() {
            pushes.push(classify(frame));
        }
        assert_eq!(
            pushes,
            vec![
                Push::PSubscribed {
                    pattern: Bytes::from_static(b"socket.io#/#*"),
                    count: 2
                },
                Push::Message {
                    channel: Bytes::from_static(b"socket.io#/#ab#"),
                    payload: Bytes::from_static(b"hi")
                },
            ]
        );
    }

    #[test]
    fn bad_bytes_are_an_error_not_a_panic() {
        let mut buf = BytesMut::from(&b"?what\r\n"[..]);
        assert!(matches!(decode(&mut buf), Err(Error::Protocol(_))));
    }

    #[test]
    fn fuzz_one_on_seeded_random_and_mutated_inputs() {
        let seed = b"*3\r\n$7\r\nmessage\r\n$10\r\nvolley:all\r\n$5\r\nhello\r\n:12\r\n+OK\r\n$-1\r\n*-1\r\n".to_vec();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut input = seed.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len().max(1);
                match next() % 3 {
                    0 if !input.is_empty() => input[at] = next() as u8,
                    1 => input.truncate(at),
                    _ => input.insert(at.min(input.len()), next() as u8),
                }
            }
            fuzz_one(&input);
        }
    }
}
