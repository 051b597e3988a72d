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

/// A socket id that names its connection and its process: shard, slab index, the low 16
/// bits of the slot's generation and the process's node tag (`Ctx::node_tag`), then 4
/// random bytes. The hub finds a socket's connection from the room name alone
/// (`to(socketId)`), so no index entry per socket is kept, and in cluster mode a push to it
/// goes on the Redis channel of its process (`broker::keys::Keys::sockets_channel`), so no
/// subscription per socket is kept either. The connection must still list the id in
/// [`SioState::sockets`], so a made-up or stale id (the generation is only a hint) reaches
/// nobody.
pub fn socket_id(shard: u16, node: u16, index: u32, generation: u32, random: [u8; 4]) -> Sid {
    let mut bytes = [0u8; super::engineio::SID_RANDOM_BYTES];
    bytes[..4].copy_from_slice(&index.to_be_bytes());
    // Truncated on purpose: the id has room for 12 bytes, and the full id is compared anyway.
    bytes[4..6].copy_from_slice(&(generation as u16).to_be_bytes());
    bytes[6..8].copy_from_slice(&node.to_be_bytes());
    bytes[8..].copy_from_slice(&random);
    Sid::new(shard, &bytes)
}

/// Where a socket id [`socket_id`] made lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOwner {
    pub shard: u16,
    /// The node tag of the process that made it.
    pub node: u16,
    pub index: u32,
    /// The low 16 bits of the slot's generation.
    pub generation: u16,
}

impl SocketOwner {
    /// True when the slot `index` at `generation` may hold the socket (a hint: the
    /// session must still list the id).
    pub fn matches(&self, index: u32, generation: u32) -> bool {
        self.index == index && self.generation == generation as u16
    }
}

/// Where a socket id [`socket_id`] made lives; any other 20-character sid parses too (its
/// fields are then noise, which the session check turns away).
pub fn socket_owner(room: &str) -> Option<SocketOwner> {
    let (shard, random) = super::engineio::sid_parts(room)?;
    Some(SocketOwner {
        shard,
        node: u16::from_be_bytes([random[6], random[7]]),
        index: u32::from_be_bytes([random[0], random[1], random[2], random[3]]),
        generation: u16::from_be_bytes([random[4], random[5]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_id_names_its_connection() {
        let id = socket_id(1, 0xbeef, 7, 0x1_0063, [1, 2, 3, 4]);
        let owner = socket_owner(id.as_str()).unwrap();
        assert_eq!((owner.shard, owner.node, owner.index), (1, 0xbeef, 7));
        assert!(owner.matches(7, 0x1_0063) && owner.matches(7, 0x63));
        assert!(!owner.matches(7, 0x64) && !owner.matches(8, 0x1_0063));
        assert_eq!(socket_owner("lobby"), None);
    }
}
