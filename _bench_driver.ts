/**
 * The driver of a load-test run (private to `bench.ts`): the same for
 * connections in the caller's isolate (`runBench()`, `runUdpBench()`) and in
 * workers (`bench --threads`), over TCP or UDP. It opens the shards'
 * connections, times the warm-up and the window, takes what the shards
 * measured at each interval boundary, adds it up exactly, and drains.
 *
 * @module
 */

import { LatencyHistogram } from "./_histogram.ts";
import type { ShardDelta, ShardEvents } from "./_bench_shard.ts";
import { benchResult, fairness } from "./_bench_report.ts";
import { RUN_DEFAULTS } from "./_bench_types.ts";
import type {
  BenchInterval,
  BenchIntervalListener,
  BenchOptions,
  BenchPattern,
  BenchProgress,
  BenchResult,
} from "./_bench_types.ts";
import { delay, withDefaults } from "./io.ts";

/** How often the progress callback is called. */
const PROGRESS_INTERVAL_MS = 250;
/** A timer firing this early still counts as on time. */
const TIMER_SLACK_MS = 1;

/** A group of connections the driver runs: a `LocalShard`, a `UdpShard` or a worker. */
export interface Shard {
  /** Opens the first connection alone; throws `cannot connect to …`. */
  probe(): Promise<void>;
  /** Opens the other connections. */
  open(): Promise<void>;
  /** Opens the window. */
  measure(): void;
  /** What was measured since the last take. */
  take(): ShardDelta | Promise<ShardDelta>;
  /** Stops sending, with the last delta. */
  endWindow(): ShardDelta | Promise<ShardDelta>;
  /** Waits for every connection to end; per-connection window counts. */
  drain(aborted: boolean): Promise<number[]>;
}

/** What the driver needs to know about a run. */
export interface DriveSettings {
  pattern: BenchPattern;
  connections: number;
  sizeBytes: number;
  durationMs: number;
  warmupMs: number;
  /** Open-loop rate, or 0. */
  rate: number;
  signal?: AbortSignal;
  onProgress?: (progress: BenchProgress) => void;
  onError?: (error: Error) => void;
  intervals?: readonly BenchIntervalListener[];
}

/** The options every run takes, over TCP or UDP, that the driver uses. */
export type RunOptions = Pick<
  BenchOptions,
  | "connections"
  | "sizeBytes"
  | "durationMs"
  | "warmupMs"
  | "signal"
  | "onProgress"
  | "onError"
  | "intervals"
>;

/**
 * The driver's settings: `options` with {@linkcode RUN_DEFAULTS} for what
 * they leave out, and the run's `pattern` and `rate` (0: closed loop).
 * Nothing is checked here: each run checks its options, in its own order,
 * with {@linkcode checkConnections}, {@linkcode checkMs} and
 * {@linkcode checkIntervals}.
 */
export function driveSettings(
  options: RunOptions,
  pattern: BenchPattern,
  rate: number,
): DriveSettings {
  const {
    connections,
    sizeBytes,
    durationMs,
    warmupMs,
    signal,
    onProgress,
    onError,
    intervals,
  } = withDefaults(options, RUN_DEFAULTS);
  return {
    pattern,
    connections,
    sizeBytes,
    durationMs,
    warmupMs,
    rate,
    signal,
    onProgress,
    onError,
    intervals,
  };
}

/** @throws {RangeError} unless `connections` is a whole number above 0 */
export function checkConnections(connections: number): void {
  if (!Number.isSafeInteger(connections) || connections < 1) {
    throw new RangeError(
      `invalid connections ${connections}: expected a positive integer`,
    );
  }
}

/** @throws {RangeError} unless the option `name`'s `value` is a time ≥ 0 */
export function checkMs(name: string, value: number): void {
  if (!(value >= 0 && Number.isFinite(value))) {
    throw new RangeError(`invalid ${name} ${value}: expected 0 or more`);
  }
}

/** @throws {RangeError} unless every interval is 1 ms or more */
export function checkIntervals(
  intervals: readonly BenchIntervalListener[] = [],
): void {
  for (const { everyMs } of intervals) {
    if (!(everyMs >= 1 && Number.isFinite(everyMs))) {
      throw new RangeError(
        `invalid interval ${everyMs}: expected 1 ms or more`,
      );
    }
  }
}

/** A run's result and the histograms the text report draws. */
export interface BenchOutcome {
  /** The JSON result. */
  result: BenchResult;
  /** Latency over the window (open loop: corrected). */
  histogram: LatencyHistogram;
  /** Open loop: latency from the actual send. */
  uncorrected?: LatencyHistogram;
}

/** Sums of shard deltas over some time. */
class Tally {
  messages = 0;
  bytes = 0;
  lost = 0;
  readonly histogram = new LatencyHistogram();
  readonly uncorrected: LatencyHistogram | undefined;
  constructor(open: boolean) {
    this.uncorrected = open ? new LatencyHistogram() : undefined;
  }
  add(delta: ShardDelta): void {
    this.messages += delta.messages;
    this.bytes += delta.bytes;
    this.lost += delta.lost ?? 0;
    this.histogram.addSparse(delta.histogram);
    if (delta.uncorrected) this.uncorrected?.addSparse(delta.uncorrected);
  }
  reset(): void {
    this.messages = 0;
    this.bytes = 0;
    this.lost = 0;
    this.histogram.reset();
    this.uncorrected?.reset();
  }
}

/**
 * Runs the shards `makeShards` creates (handing them the events to report
 * through) and returns what they measured together.
 */
export async function drive(
  settings: DriveSettings,
  makeShards: (events: ShardEvents) => Shard[],
): Promise<BenchOutcome> {
  const { signal, onProgress, onError, warmupMs, durationMs } = settings;
  let errors = 0;
  const allGone = new AbortController();
  let gone = 0;
  const shards = makeShards({
    onError(error) {
      errors++;
      onError?.(error);
    },
    onAllGone() {
      if (++gone === shards.length) allGone.abort();
    },
  });
  const stopWindow = AbortSignal.any(
    signal ? [signal, allGone.signal] : [allGone.signal],
  );
  const open = settings.rate > 0;
  const totals = new Tally(open);
  let windowMs = 0;
  let perConnection: number[] = [];
  let probed = false;
  try {
    try {
      await shards[0].probe();
      probed = true;
    } catch (err) {
      if (!signal?.aborted) throw err;
    }
    if (probed) {
      const opening = Promise.all(shards.map((shard) => shard.open()));
      await Promise.race([opening, aborted(stopWindow)]);
      await warmUp(warmupMs, stopWindow, () => errors, onProgress);
      if (!stopWindow.aborted) {
        windowMs = await measureWindow(shards, totals, {
          durationMs,
          stopWindow,
          open,
          errors: () => errors,
          onProgress,
          intervals: settings.intervals ?? [],
          messagesOf: (tally) => messagesOf(tally, settings),
        });
      }
    }
  } finally {
    // Stops sending everywhere (also after a failed probe) and drains.
    perConnection = (await Promise.all(
      shards.map((shard) => shard.drain(signal?.aborted ?? false)),
    )).flat();
  }
  const result = benchResult({
    ...settings,
    windowMs,
    messages: messagesOf(totals, settings),
    bytes: totals.bytes,
    histogram: totals.histogram,
    uncorrected: totals.uncorrected,
    errors,
    lost: totals.lost,
    perConnection: fairness(perConnection),
  });
  return {
    result,
    histogram: totals.histogram,
    uncorrected: totals.uncorrected,
  };
}

/**
 * Runs all the connections of a run in this isolate, as one shard
 * (`runBench()`, `runUdpBench()`), and returns what they measured:
 * `makeShard` gets `settings.shard` and every connection's index.
 */
export async function driveHere<O>(
  settings: DriveSettings & { shard: O },
  makeShard: (
    options: O & { first: number; count: number },
    events: ShardEvents,
  ) => Shard,
): Promise<BenchResult> {
  const { shard, connections } = settings;
  const { result } = await drive(settings, (events) => [
    makeShard({ ...shard, first: 0, count: connections }, events),
  ]);
  return result;
}

function messagesOf(
  tally: Tally,
  { pattern, sizeBytes }: { pattern: BenchPattern; sizeBytes: number },
): number {
  return pattern === "stream"
    ? Math.floor(tally.bytes / sizeBytes)
    : tally.messages;
}

function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

/** The warm-up, with progress lines that say so. */
async function warmUp(
  warmupMs: number,
  stopWindow: AbortSignal,
  errors: () => number,
  onProgress?: (progress: BenchProgress) => void,
): Promise<void> {
  const start = performance.now();
  const progress = () =>
    onProgress?.({
      phase: "warmup",
      elapsedMs: performance.now() - start,
      durationMs: warmupMs,
      messages: 0,
      bytes: 0,
      errors: errors(),
    });
  const timer = onProgress && setInterval(progress, PROGRESS_INTERVAL_MS);
  try {
    await delay(warmupMs, stopWindow);
  } finally {
    clearInterval(timer);
  }
}

/**
 * The window: takes deltas from every shard at each boundary of the
 * interval listeners and of the progress line (and at the end), adds them to
 * the totals and to each listener's interval, and calls back.
 *
 * @returns the window's length in ms.
 */
async function measureWindow(
  shards: Shard[],
  totals: Tally,
  window: {
    durationMs: number;
    stopWindow: AbortSignal;
    open: boolean;
    errors: () => number;
    onProgress?: (progress: BenchProgress) => void;
    intervals: readonly BenchIntervalListener[];
    messagesOf: (tally: Tally) => number;
  },
): Promise<number> {
  const { durationMs, stopWindow, open, errors, onProgress } = window;
  const listeners = window.intervals.map((listener) => ({
    listener,
    tally: new Tally(open),
    startMs: 0,
    nextMs: listener.everyMs,
  }));
  let progressNextMs = onProgress ? PROGRESS_INTERVAL_MS : Infinity;
  for (const shard of shards) shard.measure();
  const startEpochMs = performance.timeOrigin + performance.now();
  const start = performance.now();
  for (;;) {
    const nextMs = Math.min(
      durationMs,
      progressNextMs,
      ...listeners.map((l) => l.nextMs),
    );
    await delay(nextMs - (performance.now() - start), stopWindow);
    const last = stopWindow.aborted ||
      performance.now() - start >= durationMs - TIMER_SLACK_MS;
    const deltas = await Promise.all(
      shards.map((shard) => last ? shard.endWindow() : shard.take()),
    );
    const nowMs = performance.now() - start;
    for (const delta of deltas) {
      totals.add(delta);
      for (const l of listeners) l.tally.add(delta);
    }
    for (const l of listeners) {
      if (!last && nowMs < l.nextMs - TIMER_SLACK_MS) continue;
      if (nowMs > l.startMs) {
        const interval: BenchInterval = {
          startMs: l.startMs,
          endMs: nowMs,
          startEpochMs: startEpochMs + l.startMs,
          endEpochMs: startEpochMs + nowMs,
          messages: window.messagesOf(l.tally),
          bytes: l.tally.bytes,
          errors: errors(),
          histogram: l.tally.histogram,
          uncorrected: l.tally.uncorrected,
        };
        l.listener.onInterval(interval);
      }
      l.tally.reset();
      l.startMs = nowMs;
      while (l.nextMs <= nowMs + TIMER_SLACK_MS) l.nextMs += l.listener.everyMs;
    }
    if (!last && nowMs >= progressNextMs - TIMER_SLACK_MS) {
      onProgress?.({
        phase: "measure",
        elapsedMs: nowMs,
        durationMs,
        messages: window.messagesOf(totals),
        bytes: totals.bytes,
        errors: errors(),
      });
      while (progressNextMs <= nowMs + TIMER_SLACK_MS) {
        progressNextMs += PROGRESS_INTERVAL_MS;
      }
    }
    if (last) return nowMs;
  }
}
