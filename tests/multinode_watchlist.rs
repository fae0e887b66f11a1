//! Watchlist events over two nodes when a node dies: the users signed in on a node
//! killed with SIGKILL go offline for their watchers on the other node once it is reaped.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::rest::{KEY, SECRET, hmac_hex};
use common::{Server, Ws, start, wait_event, wait_linked};
use serde_json::{Value, json};

fn node(redis: &RedisServer) -> Server {
    let port = redis.port.to_string();
    start(
        2,
        &[
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_DB_REDIS_PORT", &port),
            ("CORECAST_DEFAULT_APP_ENABLE_WATCHLIST_EVENTS", "true"),
        ],
    )
}

/// Signs `user` in on `port` with `watchlist`.
fn sign_in(port: u16, user: &str, watchlist: &[&str]) -> Ws {
    let (mut ws, socket_id) = Ws::pusher(port);
    let user_data = json!({"id": user, "watchlist": watchlist}).to_string();
    let auth = format!(
        "{KEY}:{}",
        hmac_hex(SECRET, &format!("{socket_id}::user::{user_data}"))
    );
    ws.send_json(json!({"event": "pusher:signin", "data": {"user_data": user_data, "auth": auth}}));
    let ok = wait_event(&mut ws, Duration::from_secs(5), |v| {
        v["event"] == "pusher:signin_success" || v["event"] == "pusher:error"
    })
    .unwrap_or_else(|seen| panic!("no answer to {user}'s signin: {seen:?}"));
    assert_eq!(ok["event"], "pusher:signin_success", "{ok}");
    ws
}

/// Waits for a watchlist event naming `user` as `state`.
fn wait_state(ws: &mut Ws, user: &str, state: &str, within: Duration) -> Value {
    wait_event(ws, within, |v| {
        v["event"] == "pusher_internal:watchlist_events"
            && v["data"]["events"].as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["name"] == state
                        && e["user_ids"]
                            .as_array()
                            .is_some_and(|ids| ids.iter().any(|i| i == user))
                })
            })
    })
    .unwrap_or_else(|seen| panic!("{user} never {state}: {seen:?}"))
}

#[test]
fn users_of_a_killed_node_go_offline_for_watchers_on_the_other_node() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    wait_linked(&a, &b);
    wait_linked(&b, &a);
    let mut watcher = sign_in(a.port, "watcher", &["bob"]);
    wait_state(&mut watcher, "bob", "offline", Duration::from_secs(5));
    let _bob = sign_in(b.port, "bob", &[]);
    wait_state(&mut watcher, "bob", "online", Duration::from_secs(5));

    b.signal(libc::SIGKILL);
    let killed = Instant::now();
    wait_state(&mut watcher, "bob", "offline", Duration::from_secs(25));
    eprintln!(
        "bob offline {:?} after his node was killed",
        killed.elapsed()
    );

    // Bob signs in again on the live node: online once more.
    let _bob_again = sign_in(a.port, "bob", &[]);
    wait_state(&mut watcher, "bob", "online", Duration::from_secs(5));
}
