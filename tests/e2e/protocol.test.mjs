// Pusher protocol 7 as seen on the wire by a raw WebSocket client: handshake, errors,
// ping/pong and channel-name validation.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { APP, cleanup, rawPusher, rawWs, startServer, withTimeout } from './harness.mjs';

describe('pusher protocol 7 on the wire', { timeout: 60_000 }, () => {
  let server;
  const resources = cleanup();
  const track = (client) => resources.add(client, () => client.terminate());

  before(async () => {
    server = await startServer({ shards: 2 });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  /** Expects a pusher:error with `code` as the first message, then the server closing with that code. */
  async function expectRefused(client, code) {
    const first = await client.next(() => true, 5_000, `pusher:error ${code}`);
    assert.equal(first.event, 'pusher:error', `first message was ${JSON.stringify(first)}`);
    assert.equal(typeof first.data, 'object', `pusher:error data must be an object: ${JSON.stringify(first)}`);
    assert.equal(first.data.code, code, `error was ${JSON.stringify(first)}`);
    assert.equal(typeof first.data.message, 'string');
    const closed = await withTimeout(client.closed, 5_000, `the server to close the connection after error ${code}`);
    // 4000-4099 tells pusher-js not to reconnect with the same parameters.
    assert.equal(closed.code, code, `close code was ${closed.code}`);
  }

  test('connection_established_carries_socket_id_and_default_activity_timeout', async () => {
    const client = track(rawWs(server.port, `/app/${APP.key}?protocol=7&client=js&version=8.6.0`));
    const msg = await client.next(() => true, 5_000, 'connection_established');
    assert.equal(msg.event, 'pusher:connection_established', `first message was ${JSON.stringify(msg)}`);
    assert.equal(typeof msg.data, 'string', 'connection_established data must be a JSON-encoded string');
    const data = JSON.parse(msg.data);
    assert.match(data.socket_id, /^\d+\.\d+$/);
    assert.equal(data.activity_timeout, 120);
  });

  test('unknown_app_key_gets_error_4001_and_close', async () => {
    const client = track(rawWs(server.port, '/app/unknown-key?protocol=7'));
    await expectRefused(client, 4001);
  });

  test('missing_protocol_version_gets_error_4007_and_close', async () => {
    const client = track(rawWs(server.port, `/app/${APP.key}`));
    await expectRefused(client, 4007);
  });

  test('protocol_6_gets_error_4007_and_close', async () => {
    const client = track(rawWs(server.port, `/app/${APP.key}?protocol=6`));
    await expectRefused(client, 4007);
  });

  test('ping_gets_pong', async () => {
    const client = track(await rawPusher(server.port));
    client.send({ event: 'pusher:ping', data: {} });
    const pong = await client.nextEvent('pusher:pong');
    assert.equal(pong.event, 'pusher:pong');
    assert.ok(client.isOpen());
  });

  test('subscribe_gets_internal_subscription_succeeded', async () => {
    const client = track(await rawPusher(server.port));
    client.send({ event: 'pusher:subscribe', data: { channel: 'wire-channel' } });
    const ok = await client.nextEvent('pusher_internal:subscription_succeeded', 'wire-channel');
    assert.equal(ok.channel, 'wire-channel');
  });

  test('longest_valid_channel_name_with_all_allowed_punctuation_is_accepted', async () => {
    const client = track(await rawPusher(server.port));
    const name = 'Az09_-=@,.;'.padEnd(200, 'x');
    assert.equal(name.length, 200);
    client.send({ event: 'pusher:subscribe', data: { channel: name } });
    await client.nextEvent('pusher_internal:subscription_succeeded', name);
  });

  for (const [label, name] of [
    ['a_space', 'has space'],
    ['201_characters', 'y'.repeat(201)],
    ['a_slash', 'bad/name'],
  ]) {
    test(`channel_name_with_${label}_is_refused_and_connection_stays_open`, async () => {
      const client = track(await rawPusher(server.port));
      client.send({ event: 'pusher:subscribe', data: { channel: name } });
      const refusal = await client.next(
        (m) => m.event === 'pusher:error' || m.event === 'pusher:subscription_error' || m.event === 'pusher_internal:subscription_succeeded',
        5_000,
        'a refusal of the invalid channel name',
      );
      assert.notEqual(refusal.event, 'pusher_internal:subscription_succeeded', `invalid channel name ${JSON.stringify(name)} was accepted`);

      // Still usable: ping/pong and a valid subscription.
      client.send({ event: 'pusher:ping', data: {} });
      await client.nextEvent('pusher:pong');
      client.send({ event: 'pusher:subscribe', data: { channel: 'after-refusal' } });
      await client.nextEvent('pusher_internal:subscription_succeeded', 'after-refusal');
      assert.ok(client.isOpen(), 'connection closed after an invalid channel name');
    });
  }
});
