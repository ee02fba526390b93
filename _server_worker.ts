/**
 * One worker of the `tcpecho server` pool (see `_server_pool.ts`): runs a
 * server in this isolate, whose runtime was started with a bounded I/O tick,
 * and speaks the pool's message protocol. It exports nothing.
 *
 * Its log lines go to the main isolate in batches (`log` messages), which
 * writes them whole. An error nothing caught is flushed and reported as
 * `crashed`, and the worker closes: the pool then stops the server.
 *
 * @module
 */
import { parentPort } from "node:worker_threads";
import { configureSync, getLogger } from "@logtape/logtape";
import type { WarningCode, WarningReporter } from "./_summary.ts";
import { SharedConnLimits } from "./_limits.ts";
import { MetricsRecorder } from "./_metrics.ts";
import type { FromWorker, ToWorker } from "./_server_messages.ts";
import { tlsReleaseUnavailable } from "./_tls_release.ts";
import { BatchSink, LOG_LEVELS } from "./log.ts";
import {
  type ConnEvent,
  serveInPool,
  type ServeOptions,
  type Server,
} from "./server.ts";

/**
 * Test hook (server_pool_test.ts): with `TCPECHO_TEST_CRASH=stats` in the
 * environment, worker 1 logs a warning and throws an uncaught error when
 * asked for its stats (SIGUSR1); with `=open`, when it opens a connection.
 * Read only when permission for it was granted (`deno run -A`, as the tests
 * run it); a compiled binary never has it.
 */
const CRASH_VAR = "TCPECHO_TEST_CRASH";

/** How often a worker sends the count of its summarised warnings, during a flood. */
const WARNINGS_MS = 100;

function post(message: FromWorker): void {
  parentPort!.postMessage(message);
}

let server: Server | undefined;
let sink: BatchSink | undefined;
let recorder: MetricsRecorder | undefined;
let crashOn: string | undefined;
let stopping = false;

function crash(why: string): never {
  getLogger(["tcpecho", "server"]).warn("crashing on purpose ({why})", {
    why,
  });
  throw new Error(`test crash on ${why}`);
}

function start(message: Extract<ToWorker, { type: "start" }>): void {
  const { index, options, limits, ipLimits, metrics, level, format } = message;
  sink = new BatchSink(format, (text) => post({ type: "log", text }));
  configureSync({
    sinks: { out: sink.sink },
    loggers: [
      { category: ["tcpecho"], lowestLevel: LOG_LEVELS[level], sinks: ["out"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["out"] },
    ],
  });
  if (index === 0) crashOn = testCrash();
  const serving: ServeOptions = { ...options };
  if (metrics) {
    recorder = new MetricsRecorder();
    serving.onConnState = recorder.onConnState;
  }
  if (crashOn === "open") {
    const record = serving.onConnState;
    serving.onConnState = (event: ConnEvent) => {
      record?.(event);
      if (event.state === "open") setTimeout(() => crash("open"));
    };
  }
  try {
    server = serveInPool(serving, {
      limits: new SharedConnLimits(limits),
      ipLimits: ipLimits && new SharedConnLimits(ipLimits),
      warnings: new WarningForward(),
      faultStream: index,
      onDraining(connections) {
        sink?.flush();
        post({ type: "draining", connections });
      },
    });
  } catch (err) {
    sink.flush();
    post({ type: "failed", messages: causes(err) });
    return;
  }
  const tls = options.cert !== undefined && options.key !== undefined;
  const tlsLinger = tls ? tlsReleaseUnavailable() : undefined;
  post({ type: "listening", addr: server.addr, tlsLinger });
}

/**
 * Sends this worker's summarised warnings (refusals, failed handshakes, bad
 * PROXY headers) to the pool, which logs them summarised for all workers: the
 * first of a kind at once, then the count of the others every
 * {@linkcode WARNINGS_MS} while they come (a flood is a message per kind
 * every 100 ms, not one per connection). The worker's log lines logged
 * before go first.
 */
class WarningForward implements WarningReporter {
  readonly #pending = new Map<
    WarningCode,
    { peer: string; reason: string; count: number }
  >();
  #timer: ReturnType<typeof setTimeout> | undefined;

  warn(peer: string, code: WarningCode, reason: string): void {
    const pending = this.#pending.get(code);
    if (pending !== undefined) {
      pending.count++;
      pending.reason = reason;
      return;
    }
    if (this.#timer === undefined) {
      // The first of a while: said now, so that its line comes in order.
      this.#send([[code, { peer, reason, count: 1 }]]);
      this.#timer = setTimeout(() => this.#flush(), WARNINGS_MS);
    } else {
      this.#pending.set(code, { peer, reason, count: 1 });
    }
  }

  #flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#pending.size === 0) return;
    const pending = [...this.#pending];
    this.#pending.clear();
    this.#send(pending);
    this.#timer = setTimeout(() => this.#flush(), WARNINGS_MS);
  }

  #send(
    warnings: [WarningCode, { peer: string; reason: string; count: number }][],
  ): void {
    sink?.flush();
    for (const [code, { peer, reason, count }] of warnings) {
      post({ type: "warning", peer, code, reason, count });
    }
  }

  /** Sends what is counted, and stops the timer (the server stopped). */
  [Symbol.dispose](): void {
    this.#flush();
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

async function stop(): Promise<void> {
  if (server === undefined || stopping) return;
  stopping = true;
  await server.close();
  sink?.flush();
  const stats = { ...server.stats };
  post({ type: "stopped", stats, snapshot: recorder?.snapshot(stats) });
}

parentPort!.on("message", (data: ToWorker) => {
  switch (data.type) {
    case "start":
      return start(data);
    case "stats":
      if (crashOn === "stats") crash("stats");
      sink?.flush(); // what was logged before the request comes first
      if (server !== undefined) {
        post({ type: "stats", stats: { ...server.stats } });
      }
      return;
    case "metrics":
      // ServerPool.snapshots() asks only workers started with `metrics`.
      if (recorder === undefined) {
        throw new Error("asked for metrics, but started without them");
      }
      if (server !== undefined) {
        post({ type: "metrics", snapshot: recorder.snapshot(server.stats) });
      }
      return;
    case "stop":
      return void stop(); // every failure in it ends up in the handlers below
  }
});

// Anything uncaught: flush what was logged and say so, last; the pool then
// terminates this worker. Until then it accepts nothing more.
function crashed(error: unknown, message: string): void {
  try {
    sink?.flush();
  } finally {
    post({
      type: "crashed",
      message,
      stack: error instanceof Error ? error.stack : undefined,
    });
  }
}

globalThis.addEventListener("error", (event) => {
  event.preventDefault();
  crashed(event.error, event.message);
});

globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  crashed(event.reason, `Uncaught (in promise) ${String(event.reason)}`);
});

/** The messages of `err` and its causes, outermost first. */
function causes(err: unknown): string[] {
  const messages: string[] = [];
  for (let e = err; e !== undefined; e = (e as Error).cause) {
    messages.push(e instanceof Error ? e.message : String(e));
    if (!(e instanceof Error)) break;
  }
  return messages;
}

function testCrash(): string | undefined {
  const { state } = Deno.permissions.querySync({
    name: "env",
    variable: CRASH_VAR,
  });
  return state === "granted" ? Deno.env.get(CRASH_VAR) : undefined;
}
