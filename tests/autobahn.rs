//! RFC 6455 / RFC 7692 conformance: the Autobahn|Testsuite cases, run by `kosoku` (a Rust
//! runner of Autobahn's own case files, from PyPI; tools/test.sh installs it) through
//! tools/autobahn.py against volley's opt-in echo endpoint (`--echo-path`). Every case must
//! be OK, NON-STRICT or INFORMATIONAL, 12.x and 13.x (permessage-deflate) included.
//!
//! 9.x (limits and performance: messages up to 16 MiB, 4 MiB of them in 64-byte frames)
//! runs in its own test, against a server whose limits are raised to what 9.x sends, all
//! 54 cases (~10 s in the debug build); docs/CONFORMANCE.md has the results.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::Server;

fn need_kosoku() {
    let have_kosoku = Command::new("python3")
        .args(["-c", "import kosoku"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_kosoku,
        "python3 with the `kosoku` package is needed: run tools/test.sh (it installs it)"
    );
}

/// Runs tools/autobahn.py against `server`'s `/echo` with `args`; prints its report and
/// fails the test unless every case passed. Returns the report.
fn run_cases(server: &Server, args: &[&str]) -> String {
    let url = format!("ws://{}/echo", server.addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/autobahn.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&url)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "some cases are not OK:\n{stdout}\n{stderr}\nserver: {}",
        server.stderr()
    );
    stdout
}

#[test]
fn autobahn_suite_against_the_echo_path() {
    need_kosoku();
    // Large enough for the biggest non-9.x message (131072 bytes in 12.x/13.x); the
    // outbound queue must hold an echo of it.
    let server = Server::start(&[
        "--echo-path",
        "/echo",
        "--message-bytes-max",
        "1048576",
        "--outbound-bytes-max",
        "16777216",
    ]);
    let stdout = run_cases(&server, &["--exclude", "9.*", "--concurrency", "2"]);
    for section in ["1", "2", "3", "4", "5", "6", "7", "10", "12", "13"] {
        assert!(
            stdout.contains(&format!("section {section}: ")),
            "section {section} did not run:\n{stdout}"
        );
    }
}

/// Autobahn 9.x, all 54 cases: 64 KiB to 16 MiB messages whole (9.1, 9.2), 4 MiB in 64 B to
/// 4 MiB fragments (9.3, 9.4), 1 MiB in 64 B to 2 KiB writes (9.5, 9.6), and 1000 round
/// trips of 0 B to 4 KiB (9.7, 9.8). The limits are raised to what the cases send; at the
/// defaults (64 KiB, 1024 frames) volley answers the larger ones with 1009, by design.
/// One case at a time, so a case's own deadline (10 s for some 1-4 MiB ones) is not shared
/// with another case's traffic.
#[test]
fn autobahn_9_limits_and_performance() {
    need_kosoku();
    let server = Server::start(&[
        "--echo-path",
        "/echo",
        // 9.1.6 and 9.2.6: one 16 MiB message.
        "--message-bytes-max",
        "16777216",
        // 9.3.1 and 9.4.1: 4 MiB in 64-byte fragments, 65,536 frames.
        "--message-fragments-max",
        "65536",
        // The echo of a 16 MiB message (plus its header) must fit the outbound queue.
        "--outbound-bytes-max",
        "33554432",
    ]);
    let stdout = run_cases(
        &server,
        &["--include", "9.*", "--concurrency", "1", "--timings"],
    );
    assert!(
        stdout.contains("section 9: 54 cases: OK 54"),
        "not all of 9.x ran and passed:\n{stdout}"
    );
}
