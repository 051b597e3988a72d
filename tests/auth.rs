//! Client tokens (JWT HS256) at upgrade and publisher keys on the API, against the real
//! binary: valid, expired, badly signed, missing; claims that allow or forbid rooms and
//! publishing; API key present, wrong, missing, in either header.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "test-secret-0123456789";
const API_KEY: &str = "publisher-key-0123456789";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 JWT signed with `secret`.
fn token(secret: &str, claims: Value) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(mac.finalize().into_bytes()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn reply_to(client: &mut Client, mut op: Value, reference: u64) -> Value {
    op["ref"] = reference.into();
    send_op(client, op);
    loop {
        let frame = next_json(client);
        if frame["type"] == "reply" && frame["ref"] == reference {
            return frame;
        }
    }
}

#[test]
fn tokens_decide_who_connects_and_what_they_may_do() {
    let server = Server::start(&["--shards", "2", "--jwt-secret", SECRET]);
    assert!(server.stderr().is_empty() || !server.stderr().contains("NOT authenticated"));
    let exp = now() + 600;

    // Missing, expired, badly signed, malformed: 401 with the reason, before the upgrade.
    let cases = [
        ("", "missing token"),
        (
            &*format!(
                "token={}",
                token(SECRET, json!({"sub": "ann", "exp": now() - 3600}))
            ),
            "expired",
        ),
        (
            &*format!(
                "token={}",
                token("another-secret-000000", json!({"sub": "ann", "exp": exp}))
            ),
            "signature",
        ),
        ("token=not.a.jwt", "invalid token"),
    ];
    for (query, reason) in cases {
        let refusal = try_connect_native(server.addr, query)
            .map(|_| ())
            .unwrap_err();
        assert!(refusal.starts_with("401"), "{query}: {refusal}");
        assert!(
            refusal.to_lowercase().contains(reason),
            "{query}: {refusal}"
        );
    }
    assert_eq!(server.total("connections"), 0);

    // A valid token: the user is the token's `sub`, whatever ?user= says.
    let ann_token = token(
        SECRET,
        json!({"sub": "ann", "exp": exp, "rooms": ["game:*"], "publish": ["room:game:*"]}),
    );
    let mut ann = connect_native(server.addr, &format!("token={ann_token}&user=mallory"));
    let (status, answer) = request(
        server.addr,
        "POST",
        "/api/users/ann/messages",
        b"\"for ann\"",
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap()["recipients"],
        1
    );
    assert_eq!(next_json(&mut ann)["data"], "for ann");
    let (_, answer) = request(server.addr, "GET", "/api/users/mallory", b"");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap()["connections"],
        0
    );

    // Claims: rooms and publish patterns.
    assert_eq!(
        reply_to(&mut ann, json!({"op": "join", "room": "game:7"}), 1)["ok"],
        true
    );
    let refused = reply_to(&mut ann, json!({"op": "join", "room": "lobby"}), 2);
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    let published = reply_to(
        &mut ann,
        json!({"op": "publish", "room": "game:7", "data": 1}),
        3,
    );
    assert_eq!(published["ok"], true, "{published}");
    let refused = reply_to(
        &mut ann,
        json!({"op": "publish", "user": "bob", "data": 1}),
        4,
    );
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");

    // No `publish` claim: no publishing; the token may also come in the header.
    let bob_token = token(SECRET, json!({"sub": "bob", "exp": exp}));
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = tungstenite::http::Request::builder()
        .uri(format!("ws://{}/ws", server.addr))
        .header("Host", server.addr.to_string())
        .header("Authorization", format!("Bearer {bob_token}"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (mut bob, _) =
        tungstenite::client(request, tungstenite::stream::MaybeTlsStream::Plain(stream)).unwrap();
    let refused = reply_to(
        &mut bob,
        json!({"op": "publish", "room": "game:7", "data": 1}),
        5,
    );
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    assert_eq!(
        reply_to(&mut bob, json!({"op": "join", "room": "anything"}), 6)["ok"],
        true,
        "no rooms claim: any room"
    );
}

#[test]
fn the_api_key_guards_the_api() {
    let server = Server::start(&["--shards", "1", "--api-key", API_KEY]);
    let send = |headers: &str| {
        raw_exchange(
            server.addr,
            format!("POST /api/broadcast HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n{headers}\r\nhi").as_bytes(),
        )
    };
    let missing = send("");
    assert!(
        missing.starts_with("HTTP/1.1 401") && missing.contains("missing API key"),
        "{missing}"
    );
    let wrong = send("X-API-Key: publisher-key-0123456780\r\n");
    assert!(
        wrong.starts_with("HTTP/1.1 401") && wrong.contains("wrong API key"),
        "{wrong}"
    );
    assert!(!wrong.contains(API_KEY), "the key is never echoed");
    assert!(send(&format!("X-API-Key: {API_KEY}\r\n")).starts_with("HTTP/1.1 200"));
    assert!(send(&format!("Authorization: Bearer {API_KEY}\r\n")).starts_with("HTTP/1.1 200"));
    let stats = raw_exchange(
        server.addr,
        b"GET /api/stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(stats.starts_with("HTTP/1.1 401"), "{stats}");
    // Health and metrics stay open for load balancers and scrapers.
    assert_eq!(request(server.addr, "GET", "/healthz", b"").0, 200);
    assert_eq!(request(server.addr, "GET", "/metrics", b"").0, 200);
    assert!(
        !server.stderr().contains(API_KEY),
        "the key is never logged"
    );
}

#[test]
fn open_mode_says_so_loudly_and_bad_secrets_are_refused_at_start() {
    let server = Server::start(&["--shards", "1"]);
    let stderr = server.stderr();
    assert!(stderr.contains("NOT authenticated"), "{stderr}");
    assert!(stderr.contains("loopback clients only"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["serve", "--jwt-secret", "short"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--jwt-secret")
            && stderr.contains("too short")
            && !stderr.contains("short:"),
        "{stderr}"
    );
}
