//! socket.io sockets as socket.io's Redis adapter addresses them (issue 13): the local
//! sockets of one namespace that are in any of some rooms and in none of others, the rooms
//! of a socket, and one shared frame queued to a list of them.
//!
//! A socket's rooms are its connection's volley rooms (the index: `join`, server-side
//! membership, `socketsJoin`) plus its own socket id (socket.io's rule: every socket is in
//! the room named by its id; the hub finds it from the id, see `session::socket_owner`).
//! Rooms belong to the connection, so a connection in room `r` that connected `/` and
//! `/chat` is in `r` on both; a socket id is a room of its own namespace only.
//!
//! No Redis and no wire format: `services::sio_adapter` decodes what arrives, encodes the
//! frame once, and asks here who gets it. Deliveries are not numbered, held for a recovery,
//! nor counted in receipts: they are socket.io's messages, not volley's channels.

use bytes::Bytes;

use super::{Hub, Session, POLL_BIT};
use crate::conn::ConnKey;
use crate::metrics::Metrics;
use crate::protocol::socketio::engineio::Sid;
use crate::protocol::socketio::session::socket_owner;

impl Hub {
    /// This shard's sockets of namespace `nsp` that are in any of `rooms` (every socket of
    /// the namespace when `rooms` is empty) and in none of `except`: (connection, socket id),
    /// each connection once.
    pub fn sio_sockets(&self, nsp: u8, rooms: &[String], except: &[String]) -> Vec<(ConnKey, Sid)> {
        let conns = self.conns.borrow();
        let polls = self.polls.borrow();
        let index = self.index.borrow();
        let session = |key: ConnKey| -> Option<&Session> {
            if key.index & POLL_BIT != 0 {
                polls
                    .get((key.index & !POLL_BIT) as usize)
                    .filter(|p| p.generation == key.generation && !p.closed)
                    .map(|p| &p.session)
            } else {
                conns
                    .get(key.index as usize)
                    .filter(|c| c.generation() == key.generation && c.is_open())
                    .map(|c| &c.session)
            }
        };
        let in_room = |key: ConnKey, session: &Session, room: &str| {
            index.rooms_of(key).iter().any(|r| &**r == room)
                || session.sio.as_ref().is_some_and(|sio| {
                    sio.sockets
                        .iter()
                        .any(|(n, id)| *n == nsp && id.as_str() == room)
                })
        };
        let candidates: Vec<ConnKey> = if rooms.is_empty() {
            let sockets = conns.iter().map(|(i, c)| ConnKey {
                index: i as u32,
                generation: c.generation(),
            });
            let polling = polls.iter().map(|(i, p)| ConnKey {
                index: i as u32 | POLL_BIT,
                generation: p.generation,
            });
            sockets.chain(polling).collect()
        } else {
            let mut keys = Vec::new();
            for room in rooms {
                keys.extend_from_slice(index.room_conns(room));
                // A socket id names its connection on its owning shard (no index entry).
                if let Some(key) = self.socket_key(room) {
                    keys.push(key);
                }
            }
            keys.sort_unstable_by_key(|k| (k.index, k.generation));
            keys.dedup();
            keys
        };
        candidates
            .into_iter()
            .filter_map(|key| {
                let session = session(key)?;
                let socket = session.sio.as_ref()?.socket(nsp)?;
                // A socket id candidate is only a guess until its session lists the id.
                let wanted = rooms.is_empty() || rooms.iter().any(|r| in_room(key, session, r));
                let excluded = except.iter().any(|r| in_room(key, session, r));
                (wanted && !excluded).then_some((key, socket))
            })
            .collect()
    }

    /// The rooms of one socket as socket.io lists them: its id first, then its
    /// connection's rooms.
    pub fn sio_rooms_of(&self, key: ConnKey, socket: &Sid) -> Vec<String> {
        let mut rooms = vec![socket.as_str().to_string()];
        for room in self.index.borrow().rooms_of(key) {
            if **room != *socket.as_str() {
                rooms.push(room.to_string());
            }
        }
        rooms
    }

    /// True when some local connection is in `room` (an index room, or a socket id this
    /// shard owns): a broadcast on a one-room channel for anything else reaches nobody here.
    pub fn has_room(&self, room: &str) -> bool {
        if !self.index.borrow().room_conns(room).is_empty() {
            return true;
        }
        self.socket_key(room).is_some_and(|key| {
            self.with_session(key, |s| {
                s.sio
                    .as_ref()
                    .is_some_and(|sio| sio.sockets.iter().any(|(_, id)| id.as_str() == room))
            })
            .unwrap_or(false)
        })
    }

    /// The key of the slot on this shard a socket id names, if that slot is taken by a
    /// generation the id matches (a hint only: the session must still list the id).
    fn socket_key(&self, room: &str) -> Option<ConnKey> {
        let owner = socket_owner(room)?;
        if usize::from(owner.shard) != self.ctx.id {
            return None;
        }
        let generation = if owner.index & POLL_BIT != 0 {
            self.polls
                .borrow()
                .get((owner.index & !POLL_BIT) as usize)
                .map(|p| p.generation)?
        } else {
            self.conns
                .borrow()
                .get(owner.index as usize)
                .map(|c| c.generation())?
        };
        owner.matches(owner.index, generation).then_some(ConnKey {
            index: owner.index,
            generation,
        })
    }

    /// The socket ids this shard made whose sockets it still holds (not the ones a hand-over
    /// brought from another shard): their rooms come on the process's sockets channel.
    pub fn own_socket_ids(&self) -> Vec<Sid> {
        let conns = self.conns.borrow();
        let polls = self.polls.borrow();
        let sessions = conns
            .iter()
            .map(|(_, c)| &c.session)
            .chain(polls.iter().map(|(_, p)| &p.session));
        let mut ids = Vec::new();
        for session in sessions {
            if let Some(sio) = &session.sio {
                ids.extend(
                    sio.sockets
                        .iter()
                        .map(|(_, id)| *id)
                        .filter(|id| usize::from(id.owner()) == self.ctx.id),
                );
            }
        }
        ids
    }

    /// Queues the same frame(s) to each connection, under the usual queue limits; returns
    /// how many took it.
    pub fn send_shared(&self, keys: &[ConnKey], frame: &Bytes) -> u32 {
        let metrics = &self.ctx.metrics;
        Metrics::inc(&metrics.broadcasts_total);
        let now_s = self.ctx.now_s();
        let (frames_max, bytes_max) = self.polling_limits();
        let mut conns = self.conns.borrow_mut();
        let mut polls = self.polls.borrow_mut();
        let mut queued = 0;
        for key in keys {
            let took = if key.index & POLL_BIT != 0 {
                match polls.get_mut((key.index & !POLL_BIT) as usize) {
                    Some(poll) if poll.generation == key.generation => {
                        poll.push(frame.clone(), frames_max, bytes_max)
                    }
                    _ => false,
                }
            } else {
                match conns.get_mut(key.index as usize) {
                    Some(conn) if conn.generation() == key.generation => {
                        conn.push(frame.clone(), &self.limits, metrics, now_s)
                    }
                    _ => false,
                }
            };
            queued += u32::from(took);
        }
        queued
    }
}
