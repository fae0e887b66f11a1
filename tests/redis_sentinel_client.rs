//! The RESP client through Redis Sentinel: the master found by asking the sentinels in
//! turn and checked with `ROLE`, a clear error when no sentinel names one, `-READONLY`
//! ending a connection, and connections made before a `+switch-master` failing so their
//! owner reconnects to the new master.

#[path = "common/redis_sentinel.rs"]
mod redis_sentinel;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use corecast::redis::client::{Connection, RedisError, RedisOptions, Reply, Subscriber};
use corecast::redis::sentinel::{Sentinels, watch};
use monoio::time::timeout;

use redis_sentinel::{NAME, Sentinels as Deployment};

/// Long enough for a loaded machine; a hang fails the test instead of blocking it.
const PATIENCE: Duration = Duration::from_secs(10);

fn run<F: Future>(future: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime")
        .block_on(future)
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port()
}

fn through(sentinels: Sentinels) -> RedisOptions {
    RedisOptions {
        // Never used with sentinels.
        port: 1,
        connect_timeout: Duration::from_secs(2),
        sentinels: Some(sentinels),
        ..RedisOptions::default()
    }
}

fn direct(port: u16) -> RedisOptions {
    RedisOptions {
        port,
        connect_timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    }
}

fn local(ports: &[u16]) -> Vec<(String, u16)> {
    ports.iter().map(|p| ("127.0.0.1".to_owned(), *p)).collect()
}

#[test]
fn connects_to_the_master_the_sentinels_name_past_a_dead_sentinel() {
    let set = Deployment::start(1);
    let sentinels = Sentinels::new(local(&[dead_port(), set.sentinel_ports[0]]), NAME, None);
    run(async {
        let mut conn = timeout(PATIENCE, Connection::connect(&through(sentinels.clone())))
            .await
            .expect("in time")
            .expect("connected through the second sentinel");
        assert_eq!(conn.server(), format!("127.0.0.1:{}", set.master_port));
        assert_eq!(conn.call(&[b"SET", b"k", b"v"]).await.ok(), Some(Reply::Ok));
        let mut sub = Subscriber::connect(&through(sentinels))
            .await
            .expect("pub/sub through sentinels");
        sub.subscribe(&[b"ch"]).await.expect("subscribed");
    });
}

#[test]
fn no_master_names_the_instance_and_every_sentinel_asked() {
    let set = Deployment::start(1);
    let dead = dead_port();
    let real = set.sentinel_ports[0];
    let sentinels = Sentinels::new(local(&[dead, real]), "nobody", None);
    run(async {
        let err = timeout(PATIENCE, Connection::connect(&through(sentinels)))
            .await
            .expect("in time")
            .err()
            .expect("no master");
        assert!(matches!(err, RedisError::NoMaster { .. }), "{err:?}");
        let text = err.to_string();
        for needle in [
            "\"nobody\"",
            &format!("127.0.0.1:{dead}"),
            &format!("127.0.0.1:{real} does not know it"),
        ] {
            assert!(text.contains(needle), "{text:?} should contain {needle:?}");
        }
    });
}

#[test]
fn readonly_replies_end_the_connection() {
    let set = Deployment::start(1);
    run(async {
        // A direct connection to the replica, as after the master it reached was demoted.
        let mut conn = Connection::connect(&direct(set.replica_port))
            .await
            .unwrap();
        assert!(
            conn.call(&[b"GET", b"k"]).await.is_ok(),
            "reads work on a replica"
        );
        let err = conn.call(&[b"SET", b"k", b"v"]).await.unwrap_err();
        assert!(
            matches!(&err, RedisError::NotMaster(msg) if msg.contains("READONLY")),
            "{err:?}"
        );
        assert!(matches!(
            conn.call(&[b"PING"]).await,
            Err(RedisError::Closed)
        ));
        let mut conn = Connection::connect(&direct(set.replica_port))
            .await
            .unwrap();
        let pipeline = [
            vec![Bytes::from_static(b"PING")],
            vec![
                Bytes::from_static(b"HINCRBY"),
                Bytes::from_static(b"h"),
                Bytes::from_static(b"f"),
                Bytes::from_static(b"1"),
            ],
        ];
        let err = conn.pipeline(&pipeline).await.unwrap_err();
        assert!(matches!(err, RedisError::NotMaster(_)), "{err:?}");
        // Other error replies still leave the connection in step.
        let mut conn = Connection::connect(&direct(set.master_port)).await.unwrap();
        assert!(matches!(
            conn.call(&[b"NOSUCHCOMMAND"]).await,
            Err(RedisError::Server(_))
        ));
        assert!(conn.call(&[b"PING"]).await.is_ok());
    });
}

#[test]
fn a_switch_fails_older_connections_and_new_ones_reach_the_new_master() {
    // Three sentinels: the one that announced the switch is asked first afterwards.
    let mut set = Deployment::start(3);
    let sentinels = Sentinels::new(local(&set.sentinel_ports), NAME, None);
    let opts = through(sentinels.clone());
    let new_master = set.replica_port;
    run(async {
        let switches = std::rc::Rc::new(std::cell::Cell::new(0));
        let seen = std::rc::Rc::clone(&switches);
        monoio::spawn(watch(sentinels, move || seen.set(seen.get() + 1)));
        let mut conn = Connection::connect(&opts).await.unwrap();
        let mut sub = Subscriber::connect(&opts).await.unwrap();
        sub.subscribe(&[b"ch"]).await.unwrap();
        let (mut reader, _writer) = sub.split();
        let pending = monoio::spawn(async move { reader.next_event().await.map(|_| ()) });
        // Give the watcher time to subscribe on the sentinel.
        monoio::time::sleep(Duration::from_millis(500)).await;

        // Blocking in this task is fine: the other tasks wait on sockets meanwhile.
        let failover = std::thread::spawn(move || {
            set.failover();
            set
        });
        let woke = timeout(PATIENCE, pending)
            .await
            .expect("the reader woke up");
        assert!(
            matches!(&woke, Err(RedisError::NotMaster(_))),
            "pending pub/sub read: {woke:?}"
        );
        assert!(conn.moved(), "the command connection knows");
        assert!(matches!(
            conn.call(&[b"PING"]).await,
            Err(RedisError::NotMaster(_))
        ));
        assert_eq!(switches.get(), 1);
        let set = loop {
            if failover.is_finished() {
                break failover.join().expect("failover thread");
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut conn = timeout(PATIENCE, Connection::connect(&opts))
            .await
            .expect("in time")
            .expect("connected to the new master");
        assert_eq!(conn.server(), format!("127.0.0.1:{new_master}"));
        assert!(!conn.moved());
        assert_eq!(conn.call(&[b"SET", b"k", b"v"]).await.ok(), Some(Reply::Ok));
        drop(set);
    });
}
