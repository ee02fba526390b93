/**
 * The messages between the `tcpecho server` worker pool (`_server_pool.ts`,
 * in the main isolate) and each worker (`_server_worker.ts`): {@linkcode
 * ToWorker} and {@linkcode FromWorker}. Plain data, as `postMessage` carries
 * it.
 *
 * @module
 */
import type { SharedLimitsData } from "./_limits.ts";
import type { MetricsSnapshot } from "./_metrics.ts";
import type { ServeOptions, ServerStats } from "./_server_types.ts";
import type { WarningCode } from "./_summary.ts";
import type { LogFormat, LogLevelName } from "./log.ts";

/** Main isolate → worker. */
export type ToWorker =
  | {
    type: "start";
    /** Which worker this is, from 0. */
    index: number;
    /** What to serve (plain data; the worker adds no callback but its own). */
    options: ServeOptions;
    /** The pool's `maxConns` count, in shared memory. */
    limits: SharedLimitsData;
    /** The pool's `maxConnsPerIp` count, when on. */
    ipLimits?: SharedLimitsData;
    /** Whether to record metrics (`--admin`), for `metrics` requests. */
    metrics: boolean;
    /** How the worker logs; its lines come back in `log` messages. */
    level: LogLevelName;
    format: LogFormat;
  }
  /** Answer with `stats`. */
  | { type: "stats" }
  /** Answer with `metrics` (only asked when started with `metrics`). */
  | { type: "metrics" }
  /** Stop gracefully: `draining`, then `stopped`. */
  | { type: "stop" };

/** Worker → main isolate. Messages of one worker arrive in order. */
export type FromWorker =
  /**
   * It serves, at `addr`; with TLS, `tlsLinger` says why it cannot release
   * the sockets of the connections it closes (the pool warns once).
   */
  | {
    type: "listening";
    addr: Deno.NetAddr | Deno.UnixAddr;
    tlsLinger?: string;
  }
  /** It could not start: the error's message and its causes', outermost first. */
  | { type: "failed"; messages: string[] }
  /** Log lines, whole, each ending in `\n`: write them as they are. */
  | { type: "log"; text: string }
  /** Its counters now. */
  | { type: "stats"; stats: ServerStats }
  /** Its metrics now. */
  | { type: "metrics"; snapshot: MetricsSnapshot }
  /**
   * `count` warnings of kind `code` (refusals, failed handshakes…) since its
   * last such message, `peer` the first of them (the pool logs them,
   * summarised for all workers).
   */
  | {
    type: "warning";
    peer: string;
    code: WarningCode;
    reason: string;
    count: number;
  }
  /** It stopped accepting and waits for this many connections. */
  | { type: "draining"; connections: number }
  /** It stopped; its final counters (and metrics, if it records them). */
  | { type: "stopped"; stats: ServerStats; snapshot?: MetricsSnapshot }
  /** An error nothing caught ended it (its logs were flushed first). */
  | { type: "crashed"; message: string; stack?: string };
