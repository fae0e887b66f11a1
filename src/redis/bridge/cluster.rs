//! Cluster-wide reads for REST, and liveness: heartbeats and reaping dead nodes.

use super::*;

/// Answers a REST read for the other nodes: their subscription counts, and the cluster
/// roster of presence channels.
pub(super) async fn read(
    bridge: &Bridge,
    conn: &mut Link,
    app: AppIdx,
    query: &Query,
) -> Result<QueryReply, RedisError> {
    let app_id = bridge.app_id(app).to_owned();
    let others: Vec<u32> = bridge.alive.borrow().clone();
    let mut counts: AHashMap<Arc<str>, u64> = AHashMap::new();
    let wanted = |name: &str| match query {
        Query::Channels { prefix } => name.starts_with(&**prefix),
        Query::Channel { name: n } => name == &**n,
    };
    for node in others {
        let reply = conn
            .call(&[b"HGETALL", bridge.keys.node_channels(node).as_bytes()])
            .await?;
        if let Reply::Array(items) = reply {
            for kv in items.chunks(2) {
                if let [Reply::Bulk(k), Reply::Bulk(v)] = kv {
                    let k = String::from_utf8_lossy(k);
                    let Some((a, name)) = k.split_once('\n') else {
                        continue;
                    };
                    let n: i64 = std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if a == app_id && n > 0 && wanted(name) {
                        *counts.entry(Arc::from(name)).or_insert(0) += n as u64;
                    }
                }
            }
        }
    }
    let mut presence: Vec<Arc<str>> = match query {
        Query::Channel { name } if name.starts_with("presence-") => vec![Arc::clone(name)],
        Query::Channel { .. } => Vec::new(),
        Query::Channels { prefix } => {
            let reply = conn
                .call(&[
                    b"SMEMBERS",
                    bridge.keys.presence_channels(&app_id).as_bytes(),
                ])
                .await?;
            bulk_strings(reply)
                .into_iter()
                .filter(|c| c.starts_with(&**prefix))
                .map(Arc::from)
                .collect()
        }
    };
    presence.sort();
    presence.dedup();
    let mut channels: Vec<ChannelPart> = Vec::new();
    for name in presence {
        let reply = conn
            .call(&[b"HKEYS", bridge.keys.members(&app_id, &name).as_bytes()])
            .await?;
        let users: Vec<Arc<str>> = bulk_strings(reply).into_iter().map(Arc::from).collect();
        let subscriptions = counts.remove(&name).unwrap_or(0);
        channels.push(ChannelPart {
            name,
            subscriptions,
            users: Some(users),
        });
    }
    channels.extend(counts.into_iter().map(|(name, subscriptions)| ChannelPart {
        name,
        subscriptions,
        users: None,
    }));
    Ok(QueryReply { channels })
}

pub(super) fn bulk_strings(reply: Reply) -> Vec<String> {
    match reply {
        Reply::Array(items) => items
            .into_iter()
            .filter_map(|i| match i {
                Reply::Bulk(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Writes this node's heartbeat, learns which nodes are alive, and removes the members
/// and counts of nodes that stopped heartbeating (one node does it, under a lock).
pub(super) async fn heartbeat(bridge: &Bridge, conn: &mut Link) -> Result<(), RedisError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let nodes_key = bridge.keys.nodes();
    conn.call(&[
        b"HSET",
        nodes_key.as_bytes(),
        bridge.node.to_string().as_bytes(),
        now_ms.to_string().as_bytes(),
    ])
    .await?;
    let reply = conn.call(&[b"HGETALL", nodes_key.as_bytes()]).await?;
    let mut alive = Vec::new();
    let mut dead = Vec::new();
    if let Reply::Array(items) = reply {
        for kv in items.chunks(2) {
            if let [Reply::Bulk(k), Reply::Bulk(v)] = kv {
                let node: Option<u32> = std::str::from_utf8(k).ok().and_then(|s| s.parse().ok());
                let seen: u64 = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let Some(node) = node else { continue };
                if node == bridge.node {
                    continue;
                }
                if now_ms.saturating_sub(seen) > NODE_TIMEOUT.as_millis() as u64 {
                    dead.push(node);
                } else {
                    alive.push(node);
                }
            }
        }
    }
    *bridge.alive.borrow_mut() = alive;
    bridge.forget_counts(&dead);
    for node in dead {
        reap(bridge, conn, node).await?;
    }
    Ok(())
}

/// Removes a dead node's members (announcing `member_removed` where it was the user's
/// last node) and its counts.
pub(super) async fn reap(bridge: &Bridge, conn: &mut Link, node: u32) -> Result<(), RedisError> {
    let lock = bridge.keys.reap_lock(node);
    let got = conn
        .call(&[
            b"SET",
            lock.as_bytes(),
            bridge.node.to_string().as_bytes(),
            b"NX",
            b"EX",
            b"30",
        ])
        .await?;
    if got == Reply::Nil {
        return Ok(());
    }
    eprintln!("corecast: node {node} stopped heartbeating; removing its presence members");
    let apps = bulk_strings(
        conn.call(&[b"SMEMBERS", bridge.keys.node_apps(node).as_bytes()])
            .await?,
    );
    let mut cmds = Vec::new();
    for app_id in &apps {
        let Some((app, _)) = bridge.apps.by_id(app_id) else {
            continue;
        };
        let entries = bulk_strings(
            conn.call(&[
                b"SMEMBERS",
                bridge.keys.node_entries(node, app_id).as_bytes(),
            ])
            .await?,
        );
        for e in &entries {
            let Some((_, channel, user)) = scripts::split_entry(e) else {
                continue;
            };
            leave(
                bridge,
                conn,
                node,
                app,
                &Arc::from(channel),
                user,
                &mut cmds,
            )
            .await?;
        }
        // Its signed-in users: offline where it was their last node.
        let online = bulk_strings(
            conn.call(&[
                b"SMEMBERS",
                bridge.keys.node_online(node, app_id).as_bytes(),
            ])
            .await?,
        );
        for user in online {
            super::features::node_user(
                bridge,
                conn,
                (node, app),
                Arc::from(user),
                false,
                &mut cmds,
            )
            .await?;
        }
        // Its occupied channels: vacated where it was the last node.
        let occupied = bulk_strings(
            conn.call(&[
                b"SMEMBERS",
                bridge.keys.node_occupied(node, app_id).as_bytes(),
            ])
            .await?,
        );
        for field in &occupied {
            let Some((_, channel)) = field.split_once('\n') else {
                continue;
            };
            occupy(bridge, conn, node, app, channel, -1, true).await?;
        }
    }
    flush(bridge, conn, &mut cmds).await?;
    // Its connection slots go back to the cluster.
    for app_id in &apps {
        conn.call(&[
            b"HDEL",
            bridge.keys.connection_leases(app_id).as_bytes(),
            node.to_string().as_bytes(),
        ])
        .await?;
    }
    // One key per command: in a cluster they live in different slots.
    let mut keys = vec![bridge.keys.node_channels(node), bridge.keys.node_apps(node)];
    for app_id in &apps {
        keys.push(bridge.keys.node_entries(node, app_id));
        keys.push(bridge.keys.node_occupied(node, app_id));
        keys.push(bridge.keys.node_online(node, app_id));
    }
    for key in keys {
        conn.call(&[b"DEL", key.as_bytes()]).await?;
    }
    conn.call(&[
        b"HDEL",
        bridge.keys.nodes().as_bytes(),
        node.to_string().as_bytes(),
    ])
    .await?;
    Ok(())
}
