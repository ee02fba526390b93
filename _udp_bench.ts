/**
 * The load generator over UDP, private to `udp.ts` (which exports
 * {@linkcode runUdpBench}): ping-pong from many sockets, every reply checked,
 * a reply not back in time counted as lost.
 *
 * @module
 */
import {
  BENCH_DEFAULTS,
  type BenchProgress,
  type BenchResult,
  benchResult,
  LatencyHistogram,
  Payload,
  type RunCounts,
} from "./bench.ts";
import { delay } from "./io.ts";
import {
  connectUdp,
  MAX_UDP_PAYLOAD,
  type UdpConn,
  type UdpConnectOptions,
} from "./_udp_client.ts";

/** Options for {@linkcode runUdpBench}; the target is a {@linkcode UdpConnectOptions}. */
export interface UdpBenchOptions extends UdpConnectOptions {
  /** Sockets, each with one datagram in flight. @default {50} */
  connections?: number;
  /** Datagram size in bytes, at most 65,527 (65,507 over IPv4). @default {64} */
  sizeBytes?: number;
  /** Length of the measuring window. @default {10000} */
  durationMs?: number;
  /** Load before the window, not counted. @default {1000} */
  warmupMs?: number;
  /** A reply not back this long after its datagram is lost. @default {1000} */
  lossTimeoutMs?: number;
  /** Stop early (Ctrl+C); {@linkcode runUdpBench} still returns what it measured. */
  signal?: AbortSignal;
  /** Called about every 250 ms during the window. Must not throw. */
  onProgress?: (progress: BenchProgress) => void;
  /** Called once for each error counted in {@linkcode BenchResult.errors}. Must not throw. */
  onError?: (error: Error) => void;
}

/** Defaults of {@linkcode UdpBenchOptions} beyond the TCP bench's. */
export const UDP_BENCH_DEFAULTS = { lossTimeoutMs: 1000 } as const;

const WARMUP = 0;
const MEASURE = 1;
const STOP = 2;
type Phase = typeof WARMUP | typeof MEASURE | typeof STOP;

/** How often {@linkcode UdpBenchOptions.onProgress} is called. */
const PROGRESS_INTERVAL_MS = 250;
/** Lost messages a socket remembers, so that their late replies are not errors. */
const LATE_KEPT = 8;

/** A reply that is wrong: not what was sent, or not expected at all. */
class EchoError extends Error {
  override name = "EchoError";
}

/** State shared by all sockets of one run. */
class Run implements RunCounts {
  phase: Phase = WARMUP;
  messages = 0;
  bytes = 0;
  errors = 0;
  lost = 0;
  readonly histogram = new LatencyHistogram();

  constructor(
    readonly payload: Payload,
    readonly lossTimeoutMs: number,
    readonly onError: ((error: Error) => void) | undefined,
  ) {}

  /** Counts one error and reports it. */
  fail(error: Error): void {
    this.errors++;
    this.onError?.(error);
  }
}

/** One socket's ping-pong: the message in flight and when it is due. */
class Flow {
  /** The message in flight. */
  k = 0;
  sentAt = 0;
  /** When the message in flight counts as lost. */
  deadline = Infinity;
  /** Sends started by the loss sweep (the receive loop awaits its own). */
  sending: Promise<void> = Promise.resolve();
  /** The socket failed: no more sends. */
  dead = false;
  /** Recently lost messages: a reply to one of them is late, not wrong. */
  readonly lostKs: number[] = [];

  constructor(readonly conn: UdpConn, readonly index: number) {}
}

/**
 * Runs a ping-pong load test over UDP and returns what it measured, in the
 * shape of the TCP bench's result (`pattern` is `pingpong`).
 *
 * Each of `connections` sockets sends a datagram and waits for its reply
 * before the next. A reply must be the datagram sent, byte for byte; one
 * that is altered, duplicated or unexpected is an error (and the socket
 * moves on). A reply not back within `lossTimeoutMs` is lost (counted in
 * the window) and the socket moves on; a late reply to it is skipped. The
 * run ends on time: after `warmupMs` + `durationMs` every socket is closed,
 * whatever is still in flight counting neither way.
 *
 * @throws {Error} `cannot connect to udp:HOST:PORT` when the first socket
 *   cannot be opened (unknown host, no permission)
 * @throws {RangeError} for an invalid option
 * @example
 * ```ts ignore
 * const result = await runUdpBench({ port: 8080, durationMs: 3000 });
 * console.log(result.messages_per_s, result.lost);
 * ```
 */
export async function runUdpBench(
  options: UdpBenchOptions = {},
): Promise<BenchResult> {
  const {
    connections = BENCH_DEFAULTS.connections,
    sizeBytes = BENCH_DEFAULTS.sizeBytes,
    durationMs = BENCH_DEFAULTS.durationMs,
    warmupMs = BENCH_DEFAULTS.warmupMs,
    lossTimeoutMs = UDP_BENCH_DEFAULTS.lossTimeoutMs,
    signal,
    onProgress,
    onError,
  } = options;
  if (!Number.isSafeInteger(connections) || connections < 1) {
    throw new RangeError(
      `invalid connections ${connections}: expected a positive integer`,
    );
  }
  if (!(sizeBytes <= MAX_UDP_PAYLOAD)) {
    throw new RangeError(
      `invalid size ${sizeBytes}: a datagram holds at most ${MAX_UDP_PAYLOAD} bytes`,
    );
  }
  for (
    const [name, ms] of Object.entries({ durationMs, warmupMs, lossTimeoutMs })
  ) {
    if (!(ms >= 0 && Number.isFinite(ms))) {
      throw new RangeError(`invalid ${name} ${ms}: expected 0 or more`);
    }
  }
  const run = new Run(new Payload(sizeBytes), lossTimeoutMs, onError);
  const flows: Flow[] = [];
  const loops: Promise<void>[] = [];
  const start = (conn: UdpConn) => {
    const flow = new Flow(conn, flows.length);
    flows.push(flow);
    loops.push(runFlow(run, flow));
  };

  // The first socket resolves the host; the others reuse its address.
  const first = await connectUdp(options);
  start(first);
  const target = { hostname: first.remote.hostname, port: first.remote.port };
  for (let i = 1; i < connections; i++) {
    try {
      start(await connectUdp(target));
    } catch (err) {
      run.fail(new Error(`socket ${i} failed`, { cause: err }));
    }
  }

  // One sweep finds every reply overdue, instead of a timer per datagram.
  const sweep = setInterval(
    () => sweepLost(run, flows),
    Math.max(1, Math.min(100, lossTimeoutMs / 10)),
  );
  let windowStart = 0;
  let windowEnd = 0;
  let progressTimer: ReturnType<typeof setInterval> | undefined;
  const stopWindow = signal ?? new AbortController().signal;
  try {
    await delay(warmupMs, stopWindow);
    windowStart = windowEnd = performance.now();
    if (!stopWindow.aborted) {
      run.phase = MEASURE;
      if (onProgress) {
        progressTimer = setInterval(() => {
          onProgress({
            elapsedMs: performance.now() - windowStart,
            durationMs,
            messages: run.messages,
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
    clearInterval(sweep);
    clearInterval(progressTimer);
    for (const flow of flows) flow.conn[Symbol.dispose](); // ends each receive
    await Promise.all(loops); // runFlow never rejects
    await Promise.all(flows.map((flow) => flow.sending));
  }
  return benchResult(
    run,
    "pingpong",
    connections,
    sizeBytes,
    windowEnd - windowStart,
  );
}

/** Sends message `flow.k` and arms its loss deadline. Never rejects. */
function send(run: Run, flow: Flow): Promise<void> {
  const k = flow.k;
  flow.sentAt = performance.now();
  flow.deadline = flow.sentAt + run.lossTimeoutMs;
  return flow.conn.send(run.payload.message(flow.index, k)).then(
    () => {},
    (err) => {
      // The socket is closed at the end of the run: not an error then.
      if (run.phase !== STOP) {
        run.fail(
          new Error(`socket ${flow.index}: cannot send message ${k}`, {
            cause: err,
          }),
        );
      }
    },
  );
}

/** Counts each overdue reply as lost and sends that socket's next message. */
function sweepLost(run: Run, flows: readonly Flow[]): void {
  const now = performance.now();
  for (const flow of flows) {
    if (flow.dead || now < flow.deadline) continue;
    if (run.phase === MEASURE) run.lost++;
    if (flow.lostKs.push(flow.k) > LATE_KEPT) flow.lostKs.shift();
    flow.k++;
    flow.deadline = Infinity; // until send() arms it again
    flow.sending = flow.sending.then(() => send(run, flow));
  }
}

/** Owns one socket's receive loop: checks each reply, sends the next. Never rejects. */
async function runFlow(run: Run, flow: Flow): Promise<void> {
  const { conn, index } = flow;
  const payload = run.payload;
  const size = payload.sizeBytes;
  try {
    await send(run, flow);
    for (;;) {
      const reply = (await conn.receive())!; // rejects once closed
      if (run.phase === STOP) return;
      const k = flow.k;
      const now = performance.now();
      if (
        reply.length === size && payload.verifyMessage(index, k, 0, reply) < 0
      ) {
        if (run.phase === MEASURE) {
          run.messages++;
          run.bytes += size;
          run.histogram.record((now - flow.sentAt) * 1000);
        }
      } else if (isLate(flow, reply, payload)) {
        continue; // already counted lost; still waiting for message k
      } else {
        run.fail(
          new EchoError(
            `socket ${index}: reply to message ${k} altered or unexpected (${reply.length} bytes, ${size} sent)`,
          ),
        );
      }
      flow.k++;
      await send(run, flow);
    }
  } catch (err) {
    if (run.phase !== STOP) {
      run.fail(new Error(`socket ${index} failed`, { cause: err }));
    }
  } finally {
    flow.dead = true;
    flow.deadline = Infinity;
  }
}

/** Whether `reply` is the echo of a message this socket already gave up on. */
function isLate(flow: Flow, reply: Uint8Array, payload: Payload): boolean {
  if (reply.length !== payload.sizeBytes) return false;
  const i = flow.lostKs.findIndex((k) =>
    payload.verifyMessage(flow.index, k, 0, reply) < 0
  );
  if (i >= 0) flow.lostKs.splice(i, 1); // a second copy would be an error
  return i >= 0;
}
