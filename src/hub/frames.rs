//! The frames of one delivery on one shard: each codec's frame is encoded at most once,
//! and only if some recipient speaks that codec; every recipient of that codec then gets
//! the same `Bytes` (a refcount bump, never a copy).
//!
//! Knows no wire format: it asks the connection's codec (`protocol::ClientCodec`) to encode.
//! Used by `Hub::deliver` and by `services::recovery` for replayed messages.

use bytes::Bytes;

use crate::envelope::Target;
use crate::mesh::{Delivery, Stored};
use crate::protocol::{Codec, Message};

pub struct Frames<'a> {
    delivery: &'a Delivery,
    cache: [Option<Bytes>; Codec::COUNT],
    encoded: u32,
}

impl<'a> Frames<'a> {
    pub fn new(delivery: &'a Delivery) -> Frames<'a> {
        Frames {
            delivery,
            cache: Default::default(),
            encoded: 0,
        }
    }

    /// The frame of this delivery for `codec`, encoded on first use.
    pub fn for_codec(&mut self, codec: Codec) -> Bytes {
        let slot = &mut self.cache[codec.index()];
        if let Some(frame) = slot {
            return frame.clone();
        }
        let publish = &self.delivery.publish;
        let frame = codec.get().message(&Message {
            channel: &publish.target,
            seq: self.delivery.seq,
            epoch: self.delivery.epoch,
            id: &publish.id,
            from: publish.from.as_deref(),
            kind: publish.kind,
            payload: &publish.payload,
        });
        self.encoded += 1;
        *slot = Some(frame.clone());
        frame
    }

    /// How many frames were encoded so far (one per codec used, at most).
    pub fn encoded(&self) -> u32 {
        self.encoded
    }
}

/// The frame of one stored (history or inbox) message of the channel's `epoch` for one
/// codec: encoded per recipient, since replays differ per client.
pub fn stored_frame(target: &Target, message: &Stored, epoch: Option<u64>, codec: Codec) -> Bytes {
    codec.get().message(&Message {
        channel: target,
        seq: Some(message.seq),
        epoch,
        id: &message.id,
        from: message.from.as_deref(),
        kind: message.kind,
        payload: &message.payload,
    })
}
