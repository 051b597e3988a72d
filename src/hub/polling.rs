//! socket.io long-polling sessions in the data plane: a session with no socket of its own.
//! Each sits in the hub's second slab under a `ConnKey` whose index has [`POLL_BIT`] set, so
//! the index, deliveries, replies and the sweep treat it as one more connection; its
//! outbound frames wait in a bounded queue until a polling GET takes them.
//!
//! The frames are the WebSocket frames every codec makes (shared `Bytes`); the polling
//! transport (`services::socketio`) unwraps them into a polling body. No I/O here.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;

use super::Session;
use crate::protocol::socketio::engineio::Sid;

/// Set in `ConnKey::index` for a polling session (the socket slab never gets near 2^31).
pub const POLL_BIT: u32 = 1 << 31;

/// One polling session.
pub struct Polling {
    pub generation: u32,
    pub sid: Sid,
    pub session: Session,
    /// Frames waiting for the next GET, oldest first.
    pub outbox: VecDeque<Bytes>,
    pub outbox_bytes: usize,
    /// The pending GET's waker; engine.io allows one pending GET per session.
    pub waker: Option<Waker>,
    /// A GET is waiting now: a second one at the same time is refused.
    pub getting: bool,
    /// Shard clock second of the last request; drives the idle expiry.
    pub last_rx_s: u32,
    /// Closed (client `1`, a violation, slow consumer): the GET gets a close packet and the
    /// sweep removes it.
    pub closed: bool,
}

impl Polling {
    pub fn new(generation: u32, sid: Sid, session: Session, now_s: u32) -> Polling {
        Polling {
            generation,
            sid,
            session,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            waker: None,
            getting: false,
            last_rx_s: now_s,
            closed: false,
        }
    }

    /// Queues a frame; false when the session is closed or the queue is over its limits
    /// (then it is closed, as a slow consumer).
    pub fn push(&mut self, frame: Bytes, frames_max: usize, bytes_max: usize) -> bool {
        if self.closed {
            return false;
        }
        if self.outbox.len() >= frames_max || self.outbox_bytes + frame.len() > bytes_max {
            self.close();
            return false;
        }
        self.outbox_bytes += frame.len();
        self.outbox.push_back(frame);
        self.wake();
        true
    }

    pub fn close(&mut self) {
        self.closed = true;
        self.outbox.clear();
        self.outbox_bytes = 0;
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Takes every queued frame.
    pub fn take(&mut self) -> Vec<Bytes> {
        self.outbox_bytes = 0;
        std::mem::take(&mut self.outbox).into()
    }
}
