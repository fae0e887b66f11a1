// pusher-js connects, subscribes to public channels, receives events and unsubscribes.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import Echo from 'laravel-echo';
import Pusher from 'pusher-js';

import { APP, cleanup, connected, once, pusherClient, restClient, sleep, startServer, subscribe, waitFor, withTimeout } from './harness.mjs';

describe('public channels with pusher-js', { timeout: 60_000 }, () => {
  let server;
  let rest;
  const resources = cleanup();

  before(async () => {
    server = await startServer({ shards: 2 });
    rest = restClient(server.port);
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  test('pusher_js_connects_with_unique_socket_ids', { timeout: 15_000 }, async () => {
    const clients = [];
    for (let i = 0; i < 10; i++) clients.push(resources.add(pusherClient(server.port)));
    await Promise.all(clients.map((c) => connected(c)));

    const ids = clients.map((c) => c.connection.socket_id);
    for (const c of clients) {
      assert.equal(c.connection.state, 'connected');
      assert.match(c.connection.socket_id, /^\d+\.\d+$/, `socket_id ${c.connection.socket_id} is not N.N`);
    }
    assert.equal(new Set(ids).size, ids.length, `socket ids are not unique: ${ids.join(', ')}`);
  });

  test('subscription_succeeded_fires_and_events_arrive', { timeout: 15_000 }, async () => {
    const client = resources.add(pusherClient(server.port));
    await connected(client);
    const channel = client.subscribe('my-channel');
    await once(channel, 'pusher:subscription_succeeded');
    assert.equal(channel.subscribed, true);

    const got = once(channel, 'my-event');
    await rest.trigger('my-channel', 'my-event', { message: 'hello world' });
    assert.deepEqual(await got, { message: 'hello world' });
  });

  test('several_channels_on_one_connection_each_get_their_own_events', { timeout: 15_000 }, async () => {
    const client = resources.add(pusherClient(server.port));
    await connected(client);
    const names = ['multi-a', 'multi-b', 'multi-c'];
    const channels = await Promise.all(names.map((n) => subscribe(client, n)));
    const received = Object.fromEntries(names.map((n) => [n, []]));
    channels.forEach((ch, i) => ch.bind('tick', (data) => received[names[i]].push(data.to)));

    for (const n of names) await rest.trigger(n, 'tick', { to: n });
    await waitFor(() => names.every((n) => received[n].length >= 1), 5_000, 'one tick per channel');
    await sleep(200);
    for (const n of names) assert.deepEqual(received[n], [n], `channel ${n} received ${JSON.stringify(received[n])}`);
  });

  test('unsubscribed_channel_receives_no_more_events', { timeout: 15_000 }, async () => {
    const client = resources.add(pusherClient(server.port));
    await connected(client);
    const channel = await subscribe(client, 'leaving');
    await subscribe(client, 'staying');

    // Count at the connection level: anything the server still sends for the left channel counts.
    const leftChannelMessages = [];
    client.connection.bind('message', (m) => {
      if (m.channel === 'leaving' && !m.event.startsWith('pusher')) leftChannelMessages.push(m);
    });
    const before = once(channel, 'news');
    await rest.trigger('leaving', 'news', { n: 1 });
    await before;
    assert.equal(leftChannelMessages.length, 1);

    client.unsubscribe('leaving');
    // The server handles one connection's messages in order: once a later subscription is
    // confirmed, the unsubscribe has been applied.
    await subscribe(client, 'fence-after-unsubscribe');

    await rest.trigger('leaving', 'news', { n: 2 });
    const fence = once(client.channel('staying'), 'fence');
    await rest.trigger('staying', 'fence', {});
    await fence;
    await sleep(300);
    assert.equal(leftChannelMessages.length, 1, `events after unsubscribe: ${JSON.stringify(leftChannelMessages.slice(1))}`);
  });

  test('disconnected_client_is_forgotten_and_others_keep_receiving', { timeout: 15_000 }, async () => {
    const leaver = pusherClient(server.port);
    resources.add(leaver);
    const stayer = resources.add(pusherClient(server.port));
    await Promise.all([connected(leaver), connected(stayer)]);
    await subscribe(leaver, 'churn');
    const channel = await subscribe(stayer, 'churn');

    leaver.disconnect();
    await waitFor(() => leaver.connection.state === 'disconnected', 5_000, 'leaver disconnected');

    const got = once(channel, 'after-leave');
    const res = await rest.trigger('churn', 'after-leave', { ok: true });
    assert.equal(res.status, 200);
    assert.deepEqual(await got, { ok: true });
  });

  test('laravel_echo_listens_on_a_public_channel', { timeout: 15_000 }, async () => {
    const echo = new Echo({
      broadcaster: 'pusher',
      key: APP.key,
      cluster: 'mt1',
      wsHost: '127.0.0.1',
      wsPort: server.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
      Pusher,
    });
    resources.add(echo, () => echo.disconnect());
    await connected(echo.connector.pusher);
    assert.match(echo.socketId(), /^\d+\.\d+$/);

    const subscribed = new Promise((resolve) => echo.channel('orders').subscribed(resolve));
    await withTimeout(subscribed, 5_000, 'Echo subscribed() callback');

    const shipped = new Promise((resolve) => {
      // Without a leading dot Echo prefixes the Laravel event namespace, as a Laravel app sends it.
      echo.channel('orders').listen('OrderShipped', resolve);
    });
    await rest.trigger('orders', 'App\\Events\\OrderShipped', { order: { id: 42 } });
    const data = await withTimeout(shipped, 5_000, 'Echo listen() callback');
    assert.deepEqual(data, { order: { id: 42 } });
  });
});
