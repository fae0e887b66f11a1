// Throwaway MariaDB and PostgreSQL servers for the end-to-end suite.
//
// `startMariaDb()` and `startPostgres()` each make a fresh data directory under the
// system's temporary directory, start the server as a child process on a free 127.0.0.1
// port outside the kernel's ephemeral range (harness `freePort()`), with a user, its
// password and the database `main`, and wait until that user can log in. They resolve with
//
//   { port, env, sql(statement), stop() }
//
// where `env` holds the SOKETI_* variables that point corecast's app manager at the
// server, `sql` runs statements through the `mariadb` / `psql` command-line client and
// rejects with the server's error, and `stop` kills the server and removes its directory.
// A server still running when the test process exits is killed there.

import { execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { freePort, sleep } from './harness.mjs';

const INSTALL = 'apt-get install -y mariadb-server postgresql';
const READY_TIMEOUT_MS = 30_000;
const SQL_TIMEOUT_MS = 10_000;
const LOG_TAIL_CHARS = 4_000;
/** A port found free can be taken before the server binds it: try a few. */
const START_ATTEMPTS = 3;

/** The database corecast reads its apps from. */
export const DATABASE = 'main';
/** The password of the user each server is made with. */
export const PASSWORD = 'corecast-test-password';

/** Servers started and not stopped yet: each with a synchronous `kill()`. */
const live = new Set();

process.on('exit', () => {
  for (const server of live) server.kill();
});
// Without a handler a signal ends the process without `exit` handlers: route it through
// `process.exit`, so every server (this module's and the harness's) is killed.
for (const [sig, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
]) {
  if (process.listenerCount(sig) === 0) process.once(sig, () => process.exit(code));
}

// ---------------------------------------------------------------------------
// Shared plumbing
// ---------------------------------------------------------------------------

function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The first of `names` found on PATH, then in `dirs`. */
function findBinary(names, dirs = []) {
  const search = [...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean), ...dirs];
  for (const name of names) {
    for (const dir of search) {
      const candidate = path.join(dir, name);
      if (isExecutable(candidate)) return candidate;
    }
  }
  return null;
}

const isRoot = () => typeof process.geteuid === 'function' && process.geteuid() === 0;

function tail(file) {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.length > LOG_TAIL_CHARS ? `…${text.slice(-LOG_TAIL_CHARS)}` : text;
  } catch {
    return '';
  }
}

/** Runs a client program; resolves with its trimmed stdout, rejects with its stderr. */
function run(file, args, { env = {}, label }) {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { env: { ...process.env, ...env }, timeout: SQL_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (!err) return resolve(stdout.trim());
        const why = stderr.trim() || (err.killed ? `timed out after ${SQL_TIMEOUT_MS} ms` : err.message);
        reject(new Error(`${label}: ${why}`));
      },
    );
  });
}

/**
 * Spawns a server in its own process group with its output in `logFile`, and polls `probe`
 * until it succeeds. Resolves with `{ proc, exited }`; rejects with the log tail when the
 * server exits or is not ready within 30 s.
 */
async function spawnAndWait({ what, file, args, cwd, logFile, uid, gid, probe, kill }) {
  const out = fs.openSync(logFile, 'a');
  let proc;
  try {
    proc = spawn(file, args, { cwd, detached: true, stdio: ['ignore', out, out], uid, gid });
  } finally {
    fs.closeSync(out);
  }
  // Never keeps the test process alive: `stop` or the exit handler ends it.
  proc.unref();
  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => resolve((exitInfo = { code, signal })));
    proc.on('error', (error) => resolve((exitInfo = { error })));
  });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let lastError = 'no attempt yet';
  for (;;) {
    if (exitInfo) {
      const how = exitInfo.error ? `could not be started: ${exitInfo.error.message}` : `exited with ${JSON.stringify(exitInfo)}`;
      throw new Error(`${what} ${how}.\n--- ${logFile} ---\n${tail(logFile)}`);
    }
    try {
      await probe();
      return { proc, exited };
    } catch (err) {
      lastError = err.message;
    }
    if (Date.now() >= deadline) {
      kill(proc);
      await exitWithin(exited, 5_000);
      throw new Error(
        `${what} did not accept its user within ${READY_TIMEOUT_MS / 1000} s (last attempt: ${lastError}).\n--- ${logFile} ---\n${tail(logFile)}`,
      );
    }
    await sleep(100);
  }
}

/** Resolves with true once `exited` settles, with false after `ms`; leaves no timer behind. */
function exitWithin(exited, ms) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  return Promise.race([exited.then(() => true), late]).finally(() => clearTimeout(timer));
}

function signalGroup(proc, sig) {
  try {
    process.kill(-proc.pid, sig);
  } catch {
    // already gone
  }
}

function removeDir(dir) {
  try {
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  } catch {
    // best effort
  }
}

/**
 * Starts a server with `attempt(port)` on up to three free ports; registers it for the exit
 * handler and returns the handle. `attempt` resolves with `{ proc, exited }`.
 */
async function startOnFreePort(what, dir, attempt, { quit, env, sql }) {
  let lastError;
  for (let i = 0; i < START_ATTEMPTS; i++) {
    const port = await freePort();
    let started;
    try {
      started = await attempt(port);
    } catch (err) {
      lastError = err;
      continue;
    }
    const { proc, exited } = started;
    const entry = {
      kill() {
        // Synchronous, for the exit handler: the server ends on its own after this.
        quit(proc);
        removeDir(dir);
      },
    };
    live.add(entry);
    let stopping;
    const handle = {
      port,
      env: env(port),
      sql: (statement) => sql(port, statement),
      /** Ends the server (SIGKILL after 5 s) and removes its data directory. */
      stop() {
        stopping ??= (async () => {
          live.delete(entry);
          quit(proc);
          if (!(await exitWithin(exited, 5_000))) {
            signalGroup(proc, 'SIGKILL');
            await exitWithin(exited, 5_000);
          }
          removeDir(dir);
        })();
        return stopping;
      },
    };
    return handle;
  }
  removeDir(dir);
  throw lastError ?? new Error(`${what} did not start`);
}

// ---------------------------------------------------------------------------
// MariaDB
// ---------------------------------------------------------------------------

/** The user the tests and corecast log in to MariaDB as. */
export const MARIADB_USER = 'corecast';

function mariadbBinaries() {
  const server = findBinary(['mariadbd', 'mysqld'], ['/usr/sbin', '/usr/libexec', '/usr/local/mysql/bin']);
  const install = findBinary(['mariadb-install-db', 'mysql_install_db'], ['/usr/bin', '/usr/local/mysql/scripts']);
  const client = findBinary(['mariadb', 'mysql'], ['/usr/bin', '/usr/local/mysql/bin']);
  if (!server || !install || !client) {
    const missing = [!server && 'mariadbd', !install && 'mariadb-install-db', !client && 'mariadb'].filter(Boolean).join(', ');
    throw new Error(`MariaDB is not installed (missing ${missing}): install it with \`${INSTALL}\` (tests/run.sh installs it)`);
  }
  return { server, install, client };
}

function mariadbSql(client, port, statement) {
  return run(
    client,
    [
      '--no-defaults',
      '--protocol=TCP',
      '--host=127.0.0.1',
      `--port=${port}`,
      `--user=${MARIADB_USER}`,
      `--database=${DATABASE}`,
      '--connect-timeout=2',
      '--batch',
      '--skip-column-names',
      '--execute',
      statement,
    ],
    { env: { MYSQL_PWD: PASSWORD }, label: statement },
  );
}

/** Starts a throwaway MariaDB with the user `corecast` and the database `main`. */
export async function startMariaDb() {
  const bin = mariadbBinaries();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'corecast-e2e-mariadb-'));
  const root = isRoot() ? ['--user=root'] : [];
  try {
    execFileSync(
      bin.install,
      [
        '--no-defaults',
        `--datadir=${path.join(dir, 'data')}`,
        `--tmpdir=${dir}`,
        '--auth-root-authentication-method=normal',
        '--skip-test-db',
        '--skip-name-resolve',
        ...root,
      ],
      { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 },
    );
  } catch (err) {
    removeDir(dir);
    const output = `${err.stdout ?? ''}${err.stderr ?? ''}`.slice(-LOG_TAIL_CHARS);
    throw new Error(`${bin.install} failed (${err.message}); install it with \`${INSTALL}\` if it is missing.\n${output}`);
  }
  fs.writeFileSync(
    path.join(dir, 'init.sql'),
    `CREATE DATABASE IF NOT EXISTS \`${DATABASE}\`;\n` +
      `CREATE USER IF NOT EXISTS '${MARIADB_USER}'@'%' IDENTIFIED BY '${PASSWORD}';\n` +
      `GRANT ALL PRIVILEGES ON *.* TO '${MARIADB_USER}'@'%';\n`,
  );
  const logFile = path.join(dir, 'mariadbd.log');
  const kill = (proc) => signalGroup(proc, 'SIGKILL');

  return startOnFreePort(
    'mariadbd',
    dir,
    (port) =>
      spawnAndWait({
        what: `mariadbd on port ${port}`,
        file: bin.server,
        args: [
          '--no-defaults',
          `--datadir=${path.join(dir, 'data')}`,
          `--socket=${path.join(dir, 'mysqld.sock')}`,
          `--pid-file=${path.join(dir, 'mysqld.pid')}`,
          `--init-file=${path.join(dir, 'init.sql')}`,
          `--tmpdir=${dir}`,
          `--port=${port}`,
          '--bind-address=127.0.0.1',
          '--skip-name-resolve',
          '--skip-log-bin',
          '--innodb-buffer-pool-size=16M',
          '--max-connections=50',
          ...root,
        ],
        cwd: dir,
        logFile,
        probe: () => mariadbSql(bin.client, port, 'SELECT 1'),
        kill,
      }),
    {
      // The data goes away with the directory: no need for a clean shutdown.
      quit: kill,
      env: (port) => ({
        SOKETI_APP_MANAGER_DRIVER: 'mysql',
        SOKETI_DB_MYSQL_HOST: '127.0.0.1',
        SOKETI_DB_MYSQL_PORT: String(port),
        SOKETI_DB_MYSQL_USERNAME: MARIADB_USER,
        SOKETI_DB_MYSQL_PASSWORD: PASSWORD,
        SOKETI_DB_MYSQL_DATABASE: DATABASE,
      }),
      sql: (port, statement) => mariadbSql(bin.client, port, statement),
    },
  );
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/** The superuser the tests and corecast log in to PostgreSQL as. */
export const POSTGRES_USER = 'postgres';

/**
 * The directory holding `initdb` and `postgres`: on PATH, else Debian's
 * /usr/lib/postgresql/<version>/bin (newest first), else /usr/local/pgsql/bin.
 */
function postgresBinaries() {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
  let versions = [];
  try {
    versions = fs
      .readdirSync('/usr/lib/postgresql')
      .map((name) => ({ version: Number.parseInt(name, 10), dir: path.join('/usr/lib/postgresql', name, 'bin') }))
      .filter((v) => Number.isFinite(v.version))
      .sort((a, b) => b.version - a.version);
  } catch {
    // not Debian's layout
  }
  dirs.push(...versions.map((v) => v.dir), '/usr/local/pgsql/bin');
  const dir = dirs.find((d) => isExecutable(path.join(d, 'initdb')) && isExecutable(path.join(d, 'postgres')));
  if (!dir) {
    throw new Error(
      `PostgreSQL is not installed (no initdb and postgres on PATH or in /usr/lib/postgresql/*/bin): install it with \`${INSTALL}\` (tests/run.sh installs it)`,
    );
  }
  const psql = isExecutable(path.join(dir, 'psql')) ? path.join(dir, 'psql') : findBinary(['psql']);
  if (!psql) throw new Error(`PostgreSQL's psql client is missing: install it with \`${INSTALL}\``);
  return { initdb: path.join(dir, 'initdb'), postgres: path.join(dir, 'postgres'), psql };
}

/** The uid and gid of `name` in /etc/passwd. */
function passwdEntry(name) {
  try {
    for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const fields = line.split(':');
      if (fields[0] === name) return { uid: Number(fields[2]), gid: Number(fields[3]) };
    }
  } catch {
    // no /etc/passwd
  }
  return null;
}

/**
 * PostgreSQL refuses to run as root: `nobody`, or a `corecast-test` system user (made when
 * missing), runs it then.
 */
function unprivilegedUser() {
  const found = passwdEntry('nobody') ?? passwdEntry('corecast-test');
  if (found) return found;
  try {
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'corecast-test'], { stdio: 'ignore' });
  } catch {
    // reported below
  }
  const made = passwdEntry('corecast-test');
  if (!made) {
    throw new Error('PostgreSQL does not run as root and there is no `nobody` user; `useradd corecast-test` failed: run the tests as another user');
  }
  return made;
}

function psqlRun(psql, port, database, statement) {
  return run(
    psql,
    ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(port), '-U', POSTGRES_USER, '-d', database, '-c', statement],
    { env: { PGPASSWORD: PASSWORD, PGCONNECT_TIMEOUT: '2', PGSSLMODE: 'disable' }, label: statement },
  );
}

/** Starts a throwaway PostgreSQL with the superuser `postgres` (password auth over TCP) and the database `main`. */
export async function startPostgres() {
  const bin = postgresBinaries();
  const runAs = isRoot() ? unprivilegedUser() : null;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'corecast-e2e-postgres-'));
  const pwfile = path.join(dir, 'pwfile');
  fs.writeFileSync(pwfile, `${PASSWORD}\n`);
  if (runAs) {
    for (const p of [dir, pwfile]) fs.chownSync(p, runAs.uid, runAs.gid);
  }
  try {
    execFileSync(
      bin.initdb,
      [
        '-D',
        path.join(dir, 'data'),
        '-U',
        POSTGRES_USER,
        '--auth-local=trust',
        '--auth-host=scram-sha-256',
        `--pwfile=${pwfile}`,
        '-E',
        'UTF8',
        '--locale=C',
        '--no-sync',
      ],
      { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000, ...(runAs ?? {}) },
    );
  } catch (err) {
    removeDir(dir);
    const output = `${err.stdout ?? ''}${err.stderr ?? ''}`.slice(-LOG_TAIL_CHARS);
    throw new Error(`initdb failed (${err.message}).\n${output}`);
  }
  const logFile = path.join(dir, 'postgres.log');
  if (runAs) {
    fs.writeFileSync(logFile, '');
    fs.chownSync(logFile, runAs.uid, runAs.gid);
  }
  // Immediate shutdown: the postmaster stops its backends and removes its shared memory.
  const quit = (proc) => {
    try {
      proc.kill('SIGQUIT');
    } catch {
      // already gone
    }
  };

  const handle = await startOnFreePort(
    'postgres',
    dir,
    async (port) => {
      const started = await spawnAndWait({
        what: `postgres on port ${port}`,
        file: bin.postgres,
        args: [
          '-D',
          path.join(dir, 'data'),
          '-p',
          String(port),
          '-k',
          dir,
          '-c',
          'listen_addresses=127.0.0.1',
          '-c',
          'fsync=off',
          '-c',
          'full_page_writes=off',
          '-c',
          'shared_buffers=16MB',
          '-c',
          'max_connections=20',
        ],
        cwd: dir,
        logFile,
        ...(runAs ?? {}),
        probe: () => psqlRun(bin.psql, port, 'postgres', 'SELECT 1'),
        kill: (proc) => signalGroup(proc, 'SIGKILL'),
      });
      try {
        await psqlRun(bin.psql, port, 'postgres', `CREATE DATABASE ${DATABASE}`);
      } catch (err) {
        quit(started.proc);
        await exitWithin(started.exited, 5_000);
        throw err;
      }
      return started;
    },
    {
      quit,
      env: (port) => ({
        SOKETI_APP_MANAGER_DRIVER: 'postgres',
        SOKETI_DB_POSTGRES_HOST: '127.0.0.1',
        SOKETI_DB_POSTGRES_PORT: String(port),
        SOKETI_DB_POSTGRES_USERNAME: POSTGRES_USER,
        SOKETI_DB_POSTGRES_PASSWORD: PASSWORD,
        SOKETI_DB_POSTGRES_DATABASE: DATABASE,
      }),
      sql: (port, statement) => psqlRun(bin.psql, port, DATABASE, statement),
    },
  );
  return handle;
}
