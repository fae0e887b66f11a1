// A subscriber that stops reading must be cut off by the server (bounded outbound queue),
// and must not slow down or lose events for anybody else on the same channel.
// Runs with CORECAST_MAX_OUTBOUND_KB=64 so the bound trips quickly.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import { APP, cleanup, connected, pusherClient, restClient, startServer, subscribe, waitFor, withTimeout } from './harness.mjs';

const CHANNEL = 'firehose';
/** Each event's data; well under the 64 KiB queue bound, so one event alone never trips it. */
const EVENT_BYTES = 30_000;
/** Upper bound on publishes: about 30 MB, far more than the kernel socket buffers hold. */
const MAX_EVENTS = 1_000;
/** Events published after the slow reader is gone, to show the others still get everything. */
const EVENTS_AFTER_DROP = 20;

/**
 * A WebSocket client on a bare TCP socket, so the test controls reading: `pause()` stops
 * reading from the kernel entirely. Understands just enough framing for text and close.
 */
function rawTcpWebSocket(port, path) {
  const sock = net.connect(port, '127.0.0.1');
  const state = {
    sock,
    handshakeDone: false,
    texts: [],
    closeCode: null,
    ended: false,
    error: null,
    closed: false,
    bytesRead: 0,
  };
  let buf = Buffer.alloc(0);
  const listeners = new Set();
  const notify = () => listeners.forEach((fn) => fn());

  sock.on('data', (chunk) => {
    state.bytesRead += chunk.length;
    buf = Buffer.concat([buf, chunk]);
    if (!state.handshakeDone) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString();
      if (!/^HTTP\/1\.1 101/.test(head)) {
        state.error = new Error(`upgrade refused: ${head}`);
        sock.destroy();
        return;
      }
      state.handshakeDone = true;
      buf = buf.subarray(end + 4);
    }
    // Server frames are unmasked: FIN/opcode, length (7, 16 or 64 bit), payload.
    for (;;) {
      if (buf.length < 2) break;
      const opcode = buf[0] & 0x0f;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (buf.length < 4) break;
        len = buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (buf.length < 10) break;
        len = Number(buf.readBigUInt64BE(2));
        off = 10;
      }
      if (buf.length < off + len) break;
      const payload = buf.subarray(off, off + len);
      buf = buf.subarray(off + len);
      if (opcode === 0x1) state.texts.push(JSON.parse(payload.toString()));
      if (opcode === 0x8) state.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
    }
    notify();
  });
  sock.on('end', () => {
    state.ended = true;
    notify();
  });
  sock.on('error', (err) => {
    state.error = err;
    notify();
  });
  sock.on('close', () => {
    state.closed = true;
    notify();
  });

  const key = randomBytes(16).toString('base64');
  sock.write(
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  );

  return {
    state,
    /** Sends a masked text frame (clients must mask); ignores write errors (they show in `state`). */
    send(obj) {
      if (sock.destroyed) return;
      const payload = Buffer.from(JSON.stringify(obj));
      const mask = randomBytes(4);
      let header;
      if (payload.length < 126) {
        header = Buffer.from([0x81, 0x80 | payload.length]);
      } else {
        header = Buffer.alloc(4);
        header[0] = 0x81;
        header[1] = 0x80 | 126;
        header.writeUInt16BE(payload.length, 2);
      }
      const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
      sock.write(Buffer.concat([header, mask, masked]), () => {});
    },
    /** Resolves when `cond(state)` holds; rejects after `timeoutMs`. */
    until(cond, timeoutMs, label) {
      let fn;
      const p = new Promise((resolve) => {
        fn = () => cond(state) && resolve(state);
        listeners.add(fn);
        fn();
      });
      return withTimeout(p, timeoutMs, label).finally(() => listeners.delete(fn));
    },
    /** True once the server side is observably gone: FIN, RST/EPIPE, or a close frame. */
    gone: () => state.ended || state.closed || state.error !== null || state.closeCode !== null,
    destroy: () => sock.destroy(),
  };
}

describe('slow reader', { timeout: 120_000 }, () => {
  let server;
  let rest;
  const resources = cleanup();

  before(async () => {
    server = await startServer({ shards: 2, env: { CORECAST_MAX_OUTBOUND_KB: '64' } });
    rest = restClient(server.port);
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  test('slow_reader_is_disconnected_while_a_normal_subscriber_gets_every_event', { timeout: 100_000 }, async (t) => {
    // A normal pusher-js subscriber that counts and checks every event.
    const normal = resources.add(pusherClient(server.port));
    await connected(normal);
    const channel = await subscribe(normal, CHANNEL);
    const seen = [];
    channel.bind('blob', (data) => seen.push(data));
    // Anything but staying connected is a failure; keep what happened for the message.
    const normalHistory = [];
    normal.connection.bind('state_change', (s) => normalHistory.push(`${s.previous}->${s.current}`));
    normal.connection.bind('error', (e) => normalHistory.push(`error ${JSON.stringify(e?.error?.data ?? e?.data ?? e?.type ?? null)}`));

    // The slow reader: upgrade, subscribe, then stop reading.
    const slow = rawTcpWebSocket(server.port, `/app/${APP.key}?protocol=7&client=js&version=8.6.0`);
    resources.add(slow, () => slow.destroy());
    await slow.until((s) => s.texts.some((m) => m.event === 'pusher:connection_established'), 5_000, 'slow reader connection_established');
    slow.send({ event: 'pusher:subscribe', data: { channel: CHANNEL } });
    await slow.until((s) => s.texts.some((m) => m.event === 'pusher_internal:subscription_succeeded'), 5_000, 'slow reader subscription');
    slow.state.sock.pause();

    const filler = randomBytes(EVENT_BYTES).toString('base64').slice(0, EVENT_BYTES);
    let published = 0;
    let droppedAt = null;
    // Lockstep: the next event goes out once the normal subscriber has the previous one, so
    // it never has more than one event in flight however busy the machine is, while the
    // slow reader's backlog keeps growing. A server that stalls everybody behind the slow
    // reader fails here too.
    const publish = async () => {
      const res = await rest.trigger(CHANNEL, 'blob', { seq: published, filler });
      assert.equal(res.status, 200);
      published += 1;
      await waitFor(() => seen.length >= published, 10_000, `normal subscriber to receive event ${published - 1}`, 1).catch((err) => {
        throw new Error(`${err.message}: got ${seen.length}; normal client history: ${normalHistory.join(', ') || 'none'}`);
      });
    };

    while (published < MAX_EVENTS && droppedAt === null) {
      await publish();
      // Writing to a socket the server has closed gets a reset: that is how a client that
      // is not reading notices. (The server answers these pings with pongs while it lives.)
      if (published % 5 === 0) slow.send({ event: 'pusher:ping', data: {} });
      if (slow.gone()) droppedAt = published;
    }

    if (droppedAt === null) {
      // Not noticed while paused: read what is buffered and see whether the stream ends.
      slow.state.sock.resume();
      await slow.until(slow.gone, 10_000, 'slow reader to be closed by the server').catch(() => {
        const events = slow.state.texts.filter((m) => m.event === 'blob').length;
        throw new Error(
          `the server never disconnected the slow reader: after ${published} events of ${EVENT_BYTES} bytes ` +
            `it is still open and delivered ${events} of them once reading resumed`,
        );
      });
      droppedAt = published;
    }

    // The others keep receiving after the drop.
    for (let i = 0; i < EVENTS_AFTER_DROP; i++) await publish();

    await waitFor(() => seen.length >= published, 30_000, `normal subscriber to receive all ${published} events`).catch((err) => {
      throw new Error(`${err.message}: got ${seen.length}; slow reader cut off after ${droppedAt}; normal client history: ${normalHistory.join(', ') || 'none'}`);
    });
    assert.equal(seen.length, published, 'normal subscriber got duplicates');
    seen.forEach((data, i) => {
      assert.equal(data.seq, i, `normal subscriber got event ${data.seq} at position ${i}`);
      assert.equal(data.filler.length, EVENT_BYTES);
    });
    assert.equal(normal.connection.state, 'connected');
    assert.deepEqual(normalHistory, [], 'the normal subscriber was disconnected or saw errors');

    // Reading what the slow socket had buffered must not yield everything: it was cut off.
    slow.state.sock.resume();
    await slow.until((s) => s.closed, 10_000, 'slow socket to finish closing');
    const slowEvents = slow.state.texts.filter((m) => m.event === 'blob').length;
    assert.ok(slowEvents < published, `slow reader received all ${published} events; it was never cut off`);
    t.diagnostic(`slow reader cut off after ${droppedAt} events of ${EVENT_BYTES} bytes; it had received ${slowEvents}; close code ${slow.state.closeCode}, error ${slow.state.error?.code}`);

    const ready = await fetch(`http://127.0.0.1:${server.port}/ready`, { signal: AbortSignal.timeout(5_000) });
    assert.equal(ready.status, 200);
  });
});
