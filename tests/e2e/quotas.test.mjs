// Per-app quotas as the real clients see them, on CORECAST_SHARDS=2:
// - SOKETI_DEFAULT_APP_MAX_CONNS: past it a new connection gets `pusher:error` 4004
//   ("Application is over connection quota", Pusher's 4000-4099 range: do not reconnect)
//   and is closed with 4004; pusher-js never becomes `connected`.
// - SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC / _MAX_READ_REQ_PER_SEC: the official
//   `pusher` library's requests beyond the per-second quota reject with status 429.
// - SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC: client events beyond it get
//   `pusher:error` 4301 (as Soketi answers) and are not delivered.
// - corecast_rate_limited_total{kind=...} counts the refusals (metrics enabled).
// Rate windows are per wall-clock second (as Soketi's rate limiter), so each burst starts
// right after a second begins.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { APP, cleanup, connected, pusherClient, rawWs, restClient } from './harness.mjs';
import { metricSum, scrape, startOfSecond, startWithMetrics, uniq } from './ops-helpers.mjs';
import { connectedAuthed, once, recordMessages, shardHint, sleep, subscribe, waitFor, withTimeout } from './protocol-helpers.mjs';

const RAW_PATH = `/app/${APP.key}?protocol=7&client=js&version=8.6.0&flash=false`;

/**
 * The Pusher error code in a pusher-js connection `error` event: `{type:'PusherError', data}`
 * once connected, wrapped as `{type:'WebSocketError', error:{type:'PusherError', data}}` when
 * the server closes during the handshake.
 */
const pusherErrorCode = (e) => e?.data?.code ?? e?.error?.data?.code;

describe('SOKETI_DEFAULT_APP_MAX_CONNS=3 over 2 shards', { timeout: 30_000 }, () => {
  let server;
  const resources = cleanup();

  before(async () => {
    server = await startWithMetrics({ shards: 2, env: { SOKETI_DEFAULT_APP_MAX_CONNS: '3' } });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  test('the_fourth_pusher_js_client_gets_4004_and_never_connects', { timeout: 20_000 }, async () => {
    const three = [];
    for (let i = 0; i < 3; i++) three.push(resources.add(await connected(pusherClient(server.port))));
    const shards = three.map((c) => shardHint(c.connection.socket_id));

    const fourth = resources.add(pusherClient(server.port, { autoConnect: false }));
    const errors = [];
    const states = [];
    fourth.connection.bind('error', (e) => errors.push(e));
    fourth.connection.bind('state_change', (s) => states.push(s.current));
    fourth.connect();
    await waitFor(() => errors.some((e) => pusherErrorCode(e) === 4004), 5_000, 'a 4004 error on the 4th pusher-js client').catch((err) => {
      throw new Error(`${err.message}; errors: ${JSON.stringify(errors)}; states: ${JSON.stringify(states)} (the 3 others are on shards ${shards})`);
    });
    await sleep(500);
    assert.ok(!states.includes('connected'), `the 4th client became connected: states ${JSON.stringify(states)}`);
    assert.notEqual(fourth.connection.state, 'connected');
    assert.equal(fourth.connection.socket_id, undefined, `the 4th client got a socket id ${fourth.connection.socket_id}`);

    // On the wire: pusher:error 4004, then a close with 4004; no connection_established.
    const raw = rawWs(server.port, RAW_PATH);
    resources.add(raw, () => raw.terminate());
    const err = await raw.nextEvent('pusher:error', undefined, 5_000);
    const data = typeof err.data === 'string' ? JSON.parse(err.data) : err.data;
    assert.equal(data.code, 4004, `pusher:error ${JSON.stringify(err)}`);
    assert.equal(typeof data.message, 'string');
    const closed = await withTimeout(raw.closed, 5_000, 'the over-quota raw socket to be closed');
    assert.equal(closed.code, 4004, `close code ${closed.code}`);
    assert.ok(!raw.messages.some((m) => m.event === 'pusher:connection_established'), `over-quota socket got connection_established: ${JSON.stringify(raw.messages)}`);

    // The three connected clients are untouched.
    for (const c of three) assert.equal(c.connection.state, 'connected');

    // A slot frees when one leaves: a new client connects.
    three[0].disconnect();
    await sleep(300);
    const fifth = resources.add(pusherClient(server.port));
    await connected(fifth, 5_000);
  });
});

describe('rate quotas over 2 shards', { timeout: 40_000 }, () => {
  let server;
  let rest;
  const resources = cleanup();

  before(async () => {
    server = await startWithMetrics({
      shards: 2,
      env: {
        SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC: '2',
        SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC: '1',
        SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC: '2',
        SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES: 'true',
      },
    });
    rest = restClient(server.port);
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  /** Resolves with the HTTP status of a `pusher` library call (200 on success, the error's status otherwise). */
  const statusOf = (promise) =>
    promise.then(
      (res) => res.status,
      (err) => {
        if (err?.status === undefined) throw err;
        return { status: err.status, body: err.body };
      },
    );

  test('third_trigger_within_a_second_gets_429', { timeout: 10_000 }, async () => {
    const name = `quota-${uniq()}`;
    await startOfSecond();
    const results = [];
    for (let i = 0; i < 3; i++) results.push(await statusOf(rest.trigger(name, 'e', { i })));
    assert.equal(results[0], 200, `1st trigger: ${JSON.stringify(results[0])}`);
    assert.equal(results[1], 200, `2nd trigger: ${JSON.stringify(results[1])}`);
    assert.equal(results[2]?.status, 429, `3rd trigger within a second: ${JSON.stringify(results[2])}`);
    const body = JSON.parse(results[2].body);
    assert.equal(typeof body.error, 'string', `429 body ${results[2].body}`);

    // The quota is per second, not a ban.
    await sleep(1_100);
    await startOfSecond();
    assert.equal(await statusOf(rest.trigger(name, 'e', { i: 4 })), 200, 'a trigger in the next second');
  });

  test('second_read_within_a_second_gets_429', { timeout: 10_000 }, async () => {
    await startOfSecond();
    const first = await statusOf(rest.get({ path: '/channels' }));
    const second = await statusOf(rest.get({ path: '/channels' }));
    assert.equal(first, 200, `1st GET /channels: ${JSON.stringify(first)}`);
    assert.equal(second?.status, 429, `2nd GET /channels within a second: ${JSON.stringify(second)}`);
    await sleep(1_100);
    await startOfSecond();
    assert.equal(await statusOf(rest.get({ path: '/channels' })), 200, 'a read in the next second');
  });

  test('third_client_event_within_a_second_gets_4301_and_is_not_delivered', { timeout: 15_000 }, async () => {
    const name = `private-quota-${uniq()}`;
    const sender = resources.add(await connectedAuthed(server.port));
    const reader = resources.add(await connectedAuthed(server.port));
    const chSender = await subscribe(sender, name);
    await subscribe(reader, name);
    const got = recordMessages(reader);
    const errors = [];
    sender.connection.bind('error', (e) => errors.push(e));
    const errorSeen = once(sender.connection, 'error', 5_000);

    for (let i = 0; i < 3; i++) assert.equal(chSender.trigger('client-burst', { i }), true);
    const e = await errorSeen.catch((err) => {
      throw new Error(`${err.message}; the reader got ${JSON.stringify(got)}`);
    });
    assert.equal(pusherErrorCode(e), 4301, `sender's error: ${JSON.stringify(e)}`);
    await sleep(500);
    const delivered = got.filter((m) => m.event === 'client-burst');
    assert.deepEqual(
      delivered.map((m) => m.data),
      [{ i: 0 }, { i: 1 }],
      `the reader got these client events (shards: sender ${shardHint(sender.socketId)}, reader ${shardHint(reader.socketId)})`,
    );
    assert.equal(errors.filter((x) => pusherErrorCode(x) === 4301).length, 1, `errors: ${JSON.stringify(errors)}`);
    assert.equal(sender.connection.state, 'connected', '4301 must leave the connection open');

    // After the window the sender may send again.
    await sleep(1_100);
    chSender.trigger('client-burst', { i: 3 });
    await waitFor(() => got.some((m) => m.event === 'client-burst' && m.data?.i === 3), 5_000, 'a client event after the window');
  });

  test('corecast_rate_limited_total_counts_each_kind', { timeout: 10_000 }, async () => {
    const s = await scrape(server.metricsPort);
    const byKind = (kind) => metricSum(s, 'corecast_rate_limited_total', { kind });
    const seen = { backend: byKind('backend'), read: byKind('read'), client: byKind('client') };
    assert.ok(seen.backend >= 1, `corecast_rate_limited_total{kind="backend"}: ${JSON.stringify(seen)}`);
    assert.ok(seen.read >= 1, `corecast_rate_limited_total{kind="read"}: ${JSON.stringify(seen)}`);
    assert.ok(seen.client >= 1, `corecast_rate_limited_total{kind="client"}: ${JSON.stringify(seen)}`);
    assert.deepEqual(seen, { backend: 1, read: 1, client: 1 }, 'one refusal of each kind was provoked');
  });
});
