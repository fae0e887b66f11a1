//! A webhook job that always fails ends in the dead-letter stream after its attempt
//! budget, with the error, the attempts and the signed request, and is counted.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use common::queue::{self, DEAD, metric, wait_until};
use common::receiver;
use common::redis_server::RedisServer;

#[test]
fn a_job_that_always_fails_goes_to_the_dead_letter_stream() {
    let redis = RedisServer::start();
    let (hook_port, seen) = receiver::start_failing(Arc::new(AtomicUsize::new(usize::MAX)));
    let env = queue::env(
        redis.port,
        &queue::hooks(hook_port),
        &[
            ("CORECAST_WEBHOOK_QUEUE_MAX_ATTEMPTS", "2"),
            ("CORECAST_WEBHOOK_QUEUE_CLAIM_TIMEOUT_MS", "1500"),
        ],
    );
    let node = common::start(1, &queue::pairs(&env));
    let (mut ws, _) = common::Ws::pusher(node.port);
    ws.subscribe("doomed");

    wait_until("one dead letter", Duration::from_secs(10), || {
        metric(&node, "corecast_webhook_queue_dead_letters_total") == 1.0
    });
    assert!(receiver::events(&seen).is_empty());
    assert_eq!(metric(&node, "corecast_webhook_queue_retries_total"), 1.0);
    assert_eq!(queue::redis_cli(redis.port, &["XLEN", DEAD]), ["1"]);
    // XRANGE prints the id, then field, value, field, value..., one per line.
    let entry = queue::redis_cli(redis.port, &["XRANGE", DEAD, "-", "+"]);
    let field = |name: &str| {
        let i = entry
            .iter()
            .position(|l| l == name)
            .unwrap_or_else(|| panic!("{name} in {entry:?}"));
        entry[i + 1].clone()
    };
    assert_eq!(field("url"), format!("http://127.0.0.1:{hook_port}/hook"));
    assert_eq!(field("error"), "HTTP status 500");
    assert_eq!(field("attempts"), "2");
    assert_eq!(field("app"), "app-id");
    // The request (raw, over several lines) is there whole, signed.
    let text = entry.join("\n");
    assert!(text.contains("POST /hook HTTP/1.1"), "{text}");
    assert!(
        text.contains("channel_occupied") && text.contains("doomed"),
        "{text}"
    );
    assert!(text.contains("X-Pusher-Signature: "), "{text}");
    wait_until(
        "the gauges read the streams",
        Duration::from_secs(15),
        || {
            metric(&node, "corecast_webhook_queue_dead_letters") == 1.0
                && metric(&node, "corecast_webhook_queue_depth") == 0.0
        },
    );
}
