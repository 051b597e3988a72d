//! `POST /api/broadcast`, `/api/users/{id}/messages`, `/api/rooms/{room}/messages` and
//! `POST /api/batch`: publish through the backend and say what happened (200 published,
//! 503 broker unavailable, 502 broker refused). Called by `api::route`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use super::{error, json_response};
use crate::backend::{Error, Published};
use crate::config::BATCH_TARGETS_MAX;
use crate::envelope::{PayloadKind, Target};
use crate::http::{self, Head};
use crate::json;
use crate::mesh::Publish;
use crate::metrics::Metrics;
use crate::protocol::check_name;
use crate::services::Services;

/// `?wait=ack` without `timeout_ms`.
const WAIT_ACK_DEFAULT_MS: u64 = 5_000;
/// Longest `?wait=ack&timeout_ms=`: an HTTP request should not hang for minutes.
const WAIT_ACK_MAX_MS: u64 = 60_000;
/// How often `?wait=ack` looks at the receipt.
const WAIT_ACK_POLL: Duration = Duration::from_millis(20);

/// Longest `Idempotency-Key`: ids travel in every envelope and receipt key.
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// The answer to a publish the broker did not take, saying what happened: 503 nothing was
/// published, 502 Redis refused it, 504 it was written and no answer came (it may have
/// gone out: retry with the same `Idempotency-Key`, or look the id up).
fn publish_error(svc: &Services, id: &str, keyed: bool, e: Error, keep_alive: bool) -> Vec<u8> {
    Metrics::inc(&svc.ctx.metrics.redis_publish_errors_total);
    let broker = svc.backend.redis.as_ref().map_or("(none)", |r| r.display());
    let (status, message) = match e {
        Error::Unavailable(why) => (
            503,
            format!(
                "broker {broker} is unavailable ({why}); nothing was published. Retry later (with the same Idempotency-Key), or use ?scope=local to deliver to this process only, unnumbered"
            ),
        ),
        Error::Reply(words) => (502, format!("broker {broker} refused the publish: {words}; nothing was published")),
        // Only a publish sent with a key can be retried safely: ours are not remembered.
        Error::Unknown(why) if keyed => (
            504,
            format!(
                "broker {broker} took the publish but did not answer ({why}): it may or may not have been published. Retry with the same Idempotency-Key: {id} to publish it at most once, or see GET /api/messages/{id}"
            ),
        ),
        Error::Unknown(why) => (
            504,
            format!(
                "broker {broker} took the publish but did not answer ({why}): it may or may not have been published, and it had no Idempotency-Key, so a retry may publish it twice. See GET /api/messages/{id}; send an Idempotency-Key with publishes you may retry"
            ),
        ),
    };
    Metrics::inc(&svc.ctx.metrics.http_errors_total);
    let body = json!({ "error": message, "id": id }).to_string();
    let retry: &[(&str, &str)] = if status == 503 {
        &[("Retry-After", "1")]
    } else {
        &[]
    };
    http::response(
        status,
        "application/json",
        body.as_bytes(),
        keep_alive,
        retry,
    )
}

/// The answer to a read (presence, history) the broker could not serve, naming the read.
pub(crate) fn read_error(svc: &Services, what: &str, e: Error, keep_alive: bool) -> Vec<u8> {
    let broker = svc.backend.redis.as_ref().map_or("(none)", |r| r.display());
    let (status, message) = match e {
        Error::Unavailable(why) => (
            503,
            format!("broker {broker} is unavailable for the {what} ({why}); retry later"),
        ),
        Error::Reply(words) => (502, format!("broker {broker} refused the {what}: {words}")),
        Error::Unknown(why) => (
            504,
            format!("broker {broker} did not answer the {what} ({why}); retry later"),
        ),
    };
    error(svc, status, &message, keep_alive)
}

/// The message id and whether it is the request's `Idempotency-Key` (a retry with the same
/// key publishes at most once in cluster mode) rather than a new one.
fn message_id(svc: &Services, head: &Head) -> Result<(String, bool), String> {
    let Some(key) = head.header("idempotency-key") else {
        return Ok((svc.ctx.next_message_id(), false));
    };
    let key = key.trim();
    let printable = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX || !printable {
        return Err(format!(
            "Idempotency-Key: must be 1..={IDEMPOTENCY_KEY_BYTES_MAX} printable ASCII characters without spaces"
        ));
    }
    Ok((key.to_string(), true))
}

/// `?event=` (percent-decoded), checked: None for none or `message`.
fn event_param(head: &Head) -> Result<Option<String>, String> {
    let Some(raw) = head.query_param("event") else {
        return Ok(None);
    };
    let name =
        http::percent_decode(raw).ok_or("event: a bad %-escape, or not UTF-8 once decoded")?;
    crate::envelope::event_name(Some(&name))
}

fn published_json(published: &Published) -> serde_json::Value {
    let mut answer =
        json!({ "id": published.id, "seq": published.seq, "recipients": published.recipients });
    if let Some(nodes) = published.nodes {
        answer["nodes"] = nodes.into();
    }
    if let Some(epoch) = published.epoch {
        answer["epoch"] = epoch.into();
    }
    if published.duplicate {
        answer["duplicate"] = true.into();
    }
    if published.inbox {
        answer["inbox"] = true.into();
    }
    answer
}

/// `POST /api/broadcast`, `/api/users/{id}/messages`, `/api/rooms/{room}/messages`, with
/// `?scope=local|cluster`, `?event=<name>` (the event clients get it as; `message` by
/// default) and, for users, `?wait=ack&timeout_ms=N`.
pub async fn publish_to(
    svc: &Rc<Services>,
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
            return error(svc, 400, &message, keep_alive);
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
                    return error(svc, 400, &message, keep_alive);
                }
            };
            Some(Duration::from_millis(timeout_ms))
        }
        (Some("ack"), _) => {
            let message = "wait=ack is for user messages; for rooms and broadcasts use GET /api/messages/{id}";
            return error(svc, 400, message, keep_alive);
        }
        (Some(other), _) => {
            return error(
                svc,
                400,
                &format!("wait={other}: only wait=ack exists"),
                keep_alive,
            )
        }
    };
    let event = match event_param(head) {
        Ok(event) => event,
        Err(message) => return error(svc, 400, &message, keep_alive),
    };
    let (id, keyed) = match message_id(svc, head) {
        Ok(id) => id,
        Err(message) => return error(svc, 400, &message, keep_alive),
    };
    let publish = Publish {
        target,
        id: id.clone(),
        from: None,
        event,
        kind: json::classify(body),
        payload: Bytes::copy_from_slice(body),
    };
    let outcome = if local {
        svc.backend.publish_local(publish).await
    } else {
        svc.backend.publish_keyed(publish, keyed).await
    };
    let published = match outcome {
        Ok(published) => published,
        Err(e) => return publish_error(svc, &id, keyed, e, keep_alive),
    };
    let mut answer = published_json(&published);
    if let Some(timeout) = wait_ack {
        let deadline = Instant::now() + timeout;
        let (mut delivered, mut acked) = svc.backend.receipt_total(&published.id, &svc.hub).await;
        while (delivered == 0 || acked < delivered) && Instant::now() < deadline {
            glommio::timer::sleep(WAIT_ACK_POLL).await;
            (delivered, acked) = svc.backend.receipt_total(&published.id, &svc.hub).await;
        }
        answer["delivered"] = delivered.into();
        answer["acked"] = acked.into();
        answer["timed_out"] = (delivered == 0 || acked < delivered).into();
    }
    json_response(200, answer, keep_alive)
}

/// `POST /api/batch`: `{"messages":[{"user":"1","data":...},{"room":"r","data":...},
/// {"broadcast":true,"data":...}]}` (each may name its `event`), published concurrently;
/// one result per message.
pub async fn batch(svc: &Rc<Services>, body: &[u8], keep_alive: bool) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Item<'a> {
        user: Option<String>,
        room: Option<String>,
        #[serde(default)]
        broadcast: bool,
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
        event: Option<String>,
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
            return error(svc, 400, &message, keep_alive);
        }
    };
    if batch.messages.len() > BATCH_TARGETS_MAX {
        let message = format!(
            "{} messages; at most {BATCH_TARGETS_MAX} per batch",
            batch.messages.len()
        );
        return error(svc, 413, &message, keep_alive);
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
                return error(svc, 400, &message, keep_alive);
            }
        };
        if let Target::User(name) | Target::Room(name) = &target {
            if let Err(e) = check_name(name, svc.ctx.config.name_bytes_max) {
                let message = format!("messages[{i}]: {}", e.message("target name"));
                return error(svc, 400, &message, keep_alive);
            }
        }
        let Some(data) = item.data else {
            return error(svc, 400, &format!("messages[{i}]: no data"), keep_alive);
        };
        // The one JSON check (`json::is_strict`): RawValue alone would pass "\ud800", which
        // strict client parsers refuse.
        if let Err(e) = json::is_strict(data.get()) {
            let message = format!("messages[{i}].data is not JSON every client can parse: {e}");
            return error(svc, 400, &message, keep_alive);
        }
        let event = match crate::envelope::event_name(item.event.as_deref()) {
            Ok(event) => event,
            Err(e) => return error(svc, 400, &format!("messages[{i}]: {e}"), keep_alive),
        };
        publishes.push(Publish {
            target,
            id: svc.ctx.next_message_id(),
            from: None,
            event,
            kind: PayloadKind::Json,
            payload: Bytes::copy_from_slice(data.get().as_bytes()),
        });
    }
    let outcomes = svc.backend.publish_many(publishes).await;
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
