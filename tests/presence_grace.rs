//! `CORECAST_PRESENCE_MEMBER_REMOVED_DELAY_MS`: a presence member whose last socket left
//! stays listed for the grace, so a page reload sends other members neither
//! `member_removed` nor `member_added`; a real leave is announced once the grace is over.
//! On one server (2 shards) and across two nodes over Redis.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{Server, Ws, frames_for, join_presence, start, wait_event, wait_linked};
use serde_json::Value;

const GRACE_MS: u64 = 1500;

/// `(event, user_id)` of the member events among `frames` for `channel`.
fn member_events(frames: &[Value], channel: &str) -> Vec<(String, String)> {
    frames
        .iter()
        .filter(|v| v["channel"] == channel)
        .filter_map(|v| {
            let event = v["event"].as_str()?;
            let event = event.strip_prefix("pusher_internal:member_")?;
            let data: Value = serde_json::from_str(v["data"].as_str()?).ok()?;
            Some((event.to_owned(), data["user_id"].as_str()?.to_owned()))
        })
        .collect()
}

/// Alice on `first` reloads onto `second` within the grace, then leaves for good; the
/// watcher on `watch_on` sees her added once and removed once, the removal only after
/// the grace.
fn a_reload_is_silent_and_a_leave_waits_for_the_grace(
    watch_on: &Server,
    first: &Server,
    second: &Server,
) {
    let channel = "presence-grace";
    let (mut watcher, id) = Ws::pusher(watch_on.port);
    join_presence(&mut watcher, &id, channel, "watcher");
    let (alice, id) = Ws::pusher(first.port);
    let mut alice = alice;
    join_presence(&mut alice, &id, channel, "alice");
    wait_event(&mut watcher, Duration::from_secs(5), |v| {
        v["event"] == "pusher_internal:member_added"
    })
    .unwrap_or_else(|seen| panic!("alice never added: {seen:?}"));

    // Reload: the old socket goes, a new one joins at once.
    drop(alice);
    let (mut alice, id) = Ws::pusher(second.port);
    join_presence(&mut alice, &id, channel, "alice");
    let quiet = frames_for(&mut watcher, Duration::from_millis(GRACE_MS + 1500));
    assert_eq!(
        member_events(&quiet, channel),
        vec![],
        "a reload: {quiet:?}"
    );

    // A real leave: member_removed once, after the grace.
    let left = Instant::now();
    drop(alice);
    let removed = wait_event(&mut watcher, Duration::from_secs(10), |v| {
        v["event"] == "pusher_internal:member_removed"
    })
    .unwrap_or_else(|seen| panic!("alice never removed: {seen:?}"));
    let after = left.elapsed();
    assert!(
        removed["data"].as_str().unwrap_or("").contains("alice"),
        "{removed}"
    );
    assert!(
        after >= Duration::from_millis(GRACE_MS - 100),
        "member_removed {after:?} after the leave, before the {GRACE_MS} ms grace"
    );
    let more = frames_for(&mut watcher, Duration::from_millis(500));
    assert_eq!(member_events(&more, channel), vec![], "{more:?}");
    eprintln!("member_removed {after:?} after the last socket left");
}

#[test]
fn on_one_server_a_reload_within_the_grace_is_silent() {
    let grace = GRACE_MS.to_string();
    let server = start(2, &[("CORECAST_PRESENCE_MEMBER_REMOVED_DELAY_MS", &grace)]);
    a_reload_is_silent_and_a_leave_waits_for_the_grace(&server, &server, &server);
}

#[test]
fn across_nodes_a_reload_onto_the_other_node_within_the_grace_is_silent() {
    let redis = RedisServer::start();
    let (port, grace) = (redis.port.to_string(), GRACE_MS.to_string());
    let env = [
        ("SOKETI_ADAPTER_DRIVER", "redis"),
        ("SOKETI_DB_REDIS_PORT", port.as_str()),
        ("CORECAST_PRESENCE_MEMBER_REMOVED_DELAY_MS", grace.as_str()),
    ];
    let a = start(2, &env);
    let b = start(2, &env);
    wait_linked(&a, &b);
    wait_linked(&b, &a);
    a_reload_is_silent_and_a_leave_waits_for_the_grace(&a, &a, &b);
}

#[test]
fn without_the_grace_a_leave_is_announced_at_once() {
    let server = start(2, &[]);
    let channel = "presence-now";
    let (mut watcher, id) = Ws::pusher(server.port);
    join_presence(&mut watcher, &id, channel, "watcher");
    let (mut alice, id) = Ws::pusher(server.port);
    join_presence(&mut alice, &id, channel, "alice");
    wait_event(&mut watcher, Duration::from_secs(5), |v| {
        v["event"] == "pusher_internal:member_added"
    })
    .unwrap_or_else(|seen| panic!("alice never added: {seen:?}"));
    drop(alice);
    let (mut again, id) = Ws::pusher(server.port);
    join_presence(&mut again, &id, channel, "alice");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while member_events(&seen, channel).len() < 2 && Instant::now() < deadline {
        seen.extend(frames_for(&mut watcher, Duration::from_millis(100)));
    }
    assert_eq!(
        member_events(&seen, channel),
        vec![
            ("removed".to_owned(), "alice".to_owned()),
            ("added".to_owned(), "alice".to_owned())
        ],
        "{seen:?}"
    );
}
