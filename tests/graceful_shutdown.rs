//! SIGTERM: every client is told to reconnect (4200), `/ready` answers 503 while the
//! server drains, and the process exits within the grace period.

mod common;

use std::time::{Duration, Instant};

use common::{Ws, http, start};

#[test]
fn sigterm_sends_4200_to_every_client_and_exits_within_grace() {
    let mut server = start(2, &[("SOKETI_SHUTDOWN_GRACE_PERIOD", "3000")]);
    let mut clients: Vec<Ws> = (0..6).map(|_| Ws::pusher(server.port).0).collect();
    // One client that never completes the close handshake keeps the server draining.
    let (stubborn, _) = Ws::pusher(server.port);
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    for ws in &mut clients {
        let err = ws.read_event("pusher:error");
        assert_eq!(err["data"]["code"], 4200);
        let close = ws.read_until_closed().expect("close frame");
        assert_eq!(close.close_code(), Some(4200));
    }
    let (status, body) = http(server.port, "GET", "/ready", &[], b"").expect("ready during drain");
    assert_eq!((status, body.as_slice()), (503, &b"Shutting down"[..]));
    let exit = server
        .wait_exit(Duration::from_secs(6))
        .expect("exits within the grace period");
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(stubborn);
}

#[test]
fn new_websocket_during_drain_is_refused_with_4200() {
    let server = start(1, &[("SOKETI_SHUTDOWN_GRACE_PERIOD", "2000")]);
    let (_stubborn, _) = Ws::pusher(server.port);
    server.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    let mut late = Ws::connect(server.port, "/app/app-key?protocol=7");
    let err = late.read_json();
    assert_eq!(err["data"]["code"], 4200);
}
