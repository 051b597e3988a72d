//! Who a connection is and what it may do: its codec, user, token claims, protocol
//! strikes, publish rate and recovery state. Lives beside the socket in the hub's slab.
//!
//! Built by `front::upgrade`; read and changed by `hub` and `services`. No I/O.

use std::rc::Rc;

use crate::auth::Claims;
use crate::protocol::socketio::session::SioState;
use crate::protocol::Codec;

/// A token bucket in thousandths of a token, refilled from a millisecond clock.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens_milli: u32,
    last_ms: u32,
}

impl TokenBucket {
    pub fn full(burst: u32) -> TokenBucket {
        TokenBucket {
            tokens_milli: burst.saturating_mul(1000),
            last_ms: 0,
        }
    }

    /// Takes one token at `now_ms` if there is one.
    pub fn take(&mut self, now_ms: u32, rate_per_s: u32, burst: u32) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms;
        let refill = (elapsed as u64 * rate_per_s as u64).min(u32::MAX as u64) as u32;
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(refill)
            .min(burst.saturating_mul(1000));
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Who a connection is and what it may do; lives in the connection's slab entry.
#[derive(Debug)]
pub struct Session {
    pub codec: Codec,
    /// The user id (from the token's `sub`, or `?user=` in open mode); None = anonymous.
    pub user: Option<Rc<str>>,
    /// The token's permissions; None in open mode, where everything is allowed.
    pub claims: Option<Rc<Claims>>,
    /// Protocol errors not yet forgiven; past `CLIENT_STRIKES_MAX` the client is closed with
    /// 1008. One is forgiven per `CLIENT_STRIKE_DECAY_S` (see [`Session::strike`]).
    pub strikes: u8,
    /// Shard-clock second from which the next strike is forgiven.
    pub strikes_at_s: u32,
    pub publish_bucket: TokenBucket,
    /// Channels being recovered (replay under way, or a short grace after it); None for
    /// almost every connection, so it costs one pointer.
    pub recovering: Option<Box<crate::seam::Recovering>>,
    /// socket.io state; None for native and raw connections, so it costs one pointer.
    pub sio: Option<Box<SioState>>,
}

impl Session {
    pub fn new(
        codec: Codec,
        user: Option<Rc<str>>,
        claims: Option<Rc<Claims>>,
        burst: u32,
    ) -> Session {
        Session {
            codec,
            user,
            claims,
            strikes: 0,
            strikes_at_s: 0,
            publish_bucket: TokenBucket::full(burst),
            recovering: None,
            sio: None,
        }
    }

    /// Counts one strike at `now_s` (the shard clock), first forgiving one per `decay_s`
    /// seconds since the last forgiveness, and returns the strikes now held. So strikes
    /// measure a rate: a client that errs now and then (a late ack) is never cut off, and
    /// one that errs `CLIENT_STRIKES_MAX` times in a burst is.
    pub fn strike(&mut self, now_s: u32, decay_s: u32) -> u8 {
        let decay_s = decay_s.max(1);
        let forgiven = now_s.saturating_sub(self.strikes_at_s) / decay_s;
        self.strikes = self
            .strikes
            .saturating_sub(u8::try_from(forgiven).unwrap_or(u8::MAX));
        self.strikes_at_s = if self.strikes == 0 {
            now_s
        } else {
            self.strikes_at_s
                .saturating_add(forgiven.saturating_mul(decay_s))
        };
        self.strikes = self.strikes.saturating_add(1);
        self.strikes
    }

    /// The `from` of messages this connection publishes: `user:<id>`, or None if anonymous.
    pub fn from(&self) -> Option<String> {
        self.user.as_ref().map(|u| format!("user:{u}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_decay_one_per_interval() {
        let mut s = Session::new(Codec::Native, None, None, 1);
        // A burst counts every strike.
        for n in 1..=5 {
            assert_eq!(s.strike(100, 10), n);
        }
        // 25 s later two are forgiven (one per 10 s), then the new one counts.
        assert_eq!(s.strike(125, 10), 4);
        // The 5 s left over from 125 still count toward the next forgiveness.
        assert_eq!(s.strike(130, 10), 4);
        // A strike every 25 s, forever, never adds up.
        let mut calm = Session::new(Codec::Native, None, None, 1);
        let held: Vec<u8> = (0..1000).map(|i| calm.strike(i * 25, 10)).collect();
        assert!(held.iter().all(|&n| n <= 1), "{:?}", &held[..10]);
        // Clocks that go nowhere and huge gaps are fine.
        assert_eq!(calm.strike(0, 10), 2);
        assert_eq!(calm.strike(u32::MAX, 10), 1);
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::full(3);
        assert!((0..3).all(|_| bucket.take(0, 2, 3)));
        assert!(!bucket.take(0, 2, 3));
        assert!(bucket.take(500, 2, 3), "2/s refills one token in 500 ms");
        assert!(!bucket.take(500, 2, 3));
        assert!(bucket.take(10_000, 2, 3));
        assert!(bucket.take(10_000, 2, 3));
        assert!(bucket.take(10_000, 2, 3));
        assert!(!bucket.take(10_000, 2, 3), "never more than the burst");
    }
}
