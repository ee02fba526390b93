import assert from "node:assert/strict";
import {
  BENCH_DEFAULTS,
  type BenchOptions,
  type BenchProgress,
  type BenchResult,
  formatProgress,
  formatReport,
  LatencyHistogram,
  Payload,
  runBench,
  spawnServer,
} from "./bench.ts";
import { drive } from "./_bench_driver.ts";
import { ErrorGroups } from "./_bench_report.ts";
import { split, WorkerShard } from "./_bench_threads.ts";
import { EchoError } from "./_bench_connection.ts";
import { checkBenchOptions } from "./bench.ts";
import { serve } from "./server.ts";
import { CA, TLS } from "./testing.ts";
import {
  echoServer,
  flipBitAt,
  LATENCY_KEYS,
  RESULT_KEYS,
  stubServer,
} from "./testing_cli.ts";

// ---- helpers --------------------------------------------------------------------

const SHORT = { durationMs: 300, warmupMs: 100 } as const;
/** Shorter still, with no warm-up: for runs whose end is the point. */
const BRIEF = { durationMs: 100, warmupMs: 0 } as const;

function assertSane(result: BenchResult): void {
  assert.equal(result.errors, 0);
  assert.ok(result.messages > 0, "no message got through");
  assert.ok(
    result.duration_s >= 0.25 && result.duration_s < 2,
    `duration ${result.duration_s}`,
  );
  assert.ok(result.messages_per_s > 0);
  assert.ok(result.mib_per_s > 0);
}

/** {@linkcode runBench} that also keeps each error it reports, in order. */
async function benchErrors(
  options: BenchOptions,
): Promise<{ result: BenchResult; errors: Error[] }> {
  const errors: Error[] = [];
  const result = await runBench({
    ...options,
    onError: (err) => errors.push(err),
  });
  return { result, errors };
}

// ---- LatencyHistogram -----------------------------------------------------------

/** Nearest-rank percentile of sorted values. */
function exactPercentile(sorted: number[], p: number): number {
  return sorted[Math.max(1, Math.ceil((p / 100) * sorted.length)) - 1];
}

Deno.test("LatencyHistogram.percentile() is within 1% of the exact percentile", () => {
  let seed = 12345;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (const n of [1, 7, 1000, 100_000]) {
    const histogram = new LatencyHistogram();
    const samples: number[] = [];
    for (let i = 0; i < n; i++) {
      // log-uniform from 0.05 µs to 10 s, plus a cluster: exercises every range
      const us = i % 5 === 0 ? 250 + random() : 0.05 * 10 ** (random() * 8.3);
      samples.push(us);
      histogram.record(us);
    }
    samples.sort((a, b) => a - b);
    assert.equal(histogram.count, n);
    assert.ok(
      Math.abs(histogram.max - samples[n - 1]) <= 0.0005,
      "max is exact (to the ns)",
    );
    for (const p of [0, 1, 10, 50, 90, 99, 99.9, 100]) {
      const exact = exactPercentile(samples, p);
      const got = histogram.percentile(p);
      // half a bucket (≤ 1/128) plus rounding to whole nanoseconds
      assert.ok(
        Math.abs(got - exact) <= exact * 0.008 + 0.001,
        `n=${n} p${p}: ${got} vs exact ${exact}`,
      );
    }
  }
});

Deno.test("LatencyHistogram is 0 when empty and rejects a bad percentile", () => {
  const histogram = new LatencyHistogram();
  assert.equal(histogram.count, 0);
  assert.equal(histogram.max, 0);
  assert.equal(histogram.percentile(99), 0);
  assert.throws(() => histogram.percentile(101), RangeError);
  assert.throws(() => histogram.percentile(NaN), RangeError);
  histogram.record(-3); // a clock step back counts as 0
  histogram.record(3_600_000_000 * 24); // a day: past the top bucket, max still exact
  assert.equal(histogram.percentile(0), 0);
  assert.equal(histogram.max, 86_400_000_000);
  assert.equal(histogram.percentile(100), 86_400_000_000);
});

// ---- Payload ----------------------------------------------------------------------

Deno.test("Payload.verifyMessage() accepts each message and finds a flipped byte", () => {
  for (const size of [1, 64, 1000, 70_000, 3_000_000]) {
    const payload = new Payload(size);
    const message = payload.message(3, 17).slice();
    assert.equal(message.length, size);
    assert.equal(payload.verifyMessage(3, 17, 0, message), -1);
    // checked piece by piece, as reads deliver it
    const cut = Math.floor(size / 3);
    assert.equal(payload.verifyMessage(3, 17, cut, message.subarray(cut)), -1);
    const at = size - 1 - Math.floor(size / 7);
    message[at] ^= 0x20;
    assert.equal(payload.verifyMessage(3, 17, 0, message), at, `size ${size}`);
    assert.equal(
      payload.verifyMessage(3, 17, 0, message, at),
      -1,
      "only `length` bytes",
    );
  }
});

Deno.test("Payload.verifyMessage() catches a duplicated, reordered or foreign message", () => {
  const payload = new Payload(64);
  const m0 = payload.message(0, 0);
  const m1 = payload.message(0, 1);
  assert.notDeepEqual(m0, m1);
  // duplicated: message 0 comes back again where message 1 is due
  assert.notEqual(payload.verifyMessage(0, 1, 0, m0), -1);
  // reordered: message 1 first
  assert.notEqual(payload.verifyMessage(0, 0, 0, m1), -1);
  // stale, several messages late
  assert.notEqual(payload.verifyMessage(0, 100, 0, payload.message(0, 90)), -1);
  // another connection's message
  assert.notEqual(payload.verifyMessage(1, 0, 0, m0), -1);
  // a duplicated tail shifts everything after it
  const shifted = new Uint8Array([...m0.subarray(60), ...m1.subarray(0, 60)]);
  assert.notEqual(payload.verifyMessage(0, 1, 0, shifted), -1);
  // messages are cached views: no allocation after the first use
  assert.equal(payload.message(0, 1), m1);
});

Deno.test("Payload.verifyStream() checks bytes by their position in the stream", () => {
  const payload = new Payload(64);
  const chunk = payload.stream(2, 1_000_000, 65_536).slice();
  assert.equal(payload.verifyStream(2, 1_000_000, chunk), -1);
  assert.equal(payload.verifyStream(2, 1_000_100, chunk.subarray(100)), -1);
  assert.notEqual(
    payload.verifyStream(2, 1_000_001, chunk),
    -1,
    "a dropped byte",
  );
  assert.notEqual(
    payload.verifyStream(3, 1_000_000, chunk),
    -1,
    "another connection",
  );
  chunk[40_000] ^= 1;
  assert.equal(payload.verifyStream(2, 1_000_000, chunk), 40_000);
  assert.throws(() => payload.stream(0, 0, 65_537), RangeError);
  assert.throws(() => new Payload(0), RangeError);
});

Deno.test("Payload with lines: each message is printable bytes and its only \\n", () => {
  const isPrintable = (byte: number) => byte >= 0x20 && byte <= 0x7e;
  for (const size of [1, 2, 64, 4096, 70_000]) {
    const payload = new Payload(size, { lines: true });
    for (const [conn, k] of [[0, 0], [0, 1], [5, 4092], [7, 100_000]]) {
      const message = payload.message(conn, k);
      assert.equal(message.length, size);
      assert.equal(message[size - 1], 10, `size ${size}: ends in \\n`);
      assert.ok(
        message.subarray(0, size - 1).every(isPrintable),
        `size ${size}`,
      );
      assert.equal(payload.verifyMessage(conn, k, 0, message), -1);
    }
    if (size === 1) continue; // "\n" only: nothing to vary
    const m0 = payload.message(0, 0);
    assert.notEqual(payload.verifyMessage(0, 1, 0, m0), -1, "duplicated");
    assert.notEqual(payload.verifyMessage(1, 0, 0, m0), -1, "foreign");
    assert.notEqual(
      payload.verifyMessage(0, 0, 0, payload.message(0, 1)),
      -1,
      "reordered",
    );
  }
  // a stream is whole lines back to back, from the first byte on
  const payload = new Payload(100, { lines: true });
  const chunk = payload.stream(3, 1_000_000, 65_536);
  chunk.forEach((byte, i) =>
    assert.equal(byte === 10, (1_000_000 + i) % 100 === 99, `byte ${i}`)
  );
  assert.ok(chunk.every((byte) => byte === 10 || isPrintable(byte)));
  assert.equal(payload.verifyStream(3, 1_000_000, chunk), -1);
  assert.notEqual(payload.verifyStream(4, 1_000_000, chunk), -1);
  assert.notEqual(payload.verifyStream(3, 1_000_100, chunk), -1, "a line late");
});

// ---- runBench ---------------------------------------------------------------------

Deno.test("runBench() pingpong measures round trips with no error", async () => {
  await using server = echoServer();
  const result = await runBench({
    port: server.port,
    connections: 8,
    ...SHORT,
  });
  assertSane(result);
  assert.equal(result.pattern, "pingpong");
  assert.equal(result.connections, 8);
  assert.equal(result.size, 64);
  assert.equal(result.bytes, result.messages * 64);
  const latency = result.latency_us!;
  assert.ok(latency.p50 > 0);
  assert.ok(
    latency.p50 <= latency.p90 && latency.p90 <= latency.p99 &&
      latency.p99 <= latency.max,
  );
});

Deno.test("runBench() pingpong frames by byte count when echoes come in pieces", async () => {
  await using server = echoServer({ pieceBytes: 7 });
  const result = await runBench({
    port: server.port,
    connections: 3,
    sizeBytes: 100,
    ...SHORT,
  });
  assertSane(result);
});

Deno.test("runBench() stream counts echoed bytes with no error", async () => {
  await using server = echoServer();
  const result = await runBench({
    port: server.port,
    connections: 4,
    pattern: "stream",
    ...SHORT,
  });
  assertSane(result);
  assert.equal(result.latency_us, null);
  assert.equal(result.messages, Math.floor(result.bytes / 64));
});

Deno.test("runBench() with lines drives a line-mode serve(), both patterns", async () => {
  // A line server holds a message without its \n: the run would see no echo.
  await using server = serve({ port: 0, mode: "line", maxLineBytes: 99 });
  for (const pattern of ["pingpong", "stream"] as const) {
    const result = await runBench({
      port: server.addr.port,
      connections: 4,
      sizeBytes: 100,
      lines: true,
      pattern,
      ...SHORT,
    });
    assertSane(result);
    assert.equal(result.pattern, pattern);
  }
});

Deno.test("runBench() works over a Unix socket", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/echo.sock`;
    await using _server = echoServer({ path });
    const result = await runBench({ path, connections: 2, ...SHORT });
    assertSane(result);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runBench() works over TLS, both patterns", async () => {
  await using server = echoServer({ tls: { ...TLS } });
  for (const pattern of ["pingpong", "stream"] as const) {
    const result = await runBench({
      hostname: "localhost",
      port: server.port,
      tls: true,
      caCerts: [CA],
      connections: 2,
      pattern,
      ...SHORT,
    });
    assertSane(result);
  }
});

Deno.test("runBench() counts a corrupted echo as an error and ends that connection", async () => {
  for (const pattern of ["pingpong", "stream"] as const) {
    // connection 1 gets one byte flipped, 1000 bytes in; the others are fine
    await using server = echoServer({ mangle: flipBitAt(1000, 1) });
    const { result, errors } = await benchErrors({
      port: server.port,
      connections: 3,
      pattern,
      ...SHORT,
    });
    assert.equal(result.errors, 1, pattern);
    assert.equal(errors.length, 1);
    assert.match(
      errors[0].message,
      /^connection \d: echo mismatch at (stream )?byte/,
    );
    assert.ok(result.messages > 0, "the other connections went on");
  }
});

Deno.test("runBench() counts a server closing early as an error", async () => {
  await using server = echoServer({
    mangle: (chunk, state) => state.offset > 640 ? "close" : chunk,
  });
  const { result, errors } = await benchErrors({
    port: server.port,
    connections: 2,
    ...SHORT,
  });
  assert.equal(result.errors, 2);
  assert.match(errors[0].message, /server closed the connection/);
  assert.ok(
    result.duration_s < 0.25,
    "the window ends once every connection is gone",
  );
});

Deno.test("runBench() counts an extra (duplicated) echo as an error", async () => {
  await using server = echoServer({
    mangle: (chunk, state) =>
      state.conn === 0 && state.offset === 640
        ? new Uint8Array([...chunk, ...chunk])
        : chunk,
  });
  const { result, errors } = await benchErrors({
    port: server.port,
    connections: 2,
    ...SHORT,
  });
  assert.equal(result.errors, 1);
  assert.match(
    errors[0].message,
    /^connection 0: (more bytes than sent, after message 10|echo mismatch at byte 0 of message 11)$/,
  );
});

Deno.test("runBench() counts a server that never closes after the half-close", async () => {
  await using server = echoServer({ hold: true });
  const { result, errors } = await benchErrors({
    port: server.port,
    connections: 2,
    ...BRIEF,
    drainTimeoutMs: 50,
  });
  assert.equal(result.errors, 2);
  assert.ok(result.messages > 0);
  assert.match(
    errors[0].message,
    /server did not close within 50 ms of the half-close/,
  );
});

Deno.test("runBench() stops early on abort and returns what it measured", async () => {
  await using server = echoServer();
  const controller = new AbortController();
  const progress: BenchProgress[] = [];
  const result = await runBench({
    port: server.port,
    connections: 4,
    durationMs: 60_000,
    warmupMs: 50,
    signal: controller.signal,
    onProgress: (p) => {
      progress.push(p);
      controller.abort();
    },
  });
  assert.equal(progress.length, 1);
  assert.equal(progress[0].durationMs, 60_000);
  assert.ok(progress[0].messages > 0);
  assert.match(
    formatProgress(progress[0]),
    /^\d+\.\d\/60\.0 s {2}[\d,]+ msg\/s {2}[\d.]+ MiB\/s {2}errors 0$/,
  );
  assert.equal(result.errors, 0);
  assert.ok(
    result.duration_s > 0.2 && result.duration_s < 5,
    `duration ${result.duration_s}`,
  );
  assert.ok(result.messages >= progress[0].messages);
});

Deno.test("runBench() returns an empty result when aborted before it starts", async () => {
  await using server = echoServer();
  const result = await runBench({
    port: server.port,
    signal: AbortSignal.abort(),
  });
  assert.equal(result.duration_s, 0);
  assert.equal(result.messages, 0);
  assert.equal(result.messages_per_s, 0);
  assert.equal(result.latency_us, null);
});

Deno.test("runBench() throws when it cannot connect", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close(); // nobody listens there now
  await assert.rejects(
    runBench({ port, ...SHORT }),
    (err: Error) =>
      err.message === `cannot connect to 127.0.0.1:${port}` &&
      err.cause instanceof Error,
  );
  await assert.rejects(runBench({ port, connections: 0 }), RangeError);
  await assert.rejects(
    runBench({ port, pattern: "burst" as "stream" }),
    RangeError,
  );
});

Deno.test("runBench() result has the SPEC's JSON keys in order, then per_conn", async () => {
  await using server = echoServer();
  const result = await runBench({
    port: server.port,
    connections: 1,
    ...BRIEF,
  });
  const json = JSON.parse(JSON.stringify(result));
  assert.deepEqual(Object.keys(json), RESULT_KEYS);
  assert.deepEqual(Object.keys(json.latency_us), LATENCY_KEYS);
  assert.equal(json.rate, null);
  assert.equal(json.latency_uncorrected_us, null);
  assert.equal(json.connects_per_s, null);
  assert.equal(json.lost, 0);
  assert.deepEqual(Object.keys(json.per_conn), [
    "min",
    "median",
    "max",
    "jain",
  ]);
  assert.equal(json.per_conn.min, json.messages, "one connection did them all");
});

const SAMPLE: BenchResult = {
  pattern: "pingpong",
  connections: BENCH_DEFAULTS.connections,
  size: 64,
  duration_s: 10,
  messages: 1_234_567,
  messages_per_s: 123_456.7,
  bytes: 79_012_288,
  mib_per_s: 7.54,
  latency_us: {
    p50: 284,
    p75: 300,
    p90: 350.1,
    p95: 400,
    p99: 598,
    p999: 1200,
    p9999: 2500,
    max: 1_005_578,
  },
  errors: 0,
  rate: null,
  latency_uncorrected_us: null,
  connects_per_s: null,
  lost: 0,
  per_conn: { min: 24_000, median: 24_691, max: 25_000, jain: 0.999 },
};

Deno.test("formatReport() shows rates, scaled latency, fairness and errors", () => {
  assert.equal(
    formatReport(SAMPLE, { target: "127.0.0.1:8080", warmupMs: 1000 }),
    [
      "bench 127.0.0.1:8080: pingpong, 50 connections, 64-byte messages, 10.00 s after a 1 s warm-up",
      "messages   1,234,567 (123,456.7 msg/s)",
      "bytes      79,012,288 echoed bytes received (7.54 MiB/s)",
      "latency    round trip",
      "  p50 284.00 µs, p75 300.00 µs, p90 350.10 µs, p95 400.00 µs",
      "  p99 598.00 µs, p99.9 1.20 ms, p99.99 2.50 ms, max 1.01 s",
      "per conn   min 24,000, median 24,691, max 25,000 messages (Jain 0.999)",
      "errors     0",
    ].join("\n"),
  );
  assert.doesNotMatch(formatReport({ ...SAMPLE, latency_us: null }), /latency/);
});

// ---- load tester v2 ---------------------------------------------------------------

/**
 * An echo server that, once it has echoed `stallAfter` bytes in all, holds
 * every echo for `stallMs` once (the stall), then echoes on.
 */
function stallingServer(stallAfter: number, stallMs: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let echoed = 0;
  let stall: Promise<void> | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const tasks: Promise<void>[] = [];
  const handle = async (conn: Deno.Conn) => {
    using _conn = conn;
    const buffer = new Uint8Array(65536);
    try {
      for (
        let n = await conn.read(buffer);
        n !== null;
        n = await conn.read(buffer)
      ) {
        echoed += n;
        if (echoed >= stallAfter && stall === undefined) {
          stall = new Promise((resolve) =>
            timer = setTimeout(resolve, stallMs)
          );
        }
        if (stall) await stall;
        let done = 0;
        while (done < n) done += await conn.write(buffer.subarray(done, n));
      }
      await conn.closeWrite();
    } catch { /* reset or closed */ }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) tasks.push(handle(conn));
    } catch { /* closed */ }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting;
      await Promise.all(tasks);
      clearTimeout(timer);
    },
  };
}

Deno.test("runBench() with rate: a 500 ms stall shows in the corrected p99, not in the uncorrected", async () => {
  await using server = stallingServer(64 * 200, 500);
  const result = await runBench({
    port: server.port,
    connections: 4,
    rate: 2000,
    durationMs: 1500,
    warmupMs: 0,
  });
  assert.equal(result.errors, 0);
  assert.equal(result.rate, 2000);
  const corrected = result.latency_us!;
  const uncorrected = result.latency_uncorrected_us!;
  // ~1000 of ~3000 messages were due during the stall: their wait counts.
  assert.ok(corrected.p99 > 300_000, `corrected p99 ${corrected.p99} µs`);
  // only the 4 in flight waited once sent: under 1%.
  assert.ok(uncorrected.p99 < 100_000, `uncorrected p99 ${uncorrected.p99} µs`);
  assert.ok(uncorrected.max > 400_000, `uncorrected max ${uncorrected.max} µs`);
  assert.ok(
    result.messages > 2000,
    `${result.messages} messages: it caught up`,
  );
});

Deno.test("runBench() with rate paces the messages to the asked rate", async () => {
  await using server = echoServer();
  const result = await runBench({
    port: server.port,
    connections: 5,
    rate: 1000,
    durationMs: 1000,
    warmupMs: 100,
  });
  assert.equal(result.errors, 0);
  assert.ok(
    Math.abs(result.messages_per_s - 1000) < 60,
    `${result.messages_per_s} msg/s`,
  );
  assert.ok(result.latency_uncorrected_us!.p50 <= result.latency_us!.p50);
  await assert.rejects(runBench({ port: server.port, rate: 0 }), RangeError);
  await assert.rejects(
    runBench({ port: server.port, rate: 10, pattern: "stream" }),
    RangeError,
  );
});

Deno.test("runBench() connect pattern: one message per connection, counted as connects", async () => {
  await using server = serve({ port: 0 });
  const result = await runBench({
    port: server.addr.port,
    connections: 3,
    pattern: "connect",
    ...SHORT,
  });
  assertSane(result);
  assert.equal(result.pattern, "connect");
  assert.equal(result.connects_per_s, result.messages_per_s);
  assert.equal(result.bytes, result.messages * 64);
  const served = server.stats.served;
  // every counted cycle was a connection of its own (plus warm-up and the last ones)
  assert.ok(
    served >= result.messages + 3,
    `${served} served, ${result.messages} counted`,
  );
  assert.ok(served <= result.messages * 3 + 10, `${served} served`);
  assert.equal(result.latency_us!.max >= result.latency_us!.p50, true);
  const perConn = result.per_conn!;
  assert.equal(
    Math.round(perConn.median * 3) >= 1,
    true,
  );
});

Deno.test("runBench() completes 16 MiB messages (reading while it writes)", async () => {
  await using server = serve({ port: 0 });
  const result = await runBench({
    port: server.addr.port,
    connections: 1,
    sizeBytes: 16 << 20,
    durationMs: 300,
    warmupMs: 0,
    drainTimeoutMs: 20_000,
  });
  assert.equal(result.errors, 0);
  assert.ok(result.messages >= 1, "a 16 MiB round trip completed");
  assert.equal(result.bytes, result.messages * (16 << 20));
});

Deno.test("the text histogram's counts add up to the messages", async () => {
  await using server = echoServer();
  const histogram = new LatencyHistogram();
  const seen: number[] = [];
  const result = await runBench({
    port: server.port,
    connections: 4,
    ...SHORT,
    intervals: [{
      everyMs: 100,
      onInterval: (i) => {
        histogram.add(i.histogram);
        seen.push(i.messages);
      },
    }],
  });
  assert.equal(
    histogram.count,
    result.messages,
    "the intervals add up to the window",
  );
  assert.equal(seen.reduce((a, b) => a + b, 0), result.messages);
  const report = formatReport(result, { histogram });
  const rows = [
    ...report.matchAll(/^ +[\d.]+ (?:µs|ms|s) \[ *([\d,]+)\] \|■*$/gm),
  ];
  assert.equal(rows.length, 10, report);
  const total = rows.reduce(
    (sum, [, n]) => sum + Number(n.replaceAll(",", "")),
    0,
  );
  assert.equal(total, result.messages);
  assert.match(report, /^ {2}mean [\d.]+ µs, stdev [\d.]+ µs$/m);
});

Deno.test("drive() over two WorkerShards: one result, the sum of both workers", async () => {
  await using server = serve({ port: 0 });
  const settings = checkBenchOptions({
    port: server.addr.port,
    connections: 5,
    ...SHORT,
  });
  const workers: WorkerShard[] = [];
  const perWorker: number[] = [];
  try {
    const { result, histogram } = await drive(
      settings,
      (events) =>
        split(5, 2).map((share, i) => {
          const worker = new WorkerShard(
            i,
            { ...settings.shard, ...share },
            events,
          );
          workers.push(worker);
          // what each worker counts, seen through its takes
          const take = worker.endWindow.bind(worker);
          worker.endWindow = async () => {
            const delta = await take();
            perWorker[i] = (perWorker[i] ?? 0) + delta.messages;
            return delta;
          };
          return worker;
        }),
    );
    assertSane(result);
    assert.deepEqual(split(5, 2), [{ first: 0, count: 3 }, {
      first: 3,
      count: 2,
    }]);
    assert.equal(workers.length, 2);
    assert.equal(perWorker.length, 2);
    assert.ok(perWorker.every((n) => n > 0), `${perWorker}`);
    assert.equal(perWorker[0] + perWorker[1], result.messages);
    assert.equal(result.bytes, result.messages * 64);
    assert.equal(histogram.count, result.messages);
    assert.ok(result.per_conn!.min > 0, "every connection of both workers ran");
  } finally {
    for (const worker of workers) await worker[Symbol.asyncDispose]();
  }
});

Deno.test("ErrorGroups groups errors by cause, with hints", () => {
  const describe = (err: Error) => err.message;
  const groups = new ErrorGroups({ lines: false, sizeBytes: 64 });
  const emfile = Object.assign(new Error("Too many open files (os error 24)"), {
    code: "EMFILE",
  });
  for (let i = 0; i < 70; i++) {
    groups.add(
      new Error(`connection ${i} failed`, {
        cause: new Error("cannot connect to 127.0.0.1:8080", { cause: emfile }),
      }),
      describe,
    );
  }
  groups.add(
    new EchoError(
      "connection 3: no echo within 2000 ms after the window",
      "no echo",
    ),
    describe,
  );
  const [first, second] = groups.groups;
  assert.equal(first.count, 70);
  assert.equal(
    first.cause,
    "cannot connect: Too many open files (os error 24)",
  );
  assert.match(first.hint!, /ulimit -n/);
  assert.equal(second.cause, "no echo");
  assert.match(second.hint!, /is the server in line mode\? try --lines/);
  const raw = new ErrorGroups({ lines: false, sizeBytes: 64 });
  raw.add(
    new EchoError(
      "connection 1: server closed the connection after 1000 of 100000 bytes",
      "server closed the connection before echoing everything",
    ),
    describe,
  );
  assert.match(
    raw.groups[0].hint!,
    /^the server hung up mid-message: on purpose \(--close-after\), over a limit, or in line mode \(try --lines\)$/,
  );
  const lines = new ErrorGroups({ lines: true, sizeBytes: 100_000 });
  lines.add(
    new EchoError(
      "x",
      "server closed the connection before echoing everything",
    ),
    describe,
  );
  assert.match(lines.groups[0].hint!, /--max-line 99999/);
  const report = formatReport({ ...SAMPLE, errors: 71 }, {
    errors: groups.groups,
  });
  assert.match(
    report,
    /^errors {5}71\n {6}70 × cannot connect: Too many open files \(os error 24\)\n {11}hint: .*ulimit -n/m,
  );
});

// ---- spawnServer ------------------------------------------------------------------

Deno.test("spawnServer() runs main.ts server --port 0 and stops it with SIGTERM", async () => {
  await using stub = await stubServer();
  const logs: string[] = [];
  const server = await spawnServer(["--mode", "raw"], {
    mainModule: stub.stub,
    onLog: (line) => logs.push(line),
  });
  let code: number;
  try {
    assert.ok(server.port > 0);
    assert.equal(server.address, `127.0.0.1:${server.port}`);
    const result = await runBench({
      port: server.port,
      connections: 2,
      ...SHORT,
    });
    assertSane(result);
  } finally {
    code = await server.stop();
  }
  assert.equal(code, 0);
  assert.equal(await server.stop(), 0, "stop() is idempotent");
  assert.deepEqual(logs, ["args: server --port 0 --mode raw"]);
});

Deno.test("spawnServer() reads the JSON log format and refuses -q", async () => {
  await using stub = await stubServer();
  const mainModule = stub.stub;
  await using server = await spawnServer(["--log-format", "json"], {
    mainModule,
  });
  assert.equal(server.address, `127.0.0.1:${server.port}`);
  await assert.rejects(spawnServer(["-q"], { mainModule }), TypeError);
  await assert.rejects(
    spawnServer(["--log-level", "warn"], { mainModule }),
    TypeError,
  );
});

Deno.test("spawnServer() fails with the child's stderr when it exits first", async () => {
  await using stub = await stubServer(
    `console.error("error: port in use"); Deno.exit(1);`,
  );
  await assert.rejects(
    spawnServer([], { mainModule: stub.stub }),
    (err: Error) => {
      assert.equal(err.message, "cannot start server");
      assert.match(
        (err.cause as Error).message,
        /^exited with code 1: .*error: port in use/,
      );
      return true;
    },
  );
});

Deno.test("spawnServer() starts the real tcpecho server, which runBench() measures cleanly", async () => {
  await using server = await spawnServer();
  assert.ok(server.port > 0);
  for (const pattern of ["pingpong", "stream"] as const) {
    const result = await runBench({
      port: server.port,
      connections: 4,
      pattern,
      ...SHORT,
    });
    assertSane(result);
  }
});
