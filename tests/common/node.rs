//! The real socket.io packages from npm (tools/socketio-client, installed by tools/test.sh
//! with `npm ci`), driven through node scripts that print one JSON object per line.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// tools/socketio-client, with its node_modules installed (else a failed test that says how
/// to install them).
pub fn client_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/socketio-client");
    assert!(
        dir.join("node_modules/socket.io-client").is_dir(),
        "the socket.io packages are not installed: run tools/test.sh (it runs `npm ci` in tools/socketio-client)"
    );
    dir
}

/// Runs `node <script> <args>` in [`client_dir`] to its end and returns the JSON lines it
/// printed; a failed run fails the test with its output and `context` (server logs).
pub fn run(script: &str, args: &[String], context: impl FnOnce() -> String) -> Vec<Value> {
    let out = Command::new("node")
        .current_dir(client_dir())
        .arg(script)
        .args(args)
        .output()
        .expect("run node (v18+ is needed)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        context()
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs a scenario of scenarios.js against `server`.
pub fn scenario(server: &super::Server, name: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec![name.to_string(), format!("http://{}", server.addr)];
    all.extend(args.iter().map(|a| a.to_string()));
    run("scenarios.js", &all, || {
        format!("server: {}", server.stderr())
    })
}

/// The first line that has `key`.
pub fn line<'a>(lines: &'a [Value], key: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l.get(key).is_some())
        .unwrap_or_else(|| panic!("no {key:?} in {lines:?}"))
}
