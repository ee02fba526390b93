/**
 * The tcpecho load generator: {@linkcode runBench} drives any echo server over
 * many connections and checks every echoed byte; {@linkcode formatReport}
 * renders its result; {@linkcode spawnServer} starts `tcpecho server` as a
 * child to measure. The pure pieces ({@linkcode LatencyHistogram},
 * {@linkcode Payload}) are exported for tests.
 *
 * @module
 */

import {
  checkConnections,
  checkIntervals,
  checkMs,
  driveHere,
  driveSettings,
} from "./_bench_driver.ts";
import { LocalShard } from "./_bench_shard.ts";
import { Payload } from "./_payload.ts";
import { withDefaults } from "./io.ts";
import {
  BENCH_DEFAULTS,
  type BenchOptions,
  type BenchResult,
} from "./_bench_types.ts";

// The public names main.ts and the tests take from here.
// Its options, defaults, progress, intervals and result.
export * from "./_bench_types.ts";
export {
  type ErrorGroup,
  formatInterval,
  formatProgress,
  formatReport,
  type ReportDetails,
} from "./_bench_report.ts";
export { LatencyHistogram } from "./_histogram.ts";
export { Payload, type PayloadOptions } from "./_payload.ts";
export {
  type SpawnedServer,
  spawnServer,
  type SpawnServerOptions,
} from "./spawn.ts";

/**
 * Runs a load test against an echo server, in the caller's isolate, and
 * returns what it measured.
 *
 * Opens `connections` connections (the first alone, so a dead target fails
 * fast), loads them for `warmupMs`, measures for `durationMs`, then stops
 * sending, half-closes every connection, reads until the server closes (at
 * most `drainTimeoutMs`, then closes it: an error) and awaits every task.
 * Every echoed byte is checked; a mismatch, reset, early close or failed
 * connect counts in `errors` and ends that connection only.
 *
 * @throws {Error} `cannot connect to HOST:PORT` (from `connect()`) when the
 *   first connection fails.
 * @throws {RangeError} for an invalid option.
 * @example
 * ```ts ignore
 * const result = await runBench({ port: 8080, durationMs: 3000 });
 * console.log(formatReport(result));
 * ```
 */
export async function runBench(
  options: BenchOptions = {},
): Promise<BenchResult> {
  return await driveHere(
    checkBenchOptions(options),
    (shard, events) => new LocalShard(shard, events),
  );
}

/** The options of a run, checked and defaulted, for the driver and its shards. */
export function checkBenchOptions(options: BenchOptions) {
  const {
    pattern,
    lines,
    drainTimeoutMs,
    rate,
  } = withDefaults(options, BENCH_DEFAULTS);
  const settings = driveSettings(options, pattern, rate ?? 0);
  const { connections, sizeBytes } = settings;
  checkConnections(connections);
  checkMs("durationMs", settings.durationMs);
  checkMs("warmupMs", settings.warmupMs);
  checkMs("drainTimeoutMs", drainTimeoutMs);
  if (pattern !== "pingpong" && pattern !== "stream" && pattern !== "connect") {
    throw new RangeError(
      `invalid pattern "${pattern}": expected pingpong, stream or connect`,
    );
  }
  if (rate !== undefined && !(rate > 0 && Number.isFinite(rate))) {
    throw new RangeError(`invalid rate ${rate}: expected a number above 0`);
  }
  if (rate !== undefined && pattern === "stream") {
    throw new RangeError(
      "invalid rate: the stream pattern has no messages to pace",
    );
  }
  checkIntervals(settings.intervals);
  new Payload(sizeBytes); // throws RangeError for a bad size
  return {
    ...settings,
    shard: {
      // Where to connect, as plain data for a worker: all but the signal.
      target: {
        hostname: options.hostname,
        port: options.port,
        path: options.path,
        tls: options.tls,
        caCerts: options.caCerts,
        insecure: options.insecure,
        connectTimeoutMs: options.connectTimeoutMs,
        sendProxy: options.sendProxy,
      },
      pattern,
      sizeBytes,
      lines,
      connections,
      rate: rate ?? 0,
      scheduleEpochMs: performance.timeOrigin + performance.now(),
      drainTimeoutMs,
    },
  };
}
