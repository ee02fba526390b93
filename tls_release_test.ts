/**
 * TLS connections the server closes give their descriptor back at once
 * (`_tls_release.ts`), and what a hostile TLS peer causes ends its own
 * connection with a debug line: real sockets, the server's descriptors
 * counted in `/proc`. Linux only (the release needs `/proc` and libc); run
 * with `-A`, as `deno task test` does.
 *
 * @module
 */
import assert from "node:assert/strict";
import { serve } from "./server.ts";
import {
  pairKey,
  socketPairKey,
  tlsReleaser,
  tlsReleaseUnavailable,
} from "./_tls_release.ts";
import {
  bytes,
  CA,
  CA_FILE,
  captureLogs,
  closeQuietly,
  ConnEvents,
  hasIpv6,
  render,
  roundTrip,
  TLS,
  watchdog,
  writeAll,
} from "./testing.ts";
import { TLS_ARGS } from "./testing_cli.ts";
import { ServerChild } from "./spawn.ts";
import { PERMISSIONS } from "./tools/compile.ts";

const linux = Deno.build.os === "linux";

// Made now, not in the first test: the releaser keeps one descriptor spare
// for itself, which must be in every baseline below. Without it (no
// --allow-ffi) the tests below fail, saying why.
if (linux && tlsReleaser() === undefined) {
  console.error(`TLS release off: ${tlsReleaseUnavailable()}`);
}

/** Open descriptors of this process, or of process `pid`. */
function fds(pid: number | "self" = "self"): number {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
}

/**
 * Descriptors of process `pid` that are TCP sockets (listeners included),
 * those whose local port is `port` if given (a server's, not its clients'
 * ends). Where a total would not do: a child's Deno runtime opens Unix
 * socket pairs of its own (signal handling) around start-up, and a worker
 * isolate has descriptors of its own.
 */
function tcpFds(pid: number | "self", port?: number): number {
  const hexPort = port?.toString(16).toUpperCase().padStart(4, "0");
  const inodes = new Set<string>();
  for (const table of ["tcp", "tcp6"]) {
    const text = Deno.readTextFileSync(`/proc/${pid}/net/${table}`);
    for (const line of text.split("\n").slice(1)) {
      const [, local, , , , , , , , inode] = line.trim().split(/\s+/);
      if (inode === undefined || inode === "0") continue;
      if (hexPort === undefined || local.endsWith(`:${hexPort}`)) {
        inodes.add(inode);
      }
    }
  }
  let n = 0;
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      const link = Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`);
      if (inodes.has(link.match(/^socket:\[(\d+)\]$/)?.[1] ?? "")) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

/**
 * Waits until `count()` is at most `want`; fails after `timeoutMs` with the
 * last count. Polled, because nothing announces it: after the shutdown(2)
 * Deno closes the descriptor in its own task, which JavaScript does not hear
 * of. Callers first await the event that precedes it (each client seeing its
 * connection end); the count then follows within a few event-loop turns.
 */
async function fdsReach(
  count: () => number,
  want: number,
  timeoutMs = 2000,
): Promise<number> {
  const start = performance.now();
  for (let n = count();; n = count()) {
    if (n <= want) return performance.now() - start;
    if (performance.now() - start > timeoutMs) {
      assert.fail(`${n} descriptors after ${timeoutMs} ms, want ${want}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * How the peer ended `conn`, read until then: `eof` (FIN), `reset`, or
 * the error's name (`Interrupted` or `BadResource` when the watchdog closed
 * it first).
 */
async function ending(conn: Deno.Conn): Promise<string> {
  const buf = new Uint8Array(16 * 1024);
  try {
    while (await conn.read(buf) !== null) { /* an alert, maybe */ }
    return "eof";
  } catch (err) {
    return err instanceof Deno.errors.ConnectionReset
      ? "reset"
      : (err as Error).name;
  }
}

let helloBytes: Uint8Array | undefined;

/** A real ClientHello (Deno's), captured once through a plain listener. */
async function clientHello(): Promise<Uint8Array> {
  if (helloBytes !== undefined) return helloBytes;
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const connecting = Deno.connectTls({
    hostname: "localhost",
    port: listener.addr.port,
    caCerts: [CA],
  }).then((conn) => conn.handshake().finally(() => conn.close()))
    .catch(() => {}); // we close it mid-handshake: it fails, as it should
  const buf = new Uint8Array(16 * 1024);
  {
    using conn = await listener.accept();
    helloBytes = buf.slice(0, (await conn.read(buf))!);
  }
  await connecting;
  return helloBytes;
}

/**
 * `n` TCP clients of `hostname:port` that each send the first half of a
 * ClientHello and then nothing, stuck mid-handshake; disposing closes them.
 */
async function halfHellos(
  n: number,
  port: number,
  hostname = "127.0.0.1",
): Promise<Deno.Conn[] & Disposable> {
  const hello = await clientHello();
  const clients = Object.assign([] as Deno.Conn[], {
    [Symbol.dispose]() {
      for (const conn of clients) closeQuietly(conn);
    },
  });
  try {
    for (let i = 0; i < n; i++) {
      const conn = await Deno.connect({ hostname, port });
      clients.push(conn);
      await writeAll(conn, hello.subarray(0, hello.length >> 1));
    }
  } catch (err) {
    clients[Symbol.dispose]();
    throw err;
  }
  return clients;
}

/** Each client's {@linkcode ending}, failing after `ms` (the server held on). */
async function allEnd(clients: Deno.Conn[], ms = 5000): Promise<string[]> {
  using dog = watchdog(ms, () => clients.forEach(closeQuietly));
  const ends = await Promise.all(clients.map(ending));
  assert.ok(
    !dog.fired,
    `after ${ms} ms, ${
      ends.filter((e) => e !== "eof" && e !== "reset").length
    } of ` +
      `${clients.length} clients had not seen their connection end`,
  );
  return ends;
}

// ---- finding the socket ---------------------------------------------------

Deno.test(
  "pairKey() names IPv4, IPv6 and IPv4-mapped endpoints as the kernel does",
  { ignore: !linux },
  async (t) => {
    const tcp = (hostname: string, port: number): Deno.NetAddr => ({
      transport: "tcp",
      hostname,
      port,
    });
    assert.equal(
      pairKey(tcp("127.0.0.1", 1), tcp("10.0.0.2", 65535)),
      pairKey(tcp("::ffff:127.0.0.1", 1), tcp("::ffff:a00:2", 65535)),
    );
    assert.equal(
      pairKey(tcp("::1", 80), tcp("2001:db8::1", 8080)),
      pairKey(tcp("0:0:0:0:0:0:0:1", 80), tcp("2001:0db8:0:0:0:0:0:1", 8080)),
    );
    assert.notEqual(
      pairKey(tcp("::1", 80), tcp("::2", 8080)),
      pairKey(tcp("::2", 8080), tcp("::1", 80)),
    );
    assert.equal(pairKey(tcp("not an address", 1), tcp("::1", 1)), undefined);
    // A real socket of each kind: exactly one of our descriptors has the key
    // of its address pair, as a batch reads it with getsockname/getpeername.
    const cases: [string, string, string][] = [
      ["IPv4", "127.0.0.1", "127.0.0.1"],
      ["IPv4-mapped (dual-stack listener)", "::", "127.0.0.1"],
    ];
    if (hasIpv6) cases.push(["IPv6", "::1", "::1"]);
    for (const [name, listenOn, connectTo] of cases) {
      await t.step(name, async () => {
        using listener = Deno.listen({ hostname: listenOn, port: 0 });
        using client = await Deno.connect({
          hostname: connectTo,
          port: listener.addr.port,
        });
        using accepted = await listener.accept();
        const want = pairKey(
          accepted.localAddr as Deno.NetAddr,
          accepted.remoteAddr as Deno.NetAddr,
        );
        assert.ok(want);
        const matching = [...Deno.readDirSync("/proc/self/fd")]
          .filter((entry) => socketPairKey(Number(entry.name)) === want);
        assert.equal(matching.length, 1, `${name}: ${want}`);
        assert.notEqual(
          pairKey(
            client.localAddr as Deno.NetAddr,
            client.remoteAddr as Deno.NetAddr,
          ),
          want,
          "the client's end is another socket",
        );
      });
    }
  },
);

Deno.test(
  "tlsReleaser()'s release skips what is gone or no TCP, and never throws",
  { ignore: !linux },
  async () => {
    const release = tlsReleaser()!;
    const { shut, gone } = release.stats;
    release({
      get localAddr(): Deno.Addr {
        throw new Error("boom");
      },
    } as Deno.Conn);
    const dir = Deno.makeTempDirSync();
    try {
      using listener = Deno.listen({ transport: "unix", path: `${dir}/s` });
      using unix = await Deno.connect({ transport: "unix", path: `${dir}/s` });
      using _accepted = await listener.accept();
      release(unix);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
    using tcp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const conn = await Deno.connect({ port: tcp.addr.port });
    (await tcp.accept()).close();
    release(conn);
    conn.close(); // a plain socket closes at once: nothing left to shut down
    await release.settled();
    assert.deepEqual([release.stats.shut, release.stats.gone], [
      shut,
      gone + 1,
    ]);
  },
);

// ---- the server releases what it closes -----------------------------------

Deno.test(
  "serve() with TLS frees the descriptors of 40 clients stuck mid-handshake at the handshake timeout",
  { ignore: !linux },
  async () => {
    using events = new ConnEvents();
    await using server = events.serve({ ...TLS, handshakeTimeoutMs: 100 });
    const before = fds();
    using clients = await halfHellos(40, server.addr.port);
    const ends = await allEnd(clients);
    assert.deepEqual(new Set(ends), new Set(["eof"]));
    const closed = await events.count("closed", 40);
    assert.ok(
      closed.every((e) => e.reason === "no TLS handshake within 0.10 s"),
    );
    await fdsReach(fds, before + 40); // only the clients' own sockets are left
  },
);

Deno.test(
  "serve() with TLS frees every address family's descriptor: IPv6, IPv4-mapped",
  { ignore: !linux },
  async (t) => {
    const cases: [string, string, string][] = [
      ["IPv4-mapped (dual-stack listener)", "::", "127.0.0.1"],
    ];
    if (hasIpv6) cases.push(["IPv6", "::1", "::1"]);
    else console.log("no IPv6 loopback here: IPv6 not tested");
    for (const [name, hostname, connectTo] of cases) {
      await t.step(name, async () => {
        await using server = serve({
          hostname,
          port: 0,
          ...TLS,
          handshakeTimeoutMs: 100,
        });
        const before = fds();
        using clients = await halfHellos(5, server.addr.port, connectTo);
        await allEnd(clients);
        await fdsReach(fds, before + 5);
      });
    }
  },
);

Deno.test(
  "serve() with TLS frees the descriptor of a client whose writes are blocked when the idle timeout closes it",
  { ignore: !linux },
  async () => {
    using events = new ConnEvents();
    await using server = events.serve({ ...TLS, idleTimeoutMs: 200 });
    const before = fds();
    using conn = await Deno.connectTls({
      hostname: "localhost",
      port: server.addr.port,
      caCerts: [CA],
    });
    await conn.handshake();
    // Streams and never reads: the echo fills both sides' buffers, the
    // server's write blocks, nothing moves, and the idle timeout closes it.
    const writing = (async () => {
      const chunk = new Uint8Array(64 * 1024);
      try {
        for (;;) await writeAll(conn, chunk);
      } catch (err) {
        return (err as Error).name;
      }
    })();
    const closed = await events.find("closed");
    assert.equal(closed.reason, "idle for 0.20 s");
    {
      using dog = watchdog(5000, () => closeQuietly(conn));
      const end = await writing; // the client sees the end: its write fails
      assert.ok(!dog.fired, "the client's write was still blocked after 5 s");
      assert.match(end, /^(ConnectionReset|BrokenPipe)$/);
    }
    conn.close();
    await fdsReach(fds, before);
  },
);

Deno.test(
  "serve() with TLS frees the descriptors of connections refused over maxConnsPerIp",
  { ignore: !linux },
  async () => {
    using events = new ConnEvents();
    await using server = events.serve({ ...TLS, maxConnsPerIp: 1 });
    const port = server.addr.port;
    const before = fds();
    using good = await Deno.connectTls({
      hostname: "localhost",
      port,
      caCerts: [CA],
    });
    assert.deepEqual(await roundTrip(good, bytes("mine")), bytes("mine"));
    using refused = await halfHellos(10, port);
    await events.count("refused", 10);
    await allEnd(refused);
    // The good client and its connection, and the refused clients' own ends.
    await fdsReach(fds, before + 2 + 10);
    assert.deepEqual(await roundTrip(good, bytes("still")), bytes("still"));
  },
);

Deno.test("Server.close() frees the descriptor of a silent TLS client", {
  ignore: !linux,
}, async () => {
  using events = new ConnEvents();
  const before = fds();
  const server = events.serve({ ...TLS, shutdownTimeoutMs: 50 });
  using silent = await Deno.connect({ port: server.addr.port });
  await events.find("open");
  await server.close();
  const closed = await events.find("closed");
  assert.equal(closed.reason, "server shutting down");
  assert.equal(await allEnd([silent]).then(([end]) => end), "eof");
  await fdsReach(fds, before + 1); // the client's end
});

Deno.test(
  "serve() with TLS and a PROXY header frees the relayed connection's descriptors",
  { ignore: !linux },
  async () => {
    using events = new ConnEvents();
    await using server = events.serve({
      ...TLS,
      proxyProtocol: "v1",
      handshakeTimeoutMs: 100,
    });
    const port = server.addr.port;
    const before = fds();
    const hello = await clientHello();
    using clients = Object.assign([] as Deno.Conn[], {
      [Symbol.dispose]: () => clients.forEach(closeQuietly),
    });
    for (let i = 0; i < 5; i++) {
      const conn = await Deno.connect({ port });
      clients.push(conn);
      await writeAll(
        conn,
        bytes(`PROXY TCP4 192.0.2.${i + 1} 127.0.0.1 4000 ${port}\r\n`),
      );
      await writeAll(conn, hello.subarray(0, hello.length >> 1));
    }
    await allEnd(clients);
    await events.count("closed", 5);
    await fdsReach(fds, before + 5);
  },
);

Deno.test(
  "serve() in a worker isolate frees TLS descriptors too (FFI there, permissions inherited)",
  { ignore: !linux },
  async () => {
    const worker = new Worker(
      new URL("./testdata/tls_release_worker.ts", import.meta.url),
      { type: "module" },
    );
    try {
      const replies: ((data: Record<string, number>) => void)[] = [];
      worker.onmessage = (event) => replies.shift()?.(event.data);
      const reply = () =>
        new Promise<Record<string, number>>((resolve) => replies.push(resolve));
      worker.postMessage({
        port: 0,
        ...TLS,
        handshakeTimeoutMs: 100,
      });
      const { port } = await reply();
      using clients = await halfHellos(10, port);
      await allEnd(clients);
      await fdsReach(() => tcpFds("self", port), 1); // the listener
      worker.postMessage("close");
      await reply();
    } finally {
      worker.terminate();
    }
  },
);

// ---- hostile TLS peers: a debug line, their connection only ---------------

const hasPython = (() => {
  try {
    return new Deno.Command("python3", { args: ["--version"] }).outputSync()
      .success;
  } catch {
    return false;
  }
})();

/**
 * A TLS client in Python (its ssl module over a memory BIO can send what a
 * TLS library will not): prints its `ip:port`, misbehaves as `scenario`
 * says, reads until the server closes, prints `closed`.
 */
const HOSTILE_CLIENT = `
import socket, ssl, sys
scenario, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
print("%s:%d" % s.getsockname(), flush=True)
if scenario == "plaintext":
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
else:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=ca).wrap_bio(
        inc, out, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            s.sendall(out.read())
            data = s.recv(65536)
            if not data:
                sys.exit("closed during the handshake")
            inc.write(data)
    s.sendall(out.read())
    if scenario == "garbage":
        s.sendall(b"garbage after the handshake\\n")
    else:  # tampered: a real record with its last byte (the AEAD tag) flipped
        tls.write(b"hello\\n")
        record = bytearray(out.read())
        record[-1] ^= 1
        s.sendall(bytes(record))
try:
    while s.recv(65536):
        pass
except ConnectionResetError:
    pass
print("closed", flush=True)
`;

Deno.test(
  "serve() with TLS: garbage after the handshake, a tampered record and plaintext end only their connection, without an error" +
    (hasPython ? "" : " (ignored: no python3 to play the hostile peer)"),
  { ignore: !hasPython },
  async (t) => {
    await using logs = await captureLogs();
    await using server = serve({ port: 0, ...TLS });
    const port = server.addr.port;
    using good = await Deno.connectTls({
      hostname: "localhost",
      port,
      caCerts: [CA],
    });
    assert.deepEqual(await roundTrip(good, bytes("a")), bytes("a"));
    const cases: [string, RegExp, string][] = [
      ["garbage", /^\[[^\]]+\] InvalidData: received corrupt message/, "debug"],
      ["tampered", /^\[[^\]]+\] InvalidData: .*decrypt/i, "debug"],
      ["plaintext", /closing: TLS handshake failed: /, "warning"],
    ];
    for (const [scenario, line, level] of cases) {
      await t.step(scenario, async () => {
        const { code, stdout, stderr } = await new Deno.Command("python3", {
          args: [
            "-c",
            HOSTILE_CLIENT,
            scenario,
            String(port),
            CA_FILE,
          ],
          stdout: "piped",
          stderr: "piped",
          signal: AbortSignal.timeout(20_000),
        }).output();
        const [peer, end] = new TextDecoder().decode(stdout).trim().split("\n");
        assert.equal(code, 0, new TextDecoder().decode(stderr));
        assert.equal(end, "closed", "the server closed the connection");
        const offline = new RegExp(`^\\[${peer}\\] offline`);
        if (!logs.records.some((r) => offline.test(render(r)))) {
          await logs.next(offline);
        }
        const mine = logs.records.filter((r) =>
          render(r).startsWith(`[${peer}]`)
        );
        const shown = mine.map((r) => `${r.level} ${render(r)}`).join("\n");
        assert.ok(
          mine.some((r) => r.level === level && line.test(render(r))),
          shown,
        );
        assert.ok(!mine.some((r) => r.level === "error"), shown);
        if (level === "debug") {
          assert.ok(!mine.some((r) => r.level === "warning"), shown);
        }
      });
    }
    assert.ok(!logs.records.some((r) => r.level === "error"));
    assert.deepEqual(await roundTrip(good, bytes("b")), bytes("b"));
  },
);

// ---- the CLI --------------------------------------------------------------

/** `tcpecho server` with TLS, on a port of the system's choice. */
const TLS_CLI = ["--port", "0", ...TLS_ARGS];
const WARNING =
  "TLS: descriptors of connections the server closes may linger until the peer acts (Deno 2.9.6): run with --allow-ffi to release them at once";

Deno.test(
  "tcpecho server with the tcpecho task's permissions frees 40 stuck TLS descriptors at --idle-timeout 1",
  { ignore: !linux },
  async () => {
    assert.ok(PERMISSIONS.includes("--allow-ffi"));
    await using server = new ServerChild([...TLS_CLI, "--idle-timeout", "1"], {
      runFlags: [...PERMISSIONS, "--no-prompt"],
      env: { NO_COLOR: "1" },
    });
    await server.ready;
    const pid = server.child.pid;
    const before = tcpFds(pid); // the listener
    const started = performance.now();
    using clients = await halfHellos(40, server.port);
    await allEnd(clients);
    const endedMs = performance.now() - started;
    await fdsReach(() => tcpFds(pid), before);
    const releasedMs = performance.now() - started;
    assert.ok(
      releasedMs < 2500,
      `clients saw the end at ${endedMs} ms, descriptors back at ${releasedMs} ms`,
    );
    assert.ok(!server.lines.some((line) => line.includes(WARNING)));
  },
);

Deno.test(
  "ServerChild's default permissions include --allow-ffi: a TLS child does not warn",
  { ignore: !linux },
  async () => {
    await using server = new ServerChild(TLS_CLI, { env: { NO_COLOR: "1" } });
    await server.ready;
    assert.equal(await server.stop(), 0);
    assert.ok(
      !server.lines.some((line) => line.includes(WARNING)),
      server.lines.join("\n"),
    );
  },
);

/** `prlimit` to run a child with at most `n` descriptors, if installed. */
function fdLimit(n: number): string[] | undefined {
  try {
    const args = [`--nofile=${n}:${n}`, "true"];
    return new Deno.Command("prlimit", { args }).outputSync().success
      ? ["prlimit", `--nofile=${n}:${n}`, "--"]
      : undefined;
  } catch {
    return undefined;
  }
}
const limit64 = linux ? fdLimit(64) : undefined;

Deno.test(
  "tcpecho server out of descriptors, all held by stuck TLS clients, still releases them" +
    (limit64 ? "" : " (ignored: no prlimit to lower a child's limit)"),
  { ignore: limit64 === undefined },
  async () => {
    await using server = new ServerChild([...TLS_CLI, "--idle-timeout", "1"], {
      runFlags: [...PERMISSIONS, "--no-prompt"],
      wrapper: limit64,
      env: { NO_COLOR: "1" },
    });
    await server.ready;
    // More than the child can accept (its runtime holds ~25 descriptors):
    // the rest wait in the listen backlog. Once the idle timeout closes the
    // accepted ones, the process has no descriptor to spare to look for
    // their sockets, but the one the releaser keeps.
    using clients = await halfHellos(64, server.port);
    await server.waitFor(/WRN cannot accept a connection: .*Too many open/);
    await allEnd(clients, 10_000);
    await fdsReach(() => tcpFds(server.child.pid), 1); // the listener
    using good = await Deno.connectTls({
      hostname: "localhost",
      port: server.port,
      caCerts: [CA],
    });
    assert.deepEqual(await roundTrip(good, bytes("ok")), bytes("ok"));
  },
);

Deno.test(
  "tcpecho server without --allow-ffi warns once that TLS descriptors may linger",
  { ignore: !linux },
  async (t) => {
    const flags = PERMISSIONS.filter((flag) => flag !== "--allow-ffi");
    for (const workers of ["1", "3"]) {
      await t.step(
        `TLS, --workers ${workers}: one warning, before listening on`,
        async () => {
          await using server = new ServerChild(
            [...TLS_CLI, "--workers", workers],
            { runFlags: [...flags, "--no-prompt"], env: { NO_COLOR: "1" } },
          );
          await server.ready;
          const warned = () => server.lines.filter((l) => l.includes(" WRN "));
          const before = warned();
          assert.equal(await server.stop(), 0);
          const warnings = warned(); // none came later either
          assert.deepEqual(warnings, before, server.lines.join("\n"));
          assert.equal(warnings.length, 1, server.lines.join("\n"));
          assert.ok(warnings[0].endsWith(` WRN ${WARNING}`), warnings[0]);
        },
      );
    }
    await t.step("plain TCP: no warning", async () => {
      await using server = new ServerChild(["--port", "0"], {
        runFlags: [...flags, "--no-prompt"],
        env: { NO_COLOR: "1" },
      });
      await server.ready;
      assert.ok(!server.lines.some((line) => line.includes(" WRN ")));
    });
  },
);
