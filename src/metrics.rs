//! Per-shard counters (`Cell<u64>`, no atomics on the hot path), a `Snapshot` that can be
//! sent across shards and merged, and its JSON and Prometheus text renderings.
//!
//! Owned by each shard's `Ctx`; incremented by `conn`, `hub`, `backend`, `services`, `front`
//! and `api`; read by `api` for `/api/stats` and `/metrics`.

use std::cell::Cell;
use std::fmt::Write;

/// Declares the counters once; the struct, the snapshot, merge and both renderings follow.
macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident: $kind:literal ),* $(,)?) => {
        /// Live counters of one shard.
        #[derive(Default, Debug)]
        pub struct Metrics {
            $( $(#[doc = $doc])* pub $name: Cell<u64>, )*
        }

        /// A copy of one shard's counters, or their sum over shards.
        #[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl Metrics {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $( $name: self.$name.get(), )* }
            }
        }

        impl Snapshot {
            /// Adds another shard's figures (gauges and counters alike sum across shards).
            pub fn merge(&mut self, other: &Snapshot) {
                $( self.$name += other.$name; )*
            }

            /// Fields as (name, kind, help, value), in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
                vec![ $( (stringify!($name), $kind, concat!($($doc),*), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// Open WebSocket connections.
    connections: "gauge",
    /// TCP connections accepted (WebSocket and HTTP API alike).
    accepted_total: "counter",
    /// WebSocket upgrades completed.
    upgrades_total: "counter",
    /// Upgrades refused with 503 because --max-connections was reached.
    rejected_full_total: "counter",
    /// Sockets closed at accept because too many were still in their HTTP phase.
    rejected_http_sessions_total: "counter",
    /// Accept errors (e.g. EMFILE when the fd limit is reached).
    accept_errors_total: "counter",
    /// HTTP requests answered (API and failed upgrades).
    http_requests_total: "counter",
    /// HTTP requests answered with a 4xx or 5xx status.
    http_errors_total: "counter",
    /// Broadcasts received by this shard (from its API or from another shard).
    broadcasts_total: "counter",
    /// Message frames encoded for deliveries: one per codec in use per delivery per shard
    /// (encode once), however many recipients share it.
    frames_encoded_total: "counter",
    /// permessage-deflate frames made for deliveries and echoes: one per codec per delivery
    /// per shard, shared by every recipient that negotiated deflate.
    frames_compressed_total: "counter",
    /// Compressions that failed (our bug; the plain frame was sent instead).
    compress_errors_total: "counter",
    /// WebSocket frames written to clients.
    frames_sent_total: "counter",
    /// Bytes written to WebSocket clients.
    bytes_sent_total: "counter",
    /// socket send calls made to WebSocket clients (several frames may share one).
    sends_total: "counter",
    /// Data messages received from clients.
    messages_received_total: "counter",
    /// Clients closed with 1008 because their outbound queue was full.
    slow_consumer_closes_total: "counter",
    /// Clients closed for a protocol violation (1002, 1007, 1009).
    protocol_error_closes_total: "counter",
    /// Clients closed because they were silent past --idle-timeout-s.
    idle_closes_total: "counter",
    /// Connections that ended (any reason).
    disconnects_total: "counter",
    /// Cluster mode: 1 when this shard's Redis links are both up.
    redis_up: "gauge",
    /// Cluster mode: Redis links lost after having been up.
    redis_reconnects_total: "counter",
    /// Cluster mode: publishes refused because Redis was down or answered an error.
    redis_publish_errors_total: "counter",
    /// Cluster mode: messages received from Redis subscriptions.
    redis_messages_total: "counter",
    /// Cluster mode: messages from Redis dropped because their envelope did not decode.
    redis_envelope_errors_total: "counter",
    /// Messages replayed from history to recovering clients.
    replayed_total: "counter",
    /// Messages kept in an offline user's inbox (cluster mode: by this shard's publishes).
    inbox_stored_total: "counter",
    /// Cluster mode: inbox copies removed because a catch-up after a reconnect delivered
    /// the message to the user live (Redis had taken the user for offline).
    inbox_caught_up_total: "counter",
    /// Inbox messages delivered to a user's new connection.
    inbox_delivered_total: "counter",
    /// Inbox messages given up after --inbox-deliveries-max unacked deliveries.
    inbox_given_up_total: "counter",
    /// Short tasks (publishes, replays, room events) refused because the shard ran
    /// `SHARD_TASKS_MAX` of them already.
    tasks_refused_total: "counter",
    /// Cluster mode: messages delivered from history after a subscriber reconnect (what the
    /// channel got while the link was down).
    gap_replayed_total: "counter",
    /// Cluster mode: catch-ups after a reconnect that could not read the history.
    gap_replay_errors_total: "counter",
    /// Cluster mode: presence counters written again after Redis may have lost them.
    presence_resyncs_total: "counter",
    /// Calls to --app-webhook (connects and events).
    hook_calls_total: "counter",
    /// Hook calls that gave the client an error (timeout, unreachable, bad answer, queue full).
    hook_errors_total: "counter",
    /// Hook calls past --app-webhook-timeout-ms.
    hook_timeouts_total: "counter",
    /// Hook calls refused at once because --app-webhook-queue-max calls were waiting.
    hook_queue_full_total: "counter",
    /// Sockets opened to the webhook (keep-alive: far fewer than calls).
    hook_connections_total: "counter",
    /// Connects and events the application refused.
    hook_refusals_total: "counter",
    /// Rooms a hook answer asked to join that the connection may not join.
    hook_joins_refused_total: "counter",
    /// socket.io polling requests and upgrade steps this shard forwarded over the mesh to
    /// the shard that owns their session (the sid names it).
    socketio_forwarded_total: "counter",
    /// socket.io polling sessions this shard took over from another shard at their upgrade
    /// to WebSocket (each then replays from history what it missed in the move).
    socketio_handovers_total: "counter",
    /// Channels of such hand-overs that could not be replayed whole (history too short, a
    /// read failed, the numbering restarted): the client got a `recovered: false` event.
    socketio_handover_incomplete_total: "counter",
    /// --socketio-adapter: messages read from socket.io's Redis channels (broadcasts and
    /// requests, from emitters and Node servers; each shard reads its own copy).
    socketio_adapter_messages_total: "counter",
    /// --socketio-adapter: messages on socket.io's channels dropped because they did not
    /// decode (not MessagePack / JSON, a wrong shape, over a limit); the link stays up.
    socketio_adapter_malformed_total: "counter",
    /// --socketio-adapter: volley broadcasts and room pushes written in the adapter format.
    socketio_adapter_published_total: "counter",
    /// --socketio-adapter: answers written to socket.io's response channel.
    socketio_adapter_responses_total: "counter",
}

impl Snapshot {
    /// One JSON object with every field.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, _, _, value) in self.fields() {
            map.insert(name.to_string(), value.into());
        }
        serde_json::Value::Object(map)
    }
}

impl Metrics {
    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get() + n);
    }

    pub fn inc(cell: &Cell<u64>) {
        cell.set(cell.get() + 1);
    }
}

/// Prometheus text exposition (format 0.0.4): one family per field, one sample per shard.
pub fn prometheus(shards: &[Snapshot]) -> String {
    let mut out = String::new();
    let Some(first) = shards.first() else {
        return out;
    };
    for (i, (name, kind, help, _)) in first.fields().into_iter().enumerate() {
        let _ = writeln!(out, "# HELP volley_{name} {}", help.trim());
        let _ = writeln!(out, "# TYPE volley_{name} {kind}");
        for (shard, snapshot) in shards.iter().enumerate() {
            let value = snapshot.fields()[i].3;
            let _ = writeln!(out, "volley_{name}{{shard=\"{shard}\"}} {value}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_every_field() {
        let a = Metrics::default();
        Metrics::add(&a.frames_sent_total, 3);
        Metrics::inc(&a.connections);
        let mut total = a.snapshot();
        total.merge(&a.snapshot());
        assert_eq!(total.frames_sent_total, 6);
        assert_eq!(total.connections, 2);
    }

    #[test]
    fn prometheus_has_help_type_and_a_sample_per_shard() {
        let a = Metrics::default();
        Metrics::add(&a.bytes_sent_total, 42);
        let text = prometheus(&[a.snapshot(), Snapshot::default()]);
        assert!(text.contains("# TYPE volley_bytes_sent_total counter"));
        assert!(text.contains("# TYPE volley_connections gauge"));
        assert!(text.contains("volley_bytes_sent_total{shard=\"0\"} 42"));
        assert!(text.contains("volley_bytes_sent_total{shard=\"1\"} 0"));
        assert!(text.contains("# HELP volley_connections Open WebSocket connections."));
    }

    #[test]
    fn json_has_every_field() {
        let json = Snapshot::default().to_json();
        assert_eq!(
            json.as_object().unwrap().len(),
            Snapshot::default().fields().len()
        );
    }
}
