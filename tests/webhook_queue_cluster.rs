//! The redis queue over a Redis Cluster (`SOKETI_ADAPTER_REDIS_CLUSTER_MODE`): every
//! queue key carries the hash tag `{corecast:webhooks}`, so the streams live on the one
//! master of that slot; a server-mode node appends, a worker reads and sends through the
//! slot map, retries in order per channel, and acknowledges there.

mod common;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;
#[path = "common/redis_sentinel.rs"]
mod redis_sentinel;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::queue::{self, metric, wait_until};
use common::receiver;
use redis_cluster::{Cluster, Shape};
use redis_sentinel::Reply;

#[test]
fn over_a_redis_cluster_queued_webhooks_go_through_the_tagged_slot() {
    let cluster = Cluster::start(Shape::masters(3));
    let fail = Arc::new(AtomicUsize::new(0));
    let (hook_port, seen) = receiver::start_failing(Arc::clone(&fail));
    let seeds = cluster.env_value();
    let cluster_env = [
        ("SOKETI_ADAPTER_REDIS_CLUSTER_MODE", "true"),
        ("SOKETI_DB_REDIS_CLUSTER_NODES", seeds.as_str()),
    ];
    let mut server_env = cluster_env.to_vec();
    server_env.push(("SOKETI_MODE", "server"));
    let server_env = queue::env(1, &queue::hooks(hook_port), &server_env);
    let server = common::start(1, &queue::pairs(&server_env));
    let worker_env = queue::env(1, "[]", &cluster_env);
    let worker = common::start_worker(&queue::pairs(&worker_env));

    let channels: Vec<String> = (0..4).map(|i| format!("clustered-{i}")).collect();
    fail.store(channels.len(), Ordering::SeqCst);
    for ch in &channels {
        queue::occupy_and_vacate(server.port, std::slice::from_ref(ch));
    }
    wait_until("every webhook received", Duration::from_secs(20), || {
        receiver::events(&seen).len() >= 8
    });
    let events = receiver::events(&seen);
    for ch in &channels {
        let first = |name: &str| events.iter().position(|(n, c)| n == name && c == ch);
        let (occupied, vacated) = (first("channel_occupied"), first("channel_vacated"));
        assert!(
            occupied.is_some() && vacated.is_some() && occupied < vacated,
            "{ch}: occupied at {occupied:?}, vacated at {vacated:?} in {events:?}"
        );
    }
    queue::assert_signed(&seen);
    assert_eq!(
        metric(&server, "corecast_webhook_queue_appended_total"),
        8.0
    );
    wait_until(
        "the worker acknowledged 8 jobs",
        Duration::from_secs(5),
        || metric(&worker, "corecast_webhook_queue_acked_total") == 8.0,
    );
    assert!(metric(&worker, "corecast_webhook_queue_retries_total") >= 4.0);

    // Every partition is on the master of the tag's slot, and empty after the acks.
    let home = cluster.owner(cluster.slot("{corecast:webhooks}"));
    for p in 0..16 {
        let key = format!("{{corecast:webhooks}}:p{p}");
        assert_eq!(cluster.owner(cluster.slot(&key)), home);
        match cluster.command(home, &["XLEN", &key]) {
            Ok(Reply::Int(0)) => {}
            other => panic!("XLEN {key} on {home}: {other:?}"),
        }
    }
}
