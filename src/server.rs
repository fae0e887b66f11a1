//! Starting the server: build the app table and the ring mesh, start one shard per core,
//! and wait for them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crate::app::AppTable;
use crate::config::Config;
use crate::fanout::{self, InboxWaker};
use crate::shard::{self, ServerState};

/// A running server: its shards' threads and the address they listen on.
pub struct Server {
    /// The bound address (useful when the port was 0).
    pub addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
    state: Arc<ServerState>,
    wakers: Vec<InboxWaker>,
}

impl Server {
    /// Asks every shard to stop: no new connections, `pusher:error` 4200 to every client,
    /// REST requests in flight finish; each shard stops within the grace period.
    pub fn shutdown(&self) {
        self.state.shutting_down.store(true, Ordering::Release);
        for w in &self.wakers {
            w.poke();
        }
    }

    /// Waits for every shard to stop.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts every shard and returns once all of them listen.
pub fn start(config: Config) -> io::Result<Server> {
    let shards = config.shards.max(1);
    let config = Arc::new(Config { shards, ..config });
    let apps = Arc::new(AppTable::new(config.apps.clone()));
    let node = node_id();
    let (tx, rx) = std::sync::mpsc::channel();
    let all_bound = Arc::new(std::sync::Barrier::new(shards));
    let state = Arc::new(ServerState::default());
    let mut threads = Vec::with_capacity(shards);
    let mut wakers = Vec::with_capacity(shards);
    for (id, links) in fanout::mesh(shards, config.ring_capacity)
        .into_iter()
        .enumerate()
    {
        wakers.push(links.1.waker());
        threads.push(shard::spawn(
            id,
            Arc::clone(&config),
            Arc::clone(&apps),
            links,
            node,
            Arc::clone(&state),
            shard::Startup {
                ready: tx.clone(),
                all_bound: Arc::clone(&all_bound),
            },
        )?);
    }
    drop(tx);
    let mut addr = None;
    for _ in 0..shards {
        match rx.recv() {
            Ok(Ok(a)) => addr = Some(a),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a shard stopped before it was listening")),
        }
    }
    let addr = addr.ok_or_else(|| io::Error::other("no shard started"))?;
    Ok(Server {
        addr,
        threads,
        state,
        wakers,
    })
}

/// A per-process socket-id prefix below 10^9, from the clock and the pid.
fn node_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 32) % 1_000_000_000) as u32
}
