import assert from "node:assert/strict";
import { removeStaleSocket, serve } from "./server.ts";
import {
  CA,
  captureLogs,
  ConnEvents,
  echoAll,
  hasIpv6,
  peerOf,
  randomBytes,
  readAll,
  render,
  roundTrip,
  streamUntilStalled,
  TLS,
  writeAll,
} from "./testing.ts";

const encoder = new TextEncoder();

/** Sends a byte: true if the server closed the conn instead of echoing. */
async function closedByServer(conn: Deno.Conn): Promise<boolean> {
  try {
    await conn.write(new Uint8Array([1]));
    return await conn.read(new Uint8Array(1)) === null;
  } catch (err) {
    if (err instanceof Deno.errors.ConnectionReset) return true;
    throw err;
  }
}
const bytes = (text: string) => encoder.encode(text);
const text = (data: Uint8Array) => new TextDecoder().decode(data);

Deno.test("serve() echoes 1 MiB of random binary unchanged", async () => {
  await using server = serve({ port: 0 });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = randomBytes(1 << 20, 7);
  assert.deepEqual(await echoAll(conn, data), data);
});

Deno.test("serve() echoes NUL, invalid UTF-8 and \\r\\n unchanged", async () => {
  await using server = serve({ port: 0 });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = new Uint8Array([0, 0xff, 0xfe, 0xc3, 13, 10, 0x80, 0, 10, 13]);
  assert.deepEqual(await echoAll(conn, data), data);
});

Deno.test("serve() gives 200 concurrent clients each its own data", async () => {
  await using server = serve({ port: 0 });
  await Promise.all(
    Array.from({ length: 200 }, async (_, i) => {
      using conn = await Deno.connect({ port: server.addr.port });
      const data = randomBytes(4096 + i, i + 1);
      assert.deepEqual(await echoAll(conn, data), data);
    }),
  );
  assert.equal(server.stats.served, 200);
});

Deno.test("serve() echoes a stream sent one byte at a time", async () => {
  await using server = serve({ port: 0 });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = randomBytes(300, 3);
  for (let i = 0; i < data.length; i++) {
    const one = data.subarray(i, i + 1);
    assert.deepEqual(await roundTrip(conn, one), one);
  }
});

Deno.test("serve() finishes echoing 256 KiB after the client's half-close", async () => {
  await using server = serve({ port: 0 });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = randomBytes(256 * 1024, 9);
  await writeAll(conn, data);
  await conn.closeWrite(); // before reading a single byte back
  assert.deepEqual(await readAll(conn), data);
});

Deno.test("serve() keeps a UTF-8 character split across writes intact", async (t) => {
  const data = bytes("née ünïcødé ✓ 😀\n");
  for (const mode of ["raw", "line"] as const) {
    await t.step(mode, async () => {
      await using logs = await captureLogs();
      await using server = serve({ port: 0, mode });
      using conn = await Deno.connect({ port: server.addr.port });
      const emoji = data.indexOf(0xf0);
      const done = readAll(conn);
      await writeAll(conn, data.subarray(0, emoji + 2)); // half the emoji
      await writeAll(conn, data.subarray(emoji + 2));
      await conn.closeWrite();
      assert.deepEqual(await done, data);
      if (mode === "line") {
        const req = logs.lines().find((m) => m.includes("req:"));
        assert.match(req!, /✓ 😀\\n/);
      }
    });
  }
});

Deno.test("serve() in line mode answers a split line once, only after its \\n", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({ mode: "line", idleTimeoutMs: 50 });
  const port = server.addr.port;
  // Without its "\n" a line is held, never answered: the server reads it
  // all, then stays silent until the idle timeout closes the connection.
  {
    using conn = await Deno.connect({ port });
    const peer = peerOf(conn);
    await writeAll(conn, bytes("hel"));
    await writeAll(conn, bytes("lo"));
    const closed = await events.find("closed", (e) => e.peer === peer);
    assert.deepEqual(
      [closed.reason, closed.bytesIn, closed.bytesOut],
      ["idle for 0.05 s", 5, 0],
    );
    assert.equal((await readAll(conn)).length, 0, "echoed before its \\n");
  }
  // With its "\n" it comes back once, whole.
  using conn = await Deno.connect({ port });
  const peer = peerOf(conn);
  for (const part of ["hel", "lo", "\n"]) await writeAll(conn, bytes(part));
  await conn.closeWrite();
  assert.equal(text(await readAll(conn)), "hello\n");
  const closed = await events.find("closed", (e) => e.peer === peer);
  assert.deepEqual([closed.reason, closed.bytesOut], [undefined, 6]);
  const reqs = logs.lines().filter((m) => m.startsWith(`[${peer}] req:`));
  assert.deepEqual(reqs, [`[${peer}] req: "hello\\n", resp: "hello\\n"`]);
});

Deno.test("serve() in line mode answers each of 3 lines in one write", async () => {
  await using logs = await captureLogs();
  await using server = serve({ port: 0, mode: "line" });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = bytes("one\ntwo\r\nthree\n");
  assert.deepEqual(await echoAll(conn, data), data);
  const reqs = logs.lines().filter((m) => m.includes("req:"));
  assert.deepEqual(reqs.map((m) => m.replace(/^.*req: /, "")), [
    `"one\\n", resp: "one\\n"`,
    `"two\\r\\n", resp: "two\\r\\n"`,
    `"three\\n", resp: "three\\n"`,
  ]);
});

Deno.test("serve() in line mode echoes the bytes after the last \\n at EOF", async () => {
  await using server = serve({ port: 0, mode: "line" });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = bytes("whole\npart without newline");
  assert.deepEqual(await echoAll(conn, data), data);
});

Deno.test("serve() in line mode closes only the connection whose line is too long", async (t) => {
  for (const newline of [false, true]) {
    await t.step(newline ? "terminated" : "unterminated", async () => {
      using events = new ConnEvents();
      await using logs = await captureLogs();
      await using server = events.serve({ mode: "line", maxLineBytes: 100 });
      using good = await Deno.connect({ port: server.addr.port });
      using bad = await Deno.connect({ port: server.addr.port });
      const peer = peerOf(bad);
      const line = "ok\n" + "x".repeat(101) + (newline ? "\n" : "");
      await writeAll(bad, bytes(line));
      await bad.closeWrite(); // a broken server would echo it all at EOF
      // The whole line before it comes back, the long one does not.
      assert.equal(text(await readAll(bad)), "ok\n");
      const closed = await events.find("closed", (e) => e.peer === peer);
      const reason = "line longer than 100 bytes (max-line)";
      assert.equal(closed.reason, reason);
      // ... with a warning.
      assert.ok(
        logs.lines("warning").includes(`[${peer}] closing: ${reason}`),
      );
      // Exactly at the limit is fine, and the other client is still served.
      const limit = bytes("y".repeat(100) + "\n");
      assert.deepEqual(await roundTrip(good, limit), limit);
    });
  }
});

Deno.test("serve() with maxConns closes connections past the limit", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({ maxConns: 2 });
  const port = server.addr.port;
  using a = await Deno.connect({ port });
  using b = await Deno.connect({ port });
  await roundTrip(a, bytes("a"));
  await roundTrip(b, bytes("b"));
  using c = await Deno.connect({ port });
  assert.equal(await closedByServer(c), true);
  const refused = await events.find("refused", (e) => e.peer === peerOf(c));
  const reason = "too many connections (max-conns 2)";
  assert.equal(refused.reason, reason);
  assert.ok(
    logs.lines("warning").includes(`[${peerOf(c)}] refused: ${reason}`),
  );
  assert.equal(server.stats.refused, 1);
  assert.equal(server.stats.active, 2);
  const bPeer = peerOf(b);
  b.close();
  await events.find("closed", (e) => e.peer === bPeer);
  assert.equal(server.stats.active, 1); // b's slot is free again
  using d = await Deno.connect({ port });
  assert.deepEqual(await roundTrip(d, bytes("d")), bytes("d"));
  assert.equal(server.stats.active, 2);
  assert.equal(server.stats.refused, 1);
});

Deno.test("serve() with maxConnsPerIp closes one address's extra connections", async () => {
  await using server = serve({ port: 0, maxConnsPerIp: 1 });
  using a = await Deno.connect({ port: server.addr.port });
  await roundTrip(a, bytes("a"));
  using b = await Deno.connect({ port: server.addr.port });
  assert.equal(await closedByServer(b), true);
  assert.deepEqual(await roundTrip(a, bytes("still")), bytes("still"));
});

Deno.test("serve() with idleTimeoutMs closes a silent connection, not a busy one", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  await using server = events.serve({ idleTimeoutMs: 40 });
  using idle = await Deno.connect({ port: server.addr.port });
  using busy = await Deno.connect({ port: server.addr.port });
  const idlePeer = peerOf(idle);
  await roundTrip(idle, bytes("hi"));
  const closed = events.find("closed", (e) => e.peer === idlePeer, 5000);
  // Keep busy talking until idle is gone (or the wait gave up): it must
  // survive, though it started before idle went quiet.
  let gone = false;
  closed.then(() => gone = true, () => gone = true);
  while (!gone) await roundTrip(busy, bytes("."));
  const { reason, bytesIn, bytesOut } = await closed;
  assert.deepEqual([reason, bytesIn, bytesOut], ["idle for 0.04 s", 2, 2]);
  assert.equal(await idle.read(new Uint8Array(1)), null);
  assert.ok(
    logs.lines().includes(`[${idlePeer}] closing: idle for 0.04 s`),
  );
  assert.deepEqual(await roundTrip(busy, bytes("alive")), bytes("alive"));
  assert.equal(events.events.filter((e) => e.state === "closed").length, 1);
});

Deno.test("serve() survives 300 clients resetting, then serves a new one", async () => {
  await using logs = await captureLogs();
  await using server = serve({ port: 0 });
  const port = server.addr.port;
  for (let batch = 0; batch < 6; batch++) {
    await Promise.all(Array.from({ length: 50 }, async () => {
      const conn = await Deno.connect({ port });
      const sending = writeAll(conn, randomBytes(1 << 20, batch + 1));
      await conn.read(new Uint8Array(1)); // the server is echoing now
      conn.close(); // unread echo in our buffer: the kernel sends RST
      await sending.catch(() => {}); // interrupted by our own close
    }));
  }
  using conn = await Deno.connect({ port });
  assert.deepEqual(await roundTrip(conn, bytes("after")), bytes("after"));
  const messages = logs.lines();
  // The resets reached the server (as failed writes), at debug level only.
  assert.ok(messages.some((m) => /reset|broken pipe/i.test(m)));
  const errors = logs.records.filter((r) => r.level === "error");
  assert.deepEqual(errors.map(render), []);
});

Deno.test("serve() frees every descriptor after 1000 connections", {
  ignore: Deno.build.os !== "linux",
}, async () => {
  const fds = () => [...Deno.readDirSync("/proc/self/fd")].length;
  const before = fds();
  const server = serve({ port: 0 });
  const port = server.addr.port;
  for (let batch = 0; batch < 20; batch++) {
    await Promise.all(Array.from({ length: 50 }, async () => {
      using conn = await Deno.connect({ port });
      await echoAll(conn, bytes("x"));
    }));
  }
  await server.close();
  assert.equal(server.stats.served, 1000);
  assert.equal(fds(), before);
});

Deno.test("serve() stops reading a client that does not read (backpressure)", async () => {
  using events = new ConnEvents();
  // The idle timeout is the event to wait for: it fires once no byte has
  // moved for 100 ms, that is once the server's write is blocked on a client
  // that does not read, and the server has stopped reading it in turn.
  await using server = events.serve({ idleTimeoutMs: 100 });
  await streamUntilStalled(server.addr.port, events);
  const { bytesIn, bytesOut } = server.stats;
  // What the server holds is one read buffer at most, beyond what the kernel
  // buffers (loopback socket buffers are a few MiB each way).
  assert.ok(
    bytesIn - bytesOut <= 256 * 1024,
    `server holds ${bytesIn - bytesOut} bytes`,
  );
  assert.ok(bytesIn < 32 << 20, `${bytesIn} read`);
});

Deno.test("Server.close() waits for clients, then closes the stragglers", async () => {
  using events = new ConnEvents();
  await using logs = await captureLogs();
  const server = events.serve({ shutdownTimeoutMs: 50 });
  using conn = await Deno.connect({ port: server.addr.port });
  await roundTrip(conn, bytes("hi"));
  const closing = server.close();
  assert.equal(server.close(), closing); // idempotent
  // Still served during the grace period.
  assert.deepEqual(await roundTrip(conn, bytes("more")), bytes("more"));
  await closing;
  await server.finished;
  assert.equal(await conn.read(new Uint8Array(1)), null);
  // The connection was closed, by the server, before close() resolved.
  const closed = events.events.filter((e) => e.state === "closed");
  assert.deepEqual(closed.map((e) => e.reason), ["server shutting down"]);
  assert.ok(
    logs.lines().includes(
      "stopped: 1 connections served, 6 bytes echoed",
    ),
  );
  await assert.rejects(Deno.connect({ port: server.addr.port }));
});

Deno.test("serve() logs online and offline with exact counts and escaped payloads", async () => {
  await using logs = await captureLogs();
  await using server = serve({ port: 0, mode: "line" });
  using conn = await Deno.connect({ port: server.addr.port });
  const forged = "x\r2026-01-01 INF [1.2.3.4:5] offline\n\x1b[31mred\n";
  const data = bytes(forged);
  const offline = logs.next(/\] offline \(/);
  assert.deepEqual(await echoAll(conn, data), data);
  const line = await offline;
  const peer = `127.0.0.1:${(conn.localAddr as Deno.NetAddr).port}`;
  assert.match(
    line,
    new RegExp(
      `^\\[${peer}\\] offline \\(\\d+\\.\\d\\d s, ${data.length} bytes in, ${data.length} bytes out\\)$`,
    ),
  );
  const messages = logs.lines();
  assert.ok(messages.includes(`[${peer}] online`));
  const reqs = messages.filter((m) => m.includes("req:"));
  assert.equal(reqs.length, 2);
  for (const m of reqs) {
    assert.doesNotMatch(m, /[\r\n]/);
    assert.ok(!m.includes("\x1b"), m);
  }
  assert.match(reqs[0], /\\r2026-01-01 INF/);
  assert.match(reqs[1], /\\u001b\[31mred/);
});

Deno.test("serve() cuts long payloads in logs", async () => {
  await using logs = await captureLogs();
  await using server = serve({ port: 0, mode: "line" });
  using conn = await Deno.connect({ port: server.addr.port });
  const data = bytes("z".repeat(5000) + "\n");
  assert.deepEqual(await echoAll(conn, data), data);
  const req = logs.lines().find((m) => m.includes("req:"))!;
  assert.ok(req.length < 300, req);
  assert.match(req, /… \(5001 bytes\)/);
});

Deno.test("serve() refuses a port in use", () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  assert.throws(
    () => serve({ port: taken.addr.port }),
    (err: Error) =>
      err.message === `cannot listen on 127.0.0.1:${taken.addr.port}` &&
      err.cause instanceof Deno.errors.AddrInUse,
  );
});

// ---- transports: TLS, Unix sockets, IPv6 ----------------------------------

const posix = Deno.build.os !== "windows";

/**
 * A socket file left behind by a process that died without cleaning up
 * (closing a Deno listener removes its file; exiting does not).
 */
async function leaveStaleSocket(path: string): Promise<void> {
  const code = `Deno.listen({ transport: "unix", path: ${
    JSON.stringify(path)
  } }); Deno.exit(0);`;
  const { success } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
  }).output();
  assert.ok(success);
}

/** Reads until the server closes; a reset counts as closing too. */
async function drainUntilClosed(conn: Deno.Conn): Promise<void> {
  try {
    await readAll(conn);
  } catch (err) {
    if (!(err instanceof Deno.errors.ConnectionReset)) throw err;
  }
}

Deno.test("serve() with TLS echoes in raw and line mode", async (t) => {
  for (const mode of ["raw", "line"] as const) {
    await t.step(mode, async () => {
      await using server = serve({ port: 0, ...TLS, mode });
      using conn = await Deno.connectTls({
        hostname: "localhost",
        port: server.addr.port,
        caCerts: [CA],
      });
      const data = mode === "raw"
        ? randomBytes(200_000, 11)
        : bytes("tls line one\ntls line two\n");
      assert.deepEqual(await echoAll(conn, data), data);
    });
  }
});

Deno.test("serve() with TLS echoes 256 KiB after the client's close_notify", async () => {
  await using server = serve({ port: 0, ...TLS });
  using conn = await Deno.connectTls({
    hostname: "127.0.0.1",
    port: server.addr.port,
    caCerts: [CA],
  });
  const data = randomBytes(256 * 1024, 12);
  await writeAll(conn, data);
  await conn.closeWrite(); // TLS close_notify, then FIN
  assert.deepEqual(await readAll(conn), data);
});

Deno.test("serve() with TLS survives plaintext, garbage and a silent client", async () => {
  using events = new ConnEvents();
  await using server = events.serve({ ...TLS, handshakeTimeoutMs: 50 });
  const port = server.addr.port;
  /** Why the server closed `peer`'s connection. */
  const reason = async (peer: string) =>
    (await events.find("closed", (e) => e.peer === peer)).reason;
  // Plaintext where a ClientHello belongs.
  using plain = await Deno.connect({ port });
  await writeAll(plain, bytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  await drainUntilClosed(plain); // a TLS alert, then the close
  assert.match((await reason(peerOf(plain)))!, /^TLS handshake failed: /);
  // Random bytes.
  using garbage = await Deno.connect({ port });
  await writeAll(garbage, randomBytes(4096, 13));
  await drainUntilClosed(garbage);
  assert.match((await reason(peerOf(garbage)))!, /^TLS handshake failed: /);
  // A client that opens TCP and never says anything: its connection ends at
  // the handshake timeout. (Its socket too, with --allow-ffi on Linux:
  // tls_release_test.ts counts the descriptors.)
  using silent = await Deno.connect({ port });
  assert.equal(await reason(peerOf(silent)), "no TLS handshake within 0.05 s");
  // Everyone else is still served.
  using good = await Deno.connectTls({
    hostname: "localhost",
    port,
    caCerts: [CA],
  });
  assert.deepEqual(await roundTrip(good, bytes("fine")), bytes("fine"));
});

Deno.test(
  "serve() on a Unix socket echoes, tags peers unix#N and removes the file",
  {
    ignore: !posix,
  },
  async () => {
    await using logs = await captureLogs();
    const dir = Deno.makeTempDirSync();
    const path = `${dir}/echo.sock`;
    try {
      const server = serve({ path, mode: "line" });
      assert.equal(server.addr.path, path);
      assert.ok(logs.lines().includes(`listening on unix:${path}`));
      for (let i = 0; i < 2; i++) {
        using conn = await Deno.connect({ transport: "unix", path });
        assert.deepEqual(
          await echoAll(conn, bytes("over unix\n")),
          bytes("over unix\n"),
        );
      }
      await server.close();
      const messages = logs.lines();
      assert.ok(messages.includes("[unix#1] online"));
      assert.ok(messages.some((m) => m.startsWith("[unix#2] offline (")));
      assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

Deno.test(
  "removeStaleSocket() replaces a dead socket, keeps a live one and other files",
  {
    ignore: !posix,
  },
  async () => {
    const dir = Deno.makeTempDirSync();
    const path = `${dir}/echo.sock`;
    try {
      await leaveStaleSocket(path);
      assert.ok(Deno.lstatSync(path).isSocket);
      assert.equal(await removeStaleSocket(path), true);
      await using live = serve({ path });
      assert.equal(await removeStaleSocket(path), false);
      assert.throws(
        () => serve({ path }),
        (err: Error) =>
          err.message === `cannot listen on unix:${path}` &&
          err.cause instanceof Deno.errors.AddrInUse,
      );
      using conn = await Deno.connect({ transport: "unix", path });
      assert.deepEqual(await roundTrip(conn, bytes("x")), bytes("x"));
      const file = `${dir}/not-a-socket`;
      Deno.writeTextFileSync(file, "keep me");
      assert.equal(await removeStaleSocket(file), false);
      assert.throws(
        () => serve({ path: file }),
        (err: Error) => String(err.cause).includes(`"${file}" is not a socket`),
      );
      assert.equal(Deno.readTextFileSync(file), "keep me");
      void live;
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
);

Deno.test({
  name: "serve() on ::1 echoes and writes IPv6 peers as [[::1]:PORT]",
  ignore: !hasIpv6,
  async fn() {
    await using logs = await captureLogs();
    await using server = serve({ hostname: "::1", port: 0 });
    assert.equal(server.addr.hostname, "::1");
    assert.ok(
      logs.lines().includes(
        `listening on [::1]:${server.addr.port}`,
      ),
    );
    using conn = await Deno.connect({
      hostname: "::1",
      port: server.addr.port,
    });
    const offline = logs.next(/offline/);
    assert.deepEqual(await echoAll(conn, bytes("six")), bytes("six"));
    const local = (conn.localAddr as Deno.NetAddr).port;
    assert.match(
      await offline,
      new RegExp(`^\\[\\[::1\\]:${local}\\] offline \\(`),
    );
  },
});
