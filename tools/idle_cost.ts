/**
 * What an idle connection costs `tcpecho server`, over TCP and over TLS,
 * measured one way for both: the server runs as a child (`-q`, the tcpecho
 * task's permissions, one worker), N clients connect (TLS: the handshake
 * completes), each sends 16 bytes and reads them back, and then all stay
 * open, silent. The figure is the growth of the child's resident set
 * (`VmRSS` in `/proc/PID/status`), from after a warm-up of N/10 connections
 * opened and closed, to a second after the last client's echo, divided by N.
 * Median of the rounds, each on a fresh server, with the range. Linux.
 *
 * ```sh
 * deno run -A tools/idle_cost.ts [N=5000] [ROUNDS=3]
 * ```
 *
 * The harness's idle scenario (`../shared/bench`, `loadgen --mode idle`)
 * measures TCP the same way without the warm-up; it needs `ulimit -n` above
 * N + 100 here too, as this process holds the clients.
 *
 * @module
 */
import { ServerChild } from "../spawn.ts";
import { CA } from "../testing.ts";
import { TLS_ARGS } from "../testing_cli.ts";

const n = Number(Deno.args[0] ?? 5000);
const rounds = Number(Deno.args[1] ?? 3);
if (!(Number.isInteger(n) && n > 0 && Number.isInteger(rounds) && rounds > 0)) {
  console.error("usage: idle_cost.ts [N=5000] [ROUNDS=3]");
  Deno.exit(2);
}

/** The resident set of process `pid`, in KiB. */
function rssKib(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = status.match(/^VmRSS:\s+(\d+) kB$/m);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]);
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 1000));

/** Opens `count` connections, 100 at a time, each echoing 16 bytes once. */
async function open(
  count: number,
  port: number,
  tls: boolean,
): Promise<Deno.Conn[]> {
  const conns: Deno.Conn[] = [];
  const hello = new TextEncoder().encode("sixteen bytes...");
  for (let i = 0; i < count; i += 100) {
    const batch = Array.from(
      { length: Math.min(100, count - i) },
      async () => {
        const conn = tls
          ? await Deno.connectTls({
            hostname: "localhost",
            port,
            caCerts: [CA],
          })
          : await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(hello);
        const back = new Uint8Array(16);
        for (let got = 0; got < 16;) {
          const r = await conn.read(back.subarray(got));
          if (r === null) throw new Error("server closed an idle client");
          got += r;
        }
        return conn;
      },
    );
    conns.push(...await Promise.all(batch));
  }
  return conns;
}

async function round(tls: boolean): Promise<number> {
  const args = ["--port", "0", "-q", "--max-conns", String(n + 100)];
  await using server = new ServerChild(tls ? [...args, ...TLS_ARGS] : args);
  await server.ready;
  const pid = server.child.pid;
  for (const conn of await open(Math.ceil(n / 10), server.port, tls)) {
    conn.close();
  }
  await settle();
  const before = rssKib(pid);
  const conns = await open(n, server.port, tls);
  await settle();
  const after = rssKib(pid);
  for (const conn of conns) conn.close();
  const code = await server.stop();
  if (code !== 0) throw new Error(`server exited ${code}`);
  return (after - before) / n;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
for (const tls of [false, true]) {
  const perConn: number[] = [];
  for (let r = 0; r < rounds; r++) perConn.push(await round(tls));
  const [mid, lo, hi] = [
    median(perConn),
    Math.min(...perConn),
    Math.max(...perConn),
  ]
    .map((kib) => kib.toFixed(1));
  console.log(
    `${tls ? "TLS" : "TCP"}: ${mid} KiB per idle connection (${lo}–${hi}), ` +
      `N=${n}, ${rounds} rounds`,
  );
}
