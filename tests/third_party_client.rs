//! A WebSocket client nobody in this project wrote: Python's `websockets` connects,
//! triggers a broadcast over HTTP, receives it, and closes cleanly (code 1000).
//! `tools/test.sh` installs the package; without it this test fails and says so.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::process::Command;

const CLIENT: &str = r#"
import asyncio, json, sys, urllib.request
import websockets

async def main(addr):
    async with websockets.connect(f"ws://{addr}/ws?protocol=raw") as ws:
        def post():
            req = urllib.request.Request(f"http://{addr}/api/broadcast", data=b"hello from python", method="POST")
            return json.load(urllib.request.urlopen(req, timeout=10))
        answer = await asyncio.get_running_loop().run_in_executor(None, post)
        message = await asyncio.wait_for(ws.recv(), 10)
        print(json.dumps({"recipients": answer["recipients"], "message": message}))
    # close_code is the code in the close frame the server sent back (1006 when none came).
    rcvd = getattr(getattr(ws, "protocol", ws), "close_rcvd", None)
    print(json.dumps({"close_code": ws.close_code, "remote_close_code": rcvd.code if rcvd else None}))

asyncio.run(main(sys.argv[1]))
"#;

#[test]
fn python_websockets_client_receives_a_broadcast_and_closes_cleanly() {
    let has_module = Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_module,
        "python3 with the `websockets` package is needed; run tools/test.sh (it installs it) or `pip install websockets`"
    );
    let server = Server::start(&["--shards", "2"]);
    let out = Command::new("python3")
        .args(["-c", CLIENT, &server.addr.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["recipients"], 1);
    assert_eq!(lines[0]["message"], "hello from python");
    assert_eq!(lines[1]["close_code"], 1000);
    assert_eq!(
        lines[1]["remote_close_code"], 1000,
        "volley echoed the close code"
    );
    server.wait_for("the python client to be gone", |s| {
        s["total"]["connections"].as_u64() == Some(0)
    });
}
