//! Command-line flags and the checked `Config` every other module reads.
//!
//! Owns every default (a named const whose doc says why) and `validate()`, which turns raw
//! flags into typed values or an error a user can act on. Called once by `main.rs`; nothing
//! downstream re-checks what is checked here.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;

/// Loopback by default: the HTTP API has no authentication yet, so exposing it is a choice the
/// operator makes with `--listen 0.0.0.0:8080`.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// Enough to absorb a reconnect storm of a few thousand clients per shard between two accept
/// loop turns; the kernel caps it at `net.core.somaxconn` (see tuning/).
pub const BACKLOG_DEFAULT: u32 = 4096;
/// The design target for one box (DESIGN.md): 128k connections.
pub const MAX_CONNECTIONS_DEFAULT: usize = 131_072;
/// Request heads of real browsers and API clients fit in 8 KiB; nginx uses the same default.
pub const HTTP_HEAD_BYTES_MAX_DEFAULT: usize = 8 * 1024;
/// More headers than this is an attack or a bug, not a client.
pub const HTTP_HEADERS_MAX_DEFAULT: usize = 64;
/// A slowloris client gets this long to send a full request head, and an idle keep-alive API
/// client this long to start its next request.
pub const HTTP_HEAD_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Time to receive a request body once the head is in.
pub const HTTP_BODY_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Largest publish body: push messages are small; 64 KiB leaves room for rich payloads.
pub const BODY_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Largest `POST /api/batch` body: 10,000 short targeted messages fit in 4 MiB.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Largest message a client may send (after reassembly of fragments).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Most frames one client message may be split into (`ws::frame::Limits`). Without a
/// cap a client keeps a message open forever with empty continuation frames, each a
/// header parse and a wakeup that adds no byte to `--message-bytes-max`. Browsers send
/// one frame per message; 1024 still carries the default 64 KiB message in 64-byte
/// fragments (Autobahn 9.x's smallest). A larger `--message-bytes-max` in small
/// fragments needs a larger cap: Autobahn 9.3/9.4 send 4 MiB in 64-byte fragments,
/// 65,536 frames.
pub const MESSAGE_FRAGMENTS_MAX_DEFAULT: usize = 1024;
/// Largest `--message-fragments-max`: 64 MiB (the largest `--message-bytes-max`) in
/// 64-byte fragments.
pub const MESSAGE_FRAGMENTS_MAX_MAX: usize = 1 << 20;
/// Frames queued for one client before it counts as a slow consumer and is closed with 1008.
/// At one broadcast every few seconds, 1024 frames is minutes of backlog.
pub const OUTBOUND_FRAMES_MAX_DEFAULT: usize = 1024;
/// Bytes queued for one client before it is closed with 1008. The frames are shared `Bytes`,
/// so this bounds how long one slow client can pin broadcast buffers, not a copy per client.
pub const OUTBOUND_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// socket.io's default ping interval; below common proxy idle timeouts (60 s).
pub const PING_INTERVAL_S_DEFAULT: u64 = 25;
/// Two missed pings and a margin: a client silent this long is gone.
pub const IDLE_TIMEOUT_S_DEFAULT: u64 = 60;
/// How long shutdown waits for clients to receive their 1001 close before exiting anyway.
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 5_000;
/// After the server sends a close frame it waits this long for the client's close reply.
pub const CLOSE_TIMEOUT_MS: u64 = 2_000;
/// Bytes of a per-shard scratch buffer used for every socket read; no connection owns one.
pub const READ_SCRATCH_BYTES: usize = 64 * 1024;
/// Bytes of a per-shard buffer that joins queued frames into one send.
pub const WRITE_SCRATCH_BYTES: usize = 64 * 1024;
/// Registered DMA memory per executor. glommio's 10 MiB default is resident and serves only
/// file I/O, which volley does not do (FACTS.md).
pub const IO_MEMORY_BYTES: usize = 512 * 1024;
/// Prefix of every Redis channel volley uses (`volley:all`, later `volley:user:<id>` ...), so
/// several volley clusters can share one Redis.
pub const REDIS_PREFIX_DEFAULT: &str = "volley";
/// Rooms one connection may be in at once.
pub const ROOMS_PER_CONNECTION_MAX_DEFAULT: usize = 100;
/// Longest user id or room name, in bytes.
pub const NAME_BYTES_MAX_DEFAULT: usize = 128;
/// Client publishes per second per connection (token bucket refill rate).
pub const CLIENT_PUBLISH_RATE_DEFAULT: u32 = 20;
/// Client publishes a connection may burst before the rate applies.
pub const CLIENT_PUBLISH_BURST_DEFAULT: u32 = 40;
/// Protocol errors (bad ops, forbidden, over a limit) a client may make before it is
/// closed with 1008: a buggy client gets error replies to learn from, an abusive one is cut.
pub const CLIENT_STRIKES_MAX: u8 = 20;
/// Seconds after which one strike is forgiven: a client that errs less than once per 10 s
/// (late acks, a stray op) is never closed for it, while 20 errors in a burst still are.
pub const CLIENT_STRIKE_DECAY_S: u32 = 10;
/// Targets in one `POST /api/batch` request.
pub const BATCH_TARGETS_MAX: usize = 10_000;
/// How long `GET /api/messages/{id}` can report on a message (and acks are counted).
pub const RECEIPT_RETENTION_S: u32 = 300;
/// How long a publish with an `Idempotency-Key` is remembered in Redis: a publisher that got
/// a 504 and retries within this window publishes at most once.
pub const IDEMPOTENCY_TTL_S: u32 = 600;
/// Messages whose receipts each shard keeps (oldest dropped first).
pub const RECEIPTS_PER_SHARD_MAX: usize = 100_000;
/// Messages kept per channel for recovery: a client away for a short while (a train tunnel,
/// a redeploy) catches up without the application refetching.
pub const HISTORY_SIZE_DEFAULT: usize = 1000;
/// Seconds a channel's history is kept.
pub const HISTORY_TTL_S_DEFAULT: u32 = 3600;
/// Messages kept per offline user.
pub const INBOX_SIZE_DEFAULT: usize = 100;
/// Seconds an offline user's messages are kept (a week: long weekends happen).
pub const INBOX_TTL_S_DEFAULT: u32 = 7 * 24 * 3600;
/// Times an unacked inbox message is delivered before it is given up.
pub const INBOX_DELIVERIES_MAX_DEFAULT: u32 = 3;
/// Seconds after which a crashed node's users count as offline (its heartbeat key expires).
pub const PRESENCE_TTL_S_DEFAULT: u32 = 15;
/// Sockets per shard allowed in their HTTP phase at once (before an upgrade, or API
/// keep-alive). Each holds a small task and up to a request's buffer until its head
/// deadline; 10k is far above what real clients need and bounds a flood of idle sockets.
pub const HTTP_SESSIONS_PER_SHARD_MAX_DEFAULT: u32 = 10_000;
/// Capacity of each shard-to-shard channel.
/// Short tasks (client publishes, replays, room events, receipt waits) one shard runs at
/// once. Past it new ones are refused and counted: a reconnect storm of a full shard (64k
/// recoveries) fits twice, a runaway loop does not eat the box.
pub const SHARD_TASKS_MAX: u32 = 131_072;
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// No `Debug`: the flags hold secrets (JWT secret, API key, Redis password).
#[derive(Parser)]
#[command(
    name = "volley",
    version,
    about = "A WebSocket push engine: many connections, tiny memory, encode once, fan out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server: WebSocket clients on /ws, the publish API on /api on the same port.
    Serve(ServeArgs),
    /// Configuration files (`--config volley.toml`).
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (flags > environment > file > defaults) with
    /// secrets redacted, as a TOML file `--config` takes; exit 2 when it is invalid.
    Check(ServeArgs),
}

impl Command {
    /// The server flags, whichever command carries them.
    pub fn serve_args(self) -> ServeArgs {
        match self {
            Command::Serve(args) | Command::Config(ConfigCommand::Check(args)) => args,
        }
    }
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on (WebSocket and HTTP API share it).
    #[arg(long, default_value = LISTEN_DEFAULT)]
    pub listen: String,
    /// Number of shards (one io_uring executor each). Default: one per available core.
    #[arg(long)]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. "0,1" or "0-3"; one CPU per shard. Use it to place several
    /// volley processes on one box. Default: spread over the available CPUs.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Listen backlog of each shard's socket (capped by net.core.somaxconn).
    #[arg(long, default_value_t = BACKLOG_DEFAULT)]
    pub backlog: u32,
    /// Maximum WebSocket connections for this process; past it, upgrades get HTTP 503.
    #[arg(long, default_value_t = MAX_CONNECTIONS_DEFAULT)]
    pub max_connections: usize,
    /// Maximum bytes of an HTTP request head (431 beyond).
    #[arg(long, default_value_t = HTTP_HEAD_BYTES_MAX_DEFAULT)]
    pub http_head_bytes_max: usize,
    /// Time allowed to receive a request head, in milliseconds (slowloris guard).
    #[arg(long, default_value_t = HTTP_HEAD_TIMEOUT_MS_DEFAULT)]
    pub http_head_timeout_ms: u64,
    /// Maximum bytes of a publish request body (413 beyond).
    #[arg(long, default_value_t = BODY_BYTES_MAX_DEFAULT)]
    pub body_bytes_max: usize,
    /// Maximum bytes of a `POST /api/batch` body (413 beyond); each message in it is still
    /// held to --body-bytes-max.
    #[arg(long, default_value_t = BATCH_BYTES_MAX_DEFAULT)]
    pub batch_bytes_max: usize,
    /// Maximum bytes of one client message after reassembly (close 1009 beyond).
    #[arg(long, default_value_t = MESSAGE_BYTES_MAX_DEFAULT)]
    pub message_bytes_max: usize,
    /// Maximum frames one client message may be split into, the first and its
    /// continuations (close 1009 beyond).
    #[arg(long, default_value_t = MESSAGE_FRAGMENTS_MAX_DEFAULT)]
    pub message_fragments_max: usize,
    /// Frames queued per client before it is closed as a slow consumer (1008).
    #[arg(long, default_value_t = OUTBOUND_FRAMES_MAX_DEFAULT)]
    pub outbound_frames_max: usize,
    /// Bytes queued per client before it is closed as a slow consumer (1008).
    #[arg(long, default_value_t = OUTBOUND_BYTES_MAX_DEFAULT)]
    pub outbound_bytes_max: usize,
    /// Seconds between server pings to every client.
    #[arg(long, default_value_t = PING_INTERVAL_S_DEFAULT)]
    pub ping_interval_s: u64,
    /// Seconds of silence (no frame at all, pongs included) after which a client is closed.
    #[arg(long, default_value_t = IDLE_TIMEOUT_S_DEFAULT)]
    pub idle_timeout_s: u64,
    /// Milliseconds that shutdown waits for clients to get their 1001 close.
    #[arg(long, default_value_t = SHUTDOWN_GRACE_MS_DEFAULT)]
    pub shutdown_grace_ms: u64,
    /// Join a cluster through Redis: redis://[[user]:password@]host[:port][/db]. Without it,
    /// volley runs standalone.
    #[arg(long, env = "VOLLEY_REDIS")]
    pub redis: Option<String>,
    /// Prefix of the Redis channels this cluster uses.
    #[arg(long, default_value = REDIS_PREFIX_DEFAULT)]
    pub redis_prefix: String,
    /// HS256 secret for client tokens (JWT). Without it (and without --jwt-rs256-key) volley
    /// runs open: clients name themselves with ?user=.
    #[arg(long, env = "VOLLEY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File with an RS256 public key (PEM) for client tokens.
    #[arg(long, env = "VOLLEY_JWT_RS256_KEY")]
    pub jwt_rs256_key: Option<std::path::PathBuf>,
    /// Key publishers must send (Authorization: Bearer or X-API-Key). Without it the HTTP API
    /// answers loopback clients only.
    #[arg(long, env = "VOLLEY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Rooms one connection may be in at once.
    #[arg(long, default_value_t = ROOMS_PER_CONNECTION_MAX_DEFAULT)]
    pub rooms_per_connection_max: usize,
    /// Longest user id or room name, in bytes.
    #[arg(long, default_value_t = NAME_BYTES_MAX_DEFAULT)]
    pub name_bytes_max: usize,
    /// Client publishes per second per connection.
    #[arg(long, default_value_t = CLIENT_PUBLISH_RATE_DEFAULT)]
    pub client_publish_rate: u32,
    /// Client publishes a connection may burst.
    #[arg(long, default_value_t = CLIENT_PUBLISH_BURST_DEFAULT)]
    pub client_publish_burst: u32,
    /// Messages kept per channel for recovery (0 turns history off).
    #[arg(long, default_value_t = HISTORY_SIZE_DEFAULT)]
    pub history_size: usize,
    /// Seconds a channel's history is kept.
    #[arg(long, default_value_t = HISTORY_TTL_S_DEFAULT)]
    pub history_ttl_s: u32,
    /// Messages kept per offline user (0 turns the inbox off).
    #[arg(long, default_value_t = INBOX_SIZE_DEFAULT)]
    pub inbox_size: usize,
    /// Seconds an offline user's messages are kept.
    #[arg(long, default_value_t = INBOX_TTL_S_DEFAULT)]
    pub inbox_ttl_s: u32,
    /// Times an unacked inbox message is delivered before it is given up.
    #[arg(long, default_value_t = INBOX_DELIVERIES_MAX_DEFAULT)]
    pub inbox_deliveries_max: u32,
    /// Seconds after which a crashed node's users count as offline (cluster mode).
    #[arg(long, default_value_t = PRESENCE_TTL_S_DEFAULT)]
    pub presence_ttl_s: u32,
    /// Tell room members when someone joins or leaves (a `presence` message on the room).
    #[arg(long)]
    pub room_events: bool,
    /// Sockets per shard in their HTTP phase at once (not yet upgraded, or API
    /// keep-alive); past it new sockets are closed at accept.
    #[arg(long, default_value_t = HTTP_SESSIONS_PER_SHARD_MAX_DEFAULT)]
    pub http_sessions_max: u32,

    // Exposure: who may reach this server from a browser or from the network (issue 14).
    // Checked by `check_exposure`.
    /// Browser origins allowed on WebSocket paths and the API, comma-separated:
    /// `https://app.example.com`, `https://*.example.com` (subdomains), `http://localhost:*`
    /// (any port), `*` (any page: only for public, read-only deployments). Clients that
    /// send no Origin (not browsers) and pages from this server's own origin always pass;
    /// listed origins also get CORS headers on the API.
    #[arg(long, env = "VOLLEY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Host names clients may use to reach this server, comma-separated (`push.example.com`,
    /// `*.example.com`, `*` for any). Always allowed: IP addresses, localhost and the
    /// --listen host. Other names get 421: a guard against DNS rebinding.
    #[arg(long, env = "VOLLEY_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Run open (no JWT key or no --api-key) on a non-loopback --listen address anyway:
    /// anyone who reaches the port may connect as any user.
    #[arg(long, env = "VOLLEY_INSECURE_OPEN")]
    pub insecure_open: bool,
    /// The dev console at `GET /`: a page to connect as a user, join rooms, see messages
    /// and publish. auto: on in open mode (no JWT key), off otherwise; `--console` alone
    /// is `--console on`. It holds no secret: it can do only what its user types a token
    /// or an API key for.
    #[arg(long, env = "VOLLEY_CONSOLE", value_enum, default_value_t = ConsoleMode::Auto,
          num_args = 0..=1, default_missing_value = "on")]
    pub console: ConsoleMode,

    // Logs (issue 14). Checked by `check_logs`.
    /// Log level (error, warn, info, debug, trace) or tracing directives such as
    /// `volley=debug`. Wins over RUST_LOG; without either, info.
    #[arg(long, env = "VOLLEY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log line shape on stderr: text, or json (one object per line).
    #[arg(long, env = "VOLLEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A TOML file whose keys are these flags' long names, e.g. `listen = "0.0.0.0:8080"`,
    /// `allowed_origins = ["https://app.example.com"]`, `room_events = true`. Flags and
    /// environment variables win over it; it wins over the defaults.
    #[arg(long, env = "VOLLEY_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    /// The wire: permessage-deflate and the conformance echo path (their own block).
    #[command(flatten)]
    pub wire: WireArgs,
    #[command(flatten)]
    pub socketio: SocketIoArgs,
}

/// Whether `GET /` serves the dev console (`api/console.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsoleMode {
    /// On in open mode (no JWT key: development), off when clients need tokens.
    Auto,
    On,
    Off,
}

/// Whether `/ws` negotiates permessage-deflate (RFC 7692).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Decline every offer: no connection is compressed.
    Off,
    /// Accept offers that allow no context takeover on our side (every browser's does).
    On,
}

/// On: a broadcast is deflated once per shard and codec, so its cost does not grow with
/// the recipients, and a negotiated connection holds no deflate state while idle (the
/// agreement fits in the slab entry's padding). The costs are one ~312 KiB compressor per
/// shard, allocated on its first compressed delivery, ~8 us per compressed delivery, and
/// ~5 us per compressed client message (BENCHMARKS.md, "permessage-deflate").
pub const COMPRESSION_DEFAULT: Compression = Compression::On;
/// Payloads below this go plain: at ~300 bytes DEFLATE without context saves ~24%, below
/// ~256 bytes the fixed ~6 us reset buys a few bytes (BENCHMARKS.md, "permessage-deflate").
pub const COMPRESSION_MIN_BYTES_DEFAULT: usize = 256;
/// Level 1: within a few bytes of level 6 on short JSON, 20-50% less CPU (BENCHMARKS.md).
pub const COMPRESSION_LEVEL_DEFAULT: u8 = 1;
/// Largest `--compression-min-bytes`: a larger threshold than any message is `--compression off`.
pub const COMPRESSION_MIN_BYTES_MAX: usize = 64 << 20;

/// permessage-deflate and the conformance echo endpoint.
#[derive(Args, Debug, Clone)]
pub struct WireArgs {
    /// Negotiate permessage-deflate (RFC 7692) at the `/ws` upgrade.
    #[arg(long, value_enum, default_value_t = COMPRESSION_DEFAULT)]
    pub compression: Compression,
    /// Messages whose payload is smaller than this are sent uncompressed.
    #[arg(long, default_value_t = COMPRESSION_MIN_BYTES_DEFAULT)]
    pub compression_min_bytes: usize,
    /// DEFLATE level, 0 (stored) to 9 (smallest, slowest).
    #[arg(long, default_value_t = COMPRESSION_LEVEL_DEFAULT)]
    pub compression_level: u8,
    /// Serve a WebSocket echo endpoint at this path, for conformance runs (Autobahn);
    /// off by default, and only when listening on loopback unless --echo-path-public.
    #[arg(long)]
    pub echo_path: Option<String>,
    /// Allow --echo-path on a non-loopback listen address (anyone could then use the
    /// server as a free echo service).
    #[arg(long)]
    pub echo_path_public: bool,
}

/// Checked `WireArgs`.
#[derive(Debug, Clone)]
pub struct WireConfig {
    pub compression: Compression,
    pub compression_min_bytes: usize,
    pub compression_level: crate::ws::deflate::Level,
    /// What `/ws` agrees to (no client context takeover, so idle connections hold no
    /// inflate state and one shard-wide inflater serves every connection).
    pub deflate_policy: crate::ws::deflate::Policy,
    pub echo_path: Option<String>,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            compression: COMPRESSION_DEFAULT,
            compression_min_bytes: COMPRESSION_MIN_BYTES_DEFAULT,
            compression_level: crate::ws::deflate::Level::FAST,
            deflate_policy: crate::ws::deflate::Policy::default(),
            echo_path: None,
        }
    }
}

/// How client tokens are checked, if at all.
#[derive(Clone)]
pub enum ClientAuth {
    /// No secret: clients say who they are with ?user= (development, trusted networks).
    Open,
    Jwt(std::sync::Arc<crate::auth::Verifier>),
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::Open => "Open",
            ClientAuth::Jwt(_) => "Jwt",
        })
    }
}

/// Where and how to reach Redis, checked and resolved at start.
#[derive(Clone)]
pub struct RedisConfig {
    pub addr: SocketAddr,
    /// `host:port/db` as the user wrote it, without credentials: safe to log and show.
    pub display: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    pub prefix: String,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        write!(f, "RedisConfig({}, prefix {})", self.display, self.prefix)
    }
}

/// The parts of a `redis://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

/// Parses `redis://[[user]:password@]host[:port][/db]`; the error says what is wrong.
pub fn parse_redis_url(url: &str) -> Result<RedisUrl, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or("must start with redis:// (TLS, rediss://, is not supported yet)")?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(auth) => match auth.split_once(':') {
            Some((user, pass)) => (
                (!user.is_empty()).then(|| user.to_string()),
                Some(pass.to_string()),
            ),
            None => return Err("credentials must be :password or user:password".into()),
        },
    };
    let (hostport, db) = match rest.split_once('/') {
        Some((hostport, "")) => (hostport, 0),
        Some((hostport, db)) => (
            hostport,
            db.parse()
                .map_err(|_| format!("database '{db}' is not a number"))?,
        ),
        None => (rest, 0),
    };
    let (host, port) = split_host_port(hostport, 6379)?;
    Ok(RedisUrl {
        host: host.to_string(),
        port,
        username,
        password,
        db,
    })
}

/// Checked configuration. Every value here has passed `ServeArgs::validate`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub shards: usize,
    /// One CPU per shard when `--cpus` was given.
    pub cpus: Option<Vec<usize>>,
    pub backlog: u32,
    pub max_connections: usize,
    pub http_head_bytes_max: usize,
    pub http_headers_max: usize,
    pub http_head_timeout: Duration,
    pub http_body_timeout: Duration,
    pub body_bytes_max: usize,
    pub batch_bytes_max: usize,
    pub message_bytes_max: usize,
    pub message_fragments_max: usize,
    pub outbound_frames_max: usize,
    pub outbound_bytes_max: usize,
    pub ping_interval_s: u32,
    pub idle_timeout_s: u32,
    pub shutdown_grace: Duration,
    pub close_timeout: Duration,
    /// Cluster mode when set; standalone otherwise.
    pub redis: Option<RedisConfig>,
    pub client_auth: ClientAuth,
    /// Publisher key; None means the API answers loopback clients only.
    pub api_key: Option<Secret>,
    pub rooms_per_connection_max: usize,
    pub name_bytes_max: usize,
    pub client_publish_rate: u32,
    pub client_publish_burst: u32,
    pub history_size: usize,
    pub history_ttl_s: u32,
    pub inbox_size: usize,
    pub inbox_ttl_s: u32,
    pub inbox_deliveries_max: u32,
    pub presence_ttl_s: u32,
    pub room_events: bool,
    pub http_sessions_max: u32,
    /// `--allowed-origins` and `--allowed-hosts`, checked.
    pub origins: crate::origin::Policy,
    /// Open on a non-loopback address on purpose (`--insecure-open`): said loudly at start.
    pub insecure_open: bool,
    /// `GET /` serves the dev console (`--console`, resolved against open mode).
    pub console: bool,
    /// The tracing filter directives in force (`logging::directives`).
    pub log_filter: String,
    pub log_format: LogFormat,
    /// Application hooks (`--app-webhook`); None when no webhook is set.
    pub app_webhook: Option<WebhookConfig>,
    pub wire: WireConfig,
    pub socketio: SocketIoConfig,
}

/// A secret value: its `Debug` never shows it, so no log line or panic message can.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A flag value that cannot be used, said in words with what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: String) -> Result<T, ConfigError> {
    Err(ConfigError(msg))
}

/// The host part of a `--listen` value as written (`localhost`, `0.0.0.0`, `[::1]`).
pub fn listen_host(listen: &str) -> &str {
    match listen.rsplit_once(':') {
        Some((host, _)) => host,
        None => listen,
    }
}

/// The first address `host:port` resolves to, resolved once at start (`--redis`,
/// `--app-webhook`); None when it resolves to nothing.
fn resolve_once(host: &str, port: u16) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    (host, port).to_socket_addrs().ok()?.next()
}

/// `--listen` as an IP:port, or a host name resolved once, now (an IPv4 address when the
/// name has one, as most clients try it first).
pub fn resolve_listen(listen: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let shape = || {
        ConfigError(format!(
            "--listen {listen}: not an IP:port or host:port address; use e.g. 127.0.0.1:8080, 0.0.0.0:8080 or localhost:8080"
        ))
    };
    let (host, port) = listen.rsplit_once(':').ok_or_else(shape)?;
    let port: u16 = port.parse().map_err(|_| shape())?;
    if host.is_empty() {
        return Err(shape());
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            ConfigError(format!(
                "--listen {listen}: cannot resolve {host:?} ({e}); check the name or use an IP address"
            ))
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| {
            ConfigError(format!(
                "--listen {listen}: {host:?} resolves to no address; use an IP address"
            ))
        })
}

/// Parses "0,2" or "0-3" or "0-1,4" into a list of CPU ids.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let lo: usize = lo
            .parse()
            .map_err(|_| format!("'{part}' is not a CPU id or range"))?;
        let hi: usize = hi
            .parse()
            .map_err(|_| format!("'{part}' is not a CPU id or range"))?;
        if lo > hi {
            return Err(format!("range '{part}' goes backwards"));
        }
        if hi - lo >= 4096 {
            return Err(format!("range '{part}' is too large"));
        }
        for cpu in lo..=hi {
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} is listed twice"));
            }
            cpus.push(cpu);
        }
    }
    if cpus.is_empty() {
        return Err("the list is empty".into());
    }
    Ok(cpus)
}

impl ServeArgs {
    /// Checks every flag, area by area. `cpus_online` is the number of CPUs this process
    /// may run on.
    pub fn validate(&self, cpus_online: usize) -> Result<Config, ConfigError> {
        let (listen, cpus, shards) = self.check_placement(cpus_online)?;
        self.check_limits()?;
        self.check_heartbeat()?;
        let redis = self.check_cluster()?;
        let client_auth = self.check_auth()?;
        self.check_clients()?;
        self.check_stores()?;
        let origins = self.check_exposure(listen, &client_auth)?;
        let log_filter = self.check_logs()?;
        let app_webhook = self.webhook.check_webhook()?;
        let wire = self.check_wire(&listen)?;
        let mut socketio = self.socketio.validate()?;
        socketio.adapter = self.socketio.check_socketio_adapter(redis.is_some())?;
        Ok(Config {
            socketio,
            wire,
            log_filter,
            log_format: self.log_format,
            origins,
            insecure_open: self.insecure_open,
            console: self.check_console(&client_auth),
            app_webhook,
            history_size: self.history_size,
            history_ttl_s: self.history_ttl_s,
            inbox_size: self.inbox_size,
            inbox_ttl_s: self.inbox_ttl_s,
            inbox_deliveries_max: self.inbox_deliveries_max,
            presence_ttl_s: self.presence_ttl_s,
            room_events: self.room_events,
            http_sessions_max: self.http_sessions_max,
            client_auth,
            api_key: self.api_key.clone().map(Secret),
            rooms_per_connection_max: self.rooms_per_connection_max,
            name_bytes_max: self.name_bytes_max,
            client_publish_rate: self.client_publish_rate,
            client_publish_burst: self.client_publish_burst,
            redis,
            listen,
            shards,
            cpus,
            backlog: self.backlog,
            max_connections: self.max_connections,
            http_head_bytes_max: self.http_head_bytes_max,
            http_headers_max: HTTP_HEADERS_MAX_DEFAULT,
            http_head_timeout: Duration::from_millis(self.http_head_timeout_ms),
            http_body_timeout: Duration::from_millis(HTTP_BODY_TIMEOUT_MS_DEFAULT),
            body_bytes_max: self.body_bytes_max,
            batch_bytes_max: self.batch_bytes_max.max(self.body_bytes_max),
            message_bytes_max: self.message_bytes_max,
            message_fragments_max: self.message_fragments_max,
            outbound_frames_max: self.outbound_frames_max,
            outbound_bytes_max: self.outbound_bytes_max,
            ping_interval_s: self.ping_interval_s as u32,
            idle_timeout_s: self.idle_timeout_s as u32,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            close_timeout: Duration::from_millis(CLOSE_TIMEOUT_MS),
        })
    }

    /// Where to listen and on which CPUs: (address, CPU list, shards).
    fn check_placement(
        &self,
        cpus_online: usize,
    ) -> Result<(SocketAddr, Option<Vec<usize>>, usize), ConfigError> {
        let listen = resolve_listen(&self.listen)?;
        let cpus = match &self.cpus {
            None => None,
            Some(list) => match parse_cpu_list(list) {
                Ok(cpus) => Some(cpus),
                Err(why) => {
                    return err(format!(
                        "--cpus {list}: {why}; use a list like 0,1 or a range like 0-1"
                    ))
                }
            },
        };
        let shards = match (self.shards, &cpus) {
            (Some(0), _) => {
                return err(format!(
                    "--shards 0: must be 1..={cpus_online} (cores here); omit it for one shard per core"
                ))
            }
            (Some(n), Some(cpus)) if n != cpus.len() => {
                return err(format!(
                    "--shards {n} with --cpus {}: one CPU per shard, so give {n} CPUs or omit --shards",
                    self.cpus.as_deref().unwrap_or_default()
                ))
            }
            (Some(n), None) if n > cpus_online => {
                return err(format!(
                    "--shards {n}: only {cpus_online} CPUs are available to this process; use at most {cpus_online}"
                ))
            }
            (Some(n), _) => n,
            (None, Some(cpus)) => cpus.len(),
            (None, None) => cpus_online.max(1),
        };
        Ok((listen, cpus, shards))
    }

    /// Origins, hosts and open mode on the network: `--allowed-origins`,
    /// `--allowed-hosts`, `--insecure-open`.
    fn check_exposure(
        &self,
        listen: SocketAddr,
        client_auth: &ClientAuth,
    ) -> Result<crate::origin::Policy, ConfigError> {
        let policy = crate::origin::Policy::new(
            &self.allowed_origins,
            &self.allowed_hosts,
            listen_host(&self.listen),
        )
        .map_err(|why| {
            ConfigError(format!(
                "{why}; e.g. --allowed-origins https://app.example.com,https://*.example.com"
            ))
        })?;
        let open_clients = matches!(client_auth, ClientAuth::Open);
        let open_api = self.api_key.is_none();
        if !listen.ip().is_loopback() && (open_clients || open_api) && !self.insecure_open {
            let missing = match (open_clients, open_api) {
                (true, true) => "--jwt-secret (or --jwt-rs256-key) and --api-key",
                (true, false) => "--jwt-secret (or --jwt-rs256-key)",
                _ => "--api-key",
            };
            return err(format!(
                "--listen {}: not a loopback address, and without {missing} anyone who reaches it could connect as any user or publish; set {missing}, or add --insecure-open to run open on purpose",
                self.listen
            ));
        }
        Ok(policy)
    }

    /// `--console`: auto is on in open mode only. The page is served to whoever reaches
    /// the port, so it is safe anywhere: it is static, holds no secret, and every request
    /// it makes passes the same checks as any client's (docs/API.md, "Dev console").
    fn check_console(&self, client_auth: &ClientAuth) -> bool {
        match self.console {
            ConsoleMode::On => true,
            ConsoleMode::Off => false,
            ConsoleMode::Auto => matches!(client_auth, ClientAuth::Open),
        }
    }

    /// `--log-level` (or RUST_LOG when it is not given).
    fn check_logs(&self) -> Result<String, ConfigError> {
        let rust_log = std::env::var("RUST_LOG").ok();
        crate::logging::directives(self.log_level.as_deref(), rust_log.as_deref())
            .map_err(ConfigError)
    }

    /// Connection, request and queue limits.
    fn check_limits(&self) -> Result<(), ConfigError> {
        if self.backlog == 0 || self.backlog > 1 << 20 {
            return err(format!("--backlog {}: must be 1..=1048576", self.backlog));
        }
        if self.max_connections == 0 {
            return err("--max-connections 0: must be at least 1".into());
        }
        if !(512..=1 << 20).contains(&self.http_head_bytes_max) {
            return err(format!(
                "--http-head-bytes-max {}: must be 512..=1048576 bytes",
                self.http_head_bytes_max
            ));
        }
        if !(100..=600_000).contains(&self.http_head_timeout_ms) {
            return err(format!(
                "--http-head-timeout-ms {}: must be 100..=600000",
                self.http_head_timeout_ms
            ));
        }
        if !(1..=64 << 20).contains(&self.body_bytes_max) {
            return err(format!(
                "--body-bytes-max {}: must be 1..=67108864 bytes",
                self.body_bytes_max
            ));
        }
        if !(1..=256 << 20).contains(&self.batch_bytes_max) {
            return err(format!(
                "--batch-bytes-max {}: must be 1..=268435456 bytes",
                self.batch_bytes_max
            ));
        }
        if !(125..=64 << 20).contains(&self.message_bytes_max) {
            return err(format!(
                "--message-bytes-max {}: must be 125..=67108864 bytes",
                self.message_bytes_max
            ));
        }
        if !(1..=MESSAGE_FRAGMENTS_MAX_MAX).contains(&self.message_fragments_max) {
            return err(format!(
                "--message-fragments-max {}: must be 1..={MESSAGE_FRAGMENTS_MAX_MAX} frames \
                 (1 refuses every fragmented message)",
                self.message_fragments_max
            ));
        }
        if !(2..=1 << 20).contains(&self.outbound_frames_max) {
            return err(format!(
                "--outbound-frames-max {}: must be 2..=1048576",
                self.outbound_frames_max
            ));
        }
        if self.outbound_bytes_max < 1024 || self.outbound_bytes_max > u32::MAX as usize {
            return err(format!(
                "--outbound-bytes-max {}: must be 1024..=4294967295 bytes",
                self.outbound_bytes_max
            ));
        }
        if self.outbound_bytes_max < self.body_bytes_max + 14 {
            return err(format!(
                "--outbound-bytes-max {} is below one full message (--body-bytes-max {} plus a frame header): raise it",
                self.outbound_bytes_max, self.body_bytes_max
            ));
        }
        Ok(())
    }

    /// Pings, idle timeouts and the shutdown grace.
    fn check_heartbeat(&self) -> Result<(), ConfigError> {
        if !(1..=3600).contains(&self.ping_interval_s) {
            return err(format!(
                "--ping-interval-s {}: must be 1..=3600",
                self.ping_interval_s
            ));
        }
        if self.idle_timeout_s <= self.ping_interval_s || self.idle_timeout_s > 86_400 {
            return err(format!(
                "--idle-timeout-s {}: must be greater than --ping-interval-s ({}) so a live client gets a ping before it is dropped, and at most 86400",
                self.idle_timeout_s, self.ping_interval_s
            ));
        }
        if self.shutdown_grace_ms > 600_000 {
            return err(format!(
                "--shutdown-grace-ms {}: must be at most 600000",
                self.shutdown_grace_ms
            ));
        }
        Ok(())
    }

    /// `--redis` and `--redis-prefix`: None standalone.
    fn check_cluster(&self) -> Result<Option<RedisConfig>, ConfigError> {
        Ok(match &self.redis {
            None => None,
            Some(url) => {
                let shown = url.rsplit_once('@').map_or(url.as_str(), |(_, rest)| rest);
                let RedisUrl {
                    host,
                    port,
                    username,
                    password,
                    db,
                } = parse_redis_url(url).map_err(|why| {
                    ConfigError(format!(
                        "--redis {shown}: {why}; use e.g. redis://127.0.0.1:6379 or redis://:password@host:6379/0"
                    ))
                })?;
                let addr = resolve_once(&host, port).ok_or_else(|| {
                        ConfigError(format!(
                            "--redis {shown}: cannot resolve host '{host}'; check the name or use an IP address"
                        ))
                    })?;
                let prefix = self.redis_prefix.trim();
                if prefix.is_empty() || prefix.len() > 64 || prefix.contains(char::is_whitespace) {
                    return err(format!(
                        "--redis-prefix '{}': must be 1..=64 characters without spaces",
                        self.redis_prefix
                    ));
                }
                Some(RedisConfig {
                    addr,
                    display: format!("redis://{}", shown.trim_start_matches("redis://")),
                    username,
                    password,
                    db,
                    prefix: prefix.to_string(),
                })
            }
        })
    }

    /// Who clients and publishers are: JWT keys (or open mode) and the API key.
    fn check_auth(&self) -> Result<ClientAuth, ConfigError> {
        let client_auth = match (&self.jwt_secret, &self.jwt_rs256_key) {
            (Some(_), Some(_)) => {
                return err("--jwt-secret and --jwt-rs256-key: give one of them".into());
            }
            (Some(secret), None) => {
                if secret.len() < 16 {
                    return err(format!(
                        "--jwt-secret: {} bytes is too short to resist guessing; use at least 16 (32 random bytes recommended)",
                        secret.len()
                    ));
                }
                ClientAuth::Jwt(std::sync::Arc::new(crate::auth::Verifier::hs256(
                    secret.as_bytes(),
                )))
            }
            (None, Some(path)) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!(
                        "--jwt-rs256-key {}: cannot read it: {e}",
                        path.display()
                    ))
                })?;
                let verifier = crate::auth::Verifier::rs256_pem(&pem).map_err(|e| {
                    ConfigError(format!(
                        "--jwt-rs256-key {}: {e}; give a PEM public key (BEGIN PUBLIC KEY)",
                        path.display()
                    ))
                })?;
                ClientAuth::Jwt(std::sync::Arc::new(verifier))
            }
            (None, None) => ClientAuth::Open,
        };
        if let Some(key) = &self.api_key {
            if key.len() < 16 {
                return err(format!(
                    "--api-key: {} bytes is too short; use at least 16 random bytes",
                    key.len()
                ));
            }
        }
        Ok(client_auth)
    }

    /// What one client may do: rooms, names, publish rate.
    fn check_clients(&self) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.rooms_per_connection_max) {
            return err(format!(
                "--rooms-per-connection-max {}: must be 1..=10000",
                self.rooms_per_connection_max
            ));
        }
        if !(1..=1024).contains(&self.name_bytes_max) {
            return err(format!(
                "--name-bytes-max {}: must be 1..=1024",
                self.name_bytes_max
            ));
        }
        if self.client_publish_rate == 0 || self.client_publish_burst == 0 {
            return err(format!(
                "--client-publish-rate {} / --client-publish-burst {}: must be at least 1",
                self.client_publish_rate, self.client_publish_burst
            ));
        }
        Ok(())
    }

    /// permessage-deflate and the echo path.
    fn check_wire(&self, listen: &SocketAddr) -> Result<WireConfig, ConfigError> {
        let w = &self.wire;
        let Some(compression_level) = crate::ws::deflate::Level::new(w.compression_level) else {
            return err(format!(
                "--compression-level {}: must be 0..=9 (1 is fast and compresses short JSON \
                 as well as 6)",
                w.compression_level
            ));
        };
        if w.compression_min_bytes > COMPRESSION_MIN_BYTES_MAX {
            return err(format!(
                "--compression-min-bytes {}: must be at most {COMPRESSION_MIN_BYTES_MAX}; \
                 use --compression off to compress nothing",
                w.compression_min_bytes
            ));
        }
        if let Some(path) = &w.echo_path {
            let reserved = ["/ws", "/socket.io/"];
            if !path.starts_with('/')
                || path.contains(['?', '#', ' '])
                || reserved.contains(&path.as_str())
            {
                return err(format!(
                    "--echo-path {path:?}: must be a plain path starting with '/', other than \
                     /ws, e.g. /echo"
                ));
            }
            if !listen.ip().is_loopback() && !w.echo_path_public {
                return err(format!(
                    "--echo-path {path} with --listen {listen}: the echo endpoint is for \
                     conformance runs on loopback; listen on 127.0.0.1, or add \
                     --echo-path-public to serve it to everyone"
                ));
            }
        }
        Ok(WireConfig {
            compression: w.compression,
            compression_min_bytes: w.compression_min_bytes,
            compression_level,
            deflate_policy: crate::ws::deflate::Policy::default(),
            echo_path: w.echo_path.clone(),
        })
    }

    /// History, inboxes, presence and HTTP sessions.
    fn check_stores(&self) -> Result<(), ConfigError> {
        if self.history_size > 100_000 {
            return err(format!(
                "--history-size {}: at most 100000 per channel",
                self.history_size
            ));
        }
        if self.inbox_size > 100_000 {
            return err(format!(
                "--inbox-size {}: at most 100000 per user",
                self.inbox_size
            ));
        }
        if self.history_ttl_s == 0 || self.inbox_ttl_s == 0 {
            return err("--history-ttl-s and --inbox-ttl-s must be at least 1 (use a size of 0 to turn a store off)".into());
        }
        if !(1..=100).contains(&self.inbox_deliveries_max) {
            return err(format!(
                "--inbox-deliveries-max {}: must be 1..=100",
                self.inbox_deliveries_max
            ));
        }
        if !(3..=3600).contains(&self.presence_ttl_s) {
            return err(format!(
                "--presence-ttl-s {}: must be 3..=3600",
                self.presence_ttl_s
            ));
        }
        if self.http_sessions_max == 0 {
            return err("--http-sessions-max 0: must be at least 1".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Application hooks (`--app-webhook`, docs/API.md "Application hooks").

/// A client waits at most this long for what the application answers (its ack, or the
/// refusal): long enough for a backend that writes to a database, short enough that a dead
/// backend is an error the user sees within a few seconds, not a hung request.
pub const APP_WEBHOOK_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Requests in flight to the webhook per shard, which is also the most sockets a shard opens
/// to it: a typical app server (a few Node or gunicorn workers) serves a few dozen requests
/// at once, and several shards share it.
pub const APP_WEBHOOK_CONCURRENCY_MAX_DEFAULT: u32 = 16;
/// Hook calls per shard waiting for one of those requests. Each costs one small task and the
/// event's arguments; past it the client is refused at once instead of queueing behind a
/// backend that cannot keep up.
pub const APP_WEBHOOK_QUEUE_MAX_DEFAULT: u32 = 1_024;
/// Largest webhook response body: it carries an ack and a few emits; more is a bug in the
/// application, and a bound on what one answer can make a shard hold.
pub const APP_WEBHOOK_RESPONSE_BYTES_MAX: usize = 256 * 1024;
/// Largest webhook response head (status line and headers), as for requests.
pub const APP_WEBHOOK_HEAD_BYTES_MAX: usize = 16 * 1024;
/// A pooled connection idle this long is closed rather than reused: below Node's default
/// `keepAliveTimeout` (5 s), so volley does not write into a socket the backend is closing.
pub const APP_WEBHOOK_IDLE_MS: u64 = 4_000;

/// `--app-webhook*` flags: where the application's hook endpoint is and how much of a shard
/// it may cost.
#[derive(Args, Clone, Default)]
pub struct WebhookArgs {
    /// Application hook endpoint, `http://host:port/path` (plain HTTP only: put it on
    /// loopback or a private network). Client events volley does not know (native unknown
    /// ops, socket.io events) are POSTed there; see docs/API.md "Application hooks".
    #[arg(long)]
    pub app_webhook: Option<String>,
    /// Milliseconds a hook call may take, queueing included, before the client gets an
    /// error.
    #[arg(long, default_value_t = APP_WEBHOOK_TIMEOUT_MS_DEFAULT)]
    pub app_webhook_timeout_ms: u64,
    /// Webhook requests in flight per shard (= keep-alive sockets per shard).
    #[arg(long, default_value_t = APP_WEBHOOK_CONCURRENCY_MAX_DEFAULT)]
    pub app_webhook_concurrency_max: u32,
    /// Hook calls per shard waiting for a free request slot; past it they are refused.
    #[arg(long, default_value_t = APP_WEBHOOK_QUEUE_MAX_DEFAULT)]
    pub app_webhook_queue_max: u32,
}

/// The checked webhook: its address resolved once at start, the bounds of its client.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The URL as given, for logs and errors.
    pub url: String,
    pub addr: SocketAddr,
    /// The `Host` header: `host[:port]` as written in the URL.
    pub host: String,
    /// The request target: the path and query, `/` when the URL has none.
    pub path: String,
    pub timeout: Duration,
    pub concurrency_max: u32,
    pub queue_max: u32,
    pub response_bytes_max: usize,
    pub head_bytes_max: usize,
    pub idle: Duration,
}

/// Splits `http://host[:port][/path]` into (host header, host, port, path).
pub fn parse_webhook_url(url: &str) -> Result<(String, String, u16, String), String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(
                "https is not supported: volley speaks plain HTTP to its webhook; \
                 use http:// on loopback or a private network, or a local TLS proxy"
                    .into(),
            )
        }
        _ => return Err("must start with http://".into()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    if path.contains(['#', ' ', '\r', '\n']) {
        return Err("the path must not contain '#', spaces or line breaks".into());
    }
    let (bare, port) = split_host_port(authority, 80)?;
    Ok((authority.to_string(), bare.to_string(), port, path))
}

/// `host[:port]` or `[v6][:port]` of a URL: the host without brackets and the port
/// (`default_port` when none is given).
fn split_host_port(authority: &str, default_port: u16) -> Result<(&str, u16), String> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("port '{port}' is not a number"))?,
        ),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host, port))
}

impl WebhookArgs {
    /// The webhook URL and the bounds of its client, resolved once here.
    fn check_webhook(&self) -> Result<Option<WebhookConfig>, ConfigError> {
        let Some(url) = &self.app_webhook else {
            return Ok(None);
        };
        let (authority, host, port, path) = parse_webhook_url(url).map_err(|e| {
            ConfigError(format!(
                "--app-webhook {url}: {e}; example: http://127.0.0.1:3000/volley"
            ))
        })?;
        let addr = resolve_once(&host, port).ok_or_else(|| {
                ConfigError(format!(
                    "--app-webhook {url}: cannot resolve {host}:{port}; use an IP address or a name this host resolves (it is resolved once, at start)"
                ))
            })?;
        if !(1..=600_000).contains(&self.app_webhook_timeout_ms) {
            return err(format!(
                "--app-webhook-timeout-ms {}: must be 1..=600000 (default {APP_WEBHOOK_TIMEOUT_MS_DEFAULT})",
                self.app_webhook_timeout_ms
            ));
        }
        if !(1..=1_024).contains(&self.app_webhook_concurrency_max) {
            return err(format!(
                "--app-webhook-concurrency-max {}: must be 1..=1024 requests per shard (default {APP_WEBHOOK_CONCURRENCY_MAX_DEFAULT})",
                self.app_webhook_concurrency_max
            ));
        }
        if self.app_webhook_queue_max > 100_000 {
            return err(format!(
                "--app-webhook-queue-max {}: at most 100000 waiting calls per shard (default {APP_WEBHOOK_QUEUE_MAX_DEFAULT}); 0 refuses whatever finds every request slot busy",
                self.app_webhook_queue_max
            ));
        }
        Ok(Some(WebhookConfig {
            url: url.clone(),
            addr,
            host: authority,
            path,
            timeout: Duration::from_millis(self.app_webhook_timeout_ms),
            concurrency_max: self.app_webhook_concurrency_max,
            queue_max: self.app_webhook_queue_max,
            response_bytes_max: APP_WEBHOOK_RESPONSE_BYTES_MAX,
            head_bytes_max: APP_WEBHOOK_HEAD_BYTES_MAX,
            idle: Duration::from_millis(APP_WEBHOOK_IDLE_MS),
        }))
    }
}

/// socket.io's own default ping interval (engine.io `pingInterval`): clients expect it.
pub const SOCKETIO_PING_INTERVAL_MS_DEFAULT: u32 = 25_000;
/// socket.io's default `pingTimeout`: how long after a ping a client may take to pong.
pub const SOCKETIO_PING_TIMEOUT_MS_DEFAULT: u32 = 20_000;
/// socket.io's default `maxHttpBufferSize` (1e6): the largest polling body or message read.
pub const SOCKETIO_MAX_PAYLOAD_DEFAULT: u32 = 1_000_000;
/// socket.io's default `connectTimeout`: a client that never sends CONNECT is dropped.
pub const SOCKETIO_CONNECT_TIMEOUT_MS_DEFAULT: u32 = 45_000;
/// socket.io-parser's default bound on attachments per packet (10): a real client's
/// binary event rarely holds more, and each pending attachment is buffered.
pub const SOCKETIO_ATTACHMENTS_MAX: u32 = 10;
/// Namespaces besides `/`: each is one more frame-cache slot per delivery (`Codec::COUNT`).
pub const SOCKETIO_NAMESPACES_MAX: usize = crate::protocol::socketio::NAMESPACES_MAX - 1;
/// Longest namespace name: names are identifiers like `/chat`, not data.
pub const SOCKETIO_NAMESPACE_BYTES_MAX: usize = 128;
/// Packets one polling POST body may carry: socket.io-client batches what it has queued,
/// a handful at a time; thousands are a flood.
pub const SOCKETIO_PAYLOAD_PACKETS_MAX: usize = 256;
/// Polling sessions one shard keeps at once (they wait for a WebSocket upgrade or live on
/// long-polling); past it new polling handshakes get 503.
pub const SOCKETIO_POLLING_SESSIONS_MAX_DEFAULT: u32 = 16_384;

/// socket.io's default Redis `key` (the channel prefix of `@socket.io/redis-adapter` and
/// `@socket.io/redis-emitter`): unchanged publishers and Node servers use it.
pub const SOCKETIO_REDIS_KEY_DEFAULT: &str = crate::protocol::socketio::adapter::KEY_DEFAULT;
/// Longest `--socketio-redis-key`: it starts every socket.io channel name.
pub const SOCKETIO_REDIS_KEY_BYTES_MAX: usize = 64;
/// Rooms in one adapter message's `rooms`, `except` or join list: emitters name a few; a
/// longer list is refused as a whole (counted as malformed).
pub const SOCKETIO_ADAPTER_ROOMS_MAX: usize = 1024;
/// Longest room, uid, request id or namespace read from an adapter message. Longer than
/// `--name-bytes-max` on purpose: a Node room volley cannot hold must not make the whole
/// message unreadable (it just matches no volley room).
pub const SOCKETIO_ADAPTER_NAME_BYTES_MAX: usize = 1024;
/// Deepest nesting of an adapter message's payload (the decoder's recursion bound).
pub const SOCKETIO_ADAPTER_DEPTH_MAX: usize = 32;
/// Values (array items and map entries, all levels) in one adapter message.
pub const SOCKETIO_ADAPTER_VALUES_MAX: usize = 1 << 16;
/// Largest adapter message read, in bytes: larger ones are dropped unread (and counted).
/// Far above what a push carries; it bounds the decode and the frames built from it.
pub const SOCKETIO_ADAPTER_MESSAGE_BYTES_MAX: usize = 8 << 20;

/// socket.io flags (Engine.IO 4 and Socket.IO 5 on the same port as `/ws`).
#[derive(Args, Clone, Debug)]
pub struct SocketIoArgs {
    /// Path socket.io clients connect to (socket.io-client's `path` option).
    #[arg(long, default_value = "/socket.io/")]
    pub socketio_path: String,
    /// Milliseconds between Engine.IO pings the server sends (rounded up to the 1 s sweep).
    #[arg(long, default_value_t = SOCKETIO_PING_INTERVAL_MS_DEFAULT)]
    pub socketio_ping_interval_ms: u32,
    /// Milliseconds a client has to answer a ping before it is dropped.
    #[arg(long, default_value_t = SOCKETIO_PING_TIMEOUT_MS_DEFAULT)]
    pub socketio_ping_timeout_ms: u32,
    /// Largest polling body / WebSocket message a socket.io client may send, in bytes.
    #[arg(long, default_value_t = SOCKETIO_MAX_PAYLOAD_DEFAULT)]
    pub socketio_max_payload: u32,
    /// Milliseconds a socket.io client has to CONNECT to a namespace after the handshake.
    #[arg(long, default_value_t = SOCKETIO_CONNECT_TIMEOUT_MS_DEFAULT)]
    pub socketio_connect_timeout_ms: u32,
    /// A namespace clients may CONNECT to besides `/` (repeatable), e.g. `/chat`.
    #[arg(long = "socketio-namespace")]
    pub socketio_namespaces: Vec<String>,
    /// Polling sessions one shard holds at once (503 for new polling handshakes past it).
    #[arg(long, default_value_t = SOCKETIO_POLLING_SESSIONS_MAX_DEFAULT)]
    pub socketio_polling_sessions_max: u32,
    /// With --redis: read socket.io's Redis channels (`@socket.io/redis-emitter` publishers,
    /// `@socket.io/redis-adapter` 8 servers) and write volley's broadcasts and room pushes
    /// there too, so Node socket.io servers and volley form one cluster (docs/SOCKETIO.md).
    #[arg(long)]
    pub socketio_adapter: bool,
    /// The `key` option of the emitter and adapter: socket.io's channel prefix.
    #[arg(long, default_value = SOCKETIO_REDIS_KEY_DEFAULT)]
    pub socketio_redis_key: String,
}

/// `--socketio-adapter`, checked: the bridge to socket.io's Redis channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketIoAdapterConfig {
    /// `--socketio-redis-key`.
    pub key: String,
}

/// Checked socket.io settings.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// Ends with `/`; requests whose path is this (or this without the final `/`) are
    /// Engine.IO's.
    pub path: String,
    pub ping_interval_ms: u32,
    pub ping_timeout_ms: u32,
    pub max_payload_bytes: u32,
    pub connect_timeout_ms: u32,
    /// `/` first, then `--socketio-namespace` values; a namespace's index here is its
    /// index in `protocol::socketio::namespace_name` (interned at validate).
    pub namespaces: Vec<(u8, String)>,
    pub attachments_max: u32,
    pub payload_packets_max: usize,
    pub polling_sessions_max: u32,
    /// `--socketio-adapter` (cluster mode only); None when off.
    pub adapter: Option<SocketIoAdapterConfig>,
}

impl SocketIoConfig {
    /// The interned index of a namespace clients may CONNECT to.
    pub fn namespace(&self, name: &str) -> Option<u8> {
        self.namespaces
            .iter()
            .find(|(_, n)| n == name)
            .map(|(i, _)| *i)
    }

    /// Seconds between server pings, rounded up to whole sweep seconds.
    pub fn ping_interval_s(&self) -> u32 {
        self.ping_interval_ms.div_ceil(1000).max(1)
    }

    /// Seconds of silence after which a client is dropped: a ping interval, then the
    /// pong timeout, each rounded up (the sweep runs once a second).
    pub fn idle_timeout_s(&self) -> u32 {
        self.ping_interval_s() + self.ping_timeout_ms.div_ceil(1000).max(1)
    }
}

impl SocketIoArgs {
    fn validate(&self) -> Result<SocketIoConfig, ConfigError> {
        let path = &self.socketio_path;
        if !path.starts_with('/') || path.len() > 256 || path.contains(['?', '#', ' ']) {
            return err(format!(
                "--socketio-path {path}: must start with / and hold no ?, # or space, e.g. /socket.io/"
            ));
        }
        let path = if path.ends_with('/') {
            path.clone()
        } else {
            format!("{path}/")
        };
        for (flag, value) in [
            (
                "--socketio-ping-interval-ms",
                self.socketio_ping_interval_ms,
            ),
            ("--socketio-ping-timeout-ms", self.socketio_ping_timeout_ms),
            (
                "--socketio-connect-timeout-ms",
                self.socketio_connect_timeout_ms,
            ),
        ] {
            if !(1000..=3_600_000).contains(&value) {
                return err(format!(
                    "{flag} {value}: must be 1000..=3600000 (the server's sweep runs once a second)"
                ));
            }
        }
        if !(1024..=64 << 20).contains(&self.socketio_max_payload) {
            return err(format!(
                "--socketio-max-payload {}: must be 1024..=67108864 bytes",
                self.socketio_max_payload
            ));
        }
        if self.socketio_namespaces.len() > SOCKETIO_NAMESPACES_MAX {
            return err(format!(
                "--socketio-namespace given {} times: at most {SOCKETIO_NAMESPACES_MAX} namespaces besides /",
                self.socketio_namespaces.len()
            ));
        }
        if !(1..=1 << 20).contains(&self.socketio_polling_sessions_max) {
            return err(format!(
                "--socketio-polling-sessions-max {}: must be 1..=1048576",
                self.socketio_polling_sessions_max
            ));
        }
        let mut namespaces = Vec::new();
        for name in std::iter::once("/").chain(self.socketio_namespaces.iter().map(String::as_str))
        {
            let bad = !name.starts_with('/')
                || name.len() > SOCKETIO_NAMESPACE_BYTES_MAX
                || name.contains(',')
                || name.chars().any(char::is_control);
            if bad {
                return err(format!(
                    "--socketio-namespace {name:?}: must start with /, hold no comma or control character, and be at most {SOCKETIO_NAMESPACE_BYTES_MAX} bytes, e.g. /chat"
                ));
            }
            if namespaces.iter().any(|(_, n)| n == name) {
                continue;
            }
            let index = crate::protocol::socketio::intern_namespace(name).ok_or_else(|| {
                ConfigError(format!(
                    "--socketio-namespace {name}: this process already knows {} namespaces",
                    crate::protocol::socketio::NAMESPACES_MAX
                ))
            })?;
            namespaces.push((index, name.to_string()));
        }
        Ok(SocketIoConfig {
            path,
            ping_interval_ms: self.socketio_ping_interval_ms,
            ping_timeout_ms: self.socketio_ping_timeout_ms,
            max_payload_bytes: self.socketio_max_payload,
            connect_timeout_ms: self.socketio_connect_timeout_ms,
            namespaces,
            attachments_max: SOCKETIO_ATTACHMENTS_MAX,
            payload_packets_max: SOCKETIO_PAYLOAD_PACKETS_MAX,
            polling_sessions_max: self.socketio_polling_sessions_max,
            adapter: None,
        })
    }

    /// `--socketio-adapter` and `--socketio-redis-key`: the bridge needs `--redis` (it reads
    /// and writes Redis pub/sub); the key must be a plain channel prefix.
    fn check_socketio_adapter(
        &self,
        cluster: bool,
    ) -> Result<Option<SocketIoAdapterConfig>, ConfigError> {
        let key = &self.socketio_redis_key;
        let bad = key.is_empty()
            || key.len() > SOCKETIO_REDIS_KEY_BYTES_MAX
            || key.chars().any(|c| c.is_whitespace() || c.is_control());
        if bad {
            return err(format!(
                "--socketio-redis-key {key:?}: must be 1..={SOCKETIO_REDIS_KEY_BYTES_MAX} bytes without spaces or control characters; use the `key` your emitter and adapter use (default {SOCKETIO_REDIS_KEY_DEFAULT})"
            ));
        }
        if !self.socketio_adapter {
            return Ok(None);
        }
        if !cluster {
            return err(
                "--socketio-adapter needs --redis: it reads and writes socket.io's channels on the Redis your emitters and Node servers use; add --redis redis://host:port or drop --socketio-adapter".to_string(),
            );
        }
        Ok(Some(SocketIoAdapterConfig { key: key.clone() }))
    }
}

impl Config {
    /// A config for tests: loopback, ephemeral port, defaults elsewhere.
    // Not reachable from input: only tests and benches call this, with fixed arguments and
    // the defaults, which `validate` accepts (a failure is a bug in a default, for a test).
    #[allow(clippy::expect_used)]
    pub fn for_tests(shards: usize) -> Config {
        let args = Cli::parse_from(["volley", "serve", "--listen", "127.0.0.1:0"]);
        let args = args.command.serve_args();
        let mut config = args.validate(shards).expect("defaults are valid");
        config.shards = shards;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["volley", "serve"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).command.serve_args()
    }

    #[test]
    fn socketio_adapter_needs_redis_and_a_plain_key() {
        assert_eq!(args(&[]).validate(2).unwrap().socketio.adapter, None);
        let e = args(&["--socketio-adapter"])
            .validate(2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--socketio-adapter needs --redis"), "{e}");
        let config = args(&["--socketio-adapter", "--redis", "redis://127.0.0.1:6390"])
            .validate(2)
            .unwrap();
        assert_eq!(
            config.socketio.adapter,
            Some(SocketIoAdapterConfig {
                key: "socket.io".into()
            })
        );
        let config = args(&[
            "--socketio-adapter",
            "--redis",
            "redis://127.0.0.1:6390",
            "--socketio-redis-key",
            "myapp",
        ])
        .validate(2)
        .unwrap();
        assert_eq!(config.socketio.adapter.unwrap().key, "myapp");
        for key in ["", "a b", &"k".repeat(65)] {
            let e = args(&["--socketio-redis-key", key])
                .validate(2)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--socketio-redis-key"), "{e}");
        }
    }

    #[test]
    fn defaults_validate() {
        let config = args(&[]).validate(2).unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(config.backlog, 4096);
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn webhook_urls() {
        let split = |url| parse_webhook_url(url).unwrap();
        assert_eq!(
            split("http://127.0.0.1:3000/hooks?k=1"),
            (
                "127.0.0.1:3000".into(),
                "127.0.0.1".into(),
                3000,
                "/hooks?k=1".into()
            )
        );
        assert_eq!(
            split("http://localhost"),
            ("localhost".into(), "localhost".into(), 80, "/".into())
        );
        assert_eq!(split("http://[::1]:8/").1, "::1");
        assert!(parse_webhook_url("https://a/")
            .unwrap_err()
            .contains("https is not supported"));
        assert!(parse_webhook_url("a:1/x").is_err());
        assert!(parse_webhook_url("http://u:p@a/").is_err());
        let config = args(&["--app-webhook", "http://127.0.0.1:9/h"])
            .validate(1)
            .unwrap();
        let hook = config.app_webhook.unwrap();
        assert_eq!((hook.addr.port(), hook.path.as_str()), (9, "/h"));
        assert!(args(&[]).validate(1).unwrap().app_webhook.is_none());
        let e = args(&[
            "--app-webhook",
            "http://127.0.0.1:9/",
            "--app-webhook-concurrency-max",
            "0",
        ])
        .validate(1)
        .err()
        .unwrap();
        assert!(e.0.contains("--app-webhook-concurrency-max 0"), "{e}");
    }

    #[test]
    fn socketio_flags() {
        let config = args(&[]).validate(2).unwrap().socketio;
        assert_eq!(config.path, "/socket.io/");
        assert_eq!(config.namespaces, vec![(0, "/".to_string())]);
        assert_eq!(config.idle_timeout_s(), 25 + 20);
        let config = args(&["--socketio-path", "/rt", "--socketio-namespace", "/chat"])
            .validate(2)
            .unwrap()
            .socketio;
        assert_eq!(config.path, "/rt/");
        let chat = config.namespace("/chat").unwrap();
        assert_eq!(crate::protocol::socketio::namespace_name(chat), "/chat");
        assert_eq!(config.namespace("/nope"), None);
        for bad in [
            &["--socketio-namespace", "chat"][..],
            &["--socketio-namespace", "/a,b"],
            &["--socketio-path", "socket.io"],
            &["--socketio-ping-interval-ms", "10"],
            &["--socketio-max-payload", "1"],
        ] {
            let error = args(bad).validate(2).unwrap_err().0;
            assert!(error.starts_with(bad[0]), "{error}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_cpu_list("1, 3-4").unwrap(), vec![1, 3, 4]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("0,0").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn errors_name_the_value_and_the_fix() {
        let e = args(&["--shards", "0"]).validate(2).unwrap_err().0;
        assert!(e.contains("--shards 0") && e.contains("1..=2"), "{e}");
        let e = args(&["--shards", "3"]).validate(2).unwrap_err().0;
        assert!(e.contains("--shards 3") && e.contains("at most 2"), "{e}");
        let e = args(&["--listen", "nowhere"]).validate(2).unwrap_err().0;
        assert!(e.contains("--listen nowhere"), "{e}");
        let e = args(&["--cpus", "1-0"]).validate(2).unwrap_err().0;
        assert!(e.contains("--cpus 1-0"), "{e}");
        let e = args(&["--shards", "1", "--cpus", "0,1"])
            .validate(2)
            .unwrap_err()
            .0;
        assert!(e.contains("one CPU per shard"), "{e}");
        let e = args(&["--idle-timeout-s", "10"]).validate(2).unwrap_err().0;
        assert!(e.contains("--ping-interval-s"), "{e}");
        for bad in ["0", "1048577"] {
            let e = args(&["--message-fragments-max", bad])
                .validate(2)
                .unwrap_err()
                .0;
            assert!(e.contains(&format!("--message-fragments-max {bad}")), "{e}");
        }
    }

    #[test]
    fn message_fragments_max_reaches_the_config() {
        let config = args(&[]).validate(2).unwrap();
        assert_eq!(config.message_fragments_max, MESSAGE_FRAGMENTS_MAX_DEFAULT);
        let config = args(&["--message-fragments-max", "65536"])
            .validate(2)
            .unwrap();
        assert_eq!(config.message_fragments_max, 65_536);
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let config = args(&["--api-key", "0123456789abcdef-key"])
            .validate(2)
            .unwrap();
        assert!(!format!("{config:?}").contains("0123456789abcdef-key"));
    }

    #[test]
    fn redis_urls() {
        assert_eq!(
            parse_redis_url("redis://127.0.0.1:6380").unwrap(),
            RedisUrl {
                host: "127.0.0.1".into(),
                port: 6380,
                username: None,
                password: None,
                db: 0
            }
        );
        assert_eq!(
            parse_redis_url("redis://:s3cret@h/2").unwrap(),
            RedisUrl {
                host: "h".into(),
                port: 6379,
                username: None,
                password: Some("s3cret".into()),
                db: 2
            }
        );
        assert_eq!(
            parse_redis_url("redis://me:p@ss@h:1/").unwrap(),
            RedisUrl {
                host: "h".into(),
                port: 1,
                username: Some("me".into()),
                password: Some("p@ss".into()),
                db: 0
            }
        );
        assert_eq!(parse_redis_url("redis://[::1]:7000").unwrap().host, "::1");
        assert!(parse_redis_url("http://h").is_err());
        assert!(parse_redis_url("redis://h:port").is_err());
        assert!(parse_redis_url("redis://h/x").is_err());
        let config = args(&["--redis", "redis://:hunter2@127.0.0.1:6390/1"])
            .validate(2)
            .unwrap();
        let redis = config.redis.unwrap();
        assert_eq!(redis.display, "redis://127.0.0.1:6390/1");
        assert!(
            !format!("{redis:?}").contains("hunter2"),
            "the password is never shown"
        );
        let e = args(&["--redis", "redis://:hunter2@h:x"])
            .validate(2)
            .unwrap_err()
            .0;
        assert!(e.contains("--redis") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn the_console_is_on_in_open_mode_or_when_asked() {
        let console = |extra: &[&str]| args(extra).validate(1).unwrap().console;
        let jwt = ["--jwt-secret", "0123456789abcdef0123"];
        assert!(console(&[]), "open mode");
        assert!(!console(&jwt), "tokens: off unless asked");
        assert!(
            console(&[&jwt[..], &["--console"]].concat()),
            "bare --console is on"
        );
        assert!(console(&[&jwt[..], &["--console", "on"]].concat()));
        assert!(!console(&["--console", "off"]));
        assert!(Cli::try_parse_from(["volley", "serve", "--console", "maybe"]).is_err());
    }

    #[test]
    fn cpus_set_the_shard_count() {
        let config = args(&["--cpus", "1"]).validate(2).unwrap();
        assert_eq!(config.shards, 1);
        assert_eq!(config.cpus, Some(vec![1]));
    }

    #[test]
    fn wire_flags_are_checked() {
        let config = args(&[]).validate(2).unwrap();
        assert_eq!(config.wire.compression, Compression::On);
        assert_eq!(config.wire.compression_min_bytes, 256);
        assert_eq!(config.wire.echo_path, None);
        let e = args(&["--compression-level", "10"])
            .validate(2)
            .unwrap_err()
            .0;
        assert!(e.contains("--compression-level 10"), "{e}");
        let e = args(&["--echo-path", "echo"]).validate(2).unwrap_err().0;
        assert!(e.contains("--echo-path"), "{e}");
        let e = args(&["--echo-path", "/ws"]).validate(2).unwrap_err().0;
        assert!(e.contains("other than"), "{e}");
        // --insecure-open: open mode on a public address is refused for its own reason.
        let public = [
            "--listen",
            "0.0.0.0:8080",
            "--insecure-open",
            "--echo-path",
            "/echo",
        ];
        let e = args(&public).validate(2).unwrap_err().0;
        assert!(e.contains("--echo-path-public"), "{e}");
        let forced = [&public[..], &["--echo-path-public"]].concat();
        let config = args(&forced).validate(2).unwrap();
        assert_eq!(config.wire.echo_path.as_deref(), Some("/echo"));
        let off = args(&["--compression", "off"]).validate(2).unwrap();
        assert_eq!(off.wire.compression, Compression::Off);
    }
}
