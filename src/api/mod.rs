//! The HTTP API: one router (`route`) and its handlers by area (`publish`, `presence`,
//! `history`, `stats`). Every answer is JSON with a status that says what happened.
//!
//! Routes act through `services` and `backend`; they never write to a socket but return
//! the response bytes to `front`, which owns the transport. Called by `front::serve_http`.

pub mod console;
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

/// What a route does. [`ROUTES`] maps each path to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The dev console page (`console.rs`); 404 unless it is on.
    Console,
    Health,
    Metrics,
    Stats,
    Broadcast,
    Batch,
    UserMessages,
    RoomMessages,
    User,
    Room,
    Members,
    UserPresence,
    RoomPresence,
    History,
    Receipt,
}

/// One route of the API: a path template, the methods it takes and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// `/api/users/{id}/messages`: a `{name}` stands for one percent-encoded segment, which
    /// must be a valid name (`protocol::check_name`), else 400.
    pub path: &'static str,
    /// As sent in `Allow`: `GET`, or `PUT, DELETE`. `HEAD` goes with every `GET`.
    pub methods: &'static str,
    pub action: Action,
}

/// Every route `route` answers, the one table the router matches against. `/ws`, the
/// socket.io path and `--echo-path` are upgrades `front` takes before the API is asked.
/// tests/openapi.rs checks that docs/openapi.yaml documents each of these and nothing else.
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    Route { path: "/", methods: "GET", action: Action::Console },
    Route { path: "/healthz", methods: "GET", action: Action::Health },
    Route { path: "/metrics", methods: "GET", action: Action::Metrics },
    Route { path: "/api/stats", methods: "GET", action: Action::Stats },
    Route { path: "/api/broadcast", methods: "POST", action: Action::Broadcast },
    Route { path: "/api/batch", methods: "POST", action: Action::Batch },
    Route { path: "/api/users/{id}/messages", methods: "POST", action: Action::UserMessages },
    Route { path: "/api/rooms/{room}/messages", methods: "POST", action: Action::RoomMessages },
    Route { path: "/api/users/{id}", methods: "GET", action: Action::User },
    Route { path: "/api/rooms/{room}", methods: "GET", action: Action::Room },
    Route { path: "/api/rooms/{room}/members/{user}", methods: "PUT, DELETE", action: Action::Members },
    Route { path: "/api/users/{id}/presence", methods: "GET", action: Action::UserPresence },
    Route { path: "/api/rooms/{room}/presence", methods: "GET", action: Action::RoomPresence },
    Route { path: "/api/channels/{channel}/history", methods: "GET", action: Action::History },
    Route { path: "/api/messages/{id}", methods: "GET", action: Action::Receipt },
];

/// The route whose template matches `path` (no query), with the raw (still
/// percent-encoded) segments that stand for its `{name}`s, in order.
pub fn find(path: &str) -> Option<(&'static Route, Vec<&str>)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    ROUTES.iter().find_map(|route| {
        let template = route.path.trim_start_matches('/').split('/');
        if template.clone().count() != parts.len() {
            return None;
        }
        let mut names = Vec::new();
        for (want, part) in template.zip(&parts) {
            if want.starts_with('{') {
                names.push(*part);
            } else if want != *part {
                return None;
            }
        }
        Some((route, names))
    })
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
    let found = find(&head.path)
        .filter(|(route, _)| route.action != Action::Console || svc.ctx.config.console);
    let Some((route, raw_names)) = found else {
        let message = match head.path.as_str() {
            "/" => "no route for /: the dev console is off (it is on in open mode, or with --console on); see docs/API.md".to_string(),
            path => format!("no route for {path}; see docs/API.md"),
        };
        return error(svc, 404, &message, keep_alive);
    };
    let allowed = route.methods;
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
    let body_max = if route.action == Action::Batch {
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
    if route.path.starts_with("/api/") {
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
    let mut names = Vec::with_capacity(raw_names.len());
    for part in raw_names {
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
    match route.action {
        Action::Console => console::page(keep_alive),
        Action::Health => stats::health(svc, keep_alive).await,
        Action::Metrics => {
            let text = metrics::prometheus(&stats::gather_stats(svc).await);
            http::response(
                200,
                "text/plain; version=0.0.4",
                text.as_bytes(),
                keep_alive,
                &[],
            )
        }
        Action::Stats => stats::stats(svc, keep_alive).await,
        Action::Broadcast => publish::publish_to(svc, head, Target::All, body, keep_alive).await,
        Action::UserMessages => {
            publish::publish_to(svc, head, Target::User(names[0].clone()), body, keep_alive).await
        }
        Action::RoomMessages => {
            publish::publish_to(svc, head, Target::Room(names[0].clone()), body, keep_alive).await
        }
        Action::Batch => publish::batch(svc, body, keep_alive).await,
        Action::User => presence::lookup(svc, Target::User(names[0].clone()), keep_alive).await,
        Action::Room => presence::lookup(svc, Target::Room(names[0].clone()), keep_alive).await,
        Action::Members => {
            presence::membership(svc, &names[0], &names[1], method == "PUT", keep_alive).await
        }
        Action::UserPresence => {
            presence::presence(svc, Target::User(names[0].clone()), keep_alive).await
        }
        Action::RoomPresence => {
            presence::presence(svc, Target::Room(names[0].clone()), keep_alive).await
        }
        Action::History => history::history(svc, head, &names[0], keep_alive).await,
        Action::Receipt => {
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
    }
}
