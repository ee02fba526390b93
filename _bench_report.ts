/**
 * What the load generator reports (private to `bench.ts`): the
 * {@linkcode BenchResult} of a run, its text report and its progress line.
 *
 * @module
 */

import type { LatencyHistogram } from "./_histogram.ts";
import type { BenchPattern, BenchProgress, BenchResult } from "./bench.ts";

/** What a run counted; {@linkcode benchResult} turns it into the result. */
export interface RunCounts {
  /** Pingpong round trips completed in the window. */
  readonly messages: number;
  /** Echoed bytes received in the window. */
  readonly bytes: number;
  /** Errors, warm-up included. */
  readonly errors: number;
  /** Pingpong round-trip times in the window, in microseconds. */
  readonly histogram: LatencyHistogram;
}

/** Messages in the window so far: stream counts whole sizes of echoed bytes. */
export function messagesOf(
  counts: RunCounts,
  pattern: BenchPattern,
  sizeBytes: number,
): number {
  return pattern === "pingpong"
    ? counts.messages
    : Math.floor(counts.bytes / sizeBytes);
}

/** The {@linkcode BenchResult} of a finished run, keys in the SPEC's order. */
export function benchResult(
  counts: RunCounts,
  pattern: BenchPattern,
  connections: number,
  sizeBytes: number,
  windowMs: number,
): BenchResult {
  const seconds = windowMs / 1000;
  const messages = messagesOf(counts, pattern, sizeBytes);
  const histogram = counts.histogram;
  return {
    pattern,
    connections,
    size: sizeBytes,
    duration_s: round(seconds, 3),
    messages,
    messages_per_s: seconds > 0 ? round(messages / seconds, 1) : 0,
    bytes: counts.bytes,
    mib_per_s: seconds > 0 ? round(counts.bytes / seconds / 2 ** 20, 2) : 0,
    latency_us: pattern === "pingpong" && histogram.count > 0
      ? {
        p50: round(histogram.percentile(50), 1),
        p90: round(histogram.percentile(90), 1),
        p99: round(histogram.percentile(99), 1),
        max: round(histogram.max, 1),
      }
      : null,
    errors: counts.errors,
  };
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** Human-readable report of a {@linkcode BenchResult}, several lines, no final newline. */
export function formatReport(result: BenchResult): string {
  const number = (value: number) => value.toLocaleString("en-US");
  const lines = [
    `${result.pattern}: ${number(result.connections)} connections, ` +
    `${number(result.size)}-byte messages, ${result.duration_s.toFixed(2)} s`,
    `messages  ${number(result.messages)} (${
      number(result.messages_per_s)
    } msg/s)`,
    `bytes     ${number(result.bytes)} (${result.mib_per_s.toFixed(2)} MiB/s)`,
  ];
  if (result.latency_us) {
    const { p50, p90, p99, max } = result.latency_us;
    lines.push(
      `latency   p50 ${number(p50)} µs, p90 ${number(p90)} µs, ` +
        `p99 ${number(p99)} µs, max ${number(max)} µs`,
    );
  }
  lines.push(`errors    ${number(result.errors)}`);
  return lines.join("\n");
}

/** One progress line (no newline), e.g. for `\r`-rewriting on a terminal. */
export function formatProgress(progress: BenchProgress): string {
  const seconds = progress.elapsedMs / 1000;
  const rate = seconds > 0 ? Math.round(progress.messages / seconds) : 0;
  const mib = seconds > 0 ? progress.bytes / seconds / 2 ** 20 : 0;
  return `${seconds.toFixed(1)}/${
    (progress.durationMs / 1000).toFixed(1)
  } s  ` +
    `${rate.toLocaleString("en-US")} msg/s  ${mib.toFixed(2)} MiB/s  ` +
    `errors ${progress.errors}`;
}
