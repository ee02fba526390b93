import assert from "node:assert/strict";
import { createRandom, seededRandom } from "./_random.ts";
import { HlogWriter, mergeHlogs, parseHlog } from "./_hlog.ts";
import { LatencyHistogram } from "./_histogram.ts";
import { formatReport } from "./bench.ts";
import {
  connectUdp,
  type DatagramEvent,
  runUdpBench,
  serveUdp,
  UdpConn,
  type UdpServeOptions,
} from "./udp.ts";
import {
  bytes,
  captureLogs,
  hasIpv6,
  posix,
  randomBytes,
  render,
} from "./testing.ts";
import {
  argv,
  assertUsageError,
  benchJson,
  hasScript,
  RESULT_KEYS,
  runCli,
  runClient,
  ServerProcess,
  underPty,
} from "./testing_cli.ts";

const text = (data: Uint8Array) => new TextDecoder().decode(data);

/** A bare UDP socket on 127.0.0.1, closed by scope (for misbehaving servers). */
function rawSocket(): Deno.DatagramConn & Disposable {
  const socket = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port: 0,
  });
  return Object.assign(socket, {
    [Symbol.dispose]() {
      try {
        socket.close();
      } catch { /* closed already */ }
    },
  });
}

/** Every wait on a datagram is bounded: a broken echo fails, never hangs. */
const REPLY_MS = 5_000;

/** Sends `data` and returns the reply, failing if none comes in time. */
async function echo(conn: UdpConn, data: Uint8Array): Promise<Uint8Array> {
  await conn.send(data);
  const reply = await conn.receive(REPLY_MS);
  assert.ok(reply, `no reply within ${REPLY_MS} ms`);
  return reply.slice();
}

/** A server whose `onDatagram` events can be awaited one by one. */
function eventServer(options: UdpServeOptions) {
  const events: DatagramEvent[] = [];
  let wake = Promise.withResolvers<void>();
  const server = serveUdp({
    ...options,
    onDatagram(event) {
      events.push(event);
      wake.resolve();
    },
  });
  return {
    server,
    /** Events not taken by `next()` yet. */
    events,
    /** The next event (in arrival order), waiting at most REPLY_MS. */
    async next(): Promise<DatagramEvent> {
      const timer = setTimeout(
        () => wake.reject(new Error("no event")),
        REPLY_MS,
      );
      try {
        while (events.length === 0) {
          await wake.promise;
          wake = Promise.withResolvers<void>();
        }
      } finally {
        clearTimeout(timer);
      }
      return events.shift()!;
    },
  };
}

// ---- server ----------------------------------------------------------------

Deno.test("serveUdp() echoes NUL and invalid UTF-8 unchanged and counts them", async () => {
  await using server = serveUdp({ port: 0 });
  using a = await connectUdp({ port: server.addr.port });
  using b = await connectUdp({ port: server.addr.port });
  const sample = new Uint8Array([0, 0xff, 0xfe, 10, 13, 0x80, 65, 0]);
  assert.deepEqual(await echo(a, sample), sample);
  assert.deepEqual(await echo(a, bytes("hello\n")), bytes("hello\n"));
  assert.deepEqual(await echo(b, new Uint8Array(0)), new Uint8Array(0));
  assert.deepEqual(
    { ...server.stats },
    {
      datagrams: 3,
      peers: 2,
      peersCapped: false,
      echoed: 3,
      refused: 0,
      dropped: 0,
      overflow: 0,
      oversized: 0,
      failed: 0,
      bytesIn: sample.length + 6,
      bytesOut: sample.length + 6,
    },
  );
});

Deno.test("serveUdp() echoes a 65,507-byte datagram whole", async () => {
  await using server = serveUdp({ port: 0 });
  using conn = await connectUdp({ port: server.addr.port });
  const big = randomBytes(65_507, 3);
  assert.deepEqual(await echo(conn, big), big);
});

Deno.test("serveUdp() serves IPv6 and logs udp:[::1]:PORT", async () => {
  await using logs = await captureLogs();
  await using server = serveUdp({ hostname: "::1", port: 0 });
  assert.equal(
    render(logs.records[0]),
    `listening on udp:[::1]:${server.addr.port}`,
  );
  using conn = await connectUdp({ hostname: "::1", port: server.addr.port });
  assert.equal(conn.remote.hostname, "::1");
  const big = randomBytes(65_527, 4); // IPv6 carries 20 bytes more
  assert.deepEqual(await echo(conn, big), big);
});

Deno.test("serveUdp() logs each datagram at debug, escaped, and the stop line", async () => {
  await using logs = await captureLogs();
  const server = serveUdp({ port: 0 });
  using conn = await connectUdp({ port: server.addr.port });
  await echo(conn, bytes("a\r\n\x1b[2J INF forged"));
  await server.close();
  const lines = logs.lines();
  const peer = `127.0.0.1:${conn.localAddr.port}`;
  assert.ok(
    lines.includes(
      `[${peer}] echoed 18 bytes: "a\\r\\n\\u001b[2J INF forged"`,
    ),
    lines.join("\n"),
  );
  assert.equal(
    lines.at(-1),
    "stopped: 1 datagrams from 1 peers, 18 bytes echoed",
  );
});

Deno.test("serveUdp() with the same drop seed drops the same datagrams", async () => {
  const pattern = async (seed: number, jitterMs = 0) => {
    await using logs = await captureLogs();
    const { server, next } = eventServer({
      port: 0,
      drop: 0.5,
      seed,
      jitterMs,
    });
    await using _server = server;
    using conn = await connectUdp({ port: server.addr.port });
    const dropped: number[] = [];
    for (let i = 0; i < 64; i++) {
      await conn.send(bytes(`${i}`));
      const { fate } = await next(); // decided and done: no timeout needed
      if (fate === "dropped") dropped.push(i);
      else assert.equal(fate, "echoed");
    }
    assert.equal(server.stats.dropped, dropped.length);
    const jitter = jitterMs > 0 ? `, jitter ${jitterMs} ms` : "";
    assert.ok(
      logs.lines().includes(
        `faults: drop 0.5${jitter}, seed ${seed}`,
      ),
    );
    return dropped;
  };
  const first = await pattern(42);
  assert.deepEqual(await pattern(42), first);
  assert.deepEqual(await pattern(42, 1), first); // jitter draws apart
  assert.notDeepEqual(await pattern(43), first);
  assert.ok(first.length > 16 && first.length < 48, `${first.length} of 64`);
});

Deno.test("serveUdp() drops nothing at drop 0 and everything at drop 1", async () => {
  for (const drop of [0, 1]) {
    const { server, next } = eventServer({ port: 0, drop });
    await using _server = server;
    using conn = await connectUdp({ port: server.addr.port });
    for (let i = 0; i < 20; i++) {
      await conn.send(bytes("x"));
      assert.equal((await next()).fate, drop === 1 ? "dropped" : "echoed");
    }
  }
});

Deno.test("serveUdp() refuses an oversized datagram with a warning and carries on", async () => {
  await using logs = await captureLogs();
  const { server, next } = eventServer({ port: 0, maxDatagramBytes: 100 });
  await using _server = server;
  using conn = await connectUdp({ port: server.addr.port });
  await conn.send(new Uint8Array(101));
  const first = await next();
  assert.equal(first.fate, "oversized");
  assert.equal(first.bytes, 101);
  assert.equal(first.peer.port, conn.localAddr.port);
  await conn.send(new Uint8Array(500)); // a second one within the second
  assert.equal((await next()).fate, "oversized");
  assert.deepEqual(await echo(conn, new Uint8Array(100)), new Uint8Array(100));
  const warnings = logs.records.filter((r) => r.level === "warning");
  assert.equal(warnings.length, 1); // at most one a second
  assert.match(render(warnings[0]), /datagram over 100 bytes not echoed$/);
  assert.equal(server.stats.oversized, 2);
  assert.equal(server.stats.echoed, 1);
});

Deno.test("serveUdp() delays each echo by delayMs (plus jitter)", async () => {
  await using server = serveUdp({ port: 0, delayMs: 150, jitterMs: 50 });
  using conn = await connectUdp({ port: server.addr.port });
  const started = performance.now();
  assert.deepEqual(await echo(conn, bytes("slow")), bytes("slow"));
  const took = performance.now() - started;
  assert.ok(took >= 140, `echoed after ${took.toFixed(0)} ms`);
});

Deno.test("serveUdp() close() waits shutdownTimeoutMs for delayed echoes, then gives up", async () => {
  await using logs = await captureLogs();
  const { server, events } = eventServer({
    port: 0,
    delayMs: 60_000,
    shutdownTimeoutMs: 20,
  });
  using conn = await connectUdp({ port: server.addr.port });
  await conn.send(bytes("never"));
  const seen = logs.next(/delayed 5 bytes/);
  await seen;
  await server.close(); // does not wait the minute; its timer is cleared
  const lines = logs.lines();
  assert.ok(
    lines.includes("stopping: 1 delayed echoes not sent"),
    lines.join("\n"),
  );
  assert.equal(server.stats.echoed, 0);
  assert.deepEqual(events, []); // the echo was neither sent nor tried
});

Deno.test("serveUdp() counts peers exactly up to maxPeers, then as a lower bound", async () => {
  await using logs = await captureLogs();
  const server = serveUdp({ port: 0, maxPeers: 3 });
  const conns = await Promise.all(
    [1, 2, 3, 4, 5].map(() => connectUdp({ port: server.addr.port })),
  );
  try {
    for (const conn of conns) await echo(conn, bytes("hi"));
    assert.equal(server.stats.peers, 3);
    assert.equal(server.stats.peersCapped, true);
  } finally {
    for (const conn of conns) conn.close();
  }
  await server.close();
  assert.equal(
    render(logs.records.at(-1)!),
    "stopped: 5 datagrams from ≥3 peers, 10 bytes echoed",
  );
});

Deno.test("serveUdp() throws a named error when the port is taken", () => {
  using taken = rawSocket();
  const port = (taken.addr as Deno.NetAddr).port;
  assert.throws(
    () => serveUdp({ port }),
    (err: Error) =>
      err.message === `cannot listen on udp:127.0.0.1:${port}` &&
      err.cause instanceof Deno.errors.AddrInUse,
  );
});

/** A socket bound to `hostname` (127.0.0.2 is loopback on Linux) talking to 127.0.0.1:`port`. */
function connectFrom(hostname: string, port: number): UdpConn {
  const socket = Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
  return new UdpConn(socket, { transport: "udp", hostname: "127.0.0.1", port });
}

Deno.test({
  name:
    "serveUdp() keeps each sender's allow/deny verdict, also past maxPeers addresses",
  ignore: !posix, // 127.0.0.2 is a loopback address on Linux
  async fn() {
    // maxPeers 1: every other address clears what is kept.
    const { server, next } = eventServer({
      port: 0,
      allow: ["127.0.0.1"],
      maxPeers: 1,
    });
    await using _server = server;
    using one = connectFrom("127.0.0.1", server.addr.port);
    using two = connectFrom("127.0.0.2", server.addr.port);
    const fates: string[] = [];
    for (const conn of [one, one, two, two, one, two, one]) {
      if (conn === one) {
        assert.deepEqual(await echo(conn, bytes("hi")), bytes("hi"));
      } else await conn.send(bytes("hi"));
      const event = await next();
      fates.push(`${event.peer.hostname} ${event.fate}`);
    }
    assert.deepEqual(fates, [
      "127.0.0.1 echoed",
      "127.0.0.1 echoed",
      "127.0.0.2 refused",
      "127.0.0.2 refused",
      "127.0.0.1 echoed",
      "127.0.0.2 refused",
      "127.0.0.1 echoed",
    ]);
    assert.equal(server.stats.refused, 3);
  },
});

Deno.test({
  name: "serveUdp() answers only the senders allow/deny let through; deny wins",
  ignore: !posix, // 127.0.0.2 is a loopback address on Linux
  async fn(t) {
    const cases: [UdpServeOptions, boolean, boolean][] = [
      // rules, 127.0.0.1 answered, 127.0.0.2 answered
      [{ allow: ["127.0.0.1"] }, true, false],
      [{ deny: ["127.0.0.2"] }, true, false],
      [{ allow: ["127.0.0.0/8"], deny: ["127.0.0.2/32"] }, true, false],
      [{ allow: ["127.0.0.2"], deny: ["127.0.0.0/30"] }, false, false],
      [{ allow: ["::ffff:127.0.0.0/104"] }, true, true],
    ];
    for (const [rules, one, two] of cases) {
      await t.step(JSON.stringify(rules), async () => {
        await using logs = await captureLogs();
        const { server, next } = eventServer({ port: 0, ...rules });
        await using _server = server;
        for (
          const [from, answered] of [["127.0.0.1", one], [
            "127.0.0.2",
            two,
          ]] as const
        ) {
          using conn = connectFrom(from, server.addr.port);
          if (answered) {
            assert.deepEqual(await echo(conn, bytes("hi")), bytes("hi"));
          } else await conn.send(bytes("hi"));
          const event = await next();
          assert.equal(event.peer.hostname, from);
          assert.equal(event.fate, answered ? "echoed" : "refused", from);
        }
        const refused = [one, two].filter((answered) => !answered).length;
        assert.equal(server.stats.refused, refused);
        assert.equal(server.stats.echoed, 2 - refused);
        assert.equal(server.stats.datagrams, 2);
        assert.equal(
          logs.lines("warning").filter((l) =>
            /\] refused: not allowed$/.test(l)
          )
            .length,
          refused === 0 ? 0 : 1, // the second within the second is counted
        );
      });
    }
  },
});

Deno.test({
  name: "serveUdp() summarises refused datagrams like TCP's refusals",
  ignore: !posix,
  async fn() {
    await using logs = await captureLogs();
    const { server, next } = eventServer({ port: 0, deny: ["127.0.0.2"] });
    using from2 = connectFrom("127.0.0.2", server.addr.port);
    for (let i = 0; i < 5; i++) await from2.send(bytes(`no ${i}`));
    for (let i = 0; i < 5; i++) assert.equal((await next()).fate, "refused");
    using conn = await connectUdp({ port: server.addr.port });
    assert.deepEqual(await echo(conn, bytes("yes")), bytes("yes"));
    await server.close();
    const peer = `127.0.0.2:${from2.localAddr.port}`;
    assert.deepEqual(logs.lines("warning"), [
      `[${peer}] refused: not allowed`,
      "refused: not allowed; 4 more in the last second",
    ]);
    // Received and from a peer, still: the stop line counts them.
    assert.equal(
      logs.lines().at(-1),
      "stopped: 6 datagrams from 2 peers, 3 bytes echoed",
    );
    assert.equal(server.stats.refused, 5);
  },
});

Deno.test("serveUdp() refuses memory bounds that bound nothing, before binding", () => {
  for (
    const options of [
      { maxPeers: NaN },
      { maxPeers: 0 },
      { maxPendingBytes: Infinity },
      { maxPendingBytes: -1 },
      { maxDatagramBytes: 65528 },
      { maxDatagramBytes: 1.5 },
    ]
  ) {
    const [name] = Object.keys(options);
    assert.throws(
      () => serveUdp({ port: 0, ...options }),
      (err: unknown) =>
        err instanceof RangeError && err.message.startsWith(`invalid ${name} `),
      JSON.stringify(options),
    );
  }
});

Deno.test("serveUdp() refuses a bad allow or deny rule before binding", () => {
  assert.throws(
    () => serveUdp({ port: 0, allow: ["10.0.0.0/33"] }),
    (err: unknown) =>
      err instanceof RangeError &&
      err.message === '"10.0.0.0/33" is not an IP address or CIDR range',
  );
});

Deno.test("seededRandom() repeats per seed; streams and seeds differ", () => {
  const take = (seed: number, stream = 0) => {
    const next = seededRandom(seed, stream);
    return Array.from({ length: 100 }, next);
  };
  assert.deepEqual(take(1), take(1));
  assert.notDeepEqual(take(1), take(2));
  assert.notDeepEqual(take(1, 0), take(1, 1));
  assert.ok(take(9).every((x) => x >= 0 && x < 1));
  const mean = take(5).reduce((a, b) => a + b) / 100;
  assert.ok(mean > 0.35 && mean < 0.65, `${mean}`);
  // The TCP faults' name for it: the first sequence of the seed.
  assert.deepEqual(Array.from({ length: 100 }, createRandom(1)), take(1));
});

// ---- client ----------------------------------------------------------------

/** Runs `tcpecho client --udp ARGS` with `input` on stdin. */
function udpClient(args: string[], input: Uint8Array) {
  return runClient(["--udp", ...args], input);
}

Deno.test("tcpecho client --udp pipes each line as a datagram, replies to stdout", async () => {
  const { server, next } = eventServer({ port: 0 });
  await using _server = server;
  const input = bytes("one\n\0two\r\n\nlast, no newline");
  const { code, stdout, stderr } = await udpClient(
    ["-p", `${server.addr.port}`],
    input,
  );
  assert.equal(stderr, "");
  assert.equal(code, 0);
  assert.deepEqual(stdout, input);
  const sizes = [];
  for (let i = 0; i < 4; i++) sizes.push((await next()).bytes);
  assert.deepEqual(sizes, [4, 6, 1, 16]); // one datagram a line, "\n" kept
});

Deno.test("tcpecho client --udp reports each lost reply and exits 1", async () => {
  await using server = serveUdp({ port: 0, drop: 1 });
  const { code, stdout, stderr } = await udpClient(
    ["-p", `${server.addr.port}`, "--timeout", "0.05"],
    bytes("a\nbb\n"),
  );
  assert.equal(code, 1);
  assert.equal(stdout.length, 0);
  assert.equal(
    stderr,
    "lost: no reply to line 1 (2 bytes) within 0.05 s\n" +
      "lost: no reply to line 2 (3 bytes) within 0.05 s\n" +
      "error: 2 of 2 replies lost\n",
  );
});

Deno.test("tcpecho client --udp skips a late reply to a lost line", async () => {
  // Holds the first datagram and answers it only after the second arrives:
  // late for line 1, then line 2's own reply.
  using socket = rawSocket();
  const serving = (async () => {
    const [first] = await socket.receive();
    const [second, from] = await socket.receive();
    await socket.send(first, from);
    await socket.send(second, from);
  })();
  const { code, stdout, stderr } = await udpClient(
    ["-p", `${(socket.addr as Deno.NetAddr).port}`, "--timeout", "0.1"],
    bytes("late\nfresh\n"),
  );
  socket[Symbol.dispose](); // ends `serving` even if the client sent too little
  await serving.catch(() => {}); // the output below says whether it answered
  assert.equal(text(stdout), "fresh\n");
  assert.equal(code, 1);
  assert.match(stderr, /^lost: no reply to line 1 \(5 bytes\)/);
});

Deno.test("tcpecho client --udp exits 1 on a line over 65,507 bytes, after the lines before it", async () => {
  await using server = serveUdp({ port: 0 });
  const most = "x".repeat(65_506) + "\n"; // 65,507 bytes: one datagram's most
  const { code, stdout, stderr } = await udpClient(
    ["-p", `${server.addr.port}`],
    bytes(`ok\n${most}y${most}`),
  );
  assert.equal(code, 1);
  assert.equal(text(stdout), `ok\n${most}`);
  assert.equal(
    stderr,
    "error: line 3 is longer than 65507 bytes, the most one UDP datagram holds\n",
  );
  assert.equal(server.stats.datagrams, 2); // the long line was never sent
});

Deno.test({
  name: "tcpecho client --udp --host ::1 pipes over IPv6",
  ignore: !hasIpv6, // no IPv6 loopback here
  async fn() {
    await using server = serveUdp({ hostname: "::1", port: 0 });
    const input = bytes("over IPv6\nagain\n");
    const { code, stdout, stderr } = await udpClient(
      ["--host", "::1", "-p", `${server.addr.port}`],
      input,
    );
    assert.equal(stderr, "");
    assert.equal(code, 0);
    assert.deepEqual(stdout, input);
    assert.equal(server.stats.datagrams, 2);
  },
});

Deno.test({
  name:
    "tcpecho client --udp on a terminal shows server say# and ends on Ctrl+D",
  ignore: !hasScript,
  async fn() {
    await using server = serveUdp({ port: 0 });
    const pty = underPty(["--udp", "-p", `${server.addr.port}`], REPLY_MS);
    await pty.see(`sending to udp:127.0.0.1:${server.addr.port}`);
    await pty.type("hello\r");
    await pty.see("server say# hello");
    await pty.type("\x04"); // Ctrl+D
    assert.equal(await pty.exit(), 0, pty.screen);
    assert.equal(server.stats.bytesIn, "hello\n".length);
    // The prompt's line is ended: the shell's prompt starts on its own.
    assert.ok(pty.screen.endsWith("\r\n"), JSON.stringify(pty.screen));
  },
});

Deno.test({
  name:
    "tcpecho client --udp on a terminal reports lost lines, also after Ctrl+D",
  ignore: !hasScript,
  async fn() {
    await using server = serveUdp({ port: 0, drop: 1 });
    const pty = underPty(
      ["--udp", "-p", `${server.addr.port}`, "--timeout", "0.05"],
      REPLY_MS,
    );
    await pty.see("sending to");
    await pty.type("gone\r");
    await pty.see('lost: no reply to "gone" within 0.05 s');
    await pty.type("also\r\x04"); // Ctrl+D waits for its reply, or its loss
    assert.equal(await pty.exit(), 0, pty.screen);
    // The last line is the loss, ended once: no blank line after it.
    assert.ok(
      pty.screen.endsWith('lost: no reply to "also" within 0.05 s\r\n'),
      JSON.stringify(pty.screen),
    );
  },
});

Deno.test({
  name: "tcpecho client --udp on a terminal exits 130 on Ctrl+C",
  ignore: !hasScript,
  async fn() {
    await using server = serveUdp({ port: 0 });
    const pty = underPty(["--udp", "-p", `${server.addr.port}`], REPLY_MS);
    await pty.see("> "); // the prompt: readline has the terminal
    await pty.type("\x03"); // Ctrl+C, as a key, not a SIGINT
    assert.equal(await pty.exit(), 130, pty.screen);
    assert.ok(pty.screen.endsWith("\r\n"), JSON.stringify(pty.screen));
  },
});

// ---- bench -----------------------------------------------------------------

Deno.test("runUdpBench() checks every reply and counts losses", async () => {
  await using server = serveUdp({ port: 0, drop: 0.2, seed: 1 });
  const result = await runUdpBench({
    port: server.addr.port,
    connections: 4,
    durationMs: 300,
    warmupMs: 0,
    lossTimeoutMs: 20,
  });
  assert.equal(result.errors, 0);
  assert.ok(result.messages > 0);
  assert.ok(result.lost > 0, JSON.stringify(result));
  assert.ok(result.latency_us !== null);
  assert.equal(result.rate, null);
  assert.deepEqual(Object.keys(result.per_conn ?? {}), [
    "min",
    "median",
    "max",
    "jain",
  ]);
  assert.match(
    formatReport(result, { udp: true }),
    /^bench: pingpong over UDP, 4 connections[^]*\nlost {7}\d[\d,]* of [\d,]+ \(\d+\.\d\d%\)\nerrors {5}0$/,
  );
});

Deno.test("formatReport() gives the loss rate over UDP, and whenever something was lost", () => {
  const result = {
    pattern: "pingpong" as const,
    connections: 2,
    size: 64,
    duration_s: 1,
    messages: 996,
    messages_per_s: 996,
    bytes: 63_744,
    mib_per_s: 0.06,
    latency_us: null,
    errors: 0,
    rate: null,
    latency_uncorrected_us: null,
    connects_per_s: null,
    lost: 4,
    per_conn: null,
  };
  const report = formatReport(result, { target: "127.0.0.1:8080", udp: true });
  assert.match(report, /^bench 127\.0\.0\.1:8080: pingpong over UDP, 2 conn/);
  assert.match(report, /\nlost {7}4 of 1,000 \(0\.40%\)\nerrors {5}0$/);
  assert.match(formatReport(result), /^bench: pingpong, [^]*\nlost {7}4 of/);
  assert.doesNotMatch(formatReport({ ...result, lost: 0 }), /lost/);
  assert.match(
    formatReport({ ...result, messages: 0, lost: 0 }, { udp: true }),
    /\nlost {7}0 of 0 \(0\.00%\)\n/,
  );
});

Deno.test("runUdpBench() counts an altered reply as an error", async () => {
  // An echo server that flips one bit of every tenth datagram.
  using socket = rawSocket();
  const serving = (async () => {
    for (let i = 0;; i++) {
      const [data, from] = await socket.receive();
      if (i % 10 === 9) data[0] ^= 1;
      await socket.send(data, from);
    }
  })().catch(() => {}); // ends when the socket closes
  const errors: string[] = [];
  const result = await runUdpBench({
    port: (socket.addr as Deno.NetAddr).port,
    connections: 1,
    durationMs: 100,
    warmupMs: 0,
    onError: (err) => errors.push(err.message),
  });
  socket.close();
  await serving;
  assert.ok(result.errors > 0 && result.errors === errors.length);
  assert.match(errors[0], /^socket 0: reply to message \d+ altered/);
  assert.equal(result.lost, 0);
});

Deno.test("tcpecho bench --udp ends on time against a server that drops all, and exits 1", async () => {
  await using server = serveUdp({ port: 0, drop: 1 });
  const { code, stdout, stderr } = await runCli(
    argv(`bench --udp -p ${server.addr.port} -c 2 -d 1.6 --json`),
  );
  assert.equal(code, 1, stderr); // nothing measured: a failed run
  const result = JSON.parse(stdout); // the report is still whole
  const shown = JSON.stringify(result);
  assert.deepEqual(Object.keys(result), RESULT_KEYS);
  assert.equal(result.messages, 0);
  assert.equal(result.errors, 0);
  assert.ok(result.lost >= 2, shown); // a second each, per socket
  assert.ok(result.duration_s < 1.7, shown);
  assert.match(stderr, /^error: no reply came back/);
});

Deno.test("tcpecho bench --udp --spawn-server measures its own UDP server", async () => {
  const { code, stdout, stderr } = await runCli(
    ["bench", "--udp", "--spawn-server", "-c", "2", "-d", "0.3"],
  );
  assert.equal(code, 0, stderr);
  assert.match(
    stdout,
    /^bench 127\.0\.0\.1:\d+: pingpong over UDP, 2 connections, 64-byte messages, [^]*, 1 thread\n/,
  );
  assert.match(stdout, /\nlost {7}0 of [\d,]+ \(0\.00%\)\nerrors {5}0\n$/);
});

Deno.test("tcpecho bench --udp --threads 2 splits the sockets over two workers", async () => {
  await using server = serveUdp({ port: 0 });
  const { result } = await benchJson(
    argv(`--udp -p ${server.addr.port} -c 3 -d 0.3 --threads 2`),
  );
  const shown = JSON.stringify(result);
  assert.equal(result.connections, 3);
  assert.equal(result.errors, 0);
  assert.ok(result.messages > 0, shown);
  // Every socket, in both workers, got replies in the window.
  assert.ok(result.per_conn.min > 0, shown);
  // Peers seen by the server: each socket is one.
  assert.ok(server.stats.peers >= 3, JSON.stringify(server.stats));
});

Deno.test("tcpecho bench --udp --hlog logs the losses, and bench merge adds them up", async () => {
  await using server = serveUdp({ port: 0, drop: 0.5, seed: 3 });
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/udp.hlog`;
    const { result } = await benchJson([
      "--udp",
      "-p",
      `${server.addr.port}`,
      "-c",
      "2",
      "-d",
      "1.2",
      "--hlog",
      path,
    ]);
    assert.ok(result.lost > 0, JSON.stringify(result));
    const log = parseHlog(await Deno.readTextFile(path));
    assert.equal(log.run?.udp, true);
    assert.deepEqual(log.end, { errors: 0, lost: result.lost });
    const merge = await runCli(["bench", "merge", path, path]);
    assert.equal(merge.code, 0, merge.stderr);
    assert.match(merge.stdout, /^merge of 2 logs: pingpong over UDP, 4 conn/);
    assert.match(
      merge.stdout,
      new RegExp(`\nlost {7}${(2 * result.lost).toLocaleString("en-US")} of `),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mergeHlogs() does not add a UDP run's log to a TCP run's", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const histogram = new LatencyHistogram();
    histogram.record(100);
    const logs: { name: string; text: string }[] = [];
    for (const udp of [false, true]) {
      const path = `${dir}/${udp ? "udp" : "tcp"}.hlog`;
      using log = new HlogWriter(path, {
        target: "127.0.0.1:8080",
        pattern: "pingpong",
        connections: 1,
        size: 64,
        rate: null,
        ...(udp ? { udp: true as const } : {}),
      });
      log.interval(1000, 2000, histogram);
      log.end({ errors: 0, ...(udp ? { lost: 1 } : {}) });
      logs.push({ name: path, text: await Deno.readTextFile(path) });
    }
    assert.throws(
      () => mergeHlogs(logs),
      /cannot merge ".*udp\.hlog": a UDP run, the first log has a TCP run/,
    );
    const udp = mergeHlogs([logs[1], logs[1]]);
    assert.equal(udp.udp, true);
    assert.equal(udp.result.lost, 2);
    assert.equal(mergeHlogs([logs[0]]).udp, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- CLI -------------------------------------------------------------------

Deno.test("tcpecho server/client/bench --udp usage errors exit 2", async (t) => {
  const cases: [string[], RegExp][] = [
    [["server", "--udp", "--mode", "line"], /--mode line cannot go with --udp/],
    [["server", "--drop", "0.5"], /^error: --drop needs --udp$/],
    [
      ["server", "--udp", "--drop", "2"],
      /--drop takes a fraction from 0 to 1, not "2"/,
    ],
    [["server", "--udp", "--drop", "x"], /--drop takes a fraction/],
    [
      ["server", "--udp", "--unix", "/tmp/u.sock"],
      /--unix cannot go with --udp/,
    ],
    [
      ["server", "--udp", "--max-conns", "5"],
      /--max-conns cannot go with --udp/,
    ],
    [["server", "--udp", "--slice", "5"], /--slice cannot go with --udp/],
    [
      ["server", "--udp", "--proxy-protocol", "v1"],
      /--proxy-protocol cannot go with --udp/,
    ],
    [
      ["server", "--udp", "--allow", "10.0.0.0/33"],
      /^error: --allow takes an IP address or CIDR range, not "10\.0\.0\.0\/33"$/,
    ],
    [
      ["server", "--udp", "--admin", "9090"],
      /^error: --admin takes HOST:PORT, not "9090"$/,
    ],
    // The same bound as over TCP: a day.
    [
      ["server", "--udp", "--delay", "86400001"],
      /^error: --delay takes whole milliseconds from 0 to 86400000, such as 250, 250ms or 2s, not "86400001"$/,
    ],
    [
      ["server", "--udp", "--jitter", "86400001"],
      /^error: --jitter takes whole milliseconds from 0 to 86400000, such as 250, 250ms or 2s, not "86400001"$/,
    ],
    [
      ["server", "--udp", "--workers", "2"],
      /^error: --workers above 1 cannot go with --udp: UDP is served from one socket$/,
    ],
    [["server", "--udp", "--seed", "-1"], /argument is ambiguous|--seed takes/],
    [["client", "--timeout", "1"], /^error: --timeout needs --udp$/],
    [["client", "--udp", "--tls"], /--tls cannot go with --udp/],
    [["client", "--udp", "--timeout", "0"], /--timeout must be more than 0/],
    [
      ["bench", "--udp", "--pattern", "stream"],
      /--pattern stream cannot go with --udp/,
    ],
    [
      ["bench", "--udp", "--pattern", "connect"],
      /--pattern connect cannot go with --udp/,
    ],
    [["bench", "--udp", "--rate", "100"], /--rate cannot go with --udp/],
    [["bench", "--udp", "--lines"], /--lines cannot go with --udp/],
    [
      ["bench", "--udp", "-s", "65508"],
      /--size takes a size from 1 to 65507 bytes/,
    ],
  ];
  for (const [args, message] of cases) {
    await t.step(args.join(" "), async () => {
      await assertUsageError(
        args,
        message,
        new RegExp(`^usage: tcpecho ${args[0]} `),
      );
    });
  }
});

Deno.test({
  name:
    "tcpecho server --udp stops on SIGTERM with datagram, peer and byte counts",
  ignore: !posix,
  async fn() {
    await using server = await ServerProcess.start(
      argv("--udp --port 0 --drop 0 --jitter 1 --seed 7"),
    );
    // As over TCP: `faults:` first, `listening on` last.
    assert.match(server.lines[0], /INF faults: jitter 1 ms, seed 7$/);
    assert.match(server.lines[1], /INF listening on udp:127\.0\.0\.1:\d+$/);
    using a = await connectUdp({ port: server.port });
    using b = await connectUdp({ port: server.port });
    await echo(a, bytes("hello"));
    await echo(a, bytes("again"));
    await echo(b, bytes("bye"));
    assert.equal(await server.stop("SIGTERM"), 0);
    assert.match(
      server.lines.at(-1)!,
      /INF stopped: 3 datagrams from 2 peers, 13 bytes echoed$/,
    );
  },
});

Deno.test({
  name:
    "tcpecho server --udp --workers auto: one server; SIGUSR1 counts, SIGHUP stops",
  ignore: !posix,
  async fn() {
    await using server = await ServerProcess.start(
      argv("--udp --port 0 --workers auto"),
    );
    using a = await connectUdp({ port: server.port });
    using b = await connectUdp({ port: server.port });
    await echo(a, bytes("hello"));
    await echo(b, bytes("bye"));
    server.child.kill("SIGUSR1");
    assert.match(
      await server.waitFor(/ stats: /),
      /INF stats: 2 datagrams from 2 peers, 8 bytes echoed$/,
    );
    await echo(a, bytes("still"));
    assert.equal(await server.stop("SIGHUP"), 0);
    assert.match(
      server.lines.at(-1)!,
      /INF stopped: 3 datagrams from 2 peers, 13 bytes echoed$/,
    );
  },
});

Deno.test("tcpecho server --udp takes --delay and --jitter up to a day, as over TCP, and says so before listening on", async () => {
  await using server = await ServerProcess.start(
    argv("--udp --port 0 --delay 86400000 --jitter 86400000 --seed 3"),
  );
  assert.deepEqual(
    server.lines.map((line) => line.replace(/^.* INF /, "")),
    [
      "faults: delay 86400000 ms, jitter 86400000 ms, seed 3",
      `listening on udp:127.0.0.1:${server.port}`,
    ],
  );
  assert.equal(await server.stop(), 0);
});

Deno.test("tcpecho server --udp -q prints listening on udp: and nothing else", async () => {
  await using server = await ServerProcess.start(argv("--udp --port 0 -q"));
  using conn = await connectUdp({ port: server.port });
  await echo(conn, bytes("q"));
  assert.equal(await server.stop(), 0);
  assert.equal(server.lines.length, 1, server.lines.join("\n"));
  assert.match(server.lines[0], / INF listening on udp:127\.0\.0\.1:\d+$/);
});

Deno.test({
  name:
    "tcpecho server --udp logs no line per datagram or per peer at the default level",
  ignore: !posix,
  async fn() {
    await using server = await ServerProcess.start(["--udp", "--port", "0"]);
    const peers = await Promise.all(
      [0, 1, 2].map(() => connectUdp({ port: server.port })),
    );
    try {
      for (const peer of peers) {
        await echo(peer, bytes("hello"));
        await echo(peer, bytes("again"));
      }
    } finally {
      for (const peer of peers) peer[Symbol.dispose]();
    }
    assert.equal(await server.stop("SIGTERM"), 0);
    const lines = server.lines;
    assert.equal(lines.length, 2, lines.join("\n"));
    assert.match(lines[0], /INF listening on udp:127\.0\.0\.1:\d+$/);
    assert.match(
      lines[1],
      /INF stopped: 6 datagrams from 3 peers, 30 bytes echoed$/,
    );
  },
});
