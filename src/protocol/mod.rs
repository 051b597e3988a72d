//! The client protocol boundary: every data message a client sends arrives here, and (in a
//! later step) every server message is encoded here. Keeping it in one place lets a second
//! codec (socket.io v4, see DESIGN.md) sit beside the native one while the routing core
//! stays protocol-agnostic.
//!
//! Today volley is push-only: client data messages are counted and dropped. Client ops
//! (join, leave, publish, ack) come with the users/rooms issue.
//! Called by `conn` while it decodes a read; must not block or do I/O.

use crate::metrics::Metrics;

/// A complete data message from a client, borrowed from the shard's read buffer.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// Handles one client data message.
pub fn dispatch(message: Message<'_>, metrics: &Metrics) {
    Metrics::inc(&metrics.messages_received_total);
    match message {
        Message::Text(_) | Message::Binary(_) => {}
    }
}
