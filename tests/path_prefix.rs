//! `SOKETI_PATH_PREFIX` mounts the WebSocket and REST routes under a prefix, as Soketi does;
//! requests are signed over the full path the client used.

mod common;

use common::rest::{KEY, SECRET, now, post, post_raw, signed_post};
use common::{Ws, start};
use serde_json::json;

#[test]
fn websocket_and_rest_routes_live_under_the_prefix() {
    let server = start(2, &[("SOKETI_PATH_PREFIX", "/ws")]);
    let mut ws = Ws::connect(server.port, "/ws/app/app-key?protocol=7");
    assert_eq!(ws.read_json()["event"], "pusher:connection_established");
    ws.subscribe("prefixed");
    let body = json!({"name": "e", "channel": "prefixed", "data": "x"}).to_string();
    let target = signed_post(
        "/ws/apps/app-id/events",
        body.as_bytes(),
        KEY,
        SECRET,
        now(),
    );
    assert_eq!(post_raw(server.port, &target, &body).0, 200);
    assert_eq!(ws.read_json()["event"], "e");
    // Outside the prefix the REST API is not there.
    assert_eq!(post(server.port, "/apps/app-id/events", &body).0, 404);
}
