//! Cluster-wide limits on the shard side: spend the node's leased tokens, and ask the
//! redis bridge for more when they run out (see `src/redis/bridge/limits.rs`). Only the
//! task that needs the answer waits; the shard goes on serving everything else.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::Shard;
use crate::app::AppIdx;
use crate::fanout::{Envelope, LeaseKind, LeaseVerdict};

/// A lease request waiting for the bridge's answer.
#[derive(Default)]
pub(super) struct LeaseWait {
    verdict: Option<LeaseVerdict>,
    waker: Option<Waker>,
    /// The requester stopped waiting (timeout): a connection slot granted after that is
    /// given back to the node's unused tokens.
    abandoned: Option<AppIdx>,
}

/// Which per-second REST limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// `max_backend_events_per_sec`.
    Backend,
    /// `max_read_req_per_sec`.
    Read,
}

impl Shard {
    /// Whether `max_connections` counts over the cluster (the redis adapter).
    pub(super) fn cluster_quota(&self) -> bool {
        self.bridge.is_some()
    }

    /// Whether the per-second REST limits count over the cluster
    /// (`SOKETI_RATE_LIMITER_DRIVER=redis`).
    pub fn cluster_rates(&self) -> bool {
        self.bridge.is_some() && self.config.redis.rate_limits
    }

    /// Takes one connection slot of `app`'s cluster-wide quota: one the node holds, or
    /// one the bridge leases from Redis. Redis unreachable: only the node's own share
    /// counts, so a connection past it is refused.
    pub(super) async fn take_connection_slot(self: &Rc<Self>, app: AppIdx) -> bool {
        if self.apps.usage(app).connection_lease.try_take(1) {
            return true;
        }
        self.lease(app, LeaseKind::Connections, 1).await == LeaseVerdict::Granted
    }

    /// Takes `n` tokens of `app`'s cluster-wide per-second limit `rate`. `None` when
    /// Redis is unreachable: the caller applies the per-node limit instead.
    pub async fn take_rate(self: &Rc<Self>, app: AppIdx, rate: Rate, n: u64) -> Option<bool> {
        let second = crate::app::limits::unix_secs();
        let usage = self.apps.usage(app);
        let (tokens, kind) = match rate {
            Rate::Backend => (&usage.backend_lease, LeaseKind::BackendEvents { second }),
            Rate::Read => (&usage.read_lease, LeaseKind::ReadRequests { second }),
        };
        if tokens.try_take(second, n) {
            return Some(true);
        }
        if tokens.is_exhausted(second) {
            return Some(false);
        }
        match self.lease(app, kind, n).await {
            LeaseVerdict::Granted => Some(true),
            LeaseVerdict::Refused => Some(false),
            LeaseVerdict::Unavailable => None,
        }
    }

    /// Asks the bridge for `need` tokens and waits for its verdict, at most the adapter's
    /// requests timeout (then, or without a bridge, `Unavailable`).
    async fn lease(self: &Rc<Self>, app: AppIdx, kind: LeaseKind, need: u64) -> LeaseVerdict {
        let Some(bridge) = self.bridge else {
            return LeaseVerdict::Unavailable;
        };
        let id = self.next_serial.get() + 1;
        self.next_serial.set(id);
        let envelope = Envelope::Lease {
            from: self.id,
            id,
            app,
            kind,
            need,
        };
        if self.outbox.borrow_mut().push(bridge, envelope).is_err() {
            return LeaseVerdict::Unavailable;
        }
        self.leases.borrow_mut().insert(id, LeaseWait::default());
        let wait = poll_fn(|cx| {
            let mut leases = self.leases.borrow_mut();
            match leases.get_mut(&id) {
                Some(LeaseWait {
                    verdict: Some(v), ..
                }) => Poll::Ready(*v),
                Some(w) => {
                    w.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                None => Poll::Ready(LeaseVerdict::Unavailable),
            }
        });
        let verdict = monoio::time::timeout(self.config.redis.requests_timeout, wait).await;
        let mut leases = self.leases.borrow_mut();
        match verdict {
            Ok(v) => {
                leases.remove(&id);
                v
            }
            Err(_) => {
                if let Some(w) = leases.get_mut(&id)
                    && kind == LeaseKind::Connections
                {
                    w.abandoned = Some(app);
                } else {
                    leases.remove(&id);
                }
                LeaseVerdict::Unavailable
            }
        }
    }

    /// The bridge's answer to lease request `id`.
    pub(super) fn on_leased(&self, id: u64, verdict: LeaseVerdict) {
        let mut leases = self.leases.borrow_mut();
        let Some(w) = leases.get_mut(&id) else {
            return;
        };
        if let Some(app) = w.abandoned {
            leases.remove(&id);
            if verdict == LeaseVerdict::Granted {
                self.apps.usage(app).connection_lease.release(1);
            }
            return;
        }
        w.verdict = Some(verdict);
        if let Some(waker) = w.waker.take() {
            waker.wake();
        }
    }
}
