//! `GET /api/channels/{channel}/history`: what a channel's history holds after a seq.
//! Called by `api::route`.

use std::rc::Rc;

use serde_json::json;

use super::publish::read_error;
use super::{error, json_response};
use crate::envelope::{PayloadKind, Target};
use crate::http::Head;
use crate::services::Services;

/// `GET /api/channels/{channel}/history?since=SEQ&limit=N`: what a channel's history holds
/// after a seq, oldest first, with whether that is everything since then.
pub async fn history(svc: &Rc<Services>, head: &Head, channel: &str, keep_alive: bool) -> Vec<u8> {
    let Some(target) = Target::parse(channel) else {
        let message = format!("channel {channel:?}: use all, user:<id> or room:<name>");
        return error(svc, 400, &message, keep_alive);
    };
    let since = match head.query_param("since").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(since)) => since,
        Some(Err(_)) => return error(svc, 400, "since: must be an unsigned integer", keep_alive),
    };
    let most = svc.ctx.config.history_size.max(1);
    let limit = match head.query_param("limit").map(str::parse::<usize>) {
        None => most,
        Some(Ok(limit)) if (1..=most).contains(&limit) => limit,
        Some(_) => {
            return error(
                svc,
                400,
                &format!("limit: must be 1..={most} (--history-size)"),
                keep_alive,
            )
        }
    };
    let replay = match svc.backend.history(&target, since, limit).await {
        Ok(replay) => replay,
        Err(e) => return read_error(svc, "history read", e, keep_alive),
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
