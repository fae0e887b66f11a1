//! Instruction counts of corecast's hot paths under callgrind (gungraun), sans-IO: no
//! sockets, every input built by a setup that is not measured. Run through
//! `bash tests/perf.sh`, which compares the counts with `perf/baseline.json`; alone:
//! `cargo bench --features bench --bench hot_paths` (needs valgrind and
//! `gungraun-runner` of the same version as the `gungraun` dev-dependency).
//!
//! Each benchmark returns its case with the result, so dropping the case's state is not
//! counted: only the work of one publish, delivery, join or ring pass is.

use std::hint::black_box;

use corecast::perf::{
    ClientEvent, Fanout, PresenceJoinLeave, RedisWire, RestPublish, RingPushDrain,
};
use gungraun::{library_benchmark, library_benchmark_group, main};

#[library_benchmark]
#[bench::signed(setup = RestPublish::new)]
fn rest_publish(mut case: RestPublish) -> (RestPublish, usize) {
    let n = black_box(case.run());
    (case, n)
}

#[library_benchmark]
#[bench::routed(setup = ClientEvent::new)]
fn client_event(mut case: ClientEvent) -> (ClientEvent, usize) {
    let n = black_box(case.run());
    (case, n)
}

#[library_benchmark]
#[bench::subscribers_1(args = (1), setup = Fanout::new)]
#[bench::subscribers_100(args = (100), setup = Fanout::new)]
#[bench::subscribers_10000(args = (10_000), setup = Fanout::new)]
fn fanout(mut case: Fanout) -> (Fanout, usize) {
    let n = black_box(case.run());
    (case, n)
}

#[library_benchmark]
#[bench::home_shard(setup = PresenceJoinLeave::new)]
fn presence_join_leave(mut case: PresenceJoinLeave) -> (PresenceJoinLeave, usize) {
    let n = black_box(case.run());
    (case, n)
}

#[library_benchmark]
#[bench::publish(setup = RedisWire::new)]
fn redis_wire(mut case: RedisWire) -> (RedisWire, usize) {
    let n = black_box(case.run());
    (case, n)
}

#[library_benchmark]
#[bench::envelopes_64(setup = RingPushDrain::new)]
fn ring_push_drain(mut case: RingPushDrain) -> (RingPushDrain, usize) {
    let n = black_box(case.run());
    (case, n)
}

library_benchmark_group!(
    name = hot_paths;
    benchmarks = rest_publish, client_event, fanout, presence_join_leave, redis_wire, ring_push_drain
);

main!(library_benchmark_groups = hot_paths);
