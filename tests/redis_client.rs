//! The RESP2 client against a real `redis-server`: commands, pipelining, AUTH, SELECT,
//! pub/sub, and what the client reports when the server goes away.

#[path = "common/redis_server.rs"]
mod redis_server;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corecast::redis::client::{Backoff, Connection, RedisError, RedisOptions, Reply, Subscriber};
use monoio::time::timeout;

use redis_server::{INSTALL_HINT, RedisServer};

/// Long enough for a loaded machine; a hang fails the test instead of blocking it.
const PATIENCE: Duration = Duration::from_secs(10);

fn run<F: Future>(future: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime")
        .block_on(future)
}

fn options(server: &RedisServer) -> RedisOptions {
    RedisOptions {
        port: server.port,
        password: server.password().map(str::to_owned),
        connect_timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    }
}

fn cmd(args: &[&[u8]]) -> Vec<Bytes> {
    args.iter().map(|a| Bytes::copy_from_slice(a)).collect()
}

fn bulk(data: &[u8]) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(data))
}

#[test]
fn redis_server_is_installed() {
    assert!(RedisServer::available(), "{INSTALL_HINT}");
}

#[test]
fn set_then_get_round_trips_binary_values() {
    let server = RedisServer::start();
    run(async {
        let mut conn = Connection::connect(&options(&server)).await.unwrap();
        let every_byte: Vec<u8> = (0..=255u8).chain(*b"\r\n$-1\r\n").collect();
        // Larger than one read, so the reply arrives in pieces.
        let large: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();

        for (key, value) in [(&b"small"[..], &every_byte[..]), (b"large", &large[..])] {
            let set = conn.call(&[b"SET", key, value]).await.unwrap();
            assert_eq!(set, Reply::Ok);
            let got = conn.call(&[b"GET", key]).await.unwrap();
            assert_eq!(got, bulk(value));
        }
        let missing = conn.call(&[b"GET", b"no-such-key"]).await.unwrap();
        assert_eq!(missing, Reply::Nil);
        let pong = conn.call(&[b"PING"]).await.unwrap();
        assert_eq!(pong, Reply::Status("PONG".into()));
    });
}

#[test]
fn error_reply_from_call_is_a_server_error_and_connection_stays_usable() {
    let server = RedisServer::start();
    run(async {
        let mut conn = Connection::connect(&options(&server)).await.unwrap();
        let err = conn.call(&[b"NOSUCHCOMMAND"]).await.unwrap_err();
        assert!(
            matches!(&err, RedisError::Server(msg) if msg.starts_with("ERR")),
            "{err:?}"
        );
        assert_eq!(conn.call(&[b"ECHO", b"hi"]).await.unwrap(), bulk(b"hi"));
    });
}

#[test]
fn pipeline_of_1000_commands_returns_replies_in_order() {
    let server = RedisServer::start();
    run(async {
        let mut conn = Connection::connect(&options(&server)).await.unwrap();
        let mut cmds = Vec::new();
        for i in 0..500 {
            let (key, value) = (format!("key:{i}"), format!("value:{i}"));
            cmds.push(cmd(&[b"SET", key.as_bytes(), value.as_bytes()]));
        }
        for i in 0..500 {
            cmds.push(cmd(&[b"GET", format!("key:{i}").as_bytes()]));
        }
        let replies = conn.pipeline(&cmds).await.unwrap();
        assert_eq!(replies.len(), 1000);
        assert!(replies[..500].iter().all(|r| *r == Reply::Ok));
        for (i, reply) in replies[500..].iter().enumerate() {
            assert_eq!(*reply, bulk(format!("value:{i}").as_bytes()));
        }

        let counts = conn
            .pipeline(&vec![cmd(&[b"INCR", b"counter"]); 1000])
            .await
            .unwrap();
        let expected: Vec<Reply> = (1..=1000).map(Reply::Int).collect();
        assert_eq!(counts, expected);
    });
}

#[test]
fn pipeline_keeps_error_replies_in_their_place() {
    let server = RedisServer::start();
    run(async {
        let mut conn = Connection::connect(&options(&server)).await.unwrap();
        let replies = conn
            .pipeline(&[
                cmd(&[b"SET", b"s", b"text"]),
                cmd(&[b"INCR", b"s"]),
                cmd(&[b"GET", b"s"]),
            ])
            .await
            .unwrap();
        assert_eq!(replies[0], Reply::Ok);
        assert!(
            matches!(&replies[1], Reply::Error(msg) if msg.starts_with("ERR")),
            "{replies:?}"
        );
        assert_eq!(replies[2], bulk(b"text"));
        assert_eq!(conn.call(&[b"GET", b"s"]).await.unwrap(), bulk(b"text"));
    });
}

#[test]
fn empty_command_is_refused_without_touching_the_connection() {
    let server = RedisServer::start();
    run(async {
        let mut conn = Connection::connect(&options(&server)).await.unwrap();
        assert!(matches!(conn.call(&[]).await, Err(RedisError::Protocol(_))));
        assert!(matches!(
            conn.pipeline(&[vec![]]).await,
            Err(RedisError::Protocol(_))
        ));
        assert_eq!(conn.pipeline(&[]).await.unwrap(), vec![]);
        assert_eq!(conn.call(&[b"ECHO", b"ok"]).await.unwrap(), bulk(b"ok"));
    });
}

#[test]
fn auth_with_the_right_password_allows_commands() {
    let server = RedisServer::start_with_password("s3cret");
    run(async {
        let mut conn = Connection::connect(&options(&server)).await.unwrap();
        assert_eq!(conn.call(&[b"SET", b"k", b"v"]).await.unwrap(), Reply::Ok);

        let with_user = RedisOptions {
            username: Some("default".into()),
            ..options(&server)
        };
        let mut conn = Connection::connect(&with_user).await.unwrap();
        assert_eq!(conn.call(&[b"GET", b"k"]).await.unwrap(), bulk(b"v"));
    });
}

#[test]
fn auth_with_a_wrong_password_fails_connect_with_a_server_error() {
    let server = RedisServer::start_with_password("s3cret");
    run(async {
        let wrong = RedisOptions {
            password: Some("guess".into()),
            ..options(&server)
        };
        match Connection::connect(&wrong).await {
            Err(RedisError::Server(msg)) => assert!(msg.starts_with("WRONGPASS"), "{msg}"),
            Err(other) => panic!("expected a server error, got {other:?}"),
            Ok(_) => panic!("connect with a wrong password succeeded"),
        }
        let err = Subscriber::connect(&wrong).await.err();
        assert!(matches!(err, Some(RedisError::Server(_))), "{err:?}");
    });
}

#[test]
fn missing_password_makes_commands_fail_with_noauth() {
    let server = RedisServer::start_with_password("s3cret");
    run(async {
        let none = RedisOptions {
            password: None,
            ..options(&server)
        };
        let mut conn = Connection::connect(&none).await.unwrap();
        let err = conn.call(&[b"PING"]).await.unwrap_err();
        assert!(
            matches!(&err, RedisError::Server(msg) if msg.starts_with("NOAUTH")),
            "{err:?}"
        );
    });
}

#[test]
fn select_db_keeps_keys_apart_from_db_0() {
    let server = RedisServer::start();
    run(async {
        let db5 = RedisOptions {
            db: 5,
            ..options(&server)
        };
        let mut in_db5 = Connection::connect(&db5).await.unwrap();
        let mut in_db0 = Connection::connect(&options(&server)).await.unwrap();
        in_db5.call(&[b"SET", b"where", b"five"]).await.unwrap();

        assert_eq!(in_db0.call(&[b"GET", b"where"]).await.unwrap(), Reply::Nil);
        let mut again = Connection::connect(&db5).await.unwrap();
        assert_eq!(
            again.call(&[b"GET", b"where"]).await.unwrap(),
            bulk(b"five")
        );

        let out_of_range = RedisOptions {
            db: 999,
            ..options(&server)
        };
        let err = Connection::connect(&out_of_range).await.err();
        assert!(matches!(err, Some(RedisError::Server(_))), "{err:?}");
    });
}

#[test]
fn publish_reaches_a_subscriber_with_binary_payloads_intact() {
    let server = RedisServer::start();
    run(async {
        let opts = options(&server);
        let mut sub = Subscriber::connect(&opts).await.unwrap();
        sub.subscribe(&[b"chan:a", b"chan:b"]).await.unwrap();
        let mut conn = Connection::connect(&opts).await.unwrap();

        let payload: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
        let receivers = conn.call(&[b"PUBLISH", b"chan:b", &payload]).await.unwrap();
        assert_eq!(receivers, Reply::Int(1));
        let (channel, got) = timeout(PATIENCE, sub.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&channel[..], b"chan:b");
        assert_eq!(&got[..], &payload[..]);

        let burst: Vec<Vec<Bytes>> = (0..100)
            .map(|i| cmd(&[b"PUBLISH", b"chan:a", format!("m{i}").as_bytes()]))
            .collect();
        conn.pipeline(&burst).await.unwrap();
        for i in 0..100 {
            let (channel, got) = timeout(PATIENCE, sub.next_message())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (&channel[..], &got[..]),
                (&b"chan:a"[..], format!("m{i}").as_bytes())
            );
        }
    });
}

#[test]
fn messages_arriving_during_subscribe_are_delivered_in_order() {
    let server = RedisServer::start();
    run(async {
        let opts = options(&server);
        let mut sub = Subscriber::connect(&opts).await.unwrap();
        sub.subscribe(&[b"first"]).await.unwrap();
        let mut conn = Connection::connect(&opts).await.unwrap();
        let burst: Vec<Vec<Bytes>> = (0..50)
            .map(|i| cmd(&[b"PUBLISH", b"first", format!("{i}").as_bytes()]))
            .collect();
        conn.pipeline(&burst).await.unwrap();

        // These messages sit in the socket ahead of the confirmation for "second".
        sub.subscribe(&[b"second"]).await.unwrap();
        conn.call(&[b"PUBLISH", b"second", b"last"]).await.unwrap();
        for i in 0..50 {
            let (channel, got) = timeout(PATIENCE, sub.next_message())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (&channel[..], &got[..]),
                (&b"first"[..], format!("{i}").as_bytes())
            );
        }
        let (channel, got) = timeout(PATIENCE, sub.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&channel[..], &got[..]), (&b"second"[..], &b"last"[..]));
    });
}

#[test]
fn unsubscribed_channels_no_longer_reach_the_subscriber() {
    let server = RedisServer::start();
    run(async {
        let opts = options(&server);
        let mut sub = Subscriber::connect(&opts).await.unwrap();
        sub.subscribe(&[b"a", b"b"]).await.unwrap();
        sub.unsubscribe(&[b"a"]).await.unwrap();
        let mut conn = Connection::connect(&opts).await.unwrap();
        assert_eq!(
            conn.call(&[b"PUBLISH", b"a", b"x"]).await.unwrap(),
            Reply::Int(0)
        );
        assert_eq!(
            conn.call(&[b"PUBLISH", b"b", b"y"]).await.unwrap(),
            Reply::Int(1)
        );
        let (channel, _) = timeout(PATIENCE, sub.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&channel[..], b"b");
    });
}

#[test]
fn subscriber_with_password_receives_messages() {
    let server = RedisServer::start_with_password("s3cret");
    run(async {
        let opts = options(&server);
        let mut sub = Subscriber::connect(&opts).await.unwrap();
        sub.subscribe(&[b"secure"]).await.unwrap();
        let mut conn = Connection::connect(&opts).await.unwrap();
        conn.call(&[b"PUBLISH", b"secure", b"hello"]).await.unwrap();
        let (_, got) = timeout(PATIENCE, sub.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"hello");
    });
}

#[test]
fn subscriber_reports_an_error_when_the_server_stops_and_a_new_one_works_after_restart() {
    let mut server = RedisServer::start();
    let opts = options(&server);
    run(async {
        let mut sub = Subscriber::connect(&opts).await.unwrap();
        sub.subscribe(&[b"news"]).await.unwrap();

        server.stop();
        let outcome = timeout(PATIENCE, sub.next_message())
            .await
            .expect("next_message must fail, not hang, when the server stops");
        assert!(
            matches!(outcome, Err(RedisError::Closed | RedisError::Io(_))),
            "{outcome:?}"
        );
        assert!(matches!(sub.next_message().await, Err(RedisError::Closed)));
        let while_down = Subscriber::connect(&opts).await.err();
        assert!(
            matches!(while_down, Some(RedisError::Io(_))),
            "{while_down:?}"
        );

        server.restart();
        let mut sub = Subscriber::connect(&opts).await.unwrap();
        sub.subscribe(&[b"news"]).await.unwrap();
        let mut conn = Connection::connect(&opts).await.unwrap();
        conn.call(&[b"PUBLISH", b"news", b"back"]).await.unwrap();
        let (_, got) = timeout(PATIENCE, sub.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"back");
    });
}

#[test]
fn command_connection_reports_an_error_when_the_server_stops() {
    let mut server = RedisServer::start();
    let opts = options(&server);
    run(async {
        let mut conn = Connection::connect(&opts).await.unwrap();
        conn.call(&[b"SET", b"k", b"v"]).await.unwrap();
        server.stop();
        let outcome = timeout(PATIENCE, conn.call(&[b"GET", b"k"]))
            .await
            .expect("call must fail, not hang, when the server stops");
        assert!(
            matches!(outcome, Err(RedisError::Closed | RedisError::Io(_))),
            "{outcome:?}"
        );
        let again = conn.pipeline(&[cmd(&[b"PING"])]).await;
        assert!(matches!(again, Err(RedisError::Closed)), "{again:?}");
    });
}

#[test]
fn reconnect_loop_with_backoff_succeeds_once_the_server_returns() {
    let mut server = RedisServer::start();
    let opts = options(&server);
    server.stop();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        server.restart();
        server
    });
    let attempts = run(async {
        let mut backoff = Backoff::new(Duration::from_millis(200));
        let started = Instant::now();
        let mut attempts = 0;
        let mut conn = loop {
            attempts += 1;
            match Connection::connect(&opts).await {
                Ok(conn) => break conn,
                Err(err) => {
                    assert!(started.elapsed() < PATIENCE, "still failing: {err:?}");
                    monoio::time::sleep(backoff.next_delay()).await;
                }
            }
        };
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
        assert_eq!(
            conn.call(&[b"PING"]).await.unwrap(),
            Reply::Status("PONG".into())
        );
        attempts
    });
    let _server = restarter.join().expect("restart thread");
    assert!(
        attempts > 1,
        "the first attempt should have met a stopped server"
    );
}

#[test]
fn connect_times_out_when_the_server_never_answers() {
    // The kernel completes the TCP handshake for a listener nobody accepts from, so
    // the AUTH reply simply never comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let opts = RedisOptions {
        port: silent.local_addr().unwrap().port(),
        password: Some("pw".into()),
        connect_timeout: Duration::from_millis(200),
        ..RedisOptions::default()
    };
    run(async {
        let started = Instant::now();
        let outcome = Connection::connect(&opts).await.err();
        assert!(matches!(outcome, Some(RedisError::Timeout)), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let outcome = Subscriber::connect(&opts).await.err();
        assert!(matches!(outcome, Some(RedisError::Timeout)), "{outcome:?}");
    });
}

#[test]
fn a_cancelled_call_leaves_the_connection_closed_rather_than_out_of_step() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let opts = RedisOptions {
        port: silent.local_addr().unwrap().port(),
        ..RedisOptions::default()
    };
    run(async {
        let mut conn = Connection::connect(&opts).await.unwrap();
        let gave_up = timeout(Duration::from_millis(100), conn.call(&[b"PING"])).await;
        assert!(gave_up.is_err(), "the silent server cannot have answered");
        let next = conn.call(&[b"PING"]).await;
        assert!(matches!(next, Err(RedisError::Closed)), "{next:?}");
    });
}

#[test]
fn backoff_doubles_from_100ms_and_stays_at_the_cap() {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let delays: Vec<u64> = (0..9)
        .map(|_| backoff.next_delay().as_millis() as u64)
        .collect();
    assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);

    backoff.reset();
    assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    assert_eq!(Backoff::default().next_delay(), Duration::from_millis(100));
}
