/**
 * The UDP server's public types: {@linkcode UdpServeOptions} and
 * {@linkcode UDP_SERVE_DEFAULTS}, a running {@linkcode UdpServer}, its live
 * {@linkcode UdpServerStats}, and the {@linkcode DatagramEvent}s that
 * `onDatagram` hears. Private to `udp.ts`, which re-exports all of it (kept
 * apart, as `_server_types.ts` is from `server.ts`, so that `udp.ts` holds
 * the server itself): whatever is exported here is public.
 *
 * @module
 */
import { SERVE_DEFAULTS } from "./_server_types.ts";
import { MAX_UDP_PAYLOAD } from "./_udp_client.ts";

/** Options for `serveUdp()`. */
export interface UdpServeOptions {
  /** Address to bind. @default {"127.0.0.1"} */
  hostname?: string;
  /** UDP port; `0` lets the OS choose. @default {8080} */
  port?: number;
  /** Share of datagrams (0–1) dropped unanswered. @default {0} */
  drop?: number;
  /** Wait this long before each echo. @default {0} */
  delayMs?: number;
  /** Plus a uniformly random 0 to this per datagram (echoes may reorder). @default {0} */
  jitterMs?: number;
  /**
   * Seeds `drop` and `jitter`: with the same seed, the n-th datagram received
   * is dropped (or delayed as long) in every run. @default {random, logged}
   */
  seed?: number;
  /** On {@linkcode UdpServer.close}: wait this long for delayed echoes. @default {5000} */
  shutdownTimeoutMs?: number;
  /** A longer datagram is not echoed (a warning). @default {65527} */
  maxDatagramBytes?: number;
  /** Delayed echoes held at once, in bytes; past it, datagrams are dropped with a warning. @default {16777216} */
  maxPendingBytes?: number;
  /** Distinct peers counted exactly; past it the count is a lower bound. @default {10000} */
  maxPeers?: number;
  /**
   * Answer only senders in these ranges (IPv4 or IPv6 CIDR; an address is one
   * host); a datagram from anyone else is dropped unanswered, counted and
   * warned about (`[peer] refused: not allowed`, summarised). @default {[]} (everyone)
   */
  allow?: readonly string[];
  /** Refuse senders in these ranges, even if allowed. @default {[]} */
  deny?: readonly string[];
  /**
   * Called once per datagram with what became of it (after its echo is
   * sent). The hook for tests and, later, metrics. Must not throw.
   */
  onDatagram?: (event: DatagramEvent) => void;
}

/** Defaults of {@linkcode UdpServeOptions}; also printed by `--help`. */
export const UDP_SERVE_DEFAULTS = {
  hostname: SERVE_DEFAULTS.hostname,
  port: SERVE_DEFAULTS.port,
  drop: 0,
  delayMs: 0,
  jitterMs: 0,
  shutdownTimeoutMs: SERVE_DEFAULTS.shutdownTimeoutMs,
  maxDatagramBytes: MAX_UDP_PAYLOAD,
  maxPendingBytes: 16 * 1024 * 1024,
  maxPeers: 10_000,
  allow: [],
  deny: [],
} as const;

/** What became of one datagram, for {@linkcode UdpServeOptions.onDatagram}. */
export interface DatagramEvent {
  /** Its sender. */
  peer: Deno.NetAddr;
  /** Its size (for `oversized`: more than `maxDatagramBytes`, maybe cut). */
  bytes: number;
  /**
   * `echoed`; `refused` by `allow`/`deny`; `dropped` by `drop`; `overflow`:
   * too many delayed echoes held; `oversized`: over `maxDatagramBytes`;
   * `failed`: the echo could not be sent.
   */
  fate: "echoed" | "refused" | "dropped" | "overflow" | "oversized" | "failed";
}

/** Live counters of a running {@linkcode UdpServer}. */
export interface UdpServerStats {
  /** Datagrams received, whatever became of them. */
  datagrams: number;
  /** Distinct senders (address and port), exact up to `maxPeers`. */
  peers: number;
  /** Whether more than `maxPeers` sent: `peers` is then a lower bound. */
  peersCapped: boolean;
  /** Datagrams echoed. */
  echoed: number;
  /** Datagrams from senders `allow`/`deny` refuse, not answered. */
  refused: number;
  /** Datagrams dropped by `drop`. */
  dropped: number;
  /** Datagrams dropped because `maxPendingBytes` of delayed echoes were held. */
  overflow: number;
  /** Datagrams over `maxDatagramBytes`, not echoed. */
  oversized: number;
  /** Echoes the OS refused to send. */
  failed: number;
  /** Bytes received. */
  bytesIn: number;
  /** Bytes echoed. */
  bytesOut: number;
}

/** A running UDP echo server, shaped like the TCP `Server`. */
export interface UdpServer extends AsyncDisposable {
  /** Where it listens; with `port: 0`, the real port. */
  readonly addr: Deno.NetAddr;
  /** The seed of `drop` and `jitter` (given, or drawn at random). */
  readonly seed: number;
  /** Settles once the server has stopped and its socket is closed. */
  readonly finished: Promise<void>;
  /** Live counters. */
  readonly stats: Readonly<UdpServerStats>;
  /**
   * Stops: answers nothing new, waits up to `shutdownTimeoutMs` for delayed
   * echoes, closes the socket. Idempotent.
   */
  close(): Promise<void>;
}
