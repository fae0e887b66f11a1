//! A node stopped gracefully (SIGTERM) gives its partition leases back: another node
//! sends the jobs it held at once, long before the claim timeout would have expired.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::queue::{self, metric, wait_until};
use common::receiver;
use common::redis_server::RedisServer;

#[test]
fn a_stopping_node_hands_its_partitions_over_at_once() {
    let redis = RedisServer::start();
    let fail = Arc::new(AtomicUsize::new(usize::MAX));
    let (hook_port, seen) = receiver::start_failing(Arc::clone(&fail));
    // The default claim timeout (30 s): only a lease given back explains a quick takeover.
    let env = queue::env(
        redis.port,
        &queue::hooks(hook_port),
        &[("CORECAST_WEBHOOK_QUEUE_PARTITIONS", "1")],
    );
    let mut a = common::start(1, &queue::pairs(&env));
    wait_until("a owns the partition", Duration::from_secs(5), || {
        metric(&a, "corecast_webhook_queue_partitions_owned") == 1.0
    });
    let b = common::start(1, &queue::pairs(&env));
    let channels: Vec<String> = (0..5).map(|i| format!("handover-{i}")).collect();
    queue::occupy_and_vacate(a.port, &channels);
    wait_until("a attempted every channel", Duration::from_secs(10), || {
        metric(&a, "corecast_webhook_requests_total") >= 5.0
    });

    let stopped = Instant::now();
    a.signal(libc::SIGTERM);
    assert!(
        a.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    fail.store(0, Ordering::SeqCst);
    wait_until("b received every webhook", Duration::from_secs(10), || {
        receiver::events(&seen).len() >= 10
    });
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "taken over after {:?}",
        stopped.elapsed()
    );
    assert!(metric(&b, "corecast_webhook_queue_claimed_total") >= 5.0);
    queue::assert_signed(&seen);
}
