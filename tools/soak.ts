/**
 * Soak test: runs `tcpecho server` as children (plain TCP and TLS) for a
 * bounded time under many clients that send random amounts in random writes,
 * verify every byte echoed, and reconnect as they finish. Prints what was
 * echoed, the errors, and each server's open descriptors and memory at the
 * start, the peak and the end. Exits 1 on any error, mismatch, server error
 * log, descriptor leak or unclean server exit.
 *
 * ```sh
 * deno run -A tools/soak.ts --duration 600 --clients 100
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { closeQuietly, RandomStream, writeAll } from "../testing.ts";
import { isDisconnect } from "../io.ts";
import { SoakServer, type Usage } from "./_soak_server.ts";

const testdata = (name: string) =>
  new URL(`../testdata/${name}`, import.meta.url).pathname;

const USAGE = `usage: deno run -A tools/soak.ts [options]
  --duration SECONDS   how long clients keep starting connections (default 60)
  --clients N          concurrent clients (default 100)
  --tls-share F        share of the clients that use TLS, 0..1 (default 0.5)
  --max-size BYTES     largest stream one connection sends (default 1048576)
  --abort-share F      share of connections a client drops mid-stream (default 0.02)
  --mode raw|line      server mode (default raw; line sends \\n-ended lines)
  --seed N             random seed, for a rerun (default: time)
  --port N             soak a server already on 127.0.0.1:N (plain TCP) instead
  --json               one JSON object on stdout instead of the text report`;

/** Gives up on a connection that moved nothing for this long. */
const STALL_MS = 30_000;
/** How often the servers' descriptors and memory are sampled. */
const SAMPLE_MS = 1000;
/** After the clients stop, how long a server may take to close their sockets. */
const SETTLE_MS = 10_000;

interface Options {
  durationS: number;
  clients: number;
  tlsShare: number;
  maxSize: number;
  abortShare: number;
  mode: "raw" | "line";
  seed: number;
  port?: number;
  json: boolean;
}

function parse(args: string[]): Options {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      duration: { type: "string", default: "60" },
      clients: { type: "string", default: "100" },
      "tls-share": { type: "string", default: "0.5" },
      "max-size": { type: "string", default: String(1 << 20) },
      "abort-share": { type: "string", default: "0.02" },
      mode: { type: "string", default: "raw" },
      seed: { type: "string" },
      port: { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const num = (name: string, v: string, min: number, max = Infinity) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) {
      throw new RangeError(`--${name} must be a number in ${min}..${max}`);
    }
    return n;
  };
  if (values.mode !== "raw" && values.mode !== "line") {
    throw new RangeError(`--mode must be raw or line, not "${values.mode}"`);
  }
  const port = values.port === undefined
    ? undefined
    : num("port", values.port, 1, 65535);
  return {
    durationS: num("duration", values.duration, 0.1),
    clients: Math.floor(num("clients", values.clients, 1, 20_000)),
    tlsShare: port === undefined
      ? num("tls-share", values["tls-share"], 0, 1)
      : 0,
    maxSize: Math.floor(num("max-size", values["max-size"], 1)),
    abortShare: num("abort-share", values["abort-share"], 0, 1),
    mode: values.mode,
    seed: values.seed === undefined
      ? Date.now() % 0x7fffffff
      : Math.floor(num("seed", values.seed, 0)),
    port,
    json: values.json,
  };
}

/** mulberry32: small, seeded, good enough to pick sizes. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Log-uniform integer in [min, max]: small and large values alike. */
const logUniform = (rand: () => number, min: number, max: number) =>
  Math.min(max, Math.floor(min * Math.pow(max / min, rand())));

interface Totals {
  connections: number;
  aborted: number;
  bytes: number;
  errors: number;
  firstErrors: string[];
}

/**
 * One connection: sends `size` bytes of a random stream in random writes,
 * checks each echoed byte as it comes, half-closes and reads to the end.
 * With `abortAt`, closes the socket after sending that many bytes instead.
 * Line mode needs nothing special: random bytes hold a `\n` every 256 bytes
 * or so, and the stream comes back whole either way.
 */
async function oneConnection(
  connect: () => Promise<Deno.Conn>,
  seed: number,
  size: number,
  abortAt: number | undefined,
  rand: () => number,
): Promise<number> {
  using conn = await connect();
  const send = new RandomStream(seed);
  const check = new RandomStream(seed);
  let moved = performance.now();
  let stalled = false;
  const timer = setInterval(() => {
    if (performance.now() - moved > STALL_MS) {
      stalled = true;
      closeQuietly(conn);
    }
  }, 1000);
  const limit = abortAt ?? size;
  let received = 0;
  try {
    const writing = (async () => {
      let sent = 0;
      while (sent < limit) {
        const n = Math.min(limit - sent, logUniform(rand, 1, 64 * 1024));
        await writeAll(conn, send.next(n));
        sent += n;
        moved = performance.now();
        if (rand() < 0.1) await null;
      }
      // Dropped: close with the echo unread (the server sees a reset).
      if (abortAt === undefined) await conn.closeWrite();
      else conn.close();
    })();
    const reading = (async () => {
      const buf = new Uint8Array(64 * 1024);
      while (received < size) {
        const n = await conn.read(
          buf.subarray(0, Math.min(buf.length, size - received)),
        );
        if (n === null) {
          throw new Error(`server closed after ${received} of ${size} bytes`);
        }
        const expected = check.next(n);
        for (let i = 0; i < n; i++) {
          if (buf[i] !== expected[i]) {
            throw new Error(
              `mismatch at byte ${received + i} of ${size} (seed ${seed})`,
            );
          }
        }
        received += n;
        moved = performance.now();
      }
      if (await conn.read(buf) !== null) {
        throw new Error(`more than the ${size} bytes sent came back`);
      }
    })();
    await Promise.all([writing, reading]);
  } catch (err) {
    if (stalled) throw new Error(`no progress for ${STALL_MS / 1000} s`);
    throw err;
  } finally {
    clearInterval(timer);
  }
  return received;
}

/** A client: connection after connection until `deadline`. */
async function client(
  index: number,
  opts: Options,
  connect: () => Promise<Deno.Conn>,
  deadline: number,
  totals: Totals,
): Promise<void> {
  const rand = prng(opts.seed * 7919 + index);
  while (performance.now() < deadline) {
    const seed = 1 + Math.floor(rand() * 0x7ffffffe);
    const size = logUniform(rand, 1, opts.maxSize);
    const abortAt = rand() < opts.abortShare
      ? Math.floor(rand() * size)
      : undefined;
    try {
      // (Not `totals.bytes += await …`: that reads totals.bytes first.)
      const echoed = await oneConnection(connect, seed, size, abortAt, rand);
      totals.bytes += echoed;
      totals.connections++;
      if (abortAt !== undefined) totals.aborted++;
    } catch (err) {
      totals.connections++;
      // A dropped connection's own close is no error.
      if (abortAt !== undefined && isDisconnect(err)) {
        totals.aborted++;
        continue;
      }
      totals.errors++;
      if (totals.firstErrors.length < 10) {
        totals.firstErrors.push(`client ${index}: ${err}`);
      }
    }
  }
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
const fmtUsage = (u?: Usage) =>
  u ? `${u.fds} fds, VmRSS ${mib(u.rssKiB * 1024)}` : "n/a";

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parse(Deno.args);
  } catch (err) {
    console.error(`error: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const servers: SoakServer[] = [];
  const modeArgs = opts.mode === "line"
    ? ["--mode", "line", "--max-line", String(1 << 20)] // lines up to 1 MiB
    : ["--mode", opts.mode];
  if (opts.port === undefined) {
    servers.push(new SoakServer("tcp", modeArgs));
    if (opts.tlsShare > 0) {
      servers.push(
        new SoakServer("tls", [
          ...modeArgs,
          "--tls-cert",
          testdata("server.pem"),
          "--tls-key",
          testdata("server-key.pem"),
        ]),
      );
    }
  }
  const totals: Totals = {
    connections: 0,
    aborted: 0,
    bytes: 0,
    errors: 0,
    firstErrors: [],
  };
  const leaks: string[] = [];
  const started = performance.now();
  try {
    await Promise.all(servers.map((s) => s.listening()));
    const ca = Deno.readTextFileSync(testdata("ca.pem"));
    const tcpPort = opts.port ?? servers[0].port;
    const connectTcp = () =>
      Deno.connect({ hostname: "127.0.0.1", port: tcpPort });
    const connectTls = () =>
      Deno.connectTls({
        hostname: "localhost",
        port: servers[1].port,
        caCerts: [ca],
      });
    for (const s of servers) {
      await s.baseline(s.name === "tls" ? connectTls : connectTcp);
    }
    const tlsClients = Math.round(opts.clients * opts.tlsShare);
    const deadline = performance.now() + opts.durationS * 1000;
    const sampler = setInterval(() => {
      for (const s of servers) s.sample();
    }, SAMPLE_MS);
    try {
      await Promise.all(
        Array.from(
          { length: opts.clients },
          (_, i) =>
            client(
              i,
              opts,
              i < tlsClients ? connectTls : connectTcp,
              deadline,
              totals,
            ),
        ),
      );
    } finally {
      clearInterval(sampler);
    }
    // The servers close their side as the clients' EOFs arrive.
    for (const s of servers) {
      const leak = await s.settle(SETTLE_MS);
      if (leak !== undefined) leaks.push(`${s.name}: ${leak}`);
    }
  } catch (err) {
    totals.errors++;
    totals.firstErrors.push(String(err));
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
  const elapsedS = (performance.now() - started) / 1000;
  const failures = [
    ...(totals.errors > 0 ? [`${totals.errors} client errors`] : []),
    ...leaks,
    ...servers.flatMap((s) => [
      ...(s.exitCode !== 0 ? [`${s.name} server exited ${s.exitCode}`] : []),
      ...((s.levels.ERR ?? 0) + (s.levels.FTL ?? 0) + (s.levels.other ?? 0) > 0
        ? [`${s.name} server logged errors or unexpected lines`]
        : []),
      ...(/stopped: \d+ connections served/.test(s.lastLine)
        ? []
        : [`${s.name} server's last line is not "stopped: …"`]),
    ]),
  ];
  if (totals.connections === 0) failures.push("no connection completed");
  const report = {
    seed: opts.seed,
    duration_s: opts.durationS,
    elapsed_s: Number(elapsedS.toFixed(1)),
    clients: opts.clients,
    mode: opts.mode,
    connections: totals.connections,
    aborted: totals.aborted,
    bytes_verified: totals.bytes,
    mib_per_s: Number((totals.bytes / 2 ** 20 / elapsedS).toFixed(1)),
    errors: totals.errors,
    first_errors: totals.firstErrors,
    servers: servers.map((s) => ({
      name: s.name,
      pid: s.pid,
      start: s.start ?? null,
      peak: s.peak ?? null,
      end: s.end ?? null,
      log_levels: s.levels,
      notable: s.notable,
      last_line: s.lastLine,
      exit_code: s.exitCode ?? null,
    })),
    failures,
  };
  if (opts.json) {
    console.log(JSON.stringify(report));
  } else {
    const out = [
      `soak: ${opts.durationS} s, ${opts.clients} clients (${
        Math.round(opts.clients * opts.tlsShare)
      } TLS), ${opts.mode} mode, seed ${opts.seed}`,
      `connections: ${totals.connections} (${totals.aborted} dropped on purpose)`,
      `bytes echoed and verified: ${totals.bytes} (${
        mib(totals.bytes)
      }, ${report.mib_per_s} MiB/s)`,
      `errors: ${totals.errors}`,
      ...totals.firstErrors.map((e) => `  ${e}`),
      ...servers.flatMap((s) => [
        `${s.name} server (pid ${s.pid}): start ${fmtUsage(s.start)}; peak ${
          fmtUsage(s.peak)
        }; end ${fmtUsage(s.end)}`,
        `  log lines by level: ${
          JSON.stringify(s.levels)
        }; exit ${s.exitCode}; last: ${s.lastLine}`,
        ...s.notable.slice(0, 5).map((l) => `  ${l}`),
      ]),
      failures.length === 0
        ? "result: ok"
        : `result: FAILED: ${failures.join("; ")}`,
    ];
    console.log(out.join("\n"));
  }
  return failures.length === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exitCode = await main();
