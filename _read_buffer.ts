/**
 * The echo server's adaptive read buffer: small while a connection idles,
 * big while it streams. Private to `_session.ts`.
 *
 * @module
 */

/** Read buffer bounds: see {@linkcode ReadBuffer}. */
const MIN_READ_BYTES = 1024;
const MAX_READ_BYTES = 256 * 1024;
/** Small reads in a row (under a quarter of the buffer) before it halves. */
const SHRINK_AFTER_READS = 4;

/**
 * The adaptive read buffer. An idle connection's pending read holds the whole
 * buffer, so it starts at {@linkcode MIN_READ_BYTES} (an idle connection costs
 * ~7.5 KiB of server memory in all); a read that fills it doubles it, up to
 * {@linkcode MAX_READ_BYTES} (big reads are what make streaming fast);
 * {@linkcode SHRINK_AFTER_READS} small reads in a row halve it again.
 */
export class ReadBuffer {
  bytes: Uint8Array = new Uint8Array(MIN_READ_BYTES);
  #smallReads = 0;

  /** Resizes after a read of `n` bytes whose data has been used up. */
  adapt(n: number): void {
    const size = this.bytes.length;
    if (n === size) {
      this.#smallReads = 0;
      if (size < MAX_READ_BYTES) this.bytes = new Uint8Array(size * 2);
    } else if (n < size >> 2 && size > MIN_READ_BYTES) {
      if (++this.#smallReads >= SHRINK_AFTER_READS) {
        this.#smallReads = 0;
        this.bytes = new Uint8Array(size >> 1);
      }
    } else {
      this.#smallReads = 0;
    }
  }

  /** Doubles the buffer, keeping its first `used` bytes (a partial line). */
  grow(used: number): void {
    const bigger = new Uint8Array(this.bytes.length * 2);
    bigger.set(this.bytes.subarray(0, used));
    this.bytes = bigger;
  }
}
