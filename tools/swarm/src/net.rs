//! Addresses and process limits: parsing `--url`, `--api` and `--sources`, the
//! loopback-only rule, RLIMIT_NOFILE, the unix clock, and the stop flag set by SIGINT/SIGTERM.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Source addresses in one `--sources` value; 256 covers a /24 of loopback.
pub const SOURCES_MAX: usize = 256;

/// A parsed `scheme://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as written, for the Host header.
    pub authority: String,
    pub path: String,
}

/// Parses `ws://host:port/path` (scheme = "ws") or `http://host:port[/prefix]`.
/// The host must resolve to a loopback address: swarm is a loopback-only tool.
pub fn parse_target(url: &str, scheme: &str, default_path: &str) -> Result<Target, String> {
    let prefix = format!("{scheme}://");
    let rest = url
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("{url:?}: must start with {prefix} (TLS is not supported)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, default_path),
    };
    if authority.is_empty() {
        return Err(format!(
            "{url:?}: no host; write e.g. {prefix}127.0.0.1:8080"
        ));
    }
    let with_port = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url:?}: cannot resolve {with_port}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{url:?}: {with_port} has no IPv4 address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{url:?}: {} is not a loopback address; swarm only targets 127.0.0.0/8",
            addr.ip()
        ));
    }
    Ok(Target {
        addr,
        authority: authority.to_owned(),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.to_owned()
        },
    })
}

/// Parses `127.0.0.1-127.0.0.8`, `127.0.0.1,127.0.0.5` or one address. Every address must
/// be IPv4 loopback, and there may be at most `SOURCES_MAX`.
pub fn parse_sources(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| format!("--sources {spec}: {s:?} is not an IPv4 address"))
        };
        let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
        if first > last {
            return Err(format!("--sources {spec}: range {part} runs backwards"));
        }
        if (last - first) as usize >= SOURCES_MAX
            || out.len() + ((last - first) as usize) >= SOURCES_MAX
        {
            return Err(format!(
                "--sources {spec}: more than {SOURCES_MAX} addresses"
            ));
        }
        for ip in first..=last {
            let ip = Ipv4Addr::from(ip);
            if !ip.is_loopback() {
                return Err(format!("--sources {spec}: {ip} is not in 127.0.0.0/8"));
            }
            out.push(ip);
        }
    }
    if out.is_empty() {
        return Err(format!(
            "--sources {spec:?}: no address; write e.g. 127.0.0.1-127.0.0.8"
        ));
    }
    Ok(out)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    lim.rlim_cur
}

/// Sets IP_BIND_ADDRESS_NO_PORT so that bind(src, 0) does not reserve a port: the port is
/// picked at connect() by the whole 4-tuple, so one source address is not limited to one
/// ephemeral range across every destination. Best effort; an error is ignored.
pub fn bind_address_no_port(fd: std::os::fd::RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: fd is an open socket owned by the caller; the option value is a c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The ephemeral port range (net.ipv4.ip_local_port_range) as a count of ports.
pub fn ephemeral_ports() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>());
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    Some(hi.saturating_sub(lo) + 1)
}

pub fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM set a flag instead of killing the process, so `swarm hold` can close
/// its connections and still print its report.
pub fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("ws://127.0.0.1:8080/ws", "ws", "/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws");
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = parse_target("http://127.0.0.1:9000", "http", "").unwrap();
        assert_eq!(t.path, "/");
        let t = parse_target("http://localhost:9000/v1", "http", "").unwrap();
        assert!(t.addr.ip().is_loopback());
        assert_eq!(t.path, "/v1");
        assert!(parse_target("wss://127.0.0.1:1/ws", "ws", "/ws").is_err());
        assert!(parse_target("ws://10.0.0.1:80/ws", "ws", "/ws")
            .unwrap_err()
            .contains("loopback"));
        assert!(parse_target("ws:///ws", "ws", "/ws").is_err());
    }

    #[test]
    fn sources() {
        let s = parse_sources("127.0.0.1-127.0.0.8").unwrap();
        assert_eq!(s.len(), 8);
        assert_eq!(s[7], Ipv4Addr::new(127, 0, 0, 8));
        assert_eq!(parse_sources("127.0.0.1, 127.0.0.9").unwrap().len(), 2);
        assert_eq!(
            parse_sources("127.0.0.3").unwrap(),
            vec![Ipv4Addr::new(127, 0, 0, 3)]
        );
        assert!(parse_sources("127.0.0.8-127.0.0.1").is_err());
        assert!(parse_sources("10.0.0.1").is_err());
        assert!(parse_sources("127.0.0.0-127.0.255.255").is_err());
        assert!(parse_sources("").is_err());
        assert!(parse_sources("127.0.0.x").is_err());
    }
}
