/**
 * The load generator's payloads (private to `bench.ts`): every message and
 * stream is cut from one shared pseudo-random pattern, so checking an echo is
 * a compare against memory.
 *
 * @module
 */

import { Buffer } from "node:buffer";

/** Length of the pseudo-random pattern all payloads are cut from (a prime). */
const PATTERN_BYTES = 1_048_573;
/** The pattern is followed by a copy of its start, so windows this long never wrap. */
const PATTERN_TAIL_BYTES = 64 * 1024;
/** Distinct messages per connection before they repeat (a prime). */
const MESSAGE_SLOTS = 4093;
/** Lines mode: the line pattern holds fewer distinct lines past this size. */
const LINE_PATTERN_MAX_BYTES = 4 * 1024 * 1024;
/** Below this, a JS loop compares faster than a call into native code. */
const NATIVE_COMPARE_BYTES = 256;
const NEWLINE = 10;

let sharedPattern: Uint8Array | undefined;

/** `length` pseudo-random bytes (xorshift32 from `seed`), `map`ped. */
function randomBytes(
  length: number,
  seed: number,
  map: (byte: number) => number,
): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(length);
  let x = seed | 0;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = map(x >>> 24);
  }
  return bytes;
}

/** Fills `bytes[period, end)` by repeating `bytes[0, period)`. */
function repeatTail(bytes: Uint8Array, period: number): void {
  for (let at = period; at < bytes.length; at += period) {
    bytes.copyWithin(at, 0, Math.min(period, bytes.length - at));
  }
}

/** The pattern (built on first use, ~1 MiB, shared by every raw payload). */
function pattern(): Uint8Array {
  if (sharedPattern) return sharedPattern;
  const bytes = randomBytes(
    PATTERN_BYTES + PATTERN_TAIL_BYTES,
    0x9e3779b9,
    (byte) => byte,
  );
  repeatTail(bytes, PATTERN_BYTES);
  return sharedPattern = bytes;
}

/**
 * The line pattern for `sizeBytes`-byte lines: `slots` lines back to back,
 * each printable bytes then `\n`, followed by a copy of its start.
 */
function linePattern(sizeBytes: number, slots: number): Uint8Array {
  const period = sizeBytes * slots;
  const bytes = randomBytes(
    period + PATTERN_TAIL_BYTES,
    0x2545f491,
    (byte) => 0x20 + byte % 95, // space to "~"
  );
  for (let end = sizeBytes - 1; end < period; end += sizeBytes) {
    bytes[end] = NEWLINE;
  }
  repeatTail(bytes, period);
  return bytes;
}

/** Options for {@linkcode Payload}. */
export interface PayloadOptions {
  /** Lines: printable bytes, each message ending in its only `\n`. @default {false} */
  lines?: boolean;
}

/**
 * The bytes every connection sends and expects back, cut from one shared
 * pseudo-random pattern, so checking an echo is a compare against memory.
 *
 * Pingpong: message `k` of connection `c` starts at pattern slot
 * `(c · 7919 + k) mod 4093`, so content differs per connection and per
 * message and a stale, duplicated, reordered or foreign echo fails the
 * check (unless exactly 4093 messages apart). Stream: connection `c` sends
 * the pattern from its own offset on, endlessly; a byte is checked against
 * its position in that stream.
 *
 * With `lines`, the pattern is lines of `sizeBytes` (printable bytes, then
 * `\n`), and messages and streams start at line boundaries. Lines over
 * 1 KiB have fewer slots (4 MiB of pattern at most, at least 2 slots).
 */
export class Payload {
  /** Message size in bytes. */
  readonly sizeBytes: number;
  /** Whether messages are lines (see {@linkcode PayloadOptions.lines}). */
  readonly lines: boolean;
  #pattern: Uint8Array;
  /** Where the pattern repeats (positions are taken modulo this). */
  #period: number;
  /** Distinct messages per connection. */
  #slots: number;
  // Filled on use; allocated whole so the array stays packed (fast elements).
  #views: (Uint8Array | undefined)[];

  /**
   * Payloads of `sizeBytes`-byte messages.
   *
   * @param sizeBytes message size (pingpong); any positive integer.
   * @throws {RangeError} if `sizeBytes` is not a positive safe integer.
   */
  constructor(sizeBytes: number, options: PayloadOptions = {}) {
    const { lines = false } = options;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 1) {
      throw new RangeError(
        `invalid message size ${sizeBytes}: expected a positive integer`,
      );
    }
    this.sizeBytes = sizeBytes;
    this.lines = lines;
    if (lines) {
      this.#slots = Math.max(
        2,
        Math.min(
          MESSAGE_SLOTS,
          Math.floor(LINE_PATTERN_MAX_BYTES / sizeBytes),
        ),
      );
      this.#period = sizeBytes * this.#slots;
      this.#pattern = linePattern(sizeBytes, this.#slots);
    } else {
      this.#slots = MESSAGE_SLOTS;
      this.#period = PATTERN_BYTES;
      this.#pattern = pattern();
    }
    this.#views = new Array<Uint8Array | undefined>(this.#slots).fill(
      undefined,
    );
  }

  /** Pattern position of byte 0 of message `k` of `connection`. */
  #messagePosition(connection: number, k: number): number {
    const slot = (connection * 7919 + k) % this.#slots;
    return (slot * this.sizeBytes) % this.#period;
  }

  /**
   * The bytes of message `k` of `connection`. Up to 64 KiB this is a cached
   * view into the shared pattern (no allocation after the first use): never
   * write to it. Larger messages are a fresh copy.
   */
  message(connection: number, k: number): Uint8Array {
    const slot = (connection * 7919 + k) % this.#slots;
    const position = (slot * this.sizeBytes) % this.#period;
    if (this.sizeBytes <= PATTERN_TAIL_BYTES) {
      return this.#views[slot] ??= this.#pattern.subarray(
        position,
        position + this.sizeBytes,
      );
    }
    return this.#copy(position, this.sizeBytes);
  }

  /**
   * Checks `received[0, length)` against bytes `[offset, offset + length)` of
   * message `k` of `connection`.
   *
   * @returns the index in `received` of the first wrong byte, or -1.
   */
  verifyMessage(
    connection: number,
    k: number,
    offset: number,
    received: Uint8Array,
    length: number = received.length,
  ): number {
    const position = this.#messagePosition(connection, k) + offset;
    return this.#compare(position % this.#period, received, length);
  }

  /**
   * Bytes `[offset, offset + length)` of the stream `connection` sends in
   * the `stream` pattern: a view into the shared pattern, never write to it.
   *
   * @throws {RangeError} if `length` is above 64 KiB.
   */
  stream(connection: number, offset: number, length: number): Uint8Array {
    if (length > PATTERN_TAIL_BYTES) {
      throw new RangeError(
        `invalid stream chunk ${length}: expected at most ${PATTERN_TAIL_BYTES} bytes`,
      );
    }
    const position = this.#streamPosition(connection, offset);
    return this.#pattern.subarray(position, position + length);
  }

  /**
   * Checks `received[0, length)` against bytes `[offset, offset + length)`
   * of the stream of `connection`.
   *
   * @returns the index in `received` of the first wrong byte, or -1.
   */
  verifyStream(
    connection: number,
    offset: number,
    received: Uint8Array,
    length: number = received.length,
  ): number {
    return this.#compare(
      this.#streamPosition(connection, offset),
      received,
      length,
    );
  }

  /** Pattern position of byte `offset` of the stream of `connection`. */
  #streamPosition(connection: number, offset: number): number {
    const start = this.lines
      ? ((connection * 104_729 + 7919) % this.#slots) * this.sizeBytes
      : connection * 104_729 + 7919;
    return (start + offset) % this.#period;
  }

  /** A copy of `length` pattern bytes from `position`, wrapping around. */
  #copy(position: number, length: number): Uint8Array {
    const bytes = new Uint8Array(length);
    for (let done = 0; done < length;) {
      const take = Math.min(length - done, PATTERN_TAIL_BYTES);
      bytes.set(this.#pattern.subarray(position, position + take), done);
      done += take;
      position = (position + take) % this.#period;
    }
    return bytes;
  }

  /** Compares `received[0, length)` with the pattern from `position` on. */
  #compare(position: number, received: Uint8Array, length: number): number {
    const expected = this.#pattern;
    for (let done = 0; done < length;) {
      const take = Math.min(length - done, PATTERN_TAIL_BYTES);
      if (take < NATIVE_COMPARE_BYTES) {
        for (let i = 0; i < take; i++) {
          if (received[done + i] !== expected[position + i]) return done + i;
        }
      } else {
        const got = Buffer.from(
          received.buffer,
          received.byteOffset + done,
          take,
        );
        const want = Buffer.from(
          expected.buffer,
          expected.byteOffset + position,
          take,
        );
        if (!got.equals(want)) {
          for (let i = 0; i < take; i++) {
            if (got[i] !== want[i]) return done + i;
          }
        }
      }
      done += take;
      position = (position + take) % this.#period;
    }
    return -1;
  }
}
