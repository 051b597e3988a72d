//! The frames of one delivery on one shard: each codec's frame is encoded at most once,
//! and only if some recipient speaks that codec; every recipient of that codec then gets
//! the same `Bytes` (a refcount bump, never a copy).
//!
//! permessage-deflate: beside each codec's plain frame sits its compressed variant, deflated
//! at most once per delivery with the shard's compressor and shared by every recipient of
//! that codec that negotiated deflate (`for_conn`). Replayed and stored frames stay plain
//! (RFC 7692 §6: compression is per message, plain is always allowed).
//!
//! Knows no wire format: it asks the connection's codec (`protocol::ClientCodec`) to encode.
//! Used by `Hub::deliver` and by `services::recovery` for replayed messages.

use bytes::Bytes;

use crate::conn::{ShardDeflate, Wire};
use crate::envelope::Target;
use crate::mesh::{Delivery, Stored};
use crate::metrics::Metrics;
use crate::protocol::{Codec, Message};
use crate::ws::frame;

pub struct Frames<'a> {
    delivery: &'a Delivery,
    cache: [Option<Bytes>; Codec::COUNT],
    /// Per codec: not tried yet (None), tried (Some): the compressed frame and the plain
    /// payload's length (for `Wire::compressed_fits`), or None when it goes plain.
    compressed: [Option<Option<(Bytes, usize)>>; Codec::COUNT],
    encoded: u32,
}

impl<'a> Frames<'a> {
    pub fn new(delivery: &'a Delivery) -> Frames<'a> {
        Frames {
            delivery,
            cache: Default::default(),
            compressed: Default::default(),
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
            event: publish.event.as_deref(),
            kind: publish.kind,
            payload: &publish.payload,
        });
        self.encoded += 1;
        *slot = Some(frame.clone());
        frame
    }

    /// The frame of this delivery for a connection of `codec` with `wire`: the compressed
    /// variant when it negotiated deflate and the message is worth compressing and fits its
    /// window, else the plain frame. Either is encoded once per delivery.
    pub fn for_conn(
        &mut self,
        codec: Codec,
        wire: Wire,
        deflate: &mut ShardDeflate,
        metrics: &Metrics,
    ) -> Bytes {
        let plain = self.for_codec(codec);
        if !wire.deflate {
            return plain;
        }
        let slot = &mut self.compressed[codec.index()];
        let compressed = slot.get_or_insert_with(|| {
            let (opcode, payload) = frame::server_frame_payload(&plain)?;
            let frame = deflate.compress(opcode, payload, metrics)?;
            Some((frame, payload.len()))
        });
        match compressed {
            Some((frame, payload_len)) if wire.compressed_fits(*payload_len) => frame.clone(),
            _ => plain,
        }
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
        event: message.event.as_deref(),
        kind: message.kind,
        payload: &message.payload,
    })
}
