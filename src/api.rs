//! The HTTP side of the port: one task per accepted socket reads requests (keep-alive,
//! pipelining, head and body deadlines) and routes them: `GET /ws` upgrades to a WebSocket
//! and hands the socket to the shard; `/api/*`, `/healthz` and `/metrics` are answered here.
//!
//! Routes call `fanout` to publish and never write to any socket but their own. The task is
//! short-lived: once a socket is upgraded, only the small per-connection task remains.

use std::rc::Rc;
use std::time::Instant;

use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde_json::json;

use crate::http::{self, BodyKind, ChunkedDecoder, Head, Method, Progress};
use crate::mesh::{ShardMsg, ShardReport};
use crate::metrics::{self, Metrics, Snapshot};
use crate::shard::Shard;
use crate::ws::handshake;
use crate::{broker, fanout};

/// Bytes read per `read` call while collecting a request.
const READ_CHUNK_BYTES: usize = 4096;

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
async fn read_more(
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
    buf.resize(start + READ_CHUNK_BYTES, 0);
    let read = stream.read(&mut buf[start..]);
    let timer = async {
        glommio::timer::sleep(deadline - now).await;
        Err(std::io::ErrorKind::TimedOut.into())
    };
    let result = futures_lite::future::or(read, timer).await;
    match result {
        Ok(n) => {
            buf.truncate(start + n);
            Ok(n)
        }
        Err(e) => {
            buf.truncate(start);
            if e.kind() == std::io::ErrorKind::TimedOut {
                Err(ReadError::Timeout { started: start > 0 })
            } else {
                Err(ReadError::Io)
            }
        }
    }
}

async fn read_head(
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
        if read_more(stream, buf, deadline).await? == 0 {
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
                if read_more(stream, buf, deadline).await? == 0 {
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
                if read_more(stream, buf, deadline).await? == 0 {
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
        body_bytes_max: config.body_bytes_max,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        let head_deadline = Instant::now() + config.http_head_timeout;
        let head = match read_head(&mut stream, &mut buf, &limits, head_deadline).await {
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
            match read_body(&mut stream, &mut buf, &head, &limits, body_deadline).await {
                Ok(read) => read,
                Err(e) => {
                    answer_read_error(&shard, &mut stream, e).await;
                    return;
                }
            };
        buf.drain(..used);
        let keep_alive = head.keep_alive && shard.is_accepting();
        let response = route(&shard, &head, &body, keep_alive).await;
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
        let response = refuse(
            405,
            "/ws accepts only GET (a WebSocket upgrade)",
            &[("Allow", "GET")],
        );
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
    shard.insert_conn(stream, &mut early);
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

async fn route(shard: &Rc<Shard>, head: &Head, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let method = head.method.as_str();
    let allowed = match head.path.as_str() {
        "/api/broadcast" => "POST",
        "/healthz" | "/api/stats" | "/metrics" => "GET",
        _ => {
            Metrics::inc(&shard.metrics.http_errors_total);
            let message = format!("no route for {}; see docs/API.md", head.path);
            return http::json_error(404, &message, keep_alive);
        }
    };
    if method != allowed {
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
    match head.path.as_str() {
        "/api/broadcast" => broadcast(shard, head, body, keep_alive).await,
        "/healthz" => health(shard, keep_alive).await,
        "/api/stats" => {
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
        "/metrics" => {
            let text = metrics::prometheus(&gather_stats(shard).await);
            http::response(
                200,
                "text/plain; version=0.0.4",
                text.as_bytes(),
                keep_alive,
                &[],
            )
        }
        _ => unreachable!("every path with an allowed method is matched above"),
    }
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

/// `POST /api/broadcast[?scope=local|cluster]`.
async fn broadcast(shard: &Rc<Shard>, head: &Head, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let local = match head.query_param("scope") {
        None | Some("cluster") => shard.broker.is_none(),
        Some("local") => true,
        Some(other) => {
            Metrics::inc(&shard.metrics.http_errors_total);
            let message =
                format!("scope={other}: use scope=local (this process only) or scope=cluster");
            return http::json_error(400, &message, keep_alive);
        }
    };
    let broker = match (&shard.broker, local) {
        (Some(broker), false) => broker,
        _ => {
            let recipients = fanout::broadcast(shard, body).await;
            return json_response(200, json!({ "recipients": recipients }), keep_alive);
        }
    };
    match fanout::publish_cluster(shard, broker, body).await {
        Ok(published) => json_response(
            200,
            json!({ "recipients": published.recipients, "nodes": published.nodes, "id": published.id }),
            keep_alive,
        ),
        Err(e) => {
            Metrics::inc(&shard.metrics.redis_publish_errors_total);
            Metrics::inc(&shard.metrics.http_errors_total);
            let (status, message) = match e {
                broker::Error::Unavailable(why) => (
                    503,
                    format!(
                        "broker {} is unavailable ({why}); nothing was published. Retry later, or use ?scope=local to deliver to this process only",
                        broker.config.display
                    ),
                ),
                broker::Error::Reply(words) => (
                    502,
                    format!("broker {} refused the publish: {words}", broker.config.display),
                ),
            };
            http::json_error(status, &message, keep_alive)
        }
    }
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
