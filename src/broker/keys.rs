//! Every Redis name volley uses, and every Lua script it runs: the one place to read the
//! cluster's data layout. Each name says what it holds and how long it lives.
//!
//! Owns names and scripts only; it sends nothing. socket.io's own channels (for the
//! adapter bridge) are here too, in [`SocketIoKeys`]. Called by `backend::redis` (publish,
//! history, inbox, receipts, presence, membership) and `broker::client` (the heartbeat);
//! `front` and `api` never build a Redis name themselves.

use crate::protocol::socketio::adapter;

/// The names under one `--redis-prefix`; every name is `{prefix}:...`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// Pub/sub channel `{prefix}:{channel}` of a volley channel (`all`, `user:<id>`,
    /// `room:<name>`): envelopes (docs/ENVELOPE.md). A channel, not a key: nothing is stored.
    pub fn channel(&self, channel: &str) -> String {
        format!("{}:{channel}", self.prefix)
    }

    /// `{prefix}:sockets:{node tag}`: the pub/sub channel of every socket.io socket id room
    /// of one process (socket ids carry the tag, `session::socket_id`). Each shard of that
    /// process subscribes to it for its whole life, so a socket costs no subscription; a
    /// message on it is numbered, stored and caught up as its room's (`room:<socket id>`).
    pub fn sockets_channel(&self, node_tag: u16) -> String {
        format!("{}:sockets:{node_tag:04x}", self.prefix)
    }

    /// The pub/sub channel of volley channel `channel`: its own (`channel`), except for a
    /// room named by a socket id, whose channel is its process's `sockets_channel`.
    pub fn pubsub_channel(&self, channel: &str) -> String {
        match sockets_tag(channel) {
            Some(tag) => self.sockets_channel(tag),
            None => self.channel(channel),
        }
    }

    /// The node tag of a `sockets_channel` name, or None for any other channel.
    pub fn sockets_channel_tag(&self, redis_channel: &str) -> Option<u16> {
        let hex = redis_channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":sockets:")?;
        if hex.len() != 4 {
            return None;
        }
        u16::from_str_radix(hex, 16).ok()
    }

    /// The volley channel a pub/sub channel name carries, or None when it is not ours.
    pub fn channel_of<'a>(&self, redis_channel: &'a str) -> Option<&'a str> {
        redis_channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(':')
    }

    /// String `{prefix}:seq:{channel}`: the channel's last seq (INCR by the publish script).
    /// No TTL: numbering must never restart while clients hold seqs of the channel.
    pub fn seq(&self, channel: &str) -> String {
        format!("{}:seq:{channel}", self.prefix)
    }

    /// Stream `{prefix}:history:{channel}`: one entry `<seq>-0` per message, field `e` = the
    /// envelope; capped at `--history-size` (MAXLEN), EXPIRE `--history-ttl-s` after the last
    /// publish.
    pub fn history(&self, channel: &str) -> String {
        format!("{}:history:{channel}", self.prefix)
    }

    /// Hash `{prefix}:inbox:{user}`: seq -> envelope of user messages nobody received;
    /// at most `--inbox-size` entries, EXPIRE `--inbox-ttl-s` after the last one stored.
    pub fn inbox(&self, user: &str) -> String {
        format!("{}:inbox:{user}", self.prefix)
    }

    /// Hash `{prefix}:inbox-deliveries:{user}`: seq -> delivery attempts of an inbox entry
    /// (given up past `--inbox-deliveries-max`); same TTL as the inbox.
    pub fn inbox_deliveries(&self, user: &str) -> String {
        format!("{}:inbox-deliveries:{user}", self.prefix)
    }

    /// Hash `{prefix}:receipt:{id}`: fields `delivered` and `acked` of one message, summed
    /// over every process; EXPIRE `RECEIPT_RETENTION_S`.
    pub fn receipt(&self, id: &str) -> String {
        format!("{}:receipt:{id}", self.prefix)
    }

    /// Hash `{prefix}:presence:{channel}`: for `user:<id>`, `node#shard` -> connections; for
    /// `room:<name>`, `node#shard|member` -> connections (one field per shard, so each shard
    /// can write its own counts again after Redis lost them). No TTL: entries of a node whose
    /// heartbeat expired are removed when a presence read finds them.
    pub fn presence(&self, channel: &str) -> String {
        format!("{}:presence:{channel}", self.prefix)
    }

    /// String `{prefix}:node:{node}`: a node's heartbeat, EXPIRE `--presence-ttl-s`.
    pub fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// `{prefix}:node:`, what `node` puts before a node id (the publish script checks
    /// heartbeats by name).
    pub fn node_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    /// String `{prefix}:epoch:{channel}`: the epoch of the channel's numbering, created
    /// with its counter (a new one when Redis lost the counter). No TTL, like the counter.
    pub fn epoch(&self, channel: &str) -> String {
        format!("{}:epoch:{channel}", self.prefix)
    }

    /// String `{prefix}:published:{id}`: `<seq>:<epoch>` of a message published with an
    /// `Idempotency-Key`, so a retry answers it instead of publishing again; EXPIRE
    /// `IDEMPOTENCY_TTL_S`.
    pub fn published(&self, id: &str) -> String {
        format!("{}:published:{id}", self.prefix)
    }

    /// Set `{prefix}:nodes`: every node that has beaten at least once. No TTL: a member
    /// whose heartbeat key is gone is a dead node.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

/// socket.io's own Redis names under `--socketio-redis-key` (socket.io's `key` option,
/// default `socket.io`), for `--socketio-adapter` (issue 13, docs/SOCKETIO.md "Redis"). The
/// formats are `@socket.io/redis-adapter` v8's; `protocol::socketio::adapter` builds and
/// reads them, and its tests pin them against bytes the real packages wrote. Channels, not
/// keys: nothing is stored.
#[derive(Debug, Clone)]
pub struct SocketIoKeys {
    key: String,
    /// What volley writes as the publisher uid of its broadcasts: `volley:<prefix>:<node>`.
    uid: String,
    /// `volley:<prefix>:`, which every volley process of this cluster starts its uid with.
    uid_cluster: String,
}

impl SocketIoKeys {
    pub fn new(key: &str, redis_prefix: &str, node_id: &str) -> SocketIoKeys {
        let uid_cluster = format!("volley:{redis_prefix}:");
        SocketIoKeys {
            key: key.to_string(),
            uid: format!("{uid_cluster}{node_id}"),
            uid_cluster,
        }
    }

    /// The uid this node writes into its broadcasts. Node servers drop nothing but their
    /// own uid, so they deliver it.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// True for a uid some volley process of this cluster wrote: every volley process
    /// already delivered that message to its own clients through volley's channel, so its
    /// adapter-format copy is for Node servers only.
    pub fn is_volley_uid(&self, uid: &str) -> bool {
        uid.starts_with(&self.uid_cluster)
    }

    /// Pub/sub channel `{key}#{nsp}#` (every socket of a namespace, or several rooms) or
    /// `{key}#{nsp}#{room}#` (exactly one room): broadcasts as MessagePack
    /// `[uid, packet, {rooms, except, flags}]`, from the emitter and from adapters.
    pub fn broadcast(&self, nsp: &str, rooms: &[&str]) -> String {
        adapter::broadcast_channel(&self.key, nsp, rooms)
    }

    /// Pattern `{key}#{nsp}#*` (PSUBSCRIBE): every broadcast channel of a namespace, as each
    /// adapter subscribes it. Glob characters in the key or namespace are escaped, so the
    /// pattern matches those names literally.
    pub fn broadcast_pattern(&self, nsp: &str) -> String {
        let mut pattern = String::with_capacity(self.key.len() + nsp.len() + 3);
        for part in [self.key.as_str(), "#", nsp, "#"] {
            for c in part.chars() {
                if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                    pattern.push('\\');
                }
                pattern.push(c);
            }
        }
        pattern.push('*');
        pattern
    }

    /// Pub/sub channel `{key}-request#{nsp}#`: requests between servers (JSON, or
    /// MessagePack for broadcasts with acks): socketsJoin, socketsLeave, disconnectSockets,
    /// serverSideEmit, fetchSockets, allRooms. Its subscriber count (PUBSUB NUMSUB) is how
    /// many answers a Node server waits for, so each volley shard subscribed answers.
    pub fn request(&self, nsp: &str) -> String {
        adapter::request_channel(&self.key, nsp)
    }

    /// Pub/sub channel `{key}-response#{nsp}#`: answers to requests, JSON (MessagePack for
    /// a broadcast's acks).
    pub fn response(&self, nsp: &str) -> String {
        adapter::response_channel(&self.key, nsp)
    }

    /// Which of namespaces `nsps` a Redis channel is the broadcast channel of, and its room
    /// (None for the namespace-wide one).
    pub fn broadcast_of<'a, 'n>(
        &self,
        channel: &'a str,
        nsps: impl IntoIterator<Item = &'n str>,
    ) -> Option<(&'n str, Option<&'a str>)> {
        nsps.into_iter()
            .find_map(|nsp| adapter::channel_room(channel, &self.key, nsp).map(|room| (nsp, room)))
    }

    /// Which of namespaces `nsps` a Redis channel is the request channel of.
    pub fn request_of<'n>(
        &self,
        channel: &str,
        nsps: impl IntoIterator<Item = &'n str>,
    ) -> Option<&'n str> {
        nsps.into_iter().find(|nsp| channel == self.request(nsp))
    }

    /// True for a name under this key (`{key}#...` or `{key}-request#...`).
    pub fn owns(&self, channel: &[u8]) -> bool {
        let Some(rest) = channel.strip_prefix(self.key.as_bytes()) else {
            return false;
        };
        rest.starts_with(b"#") || rest.starts_with(b"-request#")
    }
}

/// Numbers, stores and publishes in one step: (with an idempotency key) answer a message
/// published before under the same id without publishing it again; create the channel's
/// epoch with its counter; INCR the counter; write seq and epoch into the envelope's fixed
/// 8-byte slots; append it to the channel's history stream (entry id `<seq>-0`, trimmed to
/// the history size); PUBLISH; and when PUBLISH reached nobody on a user channel and the
/// user is really offline (no live node counts a connection in its presence), keep it in
/// the user's inbox. Redis runs scripts atomically, so sequence order is history order is
/// publish order everywhere.
///
/// "Really offline" is as far as Redis can tell: a node Redis knows nothing of (it lost its
/// heartbeat and presence in an empty restart, and the node is not back yet) may still hold
/// the user. The inbox entry is the same envelope as the history entry, so the node's
/// catch-up can remove it once it delivered the message live (`INBOX_DELIVERED_SCRIPT`).
///
/// KEYS: seq, channel, history, inbox, inbox deliveries, epoch, published id, presence.
/// ARGV: envelope, seq offset, history size, history ttl, inbox size, inbox ttl,
///       epoch candidate, idempotency ttl (0: no key given), node key prefix.
/// Returns {seq, receivers, epoch, kept}; receivers is -1 for a duplicate of an earlier
/// publish; kept is 1 when the message went to the user's inbox.
pub const PUBLISH_SCRIPT: &str = r#"
local dedupe_ttl = tonumber(ARGV[8])
if dedupe_ttl > 0 then
  local prior = redis.call('GET', KEYS[7])
  if prior then
    local colon = string.find(prior, ':', 1, true)
    return {tonumber(string.sub(prior, 1, colon - 1)), -1, tonumber(string.sub(prior, colon + 1)), 0}
  end
end
local epoch = redis.call('GET', KEYS[6])
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', KEYS[6], epoch)
end
epoch = tonumber(epoch)
local seq = redis.call('INCR', KEYS[1])
local function u64(n)
  return struct.pack('>I4I4', math.floor(n / 4294967296), n % 4294967296)
end
local at = tonumber(ARGV[2])
local e = ARGV[1]
local envelope = string.sub(e, 1, at) .. u64(seq) .. string.sub(e, at + 9, at + 15) .. u64(epoch) .. string.sub(e, at + 24)
local history_size = tonumber(ARGV[3])
if history_size > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', history_size, string.format('%d-0', seq), 'e', envelope)
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
local receivers = redis.call('PUBLISH', KEYS[2], envelope)
local inbox_size = tonumber(ARGV[5])
local kept = 0
if receivers == 0 and inbox_size > 0 then
  local online = false
  local fields = redis.call('HGETALL', KEYS[8])
  for i = 1, #fields, 2 do
    local node = string.match(fields[i], '^([^#|]+)')
    if node and tonumber(fields[i + 1]) > 0 and redis.call('EXISTS', ARGV[9] .. node) == 1 then
      online = true
      break
    end
  end
  if not online then
    kept = 1
    redis.call('HSET', KEYS[4], seq, envelope)
    if redis.call('HLEN', KEYS[4]) > inbox_size then
      local seqs = redis.call('HKEYS', KEYS[4])
      table.sort(seqs, function(a, b) return tonumber(a) < tonumber(b) end)
      for i = 1, #seqs - inbox_size do
        redis.call('HDEL', KEYS[4], seqs[i])
        redis.call('HDEL', KEYS[5], seqs[i])
      end
    end
    redis.call('EXPIRE', KEYS[4], ARGV[6])
    redis.call('EXPIRE', KEYS[5], ARGV[6])
  end
end
if dedupe_ttl > 0 then
  redis.call('SET', KEYS[7], seq .. ':' .. epoch, 'EX', dedupe_ttl)
end
return {seq, receivers, epoch, kept}
"#;

/// Reads the channel's current seq, its epoch and its history after a seq, atomically.
///
/// KEYS: seq, history, epoch. ARGV: first entry id (`<since+1>-0`), count.
/// Returns {current, entries, epoch or false}.
pub const HISTORY_SCRIPT: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
return {current, entries, redis.call('GET', KEYS[3])}
"#;

/// Writes this shard's presence counters as they are (after a reconnect, or after Redis
/// took writes again: deltas sent meanwhile may be lost, and Redis may have lost all).
///
/// KEYS: presence hashes. ARGV: per key, its field and this shard's count (0 deletes).
pub const PRESENCE_SET_SCRIPT: &str = r#"
for i, key in ipairs(KEYS) do
  local field = ARGV[2 * i - 1]
  local count = tonumber(ARGV[2 * i])
  if count > 0 then
    redis.call('HSET', key, field, count)
  else
    redis.call('HDEL', key, field)
  end
end
return #KEYS
"#;

/// Removes from a user's inbox the messages a catch-up after a reconnect just delivered to
/// the user's connections: they were kept because PUBLISH reached nobody while the node
/// holding the user was away from Redis, and must not be delivered again at the user's next
/// connection. An entry goes only when it is byte for byte the history entry of the same
/// seq (the publish script stores one envelope in both, with its id and epoch), so an entry
/// of another numbering under the same seq stays.
///
/// KEYS: inbox, inbox deliveries, history. ARGV: the seqs delivered. Returns how many went.
pub const INBOX_DELIVERED_SCRIPT: &str = r#"
local removed = 0
for i = 1, #ARGV do
  local kept = redis.call('HGET', KEYS[1], ARGV[i])
  if kept then
    local id = ARGV[i] .. '-0'
    local entry = redis.call('XRANGE', KEYS[3], id, id)
    if entry[1] and entry[1][2][2] == kept then
      redis.call('HDEL', KEYS[1], ARGV[i])
      redis.call('HDEL', KEYS[2], ARGV[i])
      removed = removed + 1
    end
  end
end
return removed
"#;

/// Takes a user's inbox for one more delivery attempt; gives up messages delivered
/// `ARGV[1]` times already.
///
/// KEYS: inbox, inbox deliveries. ARGV: attempts max. Returns {given_up, envelopes}.
pub const INBOX_TAKE_SCRIPT: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
local given_up = 0
for i = 1, #all, 2 do
  local n = redis.call('HINCRBY', KEYS[2], all[i], 1)
  if n > tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call('HDEL', KEYS[2], all[i])
    given_up = given_up + 1
  else
    table.insert(out, all[i + 1])
  end
end
return {given_up, out}
"#;

/// The node tag of volley channel `room:<socket id>` (`session::socket_owner`), or None
/// for any other channel.
fn sockets_tag(channel: &str) -> Option<u16> {
    let room = channel.strip_prefix("room:")?;
    crate::protocol::socketio::session::socket_owner(room).map(|owner| owner.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_channels_round_trip() {
        let keys = Keys::new("volley");
        assert_eq!(keys.channel("room:lobby"), "volley:room:lobby");
        assert_eq!(keys.channel_of("volley:room:lobby"), Some("room:lobby"));
        assert_eq!(keys.channel_of("other:room:lobby"), None);
        assert_eq!(keys.channel_of("volleyx:all"), None);
        assert_eq!(keys.seq("all"), "volley:seq:all");
        assert_eq!(keys.history("user:ann"), "volley:history:user:ann");
        assert_eq!(keys.inbox("ann"), "volley:inbox:ann");
        assert_eq!(keys.inbox_deliveries("ann"), "volley:inbox-deliveries:ann");
        assert_eq!(keys.receipt("n-0-1"), "volley:receipt:n-0-1");
        assert_eq!(keys.presence("room:a"), "volley:presence:room:a");
        assert_eq!(keys.node("abc"), "volley:node:abc");
        assert_eq!(keys.nodes(), "volley:nodes");
    }

    #[test]
    fn socket_io_names_are_the_adapter_s() {
        let sio = SocketIoKeys::new("socket.io", "volley", "n1");
        assert_eq!(sio.uid(), "volley:volley:n1");
        assert!(sio.is_volley_uid("volley:volley:other"));
        assert!(!sio.is_volley_uid("emitter"));
        assert!(!sio.is_volley_uid("volley:elsewhere:n1"));
        assert_eq!(sio.broadcast("/", &[]), "socket.io#/#");
        assert_eq!(sio.broadcast("/", &["r"]), "socket.io#/#r#");
        assert_eq!(sio.broadcast_pattern("/"), "socket.io#/#*");
        assert_eq!(
            SocketIoKeys::new("a*b", "v", "n").broadcast_pattern("/[x]"),
            "a\\*b#/\\[x\\]#*"
        );
        assert_eq!(sio.request("/chat"), "socket.io-request#/chat#");
        assert_eq!(sio.response("/"), "socket.io-response#/#");
        let nsps = ["/", "/chat"];
        assert_eq!(sio.broadcast_of("socket.io#/#", nsps), Some(("/", None)));
        assert_eq!(
            sio.broadcast_of("socket.io#/chat#lobby#", nsps),
            Some(("/chat", Some("lobby")))
        );
        assert_eq!(sio.broadcast_of("socket.io#/admin#", nsps), None);
        assert_eq!(
            sio.request_of("socket.io-request#/chat#", nsps),
            Some("/chat")
        );
        assert_eq!(sio.request_of("socket.io-response#/#", nsps), None);
        assert!(sio.owns(b"socket.io#/#x#"));
        assert!(sio.owns(b"socket.io-request#/#"));
        assert!(!sio.owns(b"socket.io-response#/#"));
        assert!(!sio.owns(b"volley:all"));
    }
}
