//! Webhooks reach a real HTTP receiver (a std `TcpListener` parsing requests with httparse):
//! body, signature and headers as Pusher sends them, routing by event type and channel
//! filter, batching, retries, isolation from a hanging receiver, failure counting, and the
//! final flush.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corecast::config::{WebhookConfig, WebhookEvent, WebhookFilter};
use corecast::webhooks::{AppHooks, Event, WebhookSettings, WebhookStats, Webhooks};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const KEY: &str = "app-key";
const SECRET: &str = "app-secret";

/// One request as the receiver saw it.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    fn events(&self) -> Vec<Value> {
        self.json()["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn channels(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["channel"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// How the receiver answers its `n`-th connection.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Read the request, then never answer.
    Hang,
}

struct Receiver {
    url: String,
    requests: mpsc::Receiver<Request>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1; `reply(n)` decides the answer to connection `n`.
    fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let (tx, requests) = mpsc::channel();
        let reply = Arc::new(reply);
        thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let (tx, reply) = (tx.clone(), Arc::clone(&reply));
                thread::spawn(move || serve(stream, reply(n), &tx));
            }
        });
        Self {
            url: format!("http://{addr}/hook"),
            requests,
        }
    }

    fn next(&self, within: Duration) -> Request {
        self.requests
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no webhook request within {within:?}: {e}"))
    }

    /// Every request received so far, without waiting.
    fn received(&self) -> Vec<Request> {
        self.requests.try_iter().collect()
    }

    fn nothing_more(&self, within: Duration) -> bool {
        matches!(
            self.requests.recv_timeout(within),
            Err(RecvTimeoutError::Timeout)
        )
    }
}

fn serve(mut stream: TcpStream, reply: Reply, tx: &mpsc::Sender<Request>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let request = loop {
        let Ok(n) = stream.read(&mut chunk) else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = req.parse(&buf) else {
            continue;
        };
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if buf.len() < head_len + length {
            continue;
        }
        break Request {
            method: req.method.unwrap_or_default().to_owned(),
            path: req.path.unwrap_or_default().to_owned(),
            headers,
            body: buf[head_len..head_len + length].to_vec(),
        };
    };
    let _ = tx.send(request);
    match reply {
        Reply::Status(code) => {
            let answer = format!(
                "HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes());
        }
        Reply::Hang => thread::sleep(Duration::from_secs(60)),
    }
}

fn ok() -> Receiver {
    Receiver::start(|_| Reply::Status(200))
}

fn hook(url: &str, event_types: &[WebhookEvent]) -> WebhookConfig {
    WebhookConfig {
        url: url.to_owned(),
        headers: Vec::new(),
        event_types: event_types.to_vec(),
        filter: WebhookFilter::default(),
    }
}

fn app(hooks: Vec<WebhookConfig>) -> AppHooks {
    AppHooks {
        app_id: "app-id".into(),
        key: KEY.into(),
        secret: SECRET.into(),
        hooks,
    }
}

/// Defaults with retry delays short enough for tests.
fn fast() -> WebhookSettings {
    let mut s = WebhookSettings::new();
    s.first_retry = Duration::from_millis(20);
    s.max_retry_delay = Duration::from_millis(100);
    s.request_timeout = Duration::from_secs(3);
    s
}

fn start(apps: Vec<AppHooks>, settings: WebhookSettings) -> Webhooks {
    Webhooks::start(apps, settings).expect("start the webhook sender")
}

fn occupied(channel: &str) -> Event {
    Event::ChannelOccupied {
        channel: channel.into(),
    }
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("ms fit u64")
}

fn wait_for_stats(hooks: &Webhooks, within: Duration, done: impl Fn(&WebhookStats) -> bool) {
    let deadline = Instant::now() + within;
    while !done(&hooks.stats()) {
        assert!(
            Instant::now() < deadline,
            "stats not reached within {within:?}: {:?}",
            hooks.stats()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn event_arrives_signed_with_pusher_key_and_custom_headers() {
    let receiver = ok();
    let mut h = hook(&receiver.url, &[WebhookEvent::MemberAdded]);
    h.headers = vec![("X-Token".into(), "t0k".into())];
    let hooks = start(vec![app(vec![h])], fast());
    assert!(hooks.wants(0, WebhookEvent::MemberAdded, "presence-room"));
    assert!(!hooks.wants(0, WebhookEvent::MemberRemoved, "presence-room"));

    let before = unix_ms();
    hooks.send(
        0,
        Event::MemberAdded {
            channel: "presence-room".into(),
            user_id: "42".into(),
        },
    );
    let req = receiver.next(Duration::from_secs(5));

    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/hook"));
    assert_eq!(req.header("Content-Type"), Some("application/json"));
    assert_eq!(req.header("X-Pusher-Key"), Some(KEY));
    assert_eq!(
        req.header("X-Pusher-Signature"),
        Some(hmac_hex(SECRET, &req.body).as_str())
    );
    assert_eq!(req.header("X-Token"), Some("t0k"));
    let body = req.json();
    let time_ms = body["time_ms"].as_u64().unwrap_or_default();
    assert!((before..=unix_ms()).contains(&time_ms), "time_ms {time_ms}");
    assert_eq!(
        body["events"],
        json!([{"name": "member_added", "channel": "presence-room", "user_id": "42"}])
    );

    assert_eq!(hooks.flush_and_stop(Duration::from_secs(2)), 0);
    let stats = hooks.stats();
    assert_eq!((stats.requests, stats.delivered, stats.failed), (1, 1, 0));
}

#[test]
fn event_types_and_channel_filters_pick_the_webhooks() {
    use WebhookEvent::{ChannelOccupied, ChannelVacated, ClientEvent};
    let (beta, app_suffix, client, other_app) = (ok(), ok(), ok(), ok());
    let mut starts = hook(&beta.url, &[ChannelOccupied]);
    starts.filter.channel_name_starts_with = Some("beta-".into());
    let mut ends = hook(&app_suffix.url, &[ChannelOccupied]);
    ends.filter.channel_name_ends_with = Some("-app".into());
    let apps = vec![
        app(vec![starts, ends, hook(&client.url, &[ClientEvent])]),
        app(vec![hook(&other_app.url, &[ChannelOccupied])]),
    ];
    let hooks = start(apps, fast());

    assert!(hooks.wants(0, ChannelOccupied, "beta-x"));
    assert!(hooks.wants(0, ChannelOccupied, "x-app"));
    assert!(!hooks.wants(0, ChannelOccupied, "plain"));
    assert!(!hooks.wants(0, ChannelVacated, "beta-x"));
    assert!(!hooks.wants(2, ChannelOccupied, "beta-x"));

    for channel in ["beta-x", "y-app", "beta-z-app", "plain"] {
        hooks.send(0, occupied(channel));
    }
    hooks.send(
        0,
        Event::ChannelVacated {
            channel: "beta-x".into(),
        },
    );
    hooks.send(
        0,
        Event::ClientEvent {
            channel: "private-c".into(),
            event: "client-typing".into(),
            data: r#"{"on":true}"#.into(),
            socket_id: "1.2".into(),
            user_id: None,
        },
    );
    hooks.send(1, occupied("other"));
    assert_eq!(hooks.flush_and_stop(Duration::from_secs(5)), 0);

    let channels = |r: &Receiver| {
        let mut c: Vec<String> = r.received().iter().flat_map(Request::channels).collect();
        c.sort();
        c
    };
    assert_eq!(channels(&beta), ["beta-x", "beta-z-app"]);
    assert_eq!(channels(&app_suffix), ["beta-z-app", "y-app"]);
    assert_eq!(channels(&other_app), ["other"]);
    let client_requests = client.received();
    assert_eq!(client_requests.len(), 1);
    assert_eq!(
        client_requests[0].json()["events"],
        json!([{
            "name": "client_event",
            "channel": "private-c",
            "event": "client-typing",
            "data": "{\"on\":true}",
            "socket_id": "1.2"
        }])
    );
    assert_eq!(hooks.stats().delivered, 6);
}

#[test]
fn batching_sends_events_of_one_window_in_one_request() {
    let receiver = ok();
    let mut settings = fast();
    settings.batching = true;
    settings.batching_window = Duration::from_millis(300);
    let hooks = start(
        vec![app(vec![hook(
            &receiver.url,
            &[WebhookEvent::ChannelOccupied],
        )])],
        settings,
    );
    for i in 0..5 {
        hooks.send(0, occupied(&format!("c{i}")));
    }
    let req = receiver.next(Duration::from_secs(5));
    assert_eq!(req.channels(), ["c0", "c1", "c2", "c3", "c4"]);
    assert_eq!(
        req.header("X-Pusher-Signature"),
        Some(hmac_hex(SECRET, &req.body).as_str())
    );
    assert!(receiver.nothing_more(Duration::from_millis(400)));
    assert_eq!(hooks.flush_and_stop(Duration::from_secs(2)), 0);
    let stats = hooks.stats();
    assert_eq!((stats.requests, stats.delivered), (1, 5));
}

#[test]
fn receiver_answering_500_twice_gets_the_event_on_the_third_attempt() {
    let receiver = Receiver::start(|n| Reply::Status(if n < 2 { 500 } else { 200 }));
    let hooks = start(
        vec![app(vec![hook(&receiver.url, &[WebhookEvent::CacheMiss])])],
        fast(),
    );
    hooks.send(
        0,
        Event::CacheMiss {
            channel: "cache-prices".into(),
        },
    );
    let attempts: Vec<Request> = (0..3)
        .map(|_| receiver.next(Duration::from_secs(5)))
        .collect();
    // Every attempt carries the same body and signature.
    assert!(attempts.iter().all(|r| r.body == attempts[0].body));
    assert_eq!(
        attempts[2].header("X-Pusher-Signature"),
        Some(hmac_hex(SECRET, &attempts[2].body).as_str())
    );
    assert_eq!(attempts[2].channels(), ["cache-prices"]);
    assert_eq!(hooks.flush_and_stop(Duration::from_secs(2)), 0);
    let stats = hooks.stats();
    assert_eq!(
        (stats.requests, stats.retries, stats.delivered, stats.failed),
        (3, 2, 1, 0)
    );
    assert!(receiver.nothing_more(Duration::from_millis(100)));
}

#[test]
fn hanging_receiver_does_not_hold_up_other_webhooks() {
    let (hanging, healthy) = (Receiver::start(|_| Reply::Hang), ok());
    let mut settings = fast();
    settings.request_timeout = Duration::from_secs(30);
    settings.max_in_flight = 4;
    settings.max_in_flight_per_hook = 2;
    let apps = vec![app(vec![
        hook(&hanging.url, &[WebhookEvent::ChannelOccupied]),
        hook(&healthy.url, &[WebhookEvent::ChannelOccupied]),
    ])];
    let hooks = start(apps, settings);
    let started = Instant::now();
    for i in 0..6 {
        hooks.send(0, occupied(&format!("c{i}")));
    }
    let mut delivered: Vec<String> = (0..6)
        .flat_map(|_| healthy.next(Duration::from_secs(5)).channels())
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["c0", "c1", "c2", "c3", "c4", "c5"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The hanging receiver got only its two slots' worth.
    hanging.next(Duration::from_secs(1));
    hanging.next(Duration::from_secs(1));
    assert!(hanging.nothing_more(Duration::from_millis(200)));

    let stop = Instant::now();
    assert_eq!(hooks.flush_and_stop(Duration::from_millis(300)), 6);
    assert!(stop.elapsed() < Duration::from_secs(2));
    assert_eq!(hooks.stats().delivered, 6);
}

#[test]
fn dead_port_counts_the_event_failed_after_max_attempts() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut settings = fast();
    settings.max_attempts = 3;
    let url = format!("http://127.0.0.1:{port}/hook");
    let hooks = start(
        vec![app(vec![hook(&url, &[WebhookEvent::ChannelVacated])])],
        settings,
    );
    hooks.send(
        0,
        Event::ChannelVacated {
            channel: "gone".into(),
        },
    );
    wait_for_stats(&hooks, Duration::from_secs(5), |s| s.failed == 1);
    let stats = hooks.stats();
    assert_eq!(
        (stats.requests, stats.retries, stats.delivered, stats.queued),
        (3, 2, 0, 0)
    );
    assert_eq!(hooks.flush_and_stop(Duration::from_secs(1)), 0);
}

#[test]
fn flush_and_stop_delivers_batched_events_without_waiting_for_the_window() {
    let receiver = ok();
    let mut settings = fast();
    settings.batching = true;
    settings.batching_window = Duration::from_secs(60);
    let hooks = start(
        vec![app(vec![hook(
            &receiver.url,
            &[WebhookEvent::ChannelOccupied],
        )])],
        settings,
    );
    for channel in ["a", "b", "c"] {
        hooks.send(0, occupied(channel));
    }
    let stop = Instant::now();
    assert_eq!(hooks.flush_and_stop(Duration::from_secs(5)), 0);
    assert!(stop.elapsed() < Duration::from_secs(2));
    let requests = receiver.received();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].channels(), ["a", "b", "c"]);

    // Stopped: later events are dropped and counted, and stopping again is a no-op.
    hooks.send(0, occupied("late"));
    assert_eq!(hooks.flush_and_stop(Duration::from_secs(1)), 0);
    let stats = hooks.stats();
    assert_eq!((stats.delivered, stats.dropped), (3, 1));
}

#[test]
fn full_queue_drops_and_counts_new_events() {
    let receiver = ok();
    let mut settings = fast();
    settings.batching = true;
    settings.batching_window = Duration::from_secs(60);
    settings.max_queue = 2;
    let hooks = start(
        vec![app(vec![hook(
            &receiver.url,
            &[WebhookEvent::ChannelOccupied],
        )])],
        settings,
    );
    for i in 0..5 {
        hooks.send(0, occupied(&format!("c{i}")));
    }
    let stats = hooks.stats();
    assert_eq!((stats.queued, stats.dropped), (2, 3));
    assert_eq!(hooks.flush_and_stop(Duration::from_secs(5)), 0);
    assert_eq!(receiver.received()[0].channels(), ["c0", "c1"]);
}

#[test]
fn https_webhook_is_counted_as_an_unsupported_failure() {
    let receiver = ok();
    let apps = vec![app(vec![
        hook("https://127.0.0.1:1/hook", &[WebhookEvent::ChannelOccupied]),
        hook(&receiver.url, &[WebhookEvent::ChannelOccupied]),
    ])];
    let hooks = start(apps, fast());
    assert!(hooks.wants(0, WebhookEvent::ChannelOccupied, "x"));
    hooks.send(0, occupied("x"));
    hooks.send(0, occupied("y"));
    assert_eq!(hooks.flush_and_stop(Duration::from_secs(5)), 0);
    let stats = hooks.stats();
    assert_eq!(
        (
            stats.failed,
            stats.unsupported,
            stats.delivered,
            stats.requests
        ),
        (2, 2, 2, 2)
    );
}

#[test]
fn disabled_handle_wants_nothing_and_sends_nothing() {
    for hooks in [Webhooks::disabled(), start(vec![app(Vec::new())], fast())] {
        assert!(!hooks.wants(0, WebhookEvent::ChannelOccupied, "x"));
        hooks.send(0, occupied("x"));
        assert_eq!(hooks.stats(), WebhookStats::default());
        assert_eq!(hooks.flush_and_stop(Duration::from_secs(1)), 0);
    }
}

fn app_as(key: &str, secret: &str, hooks: Vec<WebhookConfig>) -> AppHooks {
    AppHooks {
        app_id: format!("{key}-id"),
        key: key.into(),
        secret: secret.into(),
        hooks,
    }
}

fn start_dynamic(settings: WebhookSettings) -> Webhooks {
    Webhooks::start_dynamic(settings).expect("start the webhook sender")
}

/// Asserts the request carries `key` and a signature of its body with `secret`.
fn assert_signed(req: &Request, key: &str, secret: &str) {
    assert_eq!(req.header("X-Pusher-Key"), Some(key));
    assert_eq!(
        req.header("X-Pusher-Signature"),
        Some(hmac_hex(secret, &req.body).as_str())
    );
}

#[test]
fn start_dynamic_then_set_app_delivers_signed_with_the_apps_key_and_secret() {
    let receiver = ok();
    let hooks = start_dynamic(fast());
    assert!(!hooks.wants(0, WebhookEvent::MemberAdded, "presence-room"));
    hooks.send(0, occupied("before-the-app"));
    assert_eq!(hooks.stats(), WebhookStats::default());

    hooks.set_app(
        0,
        app_as(
            "k1",
            "s1",
            vec![hook(&receiver.url, &[WebhookEvent::MemberAdded])],
        ),
    );
    assert!(hooks.wants(0, WebhookEvent::MemberAdded, "presence-room"));
    assert!(!hooks.wants(0, WebhookEvent::MemberRemoved, "presence-room"));
    assert!(!hooks.wants(1, WebhookEvent::MemberAdded, "presence-room"));
    hooks.send(
        0,
        Event::MemberAdded {
            channel: "presence-room".into(),
            user_id: "42".into(),
        },
    );
    let req = receiver.next(Duration::from_secs(5));
    assert_signed(&req, "k1", "s1");
    assert_eq!(
        req.json()["events"],
        json!([{"name": "member_added", "channel": "presence-room", "user_id": "42"}])
    );

    assert_eq!(hooks.flush_and_stop(Duration::from_secs(2)), 0);
    let stats = hooks.stats();
    assert_eq!(
        (stats.requests, stats.delivered, stats.failed, stats.queued),
        (1, 1, 0, 0)
    );
    assert!(receiver.nothing_more(Duration::from_millis(100)));
}

#[test]
fn set_app_on_a_disabled_handle_does_nothing() {
    let receiver = ok();
    for hooks in [Webhooks::disabled(), start(vec![app(Vec::new())], fast())] {
        hooks.set_app(
            0,
            app(vec![hook(&receiver.url, &[WebhookEvent::ChannelOccupied])]),
        );
        assert!(!hooks.wants(0, WebhookEvent::ChannelOccupied, "x"));
        hooks.send(0, occupied("x"));
        assert_eq!(hooks.stats(), WebhookStats::default());
        assert_eq!(hooks.flush_and_stop(Duration::from_secs(1)), 0);
    }
    assert!(receiver.nothing_more(Duration::from_millis(100)));
}

#[test]
fn set_app_again_sends_later_events_to_the_new_webhooks_with_the_new_secret() {
    use WebhookEvent::{ChannelOccupied, ChannelVacated, MemberAdded};
    let (r1, r2) = (ok(), ok());
    let mut settings = fast();
    settings.batching = true;
    settings.batching_window = Duration::from_millis(200);
    let hooks = start_dynamic(settings);
    hooks.set_app(
        0,
        app_as("k1", "s1", vec![hook(&r1.url, &[ChannelOccupied])]),
    );
    // Waits in r1's batch while the app changes.
    hooks.send(0, occupied("before"));

    hooks.set_app(
        0,
        app_as(
            "k2",
            "s2",
            vec![hook(&r2.url, &[ChannelVacated, MemberAdded])],
        ),
    );
    assert!(!hooks.wants(0, ChannelOccupied, "after"));
    assert!(hooks.wants(0, ChannelVacated, "after"));
    assert!(hooks.wants(0, MemberAdded, "presence-after"));
    hooks.send(0, occupied("after"));
    hooks.send(
        0,
        Event::ChannelVacated {
            channel: "after".into(),
        },
    );
    hooks.send(
        0,
        Event::MemberAdded {
            channel: "presence-after".into(),
            user_id: "7".into(),
        },
    );

    // The event queued before the change goes where it was queued, as it was queued.
    let old = r1.next(Duration::from_secs(5));
    assert_signed(&old, "k1", "s1");
    assert_eq!(old.channels(), ["before"]);

    let mut names = Vec::new();
    while names.len() < 2 {
        let req = r2.next(Duration::from_secs(5));
        assert_signed(&req, "k2", "s2");
        names.extend(req.events().iter().map(|e| {
            format!(
                "{} {}",
                e["name"].as_str().unwrap_or_default(),
                e["channel"]
            )
        }));
    }
    assert_eq!(
        names,
        [
            "channel_vacated \"after\"",
            "member_added \"presence-after\""
        ]
    );
    assert!(r1.nothing_more(Duration::from_millis(400)));
    assert!(r2.nothing_more(Duration::from_millis(100)));

    assert_eq!(hooks.flush_and_stop(Duration::from_secs(2)), 0);
    let stats = hooks.stats();
    assert_eq!(
        (stats.delivered, stats.failed, stats.dropped, stats.queued),
        (3, 0, 0, 0)
    );
}

#[test]
fn adding_an_app_leaves_another_apps_batch_in_its_window() {
    use WebhookEvent::ChannelOccupied;
    let (r0, r1) = (ok(), ok());
    let mut settings = fast();
    settings.batching = true;
    settings.batching_window = Duration::from_millis(300);
    let hooks = start_dynamic(settings);
    hooks.set_app(
        0,
        app_as("k0", "s0", vec![hook(&r0.url, &[ChannelOccupied])]),
    );
    let opened = Instant::now();
    hooks.send(0, occupied("a0"));
    hooks.send(0, occupied("a1"));

    hooks.set_app(
        1,
        app_as("k1", "s1", vec![hook(&r1.url, &[ChannelOccupied])]),
    );
    assert!(hooks.wants(0, ChannelOccupied, "x"));
    assert!(hooks.wants(1, ChannelOccupied, "x"));
    hooks.send(0, occupied("a2"));
    hooks.send(1, occupied("b0"));

    // App 0's batch was neither sent early nor split.
    let first = r0.next(Duration::from_secs(5));
    assert!(opened.elapsed() >= Duration::from_millis(300));
    assert_signed(&first, "k0", "s0");
    assert_eq!(first.channels(), ["a0", "a1", "a2"]);
    let second = r1.next(Duration::from_secs(5));
    assert_signed(&second, "k1", "s1");
    assert_eq!(second.channels(), ["b0"]);
    assert!(r0.nothing_more(Duration::from_millis(100)));
    assert!(r1.nothing_more(Duration::from_millis(100)));

    assert_eq!(hooks.flush_and_stop(Duration::from_secs(2)), 0);
    let stats = hooks.stats();
    assert_eq!(
        (stats.requests, stats.delivered, stats.failed, stats.queued),
        (2, 4, 0, 0)
    );
}

#[test]
fn stats_stay_exact_across_set_app() {
    use WebhookEvent::ChannelOccupied;
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        format!("http://127.0.0.1:{port}/hook")
    };
    let (r1, r2) = (ok(), ok());
    let mut settings = fast();
    settings.batching = true;
    settings.batching_window = Duration::from_secs(60);
    settings.max_attempts = 2;
    let hooks = start_dynamic(settings);
    hooks.set_app(
        0,
        app(vec![
            hook(&r1.url, &[ChannelOccupied]),
            hook(&dead, &[ChannelOccupied]),
        ]),
    );
    for channel in ["a", "b", "c"] {
        hooks.send(0, occupied(channel));
    }
    assert_eq!(hooks.stats().queued, 6);
    hooks.set_app(0, app(vec![hook(&r2.url, &[ChannelOccupied])]));
    // The same definition again changes nothing.
    hooks.set_app(0, app(vec![hook(&r2.url, &[ChannelOccupied])]));
    hooks.send(0, occupied("d"));
    hooks.send(0, occupied("e"));
    assert_eq!(hooks.stats().queued, 8);

    assert_eq!(hooks.flush_and_stop(Duration::from_secs(5)), 0);
    let stats = hooks.stats();
    assert_eq!(
        (
            stats.delivered,
            stats.failed,
            stats.dropped,
            stats.queued,
            stats.requests
        ),
        (5, 3, 0, 0, 4)
    );
    let channels =
        |r: &Receiver| -> Vec<String> { r.received().iter().flat_map(Request::channels).collect() };
    assert_eq!(channels(&r1), ["a", "b", "c"]);
    assert_eq!(channels(&r2), ["d", "e"]);
}

#[test]
fn stats_stay_exact_while_set_app_races_with_sends() {
    use WebhookEvent::ChannelOccupied;
    const EVENTS: usize = 2000;
    let (r1, r2) = (ok(), ok());
    let mut settings = fast();
    settings.batching = true;
    settings.batching_window = Duration::from_millis(20);
    let hooks = start_dynamic(settings);
    let one = || app(vec![hook(&r1.url, &[ChannelOccupied])]);
    let two = || {
        app(vec![
            hook(&r1.url, &[ChannelOccupied]),
            hook(&r2.url, &[ChannelOccupied]),
        ])
    };
    hooks.set_app(0, one());
    let shard = {
        let hooks = hooks.clone();
        thread::spawn(move || {
            for i in 0..EVENTS {
                hooks.send(0, occupied(&format!("c{i}")));
                if i % 50 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    // Each change moves the app to fresh webhooks with one or two copies per event.
    for round in 0..50 {
        hooks.set_app(0, if round % 2 == 0 { two() } else { one() });
        thread::sleep(Duration::from_millis(1));
    }
    shard.join().expect("the sending thread");

    assert_eq!(hooks.flush_and_stop(Duration::from_secs(10)), 0);
    let stats = hooks.stats();
    let requests: Vec<Request> = r1.received().into_iter().chain(r2.received()).collect();
    for req in &requests {
        assert_signed(req, KEY, SECRET);
    }
    let received: usize = requests.iter().map(|r| r.events().len()).sum();
    assert_eq!((stats.failed, stats.dropped, stats.queued), (0, 0, 0));
    assert_eq!(stats.delivered, received as u64);
    assert!((EVENTS..=2 * EVENTS).contains(&received), "{received}");
    assert_eq!(stats.requests, requests.len() as u64);
}
