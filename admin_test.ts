/**
 * The admin endpoint and its metrics: `serveAdmin()` beside `serve()` with
 * a `MetricsRecorder`, `/metrics` read back by a real Prometheus text parser
 * (and `promtool check metrics` where installed), and `tcpecho server
 * --admin` as a child process.
 */
import assert from "node:assert/strict";
import net from "node:net";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { serveAdmin } from "./_admin.ts";
import {
  emptySnapshot,
  MetricsRecorder,
  type MetricsSnapshot,
  renderPrometheus,
  sumSnapshots,
  udpSnapshot,
} from "./_metrics.ts";
import { type RefusalCode, serve } from "./server.ts";
import { bytes, ConnEvents, echoAll, writeAll } from "./testing.ts";
import { connectUdp, UdpConn, type UdpServerStats } from "./udp.ts";
import { argv, runCli, ServerProcess } from "./testing_cli.ts";

interface Family {
  name: string;
  help: string;
  type: string;
  metrics: {
    value?: string;
    labels?: Record<string, string>;
    buckets?: Record<string, string>;
    sum?: string;
    count?: string;
  }[];
}

/** `fetch`, bounded: an endpoint that never answers fails the test, not hangs it. */
function fetchBounded(url: string, init: RequestInit = {}): Promise<Response> {
  return fetch(url, { signal: AbortSignal.timeout(10_000), ...init });
}

/** A recorder that saw a connection close after each of `durationsMs`, then one refusal. */
function recorded(
  durationsMs: number[],
  refusal: { code: RefusalCode; reason: string },
): MetricsRecorder {
  const metrics = new MetricsRecorder();
  for (const durationMs of durationsMs) {
    metrics.onConnState({
      state: "closed",
      peer: "p",
      bytesIn: 0,
      bytesOut: 0,
      durationMs,
    });
  }
  metrics.onConnState({ state: "refused", peer: "p", ...refusal });
  return metrics;
}

/** `/metrics` text, parsed by the npm Prometheus text parser, by name. */
function parseMetrics(text: string): Map<string, Family> {
  const families = parsePrometheusTextFormat(text) as Family[];
  return new Map(families.map((f) => [f.name, f]));
}

const promtool = (() => {
  try {
    return new Deno.Command("promtool", { args: ["--version"] }).outputSync()
      .success;
  } catch {
    return false;
  }
})();

/** `promtool check metrics` on `text`: its complaints ("" when none). */
async function promtoolCheck(text: string): Promise<string> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(bytes(text));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  const said = new TextDecoder().decode(stdout) +
    new TextDecoder().decode(stderr);
  return code === 0 ? said : `exit ${code}: ${said}`;
}

/** A connection from 127.0.0.2 (Linux loopback), closed once refused. */
async function refusedFrom127002(port: number): Promise<void> {
  const socket = net.connect({
    host: "127.0.0.1",
    port,
    localAddress: "127.0.0.2",
  });
  socket.on("error", () => {});
  await new Promise((resolve) => socket.once("close", resolve));
}

Deno.test("GET /metrics counts known traffic; a real parser reads it", async () => {
  using events = new ConnEvents();
  const metrics = new MetricsRecorder();
  await using server = serve({
    port: 0,
    maxConns: 3,
    allow: ["127.0.0.1"],
    onConnState: (e) => {
      metrics.onConnState(e);
      events.onConnState(e);
    },
  });
  await using admin = serveAdmin({
    hostname: "127.0.0.1",
    port: 0,
    snapshot: () => metrics.snapshot(server.stats),
    ready: () => true,
  });
  const { port } = server.addr;
  // Three clients echo 10 bytes each and leave; one stays; one is refused by
  // --allow; then two more fill max-conns and a third is refused by it.
  for (let i = 0; i < 3; i++) {
    using conn = await Deno.connect({ port });
    assert.deepEqual(
      await echoAll(conn, bytes("0123456789")),
      bytes("0123456789"),
    );
  }
  await events.count("closed", 3);
  using stays = await Deno.connect({ port });
  await writeAll(stays, bytes("x"));
  assert.equal(await stays.read(new Uint8Array(1)), 1);
  if (Deno.build.os === "linux") await refusedFrom127002(port);
  using two = await Deno.connect({ port });
  using three = await Deno.connect({ port });
  using four = await Deno.connect({ port });
  await events.count("refused", Deno.build.os === "linux" ? 2 : 1);
  await events.count("open", 6);

  const response = await fetchBounded(
    `http://127.0.0.1:${admin.addr.port}/metrics`,
  );
  assert.equal(response.status, 200);
  assert.equal(
    response.headers.get("content-type"),
    "text/plain; version=0.0.4; charset=utf-8",
  );
  const text = await response.text();
  const m = parseMetrics(text);
  const value = (name: string, labels?: Record<string, string>) => {
    const family = m.get(name);
    assert.ok(family, `no ${name} in:\n${text}`);
    const sample = family.metrics.find((s) =>
      JSON.stringify(s.labels ?? {}) === JSON.stringify(labels ?? {})
    );
    assert.ok(sample, `no ${name} ${JSON.stringify(labels)}`);
    return Number(sample.value);
  };
  const linux = Deno.build.os === "linux" ? 1 : 0;
  assert.equal(m.get("tcpecho_connections_active")?.type, "GAUGE");
  assert.equal(value("tcpecho_connections_active"), 3);
  assert.equal(m.get("tcpecho_connections_total")?.type, "COUNTER");
  assert.equal(value("tcpecho_connections_total"), 7 + linux);
  const refused = (reason: string) =>
    value("tcpecho_connections_refused_total", { reason });
  assert.equal(refused("max-conns"), 1);
  assert.equal(refused("not-allowed"), linux);
  assert.equal(refused("max-conns-per-ip"), 0);
  assert.equal(value("tcpecho_bytes_received_total"), 31);
  assert.equal(value("tcpecho_bytes_sent_total"), 31);
  const histogram = m.get("tcpecho_connection_duration_seconds");
  assert.equal(histogram?.type, "HISTOGRAM");
  const [h] = histogram!.metrics;
  assert.equal(Number(h.count), 3);
  assert.equal(Number(h.buckets!["+Inf"]), 3);
  assert.ok(Number(h.sum) > 0);
  // Cumulative: counts grow with the bound ("+Inf" is Infinity). (An object
  // lists integer keys first, so sort by the bound.)
  const counts = Object.entries(h.buckets!)
    .sort(([a], [b]) => Number(a) - Number(b))
    .map(([, n]) => Number(n));
  assert.deepEqual(counts, [...counts].sort((a, b) => a - b));
  for (const name of m.keys()) assert.ok(m.get(name)!.help.length > 0, name);
  if (promtool) assert.equal(await promtoolCheck(text), "");
  for (const conn of [stays, two, three, four]) conn.close();
});

Deno.test({
  name: "renderPrometheus() passes promtool check metrics",
  ignore: !promtool, // Debian's "prometheus" package has it
  async fn() {
    const metrics = recorded([0.5, 20, 2000, 7_200_000], {
      code: "not-allowed",
      reason: "not allowed",
    });
    const text = renderPrometheus(
      metrics.snapshot({
        active: 2,
        served: 6,
        refused: 1,
        bytesIn: 1e15,
        bytesOut: 5,
      }),
    );
    assert.equal(await promtoolCheck(text), "");
    // And a broken exposition is caught: promtool is really checking.
    const unsuffixed = text.replaceAll(
      "tcpecho_bytes_sent_total",
      "tcpecho_bytes_sent",
    );
    assert.match(
      await promtoolCheck(unsuffixed),
      /should have "_total" suffix/,
    );
  },
});

Deno.test("renderPrometheus() writes each field under its name, buckets cumulative", () => {
  // One in (0.001, 0.005], two in (0.05, 0.1], one above the last bound.
  const metrics = recorded([2, 60, 100, 4_000_000], {
    code: "max-conns-per-ip",
    reason: "r",
  });
  const stats = {
    active: 2,
    served: 6,
    refused: 1,
    bytesIn: 1234,
    bytesOut: 1200,
  };
  const m = parseMetrics(renderPrometheus(metrics.snapshot(stats)));
  const one = (name: string) => m.get(name)!.metrics[0].value;
  assert.equal(one("tcpecho_connections_active"), "2");
  assert.equal(one("tcpecho_connections_total"), "7");
  assert.equal(one("tcpecho_bytes_received_total"), "1234");
  assert.equal(one("tcpecho_bytes_sent_total"), "1200");
  assert.deepEqual(
    m.get("tcpecho_connections_refused_total")!.metrics.map((
      s,
    ) => [s.labels!.reason, s.value]),
    [["max-conns", "0"], ["max-conns-per-ip", "1"], ["not-allowed", "0"]],
  );
  const [h] = m.get("tcpecho_connection_duration_seconds")!.metrics;
  assert.deepEqual(h.buckets, {
    "0.001": "0",
    "0.005": "1",
    "0.01": "1",
    "0.05": "1",
    "0.1": "3",
    "0.5": "3",
    "1": "3",
    "5": "3",
    "10": "3",
    "30": "3",
    "60": "3",
    "300": "3",
    "900": "3",
    "3600": "3",
    "+Inf": "4",
  });
  assert.equal(h.count, "4");
  assert.equal(Number(h.sum), 4000.162);
});

/** The samples of `text` as `name{label="value"}` → value, as a parser reads them. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const family of parseMetrics(text).values()) {
    for (const sample of family.metrics) {
      const labels = Object.entries(sample.labels ?? {})
        .map(([k, v]) => `${k}="${v}"`).join(",");
      out.set(
        labels ? `${family.name}{${labels}}` : family.name,
        Number(sample.value),
      );
    }
  }
  return out;
}

/** Every UDP metric family, its type, and the one sample of each. */
const UDP_FAMILIES = {
  tcpecho_datagrams_received_total: "COUNTER",
  tcpecho_datagrams_sent_total: "COUNTER",
  tcpecho_datagrams_dropped_total: "COUNTER",
  tcpecho_bytes_received_total: "COUNTER",
  tcpecho_bytes_sent_total: "COUNTER",
  tcpecho_datagram_peers: "GAUGE",
  tcpecho_datagram_peers_capped: "GAUGE",
};

Deno.test("renderPrometheus() writes a UDP server's datagram counters under their names", async () => {
  const stats: UdpServerStats = {
    datagrams: 100,
    peers: 7,
    peersCapped: true,
    echoed: 80,
    refused: 5,
    dropped: 4,
    overflow: 3,
    oversized: 2,
    failed: 1,
    bytesIn: 1e12,
    bytesOut: 999,
  };
  const text = renderPrometheus(udpSnapshot(stats));
  const families = parseMetrics(text);
  assert.deepEqual(
    Object.fromEntries([...families].map(([name, f]) => [name, f.type])),
    UDP_FAMILIES,
  );
  for (const f of families.values()) assert.ok(f.help.length > 0, f.name);
  assert.deepEqual(
    Object.fromEntries(samples(text)),
    {
      tcpecho_datagrams_received_total: 100,
      tcpecho_datagrams_sent_total: 80,
      'tcpecho_datagrams_dropped_total{reason="not-allowed"}': 5,
      'tcpecho_datagrams_dropped_total{reason="oversized"}': 2,
      'tcpecho_datagrams_dropped_total{reason="drop"}': 4,
      'tcpecho_datagrams_dropped_total{reason="overflow"}': 3,
      'tcpecho_datagrams_dropped_total{reason="send-error"}': 1,
      tcpecho_bytes_received_total: 1e12,
      tcpecho_bytes_sent_total: 999,
      tcpecho_datagram_peers: 7,
      tcpecho_datagram_peers_capped: 1,
    },
  );
  if (promtool) assert.equal(await promtoolCheck(text), "");
});

Deno.test("sumSnapshots() adds servers' snapshots; its histograms must match", () => {
  const a = new MetricsRecorder();
  const b = new MetricsRecorder();
  a.onConnState({
    state: "closed",
    peer: "p",
    bytesIn: 0,
    bytesOut: 0,
    durationMs: 3,
  });
  b.onConnState({
    state: "closed",
    peer: "p",
    bytesIn: 0,
    bytesOut: 0,
    durationMs: 4000,
  });
  b.onConnState({
    state: "refused",
    peer: "p",
    code: "max-conns",
    reason: "r",
  });
  const stats = { active: 1, served: 2, refused: 1, bytesIn: 10, bytesOut: 9 };
  const sum = sumSnapshots([a.snapshot(stats), b.snapshot(stats)]);
  assert.equal(sum.active, 2);
  assert.equal(sum.accepted, 6);
  assert.deepEqual(sum.refused, {
    "max-conns": 1,
    "max-conns-per-ip": 0,
    "not-allowed": 0,
  });
  assert.equal(sum.bytesIn, 20);
  assert.equal(sum.duration.count, 2);
  assert.equal(sum.duration.sum, 4.003);
  assert.equal(sum.duration.counts.reduce((x, y) => x + y), 2);
  // Plain data: it survives structured cloning (postMessage from a worker).
  assert.deepEqual(structuredClone(sum), sum);
  assert.deepEqual(sumSnapshots([]), emptySnapshot());
  const odd: MetricsSnapshot = emptySnapshot();
  odd.duration.bounds = [1];
  odd.duration.counts = [0, 0];
  assert.throws(() => sumSnapshots([sum, odd]), RangeError);
});

Deno.test("serveAdmin() answers /healthz, /readyz, 404 and 405", async () => {
  let ready = true;
  await using admin = serveAdmin({
    hostname: "127.0.0.1",
    port: 0,
    snapshot: emptySnapshot,
    ready: () => ready,
  });
  const url = (path: string) => `http://127.0.0.1:${admin.addr.port}${path}`;
  const get = async (path: string, init?: RequestInit) => {
    const response = await fetchBounded(url(path), init);
    return [response.status, await response.text(), response.headers] as const;
  };
  assert.deepEqual((await get("/healthz")).slice(0, 2), [200, "ok\n"]);
  assert.deepEqual((await get("/readyz")).slice(0, 2), [200, "ready\n"]);
  ready = false;
  assert.deepEqual((await get("/readyz")).slice(0, 2), [503, "draining\n"]);
  assert.deepEqual((await get("/healthz")).slice(0, 2), [200, "ok\n"]);
  assert.equal((await get("/nope"))[0], 404);
  assert.equal((await get("/metrics/"))[0], 404);
  const [status, , headers] = await get("/metrics", {
    method: "POST",
    body: "x",
  });
  assert.equal(status, 405);
  assert.equal(headers.get("allow"), "GET, HEAD");
  assert.equal((await get("/healthz", { method: "DELETE" }))[0], 405);
  const head = await fetchBounded(url("/metrics"), { method: "HEAD" });
  assert.equal(head.status, 200);
  await head.body?.cancel();
});

Deno.test("serveAdmin() throws cannot listen on a port in use", () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = taken.addr;
  assert.throws(
    () =>
      serveAdmin({
        hostname: "127.0.0.1",
        port,
        snapshot: emptySnapshot,
        ready: () => true,
      }),
    (err: Error) => {
      assert.equal(err.message, `cannot listen on 127.0.0.1:${port}`);
      assert.ok(err.cause instanceof Deno.errors.AddrInUse);
      return true;
    },
  );
});

Deno.test("tcpecho server --admin: /readyz is 503 while draining, /metrics totals", async () => {
  // Two workers where there can be: one drains the connection, the other,
  // with none, stops at once, and /metrics still counts what it served.
  await using server = await ServerProcess.start([
    ...argv("--port 0 --admin 127.0.0.1:0 --shutdown-timeout 30"),
    ...(Deno.build.os === "linux" ? ["--workers", "2"] : []),
  ]);
  const adminLine = await server.waitFor(/ INF admin on 127\.0\.0\.1:\d+$/);
  const adminPort = Number(/:(\d+)$/.exec(adminLine)![1]);
  // Its own line, before the echo port's.
  assert.ok(
    server.lines.findIndex((l) => l.includes("admin on")) <
      server.lines.findIndex((l) => l.includes("listening on")),
  );
  const get = async (path: string) => {
    const response = await fetchBounded(`http://127.0.0.1:${adminPort}${path}`);
    return [response.status, await response.text()] as const;
  };
  assert.deepEqual(await get("/readyz"), [200, "ready\n"]);
  using conn = await Deno.connect({ port: server.port });
  await writeAll(conn, bytes("hello"));
  assert.equal(await conn.read(new Uint8Array(5)), 5);
  server.child.kill("SIGTERM");
  await server.waitFor(/stopping: waiting up to 30\.00 s for 1 connections/);
  assert.deepEqual(await get("/readyz"), [503, "draining\n"]);
  assert.deepEqual(await get("/healthz"), [200, "ok\n"]);
  const m = parseMetrics((await get("/metrics"))[1]);
  assert.equal(m.get("tcpecho_connections_active")?.metrics[0].value, "1");
  assert.equal(m.get("tcpecho_bytes_sent_total")?.metrics[0].value, "5");
  await conn.closeWrite();
  assert.equal(await conn.read(new Uint8Array(1)), null);
  assert.equal(await server.exited(), 0);
  await assert.rejects(fetchBounded(`http://127.0.0.1:${adminPort}/healthz`));
});

Deno.test({
  name:
    "tcpecho server --workers 2 --admin: /metrics totals the traffic of both workers",
  ignore: Deno.build.os !== "linux", // --workers above 1, and 127.0.0.2
  async fn() {
    await using server = await ServerProcess.start(
      argv("--port 0 --workers 2 --admin 127.0.0.1:0 --allow 127.0.0.1"),
    );
    const adminLine = await server.waitFor(/ INF admin on 127\.0\.0\.1:\d+$/);
    const adminPort = Number(/:(\d+)$/.exec(adminLine)![1]);
    // One by one, from new ports: SO_REUSEPORT hashes each to a worker, so
    // both serve some (all 20 on one worker: a chance in 500,000).
    const n = 20;
    let sent = 0;
    const ports: number[] = [];
    for (let i = 1; i <= n; i++) {
      using conn = await Deno.connect({ port: server.port });
      const data = bytes("x".repeat(i));
      assert.deepEqual(await echoAll(conn, data), data);
      ports.push((conn.localAddr as Deno.NetAddr).port);
      sent += i;
    }
    await refusedFrom127002(server.port);
    await server.waitFor(/\] refused: not allowed$/);
    // A worker logs "offline" just before it counts the connection closed,
    // and its log lines reach us after that.
    for (const port of ports) {
      await server.waitFor(
        new RegExp(`\\[127\\.0\\.0\\.1:${port}\\] offline `),
      );
    }
    const response = await fetchBounded(
      `http://127.0.0.1:${adminPort}/metrics`,
    );
    const text = await response.text();
    const m = parseMetrics(text);
    const value = (name: string, labels: Record<string, string> = {}) =>
      Number(
        m.get(name)?.metrics.find((s) =>
          JSON.stringify(s.labels ?? {}) === JSON.stringify(labels)
        )?.value,
      );
    assert.equal(value("tcpecho_connections_active"), 0, text);
    assert.equal(value("tcpecho_connections_total"), n + 1, text);
    const refused = (reason: string) =>
      value("tcpecho_connections_refused_total", { reason });
    assert.equal(refused("not-allowed"), 1, text);
    assert.equal(refused("max-conns"), 0, text);
    assert.equal(value("tcpecho_bytes_received_total"), sent, text);
    assert.equal(value("tcpecho_bytes_sent_total"), sent, text);
    const [h] = m.get("tcpecho_connection_duration_seconds")!.metrics;
    assert.equal(Number(h.count), n, text);
    assert.equal(await server.stop(), 0);
    // The stopped: line totals the same traffic.
    assert.match(
      server.lines.at(-1)!,
      new RegExp(`stopped: ${n} connections served, ${sent} bytes echoed$`),
    );
  },
});

Deno.test("tcpecho server --admin on a port in use exits 1 before listening", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = taken.addr;
  const { code, stdout, stderr } = await runCli(
    argv(`server --port 0 --admin 127.0.0.1:${port}`),
  );
  assert.equal(code, 1);
  assert.equal(stdout, "");
  assert.match(
    stderr,
    new RegExp(
      `^error: cannot listen on 127\\.0\\.0\\.1:${port}: Address already in use`,
    ),
  );
  assert.doesNotMatch(stderr, /listening on/);
  const bad = await runCli(
    argv("server --port 0 --admin no.such.host.invalid:9"),
  );
  assert.equal(bad.code, 1);
  assert.match(
    bad.stderr,
    /^error: cannot listen on no\.such\.host\.invalid:9: /,
  );
});

/** The admin port a server child logged (`admin on 127.0.0.1:PORT`). */
async function adminPort(server: ServerProcess): Promise<number> {
  const line = await server.waitFor(/ INF admin on 127\.0\.0\.1:\d+$/);
  return Number(/:(\d+)$/.exec(line)![1]);
}

Deno.test({
  name:
    "tcpecho server --udp --admin --deny: /metrics counts datagrams by fate; a real parser reads it",
  ignore: Deno.build.os !== "linux", // 127.0.0.2
  async fn() {
    await using server = await ServerProcess.start(
      argv("--udp --port 0 --admin 127.0.0.1:0 --deny 127.0.0.2"),
    );
    const port = await adminPort(server);
    // Its own line, before the echo port's, as over TCP.
    assert.ok(
      server.lines.findIndex((l) => l.includes("admin on")) <
        server.lines.findIndex((l) => l.includes("listening on")),
    );
    // Two datagrams from a denied sender, then three echoed from another.
    using denied = new UdpConn(
      Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.2", port: 0 }),
      { transport: "udp", hostname: "127.0.0.1", port: server.port },
    );
    await denied.send(bytes("no"));
    await denied.send(bytes("nope"));
    await server.waitFor(
      new RegExp(
        `WRN \\[127\\.0\\.0\\.2:${denied.localAddr.port}\\] refused: not allowed$`,
      ),
    );
    using conn = await connectUdp({ port: server.port });
    for (const word of ["a", "bb", "ccc"]) {
      await conn.send(bytes(word));
      assert.deepEqual((await conn.receive(5_000))?.slice(), bytes(word));
    }
    const response = await fetchBounded(`http://127.0.0.1:${port}/metrics`);
    assert.equal(
      response.headers.get("content-type"),
      "text/plain; version=0.0.4; charset=utf-8",
    );
    const text = await response.text();
    const types = Object.fromEntries(
      [...parseMetrics(text)].map(([name, f]) => [name, f.type]),
    );
    assert.deepEqual(types, UDP_FAMILIES, text);
    const m = samples(text);
    assert.equal(m.get("tcpecho_datagrams_received_total"), 5, text);
    assert.equal(m.get("tcpecho_datagrams_sent_total"), 3, text);
    const dropped = (reason: string) =>
      m.get(`tcpecho_datagrams_dropped_total{reason="${reason}"}`);
    assert.equal(dropped("not-allowed"), 2, text);
    for (const reason of ["oversized", "drop", "overflow", "send-error"]) {
      assert.equal(dropped(reason), 0, `${reason}: ${text}`);
    }
    assert.equal(m.get("tcpecho_bytes_received_total"), 12, text);
    assert.equal(m.get("tcpecho_bytes_sent_total"), 6, text);
    assert.equal(m.get("tcpecho_datagram_peers"), 2, text);
    assert.equal(m.get("tcpecho_datagram_peers_capped"), 0, text);
    if (promtool) assert.equal(await promtoolCheck(text), "");
    assert.equal(await server.stop(), 0);
    // The second refusal is summarised (by the end at the latest), and
    // stopped: agrees.
    assert.ok(
      server.lines.some((l) =>
        / WRN refused: not allowed; 1 more in the last second$/.test(l)
      ),
      server.lines.join("\n"),
    );
    assert.match(
      server.lines.at(-1)!,
      / INF stopped: 5 datagrams from 2 peers, 6 bytes echoed$/,
    );
  },
});

Deno.test("tcpecho server --udp --admin: /healthz, and /readyz is 503 from the first stop signal", async () => {
  await using server = await ServerProcess.start([
    ...argv(
      "--udp --port 0 --admin 127.0.0.1:0 --delay 60000 --shutdown-timeout 30",
    ),
    "-v", // a debug line says the datagram is in
  ]);
  const port = await adminPort(server);
  const get = async (path: string) => {
    const response = await fetchBounded(`http://127.0.0.1:${port}${path}`);
    return [response.status, await response.text()] as const;
  };
  assert.deepEqual(await get("/readyz"), [200, "ready\n"]);
  assert.deepEqual(await get("/healthz"), [200, "ok\n"]);
  assert.deepEqual(await get("/nope"), [404, "not found\n"]);
  // One echo held for a minute keeps the server draining after SIGTERM.
  using conn = await connectUdp({ port: server.port });
  await conn.send(bytes("later"));
  await server.waitFor(/\] delayed 5 bytes: /);
  server.child.kill("SIGTERM");
  await server.waitFor(/stopping: waiting up to 30\.00 s for 1 delayed echoes/);
  assert.deepEqual(await get("/readyz"), [503, "draining\n"]);
  assert.deepEqual(await get("/healthz"), [200, "ok\n"]);
  const m = samples((await get("/metrics"))[1]);
  assert.equal(m.get("tcpecho_datagrams_received_total"), 1);
  assert.equal(m.get("tcpecho_datagrams_sent_total"), 0);
  // A second signal ends it at once.
  server.child.kill("SIGTERM");
  assert.equal(await server.exited(), 130);
  await assert.rejects(fetchBounded(`http://127.0.0.1:${port}/healthz`));
});
