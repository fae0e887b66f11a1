// The REST publish API checks signatures and limits exactly as Pusher documents them.
// Requests here are signed by hand (HMAC-SHA256 over "METHOD\nPATH\nsorted query",
// body_md5 over the body) so each part can be forged on its own.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { APP, md5Hex, restClient, signedRequest, startServer } from './harness.mjs';

const EVENTS = `/apps/${APP.id}/events`;
const BATCH = `/apps/${APP.id}/batch_events`;

const event = (overrides = {}) => JSON.stringify({ name: 'rest-event', channels: ['rest-channel'], data: '{"hello":"world"}', ...overrides });

/** Asserts the status and Pusher's error body shape: `{"error": string, "code": status}`. */
function assertError(res, status) {
  assert.equal(res.status, status, `expected HTTP ${status}, got ${res.status} with body ${res.text}`);
  assert.ok(res.json && typeof res.json === 'object', `error body is not JSON: ${res.text}`);
  assert.equal(typeof res.json.error, 'string', `error body has no "error" string: ${res.text}`);
  assert.ok(res.json.error.length > 0, 'error message is empty');
  assert.equal(res.json.code, status, `error body "code" should be ${status}: ${res.text}`);
}

describe('REST API signatures and limits', { timeout: 60_000 }, () => {
  let server;

  before(async () => {
    server = await startServer({ shards: 2 });
  });

  after(async () => {
    await server?.stop();
  });

  test('valid_signed_publish_returns_200_with_empty_object', async () => {
    const res = await signedRequest(server.port, { path: EVENTS, body: event() });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, {}, `body was ${res.text}`);
  });

  test('single_channel_field_is_accepted', async () => {
    const body = JSON.stringify({ name: 'rest-event', channel: 'rest-channel', data: 'x' });
    const res = await signedRequest(server.port, { path: EVENTS, body });
    assert.equal(res.status, 200, res.text);
  });

  test('bad_signature_is_rejected_with_401', async () => {
    const res = await signedRequest(server.port, { path: EVENTS, body: event(), signature: 'f'.repeat(64) });
    assertError(res, 401);
  });

  test('signature_made_with_another_secret_is_rejected_with_401', async () => {
    const res = await signedRequest(server.port, { path: EVENTS, body: event(), secret: 'not-the-secret' });
    assertError(res, 401);
  });

  test('stale_timestamp_is_rejected_with_401', async () => {
    const res = await signedRequest(server.port, { path: EVENTS, body: event(), timestamp: Math.floor(Date.now() / 1000) - 700 });
    assertError(res, 401);
  });

  test('wrong_body_md5_is_rejected_with_401', async () => {
    const res = await signedRequest(server.port, { path: EVENTS, body: event(), bodyMd5: md5Hex('some other body') });
    assertError(res, 401);
  });

  test('wrong_auth_key_is_rejected_with_401', async () => {
    const res = await signedRequest(server.port, { path: EVENTS, body: event(), key: 'wrong-key' });
    assertError(res, 401);
  });

  test('unsigned_request_is_rejected_with_401', async () => {
    const res = await fetch(`http://127.0.0.1:${server.port}${EVENTS}`, {
      method: 'POST',
      body: event(),
      headers: { 'content-type': 'application/json' },
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    assertError({ status: res.status, text, json }, 401);
  });

  test('unknown_app_id_is_404', async () => {
    const res = await signedRequest(server.port, { path: '/apps/nope/events', body: event() });
    assertError(res, 404);
  });

  test('invalid_json_body_is_400', async () => {
    const res = await signedRequest(server.port, { path: EVENTS, body: '{"name": "e", "channels": ["c"], "data": ' });
    assertError(res, 400);
  });

  test('missing_event_name_is_400', async () => {
    const res = await signedRequest(server.port, { path: EVENTS, body: JSON.stringify({ channels: ['rest-channel'], data: 'x' }) });
    assertError(res, 400);
  });

  test('one_hundred_channels_are_accepted_and_101_are_400', async () => {
    const channels = (n) => Array.from({ length: n }, (_, i) => `many-${i}`);
    const ok = await signedRequest(server.port, { path: EVENTS, body: event({ channels: channels(100) }) });
    assert.equal(ok.status, 200, ok.text);
    const tooMany = await signedRequest(server.port, { path: EVENTS, body: event({ channels: channels(101) }) });
    assertError(tooMany, 400);
  });

  test('batch_of_ten_is_accepted_and_batch_of_eleven_is_400', async () => {
    const batch = (n) => JSON.stringify({ batch: Array.from({ length: n }, (_, i) => ({ channel: 'batch-channel', name: `b${i}`, data: String(i) })) });
    const ok = await signedRequest(server.port, { path: BATCH, body: batch(10) });
    assert.equal(ok.status, 200, ok.text);
    const tooMany = await signedRequest(server.port, { path: BATCH, body: batch(11) });
    assertError(tooMany, 400);
  });

  test('data_under_100_kb_is_accepted_and_over_100_kb_is_413', async () => {
    const ok = await signedRequest(server.port, { path: EVENTS, body: event({ data: 'k'.repeat(90_000) }) });
    assert.equal(ok.status, 200, ok.text);
    const tooBig = await signedRequest(server.port, { path: EVENTS, body: event({ data: 'k'.repeat(120_000) }) });
    assertError(tooBig, 413);
  });

  test('pusher_library_accepts_the_right_secret', async () => {
    const res = await restClient(server.port).trigger('lib-channel', 'lib-event', { ok: true });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
  });

  test('pusher_library_with_a_wrong_secret_is_rejected_with_401', async () => {
    const rest = restClient(server.port, { secret: 'wrong-secret' });
    await assert.rejects(rest.trigger('lib-channel', 'lib-event', { ok: true }), (err) => {
      assert.equal(err.status, 401, `library error: ${err.message} status=${err.status} body=${err.body}`);
      const body = JSON.parse(err.body);
      assert.equal(typeof body.error, 'string');
      return true;
    });
  });
});
