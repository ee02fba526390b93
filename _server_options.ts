/**
 * `tcpecho server`'s option table and usage line, which the parser,
 * `--help` and usage errors all read. Private to `_server_command.ts`.
 *
 * @module
 */
import type { Options } from "./_cli.ts";
import { LOG_DEFAULTS, LOG_FORMATS, LOG_LEVEL_NAMES } from "./log.ts";
import { SERVE_DEFAULTS } from "./server.ts";
import { UDP_SERVE_DEFAULTS } from "./udp.ts";

/** `--workers` when not given. */
export const WORKERS_DEFAULT = 1;

/** The options of `tcpecho server`. */
export const OPTIONS = {
  host: {
    type: "string",
    arg: "ADDR",
    help:
      `address to bind; 0.0.0.0 or :: for other machines (default ${SERVE_DEFAULTS.hostname})`,
  },
  port: {
    type: "string",
    short: "p",
    arg: "N",
    help:
      `TCP (or UDP) port; 0 picks a free one (default ${SERVE_DEFAULTS.port})`,
  },
  unix: {
    type: "string",
    arg: "PATH",
    help: "listen on a unix socket instead of TCP",
  },
  udp: {
    type: "boolean",
    help: "serve UDP instead: echo each datagram to its sender",
  },
  mode: {
    type: "string",
    choices: ["raw", "line", "discard"],
    help:
      `raw: bytes back as they arrive; line: answer each whole line;\ndiscard: read and drop everything (default ${SERVE_DEFAULTS.mode})`,
  },
  "max-line": {
    type: "string",
    arg: "BYTES",
    help:
      `line mode: a longer line closes that connection (default ${SERVE_DEFAULTS.maxLineBytes})`,
  },
  "max-conns": {
    type: "string",
    arg: "N",
    help:
      `connections at once; more are accepted and closed (default ${SERVE_DEFAULTS.maxConns})`,
  },
  "max-conns-per-ip": {
    type: "string",
    arg: "N",
    help:
      `the same, per client address; 0 is off (default ${SERVE_DEFAULTS.maxConnsPerIp})`,
  },
  "idle-timeout": {
    type: "string",
    arg: "SECONDS",
    help: `close a connection that moved no byte this long; 0 is off (default ${
      SERVE_DEFAULTS.idleTimeoutMs / 1000
    })`,
  },
  "shutdown-timeout": {
    type: "string",
    arg: "SECONDS",
    help: `on SIGINT/SIGTERM wait this long for clients (default ${
      SERVE_DEFAULTS.shutdownTimeoutMs / 1000
    })`,
  },
  "tls-cert": {
    type: "string",
    arg: "FILE",
    label: "--tls-cert FILE --tls-key FILE",
    help: "serve TLS (PEM certificate chain and key)",
  },
  "tls-key": { type: "string", arg: "FILE" }, // in the --tls-cert row
  workers: {
    type: "string",
    arg: "N|auto",
    help:
      `serve in N worker threads, each listening on the port (Linux, TCP);\nauto: one per core (default ${WORKERS_DEFAULT})`,
  },
  drop: {
    type: "string",
    arg: "FRACTION",
    help:
      `UDP: drop this share (0-1) of datagrams unanswered (default ${UDP_SERVE_DEFAULTS.drop})`,
  },
  delay: {
    type: "string",
    arg: "MS",
    help:
      `fault: hold each echo back this long, TCP and UDP (default ${SERVE_DEFAULTS.delayMs})`,
  },
  jitter: {
    type: "string",
    arg: "MS",
    help:
      `fault: plus a random 0..MS per echo, seeded (default ${SERVE_DEFAULTS.jitterMs})`,
  },
  slice: {
    type: "string",
    arg: "BYTES",
    help:
      `fault: write each echo in pieces of at most BYTES; 0 is off (default ${SERVE_DEFAULTS.sliceBytes})`,
  },
  "slice-delay": {
    type: "string",
    arg: "MS",
    help:
      `fault: pause this long between pieces (writes) (default ${SERVE_DEFAULTS.sliceDelayMs})`,
  },
  bandwidth: {
    type: "string",
    arg: "KIB",
    help:
      `fault: cap each connection's echo at KIB KiB/s; 0 is off (default ${SERVE_DEFAULTS.bandwidthKiBps})`,
  },
  "close-after": {
    type: "string",
    arg: "BYTES",
    help:
      `fault: echo this many bytes, then close the connection; 0 is off (default ${SERVE_DEFAULTS.closeAfterBytes})`,
  },
  faulty: {
    type: "string",
    arg: "FRACTION",
    help:
      `share of connections (0-1) the faults apply to (default ${SERVE_DEFAULTS.faulty})`,
  },
  seed: {
    type: "string",
    arg: "N",
    help:
      "seeds --jitter, --faulty and --drop (default: random; logged at start)",
  },
  allow: {
    type: "string",
    multiple: true,
    arg: "CIDR",
    help:
      "only clients in this range (IPv4 or IPv6; an address is one host);\n" +
      "repeatable; others are accepted and closed, or with --udp their\n" +
      "datagrams dropped unanswered (default everyone)",
  },
  deny: {
    type: "string",
    multiple: true,
    arg: "CIDR",
    help: "refuse clients in this range, even if allowed; repeatable",
  },
  "proxy-protocol": {
    type: "string",
    choices: ["v1", "v2", "any"],
    help: "each connection starts with a PROXY header (HAProxy's); its\n" +
      "source is the client for logs, limits, --allow/--deny (default off)",
  },
  admin: {
    type: "string",
    arg: "HOST:PORT",
    help:
      "serve GET /metrics (Prometheus), /healthz, /readyz (default off);\n" +
      "with --udp, datagram metrics (tcpecho_datagrams_*_total)",
  },
  "log-level": {
    type: "string",
    choices: LOG_LEVEL_NAMES,
    help: `(default ${LOG_DEFAULTS.level})`,
  },
  verbose: {
    type: "boolean",
    short: "v",
    help: "same as --log-level debug (each message)",
  },
  quiet: { type: "boolean", short: "q", help: "same as --log-level warn" },
  "log-format": {
    type: "string",
    choices: LOG_FORMATS,
    help: `json: one JSON object a line (default ${LOG_DEFAULTS.format})`,
  },
} as const satisfies Options;

/** The `usage:` line of `tcpecho server`. */
export const USAGE =
  "usage: tcpecho server [--host ADDR] [--port N | --unix PATH] " +
  "[--mode raw|line|discard | --udp] [--tls-cert FILE --tls-key FILE] [options]" +
  "  (tcpecho server --help)";
