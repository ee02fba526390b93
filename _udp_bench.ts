/**
 * The load generator over UDP (private to `udp.ts`, which exports
 * {@linkcode runUdpBench}, and to `bench --udp`): ping-pong from many
 * sockets, every reply checked, a reply not back in time counted as lost.
 * {@linkcode UdpShard} is one isolate's sockets, driven by the TCP bench's
 * driver: in the caller's isolate ({@linkcode runUdpBench}) or in `bench`'s
 * worker threads (`_bench_worker.ts`).
 *
 * @module
 */
import {
  checkConnections,
  checkIntervals,
  checkMs,
  driveHere,
  driveSettings,
  type Shard,
} from "./_bench_driver.ts";
import {
  EchoError,
  MEASURE,
  type Phase,
  STOP,
  WARMUP,
} from "./_bench_connection.ts";
import { type ShardEvents, ShardWindow } from "./_bench_shard.ts";
import { LatencyHistogram } from "./_histogram.ts";
import { Payload } from "./_payload.ts";
import type {
  BenchIntervalListener,
  BenchProgress,
  BenchResult,
} from "./_bench_types.ts";
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
  /** Called about every 250 ms during the warm-up and the window. Must not throw. */
  onProgress?: (progress: BenchProgress) => void;
  /** Called once for each error counted in {@linkcode BenchResult.errors}. Must not throw. */
  onError?: (error: Error) => void;
  /** Called at the end of each interval of the window, per listener (`--interval`, `--hlog`). */
  intervals?: readonly BenchIntervalListener[];
}

/** Defaults of {@linkcode UdpBenchOptions} beyond the TCP bench's. */
export const UDP_BENCH_DEFAULTS = { lossTimeoutMs: 1000 } as const;

/** A UDP shard's settings: plain data, so they can be posted to a worker. */
export interface UdpShardOptions {
  /** Tells a worker this is a UDP shard. */
  transport: "udp";
  /** Where to send. */
  target: UdpConnectOptions;
  /** Datagram size in bytes. */
  sizeBytes: number;
  /** This shard's sockets are `first` to `first + count - 1`. */
  first: number;
  /** How many sockets this shard runs. */
  count: number;
  /** A reply not back this long after its datagram is lost. */
  lossTimeoutMs: number;
}

/** Lost messages a socket remembers, so that their late replies are not errors. */
const LATE_KEPT = 8;

/** State shared by all sockets of one isolate. */
class Run {
  phase: Phase = WARMUP;
  /** Round trips completed in the window since the last take. */
  messages = 0;
  /** Echoed bytes received in the window since the last take. */
  bytes = 0;
  /** Replies lost in the window since the last take. */
  lost = 0;
  /** Round-trip times in the window since the last take. */
  readonly histogram = new LatencyHistogram();

  constructor(
    readonly payload: Payload,
    readonly lossTimeoutMs: number,
    readonly onError: (error: Error) => void,
  ) {}

  /** Whether the window has closed: no more sends. */
  get stopped(): boolean {
    return this.phase === STOP;
  }

  /** Closes the window: no more sends. */
  stop(): void {
    this.phase = STOP;
  }

  /** Reports one error (the driver counts it). */
  fail(error: Error): void {
    this.onError(error);
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
  /** The socket failed or the run stopped: no more sends. */
  dead = false;
  /** Round trips it completed in the window. */
  windowMessages = 0;
  /** Recently lost messages: a reply to one of them is late, not wrong. */
  readonly lostKs: number[] = [];

  constructor(readonly conn: UdpConn, readonly index: number) {}
}

/**
 * One isolate's sockets of a UDP run, as the driver sees a shard. The first
 * socket resolves the host; the others reuse its address.
 */
export class UdpShard extends ShardWindow implements Shard {
  readonly #options: UdpShardOptions;
  readonly #events: ShardEvents;
  readonly #run: Run;
  readonly #flows: Flow[] = [];
  readonly #loops: Promise<void>[] = [];
  /** The resolved address, once a socket has one. */
  #target: UdpConnectOptions | undefined;
  #next: number;
  #opening: Promise<void> = Promise.resolve();
  #sweep: ReturnType<typeof setInterval> | undefined;
  #opened = false;
  #gone = false;

  /** The sockets `options.first…` of a run, not opened yet. */
  constructor(options: UdpShardOptions, events: ShardEvents) {
    const run = new Run(
      new Payload(options.sizeBytes),
      options.lossTimeoutMs,
      events.onError,
    );
    super(run);
    this.#options = options;
    this.#events = events;
    this.#next = options.first;
    this.#run = run;
  }

  /**
   * Opens the first socket alone, so an unknown host fails the run at once.
   *
   * @throws {Error} `cannot connect to udp:HOST:PORT`
   */
  async probe(): Promise<void> {
    this.#start(await this.#connect(), this.#next++);
  }

  /** Opens the other sockets, one after another; a failed one is an error. */
  open(): Promise<void> {
    const { first, count } = this.#options;
    const end = first + count;
    const run = this.#run;
    this.#opening = (async () => {
      while (this.#next < end && !run.stopped) {
        const index = this.#next++;
        try {
          const conn = await this.#connect();
          if (run.stopped) conn[Symbol.dispose]();
          else this.#start(conn, index);
        } catch (err) {
          run.fail(new Error(`socket ${index} failed`, { cause: err }));
        }
      }
      this.#opened = true;
      this.#checkAllGone();
    })();
    return this.#opening;
  }

  /**
   * Ends the run: closes every socket at once, whatever is still in flight
   * counting neither way, and waits for every loop and send.
   *
   * @returns per socket, in index order, its round trips in the window; 0
   *   for one that never opened.
   */
  async drain(_aborted: boolean): Promise<number[]> {
    this.#run.stop();
    await this.#opening;
    clearInterval(this.#sweep);
    for (const flow of this.#flows) flow.conn[Symbol.dispose](); // ends each receive
    await Promise.all(this.#loops); // runFlow never rejects
    await Promise.all(this.#flows.map((flow) => flow.sending));
    const { first, count } = this.#options;
    const counts = new Array<number>(count).fill(0);
    for (const flow of this.#flows) {
      counts[flow.index - first] = flow.windowMessages;
    }
    return counts;
  }

  /** A socket to the target; the first resolves it for the others. */
  async #connect(): Promise<UdpConn> {
    const conn = await connectUdp(this.#target ?? this.#options.target);
    const { hostname, port } = conn.remote;
    this.#target ??= { hostname, port };
    return conn;
  }

  #start(conn: UdpConn, index: number): void {
    const flow = new Flow(conn, index);
    this.#flows.push(flow);
    this.#loops.push(
      runFlow(this.#run, flow).finally(() => this.#checkAllGone()),
    );
    // One sweep finds every reply overdue, instead of a timer per datagram.
    const { lossTimeoutMs } = this.#options;
    this.#sweep ??= setInterval(
      () => sweepLost(this.#run, this.#flows),
      Math.max(1, Math.min(100, lossTimeoutMs / 10)),
    );
  }

  /** Tells the driver once every socket of an opened shard has failed. */
  #checkAllGone(): void {
    if (!this.#opened || this.#gone) return;
    if (this.#flows.some((flow) => !flow.dead)) return;
    this.#gone = true;
    this.#events.onAllGone();
  }
}

/**
 * Runs a ping-pong load test over UDP, in the caller's isolate, and returns
 * what it measured, in the shape of the TCP bench's result (`pattern` is
 * `pingpong`, `lost` counts the replies lost in the window).
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
  return await driveHere(
    checkUdpBenchOptions(options),
    (shard, events) => new UdpShard(shard, events),
  );
}

/** The options of a UDP run, checked and defaulted, for the driver and its shards. */
export function checkUdpBenchOptions(options: UdpBenchOptions) {
  const {
    lossTimeoutMs = UDP_BENCH_DEFAULTS.lossTimeoutMs,
    hostname,
    port,
  } = options;
  const settings = driveSettings(options, "pingpong", 0);
  const { sizeBytes, durationMs, warmupMs } = settings;
  checkConnections(settings.connections);
  if (!(sizeBytes <= MAX_UDP_PAYLOAD)) {
    throw new RangeError(
      `invalid size ${sizeBytes}: a datagram holds at most ${MAX_UDP_PAYLOAD} bytes`,
    );
  }
  new Payload(sizeBytes); // throws RangeError for a bad size
  for (
    const [name, ms] of Object.entries({ durationMs, warmupMs, lossTimeoutMs })
  ) checkMs(name, ms);
  checkIntervals(settings.intervals);
  return {
    ...settings,
    shard: {
      transport: "udp" as const,
      target: { hostname, port },
      sizeBytes,
      lossTimeoutMs,
    },
  };
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
  if (run.phase === STOP) return;
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
          flow.windowMessages++;
          run.histogram.record((now - flow.sentAt) * 1000);
        }
      } else if (isLate(flow, reply, payload)) {
        continue; // already counted lost; still waiting for message k
      } else {
        run.fail(
          new EchoError(
            `socket ${index}: reply to message ${k} altered or unexpected (${reply.length} bytes, ${size} sent)`,
            "reply altered or unexpected",
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
