/**
 * Logging setup: the CLI's level names, the text and JSON-lines formatters,
 * the stderr sink of the main isolate and the batching sink of the server's
 * worker isolates. It touches no argument, signal or exit code, so a worker
 * isolate can configure its own LogTape with the same formats.
 *
 * Cost matters here: the server logs two lines per connection at the default
 * level. LogTape's record pipeline stays (levels, categories, `with()`); the
 * formatters are written out by hand (LogTape's text formatter costs ~2.5 µs
 * a line, these ~0.2 µs) and lines are written in batches, whole, by one
 * writer: a line is never split or interleaved with another.
 *
 * @module
 */
import {
  compareLogLevel,
  configure,
  type Logger,
  type LogLevel,
  type LogRecord,
  sanitizeControlSequences,
  type Sink,
  type TextFormatter,
} from "@logtape/logtape";

/** The CLI's `--log-level` names and the LogTape level each one means. */
export const LOG_LEVELS = {
  debug: "debug",
  info: "info",
  warn: "warning",
  error: "error",
} as const satisfies Record<string, LogLevel>;

/** A `--log-level` name. */
export type LogLevelName = keyof typeof LOG_LEVELS;

/** The `--log-level` names, in `--help` order. */
export const LOG_LEVEL_NAMES = Object.keys(LOG_LEVELS) as LogLevelName[];

/** The `--log-format` names: `text` lines or JSON Lines. */
export const LOG_FORMATS = ["text", "json"] as const;

/** A `--log-format` name. */
export type LogFormat = typeof LOG_FORMATS[number];

/** Level and format when no option says otherwise; also printed by `--help`. */
export const LOG_DEFAULTS = {
  level: "info",
  format: "text",
} as const satisfies { level: LogLevelName; format: LogFormat };

/**
 * A duration as a log property: text shows it in seconds with two decimals
 * (`1.23`), JSON as a number of seconds (`1.234`).
 */
export class Seconds {
  /** The duration in milliseconds. */
  readonly ms: number;

  /** A duration of `ms` milliseconds. */
  constructor(ms: number) {
    this.ms = ms;
  }

  /** `1.23`: seconds, two decimals. */
  toString(): string {
    return (this.ms / 1000).toFixed(2);
  }

  /** Seconds as a number, to the millisecond. */
  toJSON(): number {
    return Math.round(this.ms) / 1000;
  }

  /** What `Deno.inspect` (LogTape's own text formatter) shows. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }
}

/**
 * One JSON object a line, like LogTape's JSON Lines formatter, but with the
 * message's values bare (`listening on 127.0.0.1:8080`, not quoted), as in
 * the text format; they are in `properties` too, typed (numbers stay numbers,
 * {@linkcode Seconds} become a number of seconds).
 */
export function jsonLine(record: LogRecord): string {
  return JSON.stringify({
    "@timestamp": new Date(record.timestamp).toISOString(),
    level: record.level.toUpperCase(),
    message: record.message.map(String).join(""),
    logger: record.category.join("."),
    properties: record.properties,
  }, (_key, value) => value instanceof Error ? String(value) : value) + "\n";
}

const LEVEL_ABBREVIATIONS: Record<LogLevel, string> = {
  trace: "TRC",
  debug: "DBG",
  info: "INF",
  warning: "WRN",
  error: "ERR",
  fatal: "FTL",
};

/** What LogTape's `value: "bare"` escapes in a string value. */
// deno-lint-ignore no-control-regex -- control characters are what it finds
const UNSAFE = /[\x00-\x08\x0a-\x1f\x7f-\x9f]/;
const SANITIZE = { sgr: "escape", newlines: "escape" } as const;

/** One interpolated value as text: strings escaped, the rest as `Deno.inspect` shows them. */
function renderValue(value: unknown): string {
  switch (typeof value) {
    case "string":
      return UNSAFE.test(value)
        ? sanitizeControlSequences(value, SANITIZE)
        : value;
    case "number":
    case "boolean":
    case "undefined":
      return String(value);
  }
  if (value instanceof Seconds) return value.toString();
  return Deno.inspect(value, { colors: false }); // errors: with their stack
}

/** The current second's `YYYY-MM-DD HH:MM:SS.` and which second it is. */
let stampSecond = NaN;
let stampPrefix = "";

/**
 * `2026-01-01 12:00:00.000 INF message`: UTC time, values bare, controls in
 * values escaped; the same text as LogTape's `getTextFormatter({ value:
 * "bare", timestamp: "date-time" })` gives, at a tenth of the cost.
 */
export const textLine: TextFormatter = (record) => {
  const { timestamp } = record;
  const second = Math.floor(timestamp / 1000);
  if (second !== stampSecond) {
    stampSecond = second;
    const iso = new Date(second * 1000).toISOString();
    stampPrefix = `${iso.slice(0, 10)} ${iso.slice(11, 20)}`;
  }
  const ms = timestamp - second * 1000;
  let line = stampPrefix + (ms < 10 ? "00" : ms < 100 ? "0" : "") + ms + " " +
    LEVEL_ABBREVIATIONS[record.level] + " ";
  const { message } = record;
  for (let i = 0; i < message.length; i++) {
    line += i % 2 === 0 ? message[i] as string : renderValue(message[i]);
  }
  return line + "\n";
};

/** The formatter of a `--log-format`. */
export function formatter(format: LogFormat): TextFormatter {
  return format === "json" ? jsonLine : textLine;
}

const encoder = new TextEncoder();

/**
 * LogTape copies a record's properties for each sink before calling it (so a
 * sink that keeps records sees them as they were), unless the sink carries
 * this mark, which LogTape's own synchronous sinks carry. Ours format the
 * record at once and keep only the text: the copy (~3 µs a record, most of
 * what a record cost) buys nothing.
 */
const IMMEDIATE_SINK = Symbol.for("LogTape.sinkSnapshotPolicy.immediate");

/** Marks `sink` as done with each record when it returns (see {@linkcode IMMEDIATE_SINK}). */
function immediate(sink: Sink): Sink {
  Object.defineProperty(sink, IMMEDIATE_SINK, { value: true });
  return sink;
}

/**
 * Writes `text` to stderr now, all of it (a pipe may take a write in parts).
 * Called from one isolate only, so lines never interleave. A closed stderr
 * (EPIPE) drops the text.
 */
export function writeStderr(text: string): void {
  const bytes = encoder.encode(text);
  try {
    for (let done = 0; done < bytes.length;) {
      done += Deno.stderr.writeSync(bytes.subarray(done));
    }
  } catch (err) {
    // Nobody reads stderr any more: the logs have nowhere to go, and the
    // server goes on without them.
    if (!(err instanceof Deno.errors.BrokenPipe)) throw err;
  }
}

/**
 * Writes each record to stderr at once, synchronously: nothing is lost when
 * the process exits. For the main isolate, which logs a few lines; the
 * server's connections log through a {@linkcode BatchSink}.
 */
export function stderrSink(format: LogFormat): Sink {
  const format_ = formatter(format);
  return immediate((record) => writeStderr(format_(record)));
}

/** Options for {@linkcode BatchSink}. */
export interface BatchSinkOptions {
  /** Pass the batch on once it holds this many characters. @default {65536} */
  maxChars?: number;
  /** Pass the batch on at most this long after its first line. @default {20} */
  maxDelayMs?: number;
}

/**
 * Formats records and passes them on in batches of whole lines: a worker
 * isolate's sink, whose batches the main isolate writes to stderr. A batch
 * goes when it is big, or shortly after its first line, or on
 * {@linkcode BatchSink.flush}: call it before the isolate ends.
 */
export class BatchSink implements Disposable {
  readonly #format: TextFormatter;
  readonly #write: (text: string) => void;
  readonly #maxChars: number;
  readonly #maxDelayMs: number;
  #batch = "";
  #timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param write takes each batch: one or more whole lines, each ending in `\n`
   */
  constructor(
    format: LogFormat,
    write: (text: string) => void,
    options: BatchSinkOptions = {},
  ) {
    const { maxChars = 65536, maxDelayMs = 20 } = options;
    this.#format = formatter(format);
    this.#write = write;
    this.#maxChars = maxChars;
    this.#maxDelayMs = maxDelayMs;
  }

  /** The LogTape sink: formats `record` into the batch. */
  readonly sink: Sink = immediate((record) => {
    this.#batch += this.#format(record);
    if (this.#batch.length >= this.#maxChars) this.flush();
    else this.#timer ??= setTimeout(() => this.flush(), this.#maxDelayMs);
  });

  /** Passes on what the batch holds now, if anything. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#batch === "") return;
    const text = this.#batch;
    this.#batch = "";
    this.#write(text);
  }

  /** Flushes. */
  [Symbol.dispose](): void {
    this.flush();
  }
}

/**
 * A message template parsed once, for the lines logged per connection:
 * {@linkcode Template.log} emits the record `logger.info(template,
 * properties)` would, for about half its cost (no parsing and no property
 * merging per record). Pass every property: a `with()` context is not added.
 *
 * @example
 * ```ts ignore
 * const OFFLINE = new Template("[{peer}] offline ({bytesIn} bytes in)");
 * OFFLINE.log(log, "info", { peer, bytesIn });
 * ```
 */
export class Template {
  /** The LogTape message template: `[{peer}] online`. */
  readonly template: string;
  readonly #texts: string[] = [];
  readonly #keys: string[] = [];

  /** Parses `template`: `{name}` is the property `name`. */
  constructor(template: string) {
    this.template = template;
    let rest = template;
    for (let m = /\{(\w+)\}/.exec(rest); m; m = /\{(\w+)\}/.exec(rest)) {
      this.#texts.push(rest.slice(0, m.index));
      this.#keys.push(m[1]);
      rest = rest.slice(m.index + m[0].length);
    }
    this.#texts.push(rest);
  }

  /** The message parts of a record: texts and values, interleaved. */
  message(properties: Record<string, unknown>): unknown[] {
    const texts = this.#texts;
    const keys = this.#keys;
    const message: unknown[] = [texts[0]];
    for (let i = 0; i < keys.length; i++) {
      message.push(properties[keys[i]], texts[i + 1]);
    }
    return message;
  }

  /** Logs at `level` through `logger` (a logger made by `getLogger`, not `with()`). */
  log(
    logger: Logger,
    level: LogLevel,
    properties: Record<string, unknown>,
  ): void {
    if (!logger.isEnabledFor(level)) return;
    // With `category`, LogTape dispatches the record as it is.
    const record = {
      category: logger.category,
      level,
      timestamp: Date.now(),
      rawMessage: this.template,
      message: this.message(properties),
      properties,
    };
    logger.emit(record);
  }
}

/**
 * The info lines logged whatever the level, `-q` included (by their message
 * template): scripts read the port of `--port 0` from `listening on`, and
 * the admin port from `admin on`.
 */
export const ANNOUNCEMENTS: ReadonlySet<string> = new Set([
  "listening on {where}",
  "admin on {where}",
]);

/**
 * Configures LogTape for this isolate: `tcpecho` records from `level` up,
 * the {@linkcode ANNOUNCEMENTS} at any level, and LogTape's own warnings, go
 * to `sink` (stderr in `format` by default). Above `info`, info records are
 * made and then dropped unless announced: this isolate logs a few (a worker
 * isolate, which logs per connection, configures its own level).
 */
export async function configureLogging(
  level: LogLevelName,
  format: LogFormat,
  sink: Sink = stderrSink(format),
): Promise<void> {
  const lowest = LOG_LEVELS[level];
  const quiet = compareLogLevel(lowest, "info") > 0;
  let out = sink;
  if (quiet) {
    out = (record: LogRecord) => {
      if (
        compareLogLevel(record.level, lowest) >= 0 ||
        ANNOUNCEMENTS.has(record.rawMessage as string)
      ) sink(record);
    };
    if (IMMEDIATE_SINK in sink) immediate(out); // it keeps no record either
  }
  await configure({
    sinks: { out },
    loggers: [
      {
        category: ["tcpecho"],
        lowestLevel: quiet ? "info" : lowest,
        sinks: ["out"],
      },
      {
        category: ["logtape", "meta"],
        lowestLevel: "warning",
        sinks: ["out"],
      },
    ],
  });
}
