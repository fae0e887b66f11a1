#!/usr/bin/env bash
# The one test command of corecast: `bash tests/run.sh` from anywhere in the repo.
# Needs Rust (cargo, rustfmt, clippy) and Node.js 20+ with npm; everything else it installs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
  printf '\n==== %s ====\n' "$*"
}

# ---- tools --------------------------------------------------------------------
step "tools"
for tool in cargo node npm; do
  command -v "$tool" >/dev/null || { echo "tests/run.sh: '$tool' is not installed" >&2; exit 1; }
done
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || { echo "tests/run.sh: Node.js 20 or newer is required, found $(node --version)" >&2; exit 1; }
cargo --version
node --version

# ---- system services --------------------------------------------------------
# The redis adapter tests start their own redis-server on free ports; install it
# when the machine lacks it.
if ! command -v redis-server >/dev/null 2>&1; then
  step "apt-get install -y redis-server"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  fi
  # Debian starts a system instance on 6379; the tests do not use it.
  (service redis-server stop || true) >/dev/null 2>&1
fi

# The SQL app manager tests start their own MariaDB and PostgreSQL servers on free
# ports, with data in temporary directories; install them when the machine lacks them.
sql_packages=()
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  sql_packages+=(mariadb-server)
fi
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  sql_packages+=(postgresql)
fi
if [ "${#sql_packages[@]}" -gt 0 ]; then
  step "apt-get install -y ${sql_packages[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${sql_packages[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${sql_packages[@]}"
  fi
  # Debian starts system instances on 3306 and 5432; the tests do not use them.
  (service mariadb stop || true) >/dev/null 2>&1
  (service postgresql stop || true) >/dev/null 2>&1
fi

# The bench report test renders its HTML in headless Chromium; the perf check runs
# callgrind (valgrind) and perf stat (linux-perf).
perf_packages=()
command -v chromium >/dev/null 2>&1 || perf_packages+=(chromium)
command -v valgrind >/dev/null 2>&1 || perf_packages+=(valgrind)
command -v perf >/dev/null 2>&1 || perf_packages+=(linux-perf)
if [ "${#perf_packages[@]}" -gt 0 ]; then
  step "apt-get install -y ${perf_packages[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${perf_packages[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${perf_packages[@]}"
  fi
fi

# ---- Rust ---------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --all-targets -- -D warnings

step "cargo test"
cargo test --no-fail-fast

step "perf regression check (tests/perf.sh)"
bash tests/perf.sh

step "cargo build --bin corecast (the binary the e2e suite runs)"
cargo build --bin corecast

# ---- end-to-end: real pusher-js / pusher / laravel-echo clients -------------------
step "npm ci (tests/e2e)"
(cd tests/e2e && npm ci --no-audit --no-fund)

step "node --test tests/e2e (serial)"
export CORECAST_BIN="${CORECAST_BIN:-$PWD/target/debug/corecast}"
# Last on purpose: the runner's own summary (# pass N / # fail N) closes the output.
node --test --test-concurrency=1 tests/e2e/
