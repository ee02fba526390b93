/**
 * The server's metrics as plain data: a {@linkcode MetricsRecorder} per
 * server (fed by `onConnState` events and the live `stats`, so the hot path
 * pays nothing more than the byte counters it already bumps) takes a
 * {@linkcode MetricsSnapshot}; snapshots of several servers (worker
 * isolates) add up with {@linkcode sumSnapshots}; {@linkcode renderPrometheus}
 * writes one as Prometheus text exposition format 0.0.4 for `/metrics`.
 * A UDP server has no connections: {@linkcode udpSnapshot} takes its
 * datagram counters from its `stats` alone.
 *
 * @module
 */
import { REFUSAL_CODES, type RefusalCode } from "./_admission.ts";
import type { ConnEvent, ServerStats } from "./server.ts";
import type { UdpServerStats } from "./udp.ts";

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

/**
 * Why a datagram got no echo, as the `reason` label of
 * `tcpecho_datagrams_dropped_total` names it: `not-allowed` by
 * `--allow`/`--deny` (the TCP refusal's code), `oversized`, `drop` (the
 * `--drop` fault), `overflow` (too many delayed echoes held), `send-error`
 * (the OS refused the echo).
 */
export type DatagramDropReason =
  | "not-allowed"
  | "oversized"
  | "drop"
  | "overflow"
  | "send-error";

/** Every {@linkcode DatagramDropReason}, in the order `/metrics` lists them. */
export const DATAGRAM_DROP_REASONS: readonly DatagramDropReason[] = [
  "not-allowed",
  "oversized",
  "drop",
  "overflow",
  "send-error",
];

/** What `/metrics` shows for a UDP server, as plain data. */
export interface UdpMetricsSnapshot {
  /** Tells it from a TCP server's {@linkcode MetricsSnapshot}. */
  transport: "udp";
  /** Datagrams received, whatever became of them. */
  received: number;
  /** Datagrams echoed. */
  sent: number;
  /** Datagrams not echoed, by {@linkcode DatagramDropReason}. */
  dropped: Record<DatagramDropReason, number>;
  /** Bytes received (of every datagram received). */
  bytesIn: number;
  /** Bytes echoed. */
  bytesOut: number;
  /** Distinct senders (address and port) since the start. */
  peers: number;
  /** Whether `peers` stopped counting (`maxPeers`): it is a lower bound. */
  peersCapped: boolean;
}

/** The metrics of a UDP server now, from its live `stats`. */
export function udpSnapshot(
  stats: Readonly<UdpServerStats>,
): UdpMetricsSnapshot {
  return {
    transport: "udp",
    received: stats.datagrams,
    sent: stats.echoed,
    dropped: {
      "not-allowed": stats.refused,
      oversized: stats.oversized,
      drop: stats.dropped,
      overflow: stats.overflow,
      "send-error": stats.failed,
    },
    bytesIn: stats.bytesIn,
    bytesOut: stats.bytesOut,
    peers: stats.peers,
    peersCapped: stats.peersCapped,
  };
}

/** The `Content-Type` of {@linkcode renderPrometheus}'s text. */
export const PROMETHEUS_CONTENT_TYPE =
  "text/plain; version=0.0.4; charset=utf-8";

/** A sample value as the text format writes it (`+Inf`, `1e-7`). */
function value(n: number): string {
  return n === Infinity ? "+Inf" : n === -Infinity ? "-Inf" : String(n);
}

/** Writes one metric family's `# HELP` and `# TYPE` lines to `lines`. */
function header(lines: string[]) {
  return (name: string, type: string, help: string) =>
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
}

/** The byte counters, named alike over TCP and UDP. */
function byteCounters(lines: string[], bytesIn: number, bytesOut: number) {
  const metric = header(lines);
  metric(
    "tcpecho_bytes_received_total",
    "counter",
    "Bytes received from clients.",
  );
  lines.push(`tcpecho_bytes_received_total ${value(bytesIn)}`);
  metric("tcpecho_bytes_sent_total", "counter", "Bytes echoed to clients.");
  lines.push(`tcpecho_bytes_sent_total ${value(bytesOut)}`);
}

/**
 * `snapshot` in the Prometheus text exposition format 0.0.4: a TCP server's
 * connection metrics, or a UDP server's datagram metrics. Both name their
 * byte counters alike.
 */
export function renderPrometheus(
  snapshot: MetricsSnapshot | UdpMetricsSnapshot,
): string {
  if ("transport" in snapshot) return renderUdp(snapshot);
  const { active, accepted, refused, bytesIn, bytesOut, duration } = snapshot;
  const lines: string[] = [];
  const metric = header(lines);
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
  byteCounters(lines, bytesIn, bytesOut);
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

function renderUdp(snapshot: UdpMetricsSnapshot): string {
  const { received, sent, dropped, bytesIn, bytesOut, peers, peersCapped } =
    snapshot;
  const lines: string[] = [];
  const metric = header(lines);
  metric(
    "tcpecho_datagrams_received_total",
    "counter",
    "Datagrams received, whatever became of them.",
  );
  lines.push(`tcpecho_datagrams_received_total ${value(received)}`);
  metric("tcpecho_datagrams_sent_total", "counter", "Datagrams echoed.");
  lines.push(`tcpecho_datagrams_sent_total ${value(sent)}`);
  metric(
    "tcpecho_datagrams_dropped_total",
    "counter",
    "Datagrams received and not echoed, by why.",
  );
  for (const reason of DATAGRAM_DROP_REASONS) {
    lines.push(
      `tcpecho_datagrams_dropped_total{reason="${reason}"} ${
        value(dropped[reason])
      }`,
    );
  }
  byteCounters(lines, bytesIn, bytesOut);
  metric(
    "tcpecho_datagram_peers",
    "gauge",
    "Distinct senders (address and port) since the start; a lower bound when tcpecho_datagram_peers_capped is 1.",
  );
  lines.push(`tcpecho_datagram_peers ${value(peers)}`);
  metric(
    "tcpecho_datagram_peers_capped",
    "gauge",
    "1 once more senders came than are counted exactly, else 0.",
  );
  lines.push(`tcpecho_datagram_peers_capped ${peersCapped ? 1 : 0}`);
  return lines.join("\n") + "\n";
}
