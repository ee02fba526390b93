/**
 * The admin endpoint (`--admin HOST:PORT`): HTTP beside the echo port, with
 * `GET /metrics` (Prometheus text), `GET /healthz` and `GET /readyz`. It
 * knows nothing of the echo server: it asks `snapshot()` and `ready()`, so
 * one server in this isolate, a pool of worker isolates and a UDP server
 * plug in alike.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import {
  type MetricsSnapshot,
  PROMETHEUS_CONTENT_TYPE,
  renderPrometheus,
  type UdpMetricsSnapshot,
} from "./_metrics.ts";
import { formatAddr } from "./io.ts";

/** Options for {@linkcode serveAdmin}. */
export interface AdminOptions {
  /** Address to bind. */
  hostname: string;
  /** TCP port; `0` lets the OS choose. */
  port: number;
  /** The metrics now: of one server, summed over workers, or of a UDP server. */
  snapshot: () => Snapshot | Promise<Snapshot>;
  /** Whether the server accepts clients (`/readyz` is 503 when not). */
  ready: () => boolean;
}

/** A running admin endpoint. */
export interface AdminServer extends AsyncDisposable {
  /** Where it listens; with `port: 0`, the real port. */
  readonly addr: Deno.NetAddr;
  /** Stops it, after the requests under way. Idempotent. */
  close(): Promise<void>;
}

/** What `/metrics` renders: a TCP server's or a UDP server's metrics. */
type Snapshot = MetricsSnapshot | UdpMetricsSnapshot;

const TEXT = { "content-type": "text/plain; charset=utf-8" };

/**
 * Starts the admin endpoint and logs `admin on HOST:PORT`. Binding happens
 * now: a port in use or a bad address throws at once.
 *
 * @throws {Error} `cannot listen on HOST:PORT`, with the OS error as `cause`
 */
export function serveAdmin(options: AdminOptions): AdminServer {
  const { hostname, port, snapshot, ready } = options;
  const log = getLogger(["tcpecho", "admin"]);
  const handler = async (request: Request): Promise<Response> => {
    const { pathname } = new URL(request.url);
    const route = ROUTES[pathname];
    if (route === undefined) {
      return new Response("not found\n", { status: 404, headers: TEXT });
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("method not allowed\n", {
        status: 405,
        headers: { ...TEXT, allow: "GET, HEAD" },
      });
    }
    switch (route) {
      case "metrics":
        return new Response(renderPrometheus(await snapshot()), {
          headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
        });
      case "healthz":
        return new Response("ok\n", { headers: TEXT });
      case "readyz":
        return ready()
          ? new Response("ready\n", { headers: TEXT })
          : new Response("draining\n", { status: 503, headers: TEXT });
    }
  };
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname,
      port,
      onListen() {}, // we log it ourselves, on stderr
      onError(err) {
        log.error("admin request failed: {err}", { err });
        return new Response("internal error\n", { status: 500, headers: TEXT });
      },
    }, handler);
  } catch (cause) {
    const where = formatAddr({ transport: "tcp", hostname, port });
    throw new Error(`cannot listen on ${where}`, { cause });
  }
  const where = formatAddr(server.addr);
  log.info("admin on {where}", { where });
  let closing: Promise<void> | undefined;
  const close = () => closing ??= server.shutdown();
  return { addr: server.addr, close, [Symbol.asyncDispose]: close };
}

const ROUTES: Record<string, "metrics" | "healthz" | "readyz"> = {
  "/metrics": "metrics",
  "/healthz": "healthz",
  "/readyz": "readyz",
};
