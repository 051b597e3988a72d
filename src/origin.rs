//! Who may talk to this server from a browser: the `Origin` and `Host` checks, sans-IO.
//!
//! Owns the parsing of `--allowed-origins` and `--allowed-hosts` patterns and the verdicts
//! ([`Policy::host`], [`Policy::websocket_origin`], [`Policy::api_origin`]). It does not
//! write answers: `front` (every request's `Host`, `/ws`'s `Origin`), `api` (browser
//! requests, CORS) and any other WebSocket path (socket.io) call it and answer 403/421.
//!
//! Why both checks exist:
//! - A web page may open a WebSocket to any address and may POST `text/plain` anywhere
//!   without a preflight, so a browser on the server's machine (or network) is a way in for
//!   any page it visits. `Origin` names the page; only origins the operator listed, or the
//!   server's own origin, may use the API or `/ws` from a browser.
//! - DNS rebinding points an attacker's name at 127.0.0.1 after the page loaded, so the
//!   browser sees a "same origin" request to the attacker's name. The `Host` header then
//!   carries that name, which is not one this server answers to: refuse it. An IP literal
//!   cannot be rebound, so IP hosts are always allowed.

use std::fmt;
use std::net::IpAddr;

/// Patterns given in one flag; more is a configuration mistake, not a policy.
pub const PATTERNS_MAX: usize = 256;
/// Longest pattern, origin or host we look at: DNS names are at most 253 bytes, plus a
/// scheme and a port.
pub const ORIGIN_BYTES_MAX: usize = 300;

/// One `--allowed-origins` entry: `*` (any origin), `null` (sandboxed pages, `file://`),
/// or `scheme://host[:port]` where the host may start with `*.` (any subdomain, not the
/// domain itself) and the port may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Any,
    Null,
    Exact {
        scheme: String,
        host: HostPattern,
        /// None: the scheme's default port (no port in the Origin). `Some(None)`: any port.
        port: Option<Option<u16>>,
    },
}

/// A host name pattern: an exact name (lowercase) or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Subdomains(String),
}

impl HostPattern {
    fn parse(host: &str) -> Result<HostPattern, String> {
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err("no host".into());
        }
        if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err("a wildcard must be `*.` followed by a domain".into());
            }
            return Ok(HostPattern::Subdomains(format!(".{suffix}")));
        }
        if host.contains('*') {
            return Err("`*` may appear only as a leading `*.`".into());
        }
        if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
            return Err("not a host name".into());
        }
        Ok(HostPattern::Exact(host))
    }

    /// `host` must already be lowercase.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() && host.ends_with(&**suffix)
            }
        }
    }
}

impl OriginPattern {
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        let text = text.trim();
        if text.len() > ORIGIN_BYTES_MAX {
            return Err(format!("longer than {ORIGIN_BYTES_MAX} bytes"));
        }
        match text {
            "*" => return Ok(OriginPattern::Any),
            "null" => return Ok(OriginPattern::Null),
            _ => {}
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or("must be scheme://host[:port], e.g. https://app.example.com")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(format!("scheme {scheme:?} is not a URL scheme"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err("an origin has no path: drop everything after the host and port".into());
        }
        let (host, port) = split_port(rest);
        let port = match port {
            None => None,
            Some("*") => Some(None),
            Some(p) => Some(Some(
                p.parse::<u16>()
                    .map_err(|_| format!("port {p:?} is not 0..=65535 or *"))?,
            )),
        };
        Ok(OriginPattern::Exact {
            scheme,
            host: HostPattern::parse(host)?,
            port,
        })
    }

    fn matches(&self, origin: &Origin<'_>) -> bool {
        match (self, origin) {
            (OriginPattern::Any, _) => true,
            (OriginPattern::Null, Origin::Null) => true,
            (
                OriginPattern::Exact { scheme, host, port },
                Origin::Tuple {
                    scheme: s,
                    host: h,
                    port: p,
                },
            ) => {
                scheme == s
                    && host.matches(h)
                    && match port {
                        None => p.is_none(),
                        Some(None) => true,
                        Some(Some(port)) => *p == Some(*port),
                    }
            }
            _ => false,
        }
    }
}

/// A parsed `Origin` header value (RFC 6454 §7).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin<'a> {
    Null,
    Tuple {
        scheme: String,
        host: String,
        port: Option<u16>,
    },
    /// Not an origin at all: refused, never matched.
    Bad(&'a str),
}

fn parse_origin(value: &str) -> Origin<'_> {
    let value = value.trim();
    if value == "null" {
        return Origin::Null;
    }
    if value.len() > ORIGIN_BYTES_MAX {
        return Origin::Bad(value);
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return Origin::Bad(value);
    };
    if rest.is_empty() || rest.contains('/') {
        return Origin::Bad(value);
    }
    let (host, port) = split_port(rest);
    let port = match port.map(str::parse::<u16>) {
        None => None,
        Some(Ok(port)) => Some(port),
        Some(Err(_)) => return Origin::Bad(value),
    };
    Origin::Tuple {
        scheme: scheme.to_ascii_lowercase(),
        host: host.to_ascii_lowercase(),
        port,
    }
}

/// Splits `host[:port]`, keeping an IPv6 literal's brackets out of the port.
fn split_port(text: &str) -> (&str, Option<&str>) {
    if text.starts_with('[') {
        return match text.find(']') {
            Some(end) => (&text[..=end], text[end + 1..].strip_prefix(':')),
            None => (text, None),
        };
    }
    match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    }
}

/// The host part of a `Host` header or an origin, lowercase, brackets kept for IPv6.
fn host_of(value: &str) -> String {
    split_port(value.trim()).0.to_ascii_lowercase()
}

fn is_ip_literal(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}

/// What a browser-originated request was judged to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No `Origin` (or `Sec-Fetch-Site`): not a browser page; other checks apply.
    NotBrowser,
    /// The page came from this server (its origin's host:port is the request's `Host`).
    SameOrigin,
    /// An origin listed in `--allowed-origins`: gets CORS headers on the API.
    Listed,
    /// Refused with 403.
    Refused,
}

impl Verdict {
    pub fn allowed(self) -> bool {
        self != Verdict::Refused
    }
}

/// The checked `--allowed-origins` and `--allowed-hosts`.
#[derive(Clone, PartialEq, Eq)]
pub struct Policy {
    origins: Vec<OriginPattern>,
    /// None: any host (`--allowed-hosts '*'`).
    hosts: Option<Vec<HostPattern>>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Policy({} origins, hosts {:?})",
            self.origins.len(),
            self.hosts
        )
    }
}

impl Policy {
    /// `origins` and `hosts` are the flags' entries; `listen_host` is the host part of
    /// `--listen` as written (a name or an IP), allowed as a `Host` by default, like
    /// `localhost`, `*.localhost` and every IP literal.
    pub fn new(origins: &[String], hosts: &[String], listen_host: &str) -> Result<Policy, String> {
        if origins.len() > PATTERNS_MAX || hosts.len() > PATTERNS_MAX {
            return Err(format!("at most {PATTERNS_MAX} entries"));
        }
        let origins = origins
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| OriginPattern::parse(o).map_err(|why| format!("--allowed-origins {o}: {why}")))
            .collect::<Result<Vec<_>, _>>()?;
        let hosts = if hosts.iter().any(|h| h.trim() == "*") {
            None
        } else {
            let mut patterns = vec![
                HostPattern::Exact("localhost".into()),
                HostPattern::Subdomains(".localhost".into()),
            ];
            let listen = listen_host.trim_start_matches('[').trim_end_matches(']');
            if !listen.is_empty() && !is_ip_literal(listen) {
                patterns.push(HostPattern::Exact(listen.to_ascii_lowercase()));
            }
            for host in hosts.iter().filter(|h| !h.trim().is_empty()) {
                let pattern = HostPattern::parse(host_of(host).as_str())
                    .map_err(|why| format!("--allowed-hosts {host}: {why}; give a name like example.com or *.example.com"))?;
                patterns.push(pattern);
            }
            Some(patterns)
        };
        Ok(Policy { origins, hosts })
    }

    /// Allows every host and only non-browser and same-origin requests (tests, benches).
    pub fn open() -> Policy {
        Policy {
            origins: Vec::new(),
            hosts: None,
        }
    }

    /// `Host` check (DNS rebinding). A missing `Host` (HTTP/1.0 clients) is allowed:
    /// browsers always send one. Err carries the message for a 421.
    pub fn host(&self, host: Option<&str>) -> Result<(), String> {
        let (Some(patterns), Some(value)) = (&self.hosts, host) else {
            return Ok(());
        };
        let name = host_of(value);
        let name = name.trim_end_matches('.');
        if is_ip_literal(name) || patterns.iter().any(|p| p.matches(name)) {
            return Ok(());
        }
        Err(format!(
            "Host {:?} is not a name this server answers to (a DNS rebinding guard); if it is yours, add it to --allowed-hosts",
            clip(value)
        ))
    }

    /// The `Origin` of a WebSocket upgrade (`/ws`, socket.io): no `Origin`, this server's
    /// own origin, or a listed one.
    pub fn websocket_origin(&self, origin: Option<&str>, host: Option<&str>) -> Verdict {
        match origin {
            None => Verdict::NotBrowser,
            Some(origin) => self.judge(origin, host),
        }
    }

    /// A request to the HTTP API. A browser request is one with an `Origin` or a
    /// `Sec-Fetch-Site` header; without an `Origin`, only `same-origin` and `none` (the
    /// user typed the address) pass, since a cross-site `<img>` or no-cors fetch sends no
    /// `Origin` on GET.
    pub fn api_origin(
        &self,
        origin: Option<&str>,
        sec_fetch_site: Option<&str>,
        host: Option<&str>,
    ) -> Verdict {
        match (origin, sec_fetch_site) {
            (None, None) => Verdict::NotBrowser,
            (Some(origin), _) => self.judge(origin, host),
            (None, Some(site)) => {
                let site = site.trim();
                if site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none") {
                    Verdict::SameOrigin
                } else {
                    Verdict::Refused
                }
            }
        }
    }

    fn judge(&self, origin: &str, host: Option<&str>) -> Verdict {
        let parsed = parse_origin(origin);
        if let (Origin::Tuple { host: h, port, .. }, Some(request_host)) = (&parsed, host) {
            let own = match port {
                Some(port) => format!("{h}:{port}"),
                None => h.clone(),
            };
            if own.eq_ignore_ascii_case(request_host.trim())
                && self.host(Some(request_host)).is_ok()
            {
                return Verdict::SameOrigin;
            }
        }
        if self.origins.iter().any(|p| p.matches(&parsed)) {
            Verdict::Listed
        } else {
            Verdict::Refused
        }
    }
}

/// The refusal message for an origin: the value and what to do.
pub fn refused_message(origin: Option<&str>, sec_fetch_site: Option<&str>) -> String {
    match origin {
        Some(origin) => format!(
            "Origin {:?} is not allowed: a page from another site may not use this server; add the origin to --allowed-origins if it is yours",
            clip(origin)
        ),
        None => format!(
            "a browser request from another site (Sec-Fetch-Site: {}) is not allowed; call the API from your backend, or from a page whose origin is in --allowed-origins",
            clip(sec_fetch_site.unwrap_or_default())
        ),
    }
}

fn clip(text: &str) -> &str {
    let mut end = text.len().min(ORIGIN_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], hosts: &[&str]) -> Policy {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Policy::new(&owned(origins), &owned(hosts), "127.0.0.1").unwrap()
    }

    #[test]
    fn patterns_parse_and_refuse_with_reasons() {
        assert_eq!(OriginPattern::parse("*").unwrap(), OriginPattern::Any);
        assert!(OriginPattern::parse("example.com")
            .unwrap_err()
            .contains("scheme://"));
        assert!(OriginPattern::parse("https://a.com/path")
            .unwrap_err()
            .contains("no path"));
        assert!(OriginPattern::parse("https://a.*.com")
            .unwrap_err()
            .contains("leading"));
        assert!(OriginPattern::parse("https://a.com:99999").is_err());
        assert!(
            OriginPattern::parse("https://a.com/").is_ok(),
            "a trailing slash is forgiven"
        );
        assert!(OriginPattern::parse(&format!("https://{}", "a".repeat(400))).is_err());
    }

    #[test]
    fn no_origin_and_same_origin_pass_by_default() {
        let p = policy(&[], &[]);
        let host = Some("127.0.0.1:8080");
        assert_eq!(p.websocket_origin(None, host), Verdict::NotBrowser);
        assert_eq!(
            p.websocket_origin(Some("http://127.0.0.1:8080"), host),
            Verdict::SameOrigin
        );
        assert_eq!(
            p.websocket_origin(Some("http://127.0.0.1:8081"), host),
            Verdict::Refused
        );
        assert_eq!(
            p.websocket_origin(Some("https://evil.example"), host),
            Verdict::Refused
        );
        assert_eq!(p.websocket_origin(Some("null"), host), Verdict::Refused);
        assert_eq!(p.websocket_origin(Some("garbage"), host), Verdict::Refused);
        // Same origin on a rebound name is not "same": the host itself is refused.
        let rebound = Some("rebind.evil.example:8080");
        assert_eq!(
            p.websocket_origin(Some("http://rebind.evil.example:8080"), rebound),
            Verdict::Refused
        );
    }

    #[test]
    fn wildcards_match_subdomains_not_the_domain() {
        let p = policy(
            &["https://*.example.com", "http://localhost:*", "null"],
            &[],
        );
        let host = Some("127.0.0.1:8080");
        let judge = |o: &str| p.websocket_origin(Some(o), host);
        assert_eq!(judge("https://app.example.com"), Verdict::Listed);
        assert_eq!(judge("https://a.b.example.com"), Verdict::Listed);
        assert_eq!(judge("HTTPS://App.Example.COM"), Verdict::Listed);
        assert_eq!(judge("https://example.com"), Verdict::Refused);
        assert_eq!(judge("https://evilexample.com"), Verdict::Refused);
        assert_eq!(
            judge("http://app.example.com"),
            Verdict::Refused,
            "scheme counts"
        );
        assert_eq!(
            judge("https://app.example.com:8443"),
            Verdict::Refused,
            "port counts"
        );
        assert_eq!(judge("http://localhost:3000"), Verdict::Listed);
        assert_eq!(judge("http://localhost"), Verdict::Listed);
        assert_eq!(judge("null"), Verdict::Listed);
        assert_eq!(
            policy(&["*"], &[]).websocket_origin(Some("https://x.y"), host),
            Verdict::Listed
        );
    }

    #[test]
    fn api_refuses_cross_site_browsers_without_origin() {
        let p = policy(&["https://app.example.com"], &[]);
        let host = Some("127.0.0.1:8080");
        assert_eq!(p.api_origin(None, None, host), Verdict::NotBrowser);
        assert_eq!(p.api_origin(None, Some("none"), host), Verdict::SameOrigin);
        assert_eq!(
            p.api_origin(None, Some("same-origin"), host),
            Verdict::SameOrigin
        );
        assert_eq!(
            p.api_origin(None, Some("cross-site"), host),
            Verdict::Refused
        );
        assert_eq!(
            p.api_origin(None, Some("same-site"), host),
            Verdict::Refused
        );
        assert_eq!(
            p.api_origin(Some("https://app.example.com"), Some("cross-site"), host),
            Verdict::Listed
        );
        assert_eq!(
            p.api_origin(Some("https://evil.example"), None, host),
            Verdict::Refused
        );
    }

    #[test]
    fn hosts_default_to_ips_localhost_and_the_listen_name() {
        let p = policy(&[], &[]);
        for ok in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.1.2.3",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost",
            "localhost.",
        ] {
            assert!(p.host(Some(ok)).is_ok(), "{ok}");
        }
        assert!(p.host(None).is_ok(), "HTTP/1.0 without Host");
        let e = p.host(Some("rebind.evil.example:8080")).unwrap_err();
        assert!(
            e.contains("rebind.evil.example") && e.contains("--allowed-hosts"),
            "{e}"
        );
        let named = Policy::new(&[], &[], "push.internal").unwrap();
        assert!(named.host(Some("push.internal:8080")).is_ok());
        let listed = policy(&[], &["*.example.com", "push.example.org:443"]);
        assert!(listed.host(Some("a.example.com")).is_ok());
        assert!(listed.host(Some("push.example.org")).is_ok());
        assert!(listed.host(Some("example.com")).is_err());
        assert!(policy(&[], &["*"]).host(Some("anything.at.all")).is_ok());
        assert!(Policy::new(&[], &["a b".into()], "127.0.0.1").is_err());
    }

    #[test]
    fn hostile_values_never_panic() {
        let p = policy(&["https://*.example.com"], &["*.example.com"]);
        for v in [
            "",
            ":",
            "[",
            "[::1",
            "http://",
            "http://[::1]:x",
            "é://é:é",
            "a://b:99999999999",
            "\u{0}",
        ] {
            let _ = p.websocket_origin(Some(v), Some(v));
            let _ = p.api_origin(Some(v), Some(v), Some(v));
            let _ = p.host(Some(v));
            let _ = OriginPattern::parse(v);
            let _ = refused_message(Some(v), Some(v));
        }
    }
}
