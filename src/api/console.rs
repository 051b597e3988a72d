//! The dev console: one self-contained page at `GET /` (`console.html`, embedded in the
//! binary) to connect as a user, join and leave rooms, watch messages with their channel
//! and seq, push to everyone, a user or a room, and watch `/api/stats`.
//!
//! Owns the page and its response headers only. Whether it is served (`--console`, on in
//! open mode) is decided by `config`; `api::route` calls [`page`] and applies the same
//! Origin and Host rules as to any route, so another site can neither frame nor load it.
//!
//! Why it is safe to serve: the page is static and holds no secret. It talks to the server
//! as its user's browser does, with the token and API key the user types, and the API
//! trusts it only as a same-origin page (`origin::Policy::api_origin`), which is why the
//! page renders server data with `textContent` only and its Content-Security-Policy allows
//! no script but its own (by hash) and no connection but to this origin.

use std::sync::OnceLock;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::http;

/// The page, built into the binary: no file to install, no external resource to fetch.
pub const PAGE: &str = include_str!("console.html");

/// The text between the first `<tag>` and `</tag>` of the page.
fn inline(tag: &str) -> &'static str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = PAGE.find(&open).map_or(0, |at| at + open.len());
    let end = PAGE[start..].find(&close).map_or(start, |at| start + at);
    &PAGE[start..end]
}

fn sha256_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// CSP Level 3: only the page's own inline script and style run (by hash), requests go
/// to this origin only ('self' covers ws: and wss: to it), nothing may frame the page,
/// and forms cannot post anywhere.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            sha256_source(inline("script")),
            sha256_source(inline("style")),
        )
    })
}

/// `200` with the page.
pub fn page(keep_alive: bool) -> Vec<u8> {
    http::response(
        200,
        "text/html; charset=utf-8",
        PAGE.as_bytes(),
        keep_alive,
        &[
            ("Content-Security-Policy", content_security_policy()),
            ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-cache"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_small() {
        // One script and one style, inline, both covered by the policy's hashes.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert!(!inline("script").is_empty() && !inline("style").is_empty());
        for external in ["src=", "href=", "@import", "url(", "http://", "https://"] {
            assert!(!PAGE.contains(external), "the page loads {external}");
        }
        assert!(
            !PAGE.contains("innerHTML"),
            "server data goes in as text only"
        );
        assert!(PAGE.len() < 16 * 1024, "{} bytes", PAGE.len());
        let csp = content_security_policy();
        assert!(csp.contains(&sha256_source(inline("script"))), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
}
