//! What a socket.io client's packets do, whatever transport carried them: Engine.IO pongs,
//! probes and closes; Socket.IO CONNECT (namespace, auth, socket id room), DISCONNECT,
//! events (volley's ops `join`, `leave`, `publish`, `recover`, `ack`, answered through the
//! ack the client asked for) and ACKs of server pushes (counted as volley acks). With
//! `--app-webhook`, CONNECTs and the other events go to the application first
//! (`Services::hook_connect`, `Services::hook_event`), and a polling session is handed to
//! its WebSocket only once those calls are answered.
//!
//! The ops themselves are acted on by `ops::handle`, as for every codec; replies go out
//! through `protocol::socketio::codec`. Any packet that is not Engine.IO or Socket.IO
//! closes that client only (socket.io servers close the session on a parse error).
//! Called by `ops::dispatch` for `Codec::SocketIo` connections.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value as Json;

use super::hooks::HookError;
use super::ops;
use super::Services;
use crate::auth::Claims;
use crate::broker::client::SUBSCRIBE_WAIT_MAX;
use crate::config::{ClientAuth, SOCKETIO_NAMESPACE_BYTES_MAX};
use crate::conn::{ConnKey, Inbound};
use crate::envelope::Target;
use crate::hooks;
use crate::hub::Session;
use crate::mesh::{ShardMsg, SioPosition, SioReply, SioSnapshot, SioUpgradeStep};
use crate::metrics::Metrics;
use crate::protocol::socketio::codec::{self, ack_ref, message_frame, ws_text};
use crate::protocol::socketio::engineio::{self, PacketType as EioType, Sid, SID_RANDOM_BYTES};
use crate::protocol::socketio::engineio::{Open, PayloadLimits, Queued, RequestError};
use crate::protocol::socketio::packet::{self, PacketType};
use crate::protocol::socketio::session::Partial;
use crate::protocol::socketio::session::{socket_id, SioState, HELD_MAX};
use crate::protocol::socketio::{namespace_name, Value};
use crate::protocol::{check_name, ClientOp, Codec, ErrorCode, OpError, Request, Since};
use crate::ws::frame::close_code;

/// Content type of polling bodies, as engine.io sends it.
const POLLING_CONTENT_TYPE: &str = "text/plain; charset=UTF-8";

/// A sid for a new Engine.IO session or namespace socket on `shard`, from the kernel's
/// random source (getrandom(2)): the sid alone lets a polling request act as its session.
pub fn random_sid(shard: usize) -> Sid {
    let mut random = [0u8; SID_RANDOM_BYTES];
    // SAFETY: getrandom writes at most `random.len()` bytes into the buffer we own.
    let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if got != random.len() as isize {
        // getrandom on Linux >= 3.17 does not fail for 12 bytes once the pool is ready;
        // if it ever does, mix the clock in rather than hand out zeros.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        random.copy_from_slice(&nanos.to_le_bytes()[..SID_RANDOM_BYTES]);
    }
    Sid::new(shard as u16, &random)
}

/// Handles one message a socket.io connection sent; a protocol violation closes it.
pub fn on_inbound(svc: &Rc<Services>, key: ConnKey, inbound: Inbound) {
    // A WebSocket taking over a polling session holds what it gets until it has the
    // session's namespaces (the hand-over may wait for another shard).
    let inbound = match svc.hub.with_session(key, |s| hold(s, inbound)) {
        Some(Hold::Pass(inbound)) => inbound,
        Some(Hold::Held) | None => return,
        Some(Hold::Overflow) => {
            Metrics::inc(&svc.ctx.metrics.protocol_error_closes_total);
            svc.hub.close(
                key,
                close_code::POLICY,
                "too many packets during the upgrade",
            );
            return;
        }
    };
    let result = match inbound {
        Inbound::Text(text) => on_text(svc, key, &text),
        Inbound::Binary(data) => on_attachment(svc, key, Bytes::from(Vec::from(data))),
    };
    if let Err(reason) = result {
        Metrics::inc(&svc.ctx.metrics.protocol_error_closes_total);
        svc.hub.close(key, close_code::POLICY, &reason);
    }
}

enum Hold {
    /// Not handing over: handle it now.
    Pass(Inbound),
    Held,
    /// Past `HELD_MAX`: close the client.
    Overflow,
}

/// Holds `inbound` while the connection is being handed its polling session.
fn hold(session: &mut Session, inbound: Inbound) -> Hold {
    let Some(held) = session.sio.as_mut().and_then(|s| s.held.as_mut()) else {
        return Hold::Pass(inbound);
    };
    if held.len() >= HELD_MAX {
        return Hold::Overflow;
    }
    held.push(inbound);
    Hold::Held
}

fn on_text(svc: &Rc<Services>, key: ConnKey, text: &str) -> Result<(), String> {
    let decoded = engineio::decode_text(text).map_err(|e| e.to_string())?;
    on_eio_packet(svc, key, decoded)
}

fn on_eio_packet(
    svc: &Rc<Services>,
    key: ConnKey,
    decoded: engineio::Packet<'_>,
) -> Result<(), String> {
    match decoded {
        engineio::Packet::Text { kind, data } => match kind {
            // Proof of life is any byte: the conn already noted the time.
            EioType::Pong => Ok(()),
            EioType::Message => on_packet(svc, key, data),
            // The polling-to-WebSocket upgrade probe (engine.io-protocol v4, "Upgrade").
            EioType::Ping if data == "probe" => {
                svc.hub.send(key, ws_text(b"3probe"));
                upgrade_step(svc, key, SioUpgradeStep::Probe);
                Ok(())
            }
            EioType::Upgrade => {
                svc.hub.with_session(key, |s| {
                    if let Some(sio) = s.sio.as_mut() {
                        sio.held = Some(Box::default());
                    }
                });
                upgrade_step(svc, key, SioUpgradeStep::Take);
                Ok(())
            }
            EioType::Noop => Ok(()),
            EioType::Close => {
                svc.hub.close(key, close_code::NORMAL, "");
                Ok(())
            }
            // engine.io-protocol v4: the server pings; a client's ping is an error.
            EioType::Ping | EioType::Open => {
                Err(format!("engine.io packet {kind:?} from a client"))
            }
        },
        engineio::Packet::Binary(data) => on_attachment(svc, key, Bytes::from(data.into_owned())),
    }
}

fn limits(svc: &Services) -> packet::Limits {
    packet::Limits {
        attachments_max: svc.ctx.config.socketio.attachments_max,
        nsp_bytes_max: SOCKETIO_NAMESPACE_BYTES_MAX,
    }
}

/// One Socket.IO packet (the data of an Engine.IO message).
pub fn on_packet(svc: &Rc<Services>, key: ConnKey, text: &str) -> Result<(), String> {
    let decoded = packet::decode(text, &limits(svc)).map_err(|e| e.to_string())?;
    if decoded.kind.is_binary() {
        let started = svc
            .hub
            .with_session(key, |s| {
                let sio = s.sio.as_mut()?;
                if sio.partial.is_some() {
                    return None;
                }
                sio.partial = Some(Box::new(Partial {
                    text: text.to_string(),
                    attachments: Vec::new(),
                }));
                Some(())
            })
            .flatten();
        return started.ok_or_else(|| "a binary packet while another awaits attachments".into());
    }
    let args = match decoded.data {
        Some(raw) => Some(serde_json::from_str::<Json>(raw.get()).map_err(|e| e.to_string())?),
        None => None,
    };
    on_whole_packet(svc, key, &decoded, args.map(Value::from_json))
}

/// A binary message: the next attachment of the pending binary packet.
fn on_attachment(svc: &Rc<Services>, key: ConnKey, data: Bytes) -> Result<(), String> {
    let complete = svc
        .hub
        .with_session(key, |s| {
            let sio = s.sio.as_mut()?;
            let partial = sio.partial.as_mut()?;
            partial.attachments.push(data);
            let text = &partial.text;
            let expected = text[1..]
                .split('-')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            if partial.attachments.len() >= expected {
                sio.partial.take().map(Some)
            } else {
                Some(None)
            }
        })
        .flatten()
        .ok_or("a binary message with no binary packet before it")?;
    let Some(partial) = complete else {
        return Ok(());
    };
    let decoded = packet::decode(&partial.text, &limits(svc)).map_err(|e| e.to_string())?;
    let value = packet::reconstruct(&decoded, &partial.attachments).map_err(|e| e.to_string())?;
    on_whole_packet(svc, key, &decoded, Some(value))
}

fn send_packet(svc: &Services, key: ConnKey, sio_packet: &str) {
    svc.hub.send(key, message_frame(sio_packet));
}

/// A whole packet (attachments in place): what it does.
fn on_whole_packet(
    svc: &Rc<Services>,
    key: ConnKey,
    p: &packet::Packet<'_>,
    args: Option<Value>,
) -> Result<(), String> {
    let nsp = svc.ctx.config.socketio.namespace(p.nsp);
    let connected = nsp.and_then(|n| {
        svc.hub
            .with_session(key, |s| s.sio.as_ref().and_then(|sio| sio.socket(n)))
            .flatten()
    });
    match (p.kind, nsp, connected) {
        (PacketType::Connect, None, _) => {
            send_packet(
                svc,
                key,
                &packet::encode_connect_error(p.nsp, "Invalid namespace"),
            );
            Ok(())
        }
        (PacketType::Connect, Some(_), Some(socket)) => {
            // Connected already: say so again rather than make a second socket.
            send_packet(svc, key, &packet::encode_connect(p.nsp, socket.as_str()));
            Ok(())
        }
        (PacketType::Connect, Some(nsp), None) => {
            connect(svc, key, nsp, args.as_ref());
            Ok(())
        }
        (PacketType::Disconnect, Some(nsp), Some(socket)) => {
            disconnect(svc, key, nsp, socket);
            Ok(())
        }
        // socket.io's Client closes a connection that talks on a namespace it has not
        // connected ("invalid state"); a DISCONNECT of one is merely late.
        (PacketType::Disconnect, _, None) => Ok(()),
        (PacketType::Event | PacketType::BinaryEvent, Some(nsp), Some(_)) => {
            event(svc, key, nsp, p.id, args);
            Ok(())
        }
        (PacketType::Ack | PacketType::BinaryAck, Some(_), Some(_)) => {
            if let Some(id) = p.id {
                client_ack(svc, key, id);
            }
            Ok(())
        }
        (kind, _, _) => Err(format!(
            "socket.io packet {kind:?} on namespace {:?}, which this client has not connected",
            p.nsp
        )),
    }
}

/// CONNECT: who the client is (auth payload), with `--app-webhook` the application's word
/// (docs/API.md, "Application hooks"), its socket id room, the reply. Without hooks the
/// reply goes out at once; with them it waits for the hook (bounded by
/// `--app-webhook-timeout-ms`), and a refusal or a failed call is a CONNECT_ERROR.
fn connect(svc: &Rc<Services>, key: ConnKey, nsp: u8, auth: Option<&Value>) {
    let name = namespace_name(nsp);
    let identity = match identify(svc, key, auth) {
        Ok(identity) => identity,
        Err(message) => {
            refuse_connect(svc, key, nsp, &message);
            return;
        }
    };
    let socket = new_socket_id(svc, key);
    if !svc.has_hooks() {
        if admit(svc, key, nsp, socket, identity) {
            reply_connected(svc, key, nsp);
        }
        return;
    }
    // The hook document is JSON: a binary auth payload (rare) is sent as null.
    let auth = auth.and_then(to_json);
    let owner = svc.clone();
    let pending = AnswerPending::new(svc, key);
    let task = async move {
        let _pending = pending;
        let (current, headers) = owner
            .hub
            .with_session(key, |s| {
                let headers = s.sio.as_ref().and_then(|sio| sio.headers.clone());
                (s.user.clone(), headers)
            })
            .unwrap_or_default();
        let user = identity.as_ref().map(|(user, _)| user.clone()).or(current);
        let connect = hooks::Connect {
            socket: hooks::Socket {
                protocol: SOCKETIO_PROTOCOL,
                namespace: Some(name),
                id: socket.as_str(),
                user: user.as_deref(),
            },
            auth: auth.as_ref(),
            headers: headers.as_deref().unwrap_or_default(),
        };
        let outcome = match owner.hook_connect(&connect).await {
            Ok(outcome) => outcome,
            Err(e) => {
                refuse_connect(&owner, key, nsp, &e.client_message());
                return;
            }
        };
        if let Some(message) = &outcome.refuse {
            refuse_connect(&owner, key, nsp, message);
            return;
        }
        // The connection may have closed while the application thought: then the key is
        // stale (its generation moved on) and nothing below reaches anyone.
        if !admit(&owner, key, nsp, socket, identity) {
            return;
        }
        // Rooms first (with the user's claims now set), so a push to them sent once the
        // client sees `connect` reaches it; then the reply, then the emits.
        owner.hook_apply_rooms(key, &outcome);
        owner.hook_wait_joined(&outcome).await;
        let Some(socket) = socket_of(&owner, key, nsp) else {
            return;
        };
        send_packet(&owner, key, &packet::encode_connect(name, socket.as_str()));
        for emit in &outcome.emit {
            if let Some(frame) = codec::emit_frame(name, &emit.event, &emit.args) {
                owner.hub.send(key, frame);
            }
        }
    };
    if svc.ctx.tasks.spawn(task).is_err() {
        Metrics::inc(&svc.ctx.metrics.tasks_refused_total);
        refuse_connect(svc, key, nsp, &HookError::Busy.client_message());
    }
}

/// The CONNECT reply of an admitted socket, at once. It does not wait for Redis to confirm
/// this shard's subscriptions: pushes queued before the reply would reach socket.io-client
/// before its `connect` handler runs (it emits buffered events first), so a client that
/// resumes from the highest seq it saw would skip what it missed while reconnecting. A
/// user push in that short window is caught by the subscription's position read
/// (`services::gaps`) or kept in the inbox (docs/SOCKETIO.md, Known gaps).
fn reply_connected(svc: &Rc<Services>, key: ConnKey, nsp: u8) {
    send_connect(svc, key, nsp);
}

/// The CONNECT reply naming namespace `nsp`'s socket, if it is still connected (the
/// connection may have closed, or the client disconnected the namespace, meanwhile).
fn send_connect(svc: &Services, key: ConnKey, nsp: u8) {
    if let Some(socket) = socket_of(svc, key, nsp) {
        let reply = packet::encode_connect(namespace_name(nsp), socket.as_str());
        send_packet(svc, key, &reply);
    }
}

/// The `protocol` of socket.io clients in hook documents.
const SOCKETIO_PROTOCOL: &str = "socket.io";

/// A refused CONNECT: socket.io's CONNECT_ERROR with the reason as its `message`.
fn refuse_connect(svc: &Services, key: ConnKey, nsp: u8, message: &str) {
    Metrics::inc(&svc.ctx.metrics.http_errors_total);
    let name = namespace_name(nsp);
    send_packet(svc, key, &packet::encode_connect_error(name, message));
}

/// A new namespace socket's id: it names this connection (shard, slot, generation) and
/// this process (its node tag).
fn new_socket_id(svc: &Services, key: ConnKey) -> Sid {
    let spare = random_sid(svc.ctx.id);
    let random = spare.as_str().as_bytes();
    socket_id(
        svc.ctx.id as u16,
        svc.ctx.node_tag(),
        key.index,
        key.generation,
        [random[16], random[17], random[18], random[19]],
    )
}

/// The socket id of namespace `nsp` on the connection, if it is connected.
fn socket_of(svc: &Services, key: ConnKey, nsp: u8) -> Option<Sid> {
    svc.hub
        .with_session(key, |s| s.sio.as_ref().and_then(|sio| sio.socket(nsp)))
        .flatten()
}

/// Gives the connection its user (if the CONNECT named one) and the namespace socket;
/// false when the connection is gone. A namespace connected meanwhile (a second CONNECT
/// while a hook was asked about the first) keeps its socket; the caller's reply then
/// names that one.
fn admit(svc: &Rc<Services>, key: ConnKey, nsp: u8, socket: Sid, identity: Identity) -> bool {
    if let Err(message) = apply_identity(svc, key, identity) {
        refuse_connect(svc, key, nsp, &message);
        return false;
    }
    let added = svc
        .hub
        .with_session(key, |s| {
            let sio = s.sio.as_mut()?;
            if sio.socket(nsp).is_some() {
                return Some(false);
            }
            let first = sio.sockets.is_empty();
            // Almost every connection uses one namespace: do not reserve four.
            sio.sockets.reserve_exact(1);
            sio.sockets.push((nsp, socket));
            sio.connect_deadline_s = 0;
            if first {
                // Pushes go out on the first namespace the client connected.
                s.codec = Codec::SocketIo(nsp);
            }
            Some(true)
        })
        .flatten();
    // The room named by the socket id costs nothing more: the hub finds the connection
    // from the id itself (no index entry), and in cluster mode its pushes come on this
    // process's sockets channel, which every shard subscribed at start.
    added.is_some()
}

/// The user a CONNECT names, verified, to give the connection once it is admitted; None
/// when it names none or the one the connection has.
type Identity = Option<(Rc<str>, Option<Rc<Claims>>)>;

/// The CONNECT auth payload: `token` verified like `/ws` tokens; in open mode `user`
/// names the client like `?user=`. A connection has one user: a second namespace must
/// not name another. Changes nothing: [`apply_identity`] does, once the CONNECT is
/// accepted.
fn identify(svc: &Rc<Services>, key: ConnKey, auth: Option<&Value>) -> Result<Identity, String> {
    let token = auth.and_then(|a| a.get("token")).and_then(Value::as_str);
    let current = svc.hub.with_session(key, |s| s.user.clone()).flatten();
    let (user, claims) = match &svc.ctx.config.client_auth {
        ClientAuth::Jwt(verifier) => match token {
            Some(token) => {
                let claims = verifier
                    .verify(token, svc.ctx.unix_now_s())
                    .map_err(|e| format!("invalid token: {e}"))?;
                (Rc::<str>::from(claims.sub.as_str()), Some(Rc::new(claims)))
            }
            // A token given in the query or a header was verified at the handshake.
            None if current.is_some() => return Ok(None),
            None => return Err(
                "missing token: send it as auth: { token } (or ?token= / Authorization: Bearer)"
                    .into(),
            ),
        },
        ClientAuth::Open => {
            let Some(user) = auth.and_then(|a| a.get("user")) else {
                return Ok(None);
            };
            let user = user.as_str().ok_or("auth.user must be a string")?;
            check_name(user, svc.ctx.config.name_bytes_max).map_err(|e| e.message("auth.user"))?;
            (Rc::<str>::from(user), None)
        }
    };
    match current {
        Some(current) if current == user => Ok(None),
        Some(current) => Err(one_user(&current)),
        None => Ok(Some((user, claims))),
    }
}

fn one_user(current: &str) -> String {
    format!("this connection is user {current:?}; one connection has one user")
}

/// Gives the connection the user [`identify`] found, checking again that it has no other
/// (another namespace's CONNECT may have named one while a hook was asked).
fn apply_identity(svc: &Rc<Services>, key: ConnKey, identity: Identity) -> Result<(), String> {
    let Some((user, claims)) = identity else {
        return Ok(());
    };
    match svc.hub.with_session(key, |s| s.user.clone()).flatten() {
        Some(current) if current == user => Ok(()),
        Some(current) => Err(one_user(&current)),
        None => {
            if svc.hub.set_user(key, user, claims) {
                svc.user_connected(key);
            }
            Ok(())
        }
    }
}

/// DISCONNECT of one namespace: the connection stays, with its other namespaces. Also the
/// end of a server-side disconnect (`sio_adapter`, after it sent the DISCONNECT packet).
pub(super) fn disconnect(svc: &Rc<Services>, key: ConnKey, nsp: u8, socket: Sid) {
    svc.hub.with_session(key, |s| {
        let Some(sio) = s.sio.as_mut() else {
            return;
        };
        sio.sockets.retain(|(n, _)| *n != nsp);
        if s.codec == Codec::SocketIo(nsp) {
            if let Some((next, _)) = sio.sockets.first() {
                s.codec = Codec::SocketIo(*next);
            }
        }
    });
    // An adopted connection has its socket ids as ordinary rooms; others are in none.
    let _ = svc.leave_room(key, socket.as_str());
}

/// An ACK of a server push: the ack id names (channel, seq) among the channels this
/// connection receives; it counts as a volley ack (receipts, `?wait=ack`).
fn client_ack(svc: &Rc<Services>, key: ConnKey, id: u64) {
    let (hash, seq) = codec::split_ack_id(id);
    let user = svc.hub.with_session(key, |s| s.user.clone()).flatten();
    let mut channels = vec![Target::All];
    if let Some(user) = user {
        channels.push(Target::User(user.to_string()));
    }
    channels.extend(
        svc.hub
            .rooms_of(key)
            .iter()
            .map(|r| Target::Room(r.to_string())),
    );
    for target in channels {
        if codec::channel_hash(&target.to_string()) == hash && svc.ack(key, &target, seq) {
            return;
        }
    }
}

fn to_json(value: &Value) -> Option<Json> {
    Some(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => Json::Number(n.clone()),
        Value::String(s) => Json::String(s.clone()),
        Value::Binary(_) => return None,
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect::<Option<_>>()?),
        Value::Object(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| Some((k.clone(), to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// A client event: a volley op when its name is one, answered through its ack.
fn event(svc: &Rc<Services>, key: ConnKey, nsp: u8, id: Option<u64>, args: Option<Value>) {
    let reference = id.map(|id| ack_ref(nsp, id));
    let items = match args {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let name = items.first().and_then(Value::as_str).unwrap_or("");
    let arg = items.get(1);
    let op = match name {
        "join" | "leave" | "publish" | "recover" | "ack" => match arg.map(to_json) {
            Some(None) => Err(format!(
                "{name}: binary arguments are not volley ops; send JSON"
            )),
            json => op_of(svc, name, json.flatten().as_ref()),
        },
        _ if svc.has_hooks() && check_name(name, svc.ctx.config.name_bytes_max).is_ok() => {
            let name = name.to_string();
            app_event(svc, key, nsp, id, name, items.get(1..).unwrap_or_default());
            return;
        }
        _ => {
            let message = format!(
                "{name:?} is not a volley op (join, leave, publish, recover, ack); application events need the app webhook"
            );
            if reference.is_some() {
                ops::reply_error(
                    svc,
                    key,
                    OpError {
                        reference,
                        code: ErrorCode::UnknownOp,
                        message,
                    },
                );
            }
            return;
        }
    };
    match op {
        Ok(op) => ops::handle(svc, key, Request { reference, op }),
        Err(message) => ops::reply_error(
            svc,
            key,
            OpError {
                reference,
                code: ErrorCode::BadField,
                message,
            },
        ),
    }
}

/// A client event that is not a volley op, with `--app-webhook`: the application answers it
/// (docs/API.md, "Application hooks"). Its rooms are applied, its emits go to this socket,
/// then its ack answers the client's ack (an array is the ack's arguments, another value
/// the one argument, none no argument). A refusal or a failed call is an op error (the
/// ack's `{ok:false,error}`, or an `error` event when no ack was asked) and no strike: the
/// application, not the client, decided or failed.
fn app_event(
    svc: &Rc<Services>,
    key: ConnKey,
    nsp: u8,
    ack_id: Option<u64>,
    name: String,
    args: &[Value],
) {
    let reference = ack_id.map(|id| ack_ref(nsp, id));
    let error = move |code, message| OpError {
        reference: reference.clone(),
        code,
        message,
    };
    // Hook documents are JSON.
    let Some(args) = args.iter().map(to_json).collect::<Option<Vec<Json>>>() else {
        let message =
            format!("{name}: binary arguments are not sent to the application; send JSON");
        ops::reply_error(svc, key, error(ErrorCode::BadField, message));
        return;
    };
    let Some(socket) = socket_of(svc, key, nsp) else {
        return;
    };
    let owner = svc.clone();
    let refused = error.clone();
    let pending = AnswerPending::new(svc, key);
    let task = async move {
        let _pending = pending;
        let nsp_name = namespace_name(nsp);
        let args = Json::Array(args);
        let event = hooks::Event {
            socket: hooks::Socket {
                protocol: SOCKETIO_PROTOCOL,
                namespace: Some(nsp_name),
                id: socket.as_str(),
                user: None,
            },
            name: &name,
            args: &args,
            ack: ack_id.is_some(),
        };
        let result = owner.hook_event(key, &event).await;
        // The socket may be gone by now (the connection closed: its key is stale; or the
        // namespace was disconnected): then nobody waits for the answer.
        if socket_of(&owner, key, nsp) != Some(socket) {
            return;
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                let message = e.client_message();
                ops::send_error(&owner, key, &error(ErrorCode::Internal, message));
                return;
            }
        };
        if let Some(message) = outcome.refuse {
            let message = format!("refused by the application: {message}");
            ops::send_error(&owner, key, &error(ErrorCode::Forbidden, message));
            return;
        }
        for emit in &outcome.emit {
            if let Some(frame) = codec::emit_frame(nsp_name, &emit.event, &emit.args) {
                owner.hub.send(key, frame);
            }
        }
        if let Some(id) = ack_id {
            let args = outcome.ack.unwrap_or_else(|| Json::Array(Vec::new()));
            if let Some(frame) = codec::ack_args_frame(nsp_name, id, &args) {
                owner.hub.send(key, frame);
            }
        }
    };
    if svc.ctx.tasks.spawn(task).is_err() {
        Metrics::inc(&svc.ctx.metrics.tasks_refused_total);
        ops::send_error(
            svc,
            key,
            &refused(ErrorCode::Internal, HookError::Busy.client_message()),
        );
    }
}

fn target_of(arg: &Json) -> Result<Target, String> {
    if let Some(room) = arg.get("room").and_then(Json::as_str) {
        return Ok(Target::Room(room.to_string()));
    }
    if let Some(user) = arg.get("user").and_then(Json::as_str) {
        return Ok(Target::User(user.to_string()));
    }
    arg.get("channel")
        .and_then(Json::as_str)
        .and_then(Target::parse)
        .ok_or_else(|| "give room, user, or channel (all, user:<id>, room:<name>)".into())
}

/// The op of a volley event: `join`/`leave` take a room name or `{room, since}`;
/// `publish` takes `{room|user|channel, data}`; `recover` and `ack` take
/// `{channel, since}` / `{channel, seq}`.
fn op_of(svc: &Services, name: &str, arg: Option<&Json>) -> Result<ClientOp, String> {
    let arg = arg.ok_or_else(|| format!("{name}: an argument is needed"))?;
    let room = || -> Result<String, String> {
        let room = arg
            .as_str()
            .or_else(|| arg.get("room").and_then(Json::as_str))
            .ok_or_else(|| format!("{name}: give the room name, or {{room}}"))?;
        check_name(room, svc.ctx.config.name_bytes_max).map_err(|e| e.message("room"))?;
        Ok(room.to_string())
    };
    let number = |field: &str| arg.get(field).and_then(Json::as_u64);
    Ok(match name {
        "join" => ClientOp::Join {
            room: room()?,
            since: number("since").map(|seq| Since {
                seq,
                epoch: number("epoch"),
            }),
        },
        "leave" => ClientOp::Leave { room: room()? },
        "publish" => {
            let target = target_of(arg)?;
            let data = arg
                .get("data")
                .ok_or("publish: data is missing")?
                .to_string();
            if data.len() > svc.ctx.config.message_bytes_max {
                return Err(format!(
                    "publish: data is {} bytes; the limit is {}",
                    data.len(),
                    svc.ctx.config.message_bytes_max
                ));
            }
            let event = match arg.get("event") {
                None | Some(Json::Null) => None,
                Some(Json::String(name)) => {
                    crate::envelope::event_name(Some(name)).map_err(|e| format!("publish: {e}"))?
                }
                Some(_) => return Err("publish: event must be a string".into()),
            };
            ClientOp::Publish {
                target,
                data: Bytes::from(data),
                event,
            }
        }
        "recover" => ClientOp::Recover {
            target: target_of(arg)?,
            since: Since {
                seq: number("since").ok_or("recover: since (a seq) is missing")?,
                epoch: number("epoch"),
            },
        },
        _ => ClientOp::Ack {
            target: target_of(arg)?,
            seq: number("seq").ok_or("ack: seq is missing")?,
        },
    })
}

/// The open packet of a new Engine.IO session.
pub fn open_packet(svc: &Services, sid: &str, upgrades: &[&str]) -> String {
    let config = &svc.ctx.config.socketio;
    engineio::encode_open(&Open {
        sid,
        upgrades,
        ping_interval_ms: config.ping_interval_ms,
        ping_timeout_ms: config.ping_timeout_ms,
        max_payload_bytes: config.max_payload_bytes,
    })
}

/// The sid a request names, if it could be one of ours.
pub fn parse_sid(text: &str) -> Option<Sid> {
    Sid::parse(text)
}

/// engine.io's error answer to a polling request.
pub fn reply_error(error: RequestError) -> SioReply {
    SioReply {
        status: error.http_status(),
        content_type: "application/json",
        body: error.body().as_bytes().to_vec(),
    }
}

/// A volley error (auth, capacity) as `{"error": ...}`.
pub fn reply_json_error(status: u16, message: &str) -> SioReply {
    SioReply {
        status,
        content_type: "application/json",
        body: crate::http::json_error_body(message),
    }
}

fn reply_text(body: Vec<u8>) -> SioReply {
    SioReply {
        status: 200,
        content_type: POLLING_CONTENT_TYPE,
        body,
    }
}

/// A polling handshake: a new session on this shard, answered with the open packet.
pub fn polling_open(
    svc: &Rc<Services>,
    mut session: Session,
    headers: Option<Box<[(String, String)]>>,
) -> SioReply {
    let config = &svc.ctx.config.socketio;
    if svc.hub.polling_len() >= config.polling_sessions_max as usize {
        Metrics::inc(&svc.ctx.metrics.rejected_full_total);
        return reply_json_error(
            503,
            "too many polling sessions on this shard (--socketio-polling-sessions-max); use the websocket transport",
        );
    }
    if !svc.ctx.is_accepting() {
        return reply_json_error(503, "server shutting down");
    }
    if !svc.ctx.shared.try_reserve_connection() {
        Metrics::inc(&svc.ctx.metrics.rejected_full_total);
        return reply_json_error(503, "server full (--max-connections)");
    }
    let sid = random_sid(svc.ctx.id);
    let deadline_s = svc.ctx.now_s() + config.connect_timeout_ms.div_ceil(1000);
    let mut sio = SioState::new(sid, deadline_s);
    sio.headers = headers;
    session.sio = Some(Box::new(sio));
    let key = svc.hub.insert_polling(sid, session);
    svc.connected(key);
    reply_text(open_packet(svc, sid.as_str(), &["websocket"]).into_bytes())
}

/// A polling GET or POST for `sid`: answered here when this shard owns it, or by its
/// owner over the mesh.
pub async fn polling_request(svc: &Rc<Services>, sid: Sid, post: bool, body: Vec<u8>) -> SioReply {
    let owner = usize::from(sid.owner());
    if owner == svc.ctx.id {
        return owned_polling(svc, sid, post, body).await;
    }
    if owner >= svc.ctx.peers.count() {
        return reply_error(RequestError::UnknownSid);
    }
    let (reply, answer) = futures_channel::oneshot::channel();
    Metrics::inc(&svc.ctx.metrics.socketio_forwarded_total);
    let msg = ShardMsg::SioPolling {
        sid,
        post,
        body,
        reply,
    };
    if svc.ctx.peers.send_to(owner, msg).await.is_err() {
        return reply_json_error(503, "the shard that owns this session is not answering");
    }
    answer
        .await
        .unwrap_or_else(|_| reply_json_error(503, "the shard that owns this session stopped"))
}

/// A polling request forwarded by another shard: answered by a tracked task (a GET may
/// wait for packets).
pub fn on_mesh_polling(
    svc: &Rc<Services>,
    sid: Sid,
    post: bool,
    body: Vec<u8>,
    reply: futures_channel::oneshot::Sender<SioReply>,
) {
    let owner = svc.clone();
    let task = async move {
        let answer = owned_polling(&owner, sid, post, body).await;
        let _ = reply.send(answer);
    };
    if svc.ctx.tasks.spawn(task).is_err() {
        Metrics::inc(&svc.ctx.metrics.tasks_refused_total);
    }
}

/// A polling request for a session this shard owns.
async fn owned_polling(svc: &Rc<Services>, sid: Sid, post: bool, body: Vec<u8>) -> SioReply {
    let Some(key) = svc.hub.polling_key(&sid) else {
        return reply_error(RequestError::UnknownSid);
    };
    let now_s = svc.ctx.now_s();
    svc.hub.with_polling(key, |p| p.last_rx_s = now_s);
    if post {
        return polling_post(svc, key, &body);
    }
    // engine.io-protocol v4: one pending GET per session; a second is an error that ends
    // the session ("overlap from client").
    let overlap = svc
        .hub
        .with_polling(key, |p| std::mem::replace(&mut p.getting, true))
        .unwrap_or(true);
    if overlap {
        svc.hub.close(key, close_code::POLICY, "");
        return reply_error(RequestError::BadRequest);
    }
    let frames = futures_lite::future::poll_fn(|cx| {
        let step = svc.hub.with_polling(key, |p| {
            if !p.outbox.is_empty() {
                return std::task::Poll::Ready(Some(p.take()));
            }
            if p.closed {
                return std::task::Poll::Ready(None);
            }
            p.waker = Some(cx.waker().clone());
            std::task::Poll::Pending
        });
        step.unwrap_or(std::task::Poll::Ready(None))
    })
    .await;
    let now_s = svc.ctx.now_s();
    svc.hub.with_polling(key, |p| {
        p.getting = false;
        p.last_rx_s = now_s;
    });
    let Some(frames) = frames else {
        // Closed: engine.io's polling transport says goodbye with a close packet.
        return reply_text(b"1".to_vec());
    };
    let mut queued = Vec::new();
    for frame in &frames {
        for (binary, payload) in codec::unwrap_frames(frame).unwrap_or_default() {
            queued.push(if binary {
                Queued::Binary(payload)
            } else {
                Queued::Text(payload)
            });
        }
    }
    let mut body = Vec::new();
    // Every queued packet goes out: the client reads bodies of any size.
    engineio::encode_payload(&queued, usize::MAX, &mut body);
    reply_text(body)
}

/// A polling POST: every packet in the body, as if it came over a WebSocket. A bad body
/// ends the session, as engine.io ends it ("parse error").
fn polling_post(svc: &Rc<Services>, key: ConnKey, body: &[u8]) -> SioReply {
    let config = &svc.ctx.config.socketio;
    let limits = PayloadLimits {
        body_bytes_max: config.max_payload_bytes as usize,
        packets_max: config.payload_packets_max,
    };
    let packets = match engineio::decode_payload(body, &limits) {
        Ok(packets) => packets,
        Err(error) => {
            Metrics::inc(&svc.ctx.metrics.protocol_error_closes_total);
            svc.hub.close(key, close_code::POLICY, "");
            return SioReply {
                status: error.http_status(),
                content_type: "application/json",
                body: crate::http::json_error_body(&error.to_string()),
            };
        }
    };
    for packet in packets {
        Metrics::inc(&svc.ctx.metrics.messages_received_total);
        if let Err(reason) = on_eio_packet(svc, key, packet) {
            Metrics::inc(&svc.ctx.metrics.protocol_error_closes_total);
            svc.hub.close(key, close_code::POLICY, &reason);
            return reply_json_error(400, &reason);
        }
    }
    SioReply {
        status: 200,
        content_type: "text/html",
        body: b"ok".to_vec(),
    }
}

/// Whether polling session `sid` exists (on whichever shard owns it).
pub async fn polling_exists(svc: &Rc<Services>, sid: Sid) -> bool {
    upgrade_request(svc, sid, SioUpgradeStep::Check)
        .await
        .is_some()
}

async fn upgrade_request(
    svc: &Rc<Services>,
    sid: Sid,
    step: SioUpgradeStep,
) -> Option<SioSnapshot> {
    let owner = usize::from(sid.owner());
    if owner == svc.ctx.id {
        return owned_upgrade(svc, sid, step).await;
    }
    if owner >= svc.ctx.peers.count() {
        return None;
    }
    let (reply, answer) = futures_channel::oneshot::channel();
    Metrics::inc(&svc.ctx.metrics.socketio_forwarded_total);
    let msg = ShardMsg::SioUpgrade { sid, step, reply };
    svc.ctx.peers.send_to(owner, msg).await.ok()?;
    answer.await.ok().flatten()
}

/// An upgrade step forwarded by another shard: answered by a tracked task (a `Take` may
/// wait for the session's hook calls).
pub fn on_mesh_upgrade(
    svc: &Rc<Services>,
    sid: Sid,
    step: SioUpgradeStep,
    reply: futures_channel::oneshot::Sender<Option<SioSnapshot>>,
) {
    let owner = svc.clone();
    let task = async move {
        let _ = reply.send(owned_upgrade(&owner, sid, step).await);
    };
    if svc.ctx.tasks.spawn(task).is_err() {
        Metrics::inc(&svc.ctx.metrics.tasks_refused_total);
    }
}

/// How often a `Take` looks whether the session's pending answers are sent.
const ANSWERS_PENDING_POLL: Duration = Duration::from_millis(5);

/// Counts an answer a socket.io connection is owed (a hook call) for as long as its task
/// runs (the task holds it), so a polling
/// session is not handed to a WebSocket with an answer still to come: the answer would
/// find the polling session gone. Dropped with the task, whether it ran or not; a stale key
/// makes both ends no-ops.
struct AnswerPending {
    svc: Rc<Services>,
    key: ConnKey,
}

impl AnswerPending {
    fn new(svc: &Rc<Services>, key: ConnKey) -> AnswerPending {
        svc.hub.with_session(key, |s| {
            if let Some(sio) = s.sio.as_mut() {
                sio.answers_pending = sio.answers_pending.saturating_add(1);
            }
        });
        AnswerPending {
            svc: svc.clone(),
            key,
        }
    }
}

impl Drop for AnswerPending {
    fn drop(&mut self) {
        self.svc.hub.with_session(self.key, |s| {
            if let Some(sio) = s.sio.as_mut() {
                sio.answers_pending = sio.answers_pending.saturating_sub(1);
            }
        });
    }
}

/// Waits until polling session `sid` has no answer in flight. A hook call ends by
/// `--app-webhook-timeout-ms` and a subscription wait by the broker's bound, so this does
/// too; it is bounded again here by their sum plus a second. Meanwhile the new WebSocket
/// holds what its client sends (`HELD_MAX`), and what is answered and pushed queues in the
/// polling session, which the hand-over carries.
async fn answers_done(svc: &Services, sid: Sid) {
    let hook_s = svc
        .ctx
        .config
        .app_webhook
        .as_ref()
        .map_or(Duration::ZERO, |w| w.timeout);
    let deadline = Instant::now() + hook_s + SUBSCRIBE_WAIT_MAX + Duration::from_secs(1);
    let pending = || {
        let key = svc.hub.polling_key(&sid)?;
        svc.hub
            .with_polling(key, |p| p.session.sio.as_ref().map(|s| s.answers_pending))
            .flatten()
    };
    while pending().unwrap_or(0) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(ANSWERS_PENDING_POLL).await;
    }
}

/// A step of the upgrade of a polling session this shard owns.
pub async fn owned_upgrade(
    svc: &Rc<Services>,
    sid: Sid,
    step: SioUpgradeStep,
) -> Option<SioSnapshot> {
    if step == SioUpgradeStep::Take {
        answers_done(svc, sid).await;
    }
    let key = svc.hub.polling_key(&sid)?;
    match step {
        SioUpgradeStep::Check => Some(SioSnapshot::default()),
        SioUpgradeStep::Probe => {
            svc.hub.send(key, ws_text(b"6"));
            Some(SioSnapshot::default())
        }
        SioUpgradeStep::Take => {
            let mut snapshot = svc.hub.with_polling(key, |p| SioSnapshot {
                user: p.session.user.as_deref().map(str::to_string),
                claims: p.session.claims.as_deref().cloned(),
                rooms: Vec::new(),
                sockets: p
                    .session
                    .sio
                    .as_ref()
                    .map(|s| s.sockets.clone())
                    .unwrap_or_default(),
                codec_nsp: match p.session.codec {
                    Codec::SocketIo(nsp) => nsp,
                    _ => 0,
                },
                queued: p.take(),
                headers: p.session.sio.as_mut().and_then(|s| s.headers.take()),
                recovering: p.session.recovering.take(),
                positions: Vec::new(),
            })?;
            snapshot.rooms = svc
                .hub
                .rooms_of(key)
                .iter()
                .map(|r| r.to_string())
                .collect();
            // Where its channels are here, read in the same step as the removal: no
            // delivery comes between, so each position splits what it had from what it
            // did not.
            snapshot.positions = positions(svc, &snapshot);
            if let Some(removed) = svc.hub.remove(key) {
                svc.disconnected(removed);
            }
            Some(snapshot)
        }
    }
}

/// The channels a session handed over receives, each with where it is on this shard:
/// `all`, its user's, its rooms and the rooms named by its socket ids. None when it has
/// connected no namespace (nothing was delivered to it, so it is owed nothing yet).
fn positions(svc: &Services, snapshot: &SioSnapshot) -> Vec<(Target, Option<SioPosition>)> {
    if snapshot.sockets.is_empty() {
        return Vec::new();
    }
    let mut targets = vec![Target::All];
    if let Some(user) = &snapshot.user {
        targets.push(Target::User(user.clone()));
    }
    targets.extend(snapshot.rooms.iter().map(|r| Target::Room(r.clone())));
    for (_, socket) in &snapshot.sockets {
        if !snapshot.rooms.iter().any(|r| r == socket.as_str()) {
            targets.push(Target::Room(socket.as_str().to_string()));
        }
    }
    targets
        .into_iter()
        .map(|target| {
            let position = svc.hub.position(&target).map(|p| SioPosition {
                seq: p.seq,
                epoch: p.epoch,
            });
            (target, position)
        })
        .collect()
}

/// Runs an upgrade step for the WebSocket `key` (which names its polling sid); at `Take`
/// the WebSocket adopts the session.
fn upgrade_step(svc: &Rc<Services>, key: ConnKey, step: SioUpgradeStep) {
    let Some(sid) = svc
        .hub
        .with_session(key, |s| s.sio.as_ref().map(|sio| sio.sid))
        .flatten()
    else {
        return;
    };
    if key.index & crate::hub::polling::POLL_BIT != 0 {
        // Upgrade packets belong on the WebSocket, not in a polling body.
        svc.hub.close(key, close_code::POLICY, "");
        return;
    }
    // A session from another shard may have missed pushes, or had some already, in the
    // move; one from this shard moves within one synchronous step and has neither.
    let moved = usize::from(sid.owner()) != svc.ctx.id;
    let owner = svc.clone();
    let task = async move {
        let snapshot = upgrade_request(&owner, sid, step).await;
        if step == SioUpgradeStep::Take {
            match snapshot {
                Some(snapshot) => adopt(&owner, key, snapshot, moved),
                None => owner
                    .hub
                    .close(key, close_code::POLICY, "no polling session to upgrade"),
            }
        }
    };
    if svc.ctx.tasks.spawn(task).is_err() {
        Metrics::inc(&svc.ctx.metrics.tasks_refused_total);
    }
}

/// The WebSocket takes over a polling session: user, rooms, namespace sockets, and what
/// the session had not fetched yet. A session from another shard (`moved`) then replays,
/// per channel, what came after the position it had there: the old shard delivered it
/// nothing after that position, and this shard delivered it nothing before this call, so
/// whatever passed between the two is in the history. Live messages of those channels
/// are held back meanwhile and the ones it had are dropped (`seam`), so it gets
/// every numbered message once, in order. Unnumbered ones (`?scope=local`, emitters and
/// Node servers through `--socketio-adapter`) are not held: one passing in the move may be
/// missed.
fn adopt(svc: &Rc<Services>, key: ConnKey, snapshot: SioSnapshot, moved: bool) {
    if let Some(user) = snapshot.user {
        if svc
            .hub
            .set_user(key, Rc::from(user.as_str()), snapshot.claims.map(Rc::new))
        {
            svc.user_connected(key);
        }
    }
    for room in &snapshot.rooms {
        svc.join_unchecked(key, room);
    }
    // The socket ids name the polling session's key, not this connection's: they become
    // ordinary rooms here (the only sockets that cost an index entry).
    for (_, socket) in &snapshot.sockets {
        svc.join_unchecked(key, socket.as_str());
    }
    let held = svc
        .hub
        .with_session(key, |s| {
            s.codec = Codec::SocketIo(snapshot.codec_nsp);
            let sio = s.sio.as_mut()?;
            sio.sockets = snapshot.sockets;
            sio.connect_deadline_s = 0;
            if snapshot.headers.is_some() {
                sio.headers = snapshot.headers;
            }
            sio.held.take()
        })
        .flatten();
    // A replay the polling session was still running stops there (its task writes to the
    // removed session): it resumes here, after the part that was queued, so the client gets
    // the rest and its `recovered` event. Live messages held back for it are in the
    // history, so the new replay has them (starting it again drops them). Replays that
    // just ended keep their floor against late duplicates.
    let replaying: Vec<(Target, Since)> = snapshot
        .recovering
        .as_ref()
        .map(|r| r.replaying())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(channel, seq, epoch)| {
            Target::parse(&channel).map(|target| (target, Since { seq, epoch }))
        })
        .collect();
    let mut recovering = snapshot.recovering;
    if moved && !snapshot.positions.is_empty() {
        Metrics::inc(&svc.ctx.metrics.socketio_handovers_total);
        // The state goes in first, so the hand-over adds its channels to it.
        if let Some(recovering) = recovering.take() {
            svc.hub
                .with_session(key, |s| s.recovering = Some(recovering));
        }
        // A channel whose replay resumes below needs no hand-over replay: live messages
        // were held on the old shard, so the resumed replay covers the move too.
        let channels: Vec<(Target, Option<Since>)> = snapshot
            .positions
            .into_iter()
            .filter(|(target, _)| !replaying.iter().any(|(t, _)| t == target))
            .map(|(target, position)| {
                let since = position.map(|p| Since {
                    seq: p.seq,
                    epoch: p.epoch,
                });
                (target, since)
            })
            .collect();
        // Starts holding back live messages now, before anything else can be delivered.
        if !channels.is_empty() {
            svc.start_handover(key, channels);
        }
    }
    for frame in snapshot.queued {
        svc.hub.send(key, frame);
    }
    if let Some(recovering) = recovering {
        svc.hub
            .with_session(key, |s| s.recovering = Some(recovering));
    }
    if !replaying.is_empty() {
        svc.start_recovery(key, replaying, false);
    }
    // What the client sent during the hand-over, now that its namespaces are known.
    for inbound in held.map(|h| *h).unwrap_or_default() {
        on_inbound(svc, key, inbound);
    }
}
