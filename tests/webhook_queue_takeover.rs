//! A node SIGKILL'd with webhook jobs in the redis queue: another node takes its
//! partition over once its lease expires, claims the jobs it had read and not
//! acknowledged, and sends every one of them, signed, in order per channel.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::queue::{self, metric, wait_until};
use common::receiver;
use common::redis_server::RedisServer;

#[test]
fn another_node_sends_the_webhooks_of_a_killed_node() {
    let redis = RedisServer::start();
    let fail = Arc::new(AtomicUsize::new(usize::MAX));
    let (hook_port, seen) = receiver::start_failing(Arc::clone(&fail));
    // One partition: node a owns it (it starts first), b waits for it.
    let env = queue::env(
        redis.port,
        &queue::hooks(hook_port),
        &[
            ("CORECAST_WEBHOOK_QUEUE_PARTITIONS", "1"),
            ("CORECAST_WEBHOOK_QUEUE_CLAIM_TIMEOUT_MS", "1500"),
            ("CORECAST_WEBHOOK_QUEUE_MAX_ATTEMPTS", "100"),
        ],
    );
    let a = common::start(2, &queue::pairs(&env));
    wait_until("a owns the partition", Duration::from_secs(5), || {
        metric(&a, "corecast_webhook_queue_partitions_owned") == 1.0
    });
    let b = common::start(1, &queue::pairs(&env));

    let channels: Vec<String> = (0..10).map(|i| format!("kill-{i}")).collect();
    queue::occupy_and_vacate(a.port, &channels);
    wait_until("a appended 20 events", Duration::from_secs(10), || {
        metric(&a, "corecast_webhook_queue_appended_total") == 20.0
    });
    // a has read every channel's first job and is retrying it.
    wait_until("a attempted every channel", Duration::from_secs(10), || {
        metric(&a, "corecast_webhook_requests_total") >= 10.0
    });
    assert_eq!(metric(&b, "corecast_webhook_queue_partitions_owned"), 0.0);
    assert_eq!(metric(&b, "corecast_webhook_requests_total"), 0.0);

    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    fail.store(0, Ordering::SeqCst);
    wait_until("b received every webhook", Duration::from_secs(20), || {
        receiver::events(&seen).len() >= 20
    });
    let took = killed.elapsed();
    assert!(
        metric(&b, "corecast_webhook_queue_claimed_total") >= 10.0,
        "b claimed the jobs a had read"
    );
    assert_eq!(metric(&b, "corecast_webhook_queue_partitions_owned"), 1.0);
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
    // a's attempts all failed, so b sent each job once: claimed jobs are not read again.
    wait_until("b acknowledged 20 jobs", Duration::from_secs(5), || {
        metric(&b, "corecast_webhook_queue_acked_total") == 20.0
    });
    assert_eq!(
        receiver::events(&seen).len(),
        20,
        "{:?}",
        receiver::events(&seen)
    );
    // The lease (1.5 s) expires, b's next round (every 0.5 s: a third of it) takes it.
    assert!(took < Duration::from_secs(10), "took over after {took:?}");
}
