//! The Redis Cluster client on a real 3-master cluster: commands reach the master of
//! their key's slot, a pipeline spans masters and keeps its replies in order, `-ASK`
//! during a slot migration and `-MOVED` after it are followed, and seeds that are not
//! a cluster are a clear error.

mod common;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;
#[path = "common/redis_sentinel.rs"]
mod redis_sentinel;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use corecast::redis::client::{RedisError, RedisOptions, Reply};
use corecast::redis::cluster::ClusterConnection;

use redis_cluster::{Cluster, Shape};

fn run<F: Future>(future: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime")
        .block_on(future)
}

fn opts() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    }
}

fn seeds(cluster: &Cluster) -> Vec<(String, u16)> {
    vec![("127.0.0.1".to_owned(), cluster.nodes[0].port)]
}

fn bulk(reply: &Reply) -> Option<&[u8]> {
    match reply {
        Reply::Bulk(b) => Some(b),
        _ => None,
    }
}

#[test]
fn keys_on_every_master_are_written_and_read_through_one_connection() {
    let cluster = Cluster::start(Shape::masters(3));
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    let mut owners: Vec<u16> = keys
        .iter()
        .map(|k| cluster.owner(cluster.slot(k)))
        .collect();
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners.len(), 3, "30 keys cover the 3 masters");
    run(async {
        let redirects = Arc::new(AtomicU64::new(0));
        let mut conn =
            ClusterConnection::connect(&opts(), &seeds(&cluster), Arc::clone(&redirects))
                .await
                .expect("connect");
        assert_eq!(conn.topology().masters.len(), 3);
        assert!(conn.topology().sharded, "Redis 7 has sharded pub/sub");
        let sets: Vec<Vec<Bytes>> = keys
            .iter()
            .map(|k| {
                vec![
                    Bytes::from_static(b"SET"),
                    Bytes::from(k.clone()),
                    Bytes::from(format!("v-{k}")),
                ]
            })
            .collect();
        let replies = conn.pipeline(&sets).await.expect("pipeline");
        assert!(replies.iter().all(|r| *r == Reply::Ok), "{replies:?}");
        let gets: Vec<Vec<Bytes>> = keys
            .iter()
            .map(|k| vec![Bytes::from_static(b"GET"), Bytes::from(k.clone())])
            .collect();
        let replies = conn.pipeline(&gets).await.expect("pipeline");
        for (k, r) in keys.iter().zip(&replies) {
            assert_eq!(bulk(r), Some(format!("v-{k}").as_bytes()), "{k}");
        }
        assert_eq!(
            redirects.load(Ordering::Relaxed),
            0,
            "a fresh map needs none"
        );
    });
    // Each key is where the cluster says its slot is.
    for k in &keys {
        let owner = cluster.owner(cluster.slot(k));
        match cluster.command(owner, &["GET", k]) {
            Ok(redis_sentinel::Reply::Bulk(v)) => assert_eq!(v, format!("v-{k}")),
            other => panic!("GET {k} on its master :{owner}: {other:?}"),
        }
    }
}

#[test]
fn a_slot_in_migration_is_asked_and_a_moved_slot_is_followed() {
    let cluster = Cluster::start(Shape::masters(3));
    let key = "{moving}:k";
    let slot = cluster.slot(key);
    let from = cluster.owner(slot);
    let to = *cluster
        .masters()
        .iter()
        .find(|&&m| m != from)
        .expect("another master");
    let id = |port: u16| {
        cluster
            .nodes
            .iter()
            .find(|n| n.port == port)
            .expect("node")
            .id
            .clone()
    };
    let s = slot.to_string();
    run(async {
        let redirects = Arc::new(AtomicU64::new(0));
        let mut conn =
            ClusterConnection::connect(&opts(), &seeds(&cluster), Arc::clone(&redirects))
                .await
                .expect("connect");
        // Mid-migration: the key is not on the old master yet, so it answers -ASK.
        for (port, state, other) in [(to, "IMPORTING", from), (from, "MIGRATING", to)] {
            let reply = cluster.command(port, &["CLUSTER", "SETSLOT", &s, state, &id(other)]);
            assert!(
                matches!(reply, Ok(redis_sentinel::Reply::Status(ref ok)) if ok == "OK"),
                "{reply:?}"
            );
        }
        let set = conn.call(&[b"SET", key.as_bytes(), b"during"]).await;
        assert_eq!(set.expect("SET during the migration"), Reply::Ok);
        assert_eq!(redirects.load(Ordering::Relaxed), 1, "one -ASK followed");
        // The migration ends: the slot belongs to the new master; the next call to the
        // old one gets -MOVED and is followed, and the map is read again.
        for node in &cluster.nodes {
            let _ = cluster.command(node.port, &["CLUSTER", "SETSLOT", &s, "NODE", &id(to)]);
        }
        let got = conn.call(&[b"GET", key.as_bytes()]).await.expect("GET");
        assert_eq!(bulk(&got), Some(&b"during"[..]));
        assert_eq!(redirects.load(Ordering::Relaxed), 2, "then one -MOVED");
        let cmds = vec![vec![Bytes::from_static(b"GET"), Bytes::from(key)]];
        let again = conn.pipeline(&cmds).await.expect("pipeline after the move");
        assert_eq!(bulk(&again[0]), Some(&b"during"[..]));
        assert_eq!(
            redirects.load(Ordering::Relaxed),
            2,
            "the map was refreshed"
        );
    });
}

#[test]
fn a_server_that_is_not_a_cluster_is_a_clear_error() {
    let redis = common::redis_server::RedisServer::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let seeds = vec![
        ("127.0.0.1".to_owned(), dead),
        ("127.0.0.1".to_owned(), redis.port),
    ];
    let err = run(ClusterConnection::connect(&opts(), &seeds, Arc::default()))
        .err()
        .expect("no cluster there");
    let text = err.to_string();
    assert!(matches!(err, RedisError::NoCluster { .. }), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{dead}")), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", redis.port))
            && text.contains("cluster support disabled"),
        "{text}"
    );
}
