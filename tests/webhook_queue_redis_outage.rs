//! Redis unreachable with the redis queue: the node keeps serving, the webhooks it
//! decides wait on its webhook thread (not appended, not sent), and once Redis is back
//! they are appended and delivered, signed.

mod common;

use std::time::Duration;

use common::queue::{self, metric, wait_until};
use common::receiver;
use common::redis_server::RedisServer;

#[test]
fn webhooks_decided_while_redis_is_down_are_queued_once_it_is_back() {
    let mut redis = RedisServer::start();
    let (hook_port, seen) = receiver::start();
    let env = queue::env(redis.port, &queue::hooks(hook_port), &[]);
    let node = common::start(1, &queue::pairs(&env));
    wait_until(
        "the node owns every partition",
        Duration::from_secs(5),
        || metric(&node, "corecast_webhook_queue_partitions_owned") == 16.0,
    );

    redis.stop();
    wait_until("the queue sees Redis down", Duration::from_secs(5), || {
        metric(&node, "corecast_webhook_queue_up") == 0.0
    });
    let channels: Vec<String> = (0..3).map(|i| format!("outage-{i}")).collect();
    queue::occupy_and_vacate(node.port, &channels);
    assert_eq!(metric(&node, "corecast_webhook_queue_appended_total"), 0.0);
    assert!(receiver::events(&seen).is_empty());

    redis.restart();
    wait_until("6 events appended", Duration::from_secs(10), || {
        metric(&node, "corecast_webhook_queue_appended_total") == 6.0
    });
    wait_until("every webhook received", Duration::from_secs(10), || {
        receiver::events(&seen).len() >= 6
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
    assert_eq!(metric(&node, "corecast_webhook_queue_up"), 1.0);
}
