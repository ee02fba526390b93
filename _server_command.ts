/**
 * `tcpecho server`: its checks, `--help` and run (the option table is
 * `_server_options.ts`'s).
 *
 * @module
 */
import {
  bytes,
  checkKeyPair,
  checkTarget,
  type Command,
  formatHelp,
  fraction,
  integer,
  milliseconds,
  oneOf,
  readPem,
  secondsMs,
  UsageError,
  type Values,
} from "./_cli.ts";
import { parseCidr } from "./_cidr.ts";
import { runPool, runUdp } from "./_server_run.ts";
import { MAX_FAULT_MS } from "./_faults.ts";
import { OPTIONS, USAGE, WORKERS_DEFAULT } from "./_server_options.ts";
import { IO_EVENTS_ENV, IO_EVENTS_PER_TICK } from "./_tick.ts";
import { LOG_DEFAULTS, type LogFormat, type LogLevelName } from "./log.ts";
import {
  removeStaleSocket,
  SERVE_DEFAULTS,
  type ServeOptions,
} from "./server.ts";
import type { UdpServeOptions } from "./udp.ts";

/**
 * Options that mean nothing without connections, refused with `--udp`.
 * `--allow`/`--deny` (per datagram) and `--admin` (datagram metrics) serve
 * both.
 */
const TCP_ONLY = [
  "unix",
  "tls-cert",
  "tls-key",
  "max-line",
  "max-conns",
  "max-conns-per-ip",
  "idle-timeout",
  "slice",
  "slice-delay",
  "bandwidth",
  "close-after",
  "faulty",
  "proxy-protocol",
] as const;

/**
 * Refuses what does not go with the transport: TCP-only options with
 * `--udp`, UDP-only ones without it.
 *
 * @throws {UsageError}
 */
function checkTransport(values: Values<typeof OPTIONS>): void {
  if (!values.udp) {
    if (values.drop !== undefined) {
      throw new UsageError("--drop needs --udp");
    }
    return;
  }
  if (values.mode !== undefined && values.mode !== "raw") {
    throw new UsageError(
      `--mode ${values.mode} cannot go with --udp: UDP echoes raw`,
    );
  }
  for (const name of TCP_ONLY) {
    if (values[name] !== undefined) {
      throw new UsageError(`--${name} cannot go with --udp`);
    }
  }
}

/** `tcpecho server`: run an echo server until SIGINT/SIGTERM. */
export const serverCommand: Command<typeof OPTIONS> = {
  name: "server",
  summary: "run an echo server (raw bytes or lines; TCP, TLS or unix socket)",
  usage: USAGE,
  help: formatHelp({
    usage: USAGE,
    description:
      `Echo every byte (raw, RFC 862) or every line (line mode) back to each client,
or with --udp each datagram to its sender.`,
    options: OPTIONS,
    width: 26,
    notes:
      "Logs go to stderr; `listening on` and `admin on` are printed at any log level.\n" +
      "SIGINT/SIGTERM/SIGHUP/SIGQUIT stop gracefully, a second one exits 130;\n" +
      "SIGUSR1 logs the counters (under deno run, Deno also opens its debugger\n" +
      "on 127.0.0.1:9229 then: see the README); SIGUSR2 is ignored. Workers\n" +
      `take at most ${IO_EVENTS_ENV} (${IO_EVENTS_PER_TICK} unless set) I/O\n` +
      "events per tick: that keeps busy connections even. --udp serves from\n" +
      "one socket in the main isolate (Deno cannot share a UDP port between\n" +
      "workers): --workers N over 1 with --udp is refused, auto means 1. With\n" +
      "--udp, --allow/--deny apply per datagram and --admin serves the datagram\n" +
      "counters; the options about connections (--unix, TLS, --max-*,\n" +
      "--idle-timeout, --slice*, --bandwidth, --close-after, --faulty,\n" +
      "--proxy-protocol) do not.",
  }),
  options: OPTIONS,
  check: checkServer,
  async run(values, _positionals, ctx) {
    const plan = checkServer(values);
    const { level, format } = plan;
    await ctx.configureLogging(level, format);
    if (plan.udp) return await runUdp(ctx, plan.serve, plan.admin);
    const { serve: options, tls } = plan;
    if (tls !== undefined) {
      const { certFile, keyFile } = tls;
      options.cert = await readPem(certFile, "TLS certificate", "CERTIFICATE");
      options.key = await readPem(keyFile, "TLS key", "PRIVATE KEY");
      await checkKeyPair(
        { file: certFile, pem: options.cert },
        { file: keyFile, pem: options.key },
      );
    }
    if (options.path !== undefined) await removeStaleSocket(options.path);
    return await runPool(ctx, {
      workers: plan.workers,
      serve: options,
      level,
      format,
      admin: plan.admin,
    });
  },
};

/** A `tcpecho server` command line once checked: what `run()` starts. */
type ServerPlan =
  & {
    level: LogLevelName;
    format: LogFormat;
    admin?: { hostname: string; port: number };
  }
  & (
    | { udp: true; serve: UdpServeOptions }
    | {
      udp: false;
      serve: ServeOptions;
      workers: number;
      tls?: { certFile: string; keyFile: string };
    }
  );

/**
 * Every check `run()` makes before it starts anything: options that go
 * together, values in range, TCP-only options with `--udp`. It reads no
 * file and binds nothing, so a command line can be checked where it will
 * not run (deploy_test.ts checks the manifests' with it).
 *
 * @throws {UsageError} naming what is wrong
 */
function checkServer(values: Values<typeof OPTIONS>): ServerPlan {
  const {
    host,
    unix,
    "tls-cert": certFile,
    "tls-key": keyFile,
    verbose,
    quiet,
  } = values;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  checkTarget(values);
  if (unix !== undefined && certFile !== undefined) {
    throw new UsageError("TLS is served over TCP only, not --unix");
  }
  if (verbose && quiet) {
    throw new UsageError("-v and -q cannot go together");
  }
  checkTransport(values);
  const { allow = [], deny = [] } = values;
  for (const [name, rules] of [["allow", allow], ["deny", deny]] as const) {
    for (const rule of rules) {
      try {
        parseCidr(rule);
      } catch {
        throw new UsageError(
          `--${name} takes an IP address or CIDR range, not "${rule}"`,
        );
      }
    }
  }
  const proxyProtocol = oneOf(
    values,
    "proxy-protocol",
    OPTIONS["proxy-protocol"].choices,
  );
  if (
    unix !== undefined && allow.length + deny.length > 0 && !proxyProtocol
  ) {
    throw new UsageError(
      "--allow and --deny need client addresses: not --unix (unless --proxy-protocol)",
    );
  }
  const admin = values.admin === undefined
    ? undefined
    : hostPort(values.admin, "admin");
  const level = oneOf(values, "log-level", OPTIONS["log-level"].choices) ??
    (verbose ? "debug" : quiet ? "warn" : LOG_DEFAULTS.level);
  const format = oneOf(values, "log-format", OPTIONS["log-format"].choices) ??
    LOG_DEFAULTS.format;
  const workers = workerCount(values.workers, {
    unix: unix !== undefined,
    udp: values.udp === true,
  });
  const common = { level, format, admin };
  if (values.udp) {
    oneOf(values, "mode", OPTIONS.mode.choices);
    const serve: UdpServeOptions = {
      hostname: host,
      port: integer(values, "port", [0, 65535]),
      drop: fraction(values, "drop"),
      delayMs: milliseconds(values, "delay", [0, MAX_FAULT_MS]),
      jitterMs: milliseconds(values, "jitter", [0, MAX_FAULT_MS]),
      seed: integer(values, "seed", [0, 2 ** 32 - 1]),
      shutdownTimeoutMs: secondsMs(values, "shutdown-timeout"),
      allow,
      deny,
    };
    return { ...common, udp: true, serve };
  }
  const mode = oneOf(values, "mode", OPTIONS.mode.choices);
  const echoFaults = [
    "delay",
    "jitter",
    "slice",
    "slice-delay",
    "bandwidth",
    "close-after",
  ] as const;
  for (const name of echoFaults) {
    if (mode === "discard" && values[name] !== undefined) {
      throw new UsageError(
        `--${name} does nothing with --mode discard (nothing is echoed)`,
      );
    }
  }
  const serve: ServeOptions = {
    hostname: host,
    port: integer(values, "port", [0, 65535]),
    path: unix,
    mode,
    maxLineBytes: bytes(values, "max-line", [1, 2 ** 30]),
    maxConns: integer(values, "max-conns", [1, 2 ** 30]),
    maxConnsPerIp: integer(values, "max-conns-per-ip"),
    idleTimeoutMs: secondsMs(values, "idle-timeout"),
    shutdownTimeoutMs: secondsMs(values, "shutdown-timeout"),
    delayMs: milliseconds(values, "delay", [0, MAX_FAULT_MS]),
    jitterMs: milliseconds(values, "jitter", [0, MAX_FAULT_MS]),
    sliceBytes: bytes(values, "slice", [0, 2 ** 30]),
    sliceDelayMs: milliseconds(values, "slice-delay", [0, MAX_FAULT_MS]),
    bandwidthKiBps: integer(values, "bandwidth", [0, 2 ** 30]),
    closeAfterBytes: bytes(values, "close-after"),
    faulty: fraction(values, "faulty"),
    seed: integer(values, "seed", [0, 2 ** 32 - 1]),
    allow,
    deny,
    proxyProtocol,
  };
  if (
    serve.maxLineBytes !== undefined &&
    (serve.mode ?? SERVE_DEFAULTS.mode) !== "line"
  ) throw new UsageError("--max-line applies to --mode line");
  const tls = certFile !== undefined && keyFile !== undefined
    ? { certFile, keyFile }
    : undefined;
  return { ...common, udp: false, serve, workers, tls };
}

/**
 * `--workers`: a count, or `auto` for one per core. Above 1, each worker
 * listens on the port with `SO_REUSEPORT`, which balances only on Linux, and
 * which neither a unix socket nor UDP (served in the main isolate) has:
 * there `auto` means 1.
 *
 * @throws {UsageError} for a bad value, or above 1 where it cannot work
 */
function workerCount(
  value: string | undefined,
  where: { unix: boolean; udp: boolean },
): number {
  const linux = Deno.build.os === "linux" || Deno.build.os === "android";
  if (value === "auto") {
    return linux && !where.unix && !where.udp
      ? navigator.hardwareConcurrency
      : 1;
  }
  const n = integer({ workers: value }, "workers", [1, 1024]) ??
    WORKERS_DEFAULT;
  if (n > 1 && where.unix) {
    throw new UsageError(
      "--workers above 1 needs TCP: a unix socket has one listener",
    );
  }
  if (n > 1 && where.udp) {
    throw new UsageError(
      "--workers above 1 cannot go with --udp: UDP is served from one socket",
    );
  }
  if (n > 1 && !linux) {
    throw new UsageError(
      `--workers above 1 needs Linux (SO_REUSEPORT), not ${Deno.build.os}`,
    );
  }
  return n;
}

/** `HOST:PORT` or `[IPv6]:PORT`, or a usage error naming the option. */
function hostPort(
  value: string,
  name: string,
): { hostname: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(value);
  const port = Number(match?.[3]);
  if (match === null || port > 65535) {
    throw new UsageError(`--${name} takes HOST:PORT, not "${value}"`);
  }
  return { hostname: match[1] ?? match[2], port };
}
