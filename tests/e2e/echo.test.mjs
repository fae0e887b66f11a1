// Laravel Echo 2 (broadcaster "pusher", pusher-js 8) against a 2-shard server, with an
// `authorizer` that signs locally with the `pusher` library as a Laravel app's
// /broadcasting/auth would: public listen with and without the leading dot, private
// channels, presence here/joining/leaving, and whisper/listenForWhisper (client events on).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import Echo from 'laravel-echo';
import Pusher from 'pusher-js';

import { APP, cleanup, connected, restClient, startServer, withTimeout } from './harness.mjs';
import { signer, sleep } from './protocol-helpers.mjs';

/** Resolves with the first call's argument of a callback-style Echo API; rejects after `ms`. */
function nextCall(register, label, ms = 10_000) {
  return withTimeout(new Promise((resolve) => register(resolve)), ms, label);
}

describe('Laravel Echo 2 over 2 shards', { timeout: 60_000 }, () => {
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

  /** An Echo client; `user` ({ id, name }) is what the app's auth endpoint puts in presence channel_data. */
  async function echo(user = { id: 'anon', name: 'Anon' }) {
    const e = new Echo({
      broadcaster: 'pusher',
      key: APP.key,
      cluster: 'mt1',
      wsHost: '127.0.0.1',
      wsPort: server.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
      Pusher,
      authorizer: (channel) => ({
        authorize: (socketId, callback) => {
          try {
            const data = channel.name.startsWith('presence-') ? { user_id: user.id, user_info: user } : undefined;
            callback(null, signer.authorizeChannel(socketId, channel.name, data));
          } catch (err) {
            callback(err, null);
          }
        },
      }),
    });
    resources.add(e, () => e.disconnect());
    await connected(e.connector.pusher);
    return e;
  }

  const subscribed = (channel, label) => nextCall((cb) => channel.subscribed(cb), `${label} subscribed`);

  test('listen_with_a_leading_dot_receives_the_event_by_its_exact_name', async () => {
    const e = await echo();
    const ch = e.channel('orders');
    await subscribed(ch, 'orders');
    const got = nextCall((cb) => ch.listen('.OrderShipped', cb), 'listen(.OrderShipped)');
    await rest.trigger('orders', 'OrderShipped', { order: { id: 1 } });
    assert.deepEqual(await got, { order: { id: 1 } });
  });

  test('listen_without_a_dot_receives_the_app_events_namespaced_event', async () => {
    const e = await echo();
    const ch = e.channel('orders-ns');
    await subscribed(ch, 'orders-ns');
    const received = [];
    ch.listen('OrderShipped', (d) => received.push(d));
    // A plain "OrderShipped" must not match listen('OrderShipped'), the namespaced one must.
    await rest.trigger('orders-ns', 'OrderShipped', { plain: true });
    await rest.trigger('orders-ns', 'App\\Events\\OrderShipped', { namespaced: true });
    await withTimeout(
      (async () => {
        while (received.length === 0) await sleep(20);
      })(),
      5_000,
      'the namespaced event',
    );
    await sleep(200);
    assert.deepEqual(received, [{ namespaced: true }]);
  });

  test('private_channel_is_authorised_and_receives_events', async () => {
    const e = await echo();
    const ch = e.private('chat');
    await subscribed(ch, 'private-chat');
    const got = nextCall((cb) => ch.listen('.MessageSent', cb), 'listen(.MessageSent) on private-chat');
    await rest.trigger('private-chat', 'MessageSent', { body: 'hi' });
    assert.deepEqual(await got, { body: 'hi' });
  });

  test('private_channel_error_callback_fires_on_a_refused_subscription', async () => {
    const e = new Echo({
      broadcaster: 'pusher',
      key: APP.key,
      cluster: 'mt1',
      wsHost: '127.0.0.1',
      wsPort: server.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
      Pusher,
      authorizer: () => ({ authorize: (_socketId, callback) => callback(null, { auth: `${APP.key}:${'0'.repeat(64)}` }) }),
    });
    resources.add(e, () => e.disconnect());
    await connected(e.connector.pusher);
    const err = await nextCall((cb) => e.private('locked').error(cb), 'error() on a refused private channel');
    assert.equal(err.type, 'AuthError', JSON.stringify(err));
    assert.equal(err.status, 401, JSON.stringify(err));
  });

  test('join_here_joining_and_leaving_see_the_members', { timeout: 20_000 }, async () => {
    const alice = { id: 'alice', name: 'Alice' };
    const bob = { id: 'bob', name: 'Bob' };
    const a = await echo(alice);
    const roomA = a.join('room');
    const hereA = await nextCall((cb) => roomA.here(cb), 'alice here()');
    assert.deepEqual(hereA, [alice]);

    const joining = nextCall((cb) => roomA.joining(cb), 'alice joining()');
    const b = await echo(bob);
    const roomB = b.join('room');
    const hereB = await nextCall((cb) => roomB.here(cb), 'bob here()');
    assert.deepEqual([...hereB].sort((x, y) => x.id.localeCompare(y.id)), [alice, bob]);
    assert.deepEqual(await joining, bob);

    const leaving = nextCall((cb) => roomA.leaving(cb), 'alice leaving()');
    b.leave('room');
    assert.deepEqual(await leaving, bob);
  });

  test('leaving_fires_when_a_member_disconnects', { timeout: 20_000 }, async () => {
    const carol = { id: 'carol', name: 'Carol' };
    const dan = { id: 'dan', name: 'Dan' };
    const c = await echo(carol);
    const roomC = c.join('hall');
    await nextCall((cb) => roomC.here(cb), 'carol here()');
    const d = await echo(dan);
    const joined = nextCall((cb) => roomC.joining(cb), 'carol joining()');
    await nextCall((cb) => d.join('hall').here(cb), 'dan here()');
    await joined;
    const leaving = nextCall((cb) => roomC.leaving(cb), 'carol leaving()');
    d.disconnect();
    assert.deepEqual(await leaving, dan);
  });

  test('whisper_reaches_the_other_client_through_listen_for_whisper', async () => {
    const a = await echo();
    const b = await echo();
    const chA = a.private('whispers');
    const chB = b.private('whispers');
    // Both listeners go on before either wait: Echo's subscribed() only hears a later
    // subscription_succeeded, and b's may arrive while a's is awaited.
    const okA = subscribed(chA, 'a private-whispers');
    const okB = subscribed(chB, 'b private-whispers');
    await okA;
    await okB;
    const heard = nextCall((cb) => chA.listenForWhisper('typing', cb), 'listenForWhisper(typing)');
    const echoed = [];
    chB.listenForWhisper('typing', (d) => echoed.push(d));
    chB.whisper('typing', { name: 'b', typing: true });
    assert.deepEqual(await heard, { name: 'b', typing: true });
    await sleep(300);
    assert.deepEqual(echoed, [], 'the whisperer heard its own whisper');
  });

  test('whisper_on_a_presence_channel_reaches_the_other_member', async () => {
    const a = await echo({ id: 'wa', name: 'WA' });
    const b = await echo({ id: 'wb', name: 'WB' });
    const roomA = a.join('whisper-room');
    await nextCall((cb) => roomA.here(cb), 'wa here()');
    const roomB = b.join('whisper-room');
    await nextCall((cb) => roomB.here(cb), 'wb here()');
    const heard = nextCall((cb) => roomA.listenForWhisper('cursor', cb), 'listenForWhisper(cursor)');
    roomB.whisper('cursor', { x: 3, y: 4 });
    assert.deepEqual(await heard, { x: 3, y: 4 });
  });
});
