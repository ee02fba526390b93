/**
 * One connection of a load-test run (private to `bench.ts`): the state all
 * connection tasks share ({@linkcode Run}), the task that owns a connection,
 * and the two hot loops, {@linkcode pingpong} and {@linkcode stream}.
 *
 * @module
 */

import { LatencyHistogram } from "./_histogram.ts";
import type { Payload } from "./_payload.ts";
import { writeAll } from "./io.ts";

/** Phases of a run: warm-up (not counted), measuring window, stop. */
export const WARMUP = 0;
/** The measuring window: round trips and bytes count. */
export const MEASURE = 1;
/** Stop sending: finish the message, half-close, await the close. */
export const STOP = 2;
/** One of {@linkcode WARMUP}, {@linkcode MEASURE}, {@linkcode STOP}. */
export type Phase = typeof WARMUP | typeof MEASURE | typeof STOP;

/** Read buffer, and write size in the stream pattern. */
const IO_BYTES = 64 * 1024;

/** A connection's loop: sends and checks until the phase is {@linkcode STOP}. */
export type Loop = (run: Run, connection: Connection) => Promise<void>;

/** State shared by all connection tasks of one run (one shape: fast access). */
export class Run {
  /** Where the run is; the loops read it before each message. */
  phase: Phase = WARMUP;
  /** Pingpong round trips completed in the window. */
  messages = 0;
  /** Echoed bytes received in the window. */
  bytes = 0;
  /** Errors counted by {@linkcode Run.fail}, warm-up included. */
  errors = 0;
  /** Pingpong round-trip times in the window, in microseconds. */
  readonly histogram = new LatencyHistogram();
  /** Open connections, to interrupt stragglers at the end. */
  readonly live = new Set<Connection>();
  /** Every connection task; none rejects. */
  readonly tasks: Promise<void>[] = [];
  /** Aborted when no connection is left: the window may end early. */
  readonly allGone = new AbortController();
  /** Connects under way: the run is not over while one may still succeed. */
  connectsPending = 0;

  /**
   * @param payload what every connection sends and expects back.
   * @param loop {@linkcode pingpong} or {@linkcode stream}.
   * @param onError told of each error counted.
   */
  constructor(
    readonly payload: Payload,
    readonly loop: Loop,
    readonly onError: ((error: Error) => void) | undefined,
  ) {}

  /** Runs `conn` as connection `index` until the end of the run. */
  start(conn: Deno.Conn, index: number): void {
    const connection: Connection = {
      conn,
      index,
      interrupted: false,
      halfClosed: false,
    };
    this.live.add(connection);
    this.tasks.push(runConnection(this, connection));
  }

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
export interface Connection {
  /** The socket; its task owns it. */
  readonly conn: Deno.Conn;
  /** 0 to `connections - 1`: picks its messages and names it in errors. */
  readonly index: number;
  /** Closed by us (end of the drain, or its other loop failed): not an error. */
  interrupted: boolean;
  /** We sent our FIN: only the server's close is still awaited. */
  halfClosed: boolean;
}

/** A failure with a message of its own (mismatch, early close): not wrapped. */
export class EchoError extends Error {
  override name = "EchoError";
}

/** Owns one connection: runs its loop, counts its failure, closes it. Never rejects. */
async function runConnection(run: Run, connection: Connection): Promise<void> {
  using _conn = connection.conn;
  try {
    if ("setNoDelay" in connection.conn) {
      (connection.conn as Deno.TcpConn).setNoDelay(true);
    }
    await run.loop(run, connection);
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
export async function pingpong(
  run: Run,
  connection: Connection,
): Promise<void> {
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
export async function stream(run: Run, connection: Connection): Promise<void> {
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
