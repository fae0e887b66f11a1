// The Pusher features Soketi lacks across two corecast nodes (2 shards each) joined by a
// real redis-server: subscription counts summed over both nodes (pusher-js's
// `pusher:subscription_count`), watchlist online status decided once for the cluster
// (`pusher.user.watchlist`), and the webhook grace kept in Redis, so a reload onto the
// other node sends no channel_vacated / channel_occupied pair.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, startServer } from './harness.mjs';
import { uniq, webhookReceiver, webhooksEnv } from './ops-helpers.mjs';
import { connectedAuthed, subscribe, waitFor } from './protocol-helpers.mjs';
import { startRedis } from './redis-helpers.mjs';

const GRACE_MS = 1_000;

const ev = (name, channel) => (e) => e.name === name && e.channel === channel;

function countsOf(channel) {
  const seen = [];
  channel.bind('pusher:subscription_count', (data) => seen.push(data.subscription_count));
  return seen;
}

function watchlistOf(client) {
  const seen = [];
  for (const name of ['online', 'offline']) client.user.watchlist.bind(name, (e) => seen.push({ name: e.name, user_ids: [...e.user_ids].sort() }));
  return seen;
}

describe('pusher features on two nodes over redis', { timeout: 90_000 }, () => {
  let redis;
  let receiver;
  let nodeA;
  let nodeB;
  const resources = cleanup();

  before(async () => {
    redis = await startRedis();
    receiver = await webhookReceiver();
    const hooks = [{ url: receiver.url('/hook'), event_types: ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'subscription_count'] }];
    const env = {
      SOKETI_ADAPTER_DRIVER: 'redis',
      SOKETI_DB_REDIS_HOST: '127.0.0.1',
      SOKETI_DB_REDIS_PORT: String(redis.port),
      SOKETI_DEFAULT_APP_WEBHOOKS: webhooksEnv(hooks),
      CORECAST_DEFAULT_APP_ENABLE_SUBSCRIPTION_COUNT: 'true',
      CORECAST_DEFAULT_APP_ENABLE_WATCHLIST_EVENTS: 'true',
      CORECAST_WEBHOOK_VACATE_DELAY_MS: String(GRACE_MS),
    };
    nodeA = await startServer({ shards: 2, env });
    nodeB = await startServer({ shards: 2, env });
  });

  after(async () => {
    await resources.closeAll();
    await nodeA?.stop();
    await nodeB?.stop();
    await receiver?.close();
    redis?.stop();
  });

  const client = async (node, opts) => resources.add(await connectedAuthed(node.port, opts));

  /** Waits until both nodes see each other through Redis (a count crosses over). */
  async function nodesJoined() {
    const name = `join-${uniq()}`;
    const a = await client(nodeA);
    const seen = countsOf(await subscribe(a, name));
    const b = await client(nodeB);
    await subscribe(b, name);
    await waitFor(() => seen.at(-1) === 2, 20_000, `node A hearing node B's count (saw ${JSON.stringify(seen)})`);
    a.disconnect();
    b.disconnect();
  }

  test('counts_are_summed_over_both_nodes_and_every_shard', async () => {
    await nodesJoined();
    const name = `count-${uniq()}`;
    const clients = [await client(nodeA), await client(nodeA), await client(nodeB), await client(nodeB)];
    const seen = [];
    for (const c of clients) seen.push(countsOf(await subscribe(c, name)));
    await waitFor(() => seen.every((s) => s.at(-1) === 4), 10_000, `4 on both nodes (saw ${JSON.stringify(seen)})`);
    clients[3].disconnect();
    clients[0].disconnect();
    await waitFor(() => [seen[1], seen[2]].every((s) => s.at(-1) === 2), 10_000, `2 after a leave on each node (saw ${JSON.stringify(seen)})`);
    await receiver.waitForEvents((e) => ev('subscription_count', name)(e) && e.subscription_count === 2, 1, 5_000, `subscription_count 2 of ${name}`, '/hook');
    // Each change is told by the node it happened on: no count above the real one.
    const counts = receiver.events('/hook').filter(ev('subscription_count', name)).map((e) => e.subscription_count);
    assert.ok(counts.every((n) => n >= 1 && n <= 4), `webhook counts within 1..4: ${JSON.stringify(counts)}`);
  });

  test('watchlist_initial_state_online_and_offline_across_nodes', async () => {
    await nodesJoined();
    const [bob, carol] = [`bob-${uniq()}`, `carol-${uniq()}`];
    const carolClient = await client(nodeB, { user: { id: carol } });
    carolClient.signin();
    await waitFor(() => carolClient.user.user_data?.id === carol, 5_000, 'carol signed in on B');
    // A probe on A watching carol: once it says online, the cluster knows she is.
    const probe = await client(nodeA, { user: { id: `probe-${uniq()}`, watchlist: [carol] } });
    const probeSeen = watchlistOf(probe);
    probe.signin();
    await waitFor(() => probeSeen.some((e) => e.name === 'online'), 5_000, `probe sees carol online (saw ${JSON.stringify(probeSeen)})`);
    const alice = await client(nodeA, { user: { id: `alice-${uniq()}`, watchlist: [bob, carol] } });
    const seen = watchlistOf(alice);
    alice.signin();
    await waitFor(() => seen.length >= 2, 5_000, `initial state (saw ${JSON.stringify(seen)})`);
    assert.deepEqual(seen, [
      { name: 'online', user_ids: [carol] },
      { name: 'offline', user_ids: [bob] },
    ]);
    const bobB = await client(nodeB, { user: { id: bob } });
    bobB.signin();
    await waitFor(() => seen.length === 3, 5_000, `bob online from B (saw ${JSON.stringify(seen)})`);
    assert.deepEqual(seen[2], { name: 'online', user_ids: [bob] });
    // A second socket on the other node changes nothing; the last one going does.
    const bobA = await client(nodeA, { user: { id: bob } });
    bobA.signin();
    await waitFor(() => bobA.user.user_data?.id === bob, 5_000, 'bob signed in on A too');
    bobB.disconnect();
    carolClient.disconnect();
    await waitFor(() => seen.length === 4, 5_000, `carol offline (saw ${JSON.stringify(seen)})`);
    assert.deepEqual(seen[3], { name: 'offline', user_ids: [carol] });
    bobA.disconnect();
    await waitFor(() => seen.length === 5, 5_000, `bob offline (saw ${JSON.stringify(seen)})`);
    assert.deepEqual(seen[4], { name: 'offline', user_ids: [bob] });
  });

  test('a_reload_onto_the_other_node_sends_no_webhook_pair_and_a_real_leave_one_vacated', async () => {
    await nodesJoined();
    const name = `reload-${uniq()}`;
    const presence = `presence-reload-${uniq()}`;
    const member = { user_id: `m-${uniq()}`, user_info: {} };
    const first = await client(nodeA, { member });
    await subscribe(first, name);
    await subscribe(first, presence);
    await receiver.waitForEvents(ev('member_added', presence), 1, 5_000, 'member_added', '/hook');
    first.disconnect();
    const second = await client(nodeB, { member });
    await subscribe(second, name);
    await subscribe(second, presence);
    const leftAt = Date.now();
    second.disconnect();
    const vacated = await receiver.waitForEvents(ev('channel_vacated', name), 1, 10_000, `channel_vacated ${name}`, '/hook');
    await receiver.waitForEvents(ev('member_removed', presence), 1, 10_000, `member_removed ${presence}`, '/hook');
    assert.ok(vacated[0].request.at - leftAt >= GRACE_MS - 50, `channel_vacated ${vacated[0].request.at - leftAt} ms after the leave`);
    const all = receiver.events('/hook');
    const count = (n, ch) => all.filter(ev(n, ch)).length;
    assert.equal(count('channel_occupied', name), 1, 'one channel_occupied over both nodes');
    assert.equal(count('channel_vacated', name), 1, 'one channel_vacated over both nodes');
    assert.equal(count('member_added', presence), 1, 'one member_added over both nodes');
    assert.equal(count('member_removed', presence), 1, 'one member_removed over both nodes');
  });
});
