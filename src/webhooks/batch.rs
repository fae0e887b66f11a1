//! Batching, sans-IO: which events go out together, and the signed body they go out in.
//!
//! Each webhook (one URL of one app) has at most one open batch. Without batching (Soketi's
//! default) every event is a batch of its own, sent at once. With batching, the first event
//! opens a batch that collects for the window, then goes out whole, as Soketi's
//! `webhooks.batching` does; a batch that reaches [`MAX_BATCH_EVENTS`] goes out early so one
//! body stays a reasonable size. Time comes in as `now`; nothing here sleeps.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::sign_hex;

/// Most events in one body; a fuller batch is sent before its window ends.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// Events bound for one webhook in one request, each already encoded as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Index of the webhook in the sender's flat list.
    pub hook: usize,
    /// The `events` array elements, oldest first.
    pub events: Vec<Bytes>,
}

/// The open batches of every webhook.
#[derive(Debug)]
pub struct Batcher {
    /// How long a batch collects; `None` sends every event alone, at once.
    window: Option<Duration>,
    /// One slot per webhook.
    open: Vec<Open>,
    /// Events in all open batches, for the queue bound and shutdown accounting.
    pending: usize,
}

#[derive(Debug, Default)]
struct Open {
    /// When the batch goes out; meaningful only while `events` is non-empty.
    deadline: Option<Instant>,
    events: Vec<Bytes>,
}

impl Batcher {
    /// A batcher for `hooks` webhooks; `window: None` turns batching off.
    #[must_use]
    pub fn new(hooks: usize, window: Option<Duration>) -> Self {
        Self {
            window,
            open: (0..hooks).map(|_| Open::default()).collect(),
            pending: 0,
        }
    }

    /// Makes room for webhooks up to index `hooks - 1` (webhooks added at run time); the
    /// open batches stay as they are. Never shrinks.
    pub fn grow(&mut self, hooks: usize) {
        if hooks > self.open.len() {
            self.open.resize_with(hooks, Open::default);
        }
    }

    /// Adds `event` for webhook `hook`. Returns a batch to send now: the event alone when
    /// batching is off, or the open batch once it holds [`MAX_BATCH_EVENTS`].
    pub fn push(&mut self, hook: usize, event: Bytes, now: Instant) -> Option<Batch> {
        let Some(window) = self.window else {
            return Some(Batch {
                hook,
                events: vec![event],
            });
        };
        let open = self.open.get_mut(hook)?;
        if open.events.is_empty() {
            open.deadline = Some(now + window);
        }
        open.events.push(event);
        self.pending += 1;
        if open.events.len() >= MAX_BATCH_EVENTS {
            return self.take(hook);
        }
        None
    }

    /// Removes every batch whose window has ended by `now` and hands it to `f`.
    pub fn poll_due(&mut self, now: Instant, mut f: impl FnMut(Batch)) {
        for hook in 0..self.open.len() {
            if self.open[hook].deadline.is_some_and(|d| d <= now)
                && let Some(batch) = self.take(hook)
            {
                f(batch);
            }
        }
    }

    /// Removes every open batch, due or not (shutdown), and hands it to `f`.
    pub fn flush(&mut self, mut f: impl FnMut(Batch)) {
        for hook in 0..self.open.len() {
            if let Some(batch) = self.take(hook) {
                f(batch);
            }
        }
    }

    /// When the next open batch is due, if any is open.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.iter().filter_map(|o| o.deadline).min()
    }

    /// Events waiting in open batches.
    #[must_use]
    pub fn pending_events(&self) -> usize {
        self.pending
    }

    fn take(&mut self, hook: usize) -> Option<Batch> {
        let open = self.open.get_mut(hook)?;
        open.deadline = None;
        if open.events.is_empty() {
            return None;
        }
        let events = std::mem::take(&mut open.events);
        self.pending -= events.len();
        Some(Batch { hook, events })
    }
}

/// The webhook body Pusher sends: `{"time_ms":<unix ms>,"events":[...]}`, with `events` the
/// already-encoded event objects in order.
#[must_use]
pub fn encode_body(time_ms: u64, events: &[Bytes]) -> Vec<u8> {
    let len: usize = events.iter().map(|e| e.len() + 1).sum();
    let mut body = Vec::with_capacity(len + 40);
    body.extend_from_slice(b"{\"time_ms\":");
    body.extend_from_slice(time_ms.to_string().as_bytes());
    body.extend_from_slice(b",\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.extend_from_slice(b"]}");
    body
}

/// `X-Pusher-Signature`: hex HMAC-SHA256 of the exact body bytes with the app secret.
#[must_use]
pub fn signature(secret: &str, body: &[u8]) -> String {
    sign_hex(secret, body)
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, KeyInit, Mac};
    use serde_json::{Value, json};
    use sha2::Sha256;

    use super::*;
    use crate::webhooks::Event;

    fn ev(n: u32) -> Bytes {
        Event::ChannelOccupied {
            channel: format!("c{n}"),
        }
        .encode()
    }

    fn due(b: &mut Batcher, now: Instant) -> Vec<Batch> {
        let mut out = Vec::new();
        b.poll_due(now, |batch| out.push(batch));
        out
    }

    #[test]
    fn without_batching_every_event_goes_alone_at_once() {
        let mut b = Batcher::new(2, None);
        let now = Instant::now();
        assert_eq!(
            b.push(1, ev(1), now),
            Some(Batch {
                hook: 1,
                events: vec![ev(1)]
            })
        );
        assert_eq!(b.pending_events(), 0);
        assert_eq!(b.next_deadline(), None);
        assert!(due(&mut b, now + Duration::from_secs(9)).is_empty());
    }

    #[test]
    fn batching_collects_per_webhook_for_the_window_from_the_first_event() {
        let window = Duration::from_millis(50);
        let mut b = Batcher::new(2, Some(window));
        let t0 = Instant::now();
        assert_eq!(b.push(0, ev(1), t0), None);
        assert_eq!(b.push(1, ev(2), t0 + Duration::from_millis(10)), None);
        assert_eq!(b.push(0, ev(3), t0 + Duration::from_millis(40)), None);
        assert_eq!(b.pending_events(), 3);
        assert_eq!(b.next_deadline(), Some(t0 + window));

        assert!(due(&mut b, t0 + Duration::from_millis(49)).is_empty());
        let first = due(&mut b, t0 + window);
        assert_eq!(
            first,
            vec![Batch {
                hook: 0,
                events: vec![ev(1), ev(3)]
            }]
        );
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(60)));
        let second = due(&mut b, t0 + Duration::from_millis(60));
        assert_eq!(second[0].events, vec![ev(2)]);
        assert_eq!(b.pending_events(), 0);
        assert_eq!(b.next_deadline(), None);

        // The next event opens a fresh window.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.push(0, ev(4), t1), None);
        assert_eq!(b.next_deadline(), Some(t1 + window));
    }

    #[test]
    fn a_full_batch_goes_out_before_its_window_ends() {
        let mut b = Batcher::new(1, Some(Duration::from_secs(60)));
        let now = Instant::now();
        for i in 0..MAX_BATCH_EVENTS - 1 {
            assert_eq!(b.push(0, ev(u32::try_from(i).unwrap_or(0)), now), None);
        }
        let full = b.push(0, ev(0), now).map(|b| b.events.len());
        assert_eq!(full, Some(MAX_BATCH_EVENTS));
        assert_eq!(b.pending_events(), 0);
    }

    #[test]
    fn flush_sends_open_batches_before_their_window() {
        let mut b = Batcher::new(3, Some(Duration::from_secs(60)));
        let now = Instant::now();
        b.push(0, ev(1), now);
        b.push(2, ev(2), now);
        let mut out = Vec::new();
        b.flush(|batch| out.push(batch.hook));
        assert_eq!(out, vec![0, 2]);
        assert_eq!(b.pending_events(), 0);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn grow_adds_empty_slots_and_keeps_the_open_batches() {
        let window = Duration::from_millis(50);
        let mut b = Batcher::new(1, Some(window));
        let t0 = Instant::now();
        assert_eq!(b.push(0, ev(1), t0), None);
        // Unknown webhooks are ignored until the batcher grows.
        assert_eq!(b.push(2, ev(2), t0), None);
        assert_eq!(b.pending_events(), 1);

        b.grow(3);
        b.grow(2);
        assert_eq!(b.pending_events(), 1);
        assert_eq!(b.next_deadline(), Some(t0 + window));
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(b.push(2, ev(3), t1), None);
        assert_eq!(b.push(1, ev(4), t1), None);
        assert_eq!(
            due(&mut b, t0 + window),
            vec![Batch {
                hook: 0,
                events: vec![ev(1)]
            }]
        );
        let mut rest = Vec::new();
        b.flush(|batch| rest.push(batch));
        assert_eq!(
            rest,
            vec![
                Batch {
                    hook: 1,
                    events: vec![ev(4)]
                },
                Batch {
                    hook: 2,
                    events: vec![ev(3)]
                }
            ]
        );
        assert_eq!(b.pending_events(), 0);
    }

    #[test]
    fn body_is_pusher_format_and_signature_is_hmac_sha256_of_the_exact_bytes() {
        let events = [
            Event::MemberAdded {
                channel: "presence-room".into(),
                user_id: "42".into(),
            }
            .encode(),
            Event::ClientEvent {
                channel: "private-x".into(),
                event: "client-y".into(),
                data: r#"{"a":"é\n"}"#.into(),
                socket_id: "1.2".into(),
                user_id: None,
            }
            .encode(),
        ];
        let body = encode_body(1_327_078_148_132, &events);
        let parsed: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(
            parsed,
            json!({
                "time_ms": 1_327_078_148_132_u64,
                "events": [
                    {"name": "member_added", "channel": "presence-room", "user_id": "42"},
                    {"name": "client_event", "channel": "private-x", "event": "client-y",
                     "data": "{\"a\":\"é\\n\"}", "socket_id": "1.2"}
                ]
            })
        );
        assert_eq!(
            encode_body(5, &[]),
            br#"{"time_ms":5,"events":[]}"#.to_vec()
        );

        let mut mac = Hmac::<Sha256>::new_from_slice(b"app-secret").unwrap_or_else(|_| {
            unreachable!("HMAC accepts keys of any length");
        });
        mac.update(&body);
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(signature("app-secret", &body), expected);
        assert_ne!(signature("other-secret", &body), expected);
    }
}
