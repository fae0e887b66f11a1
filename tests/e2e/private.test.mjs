// Private channels with pusher-js: a subscription signed by the `pusher` library's
// authorizeChannel succeeds and gets events on both shards; a wrong signature, one made
// for another socket or channel, or no auth at all gets `pusher:subscription_error`
// ({type: "AuthError", error, status: 401}) and then nothing published to the channel.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { APP, cleanup, restClient, startServer } from './harness.mjs';
import { channelAuthString, connectedAuthed, hmacHex, once, recordMessages, shardHint, sleep, subscribe, subscriptionError, waitFor } from './protocol-helpers.mjs';

/** Time to wait after the expected deliveries for strays to show up. */
const SETTLE_MS = 300;

describe('private channels over 2 shards', { timeout: 60_000 }, () => {
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

  const client = async (options) => resources.add(await connectedAuthed(server.port, options));

  /** A refused subscription must be an AuthError with status 401, as pusher-js documents it. */
  function assertAuthError(error, what) {
    assert.equal(typeof error, 'object', `${what}: subscription_error data ${JSON.stringify(error)}`);
    assert.equal(error.type, 'AuthError', `${what}: ${JSON.stringify(error)}`);
    assert.equal(error.status, 401, `${what}: ${JSON.stringify(error)}`);
    assert.equal(typeof error.error, 'string', `${what}: error message missing in ${JSON.stringify(error)}`);
  }

  /**
   * Publishes `event` on `channel`, waits until a good subscriber got it (so it was
   * delivered everywhere it was going to be), and asserts `refused` got nothing on it.
   */
  async function assertNothingReaches(refusedLog, goodChannel, channel, label) {
    const got = once(goodChannel, 'after-refusal');
    await rest.trigger(channel, 'after-refusal', { label });
    await got;
    await sleep(SETTLE_MS);
    const leaked = refusedLog.filter((m) => m.channel === channel && m.event === 'after-refusal');
    assert.deepEqual(leaked, [], `a refused socket (${label}) received events of ${channel}`);
  }

  test('signed_subscription_succeeds_and_events_reach_every_subscriber_on_both_shards', { timeout: 20_000 }, async () => {
    const clients = [];
    for (let i = 0; i < 12; i++) clients.push(await client());
    const shards = new Set(clients.map((c) => shardHint(c.socketId)));
    const logs = clients.map((c) => recordMessages(c));
    const channels = await Promise.all(clients.map((c) => subscribe(c, 'private-orders')));
    for (const ch of channels) assert.equal(ch.subscribed, true);

    const res = await rest.trigger('private-orders', 'order-placed', { id: 7 });
    assert.equal(res.status, 200);
    await waitFor(() => logs.every((l) => l.some((m) => m.event === 'order-placed')), 5_000, 'every subscriber to get order-placed').catch((err) => {
      throw new Error(`${err.message}; ${logs.filter((l) => !l.length).length} of 12 got nothing (sockets on shards ${[...shards].join(',')})`);
    });
    await sleep(SETTLE_MS);
    for (const log of logs) {
      assert.deepEqual(log, [{ event: 'order-placed', channel: 'private-orders', data: { id: 7 } }]);
    }
  });

  test('wrong_signature_gets_auth_error_401_and_then_no_events', { timeout: 15_000 }, async () => {
    const good = await client();
    const goodChannel = await subscribe(good, 'private-wrong-sig');
    const bad = await client({ authorize: (socketId, channel) => ({ auth: channelAuthString(socketId, channel, undefined, { secret: 'not-the-secret' }) }) });
    const log = recordMessages(bad);
    const { channel, error } = await subscriptionError(bad, 'private-wrong-sig');
    assertAuthError(error, 'wrong signature');
    assert.equal(channel.subscribed, false);
    await assertNothingReaches(log, goodChannel, 'private-wrong-sig', 'wrong signature');
  });

  test('signature_made_for_another_socket_id_is_refused_with_401', { timeout: 15_000 }, async () => {
    const good = await client();
    const goodChannel = await subscribe(good, 'private-other-socket');
    // A valid signature, but for the good client's socket id.
    const bad = await client({ authorize: (_socketId, channel) => ({ auth: channelAuthString(good.socketId, channel) }) });
    const log = recordMessages(bad);
    const { error } = await subscriptionError(bad, 'private-other-socket');
    assertAuthError(error, 'signature for another socket id');
    await assertNothingReaches(log, goodChannel, 'private-other-socket', 'another socket id');
  });

  test('signature_made_for_another_channel_is_refused_with_401', { timeout: 15_000 }, async () => {
    const good = await client();
    const goodChannel = await subscribe(good, 'private-target');
    const bad = await client({ authorize: (socketId) => ({ auth: channelAuthString(socketId, 'private-elsewhere') }) });
    const log = recordMessages(bad);
    const { error } = await subscriptionError(bad, 'private-target');
    assertAuthError(error, 'signature for another channel');
    await assertNothingReaches(log, goodChannel, 'private-target', 'another channel');
  });

  test('signature_with_another_app_key_is_refused_with_401', { timeout: 15_000 }, async () => {
    const good = await client();
    const goodChannel = await subscribe(good, 'private-other-key');
    const bad = await client({ authorize: (socketId, channel) => ({ auth: `other-key:${hmacHex(APP.secret, `${socketId}:${channel}`)}` }) });
    const log = recordMessages(bad);
    const { error } = await subscriptionError(bad, 'private-other-key');
    assertAuthError(error, 'another app key');
    await assertNothingReaches(log, goodChannel, 'private-other-key', 'another app key');
  });

  test('missing_auth_is_refused_with_401', { timeout: 15_000 }, async () => {
    const good = await client();
    const goodChannel = await subscribe(good, 'private-no-auth');
    // pusher-js sends `{"channel": ...}` with no auth field when the handler returns none.
    const bad = await client({ authorize: () => ({}) });
    const log = recordMessages(bad);
    const { error } = await subscriptionError(bad, 'private-no-auth');
    assertAuthError(error, 'missing auth');
    await assertNothingReaches(log, goodChannel, 'private-no-auth', 'missing auth');
  });

  test('refused_socket_stays_connected_and_can_subscribe_with_a_good_signature', { timeout: 15_000 }, async () => {
    let forge = true;
    const c = await client({
      authorize: (socketId, channel) => ({ auth: forge ? channelAuthString(socketId, channel, undefined, { secret: 'nope' }) : channelAuthString(socketId, channel) }),
    });
    const { error } = await subscriptionError(c, 'private-retry');
    assertAuthError(error, 'first attempt');
    c.unsubscribe('private-retry');
    forge = false;
    const ch = await subscribe(c, 'private-retry-2');
    assert.equal(c.connection.state, 'connected');
    const got = once(ch, 'ok');
    await rest.trigger('private-retry-2', 'ok', { fine: true });
    assert.deepEqual(await got, { fine: true });
  });
});
