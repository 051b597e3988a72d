//! volley: a WebSocket push engine for Linux. One glommio (io_uring) executor per core, each
//! owning its connections; a broadcast is encoded once and its bytes shared by every
//! recipient.
//!
//! # Layout
//! ```text
//! main.rs          flags -> Config, mimalloc, signals, exit codes
//! server.rs        binds the listeners, raises the fd limit, starts one executor per shard
//! config.rs        Config: every default named and explained; validate() with actionable errors
//! shard.rs         the per-core owner: slab of Conns, clock, sweep, accept loop; spawns and stops tasks
//! listener.rs      socket2 listeners with SO_REUSEPORT and a chosen backlog
//! mesh.rs          the only cross-thread types: ShardMsg, the channel mesh, process-wide atomics
//! conn.rs          one upgraded connection: bounded outbound queue, read/write poll
//! http.rs          sans-IO HTTP/1.1 request heads, bodies and responses
//! api.rs           the HTTP routes (upgrade, broadcast, health, stats, metrics)
//! ws/handshake.rs  sans-IO RFC 6455 upgrade checks and the 101 response
//! ws/frame.rs      sans-IO frames: encode once, decode and unmask client frames, close codes
//! fanout.rs        publish -> one frame -> local queues and other shards, or Redis
//! envelope.rs      the MessagePack envelope published messages travel in between processes
//! broker/resp.rs   sans-IO RESP2 glue over redis-protocol
//! broker/client.rs one shard's Redis links: reconnect with backoff, refcounted SUBSCRIBE
//! protocol/        the client protocol boundary: codec choice, sessions, dispatch of client ops
//! protocol/native.rs  sans-IO codec of volley's JSON protocol (docs/PROTOCOL.md)
//! auth.rs          sans-IO JWT verification (HS256, RS256) and API key comparison
//! index.rs         per-shard user -> connections and room -> connections
//! routing.rs       the shard's user/room operations behind client ops and the API
//! receipts.rs      per-shard delivered/acked counts of recent messages
//! history.rs       standalone per-channel history and per-user offline inboxes
//! recovery.rs      the replay/live seam of one recovering connection
//! replay.rs        the shard's history replays, inbox deliveries and history lookups
//! metrics.rs       per-shard counters, snapshots, JSON and Prometheus text
//! ```

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod conn;
pub mod envelope;
pub mod fanout;
pub mod history;
pub mod http;
pub mod index;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod protocol;
pub mod receipts;
pub mod recovery;
pub mod replay;
pub mod routing;
pub mod server;
pub mod shard;
pub mod ws {
    pub mod deflate;
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
