//! The one place client ops are acted on, whatever codec carried them: decode each data
//! message with the connection's codec, act on the neutral op (`ClientOp`), answer through
//! the same codec, and count strikes (past `CLIENT_STRIKES_MAX` unforgiven, 1008).
//!
//! Called by `shard` after a connection's poll, outside any slab borrow, so an op may
//! touch the index, other connections and start publishes.

use std::rc::Rc;

use super::{Refusal, Services};
use crate::config::{CLIENT_STRIKES_MAX, CLIENT_STRIKE_DECAY_S};
use crate::conn::{ConnKey, Inbound};
use crate::envelope::Target;
use crate::metrics::Metrics;
use crate::protocol::{ClientOp, Codec, Decoded, ErrorCode, OpError, OpLimits, Ref, Request};
use crate::ws::frame::close_code;

/// Handles every data message one connection sent in one read.
pub fn dispatch(svc: &Rc<Services>, key: ConnKey, inbound: Vec<Inbound>) {
    let limits = OpLimits {
        name_bytes_max: svc.ctx.config.name_bytes_max,
        data_bytes_max: svc.ctx.config.message_bytes_max,
    };
    for message in inbound {
        Metrics::inc(&svc.ctx.metrics.messages_received_total);
        let Some(codec) = svc.hub.codec(key) else {
            return;
        };
        if let Codec::SocketIo(_) = codec {
            // socket.io packets need the connection's socket.io state (namespaces, pending
            // attachments); their ops come back through `handle`.
            super::socketio::on_inbound(svc, key, message);
            continue;
        }
        match codec.get().decode(&message, &limits) {
            Decoded::Ignored => {}
            Decoded::Op(request) => handle(svc, key, request),
            Decoded::Refused(error) => reply_error(svc, key, error),
            Decoded::Reply(frame) => svc.hub.send(key, frame),
        }
    }
}

/// Sends an error reply and counts a strike; too many strikes close the client with 1008.
pub fn reply_error(svc: &Services, key: ConnKey, error: OpError) {
    let now_s = svc.ctx.now_s();
    let Some((codec, strikes)) = svc
        .hub
        .with_session(key, |s| (s.codec, s.strike(now_s, CLIENT_STRIKE_DECAY_S)))
    else {
        return;
    };
    if let Some(frame) = codec.get().reply_err(&error) {
        svc.hub.send(key, frame);
    }
    if strikes > CLIENT_STRIKES_MAX {
        svc.hub
            .close(key, close_code::POLICY, "too many protocol errors");
    }
}

/// Sends an error reply without counting a strike: for failures that are not the client's
/// (the application's webhook is down, or refused what it asked).
pub fn send_error(svc: &Services, key: ConnKey, error: &OpError) {
    let Some(codec) = svc.hub.codec(key) else {
        return;
    };
    if let Some(frame) = codec.get().reply_err(error) {
        svc.hub.send(key, frame);
    }
}

/// Sends a success reply, if the connection's codec sends one.
pub fn reply_ok(
    svc: &Services,
    key: ConnKey,
    reference: Option<&Ref>,
    result: Option<&serde_json::Value>,
) {
    let Some(codec) = svc.hub.codec(key) else {
        return;
    };
    if let Some(frame) = codec.get().reply_ok(reference, result) {
        svc.hub.send(key, frame);
    }
}

fn refuse(svc: &Services, key: ConnKey, reference: Option<Ref>, (code, message): Refusal) {
    reply_error(
        svc,
        key,
        OpError {
            reference,
            code,
            message,
        },
    );
}

/// Acts on one client op: the same for every codec.
pub fn handle(svc: &Rc<Services>, key: ConnKey, request: Request) {
    let reference = request.reference;
    match request.op {
        ClientOp::Join { room, since } => match svc.join_room(key, &room) {
            Ok(()) => {
                if let Some(since) = since {
                    // Joined and held back in one step: the replay then the live stream,
                    // with no gap and no duplicate between them.
                    svc.start_recovery(key, vec![(Target::Room(room.clone()), since)], false);
                }
                // In cluster mode the reply waits until this shard's subscription to the
                // room is confirmed by Redis, so "ok" means the next message arrives.
                svc.reply_when_subscribed(key, reference, format!("room:{room}"));
            }
            Err(refusal) => refuse(svc, key, reference, refusal),
        },
        ClientOp::Recover { target, since } => {
            if let Err(refusal) = svc.may_recover(key, &target) {
                refuse(svc, key, reference, refusal);
                return;
            }
            svc.start_recovery(key, vec![(target, since)], false);
            reply_ok(svc, key, reference.as_ref(), None);
        }
        ClientOp::Leave { room } => match svc.leave_room(key, &room) {
            Ok(()) => reply_ok(svc, key, reference.as_ref(), None),
            Err(refusal) => refuse(svc, key, reference, refusal),
        },
        ClientOp::Ack { target, seq } => {
            if svc.ack(key, &target, seq) {
                reply_ok(svc, key, reference.as_ref(), None);
            } else {
                let message = format!("no recent message {seq} on {target} to acknowledge");
                refuse(svc, key, reference, (ErrorCode::NotFound, message));
            }
        }
        ClientOp::Publish {
            target,
            data,
            event,
        } => {
            if let Err(refusal) = svc.may_publish(key, &target) {
                refuse(svc, key, reference, refusal);
                return;
            }
            svc.client_publish(key, reference, target, data, event);
        }
        ClientOp::Event { name, args } => {
            if !svc.has_hooks() {
                let message = format!(
                    "unknown op {name:?}; this server knows join, leave, publish, ack, recover and ping, and has no application webhook (--app-webhook) for others"
                );
                refuse(svc, key, reference, (ErrorCode::UnknownOp, message));
                return;
            }
            svc.client_event(key, reference, name, args);
        }
    }
}
