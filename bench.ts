/**
 * The tcpecho load generator: {@linkcode runBench} drives any echo server over
 * many connections and checks every echoed byte; {@linkcode formatReport}
 * renders its result; {@linkcode spawnServer} starts `tcpecho server` as a
 * child to measure. The pure pieces ({@linkcode LatencyHistogram},
 * {@linkcode Payload}) are exported for tests.
 *
 * @module
 */

import { benchResult, messagesOf } from "./_bench_report.ts";
import {
  EchoError,
  MEASURE,
  pingpong,
  Run,
  STOP,
  stream,
} from "./_bench_connection.ts";
import { Payload } from "./_payload.ts";
import { connect, type ConnectOptions } from "./client.ts";
import { delay } from "./io.ts";

// The public names main.ts and the tests take from here.
export { formatProgress, formatReport } from "./_bench_report.ts";
export { LatencyHistogram } from "./_histogram.ts";
export { Payload, type PayloadOptions } from "./_payload.ts";
export {
  type SpawnedServer,
  spawnServer,
  type SpawnServerOptions,
} from "./spawn.ts";

/** Options for {@linkcode runBench}; the target is a {@linkcode ConnectOptions}. */
export interface BenchOptions extends ConnectOptions {
  /** Concurrent connections. @default {50} */
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
   * @default {"pingpong"}
   */
  pattern?: BenchPattern;
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
  /** Called about every 250 ms during the window. Must not throw. */
  onProgress?: (progress: BenchProgress) => void;
  /** Called once for each error counted in {@linkcode BenchResult.errors}. Must not throw. */
  onError?: (error: Error) => void;
}

/** Load patterns of {@linkcode BenchOptions.pattern}. */
export type BenchPattern = "pingpong" | "stream";

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

/** A snapshot of a running window, for a live progress line. */
export interface BenchProgress {
  /** Time since the window opened. */
  elapsedMs: number;
  /** Planned length of the window. */
  durationMs: number;
  /** Messages completed in the window so far (stream: bytes / size). */
  messages: number;
  /** Echoed bytes received in the window so far. */
  bytes: number;
  /** Errors so far, warm-up included. */
  errors: number;
}

/** Round-trip latency percentiles in microseconds. */
export interface LatencySummary {
  /** Median. */
  p50: number;
  /** 90th percentile. */
  p90: number;
  /** 99th percentile. */
  p99: number;
  /** Slowest round trip. */
  max: number;
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
  /** Messages echoed in full within the window (stream: `bytes / size`, rounded down). */
  messages: number;
  /** `messages / duration_s`. */
  messages_per_s: number;
  /** Echoed bytes received within the window. */
  bytes: number;
  /** `bytes / duration_s` in MiB (2^20 bytes). */
  mib_per_s: number;
  /** Round-trip latency; `null` for `stream` (or when no round trip completed). */
  latency_us: LatencySummary | null;
  /** Failed connects, resets, early closes, echo mismatches (warm-up included). */
  errors: number;
}

// ---- the run ------------------------------------------------------------------

/** How often {@linkcode BenchOptions.onProgress} is called. */
const PROGRESS_INTERVAL_MS = 250;
/** Connections opened at once. */
const CONNECT_CONCURRENCY = 32;

/**
 * Runs a load test against an echo server and returns what it measured.
 *
 * Opens `connections` connections (the first alone, so a dead target fails
 * fast), loads them for `warmupMs`, measures for `durationMs`, then stops
 * sending, half-closes every connection, reads until the server closes (at
 * most `drainTimeoutMs`, then closes it: an error) and awaits every task. Every echoed byte is checked;
 * a mismatch, reset, early close or failed connect counts in `errors` and
 * ends that connection only.
 *
 * @throws {Error} `cannot connect to HOST:PORT` (from {@linkcode connect})
 *   when the first connection fails.
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
  const {
    connections = BENCH_DEFAULTS.connections,
    sizeBytes = BENCH_DEFAULTS.sizeBytes,
    durationMs = BENCH_DEFAULTS.durationMs,
    warmupMs = BENCH_DEFAULTS.warmupMs,
    pattern = BENCH_DEFAULTS.pattern,
    lines = BENCH_DEFAULTS.lines,
    drainTimeoutMs = BENCH_DEFAULTS.drainTimeoutMs,
    signal,
    onProgress,
    onError,
  } = options;
  if (!Number.isSafeInteger(connections) || connections < 1) {
    throw new RangeError(
      `invalid connections ${connections}: expected a positive integer`,
    );
  }
  checkMs("durationMs", durationMs);
  checkMs("warmupMs", warmupMs);
  checkMs("drainTimeoutMs", drainTimeoutMs);
  if (pattern !== "pingpong" && pattern !== "stream") {
    throw new RangeError(
      `invalid pattern "${pattern}": expected pingpong or stream`,
    );
  }
  const run = new Run(
    new Payload(sizeBytes, { lines }),
    pattern === "pingpong" ? pingpong : stream,
    onError,
  );

  // The first connection alone: a dead target is one error, not `connections`.
  try {
    run.start(await connect(options), 0);
  } catch (err) {
    if (!signal?.aborted) throw err;
    return benchResult(run, pattern, connections, sizeBytes, 0);
  }
  let windowMs = 0;
  try {
    await openConnections(run, connections, options);
    windowMs = await measureWindow(run, {
      warmupMs,
      durationMs,
      messages: () => messagesOf(run, pattern, sizeBytes),
      signal,
      onProgress,
    });
  } finally {
    await drain(run, drainTimeoutMs, signal);
  }
  return benchResult(run, pattern, connections, sizeBytes, windowMs);
}

function checkMs(name: string, value: number): void {
  if (!(value >= 0 && Number.isFinite(value))) {
    throw new RangeError(`invalid ${name} ${value}: expected 0 or more`);
  }
}

/**
 * Opens connections 1 to `connections - 1`, {@linkcode CONNECT_CONCURRENCY}
 * at a time, and starts each; a failed connect is an error of the run.
 */
async function openConnections(
  run: Run,
  connections: number,
  options: BenchOptions,
): Promise<void> {
  const { signal } = options;
  let next = 1;
  const opener = async () => {
    while (next < connections && !signal?.aborted) {
      const index = next++;
      run.connectsPending++;
      try {
        run.start(await connect(options), index);
      } catch (err) {
        if (!signal?.aborted) {
          run.fail(new Error(`connection ${index} failed`, { cause: err }));
        }
      } finally {
        run.connectsPending--;
      }
    }
  };
  const openers = [];
  for (let i = 0; i < Math.min(CONNECT_CONCURRENCY, connections - 1); i++) {
    openers.push(opener());
  }
  await Promise.all(openers);
  run.checkAllGone();
}

/**
 * The warm-up, then the measuring window (with progress calls), each cut
 * short by `signal` or by every connection having ended.
 *
 * @returns the length of the window in ms (0 if it never opened).
 */
async function measureWindow(
  run: Run,
  window: {
    warmupMs: number;
    durationMs: number;
    /** Messages so far in the window, for the progress calls. */
    messages: () => number;
    signal?: AbortSignal;
    onProgress?: (progress: BenchProgress) => void;
  },
): Promise<number> {
  const { warmupMs, durationMs, messages, signal, onProgress } = window;
  const stopWindow = AbortSignal.any(
    signal ? [signal, run.allGone.signal] : [run.allGone.signal],
  );
  await delay(warmupMs, stopWindow);
  if (stopWindow.aborted) return 0;
  const windowStart = performance.now();
  run.phase = MEASURE;
  const progressTimer = onProgress && setInterval(() => {
    onProgress({
      elapsedMs: performance.now() - windowStart,
      durationMs,
      messages: messages(),
      bytes: run.bytes,
      errors: run.errors,
    });
  }, PROGRESS_INTERVAL_MS);
  try {
    await delay(durationMs, stopWindow);
    return performance.now() - windowStart;
  } finally {
    clearInterval(progressTimer);
  }
}

/**
 * Ends the run: connections finish their message, half-close and wait for
 * the server's close; whoever is still open after `drainTimeoutMs` is
 * interrupted (an error unless `signal` stopped the run). Resolves once
 * every connection task has ended.
 */
async function drain(
  run: Run,
  drainTimeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  run.phase = STOP;
  const drainTimer = setTimeout(() => {
    for (const connection of run.live) {
      connection.interrupted = true;
      if (!signal?.aborted) {
        const { index, halfClosed } = connection;
        run.fail(
          new EchoError(
            halfClosed
              ? `connection ${index}: server did not close within ${drainTimeoutMs} ms of the half-close`
              : `connection ${index}: no echo within ${drainTimeoutMs} ms after the window`,
          ),
        );
      }
      try {
        connection.conn.close();
      } catch { /* closed already by its owner */ }
    }
  }, drainTimeoutMs);
  try {
    await Promise.all(run.tasks); // runConnection never rejects
  } finally {
    clearTimeout(drainTimer);
  }
}
