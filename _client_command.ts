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
} from "./_cli.ts";
import { connect, interactive, pipe, targetName } from "./client.ts";

const OPTIONS = CONNECT_OPTIONS;

const USAGE = "usage: tcpecho client [--host ADDR] [--port N | --unix PATH] " +
  "[--tls [--ca FILE]]  (tcpecho client --help)";

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
Otherwise a byte-exact pipe: stdin to the server, the echo to stdout.`,
    options: OPTIONS,
    width: 28,
  }),
  options: OPTIONS,
  async run(values) {
    const options = await connectOptions(values);
    using conn = await connect(options);
    if (!Deno.stdin.isTerminal()) {
      await pipe(conn);
      return 0;
    }
    console.error(`connected to ${targetName(options)}`);
    const end = await interactive(conn);
    if (end === "server-closed") console.error("connection closed by server");
    return end === "interrupted" ? 130 : 0;
  },
};
