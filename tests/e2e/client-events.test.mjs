// Client events (`client-*`) over 2 shards. With SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true
// an event triggered on a private or presence channel reaches every other subscriber (on
// either shard) and never the sender, and on presence channels carries the sender's
// user_id. Everything else is refused with `pusher:error` code 4301 while the connection
// stays open: client messages disabled, public channel, channel not joined, event name
// over 200 characters, payload over 100 KB, more than max_client_events_per_sec.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, startServer } from './harness.mjs';
import {
  connectedAuthed,
  messagesAfter,
  nextError,
  once,
  pingPong,
  rawSocket,
  rawSubscribeSigned,
  recordMessages,
  shardHint,
  sleep,
  subscribe,
  waitFor,
} from './protocol-helpers.mjs';

const SETTLE_MS = 400;

/** Asserts a 4301 `pusher:error` comes back, the socket stays usable, and `others` got nothing. */
async function expectRefused4301(sender, others, event, what) {
  const err = await nextError(sender);
  assert.equal(typeof err.data, 'object', `${what}: pusher:error data must be an object: ${JSON.stringify(err)}`);
  assert.equal(err.data.code, 4301, `${what}: ${JSON.stringify(err)}`);
  assert.equal(typeof err.data.message, 'string', `${what}: ${JSON.stringify(err)}`);
  await pingPong(sender);
  assert.ok(sender.isOpen(), `${what}: the connection was closed`);
  for (const o of others) {
    await pingPong(o);
    assert.deepEqual(await messagesAfter(o, (m) => m.event === event, 100), [], `${what}: the refused event was relayed`);
  }
}

describe('client events enabled, over 2 shards', { timeout: 60_000 }, () => {
  let server;
  const resources = cleanup();

  before(async () => {
    server = await startServer({ shards: 2, env: { SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES: 'true' } });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  const client = async (options) => resources.add(await connectedAuthed(server.port, options));
  const raw = async () => resources.add(await rawSocket(server.port), (c) => c.terminate());

  test('private_client_event_reaches_every_other_subscriber_on_both_shards_never_the_sender', { timeout: 20_000 }, async () => {
    const clients = [];
    for (let i = 0; i < 12; i++) clients.push(await client());
    const shards = new Set(clients.map((c) => shardHint(c.socketId)));
    const logs = clients.map((c) => recordMessages(c));
    const channels = await Promise.all(clients.map((c) => subscribe(c, 'private-typing')));

    assert.equal(channels[0].trigger('client-typing', { who: 'c0', text: 'hi…' }), true);
    const others = logs.slice(1);
    await waitFor(() => others.every((l) => l.some((m) => m.event === 'client-typing')), 5_000, 'every other subscriber to get client-typing').catch((err) => {
      throw new Error(`${err.message}; ${others.filter((l) => !l.length).length} of 11 got nothing (sockets on shards ${[...shards]})`);
    });
    await sleep(SETTLE_MS);
    for (const log of others) assert.deepEqual(log, [{ event: 'client-typing', channel: 'private-typing', data: { who: 'c0', text: 'hi…' } }]);
    assert.deepEqual(logs[0], [], 'the sender received its own client event (or an error)');
  });

  test('presence_client_event_carries_the_sender_user_id', { timeout: 15_000 }, async () => {
    const sender = await client({ member: { user_id: 'typist', user_info: {} } });
    const receivers = [];
    for (let i = 0; i < 4; i++) receivers.push(await client({ member: { user_id: `reader-${i}`, user_info: {} } }));
    const senderCh = await subscribe(sender, 'presence-typing');
    const got = [];
    for (const r of receivers) {
      const ch = await subscribe(r, 'presence-typing');
      ch.bind('client-typing', (data, metadata) => got.push({ data, metadata }));
    }
    const raws = recordMessages(receivers[0]);
    senderCh.trigger('client-typing', { t: 1 });
    await waitFor(() => got.length >= receivers.length, 5_000, 'every reader to get client-typing');
    await sleep(SETTLE_MS);
    assert.equal(got.length, receivers.length);
    for (const g of got) assert.deepEqual(g, { data: { t: 1 }, metadata: { user_id: 'typist' } });
    assert.deepEqual(raws, [{ event: 'client-typing', channel: 'presence-typing', data: { t: 1 }, user_id: 'typist' }]);
  });

  test('presence_client_event_reaches_the_senders_other_sockets_too', { timeout: 15_000 }, async () => {
    // "Every other subscriber" means every other connection, including the same user's.
    const first = await client({ member: { user_id: 'twin', user_info: {} } });
    const second = await client({ member: { user_id: 'twin', user_info: {} } });
    const chFirst = await subscribe(first, 'presence-twins');
    const chSecond = await subscribe(second, 'presence-twins');
    const log = recordMessages(first);
    const got = once(chSecond, 'client-wave');
    chFirst.trigger('client-wave', { from: 'first' });
    assert.deepEqual(await got, { from: 'first' });
    await sleep(SETTLE_MS);
    assert.deepEqual(log, [], 'the sending socket got its own event');
  });

  test('client_event_on_a_public_channel_is_refused_with_4301', async () => {
    const [sender, other] = [await raw(), await raw()];
    await rawSubscribeSigned(sender, 'public-chat');
    await rawSubscribeSigned(other, 'public-chat');
    sender.send({ event: 'client-hello', channel: 'public-chat', data: { x: 1 } });
    await expectRefused4301(sender, [other], 'client-hello', 'public channel');
  });

  test('client_event_on_a_channel_not_subscribed_is_refused_with_4301', async () => {
    const [sender, other] = [await raw(), await raw()];
    await rawSubscribeSigned(other, 'private-members-only');
    sender.send({ event: 'client-sneak', channel: 'private-members-only', data: { x: 1 } });
    await expectRefused4301(sender, [other], 'client-sneak', 'channel not subscribed');
  });

  test('client_event_after_unsubscribing_is_refused_with_4301', async () => {
    const [sender, other] = [await raw(), await raw()];
    await rawSubscribeSigned(sender, 'private-left');
    await rawSubscribeSigned(other, 'private-left');
    sender.send({ event: 'pusher:unsubscribe', data: { channel: 'private-left' } });
    sender.send({ event: 'client-late', channel: 'private-left', data: {} });
    await expectRefused4301(sender, [other], 'client-late', 'after unsubscribe');
  });

  test('client_event_name_of_200_characters_is_relayed_and_201_is_refused_with_4301', async () => {
    const [sender, other] = [await raw(), await raw()];
    await rawSubscribeSigned(sender, 'private-names');
    await rawSubscribeSigned(other, 'private-names');
    const ok = 'client-'.padEnd(200, 'n');
    sender.send({ event: ok, channel: 'private-names', data: {} });
    await other.nextEvent(ok, 'private-names');
    const tooLong = 'client-'.padEnd(201, 'n');
    sender.send({ event: tooLong, channel: 'private-names', data: {} });
    await expectRefused4301(sender, [other], tooLong, 'event name of 201 characters');
  });

  test('client_event_payload_over_100_kb_is_refused_with_4301_and_under_is_relayed', { timeout: 15_000 }, async () => {
    const [sender, other] = [await raw(), await raw()];
    await rawSubscribeSigned(sender, 'private-big');
    await rawSubscribeSigned(other, 'private-big');
    const fits = { blob: 'f'.repeat(90 * 1024) };
    sender.send({ event: 'client-fits', channel: 'private-big', data: fits });
    const got = await other.nextEvent('client-fits', 'private-big');
    assert.deepEqual(got.data, fits);
    sender.send({ event: 'client-huge', channel: 'private-big', data: { blob: 'h'.repeat(101 * 1024) } });
    await expectRefused4301(sender, [other], 'client-huge', 'payload over 100 KB');
  });

  test('client_event_without_client_prefix_is_not_relayed', async () => {
    const [sender, other] = [await raw(), await raw()];
    await rawSubscribeSigned(sender, 'private-prefix');
    await rawSubscribeSigned(other, 'private-prefix');
    sender.send({ event: 'typing', channel: 'private-prefix', data: {} });
    await pingPong(sender);
    await pingPong(other);
    assert.deepEqual(await messagesAfter(other, (m) => m.event === 'typing', 200), []);
    assert.ok(sender.isOpen());
  });
});

describe('client events disabled (the default)', { timeout: 60_000 }, () => {
  let server;
  const resources = cleanup();

  before(async () => {
    server = await startServer({ shards: 2 });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  test('client_event_is_refused_with_4301_and_not_relayed', async () => {
    const sender = resources.add(await rawSocket(server.port), (c) => c.terminate());
    const other = resources.add(await rawSocket(server.port), (c) => c.terminate());
    await rawSubscribeSigned(sender, 'private-quiet');
    await rawSubscribeSigned(other, 'private-quiet');
    sender.send({ event: 'client-typing', channel: 'private-quiet', data: { x: 1 } });
    await expectRefused4301(sender, [other], 'client-typing', 'client messages disabled');
  });

  test('pusher_js_trigger_gets_a_4301_error_and_stays_connected', async () => {
    const c = resources.add(await connectedAuthed(server.port));
    const ch = await subscribe(c, 'private-quiet-js');
    const errors = [];
    c.connection.bind('error', (e) => errors.push(e));
    ch.trigger('client-typing', {});
    await waitFor(() => errors.length > 0, 5_000, 'a pusher:error on the pusher-js connection');
    assert.equal(errors[0].type, 'PusherError', JSON.stringify(errors[0]));
    assert.equal(errors[0].data.code, 4301, JSON.stringify(errors[0]));
    await sleep(200);
    assert.equal(c.connection.state, 'connected');
  });
});

describe('client events rate limit: SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC=5', { timeout: 60_000 }, () => {
  let server;
  const resources = cleanup();

  before(async () => {
    server = await startServer({
      shards: 2,
      env: { SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES: 'true', SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC: '5' },
    });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  test('the_limit_is_per_connection_so_two_senders_each_get_their_own_budget', { timeout: 20_000 }, async () => {
    const senders = [];
    for (let i = 0; i < 2; i++) senders.push(resources.add(await rawSocket(server.port), (c) => c.terminate()));
    const reader = resources.add(await rawSocket(server.port), (c) => c.terminate());
    for (const c of [...senders, reader]) await rawSubscribeSigned(c, 'private-budget');
    for (const [n, s] of senders.entries()) for (let i = 0; i < 4; i++) s.send({ event: 'client-budget', channel: 'private-budget', data: { n, i } });
    for (const s of senders) await pingPong(s);
    await pingPong(reader);
    await sleep(SETTLE_MS);
    for (const s of senders) assert.deepEqual(s.messages.filter((m) => m.event === 'pusher:error'), [], 'a sender within its own budget was refused');
    assert.equal(reader.messages.filter((m) => m.event === 'client-budget').length, 8);
  });

  test('twenty_quick_client_events_are_partly_relayed_and_the_rest_refused_with_4301', { timeout: 20_000 }, async () => {
    const sender = resources.add(await rawSocket(server.port), (c) => c.terminate());
    const others = [];
    for (let i = 0; i < 4; i++) others.push(resources.add(await rawSocket(server.port), (c) => c.terminate()));
    await rawSubscribeSigned(sender, 'private-burst');
    for (const o of others) await rawSubscribeSigned(o, 'private-burst');

    for (let i = 0; i < 20; i++) sender.send({ event: 'client-burst', channel: 'private-burst', data: { i } });
    await pingPong(sender);
    for (const o of others) await pingPong(o);
    await sleep(SETTLE_MS);

    const refused = sender.messages.filter((m) => m.event === 'pusher:error');
    for (const r of refused) assert.equal(r.data?.code, 4301, JSON.stringify(r));
    for (const o of others) {
      const relayed = o.messages.filter((m) => m.event === 'client-burst');
      // 20 sends within well under a second span at most two one-second windows.
      assert.ok(relayed.length >= 1 && relayed.length <= 10, `${relayed.length} of 20 relayed with a limit of 5/s`);
      assert.equal(relayed.length + refused.length, 20, `${relayed.length} relayed + ${refused.length} refused != 20 sent`);
    }
    assert.ok(sender.isOpen(), 'the sender was disconnected for exceeding the rate');

    // The budget comes back: after a second, events flow again.
    await sleep(1_100);
    sender.send({ event: 'client-after', channel: 'private-burst', data: {} });
    await others[0].nextEvent('client-after', 'private-burst');
  });
});
