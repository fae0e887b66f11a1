//! Redis Sentinel: finding the master of a named instance, and hearing when it moves.
//!
//! With [`RedisOptions::sentinels`] set, every connect (commands and pub/sub alike) asks
//! the sentinels for the master's address as Redis's Sentinel client guidelines describe:
//! each sentinel in turn, the one that answered last first, is asked `SENTINEL
//! get-master-addr-by-name <name>`; the address given must then answer `ROLE` with
//! `master` (see `client.rs`). Any failure moves on to the next sentinel; when none
//! names a master the connect fails with [`RedisError::NoMaster`], which lists what each
//! sentinel said.
//!
//! [`watch`] listens to `+switch-master` on one sentinel at a time. A switch of our
//! instance makes every connection made before it fail its next call (or a pending
//! pub/sub read) with [`RedisError::NotMaster`], so its owner reconnects to the new
//! master at once instead of writing to the old one until Sentinel demotes it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::client::{Backoff, Connection, RedisError, RedisOptions, Reply, Subscriber};
use crate::config::RedisConfig;

/// The sentinels of one Redis instance (Soketi's `database.redis.sentinels`, `.name` and
/// `.sentinelPassword`). Clones share what they learn: which sentinel answered last and
/// the switches announced.
#[derive(Clone)]
pub struct Sentinels {
    addrs: Arc<[(String, u16)]>,
    name: String,
    password: Option<String>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The sentinel that answered last (or announced the last switch): asked first.
    preferred: AtomicUsize,
    /// `+switch-master` events seen for this instance.
    switches: AtomicU64,
    /// Tasks waiting for the next switch.
    waiting: Mutex<Vec<Waker>>,
}

impl Sentinels {
    /// Sentinels at `addrs` monitoring the instance `name`; `password` is their `AUTH`.
    /// `addrs` must not be empty.
    pub fn new(
        addrs: Vec<(String, u16)>,
        name: impl Into<String>,
        password: Option<String>,
    ) -> Self {
        assert!(!addrs.is_empty(), "at least one sentinel");
        Self {
            addrs: addrs.into(),
            name: name.into(),
            password,
            shared: Arc::default(),
        }
    }

    /// The sentinels of the redis adapter's configuration, if it lists any.
    pub fn from_config(redis: &RedisConfig) -> Option<Self> {
        (!redis.sentinels.is_empty()).then(|| {
            Self::new(
                redis.sentinels.clone(),
                redis.name.clone(),
                redis.sentinel_password.clone(),
            )
        })
    }

    /// The instance name asked for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sentinels' addresses, as configured.
    pub fn addrs(&self) -> &[(String, u16)] {
        &self.addrs
    }

    /// Marks the present moment: [`SwitchMark::moved`] tells later whether a switch was
    /// announced since.
    pub(crate) fn mark(&self) -> SwitchMark {
        SwitchMark {
            shared: Arc::clone(&self.shared),
            seen: self.shared.switches.load(Ordering::Acquire),
        }
    }

    /// Wakes every connection made before now: the master moved.
    pub fn announce_switch(&self) {
        self.shared.switches.fetch_add(1, Ordering::AcqRel);
        let waiting = std::mem::take(&mut *lock(&self.shared.waiting));
        for waker in waiting {
            waker.wake();
        }
    }

    /// The master's address: each sentinel in turn, the one that answered last first,
    /// each given a share of `budget`.
    pub(crate) async fn master(&self, budget: Duration) -> Result<(String, u16), RedisError> {
        let n = self.addrs.len();
        let share = u32::try_from(n).unwrap_or(u32::MAX);
        let per = (budget / share).max(Duration::from_millis(100));
        let first = self.shared.preferred.load(Ordering::Relaxed) % n;
        let mut answers = Vec::with_capacity(n);
        for k in 0..n {
            let i = (first + k) % n;
            let (host, port) = &self.addrs[i];
            match monoio::time::timeout(per, self.ask(i, per)).await {
                Ok(Ok(Some(addr))) => {
                    self.shared.preferred.store(i, Ordering::Relaxed);
                    return Ok(addr);
                }
                Ok(Ok(None)) => answers.push(format!("{host}:{port} does not know it")),
                Ok(Err(e)) => answers.push(format!("{host}:{port}: {e}")),
                Err(_) => answers.push(format!("{host}:{port}: no answer within {per:?}")),
            }
        }
        Err(RedisError::NoMaster {
            name: self.name.clone(),
            answers: answers.join("; "),
        })
    }

    /// One sentinel's answer: the address, or `None` when it does not know the name.
    async fn ask(&self, i: usize, timeout: Duration) -> Result<Option<(String, u16)>, RedisError> {
        // Boxed: connecting to the master through sentinels is itself a connect.
        let mut conn = Box::pin(Connection::connect(&self.options(i, timeout))).await?;
        let reply = conn
            .call(&[
                b"SENTINEL",
                b"get-master-addr-by-name",
                self.name.as_bytes(),
            ])
            .await?;
        match reply {
            Reply::Nil => Ok(None),
            Reply::Array(items) if items.is_empty() => Ok(None),
            Reply::Array(items) => match items.as_slice() {
                [Reply::Bulk(host), Reply::Bulk(port)] => {
                    let host = String::from_utf8_lossy(host).into_owned();
                    let port = std::str::from_utf8(port)
                        .ok()
                        .and_then(|p| p.parse::<u16>().ok())
                        .ok_or_else(|| RedisError::Protocol(format!("sentinel port {port:?}")))?;
                    Ok(Some((host, port)))
                }
                other => Err(RedisError::Protocol(format!(
                    "unexpected sentinel answer {other:?}"
                ))),
            },
            other => Err(RedisError::Protocol(format!(
                "unexpected sentinel answer {other:?}"
            ))),
        }
    }

    /// How to connect to sentinel `i`.
    fn options(&self, i: usize, connect_timeout: Duration) -> RedisOptions {
        let (host, port) = &self.addrs[i];
        RedisOptions {
            host: host.clone(),
            port: *port,
            username: None,
            password: self.password.clone(),
            db: 0,
            connect_timeout,
            sentinels: None,
        }
    }
}

impl fmt::Debug for Sentinels {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinels")
            .field("addrs", &self.addrs)
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// When a connection was made, in switches announced.
pub(crate) struct SwitchMark {
    shared: Arc<Shared>,
    seen: u64,
}

impl SwitchMark {
    /// A switch was announced since the mark.
    pub(crate) fn moved(&self) -> bool {
        self.shared.switches.load(Ordering::Acquire) != self.seen
    }

    /// Resolves once a switch is announced after the mark.
    pub(crate) fn switched(&self) -> Switched {
        Switched {
            shared: Arc::clone(&self.shared),
            seen: self.seen,
        }
    }
}

/// See [`SwitchMark::switched`].
pub(crate) struct Switched {
    shared: Arc<Shared>,
    seen: u64,
}

impl Future for Switched {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut waiting = lock(&self.shared.waiting);
        // Read under the lock: an announcement either is seen here or wakes us.
        if self.shared.switches.load(Ordering::Acquire) != self.seen {
            return Poll::Ready(());
        }
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Subscribes to `+switch-master` on one sentinel (the next one when it fails) and
/// announces each switch of our instance, then calls `on_switch` (to wake a task that
/// holds idle connections); runs as long as its task.
pub async fn watch(sentinels: Sentinels, on_switch: impl Fn()) {
    let n = sentinels.addrs.len();
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let mut i = sentinels.shared.preferred.load(Ordering::Relaxed) % n;
    loop {
        let opts = sentinels.options(i, Duration::from_secs(2));
        if let Ok(mut sub) = Subscriber::connect(&opts).await
            && sub.subscribe(&[b"+switch-master"]).await.is_ok()
        {
            backoff.reset();
            while let Ok((_, payload)) = sub.next_message().await {
                // "<name> <old ip> <old port> <new ip> <new port>"
                let text = String::from_utf8_lossy(&payload);
                let words: Vec<&str> = text.split(' ').collect();
                if words.first() != Some(&sentinels.name.as_str()) {
                    continue;
                }
                let new = match words.as_slice() {
                    [_, _, _, host, port] => format!("{host}:{port}"),
                    _ => "a new address".to_owned(),
                };
                eprintln!(
                    "corecast: sentinel {}:{} moved master {} to {new}; reconnecting",
                    opts.host, opts.port, sentinels.name
                );
                // The sentinel that announced it knows the new master: ask it first.
                sentinels.shared.preferred.store(i, Ordering::Relaxed);
                sentinels.announce_switch();
                on_switch();
            }
        }
        i = (i + 1) % n;
        monoio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinels() -> Sentinels {
        Sentinels::new(
            vec![("127.0.0.1".into(), 26379)],
            "mymaster",
            Some("s3cret".into()),
        )
    }

    #[test]
    fn debug_output_hides_the_password() {
        let shown = format!("{:?}", sentinels());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("mymaster"), "{shown}");
    }

    #[test]
    fn a_mark_sees_switches_announced_after_it_only() {
        let s = sentinels();
        let before = s.mark();
        assert!(!before.moved());
        s.announce_switch();
        assert!(before.moved());
        assert!(!s.clone().mark().moved());
    }

    #[test]
    fn a_switch_wakes_the_waiting_task() {
        let s = sentinels();
        let mark = s.mark();
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let announcer = s.clone();
            monoio::spawn(async move {
                monoio::time::sleep(Duration::from_millis(20)).await;
                announcer.announce_switch();
            });
            let woke = monoio::time::timeout(Duration::from_secs(2), mark.switched()).await;
            assert!(woke.is_ok(), "the switch did not wake the waiting future");
        });
    }
}
