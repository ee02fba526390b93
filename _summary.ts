/**
 * The warnings a flood of hostile clients repeats, one per connection:
 * refusals (limits, `allow`/`deny`), failed TLS handshakes and bad or missing
 * PROXY headers. Each kind is summarised: the first with its detail, then
 * at most one line a second with a count. And {@linkcode WarningThrottle}
 * for warnings that carry their own detail (accept errors, oversized
 * datagrams). Private to `server.ts`, `_listen.ts`, `udp.ts` and the CLI's
 * worker pool.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";

/**
 * Why a connection was refused, as `refused` connection events and the
 * `reason` label of `tcpecho_connections_refused_total` name it.
 */
export type RefusalCode = "max-conns" | "max-conns-per-ip" | "not-allowed";

/**
 * Why the server closed a connection it had accepted, for the warnings a
 * peer can cause at will: a failed TLS handshake, a bad PROXY header, none in
 * time, a line over `--max-line`.
 */
export type ClosingCode =
  | "tls-handshake"
  | "proxy-header"
  | "proxy-timeout"
  | "max-line";

/** A warning summarised per kind: {@linkcode WarningLog}. */
export type WarningCode = RefusalCode | ClosingCode;

/** What the summary line of a closing says, when its reasons vary. */
const CLOSING_SUMMARY: Partial<Record<ClosingCode, string>> = {
  "tls-handshake": "TLS handshake failed",
  "proxy-header": "bad PROXY header",
};

const CLOSINGS: readonly string[] = [
  "tls-handshake",
  "proxy-header",
  "proxy-timeout",
  "max-line",
] satisfies ClosingCode[];

/** How long after a line of a kind more of the same are only counted. */
const SUMMARY_MS = 1000;

interface Window {
  /** Warnings counted since the last line. */
  count: number;
  /** The latest reason text (it may name a limit). */
  reason: string;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * Takes each summarised warning: a {@linkcode WarningLog}, or in a worker of
 * the CLI's pool, a messenger to the pool's one log. Dispose to log (or
 * send) what is still counted.
 */
export interface WarningReporter extends Disposable {
  /** One warning about `peer`, of kind `code` (`reason` says it for people). */
  warn(peer: string, code: WarningCode, reason: string): void;
}

/**
 * Logs the warnings of a kind: the first as `[peer] refused: <reason>` (or
 * `[peer] closing: <reason>`), then, while more of that kind keep coming, one
 * line a second with their count, `refused: <reason>; 4999 more in the last
 * second`. A flood of bad clients cannot flood the log.
 */
export class WarningLog implements WarningReporter {
  readonly #log: Logger;
  readonly #windows = new Map<WarningCode, Window>();

  /** Logs to `log` at warning level. */
  constructor(log: Logger) {
    this.#log = log;
  }

  /** Logs (or counts) one warning. */
  warn(peer: string, code: WarningCode, reason: string): void {
    this.add(peer, code, reason, 1);
  }

  /**
   * Logs (or counts) `count` warnings of `code`, `peer` the first of them:
   * the pool adds up its workers' this way.
   */
  add(peer: string, code: WarningCode, reason: string, count: number): void {
    const window = this.#windows.get(code);
    if (window !== undefined) {
      window.count += count;
      window.reason = reason;
      return;
    }
    if (CLOSINGS.includes(code)) {
      this.#log.warn("[{peer}] closing: {reason}", { peer, reason, code });
    } else {
      this.#log.warn("[{peer}] refused: {reason}", { peer, reason, code });
    }
    this.#open(code, reason);
    this.#windows.get(code)!.count += count - 1;
  }

  #open(code: WarningCode, reason: string): void {
    const timer = setTimeout(() => this.#close(code), SUMMARY_MS);
    this.#windows.set(code, { count: 0, reason, timer });
  }

  /** Ends a second: logs its count, if any, and watches one more second. */
  #close(code: WarningCode): void {
    const window = this.#windows.get(code)!;
    this.#windows.delete(code);
    if (window.count === 0) return;
    this.#summary(code, window);
    this.#open(code, window.reason);
  }

  #summary(code: WarningCode, { count, reason }: Window): void {
    const closing = CLOSINGS.includes(code);
    this.#log.warn(
      `${
        closing ? "closing" : "refused"
      }: {reason}; {count} more in the last second`,
      {
        reason: CLOSING_SUMMARY[code as ClosingCode] ?? reason,
        count,
        code,
      },
    );
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

/**
 * For warnings that carry their own detail (an accept error, an oversized
 * datagram): at most one line a second per kind, each saying how many there
 * were since the last. Counted as they come, no timer: a line is due at the
 * first of a kind after the second is over.
 */
export class WarningThrottle {
  readonly #last = new Map<string, { at: number; held: number }>();
  readonly #now: () => number;

  /** `now`: the clock, in milliseconds (tests give their own). */
  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /**
   * Counts one warning of `kind`. Returns how many came since the last line
   * (this one included) when a line is due now, else `undefined`.
   */
  count(kind: string): number | undefined {
    const now = this.#now();
    const last = this.#last.get(kind);
    if (last !== undefined && now - last.at < SUMMARY_MS) {
      last.held++;
      return undefined;
    }
    this.#last.set(kind, { at: now, held: 0 });
    return (last?.held ?? 0) + 1;
  }
}
