//! The socket.io state of one connection, kept in its `hub::Session` behind one pointer
//! (None for native and raw connections): the Engine.IO sid, the namespace sockets it has
//! connected, the connect deadline, and a binary packet waiting for its attachments.
//!
//! Plain data: `services::socketio` changes it, the hub's sweep reads the deadline.

use bytes::Bytes;

use super::engineio::Sid;

/// Namespaces one connection may have connected at once: every configured one.
pub const SOCKETS_MAX: usize = super::NAMESPACES_MAX;

/// socket.io state of one Engine.IO connection.
#[derive(Debug)]
pub struct SioState {
    /// The Engine.IO session id (names the owning shard).
    pub sid: Sid,
    /// Connected namespaces: (interned index, socket id). Each socket id is also a room
    /// the connection is in (socket.io's rule: `io.to(socketId)` reaches that socket).
    pub sockets: Vec<(u8, Sid)>,
    /// Shard clock second by which the client must CONNECT a namespace; 0 once it has.
    pub connect_deadline_s: u32,
    /// A BINARY_EVENT or BINARY_ACK whose attachments are still arriving.
    pub partial: Option<Box<Partial>>,
}

/// A binary packet and the attachments received so far (at most the count it announced,
/// which the decoder bounds).
#[derive(Debug)]
pub struct Partial {
    pub text: String,
    pub attachments: Vec<Bytes>,
}

impl SioState {
    pub fn new(sid: Sid, connect_deadline_s: u32) -> SioState {
        SioState {
            sid,
            sockets: Vec::new(),
            connect_deadline_s,
            partial: None,
        }
    }

    /// The socket id of a connected namespace.
    pub fn socket(&self, nsp: u8) -> Option<Sid> {
        self.sockets
            .iter()
            .find(|(n, _)| *n == nsp)
            .map(|(_, s)| *s)
    }

    /// True before the first CONNECT: pushes are held back from such a connection.
    pub fn is_unconnected(&self) -> bool {
        self.sockets.is_empty()
    }
}
