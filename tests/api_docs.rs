//! docs/API.md's "Every route, ready to copy" runs: each curl line is sent (as the same
//! method, path and body) to a real server, and every route of the router's table
//! (`volley::api::ROUTES`) has a line for each of its methods.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

/// (method, path with query, body) of each `curl` line in docs/API.md.
fn examples() -> Vec<(String, String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/API.md")).unwrap();
    doc.lines()
        .filter(|l| l.starts_with("curl "))
        .map(|line| {
            let words = shell_words(line);
            let mut method = None;
            let mut body = None;
            let mut url = None;
            let mut i = 1;
            while i < words.len() {
                match words[i].as_str() {
                    "-X" => {
                        method = Some(words[i + 1].clone());
                        i += 1;
                    }
                    "-d" => {
                        body = Some(words[i + 1].clone());
                        i += 1;
                    }
                    "-H" => i += 1,
                    word => url = Some(word.to_string()),
                }
                i += 1;
            }
            let url = url.unwrap_or_else(|| panic!("no URL in {line}"));
            let path = url
                .strip_prefix("http://127.0.0.1:8080")
                .unwrap_or_else(|| panic!("{line}: examples use http://127.0.0.1:8080"))
                .to_string();
            let method =
                method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
            (method, path, body.unwrap_or_default())
        })
        .collect()
}

/// Splits a command line on spaces, keeping single-quoted words whole.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[test]
fn every_documented_curl_line_answers_and_every_route_has_one() {
    let server = Server::start(&["--shards", "1"]);
    let examples = examples();
    assert!(examples.len() >= 16, "{examples:?}");
    // A receipt exists for a message queued to someone: ann is connected, and acks.
    let mut ann = connect_native(server.addr, "user=ann");
    let published = post_json(&server, "/api/users/ann/messages", "{\"text\":\"x\"}");
    let message = next_message(&mut ann);
    send_op(
        &mut ann,
        serde_json::json!({"op": "ack", "channel": "user:ann", "seq": message["seq"]}),
    );
    let id = published["id"].as_str().unwrap().to_string();
    for (method, path, body) in &examples {
        let path = path.replace("MESSAGE_ID", &id);
        let (status, answer) = request(server.addr, method, &path, body.as_bytes());
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
    }
    // Every route of the router's table, with each method it takes, has a line.
    for route in volley::api::ROUTES {
        for method in route.methods.split(", ") {
            assert!(
                examples.iter().any(|(m, p, _)| {
                    let path = p.split('?').next().unwrap();
                    m == method
                        && volley::api::find(path).is_some_and(|(r, _)| r.path == route.path)
                }),
                "docs/API.md has no curl line for {method} {}",
                route.path
            );
        }
    }
}
