//! Live subscription counts (`pusher_internal:subscription_count`) for apps that enable
//! them (`enableSubscriptionCount`).
//!
//! A channel's count lives on its home shard, like its occupancy: every shard reports its
//! subscribes and unsubscribes there, and the home shard tells the channel's subscribers
//! on every shard. With the redis adapter the home shard also hands the node's count to
//! the bridge, which tells the other nodes; their counts come back as one `remote` sum.
//!
//! Changes are coalesced: the home shard sends at most one count per channel every
//! [`COUNT_INTERVAL_MS`], the latest, so a burst of 1,000 subscriptions costs a handful of
//! frames per subscriber instead of 1,000. Apps that do not enable the feature never
//! reach this code: the check is on subscribe and unsubscribe, not on delivery.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};

use super::Shard;
use crate::app::AppIdx;
use crate::config::WebhookEvent;
use crate::fanout::Envelope;
use crate::protocol::{ChannelKind, Data, EventFrame, event_frame};
use crate::webhooks::Event;

/// Shortest time between two counts of one channel (and two flushes of a shard), in ms.
pub const COUNT_INTERVAL_MS: u64 = 250;

/// A home shard's view of one channel's count.
#[derive(Debug, Default)]
struct Count {
    /// Subscriptions on this node's shards.
    local: i64,
    /// Subscriptions on the other nodes, as the bridge last said.
    remote: u64,
    /// The count last sent to subscribers.
    sent: Option<u64>,
    /// The local count last handed to the bridge and the webhook (a node starts at 0).
    told: i64,
    /// A subscription came since the last flush: its socket is told the count even if
    /// the count is what it was (another socket left meanwhile).
    joined: bool,
}

/// The counts of the channels a shard is home to, and which changed since the last flush.
#[derive(Default)]
pub(super) struct Counts {
    channels: RefCell<AHashMap<(AppIdx, Arc<str>), Count>>,
    dirty: RefCell<AHashSet<(AppIdx, Arc<str>)>>,
    /// The flush task, parked while nothing changed.
    waker: RefCell<Option<Waker>>,
    last_flush: Cell<Option<Instant>>,
}

/// Whether `channel` of an app that enables counts gets them: every kind but presence
/// (whose members are the count) and the internal user channels.
fn counted(channel: &str) -> bool {
    !channel.starts_with('#') && ChannelKind::of(channel) != ChannelKind::Presence
}

impl Shard {
    /// A local subscription to `channel` came (`+1`) or went (`-1`): tell its home shard
    /// when the app enables subscription counts.
    pub(super) fn count_change(&self, app: AppIdx, channel: &str, delta: i32) {
        if !counted(channel) || !self.apps.get(app).enable_subscription_count {
            return;
        }
        let home = self.home_of(app, channel);
        if home == self.id {
            self.home_count(app, channel, i64::from(delta), None);
        } else {
            let envelope = Envelope::CountDelta {
                app,
                channel: Arc::from(channel),
                delta,
            };
            self.send_envelope(home, envelope);
        }
    }

    /// This shard's subscription confirmations of `channel` went out only now (they
    /// waited for Redis): counts sent meanwhile came before them, so ask for the count
    /// again.
    pub(super) fn recount(&self, app: AppIdx, channel: &str) {
        self.count_change(app, channel, 0);
    }

    /// Home side: a shard's count changed by `delta`, or the bridge set the other nodes'
    /// sum to `remote`. The flush task sends the new count within [`COUNT_INTERVAL_MS`].
    pub(super) fn home_count(&self, app: AppIdx, channel: &str, delta: i64, remote: Option<u64>) {
        let key = (app, Arc::from(channel));
        {
            let mut channels = self.counts.channels.borrow_mut();
            let count = channels.entry(key.clone()).or_default();
            count.local += delta;
            // 0 from a shard: its held subscribers were just confirmed; tell them again.
            count.joined |= delta > 0 || (delta == 0 && remote.is_none());
            if let Some(remote) = remote {
                count.remote = remote;
            }
        }
        self.counts.dirty.borrow_mut().insert(key);
        if let Some(waker) = self.counts.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Sends the counts that changed: to subscribers on every shard, to the bridge (the
    /// node's own count), and to the `subscription_count` webhook.
    fn flush_counts(&self) {
        let dirty = std::mem::take(&mut *self.counts.dirty.borrow_mut());
        for key in dirty {
            let (app, channel) = (key.0, Arc::clone(&key.1));
            let (frame_count, local_change) = {
                let mut channels = self.counts.channels.borrow_mut();
                let Some(count) = channels.get_mut(&key) else {
                    continue;
                };
                let local = count.local.max(0);
                let total = local as u64 + count.remote;
                let local_change = (count.told != local).then(|| {
                    count.told = local;
                    total
                });
                let news = count.sent != Some(total) || count.joined;
                let frame_count = (news && local > 0).then(|| {
                    count.sent = Some(total);
                    total
                });
                count.joined = false;
                if local == 0 && count.remote == 0 {
                    channels.remove(&key);
                }
                (frame_count, local_change.map(|total| (local as u64, total)))
            };
            if let Some((local, total)) = local_change {
                if let Some(bridge) = self.bridge {
                    let envelope = Envelope::NodeCount {
                        app,
                        channel: Arc::clone(&channel),
                        count: local,
                    };
                    self.send_envelope(bridge, envelope);
                }
                // The node whose subscriptions changed tells the webhook, so each change
                // is told once however many nodes there are.
                let a = app.0 as usize;
                if self
                    .webhooks
                    .wants(a, WebhookEvent::SubscriptionCount, &channel)
                {
                    let event = Event::SubscriptionCount {
                        channel: channel.to_string(),
                        subscription_count: total,
                    };
                    self.webhooks.send(a, event);
                }
            }
            if let Some(total) = frame_count {
                self.tell_count(app, &channel, total);
            }
        }
    }

    /// Queues `pusher_internal:subscription_count` on the channel's subscribers on every
    /// shard of this node (other nodes are told by their own home shard).
    fn tell_count(&self, app: AppIdx, channel: &Arc<str>, total: u64) {
        let data = format!("{{\"subscription_count\":{total}}}");
        let frame = event_frame(&EventFrame {
            event: "pusher_internal:subscription_count",
            channel: Some(channel),
            data: Data::Str(&data),
            user_id: None,
        });
        self.deliver_local(app, channel, &frame, None);
        let at = Instant::now();
        for shard in (0..self.shards).filter(|&s| s != self.id) {
            let envelope = Envelope::Publish {
                app,
                channel: Arc::clone(channel),
                frame: frame.clone(),
                except: None,
                cache: false,
                at,
            };
            self.send_envelope(shard, envelope);
        }
    }
}

/// The shard's flush task: parked until a count changes, then flushes at most once every
/// [`COUNT_INTERVAL_MS`].
pub(super) async fn count_loop(shard: std::rc::Rc<Shard>) {
    let interval = Duration::from_millis(COUNT_INTERVAL_MS);
    loop {
        std::future::poll_fn(|cx| {
            if shard.counts.dirty.borrow().is_empty() {
                *shard.counts.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        if let Some(last) = shard.counts.last_flush.get() {
            let due = last + interval;
            if due > Instant::now() {
                monoio::time::sleep_until(due.into()).await;
            }
        }
        if shard.shutting_down() {
            return;
        }
        shard.counts.last_flush.set(Some(Instant::now()));
        shard.flush_counts();
        shard.flush_dirty();
    }
}
