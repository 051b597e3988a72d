//! Per-shard routing indexes: user -> connections and room -> connections, and for each
//! connection the rooms it is in (so a disconnect leaves every room in one pass).
//!
//! No I/O and no knowledge of sockets: `Hub::deliver` asks who should get a message; the
//! hub keeps the index in step with connects, joins, leaves and disconnects. Names are
//! `Rc<str>` shared between the maps, so a name is stored once per shard however many
//! connections use it.

use std::collections::HashMap;
use std::rc::Rc;

use crate::conn::ConnKey;

/// What changed in the shard's interest in a user or room, for Redis subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// The first local connection of this user / member of this room.
    First,
    /// Another one; nothing to tell Redis.
    More,
    /// The last one left.
    Last,
    /// Nothing changed (already in, or was not in).
    None,
}

#[derive(Default, Debug)]
pub struct Index {
    users: HashMap<Rc<str>, Vec<ConnKey>>,
    rooms: HashMap<Rc<str>, Vec<ConnKey>>,
    /// Rooms per connection, only for connections in at least one room.
    conn_rooms: HashMap<ConnKey, Vec<Rc<str>>>,
}

fn add(map: &mut HashMap<Rc<str>, Vec<ConnKey>>, name: &Rc<str>, key: ConnKey) -> Change {
    match map.get_mut(name) {
        Some(keys) => {
            debug_assert!(!keys.contains(&key));
            keys.push(key);
            Change::More
        }
        None => {
            map.insert(name.clone(), vec![key]);
            Change::First
        }
    }
}

fn remove(map: &mut HashMap<Rc<str>, Vec<ConnKey>>, name: &str, key: ConnKey) -> Change {
    let Some(keys) = map.get_mut(name) else {
        return Change::None;
    };
    let Some(at) = keys.iter().position(|k| *k == key) else {
        return Change::None;
    };
    keys.swap_remove(at);
    if keys.is_empty() {
        map.remove(name);
        Change::Last
    } else {
        Change::More
    }
}

impl Index {
    /// Registers a connection of `user`. Returns the shared name to keep in the connection.
    pub fn add_user(&mut self, user: &str, key: ConnKey) -> (Rc<str>, Change) {
        let name = self
            .users
            .get_key_value(user)
            .map_or_else(|| Rc::from(user), |(name, _)| name.clone());
        let change = add(&mut self.users, &name, key);
        (name, change)
    }

    pub fn remove_user(&mut self, user: &str, key: ConnKey) -> Change {
        remove(&mut self.users, user, key)
    }

    /// Puts a connection in a room; `Change::None` when it already is.
    pub fn join(&mut self, room: &str, key: ConnKey) -> Change {
        let rooms = self.conn_rooms.entry(key).or_default();
        if rooms.iter().any(|r| &**r == room) {
            return Change::None;
        }
        let name = self
            .rooms
            .get_key_value(room)
            .map_or_else(|| Rc::from(room), |(name, _)| name.clone());
        if rooms.is_empty() {
            // Most connections are in one room (a socket.io socket is in the room of its
            // socket id): a first push would reserve four.
            rooms.reserve_exact(1);
        }
        rooms.push(name.clone());
        add(&mut self.rooms, &name, key)
    }

    /// Takes a connection out of a room; `Change::None` when it was not in it.
    pub fn leave(&mut self, room: &str, key: ConnKey) -> Change {
        let Some(rooms) = self.conn_rooms.get_mut(&key) else {
            return Change::None;
        };
        let Some(at) = rooms.iter().position(|r| &**r == room) else {
            return Change::None;
        };
        rooms.swap_remove(at);
        if rooms.is_empty() {
            self.conn_rooms.remove(&key);
        }
        remove(&mut self.rooms, room, key)
    }

    /// Takes a connection out of every room; returns the rooms it left with their change.
    pub fn leave_all(&mut self, key: ConnKey) -> Vec<(Rc<str>, Change)> {
        let Some(rooms) = self.conn_rooms.remove(&key) else {
            return Vec::new();
        };
        rooms
            .into_iter()
            .map(|room| {
                let change = remove(&mut self.rooms, &room, key);
                (room, change)
            })
            .collect()
    }

    pub fn rooms_of(&self, key: ConnKey) -> &[Rc<str>] {
        self.conn_rooms.get(&key).map_or(&[], |r| r.as_slice())
    }

    pub fn user_conns(&self, user: &str) -> &[ConnKey] {
        self.users.get(user).map_or(&[], |k| k.as_slice())
    }

    pub fn room_conns(&self, room: &str) -> &[ConnKey] {
        self.rooms.get(room).map_or(&[], |k| k.as_slice())
    }

    /// Every user with local connections, and them.
    pub fn users(&self) -> impl Iterator<Item = (&Rc<str>, &[ConnKey])> {
        self.users.iter().map(|(u, k)| (u, k.as_slice()))
    }

    /// Every room with local members, and them.
    pub fn rooms(&self) -> impl Iterator<Item = (&Rc<str>, &[ConnKey])> {
        self.rooms.iter().map(|(r, k)| (r, k.as_slice()))
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u32) -> ConnKey {
        ConnKey {
            index,
            generation: 0,
        }
    }

    #[test]
    fn users_with_several_connections() {
        let mut index = Index::default();
        let (name, change) = index.add_user("ann", key(1));
        assert_eq!(change, Change::First);
        let (again, change) = index.add_user("ann", key(2));
        assert_eq!(change, Change::More);
        assert!(Rc::ptr_eq(&name, &again), "one allocation per name");
        assert_eq!(index.user_conns("ann"), &[key(1), key(2)]);
        assert_eq!(index.remove_user("ann", key(1)), Change::More);
        assert_eq!(index.remove_user("ann", key(1)), Change::None);
        assert_eq!(index.remove_user("ann", key(2)), Change::Last);
        assert!(index.user_conns("ann").is_empty());
        assert_eq!(index.user_count(), 0);
    }

    #[test]
    fn rooms_join_leave_and_disconnect() {
        let mut index = Index::default();
        assert_eq!(index.join("lobby", key(1)), Change::First);
        assert_eq!(
            index.join("lobby", key(1)),
            Change::None,
            "joining twice is a no-op"
        );
        assert_eq!(index.join("lobby", key(2)), Change::More);
        assert_eq!(index.join("game", key(1)), Change::First);
        assert_eq!(index.rooms_of(key(1)).len(), 2);
        assert_eq!(index.leave("lobby", key(2)), Change::More);
        assert_eq!(index.leave("lobby", key(2)), Change::None);
        let mut left = index.leave_all(key(1));
        left.sort();
        assert_eq!(
            left,
            vec![
                (Rc::from("game"), Change::Last),
                (Rc::from("lobby"), Change::Last)
            ]
        );
        assert_eq!(index.room_count(), 0);
        assert!(index.rooms_of(key(1)).is_empty());
    }

    #[test]
    fn a_stale_generation_is_a_different_connection() {
        let mut index = Index::default();
        index.join(
            "r",
            ConnKey {
                index: 1,
                generation: 1,
            },
        );
        assert_eq!(
            index.leave(
                "r",
                ConnKey {
                    index: 1,
                    generation: 2
                }
            ),
            Change::None
        );
        assert_eq!(index.room_conns("r").len(), 1);
    }
}
