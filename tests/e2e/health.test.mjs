// Health endpoints answer like Soketi's, so load balancers and orchestrators keep working.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startServer } from './harness.mjs';

describe('health endpoints', { timeout: 30_000 }, () => {
  let server;

  before(async () => {
    server = await startServer({ shards: 2 });
  });

  after(async () => {
    await server?.stop();
  });

  for (const path of ['/', '/ready']) {
    test(`get_${path === '/' ? 'root' : 'ready'}_answers_200_ok`, async () => {
      for (let i = 0; i < 3; i++) {
        const res = await fetch(`http://127.0.0.1:${server.port}${path}`, { signal: AbortSignal.timeout(5_000) });
        assert.equal(res.status, 200);
        assert.equal(await res.text(), 'OK');
      }
    });
  }
});
