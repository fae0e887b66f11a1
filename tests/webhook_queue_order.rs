//! Order per channel through the redis queue: when a channel's `channel_occupied` fails
//! and is retried, its `channel_vacated` waits for it, so the receiver never sees a
//! channel vacated before it was occupied.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::queue::{self, metric, wait_until};
use common::receiver;
use common::redis_server::RedisServer;

#[test]
fn occupied_reaches_the_receiver_before_vacated_despite_retries() {
    let redis = RedisServer::start();
    let channels: Vec<String> = (0..6).map(|i| format!("ordered-{i}")).collect();
    // The first request of every channel (its occupied) fails once.
    let fail = Arc::new(AtomicUsize::new(0));
    let (hook_port, seen) = receiver::start_failing(Arc::clone(&fail));
    let env = queue::env(redis.port, &queue::hooks(hook_port), &[]);
    let node = common::start(1, &queue::pairs(&env));

    fail.store(channels.len(), Ordering::SeqCst);
    for ch in &channels {
        queue::occupy_and_vacate(node.port, std::slice::from_ref(ch));
    }
    wait_until("every webhook received", Duration::from_secs(15), || {
        receiver::events(&seen).len() >= 2 * channels.len()
    });
    assert_eq!(fail.load(Ordering::SeqCst), 0, "the failures were spent");
    assert!(metric(&node, "corecast_webhook_queue_retries_total") >= 1.0);
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
}
