//! Engine.IO 4 on `--socketio-path` (default `/socket.io/`), beside `/ws` on the same port:
//! the query checks with the reference server's error bodies, the WebSocket handshake (the
//! open packet right behind the 101) and the HTTP long-polling requests.
//!
//! Owns transport only. What a client's packets mean is `services::socketio`; polling
//! sessions live in `services::socketio` too, on the shard their sid names: a request that
//! lands on another shard is forwarded over the mesh (`ShardMsg::SioPolling`). Called by
//! `front::serve_http`; an accepted WebSocket goes back to the shard as [`Upgraded`].

use std::rc::Rc;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use super::upgrade::Upgraded;
use crate::http::{self, Head, Method};
use crate::hub::Session;
use crate::metrics::Metrics;
use crate::protocol::socketio::codec::ws_text;
use crate::protocol::socketio::engineio::{self, Action, RequestError, Transport};
use crate::protocol::socketio::session::SioState;
use crate::protocol::Codec;
use crate::services::socketio as sio;
use crate::services::Services;
use crate::ws::handshake;

/// True for requests to the Engine.IO path (with or without its final `/`).
pub fn is_socketio_path(svc: &Services, path: &str) -> bool {
    let configured = &svc.ctx.config.socketio.path;
    path == configured || Some(path) == configured.strip_suffix('/')
}

/// True for a request that asks for a WebSocket upgrade.
pub fn is_upgrade(head: &Head) -> bool {
    head.header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn query<'a>(head: &'a Head) -> engineio::Query<'a> {
    engineio::Query {
        eio: head.query_param("EIO"),
        transport: head.query_param("transport"),
        sid: head.query_param("sid"),
    }
}

fn method(head: &Head) -> engineio::Method {
    match head.method {
        Method::Get => engineio::Method::Get,
        Method::Post => engineio::Method::Post,
        _ => engineio::Method::Other,
    }
}

/// engine.io's `abortRequest`: the JSON error body for a polling request.
pub fn request_error(error: RequestError, keep_alive: bool) -> Vec<u8> {
    http::response(
        error.http_status(),
        "application/json",
        error.body().as_bytes(),
        keep_alive,
        &[],
    )
}

/// engine.io's `abortUpgrade`: `400` with the message as an HTML body, connection closed.
fn upgrade_error(error: RequestError) -> Vec<u8> {
    http::response(400, "text/html", error.message().as_bytes(), false, &[])
}

/// Who connects, as far as the handshake can tell: a `?token=` or `Authorization: Bearer`
/// token (verified; refused with 401 when bad) or `?user=` in open mode. The CONNECT auth
/// payload may name the user later (`services::socketio`).
pub fn identify(svc: &Services, head: &Head) -> Result<Session, (u16, String)> {
    let (user, claims) = super::upgrade::who(svc, head, false)?;
    Ok(Session::new(
        Codec::SocketIo(0),
        user,
        claims,
        svc.ctx.config.client_publish_burst,
    ))
}

/// What a connect hook may see of the handshake's headers, kept only when hooks are on.
fn hook_headers(svc: &Services, head: &Head) -> Option<Box<[(String, String)]>> {
    svc.has_hooks()
        .then(|| crate::hooks::visible_headers(&head.headers).into_boxed_slice())
}

/// A WebSocket upgrade on the Engine.IO path: a new session (no sid), or the upgrade of a
/// polling session (its sid). None when refused (the answer is written).
pub async fn upgrade(
    svc: &Rc<Services>,
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    head: &Head,
) -> Option<Upgraded> {
    let action = match engineio::check_request(&query(head), method(head), true, true) {
        Ok(action) => action,
        Err(error) => {
            Metrics::inc(&svc.ctx.metrics.http_errors_total);
            let _ = stream.write_all(&upgrade_error(error)).await;
            return None;
        }
    };
    let refuse = |status: u16, message: &str| {
        Metrics::inc(&svc.ctx.metrics.http_errors_total);
        http::json_error(status, message, false)
    };
    let accept = match handshake::check(head) {
        Ok(accept) => accept,
        Err(reject) => {
            let _ = stream
                .write_all(&refuse(reject.status(), reject.reason()))
                .await;
            return None;
        }
    };
    // The same Origin rule as /ws (--allowed-origins): a page elsewhere cannot open a
    // socket.io connection with the browser's credentials.
    if let Err((status, message)) = super::upgrade::check_origin(&svc.ctx.config, head) {
        let _ = stream.write_all(&refuse(status, &message)).await;
        return None;
    }
    if !svc.ctx.is_accepting() {
        let _ = stream.write_all(&refuse(503, "server shutting down")).await;
        return None;
    }
    let now_s = svc.ctx.now_s();
    let connect_timeout_s = svc.ctx.config.socketio.connect_timeout_ms.div_ceil(1000);
    let (mut session, sid, hello) = match action {
        Action::Handshake { .. } => {
            let session = match identify(svc, head) {
                Ok(session) => session,
                Err((status, message)) => {
                    let _ = stream.write_all(&refuse(status, &message)).await;
                    return None;
                }
            };
            let sid = sio::random_sid(svc.ctx.id);
            let open = sio::open_packet(svc, sid.as_str(), &[]);
            (session, sid, Some(open))
        }
        Action::Session { sid, .. } => {
            // The upgrade of a polling session: the socket starts empty and adopts the
            // session (user, namespaces, rooms, queued packets) when the client sends `5`.
            let Some(sid) = sio::parse_sid(sid) else {
                let _ = stream
                    .write_all(&upgrade_error(RequestError::UnknownSid))
                    .await;
                return None;
            };
            if !sio::polling_exists(svc, sid).await {
                Metrics::inc(&svc.ctx.metrics.http_errors_total);
                let _ = stream
                    .write_all(&upgrade_error(RequestError::UnknownSid))
                    .await;
                return None;
            }
            let session = Session::new(
                Codec::SocketIo(0),
                None,
                None,
                svc.ctx.config.client_publish_burst,
            );
            (session, sid, None)
        }
    };
    let mut sio_state = SioState::new(sid, now_s + connect_timeout_s);
    sio_state.headers = hook_headers(svc, head);
    session.sio = Some(Box::new(sio_state));
    if !svc.ctx.shared.try_reserve_connection() {
        Metrics::inc(&svc.ctx.metrics.rejected_full_total);
        let _ = stream.write_all(&refuse(503, "server full")).await;
        return None;
    }
    let mut answer = handshake::response_101(&accept);
    if let Some(open) = hello {
        answer.extend_from_slice(&ws_text(open.as_bytes()));
    }
    if stream.write_all(&answer).await.is_err() {
        svc.ctx.shared.release_connection();
        return None;
    }
    let early = buf.split_off(head.head_len);
    drop(buf);
    Some(Upgraded {
        stream,
        early,
        session,
        resume: Vec::new(),
        // socket.io clients do not negotiate permessage-deflate here (yet): plain frames.
        wire: crate::conn::Wire::default(),
    })
}

/// A polling request (GET or POST, or a handshake): the whole HTTP response.
pub async fn polling(svc: &Rc<Services>, head: &Head, body: Vec<u8>, keep_alive: bool) -> Vec<u8> {
    let action = match engineio::check_request(&query(head), method(head), false, true) {
        Ok(action) => action,
        Err(error) => {
            Metrics::inc(&svc.ctx.metrics.http_errors_total);
            return request_error(error, keep_alive);
        }
    };
    let reply = match action {
        Action::Handshake {
            transport: Transport::Polling,
        } => match identify(svc, head) {
            Ok(session) => sio::polling_open(svc, session, hook_headers(svc, head)),
            Err((status, message)) => sio::reply_json_error(status, &message),
        },
        // check_request lets a WebSocket handshake through only as an upgrade.
        Action::Handshake { .. } => sio::reply_error(RequestError::BadRequest),
        Action::Session { sid, transport, .. } => {
            let get_or_post = matches!(head.method, Method::Get | Method::Post);
            if transport != Transport::Polling || !get_or_post {
                sio::reply_error(RequestError::BadRequest)
            } else {
                match sio::parse_sid(sid) {
                    None => sio::reply_error(RequestError::UnknownSid),
                    Some(sid) => {
                        let post = head.method == Method::Post;
                        sio::polling_request(svc, sid, post, body).await
                    }
                }
            }
        }
    };
    if reply.status >= 400 {
        Metrics::inc(&svc.ctx.metrics.http_errors_total);
    }
    http::response(
        reply.status,
        reply.content_type,
        &reply.body,
        keep_alive,
        &[],
    )
}
