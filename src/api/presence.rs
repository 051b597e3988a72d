//! Who is there: `GET /api/users/{id}` and `/api/rooms/{room}` (this process, plus the
//! cluster's counters), `GET .../presence` (cluster-wide, or this process standalone), and
//! server-side membership `PUT`/`DELETE /api/rooms/{room}/members/{user}`. Called by
//! `api::route`.

use std::rc::Rc;

use bytes::Bytes;
use serde_json::json;

use super::json_response;
use super::publish::read_error;
use crate::envelope::Target;
use crate::services::Services;

/// `GET /api/users/{id}` and `GET /api/rooms/{room}`: this process's shards, plus the
/// cluster-wide counters in Redis in cluster mode.
pub async fn lookup(svc: &Rc<Services>, target: Target, keep_alive: bool) -> Vec<u8> {
    let mut connections = 0u32;
    let mut users: Vec<String> = Vec::new();
    for presence in svc.gather_lookup(&target).await {
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
    if let Some(redis) = &svc.backend.redis {
        match redis.presence(&target).await {
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

/// `GET /api/users/{id}/presence` and `GET /api/rooms/{room}/presence`: cluster-wide in
/// cluster mode (nodes that stopped heartbeating do not count), this process standalone.
pub async fn presence(svc: &Rc<Services>, target: Target, keep_alive: bool) -> Vec<u8> {
    let (connections, names) = if let Some(redis) = &svc.backend.redis {
        match redis.presence(&target).await {
            Ok(found) => found,
            Err(e) => return read_error(svc, "presence read", e, keep_alive),
        }
    } else {
        let mut connections = 0i64;
        let mut users = Vec::new();
        for presence in svc.gather_lookup(&target).await {
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
            if svc.backend.is_cluster() {
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

/// `PUT` / `DELETE /api/rooms/{room}/members/{user}`: every connection of the user joins or
/// leaves the room; cluster-wide through the user's Redis channel in cluster mode.
pub async fn membership(
    svc: &Rc<Services>,
    room: &str,
    user: &str,
    join: bool,
    keep_alive: bool,
) -> Vec<u8> {
    let op = if join { "join" } else { "leave" };
    let Some(redis) = &svc.backend.redis else {
        let changed = svc.gather_membership(room, user, join).await;
        return json_response(
            200,
            json!({ "room": room, "user": user, "op": op, "connections": changed }),
            keep_alive,
        );
    };
    let payload = Bytes::from(json!({ "op": op, "room": room }).to_string());
    let (nodes, id) = match redis.publish_control(user, payload).await {
        Ok(published) => published,
        Err(e) => return read_error(svc, "membership change", e, keep_alive),
    };
    let changed = if nodes > 0 {
        redis
            .await_local_delivery(&id, &format!("user:{user}"))
            .await
    } else {
        0
    };
    json_response(
        200,
        json!({ "room": room, "user": user, "op": op, "connections": changed, "nodes": nodes }),
        keep_alive,
    )
}
