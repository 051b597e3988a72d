//! The HTTP side of the port: one task per accepted socket reads requests (keep-alive,
//! pipelining, head and body deadlines) and routes them: `GET /ws` upgrades to a WebSocket
//! and hands the socket to the shard; `/api/*`, `/healthz` and `/metrics` are answered here.
//!
//! Routes call `fanout` to publish and never write to any socket but their own. The task is
//! short-lived: once a socket is upgraded, only the small per-connection task remains.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use futures_channel::oneshot;
use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;
use serde_json::json;

use crate::auth::constant_time_eq;
use crate::config::{ClientAuth, BATCH_TARGETS_MAX};
use crate::envelope::{self, PayloadKind, Target, FLAG_CONTROL};
use crate::http::{self, BodyKind, ChunkedDecoder, Head, Method, Progress};
use crate::mesh::{Presence, Publish};
use crate::mesh::{ShardMsg, ShardReport};
use crate::metrics::{self, Metrics, Snapshot};
use crate::protocol::{check_name, Codec, Session};
use crate::shard::Shard;
use crate::ws::handshake;
use crate::{broker, fanout};

/// `?wait=ack` without `timeout_ms`.
const WAIT_ACK_DEFAULT_MS: u64 = 5_000;
/// Longest `?wait=ack&timeout_ms=`: an HTTP request should not hang for minutes.
const WAIT_ACK_MAX_MS: u64 = 60_000;
/// Longest `?resume=` token: room names are short, and rooms per connection are bounded.
const RESUME_TOKEN_BYTES_MAX: usize = 16 * 1024;
/// How often `?wait=ack` looks at the receipt.
const WAIT_ACK_POLL: Duration = Duration::from_millis(20);

/// Why a request could not be read.
enum ReadError {
    /// The client closed the connection cleanly between requests: nothing to answer.
    Closed,
    /// The deadline passed; answer 408 if the client had started a request.
    Timeout { started: bool },
    /// The bytes are not acceptable HTTP; answer with the error's status and close.
    Http(http::Error),
    /// The socket failed: nothing can be answered.
    Io,
}

/// Reads more bytes into `buf` before `deadline`. Returns the number read (0 = EOF).
/// Reads what arrived into `buf`, through the shard's scratch buffer (borrowed only inside
/// one poll), so a socket in its HTTP phase holds exactly the bytes it sent and no
/// read-sized buffer of its own: fewer transient allocations per connection.
async fn read_more(
    shard: &Shard,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, ReadError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(ReadError::Timeout {
            started: !buf.is_empty(),
        });
    }
    let start = buf.len();
    let read = futures_lite::future::poll_fn(|cx| {
        let mut scratch = shard.scratch().borrow_mut();
        let room = (shard.config.batch_bytes_max + shard.config.http_head_bytes_max)
            .saturating_sub(buf.len())
            .clamp(1, scratch.len());
        match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut scratch[..room]) {
            std::task::Poll::Ready(Ok(n)) => {
                buf.extend_from_slice(&scratch[..n]);
                std::task::Poll::Ready(Ok(n))
            }
            other => other,
        }
    });
    let timer = async {
        glommio::timer::sleep(deadline - now).await;
        Err(std::io::ErrorKind::TimedOut.into())
    };
    let result = futures_lite::future::or(read, timer).await;
    match result {
        Ok(n) => Ok(n),
        Err(e) => {
            if e.kind() == std::io::ErrorKind::TimedOut {
                Err(ReadError::Timeout { started: start > 0 })
            } else {
                Err(ReadError::Io)
            }
        }
    }
}

async fn read_head(
    shard: &Shard,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &http::Limits,
    deadline: Instant,
) -> Result<Head, ReadError> {
    loop {
        if !buf.is_empty() {
            match http::parse_head(buf, limits) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Http(e)),
            }
        }
        if read_more(shard, stream, buf, deadline).await? == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Io
            });
        }
    }
}

/// Reads the body that follows `head` (which starts at `buf[0]`). Returns the body and the
/// number of bytes of `buf` the request used, so a pipelined next request stays in `buf`.
async fn read_body(
    shard: &Shard,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &Head,
    limits: &http::Limits,
    deadline: Instant,
) -> Result<(Vec<u8>, usize), ReadError> {
    let expects_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let mut continue_sent = false;
    match head.body {
        BodyKind::None => Ok((Vec::new(), head.head_len)),
        BodyKind::ContentLength(len) => {
            let end = head.head_len + len;
            while buf.len() < end {
                if expects_continue && !continue_sent {
                    continue_sent = true;
                    send_continue(stream).await?;
                }
                if read_more(shard, stream, buf, deadline).await? == 0 {
                    return Err(ReadError::Io);
                }
            }
            Ok((buf[head.head_len..end].to_vec(), end))
        }
        BodyKind::Chunked => {
            let mut decoder = ChunkedDecoder::new(limits.body_bytes_max);
            let mut at = head.head_len;
            loop {
                match decoder.feed(&buf[at..]).map_err(ReadError::Http)? {
                    Progress::Done { consumed } => return Ok((decoder.into_body(), at + consumed)),
                    Progress::NeedMore => at = buf.len(),
                }
                if expects_continue && !continue_sent {
                    continue_sent = true;
                    send_continue(stream).await?;
                }
                if read_more(shard, stream, buf, deadline).await? == 0 {
                    return Err(ReadError::Io);
                }
            }
        }
    }
}

/// RFC 9110 §10.1.1: a client that sent `Expect: 100-continue` waits for this before it
/// sends the body (curl does, for bodies over 1 KiB).
async fn send_continue(stream: &mut TcpStream) -> Result<(), ReadError> {
    stream
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        .await
        .map_err(|_| ReadError::Io)
}

/// Serves one accepted socket until it closes, fails, or becomes a WebSocket.
pub async fn serve_http(shard: Rc<Shard>, mut stream: TcpStream) {
    let config = &shard.config;
    let limits = http::Limits {
        head_bytes_max: config.http_head_bytes_max,
        headers_max: config.http_headers_max,
        // The largest body any route takes (a batch); each route then holds its own cap.
        body_bytes_max: config.batch_bytes_max,
    };
    let mut buf: Vec<u8> = Vec::new();
    let peer = stream.peer_addr().ok();
    loop {
        let head_deadline = Instant::now() + config.http_head_timeout;
        let head = match read_head(&shard, &mut stream, &mut buf, &limits, head_deadline).await {
            Ok(head) => head,
            Err(e) => {
                answer_read_error(&shard, &mut stream, e).await;
                return;
            }
        };
        Metrics::inc(&shard.metrics.http_requests_total);
        if head.path == "/ws" {
            upgrade(&shard, stream, buf, &head).await;
            return;
        }
        let body_deadline = Instant::now() + config.http_body_timeout;
        let (body, used) =
            match read_body(&shard, &mut stream, &mut buf, &head, &limits, body_deadline).await {
                Ok(read) => read,
                Err(e) => {
                    answer_read_error(&shard, &mut stream, e).await;
                    return;
                }
            };
        buf.drain(..used);
        let keep_alive = head.keep_alive && shard.is_accepting();
        let mut response = route(&shard, &head, &body, keep_alive, peer).await;
        // RFC 9110 §9.3.2: HEAD gets GET's headers, Content-Length included, and no content.
        if head.method == Method::Head {
            http::strip_body(&mut response);
        }
        if stream.write_all(&response).await.is_err() || !keep_alive {
            return;
        }
    }
}

async fn answer_read_error(shard: &Shard, stream: &mut TcpStream, e: ReadError) {
    let response = match e {
        ReadError::Closed | ReadError::Io | ReadError::Timeout { started: false } => return,
        ReadError::Timeout { started: true } => {
            http::json_error(408, "request not received in time", false)
        }
        ReadError::Http(e) => http::json_error(e.status(), &e.to_string(), false),
    };
    Metrics::inc(&shard.metrics.http_requests_total);
    Metrics::inc(&shard.metrics.http_errors_total);
    let _ = stream.write_all(&response).await;
}

/// `GET /ws`: check the upgrade, reserve a connection slot, answer 101, hand the socket over.
async fn upgrade(shard: &Rc<Shard>, mut stream: TcpStream, mut buf: Vec<u8>, head: &Head) {
    let refuse = |status: u16, message: &str, extra: &[(&str, &str)]| {
        Metrics::inc(&shard.metrics.http_errors_total);
        let body = json!({ "error": message }).to_string();
        http::response(status, "application/json", body.as_bytes(), false, extra)
    };
    if head.method != Method::Get {
        let mut response = refuse(
            405,
            "/ws accepts only GET (a WebSocket upgrade)",
            &[("Allow", "GET")],
        );
        // RFC 9110 §9.3.2: no content in an answer to HEAD, whatever its status.
        if head.method == Method::Head {
            http::strip_body(&mut response);
        }
        let _ = stream.write_all(&response).await;
        return;
    }
    let accept = match handshake::check(head) {
        Ok(accept) => accept,
        Err(reject) => {
            let extra: &[(&str, &str)] = if reject.status() == 426 {
                &[("Sec-WebSocket-Version", "13")]
            } else {
                &[]
            };
            let response = refuse(reject.status(), reject.reason(), extra);
            let _ = stream.write_all(&response).await;
            return;
        }
    };
    if !shard.is_accepting() {
        let _ = stream
            .write_all(&refuse(
                503,
                "server shutting down",
                &[("Retry-After", "1")],
            ))
            .await;
        return;
    }
    let (session, resume) = match identify(shard, head) {
        Ok(identified) => identified,
        Err((status, message)) => {
            let extra: &[(&str, &str)] = if status == 401 {
                &[("WWW-Authenticate", "Bearer")]
            } else {
                &[]
            };
            let _ = stream.write_all(&refuse(status, &message, extra)).await;
            return;
        }
    };
    if !shard.shared.try_reserve_connection() {
        Metrics::inc(&shard.metrics.rejected_full_total);
        let message = format!(
            "server full: {} connections (--max-connections); try another server or later",
            shard.config.max_connections
        );
        let _ = stream
            .write_all(&refuse(503, &message, &[("Retry-After", "5")]))
            .await;
        return;
    }
    if stream
        .write_all(&handshake::response_101(&accept))
        .await
        .is_err()
    {
        shard.shared.release_connection();
        return;
    }
    let mut early = buf.split_off(head.head_len);
    drop(buf);
    shard.insert_conn(stream, &mut early, session, resume);
}

/// A resume token: base64url (no padding) of a JSON object mapping channels to the last seq
/// the client saw, e.g. `{"user:ann":17,"room:lobby":5,"all":3}` (docs/PROTOCOL.md). Rooms
/// in it are joined again (subject to the token's permissions); a user channel must be the
/// client's own.
pub fn parse_resume(
    token: &str,
    user: Option<&str>,
    rooms_max: usize,
) -> Result<Vec<(Target, u64)>, String> {
    use base64::Engine;
    if token.len() > RESUME_TOKEN_BYTES_MAX {
        return Err(format!(
            "{} bytes; at most {RESUME_TOKEN_BYTES_MAX}",
            token.len()
        ));
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| "not base64url".to_string())?;
    let map: std::collections::BTreeMap<String, u64> = serde_json::from_slice(&json)
        .map_err(|_| "not a JSON object of channel -> seq, e.g. {\"user:ann\":17}".to_string())?;
    if map.len() > rooms_max + 2 {
        return Err(format!("{} channels; at most {}", map.len(), rooms_max + 2));
    }
    map.into_iter()
        .map(|(channel, seq)| {
            let target = Target::parse(&channel)
                .ok_or_else(|| format!("{channel:?} is not all, user:<id> or room:<name>"))?;
            if let Target::User(id) = &target {
                if Some(id.as_str()) != user {
                    return Err(format!(
                        "{channel:?}: you can resume only your own user channel"
                    ));
                }
            }
            Ok((target, seq))
        })
        .collect()
}

fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A `Bearer` credential from the Authorization header.
fn bearer(head: &Head) -> Option<&str> {
    let value = head.header("authorization")?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

/// Who is connecting and with which codec: a verified token when a JWT key is set (401
/// with the reason otherwise), or `?user=` in open mode.
/// Channels to recover at connect, each with the last seq the client saw.
type Resume = Vec<(Target, u64)>;

fn identify(shard: &Shard, head: &Head) -> Result<(Session, Resume), (u16, String)> {
    let codec = Codec::parse(head.query_param("protocol")).map_err(|e| (400, e))?;
    let (user, claims) = match &shard.config.client_auth {
        ClientAuth::Jwt(verifier) => {
            let token = head
                .query_param("token")
                .or_else(|| bearer(head))
                .ok_or_else(|| {
                    (
                        401,
                        "missing token: send ?token=<JWT> or Authorization: Bearer <JWT>"
                            .to_string(),
                    )
                })?;
            let claims = verifier
                .verify(token, unix_now_s())
                .map_err(|e| (401, format!("invalid token: {e}")))?;
            (Some(Rc::from(claims.sub.as_str())), Some(Rc::new(claims)))
        }
        ClientAuth::Open => {
            let user = match head.query_param("user") {
                None => None,
                Some(raw) => {
                    let user = http::percent_decode(raw)
                        .ok_or_else(|| (400, "user: bad percent-encoding".to_string()))?;
                    check_name("user", &user, shard.config.name_bytes_max).map_err(|e| (400, e))?;
                    Some(Rc::from(user.as_ref()))
                }
            };
            (user, None)
        }
    };
    let resume = match head.query_param("resume") {
        None => Vec::new(),
        Some(token) => parse_resume(
            token,
            user.as_deref(),
            shard.config.rooms_per_connection_max,
        )
        .map_err(|e| (400, format!("resume: {e}")))?,
    };
    Ok((
        Session::new(codec, user, claims, shard.config.client_publish_burst),
        resume,
    ))
}

fn json_response(status: u16, value: serde_json::Value, keep_alive: bool) -> Vec<u8> {
    http::response(
        status,
        "application/json",
        value.to_string().as_bytes(),
        keep_alive,
        &[],
    )
}

/// Decodes one path segment (`%XX` escapes; a `+` stays a `+`).
fn segment(raw: &str) -> Option<String> {
    http::percent_decode(&raw.replace('+', "%2B")).map(|s| s.into_owned())
}

fn error(shard: &Shard, status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    Metrics::inc(&shard.metrics.http_errors_total);
    http::json_error(status, message, keep_alive)
}

/// Publishers must send the API key (constant-time compare); with no key configured only
/// loopback clients may publish.
fn authorize(shard: &Shard, head: &Head, peer: Option<SocketAddr>) -> Result<(), (u16, String)> {
    match &shard.config.api_key {
        Some(key) => {
            let given = head.header("x-api-key").or_else(|| bearer(head));
            match given {
                Some(given) if constant_time_eq(given.as_bytes(), key.as_bytes()) => Ok(()),
                Some(_) => Err((401, "wrong API key".into())),
                None => Err((
                    401,
                    "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>".into(),
                )),
            }
        }
        None if peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
        None => Err((
            403,
            "the API answers loopback clients only when volley runs without --api-key".into(),
        )),
    }
}

async fn route(
    shard: &Rc<Shard>,
    head: &Head,
    body: &[u8],
    keep_alive: bool,
    peer: Option<SocketAddr>,
) -> Vec<u8> {
    // RFC 9110 §9.3.2: HEAD is GET without the content (the caller strips it).
    let method = match head.method.as_str() {
        "HEAD" => "GET",
        method => method,
    };
    let parts: Vec<&str> = head.path.trim_start_matches('/').split('/').collect();
    let allowed: &str = match parts.as_slice() {
        ["healthz"] | ["metrics"] | ["api", "stats"] => "GET",
        ["api", "broadcast"] | ["api", "batch"] => "POST",
        ["api", "users", _] | ["api", "rooms", _] | ["api", "messages", _] => "GET",
        ["api", "users", _, "presence"] | ["api", "rooms", _, "presence"] => "GET",
        ["api", "channels", _, "history"] => "GET",
        ["api", "users", _, "messages"] | ["api", "rooms", _, "messages"] => "POST",
        ["api", "rooms", _, "members", _] => "PUT, DELETE",
        _ => {
            let message = format!("no route for {}; see docs/API.md", head.path);
            return error(shard, 404, &message, keep_alive);
        }
    };
    if !allowed.split(", ").any(|m| m == method) {
        Metrics::inc(&shard.metrics.http_errors_total);
        let body = json!({ "error": format!("{} accepts only {allowed}", head.path) }).to_string();
        return http::response(
            405,
            "application/json",
            body.as_bytes(),
            keep_alive,
            &[("Allow", allowed)],
        );
    }
    let body_max = if parts == ["api", "batch"] {
        shard.config.batch_bytes_max
    } else {
        shard.config.body_bytes_max
    };
    if body.len() > body_max {
        let message = format!(
            "request body is {} bytes; this route takes at most {body_max} (--body-bytes-max, or --batch-bytes-max for /api/batch)",
            body.len()
        );
        return error(shard, 413, &message, keep_alive);
    }
    if parts[0] == "api" {
        if let Err((status, message)) = authorize(shard, head, peer) {
            let extra: &[(&str, &str)] = if status == 401 {
                &[("WWW-Authenticate", "Bearer")]
            } else {
                &[]
            };
            Metrics::inc(&shard.metrics.http_errors_total);
            let body = json!({ "error": message }).to_string();
            return http::response(
                status,
                "application/json",
                body.as_bytes(),
                keep_alive,
                extra,
            );
        }
    }
    let mut names = Vec::with_capacity(2);
    for (i, part) in parts.iter().enumerate() {
        if i >= 2 && (i == 2 || i == 4) {
            match segment(part) {
                Some(name) if check_name("name", &name, shard.config.name_bytes_max).is_ok() => {
                    names.push(name)
                }
                _ => {
                    let message = format!(
                        "path segment {part:?}: must be 1..={} bytes of percent-encoded UTF-8 without control characters",
                        shard.config.name_bytes_max
                    );
                    return error(shard, 400, &message, keep_alive);
                }
            }
        }
    }
    match (parts.as_slice(), method) {
        (["healthz"], _) => health(shard, keep_alive).await,
        (["metrics"], _) => {
            let text = metrics::prometheus(&gather_stats(shard).await);
            http::response(
                200,
                "text/plain; version=0.0.4",
                text.as_bytes(),
                keep_alive,
                &[],
            )
        }
        (["api", "stats"], _) => stats(shard, keep_alive).await,
        (["api", "broadcast"], _) => publish_to(shard, head, Target::All, body, keep_alive).await,
        (["api", "users", _, "messages"], _) => {
            publish_to(
                shard,
                head,
                Target::User(names[0].clone()),
                body,
                keep_alive,
            )
            .await
        }
        (["api", "rooms", _, "messages"], _) => {
            publish_to(
                shard,
                head,
                Target::Room(names[0].clone()),
                body,
                keep_alive,
            )
            .await
        }
        (["api", "batch"], _) => batch(shard, body, keep_alive).await,
        (["api", "users", _], _) => lookup(shard, Target::User(names[0].clone()), keep_alive).await,
        (["api", "rooms", _], _) => lookup(shard, Target::Room(names[0].clone()), keep_alive).await,
        (["api", "rooms", _, "members", _], m) => {
            membership(shard, &names[0], &names[1], m == "PUT", keep_alive).await
        }
        (["api", "users", _, "presence"], _) => {
            presence(shard, Target::User(names[0].clone()), keep_alive).await
        }
        (["api", "rooms", _, "presence"], _) => {
            presence(shard, Target::Room(names[0].clone()), keep_alive).await
        }
        (["api", "channels", _, "history"], _) => history(shard, head, &names[0], keep_alive).await,
        (["api", "messages", _], _) => {
            let (delivered, acked) = receipt_total(shard, &names[0]).await;
            json_response(
                200,
                json!({ "id": names[0], "delivered": delivered, "acked": acked }),
                keep_alive,
            )
        }
        _ => error(shard, 404, "no route", keep_alive),
    }
}

async fn stats(shard: &Rc<Shard>, keep_alive: bool) -> Vec<u8> {
    let shards = gather_stats(shard).await;
    let mut total = Snapshot::default();
    let per_shard: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(id, s)| {
            total.merge(s);
            let mut value = s.to_json();
            value["shard"] = id.into();
            value
        })
        .collect();
    json_response(
        200,
        json!({
            "shards": per_shard,
            "total": total.to_json(),
            "process_connections": shard.shared.connections(),
            "max_connections": shard.config.max_connections,
        }),
        keep_alive,
    )
}

/// `GET /healthz`: ok, degraded (cluster mode with a Redis link down, with the reason), or
/// shutting down.
async fn health(shard: &Rc<Shard>, keep_alive: bool) -> Vec<u8> {
    if !shard.is_accepting() {
        return json_response(503, json!({ "status": "shutting_down" }), keep_alive);
    }
    let Some(broker) = &shard.broker else {
        return json_response(
            200,
            json!({ "status": "ok", "shards": shard.shard_count() }),
            keep_alive,
        );
    };
    let problems: Vec<String> = gather_reports(shard)
        .await
        .into_iter()
        .enumerate()
        .filter_map(|(id, r)| r.redis_problem.map(|p| format!("shard {id}: {p}")))
        .collect();
    // Degraded still answers 200: local clients are served, and a load balancer should not
    // pull a node that can still deliver to its own clients.
    let status = if problems.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    let mut answer = json!({
        "status": status,
        "shards": shard.shard_count(),
        "redis": broker.config.display,
        "node": shard.node_id(),
    });
    if !problems.is_empty() {
        answer["reason"] = format!("Redis: {}", problems.join("; ")).into();
    }
    json_response(200, answer, keep_alive)
}

fn publish_error(shard: &Shard, e: broker::Error, keep_alive: bool) -> Vec<u8> {
    Metrics::inc(&shard.metrics.redis_publish_errors_total);
    let broker = shard
        .broker
        .as_ref()
        .map_or("(none)".to_string(), |b| b.config.display.clone());
    let (status, message) = match e {
        broker::Error::Unavailable(why) => (
            503,
            format!(
                "broker {broker} is unavailable ({why}); nothing was published. Retry later, or use ?scope=local to deliver to this process only"
            ),
        ),
        broker::Error::Reply(words) => (502, format!("broker {broker} refused the publish: {words}")),
    };
    error(shard, status, &message, keep_alive)
}

fn published_json(published: &fanout::Published) -> serde_json::Value {
    let mut answer =
        json!({ "id": published.id, "seq": published.seq, "recipients": published.recipients });
    if let Some(nodes) = published.nodes {
        answer["nodes"] = nodes.into();
    }
    answer
}

/// `POST /api/broadcast`, `/api/users/{id}/messages`, `/api/rooms/{room}/messages`, with
/// `?scope=local|cluster` and, for users, `?wait=ack&timeout_ms=N`.
async fn publish_to(
    shard: &Rc<Shard>,
    head: &Head,
    target: Target,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let local = match head.query_param("scope") {
        None | Some("cluster") => false,
        Some("local") => true,
        Some(other) => {
            let message =
                format!("scope={other}: use scope=local (this process only) or scope=cluster");
            return error(shard, 400, &message, keep_alive);
        }
    };
    let wait_ack = match (head.query_param("wait"), &target) {
        (None, _) => None,
        (Some("ack"), Target::User(_)) => {
            let timeout_ms = match head.query_param("timeout_ms").map(str::parse::<u64>) {
                None => WAIT_ACK_DEFAULT_MS,
                Some(Ok(ms)) if (1..=WAIT_ACK_MAX_MS).contains(&ms) => ms,
                Some(_) => {
                    let message = format!("timeout_ms: must be 1..={WAIT_ACK_MAX_MS}");
                    return error(shard, 400, &message, keep_alive);
                }
            };
            Some(Duration::from_millis(timeout_ms))
        }
        (Some("ack"), _) => {
            let message = "wait=ack is for user messages; for rooms and broadcasts use GET /api/messages/{id}";
            return error(shard, 400, message, keep_alive);
        }
        (Some(other), _) => {
            return error(
                shard,
                400,
                &format!("wait={other}: only wait=ack exists"),
                keep_alive,
            )
        }
    };
    let publish = Publish {
        target,
        id: shard.next_message_id(),
        from: None,
        kind: fanout::classify(body),
        payload: Bytes::copy_from_slice(body),
    };
    let outcome = if local {
        fanout::publish_local(shard, publish).await
    } else {
        fanout::publish(shard, publish).await
    };
    let published = match outcome {
        Ok(published) => published,
        Err(e) => return publish_error(shard, e, keep_alive),
    };
    let mut answer = published_json(&published);
    if let Some(timeout) = wait_ack {
        let deadline = Instant::now() + timeout;
        let (mut delivered, mut acked) = receipt_total(shard, &published.id).await;
        while (delivered == 0 || acked < delivered) && Instant::now() < deadline {
            glommio::timer::sleep(WAIT_ACK_POLL).await;
            (delivered, acked) = receipt_total(shard, &published.id).await;
        }
        answer["delivered"] = delivered.into();
        answer["acked"] = acked.into();
        answer["timed_out"] = (delivered == 0 || acked < delivered).into();
    }
    json_response(200, answer, keep_alive)
}

/// `POST /api/batch`: `{"messages":[{"user":"1","data":...},{"room":"r","data":...},
/// {"broadcast":true,"data":...}]}`, published concurrently; one result per message.
async fn batch(shard: &Rc<Shard>, body: &[u8], keep_alive: bool) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Item<'a> {
        user: Option<String>,
        room: Option<String>,
        #[serde(default)]
        broadcast: bool,
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        messages: Vec<Item<'a>>,
    }
    let batch: Batch<'_> = match serde_json::from_slice(body) {
        Ok(batch) => batch,
        Err(e) => {
            let message = format!("body must be {{\"messages\":[{{\"user\"|\"room\"|\"broadcast\": ..., \"data\": ...}}]}}: {e}");
            return error(shard, 400, &message, keep_alive);
        }
    };
    if batch.messages.len() > BATCH_TARGETS_MAX {
        let message = format!(
            "{} messages; at most {BATCH_TARGETS_MAX} per batch",
            batch.messages.len()
        );
        return error(shard, 413, &message, keep_alive);
    }
    let mut publishes = Vec::with_capacity(batch.messages.len());
    for (i, item) in batch.messages.iter().enumerate() {
        let target = match (&item.user, &item.room, item.broadcast) {
            (Some(user), None, false) => Target::User(user.clone()),
            (None, Some(room), false) => Target::Room(room.clone()),
            (None, None, true) => Target::All,
            _ => {
                let message =
                    format!("messages[{i}]: give exactly one of user, room, broadcast:true");
                return error(shard, 400, &message, keep_alive);
            }
        };
        if let Target::User(name) | Target::Room(name) = &target {
            if let Err(e) = check_name("target", name, shard.config.name_bytes_max) {
                return error(shard, 400, &format!("messages[{i}]: {e}"), keep_alive);
            }
        }
        let Some(data) = item.data else {
            return error(shard, 400, &format!("messages[{i}]: no data"), keep_alive);
        };
        publishes.push(Publish {
            target,
            id: shard.next_message_id(),
            from: None,
            kind: PayloadKind::Json,
            payload: Bytes::copy_from_slice(data.get().as_bytes()),
        });
    }
    let outcomes = fanout::publish_many(shard, publishes).await;
    let mut results = Vec::with_capacity(outcomes.len());
    let mut recipients = 0u64;
    for outcome in outcomes {
        match outcome {
            Ok(published) => {
                recipients += published.recipients as u64;
                results.push(published_json(&published));
            }
            Err(e) => results.push(json!({ "error": e.to_string() })),
        }
    }
    json_response(
        200,
        json!({ "results": results, "recipients": recipients }),
        keep_alive,
    )
}

/// `GET /api/users/{id}` and `GET /api/rooms/{room}`: this process's shards, plus the
/// cluster-wide counters in Redis in cluster mode.
async fn lookup(shard: &Rc<Shard>, target: Target, keep_alive: bool) -> Vec<u8> {
    let mut connections = 0u32;
    let mut users: Vec<String> = Vec::new();
    for presence in gather_lookup(shard, &target).await {
        connections += presence.connections;
        users.extend(presence.users);
    }
    users.sort_unstable();
    users.dedup();
    let mut answer = match &target {
        Target::User(user) => {
            json!({ "user": user, "connections": connections, "online": connections > 0 })
        }
        Target::Room(room) => json!({ "room": room, "connections": connections, "members": users }),
        Target::All => json!({ "connections": connections }),
    };
    if shard.broker.is_some() {
        match cluster_presence(shard, &target).await {
            Ok((connections, names)) => {
                answer["cluster"] = match &target {
                    Target::User(_) => {
                        json!({ "connections": connections, "nodes": names, "online": connections > 0 })
                    }
                    _ => json!({ "connections": connections, "members": names }),
                };
            }
            Err(e) => answer["cluster_error"] = e.to_string().into(),
        }
    }
    json_response(200, answer, keep_alive)
}

/// Cluster-wide presence of a user (connections, live nodes) or a room (connections,
/// members), from the counters in Redis, counting only nodes whose heartbeat key is alive:
/// a node that crashed stops counting within `--presence-ttl-s`, and its stale counters
/// are removed as they are found.
async fn cluster_presence(
    shard: &Rc<Shard>,
    target: &Target,
) -> Result<(i64, Vec<String>), broker::Error> {
    let Some(broker) = &shard.broker else {
        return Ok((0, Vec::new()));
    };
    let key = broker.channel(&format!("presence:{target}"));
    let BytesFrame::Array(fields) = broker.command(&[b"HGETALL", key.as_bytes()]).await? else {
        return Ok((0, Vec::new()));
    };
    // (node, member or "", count)
    let mut entries: Vec<(String, String, String, i64)> = Vec::new();
    for pair in fields.chunks(2) {
        if let [BytesFrame::BulkString(field), BytesFrame::BulkString(count)] = pair {
            let field = String::from_utf8_lossy(field).into_owned();
            let count: i64 = std::str::from_utf8(count)
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let (node, member) = match field.split_once('|') {
                Some((node, member)) => (node.to_string(), member.to_string()),
                None => (field.clone(), String::new()),
            };
            entries.push((field, node, member, count));
        }
    }
    let mut nodes: Vec<&str> = entries.iter().map(|(_, n, _, _)| n.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    // This node is alive by definition, heartbeat written yet or not.
    let mut live = std::collections::HashSet::from([shard.node_id().to_string()]);
    let registry = broker.channel("nodes");
    for node in nodes.into_iter().filter(|n| *n != shard.node_id()) {
        let node_key = broker.channel(&format!("node:{node}"));
        let beating = matches!(
            broker.command(&[b"EXISTS", node_key.as_bytes()]).await?,
            BytesFrame::Integer(1)
        );
        // Dead only if it was registered (it had beaten) and its heartbeat has expired; a
        // node that has not beaten yet is just starting.
        let registered = matches!(
            broker
                .command(&[b"SISMEMBER", registry.as_bytes(), node.as_bytes()])
                .await?,
            BytesFrame::Integer(1)
        );
        if beating || !registered {
            live.insert(node.to_string());
        }
    }
    let mut connections = 0;
    let mut names = Vec::new();
    for (field, node, member, count) in &entries {
        if !live.contains(node) {
            broker.command_detached(&[b"HDEL", key.as_bytes(), field.as_bytes()]);
            continue;
        }
        if *count <= 0 {
            continue;
        }
        connections += count;
        match target {
            Target::User(_) => names.push(node.clone()),
            _ if !member.is_empty() => names.push(member.clone()),
            _ => {}
        }
    }
    names.sort_unstable();
    names.dedup();
    Ok((connections, names))
}

/// `GET /api/users/{id}/presence` and `GET /api/rooms/{room}/presence`: cluster-wide in
/// cluster mode (nodes that stopped heartbeating do not count), this process standalone.
async fn presence(shard: &Rc<Shard>, target: Target, keep_alive: bool) -> Vec<u8> {
    let (connections, names) = if shard.broker.is_some() {
        match cluster_presence(shard, &target).await {
            Ok(found) => found,
            Err(e) => return publish_error(shard, e, keep_alive),
        }
    } else {
        let mut connections = 0i64;
        let mut users = Vec::new();
        for presence in gather_lookup(shard, &target).await {
            connections += presence.connections as i64;
            users.extend(presence.users);
        }
        users.sort_unstable();
        users.dedup();
        (connections, users)
    };
    let answer = match &target {
        Target::User(user) => {
            let mut answer =
                json!({ "user": user, "online": connections > 0, "connections": connections });
            if shard.broker.is_some() {
                answer["nodes"] = names.into();
            }
            answer
        }
        Target::Room(room) => {
            json!({ "room": room, "connections": connections, "count": names.len(), "members": names })
        }
        Target::All => json!({ "connections": connections }),
    };
    json_response(200, answer, keep_alive)
}

/// `GET /api/channels/{channel}/history?since=SEQ&limit=N`: what a channel's history holds
/// after a seq, oldest first, with whether that is everything since then.
async fn history(shard: &Rc<Shard>, head: &Head, channel: &str, keep_alive: bool) -> Vec<u8> {
    let Some(target) = Target::parse(channel) else {
        let message = format!("channel {channel:?}: use all, user:<id> or room:<name>");
        return error(shard, 400, &message, keep_alive);
    };
    let since = match head.query_param("since").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(since)) => since,
        Some(Err(_)) => return error(shard, 400, "since: must be an unsigned integer", keep_alive),
    };
    let most = shard.config.history_size.max(1);
    let limit = match head.query_param("limit").map(str::parse::<usize>) {
        None => most,
        Some(Ok(limit)) if (1..=most).contains(&limit) => limit,
        Some(_) => {
            return error(
                shard,
                400,
                &format!("limit: must be 1..={most} (--history-size)"),
                keep_alive,
            )
        }
    };
    let replay = match shard.fetch_history(&target, since, limit).await {
        Ok(replay) => replay,
        Err(e) => return publish_error(shard, e, keep_alive),
    };
    let messages: Vec<serde_json::Value> = replay
        .messages
        .iter()
        .map(|m| {
            let mut message = json!({ "seq": m.seq, "id": m.id, "from": m.from });
            match m.kind {
                PayloadKind::Json => {
                    message["data"] =
                        serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null);
                }
                PayloadKind::Text => message["data"] = String::from_utf8_lossy(&m.payload).into(),
                PayloadKind::Binary => {
                    use base64::Engine;
                    message["data_base64"] = base64::engine::general_purpose::STANDARD
                        .encode(&m.payload)
                        .into();
                }
            }
            message
        })
        .collect();
    json_response(
        200,
        json!({ "channel": channel, "current": replay.current, "complete": replay.complete, "messages": messages }),
        keep_alive,
    )
}

/// `PUT` / `DELETE /api/rooms/{room}/members/{user}`: every connection of the user joins or
/// leaves the room; cluster-wide through the user's Redis channel in cluster mode.
async fn membership(
    shard: &Rc<Shard>,
    room: &str,
    user: &str,
    join: bool,
    keep_alive: bool,
) -> Vec<u8> {
    let op = if join { "join" } else { "leave" };
    let Some(broker) = &shard.broker else {
        let mut changed = 0;
        for peer in 0..shard.shard_count() {
            if peer == shard.id {
                changed += shard.membership(room, user, join);
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let msg = ShardMsg::Membership {
                room: room.to_string(),
                user: user.to_string(),
                join,
                reply,
            };
            if shard.send_to(peer, msg).await.is_ok() {
                changed += answer.await.unwrap_or(0);
            }
        }
        return json_response(
            200,
            json!({ "room": room, "user": user, "op": op, "connections": changed }),
            keep_alive,
        );
    };
    let id = shard.next_message_id();
    let (wire, _) = envelope::encode(&envelope::Envelope {
        origin: shard.node_id().to_string(),
        id: id.clone(),
        target: Target::User(user.to_string()),
        flags: FLAG_CONTROL,
        kind: PayloadKind::Json,
        payload: Bytes::from(json!({ "op": op, "room": room }).to_string()),
        seq: None,
        from: None,
    });
    let channel = broker.channel(&format!("user:{user}"));
    let nodes = match broker
        .command(&[b"PUBLISH", channel.as_bytes(), &wire])
        .await
    {
        Ok(BytesFrame::Integer(n)) => n,
        Ok(other) => {
            return publish_error(
                shard,
                broker::Error::Reply(format!("unexpected reply {other:?}")),
                keep_alive,
            )
        }
        Err(e) => return publish_error(shard, e, keep_alive),
    };
    let changed = if nodes > 0 {
        fanout::await_local_delivery(shard, &id, &format!("user:{user}")).await
    } else {
        0
    };
    json_response(
        200,
        json!({ "room": room, "user": user, "op": op, "connections": changed, "nodes": nodes }),
        keep_alive,
    )
}

/// (delivered, acked) of a message: from Redis in cluster mode, else summed over shards.
async fn receipt_total(shard: &Rc<Shard>, id: &str) -> (u64, u64) {
    if let Some(broker) = &shard.broker {
        let key = broker.channel(&format!("receipt:{id}"));
        if let Ok(BytesFrame::Array(values)) = broker
            .command(&[b"HMGET", key.as_bytes(), b"delivered", b"acked"])
            .await
        {
            let number = |f: Option<&BytesFrame>| match f {
                Some(BytesFrame::BulkString(b)) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                _ => 0,
            };
            return (number(values.first()), number(values.get(1)));
        }
        return (0, 0);
    }
    let mut delivered = 0u64;
    let mut acked = 0u64;
    for peer in 0..shard.shard_count() {
        let (d, a) = if peer == shard.id {
            let r = shard.receipts.borrow().get(id).unwrap_or_default();
            (r.delivered, r.acked)
        } else {
            let (reply, answer) = oneshot::channel();
            let msg = ShardMsg::Receipt {
                id: id.to_string(),
                reply,
            };
            if shard.send_to(peer, msg).await.is_err() {
                continue;
            }
            answer.await.unwrap_or((0, 0))
        };
        delivered += d as u64;
        acked += a as u64;
    }
    (delivered, acked)
}

async fn gather_lookup(shard: &Rc<Shard>, target: &Target) -> Vec<Presence> {
    let mut out = Vec::with_capacity(shard.shard_count());
    for peer in 0..shard.shard_count() {
        if peer == shard.id {
            out.push(shard.lookup(target));
            continue;
        }
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::Lookup {
            target: target.clone(),
            reply,
        };
        if shard.send_to(peer, msg).await.is_ok() {
            out.push(answer.await.unwrap_or_default());
        }
    }
    out
}

/// Every shard's report, indexed by shard id. A shard that is gone reports zeros.
async fn gather_reports(shard: &Rc<Shard>) -> Vec<ShardReport> {
    let mut answers = Vec::new();
    for peer in 0..shard.shard_count() {
        if peer == shard.id {
            answers.push(None);
            continue;
        }
        let (reply, answer) = oneshot::channel();
        match shard.send_to(peer, ShardMsg::Stats { reply }).await {
            Ok(()) => answers.push(Some(answer)),
            Err(_) => answers.push(None),
        }
    }
    let mut out = Vec::with_capacity(answers.len());
    for (peer, answer) in answers.into_iter().enumerate() {
        let report = match answer {
            _ if peer == shard.id => shard.report(),
            Some(answer) => answer.await.unwrap_or_default(),
            None => ShardReport::default(),
        };
        out.push(report);
    }
    out
}

async fn gather_stats(shard: &Rc<Shard>) -> Vec<Snapshot> {
    gather_reports(shard)
        .await
        .into_iter()
        .map(|r| r.snapshot)
        .collect()
}
