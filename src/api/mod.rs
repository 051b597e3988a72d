//! The HTTP API: one router (`route`) and its handlers by area (`publish`, `presence`,
//! `history`, `stats`). Every answer is JSON with a status that says what happened.
//!
//! Routes act through `services` and `backend`; they never write to a socket but return
//! the response bytes to `front`, which owns the transport. Called by `front::serve_http`.

pub mod history;
pub mod presence;
pub mod publish;
pub mod stats;

use std::net::SocketAddr;
use std::rc::Rc;

use serde_json::json;

use crate::auth::{bearer, constant_time_eq};
use crate::config::RECEIPT_RETENTION_S;
use crate::envelope::Target;
use crate::http::{self, Head};
use crate::metrics::{self, Metrics};
use crate::origin::{refused_message, Verdict};
use crate::protocol::check_name;
use crate::services::Services;

pub(crate) fn json_response(status: u16, value: serde_json::Value, keep_alive: bool) -> Vec<u8> {
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

pub(crate) fn error(svc: &Services, status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    Metrics::inc(&svc.ctx.metrics.http_errors_total);
    http::json_error(status, message, keep_alive)
}

/// Publishers must send the API key (constant-time compare); with no key configured only
/// loopback clients may publish.
fn authorize(svc: &Services, head: &Head, peer: Option<SocketAddr>) -> Result<(), (u16, String)> {
    match &svc.ctx.config.api_key {
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

/// Seconds a browser may cache a CORS preflight answer.
const CORS_MAX_AGE_S: &str = "600";

/// Inserts headers right after the status line of a complete response.
fn insert_headers(response: &mut Vec<u8>, headers: &[(&str, &str)]) {
    let Some(at) = response.windows(2).position(|w| w == b"\r\n") else {
        return;
    };
    let mut extra = Vec::new();
    for (name, value) in headers {
        extra.extend_from_slice(b"\r\n");
        extra.extend_from_slice(name.as_bytes());
        extra.extend_from_slice(b": ");
        extra.extend_from_slice(value.as_bytes());
    }
    response.splice(at..at, extra);
}

/// Every request that is not a WebSocket upgrade. Browser requests (an `Origin` or
/// `Sec-Fetch-Site`) must come from this server's own pages or an origin listed in
/// `--allowed-origins` (403 otherwise, API key or not); listed origins get CORS headers
/// and their preflights answered.
pub async fn route(
    svc: &Rc<Services>,
    head: &Head,
    body: &[u8],
    keep_alive: bool,
    peer: Option<SocketAddr>,
) -> Vec<u8> {
    let origin = head.header("origin");
    let site = head.header("sec-fetch-site");
    let verdict = svc
        .ctx
        .config
        .origins
        .api_origin(origin, site, head.header("host"));
    let cors = match (verdict, origin) {
        (Verdict::Refused, _) => {
            return error(svc, 403, &refused_message(origin, site), keep_alive);
        }
        (Verdict::Listed, Some(origin)) if http_safe(origin) => Some(origin),
        _ => None,
    };
    let mut response = route_checked(svc, head, body, keep_alive, peer, cors.is_some()).await;
    if let Some(origin) = cors {
        insert_headers(
            &mut response,
            &[("Access-Control-Allow-Origin", origin), ("Vary", "Origin")],
        );
    }
    response
}

fn http_safe(value: &str) -> bool {
    !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

async fn route_checked(
    svc: &Rc<Services>,
    head: &Head,
    body: &[u8],
    keep_alive: bool,
    peer: Option<SocketAddr>,
    cors: bool,
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
            return error(svc, 404, &message, keep_alive);
        }
    };
    // A CORS preflight (Fetch §3.2.2) from a listed origin: which methods and headers
    // the real request may use. The caller adds Access-Control-Allow-Origin.
    if cors && method == "OPTIONS" && head.header("access-control-request-method").is_some() {
        return http::response(
            204,
            "",
            b"",
            keep_alive,
            &[
                ("Access-Control-Allow-Methods", allowed),
                (
                    "Access-Control-Allow-Headers",
                    "Authorization, Content-Type, X-API-Key",
                ),
                ("Access-Control-Max-Age", CORS_MAX_AGE_S),
            ],
        );
    }
    if !allowed.split(", ").any(|m| m == method) {
        Metrics::inc(&svc.ctx.metrics.http_errors_total);
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
        svc.ctx.config.batch_bytes_max
    } else {
        svc.ctx.config.body_bytes_max
    };
    if body.len() > body_max {
        let message = format!(
            "request body is {} bytes; this route takes at most {body_max} (--body-bytes-max, or --batch-bytes-max for /api/batch)",
            body.len()
        );
        return error(svc, 413, &message, keep_alive);
    }
    if parts[0] == "api" {
        if let Err((status, message)) = authorize(svc, head, peer) {
            let extra: &[(&str, &str)] = if status == 401 {
                &[("WWW-Authenticate", "Bearer")]
            } else {
                &[]
            };
            Metrics::inc(&svc.ctx.metrics.http_errors_total);
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
                Some(name) if check_name(&name, svc.ctx.config.name_bytes_max).is_ok() => {
                    names.push(name)
                }
                _ => {
                    let message = format!(
                        "path segment {part:?}: must be 1..={} bytes of percent-encoded UTF-8 without control characters",
                        svc.ctx.config.name_bytes_max
                    );
                    return error(svc, 400, &message, keep_alive);
                }
            }
        }
    }
    match (parts.as_slice(), method) {
        (["healthz"], _) => stats::health(svc, keep_alive).await,
        (["metrics"], _) => {
            let text = metrics::prometheus(&stats::gather_stats(svc).await);
            http::response(
                200,
                "text/plain; version=0.0.4",
                text.as_bytes(),
                keep_alive,
                &[],
            )
        }
        (["api", "stats"], _) => stats::stats(svc, keep_alive).await,
        (["api", "broadcast"], _) => {
            publish::publish_to(svc, head, Target::All, body, keep_alive).await
        }
        (["api", "users", _, "messages"], _) => {
            publish::publish_to(svc, head, Target::User(names[0].clone()), body, keep_alive).await
        }
        (["api", "rooms", _, "messages"], _) => {
            publish::publish_to(svc, head, Target::Room(names[0].clone()), body, keep_alive).await
        }
        (["api", "batch"], _) => publish::batch(svc, body, keep_alive).await,
        (["api", "users", _], _) => {
            presence::lookup(svc, Target::User(names[0].clone()), keep_alive).await
        }
        (["api", "rooms", _], _) => {
            presence::lookup(svc, Target::Room(names[0].clone()), keep_alive).await
        }
        (["api", "rooms", _, "members", _], m) => {
            presence::membership(svc, &names[0], &names[1], m == "PUT", keep_alive).await
        }
        (["api", "users", _, "presence"], _) => {
            presence::presence(svc, Target::User(names[0].clone()), keep_alive).await
        }
        (["api", "rooms", _, "presence"], _) => {
            presence::presence(svc, Target::Room(names[0].clone()), keep_alive).await
        }
        (["api", "channels", _, "history"], _) => {
            history::history(svc, head, &names[0], keep_alive).await
        }
        (["api", "messages", _], _) => {
            let (delivered, acked) = svc.backend.receipt_total(&names[0], &svc.hub).await;
            if delivered == 0 && acked == 0 {
                // Receipts exist only for messages queued to someone, for a while.
                let message = format!(
                    "no receipt for message {:?}: unknown id, delivered to no connection, or older than {RECEIPT_RETENTION_S} s",
                    names[0]
                );
                return error(svc, 404, &message, keep_alive);
            }
            json_response(
                200,
                json!({ "id": names[0], "delivered": delivered, "acked": acked }),
                keep_alive,
            )
        }
        _ => error(svc, 404, "no route", keep_alive),
    }
}
