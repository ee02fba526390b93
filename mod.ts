/**
 * tcpecho as a library: an RFC 862 echo server ({@linkcode serve}), a client
 * ({@linkcode connect}, {@linkcode pipe}, {@linkcode interactive}) and a load
 * tester that checks every echoed byte ({@linkcode runBench}). The same over
 * UDP: {@linkcode serveUdp}, {@linkcode connectUdp} (with
 * {@linkcode udpPipe}, {@linkcode udpInteractive}) and
 * {@linkcode runUdpBench}; they need Deno's unstable net API
 * (`--unstable-net`). The command line program is the package's `./cli`
 * export.
 *
 * Options left out take the values in {@linkcode SERVE_DEFAULTS},
 * {@linkcode CONNECT_DEFAULTS} and {@linkcode BENCH_DEFAULTS} (over UDP also
 * {@linkcode UDP_SERVE_DEFAULTS}, {@linkcode UDP_CLIENT_DEFAULTS} and
 * {@linkcode UDP_BENCH_DEFAULTS}), the same ones the CLI's `--help` prints. The library logs through LogTape under the
 * `["tcpecho"]` category and configures nothing itself.
 *
 * @example Serve on a free port, load it for a second, stop
 * ```ts ignore
 * import { formatReport, runBench, serve } from "@tcpecho/tcpecho";
 *
 * await using server = serve({ port: 0 });
 * const result = await runBench({
 *   port: server.addr.port,
 *   connections: 8,
 *   durationMs: 1000,
 * });
 * console.log(formatReport(result));
 * ```
 *
 * @module
 */

export {
  type ConnEvent,
  type EchoMode,
  type ProxyAccept,
  type RefusalCode,
  removeStaleSocket,
  serve,
  SERVE_DEFAULTS,
  type ServeOptions,
  type Server,
  type ServerStats,
} from "./server.ts";
export {
  connect,
  CONNECT_DEFAULTS,
  type ConnectOptions,
  type ExchangeOptions,
  type Input,
  interactive,
  type InteractiveEnd,
  pipe,
  type ProxyVersion,
} from "./client.ts";
export {
  BENCH_DEFAULTS,
  type BenchInterval,
  type BenchIntervalListener,
  type BenchOptions,
  type BenchPattern,
  type BenchProgress,
  type BenchResult,
  type ErrorGroup,
  formatReport,
  LatencyHistogram,
  type LatencySummary,
  type PerConnection,
  type ReportDetails,
  runBench,
} from "./bench.ts";
// Everything `udp.ts` exports: the UDP server, client and load generator.
export * from "./udp.ts";
export type { Bar, SparseCounts } from "./_histogram.ts";
export type { Reader, Writer } from "./io.ts";
