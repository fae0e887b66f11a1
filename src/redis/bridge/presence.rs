//! Cluster presence and occupancy through the Lua scripts, and the resync that makes
//! Redis match this node after a reconnect.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) async fn join(
    bridge: &Bridge,
    conn: &mut Link,
    app: AppIdx,
    channel: &Arc<str>,
    user_id: &Arc<str>,
    user_info: &str,
    new_on_node: bool,
    socket: SocketRef,
    from: usize,
    home: usize,
    cmds: &mut Vec<Vec<Bytes>>,
) -> Result<(), RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    let max = bridge
        .apps
        .get(app)
        .max_presence_members_per_channel
        .to_string();
    let entry = scripts::entry(&app_id, channel, user_id);
    if new_on_node {
        register(bridge, conn, app).await?;
    }
    let graced = member_graced(bridge, app, channel);
    let leaving = bridge.keys.leaving(&app_id, channel, user_id);
    let members = bridge.keys.members(&app_id, channel);
    let nodes = bridge.keys.member_nodes(&app_id, channel);
    let entries = bridge.keys.node_entries(bridge.node, &app_id);
    let channels = bridge.keys.presence_channels(&app_id);
    let mut keys = vec![members.as_str(), &nodes, &entries, &channels];
    if graced {
        keys.push(&leaving);
    }
    let reply = eval(
        conn,
        if graced {
            scripts::JOIN_GRACE
        } else {
            scripts::JOIN
        },
        &keys,
        &[
            user_id,
            user_info,
            &entry,
            &max,
            if new_on_node { "1" } else { "0" },
            channel,
        ],
    )
    .await?;
    let Reply::Array(items) = reply else {
        return Err(RedisError::Protocol("join script reply".into()));
    };
    let added = match items.first() {
        Some(Reply::Int(n)) => *n,
        _ => 0,
    };
    if added < 0 {
        let error = format!("The maximum of {max} members on this presence channel is reached.");
        let refusal = subscription_error_frame(channel, "LimitReached", &error, 4100);
        bridge.to_shard(
            home,
            Envelope::RosterUndo {
                app,
                channel: Arc::clone(channel),
                user_id: Arc::clone(user_id),
            },
        );
        bridge.to_shard(
            from,
            Envelope::PresenceJoined {
                app,
                channel: Arc::clone(channel),
                user_id: Arc::clone(user_id),
                socket,
                outcome: Err(refusal),
            },
        );
        return Ok(());
    }
    if new_on_node {
        bridge.mine.borrow_mut().insert(entry.clone());
    }
    let pairs: Vec<(String, String)> = items[1..]
        .chunks(2)
        .filter_map(|kv| match kv {
            [Reply::Bulk(k), Reply::Bulk(v)] => Some((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )),
            _ => None,
        })
        .collect();
    let data = roster_data(&pairs);
    let frame = subscription_succeeded(channel, &data);
    bridge.to_shard(
        from,
        Envelope::PresenceJoined {
            app,
            channel: Arc::clone(channel),
            user_id: Arc::clone(user_id),
            socket,
            outcome: Ok(frame),
        },
    );
    // 2: back within the grace of its `member_removed` webhook, which is not sent.
    if added == 1 || added == 2 {
        let a = app.0 as usize;
        if added == 1 && bridge.webhooks.wants(a, WebhookEvent::MemberAdded, channel) {
            let event = Event::MemberAdded {
                channel: channel.to_string(),
                user_id: user_id.to_string(),
            };
            bridge.webhooks.send(a, event);
        }
        let frame = member_added_frame(channel, user_id, user_info);
        bridge.announce(app, channel, frame, Some(socket.socket_id), cmds);
    }
    Ok(())
}

/// Runs the leave script for `node`'s entry and announces `member_removed` when the user
/// left the cluster.
pub(super) async fn leave(
    bridge: &Bridge,
    conn: &mut Link,
    node: u32,
    app: AppIdx,
    channel: &Arc<str>,
    user_id: &str,
    cmds: &mut Vec<Vec<Bytes>>,
) -> Result<(), RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    let entry = scripts::entry(&app_id, channel, user_id);
    let graced = member_graced(bridge, app, channel);
    let leaving = bridge.keys.leaving(&app_id, channel, user_id);
    let token = bridge.grace_token();
    let members = bridge.keys.members(&app_id, channel);
    let nodes = bridge.keys.member_nodes(&app_id, channel);
    let entries = bridge.keys.node_entries(node, &app_id);
    let channels = bridge.keys.presence_channels(&app_id);
    let reply = if graced {
        let px = bridge.grace_px();
        eval(
            conn,
            scripts::LEAVE_GRACE,
            &[&members, &nodes, &entries, &channels, &leaving],
            &[user_id, &entry, channel, &token, &px],
        )
        .await?
    } else {
        eval(
            conn,
            scripts::LEAVE,
            &[&members, &nodes, &entries, &channels],
            &[user_id, &entry, channel],
        )
        .await?
    };
    // Forgotten only once Redis has it: a leave lost with the connection is announced
    // by the resync after reconnecting.
    if node == bridge.node {
        bridge.mine.borrow_mut().remove(&entry);
    }
    if reply == Reply::Int(1) {
        let a = app.0 as usize;
        if bridge
            .webhooks
            .wants(a, WebhookEvent::MemberRemoved, channel)
        {
            let event = Event::MemberRemoved {
                channel: channel.to_string(),
                user_id: user_id.to_owned(),
            };
            if graced {
                bridge.hold(leaving, token, a, event);
            } else {
                bridge.webhooks.send(a, event);
            }
        }
        let frame = member_removed_frame(channel, user_id);
        bridge.announce(app, channel, frame, None, cmds);
    }
    Ok(())
}

/// Counts `channel` as occupied (+1) or vacated (-1) on `node`; the node that moves the
/// cluster count between 0 and 1 sends `channel_occupied` / `channel_vacated`.
pub(super) async fn occupy(
    bridge: &Bridge,
    conn: &mut Link,
    node: u32,
    app: AppIdx,
    channel: &str,
    delta: i8,
    notify: bool,
) -> Result<(), RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    let field = format!("{app_id}\n{channel}");
    let sign = if delta > 0 { "1" } else { "-1" };
    if node == bridge.node && delta > 0 {
        register(bridge, conn, app).await?;
    }
    let a = app.0 as usize;
    // The grace of `channel_vacated` lives in Redis, so a return on any node cancels it.
    let graced = notify
        && !bridge.vacate_delay.is_zero()
        && bridge
            .webhooks
            .wants(a, WebhookEvent::ChannelVacated, channel);
    let vacating = bridge.keys.vacating(&app_id, channel);
    let token = bridge.grace_token();
    let reply = if graced {
        eval(
            conn,
            scripts::OCCUPY_GRACE,
            &[
                &bridge.keys.occupied(&app_id),
                &bridge.keys.node_occupied(node, &app_id),
                &vacating,
            ],
            &[channel, sign, &field, &token, &bridge.grace_px()],
        )
        .await?
    } else {
        eval(
            conn,
            scripts::OCCUPY,
            &[
                &bridge.keys.occupied(&app_id),
                &bridge.keys.node_occupied(node, &app_id),
            ],
            &[channel, sign, &field],
        )
        .await?
    };
    if graced && reply == Reply::Int(0) && delta < 0 {
        let event = Event::ChannelVacated {
            channel: channel.to_owned(),
        };
        bridge.hold(vacating, token, a, event);
        return Ok(());
    }
    let event = match (reply, delta > 0) {
        (Reply::Int(1), true) => Some((
            WebhookEvent::ChannelOccupied,
            Event::ChannelOccupied {
                channel: channel.to_owned(),
            },
        )),
        (Reply::Int(0), false) => Some((
            WebhookEvent::ChannelVacated,
            Event::ChannelVacated {
                channel: channel.to_owned(),
            },
        )),
        _ => None,
    };
    if notify
        && let Some((kind, event)) = event
        && bridge.webhooks.wants(a, kind, channel)
    {
        bridge.webhooks.send(a, event);
    }
    Ok(())
}

/// Whether `member_removed` of `channel` waits out the webhook grace in Redis.
fn member_graced(bridge: &Bridge, app: AppIdx, channel: &str) -> bool {
    !bridge.vacate_delay.is_zero()
        && bridge
            .webhooks
            .wants(app.0 as usize, WebhookEvent::MemberRemoved, channel)
}

/// Records in Redis that this node has presence entries or occupied channels of `app`
/// (once per app and connection), before the first script writes them.
pub(super) async fn register(
    bridge: &Bridge,
    conn: &mut Link,
    app: AppIdx,
) -> Result<(), RedisError> {
    if bridge.registered.borrow().contains(&app) {
        return Ok(());
    }
    conn.call(&[
        b"SADD",
        bridge.keys.node_apps(bridge.node).as_bytes(),
        bridge.app_id(app).as_bytes(),
    ])
    .await?;
    bridge.registered.borrow_mut().insert(app);
    Ok(())
}

pub(super) async fn eval(
    conn: &mut Link,
    script: &str,
    keys: &[&str],
    args: &[&str],
) -> Result<Reply, RedisError> {
    let nkeys = keys.len().to_string();
    let mut parts: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), nkeys.as_bytes()];
    parts.extend(keys.iter().map(|k| k.as_bytes()));
    parts.extend(args.iter().map(|a| a.as_bytes()));
    conn.call(&parts).await
}

/// The presence data of `subscription_succeeded` from the cluster roster.
pub(super) fn roster_data(pairs: &[(String, String)]) -> String {
    let mut roster = crate::registry::presence::Roster::default();
    for (id, info) in pairs {
        roster.join(id, info, usize::MAX);
    }
    roster.subscription_data()
}

/// After (re)connecting: makes Redis match this node's shards. Entries Redis has that
/// no shard has any more are left (announcing `member_removed`); entries shards have that
/// Redis lost are joined (announcing `member_added` for users new to the cluster);
/// subscription counts are rewritten whole.
pub(super) async fn apply_resync(
    bridge: &Bridge,
    conn: &mut Link,
    resync: Resync,
) -> Result<(), RedisError> {
    let mut cmds = Vec::new();
    // The apps to look at: those Redis has this node's entries of, and those this node
    // had or has entries of (Redis may have lost them).
    let mut apps: AHashSet<String> = bulk_strings(
        conn.call(&[b"SMEMBERS", bridge.keys.node_apps(bridge.node).as_bytes()])
            .await?,
    )
    .into_iter()
    .collect();
    for e in bridge.mine.borrow().iter() {
        if let Some((app_id, _, _)) = scripts::split_entry(e) {
            apps.insert(app_id.to_owned());
        }
    }
    for (app, ..) in &resync.members {
        apps.insert(bridge.app_id(*app).to_owned());
    }
    let mut in_redis: AHashSet<String> = AHashSet::new();
    for app_id in &apps {
        in_redis.extend(bulk_strings(
            conn.call(&[
                b"SMEMBERS",
                bridge.keys.node_entries(bridge.node, app_id).as_bytes(),
            ])
            .await?,
        ));
    }
    let mut current: AHashMap<String, RosterEntry> = AHashMap::new();
    for (app, channel, user, info) in resync.members {
        current.insert(
            scripts::entry(bridge.app_id(app), &channel, &user),
            (app, channel, user, info),
        );
    }
    // What this node told Redis before, whether or not Redis still has it (a restarted
    // Redis has lost it): users gone since then are announced removed.
    let mut old: AHashSet<String> = std::mem::take(&mut *bridge.mine.borrow_mut());
    old.extend(in_redis.iter().cloned());
    for e in old.iter().filter(|e| !current.contains_key(*e)) {
        let Some((app_id, channel, user)) = scripts::split_entry(e) else {
            continue;
        };
        let Some((app, _)) = bridge.apps.by_id(app_id) else {
            continue;
        };
        leave(
            bridge,
            conn,
            bridge.node,
            app,
            &Arc::from(channel),
            user,
            &mut cmds,
        )
        .await?;
    }
    for (e, (app, channel, user, info)) in &current {
        if in_redis.contains(e) {
            bridge.mine.borrow_mut().insert(e.clone());
            continue;
        }
        // Known before (Redis lost it): restore silently; new: announce if new to the cluster.
        let known = old.contains(e);
        let app_id = bridge.app_id(*app).to_owned();
        register(bridge, conn, *app).await?;
        let reply = eval(
            conn,
            scripts::JOIN,
            &[
                &bridge.keys.members(&app_id, channel),
                &bridge.keys.member_nodes(&app_id, channel),
                &bridge.keys.node_entries(bridge.node, &app_id),
                &bridge.keys.presence_channels(&app_id),
            ],
            &[user, info, e, &usize::MAX.to_string(), "1", channel],
        )
        .await?;
        bridge.mine.borrow_mut().insert(e.clone());
        if let Reply::Array(items) = reply
            && items.first() == Some(&Reply::Int(1))
            && !known
        {
            let frame = member_added_frame(channel, user, info);
            bridge.announce(*app, channel, frame, None, &mut cmds);
        }
    }
    let key = bridge.keys.node_channels(bridge.node);
    cmds.push(vec![Bytes::from_static(b"DEL"), Bytes::from(key.clone())]);
    for (app, channel, count) in resync.channels {
        // Still occupied here: restore the node's share of the cluster count silently
        // (a no-op when Redis kept it).
        if count > 0
            && bridge
                .webhooks
                .wants(app.0 as usize, WebhookEvent::ChannelVacated, &channel)
        {
            occupy(bridge, conn, bridge.node, app, &channel, 1, false).await?;
        }
        let field = format!("{}\n{channel}", bridge.app_id(app));
        cmds.push(vec![
            Bytes::from_static(b"HINCRBY"),
            Bytes::from(key.clone()),
            Bytes::from(field),
            Bytes::from(count.to_string()),
        ]);
    }
    flush(bridge, conn, &mut cmds).await
}
