//! The seam between replay and live delivery for one connection. No I/O. Below `mesh`,
//! since a socket.io session moving between shards carries its state (`SioSnapshot`).
//!
//! While a channel is being recovered, live messages for it are held back; once the replay
//! is queued, held messages newer than the replay follow, and for a short grace period any
//! live message the replay already covered is dropped (it may still be in flight from
//! another shard or from Redis). So the client sees every message once, in order.
//! Owned by a connection's `Session`; `Hub::deliver` consults it for every delivery to a
//! recovering connection, `services::recovery` drives the replay.

use bytes::Bytes;

/// Live messages one connection may hold back per recovery before it counts as a slow
/// consumer (the replay is taking too long for the rate of live traffic).
pub const HELD_MAX: usize = 4096;

#[derive(Debug)]
struct Channel {
    name: String,
    /// Where the replay resumes if the connection is handed over mid-replay (a socket.io
    /// polling session upgrading to WebSocket): the client's position (seq, epoch), then
    /// the seq of each replayed message as it is queued.
    resume_from: (u64, Option<u64>),
    /// Some while the replay is being fetched: live frames kept back, with their seq.
    held: Option<Vec<(u64, Bytes)>>,
    /// After the replay: live messages at or below this seq are duplicates.
    floor: u64,
    /// Clock second after which the floor is no longer needed.
    until_s: u32,
}

/// What to do with a live message for a recovering connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Queue it now.
    Pass,
    /// Kept back until the replay is done.
    Held,
    /// Already replayed: drop it.
    Duplicate,
    /// Too much held back: close the client as a slow consumer.
    Overflow,
}

#[derive(Debug, Default)]
pub struct Recovering {
    channels: Vec<Channel>,
}

impl Recovering {
    /// Starts holding back live messages of `channel`, whose replay starts after `since`
    /// (seq, epoch).
    pub fn begin(&mut self, channel: &str, since: (u64, Option<u64>)) {
        self.channels.retain(|c| c.name != channel);
        self.channels.push(Channel {
            name: channel.to_string(),
            resume_from: since,
            held: Some(Vec::new()),
            floor: 0,
            until_s: u32::MAX,
        });
    }

    pub fn admit(&mut self, channel: &str, seq: Option<u64>, frame: &Bytes) -> Admit {
        let Some(state) = self.channels.iter_mut().find(|c| c.name == channel) else {
            return Admit::Pass;
        };
        // A message without a seq (a foreign publisher) cannot be placed: let it through.
        let Some(seq) = seq else {
            return Admit::Pass;
        };
        match &mut state.held {
            Some(held) if held.len() >= HELD_MAX => Admit::Overflow,
            Some(held) => {
                held.push((seq, frame.clone()));
                Admit::Held
            }
            None if seq <= state.floor => Admit::Duplicate,
            None => Admit::Pass,
        }
    }

    /// A replayed message of `channel` was queued: a hand-over resumes after it.
    pub fn replayed(&mut self, channel: &str, seq: u64) {
        if let Some(state) = self.channels.iter_mut().find(|c| c.name == channel) {
            if state.held.is_some() {
                state.resume_from.0 = state.resume_from.0.max(seq);
            }
        }
    }

    /// The channels whose replay is still running, each with the position it has reached:
    /// what a connection taking this one over must replay again (the queued part of the
    /// replay goes with the queued frames).
    pub fn replaying(&self) -> Vec<(String, u64, Option<u64>)> {
        self.channels
            .iter()
            .filter(|c| c.held.is_some())
            .map(|c| (c.name.clone(), c.resume_from.0, c.resume_from.1))
            .collect()
    }

    /// The replay of `channel` up to `replayed_to` is queued: returns the held frames newer
    /// than it, in seq order, and keeps a floor until `until_s` against late duplicates.
    pub fn finish(&mut self, channel: &str, replayed_to: u64, until_s: u32) -> Vec<Bytes> {
        let Some(state) = self.channels.iter_mut().find(|c| c.name == channel) else {
            return Vec::new();
        };
        let mut held = state.held.take().unwrap_or_default();
        held.sort_by_key(|(seq, _)| *seq);
        held.dedup_by_key(|(seq, _)| *seq);
        let mut floor = replayed_to;
        let mut out = Vec::with_capacity(held.len());
        for (seq, frame) in held {
            if seq > floor {
                floor = seq;
                out.push(frame);
            }
        }
        state.floor = floor;
        state.until_s = until_s;
        out
    }

    /// Forgets channels whose grace has passed; true when nothing is left.
    pub fn expire(&mut self, now_s: u32) -> bool {
        self.channels
            .retain(|c| c.held.is_some() || now_s < c.until_s);
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    #[test]
    fn holds_then_releases_newer_and_drops_replayed() {
        let mut recovering = Recovering::default();
        recovering.begin("room:a", (10, None));
        assert_eq!(
            recovering.admit("room:b", Some(1), &frame(1)),
            Admit::Pass,
            "other channels flow"
        );
        assert_eq!(
            recovering.admit("room:a", Some(11), &frame(11)),
            Admit::Held
        );
        assert_eq!(
            recovering.admit("room:a", Some(13), &frame(13)),
            Admit::Held
        );
        assert_eq!(
            recovering.admit("room:a", Some(12), &frame(12)),
            Admit::Held
        );
        // The replay covered up to 11: 12 and 13 follow, in order.
        let released = recovering.finish("room:a", 11, 10);
        assert_eq!(released, vec![frame(12), frame(13)]);
        // A late copy of a replayed or released message is a duplicate.
        assert_eq!(
            recovering.admit("room:a", Some(11), &frame(11)),
            Admit::Duplicate
        );
        assert_eq!(
            recovering.admit("room:a", Some(13), &frame(13)),
            Admit::Duplicate
        );
        assert_eq!(
            recovering.admit("room:a", Some(14), &frame(14)),
            Admit::Pass
        );
        assert_eq!(recovering.admit("room:a", None, &frame(0)), Admit::Pass);
        assert!(!recovering.expire(9));
        assert!(recovering.expire(10));
    }

    #[test]
    fn too_much_held_is_an_overflow() {
        let mut recovering = Recovering::default();
        recovering.begin("all", (0, None));
        for seq in 0..HELD_MAX as u64 {
            assert_eq!(recovering.admit("all", Some(seq), &frame(seq)), Admit::Held);
        }
        assert_eq!(
            recovering.admit("all", Some(1 << 20), &frame(0)),
            Admit::Overflow
        );
    }

    #[test]
    fn a_replay_in_flight_says_where_a_hand_over_resumes() {
        let mut recovering = Recovering::default();
        recovering.begin("all", (3, Some(7)));
        recovering.begin("room:a", (0, None));
        recovering.replayed("all", 4);
        recovering.replayed("all", 5);
        assert_eq!(
            recovering.replaying(),
            vec![
                ("all".to_string(), 5, Some(7)),
                ("room:a".to_string(), 0, None)
            ]
        );
        // A finished replay needs nothing from the next connection.
        recovering.finish("all", 9, 10);
        recovering.replayed("all", 9);
        assert_eq!(
            recovering.replaying(),
            vec![("room:a".to_string(), 0, None)]
        );
    }
}
