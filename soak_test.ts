import assert from "node:assert/strict";
import { echoServer } from "./testing_cli.ts";

const SOAK = new URL("./tools/soak.ts", import.meta.url).pathname;

async function soak(args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", SOAK, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}

Deno.test({
  name:
    "tools/soak.ts runs plain and TLS servers, verifies, reports fds and RSS",
  ignore: Deno.build.os !== "linux", // /proc
  async fn() {
    const { code, stdout, stderr } = await soak([
      "--duration",
      "2",
      "--clients",
      "8",
      "--seed",
      "3",
      "--json",
    ]);
    assert.equal(stderr, "");
    const report = JSON.parse(stdout);
    assert.deepEqual(report.failures, []);
    assert.equal(code, 0);
    assert.equal(report.errors, 0);
    assert.ok(report.connections > 0 && report.bytes_verified > 0);
    assert.deepEqual(report.servers.map((s: { name: string }) => s.name), [
      "tcp",
      "tls",
    ]);
    for (const s of report.servers) {
      assert.ok(s.start.fds > 0 && s.peak.fds >= s.start.fds);
      assert.ok(s.end.fds <= s.start.fds, JSON.stringify(s));
      assert.ok(s.start.rssKiB > 0 && s.peak.rssKiB >= s.start.rssKiB);
      assert.equal(s.exit_code, 0);
      assert.match(s.last_line, /INF stopped: \d+ connections served/);
    }
  },
});

Deno.test("tools/soak.ts exits 1 when a server corrupts the echo", async () => {
  // An echo server that flips one bit of every 100,000th byte it echoes.
  let echoed = 0;
  await using server = echoServer({
    mangle(chunk) {
      for (let i = 0; i < chunk.length; i++) {
        if (++echoed % 100_000 === 0) chunk[i] ^= 1;
      }
      return chunk;
    },
  });
  const { code, stdout } = await soak([
    "--port",
    String(server.port),
    "--duration",
    "1",
    "--clients",
    "4",
    "--abort-share",
    "0",
  ]);
  assert.equal(code, 1);
  assert.match(stdout, /^errors: [1-9]/m);
  assert.match(stdout, /mismatch at byte \d+/);
  assert.match(stdout, /^result: FAILED: \d+ client errors/m);
});
