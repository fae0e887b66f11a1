//! Cluster-wide limits: connection slots of `max_connections` and tokens of the
//! per-second REST limits, leased from Redis to this node.
//!
//! A shard spends the node's tokens (`AppUsage::connection_lease`, `backend_lease`,
//! `read_lease`) without asking anyone while there are some, and asks the bridge
//! ([`Envelope::Lease`]) only when they run out. The bridge then runs one script
//! ([`scripts::CONNECTION_LEASE`], [`scripts::RATE_LEASE`]) that grants what was asked if
//! the cluster has it, plus headroom (half of what stays free, at most a tenth of the
//! limit), so far below a limit a node goes to Redis once per many connections or
//! requests, and near it once per connection or request, exactly.
//!
//! Unused connection slots go back to Redis with each heartbeat (all but the headroom).
//! A node refused a slot while the cluster may still have room (other nodes holding
//! unused slots) asks every node to give theirs back ([`Message::Reclaim`]), waits for
//! their answers (at most [`RECLAIM_WAIT`]) and asks Redis once more, so a refusal
//! means the cluster really is full. A dead node's slots are removed when it is reaped;
//! after a reconnect the node writes its holding again
//! (a restarted Redis has lost it). Redis unreachable: a node keeps what it holds (its
//! last known share) and refuses connections past it; REST requests fall back to the
//! per-node limit (see the README for why).

use super::*;
use crate::fanout::{LeaseKind, LeaseVerdict};

/// The headroom granted with a lease is at most this share of the limit.
const BLOCK_DIVISOR: u64 = 10;
/// How long a refused connection waits for the other nodes to give unused slots back.
pub(super) const RECLAIM_WAIT: Duration = Duration::from_millis(500);
/// After a reclaim still ended in a refusal, the app is full: connections refused within
/// this time are refused at once, without another reclaim.
const FULL_FOR: Duration = Duration::from_secs(1);

/// A connection-slot request refused once, waiting for the other nodes' unused slots.
pub(super) struct Reclaiming {
    from: usize,
    id: u64,
    app: AppIdx,
    need: u64,
    /// Nodes that have not answered yet.
    waiting: usize,
    pub(super) deadline: Instant,
}

fn block(limit: u64) -> u64 {
    (limit / BLOCK_DIVISOR).max(1)
}

/// Answers a shard's lease request from Redis. A connection slot refused on the first
/// try is not answered yet: it comes back as [`Reclaiming`] after asking the other nodes
/// for their unused slots.
pub(super) async fn lease(
    bridge: &Bridge,
    conn: &mut Link,
    request: (usize, u64, AppIdx),
    kind: LeaseKind,
    need: u64,
    retried: Option<&[Reclaiming]>,
) -> Result<Option<Reclaiming>, RedisError> {
    let (from, id, app) = request;
    bump(&bridge.stats.lease_requests, 1);
    let cfg = bridge.apps.get(app);
    let app_id = bridge.app_id(app).to_owned();
    let usage = bridge.apps.usage(app);
    let limit = match kind {
        LeaseKind::Connections => cfg.max_connections,
        LeaseKind::BackendEvents { .. } => cfg.max_backend_events_per_sec,
        LeaseKind::ReadRequests { .. } => cfg.max_read_req_per_sec,
    };
    let Some(limit) = limit else {
        // No limit (any more): nothing to count.
        bridge.to_shard(
            from,
            Envelope::Leased {
                id,
                verdict: LeaseVerdict::Granted,
            },
        );
        return Ok(None);
    };
    let (need_s, limit_s, block_s) = (
        need.to_string(),
        limit.to_string(),
        block(limit).to_string(),
    );
    let granted = match kind {
        LeaseKind::Connections => {
            super::presence::register(bridge, conn, app).await?;
            let node = bridge.node.to_string();
            let reply = super::presence::eval(
                conn,
                scripts::CONNECTION_LEASE,
                &[&bridge.keys.connection_leases(&app_id)],
                &[&node, &need_s, &limit_s, &block_s],
            )
            .await?;
            let granted = int(&reply);
            if granted >= need {
                usage.connection_lease.granted(need, granted - need);
            } else if granted > 0 {
                usage.connection_lease.granted(0, granted);
            }
            granted
        }
        LeaseKind::BackendEvents { second } | LeaseKind::ReadRequests { second } => {
            let (name, tokens) = match kind {
                LeaseKind::BackendEvents { .. } => ("backend", &usage.backend_lease),
                _ => ("read", &usage.read_lease),
            };
            let reply = super::presence::eval(
                conn,
                scripts::RATE_LEASE,
                &[&bridge.keys.rate(&app_id, name, second)],
                &[&need_s, &limit_s, &block_s],
            )
            .await?;
            let granted = int(&reply);
            if granted >= need {
                tokens.give(second, granted - need);
            } else {
                tokens.mark_exhausted(second);
            }
            granted
        }
    };
    if bridge.debug {
        let leases = match kind {
            LeaseKind::Connections => format!(
                "{:?}",
                conn.call(&[
                    b"HGETALL",
                    bridge.keys.connection_leases(&app_id).as_bytes()
                ])
                .await?
            ),
            _ => String::new(),
        };
        eprintln!(
            "corecast: node {} lease {kind:?} of {app_id}: asked {need}, granted {granted}, \
             {} unused held, retry {}, leases now {leases}",
            bridge.node,
            usage.connection_lease.tokens(),
            retried.is_none()
        );
    }
    let full_since = bridge.full.borrow().get(&app).copied();
    let known_full = full_since.is_some_and(|at| at.elapsed() < FULL_FOR);
    if granted < need
        && kind == LeaseKind::Connections
        && !known_full
        && let Some(pending) = retried
    {
        // Join a reclaim already running for the app, or start one.
        if let Some(r) = pending.iter().find(|r| r.app == app) {
            return Ok(Some(Reclaiming {
                from,
                id,
                app,
                need,
                waiting: r.waiting,
                deadline: r.deadline,
            }));
        }
        let ask = Message::Reclaim {
            node: bridge.node,
            app_id,
            done: false,
        };
        let cmd = bridge.broadcast_cmd(&ask);
        let args: Vec<&[u8]> = cmd.iter().map(|b| &b[..]).collect();
        conn.call(&args).await?;
        // Nodes seen at the last heartbeat; a node that started since may answer too,
        // and the wait is bounded either way.
        let others = bridge.alive.borrow().len().max(1);
        return Ok(Some(Reclaiming {
            from,
            id,
            app,
            need,
            waiting: others,
            deadline: Instant::now() + RECLAIM_WAIT,
        }));
    }
    let verdict = if granted >= need {
        bridge.full.borrow_mut().remove(&app);
        LeaseVerdict::Granted
    } else {
        if kind == LeaseKind::Connections && !known_full {
            bridge.full.borrow_mut().insert(app, Instant::now());
        }
        bump(&bridge.stats.lease_refused, 1);
        LeaseVerdict::Refused
    };
    bridge.to_shard(from, Envelope::Leased { id, verdict });
    Ok(None)
}

impl Reclaiming {
    pub(super) fn from(&self) -> usize {
        self.from
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn app(&self) -> AppIdx {
        self.app
    }
}

/// Another node answered a reclaim for `app`.
pub(super) fn answered(waiting: &mut [Reclaiming], app: AppIdx) {
    for r in waiting.iter_mut().filter(|r| r.app == app) {
        r.waiting = r.waiting.saturating_sub(1);
    }
}

/// Asks Redis again for the requests whose answers are in (or whose wait is over).
pub(super) async fn retry_due(
    bridge: &Bridge,
    conn: &mut Link,
    waiting: &mut Vec<Reclaiming>,
) -> Result<(), RedisError> {
    let now = Instant::now();
    let (due, rest): (Vec<Reclaiming>, Vec<Reclaiming>) = std::mem::take(waiting)
        .into_iter()
        .partition(|r| r.waiting == 0 || now >= r.deadline);
    *waiting = rest;
    for r in due {
        let request = (r.from, r.id, r.app);
        if let Err(e) = lease(bridge, conn, request, LeaseKind::Connections, r.need, None).await {
            lease_offline(bridge, r.from, r.id);
            return Err(e);
        }
    }
    Ok(())
}

/// Other nodes asked for `apps`' unused connection slots: gives them all back to Redis
/// and says so.
pub(super) async fn give_back(
    bridge: &Bridge,
    conn: &mut Link,
    apps: Vec<AppIdx>,
) -> Result<(), RedisError> {
    for app in apps {
        let app_id = bridge.app_id(app).to_owned();
        let spare = bridge.apps.usage(app).connection_lease.take_above(0);
        if bridge.debug {
            eprintln!("corecast: reclaim of {app_id}: {spare} unused slots given back");
        }
        if spare > 0 {
            let minus = format!("-{spare}");
            conn.call(&[
                b"HINCRBY",
                bridge.keys.connection_leases(&app_id).as_bytes(),
                bridge.node.to_string().as_bytes(),
                minus.as_bytes(),
            ])
            .await?;
        }
        let done = Message::Reclaim {
            node: bridge.node,
            app_id,
            done: true,
        };
        let cmd = bridge.broadcast_cmd(&done);
        let args: Vec<&[u8]> = cmd.iter().map(|b| &b[..]).collect();
        conn.call(&args).await?;
    }
    Ok(())
}

/// Redis is unreachable: the shard decides alone. Said once per outage.
pub(super) fn lease_offline(bridge: &Bridge, from: usize, id: u64) {
    bump(&bridge.stats.lease_unavailable, 1);
    if !bridge.limits_offline.replace(true) {
        eprintln!(
            "corecast: redis unreachable: connection quotas hold at this node's share, \
             rate limits count per node until it is back"
        );
    }
    bridge.to_shard(
        from,
        Envelope::Leased {
            id,
            verdict: LeaseVerdict::Unavailable,
        },
    );
}

/// Gives connection slots this node holds beyond its headroom back to the cluster.
pub(super) async fn return_unused(bridge: &Bridge, conn: &mut Link) -> Result<(), RedisError> {
    let apps: Vec<(AppIdx, String)> = bridge
        .apps
        .ids()
        .map(|(idx, id)| (idx, id.to_owned()))
        .collect();
    let node = bridge.node.to_string();
    for (app, app_id) in apps {
        let Some(max) = bridge.apps.get(app).max_connections else {
            continue;
        };
        let spare = bridge
            .apps
            .usage(app)
            .connection_lease
            .take_above(block(max));
        if spare > 0 {
            let minus = format!("-{spare}");
            conn.call(&[
                b"HINCRBY",
                bridge.keys.connection_leases(&app_id).as_bytes(),
                node.as_bytes(),
                minus.as_bytes(),
            ])
            .await?;
        }
    }
    Ok(())
}

/// After (re)connecting: writes what this node holds of each app's connection quota
/// (its open connections and unused slots), which a restarted Redis has lost.
pub(super) async fn restore(bridge: &Bridge, conn: &mut Link) -> Result<(), RedisError> {
    let apps: Vec<(AppIdx, String)> = bridge
        .apps
        .ids()
        .map(|(idx, id)| (idx, id.to_owned()))
        .collect();
    let node = bridge.node.to_string();
    for (app, app_id) in apps {
        if bridge.apps.get(app).max_connections.is_none() {
            continue;
        }
        // Not `connections.used()`: it counts connections whose slot is still being asked
        // for, which their own lease will add.
        let held = bridge.apps.usage(app).connection_lease.held();
        if bridge.debug {
            eprintln!(
                "corecast: node {} restores {held} slots of {app_id}",
                bridge.node
            );
        }
        if held == 0 {
            continue;
        }
        super::presence::register(bridge, conn, app).await?;
        conn.call(&[
            b"HSET",
            bridge.keys.connection_leases(&app_id).as_bytes(),
            node.as_bytes(),
            held.to_string().as_bytes(),
        ])
        .await?;
    }
    Ok(())
}

fn int(reply: &Reply) -> u64 {
    match reply {
        Reply::Int(n) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}
