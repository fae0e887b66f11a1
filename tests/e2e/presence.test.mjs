// Presence channels with pusher-js over 2 shards: the roster in subscription_succeeded,
// member_added / member_removed to the other members, one member per user however many
// sockets (on whichever shards) it has, and the member-count, member-size and
// channel_data checks.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, restClient, startServer } from './harness.mjs';
import {
  channelAuthString,
  connectedAuthed,
  once,
  openSpread,
  parseData,
  pingPong,
  rawSocket,
  rawSubscribe,
  rawSubscribeSigned,
  recordMessages,
  shardHint,
  sleep,
  subscribe,
  subscriptionError,
  waitFor,
} from './protocol-helpers.mjs';

const SETTLE_MS = 400;
const info = (id) => ({ name: `User ${id}`, color: id.length % 2 ? 'red' : 'blue' });
const member = (id) => ({ user_id: id, user_info: info(id) });

/** Every member pusher-js lists, as `{id: info}`. */
function roster(channel) {
  const out = {};
  channel.members.each((m) => {
    out[m.id] = m.info;
  });
  return out;
}

/** Counts member_added / member_removed per user id on a pusher-js presence channel. */
function watchMembers(channel) {
  const added = [];
  const removed = [];
  channel.bind('pusher:member_added', (m) => added.push(m));
  channel.bind('pusher:member_removed', (m) => removed.push(m));
  return { added, removed, addedOf: (id) => added.filter((m) => m.id === id), removedOf: (id) => removed.filter((m) => m.id === id) };
}

describe('presence channels over 2 shards', { timeout: 60_000 }, () => {
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

  const client = async (userId) => resources.add(await connectedAuthed(server.port, { member: member(userId) }));

  test('subscription_succeeded_gives_count_members_and_me', { timeout: 15_000 }, async () => {
    const ids = ['alice', 'bob', 'carol'];
    const channels = [];
    for (const id of ids) channels.push(await subscribe(await client(id), 'presence-lobby'));
    const last = channels[2];
    assert.equal(last.members.count, 3);
    assert.deepEqual(roster(last), Object.fromEntries(ids.map((id) => [id, info(id)])));
    assert.deepEqual(last.members.me, { id: 'carol', info: info('carol') });
    // The first member saw only itself when it joined.
    assert.equal(channels[0].members.me.id, 'alice');
  });

  test('member_added_and_member_removed_reach_the_other_members_not_the_joiner', { timeout: 15_000 }, async () => {
    const a = await client('ann');
    const chA = await subscribe(a, 'presence-join-leave');
    const watchA = watchMembers(chA);

    const b = await client('ben');
    const addedSeen = once(chA, 'pusher:member_added');
    const chB = await subscribe(b, 'presence-join-leave');
    const watchB = watchMembers(chB);
    assert.deepEqual(await addedSeen, { id: 'ben', info: info('ben') });
    assert.equal(chA.members.count, 2);
    assert.equal(chB.members.count, 2);
    assert.deepEqual(roster(chB), { ann: info('ann'), ben: info('ben') });

    const removedSeen = once(chA, 'pusher:member_removed');
    b.unsubscribe('presence-join-leave');
    assert.deepEqual(await removedSeen, { id: 'ben', info: info('ben') });
    assert.equal(chA.members.count, 1);
    await sleep(SETTLE_MS);
    assert.equal(watchA.addedOf('ben').length, 1, `ann saw ben added ${watchA.addedOf('ben').length} times`);
    assert.equal(watchA.removedOf('ben').length, 1, `ann saw ben removed ${watchA.removedOf('ben').length} times`);
    assert.deepEqual(watchB.added, [], 'ben got member_added events after joining (for himself?)');
  });

  test('presence_messages_have_the_documented_wire_shapes', { timeout: 15_000 }, async () => {
    const first = resources.add(await rawSocket(server.port), (c) => c.terminate());
    const ok = await rawSubscribeSigned(first, 'presence-wire', member('w1'));
    assert.equal(typeof ok.data, 'string', `subscription_succeeded data must be a JSON string: ${JSON.stringify(ok)}`);
    assert.deepEqual(JSON.parse(ok.data), { presence: { ids: ['w1'], hash: { w1: info('w1') }, count: 1 } });

    const second = resources.add(await rawSocket(server.port), (c) => c.terminate());
    const ok2 = await rawSubscribeSigned(second, 'presence-wire', member('w2'));
    const roster2 = JSON.parse(ok2.data).presence;
    assert.deepEqual([...roster2.ids].sort(), ['w1', 'w2']);
    assert.deepEqual(roster2.hash, { w1: info('w1'), w2: info('w2') });
    assert.equal(roster2.count, 2);

    const added = await first.nextEvent('pusher_internal:member_added', 'presence-wire');
    assert.equal(typeof added.data, 'string', `member_added data must be a JSON string: ${JSON.stringify(added)}`);
    assert.deepEqual(JSON.parse(added.data), { user_id: 'w2', user_info: info('w2') });

    second.send({ event: 'pusher:unsubscribe', data: { channel: 'presence-wire' } });
    const removed = await first.nextEvent('pusher_internal:member_removed', 'presence-wire');
    assert.equal(typeof removed.data, 'string');
    assert.deepEqual(JSON.parse(removed.data), { user_id: 'w2' });
  });

  test('same_user_on_three_sockets_across_shards_is_one_member', { timeout: 30_000 }, async () => {
    const name = 'presence-multi';
    const watchers = [];
    for (let i = 0; i < 6; i++) {
      const c = await client(`watcher-${i}`);
      const ch = await subscribe(c, name);
      watchers.push({ c, ch, watch: watchMembers(ch) });
    }
    // Three sockets of one user, spread over both shards when the ids allow it.
    const dave = await openSpread(() => client('dave'), 3, { max: 12, discard: (c) => c.disconnect() });
    const shards = new Set(dave.map((c) => shardHint(c.socketId)));

    const daveChannels = [];
    for (const c of dave) daveChannels.push(await subscribe(c, name));
    await waitFor(() => watchers.every((w) => w.watch.addedOf('dave').length >= 1), 5_000, 'every watcher to see dave added');
    await sleep(SETTLE_MS);
    for (const w of watchers) {
      assert.equal(w.watch.addedOf('dave').length, 1, `a watcher saw dave added ${w.watch.addedOf('dave').length} times (dave on shards ${[...shards]})`);
      assert.equal(w.ch.members.count, 7);
    }
    const lastDave = daveChannels[2];
    assert.equal(lastDave.members.count, 7, `dave's third socket counts ${lastDave.members.count} members: ${JSON.stringify(roster(lastDave))}`);
    assert.deepEqual(lastDave.members.me, { id: 'dave', info: info('dave') });

    // Unsubscribing one socket and disconnecting another leave dave a member.
    dave[0].unsubscribe(name);
    dave[1].disconnect();
    await waitFor(() => dave[1].connection.state === 'disconnected', 5_000, 'dave socket 2 disconnected');
    await sleep(SETTLE_MS * 2);
    for (const w of watchers) {
      assert.deepEqual(w.watch.removedOf('dave'), [], 'dave was removed while one of his sockets is still subscribed');
      assert.equal(w.ch.members.count, 7);
    }

    // A newcomer still sees dave exactly once.
    const late = await subscribe(await client('late'), name);
    assert.equal(late.members.count, 8);
    assert.deepEqual(roster(late).dave, info('dave'));

    // The last socket going removes him, once.
    dave[2].disconnect();
    await waitFor(() => watchers.every((w) => w.watch.removedOf('dave').length >= 1), 5_000, 'every watcher to see dave removed');
    await sleep(SETTLE_MS);
    for (const w of watchers) {
      assert.deepEqual(w.watch.removedOf('dave'), [{ id: 'dave', info: info('dave') }]);
      assert.equal(w.ch.members.count, 7);
    }
  });

  test('abruptly_dropped_socket_is_removed_from_the_roster', { timeout: 15_000 }, async () => {
    const stayer = await client('stayer');
    const ch = await subscribe(stayer, 'presence-drop');
    const dropper = resources.add(await rawSocket(server.port), (c) => c.terminate());
    await rawSubscribeSigned(dropper, 'presence-drop', member('dropper'));
    await waitFor(() => ch.members.count === 2, 5_000, 'dropper to be added');
    const removed = once(ch, 'pusher:member_removed');
    dropper.terminate(); // TCP gone without a close frame
    assert.deepEqual(await removed, { id: 'dropper', info: info('dropper') });
    assert.equal(ch.members.count, 1);
  });

  test('concurrent_joins_over_both_shards_converge_to_one_roster', { timeout: 30_000 }, async () => {
    const name = 'presence-stampede';
    const clients = [];
    for (let i = 0; i < 12; i++) clients.push(await client(`s-${i}`));
    const channels = clients.map((c) => c.subscribe(name));
    const watches = channels.map((ch) => watchMembers(ch));
    await Promise.all(channels.map((ch) => (ch.subscribed ? null : once(ch, 'pusher:subscription_succeeded', 10_000))));
    const expected = Object.fromEntries(clients.map((_, i) => [`s-${i}`, info(`s-${i}`)]));
    await waitFor(() => channels.every((ch) => ch.members.count === 12), 5_000, 'every roster to reach 12').catch((err) => {
      throw new Error(`${err.message}: counts ${channels.map((ch) => ch.members.count).join(',')}`);
    });
    await sleep(SETTLE_MS);
    channels.forEach((ch, i) => {
      assert.deepEqual(roster(ch), expected, `roster of s-${i}`);
      assert.equal(ch.members.count, 12, `count of s-${i}`);
      // Nobody is announced twice, and nobody hears about itself.
      const ids = watches[i].added.map((m) => m.id);
      assert.equal(new Set(ids).size, ids.length, `s-${i} saw duplicate member_added: ${ids}`);
      assert.ok(!ids.includes(`s-${i}`), `s-${i} was told it joined`);
    });
  });

  test('leave_and_rejoin_on_the_same_socket_is_removed_then_added', { timeout: 15_000 }, async () => {
    const watcher = await subscribe(await client('eye'), 'presence-rejoin');
    const watch = watchMembers(watcher);
    const c = await client('bouncer');
    await subscribe(c, 'presence-rejoin');
    c.unsubscribe('presence-rejoin');
    const again = await subscribe(c, 'presence-rejoin');
    assert.equal(again.members.count, 2);
    await waitFor(() => watch.addedOf('bouncer').length === 2, 5_000, 'bouncer added twice');
    await sleep(SETTLE_MS);
    assert.equal(watch.removedOf('bouncer').length, 1);
    assert.equal(watcher.members.count, 2);
  });

  test('reconnecting_pusher_js_client_rejoins_with_its_new_socket_id', { timeout: 20_000 }, async () => {
    const watcher = await subscribe(await client('observer'), 'presence-reconnect');
    const watch = watchMembers(watcher);
    const c = await client('phoenix');
    const ch = await subscribe(c, 'presence-reconnect');
    const firstId = c.connection.socket_id;
    c.disconnect();
    await waitFor(() => watch.removedOf('phoenix').length === 1, 5_000, 'phoenix removed after disconnect');
    const resubscribed = once(ch, 'pusher:subscription_succeeded', 10_000);
    c.connect();
    await resubscribed;
    assert.notEqual(c.connection.socket_id, firstId);
    assert.equal(ch.members.count, 2);
    assert.deepEqual(ch.members.me, { id: 'phoenix', info: info('phoenix') });
    await waitFor(() => watch.addedOf('phoenix').length === 2, 5_000, 'phoenix added again');
    assert.equal(watcher.members.count, 2);
  });

  test('presence_subscribe_without_channel_data_is_refused', { timeout: 15_000 }, async () => {
    const other = resources.add(await rawSocket(server.port), (c) => c.terminate());
    await rawSubscribeSigned(other, 'presence-no-data', member('present'));
    const c = resources.add(await rawSocket(server.port), (x) => x.terminate());
    const answer = await rawSubscribe(c, 'presence-no-data', { auth: channelAuthString(c.socketId, 'presence-no-data') });
    assert.equal(answer.event, 'pusher:subscription_error', `presence subscribe without channel_data answered ${JSON.stringify(answer)}`);
    await pingPong(c);
    await sleep(SETTLE_MS);
    assert.deepEqual(
      other.messages.filter((m) => m.event === 'pusher_internal:member_added'),
      [],
      'a refused subscriber was announced as a member',
    );
  });

  test('presence_channel_data_without_user_id_is_refused', { timeout: 15_000 }, async () => {
    const c = resources.add(await rawSocket(server.port), (x) => x.terminate());
    const channelData = JSON.stringify({ user_info: { name: 'nobody' } });
    const answer = await rawSubscribe(c, 'presence-no-user-id', {
      auth: channelAuthString(c.socketId, 'presence-no-user-id', channelData),
      channel_data: channelData,
    });
    assert.equal(answer.event, 'pusher:subscription_error', `channel_data without user_id answered ${JSON.stringify(answer)}`);
    await pingPong(c);
  });

  test('presence_channel_data_not_covered_by_the_signature_is_refused', { timeout: 15_000 }, async () => {
    const c = resources.add(await rawSocket(server.port), (x) => x.terminate());
    // Signed for one member, sent with another: the server must check the signature over channel_data.
    const answer = await rawSubscribe(c, 'presence-forged', {
      auth: channelAuthString(c.socketId, 'presence-forged', JSON.stringify(member('honest'))),
      channel_data: JSON.stringify(member('impostor')),
    });
    assert.equal(answer.event, 'pusher:subscription_error', `forged channel_data answered ${JSON.stringify(answer)}`);
    assert.equal(parseData(answer.data).status, 401, `forged channel_data: ${JSON.stringify(answer)}`);
    await pingPong(c);
  });

  test('refused_presence_subscriber_receives_nothing_from_the_channel', { timeout: 15_000 }, async () => {
    const member1 = await client('m1');
    const ch = await subscribe(member1, 'presence-closed');
    const bad = resources.add(await connectedAuthed(server.port, { authorize: (socketId, channel) => ({ auth: channelAuthString(socketId, channel, '{"user_id":"x"}', { secret: 'bad' }), channel_data: '{"user_id":"x"}' }) }));
    const log = recordMessages(bad);
    const { error } = await subscriptionError(bad, 'presence-closed');
    assert.equal(error.status, 401, JSON.stringify(error));
    const got = once(ch, 'news');
    await rest.trigger('presence-closed', 'news', { n: 1 });
    await got;
    await sleep(SETTLE_MS);
    assert.deepEqual(log.filter((m) => m.channel === 'presence-closed'), []);
    // The good member never saw the refused one.
    assert.equal(ch.members.count, 1);
  });
});

describe('presence limits: SOKETI_PRESENCE_MAX_MEMBERS=2, SOKETI_PRESENCE_MAX_MEMBER_SIZE=1 (KB)', { timeout: 60_000 }, () => {
  let server;
  const resources = cleanup();

  before(async () => {
    server = await startServer({ shards: 2, env: { SOKETI_PRESENCE_MAX_MEMBERS: '2', SOKETI_PRESENCE_MAX_MEMBER_SIZE: '1' } });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  const client = async (m) => resources.add(await connectedAuthed(server.port, { member: m }));

  test('third_distinct_user_gets_a_subscription_error_but_a_second_socket_of_a_member_joins', { timeout: 20_000 }, async () => {
    // Several sockets per user so both shards take part in the count.
    const first = await client(member('one'));
    const chFirst = await subscribe(first, 'presence-full');
    const watch = watchMembers(chFirst);
    await subscribe(await client(member('two')), 'presence-full');
    for (let i = 0; i < 4; i++) {
      const again = await subscribe(await client(member(i % 2 ? 'one' : 'two')), 'presence-full');
      assert.equal(again.members.count, 2, 'another socket of an existing member must be accepted');
    }

    const thirds = [];
    for (let i = 0; i < 4; i++) thirds.push(await client(member('three')));
    for (const t of thirds) {
      const { error } = await subscriptionError(t, 'presence-full');
      assert.equal(typeof error, 'object', JSON.stringify(error));
      assert.equal(typeof error.type, 'string', `subscription_error data ${JSON.stringify(error)}`);
    }
    await sleep(SETTLE_MS);
    assert.deepEqual(watch.addedOf('three'), [], 'the refused third user was announced');
    assert.equal(chFirst.members.count, 2);
  });

  test('member_info_over_the_size_limit_is_refused_and_under_it_accepted', { timeout: 15_000 }, async () => {
    const small = await client({ user_id: 'small', user_info: { bio: 'x'.repeat(500) } });
    await subscribe(small, 'presence-size');
    const big = await client({ user_id: 'big', user_info: { bio: 'x'.repeat(2 * 1024) } });
    const { error } = await subscriptionError(big, 'presence-size');
    assert.equal(typeof error.type, 'string', `subscription_error data ${JSON.stringify(error)}`);
    assert.equal(big.connection.state, 'connected');
  });
});
