//! A broadcast reaches every client on every shard exactly once, in order.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use tungstenite::Message;

#[test]
fn broadcast_reaches_every_client_on_both_shards_exactly_once() {
    let server = Server::start(&["--shards", "2"]);
    const CLIENTS: usize = 300;
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| connect(&server)).collect();
    let stats = server.wait_for("all clients registered", |s| {
        s["total"]["connections"].as_u64() == Some(CLIENTS as u64)
    });
    let shards = stats["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for shard in shards {
        assert!(
            shard["connections"].as_u64().unwrap() > 0,
            "SO_REUSEPORT spread clients over both shards: {stats}"
        );
    }

    const MESSAGES: usize = 5;
    for i in 0..MESSAGES {
        let recipients = server.broadcast(format!("message {i}").as_bytes());
        assert_eq!(recipients, CLIENTS as u64, "recipients summed over shards");
    }
    // Not UTF-8: delivered as a binary frame.
    assert_eq!(server.broadcast(&[0xff, 0x00, 0xfe]), CLIENTS as u64);

    for client in &mut clients {
        for i in 0..MESSAGES {
            assert_eq!(next_data(client), Message::text(format!("message {i}")));
        }
        assert_eq!(next_data(client), Message::binary(vec![0xff, 0x00, 0xfe]));
    }
    // Exactly once: nothing else is pending. A ping from us comes back as a pong, and any
    // duplicate broadcast would arrive before it.
    for client in &mut clients {
        client.send(Message::Ping("probe".into())).unwrap();
        loop {
            match client.read().unwrap() {
                Message::Pong(payload) => {
                    assert_eq!(&payload[..], b"probe");
                    break;
                }
                Message::Ping(_) => continue,
                other => panic!("unexpected extra message: {other:?}"),
            }
        }
    }
    let total = server.stats()["total"].clone();
    assert!(total["frames_sent_total"].as_u64().unwrap() >= (CLIENTS * (MESSAGES + 1)) as u64);
    assert_eq!(
        total["broadcasts_total"].as_u64(),
        Some(2 * (MESSAGES as u64 + 1)),
        "every broadcast ran on both shards"
    );
}

#[test]
fn large_broadcast_bodies_use_extended_lengths() {
    let server = Server::start(&["--shards", "2"]);
    let mut clients: Vec<Client> = (0..4).map(|_| connect(&server)).collect();
    server.wait_for("clients", |s| s["total"]["connections"].as_u64() == Some(4));
    let medium = "m".repeat(300);
    let large = "L".repeat(60_000);
    assert_eq!(server.broadcast(medium.as_bytes()), 4);
    assert_eq!(server.broadcast(large.as_bytes()), 4);
    for client in &mut clients {
        assert_eq!(next_data(client), Message::text(medium.clone()));
        assert_eq!(next_data(client), Message::text(large.clone()));
    }
}

#[test]
fn broadcast_with_no_clients_answers_zero() {
    let server = Server::start(&["--shards", "2"]);
    assert_eq!(server.broadcast(b"nobody home"), 0);
}
