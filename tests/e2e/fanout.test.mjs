// REST publishes fan out across shards: 200 pusher-js connections on a 2-shard server.
//
// SO_REUSEPORT hashes each new connection to one of the shards' listeners, so 200
// connections land on both shards (all on one shard has odds of about 2^-199): every
// channel below has subscribers on both shards, and a publish that reaches all of them
// crossed the shard rings.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, connected, pusherClient, restClient, sleep, startServer, subscribe, waitFor } from './harness.mjs';

const CLIENTS = 200;
const CHANNELS = ['fan-0', 'fan-1', 'fan-2', 'fan-3'];
/** Time to wait after the expected deliveries for duplicates or strays to show up. */
const SETTLE_MS = 400;

describe('fan-out over 2 shards with 200 pusher-js clients', { timeout: 120_000 }, () => {
  let server;
  let rest;
  const resources = cleanup();
  /** One entry per client: its channel and every non-pusher message the server sent it. */
  const subscribers = [];

  before(async () => {
    server = await startServer({ shards: 2 });
    rest = restClient(server.port);

    for (let i = 0; i < CLIENTS; i++) {
      const client = resources.add(pusherClient(server.port));
      const sub = { client, channel: CHANNELS[i % CHANNELS.length], received: [] };
      // Record at the connection level, so a message for a channel this client never
      // joined is caught too (pusher-js would silently drop it).
      client.connection.bind('message', (m) => {
        if (!m.event.startsWith('pusher')) sub.received.push({ channel: m.channel, event: m.event, data: m.data });
      });
      subscribers.push(sub);
    }
    // Connect and subscribe in waves so 2 shared cores are not flooded with handshakes.
    for (let i = 0; i < CLIENTS; i += 50) {
      const wave = subscribers.slice(i, i + 50);
      await Promise.all(wave.map((s) => connected(s.client, 15_000)));
      await Promise.all(wave.map((s) => subscribe(s.client, s.channel, 15_000)));
    }
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  const eventsNamed = (sub, event) => sub.received.filter((r) => r.event === event);
  const on = (channels) => subscribers.filter((s) => channels.includes(s.channel));
  const notOn = (channels) => subscribers.filter((s) => !channels.includes(s.channel));

  test('every_connection_is_connected_with_a_unique_socket_id', () => {
    const ids = subscribers.map((s) => s.client.connection.socket_id);
    assert.equal(new Set(ids).size, CLIENTS);
    for (const s of subscribers) assert.equal(s.client.connection.state, 'connected');
  });

  test('trigger_reaches_every_subscriber_of_the_channel_exactly_once_and_nobody_else', { timeout: 20_000 }, async () => {
    const res = await rest.trigger('fan-0', 'single', { id: 'single-1' });
    assert.equal(res.status, 200);

    const targets = on(['fan-0']);
    await waitFor(() => targets.every((s) => eventsNamed(s, 'single').length >= 1), 10_000, 'every fan-0 subscriber to get the event').catch((err) => {
      const missing = targets.filter((s) => eventsNamed(s, 'single').length === 0).length;
      throw new Error(`${err.message}: ${missing} of ${targets.length} fan-0 subscribers got nothing`);
    });
    await sleep(SETTLE_MS);

    for (const s of targets) {
      assert.deepEqual(eventsNamed(s, 'single'), [{ channel: 'fan-0', event: 'single', data: { id: 'single-1' } }], `subscriber ${s.client.connection.socket_id}`);
    }
    const strays = notOn(['fan-0']).filter((s) => eventsNamed(s, 'single').length > 0);
    assert.equal(strays.length, 0, `${strays.length} subscribers of other channels got the fan-0 event`);
  });

  test('trigger_to_several_channels_reaches_each_of_them_once', { timeout: 20_000 }, async () => {
    const res = await rest.trigger(['fan-1', 'fan-2'], 'multi', { id: 'multi-1' });
    assert.equal(res.status, 200);

    const targets = on(['fan-1', 'fan-2']);
    await waitFor(() => targets.every((s) => eventsNamed(s, 'multi').length >= 1), 10_000, 'every fan-1 and fan-2 subscriber to get the event');
    await sleep(SETTLE_MS);

    for (const s of targets) {
      assert.deepEqual(eventsNamed(s, 'multi'), [{ channel: s.channel, event: 'multi', data: { id: 'multi-1' } }], `subscriber ${s.client.connection.socket_id} on ${s.channel}`);
    }
    const strays = notOn(['fan-1', 'fan-2']).filter((s) => eventsNamed(s, 'multi').length > 0);
    assert.equal(strays.length, 0, `${strays.length} subscribers of fan-0/fan-3 got the event`);
  });

  test('trigger_batch_delivers_each_event_to_its_own_channel', { timeout: 20_000 }, async () => {
    const res = await rest.triggerBatch([
      { channel: 'fan-0', name: 'batch-a', data: { id: 'a' } },
      { channel: 'fan-1', name: 'batch-b', data: { id: 'b' } },
      { channel: 'fan-3', name: 'batch-c', data: { id: 'c' } },
      { channel: 'fan-3', name: 'batch-d', data: 'plain text d' },
    ]);
    assert.equal(res.status, 200);

    const batchOf = (s) => s.received.filter((r) => r.event.startsWith('batch-'));
    const expected = {
      'fan-0': [{ channel: 'fan-0', event: 'batch-a', data: { id: 'a' } }],
      'fan-1': [{ channel: 'fan-1', event: 'batch-b', data: { id: 'b' } }],
      'fan-2': [],
      'fan-3': [
        { channel: 'fan-3', event: 'batch-c', data: { id: 'c' } },
        { channel: 'fan-3', event: 'batch-d', data: 'plain text d' },
      ],
    };
    await waitFor(() => subscribers.every((s) => batchOf(s).length >= expected[s.channel].length), 10_000, 'every batch event to arrive');
    await sleep(SETTLE_MS);

    for (const s of subscribers) {
      assert.deepEqual(batchOf(s), expected[s.channel], `subscriber ${s.client.connection.socket_id} on ${s.channel}`);
    }
  });

  test('socket_id_excludes_that_socket_and_reaches_the_others', { timeout: 20_000 }, async () => {
    const targets = on(['fan-2']);
    const excluded = targets[0];
    const socketId = excluded.client.connection.socket_id;

    const res = await rest.trigger('fan-2', 'not-you', { id: 'x' }, { socket_id: socketId });
    assert.equal(res.status, 200);

    const others = targets.slice(1);
    await waitFor(() => others.every((s) => eventsNamed(s, 'not-you').length >= 1), 10_000, 'every other fan-2 subscriber to get the event');
    await sleep(SETTLE_MS);

    assert.deepEqual(eventsNamed(excluded, 'not-you'), [], `the excluded socket ${socketId} received the event`);
    for (const s of others) assert.equal(eventsNamed(s, 'not-you').length, 1, `subscriber ${s.client.connection.socket_id}`);
  });

  test('events_triggered_in_sequence_arrive_in_order_at_every_subscriber', { timeout: 60_000 }, async () => {
    const COUNT = 50;
    for (let seq = 0; seq < COUNT; seq++) {
      const res = await rest.trigger('fan-1', 'seq', { seq });
      assert.equal(res.status, 200);
    }
    const targets = on(['fan-1']);
    await waitFor(() => targets.every((s) => eventsNamed(s, 'seq').length >= COUNT), 15_000, `${COUNT} events at every fan-1 subscriber`).catch((err) => {
      const short = targets.filter((s) => eventsNamed(s, 'seq').length < COUNT).map((s) => eventsNamed(s, 'seq').length);
      throw new Error(`${err.message}: ${short.length} subscribers short, counts ${short.join(',')}`);
    });
    await sleep(SETTLE_MS);

    const want = Array.from({ length: COUNT }, (_, i) => i);
    for (const s of targets) {
      assert.deepEqual(
        eventsNamed(s, 'seq').map((r) => r.data.seq),
        want,
        `subscriber ${s.client.connection.socket_id} saw events out of order or duplicated`,
      );
    }
    const strays = notOn(['fan-1']).filter((s) => eventsNamed(s, 'seq').length > 0);
    assert.equal(strays.length, 0);
  });
});
