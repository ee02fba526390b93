/**
 * Tests of the server's faults on purpose (`--delay`, `--jitter`, `--slice`,
 * `--slice-delay`, `--bandwidth`, `--close-after`, `--faulty`, `--seed`) and
 * of `--mode discard`, through real sockets. Timing is asserted only as lower
 * bounds or wide windows.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { FaultPlan } from "./_faults.ts";
import { createRandom, randomSeed } from "./_random.ts";
import { isDisconnect } from "./io.ts";
import { serve, type ServeOptions } from "./server.ts";
import {
  bytes,
  CA,
  captureLogs,
  closeQuietly,
  ConnEvents,
  posix,
  randomBytes,
  readAll,
  readExactly,
  roundTrip,
  streamUntilStalled,
  TLS,
  watchdog,
  writeAll,
} from "./testing.ts";
import { argv, cli, ServerProcess } from "./testing_cli.ts";

/** What captureLogs() gives. */
type Logs = Awaited<ReturnType<typeof captureLogs>>;

/** What a client saw of one exchange. */
interface Exchange {
  /** Everything echoed, up to the server's EOF. */
  back: Uint8Array;
  /** The size of each read, in order. */
  reads: number[];
  /** Milliseconds from the first write to the first byte back (or EOF). */
  firstByteMs: number;
  /** Milliseconds from the first write to the server's EOF. */
  totalMs: number;
}

/**
 * Writes `data` (in writes of at most `chunk` bytes), half-closes, and reads
 * until the server closes. A write refused because the server hung up
 * (close-after) ends the sending, nothing more. The watchdog closes the conn
 * after `timeoutMs`, so a broken feature fails instead of hanging.
 */
async function exchange(
  conn: Deno.Conn,
  data: Uint8Array,
  { chunk = 64 * 1024, timeoutMs = 20_000 } = {},
): Promise<Exchange> {
  using dog = watchdog(timeoutMs, () => closeQuietly(conn));
  const start = performance.now();
  const sending = (async () => {
    for (let at = 0; at < data.length; at += chunk) {
      await writeAll(conn, data.subarray(at, at + chunk));
    }
    await conn.closeWrite();
  })().catch((err) => {
    if (!isDisconnect(err)) throw err; // the server hung up: fine
  });
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(256 * 1024);
  let firstByteMs = -1;
  for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
    if (firstByteMs < 0) firstByteMs = performance.now() - start;
    parts.push(buf.slice(0, n));
  }
  const totalMs = performance.now() - start;
  await sending;
  assert.ok(!dog.fired, `no EOF within ${timeoutMs} ms`);
  const back = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
  let off = 0;
  for (const p of parts) {
    back.set(p, off);
    off += p.length;
  }
  return {
    back,
    reads: parts.map((p) => p.length),
    firstByteMs: firstByteMs < 0 ? totalMs : firstByteMs,
    totalMs,
  };
}

/**
 * Fails unless `actual` equals `expected`, saying where they first differ
 * (node:assert's diff of two big byte arrays takes seconds to build).
 */
function assertBytes(actual: Uint8Array, expected: Uint8Array): void {
  const n = Math.min(actual.length, expected.length);
  let i = 0;
  while (i < n && actual[i] === expected[i]) i++;
  if (i === n && actual.length === expected.length) return;
  assert.fail(
    `${actual.length} bytes, ${expected.length} expected; first difference at ${i}`,
  );
}

// ---- the seeded generator and the plan -------------------------------------

Deno.test("createRandom() replays a seed; randomSeed() draws 32 bits", () => {
  const draw = (seed: number) => {
    const random = createRandom(seed);
    return Array.from({ length: 1000 }, random);
  };
  const a = draw(42);
  assert.deepEqual(draw(42), a);
  assert.notDeepEqual(draw(43), a);
  assert.ok(a.every((x) => x >= 0 && x < 1));
  // Roughly uniform: each tenth of [0, 1) gets 100 ± 50 of 1000 draws.
  const tenths = new Array(10).fill(0);
  for (const x of a) tenths[Math.floor(x * 10)]++;
  assert.ok(tenths.every((n) => n > 50 && n < 150), `${tenths}`);
  const seeds = Array.from({ length: 20 }, randomSeed);
  assert.ok(seeds.every((s) => Number.isInteger(s) && s >= 0 && s < 2 ** 32));
  assert.ok(new Set(seeds).size > 1);
});

Deno.test("FaultPlan.from() is off without faults, checks values, describes the rest", () => {
  assert.equal(FaultPlan.from({}), undefined);
  assert.equal(FaultPlan.from({ faulty: 0.5, seed: 1 }), undefined);
  for (
    const bad of [
      { delayMs: -1 },
      { jitterMs: Number.NaN },
      { faulty: 2 },
      { faulty: -0.1 },
      { delayMs: 5, seed: 2 ** 32 },
      { delayMs: 86_400_001 },
    ]
  ) assert.throws(() => FaultPlan.from(bad), RangeError, JSON.stringify(bad));
  const all = FaultPlan.from({
    delayMs: 100,
    jitterMs: 20,
    sliceBytes: 10,
    sliceDelayMs: 5,
    bandwidthKiBps: 64,
    closeAfterBytes: 1000,
    faulty: 0.5,
    seed: 42,
  });
  assert.equal(
    all?.describe(),
    "delay 100 ms, jitter 20 ms, slice 10 bytes, slice-delay 5 ms, " +
      "bandwidth 64 KiB/s, close-after 1000 bytes, faulty 0.5, seed 42",
  );
  const drawn = FaultPlan.from({ sliceBytes: 1 })!;
  assert.match(drawn.describe(), /^slice 1 bytes, seed \d+$/);
  assert.equal(drawn.describe(), `slice 1 bytes, seed ${drawn.seed}`);
});

Deno.test("FaultPlan.next() replays the faulty set and the jitter from a seed", () => {
  const run = (seed: number) => {
    const plan = FaultPlan.from({
      delayMs: 10,
      jitterMs: 30,
      faulty: 0.5,
      seed,
    })!;
    return Array.from({ length: 40 }, () => {
      const faults = plan.next();
      return faults && Array.from({ length: 5 }, () => faults.nextDelayMs());
    });
  };
  const a = run(7);
  assert.deepEqual(run(7), a);
  assert.notDeepEqual(run(8), a);
  const faulty = a.filter((d) => d !== undefined);
  assert.ok(faulty.length > 5 && faulty.length < 35, `${faulty.length} of 40`);
  const delays = faulty.flat();
  assert.ok(delays.every((d) => Number.isInteger(d) && d >= 10 && d <= 40));
  assert.ok(new Set(delays).size > 10, "jitter varies");
  const never = FaultPlan.from({ delayMs: 1, faulty: 0 })!;
  const always = FaultPlan.from({ delayMs: 1, faulty: 1 })!;
  for (let i = 0; i < 100; i++) {
    assert.equal(never.next(), undefined);
    assert.notEqual(always.next(), undefined);
  }
});

// ---- each knob, through serve() ---------------------------------------------

Deno.test("serve() with delayMs holds the first byte back, echoes exactly", async () => {
  await using server = serve({ port: 0, delayMs: 300 });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = randomBytes(10_000, 3);
  const { back, firstByteMs } = await exchange(conn, data);
  assertBytes(back, data);
  assert.ok(firstByteMs >= 280, `first byte after ${firstByteMs} ms`);
});

Deno.test("serve() with delayMs delays each chunk from its read, not one after another", async () => {
  // 200 KiB arrive in at least 8 reads (the read buffer starts at 1 KiB and
  // doubles): delays one after another would take 8 × 300 ms at least.
  await using server = serve({ port: 0, delayMs: 300 });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = randomBytes(200 * 1024, 4);
  const { back, firstByteMs, totalMs } = await exchange(conn, data);
  assertBytes(back, data);
  assert.ok(firstByteMs >= 280, `first byte after ${firstByteMs} ms`);
  assert.ok(totalMs < 1800, `took ${totalMs} ms: delays add up`);
});

Deno.test("serve() with sliceBytes and sliceDelayMs echoes in spaced pieces", async () => {
  await using server = serve({ port: 0, sliceBytes: 10, sliceDelayMs: 100 });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = bytes("0123456789abcdefghijABCDEFGHIJxyz!?"); // 35 bytes, 4 pieces
  const { back, reads, totalMs } = await exchange(conn, data);
  assertBytes(back, data);
  assert.ok(totalMs >= 290, `took ${totalMs} ms for 3 pauses of 100 ms`);
  assert.ok(reads.length >= 2, `read in ${reads}`);
  // Whatever the reads merged, they end on piece boundaries (10, 20, 30, 35).
  let at = 0;
  for (const n of reads) {
    at += n;
    assert.ok(at % 10 === 0 || at === 35, `a read ended at ${at}: ${reads}`);
  }
});

Deno.test("serve() with sliceDelayMs alone spaces whole echoes", async () => {
  // Without sliceBytes each echo is one write; two writes are ≥ 200 ms apart.
  await using server = serve({ port: 0, mode: "line", sliceDelayMs: 200 });
  using conn = await Deno.connect({ port: server.addr.port });
  assert.deepEqual(await roundTrip(conn, bytes("a\n")), bytes("a\n"));
  const start = performance.now();
  assert.deepEqual(await roundTrip(conn, bytes("b\n")), bytes("b\n"));
  const took = performance.now() - start;
  assert.ok(took >= 180, `second echo after ${took} ms`);
});

Deno.test("serve() with bandwidthKiBps caps the echo rate", async () => {
  await using server = serve({ port: 0, bandwidthKiBps: 64 });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = randomBytes(64 * 1024, 5);
  const { back, totalMs } = await exchange(conn, data);
  assertBytes(back, data);
  // 64 KiB at 64 KiB/s, less the first burst (50 ms' worth): ≥ 0.95 s.
  assert.ok(totalMs >= 900, `64 KiB in ${totalMs} ms`);
  assert.ok(totalMs < 10_000, `64 KiB in ${totalMs} ms`);
});

Deno.test("serve() with closeAfterBytes echoes exactly that many bytes, then closes", async (t) => {
  for (const mode of ["raw", "line"] as const) {
    await t.step(mode, async () => {
      using events = new ConnEvents();
      await using logs = await captureLogs();
      await using server = events.serve({ mode, closeAfterBytes: 1000 });
      using conn = await Deno.connect({ port: server.addr.port });
      // 300-byte lines: the cut falls inside the fourth.
      const line = new Uint8Array(300).fill(0x61);
      line[299] = 10;
      const data = new Uint8Array(5000);
      for (let at = 0; at < 4800; at += 300) data.set(line, at);
      const { back } = await exchange(conn, data, { chunk: 700 });
      assertBytes(back, data.subarray(0, 1000));
      const closed = await events.find("closed");
      assert.equal(closed.reason, "echoed 1000 bytes (close-after)");
      assert.equal(closed.bytesOut, 1000);
      assert.equal(server.stats.bytesOut, 1000);
      // Logged before the closed event.
      assert.ok(
        logs.lines().some((m) =>
          m.endsWith("] closing: echoed 1000 bytes (close-after)")
        ),
      );
    });
  }
});

Deno.test("serve() with closeAfterBytes drops what comes once its bytes are queued: no line framed, no max-line, one close reason", async (t) => {
  /**
   * A line-mode server that echoes 4 bytes and hangs up; `talk` is the
   * client, and returns what came back. Then: closed for close-after alone,
   * every byte counted in, and no log line matches `never`.
   */
  const step = (
    name: string,
    options: ServeOptions,
    talk: (conn: Deno.Conn, logs: Logs) => Promise<Uint8Array>,
    bytesIn: number,
    never: RegExp,
  ) =>
    t.step(name, async () => {
      using events = new ConnEvents();
      await using logs = await captureLogs();
      await using server = events.serve({
        mode: "line",
        closeAfterBytes: 4,
        maxLineBytes: 16,
        ...options,
      });
      using conn = await Deno.connect({ port: server.addr.port });
      using _dog = watchdog(20_000, () => closeQuietly(conn));
      assert.deepEqual(await talk(conn, logs), bytes("abcd"));
      const closed = await events.find("closed");
      assert.equal(closed.reason, "echoed 4 bytes (close-after)");
      assert.equal(closed.bytesIn, bytesIn);
      assert.equal(closed.bytesOut, 4);
      const lines = logs.lines();
      assert.ok(!lines.some((m) => never.test(m)), lines.join("\n"));
    });
  const long = `${"x".repeat(100)}\n`; // over max-line
  await step(
    "a long line after the hang-up",
    {},
    async (conn) => {
      await writeAll(conn, bytes("abcd\n"));
      const back = await readAll(conn); // up to the server's FIN
      await writeAll(conn, bytes(long));
      await conn.closeWrite();
      return back;
    },
    106,
    /max-line/,
  );
  // With a delay the long line is in before the echo is out and the FIN
  // sent: close-after's 4 bytes are queued, so it is input to drop all the
  // same.
  await step(
    "a long line before the delayed hang-up",
    {
      delayMs: 200,
    },
    async (conn) => {
      await writeAll(conn, bytes(`abcd\n${long}`));
      await conn.closeWrite();
      return await readAll(conn);
    },
    106,
    /max-line/,
  );
  await step(
    "short lines after the hang-up",
    {},
    async (conn, logs) => {
      await writeAll(conn, bytes("abcd\n"));
      await logs.next(/req: "abcd\\n"/);
      await writeAll(conn, bytes("one\n")); // read alone: framed, then dropped
      await logs.next(/req: "one\\n"/);
      await writeAll(conn, bytes("two\n")); // dropped unframed
      await conn.closeWrite();
      return await readAll(conn);
    },
    13,
    /req: "two/,
  );
});

Deno.test("serve() with closeAfterBytes hangs up with a FIN: a client still sending is not reset", async () => {
  using events = new ConnEvents();
  await using server = events.serve({ closeAfterBytes: 1000 });
  using conn = await Deno.connect({ port: server.addr.port });
  using _dog = watchdog(20_000, () => closeQuietly(conn));
  const data = randomBytes(1 << 20, 12);
  let sendError: unknown;
  const sending = (async () => {
    for (let at = 0; at < data.length; at += 64 * 1024) {
      await writeAll(conn, data.subarray(at, at + 64 * 1024));
    }
    await conn.closeWrite();
  })().catch((err) => sendError = err);
  const back = await readAll(conn);
  await sending;
  assert.equal(sendError, undefined, "the client's sending was cut off");
  assertBytes(back, data.subarray(0, 1000));
  const closed = await events.find("closed");
  assert.equal(closed.bytesIn, data.length); // read and dropped after the cut
  assert.equal(closed.bytesOut, 1000);
});

Deno.test("serve() with faulty and seed applies faults to the same connections again", async () => {
  // close-after 1 marks a faulty connection: it gets 1 of its 2 bytes back.
  const pattern = async (seed: number) => {
    await using server = serve({
      port: 0,
      closeAfterBytes: 1,
      faulty: 0.5,
      seed,
    });
    const lengths: number[] = [];
    for (let i = 0; i < 16; i++) {
      using conn = await Deno.connect({ port: server.addr.port });
      lengths.push((await exchange(conn, bytes("ab"))).back.length);
    }
    return lengths;
  };
  const predicted = (seed: number) => {
    const plan = FaultPlan.from({ closeAfterBytes: 1, faulty: 0.5, seed })!;
    return Array.from({ length: 16 }, () => plan.next() ? 1 : 2);
  };
  const first = await pattern(1234);
  assert.deepEqual(first, predicted(1234));
  assert.ok(first.includes(1) && first.includes(2), `${first}`);
  assert.deepEqual(await pattern(1234), first);
  assert.deepEqual(await pattern(99), predicted(99));
});

Deno.test("serve() in discard mode reads everything, answers nothing, closes at EOF", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({
    mode: "discard",
    delayMs: 1000, // faults do not apply: nothing is echoed
  });
  assert.ok(!logs.lines().some((m) => m.startsWith("faults:")));
  using conn = await Deno.connect({ port: server.addr.port });
  const { back } = await exchange(conn, randomBytes(100 * 1024, 6));
  assert.equal(back.length, 0);
  const closed = await events.find("closed");
  assert.equal(closed.bytesIn, 100 * 1024);
  assert.equal(closed.bytesOut, 0);
  assert.equal(closed.reason, undefined);
  assert.ok(
    logs.lines().some((m) =>
      /offline \(\d+\.\d\d s, 102400 bytes in, 0 bytes out\)$/.test(m)
    ),
  );
});

// ---- what still holds under faults ------------------------------------------

Deno.test("serve() with delayMs stops reading a client that does not read (backpressure)", async () => {
  using events = new ConnEvents();
  // The idle timeout closes the conn once the server's write is blocked on a
  // client that does not read and the server has stopped reading in turn;
  // it is shorter than the delay, which must not count as idleness.
  await using server = events.serve({ delayMs: 200, idleTimeoutMs: 100 });
  const { bytesIn, bytesOut } = await streamUntilStalled(
    server.addr.port,
    events,
  );
  // Held back: 256 KiB queued, plus one read of up to 256 KiB.
  assert.ok(
    bytesIn - bytesOut <= 512 * 1024,
    `server held ${bytesIn - bytesOut} bytes`,
  );
  assert.ok(bytesIn < 32 << 20, `${bytesIn} read`);
});

Deno.test("serve() does not count a fault's delay as the client's idleness", async () => {
  using events = new ConnEvents();
  await using server = events.serve({ delayMs: 500, idleTimeoutMs: 100 });
  using conn = await Deno.connect({ port: server.addr.port });
  const start = performance.now();
  assert.deepEqual(await roundTrip(conn, bytes("slow")), bytes("slow"));
  assert.ok(performance.now() - start >= 480);
  assert.deepEqual(events.events.map((e) => e.state), ["open"]);
  // Once the echo is out, a silent client is idle again.
  const closed = await events.find("closed");
  assert.equal(closed.reason, "idle for 0.10 s");
  assert.equal(closed.bytesOut, 4);
});

Deno.test("Server.close() under a long delay ends within the shutdown timeout", async () => {
  using events = new ConnEvents();
  const server = events.serve({ delayMs: 60_000, shutdownTimeoutMs: 100 });
  using conn = await Deno.connect({ port: server.addr.port });
  await events.find("open");
  await writeAll(conn, bytes("x"));
  const start = performance.now();
  await server.close();
  const took = performance.now() - start;
  assert.ok(took < 5000, `close() took ${took} ms`);
  const closed = await events.find("closed");
  assert.equal(closed.reason, "server shutting down");
  assert.equal(closed.bytesIn, 1); // read during the grace period
  assert.equal(closed.bytesOut, 0);
  assert.equal(await conn.read(new Uint8Array(1)), null);
});

Deno.test("serve() in line mode with faults echoes the lines before a line too long", async () => {
  using events = new ConnEvents();
  await using server = events.serve({
    mode: "line",
    maxLineBytes: 10,
    delayMs: 50,
  });
  using conn = await Deno.connect({ port: server.addr.port });
  const { back } = await exchange(
    conn,
    bytes("one\ntwo\nthis line is too long\n"),
  );
  assert.deepEqual(back, bytes("one\ntwo\n"));
  const closed = await events.find("closed");
  assert.equal(closed.reason, "line longer than 10 bytes (max-line)");
});

/** Random fault settings small enough for a test run to take milliseconds. */
const faultSettings: fc.Arbitrary<ServeOptions> = fc.record({
  delayMs: fc.integer({ min: 0, max: 20 }),
  jitterMs: fc.integer({ min: 0, max: 20 }),
  sliceBytes: fc.oneof(fc.constant(0), fc.integer({ min: 500, max: 5000 })),
  sliceDelayMs: fc.integer({ min: 0, max: 2 }),
  bandwidthKiBps: fc.oneof(
    fc.constant(0),
    fc.integer({ min: 1024, max: 8192 }),
  ),
  closeAfterBytes: fc.oneof(
    fc.constant(0),
    fc.integer({ min: 1, max: 40_000 }),
  ),
  faulty: fc.oneof(fc.constant(1), fc.double({ min: 0, max: 1, noNaN: true })),
  seed: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
});

Deno.test("serve() with random faults echoes exact bytes and counts", async () => {
  await fc.assert(
    fc.asyncProperty(
      faultSettings,
      fc.constantFrom("raw" as const, "line" as const),
      fc.integer({ min: 0, max: 30_000 }),
      fc.integer({ min: 1, max: 20_000 }),
      fc.integer({ min: 1, max: 1000 }),
      async (faults, mode, length, chunk, seed) => {
        using events = new ConnEvents();
        await using server = events.serve({ mode, ...faults });
        const isFaulty = FaultPlan.from(faults)?.next() !== undefined;
        const cut = isFaulty && faults.closeAfterBytes! > 0
          ? Math.min(length, faults.closeAfterBytes!)
          : length;
        // Lines of random lengths in line mode; raw bytes otherwise.
        const data = randomBytes(length, seed);
        if (mode === "line") data.forEach((b, i) => b < 8 && (data[i] = 10));
        using conn = await Deno.connect({ port: server.addr.port });
        const { back } = await exchange(conn, data, { chunk });
        assertBytes(back, data.subarray(0, cut));
        const closed = await events.find("closed");
        assert.equal(closed.bytesIn, length);
        assert.equal(closed.bytesOut, cut);
      },
    ),
    // A failing property stops shrinking after 30 s and fails with what it has.
    {
      numRuns: 30,
      interruptAfterTimeLimit: 30_000,
      markInterruptAsFailure: true,
    },
  );
});

const FAULTS: ServeOptions = {
  delayMs: 20,
  jitterMs: 10,
  sliceBytes: 1000,
  sliceDelayMs: 1,
  bandwidthKiBps: 2048,
};

Deno.test("serve() with TLS keeps faults byte-exact, close_notify and close-after", async (t) => {
  const connect = (port: number) =>
    Deno.connectTls({ hostname: "localhost", port, caCerts: [CA] });
  await t.step("faults", async () => {
    await using server = serve({ port: 0, ...TLS, ...FAULTS });
    using conn = await connect(server.addr.port);
    const data = randomBytes(50_000, 8);
    assertBytes((await exchange(conn, data)).back, data);
  });
  await t.step("close-after", async () => {
    await using server = serve({ port: 0, ...TLS, closeAfterBytes: 777 });
    using conn = await connect(server.addr.port);
    const data = randomBytes(50_000, 9);
    assertBytes((await exchange(conn, data)).back, data.subarray(0, 777));
  });
});

Deno.test({
  name: "serve() on a Unix socket keeps faults byte-exact, and close-after",
  ignore: !posix,
  async fn() {
    const dir = Deno.makeTempDirSync();
    const path = `${dir}/faults.sock`;
    try {
      for (const extra of [{}, { closeAfterBytes: 555 }]) {
        await using _server = serve({
          path,
          mode: "line",
          ...FAULTS,
          ...extra,
        });
        using conn = await Deno.connect({ transport: "unix", path });
        const data = bytes("a unix line\n".repeat(3000));
        const cut = extra.closeAfterBytes ?? data.length;
        assertBytes((await exchange(conn, data)).back, data.subarray(0, cut));
      }
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

Deno.test("serve() logs one faults: line before listening on, none without faults", async () => {
  await using logs = await captureLogs();
  {
    await using _server = serve({
      port: 0,
      delayMs: 100,
      jitterMs: 20,
      seed: 42,
    });
  }
  {
    await using _server = serve({ port: 0, faulty: 0.5, seed: 3 });
  }
  const messages = logs.lines();
  const faults = messages.filter((m) => m.startsWith("faults:"));
  assert.deepEqual(faults, ["faults: delay 100 ms, jitter 20 ms, seed 42"]);
  assert.match(messages[messages.indexOf(faults[0]) + 1], /^listening on /);
});

Deno.test("FaultPlan.from() stream 0 draws as serve() does; other streams draw their own", () => {
  const options = { closeAfterBytes: 1, faulty: 0.5, seed: 77 };
  const draws = (plan: FaultPlan) =>
    Array.from({ length: 64 }, () => plan.next() !== undefined);
  const library = draws(FaultPlan.from(options)!);
  assert.deepEqual(draws(FaultPlan.from(options, 0)!), library);
  const one = draws(FaultPlan.from(options, 1)!);
  assert.notDeepEqual(one, library);
  assert.deepEqual(draws(FaultPlan.from(options, 1)!), one); // replayed
  assert.notDeepEqual(draws(FaultPlan.from(options, 2)!), one);
});

// ---- the CLI -----------------------------------------------------------------

/**
 * Which of `n` connections, one after another, `server` treated as faulty
 * (with `--close-after 1`, a faulty one gets 1 of its 2 bytes back).
 */
async function faultyPattern(port: number, n: number): Promise<boolean[]> {
  const faulty: boolean[] = [];
  for (let i = 0; i < n; i++) {
    using conn = await Deno.connect({ port });
    faulty.push((await exchange(conn, bytes("ab"))).back.length === 1);
  }
  return faulty;
}

Deno.test("tcpecho server (one worker) applies faults to the connections serve() would with the seed it logs", async () => {
  // No --seed: the main isolate draws one, says it, and the worker uses it.
  await using server = await ServerProcess.start(
    argv("--port 0 --close-after 1 --faulty 0.5"),
  );
  const line = server.lines.find((l) => l.includes("faults:"))!;
  const seed = Number(/ seed (\d+)$/.exec(line)![1]);
  const plan = FaultPlan.from({ closeAfterBytes: 1, faulty: 0.5, seed })!;
  const predicted = Array.from({ length: 16 }, () => plan.next() !== undefined);
  assert.deepEqual(await faultyPattern(server.port, 16), predicted);
});

Deno.test({
  name:
    "tcpecho server --workers 2: one faults: line with one seed; each worker draws its own",
  ignore: Deno.build.os !== "linux",
  async fn() {
    {
      // No --seed: drawn once, by the main isolate, and said once.
      await using server = await ServerProcess.start(
        argv("--port 0 --workers 2 --delay 1"),
      );
      const faults = server.lines.filter((l) => l.includes("faults:"));
      assert.equal(faults.length, 1, server.lines.join("\n"));
      assert.match(faults[0], / INF faults: delay 1 ms, seed \d+$/);
    }
    // A seed whose sequence 0 (worker 1's) makes none of the first 40
    // connections faulty, while sequence 1 (worker 2's) makes its first one
    // faulty: a faulty connection means worker 2 drew from its own sequence.
    const n = 40;
    const options = (seed: number) => ({
      closeAfterBytes: 1,
      faulty: 0.05,
      seed,
    });
    let seed = 0;
    for (;; seed++) {
      const zero = FaultPlan.from(options(seed), 0)!;
      const one = FaultPlan.from(options(seed), 1)!;
      const none = Array.from({ length: n }, () => zero.next())
        .every((f) => f === undefined);
      if (none && one.next() !== undefined) break;
    }
    await using server = await ServerProcess.start(
      argv(`--port 0 --workers 2 --close-after 1 --faulty 0.05 --seed ${seed}`),
    );
    assert.deepEqual(
      server.lines.filter((l) => l.includes("faults:")).map((l) => l.slice(24)),
      [`INF faults: close-after 1 bytes, faulty 0.05, seed ${seed}`],
    );
    // One by one from new ports: both workers get some (all 40 on one: a
    // chance in 500 billion).
    const faulty = await faultyPattern(server.port, n);
    assert.ok(faulty.includes(true), "worker 2 drew worker 1's sequence");
  },
});

Deno.test("tcpecho server --delay holds the echo back and says so with the seed", async () => {
  await using server = await ServerProcess.start(argv("--port 0 --delay 300"));
  const line = await server.waitFor(/faults:/);
  assert.match(line, / INF faults: delay 300 ms, seed \d+$/);
  using conn = await Deno.connect({ port: server.port });
  const { back, firstByteMs } = await exchange(conn, bytes("hello\n"));
  assert.deepEqual(back, bytes("hello\n"));
  assert.ok(firstByteMs >= 280, `first byte after ${firstByteMs} ms`);
});

Deno.test("tcpecho server --close-after --seed logs the close and exact counts", async () => {
  await using server = await ServerProcess.start(
    argv("--port 0 --close-after 5 --slice 2 --seed 42"),
  );
  assert.match(
    await server.waitFor(/faults:/),
    / INF faults: slice 2 bytes, close-after 5 bytes, seed 42$/,
  );
  using conn = await Deno.connect({ port: server.port });
  const { back } = await exchange(conn, bytes("hello world\n"));
  assert.deepEqual(back, bytes("hello"));
  await server.waitFor(/closing: echoed 5 bytes \(close-after\)$/);
  await server.waitFor(/offline \(\d+\.\d\d s, 12 bytes in, 5 bytes out\)$/);
});

Deno.test("tcpecho server fault options take units: 64k, 1M, 250ms, 2s", async (t) => {
  await t.step("TCP", async () => {
    await using server = await ServerProcess.start(
      argv(
        "--port 0 --delay 0.25s --jitter 2ms --slice 1k --slice-delay 0.01s --close-after 2k --seed 7",
      ),
    );
    assert.match(
      await server.waitFor(/faults:/),
      new RegExp(
        " INF faults: delay 250 ms, jitter 2 ms, slice 1024 bytes, " +
          "slice-delay 10 ms, close-after 2048 bytes, seed 7$",
      ),
    );
    using conn = await Deno.connect({ port: server.port });
    const sent = randomBytes(5000, 3);
    const { back, firstByteMs } = await exchange(conn, sent);
    assertBytes(back, sent.subarray(0, 2048));
    assert.ok(firstByteMs >= 230, `first byte after ${firstByteMs} ms`);
  });
  await t.step("TCP, the largest units", async () => {
    await using server = await ServerProcess.start(
      argv(
        "--port 0 --slice 1M --close-after 1G --slice-delay 1.5m --delay 1h",
      ),
    );
    assert.match(
      await server.waitFor(/faults:/),
      / INF faults: delay 3600000 ms, slice 1048576 bytes, slice-delay 90000 ms, close-after 1073741824 bytes, seed \d+$/,
    );
  });
  await t.step("UDP", async () => {
    await using server = await ServerProcess.start(
      argv("--port 0 --udp --delay 1s --jitter 500ms --seed 7"),
    );
    assert.match(
      await server.waitFor(/faults:/),
      / INF faults: delay 1000 ms, jitter 500 ms, seed 7$/,
    );
  });
});

Deno.test("tcpecho server --mode discard logs bytes in, none out", async () => {
  await using server = await ServerProcess.start(
    argv("--port 0 --mode discard"),
  );
  using conn = await Deno.connect({ port: server.port });
  const { back } = await exchange(conn, randomBytes(5000, 1));
  assert.equal(back.length, 0);
  await server.waitFor(/offline \(\d+\.\d\d s, 5000 bytes in, 0 bytes out\)$/);
  assert.ok(!server.lines.some((l) => l.includes("faults:")));
});

/**
 * `tcpecho server ARGS` to its end, killed after 20 s (a usage error that
 * is not caught starts a server that would run on).
 */
async function runServer(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = cli(["server", ...args]).spawn();
  using _dog = watchdog(20_000, () => child.kill("SIGKILL"));
  const { code, stdout, stderr } = await child.output();
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}

Deno.test("tcpecho server fault usage errors exit 2", async (t) => {
  const cases: [string[], RegExp][] = [
    [["--faulty", "2"], /--faulty takes a fraction from 0 to 1, not "2"/],
    [["--faulty", "-0.5"], /faulty/],
    [["--delay", "-5"], /delay/],
    [
      ["--delay", "1.5"],
      /--delay takes whole milliseconds from 0 to 86400000, such as 250, 250ms or 2s, not "1.5"/,
    ],
    [["--jitter", "abc"], /--jitter takes whole milliseconds/],
    [["--slice-delay", "0.5ms"], /--slice-delay takes whole milliseconds/],
    [["--delay", "25h"], /--delay takes whole milliseconds from 0 to 86400000/],
    [["--slice", "1.3"], /--slice takes a size from 0 to 1073741824 bytes/],
    [["--slice", "2G"], /--slice takes a size from 0 to 1073741824 bytes/],
    [["--bandwidth", "-1"], /bandwidth/],
    [
      ["--close-after", "x"],
      /--close-after takes a size ≥ 0 bytes, such as 4096, 64k or 1M, not "x"/,
    ],
    [
      ["--udp", "--delay", "25h"],
      /--delay takes whole milliseconds from 0 to 86400000/,
    ],
    [
      ["--seed", "4294967296"],
      /--seed takes a whole number from 0 to 4294967295/,
    ],
    [
      ["--mode", "discard", "--delay", "5"],
      /--delay does nothing with --mode discard \(nothing is echoed\)/,
    ],
  ];
  for (const [args, message] of cases) {
    await t.step(args.join(" "), async () => {
      const { code, stdout, stderr } = await runServer(args);
      assert.equal(code, 2);
      assert.equal(stdout, "");
      assert.match(stderr, /^error: /);
      assert.match(stderr, message);
      assert.match(stderr, /\nusage: tcpecho server /);
    });
  }
});

Deno.test("tcpecho server --help lists the fault options with their defaults", async () => {
  const { code, stdout } = await runServer(["--help"]);
  assert.equal(code, 0);
  for (
    const row of [
      /--mode raw\|line\|discard /,
      /--delay MS +fault: .*\(default 0\)/,
      /--jitter MS +fault: .*\(default 0\)/,
      /--slice BYTES +fault: .*\(default 0\)/,
      /--slice-delay MS +fault: .*\(default 0\)/,
      /--bandwidth KIB +fault: .*\(default 0\)/,
      /--close-after BYTES +fault: .*\(default 0\)/,
      /--faulty FRACTION +.*\(default 1\)/,
      /--seed N +.*\(default: random; logged at start\)/,
    ]
  ) assert.match(stdout, row);
});

/**
 * One byte at a time over `conn`, each sent once the last came back: the
 * milliseconds of each round trip.
 */
async function roundTripTimes(conn: Deno.Conn, n: number): Promise<number[]> {
  const times = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    assert.deepEqual(await roundTrip(conn, bytes("j")), bytes("j"));
    times.push(performance.now() - start);
  }
  return times;
}

Deno.test("tcpecho server --jitter --seed delays each echo by the seed's draws, again with the same seed", async () => {
  // Seed 147's first connection draws 235, 201, 218 and 241 ms (delay
  // included): each echo takes at least its draw. Unseeded, each draw would
  // be under 200 ms three times in four.
  const args = ["--delay", "50", "--jitter", "200", "--seed", "147"];
  const plan = FaultPlan.from({ delayMs: 50, jitterMs: 200, seed: 147 })!;
  const faults = plan.next()!;
  const draws = Array.from({ length: 4 }, () => faults.nextDelayMs());
  assert.deepEqual(draws, [235, 201, 218, 241]);
  const run = async () => {
    await using server = await ServerProcess.start(["--port", "0", ...args]);
    assert.match(
      await server.waitFor(/faults:/),
      / INF faults: delay 50 ms, jitter 200 ms, seed 147$/,
    );
    using conn = await Deno.connect({ port: server.port });
    using _dog = watchdog(20_000, () => closeQuietly(conn));
    return await roundTripTimes(conn, draws.length);
  };
  // Two servers with the same seed, side by side.
  for (const times of await Promise.all([run(), run()])) {
    times.forEach((ms, i) =>
      assert.ok(ms >= draws[i] - 2, `echo ${i}: ${ms} ms, drawn ${draws[i]}`)
    );
  }
});

Deno.test("tcpecho server --max-conns and --max-conns-per-ip hold while --delay holds echoes", async (t) => {
  for (
    const [limit, reason] of [
      ["--max-conns", "too many connections (max-conns 1)"],
      ["--max-conns-per-ip", "too many connections (max-conns-per-ip 1)"],
    ]
  ) {
    await t.step(limit, async () => {
      await using server = await ServerProcess.start([
        "--port",
        "0",
        limit,
        "1",
        "--delay",
        "200",
      ]);
      using first = await Deno.connect({ port: server.port });
      const start = performance.now();
      await writeAll(first, bytes("held"));
      // While its echo is held back, a second connection is refused: closed
      // (or reset) with no echo, never served after the delay.
      using second = await Deno.connect({ port: server.port });
      using dog = watchdog(20_000, () => {
        closeQuietly(first);
        closeQuietly(second);
      });
      await writeAll(second, bytes("x")).catch(() => {}); // may be reset
      const got = await second.read(new Uint8Array(16)).catch((err) => {
        if (dog.fired) throw err;
        return null; // reset: refused with our byte unread
      });
      assert.equal(got, null, "the second connection was served");
      assert.match(
        await server.waitFor(/ refused: /),
        new RegExp(
          ` WRN \\[127\\.0\\.0\\.1:\\d+\\] refused: ${
            reason.replace(/[()]/g, "\\$&")
          }$`,
        ),
      );
      assert.deepEqual(await readExactly(first, 4), bytes("held"));
      const ms = performance.now() - start;
      assert.ok(ms >= 195, `echo after ${ms} ms`); // the delay was on
    });
  }
});
