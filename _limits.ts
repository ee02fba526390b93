/**
 * Admission limits (`maxConns`, `maxConnsPerIp`) as owned permits: a
 * connection's task holds its permit with `using`, so the slot is given back
 * however the task ends. Private to `server.ts`.
 *
 * @module
 */

/**
 * Counts open connections against the server's limits. {@linkcode LocalConnLimits}
 * counts in this isolate; an implementation over shared memory (one count
 * for several worker isolates) satisfies the same interface.
 */
export interface ConnLimits {
  /**
   * Takes a slot for a connection from `ip`.
   *
   * @returns a permit to dispose when the connection ends, or `undefined`
   *   when a limit is reached
   */
  acquire(ip: string): Disposable | undefined;
  /**
   * Why {@linkcode ConnLimits.acquire} refuses `ip` now (logs and events show
   * it after the peer tag, which names the address).
   */
  refusal(ip: string): string;
}

/** {@linkcode ConnLimits} counted in this isolate. */
export class LocalConnLimits implements ConnLimits {
  readonly #maxConns: number;
  readonly #maxConnsPerIp: number;
  #open = 0;
  /** Open connections per address; kept only when `maxConnsPerIp` is set. */
  readonly #perIp = new Map<string, number>();

  /**
   * Limits with nothing open yet.
   *
   * @param maxConns connections at once
   * @param maxConnsPerIp connections at once from one address; `0` is no limit
   */
  constructor(maxConns: number, maxConnsPerIp: number) {
    this.#maxConns = maxConns;
    this.#maxConnsPerIp = maxConnsPerIp;
  }

  acquire(ip: string): Disposable | undefined {
    if (this.#open >= this.#maxConns) return undefined;
    const perIp = this.#maxConnsPerIp > 0;
    if (perIp) {
      const fromIp = (this.#perIp.get(ip) ?? 0) + 1;
      if (fromIp > this.#maxConnsPerIp) return undefined;
      this.#perIp.set(ip, fromIp);
    }
    this.#open++;
    let held = true;
    return {
      [Symbol.dispose]: () => {
        if (!held) return; // a permit is given back once
        held = false;
        this.#open--;
        if (!perIp) return;
        const left = this.#perIp.get(ip)! - 1;
        if (left === 0) this.#perIp.delete(ip);
        else this.#perIp.set(ip, left);
      },
    };
  }

  refusal(_ip: string): string {
    return this.#open >= this.#maxConns
      ? `too many connections (max-conns ${this.#maxConns})`
      : `too many connections (max-conns-per-ip ${this.#maxConnsPerIp})`;
  }
}
