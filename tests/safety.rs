//! Safe by default (issue 14), against the real binary over real sockets: Host and Origin
//! checks on the API and /ws, CORS for listed origins, no open server on the network by
//! accident, one standalone process per port, ping/pong, 404 for unknown receipts, host
//! names in --listen, and log levels and formats.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// One HTTP/1.1 request with the given extra header lines; returns (status, whole response).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let has_host = headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has_host {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let raw = raw_exchange(addr, head.as_bytes());
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    (status, raw)
}

fn upgrade_headers(origin: Option<&str>) -> Vec<String> {
    let mut headers = vec![
        "Upgrade: websocket".to_string(),
        "Connection: Upgrade".to_string(),
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_string(),
        "Sec-WebSocket-Version: 13".to_string(),
    ];
    if let Some(origin) = origin {
        headers.push(format!("Origin: {origin}"));
    }
    headers
}

/// The status of a `/ws?user=ann` upgrade with this Origin (raw, so a 101 is just read).
fn ws_status(addr: SocketAddr, origin: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut head = format!("GET /ws?user=ann HTTP/1.1\r\nHost: {addr}\r\n");
    for h in upgrade_headers(origin) {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text)
}

fn run_volley(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_rebound_host_name_is_refused_with_421() {
    let server = Server::start(&["--shards", "1"]);
    let rebound = ["Host: rebind.evil.example:8080"];
    for path in ["/api/users/ann", "/api/stats", "/metrics"] {
        let (status, raw) = http(server.addr, "GET", path, &rebound, "");
        assert_eq!(status, 421, "{path}: {raw}");
        assert!(
            raw.contains("--allowed-hosts") && raw.contains("rebind.evil.example"),
            "{raw}"
        );
    }
    let (status, raw) = ws_status(server.addr, None);
    assert_eq!(status, 101, "{raw}");
    // Load balancers check /healthz with any Host; it tells a page nothing.
    let (status, raw) = http(server.addr, "GET", "/healthz", &["Host: volley"], "");
    assert_eq!(status, 200, "{raw}");
    let (status, _) = http(
        server.addr,
        "GET",
        "/api/users/ann",
        &["Host: localhost:8080"],
        "",
    );
    assert_eq!(status, 200, "localhost is always allowed");
    let (status, _) = http(server.addr, "GET", "/api/users/ann", &[], "");
    assert_eq!(status, 200, "an IP literal cannot be rebound");

    let named = Server::start(&["--shards", "1", "--allowed-hosts", "push.example.com"]);
    let (status, raw) = http(
        named.addr,
        "GET",
        "/api/users/ann",
        &["Host: push.example.com"],
        "",
    );
    assert_eq!(status, 200, "{raw}");
    let (status, _) = http(named.addr, "GET", "/api/users/ann", &rebound, "");
    assert_eq!(status, 421);
}

#[test]
fn browser_requests_to_the_api_need_an_allowed_origin_key_or_not() {
    let key = "0123456789abcdef-test-key";
    for args in [
        vec!["--shards", "1"],
        vec!["--shards", "1", "--api-key", key],
    ] {
        let server = Server::start(&args);
        let auth = format!("Authorization: Bearer {key}");
        let with = |extra: &[&str]| {
            let mut headers = vec![auth.as_str(), "Content-Type: text/plain"];
            headers.extend_from_slice(extra);
            http(server.addr, "POST", "/api/broadcast", &headers, "hello")
        };
        // The attack: a no-cors text/plain POST from any page.
        let (status, raw) = with(&["Origin: https://evil.example"]);
        assert_eq!(status, 403, "{raw}");
        assert!(raw.contains("--allowed-origins"), "{raw}");
        assert!(!raw.contains("Access-Control-Allow-Origin"), "{raw}");
        let (status, raw) = with(&["Sec-Fetch-Site: cross-site"]);
        assert_eq!(status, 403, "{raw}");
        // Non-browser clients and the server's own pages pass.
        let (status, raw) = with(&[]);
        assert_eq!(status, 200, "{raw}");
        let own = format!("Origin: http://{}", server.addr);
        let (status, raw) = with(&[own.as_str(), "Sec-Fetch-Site: same-origin"]);
        assert_eq!(status, 200, "{raw}");
        assert!(
            !raw.contains("Access-Control-Allow-Origin"),
            "same origin needs no CORS"
        );
        // Typing the address into the browser (Sec-Fetch-Site: none) reads stats.
        let (status, raw) = http(
            server.addr,
            "GET",
            "/api/stats",
            &[&auth, "Sec-Fetch-Site: none"],
            "",
        );
        assert_eq!(status, 200, "{raw}");
    }
}

#[test]
fn listed_origins_get_cors_and_preflights() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--allowed-origins",
        "https://app.example.com,http://localhost:*",
    ]);
    let (status, raw) = http(
        server.addr,
        "OPTIONS",
        "/api/broadcast",
        &[
            "Origin: https://app.example.com",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: content-type",
        ],
        "",
    );
    assert_eq!(status, 204, "{raw}");
    assert!(
        raw.contains("Access-Control-Allow-Origin: https://app.example.com"),
        "{raw}"
    );
    assert!(raw.contains("Access-Control-Allow-Methods: POST"), "{raw}");
    assert!(
        raw.contains("Access-Control-Allow-Headers: Authorization, Content-Type, X-API-Key"),
        "{raw}"
    );
    let (status, raw) = http(
        server.addr,
        "POST",
        "/api/broadcast",
        &["Origin: http://localhost:3000"],
        "hi",
    );
    assert_eq!(status, 200, "{raw}");
    assert!(
        raw.contains("Access-Control-Allow-Origin: http://localhost:3000"),
        "{raw}"
    );
    assert!(raw.contains("Vary: Origin"), "{raw}");
    let (status, raw) = http(
        server.addr,
        "OPTIONS",
        "/api/broadcast",
        &[
            "Origin: https://evil.example",
            "Access-Control-Request-Method: POST",
        ],
        "",
    );
    assert_eq!(status, 403, "{raw}");
    assert!(!raw.contains("Access-Control-Allow-Origin"), "{raw}");
}

#[test]
fn websocket_origins_default_to_none_and_own_and_take_wildcards() {
    let server = Server::start(&["--shards", "1"]);
    assert_eq!(ws_status(server.addr, None).0, 101);
    assert_eq!(
        ws_status(server.addr, Some(&format!("http://{}", server.addr))).0,
        101
    );
    let (status, raw) = ws_status(server.addr, Some("https://evil.example"));
    assert_eq!(status, 403, "{raw}");
    assert!(raw.contains("--allowed-origins"), "{raw}");
    assert_eq!(ws_status(server.addr, Some("null")).0, 403);

    let listed = Server::start(&[
        "--shards",
        "1",
        "--allowed-origins",
        "https://*.example.com",
    ]);
    assert_eq!(
        ws_status(listed.addr, Some("https://app.example.com")).0,
        101
    );
    assert_eq!(ws_status(listed.addr, Some("https://example.com")).0, 403);
    assert_eq!(
        ws_status(listed.addr, Some("http://app.example.com")).0,
        403
    );
}

#[test]
fn open_mode_on_the_network_refuses_to_start_without_insecure_open() {
    let (code, _, stderr) =
        run_volley(&["serve", "--listen", "0.0.0.0:0", "--max-connections", "100"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--listen 0.0.0.0:0")
            && stderr.contains("--jwt-secret")
            && stderr.contains("--api-key")
            && stderr.contains("--insecure-open"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let (code, _, stderr) = run_volley(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--jwt-secret",
        "0123456789abcdef0123456789abcdef",
    ]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("without --api-key"), "{stderr}");

    let server = Server::start_on("0.0.0.0:0", &["--shards", "1", "--insecure-open"]);
    let stderr = server.stderr();
    assert!(stderr.contains("WARNING: --insecure-open"), "{stderr}");
}

#[test]
fn a_second_standalone_process_on_a_held_port_refuses() {
    let a = Server::start(&["--shards", "1"]);
    let addr = a.addr.to_string();
    let (code, stdout, stderr) = run_volley(&["serve", "--listen", &addr, "--shards", "1"]);
    assert_eq!(code, Some(1), "{stdout} {stderr}");
    assert!(
        stderr.contains(&format!("--listen {addr}"))
            && stderr.contains("already served by a standalone volley")
            && stderr.contains(&format!("pid {}", a.pid())),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "no banner: {stdout}");
    // 0.0.0.0 overlaps 127.0.0.1 on the same port.
    let any = format!("0.0.0.0:{}", a.addr.port());
    let (code, _, stderr) = run_volley(&["serve", "--listen", &any, "--insecure-open"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(a.total("connections"), 0, "A still serves");
    assert_eq!(ws_status(a.addr, None).0, 101);
}

#[test]
fn redis_processes_share_a_port_only_with_the_same_prefix() {
    let redis = common::redis::Redis::start();
    let url = redis.url();
    let a = Server::start(&["--shards", "1", "--redis", &url]);
    let addr = a.addr.to_string();
    let b = Server::start_on(&addr, &["--shards", "1", "--redis", &url]);
    assert_eq!(a.addr, b.addr);
    let (code, _, stderr) = run_volley(&[
        "serve",
        "--listen",
        &addr,
        "--shards",
        "1",
        "--redis",
        &url,
        "--redis-prefix",
        "other",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("another --redis-prefix"), "{stderr}");
    let (code, _, stderr) = run_volley(&["serve", "--listen", &addr, "--shards", "1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Redis cluster"), "{stderr}");
}

#[test]
fn ping_gets_a_pong_and_unknown_receipts_are_404() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = connect_native(server.addr, "user=ann");
    for _ in 0..30 {
        send_op(&mut client, serde_json::json!({"op": "ping", "ref": 7}));
        assert_eq!(
            next_json(&mut client),
            serde_json::json!({"type": "pong", "ref": 7})
        );
    }
    send_op(&mut client, serde_json::json!({"op": "ping"}));
    assert_eq!(
        next_json(&mut client),
        serde_json::json!({"type": "pong", "ref": null})
    );
    // 31 pings cost no strikes: the connection is still open and answers.
    send_op(&mut client, serde_json::json!({"op": "jump", "ref": 1}));
    let reply = next_json(&mut client);
    assert_eq!(reply["error"]["code"], "unknown_op");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("join, leave, publish, ack, recover and ping"),
        "{message}"
    );

    let (status, body) = request(server.addr, "GET", "/api/messages/no-such-id", b"");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no-such-id"), "{body}");
}

#[test]
fn listen_takes_a_host_name() {
    let server = Server::start_on("localhost:0", &["--shards", "1"]);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let (status, _) = http(server.addr, "GET", "/healthz", &["Host: localhost"], "");
    assert_eq!(status, 200);
    let (code, _, stderr) = run_volley(&["serve", "--listen", "no-such-host.invalid:8080"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("--listen no-such-host.invalid:8080") && stderr.contains("resolve"),
        "{stderr}"
    );
}

#[test]
fn logs_have_levels_timestamps_and_a_json_form() {
    let server = Server::start(&["--shards", "1", "--log-format", "json"]);
    let stderr = server.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let warning = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .contains("NOT authenticated")
        })
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(warning["level"], "WARN");
    assert!(
        warning["timestamp"].as_str().unwrap().ends_with('Z'),
        "{warning}"
    );
    let info = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .contains("loopback clients only")
        })
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(info["level"], "INFO");

    let quiet = Server::start(&["--shards", "1", "--log-level", "warn"]);
    let stderr = quiet.stderr();
    assert!(
        stderr.contains("WARN") && stderr.contains("NOT authenticated"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("loopback clients only"),
        "info is off: {stderr}"
    );

    let (code, _, stderr) = run_volley(&["serve", "--log-level", "loud"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--log-level loud"), "{stderr}");
}

/// Waits for a JSON log line whose message contains `text`.
fn wait_log_line(server: &Server, text: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stderr = server.stderr();
        let found = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"].as_str().unwrap_or("").contains(text));
        if let Some(line) = found {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line with {text:?}: {stderr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn shard_logs_carry_the_shard_id_as_a_field() {
    let mut redis = common::redis::Redis::start();
    let server = Server::start(&[
        "--shards",
        "1",
        "--redis",
        &redis.url(),
        "--log-format",
        "json",
    ]);
    let up = wait_log_line(&server, "is up");
    assert_eq!(up["shard"], 0, "{up}");
    assert_eq!(
        up["level"], "INFO",
        "a recovery or start is news, not trouble: {up}"
    );
    // A failure that heals by itself is a warning, with the shard it happened on.
    redis.kill();
    let down = wait_log_line(&server, "is down");
    assert_eq!(down["level"], "WARN", "{down}");
    assert_eq!(down["shard"], 0, "{down}");
}

#[test]
fn config_files_merge_under_flags_and_env_and_check_redacts() {
    let dir = std::env::temp_dir().join(format!("volley-safety-{}.toml", std::process::id()));
    std::fs::write(
        &dir,
        "listen = \"127.0.0.1:0\"\nshards = 1\napi_key = \"file-key-0123456789abcdef\"\nroom_events = true\nallowed_origins = [\"https://app.example.com\"]\n",
    )
    .unwrap();
    let path = dir.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["config", "check", "--config", path, "--room-events"])
        .env("VOLLEY_API_KEY", "env-key-0123456789abcdef")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        !stdout.contains("0123456789abcdef"),
        "secrets redacted: {stdout}"
    );
    for line in [
        "listen = \"127.0.0.1:0\"  # file",
        "shards = 1  # file",
        "api_key = \"<redacted>\"  # environment",
        "room_events = true  # flag",
        "allowed_origins = [\"https://app.example.com\"]  # file",
        "backlog = 4096  # default",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in {stdout}");
    }
    let (code, stdout, stderr) =
        run_volley(&["config", "check", "--config", path, "--shards", "0"]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stderr.contains("--shards 0"), "{stderr}");

    // The file serves: its api_key is the key, its listen the address.
    let server = Server::start_on("127.0.0.1:0", &["--config", path]);
    let (status, _) = request(server.addr, "GET", "/api/stats", b"");
    assert_eq!(status, 401, "the file's api_key is required");
    drop(server);
    let _ = std::fs::remove_file(&dir);

    // The shipped unit's file is valid once the keys are in the environment, and refused
    // (with the way out) without them.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/volley.toml");
    let (code, _, stderr) = run_volley(&["config", "check", "--config", shipped]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--insecure-open"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["config", "check", "--config", shipped])
        .env("VOLLEY_API_KEY", "env-key-0123456789abcdef")
        .env("VOLLEY_JWT_SECRET", "env-jwt-0123456789abcdef")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
