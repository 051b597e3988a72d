//! volley: a WebSocket push engine for Linux. One glommio (io_uring) executor per core, each
//! owning its connections; a broadcast is encoded once and its bytes shared by every
//! recipient.
//!
//! # Layout
//! ```text
//! main.rs            flags -> Config, mimalloc, signals, exit codes
//! server.rs          binds the listeners, raises the fd limit, starts one executor per shard
//! config.rs          Config: every default named and explained; validate() with actionable errors
//! shard.rs           the owner of lifetimes: accept, admit, sweep, mesh and broker loops, shutdown
//! ctx.rs             the small context services take: id, config, clock, peers, metrics, tasks
//! mesh.rs            the only cross-thread types: ShardMsg, Peers (send, gather), Shared
//! listener.rs        socket2 listeners with SO_REUSEPORT and a chosen backlog
//! conn.rs            one upgraded connection: bounded outbound queue, read/write poll
//! hub/               the data plane: connections by key, delivery, per-codec frames, index,
//!                    recovery seam, receipts; no Redis, no wire format
//! backend/           standalone vs cluster: publish, history, inbox, receipts, presence
//!   local.rs         owner-shard numbering, history and inboxes, mesh deliveries
//!   redis.rs         the same through Redis: one atomic script, pub/sub, hashes
//!   history.rs       sans-IO bounded history and inbox stores
//! broker/            Redis links only: client.rs (links, backoff, refcounted SUBSCRIBE),
//!                    resp.rs (sans-IO RESP), keys.rs (every key name and Lua script)
//! services/          user/room operations, broker and mesh messages, recovery (replays)
//! protocol/          the client codec trait, sessions, the one place client ops are handled;
//!                    ops.rs (neutral ops), native.rs (volley's JSON protocol), socketio/
//!                    (Engine.IO, Socket.IO, redis-adapter formats, the socket.io codec)
//! front/             HTTP transport (deadlines, keep-alive, pipelining), the /ws upgrade,
//!                    socketio.rs (Engine.IO handshake, WebSocket upgrade, polling requests)
//! api/               the HTTP routes by area: publish, presence, history, stats
//! http.rs            sans-IO HTTP/1.1 request heads, bodies and responses
//! ws/handshake.rs    sans-IO RFC 6455 upgrade checks and the 101 response
//! ws/frame.rs        sans-IO frames: encode once, decode and unmask client frames, close codes
//! envelope.rs        the MessagePack envelope published messages travel in between processes
//! json.rs            the one strict "is this JSON" check
//! auth.rs            sans-IO JWT verification (HS256, RS256) and API key comparison
//! metrics.rs         per-shard counters, snapshots, JSON and Prometheus text
//! ```

pub mod api;
pub mod auth;
pub mod backend;
pub mod broker;
pub mod config;
pub mod conn;
pub mod ctx;
pub mod envelope;
pub mod front;
pub mod http;
pub mod hub;
pub mod json;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod services;
pub mod shard;
pub mod ws {
    pub mod frame;
    pub mod handshake;
}

/// One log line on stderr: `volley[shard N]: message` (or `volley: message` outside a shard).
#[macro_export]
macro_rules! log {
    ($shard:expr, $($arg:tt)*) => {{
        let shard: Option<usize> = $shard;
        match shard {
            Some(id) => eprintln!("volley[shard {}]: {}", id, format_args!($($arg)*)),
            None => eprintln!("volley: {}", format_args!($($arg)*)),
        }
    }};
}
