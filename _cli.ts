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
import { escapeControls, quote } from "./io.ts";
import type { LogFormat, LogLevelName } from "./log.ts";
import {
  type NumberOption,
  numberOption,
  SIZE_EXAMPLES,
  splitHostPort,
  suggest,
  targetFromPositionals,
  UsageError,
} from "./_args.ts";
import { readPem } from "./_tls_files.ts";

// Value helpers kept in their own files, for commands to import from here.
export {
  bytes,
  type NumberOption,
  splitHostPort,
  suggest,
  targetFromPositionals,
  UsageError,
} from "./_args.ts";
export { checkKeyPair, readPem } from "./_tls_files.ts";

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
   * Calls `onStop` on the first SIGINT/SIGTERM/SIGHUP/SIGQUIT and exits 130
   * on the second. Dispose to remove the listeners.
   */
  onStopSignals(onStop: () => void): Disposable;
  /**
   * Calls `onStats` on each SIGUSR1 and ignores SIGUSR2 (POSIX). Dispose to
   * remove the listeners.
   */
  onStatsSignal(onStats: () => void): Disposable;
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
   * Checks parsed values as `run()` does before it starts anything, with no
   * effect (no file read, nothing bound, nothing printed), and returns what
   * `run()` would start; for tools that check command lines where they will
   * not run, such as the deployment manifests' tests.
   *
   * @throws {UsageError} for bad values, as `run()` would
   */
  check?(values: Values<O>, positionals: string[]): unknown;
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
  const options = { ...command.options, ...HELP_OPTIONS };
  try {
    const { values: { help, ...values }, positionals } = parseArgs({
      args: joinNegativeValues(args, options),
      options,
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
    const unknown = /^Unknown option '(-[^']*)'/.exec(first)?.[1];
    if (unknown === undefined) {
      throw new UsageError(first.charAt(0).toLowerCase() + first.slice(1));
    }
    const near = unknown.startsWith("--") &&
      suggest(unknown.slice(2), Object.keys(options));
    throw new UsageError(
      `unknown option '${unknown}'${near ? `: did you mean --${near}?` : ""}`,
    );
  }
}

/**
 * `--name -5` and `-n -5` as `--name=-5`, for options that take a value:
 * node:util calls such a value ambiguous, and the option's own check can say
 * better what it takes (`--connections takes a whole number…, not "-5"`).
 */
function joinNegativeValues(args: string[], options: Options): string[] {
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") return [...joined, ...args.slice(i)];
    const name = arg.startsWith("--")
      ? arg.slice(2)
      : Object.keys(options).find((k) => `-${options[k].short}` === arg);
    const takesValue = name !== undefined && options[name]?.type === "string";
    if (takesValue && /^-\.?\d/.test(args[i + 1] ?? "")) {
      joined.push(`--${name}=${args[++i]}`);
    } else {
      joined.push(arg);
    }
  }
  return joined;
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
  const args = new Set(Object.values(options).map(({ arg }) => arg));
  const units = [
    args.has("SECONDS") ? `SECONDS may have a unit: ${DURATION_EXAMPLES}.` : "",
    args.has("BYTES") ? `BYTES may have a unit: ${SIZE_EXAMPLES}.` : "",
    args.has("MS") ? `MS may have a unit: ${MS_EXAMPLES}.` : "",
  ].filter(Boolean).join("\n");
  const end = [units, notes].filter(Boolean).map((p) => `\n${p}\n`).join("");
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
export const integer: NumberOption = numberOption(
  (value) => /^\d+$/.test(value) ? Number(value) : NaN,
  (range) => `a whole number ${range}`,
);

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

const DURATION_EXAMPLES = "500ms, 10s, 1.5m, 1h (a bare number is seconds)";
const MS_EXAMPLES = "250ms, 2s, 1.5m (a bare number is milliseconds)";
const DURATION = /^(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)?$/;
const DURATION_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `value` (a number, `bare` when it has no unit) in milliseconds, or NaN. */
function parseDurationMs(value: string, bare: "ms" | "s"): number {
  const [, number, unit = bare] = DURATION.exec(value) ?? [];
  return Number(number) * DURATION_MS[unit as keyof typeof DURATION_MS];
}

/**
 * A duration in whole milliseconds: a bare number is milliseconds, else a
 * number with a unit (`250ms`, `2s`, `1.5m`, `1h`), in `[min, max]`. Else a
 * usage error naming the option.
 */
export const milliseconds: NumberOption = numberOption((value) => {
  const ms = parseDurationMs(value, "ms");
  // 1.1s is 1100.0000000000002 ms in floating point
  const whole = Math.round(ms);
  return Math.abs(ms - whole) < 1e-6 ? whole : NaN;
}, (range) => `whole milliseconds ${range}, such as 250, 250ms or 2s`);

/**
 * A duration as milliseconds: seconds (fractions allowed) or a number with a
 * unit (`500ms`, `10s`, `1.5m`, `1h`), at most 1,000,000 s; more than 0 when
 * `positive`. Else a usage error naming the option.
 */
export function secondsMs<K extends string>(
  values: { readonly [P in NoInfer<K>]?: string },
  name: K,
  { positive = false }: { positive?: boolean } = {},
): number | undefined {
  const value = values[name];
  if (value === undefined) return undefined;
  const ms = parseDurationMs(value, "s");
  if (!(ms >= 0 && ms <= 1e9) || (positive && ms === 0)) {
    throw new UsageError(
      `--${name} takes a duration ${positive ? "> 0" : "≥ 0"}, such as 30, ` +
        `500ms, 10s or 1m, not ${quote(value)}`,
    );
  }
  return ms;
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
    `--${name} takes ${choices.join(" or ")}, not ${quote(value)}`,
  );
}

/**
 * A Unix socket path or a host and port, not both, neither empty, and no
 * port inside `--host`; else a usage error.
 */
export function checkTarget(
  { host, port, unix }: { host?: string; port?: string; unix?: string },
): void {
  if (unix === "") throw new UsageError('--unix takes a path, not ""');
  if (unix !== undefined && (port ?? host) !== undefined) {
    throw new UsageError("--unix cannot go with --host or --port");
  }
  if (host === "") throw new UsageError('--host takes an address, not ""');
  const split = host === undefined ? undefined : splitHostPort(host);
  if (split?.port !== undefined) {
    throw new UsageError(
      `--host takes an address without a port, not ${quote(host!)}: ` +
        `use --host ${escapeControls(split.host)} --port ${
          escapeControls(split.port)
        }`,
    );
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
    help: "speak TLS (the certificate is verified unless --insecure)",
  },
  ca: {
    type: "string",
    arg: "FILE",
    help: "also trust this CA (PEM), for self-signed servers",
  },
  insecure: {
    type: "boolean",
    help: "with --tls: do not verify the server's certificate",
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
 * The {@linkcode ConnectOptions} that {@linkcode CONNECT_OPTIONS} and the
 * positional `HOST PORT` (see {@linkcode targetFromPositionals}) ask for,
 * checked, without reading the CA file: its name is `ca`.
 *
 * @throws {UsageError} for bad or conflicting values
 */
export function checkConnect(
  values: Values<typeof CONNECT_OPTIONS>,
  positionals: readonly string[] = [],
): ConnectOptions & { ca?: string } {
  const target = targetFromPositionals(values, positionals);
  const { host, unix, tls, ca, insecure } = target;
  checkTarget(target);
  if (ca !== undefined && !tls) throw new UsageError("--ca needs --tls");
  if (insecure && !tls) throw new UsageError("--insecure needs --tls");
  if (insecure && ca !== undefined) {
    throw new UsageError("--insecure trusts any certificate: no --ca with it");
  }
  return {
    hostname: host === undefined ? undefined : splitHostPort(host).host,
    port: integer(target, "port", [1, 65535]),
    path: unix,
    tls,
    insecure,
    ca,
    connectTimeoutMs: secondsMs(target, "connect-timeout", { positive: true }),
  };
}

/**
 * Options {@linkcode checkConnect} returned, with their CA file read.
 * `--insecure` is said on stderr.
 *
 * @throws {Error} when the CA file cannot be read
 */
export async function withCa(
  checked: ConnectOptions & { ca?: string },
): Promise<ConnectOptions> {
  const { ca, ...options } = checked;
  if (ca !== undefined) {
    options.caCerts = [await readPem(ca, "CA certificate", "CERTIFICATE")];
  }
  if (options.insecure) {
    console.error(
      "warning: --insecure: the server's certificate is not verified",
    );
  }
  return options;
}

/**
 * What to do about `err`, for the end of its `error:` line (` (…)`), or `""`:
 * a certificate from an unknown CA suggests `--ca` and `--insecure`.
 */
export function errorHint(err: unknown): string {
  for (let e = err; e instanceof Error; e = e.cause) {
    if (/\bUnknownIssuer\b/.test(e.message)) {
      return " (trust the server's CA with --ca FILE, or skip the check with --insecure)";
    }
  }
  return "";
}
