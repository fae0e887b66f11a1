//! Graceful shutdown of a shard: refuse new WebSockets (4200) while `/ready` answers 503,
//! tell every client to reconnect (4200), let REST requests in flight finish, and stop
//! within the grace period.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::{Shard, conn};
use crate::protocol::ErrorCode;
use crate::registry::ConnKey;

/// Parks the shard's main task until shutdown is requested.
pub(super) async fn stopped(shard: &Shard) {
    poll_fn(|cx| {
        if shard.shutting_down() {
            Poll::Ready(())
        } else {
            *shard.stop_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
}

/// Called by the inbox loop when it is woken: wakes the main task on shutdown.
pub(super) fn notice(shard: &Shard) {
    if shard.shutting_down()
        && let Some(w) = shard.stop_waker.borrow_mut().take()
    {
        w.wake();
    }
}

/// Closes every WebSocket with `pusher:error` 4200 so clients reconnect elsewhere at
/// once, waits for sockets and REST requests to finish (at most the grace period), then
/// stops listening. Meanwhile new upgrades get 4200 and `/ready` answers 503, so load
/// balancers and clients move on.
pub(super) async fn drain(shard: &Rc<Shard>) {
    let keys: Vec<ConnKey> = shard.conns.borrow().iter().map(|(k, _)| k).collect();
    let code = ErrorCode::ReconnectImmediately;
    for key in keys {
        shard.begin_close(key, code.code(), Some(code));
    }
    shard.flush_dirty();
    let deadline = Instant::now() + shard.config.shutdown_grace_period;
    while Instant::now() < deadline {
        if shard.conns.borrow().is_empty() && shard.http_in_flight.get() == 0 {
            break;
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    conn::shutdown(shard.listener_fd.get(), libc::SHUT_RDWR);
}
