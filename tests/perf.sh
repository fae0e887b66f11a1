#!/usr/bin/env bash
# The perf regression check of corecast: `bash tests/perf.sh` from anywhere in the repo.
#
# 1. Instruction counts of the hot paths under callgrind (benches/hot_paths.rs, gungraun)
#    and their heap allocations (benches/hot_allocs.rs, counting allocator), sans-IO,
#    against perf/baseline.json: red when a benchmark's instructions grow by more than
#    the baseline's threshold_percent, or its allocations grow at all.
# 2. Per-delivery system counts of `corecast bench --scenario fanout` (syscalls,
#    io_uring submissions, allocations, bytes written) at 1 and 2 shards, against the
#    ceilings in perf/budgets.json.
#
# Options:
#   --update           re-record perf/baseline.json from this build (commit the diff)
#   --prove-it-bites   also build with the perf-slowdown feature (extra work in the frame
#                      encoder) and fail unless the check turns red on it
#   --no-system        skip step 2 (machines without perf or tracefs)
# Installs valgrind (apt) and gungraun-runner (cargo install) when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

update=0 bites=0 system=1
for arg in "$@"; do
  case "$arg" in
    --update) update=1 ;;
    --prove-it-bites) bites=1 ;;
    --no-system) system=0 ;;
    *) echo "tests/perf.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  fi
}

command -v valgrind >/dev/null 2>&1 || apt_install valgrind
if [ "$system" = 1 ] && ! command -v perf >/dev/null 2>&1; then
  apt_install linux-perf
fi
# The runner must be the version of the gungraun dev-dependency.
gungraun_version=$(sed -n 's/^gungraun = "=\([0-9.]*\)"/\1/p' Cargo.toml)
if [ "$(gungraun-runner --version 2>/dev/null | awk '{print $2}')" != "$gungraun_version" ]; then
  cargo install --locked gungraun-runner --version "$gungraun_version"
fi

out=target/perf
mkdir -p "$out"
features=bench,count-alloc

# Runs both benchmark binaries with the given features; results in $out/$1.*.
measure() {
  local tag=$1 feats=$2
  cargo bench --quiet --features "$feats" --bench hot_paths -- --output-format=json \
    > "$out/$tag.instructions.jsonl"
  cargo bench --quiet --features "$feats" --bench hot_allocs > "$out/$tag.allocations.json"
}

check() {
  local tag=$1; shift
  cargo bench --quiet --bench perf_check -- --baseline perf/baseline.json \
    --instructions "$out/$tag.instructions.jsonl" --allocations "$out/$tag.allocations.json" "$@"
}

echo "== hot paths: instructions (callgrind) and allocations"
measure now "$features"
if [ "$update" = 1 ]; then
  check now --update
  exit 0
fi

system_args=()
if [ "$system" = 1 ]; then
  echo "== system counts per delivery: corecast bench --scenario fanout"
  cargo build --quiet --release --features "$features" --bin corecast
  for shards in 1 2; do
    target/release/corecast bench --scenario fanout --shards "$shards" --connections 1000 \
      --channels 10 --rate 500 --duration 5 --warmup 1 --system-counts --json \
      > "$out/fanout-$shards-shard.json"
    system_args+=(--system "fanout-$shards-shard=$out/fanout-$shards-shard.json")
  done
  system_args+=(--budgets perf/budgets.json)
fi

status=0
check now "${system_args[@]}" || status=$?

if [ "$bites" = 1 ]; then
  echo "== the same check on a build with a slower frame encoder (perf-slowdown)"
  measure slow "$features,perf-slowdown"
  if check slow; then
    echo "tests/perf.sh: the check did not catch the perf-slowdown build" >&2
    exit 1
  fi
  echo "perf-slowdown build: red, as it must be"
fi
exit "$status"
