/**
 * What releasing the sockets of server-closed TLS connections costs
 * (`_tls_release.ts`): N clients stuck mid-handshake, closed together by the
 * handshake timeout; how long until every client saw its connection end and
 * the server's descriptors were closed, and the releaser's own time
 * (walks, milliseconds). Linux, `--allow-ffi`.
 *
 * ```sh
 * deno run -A tools/tls_release_cost.ts [N=1000]
 * ```
 *
 * @module
 */
import { serve } from "../server.ts";
import { tlsReleaser } from "../_tls_release.ts";

const n = Number(Deno.args[0] ?? 1000);
const testdata = (name: string) =>
  Deno.readTextFileSync(new URL(`../testdata/${name}`, import.meta.url));
const release = tlsReleaser();
if (release === undefined) throw new Error("needs Linux and --allow-ffi");

/** Our descriptors of TCP sockets whose local port is `port`. */
function socketsOn(port: number): number {
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  const inodes = new Set<string>();
  for (const table of ["tcp", "tcp6"]) {
    for (
      const line of Deno.readTextFileSync(`/proc/self/net/${table}`).split("\n")
    ) {
      const f = line.trim().split(/\s+/);
      if (f[1]?.endsWith(hexPort) && f[9] !== "0") inodes.add(f[9]);
    }
  }
  let count = 0;
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      const link = Deno.readLinkSync(`/proc/self/fd/${entry.name}`);
      if (inodes.has(link.slice(8, -1))) count++; // socket:[INODE]
    } catch { /* closed meanwhile */ }
  }
  return count;
}

// A real ClientHello, of which each client sends the first half.
const hello = new Uint8Array(16 * 1024);
let half: number;
{
  using capture = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const connecting = Deno.connectTls({
    hostname: "localhost",
    port: capture.addr.port,
    caCerts: [testdata("ca.pem")],
  }).then((conn) => conn.handshake().finally(() => conn.close()))
    .catch(() => {});
  using conn = await capture.accept();
  half = (await conn.read(hello))! >> 1;
  conn.close();
  await connecting;
}

let closed = 0;
let closedAt = 0;
await using server = serve({
  port: 0,
  cert: testdata("server.pem"),
  key: testdata("server-key.pem"),
  handshakeTimeoutMs: 2000, // time to connect them all first
  onConnState: (e) => {
    if (e.state === "closed" && ++closed === n) closedAt = performance.now();
  },
});
const port = server.addr.port;
const clients: Deno.Conn[] = [];
for (let i = 0; i < n; i += 100) { // in waves: the listen backlog is finite
  clients.push(
    ...await Promise.all(
      Array.from({ length: Math.min(100, n - i) }, async () => {
        const conn = await Deno.connect({ port });
        await conn.write(hello.subarray(0, half));
        return conn;
      }),
    ),
  );
}
const stats0 = { ...release.stats };
const buf = new Uint8Array(1024);
const ends = await Promise.all(clients.map(async (conn) => {
  try {
    while (await conn.read(buf) !== null) { /* drain */ }
  } catch { /* reset */ }
  return performance.now();
}));
const lastEnd = Math.max(...ends);
// Polled: nothing announces the descriptor's close (see tls_release_test.ts).
const deadline = performance.now() + 10_000;
while (socketsOn(port) > 1 && performance.now() < deadline) {
  await new Promise((r) => setTimeout(r, 5));
}
const backAt = performance.now();
const left = socketsOn(port) - 1;
const { walks, ms, shut } = release.stats;
console.log(
  `${n} connections closed by the handshake timeout: ` +
    `every client saw the end ${(lastEnd - closedAt).toFixed(0)} ms after ` +
    `the last close (grace 50 ms); server sockets closed ` +
    `${(backAt - closedAt).toFixed(0)} ms after it (${left} left); releaser: ` +
    `${shut - stats0.shut} shut down in ${walks - stats0.walks} walks, ` +
    `${(ms - stats0.ms).toFixed(1)} ms in all, ` +
    `${[...Deno.readDirSync("/proc/self/fd")].length} descriptors open`,
);
// A walk with nothing to find, over every descriptor.
{
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conn = await Deno.connect({ port: listener.addr.port });
  (await listener.accept()).close();
  const { ms: ms0 } = release.stats;
  release(conn);
  conn.close();
  await release.settled();
  console.log(
    `one walk over ${[...Deno.readDirSync("/proc/self/fd")].length} ` +
      `descriptors, nothing to shut down: ${
        (release.stats.ms - ms0).toFixed(2)
      } ms`,
  );
}
for (const conn of clients) conn.close();
