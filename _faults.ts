/**
 * Faults on purpose, for people testing clients: the echo made slow
 * (`delayMs`, `jitterMs`), fragmented (`sliceBytes`, `sliceDelayMs`),
 * throttled (`bandwidthKiBps`) or cut short (`closeAfterBytes`), on a seeded
 * share of the connections (`faulty`, `seed`). Private to `server.ts`.
 *
 * A faulty connection runs two loops: the session's reader frames the input
 * as usual and queues each echo (a copy) with its due time; a writer sends
 * the queue in order once each item is due, in pieces. The echoed bytes are
 * never altered or reordered. The reader stops while more than
 * {@linkcode HOLD_BYTES} wait, so backpressure holds. A connection without
 * faults never comes here: the plain loops are chosen once, at its start.
 *
 * @module
 */
import { createRandom, randomSeed, seededRandom } from "./_random.ts";
import {
  dropInput,
  LimitError,
  LINGER_MS,
  type Send,
  type Session,
} from "./_session.ts";
import { delay, isPeerError, withDefaults, writeAll } from "./io.ts";
import { FAULT_DEFAULTS, type ServeOptions } from "./_server_types.ts";

/**
 * Bytes a faulty connection may hold back (read, not yet echoed) before its
 * reader stops reading: the largest read buffer, so a delayed echo keeps a
 * streaming client going at up to this much per delay.
 */
export const HOLD_BYTES = 256 * 1024;
/** The bandwidth cap's burst: this many milliseconds' worth of bytes. */
const BURST_MS = 50;
/** The longest delay a fault may ask for (a day; timers cap at ~24 days). */
export const MAX_FAULT_MS = 86_400_000;

/** Each fault option's largest value (the least is 0), in the order checked. */
const FAULT_MAX: Record<keyof typeof FAULT_DEFAULTS, number> = {
  delayMs: MAX_FAULT_MS,
  jitterMs: MAX_FAULT_MS,
  sliceDelayMs: MAX_FAULT_MS,
  sliceBytes: Number.MAX_SAFE_INTEGER,
  bandwidthKiBps: 2 ** 40,
  closeAfterBytes: Number.MAX_SAFE_INTEGER,
  faulty: 1,
};

/** The fault fields of {@linkcode ServeOptions}. */
export type FaultOptions = Pick<
  ServeOptions,
  | "delayMs"
  | "jitterMs"
  | "sliceBytes"
  | "sliceDelayMs"
  | "bandwidthKiBps"
  | "closeAfterBytes"
  | "faulty"
  | "seed"
>;

/** One faulty connection's settings, and its own random sequence (jitter). */
export interface ConnFaults {
  /** Milliseconds to hold the next echo back: the delay plus a jitter draw. */
  nextDelayMs(): number;
  /** Largest write: the slice, or the bandwidth burst; `Infinity` if neither. */
  readonly pieceBytes: number;
  /** Least time between two writes. */
  readonly sliceDelayMs: number;
  /** Bandwidth cap in bytes per millisecond; `0` is none. */
  readonly bytesPerMs: number;
  /** Bandwidth burst in bytes. */
  readonly burstBytes: number;
  /** Echo this many bytes, then close; `Infinity` is never. */
  readonly closeAfterBytes: number;
}

/**
 * The server-wide fault settings, and the seeded draw that picks which
 * connections they apply to (in accept order) and seeds each one's jitter.
 */
export class FaultPlan {
  /** The seed: given, or drawn at random. */
  readonly seed: number;
  readonly #options: Required<Omit<FaultOptions, "seed">>;
  readonly #random: () => number;

  private constructor(
    options: Required<Omit<FaultOptions, "seed">>,
    seed: number,
    stream: number,
  ) {
    this.#options = options;
    this.seed = seed;
    this.#random = seededRandom(seed, stream);
  }

  /**
   * The plan for `options`, or `undefined` when no fault is on (`faulty`
   * and `seed` alone change nothing).
   *
   * @param stream which sequence of the seed the draws come from: `0` (the
   *   library's), or a worker's index, so that the workers of one server
   *   share its seed but not their draws, and worker 0 draws as `serve()`
   *   does
   *
   * @throws {RangeError} for a negative, non-finite or too large value, or
   *   `faulty` outside 0–1
   */
  static from(options: FaultOptions, stream = 0): FaultPlan | undefined {
    const given = withDefaults(options, FAULT_DEFAULTS);
    const check = (name: string, value: number, max: number) => {
      if (!(value >= 0 && value <= max)) {
        throw new RangeError(`${name} must be from 0 to ${max}, not ${value}`);
      }
    };
    const faults = {} as Required<Omit<FaultOptions, "seed">>;
    for (const name of Object.keys(FAULT_MAX) as (keyof typeof FAULT_MAX)[]) {
      check(name, given[name], FAULT_MAX[name]);
      faults[name] = given[name];
    }
    const { seed } = given;
    if (seed !== undefined) check("seed", seed, 2 ** 32 - 1);
    const on = Object.entries(faults).some(([name, value]) =>
      name !== "faulty" && value > 0
    );
    if (!on) return undefined;
    return new FaultPlan(faults, seed ?? randomSeed(), stream);
  }

  /**
   * What the `faults:` line says: the faults that are on, then the seed:
   * `delay 100 ms, jitter 20 ms, …, faulty 0.5, seed 42`.
   */
  describe(): string {
    const o = this.#options;
    const parts: string[] = [];
    if (o.delayMs > 0) parts.push(`delay ${o.delayMs} ms`);
    if (o.jitterMs > 0) parts.push(`jitter ${o.jitterMs} ms`);
    if (o.sliceBytes > 0) parts.push(`slice ${o.sliceBytes} bytes`);
    if (o.sliceDelayMs > 0) parts.push(`slice-delay ${o.sliceDelayMs} ms`);
    if (o.bandwidthKiBps > 0) {
      parts.push(`bandwidth ${o.bandwidthKiBps} KiB/s`);
    }
    if (o.closeAfterBytes > 0) {
      parts.push(`close-after ${o.closeAfterBytes} bytes`);
    }
    if (o.faulty < 1) parts.push(`faulty ${o.faulty}`);
    parts.push(`seed ${this.seed}`);
    return parts.join(", ");
  }

  /**
   * The next accepted connection's faults, or `undefined` when it is not one
   * of the `faulty` share. Two draws per connection, whatever the settings,
   * so one seed gives one sequence of decisions.
   */
  next(): ConnFaults | undefined {
    const isFaulty = this.#random() < this.#options.faulty;
    const connSeed = Math.floor(this.#random() * 2 ** 32);
    if (!isFaulty) return undefined;
    const o = this.#options;
    const jitter = o.jitterMs > 0 ? createRandom(connSeed) : undefined;
    const bytesPerMs = o.bandwidthKiBps * 1024 / 1000;
    const burstBytes = bytesPerMs > 0
      ? Math.min(HOLD_BYTES, Math.max(1, Math.floor(bytesPerMs * BURST_MS)))
      : Infinity;
    return {
      nextDelayMs: jitter === undefined
        ? () => o.delayMs
        : () => o.delayMs + Math.floor(jitter() * (o.jitterMs + 1)),
      pieceBytes: Math.min(o.sliceBytes || Infinity, burstBytes),
      sliceDelayMs: o.sliceDelayMs,
      bytesPerMs,
      burstBytes,
      closeAfterBytes: o.closeAfterBytes || Infinity,
    };
  }
}

/**
 * Serves `session` with `faults`: `read` frames the input and sends each
 * echo; the echoes go out as the faults say; then, at the client's EOF, the
 * server half-closes as the plain loops do. With `closeAfterBytes`, once that
 * many bytes are echoed the server half-closes, keeps reading and dropping
 * until the client's EOF (at most {@linkcode LINGER_MS}), and closes.
 */
export async function echoWithFaults(
  session: Session,
  faults: ConnFaults,
  read: (send: Send) => Promise<void>,
): Promise<void> {
  using out = new FaultyOutput(session, faults);
  const writing = out.run();
  try {
    await read(out.push);
  } catch (err) {
    if (out.spent && (err instanceof HungUp || err instanceof LimitError)) {
      // close-after's bytes are all queued: the rest is input to drop, not
      // lines to frame (a long one is no max-line), until the client's EOF
      // or the end of the linger.
      try {
        await dropInput(session);
      } catch (dropErr) {
        out.stop(dropErr);
        closeQuietly(session.conn);
        out.close();
        await writing;
        throw out.error ?? dropErr;
      }
    } else {
      // A broken connection stops the writer too (closing the conn ends a
      // write blocked on a client that does not read). The server's own
      // limit (a line too long) does not: what was answered before it still
      // goes out, as it does without faults.
      if (isPeerError(err)) {
        out.stop(err);
        closeQuietly(session.conn);
      }
      out.close();
      await writing;
      throw isPeerError(err) ? out.error ?? err : err;
    }
  }
  out.close();
  await writing;
  if (out.error !== undefined) throw out.error;
  if (out.hungUp !== undefined) {
    session.interrupt(out.hungUp); // the client's EOF ended the linger
    throw new Deno.errors.Interrupted(out.hungUp);
  }
  await session.conn.closeWrite(); // the client sent EOF and has everything back
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // closed already
  }
}

/** From `push` once close-after's bytes are all queued: the reader stops framing. */
class HungUp extends Error {
  override name = "HungUp";
}

/** An echo waiting in a {@linkcode FaultyOutput}, and when it may go. */
interface Pending {
  bytes: Uint8Array;
  due: number;
}

/**
 * The writer of a faulty connection: a queue of echoes, each written once
 * due, in pieces no closer than the slice delay, under the bandwidth cap.
 */
class FaultyOutput implements Disposable {
  readonly #session: Session;
  readonly #faults: ConnFaults;
  readonly #queue: Pending[] = [];
  /** Stops every wait of this connection's writer and reader. */
  readonly #stopping = new AbortController();
  readonly #onInterrupt: () => void;
  /** Bytes queued and not yet written. */
  #held = 0;
  /** Bytes that may still be queued (`closeAfterBytes`). */
  #budget: number;
  #ended = false;
  #wakeReader: (() => void) | undefined;
  #wakeWriter: (() => void) | undefined;
  #lastWriteAt = -Infinity;
  #tokens: number;
  #tokensAt = performance.now();
  #linger: ReturnType<typeof setTimeout> | undefined;
  /** Why the connection stopped early: the first error, or the interrupt. */
  error: unknown;
  /** Set once `closeAfterBytes` were echoed and the server half-closed: why. */
  hungUp: string | undefined;

  constructor(session: Session, faults: ConnFaults) {
    this.#session = session;
    this.#faults = faults;
    this.#budget = faults.closeAfterBytes;
    this.#tokens = faults.burstBytes;
    const signal = session.interrupted;
    this.#onInterrupt = () => this.stop(signal.reason);
    if (signal.aborted) this.stop(signal.reason);
    else signal.addEventListener("abort", this.#onInterrupt, { once: true });
  }

  /**
   * Queues a copy of `bytes` (cut at what `closeAfterBytes` leaves) to be
   * echoed when due; resolves once at most {@linkcode HOLD_BYTES} wait.
   * Rejects once the connection stopped.
   */
  readonly push: Send = async (bytes) => {
    if (this.error !== undefined) throw this.error;
    if (this.spent) throw new HungUp("close-after");
    const n = Math.min(bytes.length, this.#budget);
    if (n > 0) {
      this.#budget -= n;
      this.#held += n;
      const due = performance.now() + this.#faults.nextDelayMs();
      this.#queue.push({ bytes: bytes.slice(0, n), due });
      this.#wakeWriter?.();
    }
    while (this.#held > HOLD_BYTES && this.error === undefined) {
      await new Promise<void>((resolve) => this.#wakeReader = resolve);
    }
    if (this.error !== undefined) throw this.error;
  };

  /** Every byte `closeAfterBytes` allows is queued: more input is dropped. */
  get spent(): boolean {
    return this.#budget === 0;
  }

  /** No more echoes: the writer ends once the queue is written. */
  close(): void {
    this.#ended = true;
    this.#wakeWriter?.();
  }

  /** Stops the writer and the reader's waits; the first `err` is kept. */
  stop(err: unknown): void {
    this.error ??= err;
    this.#stopping.abort();
    this.#wake();
  }

  /** The writer loop: resolves when done or stopped, never rejects. */
  async run(): Promise<void> {
    const session = this.#session;
    const debug = session.debugging;
    try {
      for (;;) {
        const item = this.#queue.shift();
        if (item === undefined) {
          if (this.#ended || this.error !== undefined) return;
          await new Promise<void>((resolve) => this.#wakeWriter = resolve);
          continue;
        }
        await this.#pause(item.due);
        await this.#write(item.bytes);
        if (debug) {
          session.log.debug("[{peer}] echoed {n} bytes", {
            n: item.bytes.length,
          });
        }
        if (this.#budget === 0 && this.#held === 0) return await this.#hangUp();
      }
    } catch (err) {
      this.stop(err);
      closeQuietly(this.#session.conn); // so a pending read ends too
    }
  }

  /** Clears the linger timer and the interrupt listener. */
  [Symbol.dispose](): void {
    clearTimeout(this.#linger);
    this.#session.interrupted.removeEventListener("abort", this.#onInterrupt);
  }

  /** Writes `bytes` in pieces, spaced by the slice delay and the bandwidth cap. */
  async #write(bytes: Uint8Array): Promise<void> {
    const { conn } = this.#session;
    const { pieceBytes, sliceDelayMs, bytesPerMs } = this.#faults;
    for (let at = 0; at < bytes.length;) {
      const end = Math.min(bytes.length, at + pieceBytes);
      const n = end - at;
      if (sliceDelayMs > 0) await this.#pause(this.#lastWriteAt + sliceDelayMs);
      if (bytesPerMs > 0) await this.#pause(this.#take(n));
      await writeAll(conn, bytes.subarray(at, end));
      this.#lastWriteAt = performance.now();
      this.#session.sent(n);
      this.#held -= n;
      if (this.#held <= HOLD_BYTES) this.#wakeReader?.();
      at = end;
    }
  }

  /**
   * Token bucket: takes `n` bytes' worth and returns when they may go. The
   * bucket holds at most a burst and may go negative (a debt paid in time).
   */
  #take(n: number): number {
    const { bytesPerMs, burstBytes } = this.#faults;
    const now = performance.now();
    this.#tokens = Math.min(
      burstBytes,
      this.#tokens + (now - this.#tokensAt) * bytesPerMs,
    );
    this.#tokensAt = now;
    this.#tokens -= n;
    return this.#tokens >= 0 ? now : now - this.#tokens / bytesPerMs;
  }

  /**
   * Waits until `until` (a `performance.now()` time). The wait is ours, not
   * the client's: the idle sweep spares the session meanwhile and counts
   * afresh after it.
   */
  async #pause(until: number): Promise<void> {
    const ms = until - performance.now();
    if (ms > 0) {
      const session = this.#session;
      session.holding = true;
      try {
        await delay(ms, this.#stopping.signal);
      } finally {
        session.holding = false;
        session.idleTicks = 0;
      }
    }
    if (this.error !== undefined) throw this.error;
  }

  /**
   * `closeAfterBytes` were echoed: half-close, then linger (reading and
   * dropping) until the client's EOF or {@linkcode LINGER_MS}.
   */
  async #hangUp(): Promise<void> {
    const session = this.#session;
    const reason = `echoed ${this.#faults.closeAfterBytes} bytes (close-after)`;
    session.halfClosed = true;
    await session.conn.closeWrite();
    this.hungUp = reason;
    session.holding = true; // the linger is ours too
    this.#linger = setTimeout(() => session.interrupt(reason), LINGER_MS);
  }

  #wake(): void {
    this.#wakeReader?.();
    this.#wakeWriter?.();
  }
}
