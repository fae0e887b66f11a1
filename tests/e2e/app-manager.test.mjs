// Apps read from a database, over 2 shards, with the real clients: for MariaDB (the mysql
// driver) and PostgreSQL, each started for the suite, Soketi's `apps` table holds two apps,
// one with client messages enabled and one without, and corecast runs with the app cache
// on (TTL 1 s). pusher-js clients of those apps subscribe to public, private and presence
// channels (signed by the `pusher` library with the app's secret from the table) and get
// what the `pusher` library triggers; client events are relayed on the first app and
// refused with 4301 on the second; a key not in the table is refused with 4001, and once
// a row for it is inserted the app connects and its events are delivered.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import Pusher from 'pusher-js';

import { cleanup, connected, once, restClient, sleep, startServer, subscribe, withTimeout } from './harness.mjs';
import { startMariaDb, startPostgres } from './databases.mjs';

const SETTLE_MS = 300;
const CACHE_TTL_SECS = 1;

/** Soketi's `apps` table in each database's dialect, and how each quotes the column `key`. */
const DATABASES = [
  {
    name: 'MariaDB (mysql driver)',
    start: startMariaDb,
    key: '`key`',
    table:
      'CREATE TABLE apps (id varchar(255) NOT NULL PRIMARY KEY, `key` varchar(255) NOT NULL, ' +
      'secret varchar(255) NOT NULL, max_connections integer NOT NULL, ' +
      'enable_client_messages tinyint(1) NOT NULL, enabled tinyint(1) NOT NULL, ' +
      'max_backend_events_per_sec integer NOT NULL, max_client_events_per_sec integer NOT NULL, ' +
      'max_read_req_per_sec integer NOT NULL, webhooks json, ' +
      'max_presence_members_per_channel tinyint(1) NULL, enable_user_authentication tinyint(1) NOT NULL)',
  },
  {
    name: 'PostgreSQL (postgres driver)',
    start: startPostgres,
    key: '"key"',
    table:
      'CREATE TABLE apps (id varchar(255) PRIMARY KEY, "key" varchar(255) NOT NULL, ' +
      'secret varchar(255) NOT NULL, max_connections integer NOT NULL, ' +
      'enable_client_messages smallint NOT NULL, enabled smallint NOT NULL, ' +
      'max_backend_events_per_sec integer NOT NULL, max_client_events_per_sec integer NOT NULL, ' +
      'max_read_req_per_sec integer NOT NULL, webhooks json, ' +
      'max_presence_members_per_channel integer NULL, enable_user_authentication smallint NOT NULL)',
  },
];

/** An app's credentials as its row holds them. */
const app = (id) => ({ id, key: `key-${id}`, secret: `secret-${id}` });
/** Client messages enabled. */
const CHATTY = app('chatty');
/** Client messages disabled. */
const QUIET = app('quiet');

/** Inserts an enabled app without limits. */
function insertApp(db, keyColumn, { id, key, secret }, clientMessages) {
  return db.sql(
    `INSERT INTO apps (id, ${keyColumn}, secret, max_connections, enable_client_messages, enabled, ` +
      'max_backend_events_per_sec, max_client_events_per_sec, max_read_req_per_sec, webhooks, ' +
      'max_presence_members_per_channel, enable_user_authentication) ' +
      `VALUES ('${id}', '${key}', '${secret}', -1, ${clientMessages ? 1 : 0}, 1, -1, -1, -1, NULL, NULL, 0)`,
  );
}

for (const database of DATABASES) {
  describe(`apps from ${database.name}, over 2 shards`, { timeout: 120_000 }, () => {
    let db;
    let server;
    const resources = cleanup();

    before(async () => {
      db = await database.start();
      await db.sql(database.table);
      await insertApp(db, database.key, CHATTY, true);
      await insertApp(db, database.key, QUIET, false);
      server = await startServer({
        shards: 2,
        env: { ...db.env, SOKETI_APP_MANAGER_CACHE_ENABLED: 'true', SOKETI_APP_MANAGER_CACHE_TTL: String(CACHE_TTL_SECS) },
      });
    });

    afterEach(() => resources.closeAll());

    after(async () => {
      await resources.closeAll();
      await server?.stop();
      await db?.stop();
    });

    /** The `pusher` server library with `a`'s credentials, pointed at the server. */
    const rest = (a) => restClient(server.port, { appId: a.id, key: a.key, secret: a.secret });

    /**
     * A pusher-js client of app `a` whose channelAuthorization customHandler signs with the
     * `pusher` library and `signWith`'s secret (`a` unless given); `member` for presence.
     */
    function client(a, { member, signWith = a } = {}) {
      const signer = restClient(1, { appId: signWith.id, key: signWith.key, secret: signWith.secret });
      const channelAuthorization = {
        customHandler: ({ socketId, channelName }, callback) => {
          try {
            const data = channelName.startsWith('presence-') ? member : undefined;
            callback(null, signer.authorizeChannel(socketId, channelName, data));
          } catch (err) {
            callback(err, null);
          }
        },
      };
      const c = new Pusher(a.key, {
        wsHost: '127.0.0.1',
        wsPort: server.port,
        forceTLS: false,
        enabledTransports: ['ws'],
        disableStats: true,
        cluster: 'mt1',
        channelAuthorization,
      });
      return resources.add(c, () => c.disconnect());
    }

    const connectedClient = (a, opts) => connected(client(a, opts));

    /**
     * What a pusher-js client of `a` reaches first: `{ connected: socketId }` or
     * `{ error }` with the error pusher-js emitted when the server refused it.
     */
    function firstOutcome(a, timeoutMs = 5_000) {
      const c = client(a);
      return withTimeout(
        new Promise((resolve) => {
          c.connection.bind('connected', () => resolve({ connected: c.connection.socket_id }));
          c.connection.bind('error', (error) => resolve({ error }));
        }),
        timeoutMs,
        `${a.key} to connect or be refused`,
      ).finally(() => c.disconnect());
    }

    test('public_channel_subscribe_and_trigger_for_both_apps_of_the_table', { timeout: 15_000 }, async () => {
      for (const a of [CHATTY, QUIET]) {
        const c = await connectedClient(a);
        const channel = await subscribe(c, 'public-news');
        const got = once(channel, 'headline');
        await rest(a).trigger('public-news', 'headline', { app: a.id, text: 'hello' });
        assert.deepEqual(await got, { app: a.id, text: 'hello' }, `app ${a.id}`);
      }
    });

    test('private_channel_signed_with_the_table_secret_subscribes_and_gets_triggers', { timeout: 15_000 }, async () => {
      const c = await connectedClient(CHATTY);
      const channel = await subscribe(c, 'private-room');
      const got = once(channel, 'note');
      await rest(CHATTY).trigger('private-room', 'note', { n: 1 });
      assert.deepEqual(await got, { n: 1 });

      // Signed with the other app's secret: the table's secret for this key decides.
      const forged = await connectedClient(QUIET, { signWith: CHATTY });
      const refused = forged.subscribe('private-room');
      const error = await once(refused, 'pusher:subscription_error', 5_000);
      assert.ok(!refused.subscribed, `subscribed with another app's secret: ${JSON.stringify(error)}`);
    });

    test('presence_members_of_two_users_see_each_other', { timeout: 15_000 }, async () => {
      const ann = await connectedClient(CHATTY, { member: { user_id: 'ann', user_info: { name: 'Ann' } } });
      const bob = await connectedClient(CHATTY, { member: { user_id: 'bob', user_info: { name: 'Bob' } } });
      const annChannel = await subscribe(ann, 'presence-lobby');
      assert.equal(annChannel.members.count, 1);
      const added = once(annChannel, 'pusher:member_added');

      const bobChannel = bob.subscribe('presence-lobby');
      const members = await once(bobChannel, 'pusher:subscription_succeeded');
      assert.equal(members.count, 2);
      const roster = {};
      members.each((m) => {
        roster[m.id] = m.info;
      });
      assert.deepEqual(roster, { ann: { name: 'Ann' }, bob: { name: 'Bob' } });
      assert.deepEqual(members.me, { id: 'bob', info: { name: 'Bob' } });

      assert.deepEqual(await added, { id: 'bob', info: { name: 'Bob' } });
      assert.equal(annChannel.members.count, 2);
    });

    test('client_event_reaches_the_other_client_where_the_row_enables_client_messages', { timeout: 15_000 }, async () => {
      const sender = await connectedClient(CHATTY);
      const receiver = await connectedClient(CHATTY);
      const senderChannel = await subscribe(sender, 'private-typing');
      const receiverChannel = await subscribe(receiver, 'private-typing');
      const errors = [];
      sender.connection.bind('error', (e) => errors.push(e));
      const echoed = [];
      senderChannel.bind('client-x', (d) => echoed.push(d));

      const got = once(receiverChannel, 'client-x');
      assert.equal(senderChannel.trigger('client-x', { typing: true }), true);
      assert.deepEqual(await got, { typing: true });
      await sleep(SETTLE_MS);
      assert.deepEqual(errors, [], 'the sender got an error');
      assert.deepEqual(echoed, [], 'the sender got its own client event');
    });

    test('client_event_is_refused_with_4301_where_the_row_disables_client_messages', { timeout: 15_000 }, async () => {
      const sender = await connectedClient(QUIET);
      const receiver = await connectedClient(QUIET);
      const senderChannel = await subscribe(sender, 'private-typing');
      const receiverChannel = await subscribe(receiver, 'private-typing');
      const relayed = [];
      receiverChannel.bind('client-x', (d) => relayed.push(d));

      const refusal = once(sender.connection, 'error', 5_000);
      senderChannel.trigger('client-x', { typing: true });
      const error = await refusal;
      assert.equal(error.type, 'PusherError', JSON.stringify(error));
      assert.equal(error.data.code, 4301, JSON.stringify(error));
      await sleep(SETTLE_MS);
      assert.deepEqual(relayed, [], 'the refused client event was relayed');
      assert.equal(sender.connection.state, 'connected', 'the refusal closed the connection');

      // The connection still works after the refusal.
      const got = once(senderChannel, 'after');
      await rest(QUIET).trigger('private-typing', 'after', { ok: true });
      assert.deepEqual(await got, { ok: true });
    });

    test('a_key_not_in_the_table_is_refused_with_4001_and_connects_once_its_row_is_inserted', { timeout: 20_000 }, async () => {
      const late = app('late');
      const unknown = await firstOutcome(late);
      assert.ok(unknown.error, `an unknown key connected: ${JSON.stringify(unknown)}`);
      assert.equal(unknown.error.error?.data?.code, 4001, JSON.stringify(unknown.error));

      await insertApp(db, database.key, late, false);
      // A key that matched no row is answered "missing" from memory for a short while (2 s).
      const deadline = Date.now() + 8_000;
      let outcome = await firstOutcome(late);
      while (!outcome.connected) {
        assert.ok(Date.now() < deadline, `the inserted app did not connect; last outcome: ${JSON.stringify(outcome)}`);
        await sleep(100);
        outcome = await firstOutcome(late);
      }

      const c = await connectedClient(late);
      const channel = await subscribe(c, 'public-arrivals');
      const got = once(channel, 'welcome');
      await rest(late).trigger('public-arrivals', 'welcome', { to: late.id });
      assert.deepEqual(await got, { to: late.id });
    });
  });
}
