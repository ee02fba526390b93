/**
 * The idle sweep: one timer for all of a server's connections instead of one
 * per connection. Private to `server.ts`.
 *
 * @module
 */

/** Sweep ticks per idle timeout. */
const TICKS_PER_TIMEOUT = 4;
/**
 * Quiet ticks before a connection counts as idle: with four ticks per
 * timeout, an idle connection is closed between 1 and 1.25 timeouts.
 */
const QUIET_TICKS = 5;

/** What the sweep sees of a connection. */
export interface Idler {
  /**
   * Sweep ticks since a byte last moved: the connection sets it to `0` on
   * every read and write (a store, nothing more), the sweep counts it up.
   */
  idleTicks: number;
}

/**
 * Calls `onIdle` for each item of a live collection that has moved no byte
 * for the timeout. Dispose to stop the timer.
 */
export class IdleSweep<T extends Idler> implements Disposable {
  readonly #timer: ReturnType<typeof setInterval> | undefined;

  /**
   * Starts sweeping `items`.
   *
   * @param timeoutMs how long a connection may stay quiet; `0` starts no timer
   * @param items the open connections, read at every tick
   * @param onIdle called at every tick for each idle item, until it leaves
   *   `items` (it must tolerate being called again)
   */
  constructor(
    timeoutMs: number,
    items: Iterable<T>,
    onIdle: (item: T) => void,
  ) {
    if (timeoutMs <= 0) return;
    this.#timer = setInterval(() => {
      for (const item of items) {
        if (++item.idleTicks >= QUIET_TICKS) onIdle(item);
      }
    }, Math.max(1, timeoutMs / TICKS_PER_TIMEOUT));
  }

  /** Stops the timer. */
  [Symbol.dispose](): void {
    clearInterval(this.#timer);
  }
}
