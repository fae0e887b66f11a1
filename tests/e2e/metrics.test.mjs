// Prometheus metrics on the metrics port, as Soketi serves them
// (https://docs.soketi.app/advanced-usage/prometheus-metrics): SOKETI_METRICS_ENABLED=true,
// SOKETI_METRICS_SERVER_PORT, `GET /metrics` in the Prometheus text format with Soketi's
// series (`soketi_connected`, `soketi_new_connections_total`, ... labelled `app_id` and
// `port`), SOKETI_METRICS_PROMETHEUS_PREFIX renaming them, `/`, `/ready` and `/usage` on
// the same port; plus corecast's own `corecast_*` series. CORECAST_SHARDS=2 with pusher-js
// clients on both shards: the Soketi series are totals over the shards.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanup, connected, pusherClient, restClient } from './harness.mjs';
import { metric, metricSum, metricsGet, scrape, series, startWithMetrics, uniq } from './ops-helpers.mjs';
import { openSpread, shardHint, subscribe, waitFor } from './protocol-helpers.mjs';

const APP_LABELS = (port) => ({ app_id: 'app-id', port: String(port) });

describe('metrics over 2 shards', { timeout: 55_000 }, () => {
  let server;
  const resources = cleanup();

  before(async () => {
    server = await startWithMetrics({ shards: 2 });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  test('metrics_port_serves_root_ready_usage_and_prometheus_text', { timeout: 10_000 }, async () => {
    const root = await metricsGet(server.metricsPort, '/');
    assert.equal(root.status, 200, `GET / on the metrics port: ${root.status} ${root.text}`);
    const ready = await metricsGet(server.metricsPort, '/ready');
    assert.equal(ready.status, 200, `GET /ready on the metrics port: ${ready.status} ${ready.text}`);

    const usage = await metricsGet(server.metricsPort, '/usage');
    assert.equal(usage.status, 200, `GET /usage: ${usage.status} ${usage.text}`);
    assert.match(usage.headers.get('content-type') ?? '', /application\/json/);
    const body = JSON.parse(usage.text);
    for (const k of ['free', 'used', 'total', 'percent']) {
      assert.equal(typeof body?.memory?.[k], 'number', `/usage memory.${k} is not a number: ${usage.text}`);
    }
    assert.ok(body.memory.used > 0, `/usage memory.used is ${body.memory.used}`);

    const m = await metricsGet(server.metricsPort, '/metrics');
    assert.equal(m.status, 200);
    assert.match(m.headers.get('content-type') ?? '', /^text\/plain/, `content-type ${m.headers.get('content-type')}`);
    assert.match(m.text, /^# HELP soketi_connected /m, 'no HELP line for soketi_connected');
    assert.match(m.text, /^# TYPE soketi_connected gauge$/m, 'soketi_connected is not a gauge');
    assert.match(m.text, /^# TYPE soketi_new_connections_total counter$/m);
  });

  test('connections_messages_bytes_and_rest_calls_are_counted_over_both_shards', { timeout: 30_000 }, async () => {
    const labels = APP_LABELS(server.port);
    const before0 = await scrape(server.metricsPort);
    const connected0 = metric(before0, 'soketi_connected', labels) ?? 0;
    const newConns0 = metric(before0, 'soketi_new_connections_total', labels) ?? 0;
    const disc0 = metric(before0, 'soketi_new_disconnections_total', labels) ?? 0;
    const calls0 = metric(before0, 'soketi_http_calls_received_total', labels) ?? 0;
    const latency0 = metricSum(before0, 'corecast_delivery_latency_seconds_count');

    const clients = await openSpread(() => connected(pusherClient(server.port)).then((c) => Object.assign(c, { socketId: c.connection.socket_id })), 5, {
      max: 20,
      discard: (c) => c.disconnect(),
    });
    for (const c of clients) resources.add(c);
    const shards = new Set(clients.map((c) => shardHint(c.socketId)));
    const name = `metrics-${uniq()}`;
    const channels = [];
    for (const c of clients) channels.push(await subscribe(c, name));

    let s = await waitFor(
      async () => {
        const x = await scrape(server.metricsPort);
        return metric(x, 'soketi_connected', labels) === connected0 + 5 ? x : null;
      },
      5_000,
      'soketi_connected to be 5',
    ).catch(async (err) => {
      const x = await scrape(server.metricsPort);
      throw new Error(`${err.message}; soketi_connected series: ${JSON.stringify(series(x, 'soketi_connected'))}`);
    });
    assert.equal(metric(s, 'soketi_connected', labels), 5, `soketi_connected{app_id="app-id",port="${server.port}"} (clients on shards ${[...shards]})`);
    assert.ok(metric(s, 'soketi_new_connections_total', labels) - newConns0 >= 5, `soketi_new_connections_total grew by ${metric(s, 'soketi_new_connections_total', labels) - newConns0}`);
    const sent0 = metric(s, 'soketi_ws_messages_sent_total', labels);
    assert.equal(typeof sent0, 'number', 'no soketi_ws_messages_sent_total for the app');
    assert.ok(metric(s, 'soketi_socket_received_bytes', labels) > 0, 'soketi_socket_received_bytes is not > 0 after 5 subscribes');

    const rest = restClient(server.port);
    const received = channels.map((ch) => {
      const got = [];
      ch.bind('tick', (d) => got.push(d));
      return got;
    });
    for (let i = 0; i < 3; i++) await rest.trigger(name, 'tick', { i });
    await waitFor(() => received.every((g) => g.length === 3), 5_000, 'every client to get the 3 events');

    s = await scrape(server.metricsPort);
    const sentGrowth = metric(s, 'soketi_ws_messages_sent_total', labels) - sent0;
    assert.ok(sentGrowth >= 15, `soketi_ws_messages_sent_total grew by ${sentGrowth} for 3 events to 5 subscribers`);
    const calls = metric(s, 'soketi_http_calls_received_total', labels);
    assert.ok(calls - calls0 >= 3, `soketi_http_calls_received_total grew by ${calls - calls0} after 3 REST publishes`);
    assert.ok(metric(s, 'soketi_socket_transmitted_bytes', labels) > 0, 'soketi_socket_transmitted_bytes is not > 0');
    assert.ok(metric(s, 'soketi_http_received_bytes', labels) > 0, 'soketi_http_received_bytes is not > 0 after 3 REST publishes');
    const latencyGrowth = metricSum(s, 'corecast_delivery_latency_seconds_count') - latency0;
    assert.ok(latencyGrowth >= 3, `corecast_delivery_latency_seconds_count grew by ${latencyGrowth} for 3 publishes delivered on both shards`);

    // Two clients leave.
    const leaving = clients.slice(0, 2);
    for (const c of leaving) c.disconnect();
    s = await waitFor(
      async () => {
        const x = await scrape(server.metricsPort);
        return metric(x, 'soketi_connected', labels) === connected0 + 3 ? x : null;
      },
      5_000,
      'soketi_connected to drop to 3',
    ).catch(async (err) => {
      const x = await scrape(server.metricsPort);
      throw new Error(`${err.message}; soketi_connected series: ${JSON.stringify(series(x, 'soketi_connected'))}`);
    });
    assert.equal(metric(s, 'soketi_connected', labels), 3);
    const disc = metric(s, 'soketi_new_disconnections_total', labels) - disc0;
    assert.ok(disc >= 2, `soketi_new_disconnections_total grew by ${disc} after 2 disconnects`);
  });

  test('corecast_series_exist_per_shard', { timeout: 10_000 }, async () => {
    const s = await scrape(server.metricsPort);
    for (const name of ['corecast_slow_reader_disconnects_total', 'corecast_connections']) {
      const found = series(s, name);
      const shards = found.map((x) => x.labels.shard).sort();
      assert.deepEqual(shards, ['0', '1'], `${name} per shard: ${JSON.stringify(found)}`);
    }
    const buckets = series(s, 'corecast_delivery_latency_seconds_bucket');
    assert.ok(buckets.length > 0, 'no corecast_delivery_latency_seconds_bucket series');
    assert.ok(buckets.some((b) => b.labels.le === '+Inf'), 'the latency histogram has no +Inf bucket');
    assert.match(s.text, /^# TYPE corecast_delivery_latency_seconds histogram$/m);
    assert.ok(series(s, 'corecast_delivery_latency_seconds_sum').length > 0, 'no corecast_delivery_latency_seconds_sum');
    // The per-shard gauge agrees with Soketi's total.
    const total = metric(s, 'soketi_connected', APP_LABELS(server.port));
    assert.equal(metricSum(s, 'corecast_connections'), total, 'corecast_connections over shards differs from soketi_connected');
  });
});

describe('SOKETI_METRICS_PROMETHEUS_PREFIX', { timeout: 20_000 }, () => {
  let server;
  const resources = cleanup();

  before(async () => {
    server = await startWithMetrics({ shards: 2, env: { SOKETI_METRICS_PROMETHEUS_PREFIX: 'myprefix_' } });
  });

  after(async () => {
    await resources.closeAll();
    await server?.stop();
  });

  test('prefix_renames_the_soketi_series', { timeout: 10_000 }, async () => {
    const c = resources.add(await connected(pusherClient(server.port)));
    const s = await waitFor(
      async () => {
        const x = await scrape(server.metricsPort);
        return metric(x, 'myprefix_connected', APP_LABELS(server.port)) === 1 ? x : null;
      },
      5_000,
      'myprefix_connected{app_id="app-id"} to be 1',
    ).catch(async (err) => {
      const x = await scrape(server.metricsPort);
      throw new Error(`${err.message}; names: ${[...new Set(x.map((m) => m.name))].join(', ')}`);
    });
    assert.ok(metric(s, 'myprefix_new_connections_total', APP_LABELS(server.port)) >= 1);
    const soketi = [...new Set(s.filter((m) => m.name.startsWith('soketi_')).map((m) => m.name))];
    assert.deepEqual(soketi, [], `soketi_ series remain with a custom prefix: ${soketi.join(', ')}`);
    assert.match(s.text, /^# TYPE myprefix_connected gauge$/m);
  });
});
