/**
 * The pieces of the CLI that `main.ts` and each command share: the
 * {@linkcode Command} shape, option tables and their `--help` rows,
 * {@linkcode UsageError}, and the helpers that turn option strings into
 * values. An option is declared once, as a row of its command's table: the
 * parser, `--help` and the usage errors all read that row.
 *
 * @module
 */
import { parseArgs, type ParseArgsOptionDescriptor } from "node:util";
import { CONNECT_DEFAULTS, type ConnectOptions } from "./client.ts";
import type { LogFormat, LogLevelName } from "./log.ts";

/** One option: how `parseArgs` reads it and how `--help` shows it. */
export interface OptionSpec extends ParseArgsOptionDescriptor {
  /** The value's name in `--help` (`N`, `FILE`). @default {choices.join("|")} */
  arg?: string;
  /** The values {@linkcode oneOf} accepts, in `--help` order. */
  choices?: readonly string[];
  /**
   * The `--help` text; each `\n` starts a line under the previous one. An
   * option without it is shown in another option's row.
   */
  help?: string;
  /** The row's left column. @default {"-s, --name ARG"} */
  label?: string;
}

/** A command's option table, in `--help` order, keyed by long name. */
export type Options = Record<string, OptionSpec>;

/** The parsed values of an option table: strings, booleans, or arrays of them. */
export type Values<O extends Options> = {
  -readonly [K in keyof O]?: O[K] extends { type: "boolean" }
    ? (O[K] extends { multiple: true } ? boolean[] : boolean)
    : (O[K] extends { multiple: true } ? string[] : string);
};

/** `-h, --help`: every command has it, and `main.ts` answers it. */
export const HELP_OPTIONS = {
  help: { type: "boolean", short: "h", help: "this help" },
} as const satisfies Options;

/** What `main.ts` lends a command: the process-wide effects only it sets up. */
export interface CommandContext {
  /**
   * Calls `onStop` on the first SIGINT/SIGTERM and exits 130 on the second.
   * Dispose to remove the listeners.
   */
  onStopSignals(onStop: () => void): Disposable;
  /** Configures logging to stderr; at `debug`, failures also print a stack. */
  configureLogging(level: LogLevelName, format: LogFormat): Promise<void>;
  /** An error and its causes, `: `-joined, as the `error:` line shows it. */
  describe(err: unknown): string;
}

/** A subcommand as data (Go's `cmd/go` `base.Command`). */
export interface Command<O extends Options = Options> {
  /** The word that selects it: `tcpecho NAME`. */
  name: string;
  /** One line for the command list of `tcpecho --help`. */
  summary: string;
  /** The `usage: …` line, printed by `--help` and after a usage error. */
  usage: string;
  /** The whole `--help` text (see {@linkcode formatHelp}). */
  help: string;
  /** Its options, without `-h, --help` (every command has that one). */
  options: O;
  /** Whether it takes positional arguments. @default {false} */
  allowPositionals?: boolean;
  /** Its own subcommands (`tcpecho bench merge`), chosen by the next word. */
  commands?: readonly Command[];
  /**
   * Runs it with parsed, not yet checked values.
   *
   * @returns the exit code
   * @throws {UsageError} for bad values (`main.ts` adds the usage line)
   */
  run(
    values: Values<O>,
    positionals: string[],
    ctx: CommandContext,
  ): Promise<number>;
}

/**
 * A bad command line: `main.ts` prints it with the usage line of the command
 * being run and exits 2.
 */
export class UsageError extends Error {
  /** `UsageError`, as stacks show it. */
  override name = "UsageError";
}

/**
 * The command `args` starts with, followed into its subcommands, and the
 * arguments left for it; `undefined` when `args[0]` names no command.
 */
export function findCommand(
  commands: readonly Command[],
  args: readonly string[],
): { command: Command; args: string[] } | undefined {
  let command: Command | undefined;
  let rest = [...args];
  for (let list = commands; rest.length > 0; rest = rest.slice(1)) {
    const next = list.find(({ name }) => name === rest[0]);
    if (next === undefined) break;
    command = next;
    list = next.commands ?? [];
  }
  return command && { command, args: rest };
}

/**
 * Parses `args` strictly by `command`'s options plus `-h, --help`.
 *
 * @throws {UsageError} for an unknown option, a missing value or an
 *   argument the command does not take
 */
export function parseCommandLine(
  command: Command,
  args: string[],
): { help: boolean; values: Values<Options>; positionals: string[] } {
  try {
    const { values: { help, ...values }, positionals } = parseArgs({
      args,
      options: { ...command.options, ...HELP_OPTIONS },
      strict: true,
      allowPositionals: command.allowPositionals ?? false,
    });
    return { help: help === true, values, positionals };
  } catch (err) {
    const { code, message } = err as { code?: unknown; message: string };
    if (typeof code !== "string" || !code.startsWith("ERR_PARSE_ARGS")) {
      throw err;
    }
    // node:util adds hint lines; the first one says it.
    const [first] = message.split("\n");
    throw new UsageError(first.charAt(0).toLowerCase() + first.slice(1));
  }
}

function optionLabel(
  name: string,
  { short, choices, arg = choices?.join("|"), label }: OptionSpec,
): string {
  return label ??
    `${short ? `-${short}, ` : ""}--${name}${arg ? ` ${arg}` : ""}`;
}

/**
 * The option rows of a `--help` text, `-h, --help` last: each label padded
 * to `width` (or followed by two spaces when longer), then its help.
 */
function formatOptions(options: Options, width: number): string {
  const rows: string[] = [];
  for (const [name, spec] of Object.entries({ ...options, ...HELP_OPTIONS })) {
    if (spec.help === undefined) continue;
    const label = optionLabel(name, spec);
    const [first, ...more] = spec.help.split("\n");
    const gap = first === ""
      ? ""
      : " ".repeat(Math.max(width - label.length, 2));
    rows.push(`  ${label}${gap}${first}`);
    for (const line of more) rows.push(`${" ".repeat(width + 2)}${line}`);
  }
  return rows.join("\n");
}

/** A command's `--help` text, its option rows made from its table. */
export function formatHelp(
  { usage, description, options, width, notes }: {
    /** The `usage: …` line. */
    usage: string;
    /** What the command does, before the options. */
    description: string;
    /** The option table. */
    options: Options;
    /** The width of the options' label column. */
    width: number;
    /** A paragraph after the options. */
    notes?: string;
  },
): string {
  const end = notes === undefined ? "" : `\n${notes}\n`;
  return `${usage}\n\n${description}\n\n${
    formatOptions(options, width)
  }\n${end}`;
}

/**
 * `options` shown in `--help` as one row: their labels joined by `, `, and
 * `help` on the line below (for options described at another command).
 */
export function groupOptions<O extends Options>(options: O, help: string): O {
  const entries = Object.entries(options);
  const label = entries.map(([name, spec]) => optionLabel(name, spec))
    .join(", ");
  return Object.fromEntries(
    entries.map(([name, spec], i) => [
      name,
      i === 0
        ? { ...spec, label, help: `\n${help}` }
        : { ...spec, help: undefined },
    ]),
  ) as O;
}

/** A whole number in `[min, max]`, or a usage error naming the option. */
export function integer<K extends string>(
  values: { readonly [P in NoInfer<K>]?: string },
  name: K,
  [min, max] = [0, Number.MAX_SAFE_INTEGER],
): number | undefined {
  const value = values[name];
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n >= min && n <= max)) {
    const range = max === Number.MAX_SAFE_INTEGER
      ? `a whole number ≥ ${min}`
      : `a whole number from ${min} to ${max}`;
    throw new UsageError(`--${name} takes ${range}, not "${value}"`);
  }
  return n;
}

/** A fraction from 0 to 1 (`0.25`, `.5`, `1`), or a usage error naming the option. */
export function fraction<K extends string>(
  values: { readonly [P in NoInfer<K>]?: string },
  name: K,
): number | undefined {
  const value = values[name];
  if (value === undefined) return undefined;
  const f = /^(\d+(\.\d*)?|\.\d+)$/.test(value) ? Number(value) : NaN;
  if (!(f >= 0 && f <= 1)) {
    throw new UsageError(
      `--${name} takes a fraction from 0 to 1, not "${value}"`,
    );
  }
  return f;
}

/** Seconds (fractions allowed) as milliseconds, or a usage error. */
export function secondsMs<K extends string>(
  values: { readonly [P in NoInfer<K>]?: string },
  name: K,
): number | undefined {
  const value = values[name];
  if (value === undefined) return undefined;
  const s = /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
  if (!(s >= 0 && s <= 1e6)) {
    throw new UsageError(
      `--${name} takes seconds (a number ≥ 0), not "${value}"`,
    );
  }
  return s * 1000;
}

/** One of `choices` (the option's table row has them), or a usage error. */
export function oneOf<K extends string, T extends string>(
  values: { readonly [P in NoInfer<K>]?: string },
  name: K,
  choices: readonly T[],
): T | undefined {
  const value = values[name];
  if (value === undefined || (choices as readonly string[]).includes(value)) {
    return value as T | undefined;
  }
  throw new UsageError(
    `--${name} takes ${choices.join(" or ")}, not "${value}"`,
  );
}

/**
 * Reads a PEM file holding a `label` block ("CERTIFICATE", "PRIVATE KEY"),
 * naming what it is for when it cannot. Deno ignores a CA file with no
 * certificate in it, so an unusable file is caught here.
 *
 * @throws {Error} `cannot read WHAT "PATH"`, the reason as its `cause`
 */
export async function readPem(
  path: string,
  what: string,
  label: string,
): Promise<string> {
  try {
    const pem = await Deno.readTextFile(path);
    if (!new RegExp(`-----BEGIN [A-Z ]*${label}-----`).test(pem)) {
      throw new Error(`no PEM ${label.toLowerCase()} in it`);
    }
    return pem;
  } catch (cause) {
    throw new Error(`cannot read ${what} "${path}"`, { cause });
  }
}

/** A Unix socket path or a host and port, not both; else a usage error. */
export function checkTarget(
  { host, port, unix }: { host?: string; port?: string; unix?: string },
): void {
  if (unix !== undefined && (port ?? host) !== undefined) {
    throw new UsageError("--unix cannot go with --host or --port");
  }
}

/** Where to connect: the options of `client`, which `bench` shares. */
export const CONNECT_OPTIONS = {
  host: {
    type: "string",
    arg: "ADDR",
    help: `host to connect to (default ${CONNECT_DEFAULTS.hostname})`,
  },
  port: {
    type: "string",
    short: "p",
    arg: "N",
    help: `TCP port (default ${CONNECT_DEFAULTS.port})`,
  },
  unix: {
    type: "string",
    arg: "PATH",
    help: "connect to a unix socket instead",
  },
  tls: {
    type: "boolean",
    help: "speak TLS (the certificate is always verified)",
  },
  ca: {
    type: "string",
    arg: "FILE",
    help: "also trust this CA (PEM), for self-signed servers",
  },
  "connect-timeout": {
    type: "string",
    arg: "SECONDS",
    help: `give up connecting after this long (default ${
      CONNECT_DEFAULTS.connectTimeoutMs / 1000
    })`,
  },
} as const satisfies Options;

/**
 * The {@linkcode ConnectOptions} that {@linkcode CONNECT_OPTIONS} ask for,
 * the CA file read.
 *
 * @throws {UsageError} for bad or conflicting values
 * @throws {Error} when the CA file cannot be read
 */
export async function connectOptions(
  values: Values<typeof CONNECT_OPTIONS>,
): Promise<ConnectOptions> {
  const { host, unix, tls, ca } = values;
  checkTarget(values);
  if (ca !== undefined && !tls) throw new UsageError("--ca needs --tls");
  return {
    hostname: host,
    port: integer(values, "port", [1, 65535]),
    path: unix,
    tls,
    caCerts: ca === undefined
      ? undefined
      : [await readPem(ca, "CA certificate", "CERTIFICATE")],
    connectTimeoutMs: secondsMs(values, "connect-timeout"),
  };
}
