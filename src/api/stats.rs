//! `GET /api/stats`, `GET /healthz` and what `GET /metrics` reads: counters and health
//! summed over the shards of this process. Called by `api::route`.

use std::rc::Rc;

use serde_json::json;

use super::json_response;
use crate::metrics::Snapshot;
use crate::services::Services;

pub async fn stats(svc: &Rc<Services>, keep_alive: bool) -> Vec<u8> {
    let shards = gather_stats(svc).await;
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
            "process_connections": svc.ctx.shared.connections(),
            "max_connections": svc.ctx.config.max_connections,
        }),
        keep_alive,
    )
}

/// `GET /healthz`: ok, degraded (cluster mode with a Redis link down, with the reason), or
/// shutting down.
pub async fn health(svc: &Rc<Services>, keep_alive: bool) -> Vec<u8> {
    if !svc.ctx.is_accepting() {
        return json_response(503, json!({ "status": "shutting_down" }), keep_alive);
    }
    let Some(redis) = &svc.backend.redis else {
        return json_response(
            200,
            json!({ "status": "ok", "shards": svc.ctx.shard_count() }),
            keep_alive,
        );
    };
    let problems: Vec<String> = svc
        .gather_reports()
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
        "shards": svc.ctx.shard_count(),
        "redis": redis.display(),
        "node": svc.ctx.node_id(),
    });
    if !problems.is_empty() {
        answer["reason"] = format!("Redis: {}", problems.join("; ")).into();
    }
    json_response(200, answer, keep_alive)
}

/// Every shard's counters, indexed by shard id.
pub async fn gather_stats(svc: &Services) -> Vec<Snapshot> {
    svc.gather_reports()
        .await
        .into_iter()
        .map(|r| r.snapshot)
        .collect()
}
