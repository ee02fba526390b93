/**
 * `tcpecho`: a TCP echo server, interactive client and load tester.
 *
 * This is the CLI: it alone reads `Deno.args`, configures logging, installs
 * signal handlers, prints `error: …` and sets the exit code. The commands are
 * data (`COMMANDS`); each runs with a context that lends it those effects.
 *
 * @module
 */
import { reset } from "@logtape/logtape";
import denoJson from "./deno.json" with { type: "json" };
import {
  type Command,
  type CommandContext,
  errorHint,
  findCommand,
  parseCommandLine,
  suggest,
  UsageError,
} from "./_cli.ts";
import { benchCommand } from "./_bench_command.ts";
import { clientCommand } from "./_client_command.ts";
import { serverCommand } from "./_server_command.ts";
import { escapeControls, quote } from "./io.ts";
import { configureLogging } from "./log.ts";

/** The version in deno.json, the single source of truth. */
export const VERSION: string = denoJson.version;

/** The subcommands, in `--help` order: dispatch, help and usage read them. */
const COMMANDS: readonly Command[] = [
  serverCommand,
  clientCommand,
  benchCommand,
];

const USAGE = `usage: tcpecho <${
  COMMANDS.map(({ name }) => name).join("|")
}> [options]  (tcpecho --help)`;

const COMMAND_LIST = COMMANDS
  .map(({ name, summary }) => `  ${name.padEnd(10)}${summary}`)
  .join("\n");

const HELP =
  `tcpecho ${VERSION}: TCP echo server, interactive client and load tester

${USAGE}

commands:
${COMMAND_LIST}

options:
  -h, --help     this help (each command has its own)
  -V, --version  print the version

exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted
`;

/**
 * The cause chain, `: `-joined, as the one `error:` line shows it: control
 * and invisible characters escaped, whoever put them in a message.
 */
function describe(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err; e !== undefined; e = (e as Error).cause) {
    // Deno appends the call to OS errors ("…(os error 2): readfile 'x'"); the
    // message already names the file.
    parts.push(
      e instanceof Error
        ? e.message.replace(/( \(os error \d+\)): \w+ '[^]*'$/, "$1")
        : String(e),
    );
    if (!(e instanceof Error)) break;
  }
  return escapeControls(parts.join(": "));
}

/**
 * The signals that stop a command: SIGHUP too, so a closed terminal cleans
 * up, and SIGQUIT (Ctrl+\ at a terminal), as nginx's graceful stop, so
 * that it does not kill the server and leave its socket file behind.
 */
const STOP_SIGNALS: Deno.Signal[] = Deno.build.os === "windows"
  ? ["SIGINT", "SIGBREAK"]
  : ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"];

/** Listens to `signals` with `handler` until disposed. */
function listen(signals: Deno.Signal[], handler: () => void): Disposable {
  for (const s of signals) Deno.addSignalListener(s, handler);
  return {
    [Symbol.dispose]() {
      for (const s of signals) Deno.removeSignalListener(s, handler);
    },
  };
}

/**
 * Calls `onSignal` on the first SIGINT/SIGTERM/SIGHUP/SIGQUIT and exits 130
 * on the second. Dispose to remove the listeners.
 */
function onStopSignals(onSignal: () => void): Disposable {
  let seen = 0;
  return listen(STOP_SIGNALS, () => {
    if (++seen > 1) Deno.exit(130);
    onSignal();
  });
}

/**
 * Calls `onSignal` on each SIGUSR1 (never on Windows, which has none), and
 * ignores SIGUSR2 meanwhile: a stray one must not kill the server.
 */
function onStatsSignal(onSignal: () => void): Disposable {
  if (Deno.build.os === "windows") return listen([], onSignal);
  const stats = listen(["SIGUSR1"], onSignal);
  const ignored = listen(["SIGUSR2"], () => {});
  return {
    [Symbol.dispose]() {
      stats[Symbol.dispose]();
      ignored[Symbol.dispose]();
    },
  };
}

/**
 * Runs the CLI on `args` (without the program name): prints help, the
 * version, or runs a command; failures become one `error: …` line on stderr.
 *
 * @returns the exit code: 0 ok, 1 runtime failure, 2 usage error, 130
 *   interrupted
 */
export async function main(args: string[]): Promise<number> {
  let usage = USAGE; // of the command being run, once it is known
  let showStacks = false; // with debug logging, failures print their stack
  const ctx: CommandContext = {
    onStopSignals,
    onStatsSignal,
    describe,
    async configureLogging(level, format) {
      showStacks = level === "debug";
      await configureLogging(level, format);
    },
  };
  try {
    switch (args[0]) {
      case "-h":
      case "--help":
        console.log(HELP);
        return 0;
      case "-V":
      case "--version":
        if (args.length > 1) {
          throw new UsageError(
            `${args[0]} takes no argument, not ${quote(args[1])}`,
          );
        }
        console.log(
          `tcpecho ${VERSION} (deno ${Deno.version.deno}, v8 ${Deno.version.v8})`,
        );
        return 0;
      case undefined:
        throw new UsageError("a command is required");
    }
    const found = findCommand(COMMANDS, args);
    if (found === undefined) {
      const near = suggest(args[0], COMMANDS.map(({ name }) => name));
      throw new UsageError(
        `unknown command ${quote(args[0])}${
          near ? `: did you mean ${near}?` : ""
        }`,
      );
    }
    const { command } = found;
    usage = command.usage;
    const { help, values, positionals } = parseCommandLine(
      command,
      found.args,
    );
    if (help) {
      console.log(command.help);
      return 0;
    }
    return await command.run(values, positionals, ctx);
  } catch (err) {
    console.error(`error: ${describe(err)}${errorHint(err)}`);
    if (err instanceof UsageError) {
      console.error(usage);
      return 2;
    }
    if (showStacks) console.error(err);
    return 1;
  } finally {
    await reset();
  }
}

if (import.meta.main) {
  Deno.exitCode = await main(Deno.args);
}
