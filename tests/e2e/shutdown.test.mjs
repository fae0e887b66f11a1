// Graceful shutdown as clients and load balancers see it, on CORECAST_SHARDS=2:
// on SIGTERM every WebSocket gets `pusher:error` 4200 ("reconnect immediately", Pusher's
// 4200-4299 range) and is closed with 4200; `/ready` answers 503 while the server drains;
// the process exits within SOKETI_SHUTDOWN_GRACE_PERIOD (+1 s). A new server started on the
// SAME port then gets the very same pusher-js clients back on their own (pusher-js retries at
// once on 4200 and keeps trying), with new socket ids, resubscribed to their channels.

import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, describe, test } from 'node:test';

import { APP, cleanup, connected, freePort, pusherClient, rawPusher, restClient } from './harness.mjs';
import { spawnServerOn, uniq } from './ops-helpers.mjs';
import { once, shardHint, subscribe, waitFor, withTimeout } from './protocol-helpers.mjs';

const GRACE_MS = 2_000;
/**
 * How long pusher-js may take to come back once the port refuses connections: it retries at
 * once on 4200, but after a refused TCP connect its transport strategy waits for its attempt
 * timer (15 s, pusher-js's default `SequentialStrategy` timeout) before trying again.
 */
const RECONNECT_AFTER_REFUSAL_MS = 20_000;

/** GET /ready on a keep-alive agent: `{ status, reused }` (reused: the request went on an existing socket). */
function getReady(port, agent) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/ready', agent }, (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode, reused: req.reusedSocket, connection: res.headers.connection }));
      });
      req.on('error', reject);
    }),
    2_000,
    'GET /ready',
  );
}

/**
 * A WebSocket client that completes the handshake by hand and then never answers the
 * server's close frame (a dead peer): it keeps a socket in the server's table during the drain.
 */
async function stubbornSocket(port) {
  const sock = net.connect(port, '127.0.0.1');
  let buf = '';
  await withTimeout(
    new Promise((resolve, reject) => {
      sock.on('error', reject);
      sock.on('connect', () => {
        sock.write(
          `GET /app/${APP.key}?protocol=7&client=js&version=8.6.0 HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
        );
      });
      sock.on('data', (d) => {
        buf += d.toString('latin1');
        if (buf.includes('connection_established')) resolve();
      });
    }),
    5_000,
    'the stubborn socket to be established',
  );
  sock.on('error', () => {});
  return { received: () => buf, destroy: () => sock.destroy() };
}

/** Collapses consecutive equal observations: `what @first-last ms (xN)`. */
function summarize(seen) {
  const out = [];
  for (const s of seen) {
    const last = out[out.length - 1];
    if (last && last.what === s.what) {
      last.to = s.ms;
      last.n += 1;
    } else out.push({ what: s.what, from: s.ms, to: s.ms, n: 1 });
  }
  return out.map((o) => `${o.what} @${o.from}${o.to !== o.from ? `-${o.to}` : ''} ms${o.n > 1 ? ` (x${o.n})` : ''}`).join('; ');
}

describe('graceful shutdown on SIGTERM over 2 shards', { timeout: 55_000 }, () => {
  const resources = cleanup();
  const servers = [];

  after(async () => {
    await resources.closeAll();
    for (const s of servers) await s.stop().catch(() => {});
  });

  test('clients_get_4200_ready_is_503_during_drain_exit_within_grace_and_reconnect_to_a_new_server_on_the_same_port', { timeout: 45_000 }, async () => {
    const port = await freePort();
    const env = { SOKETI_SHUTDOWN_GRACE_PERIOD: String(GRACE_MS) };
    const a = await spawnServerOn({ port, shards: 2, env });
    servers.push(a);

    // pusher-js clients on both shards, subscribed to a channel, recording errors and states.
    const name = `shutdown-${uniq()}`;
    const clients = [];
    for (let i = 0; i < 6; i++) {
      const c = resources.add(pusherClient(port));
      c.errors = [];
      c.states = [];
      c.connection.bind('error', (e) => c.errors.push(e));
      c.connection.bind('state_change', (s) => c.states.push(s.current));
      await connected(c);
      c.firstSocketId = c.connection.socket_id;
      c.channelRef = await subscribe(c, name);
      clients.push(c);
    }
    const shardsA = new Set(clients.map((c) => shardHint(c.firstSocketId)));

    // A raw socket to see the exact wire messages, and one that never completes the close.
    const raw = await rawPusher(port);
    resources.add(raw, () => raw.terminate());
    const stubborn = await stubbornSocket(port);
    resources.add(stubborn, () => stubborn.destroy());

    // A keep-alive HTTP connection, used before and during the drain.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    resources.add(agent, () => agent.destroy());
    const before = await getReady(port, agent);
    assert.equal(before.status, 200, `/ready before SIGTERM: ${JSON.stringify(before)}`);

    const sigAt = Date.now();
    a.proc.kill('SIGTERM');

    // /ready turns 503 while draining: on the existing keep-alive connection, or on a new one.
    const readySeen = [];
    const note = (what) => readySeen.push({ ms: Date.now() - sigAt, what });
    const ready503 = await waitFor(
      async () => {
        let r;
        try {
          r = await getReady(port, agent);
          note(`keep-alive ${r.status}${r.reused ? ' (reused socket)' : ' (new socket)'}`);
        } catch (err) {
          note(`keep-alive error ${err.code ?? err.message}`);
          try {
            r = await getReady(port, undefined);
            note(`new connection ${r.status}`);
          } catch (err2) {
            note(`new connection error ${err2.code ?? err2.message}`);
            return null;
          }
        }
        return r.status === 503 ? r : null;
      },
      GRACE_MS,
      '/ready to answer 503 during the drain',
      5,
    ).catch((err) => {
      const exit = a.exitInfo();
      const exitMs = exit ? `${exit.at - sigAt} ms after SIGTERM` : 'not yet';
      throw new Error(`${err.message}; /ready answers (ms after SIGTERM): ${summarize(readySeen)}; server A exited: ${exitMs} ${JSON.stringify(exit)}`);
    });
    assert.equal(ready503.status, 503);
    assert.ok(
      readySeen.every((r) => !/ (?!200|503)\d{3}/.test(r.what)),
      `unexpected /ready answers: ${summarize(readySeen)}`,
    );

    // Every client was told to reconnect: pusher:error 4200 on the wire, then close 4200.
    const err = await raw.nextEvent('pusher:error', undefined, 3_000);
    const data = typeof err.data === 'string' ? JSON.parse(err.data) : err.data;
    assert.equal(data.code, 4200, `raw socket's pusher:error: ${JSON.stringify(err)}`);
    const closed = await withTimeout(raw.closed, 3_000, 'the raw socket to be closed');
    assert.equal(closed.code, 4200, `raw socket closed with ${closed.code}`);
    for (const c of clients) {
      await waitFor(() => c.errors.some((e) => e?.data?.code === 4200), 3_000, `pusher-js client ${c.firstSocketId} (shard ${shardHint(c.firstSocketId)} of ${[...shardsA]}) to see error 4200`).catch((e) => {
        throw new Error(`${e.message}; its errors: ${JSON.stringify(c.errors)}; states: ${JSON.stringify(c.states)}`);
      });
    }
    assert.match(stubborn.received(), /4200/, 'the stubborn socket did not get pusher:error 4200');

    // The process exits within the grace period (+1 s), even with a peer that never closes.
    const exit = await withTimeout(a.exited, GRACE_MS + 1_000 + 1_000, 'server A to exit').catch((e) => {
      throw new Error(`${e.message}: still running ${Date.now() - sigAt} ms after SIGTERM (grace ${GRACE_MS} ms)`);
    });
    const tookMs = exit.at - sigAt;
    assert.ok(tookMs <= GRACE_MS + 1_000, `server A exited ${tookMs} ms after SIGTERM (grace ${GRACE_MS} ms)`);
    assert.equal(exit.code, 0, `server A exit code: ${JSON.stringify(exit)}\n${a.log().slice(-2000)}`);
    for (const c of clients) assert.notEqual(c.connection.state, 'connected', `client ${c.firstSocketId} still says connected after server A exited`);

    // Server B on the same port: the same pusher-js objects come back on their own.
    const b = await spawnServerOn({ port, shards: 2, env });
    servers.push(b);
    // The same pusher-js objects reconnect on their own (no connect() call from the test).
    for (const c of clients) {
      await waitFor(
        () => c.connection.state === 'connected' && c.connection.socket_id && c.connection.socket_id !== c.firstSocketId,
        RECONNECT_AFTER_REFUSAL_MS,
        `client ${c.firstSocketId} to reconnect to server B`,
      ).catch((e) => {
        throw new Error(`${e.message}; state ${c.connection.state}, states ${JSON.stringify(c.states.slice(-10))}`);
      });
    }
    const nodesA = new Set(clients.map((c) => c.firstSocketId.split('.')[0]));
    const nodesB = new Set(clients.map((c) => c.connection.socket_id.split('.')[0]));
    assert.equal([...nodesB].filter((n) => nodesA.has(n)).length, 0, `socket ids on server B reuse server A's node part: ${[...nodesA]} vs ${[...nodesB]}`);

    // They resubscribed by themselves: a publish on server B reaches every one of them.
    await waitFor(async () => {
      const res = await restClient(port).get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
      const body = await res.json();
      return body.subscription_count === clients.length;
    }, 5_000, `all ${clients.length} clients to be subscribed to ${name} on server B`);
    const got = clients.map((c) => once(c.channelRef, 'after-restart', 5_000));
    await restClient(port).trigger(name, 'after-restart', { ok: true });
    const payloads = await Promise.all(got);
    for (const p of payloads) assert.deepEqual(p, { ok: true });
  });
});
