//! What a shard does with envelopes from other shards, and the home-shard side of
//! presence: the roster of each channel lives on one shard, which decides
//! `member_added` / `member_removed` so they fire once per user, in order.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Shard;
use crate::app::AppIdx;
use crate::config::WebhookEvent;
use crate::fanout::{Envelope, SocketRef};
use crate::protocol::{
    member_added_frame, member_removed_frame, subscription_error_frame, subscription_succeeded,
};
use crate::registry::presence::Joined;
use crate::webhooks::Event;

impl Shard {
    /// Acts on one envelope from another shard.
    pub(super) fn handle_envelope(&self, envelope: Envelope) {
        match envelope {
            Envelope::Publish {
                app,
                channel,
                frame,
                except,
                cache,
                at,
            } => {
                self.deliver_local(app, &channel, &frame, except);
                self.metrics
                    .observe_latency(at.elapsed().as_micros() as u64);
                if cache {
                    self.remember(app, &channel, &frame);
                }
            }
            Envelope::PresenceJoin {
                app,
                channel,
                user_id,
                user_info,
                from,
                socket,
            } => {
                if let Some(outcome) =
                    self.home_join(app, &channel, &user_id, &user_info, socket, from)
                {
                    let reply = Envelope::PresenceJoined {
                        app,
                        channel,
                        user_id,
                        socket,
                        outcome,
                    };
                    self.send_envelope(from, reply);
                    self.announce_pending();
                }
            }
            Envelope::PresenceJoined {
                app,
                channel,
                user_id,
                socket,
                outcome,
            } => {
                self.presence_joined(app, &channel, &user_id, socket, outcome);
            }
            Envelope::PresenceLeave {
                app,
                channel,
                user_id,
            } => {
                self.home_leave(app, &channel, &user_id);
            }
            Envelope::Query {
                from,
                id,
                app,
                query,
            } => {
                let reply = self.answer(app, &query);
                self.send_envelope(from, Envelope::Reply { id, reply });
            }
            Envelope::Reply { id, reply } => self.on_reply(id, reply),
            Envelope::Leased { id, verdict } => self.on_leased(id, verdict),
            Envelope::Occupancy {
                app,
                channel,
                delta,
            } => self.home_occupancy(app, &channel, delta),
            Envelope::TerminateUser { app, user_id } => self.terminate_local(app, &user_id),
            Envelope::RosterUndo {
                app,
                channel,
                user_id,
            } => {
                let mut rosters = self.rosters.borrow_mut();
                rosters.entry(app, &channel).leave(&user_id);
                rosters.prune(app, &channel);
            }
            Envelope::RosterDump => self.dump_rosters(),
            Envelope::InterestReady { app, channel, last } => {
                self.interest_ready(app, &channel, last);
            }
            Envelope::CountDelta {
                app,
                channel,
                delta,
            } => self.home_count(app, &channel, i64::from(delta), None),
            Envelope::RemoteCount {
                app,
                channel,
                remote,
            } => self.home_count(app, &channel, 0, Some(remote)),
            Envelope::UserSockets {
                app,
                user_id,
                delta,
            } => self.home_user(app, &user_id, delta),
            Envelope::UserOnline {
                app,
                user_id,
                online,
            } => self.user_online(app, &user_id, online),
            Envelope::WatchState { socket, frame } => self.watch_state(socket, frame),
            // Only the redis bridge receives these.
            Envelope::NodeCount { .. }
            | Envelope::NodeUser { .. }
            | Envelope::WatchQuery { .. }
            | Envelope::Interest { .. }
            | Envelope::Lease { .. }
            | Envelope::ClusterJoin { .. }
            | Envelope::ClusterLeave { .. }
            | Envelope::SubscriptionDelta { .. }
            | Envelope::RosterEntries { .. } => {}
        }
    }

    /// Home side of a join: updates the roster and returns the frame for the joining
    /// socket. A new member's `member_added` is queued to go out after the reply, so the
    /// joining shard registers its socket before the announcement reaches it.
    pub(super) fn home_join(
        &self,
        app: AppIdx,
        channel: &str,
        user_id: &str,
        user_info: &str,
        socket: SocketRef,
        from: usize,
    ) -> Option<Result<Bytes, Bytes>> {
        if let Some(bridge) = self.bridge {
            // Cluster mode: this roster counts the node's sockets; Redis decides members,
            // the roster the socket sees, and the announcements.
            let joined =
                self.rosters
                    .borrow_mut()
                    .entry(app, channel)
                    .join(user_id, user_info, usize::MAX);
            let envelope = Envelope::ClusterJoin {
                app,
                channel: Arc::from(channel),
                user_id: Arc::from(user_id),
                user_info: Arc::from(user_info),
                new_on_node: joined == Joined::NewMember,
                from,
                home: self.id,
                socket,
            };
            self.send_envelope(bridge, envelope);
            return None;
        }
        let max = self.apps.get(app).max_presence_members_per_channel as usize;
        let mut rosters = self.rosters.borrow_mut();
        let roster = rosters.entry(app, channel);
        match roster.join(user_id, user_info, max) {
            Joined::Full => {
                drop(rosters);
                self.rosters.borrow_mut().prune(app, channel);
                let error =
                    format!("The maximum of {max} members on this presence channel is reached.");
                Some(Err(subscription_error_frame(
                    channel,
                    "LimitReached",
                    &error,
                    4100,
                )))
            }
            joined => {
                let data = roster.subscription_data();
                if joined == Joined::NewMember {
                    let a = app.0 as usize;
                    if self.webhooks.wants(a, WebhookEvent::MemberAdded, channel) {
                        let event = Event::MemberAdded {
                            channel: channel.to_owned(),
                            user_id: user_id.to_owned(),
                        };
                        self.webhooks.send(a, event);
                    }
                    let frame = member_added_frame(channel, user_id, user_info);
                    self.pending_announcements.borrow_mut().push((
                        app,
                        Arc::from(channel),
                        frame,
                        Some(socket.socket_id),
                    ));
                }
                Some(Ok(subscription_succeeded(channel, &data)))
            }
        }
    }

    /// Home side of a leave: announces `member_removed` when the user's last socket went.
    pub(super) fn home_leave(&self, app: AppIdx, channel: &str, user_id: &str) {
        let grace = self.config.member_removed_delay;
        let removed = {
            let mut rosters = self.rosters.borrow_mut();
            let removed = rosters
                .entry(app, channel)
                .leave_after(user_id, grace, Instant::now());
            rosters.prune(app, channel);
            removed
        };
        if removed {
            self.member_left(app, channel, user_id);
        }
    }

    /// Presence members whose leave grace ended: they are gone now.
    pub(super) fn expire_leaves(&self, now: Instant) {
        if self.config.member_removed_delay.is_zero() {
            return;
        }
        let gone = self.rosters.borrow_mut().expire(now);
        for (app, channel, user) in gone {
            self.member_left(app, &channel, &user);
        }
    }

    /// A member left the channel on this server (node): tell Redis, or announce it.
    fn member_left(&self, app: AppIdx, channel: &str, user_id: &str) {
        if let Some(bridge) = self.bridge {
            // Cluster mode: Redis decides whether the user left the cluster.
            let envelope = Envelope::ClusterLeave {
                app,
                channel: Arc::from(channel),
                user_id: Arc::from(user_id),
            };
            self.send_envelope(bridge, envelope);
            return;
        }
        let a = app.0 as usize;
        if self.webhooks.wants(a, WebhookEvent::MemberRemoved, channel) {
            let event = Event::MemberRemoved {
                channel: channel.to_owned(),
                user_id: user_id.to_owned(),
            };
            self.webhooks.send(a, event);
        }
        let frame = member_removed_frame(channel, user_id);
        self.publish(app, channel, &frame, None, false);
    }

    /// A channel gained its first or lost its last subscriber on this shard: tell its
    /// home shard, which decides the webhooks for the whole server.
    pub(super) fn local_occupancy(&self, app: AppIdx, channel: &str, occupied: bool) {
        let a = app.0 as usize;
        if channel.starts_with('#')
            || !(self
                .webhooks
                .wants(a, WebhookEvent::ChannelOccupied, channel)
                || self
                    .webhooks
                    .wants(a, WebhookEvent::ChannelVacated, channel))
        {
            return;
        }
        let delta = if occupied { 1 } else { -1 };
        let home = self.home_of(app, channel);
        if home == self.id {
            self.home_occupancy(app, channel, delta);
        } else {
            let envelope = Envelope::Occupancy {
                app,
                channel: Arc::from(channel),
                delta,
            };
            self.send_envelope(home, envelope);
        }
    }

    /// Home side: `channel_occupied` when the first shard gains subscribers,
    /// `channel_vacated` when the last one loses them.
    fn home_occupancy(&self, app: AppIdx, channel: &str, delta: i8) {
        let key = (app, Arc::from(channel));
        let mut occupancy = self.occupancy.borrow_mut();
        let count = occupancy.entry(key.clone()).or_insert(0);
        let event = if delta > 0 {
            *count += 1;
            (*count == 1).then(|| Event::ChannelOccupied {
                channel: channel.to_owned(),
            })
        } else {
            *count = count.saturating_sub(1);
            (*count == 0).then(|| Event::ChannelVacated {
                channel: channel.to_owned(),
            })
        };
        if occupancy.get(&key) == Some(&0) {
            occupancy.remove(&key);
        }
        drop(occupancy);
        match (event, self.bridge) {
            // Cluster mode: the node-level change goes to Redis, which decides for all.
            (Some(_), Some(bridge)) => {
                let envelope = Envelope::Occupancy {
                    app,
                    channel: Arc::from(channel),
                    delta,
                };
                self.send_envelope(bridge, envelope);
            }
            (Some(event), None) => self.webhooks.send(app.0 as usize, event),
            (None, _) => {}
        }
    }

    /// Sends the redis bridge this shard's rosters and local subscription counts, so it
    /// can rebuild what Redis lost.
    fn dump_rosters(&self) {
        let Some(bridge) = self.bridge else { return };
        let mut members = Vec::new();
        let mut channels = Vec::new();
        let rosters = self.rosters.borrow();
        let registry = self.registry.borrow();
        for a in 0..self.apps.len() {
            let app = AppIdx(a as u32);
            for (channel, roster) in rosters.channels(app) {
                let channel: Arc<str> = Arc::from(channel);
                for (user, info) in roster.members() {
                    members.push((app, Arc::clone(&channel), Arc::from(user), Arc::from(info)));
                }
            }
            for (channel, count) in registry.channels(app) {
                if !channel.starts_with('#') {
                    channels.push((app, Arc::from(channel), count as u64));
                }
            }
        }
        drop((rosters, registry));
        self.send_envelope(bridge, Envelope::RosterEntries { members, channels });
    }

    /// Sends the `member_added` announcements queued by joins.
    pub(super) fn announce_pending(&self) {
        let pending = std::mem::take(&mut *self.pending_announcements.borrow_mut());
        for (app, channel, frame, except) in pending {
            self.publish(app, &channel, &frame, except, false);
        }
    }
}
