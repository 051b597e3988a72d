//! RFC 6455 / RFC 7692 conformance: the Autobahn|Testsuite cases, run by `kosoku` (a Rust
//! runner of Autobahn's own case files, from PyPI; tools/test.sh installs it) through
//! tools/autobahn.py against volley's opt-in echo endpoint (`--echo-path`). Every case must
//! be OK, NON-STRICT or INFORMATIONAL, 12.x and 13.x (permessage-deflate) included.
//!
//! 9.x (performance: messages up to 16 MiB, fragmented down to 64-byte frames) is left
//! out: see docs/CONFORMANCE.md for why and for its results when run by hand.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::Server;

#[test]
fn autobahn_suite_against_the_echo_path() {
    let have_kosoku = Command::new("python3")
        .args(["-c", "import kosoku"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_kosoku,
        "python3 with the `kosoku` package is needed: run tools/test.sh (it installs it)"
    );
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
    let url = format!("ws://{}/echo", server.addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/autobahn.py");
    let out = Command::new("python3")
        .args([script, &url, "--exclude", "9.*", "--concurrency", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "some cases are not OK:\n{stdout}\n{stderr}\nserver: {}",
        server.stderr()
    );
    for section in ["1", "2", "3", "4", "5", "6", "7", "10", "12", "13"] {
        assert!(
            stdout.contains(&format!("section {section}: ")),
            "section {section} did not run:\n{stdout}"
        );
    }
}
