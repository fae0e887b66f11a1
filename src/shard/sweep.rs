//! The once-a-second sweep: pings silent connections, closes those that do not answer
//! (4201), closes sockets that must sign in and did not (4009), forces shut the closes a
//! client never completed, and expires cache-channel events. One timer per shard
//! instead of one per connection keeps idle connections cheap.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Shard, conn};
use crate::protocol::{ErrorCode, error_frame, ping_frame};
use crate::registry::ConnKey;

/// How long a close handshake may take before the socket is shut regardless.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the sweep decided for one connection.
enum Due {
    Ping(ConnKey),
    PongMissing(ConnKey),
    ForceShut(std::os::fd::RawFd),
    Unauthenticated(ConnKey),
}

pub(super) async fn sweep_loop(shard: Rc<Shard>) {
    let tick = Duration::from_millis(500);
    loop {
        monoio::time::sleep(tick).await;
        sweep_once(&shard, Instant::now());
    }
}

fn sweep_once(shard: &Rc<Shard>, now: Instant) {
    let activity = shard.config.activity_timeout;
    let pong = shard.config.pong_timeout;
    let signin = shard.config.user_authentication_timeout;
    let mut due = Vec::new();
    for (key, c) in shard.conns.borrow().iter() {
        let must_sign_in = shard.apps.get(c.app).enable_user_authentication && !c.authorized;
        if let Some(since) = c.closing {
            if now.duration_since(since) > CLOSE_GRACE {
                due.push(Due::ForceShut(std::os::fd::AsRawFd::as_raw_fd(&*c.stream)));
            }
        } else if must_sign_in && now.duration_since(c.opened_at) > signin {
            due.push(Due::Unauthenticated(key));
        } else if let Some(sent) = c.ping_sent {
            if now.duration_since(sent) > pong {
                due.push(Due::PongMissing(key));
            }
        } else if now.duration_since(c.last_seen) > activity {
            due.push(Due::Ping(key));
        }
    }
    for d in due {
        match d {
            Due::Ping(key) => {
                shard.send_to(key, ping_frame());
                if let Some(c) = shard.conns.borrow_mut().get_mut(key) {
                    c.ping_sent = Some(now);
                }
            }
            Due::PongMissing(key) => {
                let code = ErrorCode::PongNotReceived;
                shard.begin_close(key, code.code(), Some(code));
            }
            Due::ForceShut(fd) => conn::shutdown(fd, libc::SHUT_RDWR),
            Due::Unauthenticated(key) => {
                let code = ErrorCode::Unauthorized;
                let msg = "The connection did not sign in or join a private channel in time.";
                shard.send_to(key, error_frame(code, Some(msg)));
                shard.begin_close(key, code.code(), None);
            }
        }
    }
    shard.expire_cache(now);
    shard.expire_leaves(now);
    shard.flush_dirty();
}
