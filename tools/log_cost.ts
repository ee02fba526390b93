/**
 * What logging costs the server, per connection: the CPU time of the two
 * lines every connection logs (`online`, `offline`), logged from a worker
 * isolate as the server does, through each sink and formatter tried:
 *
 * ```sh
 * deno run -A tools/log_cost.ts 2>/dev/null      # all variants, 3 rounds
 * deno run -A tools/log_cost.ts --variant now    # one
 * ```
 *
 * Each variant runs in a process of its own; the figure is the process's
 * user+system CPU time (`process.cpuUsage()`, main isolate and worker
 * together, writing to stderr included) per connection. Send stderr to a
 * file or `/dev/null`: the log lines go there.
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import {
  configure,
  getConsoleSink,
  getLogger,
  getStreamSink,
  getTextFormatter,
  type Sink,
} from "@logtape/logtape";
import { BatchSink, Seconds, Template, textLine, writeStderr } from "../log.ts";

const VARIANTS = {
  none: "nothing logged (-q)",
  console: "LogTape's console sink and text formatter (before)",
  stream: "LogTape's stream sink, nonBlocking, our text formatter",
  batch: "our formatter, batches to the main isolate",
  template: "the same, lines built by Template",
  now: "the same, sinks marked immediate (now)",
} as const;
type Variant = keyof typeof VARIANTS;

const CONNECTIONS = 100_000;
const ONLINE = new Template("[{peer}] online");
const OFFLINE = new Template(
  "[{peer}] offline ({duration_s} s, {bytesIn} bytes in, {bytesOut} bytes out)",
);

/** `postMessage` of the worker's global scope. */
function post(message: unknown): void {
  (globalThis as unknown as { postMessage(m: unknown): void }).postMessage(
    message,
  );
}

/** In the worker: log like `CONNECTIONS` connections, then say done. */
async function work(variant: Variant): Promise<void> {
  let batch: BatchSink | undefined;
  let sink: Sink;
  if (variant === "console") {
    sink = getConsoleSink({
      formatter: getTextFormatter({
        value: "bare",
        timestamp: "date-time",
        format: ({ timestamp, level, message }) =>
          `${timestamp} ${level} ${message}`,
      }),
      levelMap: {
        trace: "error",
        debug: "error",
        info: "error",
        warning: "error",
        error: "error",
        fatal: "error",
      },
    });
  } else if (variant === "stream") {
    sink = getStreamSink(Deno.stderr.writable, {
      formatter: textLine,
      nonBlocking: true,
    });
  } else {
    batch = new BatchSink("text", post);
    sink = batch.sink;
    if (variant !== "now") {
      // Undo the mark: LogTape copies each record for the sink again.
      sink = ((record) => batch!.sink(record)) as Sink;
    }
  }
  await configure({
    sinks: { out: sink },
    loggers: [
      {
        category: ["tcpecho"],
        lowestLevel: variant === "none" ? "warning" : "info",
        sinks: ["out"],
      },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
    ],
  });
  const log = getLogger(["tcpecho", "server"]);
  for (let i = 0; i < CONNECTIONS; i++) {
    const peer = `127.0.0.1:${30000 + i % 30000}`;
    const duration_s = new Seconds(1500);
    if (variant === "template" || variant === "now") {
      ONLINE.log(log, "info", { peer });
      OFFLINE.log(log, "info", { peer, duration_s, bytesIn: 64, bytesOut: 64 });
    } else {
      const clog = log.with({ peer });
      clog.info("[{peer}] online");
      clog.info(
        "[{peer}] offline ({duration_s} s, {bytesIn} bytes in, {bytesOut} bytes out)",
        { duration_s, bytesIn: 64, bytesOut: 64 },
      );
    }
    // Connections come and go between turns of the event loop.
    if (i % 64 === 0) await new Promise((resolve) => setTimeout(resolve));
  }
  batch?.flush();
  const { dispose } = await import("@logtape/logtape");
  await dispose(); // the stream sink's buffer
  post({ done: true });
}

/** In a process of its own: one variant, in a worker; prints µs per connection. */
async function measure(variant: Variant): Promise<number> {
  const worker = new Worker(import.meta.url, { type: "module" });
  const start = process.cpuUsage();
  await new Promise<void>((resolve) => {
    worker.onmessage = ({ data }) => {
      if (typeof data === "string") writeStderr(data);
      else resolve();
    };
    worker.postMessage(variant);
  });
  const { user, system } = process.cpuUsage(start);
  worker.terminate();
  return (user + system) / CONNECTIONS;
}

// A worker of this module is its main module too: tell them apart by scope.
const inWorker = "WorkerGlobalScope" in globalThis;

if (import.meta.main && !inWorker) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { variant: { type: "string" }, rounds: { type: "string" } },
  });
  if (values.variant !== undefined) {
    console.log((await measure(values.variant as Variant)).toFixed(2));
  } else {
    const rounds = Number(values.rounds ?? 3);
    const results = new Map<Variant, number[]>();
    for (let r = 0; r < rounds; r++) {
      for (const variant of Object.keys(VARIANTS) as Variant[]) {
        const { stdout } = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", import.meta.filename!, "--variant", variant],
          stdout: "piped",
          stderr: "inherit",
        }).output();
        const us = Number(new TextDecoder().decode(stdout));
        results.set(variant, [...results.get(variant) ?? [], us]);
      }
    }
    for (const [variant, us] of results) {
      const sorted = us.toSorted((a, b) => a - b);
      console.log(
        `${VARIANTS[variant].padEnd(58)} ${
          sorted[sorted.length >> 1].toFixed(1)
        } µs (${sorted[0].toFixed(1)}–${sorted.at(-1)!.toFixed(1)})`,
      );
    }
  }
} else {
  globalThis.addEventListener("message", (event) => {
    void work((event as MessageEvent<Variant>).data);
  });
}
