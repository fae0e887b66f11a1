// User authentication over 2 shards: pusher-js `signin()` through a customHandler that
// signs with the `pusher` library's authenticateUser; `sendToUser` reaching every
// signed-in socket of that user and nobody else; `terminateUserConnections` closing them
// all with 4009; a bad sign-in refused with 4009. With SOKETI_DEFAULT_APP_USER_AUTHENTICATION
// on, a socket that neither signs in nor joins a private/presence channel within
// SOKETI_USER_AUTHENTICATION_TIMEOUT (ms) is closed with 4009 (Pusher's "authorized connections").

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, restClient, startServer } from './harness.mjs';
import {
  connectedAuthed,
  hmacHex,
  openSpread,
  pingPong,
  rawSocket,
  rawSubscribeSigned,
  recordMessages,
  shardHint,
  signer,
  sleep,
  waitFor,
  withTimeout,
} from './protocol-helpers.mjs';

const SETTLE_MS = 400;

/** Signs a raw socket in as `user`; resolves with the signin_success message. */
async function rawSignin(client, user) {
  const { auth, user_data } = signer.authenticateUser(client.socketId, user);
  client.send({ event: 'pusher:signin', data: { auth, user_data } });
  const ok = await client.nextEvent('pusher:signin_success');
  assert.equal(typeof ok.data, 'object', `signin_success data must be an object: ${JSON.stringify(ok)}`);
  assert.equal(ok.data.user_data, user_data, `signin_success: ${JSON.stringify(ok)}`);
  return ok;
}

/** Signs a pusher-js client in and waits for the server to confirm. */
async function signedIn(client) {
  const success = new Promise((resolve) => {
    client.connection.bind('message', (m) => {
      if (m.event === 'pusher:signin_success') resolve(m);
    });
  });
  client.signin();
  const msg = await withTimeout(success, 5_000, 'pusher:signin_success');
  await waitFor(() => client.user.user_data !== null, 2_000, 'pusher-js to record the signed-in user');
  return msg;
}

/** Expects `pusher:error` 4009 and then the server closing the socket with 4009. */
async function expectClosed4009(client, what) {
  const closed = await withTimeout(client.closed, 5_000, `${what}: the server to close the socket`);
  const err = client.messages.find((m) => m.event === 'pusher:error');
  assert.equal(err?.data?.code, 4009, `${what}: messages before close ${JSON.stringify(client.messages.slice(-3))}`);
  assert.equal(closed.code, 4009, `${what}: close code ${closed.code}`);
}

describe('user authentication over 2 shards', { timeout: 60_000 }, () => {
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

  const client = async (user) => resources.add(await connectedAuthed(server.port, { user }));
  const raw = async () => resources.add(await rawSocket(server.port), (c) => c.terminate());

  test('pusher_js_signin_gets_signin_success_with_the_user_data', async () => {
    const user = { id: 'u0', name: 'Zero', watchlist: ['u1'] };
    const c = await client(user);
    const msg = await signedIn(c);
    assert.equal(msg.data.user_data, JSON.stringify(user));
    assert.deepEqual(c.user.user_data, user);
    assert.equal(c.connection.state, 'connected');
  });

  test('pusher_js_signin_draws_no_subscription_error_for_its_server_to_user_channel', async () => {
    // After signin_success pusher-js itself subscribes to `#server-to-user-<id>`
    // (src/core/user.ts, _subscribeChannels); an app watching for subscription errors must
    // not see one for a channel it never asked for.
    const c = await client({ id: 'u-quiet' });
    const errors = [];
    c.connection.bind('message', (m) => {
      if (m.event === 'pusher:subscription_error' || m.event === 'pusher:error') errors.push(m);
    });
    await signedIn(c);
    const fence = withTimeout(new Promise((resolve) => c.user.bind('fence', resolve)), 5_000, 'the fence event');
    await rest.sendToUser('u-quiet', 'fence', {});
    await fence;
    assert.deepEqual(errors, [], 'the server answered pusher-js signin flow with an error');
  });

  test('raw_signin_gets_signin_success_echoing_user_data', async () => {
    const c = await raw();
    await rawSignin(c, { id: 'raw-user', name: 'Raw' });
    await pingPong(c);
  });

  test('send_to_user_reaches_every_signed_in_socket_of_that_user_on_both_shards_and_nobody_else', { timeout: 30_000 }, async () => {
    const u1 = [];
    for (let i = 0; i < 6; i++) u1.push(await client({ id: 'u1', name: 'One' }));
    const u2 = [];
    for (let i = 0; i < 3; i++) u2.push(await client({ id: 'u2', name: 'Two' }));
    const anon = [await client(), await client()];
    for (const c of [...u1, ...u2]) await signedIn(c);

    const got = u1.map(() => []);
    u1.forEach((c, i) => c.user.bind('evt', (data) => got[i].push(data)));
    const strays = [...u2, ...anon].map((c) => recordMessages(c));

    const res = await rest.sendToUser('u1', 'evt', { hello: 'u1' });
    assert.equal(res.status, 200);
    await waitFor(() => got.every((g) => g.length >= 1), 5_000, 'every u1 socket to get evt').catch((err) => {
      const missing = u1.filter((_, i) => got[i].length === 0).map((c) => `shard ${shardHint(c.socketId)}`);
      throw new Error(`${err.message}; missing on ${missing.join(', ')}`);
    });
    await sleep(SETTLE_MS);
    for (const g of got) assert.deepEqual(g, [{ hello: 'u1' }]);
    for (const s of strays) assert.deepEqual(s.filter((m) => m.event === 'evt'), [], 'another user or an anonymous socket got u1 event');
  });

  test('send_to_user_reaches_a_raw_socket_on_the_server_to_user_channel', async () => {
    const c = await raw();
    await rawSignin(c, { id: 'raw-target' });
    await rest.sendToUser('raw-target', 'ping-user', { n: 1 });
    const msg = await c.nextEvent('ping-user');
    assert.equal(msg.channel, '#server-to-user-raw-target');
    assert.equal(msg.data, '{"n":1}');
  });

  test('terminate_user_connections_closes_every_socket_of_that_user_with_4009', { timeout: 20_000 }, async () => {
    const targets = await openSpread(
      async () => {
        const c = await raw();
        await rawSignin(c, { id: 'u3' });
        return c;
      },
      6,
      { max: 10, discard: (c) => c.terminate() },
    );
    const bystanders = [];
    for (let i = 0; i < 3; i++) {
      const c = await raw();
      await rawSignin(c, { id: 'u4' });
      bystanders.push(c);
    }
    const anon = await raw();

    const res = await rest.terminateUserConnections('u3');
    assert.equal(res.status, 200);
    for (const t of targets) {
      const closed = await withTimeout(t.closed, 5_000, `u3 socket on shard ${shardHint(t.socketId)} to be closed`);
      assert.equal(closed.code, 4009, `u3 socket on shard ${shardHint(t.socketId)} closed with ${closed.code}`);
    }
    for (const b of [...bystanders, anon]) await pingPong(b);
  });

  test('terminating_a_user_removes_it_from_presence_channels', { timeout: 15_000 }, async () => {
    const watcher = await raw();
    await rawSubscribeSigned(watcher, 'presence-terminate', { user_id: 'watcher', user_info: {} });
    const victims = [];
    for (let i = 0; i < 4; i++) {
      const c = await raw();
      await rawSignin(c, { id: 'u6' });
      await rawSubscribeSigned(c, 'presence-terminate', { user_id: 'u6', user_info: {} });
      victims.push(c);
    }
    await watcher.nextEvent('pusher_internal:member_added', 'presence-terminate');
    await rest.terminateUserConnections('u6');
    const removed = await watcher.nextEvent('pusher_internal:member_removed', 'presence-terminate');
    assert.deepEqual(JSON.parse(removed.data), { user_id: 'u6' });
    for (const v of victims) await withTimeout(v.closed, 5_000, 'u6 socket closed');
    await pingPong(watcher);
    assert.equal(watcher.messages.filter((m) => m.event === 'pusher_internal:member_removed').length, 1);
    assert.equal(watcher.messages.filter((m) => m.event === 'pusher_internal:member_added').length, 1);
  });

  test('terminate_with_a_wrong_signature_is_401_and_closes_nothing', async () => {
    const c = await raw();
    await rawSignin(c, { id: 'u7' });
    const wrong = restClient(server.port, { secret: 'not-the-secret' });
    await assert.rejects(wrong.terminateUserConnections('u7'), (err) => {
      assert.equal(err.status, 401, `status ${err.status}, body ${err.body}`);
      return true;
    });
    await assert.rejects(wrong.sendToUser('u7', 'evt', {}), (err) => {
      assert.equal(err.status, 401, `status ${err.status}, body ${err.body}`);
      return true;
    });
    await pingPong(c);
    assert.deepEqual(c.messages.filter((m) => m.event === 'evt'), []);
  });

  test('terminated_pusher_js_client_leaves_the_connected_state_and_stays_out', { timeout: 15_000 }, async () => {
    const c = await client({ id: 'u5' });
    await signedIn(c);
    const states = [];
    c.connection.bind('state_change', (s) => states.push(s.current));
    await rest.terminateUserConnections('u5');
    await waitFor(() => c.connection.state !== 'connected', 5_000, 'pusher-js to leave the connected state');
    await sleep(1_000);
    assert.ok(['disconnected', 'unavailable'].includes(c.connection.state), `pusher-js state ${c.connection.state} (${states.join(' -> ')})`);
  });

  test('signin_with_a_bad_signature_gets_4009_and_the_connection_closes', async () => {
    const c = await raw();
    const userData = JSON.stringify({ id: 'mallory' });
    c.send({ event: 'pusher:signin', data: { auth: `app-key:${hmacHex('wrong-secret', `${c.socketId}::user::${userData}`)}`, user_data: userData } });
    await expectClosed4009(c, 'bad signature');
  });

  test('signin_signed_for_another_socket_gets_4009_and_the_connection_closes', async () => {
    const other = await raw();
    const c = await raw();
    const { auth, user_data } = signer.authenticateUser(other.socketId, { id: 'stolen' });
    c.send({ event: 'pusher:signin', data: { auth, user_data } });
    await expectClosed4009(c, 'signature for another socket');
    await pingPong(other);
  });

  test('signin_with_user_data_without_id_gets_4009', async () => {
    const c = await raw();
    const userData = JSON.stringify({ name: 'no id' });
    c.send({ event: 'pusher:signin', data: { auth: `app-key:${hmacHex('app-secret', `${c.socketId}::user::${userData}`)}`, user_data: userData } });
    await expectClosed4009(c, 'user_data without id');
  });

  test('bad_signin_does_not_receive_events_for_that_user', async () => {
    const real = await raw();
    await rawSignin(real, { id: 'victim' });
    const c = await raw();
    const userData = JSON.stringify({ id: 'victim' });
    c.send({ event: 'pusher:signin', data: { auth: `app-key:${'0'.repeat(64)}`, user_data: userData } });
    await withTimeout(c.closed, 5_000, 'the forged socket to be closed');
    await rest.sendToUser('victim', 'for-victim', {});
    await real.nextEvent('for-victim');
    assert.deepEqual(c.messages.filter((m) => m.event === 'for-victim'), []);
  });
});

describe('authorized connections: SOKETI_DEFAULT_APP_USER_AUTHENTICATION=true, 2 s timeout', { timeout: 60_000 }, () => {
  const TIMEOUT_MS = 2_000;
  let server;
  const resources = cleanup();

  before(async () => {
    server = await startServer({
      shards: 2,
      env: { SOKETI_DEFAULT_APP_USER_AUTHENTICATION: 'true', SOKETI_USER_AUTHENTICATION_TIMEOUT: String(TIMEOUT_MS) },
    });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  const raw = async () => resources.add(await rawSocket(server.port), (c) => c.terminate());

  // All sockets are watched over the same window to keep the suite short.
  test('only_sockets_that_neither_sign_in_nor_join_a_private_channel_are_closed_with_4009', { timeout: 20_000 }, async () => {
    const idle = [];
    for (let i = 0; i < 4; i++) idle.push(await raw());
    const publicOnly = await raw();
    await rawSubscribeSigned(publicOnly, 'just-public');
    const signedInSockets = [];
    for (let i = 0; i < 4; i++) {
      const c = await raw();
      await rawSignin(c, { id: `member-${i}` });
      signedInSockets.push(c);
    }
    const privateSub = await raw();
    await rawSubscribeSigned(privateSub, 'private-authorized');
    const presenceSub = await raw();
    await rawSubscribeSigned(presenceSub, 'presence-authorized', { user_id: 'p', user_info: {} });
    const pusherJs = resources.add(await connectedAuthed(server.port, { user: { id: 'js-user' } }));
    await signedIn(pusherJs);

    for (const c of [...idle, publicOnly]) {
      const closed = await withTimeout(c.closed, TIMEOUT_MS + 4_000, `an unauthenticated socket on shard ${shardHint(c.socketId)} to be closed`);
      assert.equal(closed.code, 4009, `unauthenticated socket closed with ${closed.code}`);
      const opened = c.messages[0].receivedAt;
      assert.ok(closed.at - opened >= TIMEOUT_MS - 500, `closed after ${closed.at - opened} ms, before the ${TIMEOUT_MS} ms timeout`);
      const err = c.messages.find((m) => m.event === 'pusher:error');
      assert.equal(err?.data?.code, 4009, `pusher:error before the close: ${JSON.stringify(c.messages.slice(-2))}`);
    }
    await sleep(1_000);
    for (const c of [...signedInSockets, privateSub, presenceSub]) await pingPong(c);
    assert.equal(pusherJs.connection.state, 'connected');
  });

  test('a_socket_that_signs_in_late_but_within_the_timeout_stays', { timeout: 15_000 }, async () => {
    const c = await raw();
    await sleep(TIMEOUT_MS / 2);
    await rawSignin(c, { id: 'late' });
    await sleep(TIMEOUT_MS + 1_000);
    await pingPong(c);
  });
});
