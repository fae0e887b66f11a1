//! The redis queue with a receiver that fails and then recovers: every webhook arrives
//! once it answers again, signed, after retries counted in the metrics, and the streams
//! are left empty (each job acknowledged and deleted after its 2xx).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::queue::{self, metric, wait_until};
use common::receiver;
use common::redis_server::RedisServer;

#[test]
fn webhooks_queued_in_redis_arrive_after_the_receiver_recovers() {
    let redis = RedisServer::start();
    let fail = Arc::new(AtomicUsize::new(usize::MAX));
    let (hook_port, seen) = receiver::start_failing(Arc::clone(&fail));
    let env = queue::env(redis.port, &queue::hooks(hook_port), &[]);
    let node = common::start(2, &queue::pairs(&env));

    let channels: Vec<String> = (0..4).map(|i| format!("room-{i}")).collect();
    queue::occupy_and_vacate(node.port, &channels);
    wait_until("8 events appended", Duration::from_secs(10), || {
        metric(&node, "corecast_webhook_queue_appended_total") == 8.0
    });
    wait_until(
        "retries while the receiver fails",
        Duration::from_secs(10),
        || metric(&node, "corecast_webhook_queue_retries_total") >= 4.0,
    );
    assert!(receiver::events(&seen).is_empty());

    fail.store(0, Ordering::SeqCst);
    wait_until("every webhook received", Duration::from_secs(15), || {
        receiver::events(&seen).len() >= 8
    });
    let events = receiver::events(&seen);
    for ch in &channels {
        for name in ["channel_occupied", "channel_vacated"] {
            assert!(
                events.iter().any(|(n, c)| n == name && c == ch),
                "{name} {ch} missing: {events:?}"
            );
        }
    }
    queue::assert_signed(&seen);
    wait_until("8 jobs acknowledged", Duration::from_secs(5), || {
        metric(&node, "corecast_webhook_queue_acked_total") == 8.0
    });
    let depth: u64 = (0..16)
        .map(|p| {
            let key = format!("{{corecast:webhooks}}:p{p}");
            queue::redis_cli(redis.port, &["XLEN", &key])[0]
                .parse::<u64>()
                .expect("XLEN answers a number")
        })
        .sum();
    assert_eq!(depth, 0, "acknowledged jobs are deleted from their streams");
    assert_eq!(
        metric(&node, "corecast_webhook_queue_dead_letters_total"),
        0.0
    );
}
