/**
 * Admission of the echo server's clients: `maxConns` at accept, then
 * `allow`/`deny` and `maxConnsPerIp` once the client's address is known
 * (after a PROXY header, when there is one); refusal warnings summarised
 * (see `_summary.ts`). Private to `server.ts`.
 *
 * @module
 */
import type { AccessList } from "./_cidr.ts";
import type { ConnLimits } from "./_limits.ts";
import type { ReleaseTls } from "./_tls_release.ts";
import type { RefusalCode, WarningReporter } from "./_summary.ts";

export type { RefusalCode } from "./_summary.ts";

/** Every {@linkcode RefusalCode}, in the order `/metrics` lists them. */
export const REFUSAL_CODES: readonly RefusalCode[] = [
  "max-conns",
  "max-conns-per-ip",
  "not-allowed",
];

/** A refused connection, as {@linkcode Admission} reports it. */
export interface Refusal {
  /** The peer tag. */
  peer: string;
  /** With a PROXY header: the socket's own peer tag. */
  via?: string;
  /** Which rule refused it. */
  code: RefusalCode;
  /** The same for people: `not allowed`, `too many connections (max-conns 2)`. */
  reason: string;
}

/** The permit of a connection no per-address limit counts. */
export const NO_PERMIT: Disposable = { [Symbol.dispose]() {} };

/**
 * Decides who is served. Each step returns a permit to hold while the
 * connection runs, or refuses: closes the connection, logs it (summarised)
 * and reports it. Dispose to log the refusals still counted.
 */
export class Admission implements Disposable {
  readonly #limits: ConnLimits;
  readonly #ipLimits: ConnLimits | undefined;
  readonly #access: AccessList | undefined;
  readonly #log: WarningReporter;
  readonly #onRefused: (refusal: Refusal) => void;
  readonly #release: ReleaseTls | undefined;

  /**
   * @param rules `limits` counts every connection (`maxConns`); `ipLimits`
   *   counts by address (`maxConnsPerIp`); `access` is `allow`/`deny`;
   *   `release`, on a TLS listener, releases a refused connection's socket
   * @param refusals takes each refusal: a `WarningLog` logs them summarised
   * @param onRefused told of each refusal (to count it)
   */
  constructor(
    rules: {
      limits: ConnLimits;
      ipLimits?: ConnLimits;
      access?: AccessList;
      release?: ReleaseTls;
    },
    refusals: WarningReporter,
    onRefused: (refusal: Refusal) => void,
  ) {
    this.#limits = rules.limits;
    this.#ipLimits = rules.ipLimits;
    this.#access = rules.access;
    this.#release = rules.release;
    this.#log = refusals;
    this.#onRefused = onRefused;
  }

  /** At accept: a `maxConns` slot for `conn`, or a refusal. */
  accept(conn: Deno.Conn, peer: string, ip: string): Disposable | undefined {
    const slot = this.#limits.acquire(ip);
    if (slot === undefined) {
      this.#refuse(conn, {
        peer,
        code: "max-conns",
        reason: this.#limits.refusal(ip),
      });
    }
    return slot;
  }

  /**
   * Once the client's address is known: checks `allow`/`deny` and takes its
   * `maxConnsPerIp` permit, or refuses.
   */
  client(
    conn: Deno.Conn,
    peer: string,
    ip: string,
    via?: string,
  ): Disposable | undefined {
    if (this.#access !== undefined && !this.#access.allows(ip)) {
      this.#refuse(conn, {
        peer,
        via,
        code: "not-allowed",
        reason: "not allowed",
      });
      return undefined;
    }
    if (this.#ipLimits === undefined) return NO_PERMIT;
    const permit = this.#ipLimits.acquire(ip);
    if (permit === undefined) {
      const reason = this.#ipLimits.refusal(ip);
      this.#refuse(conn, { peer, via, code: "max-conns-per-ip", reason });
    }
    return permit;
  }

  #refuse(conn: Deno.Conn, refusal: Refusal): void {
    this.#release?.(conn); // its handshake would hold the socket
    conn[Symbol.dispose]();
    if (refusal.via === undefined) delete refusal.via;
    this.#log.warn(refusal.peer, refusal.code, refusal.reason);
    this.#onRefused(refusal);
  }

  /** Logs the refusals still counted and stops the summary timers. */
  [Symbol.dispose](): void {
    this.#log[Symbol.dispose]();
  }
}
