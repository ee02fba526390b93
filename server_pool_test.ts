/**
 * `tcpecho server` as its users see it, run as a child: connections served
 * in worker isolates (`--workers`), totals and limits over all workers,
 * signals, logs that arrive whole and complete, and a worker's death.
 */
import assert from "node:assert/strict";
import { serverCommand } from "./_server_command.ts";
import { ServerPool } from "./_server_pool.ts";
import { ServerChild } from "./spawn.ts";
import { argv } from "./testing_cli.ts";
import {
  bytes,
  closeQuietly,
  echoAll,
  openFilesLimit,
  posix,
  roundTrip,
  watchdog,
} from "./testing.ts";
import { isDisconnect } from "./io.ts";

const MAIN = new URL("./main.ts", import.meta.url).pathname;
const linux = Deno.build.os === "linux";

/** `deno run -A main.ts server ARGS` with `env` added; SIGKILL on disposal. */
class Server extends ServerChild {
  constructor(args: string[], env: Record<string, string> = {}) {
    super(args, {
      mainModule: MAIN,
      runFlags: ["-A", "--quiet"],
      env: { NO_COLOR: "1", ...env },
    });
  }

  static async start(
    args: string[],
    env?: Record<string, string>,
  ): Promise<Server> {
    const server = new Server(args, env);
    await server.ready;
    return server;
  }

  override async [Symbol.asyncDispose](): Promise<void> {
    await this.stop("SIGKILL");
  }

  /** Its stderr lines matching `re`. */
  matching(re: RegExp): string[] {
    return this.lines.filter((line) => re.test(line));
  }
}

/** Listening TCP sockets on `port`, from the kernel's tables (Linux). */
function listeners(port: number): number {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  let count = 0;
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of Deno.readTextFileSync(table).split("\n").slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/);
      if (state === "0A" && local?.endsWith(`:${hex}`)) count++;
    }
  }
  return count;
}

/** The peer tag the server logs for our end of `conn`. */
function peer(conn: Deno.Conn): string {
  return `127.0.0.1:${(conn.localAddr as Deno.NetAddr).port}`;
}

/** A log line about `conn`: `[peer] ` then `what` (a regular expression). */
function about(conn: Deno.Conn, what: string): RegExp {
  return new RegExp(`\\[${peer(conn).replaceAll(".", "\\.")}\\] ${what}`);
}

/**
 * Whether the server admitted `conn` (it echoes) or refused it (closed at
 * once); an error if it does neither in 10 s.
 */
async function admitted(conn: Deno.Conn): Promise<boolean> {
  using dog = watchdog(10_000, () => closeQuietly(conn));
  try {
    await conn.write(bytes("?"));
    const buf = new Uint8Array(1);
    return await conn.read(buf) === 1;
  } catch (err) {
    if (dog.fired) {
      throw new Error("neither echoed nor closed in 10 s", { cause: err });
    }
    if (isDisconnect(err)) return false;
    throw err;
  }
}

Deno.test({
  name: "tcpecho server --workers 2 listens twice on one port and sums both",
  ignore: !linux,
  async fn() {
    await using server = await Server.start(["--port", "0", "--workers", "2"]);
    assert.equal(listeners(server.port), 2);
    const n = 20;
    for (let i = 0; i < n; i++) {
      using conn = await Deno.connect({ port: server.port });
      assert.deepEqual(await echoAll(conn, bytes("hello")), bytes("hello"));
      await server.waitFor(about(conn, "offline "));
    }
    assert.equal(await server.stop(), 0);
    assert.equal(server.matching(/listening on /).length, 1);
    assert.match(
      server.lines.at(-1)!,
      new RegExp(
        `INF stopped: ${n} connections served, ${5 * n} bytes echoed$`,
      ),
    );
  },
});

Deno.test({
  name: "tcpecho server: a port in use is an error, with --workers too",
  ignore: !linux,
  async fn() {
    await using first = await Server.start(["--port", "0", "--workers", "2"]);
    for (const workers of ["1", "2"]) {
      await using second = new Server([
        "--port",
        String(first.port),
        "--workers",
        workers,
      ]);
      await assert.rejects(second.ready);
      assert.equal(await second.exited(), 1);
      assert.deepEqual(second.lines, [
        `error: cannot listen on 127.0.0.1:${first.port}: Address already in use (os error 98)`,
      ]);
    }
    assert.equal(listeners(first.port), 2);
  },
});

Deno.test({
  name:
    "tcpecho server --workers auto listens once per core; TLS works with workers",
  ignore: !linux,
  async fn() {
    const testdata = (name: string) =>
      new URL(`./testdata/${name}`, import.meta.url).pathname;
    await using server = await Server.start([
      "--port",
      "0",
      "--workers",
      "auto",
      "--tls-cert",
      testdata("server.pem"),
      "--tls-key",
      testdata("server-key.pem"),
    ]);
    assert.equal(listeners(server.port), navigator.hardwareConcurrency);
    const caCerts = [await Deno.readTextFile(testdata("ca.pem"))];
    for (let i = 0; i < 4; i++) {
      using conn = await Deno.connectTls({
        hostname: "localhost",
        port: server.port,
        caCerts,
      });
      assert.deepEqual(await roundTrip(conn, bytes("tls")), bytes("tls"));
    }
  },
});

Deno.test("tcpecho server --workers takes a count or auto, where it can work", async () => {
  const usage = async (args: string[], message: RegExp) => {
    await using server = new Server(args);
    await assert.rejects(server.ready);
    assert.equal(await server.exited(), 2);
    assert.match(server.lines[0], message);
  };
  await usage(
    ["--workers", "0"],
    /^error: --workers takes a whole number from 1 to 1024, not "0"$/,
  );
  await usage(["--workers", "many"], /--workers takes a whole number/);
  const path = await Deno.makeTempFile({ suffix: ".sock" });
  await Deno.remove(path);
  await usage(
    ["--unix", path, "--workers", "2"],
    /^error: --workers above 1 needs TCP: a unix socket has one listener$/,
  );
  if (posix) {
    // auto on a unix socket: one worker.
    await using server = await Server.start([
      "--unix",
      path,
      "--workers",
      "auto",
    ]);
    using conn = await Deno.connect({ transport: "unix", path });
    assert.deepEqual(await echoAll(conn, bytes("u")), bytes("u"));
    assert.equal(await server.stop(), 0);
  }
});

Deno.test("tcpecho server prints listening on (and admin on) once at any level, JSON too", async () => {
  for (
    const args of [
      ["-q"],
      ["--log-level", "error"],
      ["-q", "--log-format", "json"],
      ["-q", "--admin", "127.0.0.1:0"],
    ]
  ) {
    await using server = await Server.start([
      "--port",
      "0",
      ...(linux ? ["--workers", "2"] : []),
      ...args,
    ]);
    using conn = await Deno.connect({ port: server.port });
    assert.deepEqual(await echoAll(conn, bytes("q")), bytes("q"));
    assert.equal(await server.stop(), 0);
    if (args.includes("--admin")) {
      assert.match(
        server.lines.shift()!,
        / INF admin on 127\.0\.0\.1:\d+$/,
      );
    }
    assert.equal(server.lines.length, 1, server.lines.join("\n"));
    if (args.includes("json")) {
      const record = JSON.parse(server.lines[0]);
      assert.equal(record.message, `listening on 127.0.0.1:${server.port}`);
      assert.equal(record.level, "INFO");
      assert.equal(record.logger, "tcpecho.server");
    } else {
      assert.match(
        server.lines[0],
        /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INF listening on 127\.0\.0\.1:\d+$/,
      );
    }
  }
});

Deno.test({
  name: "tcpecho server logs totals over all workers on SIGUSR1 and carries on",
  ignore: !posix,
  async fn() {
    await using server = await Server.start([
      "--port",
      "0",
      ...(linux ? ["--workers", "2"] : []),
    ]);
    const conns = await Promise.all(
      [1, 2, 3].map(() => Deno.connect({ port: server.port })),
    );
    using _ = { [Symbol.dispose]: () => conns.forEach(closeQuietly) };
    for (const conn of conns) await roundTrip(conn, bytes("hello"));
    server.child.kill("SIGUSR1");
    assert.match(
      await server.waitFor(/ stats: /),
      /INF stats: 3 active, 3 served, 0 refused, 15 bytes echoed$/,
    );
    assert.deepEqual(await roundTrip(conns[0], bytes("!")), bytes("!"));
    conns.forEach(closeQuietly);
    assert.equal(await server.stop(), 0);
    assert.match(
      server.lines.at(-1)!,
      /stopped: 3 connections served, 16 bytes/,
    );
  },
});

/** Runs `fn` with a fresh folder for socket files, and removes it after. */
async function inSocketDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * The server `exit` awaits ended with 0 and `stopped: N connections` (`served`
 * of them), and its socket file at `path` is gone.
 */
async function stoppedClean(
  server: Server,
  exit: Promise<number>,
  path: string,
  served: number,
): Promise<void> {
  assert.equal(await exit, 0, server.lines.join("\n"));
  assert.match(
    server.lines.at(-1)!,
    new RegExp(`INF stopped: ${served} connections`),
  );
  await assert.rejects(Deno.lstat(path), Deno.errors.NotFound);
}

for (const signal of ["SIGTERM", "SIGHUP", "SIGQUIT"] as const) {
  Deno.test({
    name:
      `tcpecho server on ${signal} right at listening on stops, exits 0, removes its socket (20 runs)`,
    ignore: !posix,
    fn: () =>
      inSocketDir(async (dir) => {
        for (let run = 0; run < 20; run++) {
          const path = `${dir}/s${run}.sock`;
          await using server = new Server(["--unix", path]);
          await server.ready;
          server.child.kill(signal);
          await stoppedClean(server, server.exited(), path, 0);
        }
      }),
  });
}

Deno.test({
  name:
    "tcpecho server ignores SIGUSR2: it keeps serving, keeps its socket file, stops at SIGTERM",
  ignore: !posix,
  fn: () =>
    inSocketDir(async (dir) => {
      const path = `${dir}/s.sock`;
      await using server = new Server(["--unix", path]);
      await server.ready;
      server.child.kill("SIGUSR2");
      server.child.kill("SIGUSR1"); // had SIGUSR2 killed it, what follows fails
      await server.waitFor(/ stats: /);
      using conn = await Deno.connect({ transport: "unix", path });
      assert.deepEqual(await roundTrip(conn, bytes("still")), bytes("still"));
      conn.close();
      await stoppedClean(server, server.stop(), path, 1);
    }),
});

Deno.test({
  name:
    "tcpecho server --max-conns and --max-conns-per-ip hold over all workers",
  ignore: !linux,
  async fn() {
    for (
      const [option, limit, reason] of [
        ["--max-conns", 3, "too many connections (max-conns 3)"],
        ["--max-conns-per-ip", 2, "too many connections (max-conns-per-ip 2)"],
      ] as const
    ) {
      await using server = await Server.start([
        "--port",
        "0",
        "--workers",
        "2",
        option,
        String(limit),
      ]);
      assert.equal(listeners(server.port), 2);
      // Sequentially: the kernel spreads them over both workers.
      const conns: Deno.Conn[] = [];
      using _ = { [Symbol.dispose]: () => conns.forEach(closeQuietly) };
      const outcomes: boolean[] = [];
      for (let i = 0; i < 8; i++) {
        conns.push(await Deno.connect({ port: server.port }));
        outcomes.push(await admitted(conns[i]));
      }
      assert.deepEqual(
        outcomes,
        Array.from({ length: 8 }, (_, i) => i < limit),
      );
      // A slot given back is a slot for anyone, on either worker.
      const first = conns.shift()!;
      const gone = about(first, "offline ");
      first.close();
      await server.waitFor(gone);
      using again = await Deno.connect({ port: server.port });
      assert.ok(await admitted(again));
      conns.forEach(closeQuietly);
      again.close();
      assert.equal(await server.stop(), 0);
      // Summarised, and every refusal counted once.
      const refused = refusals(server, reason);
      assert.ok(
        refused.firsts.every((l) => conns.some((c) => l.includes(peer(c)))),
      );
      assert.equal(refused.total, 8 - limit);
    }
  },
});

/**
 * The refusal warnings of `reason`: the lines naming a peer, the summary
 * lines, every refusal they count, and whether each kind of line came at
 * most once a second (the SPEC's bound).
 */
function refusals(server: Server, reason: string) {
  const escaped = reason.replace(/[()]/g, "\\$&");
  const first = new RegExp(`WRN \\[[^\\]]+\\] refused: ${escaped}$`);
  const more = new RegExp(
    `WRN refused: ${escaped}; (\\d+) more in the last second$`,
  );
  const firsts = server.matching(first);
  const summaries = server.matching(more);
  const time = (line: string) =>
    Date.parse(`${line.slice(0, 23).replace(" ", "T")}Z`);
  const spaced = (lines: string[]) =>
    lines.every((l, i) => i === 0 || time(l) - time(lines[i - 1]) >= 1000);
  return {
    firsts,
    summaries,
    total: firsts.length +
      summaries.reduce((n, l) => n + Number(more.exec(l)![1]), 0),
    onceASecond: spaced(firsts) && spaced(summaries),
  };
}

Deno.test({
  name:
    "tcpecho server --workers 2: refusal warnings summarised once a second over all workers",
  ignore: !linux,
  async fn() {
    await using server = await Server.start(
      argv("--port 0 --workers 2 --max-conns 1"),
    );
    using held = await Deno.connect({ port: server.port });
    assert.ok(await admitted(held));
    // At once: the kernel spreads them over both workers, each refuses some.
    const n = 40;
    const conns = await Promise.all(
      Array.from({ length: n }, () => Deno.connect({ port: server.port })),
    );
    try {
      const outcomes = await Promise.all(conns.map(admitted));
      assert.ok(outcomes.every((ok) => !ok));
    } finally {
      conns.forEach(closeQuietly);
    }
    held.close();
    assert.equal(await server.stop(), 0);
    const refused = refusals(server, "too many connections (max-conns 1)");
    assert.equal(refused.total, n, server.lines.join("\n"));
    assert.ok(refused.onceASecond, server.lines.join("\n"));
  },
});

Deno.test({
  name:
    "tcpecho server --idle-timeout closes silent connections on every worker",
  ignore: !linux,
  async fn() {
    await using server = await Server.start(
      argv("--port 0 --workers 2 --idle-timeout 0.05"),
    );
    const conns = await Promise.all(
      Array.from({ length: 6 }, () => Deno.connect({ port: server.port })),
    );
    using _ = { [Symbol.dispose]: () => conns.forEach(closeQuietly) };
    // A connection it does not close fails the test, after 20 s.
    using dog = watchdog(20_000, () => conns.forEach(closeQuietly));
    for (const conn of conns) {
      assert.equal(await conn.read(new Uint8Array(1)), null); // closed by it
      await server.waitFor(about(conn, "closing: idle for 0\\.05 s$"));
    }
    assert.ok(!dog.fired, "a connection was not closed in 20 s");
  },
});

const MANY = 2000;
const fdLimit = openFilesLimit();

Deno.test({
  name:
    `tcpecho server logs every one of ${MANY} connections whole, up to SIGTERM`,
  ignore: !posix || fdLimit === undefined || fdLimit < MANY + 200,
  async fn() {
    await using server = await Server.start([
      "--port",
      "0",
      ...(linux ? ["--workers", "2"] : []),
      "--shutdown-timeout",
      "0.05",
    ]);
    const conns: Deno.Conn[] = [];
    using _ = { [Symbol.dispose]: () => conns.forEach(closeQuietly) };
    for (let i = 0; i < MANY; i += 100) {
      const batch = await Promise.all(
        Array.from({ length: 100 }, () => Deno.connect({ port: server.port })),
      );
      conns.push(...batch);
      await Promise.all(batch.map((c) => roundTrip(c, bytes("x"))));
    }
    // Half end by themselves, half are closed by the shutdown.
    for (const conn of conns.splice(0, MANY / 2)) conn.close();
    server.child.kill("SIGTERM");
    assert.equal(await server.exited(), 0);
    const line =
      /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INF|WRN) (listening on|stopping:|stopped:|\[127\.0\.0\.1:\d+\] (online|offline \(\d+\.\d\d s, \d+ bytes in, \d+ bytes out\)|closing: server shutting down))/;
    for (const l of server.lines) assert.match(l, line);
    assert.equal(server.matching(/\] online$/).length, MANY);
    assert.equal(server.matching(/\] offline \(/).length, MANY);
    assert.match(
      server.lines.at(-1)!,
      new RegExp(`INF stopped: ${MANY} connections served, ${MANY} bytes`),
    );
  },
});

for (const workers of linux ? [1, 2] : [1]) {
  Deno.test({
    name:
      `tcpecho server --workers ${workers}: a worker that dies stops the server, exit 1, one error line`,
    ignore: !posix,
    async fn() {
      await using server = await Server.start(
        [
          "--port",
          "0",
          "--workers",
          String(workers),
          "--shutdown-timeout",
          "0.05",
        ],
        { TCPECHO_TEST_CRASH: "stats" }, // see _server_worker.ts
      );
      using conn = await Deno.connect({ port: server.port });
      await roundTrip(conn, bytes("hi"));
      server.child.kill("SIGUSR1");
      const code = await server.exited();
      assert.equal(code, 1);
      // What it logged just before dying arrives (flushed first).
      assert.equal(
        server.matching(/WRN crashing on purpose \(stats\)$/).length,
        1,
      );
      const errors = server.lines.filter((l) => l.startsWith("error: "));
      assert.deepEqual(errors, [
        `error: worker 1 of ${workers} failed: Uncaught Error: test crash on stats`,
      ]);
      assert.equal(server.lines.at(-1), errors[0]);
      assert.deepEqual(server.matching(/stopped:|Uncaught \(in worker/), []);
      const buf = new Uint8Array(8);
      const end = await conn.read(buf).catch((err) => {
        if (isDisconnect(err)) return null;
        throw err;
      });
      assert.equal(end, null); // its connection is gone with it, or drained
    },
  });
}

Deno.test({
  name:
    "tcpecho server: a worker that dies while it drains ends with exit 1 and one error line",
  ignore: !posix,
  async fn() {
    await using server = await Server.start(
      argv("--port 0 --shutdown-timeout 60"),
      { TCPECHO_TEST_CRASH: "stats" },
    );
    using conn = await Deno.connect({ port: server.port });
    await roundTrip(conn, bytes("hi"));
    server.child.kill("SIGTERM");
    await server.waitFor(/stopping: waiting up to 60\.00 s for 1 connections/);
    server.child.kill("SIGUSR1"); // worker 1 dies while it waits for conn
    assert.equal(await server.exited(), 1);
    const errors = server.lines.filter((l) => l.startsWith("error: "));
    assert.deepEqual(errors, [
      "error: worker 1 of 1 failed: Uncaught Error: test crash on stats",
    ]);
    assert.equal(server.lines.at(-1), errors[0], server.lines.join("\n"));
    assert.deepEqual(server.matching(/Uncaught \(in promise\)|^\s+at /), []);
  },
});

Deno.test({
  name:
    "tcpecho server: a worker that dies with clients on the others lets them finish",
  ignore: !linux,
  async fn() {
    await using server = await Server.start(
      ["--port", "0", "--workers", "2", "--shutdown-timeout", "60"],
      { TCPECHO_TEST_CRASH: "stats" },
    );
    const conns = await Promise.all(
      Array.from({ length: 16 }, () => Deno.connect({ port: server.port })),
    );
    using _ = { [Symbol.dispose]: () => conns.forEach(closeQuietly) };
    for (const conn of conns) await roundTrip(conn, bytes("a"));
    server.child.kill("SIGUSR1");
    await server.waitFor(/crashing on purpose/);
    // Those on the survivor are still served until they leave; the others
    // are gone with their worker.
    let served = 0;
    {
      // A connection neither served nor closed fails the test, after 20 s.
      using dog = watchdog(20_000, () => conns.forEach(closeQuietly));
      for (const conn of conns) {
        try {
          const back = await echoAll(conn, bytes("bye"));
          if (back.length === 3) served++;
        } catch (err) {
          if (!isDisconnect(err)) throw err;
        }
      }
      assert.ok(!dog.fired, "a connection was neither served nor closed");
    }
    assert.ok(served < 16, "the dead worker's connections were not closed");
    assert.ok(served > 0, "the other worker's connections were not served");
    assert.equal(await server.exited(), 1);
    assert.match(server.lines.at(-1)!, /^error: worker 1 of 2 failed: /);
  },
});

Deno.test({
  name: "tcpecho server --workers 2 --admin: /readyz is 503 once a worker died",
  ignore: !linux,
  async fn() {
    await using server = await Server.start(
      argv("--port 0 --workers 2 --admin 127.0.0.1:0 --shutdown-timeout 60"),
      { TCPECHO_TEST_CRASH: "stats" },
    );
    const adminLine = await server.waitFor(/ INF admin on 127\.0\.0\.1:\d+$/);
    const adminPort = Number(/:(\d+)$/.exec(adminLine)![1]);
    const readyz = async () => {
      const response = await fetch(`http://127.0.0.1:${adminPort}/readyz`, {
        signal: AbortSignal.timeout(10_000),
      });
      return [response.status, await response.text()] as const;
    };
    assert.deepEqual(await readyz(), [200, "ready\n"]);
    // The kernel spreads them over both workers (all on one: a chance in
    // 32,768); those on the survivor keep the server up while they drain.
    const conns = await Promise.all(
      Array.from({ length: 16 }, () => Deno.connect({ port: server.port })),
    );
    using _ = { [Symbol.dispose]: () => conns.forEach(closeQuietly) };
    for (const conn of conns) await roundTrip(conn, bytes("a"));
    const ends = conns.map((conn) =>
      conn.read(new Uint8Array(1)).catch((err) => {
        if (isDisconnect(err)) return null;
        throw err;
      })
    );
    {
      using dog = watchdog(20_000, () => conns.forEach(closeQuietly));
      server.child.kill("SIGUSR1");
      // The pool gives the dead worker up before it ends its connections.
      await Promise.race(ends);
      assert.ok(!dog.fired, "no connection of the dead worker ended");
    }
    assert.deepEqual(await readyz(), [503, "draining\n"]);
    conns.forEach(closeQuietly);
    await Promise.all(ends);
    assert.equal(await server.exited(), 1);
    assert.match(server.lines.at(-1)!, /^error: worker 1 of 2 failed: /);
  },
});

/** `promise`, or a rejection after `ms`: a broken pool fails, not hangs. */
async function within<T>(ms: number, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not settled in ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** A pool of one worker on 127.0.0.1, port 0, recording metrics, logs dropped. */
function onePool(): Promise<ServerPool> {
  return ServerPool.start({
    workers: 1,
    serve: { port: 0 },
    level: "error",
    format: "text",
    metrics: true,
    onLog: () => {},
  });
}

Deno.test("ServerPool.stats() and snapshots() leave no listener behind per call", async () => {
  await using pool = await onePool();
  // Every then() on each promise while we ask: a promise that collects one
  // per call (one that settles only when a worker exits, say) holds every
  // call's closures until then.
  const thens = new Map<Promise<unknown>, number>();
  const then = Promise.prototype.then;
  Promise.prototype.then = function (this: Promise<unknown>, ...args) {
    thens.set(this, (thens.get(this) ?? 0) + 1);
    return then.apply(this, args);
  } as typeof then;
  const calls = 200;
  try {
    await within(
      20_000,
      (async () => {
        for (let i = 0; i < calls; i++) {
          await pool.stats();
          await pool.snapshots();
        }
      })(),
    );
  } finally {
    Promise.prototype.then = then;
  }
  const most = Math.max(...thens.values());
  assert.ok(most < 4, `a promise got ${most} listeners in ${2 * calls} calls`);
  const { served } = await within(5000, pool.stats());
  assert.equal(served, 0);
});

Deno.test("ServerPool.stats() answers with the last counters once the workers stopped", async () => {
  await using pool = await onePool();
  using conn = await Deno.connect({
    port: (pool.addr as Deno.NetAddr).port,
  });
  assert.deepEqual(await echoAll(conn, bytes("hi")), bytes("hi"));
  const waiting = pool.stats(); // asked before close(), answered either way
  const total = await within(10_000, pool.close());
  assert.deepEqual(await within(5000, waiting), total);
  assert.deepEqual(await within(5000, pool.stats()), total);
  assert.equal(total.served, 1);
  assert.equal(total.bytesOut, 2);
  assert.equal((await within(5000, pool.snapshots())).length, 1);
});

Deno.test("ServerPool.snapshots() is an error when started without metrics", async () => {
  await using pool = await ServerPool.start({
    workers: 1,
    serve: { port: 0 },
    level: "error",
    format: "text",
    onLog: () => {},
  });
  await assert.rejects(
    within(5000, pool.snapshots()),
    /^Error: no metrics: the pool was started without them$/,
  );
  assert.equal(pool.accepting, true); // no worker was asked
});

Deno.test("ServerPool.stats() fails, and does not hang, when a worker dies", async () => {
  // Read by the worker as it starts (see _server_worker.ts).
  Deno.env.set("TCPECHO_TEST_CRASH", "stats");
  let pool: ServerPool;
  try {
    pool = await onePool();
  } finally {
    Deno.env.delete("TCPECHO_TEST_CRASH");
  }
  await using _pool = pool;
  // Asked while it lives: it dies of the request instead of answering.
  const gone = /^Error: worker 1 is gone$/;
  await assert.rejects(within(5000, pool.stats()), gone);
  await assert.rejects(within(10_000, pool.finished), /worker 1 of 1 failed: /);
  assert.equal(pool.accepting, false);
  // Asked once it is gone: no request is sent, the answer comes at once.
  await assert.rejects(within(5000, pool.stats()), gone);
  await assert.rejects(within(5000, pool.snapshots()), gone);
});

Deno.test("tcpecho server: DENO_TOKIO_MAX_IO_EVENTS_PER_TICK from the environment wins", async () => {
  const inherited = Deno.env.get("DENO_TOKIO_MAX_IO_EVENTS_PER_TICK");
  for (
    const [env, said] of [
      [{}, inherited ? `=${inherited} (environment)` : "=128 (set)"],
      [{ DENO_TOKIO_MAX_IO_EVENTS_PER_TICK: "64" }, "=64 (environment)"],
    ] as const
  ) {
    await using server = await Server.start(["--port", "0", "-v"], env);
    assert.ok(
      server.lines.some((l) =>
        l.endsWith(`DBG 1 workers, DENO_TOKIO_MAX_IO_EVENTS_PER_TICK${said}`)
      ),
      server.lines.join("\n"),
    );
  }
});

Deno.test({
  name: "tcpecho server keeps serving when nobody reads its stderr any more",
  ignore: !posix,
  async fn() {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", MAIN, "server", "--port", "0"],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    // Read up to the ready line, then close our end of the pipe.
    const reader = child.stderr.getReader();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    await reader.cancel();
    const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(text)![1]);
    for (let i = 0; i < 3; i++) { // each logs two lines into a closed pipe
      using conn = await Deno.connect({ port });
      assert.deepEqual(await echoAll(conn, bytes("hi")), bytes("hi"));
    }
    child.kill("SIGTERM");
    assert.equal((await child.status).code, 0);
  },
});

Deno.test("README's tcpecho server table has a row for every option --help prints", async () => {
  // Help rows: two spaces, the option's label, two or more spaces (or the
  // end of a label too long for its column).
  const labels = serverCommand.help.split("\n")
    .filter((line) => /^ {2}-/.test(line))
    .map((line) => line.slice(2).split(/ {2,}/)[0]);
  assert.ok(labels.includes("--workers N|auto"), labels.join("\n"));
  const readme = await Deno.readTextFile(
    new URL("./README.md", import.meta.url),
  );
  const section = readme.split("\n## `tcpecho server`\n")[1].split("\n## ")[0];
  const rows = section.split("\n")
    .filter((line) => line.startsWith("| `"))
    .map((line) =>
      line.split(/(?<!\\)\|/)[1].trim().replaceAll("`", "").replaceAll(
        "\\|",
        "|",
      )
    );
  for (const label of labels) assert.ok(rows.includes(label), label);
});
