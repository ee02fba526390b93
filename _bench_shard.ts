/**
 * The connections of a load-test run that live in one isolate (private to
 * `bench.ts`): {@linkcode LocalShard} opens them, runs their loops, hands
 * out what they measured since the last look, and drains them. `runBench()`
 * runs one in the caller's isolate; `bench --threads N` runs one in each of
 * N workers (`_bench_worker.ts`), driven by the same driver. Its measuring
 * window, {@linkcode ShardWindow}, is the UDP shard's too (`_udp_bench.ts`).
 *
 * @module
 */

import type { LatencyHistogram, SparseCounts } from "./_histogram.ts";
import { Payload } from "./_payload.ts";
import {
  connectCycles,
  EchoError,
  MEASURE,
  openConnection,
  type Phase,
  pingpong,
  Run,
  stream,
} from "./_bench_connection.ts";
import type { ConnectOptions } from "./client.ts";

/** Connects opened at once by one shard. */
const CONNECT_CONCURRENCY = 32;

/** A shard's settings: plain data, so they can be posted to a worker. */
export interface ShardOptions {
  /** Where to connect (no `signal`: the shard has its own). */
  target: Omit<ConnectOptions, "signal">;
  /** The load pattern. */
  pattern: "pingpong" | "stream" | "connect";
  /** Message size in bytes. */
  sizeBytes: number;
  /** Messages are lines. */
  lines: boolean;
  /** Connections in the whole run. */
  connections: number;
  /** This shard's connections are `first` to `first + count - 1`. */
  first: number;
  /** How many connections this shard runs. */
  count: number;
  /** Open loop: messages per second over the whole run; 0 = closed loop. */
  rate: number;
  /** The open loop's origin, ms since the epoch (`performance.timeOrigin + performance.now()`). */
  scheduleEpochMs: number;
  /** How long connections get after the window to finish and see the close. */
  drainTimeoutMs: number;
}

/** What a shard measured in the window since its last delta. */
export interface ShardDelta {
  /** Messages completed (stream: 0; the driver counts bytes). */
  messages: number;
  /** Echoed bytes received. */
  bytes: number;
  /** Latency (open loop: from the intended send time). */
  histogram: SparseCounts;
  /** Open loop: latency from the actual send; else null. */
  uncorrected: SparseCounts | null;
  /** UDP: replies lost (`_udp_bench.ts`); absent over TCP. */
  lost?: number;
}

/** What a shard counts in the window between two deltas. */
export interface WindowCounts {
  /** Messages completed. */
  messages: number;
  /** Echoed bytes received. */
  bytes: number;
  /** Latency (open loop: from the intended send time). */
  readonly histogram: LatencyHistogram;
  /** Open loop: latency from the actual send. */
  readonly uncorrected?: LatencyHistogram;
  /** UDP: replies lost. */
  lost?: number;
}

/** `counts` as a {@linkcode ShardDelta}; they count afresh from zero. */
function takeDelta(counts: WindowCounts): ShardDelta {
  const delta: ShardDelta = {
    messages: counts.messages,
    bytes: counts.bytes,
    histogram: counts.histogram.toSparse(),
    uncorrected: counts.uncorrected?.toSparse() ?? null,
  };
  counts.messages = 0;
  counts.bytes = 0;
  counts.histogram.reset();
  counts.uncorrected?.reset();
  if (counts.lost !== undefined) {
    delta.lost = counts.lost;
    counts.lost = 0;
  }
  return delta;
}

/** A run as the window of its shard sees it: the counts, the phase, the stop. */
export interface WindowRun extends WindowCounts {
  /** Where the run is; the window moves it from warm-up to measure. */
  phase: Phase;
  /** Ends the phase of sending. */
  stop(): void;
}

/**
 * The measuring window of a shard, the same for TCP connections
 * ({@linkcode LocalShard}) and UDP sockets (`_udp_bench.ts`): open it, take
 * what was counted since the last look, close it.
 */
export class ShardWindow {
  readonly #run: WindowRun;

  /** The window over `run`'s counts. */
  constructor(run: WindowRun) {
    this.#run = run;
  }

  /** Opens the measuring window: from now on, what the run does counts. */
  measure(): void {
    this.#run.phase = MEASURE;
  }

  /** What was measured since the last call, and starts counting afresh. */
  take(): ShardDelta {
    return takeDelta(this.#run);
  }

  /** Closes the window (no more sends) and takes the last delta. */
  endWindow(): ShardDelta {
    this.#run.stop();
    return this.take();
  }
}

/** What a shard tells as it runs. Must not throw. */
export interface ShardEvents {
  /** Each error counted (failed connect, reset, mismatch, drain timeout). */
  onError(error: Error): void;
  /** Once every connection of the shard has ended (the window may end early). */
  onAllGone(): void;
}

/** One isolate's connections of a run. */
export class LocalShard extends ShardWindow {
  readonly #options: ShardOptions;
  readonly #run: Run;
  #next: number;
  #opening: Promise<void> = Promise.resolve();
  #opened = false;
  #gone = false;

  /** The connections `options.first…` of a run, not opened yet. */
  constructor(options: ShardOptions, events: ShardEvents) {
    const { pattern, sizeBytes, lines, connections, rate, target } = options;
    const run = new Run({
      payload: new Payload(sizeBytes, { lines }),
      loop: pattern === "pingpong"
        ? pingpong
        : pattern === "stream"
        ? stream
        : connectCycles,
      connections,
      rate,
      scheduleStartMs: options.scheduleEpochMs - performance.timeOrigin,
      open: (signal) => openConnection({ ...target, signal }),
      onError: events.onError,
    });
    super(run);
    this.#options = options;
    this.#next = options.first;
    this.#run = run;
    this.#run.onAllGone = () => {
      if (!this.#opened || this.#gone) return;
      this.#gone = true;
      events.onAllGone();
    };
  }

  /**
   * Opens the first connection alone, so a dead target is one error.
   *
   * @throws {Error} `cannot connect to HOST:PORT`
   */
  async probe(): Promise<void> {
    const conn = await openConnection({
      ...this.#options.target,
      signal: this.#run.interrupt.signal,
    });
    this.#run.start(conn, this.#next++);
  }

  /**
   * Opens the rest, {@linkcode CONNECT_CONCURRENCY} at a time, each started
   * as it opens; a failed connect is an error of the run. Resolves when all
   * are open (or failed), or at once once the run stops.
   */
  open(): Promise<void> {
    const { first, count, target } = this.#options;
    const end = first + count;
    const run = this.#run;
    const opener = async () => {
      while (this.#next < end && !run.stopping.signal.aborted) {
        const index = this.#next++;
        run.connectsPending++;
        try {
          const conn = await openConnection({
            ...target,
            signal: run.interrupt.signal,
          });
          if (run.stopping.signal.aborted) conn[Symbol.dispose]();
          else run.start(conn, index);
        } catch (err) {
          if (!run.interrupt.signal.aborted) {
            run.fail(new Error(`connection ${index} failed`, { cause: err }));
          }
        } finally {
          run.connectsPending--;
        }
      }
    };
    const openers = [];
    for (let i = 0; i < Math.min(CONNECT_CONCURRENCY, end - this.#next); i++) {
      openers.push(opener());
    }
    this.#opening = Promise.all(openers).then(() => {
      this.#opened = true;
      run.checkAllGone();
    });
    return this.#opening;
  }

  /**
   * Ends the run: connections finish their message, half-close and wait for
   * the server's close; whoever is still open after the drain timeout is
   * interrupted (an error unless `aborted`: Ctrl+C).
   *
   * @returns per connection, in index order, what it did in the window:
   *   messages (stream: MiB); 0 for one that never connected.
   */
  async drain(aborted: boolean): Promise<number[]> {
    const run = this.#run;
    const { drainTimeoutMs, first, count, pattern } = this.#options;
    run.stop();
    const timer = setTimeout(() => {
      run.interrupt.abort();
      for (const connection of run.live) {
        connection.interrupted = true;
        if (!aborted) {
          const { index, halfClosed } = connection;
          run.fail(
            halfClosed
              ? new EchoError(
                `connection ${index}: server did not close within ${drainTimeoutMs} ms of the half-close`,
                "server did not close after the half-close",
              )
              : new EchoError(
                `connection ${index}: no echo within ${drainTimeoutMs} ms after the window`,
                "no echo",
              ),
          );
        }
        connection.conn?.[Symbol.dispose]();
      }
    }, drainTimeoutMs);
    try {
      await this.#opening;
      await Promise.all(run.tasks); // runConnection never rejects
    } finally {
      clearTimeout(timer);
    }
    const counts = new Array<number>(count).fill(0);
    for (const c of run.connections) {
      counts[c.index - first] = pattern === "stream"
        ? c.windowBytes / 2 ** 20
        : c.windowMessages;
    }
    return counts;
  }
}
