// permessage-deflate (CORECAST_WS_COMPRESSION=on) with real clients. pusher-js runs on
// the `ws` package here, as in a browser on its native WebSocket, which offers
// permessage-deflate (pusher-js's bundled Node client, faye-websocket, offers no
// extension): a 10 KB event arrives intact, and the server's counters show it went
// out compressed to under a third. The `ws` package on its own reports the extension
// as negotiated, and a server with compression off negotiates none.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import Pusher from 'pusher-js';
import WebSocket from 'ws';

import { APP, cleanup, connected, once, pusherClient, rawWs, restClient, startServer, subscribe } from './harness.mjs';
import { metricSum, scrape, startWithMetrics } from './ops-helpers.mjs';

/** About 10 KB of ordinary JSON text, as an app publishes. */
function ordinaryData(len) {
  const words = ['order', 'shipped', 'customer', 'warehouse', 'delivery', 'status', 'updated', 'payment', 'received', 'invoice', 'pending', 'address'];
  const items = [];
  let size = 0;
  let i = 7;
  while (size < len) {
    i = (i * 1103515245 + 12345) % 2147483648;
    const item = { id: i % 100000, note: `${words[i % words.length]} ${words[(i >> 8) % words.length]} for item ${i % 977}` };
    size += JSON.stringify(item).length + 1;
    items.push(item);
  }
  return { items };
}

const PATH = `/app/${APP.key}?protocol=7&client=js&version=8.6.0&flash=false`;

/**
 * Resolves with a `ws` client's negotiated extensions once it is open, and the
 * `Sec-WebSocket-Extensions` header of the server's answer.
 */
function extensionsOf(port) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${PATH}`);
    let header;
    ws.once('upgrade', (res) => {
      header = res.headers['sec-websocket-extensions'];
    });
    ws.once('open', () => {
      const extensions = ws.extensions;
      ws.terminate();
      resolve({ extensions, header });
    });
    ws.once('error', reject);
  });
}

describe('permessage-deflate on', { timeout: 60_000 }, () => {
  let server;
  const resources = cleanup();
  const fayeApi = Pusher.Runtime.getWebSocketAPI;

  before(async () => {
    server = await startWithMetrics({ shards: 2, env: { CORECAST_WS_COMPRESSION: 'on' } });
  });

  after(async () => {
    Pusher.Runtime.getWebSocketAPI = fayeApi;
    await resources.closeAll();
    await server?.stop();
  });

  test('ws_negotiates_permessage_deflate', async () => {
    const { extensions, header } = await extensionsOf(server.port);
    assert.match(extensions, /permessage-deflate/, `extensions: ${extensions}`);
    assert.equal(header, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
  });

  test('pusher_js_on_ws_receives_a_10_kb_event_intact_and_compressed', async () => {
    Pusher.Runtime.getWebSocketAPI = () => WebSocket;
    const client = resources.add(pusherClient(server.port));
    await connected(client);
    const channel = await subscribe(client, 'zipped');
    // A client without the extension gets the same event uncompressed.
    const plain = rawWs(server.port, PATH);
    resources.add(plain, () => plain.terminate());
    await plain.nextEvent('pusher:connection_established');
    plain.send({ event: 'pusher:subscribe', data: { channel: 'zipped' } });
    await plain.nextEvent('pusher_internal:subscription_succeeded', 'zipped');

    const before = await scrape(server.metricsPort);
    const data = ordinaryData(10_000);
    const viaPusherJs = once(channel, 'big');
    const viaPlain = plain.nextEvent('big', 'zipped');
    const res = await restClient(server.port).trigger('zipped', 'big', data);
    assert.equal(res.status, 200);
    assert.deepEqual(await viaPusherJs, data);
    assert.deepEqual(JSON.parse((await viaPlain).data), data);

    const afterScrape = await scrape(server.metricsPort);
    const delta = (name) => metricSum(afterScrape, name) - metricSum(before, name);
    const bytesIn = delta('corecast_ws_compression_bytes_in_total');
    const bytesOut = delta('corecast_ws_compression_bytes_out_total');
    assert.ok(delta('corecast_ws_compressed_frames_total') >= 1, 'no frame was compressed');
    assert.ok(bytesIn > 10_000, `bytes in: ${bytesIn}`);
    assert.ok(bytesOut * 3 < bytesIn, `compressed ${bytesIn} bytes to ${bytesOut}`);
  });
});

describe('permessage-deflate off (the default)', { timeout: 30_000 }, () => {
  let server;

  before(async () => {
    server = await startServer({ shards: 1 });
  });

  after(async () => {
    await server?.stop();
  });

  test('ws_negotiates_no_extension', async () => {
    const { extensions, header } = await extensionsOf(server.port);
    assert.equal(extensions, '');
    assert.equal(header, undefined);
  });
});
