//! Every way a frame reaches a socket: the batched io_uring sends of a flush
//! (`CORECAST_SEND_BATCH=true`, the default on io_uring), one `send` per socket
//! (`false`), and the epoll driver. In each, a burst of large events goes to many
//! subscribers on one shard while one of them, with a tiny receive buffer, does not read:
//! its socket fills (partial sends, `EAGAIN`, the writer task) and it must still get
//! every event once, byte-exact and in order, like the others.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::rest::post;
use common::{Server, Ws};
use serde_json::json;

const SUBSCRIBERS: usize = 20;
const EVENTS: usize = 200;
const DATA_BYTES: usize = 30_000;

/// The data of event `i`: distinct per event, so a lost, doubled or swapped one shows.
fn data(i: usize) -> String {
    let seed = format!("event {i:03} ");
    seed.repeat(DATA_BYTES / seed.len())
}

fn subscriber(server: &Server, rcvbuf: Option<usize>) -> Ws {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().expect("addr");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    let mut ws = Ws::upgrade(stream, "/app/app-key?protocol=7&client=js&version=8.4.0");
    assert_eq!(ws.read_json()["event"], "pusher:connection_established");
    ws.subscribe("paths");
    ws
}

/// Reads `EVENTS` events and checks each is the next one, whole.
fn read_all(ws: &mut Ws) {
    for i in 0..EVENTS {
        let v = ws.read_event("burst");
        assert_eq!(
            v["data"].as_str().map(str::len),
            Some(data(i).len()),
            "event {i} has the wrong size"
        );
        assert!(v["data"] == data(i), "event {i} out of order or damaged");
    }
}

fn burst_reaches_everyone(env: &[(&str, &str)]) {
    // 6 MB for the slow subscriber: more than a loopback socket's send buffer can
    // grow to (4 MB), within its queue bound.
    let mut env = env.to_vec();
    env.push(("CORECAST_MAX_OUTBOUND_KB", "16384"));
    let server = common::start(1, &env);
    let mut slow = subscriber(&server, Some(4096));
    let fast: Vec<Ws> = (0..SUBSCRIBERS)
        .map(|_| subscriber(&server, None))
        .collect();
    let readers: Vec<_> = fast
        .into_iter()
        .map(|mut ws| std::thread::spawn(move || read_all(&mut ws)))
        .collect();
    let port = server.port;
    let publisher = std::thread::spawn(move || {
        for i in 0..EVENTS {
            let body = json!({"name": "burst", "channel": "paths", "data": data(i)}).to_string();
            let (status, _) = post(port, "/apps/app-id/events", &body);
            assert_eq!(status, 200);
        }
    });
    publisher.join().expect("publisher");
    // The slow subscriber reads only after every event was accepted: its 6 MB sat in
    // the server's queue and socket meanwhile.
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    read_all(&mut slow);
    for r in readers {
        r.join()
            .expect("a fast subscriber missed or reordered an event");
    }
    // Nothing more arrives: no event was sent twice.
    slow.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    assert!(slow.try_read_frame().is_err(), "an extra frame arrived");
}

#[test]
fn batched_sends_deliver_every_frame_once_in_order() {
    burst_reaches_everyone(&[("CORECAST_SEND_BATCH", "true")]);
}

#[test]
fn direct_sends_deliver_every_frame_once_in_order() {
    burst_reaches_everyone(&[("CORECAST_SEND_BATCH", "false")]);
}

#[test]
fn epoll_driver_delivers_every_frame_once_in_order() {
    burst_reaches_everyone(&[("CORECAST_IO_DRIVER", "epoll")]);
}
