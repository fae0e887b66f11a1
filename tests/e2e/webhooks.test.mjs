// Webhooks as an app's endpoint receives them: a real HTTP receiver on 127.0.0.1, the
// server configured through SOKETI_DEFAULT_APP_WEBHOOKS (Soketi's JSON list), CORECAST_SHARDS=2
// with pusher-js clients on both shards. Every request is checked with the official `pusher`
// library exactly as an app does: `pusher.webhook({ headers, rawBody })`, `isValid()`,
// `getEvents()`. Event shapes follow https://pusher.com/docs/channels/server_api/webhooks/:
// channel_occupied / channel_vacated (channel existence), member_added / member_removed
// (presence, once per user), client_event (`event`, `data` as a string, `socket_id`, `user_id`
// on presence only), cache_miss; the body is `{ time_ms, events: [...] }`. Soketi's webhook
// options: `headers`, `filter.channel_name_starts_with`, SOKETI_WEBHOOKS_BATCHING(_DURATION).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, restClient, startServer } from './harness.mjs';
import { uniq, webhookReceiver, webhooksEnv } from './ops-helpers.mjs';
import { connectedAuthed, once, openSpread, shardHint, sleep, subscribe, waitFor } from './protocol-helpers.mjs';

/** How long to wait for an event that must NOT come before calling it absent. */
const SETTLE_MS = 700;
const ALL_TYPES = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'client_event', 'cache_miss'];
const CUSTOM_HEADERS = { 'X-Corecast-Test': 'hello-headers', Authorization: 'Bearer t0k3n' };

const ev = (name, channel, extra = {}) => (e) => e.name === name && e.channel === channel && Object.entries(extra).every(([k, v]) => e[k] === v);
const member = (id) => ({ user_id: id, user_info: { name: `User ${id}` } });

/** Asserts a received request is what an app accepts: signed, JSON, from the app key, with time_ms. */
function assertSignedRequest(r, what) {
  const ctx = `${what}: request #${r.n} to ${r.path} (headers ${JSON.stringify(r.headers)}, body ${r.rawBody.slice(0, 500)})`;
  assert.equal(r.method, 'POST', `${ctx} is not a POST`);
  assert.equal(r.headers['content-type'], 'application/json', `${ctx} has the wrong content-type`);
  assert.equal(r.headers['x-pusher-key'], 'app-key', `${ctx} has the wrong X-Pusher-Key`);
  assert.ok(r.valid, `${ctx}: pusher.webhook().isValid() is false (X-Pusher-Signature does not match HMAC-SHA256(secret, body))`);
  assert.ok(Array.isArray(r.events) && r.events.length > 0, `${ctx}: getEvents() is not a non-empty array`);
  assert.equal(typeof r.data.time_ms, 'number', `${ctx}: body has no numeric time_ms`);
  assert.ok(Math.abs(r.data.time_ms - r.at) < 60_000, `${ctx}: time_ms ${r.data.time_ms} is not close to now (${r.at})`);
}

describe('webhooks over 2 shards (one event per request)', { timeout: 55_000 }, () => {
  let server;
  let receiver;
  const resources = cleanup();

  before(async () => {
    receiver = await webhookReceiver({
      // The retry endpoint fails the first two attempts, then accepts.
      respond: (p, attempt) => (p === '/retry' && attempt <= 2 ? 500 : 200),
    });
    const hooks = [
      { url: receiver.url('/hook'), event_types: ALL_TYPES },
      { url: receiver.url('/orders'), event_types: ['channel_occupied', 'channel_vacated'], filter: { channel_name_starts_with: 'orders-' } },
      { url: receiver.url('/headers'), event_types: ['channel_occupied'], headers: CUSTOM_HEADERS, filter: { channel_name_starts_with: 'hdr-' } },
      { url: receiver.url('/retry'), event_types: ['channel_occupied'], filter: { channel_name_starts_with: 'retry-' } },
    ];
    server = await startServer({
      shards: 2,
      env: {
        SOKETI_DEFAULT_APP_WEBHOOKS: webhooksEnv(hooks),
        SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES: 'true',
      },
    });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
    await receiver?.close();
  });

  const client = async (opts) => resources.add(await connectedAuthed(server.port, opts));
  /** `count` connected pusher-js clients covering both shards (when the socket ids allow it). */
  const spread = async (count, optsFor = () => ({})) => {
    let i = 0;
    const kept = await openSpread(() => connectedAuthed(server.port, optsFor(i++)), count, { max: count * 6, discard: (c) => c.disconnect() });
    for (const c of kept) resources.add(c);
    return kept;
  };

  test('channel_occupied_once_when_first_socket_subscribes_on_either_shard_and_vacated_when_last_leaves', { timeout: 20_000 }, async () => {
    const name = `occ-${uniq()}`;
    const [a, b] = await spread(2);
    const c = await client();
    const shards = new Set([a, b].map((x) => shardHint(x.socketId)));

    await subscribe(a, name);
    const occupied = await receiver.waitForEvents(ev('channel_occupied', name), 1, 5_000, `channel_occupied for ${name}`, '/hook');
    assertSignedRequest(occupied[0].request, 'channel_occupied');
    assert.deepEqual(occupied[0], { name: 'channel_occupied', channel: name }, 'channel_occupied carries exactly name and channel');

    // More sockets, on the other shard too: the channel is already occupied.
    await subscribe(b, name);
    await subscribe(c, name);
    await sleep(SETTLE_MS);
    const occ = receiver.events('/hook').filter(ev('channel_occupied', name));
    assert.equal(occ.length, 1, `channel_occupied for ${name} arrived ${occ.length} times with subscribers on shards ${[...shards]}: ${JSON.stringify(occ)}`);

    // Leaving one by one (unsubscribe, then a disconnect): vacated only after the very last.
    a.unsubscribe(name);
    c.unsubscribe(name);
    await sleep(SETTLE_MS);
    let vac = receiver.events('/hook').filter(ev('channel_vacated', name));
    assert.equal(vac.length, 0, `channel_vacated for ${name} arrived while a socket (shard ${shardHint(b.socketId)}) was still subscribed: ${JSON.stringify(vac)}`);

    b.disconnect();
    vac = await receiver.waitForEvents(ev('channel_vacated', name), 1, 5_000, `channel_vacated for ${name} after the last socket disconnected`, '/hook');
    assertSignedRequest(vac[0].request, 'channel_vacated');
    assert.deepEqual(vac[0], { name: 'channel_vacated', channel: name });
    await sleep(SETTLE_MS);
    const all = receiver.events('/hook').filter((e) => e.channel === name);
    assert.deepEqual(
      all.map((e) => e.name),
      ['channel_occupied', 'channel_vacated'],
      `events for ${name}: ${JSON.stringify(all)}`,
    );
    assert.ok(vac[0].request.data.time_ms >= occupied[0].request.data.time_ms, 'channel_vacated time_ms is before channel_occupied');
  });

  test('member_added_and_member_removed_once_per_user_even_with_sockets_on_both_shards', { timeout: 20_000 }, async () => {
    const name = `presence-wh-${uniq()}`;
    const alice = await spread(2, () => ({ member: member('alice') }));
    const bob = await client({ member: member('bob') });

    await subscribe(alice[0], name);
    await receiver.waitForEvents(ev('member_added', name, { user_id: 'alice' }), 1, 5_000, 'member_added alice', '/hook');
    await subscribe(alice[1], name);
    await subscribe(bob, name);
    const bobAdded = await receiver.waitForEvents(ev('member_added', name, { user_id: 'bob' }), 1, 5_000, 'member_added bob', '/hook');
    assertSignedRequest(bobAdded[0].request, 'member_added');
    assert.deepEqual(bobAdded[0], { name: 'member_added', channel: name, user_id: 'bob' });
    await sleep(SETTLE_MS);
    const aliceAdded = receiver.events('/hook').filter(ev('member_added', name, { user_id: 'alice' }));
    assert.equal(
      aliceAdded.length,
      1,
      `member_added for alice (sockets on shards ${alice.map((c) => shardHint(c.socketId))}) arrived ${aliceAdded.length} times`,
    );

    // One of alice's sockets leaves: she is still a member.
    alice[0].unsubscribe(name);
    await sleep(SETTLE_MS);
    let removed = receiver.events('/hook').filter(ev('member_removed', name, { user_id: 'alice' }));
    assert.equal(removed.length, 0, `member_removed for alice arrived while her other socket was still subscribed: ${JSON.stringify(removed)}`);

    alice[1].disconnect();
    removed = await receiver.waitForEvents(ev('member_removed', name, { user_id: 'alice' }), 1, 5_000, 'member_removed alice after her last socket left', '/hook');
    assertSignedRequest(removed[0].request, 'member_removed');
    assert.deepEqual(removed[0], { name: 'member_removed', channel: name, user_id: 'alice' });

    bob.unsubscribe(name);
    await receiver.waitForEvents(ev('member_removed', name, { user_id: 'bob' }), 1, 5_000, 'member_removed bob', '/hook');
    await receiver.waitForEvents(ev('channel_vacated', name), 1, 5_000, `channel_vacated for ${name}`, '/hook');
    await sleep(SETTLE_MS);
    const counts = {};
    for (const e of receiver.events('/hook').filter((x) => x.channel === name)) {
      const k = `${e.name}${e.user_id ? `:${e.user_id}` : ''}`;
      counts[k] = (counts[k] ?? 0) + 1;
    }
    assert.deepEqual(counts, {
      channel_occupied: 1,
      'member_added:alice': 1,
      'member_added:bob': 1,
      'member_removed:alice': 1,
      'member_removed:bob': 1,
      channel_vacated: 1,
    });
  });

  test('client_event_carries_event_data_and_socket_id_on_private_channels', { timeout: 15_000 }, async () => {
    const name = `private-wh-${uniq()}`;
    const [sender, reader] = await spread(2);
    const chSender = await subscribe(sender, name);
    await subscribe(reader, name);
    const got = once(reader.channel(name), 'client-typing');
    assert.equal(chSender.trigger('client-typing', { text: 'hi', n: 1 }), true);
    await got;

    const events = await receiver.waitForEvents(ev('client_event', name), 1, 5_000, `client_event on ${name}`, '/hook');
    const e = events[0];
    assertSignedRequest(e.request, 'client_event');
    assert.equal(e.event, 'client-typing');
    assert.equal(typeof e.data, 'string', `client_event data must be a string of JSON, got ${JSON.stringify(e.data)}`);
    assert.deepEqual(JSON.parse(e.data), { text: 'hi', n: 1 });
    assert.equal(e.socket_id, sender.socketId, 'socket_id is not the sender');
    assert.ok(!('user_id' in e), `user_id only belongs to presence channels: ${JSON.stringify(e)}`);
    await sleep(SETTLE_MS);
    assert.equal(receiver.events('/hook').filter(ev('client_event', name)).length, 1, 'one client event must give one client_event');
  });

  test('client_event_on_presence_channels_adds_user_id', { timeout: 15_000 }, async () => {
    const name = `presence-wh-ce-${uniq()}`;
    const [carol, dan] = await spread(2, (i) => ({ member: member(i === 0 ? 'carol' : 'dan') }));
    const chCarol = await subscribe(carol, name);
    await subscribe(dan, name);
    assert.equal(chCarol.trigger('client-wave', { from: 'carol' }), true);

    const events = await receiver.waitForEvents(ev('client_event', name), 1, 5_000, `client_event on ${name}`, '/hook');
    const e = events[0];
    assertSignedRequest(e.request, 'client_event (presence)');
    assert.equal(e.event, 'client-wave');
    assert.deepEqual(JSON.parse(e.data), { from: 'carol' });
    assert.equal(e.socket_id, carol.socketId);
    assert.equal(e.user_id, 'carol', `presence client_event must carry the sender's user_id: ${JSON.stringify(e)}`);
  });

  test('cache_miss_when_subscribing_to_an_empty_cache_channel_and_not_once_it_holds_an_event', { timeout: 15_000 }, async () => {
    const name = `cache-wh-${uniq()}`;
    const first = await client();
    const ch = first.subscribe(name);
    const clientMiss = once(ch, 'pusher:cache_miss');
    const misses = await receiver.waitForEvents(ev('cache_miss', name), 1, 5_000, `cache_miss for ${name}`, '/hook');
    assertSignedRequest(misses[0].request, 'cache_miss');
    assert.deepEqual(misses[0], { name: 'cache_miss', channel: name });
    await clientMiss;

    await restClient(server.port).trigger(name, 'price', { v: 42 });
    await sleep(200);
    const second = await client();
    const ch2 = second.subscribe(name);
    await once(ch2, 'price');
    await sleep(SETTLE_MS);
    const all = receiver.events('/hook').filter(ev('cache_miss', name));
    assert.equal(all.length, 1, `cache_miss arrived ${all.length} times; the second subscriber found a cached event`);
  });

  test('filter_channel_name_starts_with_only_sends_matching_channels', { timeout: 15_000 }, async () => {
    const tag = uniq();
    const orders = `orders-${tag}`;
    const invoices = `invoices-${tag}`;
    const c = await client();
    await subscribe(c, orders);
    await subscribe(c, invoices);
    // The unfiltered webhook sees both, so both events happened.
    await receiver.waitForEvents(ev('channel_occupied', orders), 1, 5_000, `channel_occupied ${orders} on /hook`, '/hook');
    await receiver.waitForEvents(ev('channel_occupied', invoices), 1, 5_000, `channel_occupied ${invoices} on /hook`, '/hook');
    const mine = await receiver.waitForEvents(ev('channel_occupied', orders), 1, 5_000, `channel_occupied ${orders} on /orders`, '/orders');
    assertSignedRequest(mine[0].request, 'filtered webhook');
    await sleep(SETTLE_MS);
    const seen = receiver.events('/orders');
    const foreign = seen.filter((e) => !e.channel.startsWith('orders-'));
    assert.deepEqual(foreign, [], `the orders- webhook got events for other channels: ${JSON.stringify(foreign)}`);
    const wrongType = seen.filter((e) => !['channel_occupied', 'channel_vacated'].includes(e.name));
    assert.deepEqual(wrongType, [], `the orders- webhook got event types it did not ask for: ${JSON.stringify(wrongType)}`);

    c.unsubscribe(orders);
    await receiver.waitForEvents(ev('channel_vacated', orders), 1, 5_000, `channel_vacated ${orders} on /orders`, '/orders');
  });

  test('custom_headers_from_the_webhook_config_arrive', { timeout: 15_000 }, async () => {
    const name = `hdr-${uniq()}`;
    const c = await client();
    await subscribe(c, name);
    const got = await receiver.waitForEvents(ev('channel_occupied', name), 1, 5_000, `channel_occupied ${name} on /headers`, '/headers');
    const r = got[0].request;
    assertSignedRequest(r, 'webhook with custom headers');
    assert.equal(r.headers['x-corecast-test'], 'hello-headers', `custom header missing: ${JSON.stringify(r.headers)}`);
    assert.equal(r.headers.authorization, 'Bearer t0k3n', `custom Authorization header missing: ${JSON.stringify(r.headers)}`);
    // Webhooks without headers do not get them.
    const plain = receiver.on('/hook').filter((x) => 'x-corecast-test' in x.headers);
    assert.deepEqual(plain.map((x) => x.n), [], 'custom headers leaked to another webhook');
  });

  test('a_failing_receiver_is_retried_until_it_answers_2xx', { timeout: 20_000 }, async () => {
    const name = `retry-${uniq()}`;
    const c = await client();
    await subscribe(c, name);
    await waitFor(() => receiver.on('/retry').length >= 3, 12_000, 'three requests to /retry (500, 500, then 200)').catch((err) => {
      throw new Error(`${err.message}; got ${receiver.on('/retry').length}: ${JSON.stringify(receiver.on('/retry').map((r) => ({ status: r.status, at: r.at, body: r.rawBody })))}`);
    });
    const attempts = receiver.on('/retry');
    assert.deepEqual(
      attempts.slice(0, 3).map((r) => r.status),
      [500, 500, 200],
      'the receiver answered these statuses',
    );
    for (const r of attempts) {
      assertSignedRequest(r, 'retried webhook');
      assert.ok(
        r.events.some(ev('channel_occupied', name)),
        `attempt #${r.n} does not carry channel_occupied for ${name}: ${r.rawBody}`,
      );
    }
    // Delivered: no further attempts.
    await sleep(1_500);
    assert.equal(receiver.on('/retry').length, 3, `requests after the 200: ${JSON.stringify(receiver.on('/retry').slice(3).map((r) => r.rawBody))}`);
  });

  test('without_batching_each_request_carries_one_event', { timeout: 10_000 }, async () => {
    assert.ok(receiver.on('/hook').length > 0, 'no webhook requests at all');
    for (const r of receiver.on('/hook')) {
      assertSignedRequest(r, 'unbatched webhook');
      assert.equal(r.events.length, 1, `request #${r.n} carries ${r.events.length} events without batching: ${r.rawBody}`);
    }
  });
});

describe('webhook batching (SOKETI_WEBHOOKS_BATCHING=true, 200 ms)', { timeout: 30_000 }, () => {
  let server;
  let receiver;
  const resources = cleanup();

  before(async () => {
    receiver = await webhookReceiver();
    server = await startServer({
      shards: 2,
      env: {
        SOKETI_DEFAULT_APP_WEBHOOKS: webhooksEnv([{ url: receiver.url('/batch'), event_types: ['channel_occupied', 'channel_vacated'] }]),
        SOKETI_WEBHOOKS_BATCHING: 'true',
        SOKETI_WEBHOOKS_BATCHING_DURATION: '200',
      },
    });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
    await receiver?.close();
  });

  test('quick_events_arrive_in_fewer_requests_with_several_events_per_body', { timeout: 20_000 }, async () => {
    const tag = uniq();
    const names = Array.from({ length: 6 }, (_, i) => `batch-${tag}-${i}`);
    const clients = await openSpread(() => connectedAuthed(server.port), 2, { max: 12, discard: (c) => c.disconnect() });
    for (const c of clients) resources.add(c);
    // Subscribe to all at once (no awaiting in between), alternating clients, so the
    // occupied events come from both shards within a few milliseconds.
    const subs = names.map((n, i) => subscribe(clients[i % clients.length], n));
    await Promise.all(subs);
    const got = await receiver.waitForEvents((e) => e.name === 'channel_occupied' && names.includes(e.channel), names.length, 8_000, 'every channel_occupied', '/batch');
    assert.deepEqual([...new Set(got.map((e) => e.channel))].sort(), [...names].sort());
    await sleep(SETTLE_MS);
    const reqs = receiver.on('/batch');
    for (const r of reqs) assertSignedRequest(r, 'batched webhook');
    const carrying = reqs.filter((r) => r.events.some((e) => names.includes(e.channel)));
    assert.ok(
      carrying.length < names.length,
      `${names.length} quick events came in ${carrying.length} requests; batching should combine them: ${JSON.stringify(carrying.map((r) => r.events.length))}`,
    );
    assert.ok(
      carrying.some((r) => r.events.length >= 2),
      `no request carried several events: ${JSON.stringify(carrying.map((r) => r.rawBody))}`,
    );
    const occupied = receiver.events('/batch').filter((e) => e.name === 'channel_occupied' && names.includes(e.channel));
    assert.equal(occupied.length, names.length, `each channel_occupied must arrive exactly once: ${JSON.stringify(occupied)}`);
  });
});
