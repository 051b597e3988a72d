//! One standalone volley per port: a claim on the listen address that lives exactly as long
//! as the process, so a second standalone `volley serve` refuses to start instead of
//! silently taking half of the port's clients through SO_REUSEPORT.
//!
//! The claim is an abstract unix socket (Linux: no file, gone with the process even after
//! SIGKILL, scoped to the network namespace like the port itself) named
//! `volley/<port>/<ip>/<pid>/<mode>`, mode `standalone` or `redis-<hash of the prefix>`.
//! After binding its own name a process reads every claim in `/proc/net/unix` and refuses
//! when another process claims an overlapping address (same port, same IP or either
//! `0.0.0.0`/`::`) and either side is standalone or their Redis prefixes differ. Binding
//! first and looking second means two processes started in the same instant both see
//! each other and both refuse: never a silent split. Called by `server::serve`.

use std::net::{IpAddr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

/// Where the kernel lists unix sockets, abstract names included (as `@name`).
const PROC_NET_UNIX: &str = "/proc/net/unix";
/// Bytes of `/proc/net/unix` read at most: a busy box lists many sockets, and claims are
/// found by a prefix anyway.
const PROC_NET_UNIX_BYTES_MAX: u64 = 64 << 20;

/// How a process shares its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Alone: every client must reach this process, or broadcasts miss them.
    Standalone,
    /// Cluster through Redis: processes of the same prefix deliver to each other's
    /// clients, so they may share a port.
    Redis { prefix: String },
}

impl Mode {
    fn tag(&self) -> String {
        match self {
            Mode::Standalone => "standalone".into(),
            Mode::Redis { prefix } => format!("redis-{:016x}", fnv1a(prefix.as_bytes())),
        }
    }
}

/// FNV-1a, 64 bits: a short, stable name for a Redis prefix (a socket name holds at most
/// 107 bytes, a prefix up to 64).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Held for the life of the process: dropping it gives the port up.
#[derive(Debug)]
pub struct PortClaim {
    _socket: UnixDatagram,
}

/// One claim read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    port: u16,
    ip: IpAddr,
    pid: u32,
    tag: String,
}

fn name(addr: SocketAddr, pid: u32, mode: &Mode) -> String {
    format!("volley/{}/{}/{pid}/{}", addr.port(), addr.ip(), mode.tag())
}

fn parse_claim(name: &str) -> Option<Claim> {
    let mut parts = name.strip_prefix("volley/")?.splitn(4, '/');
    Some(Claim {
        port: parts.next()?.parse().ok()?,
        ip: parts.next()?.parse().ok()?,
        pid: parts.next()?.parse().ok()?,
        tag: parts.next()?.to_string(),
    })
}

/// The claims listed in `/proc/net/unix` text: the last column, `@volley/...`.
fn claims(proc_net_unix: &str) -> Vec<Claim> {
    proc_net_unix
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter_map(|path| path.strip_prefix('@'))
        .filter_map(parse_claim)
        .collect()
}

/// Why `other` must not share `addr` with a process in `mode`, or None.
fn conflict(addr: SocketAddr, mode: &Mode, pid: u32, other: &Claim) -> Option<String> {
    let overlaps = other.port == addr.port()
        && (other.ip == addr.ip() || other.ip.is_unspecified() || addr.ip().is_unspecified());
    if other.pid == pid || !overlaps || (other.tag == mode.tag() && *mode != Mode::Standalone) {
        return None;
    }
    let theirs = if other.tag == "standalone" {
        "a standalone volley".to_string()
    } else {
        "a volley in a Redis cluster with another --redis-prefix".to_string()
    };
    let why = match mode {
        Mode::Standalone => "two processes on one port split its clients, and a broadcast from one reaches only the clients the kernel gave it",
        Mode::Redis { .. } if other.tag == "standalone" => "the standalone process would miss every message published through Redis",
        Mode::Redis { .. } => "clusters with different prefixes do not deliver to each other's clients, so each broadcast would reach only part of the port's clients",
    };
    Some(format!(
        "--listen {addr}: port {} is already served by {theirs} (pid {} on {}): {why}; stop it, pick another port, or run every process on this port with the same --redis and --redis-prefix",
        other.port, other.pid, other.ip
    ))
}

/// Claims `addr` for this process, or says which volley already serves it.
pub fn claim(addr: SocketAddr, mode: &Mode) -> Result<PortClaim, String> {
    let pid = std::process::id();
    let unix = UnixAddr::from_abstract_name(name(addr, pid, mode).as_bytes())
        .map_err(|e| format!("--listen {addr}: cannot name the port claim: {e}"))?;
    let socket = UnixDatagram::bind_addr(&unix)
        .map_err(|e| format!("--listen {addr}: cannot claim the port for this process: {e}"))?;
    // Without procfs there is nothing to compare with: start, as before this check existed.
    let listing = read_capped(PROC_NET_UNIX).unwrap_or_default();
    if let Some(why) = claims(&listing)
        .iter()
        .find_map(|other| conflict(addr, mode, pid, other))
    {
        return Err(why);
    }
    Ok(PortClaim { _socket: socket })
}

fn read_capped(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(PROC_NET_UNIX_BYTES_MAX)
        .read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn redis(prefix: &str) -> Mode {
        Mode::Redis {
            prefix: prefix.into(),
        }
    }

    #[test]
    fn names_round_trip_through_proc_net_unix() {
        let n = name(addr("[::1]:8080"), 42, &redis("a/b c"));
        assert!(n.len() <= 107, "{n}");
        let line = format!("0000000000000000: 00000002 00000000 00000000 0002 01 12345 @{n}\n");
        let listing = format!("Num RefCount Protocol Flags Type St Inode Path\n{line}0: 2 0 0 1 1 9 /run/other.sock\n");
        let found = claims(&listing);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].port, 8080);
        assert_eq!(found[0].pid, 42);
        assert_eq!(found[0].ip, addr("[::1]:1").ip());
        assert_eq!(found[0].tag, redis("a/b c").tag());
    }

    #[test]
    fn who_may_share_a_port() {
        let other = |ip: &str, tag: &Mode| Claim {
            port: 8080,
            ip: ip.parse().unwrap(),
            pid: 7,
            tag: tag.tag(),
        };
        let me = addr("127.0.0.1:8080");
        let standalone = Mode::Standalone;
        let e = conflict(me, &standalone, 1, &other("127.0.0.1", &standalone)).unwrap();
        assert!(
            e.contains("--listen 127.0.0.1:8080") && e.contains("pid 7"),
            "{e}"
        );
        assert!(conflict(me, &standalone, 1, &other("0.0.0.0", &standalone)).is_some());
        assert!(conflict(me, &standalone, 1, &other("10.0.0.1", &standalone)).is_none());
        assert!(
            conflict(me, &standalone, 7, &other("127.0.0.1", &standalone)).is_none(),
            "itself"
        );
        assert!(conflict(
            addr("127.0.0.1:8081"),
            &standalone,
            1,
            &other("127.0.0.1", &standalone)
        )
        .is_none());
        assert!(conflict(me, &redis("a"), 1, &other("127.0.0.1", &redis("a"))).is_none());
        let e = conflict(me, &redis("a"), 1, &other("127.0.0.1", &redis("b"))).unwrap();
        assert!(e.contains("--redis-prefix"), "{e}");
        assert!(conflict(me, &redis("a"), 1, &other("127.0.0.1", &standalone)).is_some());
        assert!(conflict(me, &standalone, 1, &other("127.0.0.1", &redis("a"))).is_some());
    }

    #[test]
    fn a_second_claim_on_the_same_address_is_refused_in_process() {
        // Both claims carry this test's pid, so the second is told apart by a fake pid in
        // its name: claim with the real pid, then look for it as another process would.
        let port_addr = addr("127.0.0.1:1");
        let held = claim(port_addr, &Mode::Standalone).unwrap();
        let listing = read_capped(PROC_NET_UNIX).unwrap_or_default();
        if listing.is_empty() {
            return; // no procfs here
        }
        let found = claims(&listing);
        let mine = found
            .iter()
            .find(|c| c.pid == std::process::id() && c.port == 1)
            .expect("our claim is listed");
        assert!(conflict(port_addr, &Mode::Standalone, 0, mine).is_some());
        drop(held);
        let listing = read_capped(PROC_NET_UNIX).unwrap_or_default();
        assert!(!claims(&listing)
            .iter()
            .any(|c| c.pid == std::process::id() && c.port == 1));
    }
}
