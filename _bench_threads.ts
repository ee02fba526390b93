/**
 * `bench --threads N` (private to the CLI): the run's connections split over
 * N worker isolates (`_bench_worker.ts`), each created after
 * {@linkcode boundIoTick} so its runtime takes a bounded number of I/O
 * events per tick and latency measures the server, not our own queue. The
 * driver is the one `runBench()` uses; each worker is a {@linkcode Shard}
 * (TCP connections, or UDP sockets with `bench --udp`).
 *
 * @module
 */

import type { Shard } from "./_bench_driver.ts";
import type { ShardDelta, ShardEvents, ShardOptions } from "./_bench_shard.ts";
import type { UdpShardOptions } from "./_udp_bench.ts";

/** What the main isolate asks a bench worker. */
export type WorkerRequest =
  | { type: "init"; options: ShardOptions | UdpShardOptions }
  | { type: "probe"; id: number }
  | { type: "open"; id: number }
  | { type: "measure" }
  | { type: "take"; id: number }
  | { type: "end"; id: number }
  | { type: "drain"; id: number; aborted: boolean };

/** An error as it crosses isolates: its chain of messages, names and codes. */
export interface PostedError {
  name: string;
  message: string;
  kind?: string;
  code?: string;
  cause?: PostedError;
}

/** What a bench worker tells the main isolate. */
export type WorkerReply =
  | { type: "done"; id: number; value?: ShardDelta | number[] }
  | { type: "failed"; id: number; error: PostedError }
  | { type: "error"; error: PostedError }
  | { type: "allGone" };

/** `err` and its causes as plain data. */
export function postError(err: unknown): PostedError {
  if (!(err instanceof Error)) return { name: "Error", message: String(err) };
  const { kind, code } = err as { kind?: string; code?: string };
  return {
    name: err.name,
    message: err.message,
    ...(kind === undefined ? {} : { kind }),
    ...(code === undefined ? {} : { code }),
    ...(err.cause === undefined ? {} : { cause: postError(err.cause) }),
  };
}

/** An Error like the one posted, chain, names and codes included. */
export function revive(posted: PostedError): Error {
  const err = new Error(posted.message, {
    cause: posted.cause && revive(posted.cause),
  });
  err.name = posted.name;
  if (posted.kind !== undefined) Object.assign(err, { kind: posted.kind });
  if (posted.code !== undefined) Object.assign(err, { code: posted.code });
  return err;
}

/** A worker running part of the connections, seen from the main isolate. */
export class WorkerShard implements Shard, AsyncDisposable {
  #worker: Worker;
  #pending = new Map<
    number,
    { resolve: (value: unknown) => void; reject: (err: Error) => void }
  >();
  #nextId = 0;
  #dead: Error | undefined;

  /** Starts worker `n` for `options`' connections, reporting through `events`. */
  constructor(
    n: number,
    options: ShardOptions | UdpShardOptions,
    events: ShardEvents,
  ) {
    this.#worker = new Worker(
      new URL("./_bench_worker.ts", import.meta.url),
      { type: "module", name: `bench-${n}` },
    );
    this.#worker.onmessage = (event: MessageEvent<WorkerReply>) => {
      const reply = event.data;
      if (reply.type === "error") events.onError(revive(reply.error));
      else if (reply.type === "allGone") events.onAllGone();
      else {
        const waiter = this.#pending.get(reply.id);
        this.#pending.delete(reply.id);
        if (reply.type === "done") waiter?.resolve(reply.value);
        else waiter?.reject(revive(reply.error));
      }
    };
    this.#worker.onerror = (event) => {
      event.preventDefault();
      this.#die(new Error(`bench worker ${n} failed: ${event.message}`));
    };
    this.#worker.onmessageerror = () =>
      this.#die(new Error(`bench worker ${n} sent an unreadable message`));
    this.#post({ type: "init", options });
  }

  #die(err: Error): void {
    this.#dead ??= err;
    for (const { reject } of this.#pending.values()) reject(err);
    this.#pending.clear();
  }

  #post(request: WorkerRequest): void {
    this.#worker.postMessage(request);
  }

  #ask<T>(request: { type: string; aborted?: boolean }): Promise<T> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    const { promise, resolve, reject } = Promise.withResolvers<T>();
    this.#pending.set(id, {
      resolve: resolve as (value: unknown) => void,
      reject,
    });
    this.#post({ ...request, id } as WorkerRequest);
    return promise;
  }

  /** Opens the worker's first connection alone. */
  probe(): Promise<void> {
    return this.#ask({ type: "probe" });
  }
  /** Opens the worker's connections. */
  open(): Promise<void> {
    return this.#ask({ type: "open" });
  }
  /** Opens the window. */
  measure(): void {
    this.#post({ type: "measure" });
  }
  /** What the worker measured since the last take. */
  take(): Promise<ShardDelta> {
    return this.#ask({ type: "take" });
  }
  /** Stops sending, with the last delta. */
  endWindow(): Promise<ShardDelta> {
    return this.#ask({ type: "end" });
  }
  /** Drains the worker's connections. */
  drain(aborted: boolean): Promise<number[]> {
    return this.#ask({ type: "drain", aborted });
  }

  /** Ends the worker. */
  [Symbol.asyncDispose](): Promise<void> {
    this.#worker.terminate();
    this.#die(new Error("bench worker stopped"));
    return Promise.resolve();
  }
}

/**
 * Splits `connections` as evenly as possible over `threads` workers: worker
 * i gets connections `first` to `first + count - 1`. Never more workers than
 * connections.
 */
export function split(
  connections: number,
  threads: number,
): { first: number; count: number }[] {
  const n = Math.min(threads, connections);
  const shares = [];
  for (let i = 0, first = 0; i < n; i++) {
    const count = Math.floor(connections / n) + (i < connections % n ? 1 : 0);
    shares.push({ first, count });
    first += count;
  }
  return shares;
}
