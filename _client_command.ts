/**
 * `tcpecho client`: its options, `--help` and run.
 *
 * @module
 */
import {
  type Command,
  CONNECT_OPTIONS,
  connectOptions,
  formatHelp,
  type Options,
  secondsMs,
} from "./_cli.ts";
import { connect, interactive, pipe, targetName } from "./client.ts";

const OPTIONS = {
  ...CONNECT_OPTIONS,
  "idle-timeout": {
    type: "string",
    arg: "SECONDS",
    help: "fail if the server is silent this long while an echo or its\n" +
      "close is due; 0 is off (default 0)",
  },
} as const satisfies Options;

const USAGE = "usage: tcpecho client [--host ADDR] [--port N | --unix PATH] " +
  "[--tls [--ca FILE | --insecure]] [--connect-timeout SECONDS] " +
  "[--idle-timeout SECONDS] [HOST [PORT] | HOST:PORT]  (tcpecho client --help)";

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
  }),
  options: OPTIONS,
  allowPositionals: true,
  async run(values, positionals) {
    const options = await connectOptions(values, positionals);
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
