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
    /// While a polling session is being handed to this WebSocket (after the client's `5`),
    /// the packets it sends are held here (at most [`HELD_MAX`]) and handled once it has its
    /// namespaces; None otherwise.
    pub held: Option<Box<Vec<crate::conn::Inbound>>>,
    /// With `--app-webhook` only: the handshake's headers a connect hook may see
    /// (`hooks::visible_headers`), kept for the CONNECTs that come after the handshake.
    /// None without hooks, so a connection pays nothing for them then.
    pub headers: Option<Box<[(String, String)]>>,
    /// Answers still to come for this connection (application hook calls): a polling
    /// session is handed to its WebSocket only once they are sent (`services::socketio`).
    pub answers_pending: u32,
}

/// Packets a WebSocket may send while its polling session is handed over: socket.io-client
/// flushes what it buffered during the upgrade, a handful of packets.
pub const HELD_MAX: usize = 64;

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
            held: None,
            headers: None,
            answers_pending: 0,
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

/// A socket id that names its connection: shard, slab index and generation, then 4 random
/// bytes. The hub finds a socket's connection from the room name alone (`to(socketId)`),
/// so no index entry per socket is kept; the connection must still list the id in
/// [`SioState::sockets`], so a made-up or stale id reaches nobody.
pub fn socket_id(shard: u16, index: u32, generation: u32, random: [u8; 4]) -> Sid {
    let mut bytes = [0u8; super::engineio::SID_RANDOM_BYTES];
    bytes[..4].copy_from_slice(&index.to_be_bytes());
    bytes[4..8].copy_from_slice(&generation.to_be_bytes());
    bytes[8..].copy_from_slice(&random);
    Sid::new(shard, &bytes)
}

/// (shard, slab index, generation) named by a socket id [`socket_id`] made.
pub fn socket_owner(room: &str) -> Option<(u16, u32, u32)> {
    let (shard, random) = super::engineio::sid_parts(room)?;
    let index = u32::from_be_bytes([random[0], random[1], random[2], random[3]]);
    let generation = u32::from_be_bytes([random[4], random[5], random[6], random[7]]);
    Some((shard, index, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_id_names_its_connection() {
        let id = socket_id(1, 7, 99, [1, 2, 3, 4]);
        assert_eq!(socket_owner(id.as_str()), Some((1, 7, 99)));
        assert_eq!(socket_owner("lobby"), None);
    }
}
