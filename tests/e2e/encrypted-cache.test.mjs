// Encrypted channels (`private-encrypted-`) and cache channels (`cache-`, `private-cache-`,
// `presence-cache-`) over 2 shards. Encrypted channels are checked with raw sockets (pusher-js
// needs tweetnacl and a master key to decrypt): authorised like private channels, REST
// payloads relayed byte for byte, client events refused with 4301. Cache channels send the
// last event right after subscription_succeeded, or `pusher:cache_miss` when there is none.
// Client messages are enabled on this server so 4301 on encrypted channels is about the
// channel type, not the app setting.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, restClient, signedRequest, startServer } from './harness.mjs';
import {
  channelAuthString,
  connectedAuthed,
  messagesAfter,
  nextError,
  once,
  pingPong,
  rawSocket,
  rawSubscribe,
  rawSubscribeSigned,
  shardHint,
  subscribe,
  withTimeout,
} from './protocol-helpers.mjs';

describe('encrypted and cache channels over 2 shards', { timeout: 60_000 }, () => {
  let server;
  let rest;
  const resources = cleanup();

  before(async () => {
    server = await startServer({ shards: 2, env: { SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES: 'true' } });
    rest = restClient(server.port);
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  const raw = async () => resources.add(await rawSocket(server.port), (c) => c.terminate());
  const rawMany = async (n) => {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await raw());
    return out;
  };

  /** The messages a raw socket received for `channel` after its subscription_succeeded, in order. */
  function afterSucceeded(client, channel) {
    const i = client.messages.findIndex((m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === channel);
    return i < 0 ? null : client.messages.slice(i + 1).filter((m) => m.channel === channel);
  }

  // ---- encrypted ----------------------------------------------------------------

  test('encrypted_channel_with_a_correct_signature_subscribes', async () => {
    const c = await raw();
    await rawSubscribeSigned(c, 'private-encrypted-vault');
  });

  test('encrypted_channel_with_a_bad_signature_is_refused_with_401', async () => {
    const c = await raw();
    const answer = await rawSubscribe(c, 'private-encrypted-vault-2', { auth: channelAuthString(c.socketId, 'private-encrypted-vault-2', undefined, { secret: 'wrong' }) });
    assert.equal(answer.event, 'pusher:subscription_error', JSON.stringify(answer));
    assert.equal(answer.data?.status, 401, JSON.stringify(answer));
    assert.equal(answer.data?.type, 'AuthError', JSON.stringify(answer));
  });

  test('rest_publish_to_an_encrypted_channel_is_relayed_byte_for_byte_on_both_shards', { timeout: 15_000 }, async () => {
    const channel = 'private-encrypted-relay';
    const subs = await rawMany(8);
    for (const s of subs) await rawSubscribeSigned(s, channel);
    // What the `pusher` library sends for an encrypted channel: a JSON string of nonce and
    // ciphertext, which the server must neither parse nor re-encode.
    const data = '{"nonce":"4P8sQ0fYJ9k2mZ+8bXyT1w2lq3V0XkJ7","ciphertext":"q1w2e3r4t5y6u7i8o9p0/+==\\u00e9 \\"quoted\\""}';
    const body = JSON.stringify({ name: 'sealed', channels: [channel], data });
    const res = await signedRequest(server.port, { path: '/apps/app-id/events', body });
    assert.equal(res.status, 200, res.text);
    for (const s of subs) {
      const msg = await s.nextEvent('sealed', channel);
      assert.equal(msg.data, data, `socket on shard ${shardHint(s.socketId)} got ${JSON.stringify(msg.data)}`);
    }
  });

  test('client_event_on_an_encrypted_channel_is_refused_with_4301_and_not_relayed', { timeout: 15_000 }, async () => {
    const channel = 'private-encrypted-chat';
    const [sender, other] = await rawMany(2);
    await rawSubscribeSigned(sender, channel);
    await rawSubscribeSigned(other, channel);
    sender.send({ event: 'client-typing', channel, data: { ciphertext: 'abc', nonce: 'def' } });
    const err = await nextError(sender);
    assert.equal(err.data?.code, 4301, `client event on encrypted channel: ${JSON.stringify(err)}`);
    await pingPong(sender);
    await pingPong(other);
    assert.deepEqual(await messagesAfter(other, (m) => m.event === 'client-typing', 200), [], 'the client event was relayed');
  });

  test('pusher_js_decrypts_events_the_pusher_library_encrypted_on_both_shards', { timeout: 20_000 }, async () => {
    // The whole end-to-end path: the library encrypts with the master key, the server relays
    // the ciphertext untouched, pusher-js (with its bundled tweetnacl) decrypts with the
    // shared_secret its auth endpoint returned.
    const masterKey = Buffer.alloc(32, 7).toString('base64');
    const encrypting = restClient(server.port, { encryptionMasterKeyBase64: masterKey });
    const channel = 'private-encrypted-e2e';
    const clients = [];
    for (let i = 0; i < 6; i++) {
      clients.push(
        resources.add(
          await connectedAuthed(server.port, { authorize: (socketId, name) => encrypting.authorizeChannel(socketId, name) }),
        ),
      );
    }
    const channels = [];
    for (const c of clients) channels.push(await subscribe(c, channel));
    const received = channels.map((ch) => once(ch, 'secret-news', 5_000));
    const payload = { headline: 'sealed', n: 42, text: 'ünïcode ✓' };
    assert.equal((await encrypting.trigger(channel, 'secret-news', payload)).status, 200);
    for (const [i, got] of received.entries()) {
      assert.deepEqual(await got, payload, `client on shard ${shardHint(clients[i].socketId)} could not decrypt`);
    }
  });

  // ---- cache ----------------------------------------------------------------------

  test('cache_channel_sends_the_last_event_right_after_subscription_succeeded', { timeout: 15_000 }, async () => {
    const channel = 'cache-prices';
    assert.equal((await rest.trigger(channel, 'price', { v: 1 })).status, 200);
    assert.equal((await rest.trigger(channel, 'price', { v: 2 })).status, 200);
    // Several sockets, so subscribers on both shards get the cached event.
    const subs = await rawMany(6);
    for (const s of subs) {
      await rawSubscribeSigned(s, channel);
      const cached = await s.nextEvent('price', channel);
      assert.deepEqual(afterSucceeded(s, channel)[0], cached, `first message after subscription_succeeded on shard ${shardHint(s.socketId)}`);
      assert.equal(cached.data, '{"v":2}', `cached event on shard ${shardHint(s.socketId)}: ${JSON.stringify(cached)}`);
    }
    for (const s of subs) {
      assert.deepEqual(await messagesAfter(s, (m) => m.event === 'pusher:cache_miss', 0), [], 'cache_miss sent although an event was cached');
    }
  });

  test('cache_keeps_the_newest_of_many_publishes_whichever_shard_took_them', { timeout: 15_000 }, async () => {
    // Each library request is a new TCP connection, so SO_REUSEPORT hands the ten publishes
    // to either shard; the cache must still hold the last one.
    const channel = 'cache-many';
    for (let v = 0; v < 10; v++) assert.equal((await rest.trigger(channel, 'version', { v })).status, 200);
    const subs = await rawMany(6);
    for (const s of subs) {
      await rawSubscribeSigned(s, channel);
      const cached = await s.nextEvent('version', channel);
      assert.equal(cached.data, '{"v":9}', `socket on shard ${shardHint(s.socketId)} got ${cached.data}`);
    }
  });

  test('cache_channel_without_an_event_sends_cache_miss', { timeout: 15_000 }, async () => {
    const subs = await rawMany(4);
    for (const [i, s] of subs.entries()) {
      const channel = `cache-empty-${i}`;
      await rawSubscribeSigned(s, channel);
      const miss = await s.nextEvent('pusher:cache_miss', channel);
      assert.deepEqual(miss, { event: 'pusher:cache_miss', channel });
    }
  });

  test('cache_is_updated_by_every_publish_and_live_subscribers_get_events_once', { timeout: 15_000 }, async () => {
    const channel = 'cache-score';
    const early = await raw();
    await rawSubscribeSigned(early, channel);
    await early.nextEvent('pusher:cache_miss', channel);
    await rest.trigger(channel, 'score', { home: 1 });
    await rest.trigger(channel, 'score', { home: 2 });
    const got1 = await early.nextEvent('score', channel);
    const got2 = await early.nextEvent('score', channel);
    assert.deepEqual([got1.data, got2.data], ['{"home":1}', '{"home":2}']);

    const late = await raw();
    await rawSubscribeSigned(late, channel);
    const cached = await late.nextEvent('score', channel);
    assert.equal(cached.data, '{"home":2}');
    await pingPong(late);
    assert.equal(late.messages.filter((m) => m.event === 'score').length, 1, 'the late subscriber got more than the last event');
  });

  test('cached_event_outlives_the_last_subscriber_leaving', { timeout: 15_000 }, async () => {
    const channel = 'cache-durable';
    const first = await raw();
    await rawSubscribeSigned(first, channel);
    await rest.trigger(channel, 'state', { s: 'kept' });
    await first.nextEvent('state', channel);
    first.terminate();
    await withTimeout(first.closed, 5_000, 'first subscriber gone');
    // A publish-free pause: the channel is vacant now.
    await new Promise((resolve) => setTimeout(resolve, 200));
    const later = await raw();
    await rawSubscribeSigned(later, channel);
    const cached = await later.nextEvent('state', channel);
    assert.equal(cached.data, '{"s":"kept"}');
  });

  test('cache_channel_event_excluded_by_socket_id_is_still_cached', { timeout: 15_000 }, async () => {
    const channel = 'cache-excluded';
    const publisher = await raw();
    await rawSubscribeSigned(publisher, channel);
    await rest.trigger(channel, 'tick', { n: 1 }, { socket_id: publisher.socketId });
    const later = await raw();
    await rawSubscribeSigned(later, channel);
    const cached = await later.nextEvent('tick', channel);
    assert.equal(cached.data, '{"n":1}');
    await pingPong(publisher);
    assert.deepEqual(publisher.messages.filter((m) => m.event === 'tick'), [], 'the excluded socket got the event');
  });

  test('pusher_js_emits_cache_miss_on_the_channel', async () => {
    const c = resources.add(await connectedAuthed(server.port));
    const channel = c.subscribe('cache-js-miss');
    const order = [];
    channel.bind_global((event) => order.push(event));
    await withTimeout(
      new Promise((resolve) => channel.bind('pusher:cache_miss', resolve)),
      5_000,
      'pusher:cache_miss on the pusher-js channel',
    );
    assert.equal(order[0], 'pusher:subscription_succeeded', `events in order: ${order.join(', ')}`);
  });

  test('private_cache_channel_replays_the_last_event_to_an_authorised_pusher_js_client', async () => {
    await rest.trigger('private-cache-orders', 'order', { id: 'last' });
    const c = resources.add(await connectedAuthed(server.port));
    const channel = c.subscribe('private-cache-orders');
    const order = [];
    channel.bind_global((event) => order.push(event));
    const data = await once(channel, 'order');
    assert.deepEqual(data, { id: 'last' });
    assert.deepEqual(order.slice(0, 2), ['pusher:subscription_succeeded', 'order']);
  });

  test('private_cache_channel_without_auth_is_refused_and_gets_no_cached_event', async () => {
    await rest.trigger('private-cache-locked', 'secret', { x: 1 });
    const c = await raw();
    const answer = await rawSubscribe(c, 'private-cache-locked');
    assert.equal(answer.event, 'pusher:subscription_error', JSON.stringify(answer));
    await pingPong(c);
    assert.deepEqual(
      c.messages.filter((m) => m.channel === 'private-cache-locked' && m.event !== 'pusher:subscription_error'),
      [],
      'a refused subscriber got the cached event or a cache_miss',
    );
  });

  test('presence_cache_channel_replays_the_last_event_after_the_roster', async () => {
    await rest.trigger('presence-cache-room', 'state', { phase: 'voting' });
    const c = resources.add(await connectedAuthed(server.port, { member: { user_id: 'cacher', user_info: {} } }));
    const channel = c.subscribe('presence-cache-room');
    const order = [];
    channel.bind_global((event) => order.push(event));
    const data = await once(channel, 'state');
    assert.deepEqual(data, { phase: 'voting' });
    assert.deepEqual(order.slice(0, 2), ['pusher:subscription_succeeded', 'state']);
    assert.equal(channel.members.count, 1);
  });

  test('public_non_cache_channel_gets_no_cache_miss', async () => {
    await rest.trigger('not-cached', 'e', {});
    const c = await raw();
    await rawSubscribeSigned(c, 'not-cached');
    await pingPong(c);
    assert.deepEqual(c.messages.filter((m) => m.channel === 'not-cached' && m.event !== 'pusher_internal:subscription_succeeded'), []);
  });
});
