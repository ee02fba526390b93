/**
 * The tcpecho load generator: {@linkcode runBench} drives any echo server over
 * many connections and checks every echoed byte; {@linkcode formatReport}
 * renders its result; {@linkcode spawnServer} starts `tcpecho server` as a
 * child to measure. The pure pieces ({@linkcode LatencyHistogram},
 * {@linkcode Payload}) are exported for tests.
 *
 * @module
 */

import { drive } from "./_bench_driver.ts";
import { LocalShard } from "./_bench_shard.ts";
import { Payload } from "./_payload.ts";
import type { LatencyHistogram } from "./_histogram.ts";
import type { ConnectOptions } from "./client.ts";

// The public names main.ts and the tests take from here.
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

/** Options for {@linkcode runBench}; the target is a {@linkcode ConnectOptions}. */
export interface BenchOptions extends ConnectOptions {
  /** Concurrent connections (connect pattern: parallel slots). @default {50} */
  connections?: number;
  /** Message size in bytes. @default {64} */
  sizeBytes?: number;
  /** Length of the measuring window. @default {10000} */
  durationMs?: number;
  /** Load before the window, not counted. @default {1000} */
  warmupMs?: number;
  /**
   * `pingpong`: one message in flight per connection, round trips timed.
   * `stream`: each connection writes and reads continuously.
   * `connect`: each slot connects, sends one message, reads its echo,
   * half-closes, sees the server close, and again; the whole cycle is timed.
   * @default {"pingpong"}
   */
  pattern?: BenchPattern;
  /**
   * Open loop (pingpong, connect): this many messages per second in total,
   * spread evenly over the connections; latency counts from each message's
   * intended send time (coordinated omission corrected, as wrk2 does), and
   * {@linkcode BenchResult.latency_uncorrected_us} from its actual send.
   * Off (closed loop) when undefined.
   */
  rate?: number;
  /**
   * Send lines, for a line-mode server: every message is `sizeBytes - 1`
   * printable bytes (space to `~`) and a `\n`, still different per message
   * and connection; `stream` sends such lines back to back.
   * @default {false}
   */
  lines?: boolean;
  /** Stop early (Ctrl+C); {@linkcode runBench} still returns what it measured. */
  signal?: AbortSignal;
  /**
   * After the window, how long connections get to finish their message and
   * see the server close after our half-close; a connection still open then
   * is closed and counted as an error (unless `signal` stopped the run).
   * @default {2000}
   */
  drainTimeoutMs?: number;
  /** Called about every 250 ms during the warm-up and the window. Must not throw. */
  onProgress?: (progress: BenchProgress) => void;
  /** Called once for each error counted in {@linkcode BenchResult.errors}. Must not throw. */
  onError?: (error: Error) => void;
  /**
   * Called at the end of each interval of the window (and for the last,
   * shorter one), per listener: the `--interval` lines and the `--hlog`
   * file. The intervals of one listener add up to the whole window exactly.
   */
  intervals?: readonly BenchIntervalListener[];
}

/** Load patterns of {@linkcode BenchOptions.pattern}. */
export type BenchPattern = "pingpong" | "stream" | "connect";

/** Defaults of {@linkcode BenchOptions}; also printed by `--help`. */
export const BENCH_DEFAULTS = {
  connections: 50,
  sizeBytes: 64,
  durationMs: 10_000,
  warmupMs: 1_000,
  pattern: "pingpong",
  lines: false,
  drainTimeoutMs: 2_000,
} as const;

/** A snapshot of a running warm-up or window, for a live progress line. */
export interface BenchProgress {
  /** Warm-up (nothing counted yet) or the measuring window. */
  phase: "warmup" | "measure";
  /** Time since the phase began. */
  elapsedMs: number;
  /** Planned length of the phase. */
  durationMs: number;
  /** Messages completed in the window so far (stream: bytes / size). */
  messages: number;
  /** Echoed bytes received in the window so far. */
  bytes: number;
  /** Errors so far, warm-up included. */
  errors: number;
}

/** Who wants an interval, and how long one is. */
export interface BenchIntervalListener {
  /** The interval's length in ms. */
  everyMs: number;
  /** Called at each interval's end. Must not throw. */
  onInterval(interval: BenchInterval): void;
}

/** What one interval of the window measured. */
export interface BenchInterval {
  /** Its start, ms after the window opened. */
  startMs: number;
  /** Its end, ms after the window opened. */
  endMs: number;
  /** Its start, ms since the epoch. */
  startEpochMs: number;
  /** Its end, ms since the epoch. */
  endEpochMs: number;
  /** Messages completed in it (stream: bytes / size). */
  messages: number;
  /** Echoed bytes received in it. */
  bytes: number;
  /** Errors so far in the run. */
  errors: number;
  /** Its latencies (open loop: corrected); empty for stream. Valid during the call only. */
  histogram: LatencyHistogram;
  /** Open loop: its latencies from the actual send. Valid during the call only. */
  uncorrected?: LatencyHistogram;
}

/** Latency percentiles in microseconds. */
export interface LatencySummary {
  /** Median. */
  p50: number;
  /** 75th percentile. */
  p75: number;
  /** 90th percentile. */
  p90: number;
  /** 95th percentile. */
  p95: number;
  /** 99th percentile. */
  p99: number;
  /** 99.9th percentile. */
  p999: number;
  /** 99.99th percentile. */
  p9999: number;
  /** Slowest. */
  max: number;
}

/** How evenly connections were served: messages (stream: MiB) each got through in the window. */
export interface PerConnection {
  /** The least served connection's count. */
  min: number;
  /** The median count. */
  median: number;
  /** The most served connection's count. */
  max: number;
  /** Jain's fairness index: 1 = every connection alike. */
  jain: number;
}

/**
 * What {@linkcode runBench} measured: exactly the object of the SPEC's
 * `--json` output, keys in its order, so `JSON.stringify(result)` is it.
 */
export interface BenchResult {
  /** The load pattern. */
  pattern: BenchPattern;
  /** Connections asked for (those that failed to connect count as errors). */
  connections: number;
  /** Message size in bytes. */
  size: number;
  /** Length of the measuring window actually run, in seconds. */
  duration_s: number;
  /** Messages echoed in full within the window (stream: `bytes / size`, rounded down; connect: cycles). */
  messages: number;
  /** `messages / duration_s`. */
  messages_per_s: number;
  /** Echoed bytes received within the window. */
  bytes: number;
  /** `bytes / duration_s` in MiB (2^20 bytes). */
  mib_per_s: number;
  /** Round trip (connect: the cycle) latency; `null` for `stream` or when none completed. */
  latency_us: LatencySummary | null;
  /** Failed connects, resets, early closes, echo mismatches (warm-up included). */
  errors: number;
  /** The open loop's asked rate in messages/s, or `null`. */
  rate: number | null;
  /** Open loop: latency from each message's actual send; else `null`. */
  latency_uncorrected_us: LatencySummary | null;
  /** Connect pattern: connections completed per second; else `null`. */
  connects_per_s: number | null;
  /** UDP: datagrams not answered in time; 0 over TCP. */
  lost: number;
  /** A tcpecho addition: per-connection counts, as the C load generator reports them. */
  per_conn: PerConnection | null;
}

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
  const settings = checkBenchOptions(options);
  const { result } = await drive(settings, (events) => [
    new LocalShard({
      ...settings.shard,
      first: 0,
      count: settings.connections,
    }, events),
  ]);
  return result;
}

/** The options of a run, checked and defaulted, for the driver and its shards. */
export function checkBenchOptions(options: BenchOptions) {
  const {
    connections = BENCH_DEFAULTS.connections,
    sizeBytes = BENCH_DEFAULTS.sizeBytes,
    durationMs = BENCH_DEFAULTS.durationMs,
    warmupMs = BENCH_DEFAULTS.warmupMs,
    pattern = BENCH_DEFAULTS.pattern,
    lines = BENCH_DEFAULTS.lines,
    drainTimeoutMs = BENCH_DEFAULTS.drainTimeoutMs,
    rate,
    signal,
    onProgress,
    onError,
    intervals,
    hostname,
    port,
    path,
    tls,
    caCerts,
    insecure,
    connectTimeoutMs,
    sendProxy,
  } = options;
  if (!Number.isSafeInteger(connections) || connections < 1) {
    throw new RangeError(
      `invalid connections ${connections}: expected a positive integer`,
    );
  }
  checkMs("durationMs", durationMs);
  checkMs("warmupMs", warmupMs);
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
  for (const { everyMs } of intervals ?? []) {
    if (!(everyMs >= 1 && Number.isFinite(everyMs))) {
      throw new RangeError(
        `invalid interval ${everyMs}: expected 1 ms or more`,
      );
    }
  }
  new Payload(sizeBytes); // throws RangeError for a bad size
  return {
    pattern,
    connections,
    sizeBytes,
    durationMs,
    warmupMs,
    rate: rate ?? 0,
    signal,
    onProgress,
    onError,
    intervals,
    shard: {
      target: {
        hostname,
        port,
        path,
        tls,
        caCerts,
        insecure,
        connectTimeoutMs,
        sendProxy,
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

function checkMs(name: string, value: number): void {
  if (!(value >= 0 && Number.isFinite(value))) {
    throw new RangeError(`invalid ${name} ${value}: expected 0 or more`);
  }
}
