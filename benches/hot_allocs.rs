//! Heap allocations of the same hot-path cases as `benches/hot_paths.rs`, counted by
//! the counting allocator (`corecast::perf::alloc`), one run of each after its setup.
//! Prints one JSON object `{"case": allocations, ...}` on stdout, keyed like the
//! instruction counts (`function.id`); `tests/perf.sh` compares it with
//! `perf/baseline.json`. Allocation counts do not depend on the machine at all.

use std::hint::black_box;

use corecast::perf::alloc::{Counting, allocations};
use corecast::perf::{
    ClientEvent, Fanout, PresenceJoinLeave, RedisWire, RestPublish, RingPushDrain,
};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `run` alone.
fn count<T>(mut case: T, run: fn(&mut T) -> usize) -> u64 {
    let before = allocations();
    black_box(run(&mut case));
    let after = allocations();
    drop(case);
    after - before
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let counts = [
        (
            "rest_publish.signed",
            count(RestPublish::new(), RestPublish::run),
        ),
        (
            "client_event.routed",
            count(ClientEvent::new(), ClientEvent::run),
        ),
        ("fanout.subscribers_1", count(Fanout::new(1), Fanout::run)),
        (
            "fanout.subscribers_100",
            count(Fanout::new(100), Fanout::run),
        ),
        (
            "fanout.subscribers_10000",
            count(Fanout::new(10_000), Fanout::run),
        ),
        (
            "presence_join_leave.home_shard",
            count(PresenceJoinLeave::new(), PresenceJoinLeave::run),
        ),
        (
            "redis_wire.publish",
            count(RedisWire::new(), RedisWire::run),
        ),
        (
            "ring_push_drain.envelopes_64",
            count(RingPushDrain::new(), RingPushDrain::run),
        ),
    ];
    let map: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(name, n)| ((*name).to_string(), serde_json::json!(n)))
        .collect();
    println!("{}", serde_json::Value::Object(map));
}
