/**
 * The tcpecho load generator: {@linkcode runBench} drives any echo server over
 * many connections and checks every echoed byte; {@linkcode formatReport}
 * renders its result; {@linkcode spawnServer} starts `tcpecho server` as a
 * child to measure. The pure pieces ({@linkcode LatencyHistogram},
 * {@linkcode Payload}) are exported for tests.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { fileURLToPath } from "node:url";
import { connect, type ConnectOptions } from "./client.ts";
import { delay, writeAll } from "./io.ts";

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
  /** UDP: datagrams whose reply was not back within the loss timeout, in the window; 0 over TCP. */
  lost: number;
}

// ---- latency histogram --------------------------------------------------------

const SUB_BUCKET_BITS = 7; // 128 sub-buckets: bucket width ≤ 1/64 of its value
const SUB_BUCKETS = 1 << SUB_BUCKET_BITS;
const HALF_SUB_BUCKETS = SUB_BUCKETS >> 1;
const MAX_TRACKABLE_NS = 2 ** 44; // ~4.9 h; longer values share the last bucket
const BUCKET_COUNT = bucketIndex(MAX_TRACKABLE_NS) + 1;

/** Index of the bucket holding `ns` (a non-negative integer). */
function bucketIndex(ns: number): number {
  if (ns < SUB_BUCKETS) return ns; // exact below 128 ns
  const exponent = ns < 2 ** 31
    ? 31 - Math.clz32(ns)
    : Math.floor(Math.log2(ns));
  const shift = exponent - (SUB_BUCKET_BITS - 1);
  const sub = Math.floor(ns / 2 ** shift); // in [64, 128)
  return shift * HALF_SUB_BUCKETS + sub;
}

/**
 * A latency histogram in the style of HdrHistogram: log-linear buckets of
 * nanoseconds, exact below 128 ns, then 64 buckets per power of two, so a
 * percentile is off by at most 0.8% (half a bucket) and memory is fixed
 * (~2,500 counters) however many values are recorded.
 */
export class LatencyHistogram {
  #counts = new Float64Array(BUCKET_COUNT);
  #count = 0;
  #min = Infinity;
  #max = 0;

  /** Records one value in microseconds (negative values count as 0). */
  record(us: number): void {
    const ns = us > 0 ? Math.round(us * 1000) : 0;
    this.#counts[ns < MAX_TRACKABLE_NS ? bucketIndex(ns) : BUCKET_COUNT - 1]++;
    this.#count++;
    if (ns < this.#min) this.#min = ns;
    if (ns > this.#max) this.#max = ns;
  }

  /** Number of values recorded. */
  get count(): number {
    return this.#count;
  }

  /** Largest value recorded, in microseconds (exact); 0 when empty. */
  get max(): number {
    return this.#max / 1000;
  }

  /**
   * The `p`-th percentile in microseconds (nearest rank: the smallest value
   * with at least `p`% of the values at or below it), as the middle of its
   * bucket, clamped to the exact min and max; 0 when empty.
   *
   * @throws {RangeError} if `p` is not within 0–100.
   */
  percentile(p: number): number {
    if (!(p >= 0 && p <= 100)) {
      throw new RangeError(`invalid percentile ${p}: expected 0 to 100`);
    }
    if (this.#count === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.#count));
    if (rank === this.#count) return this.#max / 1000; // the largest value: exact
    let seen = 0;
    for (let index = 0; index < BUCKET_COUNT; index++) {
      seen += this.#counts[index];
      if (seen >= rank) {
        const ns = Math.min(
          this.#max,
          Math.max(this.#min, bucketMiddle(index)),
        );
        return ns / 1000;
      }
    }
    return this.#max / 1000; // not reached: the counts add up to #count
  }
}

/** The middle of bucket `index`, in nanoseconds. */
function bucketMiddle(index: number): number {
  if (index < SUB_BUCKETS) return index;
  const shift = Math.floor(index / HALF_SUB_BUCKETS) - 1;
  const sub = index - shift * HALF_SUB_BUCKETS;
  const width = 2 ** shift;
  return sub * width + (width - 1) / 2;
}

// ---- payload ------------------------------------------------------------------

/** Length of the pseudo-random pattern all payloads are cut from (a prime). */
const PATTERN_BYTES = 1_048_573;
/** The pattern is followed by a copy of its start, so windows this long never wrap. */
const PATTERN_TAIL_BYTES = 64 * 1024;
/** Distinct messages per connection before they repeat (a prime). */
const MESSAGE_SLOTS = 4093;
/** Lines mode: the line pattern holds fewer distinct lines past this size. */
const LINE_PATTERN_MAX_BYTES = 4 * 1024 * 1024;
/** Below this, a JS loop compares faster than a call into native code. */
const NATIVE_COMPARE_BYTES = 256;
const NEWLINE = 10;

let sharedPattern: Uint8Array | undefined;

/** `length` pseudo-random bytes (xorshift32 from `seed`), `map`ped. */
function randomBytes(
  length: number,
  seed: number,
  map: (byte: number) => number,
): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(length);
  let x = seed | 0;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = map(x >>> 24);
  }
  return bytes;
}

/** Fills `bytes[period, end)` by repeating `bytes[0, period)`. */
function repeatTail(bytes: Uint8Array, period: number): void {
  for (let at = period; at < bytes.length; at += period) {
    bytes.copyWithin(at, 0, Math.min(period, bytes.length - at));
  }
}

/** The pattern (built on first use, ~1 MiB, shared by every raw payload). */
function pattern(): Uint8Array {
  if (sharedPattern) return sharedPattern;
  const bytes = randomBytes(
    PATTERN_BYTES + PATTERN_TAIL_BYTES,
    0x9e3779b9,
    (byte) => byte,
  );
  repeatTail(bytes, PATTERN_BYTES);
  return sharedPattern = bytes;
}

/**
 * The line pattern for `sizeBytes`-byte lines: `slots` lines back to back,
 * each printable bytes then `\n`, followed by a copy of its start.
 */
function linePattern(sizeBytes: number, slots: number): Uint8Array {
  const period = sizeBytes * slots;
  const bytes = randomBytes(
    period + PATTERN_TAIL_BYTES,
    0x2545f491,
    (byte) => 0x20 + byte % 95, // space to "~"
  );
  for (let end = sizeBytes - 1; end < period; end += sizeBytes) {
    bytes[end] = NEWLINE;
  }
  repeatTail(bytes, period);
  return bytes;
}

/** Options for {@linkcode Payload}. */
export interface PayloadOptions {
  /** Lines: printable bytes, each message ending in its only `\n`. @default {false} */
  lines?: boolean;
}

/**
 * The bytes every connection sends and expects back, cut from one shared
 * pseudo-random pattern, so checking an echo is a compare against memory.
 *
 * Pingpong: message `k` of connection `c` starts at pattern slot
 * `(c · 7919 + k) mod 4093`, so content differs per connection and per
 * message and a stale, duplicated, reordered or foreign echo fails the
 * check (unless exactly 4093 messages apart). Stream: connection `c` sends
 * the pattern from its own offset on, endlessly; a byte is checked against
 * its position in that stream.
 *
 * With `lines`, the pattern is lines of `sizeBytes` (printable bytes, then
 * `\n`), and messages and streams start at line boundaries. Lines over
 * 1 KiB have fewer slots (4 MiB of pattern at most, at least 2 slots).
 */
export class Payload {
  /** Message size in bytes. */
  readonly sizeBytes: number;
  /** Whether messages are lines (see {@linkcode PayloadOptions.lines}). */
  readonly lines: boolean;
  #pattern: Uint8Array;
  /** Where the pattern repeats (positions are taken modulo this). */
  #period: number;
  /** Distinct messages per connection. */
  #slots: number;
  // Filled on use; allocated whole so the array stays packed (fast elements).
  #views: (Uint8Array | undefined)[];

  /**
   * @param sizeBytes message size (pingpong); any positive integer.
   * @throws {RangeError} if `sizeBytes` is not a positive safe integer.
   */
  constructor(sizeBytes: number, options: PayloadOptions = {}) {
    const { lines = false } = options;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 1) {
      throw new RangeError(
        `invalid message size ${sizeBytes}: expected a positive integer`,
      );
    }
    this.sizeBytes = sizeBytes;
    this.lines = lines;
    if (lines) {
      this.#slots = Math.max(
        2,
        Math.min(
          MESSAGE_SLOTS,
          Math.floor(LINE_PATTERN_MAX_BYTES / sizeBytes),
        ),
      );
      this.#period = sizeBytes * this.#slots;
      this.#pattern = linePattern(sizeBytes, this.#slots);
    } else {
      this.#slots = MESSAGE_SLOTS;
      this.#period = PATTERN_BYTES;
      this.#pattern = pattern();
    }
    this.#views = new Array<Uint8Array | undefined>(this.#slots).fill(
      undefined,
    );
  }

  /** Pattern position of byte 0 of message `k` of `connection`. */
  #messagePosition(connection: number, k: number): number {
    const slot = (connection * 7919 + k) % this.#slots;
    return (slot * this.sizeBytes) % this.#period;
  }

  /**
   * The bytes of message `k` of `connection`. Up to 64 KiB this is a cached
   * view into the shared pattern (no allocation after the first use): never
   * write to it. Larger messages are a fresh copy.
   */
  message(connection: number, k: number): Uint8Array {
    const slot = (connection * 7919 + k) % this.#slots;
    const position = (slot * this.sizeBytes) % this.#period;
    if (this.sizeBytes <= PATTERN_TAIL_BYTES) {
      return this.#views[slot] ??= this.#pattern.subarray(
        position,
        position + this.sizeBytes,
      );
    }
    return this.#copy(position, this.sizeBytes);
  }

  /**
   * Checks `received[0, length)` against bytes `[offset, offset + length)` of
   * message `k` of `connection`.
   *
   * @returns the index in `received` of the first wrong byte, or -1.
   */
  verifyMessage(
    connection: number,
    k: number,
    offset: number,
    received: Uint8Array,
    length: number = received.length,
  ): number {
    const position = this.#messagePosition(connection, k) + offset;
    return this.#compare(position % this.#period, received, length);
  }

  /**
   * Bytes `[offset, offset + length)` of the stream `connection` sends in
   * the `stream` pattern: a view into the shared pattern, never write to it.
   *
   * @throws {RangeError} if `length` is above 64 KiB.
   */
  stream(connection: number, offset: number, length: number): Uint8Array {
    if (length > PATTERN_TAIL_BYTES) {
      throw new RangeError(
        `invalid stream chunk ${length}: expected at most ${PATTERN_TAIL_BYTES} bytes`,
      );
    }
    const position = this.#streamPosition(connection, offset);
    return this.#pattern.subarray(position, position + length);
  }

  /**
   * Checks `received[0, length)` against bytes `[offset, offset + length)`
   * of the stream of `connection`.
   *
   * @returns the index in `received` of the first wrong byte, or -1.
   */
  verifyStream(
    connection: number,
    offset: number,
    received: Uint8Array,
    length: number = received.length,
  ): number {
    return this.#compare(
      this.#streamPosition(connection, offset),
      received,
      length,
    );
  }

  /** Pattern position of byte `offset` of the stream of `connection`. */
  #streamPosition(connection: number, offset: number): number {
    const start = this.lines
      ? ((connection * 104_729 + 7919) % this.#slots) * this.sizeBytes
      : connection * 104_729 + 7919;
    return (start + offset) % this.#period;
  }

  /** A copy of `length` pattern bytes from `position`, wrapping around. */
  #copy(position: number, length: number): Uint8Array {
    const bytes = new Uint8Array(length);
    for (let done = 0; done < length;) {
      const take = Math.min(length - done, PATTERN_TAIL_BYTES);
      bytes.set(this.#pattern.subarray(position, position + take), done);
      done += take;
      position = (position + take) % this.#period;
    }
    return bytes;
  }

  /** Compares `received[0, length)` with the pattern from `position` on. */
  #compare(position: number, received: Uint8Array, length: number): number {
    const expected = this.#pattern;
    for (let done = 0; done < length;) {
      const take = Math.min(length - done, PATTERN_TAIL_BYTES);
      if (take < NATIVE_COMPARE_BYTES) {
        for (let i = 0; i < take; i++) {
          if (received[done + i] !== expected[position + i]) return done + i;
        }
      } else {
        const got = Buffer.from(
          received.buffer,
          received.byteOffset + done,
          take,
        );
        const want = Buffer.from(
          expected.buffer,
          expected.byteOffset + position,
          take,
        );
        if (!got.equals(want)) {
          for (let i = 0; i < take; i++) {
            if (got[i] !== want[i]) return done + i;
          }
        }
      }
      done += take;
      position = (position + take) % this.#period;
    }
    return -1;
  }
}

// ---- the run ------------------------------------------------------------------

const WARMUP = 0;
const MEASURE = 1;
const STOP = 2;
type Phase = typeof WARMUP | typeof MEASURE | typeof STOP;

/** How often {@linkcode BenchOptions.onProgress} is called. */
const PROGRESS_INTERVAL_MS = 250;
/** Connections opened at once. */
const CONNECT_CONCURRENCY = 32;
/** Read buffer, and write size in the stream pattern. */
const IO_BYTES = 64 * 1024;

/** State shared by all connection tasks of one run (one shape: fast access). */
class Run {
  phase: Phase = WARMUP;
  messages = 0;
  bytes = 0;
  errors = 0;
  readonly histogram = new LatencyHistogram();
  /** Open connections, to interrupt stragglers at the end. */
  readonly live = new Set<Connection>();
  /** Aborted when no connection is left: the window may end early. */
  readonly allGone = new AbortController();
  connectsPending = 0;

  constructor(
    readonly payload: Payload,
    readonly onError: ((error: Error) => void) | undefined,
  ) {}

  /** Counts one error and reports it. */
  fail(error: Error): void {
    this.errors++;
    this.onError?.(error);
  }

  /** Ends the window early once every connection has ended. */
  checkAllGone(): void {
    if (this.live.size === 0 && this.connectsPending === 0) {
      this.allGone.abort();
    }
  }
}

/** One connection: its socket, index and whether we interrupted it. */
interface Connection {
  readonly conn: Deno.Conn;
  readonly index: number;
  /** Closed by us (end of the drain, or its other loop failed): not an error. */
  interrupted: boolean;
  /** We sent our FIN: only the server's close is still awaited. */
  halfClosed: boolean;
}

/** A failure with a message of its own (mismatch, early close): not wrapped. */
class EchoError extends Error {
  override name = "EchoError";
}

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
  const run = new Run(new Payload(sizeBytes, { lines }), onError);
  const loop = pattern === "pingpong" ? pingpong : stream;
  const tasks: Promise<void>[] = [];
  const start = (conn: Deno.Conn, index: number) => {
    const connection: Connection = {
      conn,
      index,
      interrupted: false,
      halfClosed: false,
    };
    run.live.add(connection);
    tasks.push(runConnection(run, connection, loop));
  };

  // The first connection alone: a dead target is one error, not `connections`.
  try {
    start(await connect(options), 0);
  } catch (err) {
    if (!signal?.aborted) throw err;
    return benchResult(run, pattern, connections, sizeBytes, 0);
  }

  let windowStart = 0;
  let windowEnd = 0;
  let progressTimer: ReturnType<typeof setInterval> | undefined;
  const stopWindow = AbortSignal.any(
    signal ? [signal, run.allGone.signal] : [run.allGone.signal],
  );
  try {
    let next = 1;
    const opener = async () => {
      while (next < connections && !signal?.aborted) {
        const index = next++;
        run.connectsPending++;
        try {
          start(await connect(options), index);
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

    await delay(warmupMs, stopWindow);
    windowStart = windowEnd = performance.now();
    if (!stopWindow.aborted) {
      run.phase = MEASURE;
      if (onProgress) {
        progressTimer = setInterval(() => {
          onProgress({
            elapsedMs: performance.now() - windowStart,
            durationMs,
            messages: messagesOf(run, pattern, sizeBytes),
            bytes: run.bytes,
            errors: run.errors,
          });
        }, PROGRESS_INTERVAL_MS);
      }
      await delay(durationMs, stopWindow);
      windowEnd = performance.now();
    }
  } finally {
    run.phase = STOP;
    clearInterval(progressTimer);
    // Connections finish their message, half-close and wait for the server's
    // close; whoever is still open after the drain timeout is interrupted.
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
      await Promise.all(tasks); // runConnection never rejects
    } finally {
      clearTimeout(drainTimer);
    }
  }
  return benchResult(
    run,
    pattern,
    connections,
    sizeBytes,
    windowEnd - windowStart,
  );
}

function checkMs(name: string, value: number): void {
  if (!(value >= 0 && Number.isFinite(value))) {
    throw new RangeError(`invalid ${name} ${value}: expected 0 or more`);
  }
}

/** What a run counted; {@linkcode benchResult} turns it into the result. */
export interface RunCounts {
  /** Pingpong round trips completed in the window. */
  readonly messages: number;
  /** Echoed bytes received in the window. */
  readonly bytes: number;
  /** Errors, warm-up included. */
  readonly errors: number;
  /** Pingpong round-trip times in the window, in microseconds. */
  readonly histogram: LatencyHistogram;
  /** UDP: replies lost in the window. @default {0} */
  readonly lost?: number;
}

/** Messages in the window so far: stream counts whole sizes of echoed bytes. */
function messagesOf(
  run: RunCounts,
  pattern: BenchPattern,
  sizeBytes: number,
): number {
  return pattern === "pingpong"
    ? run.messages
    : Math.floor(run.bytes / sizeBytes);
}

/** The {@linkcode BenchResult} of a finished run, keys in the SPEC's order. */
export function benchResult(
  run: RunCounts,
  pattern: BenchPattern,
  connections: number,
  sizeBytes: number,
  windowMs: number,
): BenchResult {
  const seconds = windowMs / 1000;
  const messages = messagesOf(run, pattern, sizeBytes);
  const histogram = run.histogram;
  return {
    pattern,
    connections,
    size: sizeBytes,
    duration_s: round(seconds, 3),
    messages,
    messages_per_s: seconds > 0 ? round(messages / seconds, 1) : 0,
    bytes: run.bytes,
    mib_per_s: seconds > 0 ? round(run.bytes / seconds / 2 ** 20, 2) : 0,
    latency_us: pattern === "pingpong" && histogram.count > 0
      ? {
        p50: round(histogram.percentile(50), 1),
        p90: round(histogram.percentile(90), 1),
        p99: round(histogram.percentile(99), 1),
        max: round(histogram.max, 1),
      }
      : null,
    errors: run.errors,
    lost: run.lost ?? 0,
  };
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** Owns one connection: runs its loop, counts its failure, closes it. Never rejects. */
async function runConnection(
  run: Run,
  connection: Connection,
  loop: (run: Run, connection: Connection) => Promise<void>,
): Promise<void> {
  using _conn = connection.conn;
  try {
    if ("setNoDelay" in connection.conn) {
      (connection.conn as Deno.TcpConn).setNoDelay(true);
    }
    await loop(run, connection);
  } catch (err) {
    if (!connection.interrupted) {
      run.fail(
        err instanceof EchoError
          ? err
          : new Error(`connection ${connection.index} failed`, { cause: err }),
      );
    }
  } finally {
    run.live.delete(connection);
    run.checkAllGone();
  }
}

/** One message in flight: write it, read it back by byte count, check, time. */
async function pingpong(run: Run, connection: Connection): Promise<void> {
  const { conn, index } = connection;
  const payload = run.payload;
  const size = payload.sizeBytes;
  // One byte more than a message: a read that does not fill the buffer tells
  // the runtime the socket is drained, which saves a failed (EAGAIN) read per
  // message; and a server echoing too much shows up here.
  const buffer = new Uint8Array(Math.min(size + 1, IO_BYTES));
  let k = 0;
  let sent = performance.now();
  while (run.phase !== STOP) {
    const message = payload.message(index, k);
    const written = await conn.write(message); // one op, no writeAll frame, mostly
    if (written < size) await writeAll(conn, message.subarray(written));
    let got = 0;
    do {
      const n = await conn.read(buffer);
      if (n === null) {
        throw new EchoError(
          `connection ${index}: server closed the connection ${got} bytes into message ${k}`,
        );
      }
      const bad = payload.verifyMessage(
        index,
        k,
        got,
        buffer,
        Math.min(n, size - got),
      );
      if (bad >= 0) {
        throw new EchoError(
          `connection ${index}: echo mismatch at byte ${
            got + bad
          } of message ${k}`,
        );
      }
      got += n;
    } while (got < size);
    if (got > size) {
      throw new EchoError(
        `connection ${index}: more bytes than sent, after message ${k}`,
      );
    }
    const now = performance.now();
    if (run.phase === MEASURE) {
      run.messages++;
      run.bytes += size;
      run.histogram.record((now - sent) * 1000);
    }
    sent = now;
    k++;
  }
  connection.halfClosed = true;
  await conn.closeWrite();
  const extra = await conn.read(buffer);
  if (extra !== null) {
    throw new EchoError(
      `connection ${index}: more bytes than sent, after the last message`,
    );
  }
}

/** Two loops: one writes the connection's stream, one reads and checks it. */
async function stream(run: Run, connection: Connection): Promise<void> {
  const { conn, index } = connection;
  const payload = run.payload;
  let sent = 0; // bytes the kernel took
  let offered = 0; // bytes handed to write(), taken or not yet
  let writeClosed = false;

  const writer = async () => {
    while (run.phase !== STOP) {
      const chunk = payload.stream(index, sent, IO_BYTES);
      offered = sent + chunk.length;
      sent += await conn.write(chunk);
    }
    offered = sent;
    writeClosed = connection.halfClosed = true;
    await conn.closeWrite();
  };
  const reader = async () => {
    const buffer = new Uint8Array(IO_BYTES);
    let received = 0;
    for (
      let n = await conn.read(buffer);
      n !== null;
      n = await conn.read(buffer)
    ) {
      if (received + n > offered) {
        throw new EchoError(
          `connection ${index}: more bytes than sent, at stream byte ${offered}`,
        );
      }
      const bad = payload.verifyStream(index, received, buffer, n);
      if (bad >= 0) {
        throw new EchoError(
          `connection ${index}: echo mismatch at stream byte ${received + bad}`,
        );
      }
      received += n;
      if (run.phase === MEASURE) run.bytes += n;
    }
    if (!writeClosed || received !== sent) {
      throw new EchoError(
        `connection ${index}: server closed the connection after ${received} of ${sent} bytes`,
      );
    }
  };
  // Whichever loop fails first stops the other by closing the socket; only
  // that first failure counts.
  let failed = false;
  let failure: unknown;
  const guard = (task: Promise<void>) =>
    task.catch((err) => {
      if (failed) return;
      failed = true;
      failure = err;
      try {
        conn.close();
      } catch { /* closed already (drain timeout) */ }
    });
  await Promise.all([guard(writer()), guard(reader())]);
  if (failed) throw failure;
}

/**
 * Human-readable report of a {@linkcode BenchResult}, several lines, no final
 * newline; with `udp` (or anything lost) it gives the loss rate.
 */
export function formatReport(
  result: BenchResult,
  options: { udp?: boolean } = {},
): string {
  const { udp = false } = options;
  const number = (value: number) => value.toLocaleString("en-US");
  const lines = [
    `${result.pattern}${udp ? " over UDP" : ""}: ${
      number(result.connections)
    } connections, ` +
    `${number(result.size)}-byte messages, ${result.duration_s.toFixed(2)} s`,
    `messages  ${number(result.messages)} (${
      number(result.messages_per_s)
    } msg/s)`,
    `bytes     ${number(result.bytes)} (${result.mib_per_s.toFixed(2)} MiB/s)`,
  ];
  if (result.latency_us) {
    const { p50, p90, p99, max } = result.latency_us;
    lines.push(
      `latency   p50 ${number(p50)} µs, p90 ${number(p90)} µs, ` +
        `p99 ${number(p99)} µs, max ${number(max)} µs`,
    );
  }
  if (udp || result.lost > 0) {
    const sent = result.messages + result.lost;
    const rate = sent > 0 ? (100 * result.lost / sent).toFixed(2) : "0.00";
    lines.push(
      `lost      ${number(result.lost)} of ${number(sent)} (${rate}%)`,
    );
  }
  lines.push(`errors    ${number(result.errors)}`);
  return lines.join("\n");
}

/** One progress line (no newline), e.g. for `\r`-rewriting on a terminal. */
export function formatProgress(progress: BenchProgress): string {
  const seconds = progress.elapsedMs / 1000;
  const rate = seconds > 0 ? Math.round(progress.messages / seconds) : 0;
  const mib = seconds > 0 ? progress.bytes / seconds / 2 ** 20 : 0;
  return `${seconds.toFixed(1)}/${
    (progress.durationMs / 1000).toFixed(1)
  } s  ` +
    `${rate.toLocaleString("en-US")} msg/s  ${mib.toFixed(2)} MiB/s  ` +
    `errors ${progress.errors}`;
}

// ---- spawning a server --------------------------------------------------------

/** Options for {@linkcode spawnServer}. */
export interface SpawnServerOptions {
  /**
   * Under `deno run`, the module to run with `server …`; ignored in a
   * compiled binary (it is the program). Tests point it at a stub.
   * @default {new URL("./main.ts", import.meta.url)}
   */
  mainModule?: string | URL;
  /** Give up when the server has not logged `listening on` by then. @default {30000} */
  startTimeoutMs?: number;
  /** Each stderr line after `listening on`. The child's stderr is drained either way. */
  onLog?: (line: string) => void;
}

/** A server started by {@linkcode spawnServer}. */
export interface SpawnedServer {
  /** The port it listens on (0 for a Unix socket). */
  port: number;
  /** What it logged after `listening on`: `HOST:PORT`, `[::1]:PORT` or `unix:PATH`. */
  address: string;
  /** SIGTERM, then its exit code once it has exited (idempotent). */
  stop(): Promise<number>;
  /** Same as {@linkcode SpawnedServer.stop}. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * The server's ready line, in text (`listening on 127.0.0.1:8080`) or JSON
 * (`"message":"listening on \"[::1]:8080\""`) format.
 */
const LISTENING =
  /listening on \\?"?(unix:[^\s"\\]+|\[[^\]\s]+\]:\d+|[^\s"\\[\]]+:\d+)/;

/** Permissions of the child under `deno run`, as the `server` task has them. */
const SERVER_PERMISSIONS = ["--allow-net", "--allow-read", "--allow-write"];

/**
 * Starts `tcpecho server --port 0 ARGS…` (no `--port 0` with `--unix`) as a
 * child of this same program
 * (the compiled binary, or `deno run main.ts`), and resolves once it logs
 * `listening on HOST:PORT`. Its stdout is discarded, its stderr drained.
 *
 * @param args more `server` options, e.g. `["--mode", "line"]`.
 * @throws {TypeError} for `-q` or `--log-level warn|error`: they hide the
 *   line waited for.
 * @throws {Error} `cannot start server`, the cause saying how it exited (with
 *   its last stderr lines) or that it stayed silent for `startTimeoutMs`.
 */
export async function spawnServer(
  args: string[] = [],
  options: SpawnServerOptions = {},
): Promise<SpawnedServer> {
  const {
    mainModule = new URL("./main.ts", import.meta.url),
    startTimeoutMs = 30_000,
    onLog,
  } = options;
  const quiet = args.some((arg, i) =>
    arg === "-q" || arg === "--quiet" ||
    /^--log-level=(warn|error)$/.test(arg) ||
    (arg === "--log-level" && /^(warn|error)$/.test(args[i + 1] ?? ""))
  );
  if (quiet) {
    throw new TypeError(
      'cannot spawn the server quiet: it would hide its "listening on" line',
    );
  }
  const unix = args.some((arg) =>
    arg === "--unix" || arg.startsWith("--unix=")
  );
  const serverArgs = ["server", ...(unix ? [] : ["--port", "0"]), ...args];
  const commandArgs = Deno.build.standalone ? serverArgs : [
    "run",
    ...SERVER_PERMISSIONS,
    "--no-prompt",
    mainModule instanceof URL ? fileURLToPath(mainModule) : mainModule,
    ...serverArgs,
  ];
  const child = new Deno.Command(Deno.execPath(), {
    args: commandArgs,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();

  const ready = Promise.withResolvers<string>();
  const seen: string[] = []; // stderr before ready, for the error message
  let isReady = false;
  const drained = (async () => {
    const decoder = new TextDecoder();
    let pending = "";
    const onLine = (line: string) => {
      if (isReady) return onLog?.(line);
      const match = LISTENING.exec(line);
      if (match) {
        isReady = true;
        ready.resolve(match[1]);
      } else if (seen.push(line) > 20) seen.shift();
    };
    for await (const chunk of child.stderr) {
      pending += decoder.decode(chunk, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) onLine(line.replace(/\r$/, ""));
    }
    pending += decoder.decode();
    if (pending) onLine(pending);
  })();
  const exited = child.status.then(({ code }) => code);

  let stopping: Promise<number> | undefined;
  const stop = (): Promise<number> =>
    stopping ??= (async () => {
      try {
        child.kill("SIGTERM");
      } catch { /* exited already */ }
      const code = await exited;
      await Promise.all([drained, watch]);
      return code;
    })();

  const timer = setTimeout(
    () =>
      ready.reject(
        new Error(`no "listening on" line after ${startTimeoutMs / 1000} s`),
      ),
    startTimeoutMs,
  );
  // Settles `ready` (if still pending) when the child dies before it is ready.
  const watch = exited.then((code) =>
    ready.reject(new Error(`exited with code ${code}: ${seen.join(" | ")}`))
  );
  let address: string;
  try {
    address = await ready.promise;
  } catch (cause) {
    await stop();
    throw new Error("cannot start server", { cause });
  } finally {
    clearTimeout(timer);
  }
  const port = address.startsWith("unix:")
    ? 0
    : Number(/:(\d+)$/.exec(address)?.[1] ?? 0);
  return {
    port,
    address,
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}
