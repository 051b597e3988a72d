//! The WebSocket upgrade on `/ws`: the RFC 6455 checks (`ws::handshake`), who is
//! connecting (a verified token, or `?user=` in open mode), what it speaks (`?protocol=`),
//! what it resumes (`?resume=`), its `Origin` ([`check_origin`], shared with every other
//! WebSocket path), and a slot under `--max-connections`; then the 101.
//!
//! Called by `front::serve_http`; the accepted socket goes back to the shard as
//! [`Upgraded`].

use std::rc::Rc;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use serde_json::json;

use crate::auth::{self, Claims};
use crate::config::{ClientAuth, Compression, Config};
use crate::conn::Wire;
use crate::envelope::Target;
use crate::http::{self, Head, Method};
use crate::hub::Session;
use crate::metrics::Metrics;
use crate::origin;
use crate::protocol::{check_name, Codec, Since};
use crate::services::Services;
use crate::ws::{deflate, handshake};

/// Longest `?resume=` token: room names are short, and rooms per connection are bounded.
const RESUME_TOKEN_BYTES_MAX: usize = 16 * 1024;

/// An accepted upgrade, 101 written: the socket, the bytes the client sent behind its
/// request, who it is and what it resumes.
pub struct Upgraded {
    pub stream: TcpStream,
    pub early: Vec<u8>,
    pub session: Session,
    pub resume: Vec<(Target, Since)>,
    /// permessage-deflate as agreed in the 101, and whether this is an echo connection.
    pub wire: Wire,
}

/// `GET /ws`: check the upgrade, reserve a connection slot, answer 101, hand the socket
/// over. None when it was refused (the answer is written).
pub async fn upgrade(
    svc: &Rc<Services>,
    stream: TcpStream,
    buf: Vec<u8>,
    head: &Head,
) -> Option<Upgraded> {
    upgrade_as(svc, stream, buf, head, false).await
}

/// The upgrade of `/ws`, or of `--echo-path` with `echo` (a conformance echo connection:
/// same checks, same slab and queue limits, its messages echoed instead of handled).
pub async fn upgrade_as(
    svc: &Rc<Services>,
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    head: &Head,
    echo: bool,
) -> Option<Upgraded> {
    let refuse = |status: u16, message: &str, extra: &[(&str, &str)]| {
        Metrics::inc(&svc.ctx.metrics.http_errors_total);
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
        return None;
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
            return None;
        }
    };
    if let Err((status, message)) = check_origin(&svc.ctx.config, head) {
        let _ = stream.write_all(&refuse(status, &message, &[])).await;
        return None;
    }
    if !svc.ctx.is_accepting() {
        let _ = stream
            .write_all(&refuse(
                503,
                "server shutting down",
                &[("Retry-After", "1")],
            ))
            .await;
        return None;
    }
    let (session, resume) = match identify(svc, head) {
        Ok(identified) => identified,
        Err((status, message)) => {
            let extra: &[(&str, &str)] = if status == 401 {
                &[("WWW-Authenticate", "Bearer")]
            } else {
                &[]
            };
            let _ = stream.write_all(&refuse(status, &message, extra)).await;
            return None;
        }
    };
    if !svc.ctx.shared.try_reserve_connection() {
        Metrics::inc(&svc.ctx.metrics.rejected_full_total);
        let message = format!(
            "server full: {} connections (--max-connections); try another server or later",
            svc.ctx.config.max_connections
        );
        let _ = stream
            .write_all(&refuse(503, &message, &[("Retry-After", "5")]))
            .await;
        return None;
    }
    // RFC 7692 §5: accept one offer or none; an offer we cannot take is declined by
    // answering without the extension, never by failing the handshake.
    let wire_config = &svc.ctx.config.wire;
    let agreement = match wire_config.compression {
        Compression::On => deflate::negotiate(
            head.headers_named("sec-websocket-extensions"),
            &wire_config.deflate_policy,
        ),
        Compression::Off => None,
    };
    let extensions = agreement.as_ref().map(deflate::Agreement::response_value);
    if stream
        .write_all(&handshake::response_101_with(
            &accept,
            extensions.as_deref(),
        ))
        .await
        .is_err()
    {
        svc.ctx.shared.release_connection();
        return None;
    }
    let early = buf.split_off(head.head_len);
    drop(buf);
    Some(Upgraded {
        stream,
        early,
        session,
        resume,
        wire: Wire::new(agreement.as_ref(), echo),
    })
}

/// The `Origin` check every WebSocket path makes (`/ws`, socket.io): no `Origin` (not a
/// browser), this server's own origin, or one in `--allowed-origins`; 403 otherwise.
pub fn check_origin(config: &Config, head: &Head) -> Result<(), (u16, String)> {
    let origin = head.header("origin");
    if config
        .origins
        .websocket_origin(origin, head.header("host"))
        .allowed()
    {
        Ok(())
    } else {
        Err((403, origin::refused_message(origin, None)))
    }
}

/// A resume token: base64url (no padding) of a JSON object mapping channels to where the
/// client is, e.g. `{"user:ann":[17,3141592653],"room:lobby":5}` (docs/PROTOCOL.md): a
/// channel's last seq, or `[seq, epoch]` with the epoch of the numbering that seq belongs to
/// (messages carry it). Rooms in it are joined again (subject to the token's permissions); a
/// user channel must be the client's own.
pub fn parse_resume(
    token: &str,
    user: Option<&str>,
    rooms_max: usize,
) -> Result<Vec<(Target, Since)>, String> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Position {
        Seq(u64),
        WithEpoch(u64, u64),
    }
    if token.len() > RESUME_TOKEN_BYTES_MAX {
        return Err(format!(
            "{} bytes; at most {RESUME_TOKEN_BYTES_MAX}",
            token.len()
        ));
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| "not base64url".to_string())?;
    let map: std::collections::BTreeMap<String, Position> =
        serde_json::from_slice(&json).map_err(|_| {
            "not a JSON object of channel -> seq or [seq, epoch], e.g. {\"user:ann\":17}"
                .to_string()
        })?;
    if map.len() > rooms_max + 2 {
        return Err(format!("{} channels; at most {}", map.len(), rooms_max + 2));
    }
    map.into_iter()
        .map(|(channel, position)| {
            let target = Target::parse(&channel)
                .ok_or_else(|| format!("{channel:?} is not all, user:<id> or room:<name>"))?;
            if let Target::User(id) = &target {
                if Some(id.as_str()) != user {
                    return Err(format!(
                        "{channel:?}: you can resume only your own user channel"
                    ));
                }
            }
            let since = match position {
                Position::Seq(seq) => Since { seq, epoch: None },
                Position::WithEpoch(seq, epoch) => Since {
                    seq,
                    epoch: Some(epoch),
                },
            };
            Ok((target, since))
        })
        .collect()
}

/// Channels to recover at connect, each with where the client is.
type Resume = Vec<(Target, Since)>;

/// A user and their token's claims, as a handshake establishes them.
pub type Identity = (Option<Rc<str>>, Option<Rc<Claims>>);

/// Who is connecting: a verified `?token=` or `Authorization: Bearer` token when a JWT key
/// is set (401 with the reason when it is bad), or `?user=` in open mode. `token_required`:
/// a missing token is a 401 (`/ws`); socket.io clients may give theirs later, in CONNECT,
/// so for them a missing one leaves the connection anonymous for now.
pub fn who(svc: &Services, head: &Head, token_required: bool) -> Result<Identity, (u16, String)> {
    match &svc.ctx.config.client_auth {
        ClientAuth::Jwt(verifier) => {
            let Some(token) = head.query_param("token").or_else(|| auth::bearer(head)) else {
                if token_required {
                    return Err((
                        401,
                        "missing token: send ?token=<JWT> or Authorization: Bearer <JWT>"
                            .to_string(),
                    ));
                }
                return Ok((None, None));
            };
            let claims = verifier
                .verify(token, svc.ctx.unix_now_s())
                .map_err(|e| (401, format!("invalid token: {e}")))?;
            Ok((Some(Rc::from(claims.sub.as_str())), Some(Rc::new(claims))))
        }
        ClientAuth::Open => match head.query_param("user") {
            None => Ok((None, None)),
            Some(raw) => {
                let user = http::percent_decode(raw)
                    .ok_or_else(|| (400, "user: bad percent-encoding".to_string()))?;
                check_name(&user, svc.ctx.config.name_bytes_max)
                    .map_err(|e| (400, e.message("user")))?;
                Ok((Some(Rc::from(user.as_ref())), None))
            }
        },
    }
}

/// Who is connecting to `/ws`, with which codec, resuming what.
fn identify(svc: &Services, head: &Head) -> Result<(Session, Resume), (u16, String)> {
    let codec = Codec::parse(head.query_param("protocol")).map_err(|e| (400, e))?;
    let (user, claims) = who(svc, head, true)?;
    let resume = match head.query_param("resume") {
        None => Vec::new(),
        Some(token) => parse_resume(
            token,
            user.as_deref(),
            svc.ctx.config.rooms_per_connection_max,
        )
        .map_err(|e| (400, format!("resume: {e}")))?,
    };
    Ok((
        Session::new(codec, user, claims, svc.ctx.config.client_publish_burst),
        resume,
    ))
}
