//! Cluster mode, per shard: where each Redis-subscribed channel is (the last seq and epoch
//! this shard delivered), so nothing published while the subscriber link was down is
//! silently missed. After a reconnect every known channel is caught up from history while
//! its live messages wait, then the waiting ones follow without what the catch-up already
//! delivered; a live copy of something already delivered is dropped.
//!
//! State only, no I/O: `services` feeds it what the broker delivers and runs the catch-up.

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;

use crate::mesh::Delivery;

/// Channels whose position is read in one Redis round trip when they are first subscribed.
pub const MARKS_READ_CHUNK: usize = 256;
/// Live messages one channel may hold back during its catch-up; past it they go out at once
/// (a very busy channel is better served late than held without bound).
const HELD_MAX: usize = 4096;
/// Channels tracked per shard (a bound on memory if something subscribes without end).
const CHANNELS_MAX: usize = 1 << 20;

/// What becomes of a live delivery.
#[derive(Debug)]
pub enum Admitted {
    /// Deliver it now.
    Now(Delivery),
    /// Held until the channel's catch-up ends (then `end_catch_up` hands it back).
    Held,
    /// Delivered already (a live copy of a caught-up message): drop it.
    Seen,
}

/// Where a channel is on this shard: the epoch and seq of the last message delivered (or
/// of the channel when this shard subscribed to it).
pub use crate::backend::Mark;

#[derive(Debug, Default)]
struct Entry {
    /// None until the channel's position is known.
    mark: Option<Mark>,
    /// Some while the channel is being caught up: live deliveries wait here.
    held: Option<Vec<Delivery>>,
    /// The mark was read from Redis after the subscription was confirmed, and nothing was
    /// delivered since. That read may count messages published after the confirmation
    /// whose live copies arrive after its answer (another link), so it never makes a live
    /// delivery a duplicate: only a position reached by delivering does.
    learned: bool,
}

#[derive(Debug, Default)]
pub struct Gaps {
    channels: RefCell<HashMap<Bytes, Entry>>,
}

/// The position of a channel never numbered.
const UNNUMBERED: Mark = Mark {
    epoch: None,
    seq: 0,
};

/// Whether a delivery is past a mark: another epoch (the numbering restarted) or a higher
/// seq in the same one.
fn is_before(mark: &Mark, delivery: &Delivery) -> bool {
    match delivery.seq {
        None => true,
        Some(seq) => delivery.epoch != mark.epoch || seq > mark.seq,
    }
}

impl Gaps {
    /// A live delivery on `channel`: returns it when it should go out now; None when it is
    /// held for a catch-up or was delivered already.
    pub fn admit(&self, channel: &[u8], delivery: Delivery) -> Admitted {
        let Some(seq) = delivery.seq else {
            // Unnumbered (a foreign publisher): nothing to order or deduplicate by.
            return Admitted::Now(delivery);
        };
        let mut channels = self.channels.borrow_mut();
        if !channels.contains_key(channel) {
            if channels.len() >= CHANNELS_MAX {
                return Admitted::Now(delivery);
            }
            channels.insert(Bytes::copy_from_slice(channel), Entry::default());
        }
        let Some(entry) = channels.get_mut(channel) else {
            return Admitted::Now(delivery);
        };
        if let Some(held) = entry.held.as_mut() {
            if held.len() < HELD_MAX {
                held.push(delivery);
                return Admitted::Held;
            }
        }
        if let (Some(mark), false) = (entry.mark, entry.learned) {
            if !is_before(&mark, &delivery) {
                return Admitted::Seen;
            }
        }
        entry.mark = Some(Mark {
            epoch: delivery.epoch,
            seq,
        });
        entry.learned = false;
        Admitted::Now(delivery)
    }

    /// Channels just subscribed whose position is unknown (to be read from Redis).
    pub fn unknown(&self, subscribed: Vec<Bytes>) -> Vec<Bytes> {
        let mut channels = self.channels.borrow_mut();
        let mut out = Vec::new();
        for channel in subscribed {
            if channels.len() >= CHANNELS_MAX && !channels.contains_key(&channel) {
                continue;
            }
            let entry = channels
                .entry(Bytes::copy_from_slice(&channel))
                .or_default();
            if entry.mark.is_none() {
                out.push(channel);
            }
        }
        out
    }

    /// The channel's position as Redis said it was at subscription; a position learned
    /// from a delivery since then is newer and stays.
    pub fn learn(&self, channel: &[u8], position: Mark) {
        if let Some(entry) = self.channels.borrow_mut().get_mut(channel) {
            if entry.mark.is_none() {
                entry.mark = Some(position);
                entry.learned = true;
            }
        }
    }

    pub fn mark(&self, channel: &[u8]) -> Option<Mark> {
        self.channels.borrow().get(channel).and_then(|e| e.mark)
    }

    /// The subscriber link came back: every channel whose position is known holds its
    /// live messages from now on, until its catch-up ends.
    pub fn begin_catch_up(&self) {
        for entry in self.channels.borrow_mut().values_mut() {
            if entry.mark.is_some() && entry.held.is_none() {
                entry.held = Some(Vec::new());
            }
        }
    }

    /// The subscriber link came back, and `channel` (a socket id's room on a sockets
    /// channel) has no position here: nothing numbered was delivered for it on this shard,
    /// so it is at 0 of no numbering, and its live messages are held like the others'.
    /// [`Gaps::forget_unmoved`] drops it again once its catch-up found nothing.
    pub fn hold_unknown(&self, channel: Bytes) {
        let mut channels = self.channels.borrow_mut();
        if channels.len() >= CHANNELS_MAX || channels.contains_key(&channel) {
            return;
        }
        let entry = Entry {
            mark: Some(UNNUMBERED),
            held: Some(Vec::new()),
            learned: true,
        };
        channels.insert(channel, entry);
    }

    /// True when the channel is held at the position [`Gaps::hold_unknown`] gave it.
    pub fn is_unknown(&self, channel: &[u8]) -> bool {
        self.channels
            .borrow()
            .get(channel)
            .is_some_and(|e| e.learned && e.mark == Some(UNNUMBERED))
    }

    /// Forgets a channel whose catch-up ended where it started (nothing delivered), so a
    /// socket id room costs no entry while it gets nothing.
    pub fn forget_unmoved(&self, channel: &[u8]) {
        let mut channels = self.channels.borrow_mut();
        if channels
            .get(channel)
            .is_some_and(|e| e.held.is_none() && e.learned && e.mark == Some(UNNUMBERED))
        {
            channels.remove(channel);
        }
    }

    /// The channels being caught up.
    pub fn catching_up(&self) -> Vec<Bytes> {
        self.channels
            .borrow()
            .iter()
            .filter(|(_, entry)| entry.held.is_some())
            .map(|(channel, _)| channel.clone())
            .collect()
    }

    /// Whether a caught-up (replayed) delivery is past the channel's mark; moves the mark.
    pub fn is_new(&self, channel: &[u8], delivery: &Delivery) -> bool {
        let mut channels = self.channels.borrow_mut();
        let Some(entry) = channels.get_mut(channel) else {
            return false;
        };
        if entry.mark.is_some_and(|mark| !is_before(&mark, delivery)) {
            return false;
        }
        if let Some(seq) = delivery.seq {
            entry.mark = Some(Mark {
                epoch: delivery.epoch,
                seq,
            });
            entry.learned = false;
        }
        true
    }

    /// Ends a channel's catch-up: the held live deliveries that are past the mark, in order.
    pub fn end_catch_up(&self, channel: &[u8]) -> Vec<Delivery> {
        let held = {
            let mut channels = self.channels.borrow_mut();
            match channels.get_mut(channel) {
                Some(entry) => entry.held.take().unwrap_or_default(),
                None => return Vec::new(),
            }
        };
        held.into_iter()
            .filter(|delivery| self.is_new(channel, delivery))
            .collect()
    }

    /// Forgets channels this shard no longer subscribes to (and is not catching up).
    pub fn prune(&self, wanted: impl Fn(&[u8]) -> bool) {
        self.channels
            .borrow_mut()
            .retain(|channel, entry| entry.held.is_some() || wanted(channel));
    }

    /// Channels being caught up now.
    pub fn catching_up_count(&self) -> usize {
        self.channels
            .borrow()
            .values()
            .filter(|entry| entry.held.is_some())
            .count()
    }

    pub fn len(&self) -> usize {
        self.channels.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{PayloadKind, Target};
    use crate::mesh::Publish;

    fn delivery(epoch: u64, seq: u64) -> Delivery {
        Delivery {
            publish: Publish {
                target: Target::All,
                id: format!("n-{seq}"),
                from: None,
                event: None,
                kind: PayloadKind::Text,
                payload: Bytes::new(),
            },
            seq: Some(seq),
            epoch: Some(epoch),
        }
    }

    fn seqs(deliveries: &[Delivery]) -> Vec<u64> {
        deliveries.iter().filter_map(|d| d.seq).collect()
    }

    #[test]
    fn live_duplicates_are_dropped_and_new_numbering_passes() {
        let gaps = Gaps::default();
        assert!(matches!(
            gaps.admit(b"v:all", delivery(7, 1)),
            Admitted::Now(_)
        ));
        assert!(matches!(
            gaps.admit(b"v:all", delivery(7, 2)),
            Admitted::Now(_)
        ));
        assert!(matches!(
            gaps.admit(b"v:all", delivery(7, 2)),
            Admitted::Seen
        ));
        assert!(
            matches!(gaps.admit(b"v:all", delivery(9, 1)), Admitted::Now(_)),
            "a new epoch"
        );
        assert_eq!(
            gaps.mark(b"v:all"),
            Some(Mark {
                epoch: Some(9),
                seq: 1
            })
        );
    }

    #[test]
    fn a_catch_up_holds_live_messages_then_releases_only_new_ones() {
        let gaps = Gaps::default();
        assert!(matches!(
            gaps.admit(b"v:all", delivery(7, 3)),
            Admitted::Now(_)
        ));
        gaps.begin_catch_up();
        assert_eq!(gaps.catching_up(), vec![Bytes::from_static(b"v:all")]);
        // Live messages 6 and 7 arrive while history 4..=6 is read.
        assert!(matches!(
            gaps.admit(b"v:all", delivery(7, 6)),
            Admitted::Held
        ));
        assert!(matches!(
            gaps.admit(b"v:all", delivery(7, 7)),
            Admitted::Held
        ));
        let replayed: Vec<bool> = (4..=6)
            .map(|s| gaps.is_new(b"v:all", &delivery(7, s)))
            .collect();
        assert_eq!(replayed, [true, true, true]);
        assert_eq!(seqs(&gaps.end_catch_up(b"v:all")), [7], "6 was replayed");
        assert!(
            matches!(gaps.admit(b"v:all", delivery(7, 8)), Admitted::Now(_)),
            "live again"
        );
    }

    #[test]
    fn positions_are_learned_once_and_unknown_channels_are_not_caught_up() {
        let gaps = Gaps::default();
        let unknown = gaps.unknown(vec![Bytes::from_static(b"v:a"), Bytes::from_static(b"v:b")]);
        assert_eq!(unknown.len(), 2);
        gaps.begin_catch_up();
        assert!(gaps.catching_up().is_empty(), "no position known yet");
        gaps.learn(
            b"v:a",
            Mark {
                epoch: Some(1),
                seq: 5,
            },
        );
        gaps.learn(
            b"v:a",
            Mark {
                epoch: Some(1),
                seq: 2,
            },
        );
        assert_eq!(
            gaps.mark(b"v:a"),
            Some(Mark {
                epoch: Some(1),
                seq: 5
            })
        );
        assert_eq!(gaps.unknown(vec![Bytes::from_static(b"v:a")]).len(), 0);
        gaps.begin_catch_up();
        assert_eq!(gaps.catching_up(), vec![Bytes::from_static(b"v:a")]);
        gaps.prune(|c| c == b"v:a");
        assert_eq!(gaps.len(), 1);
    }

    #[test]
    fn a_learned_position_never_drops_a_live_message() {
        // Redis answered the position read with seq 3 (messages 2 and 3 were published
        // just after the subscription was confirmed), before their live copies arrived.
        let gaps = Gaps::default();
        assert_eq!(gaps.unknown(vec![Bytes::from_static(b"v:a")]).len(), 1);
        gaps.learn(
            b"v:a",
            Mark {
                epoch: Some(7),
                seq: 3,
            },
        );
        let admitted: Vec<bool> = [2, 3]
            .iter()
            .map(|&seq| matches!(gaps.admit(b"v:a", delivery(7, seq)), Admitted::Now(_)))
            .collect();
        assert_eq!(admitted, [true, true]);
        // Delivered positions still drop live duplicates.
        assert!(matches!(gaps.admit(b"v:a", delivery(7, 3)), Admitted::Seen));
    }
}
