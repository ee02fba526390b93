/**
 * The server's metrics as plain data: a {@linkcode MetricsRecorder} per
 * server (fed by `onConnState` events and the live `stats`, so the hot path
 * pays nothing more than the byte counters it already bumps) takes a
 * {@linkcode MetricsSnapshot}; snapshots of several servers (worker
 * isolates) add up with {@linkcode sumSnapshots}; {@linkcode renderPrometheus}
 * writes one as Prometheus text exposition format 0.0.4 for `/metrics`.
 *
 * @module
 */
import { REFUSAL_CODES, type RefusalCode } from "./_admission.ts";
import type { ConnEvent, ServerStats } from "./server.ts";

/**
 * Upper bounds of the connection duration histogram, in seconds: from a
 * refused-looking blip to an hour-long session.
 */
export const DURATION_BUCKETS_S: readonly number[] = [
  0.001,
  0.005,
  0.01,
  0.05,
  0.1,
  0.5,
  1,
  5,
  10,
  30,
  60,
  300,
  900,
  3600,
];

/** A histogram as plain data. */
export interface HistogramSnapshot {
  /** Upper bounds, ascending; a last bucket above them (`+Inf`) is implied. */
  bounds: number[];
  /** Observations per bucket, not cumulative: `bounds.length + 1` of them. */
  counts: number[];
  /** Sum of the observed values. */
  sum: number;
  /** Number of observations. */
  count: number;
}

/**
 * What `/metrics` shows, as plain data (structured-cloneable: a worker can
 * post it), summed over servers by {@linkcode sumSnapshots}.
 */
export interface MetricsSnapshot {
  /** Connections open now (those still reading a PROXY header included). */
  active: number;
  /** Connections accepted since the start, refused ones included. */
  accepted: number;
  /** Connections refused, by {@linkcode RefusalCode}. */
  refused: Record<RefusalCode, number>;
  /** Bytes received from clients. */
  bytesIn: number;
  /** Bytes echoed to clients. */
  bytesOut: number;
  /** How long closed connections were open, accept to close, in seconds. */
  duration: HistogramSnapshot;
}

function noRefusals(): Record<RefusalCode, number> {
  return Object.fromEntries(REFUSAL_CODES.map((code) => [code, 0])) as Record<
    RefusalCode,
    number
  >;
}

/** A snapshot of a server that has seen nothing yet. */
export function emptySnapshot(): MetricsSnapshot {
  return {
    active: 0,
    accepted: 0,
    refused: noRefusals(),
    bytesIn: 0,
    bytesOut: 0,
    duration: {
      bounds: [...DURATION_BUCKETS_S],
      counts: Array(DURATION_BUCKETS_S.length + 1).fill(0),
      sum: 0,
      count: 0,
    },
  };
}

/**
 * Records one server's metrics: pass {@linkcode MetricsRecorder.onConnState}
 * as the server's `onConnState` (per connection, never per message), then
 * take {@linkcode MetricsRecorder.snapshot}s with its `stats`.
 */
export class MetricsRecorder {
  readonly #refused = noRefusals();
  readonly #counts = Array<number>(DURATION_BUCKETS_S.length + 1).fill(0);
  #sum = 0;
  #count = 0;

  /** The hook for `serve({ onConnState })`. */
  readonly onConnState = (event: ConnEvent): void => {
    if (event.state === "refused") {
      this.#refused[event.code]++;
    } else if (event.state === "closed") {
      const s = event.durationMs / 1000;
      let i = 0;
      while (i < DURATION_BUCKETS_S.length && s > DURATION_BUCKETS_S[i]) i++;
      this.#counts[i]++;
      this.#sum += s;
      this.#count++;
    }
  };

  /** The metrics now, the counters taken from the server's `stats`. */
  snapshot(stats: Readonly<ServerStats>): MetricsSnapshot {
    return {
      active: stats.active,
      accepted: stats.served + stats.refused,
      refused: { ...this.#refused },
      bytesIn: stats.bytesIn,
      bytesOut: stats.bytesOut,
      duration: {
        bounds: [...DURATION_BUCKETS_S],
        counts: [...this.#counts],
        sum: this.#sum,
        count: this.#count,
      },
    };
  }
}

/**
 * The totals of several servers' snapshots (one per worker isolate).
 *
 * @throws {RangeError} when their histograms have different buckets
 */
export function sumSnapshots(
  snapshots: readonly MetricsSnapshot[],
): MetricsSnapshot {
  const total = emptySnapshot();
  for (const s of snapshots) {
    total.active += s.active;
    total.accepted += s.accepted;
    for (const code of REFUSAL_CODES) total.refused[code] += s.refused[code];
    total.bytesIn += s.bytesIn;
    total.bytesOut += s.bytesOut;
    const { bounds, counts, sum, count } = s.duration;
    if (bounds.join() !== total.duration.bounds.join()) {
      throw new RangeError("cannot add histograms with different buckets");
    }
    counts.forEach((n, i) => total.duration.counts[i] += n);
    total.duration.sum += sum;
    total.duration.count += count;
  }
  return total;
}

/** The `Content-Type` of {@linkcode renderPrometheus}'s text. */
export const PROMETHEUS_CONTENT_TYPE =
  "text/plain; version=0.0.4; charset=utf-8";

/** A sample value as the text format writes it (`+Inf`, `1e-7`). */
function value(n: number): string {
  return n === Infinity ? "+Inf" : n === -Infinity ? "-Inf" : String(n);
}

/** `snapshot` in the Prometheus text exposition format 0.0.4. */
export function renderPrometheus(snapshot: MetricsSnapshot): string {
  const { active, accepted, refused, bytesIn, bytesOut, duration } = snapshot;
  const lines: string[] = [];
  const metric = (name: string, type: string, help: string) =>
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  metric("tcpecho_connections_active", "gauge", "Connections open now.");
  lines.push(`tcpecho_connections_active ${value(active)}`);
  metric(
    "tcpecho_connections_total",
    "counter",
    "Connections accepted, refused ones included.",
  );
  lines.push(`tcpecho_connections_total ${value(accepted)}`);
  metric(
    "tcpecho_connections_refused_total",
    "counter",
    "Connections accepted and closed at once, by the rule that refused them.",
  );
  for (const code of REFUSAL_CODES) {
    lines.push(
      `tcpecho_connections_refused_total{reason="${code}"} ${
        value(refused[code])
      }`,
    );
  }
  metric(
    "tcpecho_bytes_received_total",
    "counter",
    "Bytes received from clients.",
  );
  lines.push(`tcpecho_bytes_received_total ${value(bytesIn)}`);
  metric("tcpecho_bytes_sent_total", "counter", "Bytes echoed to clients.");
  lines.push(`tcpecho_bytes_sent_total ${value(bytesOut)}`);
  const h = "tcpecho_connection_duration_seconds";
  metric(h, "histogram", "How long connections were open, accept to close.");
  let cumulative = 0;
  duration.counts.forEach((n, i) => {
    cumulative += n;
    const le = i < duration.bounds.length ? value(duration.bounds[i]) : "+Inf";
    lines.push(`${h}_bucket{le="${le}"} ${cumulative}`);
  });
  lines.push(`${h}_sum ${value(duration.sum)}`, `${h}_count ${duration.count}`);
  return lines.join("\n") + "\n";
}
