/**
 * Logging setup: the CLI's level names, the text and JSON-lines formatters and
 * the stderr sink. It touches no argument, signal or exit code, so a worker
 * isolate can configure its own LogTape with the same formats.
 *
 * @module
 */
import {
  configure,
  getConsoleSink,
  getTextFormatter,
  type LogLevel,
  type LogRecord,
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
 * One JSON object a line, like LogTape's JSON Lines formatter, but with the
 * message's values bare (`listening on 127.0.0.1:8080`, not quoted), as in
 * the text format; they are in `properties` too.
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

/** `2026-01-01 12:00:00.000 INF message`, values bare, controls escaped. */
export const textLine: TextFormatter = getTextFormatter({
  value: "bare",
  timestamp: "date-time",
  format: ({ timestamp, level, message }) => `${timestamp} ${level} ${message}`,
});

/** The formatter of a `--log-format`. */
export function formatter(format: LogFormat): TextFormatter {
  return format === "json" ? jsonLine : textLine;
}

/**
 * Writes every level to stderr (stdout carries data), synchronously through
 * `console.error`, so nothing is lost when the process exits.
 */
export function stderrSink(format: LogFormat): Sink {
  return getConsoleSink({
    formatter: formatter(format),
    levelMap: {
      trace: "error",
      debug: "error",
      info: "error",
      warning: "error",
      error: "error",
      fatal: "error",
    },
  });
}

/**
 * Configures LogTape for this isolate: `tcpecho` records from `level` up, and
 * LogTape's own warnings, go to `sink` (stderr in `format` by default).
 */
export async function configureLogging(
  level: LogLevelName,
  format: LogFormat,
  sink: Sink = stderrSink(format),
): Promise<void> {
  await configure({
    sinks: { out: sink },
    loggers: [
      {
        category: ["tcpecho"],
        lowestLevel: LOG_LEVELS[level],
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
