/**
 * One connection of a load-test run (private to `bench.ts`): the state all
 * connection tasks of one isolate share ({@linkcode Run}), the task that owns
 * a connection, the function that opens one ({@linkcode openConnection}),
 * and the hot loops: {@linkcode pingpong}, {@linkcode stream} and
 * {@linkcode connectCycles}.
 *
 * @module
 */

import { LatencyHistogram } from "./_histogram.ts";
import type { Payload } from "./_payload.ts";
import { connect, type ConnectOptions } from "./client.ts";
import { delay, writeAll } from "./io.ts";

/** Phases of a run: warm-up (not counted), measuring window, stop. */
export const WARMUP = 0;
/** The measuring window: round trips and bytes count. */
export const MEASURE = 1;
/** Stop sending: finish the message, half-close, await the close. */
export const STOP = 2;
/** One of {@linkcode WARMUP}, {@linkcode MEASURE}, {@linkcode STOP}. */
export type Phase = typeof WARMUP | typeof MEASURE | typeof STOP;

/** Read buffer, stream write size, and the largest message written before reading. */
const IO_BYTES = 64 * 1024;

/**
 * Opens one bench connection: every connection of every pattern comes from
 * here (a PROXY header, when asked for, is written right after the connect).
 *
 * @throws {Error} `cannot connect to HOST:PORT` (from {@linkcode connect}).
 */
export async function openConnection(
  target: ConnectOptions,
): Promise<Deno.Conn> {
  const conn = await connect(target);
  if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
  return conn;
}

/** A connection's loop: sends and checks until the phase is {@linkcode STOP}. */
export type Loop = (run: Run, connection: Connection) => Promise<void>;

/** How a {@linkcode Run} paces, opens and reports. */
export interface RunSettings {
  /** What every connection sends and expects back. */
  payload: Payload;
  /** {@linkcode pingpong}, {@linkcode stream} or {@linkcode connectCycles}. */
  loop: Loop;
  /** Connections in the whole run (all isolates): the open loop's spacing. */
  connections: number;
  /** Open loop: messages per second over the whole run; 0 = closed loop. */
  rate: number;
  /** The open loop's origin, `performance.now()` time. */
  scheduleStartMs: number;
  /** Opens a connection (connect pattern; the others get theirs started). */
  open: (signal: AbortSignal) => Promise<Deno.Conn>;
  /** Told of each error counted. Must not throw. */
  onError: (error: Error) => void;
}

/** State shared by all connection tasks of one isolate (one shape: fast access). */
export class Run {
  /** Where the run is; the loops read it before each message. */
  phase: Phase = WARMUP;
  /** Messages completed in the window since the last take. */
  messages = 0;
  /** Echoed bytes received in the window since the last take. */
  bytes = 0;
  /** Errors counted, warm-up included. */
  errors = 0;
  /** Round-trip (connect: cycle) times in the window since the last take; open loop: from the intended send time. */
  readonly histogram = new LatencyHistogram();
  /** Open loop only: the same round trips timed from their actual send. */
  readonly uncorrected: LatencyHistogram | undefined;
  /** Open connections, to interrupt stragglers at the end. */
  readonly live = new Set<Connection>();
  /** Every connection, by its place in this isolate: their window counts. */
  readonly connections: Connection[] = [];
  /** Every connection task; none rejects. */
  readonly tasks: Promise<void>[] = [];
  /** Aborted at {@linkcode STOP}: wakes paced loops. */
  readonly stopping = new AbortController();
  /** Aborted at the end of the drain: interrupts connects under way. */
  readonly interrupt = new AbortController();
  /** Called once no connection is left and none is being opened. */
  onAllGone?: () => void;
  /** Connects under way: the run is not over while one may still succeed. */
  connectsPending = 0;
  /** Milliseconds between two messages of one connection (open loop), else 0. */
  readonly spacingMs: number;

  /** A run paced, opened and reported as `settings` say. */
  constructor(readonly settings: RunSettings) {
    this.spacingMs = settings.rate > 0
      ? settings.connections * 1000 / settings.rate
      : 0;
    this.uncorrected = settings.rate > 0 ? new LatencyHistogram() : undefined;
  }

  /** Runs `conn` (undefined: the loop opens its own) as connection `index`. */
  start(conn: Deno.Conn | undefined, index: number): void {
    const connection: Connection = {
      conn,
      index,
      interrupted: false,
      halfClosed: false,
      windowMessages: 0,
      windowBytes: 0,
    };
    this.live.add(connection);
    this.connections.push(connection);
    this.tasks.push(runConnection(this, connection));
  }

  /** Counts one error and reports it. */
  fail(error: Error): void {
    this.errors++;
    this.settings.onError(error);
  }

  /** Ends the phase of sending. */
  stop(): void {
    this.phase = STOP;
    this.stopping.abort();
  }

  /** Tells {@linkcode Run.onAllGone} once every connection has ended. */
  checkAllGone(): void {
    if (this.live.size === 0 && this.connectsPending === 0) this.onAllGone?.();
  }

  /** When message `k` of connection `index` is due (open loop). */
  due(index: number, k: number): number {
    return this.settings.scheduleStartMs +
      (index + k * this.settings.connections) * 1000 / this.settings.rate;
  }

  /** Counts one message completed at `now`, timed from `from` (open loop: see `waitUntil`), sent at `sent`. */
  count(connection: Connection, from: number, sent: number, now: number): void {
    const size = this.settings.payload.sizeBytes;
    this.messages++;
    this.bytes += size;
    connection.windowMessages++;
    connection.windowBytes += size;
    this.histogram.record((now - from) * 1000);
    this.uncorrected?.record((now - sent) * 1000);
  }
}

/** One connection (connect pattern: one slot): its socket, index and counts. */
export interface Connection {
  /** The socket now open, if any; its task owns it. */
  conn: Deno.Conn | undefined;
  /** 0 to `connections - 1` over the run: picks its messages and names it in errors. */
  readonly index: number;
  /** Closed by us (end of the drain, or its other loop failed): not an error. */
  interrupted: boolean;
  /** We sent our FIN: only the server's close is still awaited. */
  halfClosed: boolean;
  /** Messages (connect: cycles) it completed in the window. */
  windowMessages: number;
  /** Echoed bytes it received in the window. */
  windowBytes: number;
}

/** A failure with a message of its own (mismatch, early close): not wrapped. */
export class EchoError extends Error {
  override name = "EchoError";
  /**
   * @param message the whole message.
   * @param kind what went wrong without the numbers, to group errors by.
   */
  constructor(message: string, readonly kind: string) {
    super(message);
  }
}

/** Owns one connection: runs its loop, counts its failure, closes it. Never rejects. */
async function runConnection(run: Run, connection: Connection): Promise<void> {
  try {
    await run.settings.loop(run, connection);
  } catch (err) {
    if (!connection.interrupted) {
      run.fail(
        err instanceof EchoError
          ? err
          : new Error(`connection ${connection.index} failed`, { cause: err }),
      );
    }
  } finally {
    connection.conn?.[Symbol.dispose]();
    run.live.delete(connection);
    run.checkAllGone();
  }
}

/**
 * Open loop: waits until `due` (unless the run stops first) and returns when
 * the message's latency counts from. A connection still busy with earlier
 * messages at `due` sends at once, late because of the server: its latency
 * counts from `due` (the coordinated-omission correction). One that was free
 * sleeps until about `due` (timers have 1 ms steps: less than that early or
 * late), and its latency counts from the actual send: the timer's lateness
 * is ours, not the server's.
 */
async function waitUntil(run: Run, due: number): Promise<number> {
  const free = performance.now();
  if (free >= due) return due;
  const wait = Math.floor(due - free);
  if (wait >= 1) await delay(wait, run.stopping.signal);
  return performance.now();
}

/**
 * Sends message `k` and reads its echo, checking every byte. Messages over
 * 64 KiB are written while the echo is read, or both sides would block on
 * full socket buffers.
 */
async function exchange(
  run: Run,
  conn: Deno.Conn,
  index: number,
  k: number,
  buffer: Uint8Array,
): Promise<void> {
  const payload = run.settings.payload;
  const size = payload.sizeBytes;
  const message = payload.message(index, k);
  let writing: Promise<unknown> | undefined;
  if (size <= IO_BYTES) {
    const written = await conn.write(message); // one op, no writeAll frame, mostly
    if (written < size) await writeAll(conn, message.subarray(written));
  } else {
    writing = writeAll(conn, message).then(() => undefined, (err) => err);
  }
  let got = 0;
  try {
    do {
      const n = await conn.read(buffer);
      if (n === null) {
        throw new EchoError(
          `connection ${index}: server closed the connection ${got} bytes into message ${k}`,
          "server closed the connection before echoing everything",
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
          "echo mismatch",
        );
      }
      got += n;
    } while (got < size);
  } catch (err) {
    if (writing) {
      conn[Symbol.dispose](); // stops the write; the owner's dispose is a no-op
      await writing;
    }
    throw err;
  }
  const writeError = await writing;
  if (writeError) throw writeError;
  if (got > size) {
    throw new EchoError(
      `connection ${index}: more bytes than sent, after message ${k}`,
      "more bytes echoed than sent",
    );
  }
}

/** Half-closes and expects the server's close with nothing more. */
async function finish(
  conn: Deno.Conn,
  connection: Connection,
  buffer: Uint8Array,
): Promise<void> {
  connection.halfClosed = true;
  await conn.closeWrite();
  const extra = await conn.read(buffer);
  if (extra !== null) {
    throw new EchoError(
      `connection ${connection.index}: more bytes than sent, after the last message`,
      "more bytes echoed than sent",
    );
  }
}

/** One message in flight: write it, read it back by byte count, check, time. */
export async function pingpong(
  run: Run,
  connection: Connection,
): Promise<void> {
  const { conn, index } = connection;
  if (conn === undefined) throw new TypeError("pingpong needs a connection");
  const size = run.settings.payload.sizeBytes;
  // One byte more than a message: a read that does not fill the buffer tells
  // the runtime the socket is drained, which saves a failed (EAGAIN) read per
  // message; and a server echoing too much shows up here.
  const buffer = new Uint8Array(Math.min(size + 1, IO_BYTES));
  const paced = run.spacingMs > 0;
  let k = 0;
  let sent = performance.now();
  while (run.phase !== STOP) {
    let from = sent;
    if (paced) {
      from = await waitUntil(run, run.due(index, k));
      if (run.stopping.signal.aborted) break;
      sent = performance.now();
    }
    await exchange(run, conn, index, k, buffer);
    const now = performance.now();
    if (run.phase === MEASURE) run.count(connection, from, sent, now);
    sent = now;
    k++;
  }
  await finish(conn, connection, buffer);
}

/** Connect pattern: connect, one message, its echo, half-close, the server's close; repeat. */
export async function connectCycles(
  run: Run,
  connection: Connection,
): Promise<void> {
  const { index } = connection;
  const size = run.settings.payload.sizeBytes;
  const buffer = new Uint8Array(Math.min(size + 1, IO_BYTES));
  const paced = run.spacingMs > 0;
  for (let k = 0; run.phase !== STOP; k++) {
    const from = paced ? await waitUntil(run, run.due(index, k)) : 0;
    if (run.stopping.signal.aborted) break;
    const start = performance.now();
    // The first cycle may have its connection already (the probe).
    const conn = connection.conn ??
      await run.settings.open(run.interrupt.signal);
    connection.conn = conn;
    connection.halfClosed = false;
    await exchange(run, conn, index, k, buffer);
    await finish(conn, connection, buffer);
    conn[Symbol.dispose]();
    connection.conn = undefined;
    const now = performance.now();
    if (run.phase === MEASURE) {
      run.count(connection, paced ? from : start, start, now);
    }
  }
}

/** Two loops: one writes the connection's stream, one reads and checks it. */
export async function stream(run: Run, connection: Connection): Promise<void> {
  const { conn, index } = connection;
  if (conn === undefined) throw new TypeError("stream needs a connection");
  const payload = run.settings.payload;
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
          "more bytes echoed than sent",
        );
      }
      const bad = payload.verifyStream(index, received, buffer, n);
      if (bad >= 0) {
        throw new EchoError(
          `connection ${index}: echo mismatch at stream byte ${received + bad}`,
          "echo mismatch",
        );
      }
      received += n;
      if (run.phase === MEASURE) {
        run.bytes += n;
        connection.windowBytes += n;
      }
    }
    if (!writeClosed || received !== sent) {
      throw new EchoError(
        `connection ${index}: server closed the connection after ${received} of ${sent} bytes`,
        "server closed the connection before echoing everything",
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
      conn[Symbol.dispose]();
    });
  await Promise.all([guard(writer()), guard(reader())]);
  if (failed) throw failure;
}
