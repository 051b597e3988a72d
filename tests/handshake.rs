//! The upgrade request, good and bad, against the real binary (RFC 6455 §4.2).
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

fn upgrade_request(addr: std::net::SocketAddr, drop_header: &str, replace: (&str, &str)) -> String {
    let headers = [
        ("Host", addr.to_string()),
        ("Upgrade", "websocket".to_string()),
        ("Connection", "Upgrade".to_string()),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_string()),
        ("Sec-WebSocket-Version", "13".to_string()),
    ];
    let mut request = "GET /ws HTTP/1.1\r\n".to_string();
    for (name, value) in headers {
        if name == drop_header {
            continue;
        }
        let value = if name == replace.0 {
            replace.1.to_string()
        } else {
            value
        };
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

#[test]
fn good_upgrade_answers_101_with_the_rfc_accept_key() {
    let server = Server::start(&["--shards", "1"]);
    let _stream = raw_upgrade(server.addr);
    let mut client = connect(&server);
    client.close(None).unwrap();
}

#[test]
fn connection_header_may_list_several_tokens() {
    let server = Server::start(&["--shards", "1"]);
    let request = upgrade_request(server.addr, "", ("Connection", "keep-alive, Upgrade"));
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
}

#[test]
fn each_bad_upgrade_gets_its_status() {
    let server = Server::start(&["--shards", "1"]);
    let addr = server.addr;
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "wrong version",
            upgrade_request(addr, "", ("Sec-WebSocket-Version", "8")),
            426,
        ),
        (
            "no key",
            upgrade_request(addr, "Sec-WebSocket-Key", ("", "")),
            400,
        ),
        (
            "short key",
            upgrade_request(addr, "", ("Sec-WebSocket-Key", "c2hvcnQ=")),
            400,
        ),
        (
            "key not base64",
            upgrade_request(addr, "", ("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!==")),
            400,
        ),
        (
            "no upgrade header",
            upgrade_request(addr, "Upgrade", ("", "")),
            400,
        ),
        (
            "upgrade to something else",
            upgrade_request(addr, "", ("Upgrade", "h2c")),
            400,
        ),
        (
            "connection without upgrade",
            upgrade_request(addr, "", ("Connection", "keep-alive")),
            400,
        ),
        ("no host", upgrade_request(addr, "Host", ("", "")), 400),
        (
            "POST to /ws",
            upgrade_request(addr, "", ("", "")).replacen("GET", "POST", 1),
            405,
        ),
        (
            "HTTP/1.0",
            upgrade_request(addr, "", ("", "")).replacen("HTTP/1.1", "HTTP/1.0", 1),
            400,
        ),
    ];
    for (what, request, want) in cases {
        let response = raw_exchange(addr, request.as_bytes());
        assert_eq!(status_of(&response), want, "{what}: {response}");
        if want == 426 {
            assert!(
                response
                    .to_ascii_lowercase()
                    .contains("sec-websocket-version: 13"),
                "426 names the supported version: {response}"
            );
        }
        assert!(
            response.contains("\"error\""),
            "{what}: errors are JSON: {response}"
        );
    }
    // None of those became a connection.
    assert_eq!(server.total("connections"), 0);
    assert_eq!(server.total("upgrades_total"), 0);
}
