//! Standalone stores of the channel-owning shard: bounded per-channel history (for
//! recovery) and bounded per-user offline inboxes (at-least-once until acked). No I/O.
//!
//! `backend::local` appends as it numbers a message, so history and live delivery agree on
//! order, and answers history and inbox requests from it. In cluster mode the same data
//! lives in Redis instead (see `broker::keys::PUBLISH_SCRIPT`).

use std::collections::{HashMap, VecDeque};

use crate::mesh::{Replay, Stored};

#[derive(Debug)]
struct Kept {
    message: Stored,
    at_s: u32,
}

/// Bounded history of the channels this shard owns.
#[derive(Debug)]
pub struct History {
    channels: HashMap<String, VecDeque<Kept>>,
    size_max: usize,
    ttl_s: u32,
}

impl History {
    pub fn new(size_max: usize, ttl_s: u32) -> History {
        History {
            channels: HashMap::new(),
            size_max,
            ttl_s,
        }
    }

    pub fn push(&mut self, channel: &str, message: Stored, now_s: u32) {
        if self.size_max == 0 {
            return;
        }
        let kept = self.channels.entry(channel.to_string()).or_default();
        debug_assert!(
            kept.back().is_none_or(|k| k.message.seq < message.seq),
            "history in seq order"
        );
        if kept.len() == self.size_max {
            kept.pop_front();
        }
        kept.push_back(Kept {
            message,
            at_s: now_s,
        });
    }

    /// Messages after `since` (at most `limit`), given the channel's latest seq `current`.
    pub fn since(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
        current: u64,
        now_s: u32,
    ) -> Replay {
        let fresh = |k: &&Kept| now_s.saturating_sub(k.at_s) < self.ttl_s;
        let kept: Vec<&Kept> = self
            .channels
            .get(channel)
            .map(|k| {
                k.iter()
                    .filter(fresh)
                    .filter(|k| k.message.seq > since)
                    .collect()
            })
            .unwrap_or_default();
        let complete = since >= current
            || kept.first().is_some_and(|k| k.message.seq == since + 1) && kept.len() <= limit;
        Replay {
            messages: kept
                .into_iter()
                .take(limit)
                .map(|k| k.message.clone())
                .collect(),
            current,
            complete,
            epoch: None,
        }
    }

    /// Drops messages past the TTL and channels left empty.
    pub fn expire(&mut self, now_s: u32) {
        let ttl_s = self.ttl_s;
        self.channels.retain(|_, kept| {
            while kept
                .front()
                .is_some_and(|k| now_s.saturating_sub(k.at_s) >= ttl_s)
            {
                kept.pop_front();
            }
            !kept.is_empty()
        });
    }
}

#[derive(Debug)]
struct Waiting {
    message: Stored,
    at_s: u32,
    deliveries: u32,
}

/// Offline inboxes of the users whose channel this shard owns.
#[derive(Debug)]
pub struct Inboxes {
    users: HashMap<String, VecDeque<Waiting>>,
    size_max: usize,
    ttl_s: u32,
    deliveries_max: u32,
}

impl Inboxes {
    pub fn new(size_max: usize, ttl_s: u32, deliveries_max: u32) -> Inboxes {
        Inboxes {
            users: HashMap::new(),
            size_max,
            ttl_s,
            deliveries_max,
        }
    }

    /// Keeps a message for a user with no live connection (oldest dropped past the size).
    pub fn push(&mut self, user: &str, message: Stored, now_s: u32) {
        if self.size_max == 0 {
            return;
        }
        let waiting = self.users.entry(user.to_string()).or_default();
        if waiting.len() == self.size_max {
            waiting.pop_front();
        }
        waiting.push_back(Waiting {
            message,
            at_s: now_s,
            deliveries: 0,
        });
    }

    /// The user's messages for one more delivery attempt, oldest first. Messages delivered
    /// `deliveries_max` times already, or past the TTL, are given up (and counted).
    pub fn take(&mut self, user: &str, now_s: u32) -> (Vec<Stored>, u32) {
        let Some(waiting) = self.users.get_mut(user) else {
            return (Vec::new(), 0);
        };
        let before = waiting.len();
        let (ttl_s, max) = (self.ttl_s, self.deliveries_max);
        waiting.retain(|w| w.deliveries < max && now_s.saturating_sub(w.at_s) < ttl_s);
        let given_up = (before - waiting.len()) as u32;
        let out = waiting
            .iter_mut()
            .map(|w| {
                w.deliveries += 1;
                w.message.clone()
            })
            .collect();
        if waiting.is_empty() {
            self.users.remove(user);
        }
        (out, given_up)
    }

    /// Forgets an acked message.
    pub fn ack(&mut self, user: &str, seq: u64) -> bool {
        let Some(waiting) = self.users.get_mut(user) else {
            return false;
        };
        let before = waiting.len();
        waiting.retain(|w| w.message.seq != seq);
        let removed = waiting.len() < before;
        if waiting.is_empty() {
            self.users.remove(user);
        }
        removed
    }

    pub fn expire(&mut self, now_s: u32) {
        let ttl_s = self.ttl_s;
        self.users.retain(|_, waiting| {
            waiting.retain(|w| now_s.saturating_sub(w.at_s) < ttl_s);
            !waiting.is_empty()
        });
    }

    pub fn len(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::PayloadKind;
    use bytes::Bytes;

    fn message(seq: u64) -> Stored {
        Stored {
            seq,
            id: format!("m{seq}"),
            from: None,
            event: None,
            kind: PayloadKind::Text,
            payload: Bytes::from(format!("{seq}")),
        }
    }

    fn seqs(replay: &Replay) -> Vec<u64> {
        replay.messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn replays_after_a_seq_and_says_when_the_gap_is_too_old() {
        let mut history = History::new(3, 100);
        for seq in 1..=5 {
            history.push("room:a", message(seq), 0);
        }
        let replay = history.since("room:a", 2, 10, 5, 0);
        assert_eq!(seqs(&replay), vec![3, 4, 5]);
        assert!(replay.complete, "3..=5 are all kept");
        let replay = history.since("room:a", 1, 10, 5, 0);
        assert_eq!(seqs(&replay), vec![3, 4, 5]);
        assert!(!replay.complete, "2 was dropped: recovered false");
        let replay = history.since("room:a", 5, 10, 5, 0);
        assert!(
            replay.messages.is_empty() && replay.complete,
            "nothing missed"
        );
        let replay = history.since("room:b", 0, 10, 0, 0);
        assert!(replay.complete, "an empty channel misses nothing");
        let replay = history.since("room:a", 2, 2, 5, 0);
        assert_eq!(seqs(&replay), vec![3, 4]);
        assert!(
            !replay.complete,
            "a limit that cuts the replay is not complete"
        );
    }

    #[test]
    fn history_expires_by_age() {
        let mut history = History::new(10, 5);
        history.push("all", message(1), 0);
        history.push("all", message(2), 4);
        assert_eq!(seqs(&history.since("all", 0, 10, 2, 6)), vec![2]);
        assert!(!history.since("all", 0, 10, 2, 6).complete);
        history.expire(10);
        assert!(history.channels.is_empty());
    }

    #[test]
    fn inbox_is_at_least_once_until_acked_then_given_up() {
        let mut inboxes = Inboxes::new(2, 100, 2);
        inboxes.push("ann", message(1), 0);
        inboxes.push("ann", message(2), 0);
        inboxes.push("ann", message(3), 0);
        assert_eq!(inboxes.len("ann"), 2, "bounded: the oldest went");
        let (first, given_up) = inboxes.take("ann", 0);
        assert_eq!(
            (first.iter().map(|m| m.seq).collect::<Vec<_>>(), given_up),
            (vec![2, 3], 0)
        );
        assert!(inboxes.ack("ann", 2));
        assert!(!inboxes.ack("ann", 2));
        let (second, _) = inboxes.take("ann", 0);
        assert_eq!(
            second.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3],
            "unacked comes again"
        );
        let (third, given_up) = inboxes.take("ann", 0);
        assert!(third.is_empty());
        assert_eq!(given_up, 1, "delivered twice unacked: given up");
        assert_eq!(inboxes.len("ann"), 0);
    }

    #[test]
    fn inbox_expires() {
        let mut inboxes = Inboxes::new(5, 10, 3);
        inboxes.push("bob", message(1), 0);
        inboxes.expire(10);
        assert_eq!(inboxes.len("bob"), 0);
    }
}
