// Helpers for the operations suites (webhooks, metrics, quotas, graceful shutdown), on top
// of harness.mjs: a real HTTP webhook receiver that checks every request with the official
// `pusher` library's `webhook()` API, a Prometheus text parser and scraper for the metrics
// port, a server started with metrics on a known port, and a server spawned on a GIVEN port
// (the harness always picks a fresh one; the shutdown suite restarts on the same port).

import http from 'node:http';

import PusherServer from 'pusher';

import { APP, sleep, startServer, waitFor } from './harness.mjs';

// ---------------------------------------------------------------------------
// Webhook receiver
// ---------------------------------------------------------------------------

/** The `pusher` library as an app's webhook endpoint uses it (it only verifies; no requests). */
const verifier = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret });

/**
 * Checks one received webhook request exactly as an app would:
 * `pusher.webhook({ headers, rawBody })`, then `isValid()` and `getEvents()`.
 * Returns `{ valid, events, data }` (`events`/`data` undefined when the body is not JSON).
 */
export function verifyWebhook(headers, rawBody) {
  const hook = verifier.webhook({ headers, rawBody });
  let events;
  let data;
  try {
    data = hook.getData();
    events = hook.getEvents();
  } catch {
    // isValid() is false then; keep undefined
  }
  return { valid: hook.isValid(), events, data };
}

/**
 * Starts an HTTP server on 127.0.0.1:0 that records every request:
 * `{ n, path, method, headers, rawBody, valid, events, data, at, status }`.
 * `respond(path, attemptForPath, req)` (optional) picks the status code to answer with;
 * 200 by default. The receiver offers `url(path)`, `requests`, `on(path)` (requests to that
 * path), `events(path?)` (every event of every request, each with `request` attached),
 * `waitForEvents(predicate, count, timeoutMs, label, path?)` and `close()`.
 */
export async function webhookReceiver({ respond } = {}) {
  const requests = [];
  const perPath = new Map();
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      const urlPath = req.url.split('?')[0];
      const attempt = (perPath.get(urlPath) ?? 0) + 1;
      perPath.set(urlPath, attempt);
      const { valid, events, data } = verifyWebhook(req.headers, rawBody);
      let status = 200;
      try {
        status = respond ? respond(urlPath, attempt, req) ?? 200 : 200;
      } catch {
        status = 200;
      }
      const record = {
        n: requests.length + 1,
        path: urlPath,
        method: req.method,
        headers: req.headers,
        rawBody,
        valid,
        events,
        data,
        at: Date.now(),
        status,
      };
      requests.push(record);
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(status < 300 ? '{"ok":true}' : '{"error":"try again"}');
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();

  const on = (p) => requests.filter((r) => r.path === p);
  const events = (p) => {
    const out = [];
    for (const r of requests) {
      if (p !== undefined && r.path !== p) continue;
      for (const e of r.events ?? []) {
        const copy = { ...e };
        Object.defineProperty(copy, 'request', { value: r, enumerable: false });
        out.push(copy);
      }
    }
    return out;
  };

  return {
    port,
    url: (p = '/hook') => `http://127.0.0.1:${port}${p}`,
    requests,
    on,
    events,
    /** Resolves with the matching events once at least `count` arrived (on `p`, if given). */
    async waitForEvents(predicate, count = 1, timeoutMs = 5_000, label = 'webhook events', p) {
      try {
        return await waitFor(
          () => {
            const found = events(p).filter(predicate);
            return found.length >= count ? found : null;
          },
          timeoutMs,
          label,
        );
      } catch (err) {
        const seen = events(p).map((e) => JSON.stringify(e));
        throw new Error(`${err.message}; the receiver got ${requests.length} request(s) with events: [${seen.join(', ').slice(0, 3000)}]`);
      }
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** `SOKETI_DEFAULT_APP_WEBHOOKS` text for a list of webhook objects. */
export const webhooksEnv = (list) => JSON.stringify(list);

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/**
 * Parses the Prometheus text exposition format into `[{ name, labels, value }]`
 * (comments skipped; label values unescaped).
 */
export function parsePrometheus(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$/.exec(line.trim());
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let lm;
      while ((lm = re.exec(m[3]))) labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    }
    const raw = m[4];
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : Number(raw);
    samples.push({ name: m[1], labels, value });
  }
  return samples;
}

/** Samples named `name` whose labels include every pair of `labels`. */
export function series(samples, name, labels = {}) {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

/** The value of the one sample named `name` with `labels`; undefined when absent. */
export function metric(samples, name, labels = {}) {
  const found = series(samples, name, labels);
  return found.length ? found[0].value : undefined;
}

/** The sum of every sample named `name` with `labels` (e.g. over the `shard` label). */
export function metricSum(samples, name, labels = {}) {
  return series(samples, name, labels).reduce((a, s) => a + s.value, 0);
}

/** GETs `path` on the metrics port: `{ status, headers, text }`. */
export async function metricsGet(metricsPort, reqPath = '/metrics') {
  const res = await fetch(`http://127.0.0.1:${metricsPort}${reqPath}`, { signal: AbortSignal.timeout(5_000) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text };
}

/** Scrapes `/metrics` and parses it; throws unless it answers 200. */
export async function scrape(metricsPort) {
  const { status, text } = await metricsGet(metricsPort);
  if (status !== 200) throw new Error(`GET /metrics answered ${status}: ${text.slice(0, 500)}`);
  const samples = parsePrometheus(text);
  samples.text = text;
  return samples;
}

/**
 * Starts corecast (harness `startServer`) with metrics enabled on a port the kernel picks,
 * and waits until the metrics port answers `/`. Resolves with the harness server object,
 * whose `metricsPort` is that port.
 */
export async function startWithMetrics({ shards = 2, env = {} } = {}) {
  const server = await startServer({
    shards,
    env: { SOKETI_METRICS_ENABLED: 'true', ...env },
  });
  let metricsPort;
  try {
    await waitFor(
      async () => {
        metricsPort = server.metricsPort;
        if (!metricsPort) return false;
        const r = await metricsGet(metricsPort, '/');
        return r.status === 200;
      },
      5_000,
      'the metrics port to answer GET /',
    );
  } catch (err) {
    await server.stop();
    throw new Error(`${err.message}\n--- server output ---\n${server.log()}`);
  }
  return server;
}

// ---------------------------------------------------------------------------
// A server on a given port (for restarting on the same port)
// ---------------------------------------------------------------------------

/**
 * Starts `corecast start` on a GIVEN `port` (to restart a server on the same port) and
 * waits for `GET /ready` 200: the harness's server object (`port`, `metricsPort`, `proc`,
 * `exited`, `exitInfo()`, `log()`, `stop()`).
 */
export function spawnServerOn({ port, shards = 2, env = {} }) {
  return startServer({ port, shards, env });
}

/** Waits until `Date.now()` is within the first `ms` of a wall-clock second (rate windows are per second). */
export async function startOfSecond(ms = 80) {
  for (;;) {
    const into = Date.now() % 1000;
    if (into < ms) return;
    await sleep(Math.max(1, 1000 - into));
  }
}

/** A short unique suffix for channel names, so suites never share a channel. */
export const uniq = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
