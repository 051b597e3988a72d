//! docs/openapi.yaml against the router and a real server: the document is valid OpenAPI
//! 3.1 (checked by the `openapi-spec-validator` package, which tools/test.sh installs), it
//! documents every route of `volley::api::ROUTES` with exactly its methods and nothing else
//! (besides the `/ws` upgrade, which `front` takes before the router), and the real binary
//! answers every documented operation with a status the document lists for it: never a
//! 404 "no route" or a 405.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;

/// Paths documented besides the router's: upgrades `front` answers itself.
const UPGRADE_PATHS: &[&str] = &["/ws"];
const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// The document, validated and converted to JSON by Python's openapi-spec-validator.
fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    let script = "import json, sys, yaml\n\
        from openapi_spec_validator import validate\n\
        doc = yaml.safe_load(open(sys.argv[1]))\n\
        validate(doc)\n\
        print(json.dumps(doc))\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, path])
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "{stderr}\nrun tools/test.sh --install-only (python openapi-spec-validator)"
    );
    assert!(
        out.status.success(),
        "docs/openapi.yaml is not valid OpenAPI: {stderr}"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    doc
}

/// The methods documented for one path, upper case.
fn methods_of(item: &Value) -> BTreeSet<String> {
    METHODS
        .iter()
        .filter(|m| item.get(**m).is_some())
        .map(|m| m.to_uppercase())
        .collect()
}

#[test]
fn openapi_documents_every_route_and_nothing_else() {
    let doc = document();
    let paths = doc["paths"].as_object().unwrap();
    for route in volley::api::ROUTES {
        let item = paths
            .get(route.path)
            .unwrap_or_else(|| panic!("docs/openapi.yaml lacks {}", route.path));
        let routed: BTreeSet<String> = route.methods.split(", ").map(String::from).collect();
        assert_eq!(methods_of(item), routed, "methods of {}", route.path);
    }
    for path in paths.keys() {
        assert!(
            volley::api::ROUTES.iter().any(|r| r.path == path) || UPGRADE_PATHS.contains(&&**path),
            "docs/openapi.yaml documents {path}, which no route serves"
        );
    }
}

#[test]
fn every_documented_operation_answers_a_documented_status() {
    let doc = document();
    let server = Server::start(&["--shards", "1"]);
    // A receipt exists for a message queued to a connection.
    let mut ann = connect_native(server.addr, "user=ann");
    let published = post_json(&server, "/api/users/ann/messages", r#"{"text":"x"}"#);
    next_message(&mut ann);
    let message_id = published["id"].as_str().unwrap().to_string();
    let mut answered = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = template
            .replace("{room}", "lobby")
            .replace("{user}", "ann")
            .replace("{channel}", "room%3Alobby")
            .replace(
                "{id}",
                if template.starts_with("/api/messages/") {
                    &message_id
                } else {
                    "ann"
                },
            );
        assert!(
            !path.contains('{'),
            "a parameter this test cannot fill: {template}"
        );
        for method in methods_of(item) {
            let operation = &item[method.to_lowercase()];
            let body = operation["requestBody"]["content"]["application/json"]["example"]
                .as_object()
                .map(|example| serde_json::to_string(example).unwrap())
                .unwrap_or_else(|| r#"{"text":"hi"}"#.to_string());
            let body = if method == "POST" {
                body
            } else {
                String::new()
            };
            let (status, answer) = request(server.addr, &method, &path, body.as_bytes());
            assert!(
                status != 405 && !answer.contains("no route"),
                "{method} {path}: {status} {answer}"
            );
            let documented = operation["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {path} answered {status}, which docs/openapi.yaml does not list: {answer}"
            );
            if template != "/ws" {
                assert!(
                    (200..300).contains(&status),
                    "{method} {path}: {status} {answer}"
                );
            }
            answered += 1;
        }
    }
    assert!(answered >= volley::api::ROUTES.len(), "{answered}");
}
