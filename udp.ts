/**
 * UDP echo, RFC 862's other half: {@linkcode serveUdp} echoes each datagram
 * to its sender; {@linkcode connectUdp} opens a socket that talks to one
 * server; {@linkcode udpPipe} and {@linkcode udpInteractive} are the client;
 * {@linkcode runUdpBench} the load generator.
 *
 * Built on `Deno.listenDatagram`, which needs Deno's unstable `net` API
 * (deno.json enables it): it echoed 2–3× more datagrams per second than
 * `node:dgram` on the same core (README, "UDP").
 *
 * @module
 */
import { getLogger, type Logger } from "@logtape/logtape";
import { WarningLog, WarningThrottle } from "./_summary.ts";
import { AccessList } from "./_cidr.ts";
import {
  delay,
  escapePreview,
  formatAddr,
  isDisconnect,
  withDefaults,
} from "./io.ts";
import { randomSeed, seededRandom } from "./_random.ts";
import { checkUnstableNet, MAX_UDP_PAYLOAD } from "./_udp_client.ts";
import {
  type DatagramEvent,
  UDP_SERVE_DEFAULTS,
  type UdpServeOptions,
  type UdpServer,
  type UdpServerStats,
} from "./_udp_types.ts";

export {
  connectUdp,
  MAX_UDP4_PAYLOAD,
  MAX_UDP_PAYLOAD,
  UDP_CLIENT_DEFAULTS,
  UdpConn,
  type UdpConnectOptions,
  udpInteractive,
  udpPipe,
  type UdpPipeOptions,
  type UdpPipeResult,
} from "./_udp_client.ts";
export {
  runUdpBench,
  UDP_BENCH_DEFAULTS,
  type UdpBenchOptions,
} from "./_udp_bench.ts";

// Its options, defaults, stats and events: everything _udp_types.ts has.
export * from "./_udp_types.ts";

/** How much of a datagram a debug line shows. */
const PREVIEW_CHARS = 80;
/** Receive-error backoff (ENOBUFS and the like): first and longest wait. */
const RECEIVE_BACKOFF_MS = [5, 1000] as const;

/** A delayed echo waiting for its timer. */
interface Delayed {
  timer: ReturnType<typeof setTimeout>;
  sent: Promise<void>;
  /** Settles `sent` without sending (shutdown). */
  cancel(): void;
}

/**
 * Starts a UDP echo server: binding happens now (a port in use throws at
 * once). Each datagram goes back to its sender as it came, unless `drop`
 * drops it; `delayMs`/`jitterMs` hold it first.
 *
 * @example Echo on a free port, one datagram in four dropped
 * ```ts ignore
 * await using server = serveUdp({ port: 0, drop: 0.25, seed: 7 });
 * console.log(server.addr.port, server.stats.datagrams);
 * ```
 * @throws {Error} `cannot listen on udp:ADDR`, the OS error as `cause`
 * @throws {RangeError} for an option out of range
 */
export function serveUdp(options: UdpServeOptions = {}): UdpServer {
  const {
    hostname,
    port,
    drop,
    delayMs,
    jitterMs,
    seed = randomSeed(),
    shutdownTimeoutMs,
    maxDatagramBytes,
    maxPendingBytes,
    maxPeers,
    allow,
    deny,
    onDatagram,
  } = withDefaults(options, UDP_SERVE_DEFAULTS);
  if (!(drop >= 0 && drop <= 1)) {
    throw new RangeError(`invalid drop ${drop}: expected 0 to 1`);
  }
  for (const [name, ms] of [["delayMs", delayMs], ["jitterMs", jitterMs]]) {
    if (!(Number(ms) >= 0)) {
      throw new RangeError(`invalid ${name} ${ms}: expected 0 or more`);
    }
  }
  // The bounds of memory a flood can take: whole numbers, or no bound at all.
  for (
    const [name, value, least, most] of [
      ["maxDatagramBytes", maxDatagramBytes, 1, MAX_UDP_PAYLOAD],
      ["maxPendingBytes", maxPendingBytes, 0, Number.MAX_SAFE_INTEGER],
      ["maxPeers", maxPeers, 1, Number.MAX_SAFE_INTEGER],
    ] as const
  ) {
    if (!(Number.isSafeInteger(value) && value >= least && value <= most)) {
      throw new RangeError(
        `invalid ${name} ${value}: expected a whole number from ${least} to ${most}`,
      );
    }
  }
  const rules = new AccessList(allow, deny); // throws RangeError before binding
  const access = rules.empty ? undefined : rules;
  const log = getLogger(["tcpecho", "server"]);
  const socket = listenUdp(hostname, port);
  const addr = socket.addr as Deno.NetAddr;
  // As over TCP: bound, then `faults:`, then `listening on` last.
  const faults = describeFaults(drop, delayMs, jitterMs);
  if (faults !== undefined) {
    log.info("faults: {faults}, seed {seed}", { faults, seed });
  }
  log.info("listening on {where}", { where: `udp:${formatAddr(addr)}` });
  const dropRandom = seededRandom(seed, 0);
  const jitterRandom = seededRandom(seed, 1);
  const debug = log.isEnabledFor("debug");
  const warnings = new Warnings(log);
  // The TCP server's summariser: one line a second per reason, with a count.
  const refusals = new WarningLog(log);

  const stats: UdpServerStats = {
    datagrams: 0,
    peers: 0,
    peersCapped: false,
    echoed: 0,
    refused: 0,
    dropped: 0,
    overflow: 0,
    oversized: 0,
    failed: 0,
    bytesIn: 0,
    bytesOut: 0,
  };
  const peers = new Set<string>(); // bounded by maxPeers, whoever floods
  const delayed = new Set<Delayed>();
  let pendingBytes = 0;
  let stopping = false; // answering nothing new
  const closed = new AbortController(); // the socket is closed

  const report = (
    peer: Deno.NetAddr,
    bytes: number,
    fate: DatagramEvent["fate"],
  ) => onDatagram?.({ peer, bytes, fate });

  // allow/deny's verdict per sender address: a datagram costs a lookup, not
  // an address parse. Bounded as the peer count is: cleared when full.
  const verdicts = new Map<string, boolean>();
  function allowed(access: AccessList, hostname: string): boolean {
    let verdict = verdicts.get(hostname);
    if (verdict === undefined) {
      verdict = access.allows(hostname);
      if (verdicts.size >= maxPeers) verdicts.clear();
      verdicts.set(hostname, verdict);
    }
    return verdict;
  }

  function countPeer(from: Deno.NetAddr): void {
    if (stats.peersCapped) return;
    const key = `${from.hostname} ${from.port}`;
    if (peers.has(key)) return;
    if (peers.size >= maxPeers) {
      stats.peersCapped = true;
      peers.clear(); // its job is done: the count only grows from here
      return;
    }
    peers.add(key);
    stats.peers++;
  }

  async function echo(bytes: Uint8Array, from: Deno.NetAddr): Promise<void> {
    try {
      await socket.send(bytes, from);
    } catch (err) {
      // ICMP errors, EMSGSIZE, a closed socket at shutdown…: this datagram only.
      stats.failed++;
      log.debug("[{peer}] cannot echo {bytes} bytes: {err}", {
        peer: formatAddr(from),
        bytes: bytes.length,
        err: String(err),
      });
      report(from, bytes.length, "failed");
      return;
    }
    stats.echoed++;
    stats.bytesOut += bytes.length;
    report(from, bytes.length, "echoed");
  }

  function later(bytes: Uint8Array, from: Deno.NetAddr, ms: number): void {
    if (pendingBytes + bytes.length > maxPendingBytes) {
      stats.overflow++;
      warnings.warn(
        "overflow",
        "[{peer}] dropped: over {max} bytes of delayed echoes held",
        { peer: formatAddr(from), max: maxPendingBytes },
      );
      report(from, bytes.length, "overflow");
      return;
    }
    const copy = bytes.slice(); // the receive buffer is reused at once
    pendingBytes += copy.length;
    const done = Promise.withResolvers<void>();
    const item: Delayed = {
      timer: setTimeout(() => {
        echo(copy, from).finally(settle);
      }, ms),
      sent: done.promise,
      cancel() {
        clearTimeout(item.timer);
        settle();
      },
    };
    function settle(): void {
      if (!delayed.delete(item)) return;
      pendingBytes -= copy.length;
      done.resolve();
    }
    delayed.add(item);
  }

  async function handle(data: Uint8Array, from: Deno.NetAddr): Promise<void> {
    const n = data.length;
    stats.datagrams++;
    stats.bytesIn += n;
    countPeer(from);
    if (access !== undefined && !allowed(access, from.hostname)) {
      stats.refused++;
      refusals.warn(formatAddr(from), "not-allowed", "not allowed");
      report(from, n, "refused");
      return;
    }
    if (n > maxDatagramBytes) {
      stats.oversized++;
      warnings.warn(
        "oversized",
        "[{peer}] datagram over {max} bytes not echoed",
        { peer: formatAddr(from), max: maxDatagramBytes },
      );
      report(from, n, "oversized");
      return;
    }
    if (drop > 0 && dropRandom() < drop) {
      stats.dropped++;
      if (debug) logDatagram(log, "dropped", from, data);
      report(from, n, "dropped");
      return;
    }
    const wait = delayMs + (jitterMs > 0 ? jitterRandom() * jitterMs : 0);
    if (debug) logDatagram(log, wait > 0 ? "delayed" : "echoed", from, data);
    if (wait > 0) later(data, from, wait);
    else await echo(data, from);
  }

  async function receiveLoop(): Promise<void> {
    // One byte more than the largest datagram served: a fuller read was cut.
    const buf = new Uint8Array(maxDatagramBytes + 1);
    let backoffMs = 0;
    for (;;) {
      let data: Uint8Array;
      let from: Deno.Addr;
      try {
        [data, from] = await socket.receive(buf);
      } catch (err) {
        if (closed.signal.aborted) return;
        if (isDisconnect(err)) {
          // Windows reports an earlier echo's ICMP "port unreachable" here.
          log.debug("receive: {err}", { err: String(err) });
          continue;
        }
        backoffMs = Math.min(
          RECEIVE_BACKOFF_MS[1],
          Math.max(RECEIVE_BACKOFF_MS[0], backoffMs * 2),
        );
        warnings.warn("receive", "cannot receive a datagram: {err}; retrying", {
          err: String(err),
        });
        await delay(backoffMs, closed.signal);
        continue;
      }
      backoffMs = 0;
      if (!stopping) await handle(data, from as Deno.NetAddr);
    }
  }

  const receiving = receiveLoop();
  let closing: Promise<void> | undefined;
  const { promise: finished, resolve: markFinished } = Promise
    .withResolvers<void>();

  async function shutdown(): Promise<void> {
    stopping = true; // from now on datagrams are read and ignored
    if (delayed.size > 0) {
      log.info("stopping: waiting up to {timeout} for {count} delayed echoes", {
        timeout: `${(shutdownTimeoutMs / 1000).toFixed(2)} s`,
        count: delayed.size,
      });
      const deadline = Promise.withResolvers<void>();
      const timer = setTimeout(deadline.resolve, shutdownTimeoutMs);
      try {
        const sent = [...delayed].map((d) => d.sent);
        await Promise.race([Promise.all(sent), deadline.promise]);
      } finally {
        clearTimeout(timer);
      }
      if (delayed.size > 0) {
        log.warn("stopping: {count} delayed echoes not sent", {
          count: delayed.size,
        });
        for (const item of delayed) item.cancel();
      }
    }
    closed.abort();
    socket.close(); // the pending receive rejects with Interrupted
    await receiving;
    refusals[Symbol.dispose](); // the counts still open come before the end
    // Past maxPeers the count is a lower bound, and says so.
    log.info(
      `stopped: {datagrams} datagrams from ${
        stats.peersCapped ? "≥" : ""
      }{peers} peers, {bytesOut} bytes echoed`,
      {
        datagrams: stats.datagrams,
        peers: stats.peers,
        peersCapped: stats.peersCapped,
        bytesOut: stats.bytesOut,
      },
    );
    markFinished();
  }

  const server: UdpServer = {
    addr,
    seed,
    finished,
    stats,
    close() {
      closing ??= shutdown();
      return closing;
    },
    [Symbol.asyncDispose]() {
      return server.close();
    },
  };
  return server;
}

/** `drop 0.5, delay 100 ms, jitter 20 ms`, or undefined when none is on. */
function describeFaults(
  drop: number,
  delayMs: number,
  jitterMs: number,
): string | undefined {
  const parts = [];
  if (drop > 0) parts.push(`drop ${drop}`);
  if (delayMs > 0) parts.push(`delay ${delayMs} ms`);
  if (jitterMs > 0) parts.push(`jitter ${jitterMs} ms`);
  return parts.length > 0 ? parts.join(", ") : undefined;
}

function logDatagram(
  log: Logger,
  fate: string,
  from: Deno.NetAddr,
  data: Uint8Array,
): void {
  log.debug("[{peer}] {fate} {bytes} bytes: {text}", {
    peer: formatAddr(from),
    fate,
    bytes: data.length,
    text: escapePreview(data, PREVIEW_CHARS),
  });
}

/**
 * Warnings a flood could repeat (oversized datagrams, receive errors): at most
 * one line a second per kind, saying how many were held back.
 */
class Warnings {
  readonly #throttle = new WarningThrottle();

  constructor(readonly log: Logger) {}

  warn(kind: string, message: string, props: Record<string, unknown>): void {
    const count = this.#throttle.count(kind);
    if (count === undefined) return;
    const held = count - 1;
    this.log.warn(
      held > 0 ? `${message} ({held} more since the last warning)` : message,
      { ...props, held },
    );
  }
}

function listenUdp(hostname: string, port: number): Deno.DatagramConn {
  const where = `udp:${formatAddr({ transport: "udp", hostname, port })}`;
  try {
    checkUnstableNet();
    return Deno.listenDatagram({ transport: "udp", hostname, port });
  } catch (cause) {
    throw new Error(`cannot listen on ${where}`, { cause });
  }
}
