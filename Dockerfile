# syntax=docker/dockerfile:1
#
# corecast image: the release binary on debian:bookworm-slim, run as a non-root user.
#
#   docker build -t corecast .
#   docker run --rm -p 6001:6001 -p 9601:9601 -e SOKETI_METRICS_ENABLED=true corecast
#
# io_uring and containers: Docker's default seccomp profile blocks io_uring_setup,
# io_uring_enter and io_uring_register (since Docker Engine 25; containerd 2's default
# profile, used by Kubernetes' RuntimeDefault, does the same). corecast then starts on
# monoio's epoll driver: it still works, at a higher CPU cost per delivery. The start-up
# log says which driver runs and why:
#   corecast: io driver io_uring (4096 entries)
#   corecast: io driver epoll (io_uring refused: Operation not permitted (os error 1); likely a seccomp filter (container))
# and so does the metric corecast_io_driver{shard,driver} on the metrics port. To let
# corecast use io_uring, run the container with a seccomp profile that allows the three
# syscalls (or, less strictly, with no seccomp filter at all), and lift the limits:
#   docker run --security-opt seccomp=/path/to/corecast-seccomp.json \
#     --ulimit memlock=-1 --ulimit nofile=1048576:1048576 ...
#   docker run --security-opt seccomp=unconfined --ulimit memlock=-1 ...
# Set CORECAST_IO_DRIVER=io_uring to make the start fail instead of falling back.
# See tuning/README.md ("Containers and io_uring") for how to build the profile.
#
# Stopping: on SIGTERM corecast drains for SOKETI_SHUTDOWN_GRACE_PERIOD (3000 ms by
# default); docker stop waits 10 s before SIGKILL, so raise --stop-timeout if you raise
# the grace period.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches speed up rebuilds (BuildKit); the binary is copied out
# of the cached target directory in the same step. Debug info is stripped, symbols stay
# for backtraces.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && objcopy --strip-debug target/release/corecast /usr/local/bin/corecast

FROM debian:bookworm-slim
# ca-certificates follows Debian's security updates; a pinned version would go stale.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin corecast
COPY --from=build /usr/local/bin/corecast /usr/local/bin/corecast
# A numeric user, so orchestrators can check that it is not root.
USER 10001:10001
# WebSocket and REST API; metrics (SOKETI_METRICS_ENABLED=true).
EXPOSE 6001 9601
STOPSIGNAL SIGTERM
# GET /ready on the main port over plain HTTP: 200 while serving, 503 while draining.
# With TLS (SOKETI_SSL_*) point a health check at the metrics port instead, or run with
# --no-healthcheck.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SOKETI_PORT:-6001} && printf 'GET %s/ready HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' \"${SOKETI_PATH_PREFIX}\" >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["corecast"]
CMD ["start"]
