// Event data makes the round trip REST -> server -> client intact: objects, plain strings,
// unicode, escapes and large payloads. Checked twice: the exact `data` string a raw
// WebSocket sees on the wire, and the value pusher-js hands to the app.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { cleanup, connected, once, pusherClient, rawPusher, restClient, startServer, subscribe } from './harness.mjs';

describe('event data round trip', { timeout: 60_000 }, () => {
  let server;
  let rest;
  let client;
  let channel;
  let raw;
  const resources = cleanup();

  before(async () => {
    server = await startServer({ shards: 2 });
    rest = restClient(server.port);
    client = resources.add(pusherClient(server.port));
    await connected(client);
    channel = await subscribe(client, 'payloads');
    raw = await rawPusher(server.port);
    resources.add(raw, () => raw.terminate());
    raw.send({ event: 'pusher:subscribe', data: { channel: 'payloads' } });
    await raw.nextEvent('pusher_internal:subscription_succeeded', 'payloads');
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  /** Triggers `data` as `event` and returns what the raw socket and pusher-js received. */
  async function roundTrip(event, data) {
    const viaPusherJs = once(channel, event);
    const viaWire = raw.nextEvent(event, 'payloads');
    const res = await rest.trigger('payloads', event, data);
    assert.equal(res.status, 200);
    const wire = await viaWire;
    return { wire, app: await viaPusherJs };
  }

  test('object_arrives_as_its_json_text_and_parses_back_equal', async () => {
    const obj = { id: 7, ok: true, none: null, list: [1, 2.5, 'three'], nested: { deep: { er: 'x' } } };
    const { wire, app } = await roundTrip('object', obj);
    assert.equal(wire.event, 'object');
    assert.equal(wire.channel, 'payloads');
    assert.equal(typeof wire.data, 'string', 'event data on the wire must be a JSON-encoded string');
    assert.deepEqual(JSON.parse(wire.data), obj);
    assert.deepEqual(app, obj);
  });

  test('plain_string_arrives_unchanged', async () => {
    const text = 'just a plain string, not JSON';
    const { wire, app } = await roundTrip('string', text);
    assert.equal(wire.data, text);
    assert.equal(app, text);
  });

  test('string_that_is_json_text_is_passed_through_verbatim', async () => {
    const text = '{"already":"encoded","n":[1,2]}';
    const { wire, app } = await roundTrip('json-text', text);
    assert.equal(wire.data, text);
    assert.deepEqual(app, { already: 'encoded', n: [1, 2] });
  });

  test('unicode_and_escapes_arrive_intact', async () => {
    const text = 'héllo wörld — 你好, 日本語, emoji 🚀👍🏽, "quotes" \\ backslash\nnew line\ttab \u2028 end';
    const { wire, app } = await roundTrip('unicode', text);
    assert.equal(wire.data, text);
    assert.equal(app, text);

    const obj = { text: 'Ελληνικά ✓ 🎉', key: 'ключ', esc: '<script>&"\'</script>' };
    const second = await roundTrip('unicode-object', obj);
    assert.deepEqual(JSON.parse(second.wire.data), obj);
    assert.deepEqual(second.app, obj);
  });

  test('fifty_kilobyte_payload_arrives_intact', async () => {
    const big = 'p' + randomBytes(37_500).toString('base64'); // 50,001 ASCII characters
    assert.ok(big.length > 50_000);
    const { wire, app } = await roundTrip('big', big);
    assert.equal(wire.data.length, big.length);
    assert.equal(wire.data, big);
    assert.equal(app, big);

    const bigObj = { rows: Array.from({ length: 500 }, (_, i) => ({ i, v: `row-${i}-ü-${'x'.repeat(60)}` })) };
    assert.ok(JSON.stringify(bigObj).length > 40_000);
    const second = await roundTrip('big-object', bigObj);
    assert.deepEqual(JSON.parse(second.wire.data), bigObj);
    assert.deepEqual(second.app, bigObj);
  });
});
