// Idle connections: the server pings after `activity_timeout` of silence and closes with
// 4201 when no pong comes back; clients that answer stay connected.
// Runs with CORECAST_ACTIVITY_TIMEOUT=2 and CORECAST_PONG_TIMEOUT=2 (seconds).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, connected, pusherClient, rawPusher, sleep, startServer, subscribe, withTimeout } from './harness.mjs';

const ACTIVITY_TIMEOUT_S = 2;
const PONG_TIMEOUT_S = 2;
/** How long the answering clients are watched; covers several ping rounds. */
const WATCH_MS = 9_000;

describe('activity timeout and pong timeout', { timeout: 60_000 }, () => {
  let server;
  const resources = cleanup();
  let silent;
  let silentStart;
  let answering;
  let answeringPings = 0;
  let pusherJs;
  const pusherJsStates = [];
  let watchDone;

  before(async () => {
    server = await startServer({
      shards: 2,
      env: { CORECAST_ACTIVITY_TIMEOUT: String(ACTIVITY_TIMEOUT_S), CORECAST_PONG_TIMEOUT: String(PONG_TIMEOUT_S) },
    });

    // All three clients are watched over the same window to keep the suite short.
    silent = await rawPusher(server.port);
    silentStart = silent.messages[0].receivedAt;
    resources.add(silent, () => silent.terminate());

    answering = await rawPusher(server.port);
    resources.add(answering, () => answering.terminate());
    answering.ws.on('message', (raw) => {
      const msg = JSON.parse(raw.toString());
      if (msg.event === 'pusher:ping') {
        answeringPings += 1;
        answering.send({ event: 'pusher:pong', data: {} });
      }
    });

    pusherJs = resources.add(pusherClient(server.port));
    await connected(pusherJs);
    await subscribe(pusherJs, 'idle-channel');
    pusherJs.connection.bind('state_change', (s) => pusherJsStates.push(s.current));

    watchDone = sleep(WATCH_MS);
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  test('connection_established_announces_the_configured_activity_timeout', () => {
    assert.equal(silent.established.activity_timeout, ACTIVITY_TIMEOUT_S);
    assert.equal(answering.established.activity_timeout, ACTIVITY_TIMEOUT_S);
  });

  test('silent_client_is_pinged_then_closed_with_4201', { timeout: 20_000 }, async () => {
    const ping = await silent.nextEvent('pusher:ping', undefined, (ACTIVITY_TIMEOUT_S + 4) * 1000);
    const pingAfterMs = ping.receivedAt - silentStart;
    assert.equal(ping.event, 'pusher:ping');
    assert.ok(pingAfterMs >= (ACTIVITY_TIMEOUT_S - 0.5) * 1000, `ping came after only ${pingAfterMs} ms of silence`);
    assert.ok(pingAfterMs <= (ACTIVITY_TIMEOUT_S + 2.5) * 1000, `ping came after ${pingAfterMs} ms of silence`);

    const closed = await withTimeout(silent.closed, (PONG_TIMEOUT_S + 6) * 1000, 'the server to close the silent connection');
    const closedAfterPingMs = closed.at - ping.receivedAt;
    assert.equal(closed.code, 4201, `close code was ${closed.code} (${closed.reason})`);
    assert.ok(closedAfterPingMs >= (PONG_TIMEOUT_S - 1) * 1000, `closed only ${closedAfterPingMs} ms after the ping`);
  });

  test('client_answering_pings_with_pong_stays_connected', { timeout: 20_000 }, async () => {
    await watchDone;
    assert.ok(answering.isOpen(), `answering client was closed: ${JSON.stringify(await Promise.race([answering.closed, null]))}`);
    assert.ok(answeringPings >= 2, `expected repeated pings over ${WATCH_MS} ms, got ${answeringPings}`);
  });

  test('pusher_js_stays_connected_with_a_short_activity_timeout', { timeout: 20_000 }, async () => {
    await watchDone;
    assert.equal(pusherJs.connection.state, 'connected');
    assert.deepEqual(pusherJsStates, [], `pusher-js changed state: ${pusherJsStates.join(' -> ')}`);
  });
});
