// Helpers for the private, presence, encrypted, cache, client-event, user and REST-read
// suites, on top of harness.mjs: clients that authorise channels and sign in by signing
// locally with the official `pusher` library (as an app's auth endpoint would), raw
// protocol helpers, and ways to spread sockets over both shards.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';

import { APP, connected, once, pusherClient, rawPusher, restClient, sleep, subscribe, waitFor, withTimeout } from './harness.mjs';

/**
 * The official `pusher` library as an app's auth endpoint uses it: `authorizeChannel` and
 * `authenticateUser` only sign, so the port never matters.
 */
export const signer = restClient(1);

/** HMAC-SHA256 hex of `text`, as Pusher's auth signatures are made. */
export const hmacHex = (secret, text) => createHmac('sha256', secret).update(text).digest('hex');

/**
 * `key:signature` for a channel subscription, made by hand (for forging bad ones and for
 * `private-encrypted-` channels, which the library refuses to sign without a master key).
 */
export function channelAuthString(socketId, channel, channelData, { key = APP.key, secret = APP.secret } = {}) {
  const parts = [socketId, channel];
  if (channelData !== undefined) parts.push(channelData);
  return `${key}:${hmacHex(secret, parts.join(':'))}`;
}

/**
 * A pusher-js client whose `channelAuthorization.customHandler` signs with the `pusher`
 * library. `member` ({ user_id, user_info }) is used for presence channels; `authorize`
 * replaces the signing entirely (`(socketId, channelName) => authData`); `user`
 * ({ id, ... }) enables `signin()` through `userAuthentication.customHandler`.
 */
export function authedClient(port, { member, authorize, user, opts = {} } = {}) {
  const channelAuthorization = {
    customHandler: ({ socketId, channelName }, callback) => {
      try {
        if (authorize) return callback(null, authorize(socketId, channelName));
        const data = channelName.startsWith('presence-') ? member : undefined;
        return callback(null, signer.authorizeChannel(socketId, channelName, data));
      } catch (err) {
        return callback(err, null);
      }
    },
  };
  const userAuthentication = {
    customHandler: ({ socketId }, callback) => {
      try {
        if (!user) throw new Error('this test client has no user to sign in');
        return callback(null, signer.authenticateUser(socketId, user));
      } catch (err) {
        return callback(err, null);
      }
    },
  };
  return pusherClient(port, { channelAuthorization, userAuthentication, ...opts });
}

/**
 * Records every non-`pusher` message (and every `pusher:error`) the server sends to a
 * pusher-js client, at the connection level, so a message pusher-js would drop (for a
 * channel it did not join) is caught too.
 */
export function recordMessages(client) {
  const received = [];
  client.connection.bind('message', (m) => {
    if (m.event.startsWith('pusher') && m.event !== 'pusher:error') return;
    const entry = { event: m.event, channel: m.channel, data: m.data };
    if (m.user_id !== undefined) entry.user_id = m.user_id;
    received.push(entry);
  });
  return received;
}

/**
 * The shard a socket id came from, by corecast's id scheme (`local = counter * shards + shard`).
 * Used only to pick sockets that span both shards; never asserted on.
 */
export function shardHint(socketId, shards = 2) {
  const local = String(socketId).split('.')[1] ?? '0';
  return Number(BigInt(local) % BigInt(shards));
}

/**
 * Opens up to `max` connections with `open()` (async, resolving to `{ socketId, ... }`)
 * and returns `count` of them covering both shards when the ids allow it; `discard` closes
 * the ones not kept.
 */
export async function openSpread(open, count, { max = count * 4, discard } = {}) {
  const kept = [];
  const spare = [];
  const seen = new Set();
  while (kept.length + spare.length < max && kept.length < count) {
    const c = await open();
    const shard = shardHint(c.socketId);
    const missing = kept.length === count - 1 && seen.size === 1 && seen.has(shard);
    if (missing) spare.push(c);
    else {
      kept.push(c);
      seen.add(shard);
    }
  }
  while (kept.length < count && spare.length) kept.push(spare.shift());
  for (const c of spare) await discard?.(c);
  return kept;
}

/** Opens a raw protocol-7 socket; `socketId` is copied on the client for convenience. */
export async function rawSocket(port) {
  const c = await rawPusher(port);
  c.socketId = c.established.socket_id;
  return c;
}

/**
 * Sends `pusher:subscribe` and resolves with the server's answer for that channel: the
 * `pusher_internal:subscription_succeeded` or the `pusher:subscription_error` (or a
 * `pusher:error`, which carries no channel).
 */
export async function rawSubscribe(client, channel, extra = {}, timeoutMs = 5_000) {
  client.send({ event: 'pusher:subscribe', data: { channel, ...extra } });
  return client.next(
    (m) =>
      ((m.event === 'pusher_internal:subscription_succeeded' || m.event === 'pusher:subscription_error') && m.channel === channel) ||
      m.event === 'pusher:error',
    timeoutMs,
    `answer to subscribing ${channel}`,
  );
}

/**
 * Subscribes a raw socket and asserts success: signed (with presence `member`) for
 * `private-` and `presence-` channels, plain for public ones.
 */
export async function rawSubscribeSigned(client, channel, member) {
  const channelData = member === undefined ? undefined : JSON.stringify(member);
  const extra = {};
  if (/^(private-|presence-)/.test(channel)) extra.auth = channelAuthString(client.socketId, channel, channelData);
  if (channelData !== undefined) extra.channel_data = channelData;
  const answer = await rawSubscribe(client, channel, extra);
  assert.equal(answer.event, 'pusher_internal:subscription_succeeded', `subscribing ${channel} answered ${JSON.stringify(answer)}`);
  return answer;
}

/** Round-trips `pusher:ping`: once the pong is back, everything the server sent before it has arrived. */
export async function pingPong(client, timeoutMs = 5_000) {
  client.send({ event: 'pusher:ping', data: {} });
  const pong = await client.nextEvent('pusher:pong', undefined, timeoutMs);
  assert.ok(client.isOpen(), 'connection closed around the ping');
  return pong;
}

/** Resolves with the next `pusher:error` the raw client gets. */
export function nextError(client, timeoutMs = 5_000) {
  return client.nextEvent('pusher:error', undefined, timeoutMs);
}

/** Messages a raw client got (and has not consumed) that match `predicate`, after waiting `ms`. */
export async function messagesAfter(client, predicate, ms = 300) {
  await sleep(ms);
  return client.messages.filter(predicate);
}

/** A pusher-js client, connected, with its socket id exposed as `socketId`. */
export async function connectedAuthed(port, options) {
  const client = authedClient(port, options);
  await connected(client);
  client.socketId = client.connection.socket_id;
  return client;
}

/** Resolves with the data of the next `pusher:subscription_error` on a channel being subscribed. */
export async function subscriptionError(client, name, timeoutMs = 5_000) {
  const channel = client.subscribe(name);
  const outcome = await withTimeout(
    new Promise((resolve) => {
      channel.bind('pusher:subscription_error', (data) => resolve({ error: data }));
      channel.bind('pusher:subscription_succeeded', (data) => resolve({ ok: data }));
    }),
    timeoutMs,
    `an answer to subscribing ${name}`,
  );
  assert.ok(!outcome.ok, `subscribing ${name} succeeded; expected a pusher:subscription_error`);
  return { channel, error: outcome.error };
}

/** JSON-parses a `data` field that Pusher sends as a string; passes objects through. */
export const parseData = (data) => (typeof data === 'string' ? JSON.parse(data) : data);

export { connected, once, sleep, subscribe, waitFor, withTimeout };
