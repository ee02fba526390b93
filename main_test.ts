import assert from "node:assert/strict";
import denoJson from "./deno.json" with { type: "json" };
import { echoAll, runCli, ServerProcess } from "./testing.ts";

const bytes = (text: string) => new TextEncoder().encode(text);
const posix = Deno.build.os !== "windows";

Deno.test("tcpecho --help and --version print to stdout and exit 0", async () => {
  const help = await runCli(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /usage: tcpecho <server\|client\|bench>/);
  assert.equal(help.stderr, "");
  const version = await runCli(["--version"]);
  assert.equal(version.code, 0);
  assert.match(
    version.stdout,
    new RegExp(`^tcpecho ${denoJson.version} \\(deno \\d+\\.\\d+\\.\\d+, v8 `),
  );
});

Deno.test("tcpecho server --help lists every option with its default", async () => {
  const { code, stdout } = await runCli(["server", "--help"]);
  assert.equal(code, 0);
  for (
    const option of [
      "--host ADDR",
      "(default 127.0.0.1)",
      "--port N",
      "(default 8080)",
      "--unix PATH",
      "--mode raw|line",
      "--max-line BYTES",
      "(default 65536)",
      "--max-conns N",
      "(default 10000)",
      "--max-conns-per-ip N",
      "--idle-timeout SECONDS",
      "--shutdown-timeout SECONDS",
      "(default 5)",
      "--tls-cert FILE --tls-key FILE",
      "--log-level debug|info|warn|error",
      "-v, --verbose",
      "-q, --quiet",
      "--log-format text|json",
    ]
  ) assert.ok(stdout.includes(option), `missing ${option}`);
  const client = await runCli(["client", "--help"]);
  assert.equal(client.code, 0);
  assert.match(client.stdout, /--connect-timeout SECONDS .*\(default 5\)/);
});

Deno.test("tcpecho usage errors exit 2 with error and usage lines", async (t) => {
  const cases: [string[], RegExp][] = [
    [[], /^error: a command is required$/],
    [["serve"], /^error: unknown command "serve"$/],
    [
      ["server", "--port", "70000"],
      /--port takes a whole number from 0 to 65535, not "70000"/,
    ],
    [["server", "--port", "80a"], /--port takes a whole number/],
    [["server", "--bogus"], /^error: unknown option '--bogus'/],
    [["server", "--mode", "fast"], /--mode takes raw or line, not "fast"/],
    [["server", "--tls-cert", "c.pem"], /--tls-cert and --tls-key go together/],
    [["server", "--idle-timeout=-1"], /--idle-timeout takes seconds/],
    [["server", "--idle-timeout", "-1"], /argument is ambiguous/],
    [["server", "extra"], /unexpected argument 'extra'/],
    [["client", "--port", "0"], /--port takes a whole number from 1 to 65535/],
  ];
  for (const [args, message] of cases) {
    await t.step(args.join(" ") || "(no args)", async () => {
      const { code, stdout, stderr } = await runCli(args);
      assert.equal(code, 2);
      assert.equal(stdout, "");
      const lines = stderr.trimEnd().split("\n");
      assert.equal(lines.length, 2, stderr);
      assert.match(lines[0], message);
      assert.match(lines[1], /^usage: tcpecho/);
    });
  }
});

Deno.test("tcpecho server exits 1 with one error line when the port is in use", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { code, stderr } = await runCli(["server", "-p", `${taken.addr.port}`]);
  assert.equal(code, 1);
  assert.equal(
    stderr,
    `error: cannot listen on 127.0.0.1:${taken.addr.port}: Address already in use (os error 98)\n`,
  );
});

Deno.test("tcpecho server exits 1 naming an unreadable TLS file", async () => {
  const { code, stderr } = await runCli([
    "server",
    "--tls-cert",
    "missing.pem",
    "--tls-key",
    "missing-key.pem",
  ]);
  assert.equal(code, 1);
  assert.match(
    stderr,
    /^error: cannot read TLS certificate "missing.pem": No such file or directory \(os error 2\)\n$/,
  );
});

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test({
    name: `tcpecho server stops gracefully on ${signal} and exits 0`,
    ignore: !posix,
    async fn() {
      await using server = await ServerProcess.start(["--port", "0"]);
      using conn = await Deno.connect({ port: server.port });
      assert.deepEqual(await echoAll(conn, bytes("hello")), bytes("hello"));
      await server.waitFor(/offline/);
      assert.equal(await server.stop(signal), 0);
      assert.match(
        server.lines.at(-1)!,
        /INF stopped: 1 connections served, 5 bytes echoed$/,
      );
    },
  });
}

Deno.test({
  name: "tcpecho server exits 130 on a second signal during shutdown",
  ignore: !posix,
  async fn() {
    await using server = await ServerProcess.start([
      "--port",
      "0",
      "--shutdown-timeout",
      "60",
    ]);
    using conn = await Deno.connect({ port: server.port });
    await server.waitFor(/online/);
    server.child.kill("SIGTERM");
    await server.waitFor(/stopping: waiting up to 60\.00 s for 1 connections/);
    assert.equal(await server.stop("SIGINT"), 130);
    assert.equal(await conn.read(new Uint8Array(1)), null);
  },
});

Deno.test("tcpecho server logs online and offline with exact byte counts", async () => {
  await using server = await ServerProcess.start(["--port", "0"]);
  using conn = await Deno.connect({ port: server.port });
  const peer = `127.0.0.1:${(conn.localAddr as Deno.NetAddr).port}`;
  await echoAll(conn, bytes("hello world"));
  const offline = await server.waitFor(/offline/);
  assert.match(
    offline,
    new RegExp(
      `^\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d\\.\\d{3} INF \\[${peer}\\] offline \\(\\d+\\.\\d\\d s, 11 bytes in, 11 bytes out\\)$`,
    ),
  );
  assert.ok(server.lines.some((l) => l.endsWith(`INF [${peer}] online`)));
});

Deno.test("tcpecho server -v logs each line escaped; --log-format json parses", async () => {
  await using server = await ServerProcess.start([
    "--port",
    "0",
    "--mode",
    "line",
    "-v",
    "--log-format",
    "json",
  ]);
  using conn = await Deno.connect({ port: server.port });
  const forged = "a\r\n\x1b[2J2026-01-01 INF [9.9.9.9:9] offline\n";
  assert.deepEqual(await echoAll(conn, bytes(forged)), bytes(forged));
  await server.waitFor(/offline/);
  assert.equal(await server.stop(), 0);
  const records = server.lines.map((l) => JSON.parse(l));
  const reqs = records.filter((r) => r.message.includes("req:"));
  assert.equal(reqs.length, 2);
  for (const { message } of reqs) {
    assert.doesNotMatch(message, /[\r\n]/);
    assert.ok(!message.includes("\x1b"), message);
  }
  assert.ok(reqs[1].message.includes(String.raw`\u001b[2J2026-01-01`));
  const offline = records.find((r) => /\] offline \(/.test(r.message));
  assert.equal(offline.level, "INFO");
  assert.equal(offline.properties.bytesIn, forged.length);
});
