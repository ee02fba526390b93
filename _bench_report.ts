/**
 * What the load generator reports (private to `bench.ts`): the
 * {@linkcode BenchResult} of a run, its text report (percentiles, a latency
 * histogram, per-connection fairness, errors grouped by cause with hints),
 * the progress line and the `--interval` lines.
 *
 * @module
 */

import type { LatencyHistogram } from "./_histogram.ts";
import { EchoError } from "./_bench_connection.ts";
import type {
  BenchInterval,
  BenchPattern,
  BenchProgress,
  BenchResult,
  LatencySummary,
  PerConnection,
} from "./_bench_types.ts";

/** The percentiles of {@linkcode LatencySummary}, in order, with their labels. */
const PERCENTILES = [
  ["p50", 50, "p50"],
  ["p75", 75, "p75"],
  ["p90", 90, "p90"],
  ["p95", 95, "p95"],
  ["p99", 99, "p99"],
  ["p999", 99.9, "p99.9"],
  ["p9999", 99.99, "p99.99"],
] as const;

/** Below this share of the asked rate, the report says the server did not keep up. */
const KEPT_UP = 0.97;
const BAR_WIDTH = 40;

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** The percentiles and max of `histogram` in µs, keys in the SPEC's order. */
export function latencySummary(histogram: LatencyHistogram): LatencySummary {
  const summary: Record<string, number> = {};
  for (const [key, p] of PERCENTILES) {
    summary[key] = round(histogram.percentile(p), 1);
  }
  summary.max = round(histogram.max, 1);
  return summary as unknown as LatencySummary;
}

/** Min, median, max and Jain's index of per-connection counts (as the C load generator gives them). */
export function fairness(values: number[]): PerConnection | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const sum = sorted.reduce((a, b) => a + b, 0);
  const squares = sorted.reduce((a, b) => a + b * b, 0);
  return {
    min: round(sorted[0], 1),
    median: round(sorted[Math.floor(sorted.length / 2)], 1),
    max: round(sorted.at(-1)!, 1),
    jain: squares > 0 ? round(sum * sum / (sorted.length * squares), 3) : 0,
  };
}

/** The {@linkcode BenchResult} of a run, keys in the SPEC's order. */
export function benchResult(run: {
  pattern: BenchPattern;
  connections: number;
  sizeBytes: number;
  windowMs: number;
  messages: number;
  bytes: number;
  histogram: LatencyHistogram;
  uncorrected?: LatencyHistogram;
  errors: number;
  rate: number;
  perConnection: PerConnection | null;
  /** UDP: datagrams not answered in time. @default {0} */
  lost?: number;
}): BenchResult {
  const seconds = run.windowMs / 1000;
  const perSecond = (n: number) => seconds > 0 ? round(n / seconds, 1) : 0;
  const timed = run.pattern !== "stream" && run.histogram.count > 0;
  return {
    pattern: run.pattern,
    connections: run.connections,
    size: run.sizeBytes,
    duration_s: round(seconds, 3),
    messages: run.messages,
    messages_per_s: perSecond(run.messages),
    bytes: run.bytes,
    mib_per_s: seconds > 0 ? round(run.bytes / seconds / 2 ** 20, 2) : 0,
    latency_us: timed ? latencySummary(run.histogram) : null,
    errors: run.errors,
    rate: run.rate > 0 ? run.rate : null,
    latency_uncorrected_us: timed && run.uncorrected
      ? latencySummary(run.uncorrected)
      : null,
    connects_per_s: run.pattern === "connect" ? perSecond(run.messages) : null,
    lost: run.lost ?? 0,
    per_conn: run.perConnection,
  };
}

/** `n` with thousands separators. */
function number(n: number): string {
  return n.toLocaleString("en-US", { maximumFractionDigits: 1 });
}

/** A duration in µs, scaled to µs, ms or s, two decimals (as wrk prints them). */
export function formatLatency(us: number): string {
  if (us < 1000) return `${us.toFixed(2)} µs`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(2)} ms`;
  return `${(us / 1_000_000).toFixed(2)} s`;
}

/** A group of errors with one cause, as {@linkcode ErrorGroups} counts them. */
export interface ErrorGroup {
  /** The cause, without connection numbers. */
  cause: string;
  /** How many errors had it. */
  count: number;
  /** The first error of the group, in full. */
  example: string;
  /** What to try, when we can tell. */
  hint?: string;
}

/** The innermost cause of `err` and whether a connect failed. */
function rootOf(err: Error): { root: Error; connect: boolean } {
  let root: Error = err;
  let connect = false;
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e.message.startsWith("cannot connect to")) connect = true;
    root = e;
  }
  return { root, connect };
}

/**
 * Errors grouped by cause, each with a count and, when we can tell, a hint:
 * 70 failed connects read as one line, not 70.
 */
export class ErrorGroups {
  #groups = new Map<string, ErrorGroup>();
  #lines: boolean;
  #sizeBytes: number;

  /** Hints depend on whether messages are lines, and their size. */
  constructor(options: { lines: boolean; sizeBytes: number }) {
    this.#lines = options.lines;
    this.#sizeBytes = options.sizeBytes;
  }

  /** Counts `err` in its group; `describe` gives its full text. */
  add(err: Error, describe: (err: Error) => string): void {
    let cause: string;
    let code: string | undefined;
    if (err instanceof EchoError || err.name === "EchoError") {
      cause = (err as EchoError).kind ?? err.message;
    } else {
      const { root, connect } = rootOf(err);
      code = (root as { code?: string }).code;
      const reason = root === err ? err.message : root.message;
      cause = `${connect ? "cannot connect" : "connection failed"}: ${reason}`;
    }
    const group = this.#groups.get(cause);
    if (group) group.count++;
    else {
      this.#groups.set(cause, {
        cause,
        count: 1,
        example: describe(err),
        hint: this.#hint(cause, code),
      });
    }
  }

  /** The groups, largest first. */
  get groups(): ErrorGroup[] {
    return [...this.#groups.values()].sort((a, b) => b.count - a.count);
  }

  #hint(cause: string, code: string | undefined): string | undefined {
    if (code === "EMFILE" || cause.includes("Too many open files")) {
      return "each connection takes a file descriptor: raise the limit (ulimit -n) or use fewer connections";
    }
    if (code === "EADDRNOTAVAIL") {
      return "out of local ports: fewer connections, or widen net.ipv4.ip_local_port_range";
    }
    if (code === "ECONNREFUSED") {
      return "is the server running there, and is its accept backlog large enough?";
    }
    if (cause.includes("UnknownIssuer")) {
      return "a self-signed server? trust its CA with --ca FILE";
    }
    const hungUp =
      cause === "server closed the connection before echoing everything";
    if (cause === "no echo" || hungUp) {
      if (this.#lines) {
        return `the server may cut long lines: start it with --max-line ${
          this.#sizeBytes - 1
        } or more (--spawn-server does)`;
      }
      // A line server holds a message without "\n" (no echo); one that hangs
      // up mid-message has a reason of its own, the line limit among them.
      return hungUp
        ? "the server hung up mid-message: on purpose (--close-after), over a limit, or in line mode (try --lines)"
        : "is the server in line mode? try --lines";
    }
    return undefined;
  }
}

/** What the text report shows beyond the {@linkcode BenchResult}. */
export interface ReportDetails {
  /** The target, as `HOST:PORT` or `unix:PATH`. */
  target?: string;
  /** Worker threads that ran the connections (absent: the caller's isolate). */
  threads?: number;
  /** The warm-up, in ms. */
  warmupMs?: number;
  /** The window's latency histogram, drawn as bars. */
  histogram?: LatencyHistogram;
  /** Errors grouped by cause. */
  errors?: ErrorGroup[];
  /** Where the result came from, instead of the settings (`bench merge`). */
  source?: string;
  /** A run over UDP: the header says so and the report gives the loss rate. */
  udp?: boolean;
}

/**
 * Human-readable report of a {@linkcode BenchResult}, several lines, no final
 * newline; over UDP (or with anything lost) it gives the loss rate.
 */
export function formatReport(
  result: BenchResult,
  details: ReportDetails = {},
): string {
  const {
    target,
    threads,
    warmupMs,
    histogram,
    errors = [],
    source,
    udp = false,
  } = details;
  const settings = [
    `${result.pattern}${udp ? " over UDP" : ""}`,
    `${number(result.connections)} connections`,
    `${number(result.size)}-byte messages`,
    ...(result.rate === null ? [] : [`${number(result.rate)} msg/s asked`]),
    `${result.duration_s.toFixed(2)} s` +
    (warmupMs ? ` after a ${warmupMs / 1000} s warm-up` : ""),
    ...(threads ? [`${threads} thread${threads === 1 ? "" : "s"}`] : []),
  ];
  const lines = [
    `${source ?? (target ? `bench ${target}` : "bench")}: ${
      settings.join(", ")
    }`,
    `messages   ${number(result.messages)} (${
      number(result.messages_per_s)
    } msg/s)`,
    `bytes      ${number(result.bytes)} echoed bytes received (${
      result.mib_per_s.toFixed(2)
    } MiB/s)`,
  ];
  if (result.connects_per_s !== null) {
    lines.push(`connects   ${number(result.connects_per_s)} conn/s`);
  }
  if (result.rate !== null) {
    lines.push(
      result.messages_per_s < result.rate * KEPT_UP
        ? `rate       the server did not keep up: ${
          number(result.messages_per_s)
        } msg/s of the ${number(result.rate)} asked (latency counts the wait)`
        : `rate       ${number(result.messages_per_s)} msg/s of the ${
          number(result.rate)
        } asked`,
    );
  }
  if (result.latency_us) lines.push(...latencyLines(result, histogram));
  if (result.per_conn) {
    const { min, median, max, jain } = result.per_conn;
    const unit = result.pattern === "stream" ? "MiB" : "messages";
    lines.push(
      `per conn   min ${number(min)}, median ${number(median)}, max ${
        number(max)
      } ${unit} (Jain ${jain.toFixed(3)})`,
    );
  }
  if (udp || result.lost > 0) {
    const sent = result.messages + result.lost;
    const share = sent > 0 ? (100 * result.lost / sent).toFixed(2) : "0.00";
    lines.push(
      `lost       ${number(result.lost)} of ${number(sent)} (${share}%)`,
    );
  }
  lines.push(`errors     ${number(result.errors)}`);
  for (const group of errors) {
    lines.push(`  ${number(group.count).padStart(6)} × ${group.cause}`);
    if (group.hint) lines.push(`           hint: ${group.hint}`);
  }
  return lines.join("\n");
}

function latencyLines(
  result: BenchResult,
  histogram: LatencyHistogram | undefined,
): string[] {
  const latency = result.latency_us!;
  const what = result.pattern === "connect" ? "connect to close" : "round trip";
  const corrected = result.rate !== null
    ? ", from each message's intended send time"
    : "";
  const lines = [`latency    ${what}${corrected}`];
  if (histogram) {
    lines.push(
      `  mean ${formatLatency(histogram.mean)}, stdev ${
        formatLatency(histogram.stdev)
      }`,
    );
  }
  const percentiles = (summary: LatencySummary) => [
    ...PERCENTILES.map(([key, , label]) =>
      `${label} ${formatLatency(summary[key])}`
    ),
    `max ${formatLatency(summary.max)}`,
  ];
  const cells = percentiles(latency);
  lines.push(`  ${cells.slice(0, 4).join(", ")}`);
  lines.push(`  ${cells.slice(4).join(", ")}`);
  if (result.latency_uncorrected_us) {
    const u = percentiles(result.latency_uncorrected_us);
    lines.push("  uncorrected (from the actual send):");
    lines.push(`  ${u.slice(0, 4).join(", ")}`);
    lines.push(`  ${u.slice(4).join(", ")}`);
  }
  if (histogram && histogram.count > 0) {
    const bars = histogram.bars();
    const most = Math.max(...bars.map((bar) => bar.count));
    const labels = bars.map((bar) => formatLatency(bar.upToUs));
    const labelWidth = Math.max(...labels.map((l) => l.length));
    const countWidth = Math.max(...bars.map((bar) => number(bar.count).length));
    lines.push("  histogram (each row: up to its bound):");
    bars.forEach((bar, i) => {
      const width = Math.round(bar.count / most * BAR_WIDTH);
      lines.push(
        `  ${labels[i].padStart(labelWidth)} [${
          number(bar.count).padStart(countWidth)
        }] |${"■".repeat(width)}`,
      );
    });
  }
  return lines;
}

/** One progress line (no newline), e.g. for `\r`-rewriting on a terminal. */
export function formatProgress(progress: BenchProgress): string {
  const seconds = progress.elapsedMs / 1000;
  const of = `${seconds.toFixed(1)}/${
    (progress.durationMs / 1000).toFixed(1)
  } s`;
  if (progress.phase === "warmup") {
    return `warming up ${of}  errors ${progress.errors}`;
  }
  const rate = seconds > 0 ? Math.round(progress.messages / seconds) : 0;
  const mib = seconds > 0 ? progress.bytes / seconds / 2 ** 20 : 0;
  return `${of}  ${rate.toLocaleString("en-US")} msg/s  ${
    mib.toFixed(2)
  } MiB/s  ` +
    `errors ${progress.errors}`;
}

/** One `--interval` line (no newline): time span, msg/s, MiB/s, p99 of that interval. */
export function formatInterval(interval: BenchInterval): string {
  const seconds = (interval.endMs - interval.startMs) / 1000;
  const from = (interval.startMs / 1000).toFixed(1).padStart(5);
  const to = (interval.endMs / 1000).toFixed(1).padStart(5);
  const rate = seconds > 0 ? Math.round(interval.messages / seconds) : 0;
  const mib = seconds > 0 ? interval.bytes / seconds / 2 ** 20 : 0;
  const p99 = interval.histogram.count > 0
    ? formatLatency(interval.histogram.percentile(99))
    : "-";
  return `[${from}-${to} s]  ${
    rate.toLocaleString("en-US").padStart(9)
  } msg/s  ${mib.toFixed(2).padStart(8)} MiB/s  p99 ${p99}`;
}
