/**
 * The load generator's public types: {@linkcode BenchOptions} and
 * {@linkcode BENCH_DEFAULTS}, what a run reports as it goes
 * ({@linkcode BenchProgress}, {@linkcode BenchInterval}) and what it measured
 * ({@linkcode BenchResult}). Private to `bench.ts`, which exports them (kept
 * apart so that the run's pieces can name them without importing the run).
 *
 * @module
 */
import type { LatencyHistogram } from "./_histogram.ts";
import type { ConnectOptions } from "./client.ts";

/** Options for `runBench()`; the target is a {@linkcode ConnectOptions}. */
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
  /** Stop early (Ctrl+C); `runBench()` still returns what it measured. */
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

/** Defaults of what every run takes, over TCP or UDP: its size and length. */
export const RUN_DEFAULTS = {
  connections: 50,
  sizeBytes: 64,
  durationMs: 10_000,
  warmupMs: 1_000,
} as const;

/** Defaults of {@linkcode BenchOptions}; also printed by `--help`. */
export const BENCH_DEFAULTS = {
  ...RUN_DEFAULTS,
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
 * What `runBench()` measured: exactly the object of the SPEC's
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
