// REST reads through the official `pusher` library on a 2-shard server: GET /channels
// (filter_by_prefix, info=user_count), GET /channels/{name} (occupied, subscription_count
// summed over both shards, user_count), GET /channels/{name}/users, trigger with
// info=subscription_count, and signature checks. Each test uses its own channel names so
// one test's subscribers never show in another's answer.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, restClient, signedRequest, startServer } from './harness.mjs';
import { connectedAuthed, openSpread, rawSocket, rawSubscribeSigned, shardHint, subscribe, waitFor } from './protocol-helpers.mjs';

describe('REST reads over 2 shards', { timeout: 60_000 }, () => {
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

  /** GET through the `pusher` library; resolves with the parsed body. */
  async function get(path, params) {
    const res = await rest.get({ path, params });
    assert.equal(res.status, 200);
    return res.json();
  }

  /** `n` pusher-js clients (as `userId(i)` on presence channels), each subscribed to `channel`. */
  async function subscribers(channel, n, userId = (i) => `user-${i}`) {
    const out = [];
    for (let i = 0; i < n; i++) {
      const c = resources.add(await connectedAuthed(server.port, { member: { user_id: userId(i), user_info: { i } } }));
      await subscribe(c, channel);
      out.push(c);
    }
    return out;
  }

  test('channels_lists_occupied_channels_filtered_by_prefix', { timeout: 20_000 }, async () => {
    await subscribers('list-a', 2);
    await subscribers('list-b', 1);
    await subscribers('private-list-c', 1);
    await subscribers('presence-list-d', 1);
    await subscribers('other-e', 1);

    const filtered = await get('/channels', { filter_by_prefix: 'list-' });
    assert.deepEqual(filtered, { channels: { 'list-a': {}, 'list-b': {} } });

    const priv = await get('/channels', { filter_by_prefix: 'private-list-' });
    assert.deepEqual(priv, { channels: { 'private-list-c': {} } });

    const all = await get('/channels');
    for (const name of ['list-a', 'list-b', 'private-list-c', 'presence-list-d', 'other-e']) {
      assert.ok(name in all.channels, `${name} missing from GET /channels: ${JSON.stringify(all)}`);
    }
  });

  test('channels_with_info_user_count_for_the_presence_prefix', { timeout: 20_000 }, async () => {
    // uc-1: users a, a, b (a twice) -> 2 users; uc-2 .. uc-5: one user each. Several
    // channels, so their home shards differ.
    await subscribers('presence-uc-1', 3, (i) => (i < 2 ? 'a' : 'b'));
    for (let k = 2; k <= 5; k++) await subscribers(`presence-uc-${k}`, 1, () => `solo-${k}`);
    const body = await get('/channels', { filter_by_prefix: 'presence-uc-', info: 'user_count' });
    assert.deepEqual(body, {
      channels: {
        'presence-uc-1': { user_count: 2 },
        'presence-uc-2': { user_count: 1 },
        'presence-uc-3': { user_count: 1 },
        'presence-uc-4': { user_count: 1 },
        'presence-uc-5': { user_count: 1 },
      },
    });
  });

  test('channel_info_sums_subscription_count_over_both_shards', { timeout: 30_000 }, async () => {
    const subs = await subscribers('private-counted', 14);
    const shards = new Set(subs.map((c) => shardHint(c.socketId)));
    const body = await get('/channels/private-counted', { info: 'subscription_count' });
    assert.deepEqual(body, { occupied: true, subscription_count: 14 }, `sockets on shards ${[...shards]}`);
  });

  test('presence_channel_info_gives_subscription_count_and_user_count', { timeout: 30_000 }, async () => {
    // 10 sockets of 4 users.
    await subscribers('presence-counted', 10, (i) => `member-${i % 4}`);
    const body = await get('/channels/presence-counted', { info: 'subscription_count,user_count' });
    assert.deepEqual(body, { occupied: true, subscription_count: 10, user_count: 4 });
  });

  test('users_lists_each_presence_user_once', { timeout: 30_000 }, async () => {
    const spread = await openSpread(
      async () => resources.add(await connectedAuthed(server.port, { member: { user_id: 'twin', user_info: {} } })),
      3,
      { max: 10, discard: (c) => c.disconnect() },
    );
    for (const c of spread) await subscribe(c, 'presence-users');
    await subscribers('presence-users', 6, (i) => `u-${i % 3}`);
    const body = await get('/channels/presence-users/users');
    assert.deepEqual(Object.keys(body), ['users']);
    const ids = body.users.map((u) => u.id);
    assert.deepEqual([...ids].sort(), ['twin', 'u-0', 'u-1', 'u-2'], `users: ${JSON.stringify(body)}`);
    for (const u of body.users) assert.deepEqual(Object.keys(u), ['id']);
  });

  test('users_drops_a_user_once_its_last_socket_leaves', { timeout: 20_000 }, async () => {
    await subscribers('presence-shrinking', 1, () => 'stays');
    const goes = await subscribers('presence-shrinking', 3, () => 'goes');
    const ids = async () => (await get('/channels/presence-shrinking/users')).users.map((u) => u.id).sort();
    assert.deepEqual(await ids(), ['goes', 'stays']);
    goes[0].unsubscribe('presence-shrinking');
    goes[1].disconnect();
    await waitFor(async () => (await get('/channels/presence-shrinking', { info: 'subscription_count' })).subscription_count === 2, 5_000, 'two sockets left');
    assert.deepEqual(await ids(), ['goes', 'stays'], 'a user with a socket left was dropped');
    goes[2].disconnect();
    await waitFor(async () => (await ids()).length === 1, 5_000, 'goes to be dropped');
    assert.deepEqual(await ids(), ['stays']);
    assert.deepEqual(await get('/channels/presence-shrinking', { info: 'user_count' }), { occupied: true, user_count: 1 });
  });

  test('users_of_a_non_presence_channel_is_400', async () => {
    await subscribers('private-not-presence', 1);
    await assert.rejects(rest.get({ path: '/channels/private-not-presence/users' }), (err) => {
      assert.equal(err.status, 400, `status ${err.status}, body ${err.body}`);
      return true;
    });
    await assert.rejects(rest.get({ path: '/channels/public-not-presence/users' }), (err) => {
      assert.equal(err.status, 400, `status ${err.status}, body ${err.body}`);
      return true;
    });
  });

  test('channel_whose_last_subscriber_left_is_unlisted_and_unoccupied', { timeout: 20_000 }, async () => {
    const subs = await subscribers('vacate-me', 6);
    assert.deepEqual(await get('/channels', { filter_by_prefix: 'vacate-' }), { channels: { 'vacate-me': {} } });
    assert.equal((await get('/channels/vacate-me', { info: 'subscription_count' })).subscription_count, 6);

    subs[0].unsubscribe('vacate-me');
    await waitFor(async () => (await get('/channels/vacate-me', { info: 'subscription_count' })).subscription_count === 5, 5_000, 'count 5 after one unsubscribe');
    for (const c of subs) c.disconnect();
    await waitFor(async () => (await get('/channels/vacate-me')).occupied === false, 5_000, 'vacate-me to become unoccupied');
    assert.deepEqual(await get('/channels/vacate-me'), { occupied: false });
    assert.deepEqual(await get('/channels', { filter_by_prefix: 'vacate-' }), { channels: {} });
  });

  test('abruptly_dropped_sockets_leave_the_channel_unoccupied', { timeout: 20_000 }, async () => {
    const socks = [];
    for (let i = 0; i < 8; i++) {
      const c = resources.add(await rawSocket(server.port), (x) => x.terminate());
      await rawSubscribeSigned(c, 'dropped-all');
      socks.push(c);
    }
    assert.deepEqual(await get('/channels/dropped-all', { info: 'subscription_count' }), { occupied: true, subscription_count: 8 });
    for (const c of socks) c.terminate();
    await waitFor(async () => (await get('/channels/dropped-all')).occupied === false, 5_000, 'dropped-all to become unoccupied');
    assert.deepEqual(await get('/channels', { filter_by_prefix: 'dropped-' }), { channels: {} });
  });

  test('user_count_on_a_non_presence_channel_or_list_is_400', async () => {
    await subscribers('private-no-users', 1);
    for (const [path, params] of [
      ['/channels/private-no-users', { info: 'user_count' }],
      ['/channels', { info: 'user_count' }],
      ['/channels', { filter_by_prefix: 'private-', info: 'user_count' }],
    ]) {
      await assert.rejects(rest.get({ path, params }), (err) => {
        assert.equal(err.status, 400, `${path} ${JSON.stringify(params)}: status ${err.status}, body ${err.body}`);
        return true;
      });
    }
  });

  test('never_used_channel_is_unoccupied', async () => {
    assert.deepEqual(await get('/channels/never-used-channel'), { occupied: false });
  });

  test('trigger_with_info_returns_subscription_count_per_channel', { timeout: 20_000 }, async () => {
    await subscribers('trig-info', 7);
    const res = await rest.trigger('trig-info', 'e', { x: 1 }, { info: 'subscription_count' });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { channels: { 'trig-info': { subscription_count: 7 } } });
  });

  test('trigger_with_info_returns_user_count_for_presence_channels', { timeout: 20_000 }, async () => {
    await subscribers('presence-trig-info', 5, (i) => `p-${i % 2}`);
    const res = await rest.trigger('presence-trig-info', 'e', {}, { info: 'subscription_count,user_count' });
    assert.deepEqual(await res.json(), { channels: { 'presence-trig-info': { subscription_count: 5, user_count: 2 } } });
  });

  test('reads_with_a_wrong_signature_are_401', async () => {
    const wrong = restClient(server.port, { secret: 'not-the-secret' });
    for (const path of ['/channels', '/channels/anything', '/channels/presence-x/users']) {
      await assert.rejects(wrong.get({ path }), (err) => {
        assert.equal(err.status, 401, `${path}: status ${err.status}, body ${err.body}`);
        return true;
      });
    }
    const forged = await signedRequest(server.port, { method: 'GET', path: '/apps/app-id/channels', signature: 'f'.repeat(64) });
    assert.equal(forged.status, 401, forged.text);
    const unsigned = await fetch(`http://127.0.0.1:${server.port}/apps/app-id/channels`, { signal: AbortSignal.timeout(5_000) });
    await unsigned.arrayBuffer();
    assert.equal(unsigned.status, 401);
  });

  test('reads_signed_by_hand_match_the_library', async () => {
    await subscribers('hand-signed', 2);
    const res = await signedRequest(server.port, { method: 'GET', path: '/apps/app-id/channels/hand-signed', params: { info: 'subscription_count' } });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, { occupied: true, subscription_count: 2 });
  });
});
