//! Process life: SIGTERM closes every client with 1001 and exits 0; two processes of one
//! Redis cluster share a port; bad flags and a taken port are one clear line and a non-zero exit.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::process::{Command, Stdio};

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut server = Server::start(&["--shards", "2"]);
    let mut clients: Vec<Client> = (0..20).map(|_| connect(&server)).collect();
    server.wait_for("clients", |s| {
        s["total"]["connections"].as_u64() == Some(20)
    });
    server.signal(libc::SIGTERM);
    for client in &mut clients {
        assert_eq!(u16::from(expect_close(client)), 1001);
        // Complete the close handshake as a well-behaved client does.
        let _ = client.flush();
    }
    assert_eq!(server.wait_exit(), Some(0), "stderr: {}", server.stderr());
}

#[test]
fn sigint_with_no_clients_exits_0() {
    let mut server = Server::start(&["--shards", "1"]);
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(), Some(0));
}

/// Two processes of one Redis cluster (same prefix) may share a port; two standalone ones
/// may not (tests/safety.rs).
#[test]
fn two_processes_on_one_port_both_accept() {
    let redis = common::redis::Redis::start();
    let url = redis.url();
    let a = Server::start(&["--shards", "1", "--cpus", "0", "--redis", &url]);
    let cpu_b = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        "1"
    } else {
        "0"
    };
    let mut b = Server::start_on(
        &a.addr.to_string(),
        &["--shards", "1", "--cpus", cpu_b, "--redis", &url],
    );
    assert_eq!(a.addr, b.addr);
    let mut clients: Vec<Client> = (0..64).map(|_| connect(&a)).collect();
    // Stop B: exactly the clients B accepted get its 1001; A's clients stay open.
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait_exit(), Some(0));
    let mut closed_by_b = 0;
    for client in &mut clients {
        set_read_timeout(client, std::time::Duration::from_millis(300));
        match client.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1001);
                closed_by_b += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(closed_by_b > 0, "process B accepted some clients");
    assert!(closed_by_b < 64, "process A accepted some clients");
    assert_eq!(a.total("connections"), 64 - closed_by_b);
}

fn run_volley(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_name_the_value_and_exit_non_zero() {
    let (code, stderr) = run_volley(&["serve", "--shards", "0"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--shards 0"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let (code, stderr) = run_volley(&["serve", "--listen", "localhost"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--listen localhost"), "{stderr}");
    let (code, stderr) = run_volley(&["serve", "--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[test]
fn a_taken_port_is_one_clear_line() {
    // A plain listener without SO_REUSEPORT: volley cannot share it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_volley(&["serve", "--listen", &addr, "--max-connections", "100"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("--listen {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
}
