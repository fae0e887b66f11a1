//! `SOKETI_MODE=server` only enqueues webhooks and `SOKETI_MODE=worker` only sends them:
//! the worker has no WebSocket or REST listener, and delivers what the server queued.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::queue::{self, metric, wait_until};
use common::receiver;
use common::redis_server::RedisServer;

#[test]
fn a_worker_sends_what_a_server_mode_node_queued_and_listens_on_no_port() {
    let redis = RedisServer::start();
    let (hook_port, seen) = receiver::start();
    let env = queue::env(
        redis.port,
        &queue::hooks(hook_port),
        &[("SOKETI_MODE", "server")],
    );
    let server = common::start(1, &queue::pairs(&env));

    // A port nobody listens on, given to the worker as its WebSocket port.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let port_text = port.to_string();
    let mut worker_env = queue::env(redis.port, "[]", &[]);
    worker_env.push(("SOKETI_PORT".into(), port_text));
    let worker = common::start_worker(&queue::pairs(&worker_env));

    let channels: Vec<String> = (0..3).map(|i| format!("work-{i}")).collect();
    queue::occupy_and_vacate(server.port, &channels);
    wait_until(
        "the worker delivered 6 webhooks",
        Duration::from_secs(15),
        || receiver::events(&seen).len() >= 6,
    );
    queue::assert_signed(&seen);
    assert_eq!(
        metric(&server, "corecast_webhook_queue_appended_total"),
        6.0
    );
    assert_eq!(metric(&server, "corecast_webhook_requests_total"), 0.0);
    assert_eq!(
        metric(&server, "corecast_webhook_queue_partitions_owned"),
        0.0
    );
    wait_until(
        "the worker acknowledged 6 jobs",
        Duration::from_secs(5),
        || metric(&worker, "corecast_webhook_queue_acked_total") == 6.0,
    );
    assert_eq!(
        metric(&worker, "corecast_webhook_queue_partitions_owned"),
        16.0
    );

    assert!(worker.lines_with("listening on").is_empty());
    let refused =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1));
    assert!(refused.is_err(), "the worker listens on {port}");
}
