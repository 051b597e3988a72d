//! Executor-level tests of the data plane and the local backend: a real glommio executor
//! (unpinned), a one-shard mesh, real loopback sockets for the connections, and the hub's
//! queues read back instead of the network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use super::Hub;
use crate::backend::Backend;
use crate::config::Config;
use crate::conn::ConnKey;
use crate::ctx::Ctx;
use crate::envelope::{PayloadKind, Target};
use crate::hub::Session;
use crate::mesh::{self, Delivery, Peers, Publish, Shared};
use crate::protocol::Codec;
use crate::seam::Recovering;

/// Runs `test` on a fresh unpinned executor with a one-shard context.
fn on_executor<F, Fut>(config: Config, test: F)
where
    F: FnOnce(Rc<Ctx>) -> Fut,
    Fut: Future<Output = ()>,
{
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("a glommio executor");
    executor.run(async move {
        let (senders, _receivers) = mesh::build(1, 16).join().await.expect("a mesh of one");
        let shared = Arc::new(Shared::new(config.max_connections));
        let ctx = Rc::new(Ctx::new(config, shared, Peers::new(senders)));
        test(ctx).await;
    });
}

/// A connected server-side socket (the client end is kept open by the caller).
async fn socket(listener: &TcpListener) -> (TcpStream, std::net::TcpStream) {
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let server = listener.accept().await.unwrap();
    (server, client)
}

fn session(codec: Codec, user: Option<&str>) -> Session {
    Session::new(codec, user.map(Rc::from), None, 10)
}

fn delivery(target: Target, seq: u64, payload: &'static str) -> Delivery {
    Delivery {
        publish: Publish {
            target,
            id: format!("n-0-{seq}"),
            from: None,
            event: None,
            kind: PayloadKind::Json,
            payload: Bytes::from_static(payload.as_bytes()),
        },
        seq: Some(seq),
        epoch: Some(1),
    }
}

#[test]
fn a_delivery_to_two_codecs_is_encoded_once_per_codec() {
    on_executor(Config::for_tests(1), |ctx| async move {
        let hub = Hub::new(ctx.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut clients = Vec::new();
        let mut keys: Vec<(ConnKey, Codec)> = Vec::new();
        for codec in [
            Codec::Native,
            Codec::Raw,
            Codec::Native,
            Codec::Raw,
            Codec::Native,
        ] {
            let (server, client) = socket(&listener).await;
            clients.push(client);
            let (key, inbound, _) = hub.insert(
                server,
                &mut [],
                crate::conn::Wire::default(),
                session(codec, None),
            );
            assert!(inbound.is_empty());
            keys.push((key, codec));
        }
        let queued = hub.deliver(&delivery(Target::All, 1, r#"{"hi":1}"#));
        assert_eq!(queued, 5);
        assert_eq!(
            ctx.metrics.frames_encoded_total.get(),
            2,
            "one frame per codec"
        );
        let native = hub.queued(keys[0].0);
        let raw = hub.queued(keys[1].0);
        assert_eq!((native.len(), raw.len()), (1, 1));
        for (key, codec) in &keys {
            let frames = hub.queued(*key);
            let same = if *codec == Codec::Native {
                &native[0]
            } else {
                &raw[0]
            };
            assert_eq!(
                frames[0].as_ptr(),
                same.as_ptr(),
                "shared bytes, not copies"
            );
        }
        assert_eq!(&raw[0][2..], br#"{"hi":1}"#);
        let json: serde_json::Value = serde_json::from_slice(&native[0][2..]).unwrap();
        assert_eq!(json["channel"], "all");
        assert_eq!(json["seq"], 1);
        assert_eq!(json["data"]["hi"], 1);
        // A delivery nobody speaks a codec for encodes nothing.
        let before = ctx.metrics.frames_encoded_total.get();
        assert_eq!(
            hub.deliver(&delivery(Target::Room("empty".into()), 1, "1")),
            0
        );
        assert_eq!(ctx.metrics.frames_encoded_total.get(), before);
    });
}

#[test]
fn users_and_rooms_route_only_to_their_members() {
    on_executor(Config::for_tests(1), |ctx| async move {
        let hub = Hub::new(ctx.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, _ca) = socket(&listener).await;
        let (b, _cb) = socket(&listener).await;
        let (ann, _, _) = hub.insert(
            a,
            &mut [],
            crate::conn::Wire::default(),
            session(Codec::Raw, Some("ann")),
        );
        let (bob, _, _) = hub.insert(
            b,
            &mut [],
            crate::conn::Wire::default(),
            session(Codec::Raw, Some("bob")),
        );
        hub.join("lobby", bob);
        assert_eq!(
            hub.deliver(&delivery(Target::User("ann".into()), 1, "1")),
            1
        );
        assert_eq!(
            hub.deliver(&delivery(Target::Room("lobby".into()), 1, "2")),
            1
        );
        assert_eq!(hub.queued(ann).len(), 1);
        assert_eq!(hub.queued(bob).len(), 1);
        assert_eq!(&hub.queued(bob)[0][2..], b"2");
        // A removed connection leaves the index, and its key goes stale.
        let removed = hub.remove(bob).expect("bob was there");
        assert_eq!(removed.rooms.len(), 1);
        assert!(hub.remove(bob).is_none(), "a stale key finds nothing");
        assert_eq!(
            hub.deliver(&delivery(Target::Room("lobby".into()), 2, "3")),
            0
        );
    });
}

#[test]
fn the_recovery_seam_holds_back_then_releases_in_order() {
    on_executor(Config::for_tests(1), |ctx| async move {
        let hub = Hub::new(ctx.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (server, _client) = socket(&listener).await;
        let (key, _, _) = hub.insert(
            server,
            &mut [],
            crate::conn::Wire::default(),
            session(Codec::Raw, None),
        );
        hub.with_session(key, |s| {
            s.recovering
                .get_or_insert_with(Box::<Recovering>::default)
                .begin("all", (0, None));
        });
        // Live messages 4 and 5 arrive while the replay (up to 4) is being fetched.
        assert_eq!(
            hub.deliver(&delivery(Target::All, 4, "4")),
            1,
            "held counts"
        );
        assert_eq!(hub.deliver(&delivery(Target::All, 5, "5")), 1);
        assert!(hub.queued(key).is_empty(), "held back, not queued");
        // The replay queued 1..=4; the seam releases only what is newer, in order.
        for seq in 1..=4u64 {
            hub.send(key, Bytes::from(format!("replayed {seq}")));
        }
        let released = hub
            .with_session(key, |s| s.recovering.as_mut().unwrap().finish("all", 4, 10))
            .unwrap();
        for frame in released {
            hub.send(key, frame);
        }
        // A late duplicate of a replayed message is dropped during the grace period.
        assert_eq!(hub.deliver(&delivery(Target::All, 3, "3")), 0);
        assert_eq!(hub.deliver(&delivery(Target::All, 6, "6")), 1);
        let queued: Vec<Vec<u8>> = hub.queued(key).iter().map(|f| f.to_vec()).collect();
        let tail: Vec<&[u8]> = queued[4..].iter().map(|f| &f[2..]).collect();
        assert_eq!(&queued[..4].len(), &4);
        assert_eq!(tail, [&b"5"[..], b"6"]);
    });
}

#[test]
fn the_local_backend_numbers_stores_and_replays() {
    let mut config = Config::for_tests(1);
    config.history_size = 3;
    on_executor(config, |ctx| async move {
        let hub = Rc::new(Hub::new(ctx.clone()));
        let backend = Backend::new(ctx.clone(), hub.clone());
        let room = Target::Room("r".into());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (server, _client) = socket(&listener).await;
        let (key, _, _) = hub.insert(
            server,
            &mut [],
            crate::conn::Wire::default(),
            session(Codec::Raw, None),
        );
        hub.join("r", key);
        for n in 1..=5u64 {
            let publish = Publish {
                target: room.clone(),
                id: ctx.next_message_id(),
                from: None,
                event: None,
                kind: PayloadKind::Text,
                payload: Bytes::from(format!("m{n}")),
            };
            let published = backend.publish(publish).await.unwrap();
            assert_eq!((published.seq, published.recipients), (n, 1));
        }
        let frames: Vec<Vec<u8>> = hub.queued(key).iter().map(|f| f[2..].to_vec()).collect();
        assert_eq!(
            frames,
            [b"m1", b"m2", b"m3", b"m4", b"m5"].map(|m| m.to_vec())
        );
        // History keeps the last 3: a resume from 2 is complete, one from 1 is not.
        let replay = backend.history(&room, 2, 10).await.unwrap();
        let seqs: Vec<u64> = replay.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            (seqs, replay.current, replay.complete),
            (vec![3, 4, 5], 5, true)
        );
        let replay = backend.history(&room, 1, 10).await.unwrap();
        assert!(!replay.complete, "message 2 is no longer kept");
        // A user nobody holds gets an inbox, handed over once.
        let publish = Publish {
            target: Target::User("ann".into()),
            id: ctx.next_message_id(),
            from: None,
            event: None,
            kind: PayloadKind::Text,
            payload: Bytes::from_static(b"while away"),
        };
        let published = backend.publish(publish).await.unwrap();
        assert_eq!(published.recipients, 0);
        let inbox = backend.inbox_take("ann").await.unwrap();
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].payload, Bytes::from_static(b"while away"));
    });
}

#[test]
fn everyone_counts_long_polling_sessions_and_deliveries_move_positions() {
    on_executor(Config::for_tests(1), |ctx| async move {
        let hub = Hub::new(ctx.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (server, _client) = socket(&listener).await;
        hub.insert(
            server,
            &mut [],
            crate::conn::Wire::default(),
            session(Codec::Native, Some("ann")),
        );
        let sid = crate::protocol::socketio::engineio::Sid::new(0, &[7; 12]);
        hub.insert_polling(sid, session(Codec::SocketIo(0), Some("bob")));
        // `all` reaches both, so both are counted; bob's user presence sees his session.
        assert_eq!(hub.lookup(&Target::All).connections, 2);
        assert_eq!(
            hub.lookup(&Target::User("bob".into())).connections,
            1,
            "a polling session is its user's connection"
        );
        // Every numbered delivery moves its channel's position here, recipients or not.
        let room = Target::Room("nobody-here".into());
        assert!(hub.position(&room).is_none());
        hub.deliver(&delivery(room.clone(), 4, "4"));
        hub.deliver(&delivery(room.clone(), 5, "5"));
        let position = hub.position(&room).unwrap();
        assert_eq!((position.seq, position.epoch), (5, Some(1)));
        // Unnumbered messages have no place in a numbering.
        let mut unnumbered = delivery(Target::All, 1, "0");
        unnumbered.seq = None;
        hub.deliver(&unnumbered);
        assert!(hub.position(&Target::All).is_none());
    });
}
