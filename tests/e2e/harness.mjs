// Test harness for the corecast end-to-end suite.
//
// Starts the real `corecast` binary on a free port and hands out real clients:
// pusher-js (what browsers and Laravel Echo use), the official `pusher` server
// library, raw WebSockets (`ws`) and hand-signed REST requests. Every wait has a
// timeout and every resource is tracked so a failing test still cleans up.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createHash, createHmac } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import PusherServer from 'pusher';
import Pusher from 'pusher-js';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..');

/** The default app every Soketi (and so corecast) instance serves out of the box. */
export const APP = Object.freeze({ id: 'app-id', key: 'app-key', secret: 'app-secret' });

const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 3_000;
const LOG_TAIL_BYTES = 64 * 1024;

/** Every server this process started and has not stopped yet. */
const liveServers = new Set();

// If the test process dies without running its `after` hooks, do not leave a server behind.
process.on('exit', () => {
  for (const server of liveServers) {
    try {
      server.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

const handedOut = new Set();

/** The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`). */
function ephemeralRange() {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (low > 0 && high >= low) return [low, high];
  } catch {
    // not Linux: assume its default
  }
  return [32768, 60999];
}

function canBind(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/**
 * Resolves with a TCP port that nothing listens on right now, for a server that must keep
 * its port across a restart: outside the kernel's ephemeral range, so no `listen(0)` and no
 * outgoing connection's source port (a client reconnecting to the stopped server could
 * even connect to itself) takes it in between, and never one handed out before. Servers
 * that need no fixed port listen on port 0 instead (see `startServer`).
 */
export async function freePort() {
  const [low, high] = ephemeralRange();
  const [start, span] = low - 1024 >= 65535 - high ? [1024, low - 1024] : [high + 1, 65535 - high];
  for (let i = 0; i < 1000; i++) {
    const port = start + Math.floor(Math.random() * span);
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    if (await canBind(port)) return port;
  }
  throw new Error(`no free port outside the ephemeral range ${low}-${high}`);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Rejects with `label` if `promise` has not settled within `ms`.
 * The timer is cleared either way so it never keeps the process alive.
 */
export function withTimeout(promise, ms, label) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `conditionFn` (sync or async) until it returns truthy; rejects after `timeoutMs`. */
export async function waitFor(conditionFn, timeoutMs = 10_000, label = 'condition', intervalMs = 20) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await conditionFn();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${label}${why}`);
    }
    await sleep(intervalMs);
  }
}

/**
 * Resolves with the data of the next `event` emitted by a pusher-js channel, connection
 * or client (anything with bind/unbind); rejects after `timeoutMs`.
 */
export function once(target, event, timeoutMs = 10_000) {
  let handler;
  const fired = new Promise((resolve) => {
    handler = (data) => resolve(data);
    target.bind(event, handler);
  });
  const name = target.name ? `${target.name} ${event}` : event;
  return withTimeout(fired, timeoutMs, `event ${name}`).finally(() => target.unbind(event, handler));
}

/**
 * Spawns `corecast start` with `CORECAST_SHARDS=shards` and waits for `GET /ready` to
 * answer 200. Without `port` the server listens on port 0 (its metrics listener too), so
 * the kernel picks ports no other server holds; the ports are read from its start-up
 * lines. Inherited SOKETI_* and CORECAST_* variables are dropped so the server runs on
 * its documented defaults plus `env`.
 */
export async function startServer({ shards = 2, env = {}, port: fixedPort } = {}) {
  const bin = process.env.CORECAST_BIN || path.join(REPO_ROOT, 'target', 'debug', 'corecast');
  let port = fixedPort ?? 0;
  let metricsPort;

  const childEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SOKETI_') && !k.startsWith('CORECAST_')) childEnv[k] = v;
  }
  Object.assign(childEnv, {
    SOKETI_PORT: String(port),
    // Keep a metrics listener (if enabled) off the shared default port 9601.
    SOKETI_METRICS_SERVER_PORT: '0',
    CORECAST_SHARDS: String(shards),
    ...env,
  });

  const proc = spawn(bin, ['start'], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const keep = (chunk) => {
    log += chunk.toString();
    // The bound ports, from the server's own start-up lines.
    const listening = /corecast: listening on .*:(\d+)\s/.exec(log);
    if (listening) server.port = port = Number(listening[1]);
    const metrics = /corecast: metrics on .*:(\d+)\s/.exec(log);
    if (metrics) server.metricsPort = metricsPort = Number(metrics[1]);
    if (log.length > LOG_TAIL_BYTES) log = log.slice(-LOG_TAIL_BYTES);
    if (process.env.CORECAST_E2E_LOG) process.stderr.write(chunk);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);

  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exitInfo = { code, signal, at: Date.now() };
      liveServers.delete(server);
      resolve(exitInfo);
    });
    proc.on('error', (err) => {
      exitInfo = { code: null, signal: null, error: err, at: Date.now() };
      liveServers.delete(server);
      resolve(exitInfo);
    });
  });

  const server = {
    port,
    /** The metrics listener's port (serving only with SOKETI_METRICS_ENABLED). */
    metricsPort,
    proc,
    /** Resolves with `{ code, signal, at }` when the process exits. */
    exited,
    exitInfo: () => exitInfo,
    /** The last 64 KiB of the server's stdout and stderr. */
    log: () => log,
    /** Sends SIGTERM, then SIGKILL after 3 s; resolves once the process is gone. */
    async stop() {
      liveServers.delete(server);
      if (exitInfo) return exitInfo;
      proc.kill('SIGTERM');
      let timer;
      const grace = new Promise((resolve) => {
        timer = setTimeout(() => resolve(null), STOP_GRACE_MS);
      });
      const graceful = await Promise.race([exited, grace]).finally(() => clearTimeout(timer));
      if (graceful) return graceful;
      proc.kill('SIGKILL');
      return exited;
    },
  };
  liveServers.add(server);

  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exitInfo) {
      liveServers.delete(server);
      const how = exitInfo.error ? `failed to spawn ${bin}: ${exitInfo.error.message}` : `exited with ${JSON.stringify(exitInfo)}`;
      throw new Error(`corecast ${how} before /ready answered 200.\n--- server output ---\n${log}`);
    }
    try {
      if (!port) throw new Error('not listening yet');
      const res = await fetch(`http://127.0.0.1:${port}/ready`, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status === 200) return server;
    } catch {
      // not listening yet
    }
    if (Date.now() >= deadline) {
      await server.stop();
      throw new Error(`corecast did not answer 200 on /ready within ${READY_TIMEOUT_MS} ms.\n--- server output ---\n${log}`);
    }
    await sleep(50);
  }
}

/** A pusher-js client for the default app on `port`; `opts` override the defaults. */
export function pusherClient(port, opts = {}) {
  return new Pusher(APP.key, {
    wsHost: '127.0.0.1',
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1',
    ...opts,
  });
}

/** Resolves once a pusher-js client is `connected`; rejects after `timeoutMs`. */
export function connected(client, timeoutMs = 10_000) {
  if (client.connection.state === 'connected') return Promise.resolve(client);
  return once(client.connection, 'connected', timeoutMs).then(() => client);
}

/** Subscribes a pusher-js client to `name` and resolves with the channel once the server confirms. */
export async function subscribe(client, name, timeoutMs = 10_000) {
  const channel = client.subscribe(name);
  if (!channel.subscribed) await once(channel, 'pusher:subscription_succeeded', timeoutMs);
  return channel;
}

/** The official `pusher` server library pointed at `port`; `opts` override the defaults. */
export function restClient(port, opts = {}) {
  return new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: '127.0.0.1',
    port,
    useTLS: false,
    timeout: 10_000,
    ...opts,
  });
}

/**
 * Tracks things to close at the end of a test or suite. `add` returns its argument so it
 * can wrap a constructor call; `closeAll` never throws.
 */
export function cleanup() {
  const closers = [];
  return {
    add(thing, close) {
      closers.push(close ?? (() => defaultClose(thing)));
      return thing;
    },
    async closeAll() {
      while (closers.length) {
        const close = closers.pop();
        try {
          await close();
        } catch {
          // best effort: keep closing the rest
        }
      }
    },
  };
}

function defaultClose(thing) {
  if (thing instanceof Pusher) return thing.disconnect();
  if (thing instanceof WebSocket) return thing.terminate();
  if (thing && typeof thing.destroy === 'function') return thing.destroy();
  if (thing && typeof thing.close === 'function') return thing.close();
  if (thing && typeof thing.stop === 'function') return thing.stop();
  return undefined;
}

// ---------------------------------------------------------------------------
// Raw WebSocket client: sees exactly what the server puts on the wire.
// ---------------------------------------------------------------------------

/**
 * Opens a raw WebSocket to `ws://127.0.0.1:{port}{path}`. Every text message is parsed
 * as JSON (or kept as `{ raw }`) and queued. The returned object offers:
 * - `next(predicate?, timeoutMs?)`: the next not-yet-consumed message that matches;
 * - `send(obj)`: JSON-encodes and sends;
 * - `closed`: resolves with `{ code, reason, at }` when the connection closes (`at` in ms);
 * - `isOpen()`, `messages` (everything received, each with a non-enumerable
 *   `receivedAt` timestamp in ms), `ws`.
 */
export function rawWs(port, pathAndQuery) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${pathAndQuery}`);
  const messages = [];
  const consumed = new Set();
  const waiters = new Set();

  let closeInfo = null;
  const closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      closeInfo = { code, reason: reason.toString(), at: Date.now() };
      resolve(closeInfo);
      for (const w of waiters) w.check();
    });
  });
  // A socket error is followed by `close`; keep it from becoming an uncaught exception.
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    const text = data.toString();
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      msg = { raw: text };
    }
    if (isBinary) msg = { binary: text };
    // Non-enumerable, so deepEqual and JSON.stringify see only what the server sent.
    Object.defineProperty(msg, 'receivedAt', { value: Date.now(), enumerable: false });
    messages.push(msg);
    for (const w of waiters) w.check();
  });

  const opened = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('close', (code) => reject(new Error(`closed with ${code} before opening`)));
  });
  opened.catch(() => {});

  function next(predicate = () => true, timeoutMs = 10_000, label = 'message') {
    let waiter;
    const found = new Promise((resolve, reject) => {
      waiter = {
        done: false,
        check() {
          // A settled waiter stays in the set until its `finally` runs; it must not take
          // (and so hide) a message meant for the next waiter meanwhile.
          if (waiter.done) return;
          for (let i = 0; i < messages.length; i++) {
            if (!consumed.has(i) && predicate(messages[i])) {
              consumed.add(i);
              waiter.done = true;
              resolve(messages[i]);
              return;
            }
          }
          if (closeInfo) {
            waiter.done = true;
            reject(new Error(`connection closed (${closeInfo.code}) before ${label}; received: ${JSON.stringify(messages)}`));
          }
        },
      };
      waiters.add(waiter);
      waiter.check();
    });
    return withTimeout(found, timeoutMs, `${label}; received so far: ${JSON.stringify(messages).slice(0, 2000)}`).finally(() =>
      waiters.delete(waiter),
    );
  }

  return {
    ws,
    messages,
    opened,
    closed,
    next,
    /** Resolves with the next message whose `event` is `event` (and `channel`, if given). */
    nextEvent(event, channel, timeoutMs = 10_000) {
      return next((m) => m.event === event && (channel === undefined || m.channel === channel), timeoutMs, `event ${event}`);
    },
    send(obj) {
      ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
    },
    isOpen: () => ws.readyState === WebSocket.OPEN,
    terminate: () => ws.terminate(),
  };
}

/** Opens a raw protocol-7 connection to the default app and waits for `connection_established`. */
export async function rawPusher(port, timeoutMs = 10_000) {
  const client = rawWs(port, `/app/${APP.key}?protocol=7&client=js&version=8.6.0&flash=false`);
  const established = await client.nextEvent('pusher:connection_established', undefined, timeoutMs);
  client.established = JSON.parse(established.data);
  return client;
}

// ---------------------------------------------------------------------------
// Hand-signed REST requests, as https://pusher.com/docs/channels/library_auth_reference/rest-api
// describes: HMAC-SHA256 over "METHOD\nPATH\nsorted-query", body_md5 for bodies.
// ---------------------------------------------------------------------------

export const md5Hex = (text) => createHash('md5').update(text).digest('hex');

/**
 * Builds a signed URL for the REST API. Every part can be overridden to forge a bad
 * request: `key`, `secret`, `timestamp` (seconds), `bodyMd5`, `signature`.
 */
export function signedUrl(port, { method = 'POST', path: reqPath, body, key = APP.key, secret = APP.secret, timestamp, bodyMd5, signature, params = {} }) {
  const query = {
    auth_key: key,
    auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    ...params,
  };
  if (body !== undefined) query.body_md5 = bodyMd5 ?? md5Hex(body);
  const sorted = Object.keys(query)
    .sort()
    .map((k) => `${k}=${query[k]}`)
    .join('&');
  const toSign = [method.toUpperCase(), reqPath, sorted].join('\n');
  const sig = signature ?? createHmac('sha256', secret).update(toSign).digest('hex');
  return `http://127.0.0.1:${port}${reqPath}?${sorted}&auth_signature=${sig}`;
}

/**
 * Sends a signed REST request with `fetch` and resolves with `{ status, text, json }`
 * (`json` is undefined when the body is not JSON). `body` is sent exactly as given.
 */
export async function signedRequest(port, opts) {
  const { method = 'POST', body } = opts;
  const url = signedUrl(port, opts);
  const res = await fetch(url, {
    method,
    body,
    headers: body !== undefined ? { 'content-type': 'application/json' } : {},
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json, headers: res.headers };
}
