//! Shared test helpers: start the real `volley` binary on a free loopback port, talk to it
//! with real sockets (raw bytes, raw HTTP, and tungstenite's client), stop it by PID.
#![allow(dead_code)]
// Test helpers, not server code: a failed unwrap here is a failed test (clippy's
// allow-unwrap-in-tests covers only #[test] fns and #[cfg(test)] modules, not these).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod faultproxy;
pub mod node;
pub mod proxy;
pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long any single wait in a test may take before the test fails (a bound, not a
/// timing assertion).
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_path: std::path::PathBuf,
}

impl Server {
    /// Starts `volley serve --listen 127.0.0.1:0 <args>` and waits for its banner.
    pub fn start(args: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", args)
    }

    pub fn start_on(listen: &str, args: &[&str]) -> Server {
        let stderr_path = std::env::temp_dir().join(format!(
            "volley-test-{}-{}.stderr",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_volley"));
        command.args(["serve", "--listen", listen]);
        if !args.contains(&"--max-connections") {
            // Below this machine's fd limit, so start-up does not warn about it.
            command.args(["--max-connections", "10000"]);
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start volley");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "volley exited before its banner: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            })
            .unwrap();
        // "volley: listening on 127.0.0.1:PORT (ws://...), N shards, pid P"
        let addr = line
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected banner: {line}"));
        std::thread::spawn(move || for _ in lines {});
        let server = Server {
            child,
            addr,
            stderr_path,
        };
        server.wait_healthy();
        server
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for `/healthz` to answer 200 and, with Redis, `"status":"ok"`: a shard whose
    /// links are still connecting answers "degraded" (200) and refuses cluster publishes
    /// with 503. A server that stays degraded (a test that starts it against a broken
    /// Redis) is taken as it is after `DEGRADED_WAIT`.
    fn wait_healthy(&self) {
        const DEGRADED_WAIT: Duration = Duration::from_secs(3);
        let deadline = Instant::now() + WAIT;
        let mut degraded_since: Option<Instant> = None;
        loop {
            if let Ok((200, body)) = try_request(self.addr, "GET", "/healthz", b"") {
                if !body.contains("\"degraded\"") {
                    return;
                }
                let since = *degraded_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= DEGRADED_WAIT {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server never became healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = request(self.addr, "GET", "/api/stats", b"");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn total(&self, field: &str) -> u64 {
        self.stats()["total"][field].as_u64().unwrap()
    }

    /// Waits until `pred(stats)` holds, or fails the test after `WAIT`.
    pub fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stats: {stats}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn broadcast(&self, body: &[u8]) -> u64 {
        let (status, answer) = request(self.addr, "POST", "/api/broadcast", body);
        assert_eq!(status, 200, "{answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        v["recipients"].as_u64().unwrap()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "volley did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    try_request(addr, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let raw = read_to_close(&mut stream);
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw)))
    })
}

/// Sends raw bytes, reads until the server closes (or WAIT), returns what came back.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(bytes).unwrap();
    String::from_utf8_lossy(&read_to_close(&mut stream)).into_owned()
}

pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Status and body of one HTTP response (Content-Length framed).
pub fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client (tungstenite) connected to the server.
pub fn connect(server: &Server) -> Client {
    connect_addr(server.addr)
}

pub fn connect_addr(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (client, response) = tungstenite::client(
        format!("ws://{addr}/ws?protocol=raw"),
        MaybeTlsStream::Plain(stream),
    )
    .unwrap();
    assert_eq!(response.status(), 101);
    client
}

/// A client of the native JSON protocol; `query` is e.g. `user=ann` or `token=...`.
pub fn connect_native(addr: SocketAddr, query: &str) -> Client {
    try_connect_native(addr, query).unwrap_or_else(|e| panic!("connect ?{query}: {e}"))
}

/// Like `connect_native`, but returns the refusal (status and body) instead of panicking.
pub fn try_connect_native(addr: SocketAddr, query: &str) -> Result<Client, String> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    match tungstenite::client(
        format!("ws://{addr}/ws?{query}"),
        MaybeTlsStream::Plain(stream),
    ) {
        Ok((client, _)) => Ok(client),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(format!(
                "{} {}",
                response.status().as_u16(),
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Sends one JSON op.
pub fn send_op(client: &mut Client, op: serde_json::Value) {
    client.send(Message::text(op.to_string())).unwrap();
}

/// The next JSON object from the server (reply or message), skipping control frames.
pub fn next_json(client: &mut Client) -> serde_json::Value {
    match next_data(client) {
        Message::Text(text) => {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        }
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

/// Next data message, skipping control frames (tungstenite answers pings itself).
pub fn next_data(client: &mut Client) -> Message {
    loop {
        match client.read().expect("read a message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// Reads until the server's close frame; returns its code.
pub fn expect_close(client: &mut Client) -> CloseCode {
    loop {
        match client.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// A raw TCP connection that has completed the upgrade, for sending hand-made frames.
pub fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!(
        "GET /ws?protocol=raw HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    stream
}

/// A client frame: masked (unless `mask` is None), with the given first byte.
pub fn client_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one server frame from a raw stream: (first byte, payload).
pub fn read_server_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

/// Reads server frames until a close frame; returns its code.
pub fn read_close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let (first, payload) = read_server_frame(stream).expect("a close frame before the end");
        if first & 0x0f == 0x8 {
            assert!(payload.len() >= 2, "close frame without a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// Changes a client's read timeout (to poll for "nothing arrived").
pub fn set_read_timeout(client: &mut Client, timeout: std::time::Duration) {
    match client.get_mut() {
        MaybeTlsStream::Plain(stream) => stream.set_read_timeout(Some(timeout)).unwrap(),
        _ => unreachable!("tests use plain TCP"),
    }
}

/// A masked client frame whose length uses the given form: 0 = the minimal one, 2 = the
/// 16-bit form, 8 = the 64-bit form (RFC 6455 §5.2), so non-minimal encodings can be sent.
pub fn client_frame_with_form(first: u8, payload: &[u8], mask: [u8; 4], form: u8) -> Vec<u8> {
    let len = payload.len();
    let form = match form {
        0 if len < 126 => 0,
        0 if len <= 0xffff => 2,
        0 => 8,
        other => other,
    };
    let mut out = vec![first];
    match form {
        0 => out.push(0x80 | len as u8),
        2 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/<pid>/status).
pub fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Whether the process is still running (not exited, not a zombie).
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state letter follows the parenthesised command name.
            let after = stat.rsplit_once(')')?.1;
            after
                .split_whitespace()
                .next()
                .map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

/// Whether a pushed message carries `text`: the payload is the text itself, or a client
/// protocol envelope around it (so these checks hold whatever framing the protocol adds).
pub fn carries(message: &Message, text: &str) -> bool {
    let payload: &[u8] = match message {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => return false,
    };
    payload
        .windows(text.len().max(1))
        .any(|w| w == text.as_bytes())
}

/// A resume token: base64url (no padding) of `{channel: last seq}`.
pub fn resume_token(channels: serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(channels.to_string())
}

/// POSTs `body` and returns the JSON answer, asserting 200.
pub fn post_json(server: &Server, path: &str, body: &str) -> serde_json::Value {
    let (status, answer) = request(server.addr, "POST", path, body.as_bytes());
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(&answer).unwrap()
}

/// GETs `path` and returns the JSON answer, asserting 200.
pub fn get_json(server: &Server, path: &str) -> serde_json::Value {
    let (status, answer) = request(server.addr, "GET", path, b"");
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(&answer).unwrap()
}

/// The seqs of the messages of one channel, in arrival order.
pub fn seqs_of(messages: &[serde_json::Value], channel: &str) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m["channel"] == channel)
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// The next server `message` (native protocol), asserting that is what came.
pub fn next_message(client: &mut Client) -> serde_json::Value {
    let frame = next_json(client);
    assert_eq!(frame["type"], "message", "{frame}");
    frame
}
