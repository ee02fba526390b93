/**
 * The `tcpecho server` worker pool, main isolate's side: starts N worker
 * isolates (`_server_worker.ts`), each serving on the same address, whose
 * runtimes take a bounded number of I/O events per tick (see
 * {@linkcode boundIoTick}); sums their reports; stops them; and turns a
 * worker's death into an error for the whole server. The messages are in
 * `_server_messages.ts`. Private to
 * `_server_command.ts` (and `_server_run.ts`, which runs it for the CLI).
 *
 * @module
 */
import { Worker } from "node:worker_threads";
import type { FromWorker, ToWorker } from "./_server_messages.ts";
import type { WarningCode } from "./_summary.ts";
import { SharedConnLimits } from "./_limits.ts";
import type { MetricsSnapshot } from "./_metrics.ts";
import { formatAddr } from "./io.ts";
import type { LogFormat, LogLevelName } from "./log.ts";
import {
  SERVE_DEFAULTS,
  type ServeOptions,
  type ServerStats,
} from "./server.ts";

/** Adds up the workers' counters: the one place totals are made. */
export function sumStats(all: readonly ServerStats[]): ServerStats {
  const total = { active: 0, served: 0, refused: 0, bytesIn: 0, bytesOut: 0 };
  for (const stats of all) {
    total.active += stats.active;
    total.served += stats.served;
    total.refused += stats.refused;
    total.bytesIn += stats.bytesIn;
    total.bytesOut += stats.bytesOut;
  }
  return total;
}

/** Options for {@linkcode ServerPool.start}. */
export interface PoolOptions {
  /** How many workers, each with its own listener; above 1, TCP on Linux only. */
  workers: number;
  /** What each worker serves (plain data: `onConnState` cannot cross). */
  serve: ServeOptions;
  /** The workers' log level and format. */
  level: LogLevelName;
  format: LogFormat;
  /** Takes the workers' log lines, in batches of whole lines. */
  onLog(text: string): void;
  /** Takes the workers' summarised warnings: `count` of `code`, `peer` the first. */
  onWarning?(
    peer: string,
    code: WarningCode,
    reason: string,
    count: number,
  ): void;
  /** Whether the workers record metrics, for {@linkcode ServerPool.snapshots}. */
  metrics?: boolean;
  /**
   * Told once every worker stopped accepting after
   * {@linkcode ServerPool.close}: how many connections the drain waits for,
   * in all.
   */
  onDraining?(connections: number): void;
}

/**
 * Each worker's V8 young generation, in MiB. V8 grows it to tens of MiB
 * under a burst of allocations (9,000 connections opening) and keeps it:
 * ~4 KiB of resident memory per idle connection in the harness's idle test.
 * At 16 MiB an idle connection costs ~8.5 KiB in all instead of ~12.5, and
 * echo throughput did not move (README, "Fairness and workers"). This is why
 * the workers are `node:worker_threads` ones: Deno gives only those
 * `resourceLimits`.
 */
const YOUNG_GENERATION_MB = 16;

/**
 * One worker's answers to one kind of request, which it gives in order.
 * Nothing is kept per request once answered, and nothing waits on a promise
 * that outlives the requests: {@linkcode Replies.end} settles those still
 * waiting, and answers those to come at once.
 */
class Replies<T> {
  readonly #waiting: PromiseWithResolvers<T>[] = [];
  #end: { last: T } | { error: Error } | undefined;

  /** The answer to a request just sent (or, once it ended, the last word). */
  wait(): Promise<T> {
    const end = this.#end;
    if (end !== undefined) {
      return "error" in end
        ? Promise.reject(end.error)
        : Promise.resolve(end.last);
    }
    const waiter = Promise.withResolvers<T>();
    this.#waiting.push(waiter);
    return waiter.promise;
  }

  /** Its next answer, to the oldest request (none after the end). */
  answer(value: T): void {
    this.#waiting.shift()?.resolve(value);
  }

  /**
   * It answers no more: every request, waiting or to come, gets `last`, or
   * fails with `error` when there is none.
   */
  end(last: T | undefined, error: Error): void {
    this.#end ??= last === undefined ? { error } : { last };
    for (const waiter of this.#waiting.splice(0)) {
      if (last === undefined) waiter.reject(error);
      else waiter.resolve(last);
    }
  }
}

/** The main isolate's view of one worker. */
class Member {
  readonly worker: Worker;
  readonly index: number;
  /** Resolves once it listens; rejects if it failed to start or died. */
  readonly listening = Promise.withResolvers<
    Extract<FromWorker, { type: "listening" }>
  >();
  /** Resolves, once it stopped accepting, with the connections it waits for. */
  readonly draining = Promise.withResolvers<number>();
  /** Resolves with its final counters; rejects if it died. */
  readonly stopped = Promise.withResolvers<ServerStats>();
  /** Answers to `stats` requests; once it stopped, its final counters. */
  readonly statsReplies = new Replies<ServerStats>();
  /** Answers to `metrics` requests; once it stopped, its final metrics. */
  readonly metricsReplies = new Replies<MetricsSnapshot>();
  /** Settles when it can send nothing more (stopped, failed or dead). */
  readonly gone = Promise.withResolvers<void>();
  alive = true;

  constructor(worker: Worker, index: number) {
    this.worker = worker;
    this.index = index;
    this.listening.promise.catch(() => {});
    this.stopped.promise.catch(() => {});
  }

  post(message: ToWorker): void {
    if (this.alive) this.worker.postMessage(message);
  }

  /**
   * It can send nothing more: requests still waiting, and those to come, get
   * its final counters and metrics (when it stopped and said them) or fail.
   */
  end(stats?: ServerStats, snapshot?: MetricsSnapshot): void {
    this.alive = false;
    const error = new Error(`worker ${this.index + 1} is gone`);
    this.statsReplies.end(stats, error);
    this.metricsReplies.end(snapshot, error);
    this.gone.resolve();
  }
}

/**
 * A running pool of server workers: {@linkcode ServerPool.start} resolves
 * once every worker listens. Like a `Server`: `addr`, `finished`, `close()`.
 */
export class ServerPool implements AsyncDisposable {
  /** Where every worker listens. */
  readonly addr: Deno.NetAddr | Deno.UnixAddr;
  /**
   * With TLS, why the workers cannot release the sockets of connections
   * they close (the first worker that said so); `undefined` if they can.
   */
  readonly tlsLinger: string | undefined;
  /**
   * Resolves with the totals once every worker stopped after
   * {@linkcode ServerPool.close}; rejects once a worker died (or failed) and
   * the others stopped: the server is down either way.
   */
  readonly finished: Promise<ServerStats>;
  readonly #members: Member[];
  readonly #onDraining: ((connections: number) => void) | undefined;
  readonly #metrics: boolean;
  #closing: Promise<ServerStats> | undefined;
  #failure: Error | undefined;

  private constructor(
    members: Member[],
    listening: Extract<FromWorker, { type: "listening" }>[],
    onDraining: ((connections: number) => void) | undefined,
    metrics: boolean,
  ) {
    this.#members = members;
    this.addr = listening[0].addr;
    this.tlsLinger = listening.find((l) => l.tlsLinger)?.tlsLinger;
    this.#onDraining = onDraining;
    this.#metrics = metrics;
    this.finished = this.#watch();
    this.finished.catch(() => {});
  }

  /**
   * Starts the workers and waits until each listens.
   *
   * @throws {Error} `cannot listen on ADDR` (with the OS error as `cause`)
   *   when the address is taken or bad; or the first worker's failure; the
   *   workers already started are stopped first
   */
  static async start(options: PoolOptions): Promise<ServerPool> {
    const { workers, serve, level, format } = options;
    let port = serve.port ?? SERVE_DEFAULTS.port;
    const reusePort = workers > 1;
    if (reusePort) port = claimPort(serve.hostname, port);
    // As serve() counts: all connections at accept, by address once the
    // address is known (after a PROXY header).
    const maxConns = serve.maxConns ?? SERVE_DEFAULTS.maxConns;
    const maxConnsPerIp = serve.maxConnsPerIp ?? SERVE_DEFAULTS.maxConnsPerIp;
    const limits = SharedConnLimits.create(maxConns, 0);
    const ipLimits = maxConnsPerIp > 0
      ? SharedConnLimits.create(Infinity, maxConnsPerIp, maxConns)
      : undefined;
    const members: Member[] = [];
    for (let index = 0; index < workers; index++) {
      const member = spawn(index, options);
      members.push(member);
      member.post({
        type: "start",
        index,
        options: { ...serve, port, reusePort },
        limits,
        ipLimits,
        metrics: options.metrics ?? false,
        level,
        format,
      });
    }
    const started = await Promise.allSettled(
      members.map((m) => m.listening.promise),
    );
    const failed = started.find((s) => s.status === "rejected");
    if (failed !== undefined) {
      await stopAll(members);
      throw failed.reason;
    }
    const listening = (started as PromiseFulfilledResult<
      Extract<FromWorker, { type: "listening" }>
    >[]).map((s) => s.value);
    return new ServerPool(
      members,
      listening,
      options.onDraining,
      options.metrics ?? false,
    );
  }

  /**
   * Whether every worker accepts clients: false from {@linkcode
   * ServerPool.close} on, and from the moment a worker died or stopped (the
   * others are then told to stop).
   */
  get accepting(): boolean {
    return this.#closing === undefined && this.#members.every((m) => m.alive);
  }

  /**
   * The workers' counters now, summed (each worker answers a request; one
   * that stopped, with its final counters).
   *
   * @throws {Error} when a worker died, before it answered or before the
   *   call: the totals would be partial
   */
  async stats(): Promise<ServerStats> {
    return sumStats(await this.#ask("stats", (m) => m.statsReplies));
  }

  /**
   * Each worker's metrics now (started with `metrics`): add them up with
   * `sumSnapshots`.
   *
   * @throws {Error} when a worker dies before it answers; or, asking no
   *   worker, when the pool was started without `metrics`
   */
  snapshots(): Promise<MetricsSnapshot[]> {
    if (!this.#metrics) {
      return Promise.reject(
        new Error("no metrics: the pool was started without them"),
      );
    }
    return this.#ask("metrics", (m) => m.metricsReplies);
  }

  /**
   * Asks every worker, and waits for all the answers; a worker that stopped
   * (drained) answers with what it said last, one that died fails the lot.
   */
  #ask<T>(
    type: "stats" | "metrics",
    replies: (m: Member) => Replies<T>,
  ): Promise<T[]> {
    return Promise.all(this.#members.map((m) => {
      m.post({ type }); // not once it is gone: then its replies answer
      return replies(m).wait();
    }));
  }

  /**
   * Stops gracefully: every worker stops accepting, waits for its clients
   * (up to the shutdown timeout), and reports. Idempotent.
   *
   * @returns {@linkcode ServerPool.finished}
   */
  close(): Promise<ServerStats> {
    this.#closing ??= (async () => {
      const live = this.#members.filter((m) => m.alive);
      for (const m of live) m.post({ type: "stop" });
      const waiting = await Promise.all(
        live.map((m) =>
          Promise.race([m.draining.promise, m.gone.promise.then(() => 0)])
        ),
      );
      this.#onDraining?.(waiting.reduce((a, b) => a + b, 0));
      return await this.finished;
    })();
    return this.#closing;
  }

  /** Closes; a worker's failure is for {@linkcode ServerPool.finished} to tell. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close().catch(() => {});
  }

  /** Settles `finished`: the totals, or the first failure once all stopped. */
  async #watch(): Promise<ServerStats> {
    const members = this.#members;
    const results = members.map((m) =>
      m.stopped.promise.catch((err: Error) => {
        // One worker down: stop the others gracefully, then fail.
        this.#failure ??= err;
        for (const other of members) other.post({ type: "stop" });
        return undefined;
      })
    );
    const all = await Promise.all(results);
    await stopAll(members);
    if (this.#failure !== undefined) throw this.#failure;
    return sumStats(all.filter((s) => s !== undefined));
  }
}

/**
 * Checks that nothing listens on `hostname:port` (port `0`: picks a free
 * one) by binding it alone, without `SO_REUSEPORT`, and lets go: the workers
 * then bind it together. Without this, a second server on the port would
 * silently share it.
 *
 * @returns the port
 * @throws {Error} `cannot listen on ADDR`, with the OS error as `cause`
 */
function claimPort(
  hostname: string = SERVE_DEFAULTS.hostname,
  port: number,
): number {
  let probe: Deno.Listener;
  try {
    probe = Deno.listen({ hostname, port });
  } catch (cause) {
    const where = formatAddr({ transport: "tcp", hostname, port });
    throw new Error(`cannot listen on ${where}`, { cause });
  }
  const claimed = (probe.addr as Deno.NetAddr).port;
  probe.close();
  return claimed;
}

/** Starts worker `index` and routes what it says to its {@linkcode Member}. */
function spawn(index: number, options: PoolOptions): Member {
  const worker = new Worker(new URL("./_server_worker.ts", import.meta.url), {
    name: `server ${index + 1}`,
    resourceLimits: { maxYoungGenerationSizeMb: YOUNG_GENERATION_MB },
  });
  const m = new Member(worker, index);
  const name = `worker ${index + 1} of ${options.workers}`;
  const die = (err: Error) => {
    if (!m.alive) return;
    m.alive = false;
    // What it said last came before: end it now, and its connections with it.
    void worker.terminate();
    m.listening.reject(err);
    m.stopped.reject(err);
    m.end();
  };
  worker.on("message", (data: FromWorker) => {
    switch (data.type) {
      case "listening":
        return m.listening.resolve(data);
      case "failed":
        return die(chain(data.messages));
      case "log":
        return options.onLog(data.text);
      case "stats":
        return m.statsReplies.answer(data.stats);
      case "metrics":
        return m.metricsReplies.answer(data.snapshot);
      case "warning":
        return options.onWarning?.(
          data.peer,
          data.code,
          data.reason,
          data.count,
        );
      case "draining":
        return m.draining.resolve(data.connections);
      case "stopped":
        m.stopped.resolve(data.stats);
        return m.end(data.stats, data.snapshot);
      case "crashed": {
        const err = new Error(`${name} failed: ${data.message}`);
        if (data.stack !== undefined) err.stack = data.stack;
        return die(err);
      }
    }
  });
  // A worker catches its own uncaught errors and says `crashed` (after its
  // last logs); these are for what escapes that, its module failing to
  // load, say, or an exit nobody asked for.
  worker.on("error", (err: Error) => die(new Error(`${name} failed: ${err}`)));
  worker.on(
    "exit",
    (code: number) => die(new Error(`${name} exited with code ${code}`)),
  );
  worker.on(
    "messageerror",
    () => die(new Error(`${name}: unreadable message`)),
  );
  return m;
}

/** An `Error` whose message and causes are `messages`, outermost first. */
function chain(messages: string[]): Error {
  let err: Error | undefined;
  for (const message of messages.toReversed()) {
    err = new Error(message, err === undefined ? undefined : { cause: err });
  }
  return err ?? new Error("worker failed");
}

/** Asks every live worker to stop, waits until each is gone, terminates all. */
async function stopAll(members: Member[]): Promise<void> {
  for (const m of members) m.post({ type: "stop" });
  await Promise.all(members.map((m) => m.gone.promise));
  await Promise.all(members.map((m) => m.worker.terminate()));
}
