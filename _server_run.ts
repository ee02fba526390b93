/**
 * How `tcpecho server` runs once its options are checked: TCP (and TLS, and
 * unix sockets) in the worker pool of `_server_pool.ts`, with the admin
 * endpoint, the one-per-server log lines and the signals in the main
 * isolate; UDP in the main isolate. Private to `_server_command.ts`.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { WarningLog } from "./_summary.ts";
import { serveAdmin } from "./_admin.ts";
import type { CommandContext } from "./_cli.ts";
import { FaultPlan } from "./_faults.ts";
import { emptySnapshot, sumSnapshots, udpSnapshot } from "./_metrics.ts";
import { ServerPool } from "./_server_pool.ts";
import { boundIoTick, IO_EVENTS_ENV } from "./_tick.ts";
import { formatAddr } from "./io.ts";
import {
  type LogFormat,
  type LogLevelName,
  Seconds,
  writeStderr,
} from "./log.ts";
import {
  SERVE_DEFAULTS,
  type ServeOptions,
  TLS_LINGER_WARNING,
} from "./server.ts";
import { serveUdp, type UdpServeOptions, type UdpServer } from "./udp.ts";

/** What {@linkcode runPool} serves, and how. */
export interface RunOptions {
  /** Worker isolates, each with its own listener. */
  workers: number;
  /** What each worker serves (plain data). */
  serve: ServeOptions;
  /** The workers' log level and format (the main isolate's are configured). */
  level: LogLevelName;
  format: LogFormat;
  /** `--admin`: where to serve `/metrics`, `/healthz` and `/readyz`. */
  admin?: { hostname: string; port: number };
}

/**
 * Runs the server's worker pool until a stop signal: signal handlers first,
 * then the admin endpoint, then the workers; then, once, the TLS warning,
 * the `faults:` line and `listening on`; at the end `stopped:` with the
 * totals. A worker's death ends it with that error. `/readyz` (`admin`) is
 * 200 while every worker accepts: not before they listen, nor after a stop
 * signal or a worker's death.
 *
 * Faults: the seed is drawn here when not given, so that every worker has
 * it and `faults:` names it; worker `i` draws from sequence `i` of it (see
 * `FaultPlan.from`), so worker 0 draws what `serve()` would.
 *
 * @returns the exit code
 * @throws {Error} when a worker cannot start or dies
 */
export async function runPool(
  ctx: CommandContext,
  options: RunOptions,
): Promise<number> {
  const log = getLogger(["tcpecho", "server"]);
  const { workers, serve, level, format, admin } = options;
  // Signals are heard from now on, before anything listens.
  const running: { pool?: ServerPool; draining?: boolean } = {};
  using _stop = ctx.onStopSignals(() => {
    running.draining = true;
    // A worker that dies meanwhile fails close() too: finished says why.
    running.pool?.close().catch(() => {});
  });
  using _stats = ctx.onStatsSignal(() => {
    running.pool?.stats().then(
      ({ active, served, refused, bytesOut }) =>
        log.info(
          "stats: {active} active, {served} served, {refused} refused, {bytesOut} bytes echoed",
          { active, served, refused, bytesOut },
        ),
      () => {}, // the pool is going down: finished says why
    );
  });
  // Before the workers start: their runtimes read it as they start.
  const tick = boundIoTick();
  if (tick.source === "default") {
    log.warn(
      "cannot set {name} (no --allow-env for it): under load, some connections may wait long",
      { name: IO_EVENTS_ENV },
    );
  }
  log.debug("{workers} workers, {name}={value} ({source})", {
    workers,
    name: IO_EVENTS_ENV,
    ...tick,
  });
  const discard = (serve.mode ?? SERVE_DEFAULTS.mode) === "discard";
  const faults = discard ? undefined : FaultPlan.from(serve);
  // One summary a second per kind, for all workers (the SPEC's bound).
  using warnings = new WarningLog(log);
  // The admin endpoint binds first: if it cannot, no client was accepted.
  await using _admin = admin && serveAdmin({
    ...admin,
    snapshot: async () =>
      running.pool
        ? sumSnapshots(await running.pool.snapshots())
        : emptySnapshot(),
    ready: () => running.pool?.accepting ?? false,
  });
  const pool = await ServerPool.start({
    workers,
    serve: faults ? { ...serve, seed: faults.seed } : serve,
    level,
    format,
    metrics: admin !== undefined,
    onLog: writeStderr,
    onWarning: (peer, code, reason, count) =>
      warnings.add(peer, code, reason, count),
    onDraining(count) {
      if (count === 0) return;
      const timeoutMs = serve.shutdownTimeoutMs ??
        SERVE_DEFAULTS.shutdownTimeoutMs;
      log.info(
        "stopping: waiting up to {timeout_s} s for {count} connections",
        { timeout_s: new Seconds(timeoutMs), count },
      );
    },
  });
  running.pool = pool;
  if (pool.tlsLinger !== undefined) {
    log.warn(TLS_LINGER_WARNING, { why: pool.tlsLinger });
  }
  if (faults !== undefined) {
    log.info("faults: {faults}", { faults: faults.describe() });
  }
  if (running.draining) pool.close().catch(() => {}); // finished says why
  else log.info("listening on {where}", { where: formatAddr(pool.addr) });
  const { served, bytesOut } = await pool.finished;
  warnings[Symbol.dispose](); // the counts still open come before the end
  log.info("stopped: {served} connections served, {bytesOut} bytes echoed", {
    served,
    bytesOut,
  });
  return 0;
}

/**
 * Runs a UDP echo server in this isolate until a stop signal. One socket
 * cannot be shared by workers, and one receive loop has no other socket to
 * be unfair to: a worker would only add a hop for logs and counters. SIGUSR1
 * logs `stats: N datagrams from M peers, B bytes echoed`. With `admin`, the
 * admin endpoint binds first and `/metrics` shows the datagram counters;
 * `/readyz` is 503 from the first stop signal.
 *
 * @returns the exit code
 */
export async function runUdp(
  ctx: CommandContext,
  options: UdpServeOptions,
  admin?: { hostname: string; port: number },
): Promise<number> {
  const log = getLogger(["tcpecho", "server"]);
  const running: { server?: UdpServer; draining?: boolean } = {};
  // Signals are heard before `listening on` (serveUdp logs it).
  using _stop = ctx.onStopSignals(() => {
    running.draining = true;
    void running.server?.close();
  });
  using _stats = ctx.onStatsSignal(() => {
    if (running.server === undefined) return;
    const { datagrams, peers, peersCapped, bytesOut } = running.server.stats;
    log.info(
      `stats: {datagrams} datagrams from ${
        peersCapped ? "≥" : ""
      }{peers} peers, {bytesOut} bytes echoed`,
      { datagrams, peers, peersCapped, bytesOut },
    );
  });
  // The admin endpoint binds first: if it cannot, nothing was answered.
  // No request is handled before serveUdp() below has returned (both bind
  // synchronously), so `running.server` is there for every request.
  await using _admin = admin && serveAdmin({
    ...admin,
    snapshot: () => udpSnapshot(running.server!.stats),
    ready: () => running.server !== undefined && !running.draining,
  });
  const server = running.server = serveUdp(options);
  if (running.draining) void server.close();
  await server.finished;
  return 0;
}
