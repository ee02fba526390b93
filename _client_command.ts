/**
 * `tcpecho client`: its options, `--help` and run.
 *
 * @module
 */
import {
  checkConnect,
  type Command,
  CONNECT_OPTIONS,
  formatHelp,
  integer,
  type Options,
  secondsMs,
  targetFromPositionals,
  UsageError,
  type Values,
  withCa,
} from "./_cli.ts";
import {
  connect,
  forTerminal,
  interactive,
  pipe,
  targetName,
} from "./client.ts";
import { formatAddr } from "./io.ts";
import {
  connectUdp,
  UDP_CLIENT_DEFAULTS,
  udpInteractive,
  udpPipe,
} from "./udp.ts";

const OPTIONS = {
  ...CONNECT_OPTIONS,
  udp: {
    type: "boolean",
    help: "send datagrams: each line is one, each reply shown",
  },
  timeout: {
    type: "string",
    arg: "SECONDS",
    help: `--udp: a reply not back this long is reported lost (default ${
      UDP_CLIENT_DEFAULTS.timeoutMs / 1000
    })`,
  },
  "idle-timeout": {
    type: "string",
    arg: "SECONDS",
    help: "fail if the server is silent this long while an echo or its\n" +
      "close is due; 0 is off (default 0)",
  },
} as const satisfies Options;

const USAGE = "usage: tcpecho client [--host ADDR] [--port N | --unix PATH] " +
  "[--tls [--ca FILE | --insecure]] [--udp [--timeout SECONDS]] " +
  "[--connect-timeout SECONDS] [--idle-timeout SECONDS] [HOST [PORT] | HOST:PORT]" +
  "  (tcpecho client --help)";

/** Options that need a connection, refused with `--udp`. */
const TCP_ONLY = [
  "unix",
  "tls",
  "ca",
  "insecure",
  "connect-timeout",
  "idle-timeout",
] as const;

/** `tcpecho client`: readline on a terminal, a byte-exact pipe otherwise. */
export const clientCommand: Command<typeof OPTIONS> = {
  name: "client",
  summary:
    "connect and echo: readline on a terminal, a byte-exact pipe otherwise",
  usage: USAGE,
  help: formatHelp({
    usage: USAGE,
    description:
      `On a terminal: type lines, see "server say# …"; Ctrl+D ends, Ctrl+C aborts.
Otherwise a byte-exact pipe: stdin to the server, the echo to stdout; it exits 1
if the server closes before echoing everything sent. HOST PORT, HOST:PORT or
[V6]:PORT may stand for --host and --port, as for nc.`,
    options: OPTIONS,
    width: 28,
    notes:
      `--udp sends each line (its "\\n" included) as one datagram; piped, it waits
for each reply before the next line and exits 1 if any was lost.`,
  }),
  options: OPTIONS,
  allowPositionals: true,
  async run(values, positionals) {
    if (values.udp) return await runUdp(values, positionals);
    if (values.timeout !== undefined) {
      throw new UsageError("--timeout needs --udp");
    }
    const options = await withCa(checkConnect(values, positionals));
    const idleTimeoutMs = secondsMs(values, "idle-timeout");
    using conn = await connect(options);
    if (!Deno.stdin.isTerminal()) {
      await pipe(conn, Deno.stdin, Deno.stdout, { idleTimeoutMs });
      return 0;
    }
    console.error(`connected to ${targetName(options)}`);
    const end = await interactive(conn, { idleTimeoutMs });
    if (end === "server-closed") console.error("connection closed by server");
    return end === "interrupted" ? 130 : 0;
  },
};

/** `client --udp`: lines as datagrams, lost replies on stderr. */
async function runUdp(
  values: Values<typeof OPTIONS>,
  positionals: readonly string[],
): Promise<number> {
  for (const name of TCP_ONLY) {
    if (values[name] !== undefined) {
      throw new UsageError(`--${name} cannot go with --udp`);
    }
  }
  const timeoutMs = secondsMs(values, "timeout") ??
    UDP_CLIENT_DEFAULTS.timeoutMs;
  if (timeoutMs === 0) throw new UsageError("--timeout must be more than 0");
  const target = targetFromPositionals(values, positionals);
  using conn = await connectUdp({
    hostname: target.host,
    port: integer(target, "port", [1, 65535]),
  });
  const within = `within ${timeoutMs / 1000} s`;
  if (!Deno.stdin.isTerminal()) {
    const { sent, lost } = await udpPipe(conn, {
      timeoutMs,
      onLost(line, bytes) {
        console.error(
          `lost: no reply to line ${line} (${bytes} bytes) ${within}`,
        );
      },
    });
    if (lost > 0) throw new Error(`${lost} of ${sent} replies lost`);
    return 0;
  }
  console.error(`sending to udp:${formatAddr(conn.remote)}`);
  const end = await udpInteractive(conn, {
    timeoutMs,
    onLost(line) {
      // Over the prompt line, which udpInteractive draws again.
      console.error(
        `\r\x1b[Klost: no reply to "${forTerminal(line)}" ${within}`,
      );
    },
  });
  return end === "interrupted" ? 130 : 0;
}
