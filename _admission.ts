/**
 * Admission of the echo server's clients: `maxConns` at accept, then
 * `allow`/`deny` and `maxConnsPerIp` once the client's address is known
 * (after a PROXY header, when there is one); refusal warnings summarised the
 * way accept errors are, at most one line a second for each reason. Private
 * to `server.ts`.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { AccessList } from "./_cidr.ts";
import type { ConnLimits } from "./_limits.ts";
import type { ReleaseTls } from "./_tls_release.ts";

/**
 * Why a connection was refused, as `refused` connection events and the
 * `reason` label of `tcpecho_connections_refused_total` name it.
 */
export type RefusalCode = "max-conns" | "max-conns-per-ip" | "not-allowed";

/** Every {@linkcode RefusalCode}, in the order `/metrics` lists them. */
export const REFUSAL_CODES: readonly RefusalCode[] = [
  "max-conns",
  "max-conns-per-ip",
  "not-allowed",
];

/** How long after a refusal line more of the same reason are only counted. */
const SUMMARY_MS = 1000;

interface Window {
  /** Refusals counted since the last line. */
  count: number;
  /** The latest reason text (it may name a limit). */
  reason: string;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * Takes each refusal {@linkcode Admission} makes: a {@linkcode RefusalLog},
 * or in a worker of the CLI's pool, a messenger to the pool's one log.
 * Disposed with the {@linkcode Admission}.
 */
export interface RefusalReporter extends Disposable {
  /** One refusal of `peer`, for `code` (`reason` says it for people). */
  refused(peer: string, code: RefusalCode, reason: string): void;
}

/**
 * Logs refusals: the first of a reason as `[peer] refused: <reason>`, then,
 * while more of that reason keep coming, one line a second with their count,
 * `refused: <reason>; 4999 more in the last second`. A flood of refused
 * clients cannot flood the log. Dispose to log what is still counted.
 */
export class RefusalLog implements RefusalReporter {
  readonly #log: Logger;
  readonly #windows = new Map<RefusalCode, Window>();

  /** Logs to `log` at warning level. */
  constructor(log: Logger) {
    this.#log = log;
  }

  /** Logs (or counts) one refusal. */
  refused(peer: string, code: RefusalCode, reason: string): void {
    this.add(peer, code, reason, 1);
  }

  /**
   * Logs (or counts) `count` refusals of `code`, `peer` the first of them:
   * the pool adds up its workers' this way.
   */
  add(peer: string, code: RefusalCode, reason: string, count: number): void {
    const window = this.#windows.get(code);
    if (window !== undefined) {
      window.count += count;
      window.reason = reason;
      return;
    }
    this.#log.warn("[{peer}] refused: {reason}", { peer, reason, code });
    this.#open(code, reason);
    this.#windows.get(code)!.count += count - 1;
  }

  #open(code: RefusalCode, reason: string): void {
    const timer = setTimeout(() => this.#close(code), SUMMARY_MS);
    this.#windows.set(code, { count: 0, reason, timer });
  }

  /** Ends a second: logs its count, if any, and watches one more second. */
  #close(code: RefusalCode): void {
    const window = this.#windows.get(code)!;
    this.#windows.delete(code);
    if (window.count === 0) return;
    this.#summary(code, window);
    this.#open(code, window.reason);
  }

  #summary(code: RefusalCode, { count, reason }: Window): void {
    this.#log.warn("refused: {reason}; {count} more in the last second", {
      reason,
      count,
      code,
    });
  }

  /** Logs the counts not yet logged and stops the timers. */
  [Symbol.dispose](): void {
    for (const [code, window] of this.#windows) {
      clearTimeout(window.timer);
      if (window.count > 0) this.#summary(code, window);
    }
    this.#windows.clear();
  }
}

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
  readonly #log: RefusalReporter;
  readonly #onRefused: (refusal: Refusal) => void;
  readonly #release: ReleaseTls | undefined;

  /**
   * @param rules `limits` counts every connection (`maxConns`); `ipLimits`
   *   counts by address (`maxConnsPerIp`); `access` is `allow`/`deny`;
   *   `release`, on a TLS listener, releases a refused connection's socket
   * @param refusals takes each refusal: a {@linkcode RefusalLog} logs them
   *   summarised
   * @param onRefused told of each refusal (to count it)
   */
  constructor(
    rules: {
      limits: ConnLimits;
      ipLimits?: ConnLimits;
      access?: AccessList;
      release?: ReleaseTls;
    },
    refusals: RefusalReporter,
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
    this.#log.refused(refusal.peer, refusal.code, refusal.reason);
    this.#onRefused(refusal);
  }

  /** Logs the refusals still counted and stops the summary timers. */
  [Symbol.dispose](): void {
    this.#log[Symbol.dispose]();
  }
}
