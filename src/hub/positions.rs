//! Where each channel is on this shard: the seq (and epoch) of the last numbered message
//! the hub delivered for it, whether or not anyone here received it. No I/O.
//!
//! A socket.io session that moves to another shard (a polling-to-WebSocket upgrade landing
//! elsewhere) carries these positions for the channels it receives: every message of a
//! channel at or below the position went through this shard while the session was here
//! (so it got it, if it was owed it), and none above it did. The new shard replays what is
//! above from history and drops what is at or below (`services::socketio::adopt`). Shards
//! take each channel's deliveries in number order (standalone: the channel's owner shard
//! sends them through FIFO mesh channels; cluster: one Redis subscription per shard), which
//! is what makes one number per channel enough.
//!
//! Updated by `Hub::deliver`; read when a polling session is handed over; expired by the
//! every-second sweep.

use std::collections::HashMap;

use crate::envelope::Target;

/// Channels tracked per shard. Past it, a channel not yet tracked has no position (its
/// hand-over replays what history keeps of it).
pub const POSITIONS_MAX: usize = 1 << 20;

/// A channel's place in its numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub epoch: Option<u64>,
    /// Shard clock second of the last delivery, for expiry.
    at_s: u32,
}

#[derive(Debug, Default)]
pub struct Positions {
    channels: HashMap<Target, Position>,
}

impl Positions {
    /// A numbered message of `target` was delivered on this shard.
    pub fn note(&mut self, target: &Target, seq: u64, epoch: Option<u64>, now_s: u32) {
        if let Some(position) = self.channels.get_mut(target) {
            // Another epoch is a new numbering: it replaces the old one whatever its seq.
            if position.epoch != epoch || seq > position.seq {
                position.seq = seq;
                position.epoch = epoch;
            }
            position.at_s = now_s;
            return;
        }
        if self.channels.len() < POSITIONS_MAX {
            let position = Position {
                seq,
                epoch,
                at_s: now_s,
            };
            self.channels.insert(target.clone(), position);
        }
    }

    pub fn get(&self, target: &Target) -> Option<Position> {
        self.channels.get(target).copied()
    }

    /// Forgets channels with no delivery for `keep_s` seconds (the history TTL): every
    /// message this shard took of them has left the history too, so a hand-over that finds
    /// no position replays exactly what the history still keeps, none of which passed here.
    pub fn expire(&mut self, now_s: u32, keep_s: u32) {
        self.channels
            .retain(|_, p| now_s.saturating_sub(p.at_s) < keep_s);
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_move_forward_restart_with_an_epoch_and_expire() {
        let mut positions = Positions::default();
        let room = Target::Room("a".into());
        assert_eq!(positions.get(&room), None);
        positions.note(&room, 3, Some(7), 10);
        positions.note(&room, 2, Some(7), 11);
        assert_eq!(positions.get(&room).map(|p| p.seq), Some(3), "never back");
        positions.note(&room, 1, Some(8), 12);
        let position = positions.get(&room).unwrap();
        assert_eq!((position.seq, position.epoch), (1, Some(8)), "a new epoch");
        positions.note(&Target::All, 1, None, 12);
        positions.expire(12 + 59, 60);
        assert_eq!(positions.len(), 2);
        positions.expire(12 + 60, 60);
        assert!(positions.is_empty());
    }
}
