//! volley: a WebSocket push engine for Linux. One glommio (io_uring) executor per core, each
//! owning its connections; a broadcast is encoded once and its bytes shared by every
//! recipient.
//!
//! # Layout
//! ```text
//! main.rs            flags -> Config, mimalloc, signals, exit codes
//! server.rs          binds the listeners, raises the fd limit, starts one executor per shard
//! config.rs          Config: every default named and explained; validate() with actionable errors
//! config_file.rs     --config volley.toml (flag > environment > file > default), config check
//! shard.rs           the owner of lifetimes: accept, admit, sweep, mesh and broker loops, shutdown
//! ctx.rs             the small context services take: id, config, clock, peers, metrics, tasks
//! mesh.rs            the only cross-thread types: ShardMsg, Peers (send, gather), Shared
//! listener.rs        socket2 listeners with SO_REUSEPORT and a chosen backlog
//! portlock.rs        one standalone process per port (an abstract unix socket claim)
//! conn.rs            one upgraded connection: bounded outbound queue, read/write poll
//! hub/               the data plane: connections by key, delivery, per-codec frames, index,
//!                    receipts, socket.io sockets by rooms (sockets.rs),
//!                    where each channel is on the shard (positions.rs, for hand-overs);
//!                    no Redis, no wire format
//! backend/           standalone vs cluster: publish, history, inbox, receipts, presence
//!   local.rs         owner-shard numbering, history and inboxes, mesh deliveries
//!   redis.rs         the same through Redis: one atomic script, pub/sub, hashes
//!   socketio.rs      --socketio-adapter: volley's broadcasts in socket.io's adapter format
//!   history.rs       sans-IO bounded history and inbox stores
//! broker/            Redis links only: client.rs (links, backoff, refcounted SUBSCRIBE),
//!                    resp.rs (sans-IO RESP), keys.rs (every key name and Lua script)
//! services/          user/room operations, broker and mesh messages, recovery (replays),
//!                    application hooks (hooks.rs: the webhook client and the neutral calls),
//!                    sio_adapter.rs (what emitters and Node servers publish on socket.io's
//!                    Redis channels, acted on for local sockets)
//! protocol/          the client codec trait, sessions, the one place client ops are handled;
//!                    ops.rs (neutral ops), native.rs (volley's JSON protocol), socketio/
//!                    (Engine.IO, Socket.IO, redis-adapter formats, the socket.io codec)
//! front/             HTTP transport (deadlines, keep-alive, pipelining), the /ws upgrade,
//!                    socketio.rs (Engine.IO handshake, WebSocket upgrade, polling requests)
//!                    (plus the opt-in --echo-path upgrade for conformance runs)
//! api/               the HTTP routes by area: publish, presence, history, stats
//! http.rs            sans-IO HTTP/1.1 request heads, bodies and responses
//! ws/handshake.rs    sans-IO RFC 6455 upgrade checks and the 101 response
//! ws/frame.rs        sans-IO frames: encode once, decode and unmask client frames, close codes
//! ws/deflate.rs      sans-IO RFC 7692 permessage-deflate: negotiation, compress once, inflate capped
//! seam.rs            sans-IO seam between a replay and live delivery for one connection
//!                    (held back, released in order, duplicates dropped; moves with a session)
//! envelope.rs        the MessagePack envelope published messages travel in between processes
//! json.rs            the one strict "is this JSON" check
//! origin.rs          sans-IO Origin and Host checks (--allowed-origins, --allowed-hosts)
//! hooks.rs           sans-IO application hooks: the webhook documents and HTTP client parsing
//! auth.rs            sans-IO JWT verification (HS256, RS256) and API key comparison
//! logging.rs         the tracing subscriber: --log-level, RUST_LOG, --log-format text|json
//! metrics.rs         per-shard counters, snapshots, JSON and Prometheus text
//! ```

pub mod api;
pub mod auth;
pub mod backend;
pub mod broker;
pub mod config;
pub mod config_file;
pub mod conn;
pub mod ctx;
pub mod envelope;
pub mod front;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod json;
pub mod listener;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod origin;
pub mod portlock;
pub mod protocol;
pub mod seam;
pub mod server;
pub mod services;
pub mod shard;
pub mod ws {
    pub mod deflate;
    pub mod frame;
    pub mod handshake;
}

/// One log line on stderr through `tracing` (see `logging`): `log!(Some(shard_id), "...")`
/// or `log!(None, "...")` at INFO, or with a level first: `log!(warn, None, "...")`
/// (`error`, `warn`, `info`, `debug`). The shard id becomes the `shard` field. One line per
/// state change: never call it per message on a hot path.
#[macro_export]
macro_rules! log {
    (error, $shard:expr, $($arg:tt)*) => { $crate::log!(@at ERROR, $shard, $($arg)*) };
    (warn, $shard:expr, $($arg:tt)*) => { $crate::log!(@at WARN, $shard, $($arg)*) };
    (info, $shard:expr, $($arg:tt)*) => { $crate::log!(@at INFO, $shard, $($arg)*) };
    (debug, $shard:expr, $($arg:tt)*) => { $crate::log!(@at DEBUG, $shard, $($arg)*) };
    (@at $level:ident, $shard:expr, $($arg:tt)*) => {{
        let shard: Option<usize> = $shard;
        match shard {
            Some(id) => ::tracing::event!(
                target: "volley",
                ::tracing::Level::$level,
                shard = id,
                "{}",
                format_args!($($arg)*)
            ),
            None => ::tracing::event!(
                target: "volley",
                ::tracing::Level::$level,
                "{}",
                format_args!($($arg)*)
            ),
        }
    }};
    ($shard:expr, $($arg:tt)*) => { $crate::log!(@at INFO, $shard, $($arg)*) };
}
