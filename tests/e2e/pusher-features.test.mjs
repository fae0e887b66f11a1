// The Pusher features Soketi lacks, on one server with 2 shards, judged by the real
// clients: pusher-js's own `pusher:subscription_count` binding and `user.watchlist` API,
// the `pusher` library verifying webhooks, raw WebSockets for the origin check.
// - live subscription counts (enableSubscriptionCount), coalesced under a burst;
// - watchlist online status (enableWatchlistEvents), its limit;
// - the grace before channel_vacated / member_removed webhooks (a reload sends none);
// - the origin allow-list (allowedOrigins).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';

import { APP, cleanup } from './harness.mjs';
import { metricSum, scrape, startWithMetrics, uniq, webhookReceiver, webhooksEnv } from './ops-helpers.mjs';
import { connectedAuthed, openSpread, parseData, rawSocket, rawSubscribe, shardHint, signer, subscribe, waitFor } from './protocol-helpers.mjs';

/** The grace the tests run with (the default is 3 s), in ms. */
const GRACE_MS = 1_000;
/** Pusher's coalescing interval in corecast (`COUNT_INTERVAL_MS`). */
const COUNT_INTERVAL_MS = 250;

const ev = (name, channel, extra = {}) => (e) => e.name === name && e.channel === channel && Object.entries(extra).every(([k, v]) => e[k] === v);

/** Records what a pusher-js channel hears through its `pusher:subscription_count` binding. */
function countsOf(channel) {
  const seen = [];
  channel.bind('pusher:subscription_count', (data) => seen.push(data.subscription_count));
  return seen;
}

/** Records a pusher-js client's watchlist events, as `pusher.user.watchlist` delivers them. */
function watchlistOf(client) {
  const seen = [];
  for (const name of ['online', 'offline']) client.user.watchlist.bind(name, (e) => seen.push({ name: e.name, user_ids: [...e.user_ids].sort() }));
  return seen;
}

describe('pusher features over 2 shards', { timeout: 90_000 }, () => {
  let server;
  let receiver;
  const resources = cleanup();

  before(async () => {
    receiver = await webhookReceiver();
    const hooks = [{ url: receiver.url('/hook'), event_types: ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'subscription_count'] }];
    server = await startWithMetrics({
      shards: 2,
      env: {
        SOKETI_DEFAULT_APP_WEBHOOKS: webhooksEnv(hooks),
        CORECAST_DEFAULT_APP_ENABLE_SUBSCRIPTION_COUNT: 'true',
        CORECAST_DEFAULT_APP_ENABLE_WATCHLIST_EVENTS: 'true',
        CORECAST_DEFAULT_APP_ALLOWED_ORIGINS: 'https://good.test,*.example.test',
        CORECAST_WEBHOOK_VACATE_DELAY_MS: String(GRACE_MS),
      },
    });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
    await receiver?.close();
  });

  const spread = async (count, optsFor = () => ({})) => {
    let i = 0;
    const kept = await openSpread(() => connectedAuthed(server.port, optsFor(i++)), count, { max: count * 6, discard: (c) => c.disconnect() });
    for (const c of kept) resources.add(c);
    return kept;
  };

  test('subscription_count_reaches_subscribers_on_both_shards_and_follows_leaves_with_its_webhook', async () => {
    const name = `count-${uniq()}`;
    const clients = await spread(3);
    assert.ok(new Set(clients.map((c) => shardHint(c.socketId))).size === 2, 'the clients span both shards');
    const seen = [];
    for (const c of clients) {
      const channel = c.subscribe(name);
      seen.push(countsOf(channel));
    }
    await waitFor(() => seen.every((s) => s.at(-1) === 3), 5_000, `every subscriber sees 3 (saw ${JSON.stringify(seen)})`);
    assert.equal(clients[0].channel(name).subscriptionCount, 3, 'pusher-js keeps the count on the channel');
    clients[2].disconnect();
    await waitFor(() => seen.slice(0, 2).every((s) => s.at(-1) === 2), 5_000, `the others see 2 (saw ${JSON.stringify(seen)})`);
    const hook = await receiver.waitForEvents(ev('subscription_count', name, { subscription_count: 2 }), 1, 5_000, `subscription_count 2 of ${name}`, '/hook');
    assert.ok(hook[0].request.valid, 'the subscription_count webhook is signed');
    // Presence channels count members, not subscriptions: no count for them.
    const presence = `presence-${uniq()}`;
    const member = await connectedAuthed(server.port, { member: { user_id: 'p1', user_info: {} } });
    resources.add(member);
    const pch = await subscribe(member, presence);
    const pseen = countsOf(pch);
    const marker = clients[0].subscribe(`count-marker-${uniq()}`);
    const markerSeen = countsOf(marker);
    await waitFor(() => markerSeen.length > 0, 5_000, 'a count on a public channel subscribed after the presence one');
    assert.deepEqual(pseen, [], 'no subscription_count on a presence channel');
  });

  test('a_burst_of_1000_subscriptions_is_coalesced_into_a_few_counts', { timeout: 60_000 }, async () => {
    const name = `burst-${uniq()}`;
    const watcher = await connectedAuthed(server.port);
    resources.add(watcher);
    const seen = countsOf(await subscribe(watcher, name));
    const sockets = [];
    for (let i = 0; i < 1_000; i++) sockets.push(rawSocket(server.port));
    const opened = await Promise.all(sockets);
    for (const s of opened) resources.add(s);
    const started = Date.now();
    await Promise.all(opened.map((s) => rawSubscribe(s, name)));
    await waitFor(() => seen.at(-1) === 1_001, 10_000, `the watcher sees 1001 (saw ${JSON.stringify(seen)})`);
    const tookMs = Date.now() - started;
    // One count per interval at most, plus the first one and the last one.
    const allowed = Math.ceil(tookMs / COUNT_INTERVAL_MS) + 3;
    assert.ok(seen.length <= allowed, `${seen.length} counts for a burst of 1000 over ${tookMs} ms (at most ${allowed}): ${JSON.stringify(seen)}`);
    const sampled = await opened[999].next((m) => m.event === 'pusher_internal:subscription_count', 5_000, 'a count on a raw subscriber');
    assert.equal(sampled.channel, name);
    assert.ok(JSON.parse(sampled.data).subscription_count > 0);
    for (const s of opened) s.terminate();
    await waitFor(() => seen.at(-1) === 1, 10_000, `back to 1 after the burst leaves (saw ${JSON.stringify(seen.slice(-5))})`);
  });

  test('watchlist_initial_state_then_online_and_offline_across_shards', async () => {
    const [bob, carol, dave] = [`bob-${uniq()}`, `carol-${uniq()}`, `dave-${uniq()}`];
    const [carolClient] = await spread(1, () => ({ user: { id: carol } }));
    carolClient.signin();
    await waitFor(() => carolClient.user.user_data?.id === carol, 5_000, 'carol signed in');
    const watchers = await spread(2, () => ({ user: { id: `alice-${uniq()}`, watchlist: [bob, carol, dave] } }));
    const seen = watchers.map(watchlistOf);
    for (const w of watchers) w.signin();
    const initial = [{ name: 'online', user_ids: [carol] }, { name: 'offline', user_ids: [bob, dave].sort() }];
    await waitFor(() => seen.every((s) => s.length >= 2), 5_000, `initial state (saw ${JSON.stringify(seen)})`);
    for (const s of seen) assert.deepEqual(s, initial);
    // Bob's first socket (whichever shard) makes him online; his second changes nothing.
    const bobs = await spread(2, () => ({ user: { id: bob } }));
    bobs[0].signin();
    await waitFor(() => seen.every((s) => s.length === 3), 5_000, `bob online (saw ${JSON.stringify(seen)})`);
    for (const s of seen) assert.deepEqual(s[2], { name: 'online', user_ids: [bob] });
    bobs[1].signin();
    await waitFor(() => bobs[1].user.user_data?.id === bob, 5_000, 'bob signed in twice');
    bobs[0].disconnect();
    carolClient.disconnect();
    await waitFor(() => seen.every((s) => s.length === 4), 5_000, `carol offline (saw ${JSON.stringify(seen)})`);
    for (const s of seen) assert.deepEqual(s[3], { name: 'offline', user_ids: [carol] }, 'bob keeps a socket: only carol went offline');
    bobs[1].disconnect();
    await waitFor(() => seen.every((s) => s.length === 5), 5_000, `bob offline (saw ${JSON.stringify(seen)})`);
    for (const s of seen) assert.deepEqual(s[4], { name: 'offline', user_ids: [bob] });
  });

  test('a_watchlist_over_100_ids_refuses_the_signin_with_4009', async () => {
    const raw = await rawSocket(server.port);
    resources.add(raw);
    const user = { id: `long-${uniq()}`, watchlist: Array.from({ length: 101 }, (_, i) => `u${i}`) };
    const { auth, user_data } = signer.authenticateUser(raw.socketId, user);
    raw.send({ event: 'pusher:signin', data: { user_data, auth } });
    const error = parseData((await raw.nextEvent('pusher:error')).data);
    assert.equal(error.code, 4009);
    assert.match(error.message, /at most 100/);
    assert.equal((await raw.closed).code, 4009);
  });

  test('a_reload_within_the_grace_sends_no_vacated_occupied_pair_and_a_real_leave_one_vacated', async () => {
    const name = `reload-${uniq()}`;
    const presence = `presence-reload-${uniq()}`;
    const member = { user_id: `m-${uniq()}`, user_info: {} };
    const first = await connectedAuthed(server.port, { member });
    await subscribe(first, name);
    await subscribe(first, presence);
    await receiver.waitForEvents(ev('member_added', presence), 1, 5_000, 'member_added', '/hook');
    // The reload: leave, and come back (on a new socket, any shard) within the grace.
    first.disconnect();
    const second = await connectedAuthed(server.port, { member });
    await subscribe(second, name);
    await subscribe(second, presence);
    // A real leave: its vacate comes after the grace, and is the only one.
    const leftAt = Date.now();
    second.disconnect();
    const vacated = await receiver.waitForEvents(ev('channel_vacated', name), 1, 10_000, `channel_vacated ${name}`, '/hook');
    await receiver.waitForEvents(ev('member_removed', presence), 1, 10_000, `member_removed ${presence}`, '/hook');
    assert.ok(vacated[0].request.at - leftAt >= GRACE_MS - 50, `channel_vacated came ${vacated[0].request.at - leftAt} ms after the leave, before the ${GRACE_MS} ms grace`);
    const all = receiver.events('/hook');
    const count = (n, ch) => all.filter(ev(n, ch)).length;
    assert.equal(count('channel_occupied', name), 1, 'one channel_occupied: the reload sent none');
    assert.equal(count('channel_vacated', name), 1, 'one channel_vacated: the reload sent none');
    assert.equal(count('member_added', presence), 1, 'one member_added');
    assert.equal(count('member_removed', presence), 1, 'one member_removed');
  });

  test('origins_not_allowed_are_refused_with_4009_and_counted_others_and_none_accepted', async () => {
    const open = (origin) => {
      const headers = origin ? { Origin: origin } : {};
      const ws = new WebSocket(`ws://127.0.0.1:${server.port}/app/${APP.key}?protocol=7&client=js&version=8.4.0`, { headers });
      const messages = [];
      ws.on('message', (d) => messages.push(JSON.parse(d.toString())));
      ws.on('error', () => {});
      const closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
      resources.add(ws);
      return { ws, messages, closed };
    };
    const before = metricSum(await scrape(server.metricsPort), 'corecast_origins_rejected_total');
    const refused = open('https://evil.test');
    assert.equal(await refused.closed, 4009);
    assert.equal(refused.messages[0].event, 'pusher:error');
    assert.deepEqual(parseData(refused.messages[0].data), { code: 4009, message: 'Origin not allowed.' });
    for (const origin of ['https://good.test', 'http://app.example.test:8080', undefined]) {
      const c = open(origin);
      await waitFor(() => c.messages.some((m) => m.event === 'pusher:connection_established'), 5_000, `connection_established for Origin ${origin}`);
      c.ws.terminate();
    }
    const afterCount = metricSum(await scrape(server.metricsPort), 'corecast_origins_rejected_total');
    assert.equal(afterCount - before, 1, 'the refusal is counted once');
  });
});
