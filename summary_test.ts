/**
 * Warnings a flood of bad clients would repeat, summarised: failed TLS
 * handshakes, bad PROXY headers and refusals, each kind on its own, at most
 * one line a second with a count that adds up exactly, in one server and
 * over the CLI's worker isolates; and good clients served meanwhile.
 */
import assert from "node:assert/strict";
import { formatProxyHeader } from "./_proxy_protocol.ts";
import { WarningThrottle } from "./_summary.ts";
import { isDisconnect } from "./io.ts";
import {
  bytes,
  CA,
  captureLogs,
  ConnEvents,
  roundTrip,
  TLS,
  watchdog,
  writeAll,
} from "./testing.ts";
import { argv, ServerProcess, TLS_ARGS } from "./testing_cli.ts";

const linux = Deno.build.os === "linux";

/** Bad clients in a burst: how many, and how many at a time. */
const BURST = 300;
const AT_ONCE = 32;

/**
 * Opens `n` connections, `AT_ONCE` at a time; each writes `first` (the
 * bytes that make it bad, if any) and reads until the server closes it.
 */
async function burst(
  n: number,
  open: (i: number) => Promise<{ conn: Deno.Conn; first?: Uint8Array }>,
): Promise<void> {
  let next = 0;
  const one = async () => {
    for (let i = next++; i < n; i = next++) {
      const { conn, first } = await open(i);
      using _conn = conn;
      using _dog = watchdog(20_000, () => conn.close()); // a hang fails
      try {
        if (first !== undefined) await writeAll(conn, first);
        const buf = new Uint8Array(4096);
        while (await conn.read(buf) !== null) { /* an alert, say */ }
      } catch (err) {
        if (!isDisconnect(err)) throw err; // reset or closed: fine
      }
    }
  };
  await Promise.all(Array.from({ length: AT_ONCE }, one));
}

/**
 * A TLS client on `port` that completes its handshake, then a
 * {@linkcode burst} of {@linkcode BURST} plaintext clients that each send
 * `first` (not a TLS hello): the good client, when the burst began, and the
 * burst.
 */
async function tlsThenPlaintext(port: number, first: string) {
  const good = await Deno.connectTls({
    hostname: "localhost",
    port,
    caCerts: [CA],
  });
  const started = performance.now();
  const flood = burst(BURST, async () => ({
    conn: await Deno.connect({ port }),
    first: bytes(first),
  }));
  return { good, started, flood };
}

/**
 * While `during` runs, round trips on `conn`, one at least: how many were
 * answered (each must be). Both are awaited, whichever fails.
 */
async function served(conn: Deno.Conn, during: Promise<void>): Promise<number> {
  let done = false;
  const flood = during.finally(() => done = true);
  let n = 0;
  const pinging = (async () => {
    do {
      assert.deepEqual(await roundTrip(conn, bytes("ping")), bytes("ping"));
      n++;
    } while (!done);
  })();
  for (const result of await Promise.allSettled([flood, pinging])) {
    if (result.status === "rejected") throw result.reason;
  }
  return n;
}

/** The start of a warning: a bare message, or a CLI line's level. */
const START = "(?:^|WRN )";

/** A summary line of one kind (CLI line or bare message); group 1 is its count. */
function summaryLine(verb: string, what: string): RegExp {
  return new RegExp(
    `${START}${verb}: ${what}; (\\d+) more in the last second$`,
  );
}

/**
 * The warnings of one kind among `lines` (CLI lines, or bare messages): the
 * first, naming its peer, and the summaries, each with its count.
 */
function summarised(lines: string[], verb: string, what: string) {
  const first = new RegExp(`${START}\\[[^\\]]+\\] ${verb}: ${what}`);
  const more = summaryLine(verb, what);
  const firsts = lines.filter((l) => first.test(l));
  const summaries = lines.filter((l) => more.test(l));
  return {
    firsts,
    summaries,
    lines: firsts.length + summaries.length,
    total: firsts.length +
      summaries.reduce((n, l) => n + Number(more.exec(l)![1]), 0),
  };
}

/**
 * The first summary line of one kind that `logs` captured, waiting for it
 * (bounded) if it has not come yet. Awaited while the server still runs, it
 * is a line of the one-second window, not the count logged at the stop.
 */
async function summaryWhileRunning(
  logs: Awaited<ReturnType<typeof captureLogs>>,
  verb: string,
  what: string,
): Promise<string> {
  const re = summaryLine(verb, what);
  return logs.lines("warning").find((l) => re.test(l)) ?? await logs.next(re);
}

/** At most a line a second, and one more at the stop (the SPEC's bound). */
function assertFew(lines: number, startedMs: number): void {
  const seconds = (performance.now() - startedMs) / 1000;
  assert.ok(
    lines <= Math.ceil(seconds) + 2,
    `${lines} lines in ${seconds.toFixed(1)} s`,
  );
}

Deno.test("serve() summarises a burst of failed TLS handshakes, and serves good clients meanwhile", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  const server = events.serve({ ...TLS });
  const { port } = server.addr;
  const { good: tls, started, flood } = await tlsThenPlaintext(
    port,
    "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
  );
  using good = tls;
  assert.ok(await served(good, flood) >= 1);
  await events.count(
    "closed",
    BURST,
    (e) => /^TLS handshake failed: /.test(e.reason ?? ""),
  );
  await summaryWhileRunning(logs, "closing", "TLS handshake failed");
  good.close();
  await server.close(); // logs what is still counted
  const lines = logs.lines("warning");
  const failed = summarised(lines, "closing", "TLS handshake failed");
  assert.equal(failed.total, BURST, lines.join("\n"));
  assert.equal(failed.lines, lines.length, lines.join("\n"));
  assert.equal(failed.firsts.length, 1);
  assert.match(
    failed.firsts[0],
    /^\[127\.0\.0\.1:\d+\] closing: TLS handshake failed: \S/,
  );
  assertFew(failed.lines, started);
});

Deno.test("serve() summarises a burst of bad PROXY headers, and serves good clients meanwhile", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  const server = events.serve({ proxyProtocol: "v1" });
  const { port } = server.addr;
  using good = await Deno.connect({ port });
  await writeAll(good, bytes("PROXY TCP4 192.0.2.1 192.0.2.2 1000 7\r\n"));
  const started = performance.now();
  const flood = burst(BURST, async () => ({
    conn: await Deno.connect({ port }),
    first: bytes("GET / HTTP/1.1\r\n\r\n"),
  }));
  assert.ok(await served(good, flood) >= 1);
  await events.count(
    "closed",
    BURST,
    (e) => /^bad PROXY header: /.test(e.reason ?? ""),
  );
  await summaryWhileRunning(logs, "closing", "bad PROXY header");
  good.close();
  await server.close();
  const lines = logs.lines("warning");
  const bad = summarised(lines, "closing", "bad PROXY header");
  assert.equal(bad.total, BURST, lines.join("\n"));
  assert.equal(bad.lines, lines.length, lines.join("\n"));
  assert.deepEqual(
    bad.firsts.map((l) => l.replace(/:\d+\]/, ":PORT]")),
    ["[127.0.0.1:PORT] closing: bad PROXY header: not a PROXY v1 header"],
  );
  assertFew(bad.lines, started);
});

Deno.test("serve() summarises a burst of lines over maxLineBytes, and serves good clients meanwhile", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  const server = events.serve({ mode: "line", maxLineBytes: 10 });
  const { port } = server.addr;
  using good = await Deno.connect({ port });
  const started = performance.now();
  let done = false;
  const flood = burst(BURST, async () => ({
    conn: await Deno.connect({ port }),
    first: bytes("x".repeat(11) + "\n"),
  })).finally(() => done = true);
  let pings = 0;
  do {
    const line = bytes("ping\n");
    assert.deepEqual(await roundTrip(good, line), line);
    pings++;
  } while (!done);
  await flood;
  assert.ok(pings >= 1);
  const reason = "line longer than 10 bytes (max-line)";
  await events.count("closed", BURST, (e) => e.reason === reason);
  const escaped = reason.replace(/[()]/g, "\\$&");
  await summaryWhileRunning(logs, "closing", escaped);
  good.close();
  await server.close();
  const lines = logs.lines("warning");
  const long = summarised(lines, "closing", escaped);
  assert.equal(long.total, BURST, lines.join("\n"));
  assert.equal(long.lines, lines.length, lines.join("\n"));
  assertFew(long.lines, started);
});

/** A PROXY v1 header naming `ip` as the client. */
function from(ip: string): Uint8Array {
  return formatProxyHeader({
    version: 1,
    command: "proxy",
    source: { transport: "tcp", hostname: ip, port: 1000 },
    destination: { transport: "tcp", hostname: "192.0.2.2", port: 7 },
  });
}

Deno.test("serve() summarises two refusal reasons of the same second apart, each with its exact count", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  const server = events.serve({
    proxyProtocol: "v1",
    deny: ["10.0.0.0/8"],
    maxConnsPerIp: 1,
  });
  const { port } = server.addr;
  using held = await Deno.connect({ port }); // 192.0.2.1's one connection
  await writeAll(held, from("192.0.2.1"));
  assert.deepEqual(await roundTrip(held, bytes("hi")), bytes("hi"));
  // Interleaved: both reasons come in the same second, again and again.
  const [denied, perIp] = [150, 150];
  await burst(denied + perIp, async (i) => {
    const conn = await Deno.connect({ port });
    await writeAll(conn, from(i % 2 === 0 ? "10.1.2.3" : "192.0.2.1"));
    return { conn };
  });
  await events.count("refused", denied + perIp);
  const perIpReason = "too many connections \\(max-conns-per-ip 1\\)";
  // Each reason has its own window: both summarised while still running.
  await summaryWhileRunning(logs, "refused", "not allowed");
  await summaryWhileRunning(logs, "refused", perIpReason);
  held.close();
  await server.close();
  const lines = logs.lines("warning");
  const notAllowed = summarised(lines, "refused", "not allowed");
  const tooMany = summarised(lines, "refused", perIpReason);
  assert.equal(notAllowed.total, denied, lines.join("\n"));
  assert.equal(tooMany.total, perIp, lines.join("\n"));
  assert.equal(
    notAllowed.lines + tooMany.lines,
    lines.length,
    lines.join("\n"),
  );
  assert.deepEqual(
    [notAllowed.firsts.length, tooMany.firsts.length],
    [1, 1],
    lines.join("\n"),
  );
  assert.ok(notAllowed.firsts[0].startsWith("[10.1.2.3:1000] refused: "));
  assert.ok(tooMany.firsts[0].startsWith("[192.0.2.1:1000] refused: "));
  // Their first lines came in the same second: neither waited for the other.
  assert.ok(notAllowed.summaries.length >= 1 && tooMany.summaries.length >= 1);
});

Deno.test({
  name:
    "tcpecho server --workers 2 summarises failed TLS handshakes over both workers, with an exact count",
  ignore: !linux,
  async fn() {
    await using server = await ServerProcess.start([
      ...argv("--port 0 --workers 2"),
      ...TLS_ARGS,
    ]);
    const { port } = server;
    const { good: tls, started, flood } = await tlsThenPlaintext(
      port,
      "GET / HTTP/1.1\r\n\r\n",
    );
    using good = tls;
    assert.ok(await served(good, flood) >= 1);
    // A line of the pool's one-second window, while the server still runs.
    await server.waitFor(summaryLine("closing", "TLS handshake failed"));
    good.close();
    assert.equal(await server.stop(), 0);
    const failed = summarised(
      server.lines,
      "closing",
      "TLS handshake failed",
    );
    const shown = server.lines.filter((l) => / WRN /.test(l)).join("\n");
    assert.equal(failed.total, BURST, shown);
    assert.equal(failed.firsts.length, 1, shown);
    assertFew(failed.lines, started);
    // Every bad client was accepted (an online line each), whichever worker
    // took it: the lines do not say which worker logged them.
    const online = server.lines.filter((l) => / online$/.test(l));
    assert.ok(online.length >= BURST, `${online.length} online lines`);
  },
});

Deno.test({
  name:
    "tcpecho server --workers 2 summarises bad PROXY headers, denied and per-address refusals apart, each with its exact count",
  ignore: !linux,
  async fn() {
    await using server = await ServerProcess.start(
      argv(
        "--port 0 --workers 2 --proxy-protocol v1 --deny 10.0.0.0/8 --max-conns-per-ip 1",
      ),
    );
    const { port } = server;
    using good = await Deno.connect({ port });
    await writeAll(good, from("192.0.2.1")); // 192.0.2.1's one connection
    assert.deepEqual(await roundTrip(good, bytes("hi")), bytes("hi"));
    const started = performance.now();
    const flood = burst(BURST, async (i) => {
      const conn = await Deno.connect({ port });
      const first = [
        bytes("GET / HTTP/1.1\r\n\r\n"),
        from("10.1.2.3"),
        from("192.0.2.1"),
      ][i % 3];
      return { conn, first };
    });
    assert.ok(await served(good, flood) >= 1);
    const perIpReason = "too many connections \\(max-conns-per-ip 1\\)";
    // Lines of the pool's one-second windows, while the server still runs.
    await server.waitFor(summaryLine("closing", "bad PROXY header"));
    await server.waitFor(summaryLine("refused", "not allowed"));
    await server.waitFor(summaryLine("refused", perIpReason));
    good.close();
    assert.equal(await server.stop(), 0);
    const { lines } = server;
    const shown = lines.filter((l) => / WRN /.test(l)).join("\n");
    const kinds = [
      summarised(lines, "closing", "bad PROXY header"),
      summarised(lines, "refused", "not allowed"),
      summarised(lines, "refused", perIpReason),
    ];
    for (const kind of kinds) {
      assert.equal(kind.total, BURST / 3, shown);
      assert.equal(kind.firsts.length, 1, shown);
      assertFew(kind.lines, started);
    }
    assert.equal(
      kinds.reduce((n, k) => n + k.lines, 0),
      lines.filter((l) => / WRN /.test(l)).length,
      shown,
    );
  },
});

Deno.test("WarningThrottle lets the first of a kind through, then holds the rest of its second", () => {
  let now = 5_000;
  const throttle = new WarningThrottle(() => now);
  assert.equal(throttle.count("accept"), 1); // the first: a line, one warning
  assert.equal(throttle.count("accept"), undefined); // held, counted
  now += 999;
  assert.equal(throttle.count("accept"), undefined);
  assert.equal(throttle.count("oversized"), 1); // kinds are apart
  now += 1;
  assert.equal(throttle.count("accept"), 3); // the two held, and itself
  assert.equal(throttle.count("accept"), undefined);
  now += 60_000;
  assert.equal(throttle.count("accept"), 2);
  assert.equal(throttle.count("oversized"), 1);
});
