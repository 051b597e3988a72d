//! Per-shard delivery receipts: for each recent sequenced message, how many local
//! connections it was queued to and how many acknowledged it. No I/O.
//!
//! `Hub::deliver` records deliveries, `Hub::ack` records acks by (channel, seq) for
//! `services`, and `backend` sums the shards' figures for `GET /api/messages/{id}` and
//! `?wait=ack`. Bounded in count and age.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Receipt {
    pub delivered: u32,
    pub acked: u32,
}

#[derive(Debug)]
struct Entry {
    receipt: Receipt,
    channel: String,
    seq: u64,
}

#[derive(Debug)]
pub struct Receipts {
    by_id: HashMap<String, Entry>,
    by_seq: HashMap<(String, u64), String>,
    /// Ids oldest first with the second they were recorded, for expiry.
    order: VecDeque<(String, u32)>,
    max: usize,
    retention_s: u32,
}

impl Receipts {
    pub fn new(max: usize, retention_s: u32) -> Receipts {
        Receipts {
            by_id: HashMap::new(),
            by_seq: HashMap::new(),
            order: VecDeque::new(),
            max,
            retention_s,
        }
    }

    /// Records that message `id` (seq `seq` on `channel`) was queued to `delivered`
    /// local connections.
    pub fn record(&mut self, id: &str, channel: &str, seq: u64, delivered: u32, now_s: u32) {
        if let Some(entry) = self.by_id.get_mut(id) {
            entry.receipt.delivered += delivered;
            return;
        }
        while self.order.len() >= self.max {
            self.evict_oldest();
        }
        self.by_id.insert(
            id.to_string(),
            Entry {
                receipt: Receipt {
                    delivered,
                    acked: 0,
                },
                channel: channel.to_string(),
                seq,
            },
        );
        self.by_seq
            .insert((channel.to_string(), seq), id.to_string());
        self.order.push_back((id.to_string(), now_s));
    }

    /// Counts an ack and returns the message id; None when the message is unknown here
    /// (too old, or never delivered on this shard).
    pub fn ack(&mut self, channel: &str, seq: u64) -> Option<&str> {
        let id = self.by_seq.get(&(channel.to_string(), seq))?;
        let entry = self.by_id.get_mut(id)?;
        entry.receipt.acked += 1;
        Some(id.as_str())
    }

    pub fn get(&self, id: &str) -> Option<Receipt> {
        self.by_id.get(id).map(|e| e.receipt)
    }

    /// Drops entries older than the retention window.
    pub fn expire(&mut self, now_s: u32) {
        while let Some((_, at)) = self.order.front() {
            if now_s.saturating_sub(*at) < self.retention_s {
                break;
            }
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((id, _)) = self.order.pop_front() {
            if let Some(entry) = self.by_id.remove(&id) {
                self.by_seq.remove(&(entry.channel, entry.seq));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_and_acked_by_channel_and_seq() {
        let mut receipts = Receipts::new(10, 300);
        receipts.record("m1", "user:7", 1, 2, 0);
        assert_eq!(receipts.ack("user:7", 1), Some("m1"));
        assert_eq!(receipts.ack("user:7", 2), None, "unknown seq");
        assert_eq!(
            receipts.ack("room:x", 1),
            None,
            "seq belongs to its channel"
        );
        assert_eq!(
            receipts.get("m1"),
            Some(Receipt {
                delivered: 2,
                acked: 1
            })
        );
        receipts.record("m1", "user:7", 1, 3, 0);
        assert_eq!(receipts.get("m1").unwrap().delivered, 5);
    }

    #[test]
    fn bounded_in_count_and_age() {
        let mut receipts = Receipts::new(2, 10);
        receipts.record("a", "all", 1, 1, 0);
        receipts.record("b", "all", 2, 1, 5);
        receipts.record("c", "all", 3, 1, 6);
        assert_eq!(receipts.len(), 2);
        assert_eq!(receipts.get("a"), None);
        assert_eq!(receipts.ack("all", 1), None);
        receipts.expire(15);
        assert_eq!(receipts.get("b"), None);
        assert!(receipts.get("c").is_some());
        receipts.expire(16);
        assert!(receipts.is_empty());
    }
}
