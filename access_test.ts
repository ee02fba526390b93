/**
 * Access control and the PROXY protocol, through real sockets: `serve()`
 * with `allow`/`deny` and `proxyProtocol`, refusal events and summarised
 * warnings, and the CLI's `--allow`, `--deny`, `--proxy-protocol` and
 * `bench --send-proxy`.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { formatProxyHeader, type ProxyHeader } from "./_proxy_protocol.ts";
import { serve, type ServeOptions } from "./server.ts";
import {
  CA,
  CA_FILE,
  captureLogs,
  connectFrom,
  ConnEvents,
  echoAll,
  peerOf,
  posix,
  readAll,
  roundTrip,
  TLS,
  watchdog,
  writeAll,
} from "./testing.ts";
import {
  argv,
  benchClean,
  benchJson,
  cli,
  runCli,
  ServerProcess,
  TLS_ARGS,
} from "./testing_cli.ts";

const encoder = new TextEncoder();
const bytes = (text: string) => encoder.encode(text);
const tcp = (hostname: string, port: number): Deno.NetAddr => ({
  transport: "tcp",
  hostname,
  port,
});
const v1 = (src: string, port = 4242) =>
  formatProxyHeader({
    version: 1,
    command: "proxy",
    source: tcp(src, port),
    destination: tcp(src.includes(":") ? "::1" : "192.0.2.1", 7),
  });
/** A v2 PROXY header relaying `source` to `destination` (address, port). */
const v2 = (source: [string, number], destination: [string, number]) =>
  formatProxyHeader({
    version: 2,
    command: "proxy",
    source: tcp(...source),
    destination: tcp(...destination),
  });

/** Whether the server echoes `conn` (true) or closes it (false). */
async function served(conn: Deno.Conn): Promise<boolean> {
  try {
    await conn.write(new Uint8Array([1]));
    return await conn.read(new Uint8Array(1)) === 1;
  } catch (err) {
    if (err instanceof Deno.errors.ConnectionReset) return false;
    throw err;
  }
}

// ---- allow / deny ----------------------------------------------------------

Deno.test({
  name: "serve() with allow/deny admits by client address; deny wins (IPv4)",
  ignore: !posix, // 127.0.0.2 is a loopback address on Linux
  async fn(t) {
    const cases: [Pick<ServeOptions, "allow" | "deny">, boolean, boolean][] = [
      // rules, 127.0.0.1 served, 127.0.0.2 served
      [{}, true, true],
      [{ allow: ["127.0.0.1"] }, true, false],
      [{ allow: ["127.0.0.0/8"] }, true, true],
      [{ deny: ["127.0.0.2"] }, true, false],
      [{ allow: ["127.0.0.0/8"], deny: ["127.0.0.2/32"] }, true, false],
      [{ allow: ["127.0.0.2"], deny: ["127.0.0.0/30"] }, false, false],
      [{ allow: ["10.0.0.0/8", "::1"] }, false, false],
      [{ deny: ["::ffff:127.0.0.1"] }, false, true], // mapped is IPv4
    ];
    for (const [rules, one, two] of cases) {
      await t.step(JSON.stringify(rules), async () => {
        using events = new ConnEvents();
        await using server = events.serve({ ...rules });
        const { port } = server.addr;
        using a = await Deno.connect({ port });
        assert.equal(await served(a), one);
        const b = await connectFrom("127.0.0.2", port);
        b.socket.end(bytes("hi"));
        assert.deepEqual(await b.closed, two ? bytes("hi") : new Uint8Array());
        const refused = events.events.filter((e) => e.state === "refused");
        assert.deepEqual(
          refused.map((e) => [e.peer.split(":")[0], e.code, e.reason]),
          [
            ...(one ? [] : [["127.0.0.1", "not-allowed", "not allowed"]]),
            ...(two ? [] : [["127.0.0.2", "not-allowed", "not allowed"]]),
          ],
        );
        assert.equal(server.stats.refused, refused.length);
      });
    }
  },
});

Deno.test("serve() with allow/deny on ::1 matches IPv6 rules", async (t) => {
  const cases: [Pick<ServeOptions, "allow" | "deny">, boolean][] = [
    [{ allow: ["::1"] }, true],
    [{ allow: ["::/0"] }, true],
    [{ allow: ["127.0.0.0/8"] }, false],
    [{ deny: ["::1/128"] }, false],
    [{ allow: ["::1"], deny: ["::/0"] }, false],
    [{ deny: ["127.0.0.1"] }, true],
  ];
  for (const [rules, ok] of cases) {
    await t.step(JSON.stringify(rules), async () => {
      await using logs = await captureLogs();
      await using server = serve({ hostname: "::1", port: 0, ...rules });
      using conn = await Deno.connect({
        hostname: "::1",
        port: server.addr.port,
      });
      assert.equal(await served(conn), ok);
      const peer = `[::1]:${(conn.localAddr as Deno.NetAddr).port}`;
      assert.equal(
        logs.lines("warning").includes(`[${peer}] refused: not allowed`),
        !ok,
      );
    });
  }
});

Deno.test("serve() throws on a rule that is not an address or range", () => {
  assert.throws(
    () => serve({ port: 0, allow: ["10.0.0.0/8", "10.0.0.0/33"] }),
    /"10.0.0.0\/33" is not an IP address or CIDR range/,
  );
});

Deno.test("refused events carry a code: max-conns, max-conns-per-ip", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({ maxConns: 2, maxConnsPerIp: 1 });
  const { port } = server.addr;
  using a = await Deno.connect({ port });
  assert.equal(await served(a), true);
  using b = await Deno.connect({ port });
  assert.equal(await served(b), false);
  const perIp = await events.find("refused", (e) => e.peer === peerOf(b));
  assert.deepEqual(perIp, {
    state: "refused",
    peer: peerOf(b),
    code: "max-conns-per-ip",
    reason: "too many connections (max-conns-per-ip 1)",
  });
  assert.ok(
    logs.lines().includes(
      `[${peerOf(b)}] refused: too many connections (max-conns-per-ip 1)`,
    ),
  );
});

// ---- the PROXY protocol ----------------------------------------------------

Deno.test("serve() with proxyProtocol takes the v1 source as the peer", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({ proxyProtocol: "v1" });
  using conn = await Deno.connect({ port: server.addr.port });
  const via = peerOf(conn);
  // The header and the first data in one write: the data is echoed, the
  // header never is.
  const data = bytes("after the header\n");
  const back = await echoAll(
    conn,
    new Uint8Array([...v1("203.0.113.7"), ...data]),
  );
  assert.deepEqual(back, data);
  assert.deepEqual(await events.find("open"), {
    state: "open",
    peer: "203.0.113.7:4242",
    via,
  });
  const closed = await events.find("closed");
  assert.equal(closed.peer, "203.0.113.7:4242");
  assert.equal(closed.via, via);
  assert.equal(closed.bytesIn, data.length);
  assert.equal(closed.bytesOut, data.length);
  const lines = logs.lines();
  assert.ok(
    lines.includes(`[203.0.113.7:4242] online (via ${via})`),
    lines.join("\n"),
  );
  assert.ok(
    lines.some((l) => l.startsWith("[203.0.113.7:4242] offline (")),
    lines.join("\n"),
  );
  assert.equal(server.stats.served, 1);
});

Deno.test("serve() with proxyProtocol: a v2 header split over writes, TCP6, line mode", async () => {
  using events = new ConnEvents();
  await using server = events.serve({ mode: "line", proxyProtocol: "any" });
  using conn = await Deno.connect({ port: server.addr.port });
  const header = v2(["2001:db8::7", 55555], ["2001:db8::1", 443]);
  for (const b of header) await writeAll(conn, new Uint8Array([b]));
  const line = bytes("one line\n");
  assert.deepEqual(await roundTrip(conn, line), line);
  assert.equal((await events.find("open")).peer, "[2001:db8::7]:55555");
});

Deno.test("serve() with proxyProtocol: UNKNOWN and LOCAL keep the socket's peer", async (t) => {
  const headers: [string, ProxyHeader][] = [
    ["v1 UNKNOWN", { version: 1, command: "proxy" }],
    ["v2 LOCAL", { version: 2, command: "local" }],
    ["v2 UNSPEC", { version: 2, command: "proxy" }],
  ];
  for (const [name, header] of headers) {
    await t.step(name, async () => {
      using events = new ConnEvents();
      await using server = events.serve({ proxyProtocol: "any" });
      using conn = await Deno.connect({ port: server.addr.port });
      await writeAll(conn, formatProxyHeader(header));
      assert.deepEqual(await roundTrip(conn, bytes("x")), bytes("x"));
      assert.deepEqual(await events.find("open"), {
        state: "open",
        peer: peerOf(conn),
      });
    });
  }
});

Deno.test("serve() with proxyProtocol: allow/deny and maxConnsPerIp use the header's source", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({
    proxyProtocol: "v1",
    deny: ["203.0.113.0/24"],
    maxConnsPerIp: 1,
  });
  const { port } = server.addr;
  const open = async (source: string) => {
    const conn = await Deno.connect({ port });
    await writeAll(conn, v1(source));
    return conn;
  };
  // Denied by its proxied address, though the socket is 127.0.0.1.
  using denied = await open("203.0.113.7");
  assert.equal(await served(denied), false);
  assert.deepEqual(await events.find("refused"), {
    state: "refused",
    peer: "203.0.113.7:4242",
    via: peerOf(denied),
    code: "not-allowed",
    reason: "not allowed",
  });
  assert.ok(
    logs.lines().includes("[203.0.113.7:4242] refused: not allowed"),
  );
  // One connection per proxied address, all from the same socket address.
  using first = await open("198.51.100.1");
  assert.equal(await served(first), true);
  using other = await open("198.51.100.2");
  assert.equal(await served(other), true);
  using second = await open("198.51.100.1");
  assert.equal(await served(second), false);
  const perIp = await events.find(
    "refused",
    (e) => e.code === "max-conns-per-ip",
  );
  assert.equal(perIp.peer, "198.51.100.1:4242");
  assert.equal(server.stats.refused, 2);
  assert.equal(server.stats.served, 2);
});

Deno.test("serve() with proxyProtocol closes bad headers at once, with a warning", async (t) => {
  const cases: [string, Uint8Array, "v1" | "v2" | "any", RegExp][] = [
    ["plain data", bytes("GET / HTTP/1.1\r\n"), "any", /not a PROXY header/],
    ["one wrong first byte", bytes("G"), "any", /not a PROXY header/],
    [
      "v2 to a v1 server",
      formatProxyHeader({ version: 2, command: "local" }),
      "v1",
      /not a PROXY v1 header/,
    ],
    [
      "v1 to a v2 server",
      bytes("PROXY UNKNOWN\r\n"),
      "v2",
      /not a PROXY v2 header/,
    ],
    [
      "malformed v1",
      bytes("PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n"),
      "v1",
      /bad IPv4/,
    ],
    [
      "over-long v1",
      bytes("PROXY UNKNOWN " + "1".repeat(200)),
      "v1",
      /no CRLF in 107 bytes/,
    ],
    [
      "v2 version 3",
      new Uint8Array([
        ...formatProxyHeader({ version: 2, command: "local" }).subarray(0, 12),
        0x30,
      ]),
      "v2",
      /version 3/,
    ],
    [
      "TLS to a PROXY server",
      new Uint8Array([0x16, 0x03, 0x01, 0x00]),
      "any",
      /not a PROXY header/,
    ],
  ];
  for (const [name, data, accept, re] of cases) {
    await t.step(name, async () => {
      using events = new ConnEvents();
      await using logs = await captureLogs();
      await using server = events.serve({
        proxyProtocol: accept,
        // Far longer than any wait below: "at once" is not this timeout.
        handshakeTimeoutMs: 60_000,
      });
      using conn = await Deno.connect({ port: server.addr.port });
      using dog = watchdog(10_000, () => conn.close()); // waiting: it failed
      await writeAll(conn, data); // and no more: no EOF either
      const back = await readAll(conn).catch(() => new Uint8Array());
      assert.equal(dog.fired, false, "the server waited for more bytes");
      assert.deepEqual(back, new Uint8Array()); // nothing echoed
      const closed = await events.find("closed", () => true, 10_000);
      assert.equal(closed.peer, peerOf(conn));
      assert.match(closed.reason ?? "", /^bad PROXY header: /);
      assert.match(closed.reason ?? "", re);
      assert.equal(events.events.filter((e) => e.state === "open").length, 0);
      assert.ok(
        logs.lines("warning").includes(
          `[${peerOf(conn)}] closing: ${closed.reason}`,
        ),
      );
    });
  }
});

Deno.test("serve() with proxyProtocol bounds a slow or missing header by handshakeTimeoutMs", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({
    proxyProtocol: "v1",
    handshakeTimeoutMs: 50,
  });
  using slow = await Deno.connect({ port: server.addr.port });
  await writeAll(slow, bytes("PROXY TCP4 "));
  using silent = await Deno.connect({ port: server.addr.port });
  const closed = await events.count("closed", 2);
  for (const e of closed) {
    assert.equal(e.reason, "no PROXY header within 0.05 s");
  }
  assert.equal(await slow.read(new Uint8Array(1)), null);
  assert.equal(await silent.read(new Uint8Array(1)), null);
  // A client that closes before any header: a warning too.
  const gone = await Deno.connect({ port: server.addr.port });
  const peer = peerOf(gone);
  gone.close();
  const none = await events.find("closed", (e) => e.peer === peer);
  assert.equal(none.reason, "bad PROXY header: none (the client sent nothing)");
  // Two late headers: one warning naming the first, the other counted
  // (summarised like refusals; the count is logged at the stop at latest).
  await server.close();
  assert.deepEqual(
    logs.lines("warning")
      .filter((line) => /closing: no PROXY header within/.test(line))
      .map((line) => line.replace(/^\[127\.0\.0\.1:\d+\] /, "[PEER] ")),
    [
      "[PEER] closing: no PROXY header within 0.05 s",
      "closing: no PROXY header within 0.05 s; 1 more in the last second",
    ],
  );
});

Deno.test("serve() with proxyProtocol survives arbitrary bytes (fuzz)", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({
    proxyProtocol: "any",
    // Bounds the header and, after a valid one, a silent session.
    idleTimeoutMs: 100,
  });
  const { port } = server.addr;
  const header = fc.constantFrom<ProxyHeader>(
    {
      version: 1,
      command: "proxy",
      source: tcp("192.0.2.9", 9),
      destination: tcp("192.0.2.1", 1),
    },
    {
      version: 2,
      command: "proxy",
      source: tcp("2001:db8::9", 9),
      destination: tcp("2001:db8::1", 1),
    },
    { version: 2, command: "local" },
  );
  // Arbitrary bytes, or a valid header mangled, cut, or followed by noise.
  const input = fc.oneof(
    fc.uint8Array({ maxLength: 600 }),
    fc.tuple(
      header,
      fc.nat(),
      fc.integer({ min: 0, max: 255 }),
      fc.uint8Array({ maxLength: 64 }),
    )
      .map(([h, at, b, tail]) => {
        const all = [...formatProxyHeader(h), ...tail];
        if (at % 3 === 0) all[at % all.length] = b;
        return new Uint8Array(all.slice(0, all.length - (at % 5)));
      }),
  );
  await fc.assert(
    fc.asyncProperty(input, fc.boolean(), async (data, halfClose) => {
      using conn = await Deno.connect({ port });
      using dog = watchdog(5000, () => conn.close()); // a hang fails
      const before = events.events.length;
      await writeAll(conn, data).catch(() => {}); // may be closed already
      if (halfClose) await conn.closeWrite().catch(() => {});
      // The server ends it: at once, at our EOF, or at the timeout.
      const back = await readAll(conn).catch(() => undefined);
      assert.equal(dog.fired, false);
      if (back !== undefined) assert.ok(back.length <= data.length);
      await events.count(
        "closed",
        1,
        (e) => events.events.indexOf(e) >= before,
        5000,
      );
    }),
    { numRuns: 60 },
  );
  // Nothing escaped a connection task, and the server still serves.
  assert.deepEqual(
    logs.lines("error"),
    [],
  );
  using ok = await Deno.connect({ port });
  await writeAll(ok, formatProxyHeader({ version: 2, command: "local" }));
  assert.deepEqual(
    await roundTrip(ok, bytes("still here")),
    bytes("still here"),
  );
});

// ---- refusal warnings, summarised ------------------------------------------

/** Opens and closes `n` connections, `concurrency` at a time; each is refused. */
async function refuseMany(
  n: number,
  open: () => Promise<Deno.Conn>,
  concurrency = 32,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next++ < n) {
      using conn = await open();
      await conn.read(new Uint8Array(1)).catch(() => null); // closed by the server
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

/** The total a set of refusal lines stands for: 1 each, or the count it gives. */
function refusalsIn(lines: string[]): number {
  return lines.reduce(
    (n, line) =>
      n + (Number(/; (\d+) more in the last second$/.exec(line)?.[1]) || 1),
    0,
  );
}

Deno.test("serve() summarises 5000 refusals in a handful of warnings", async () => {
  await using logs = await captureLogs();
  const server = serve({ port: 0, deny: ["127.0.0.1"] });
  const started = performance.now();
  await refuseMany(5000, () => Deno.connect({ port: server.addr.port }));
  const seconds = (performance.now() - started) / 1000;
  await server.close(); // logs what was still counted
  const lines = logs.lines("warning");
  assert.equal(server.stats.refused, 5000);
  assert.equal(refusalsIn(lines), 5000, lines.join("\n"));
  assert.match(lines[0], /^\[127\.0\.0\.1:\d+\] refused: not allowed$/);
  assert.match(
    lines.at(-1)!,
    /^refused: not allowed; \d+ more in the last second$/,
  );
  // At most one line a second, and one more at the stop.
  assert.ok(
    lines.length <= Math.ceil(seconds) + 2,
    `${lines.length} lines in ${seconds} s`,
  );
});

Deno.test({
  name:
    "tcpecho server -q summarises refusals; --deny reads the PROXY source on a Unix socket",
  ignore: !posix,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tcpecho_access_" });
    const path = `${dir}/echo.sock`;
    using watcher = Deno.watchFs(dir);
    // The socket file appearing says it is ready (stderr is read at the end).
    const child = cli([
      "server",
      "-q",
      "--unix",
      path,
      "--proxy-protocol",
      "v1",
      "--deny",
      "10.0.0.0/8",
    ]).spawn();
    // Read its output as it comes: a server blocked on a full pipe would
    // stop accepting. And a hang kills it, which fails the connects.
    const output = Promise.all(
      [child.stdout, child.stderr].map((s) => new Response(s).text()),
    );
    using _dog = watchdog(60_000, () => child.kill("SIGKILL"));
    try {
      for await (const event of watcher) {
        if (event.kind === "create" && event.paths.includes(path)) break;
      }
      // The file exists from bind(); listen() follows a moment later.
      for (let tries = 0;; tries++) {
        try {
          (await Deno.connect({ transport: "unix", path })).close();
          break;
        } catch (err) {
          if (
            !(err instanceof Deno.errors.ConnectionRefused) || tries > 10_000
          ) {
            throw err;
          }
        }
      }
      const header = v1("10.1.2.3");
      await refuseMany(5000, async () => {
        const conn = await Deno.connect({ transport: "unix", path });
        await writeAll(conn, header);
        return conn;
      });
      // An allowed source is served.
      using ok = await Deno.connect({ transport: "unix", path });
      await writeAll(ok, v1("192.0.2.1"));
      assert.deepEqual(await echoAll(ok, bytes("ok")), bytes("ok"));
      child.kill("SIGTERM");
      const { code } = await child.status;
      assert.equal(code, 0);
      const [stdout, stderr] = await output;
      assert.equal(stdout, "");
      const all = stderr.trim().split("\n");
      // (One more warning: the readiness probe sent no header; and
      // "listening on", which -q does not hide.)
      const lines = all.filter((line) => line.includes(" refused: "));
      assert.match(all[0], / INF listening on unix:/);
      assert.ok(all.length <= lines.length + 2, all.join("\n"));
      assert.ok(lines.length <= 30, lines.join("\n"));
      assert.match(lines[0], /WRN \[10\.1\.2\.3:4242\] refused: not allowed$/);
      assert.equal(
        refusalsIn(lines.map((l) => l.replace(/^.* WRN /, ""))),
        5000,
      );
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await Promise.all([child.status, output]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// ---- the CLI -----------------------------------------------------------------

Deno.test("tcpecho server --allow/--deny/--proxy-protocol: usage errors exit 2", async () => {
  for (
    const [args, re] of [
      [
        ["--allow", "10.0.0.0/33"],
        /--allow takes an IP address or CIDR range, not "10.0.0.0\/33"/,
      ],
      [
        ["--deny", "localhost"],
        /--deny takes an IP address or CIDR range, not "localhost"/,
      ],
      [
        ["--proxy-protocol", "v3"],
        /--proxy-protocol takes v1 or v2 or any, not "v3"/,
      ],
      [
        ["--unix", "/tmp/x.sock", "--allow", "10.0.0.1"],
        /--allow and --deny need client addresses/,
      ],
      [["--admin", "9090"], /--admin takes HOST:PORT, not "9090"/],
      [["--admin", "127.0.0.1:99999"], /--admin takes HOST:PORT/],
    ] as const
  ) {
    const { code, stdout, stderr } = await runCli(["server", ...args]);
    assert.equal(code, 2, stderr);
    assert.equal(stdout, "");
    assert.match(stderr, re);
    assert.match(stderr, /\nusage: tcpecho server /);
  }
  const { stdout } = await runCli(["server", "--help"]);
  for (
    const row of [
      "--allow CIDR",
      "--deny CIDR",
      "--proxy-protocol v1|v2|any",
      "--admin HOST:PORT",
    ]
  ) assert.ok(stdout.includes(row), row);
  const bench = await runCli(["bench", "--help"]);
  assert.ok(bench.stdout.includes("--send-proxy v1|v2"));
});

Deno.test({
  name: "tcpecho server --allow/--deny refuses and logs by client address",
  ignore: !posix,
  async fn() {
    await using server = await ServerProcess.start(
      argv("--port 0 --allow 127.0.0.0/8 --deny 127.0.0.2"),
    );
    using a = await Deno.connect({ port: server.port });
    assert.equal(await served(a), true);
    const b = await connectFrom("127.0.0.2", server.port);
    b.socket.end(bytes("no"));
    assert.deepEqual(await b.closed, new Uint8Array());
    await server.waitFor(/WRN \[127\.0\.0\.2:\d+\] refused: not allowed$/);
  },
});

Deno.test("tcpecho bench --send-proxy v1|v2 load-tests a --proxy-protocol server", async (t) => {
  for (const version of ["v1", "v2"]) {
    await t.step(version, async () => {
      await using server = await ServerProcess.start([
        "--port",
        "0",
        "--proxy-protocol",
        version,
        "--deny",
        "203.0.113.0/24", // nobody the bench sends
      ]);
      await benchClean([
        "--port",
        `${server.port}`,
        "--send-proxy",
        version,
        "-c",
        "4",
        "-d",
        "0.3",
      ]);
      // Each connection's header named its own address: the server says so.
      const online = await server.waitFor(/\] online \(via /);
      const [, peer, via] = /\[(.+)\] online \(via (.+)\)$/.exec(online)!;
      assert.equal(peer, via);
    });
  }
  await t.step("--spawn-server", async () => {
    const { result } = await benchJson(
      argv("--spawn-server --send-proxy v2 -c 2 -d 0.3"),
    );
    assert.equal(result.errors, 0);
  });
  await t.step(
    "a server without --proxy-protocol echoes the header: an error",
    async () => {
      await using server = await ServerProcess.start(["--port", "0"]);
      const { code, stderr } = await runCli(
        argv(`bench --port ${server.port} --send-proxy v1 -c 1 -d 0.3`),
      );
      assert.equal(code, 1);
      assert.match(stderr, /echo mismatch|more bytes than sent/);
    },
  );
});

// ---- TLS after the PROXY header --------------------------------------------

Deno.test("serve() with TLS and proxyProtocol: the header, then the handshake", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({ ...TLS, proxyProtocol: "any" });
  const tcpConn = await Deno.connect({ port: server.addr.port });
  const via = peerOf(tcpConn);
  await writeAll(
    tcpConn,
    v2(["203.0.113.7", 4242], ["192.0.2.1", 443]),
  );
  using conn = await Deno.startTls(tcpConn, {
    hostname: "localhost",
    caCerts: [CA],
  });
  // 256 KiB, then our close_notify: all of it comes back, and the server's
  // close_notify ends the stream cleanly (an unclean end would throw).
  const data = new Uint8Array(256 * 1024).map((_, i) => i * 7);
  assert.deepEqual(await echoAll(conn, data), data);
  const closed = await events.find("closed");
  assert.equal(closed.peer, "203.0.113.7:4242");
  assert.equal(closed.via, via);
  assert.equal(closed.bytesIn, data.length);
  assert.equal(closed.reason, undefined);
  assert.ok(
    logs.lines().includes(`[203.0.113.7:4242] online (via ${via})`),
  );
  // TLS without a header first: refused at once as not a PROXY header.
  using plain = await Deno.connectTls({
    port: server.addr.port,
    hostname: "localhost",
    caCerts: [CA],
  });
  await assert.rejects(plain.handshake());
  const bad = await events.find("closed", (e) => e.reason !== undefined);
  assert.equal(bad.reason, "bad PROXY header: not a PROXY header");
});

Deno.test("serve() with TLS and proxyProtocol bounds the handshake after the header", async () => {
  using events = new ConnEvents();
  await using server = events.serve({
    ...TLS,
    proxyProtocol: "v1",
    handshakeTimeoutMs: 50,
  });
  using conn = await Deno.connect({ port: server.addr.port });
  await writeAll(conn, v1("198.51.100.9"));
  // A header, then no handshake: closed by the timeout, relay and all.
  const closed = await events.find("closed");
  assert.equal(closed.peer, "198.51.100.9:4242");
  assert.equal(closed.reason, "no TLS handshake within 0.05 s");
  assert.equal(await conn.read(new Uint8Array(1)), null);
  assert.equal(server.stats.active, 0);
});

Deno.test("tcpecho bench --tls --send-proxy v2 against server --tls-cert --proxy-protocol v2", async () => {
  await using server = await ServerProcess.start([
    "--port",
    "0",
    ...TLS_ARGS,
    "--proxy-protocol",
    "v2",
  ]);
  await benchClean([
    "--host",
    "localhost",
    "--port",
    `${server.port}`,
    "--tls",
    "--ca",
    CA_FILE,
    "--send-proxy",
    "v2",
    "-c",
    "4",
    "-d",
    "0.3",
  ]);
  await server.waitFor(/\] online \(via /);
});

Deno.test({
  name:
    "tcpecho server --workers 2 --proxy-protocol v1 --tls-cert: each worker relays to its own TLS listener",
  ignore: Deno.build.os !== "linux", // --workers above 1
  async fn() {
    await using server = await ServerProcess.start([
      ...argv("--port 0 --workers 2 --proxy-protocol v1"),
      ...TLS_ARGS,
    ]);
    // One by one from new ports: SO_REUSEPORT hashes each to a worker, so
    // both serve some (all 20 on one: a chance in 500,000).
    const n = 20;
    for (let i = 1; i <= n; i++) {
      const tcpConn = await Deno.connect({ port: server.port });
      const via = peerOf(tcpConn);
      await writeAll(tcpConn, v1(`203.0.113.${i}`));
      using conn = await Deno.startTls(tcpConn, {
        hostname: "localhost",
        caCerts: [CA],
      });
      const data = bytes(`hello ${i}`);
      assert.deepEqual(await echoAll(conn, data), data);
      await server.waitFor(
        new RegExp(
          `INF \\[203\\.0\\.113\\.${i}:4242\\] online \\(via ${
            via.replaceAll(".", "\\.")
          }\\)$`,
        ),
      );
    }
    assert.equal(await server.stop(), 0);
    assert.match(server.lines.at(-1)!, / stopped: 20 connections served, /);
  },
});

Deno.test({
  name:
    "tcpecho server --workers 2: --deny and --max-conns-per-ip (PROXY sources) hold over both workers",
  ignore: Deno.build.os !== "linux", // --workers above 1
  async fn() {
    await using server = await ServerProcess.start(
      argv(
        "--port 0 --workers 2 --proxy-protocol v1 --deny 198.51.100.0/24 --max-conns-per-ip 2",
      ),
    );
    const proxied = async (source: string) => {
      const conn = await Deno.connect({ port: server.port });
      await writeAll(conn, v1(source));
      return conn;
    };
    // One by one from new ports, so both workers get some.
    for (let i = 0; i < 10; i++) {
      using conn = await proxied("198.51.100.7");
      assert.equal(await served(conn), false, `denied connection ${i}`);
    }
    const held: Deno.Conn[] = [];
    try {
      const outcomes: boolean[] = [];
      for (let i = 0; i < 8; i++) {
        held.push(await proxied("203.0.113.5"));
        outcomes.push(await served(held[i]));
      }
      assert.deepEqual(outcomes, [
        true,
        true,
        false,
        false,
        false,
        false,
        false,
        false,
      ]);
      // Another address has its own count.
      using other = await proxied("203.0.113.6");
      assert.equal(await served(other), true);
    } finally {
      for (const conn of held) conn.close();
    }
    assert.equal(await server.stop(), 0);
    assert.match(server.lines.at(-1)!, / stopped: 3 connections served, /);
  },
});

Deno.test("serve() with proxyProtocol and faults: the bytes after the header are echoed in slices", async () => {
  using events = new ConnEvents();
  await using server = events.serve({
    proxyProtocol: "v2",
    sliceBytes: 3,
    mode: "line",
  });
  using conn = await Deno.connect({ port: server.addr.port });
  const header = v2(["192.0.2.77", 7777], ["192.0.2.1", 7]);
  const data = bytes("first line\nsecond\n");
  const back = await echoAll(conn, new Uint8Array([...header, ...data]));
  assert.deepEqual(back, data);
  assert.equal((await events.find("closed")).peer, "192.0.2.77:7777");
});
