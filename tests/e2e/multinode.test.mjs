// Two corecast nodes (2 shards each) joined through a real redis-server, driven by the
// real clients: pusher-js subscribers on node A and node B, the official `pusher`
// library triggering through node A, and a presence channel whose pusher-js members
// on both nodes see one roster.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, pusherClient, restClient, sleep, startServer, waitFor } from './harness.mjs';
import { connectedAuthed, subscribe } from './protocol-helpers.mjs';
import { startRedis } from './redis-helpers.mjs';

describe('two nodes over redis with the real clients', { timeout: 60_000 }, () => {
  let redis;
  let nodeA;
  let nodeB;
  let restA;
  let restB;
  const resources = cleanup();

  before(async () => {
    redis = await startRedis();
    const env = {
      SOKETI_ADAPTER_DRIVER: 'redis',
      SOKETI_DB_REDIS_HOST: '127.0.0.1',
      SOKETI_DB_REDIS_PORT: String(redis.port),
    };
    nodeA = await startServer({ shards: 2, env });
    nodeB = await startServer({ shards: 2, env });
    restA = restClient(nodeA.port);
    restB = restClient(nodeB.port);
  });

  after(async () => {
    await resources.closeAll();
    await nodeA?.stop();
    await nodeB?.stop();
    redis?.stop();
  });

  /** Triggers probes through `rest` until pusher-js `channel` (on another node) gets one. */
  async function waitLinked(rest, channel) {
    let got = false;
    const onProbe = () => {
      got = true;
    };
    channel.bind('probe', onProbe);
    try {
      await waitFor(
        async () => {
          await rest.trigger(channel.name, 'probe', {});
          await sleep(150);
          return got;
        },
        10_000,
        `a probe on ${channel.name} crossing nodes through redis`,
        0,
      );
    } finally {
      channel.unbind('probe', onProbe);
    }
  }

  test('pusher_trigger_via_node_a_reaches_pusher_js_subscribers_on_both_nodes_once', { timeout: 25_000 }, async () => {
    const onA = resources.add(pusherClient(nodeA.port));
    const onB = resources.add(pusherClient(nodeB.port));
    const chanA = await subscribe(onA, 'mn-news');
    const chanB = await subscribe(onB, 'mn-news');
    await waitLinked(restA, chanB);

    const got = { A: [], B: [] };
    chanA.bind('greeting', (d) => got.A.push(d));
    chanB.bind('greeting', (d) => got.B.push(d));
    const sentAt = Date.now();
    await restA.trigger('mn-news', 'greeting', { hello: 'world', n: 1 });
    await waitFor(() => got.A.length >= 1 && got.B.length >= 1, 5_000, `greeting on both nodes (so far ${JSON.stringify(got)})`);
    const took = Date.now() - sentAt;
    await sleep(500);
    assert.deepEqual(got, { A: [{ hello: 'world', n: 1 }], B: [{ hello: 'world', n: 1 }] }, `after ${took} ms`);

    // A batch through node A reaches both nodes too, in order.
    const batch = [];
    chanA.bind('seq', (d) => batch.push(['A', d.n]));
    chanB.bind('seq', (d) => batch.push(['B', d.n]));
    await restA.triggerBatch([0, 1, 2].map((n) => ({ channel: 'mn-news', name: 'seq', data: { n } })));
    await waitFor(() => batch.length >= 6, 5_000, `batch on both nodes (so far ${JSON.stringify(batch)})`);
    await sleep(300);
    assert.deepEqual(batch.filter(([at]) => at === 'A').map(([, n]) => n), [0, 1, 2]);
    assert.deepEqual(batch.filter(([at]) => at === 'B').map(([, n]) => n), [0, 1, 2]);
  });

  test('presence_members_count_covers_pusher_js_members_on_both_nodes', { timeout: 25_000 }, async () => {
    const name = 'presence-mn-room';
    const member = (id) => ({ user_id: id, user_info: { name: id } });
    const joins = [
      ['ann', nodeA],
      ['ben', nodeB],
      ['cat', nodeA],
      ['ben', nodeA], // ben's second socket, on the other node: still one member
    ];
    const channels = [];
    for (const [id, node] of joins) {
      const client = resources.add(await connectedAuthed(node.port, { member: member(id) }));
      channels.push(await subscribe(client, name));
    }
    // The last joiner's roster already spans both nodes.
    const last = channels[channels.length - 1];
    assert.equal(last.members.count, 3, `ben on node A sees ${JSON.stringify(last.members.members)}`);

    // Every pusher-js member list, on either node, converges on the three users.
    const rosterOf = (ch) => {
      const ids = [];
      ch.members.each((m) => ids.push(m.id));
      return ids.sort();
    };
    await waitFor(
      () => channels.every((ch) => ch.members.count === 3 && rosterOf(ch).join() === 'ann,ben,cat'),
      5_000,
      `members on every client (now ${JSON.stringify(channels.map((ch) => [ch.members.count, rosterOf(ch)]))})`,
    );
    assert.deepEqual(channels[1].members.me, { id: 'ben', info: { name: 'ben' } });

    // The official library reads the same roster through either node.
    for (const [label, rest] of [
      ['A', restA],
      ['B', restB],
    ]) {
      const res = await rest.get({ path: `/channels/${name}/users` });
      assert.equal(res.status, 200);
      const body = await res.json();
      assert.deepEqual(body.users.map((u) => u.id).sort(), ['ann', 'ben', 'cat'], `users via node ${label}: ${JSON.stringify(body)}`);
    }
  });
});
