//! The HTTP front of the port: one task per accepted socket reads requests (keep-alive,
//! pipelining, head and body deadlines, byte caps), answers what cannot be read with the
//! right status, hands `GET /ws` to [`upgrade`] and everything else to `api::route`.
//!
//! Owns transport only: no route knows how bytes arrived, and this module knows no route
//! but the upgrade path. Called by `shard`'s accept loop; an accepted upgrade is returned
//! to it as [`Upgraded`], so the shard alone owns connection lifetimes.

pub mod socketio;
pub mod upgrade;

use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::api;
use crate::http::{self, BodyKind, ChunkedDecoder, Head, Method, Progress};
use crate::metrics::Metrics;
use crate::services::Services;
pub use upgrade::Upgraded;

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
    svc: &Services,
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
        let mut scratch = svc.hub.scratch().borrow_mut();
        let room = (svc.ctx.config.batch_bytes_max + svc.ctx.config.http_head_bytes_max)
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
    svc: &Services,
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
        if read_more(svc, stream, buf, deadline).await? == 0 {
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
    svc: &Services,
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
                if read_more(svc, stream, buf, deadline).await? == 0 {
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
                if read_more(svc, stream, buf, deadline).await? == 0 {
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

/// Serves one accepted socket until it closes or fails (None), or until its upgrade was
/// accepted and answered with 101: the caller (the shard) then owns the connection.
pub async fn serve_http(svc: Rc<Services>, mut stream: TcpStream) -> Option<Upgraded> {
    let config = &svc.ctx.config;
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
        let head = match read_head(&svc, &mut stream, &mut buf, &limits, head_deadline).await {
            Ok(head) => head,
            Err(e) => {
                answer_read_error(&svc, &mut stream, e).await;
                return None;
            }
        };
        Metrics::inc(&svc.ctx.metrics.http_requests_total);
        // Every path, /ws included: a rebound name must not reach the API or a socket.
        // /healthz is exempt: load balancers check it with any Host (haproxy's check in
        // deploy/ sends `Host: volley`) and it tells a page nothing.
        let checked = head.path != "/healthz";
        if let Err(message) = config.origins.host(head.header("host").filter(|_| checked)) {
            Metrics::inc(&svc.ctx.metrics.http_errors_total);
            let _ = stream
                .write_all(&http::json_error(421, &message, false))
                .await;
            return None;
        }
        if head.path == "/ws" {
            return upgrade::upgrade(&svc, stream, buf, &head).await;
        }
        if config.wire.echo_path.as_deref() == Some(head.path.as_str()) {
            return upgrade::upgrade_as(&svc, stream, buf, &head, true).await;
        }
        let socketio = socketio::is_socketio_path(&svc, &head.path);
        if socketio && socketio::is_upgrade(&head) {
            return socketio::upgrade(&svc, stream, buf, &head).await;
        }
        let body_deadline = Instant::now() + config.http_body_timeout;
        let (body, used) =
            match read_body(&svc, &mut stream, &mut buf, &head, &limits, body_deadline).await {
                Ok(read) => read,
                Err(e) => {
                    answer_read_error(&svc, &mut stream, e).await;
                    return None;
                }
            };
        buf.drain(..used);
        let keep_alive = head.keep_alive && svc.ctx.is_accepting();
        let mut response = if socketio {
            socketio::polling(&svc, &head, body, keep_alive).await
        } else {
            api::route(&svc, &head, &body, keep_alive, peer).await
        };
        // RFC 9110 §9.3.2: HEAD gets GET's headers, Content-Length included, and no content.
        if head.method == Method::Head {
            http::strip_body(&mut response);
        }
        if stream.write_all(&response).await.is_err() || !keep_alive {
            return None;
        }
    }
}

async fn answer_read_error(svc: &Services, stream: &mut TcpStream, e: ReadError) {
    let response = match e {
        ReadError::Closed | ReadError::Io | ReadError::Timeout { started: false } => return,
        ReadError::Timeout { started: true } => {
            http::json_error(408, "request not received in time", false)
        }
        ReadError::Http(e) => http::json_error(e.status(), &e.to_string(), false),
    };
    Metrics::inc(&svc.ctx.metrics.http_requests_total);
    Metrics::inc(&svc.ctx.metrics.http_errors_total);
    let _ = stream.write_all(&response).await;
}
