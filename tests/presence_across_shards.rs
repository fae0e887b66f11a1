//! Presence rosters live on each channel's home shard: a user is one member however many
//! sockets it has on however many shards.

mod common;

use std::time::Duration;

use common::rest::{KEY, SECRET, hmac_hex};
use common::{Ws, start};
use serde_json::{Value, json};

fn join(ws: &mut Ws, socket_id: &str, channel: &str, user: &str) -> Value {
    let data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
    let auth = format!(
        "{KEY}:{}",
        hmac_hex(SECRET, &format!("{socket_id}:{channel}:{data}"))
    );
    ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}}));
    let ok = ws.read_event("pusher_internal:subscription_succeeded");
    serde_json::from_str(ok["data"].as_str().expect("string data")).expect("json")
}

/// Reads frames for a while and returns the member events seen.
fn member_events(ws: &mut Ws, wait: Duration) -> Vec<(String, String)> {
    ws.stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut seen = Vec::new();
    while let Ok(f) = ws.try_read_frame() {
        let v = f.json();
        let event = v["event"].as_str().unwrap_or_default().to_owned();
        if event.starts_with("pusher_internal:member_") {
            let data: Value = serde_json::from_str(v["data"].as_str().expect("str")).expect("json");
            seen.push((
                event,
                data["user_id"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    seen
}

#[test]
fn one_user_on_many_sockets_is_one_member_across_shards() {
    let server = start(2, &[]);
    let channel = "presence-room";
    let (mut watcher, wid) = Ws::pusher(server.port);
    let roster = join(&mut watcher, &wid, channel, "watcher");
    assert_eq!(roster["presence"]["count"], 1);
    // Six sockets of one user: SO_REUSEPORT puts them on both shards.
    let mut alice: Vec<Ws> = Vec::new();
    for i in 0..6 {
        let (mut ws, id) = Ws::pusher(server.port);
        let roster = join(&mut ws, &id, channel, "alice");
        assert_eq!(
            roster["presence"]["count"], 2,
            "socket {i} sees two members"
        );
        assert_eq!(
            roster["presence"]["hash"]["alice"],
            json!({"name": "alice"})
        );
        alice.push(ws);
    }
    assert_eq!(
        member_events(&mut watcher, Duration::from_millis(300)),
        vec![(
            "pusher_internal:member_added".to_owned(),
            "alice".to_owned()
        )]
    );
    // Closing all but one socket removes nobody.
    let mut last = alice.pop().expect("one left");
    drop(alice);
    assert_eq!(
        member_events(&mut watcher, Duration::from_millis(500)),
        vec![]
    );
    // Unsubscribing the last socket removes alice once.
    last.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}));
    assert_eq!(
        member_events(&mut watcher, Duration::from_millis(500)),
        vec![(
            "pusher_internal:member_removed".to_owned(),
            "alice".to_owned()
        )]
    );
}

#[test]
fn disconnect_of_last_socket_removes_the_member() {
    let server = start(2, &[]);
    let channel = "presence-lobby";
    let (mut watcher, wid) = Ws::pusher(server.port);
    join(&mut watcher, &wid, channel, "w");
    let (mut bob, bid) = Ws::pusher(server.port);
    join(&mut bob, &bid, channel, "bob");
    assert_eq!(
        member_events(&mut watcher, Duration::from_millis(300)).len(),
        1
    );
    drop(bob);
    assert_eq!(
        member_events(&mut watcher, Duration::from_millis(500)),
        vec![(
            "pusher_internal:member_removed".to_owned(),
            "bob".to_owned()
        )]
    );
}

#[test]
fn member_limit_refuses_a_new_user() {
    let server = start(2, &[("SOKETI_PRESENCE_MAX_MEMBERS", "2")]);
    let channel = "presence-small";
    let mut keep = Vec::new();
    for user in ["a", "b"] {
        let (mut ws, id) = Ws::pusher(server.port);
        join(&mut ws, &id, channel, user);
        keep.push(ws);
    }
    let (mut ws, id) = Ws::pusher(server.port);
    let data = json!({"user_id": "c"}).to_string();
    let auth = format!(
        "{KEY}:{}",
        hmac_hex(SECRET, &format!("{id}:{channel}:{data}"))
    );
    ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}}));
    let err = ws.read_event("pusher:subscription_error");
    assert_eq!(err["channel"], channel);
    assert_eq!(err["data"]["type"], "LimitReached");
}
