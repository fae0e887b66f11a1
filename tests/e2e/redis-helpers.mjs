// A real redis-server for the multi-node end-to-end tests, on a free port.

import { spawn } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';

import { freePort, waitFor } from './harness.mjs';

/** True when something on `port` answers an inline PING with +PONG. */
function pings(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    const done = (ok) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 500);
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => done(d.toString().startsWith('+PONG')));
    sock.on('error', () => done(false));
  });
}

/** A redis-server on a free port; resolves once it answers PING. */
export async function startRedis() {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', os.tmpdir()], {
    stdio: 'ignore',
  });
  let exited = null;
  proc.on('exit', (code, signal) => {
    exited = { code, signal };
  });
  proc.on('error', (err) => {
    exited = { error: err.message };
  });
  const kill = () => {
    if (!exited) proc.kill('SIGKILL');
  };
  process.on('exit', kill);
  try {
    await waitFor(async () => {
      if (exited) throw new Error(`redis-server exited: ${JSON.stringify(exited)} (is it installed?)`);
      return pings(port);
    }, 5_000, `redis-server answering PING on ${port}`);
  } catch (err) {
    kill();
    throw err;
  }
  return { port, stop: kill };
}

