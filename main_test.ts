import assert from "node:assert/strict";
import denoJson from "./deno.json" with { type: "json" };
import { serve } from "./server.ts";
import { type Command, findCommand } from "./_cli.ts";
import { benchCommand } from "./_bench_command.ts";
import { clientCommand } from "./_client_command.ts";
import { serverCommand } from "./_server_command.ts";
import { bytes, CA, captureLogs, echoAll, posix, testdata } from "./testing.ts";
import {
  argv,
  assertUsageError,
  benchClean,
  benchJson,
  cli,
  echoServer,
  flipBitAt,
  hasScript,
  LATENCY_KEYS,
  RESULT_KEYS,
  runCli,
  ServerProcess,
  TLS_ARGS,
  underPty,
} from "./testing_cli.ts";

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

Deno.test("tcpecho --help lists each command; each answers --help from its table", async () => {
  const commands = [serverCommand, clientCommand, benchCommand];
  const main = await runCli(["--help"]);
  const list = main.stdout.split("\ncommands:\n")[1].split("\n\n")[0];
  assert.deepEqual(
    list.split("\n").map((line) => line.trim().split(" ")[0]),
    commands.map(({ name }) => name),
  );
  for (const { name, usage, help, options } of commands) {
    for (const args of [["--help"], ["-h"], ["--port", "x", "--help"]]) {
      const { code, stdout, stderr } = await runCli([name, ...args]);
      assert.equal(code, 0, stderr);
      assert.equal(stderr, "");
      assert.equal(stdout, `${help}\n`);
      assert.ok(stdout.startsWith(`${usage}\n\n`), stdout);
    }
    for (const [option, { short }] of Object.entries(options)) {
      const flag = short ? `-${short}, --${option}` : `--${option}`;
      assert.ok(help.includes(flag), `${name} --help: missing ${flag}`);
    }
    assert.match(help, /\n {2}-h, --help +this help\n/);
    const bad = await runCli([name, "--bogus"]);
    assert.equal(bad.code, 2);
    assert.equal(bad.stderr, `error: unknown option '--bogus'\n${usage}\n`);
  }
});

Deno.test("findCommand() follows subcommands and leaves their arguments", () => {
  const stub = { summary: "", usage: "", help: "", options: {} };
  const run = () => Promise.resolve(0);
  const merge: Command = { ...stub, name: "merge", run };
  const bench: Command = { ...stub, name: "bench", commands: [merge], run };
  const table = [bench];
  assert.deepEqual(findCommand(table, ["bench", "merge", "a", "b"]), {
    command: merge,
    args: ["a", "b"],
  });
  assert.deepEqual(findCommand(table, ["bench", "-c", "1", "merge"]), {
    command: bench,
    args: ["-c", "1", "merge"],
  });
  assert.deepEqual(findCommand(table, ["bench"]), { command: bench, args: [] });
  assert.equal(findCommand(table, ["merge"]), undefined);
  assert.equal(findCommand(table, []), undefined);
});

Deno.test("tcpecho usage errors exit 2 with error and usage lines", async (t) => {
  const cases: [string[], RegExp][] = [
    [[], /^error: a command is required$/],
    [["serve"], /^error: unknown command "serve": did you mean server\?$/],
    [
      ["server", "--port", "70000"],
      /--port takes a whole number from 0 to 65535, not "70000"/,
    ],
    [["server", "--port", "80a"], /--port takes a whole number/],
    [["server", "--bogus"], /^error: unknown option '--bogus'/],
    [
      ["server", "--mode", "fast"],
      /--mode takes raw or line or discard, not "fast"/,
    ],
    [["server", "--tls-cert", "c.pem"], /--tls-cert and --tls-key go together/],
    [["server", "--idle-timeout=-1"], /--idle-timeout takes a duration ≥ 0/],
    [
      ["server", "--idle-timeout", "-1"],
      /^error: --idle-timeout takes a duration ≥ 0, such as 30, 500ms, 10s or 1m, not "-1"$/,
    ],
    [["server", "extra"], /unexpected argument 'extra'/],
    [["client", "--port", "0"], /--port takes a whole number from 1 to 65535/],
    [
      ["client", "--unix", "/tmp/x.sock", "-p", "1"],
      /^error: --unix cannot go with --host or --port$/,
    ],
    [["client", "--ca", "ca.pem"], /^error: --ca needs --tls$/],
  ];
  for (const [args, message] of cases) {
    await t.step(
      args.join(" ") || "(no args)",
      () => assertUsageError(args, message),
    );
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
  const { code, stderr } = await runCli(
    argv("server --tls-cert missing.pem --tls-key missing-key.pem"),
  );
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
    await using server = await ServerProcess.start(
      argv("--port 0 --shutdown-timeout 60"),
    );
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
  await using server = await ServerProcess.start(
    argv("--port 0 --mode line -v --log-format json"),
  );
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
  // Typed: seconds as a number; the message keeps its two decimals.
  assert.equal(typeof offline.properties.duration_s, "number");
  assert.ok(offline.properties.duration_s >= 0);
  assert.match(offline.message, /offline \(\d+\.\d\d s, /);
});

// ---- transports -----------------------------------------------------------

Deno.test("tcpecho server exits 1 on a file that holds no certificate", async () => {
  const { code, stderr } = await runCli([
    "server",
    "--tls-cert",
    testdata("not-a-cert.pem"),
    "--tls-key",
    testdata("server-key.pem"),
  ]);
  assert.equal(code, 1);
  assert.equal(
    stderr,
    `error: cannot read TLS certificate "${
      testdata("not-a-cert.pem")
    }": no PEM certificate in it\n`,
  );
});

Deno.test("tcpecho server --unix with TLS is a usage error", async () => {
  const { code, stderr } = await runCli([
    ...argv("server --unix /tmp/x.sock"),
    ...TLS_ARGS,
  ]);
  assert.equal(code, 2);
  assert.match(
    stderr,
    /^error: TLS is served over TCP only, not --unix\nusage:/,
  );
});

Deno.test({
  name:
    "tcpecho server --unix replaces a stale socket, refuses others, removes its file",
  ignore: !posix,
  async fn() {
    const dir = Deno.makeTempDirSync();
    const path = `${dir}/echo.sock`;
    try {
      // A stale socket file: its process died without removing it.
      const stale = await new Deno.Command(Deno.execPath(), {
        args: [
          "eval",
          `Deno.listen({ transport: "unix", path: ${
            JSON.stringify(path)
          } }); Deno.exit(0);`,
        ],
      }).output();
      assert.ok(stale.success && Deno.lstatSync(path).isSocket);
      await using server = await ServerProcess.start(["--unix", path]);
      assert.match(server.lines[0], new RegExp(`listening on unix:${path}$`));
      // A second server on the live socket: address in use.
      const second = await runCli(["server", "--unix", path]);
      assert.equal(second.code, 1);
      assert.match(
        second.stderr,
        /^error: cannot listen on unix:.*echo\.sock: Address already in use/,
      );
      using conn = await Deno.connect({ transport: "unix", path });
      assert.deepEqual(await echoAll(conn, bytes("unix")), bytes("unix"));
      // (unix#1 was the second server's probe: is anybody listening?)
      await server.waitFor(/\[unix#2\] offline \(.*4 bytes in, 4 bytes out\)/);
      assert.equal(await server.stop(), 0);
      assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound);
      // A path that is not a socket is never deleted.
      Deno.writeTextFileSync(path, "precious");
      const refused = await runCli(["server", "--unix", path]);
      assert.equal(refused.code, 1);
      assert.equal(
        refused.stderr,
        `error: cannot listen on unix:${path}: "${path}" is not a socket\n`,
      );
      assert.equal(Deno.readTextFileSync(path), "precious");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

Deno.test("tcpecho server --tls-cert/--tls-key serves TLS", async () => {
  await using server = await ServerProcess.start(["--port", "0", ...TLS_ARGS]);
  using conn = await Deno.connectTls({
    hostname: "localhost",
    port: server.port,
    caCerts: [CA],
  });
  assert.deepEqual(await echoAll(conn, bytes("secret")), bytes("secret"));
  await server.waitFor(/offline \(.*6 bytes in, 6 bytes out\)/);
});

// ---- bench ----------------------------------------------------------------

Deno.test("tcpecho bench --spawn-server --json prints the spec's object", async () => {
  const { result } = await benchClean(argv("--spawn-server -c 4 -d 0.3"));
  assert.deepEqual(Object.keys(result), RESULT_KEYS);
  assert.deepEqual(Object.keys(result.latency_us), LATENCY_KEYS);
});

Deno.test("tcpecho bench --lines --spawn-server measures a line-mode server", async () => {
  await benchClean(argv("--spawn-server --lines -c 2 -d 0.3"));
});

Deno.test("tcpecho bench exits 1 when a server corrupts an echo", async () => {
  // An echo server that flips one bit of the 1000th byte it echoes.
  await using server = echoServer({ mangle: flipBitAt(1000) });
  const { code, stdout, stderr } = await runCli(
    argv(`bench -p ${server.port} -c 1 -d 0.2 --json`),
  );
  assert.equal(code, 1, stderr);
  assert.ok(JSON.parse(stdout).errors >= 1);
  assert.match(stderr, /^warning: .*mismatch/m);
  assert.match(stderr, /^error: \d+ errors during the run/m);
});

Deno.test("tcpecho bench usage errors exit 2", async () => {
  for (
    const args of [
      ["bench", "--pattern", "burst"],
      ["bench", "-c", "0"],
      ["bench", "-d", "0"],
      ["bench", "--spawn-server", "-p", "9"],
      ["bench", "--spawn-server", "--tls"],
      ["bench", "--pattern", "stream", "--rate", "100"],
      ["bench", "--pattern", "stream", "--hlog", "x.hlog"],
      ["bench", "--threads", "0"],
      ["bench", "--interval", "0"],
      ["bench", "merge"],
    ]
  ) {
    const { code, stderr } = await runCli(args);
    assert.equal(code, 2, args.join(" "));
    assert.match(stderr, /^error: .*\nusage: tcpecho bench/);
  }
});

Deno.test({
  name: "tcpecho bench stops on Ctrl+C, prints what it measured, exits 130",
  ignore: !posix,
  async fn() {
    await using logs = await captureLogs();
    await using server = serve({ port: 0 });
    const online = logs.next(/online/);
    const child = cli(argv(`bench -p ${server.addr.port} -c 1 -d 60 --json`))
      .spawn();
    await online; // the run has started
    child.kill("SIGINT");
    const { code, stdout } = await child.output();
    assert.equal(code, 130);
    const result = JSON.parse(new TextDecoder().decode(stdout));
    assert.equal(result.errors, 0);
    assert.ok(result.duration_s < 60);
  },
});

Deno.test("tcpecho bench --interval prints one line per interval on stderr, kept", async () => {
  await using server = serve({ port: 0 });
  const { result, stderr } = await benchJson(
    argv(`-p ${server.addr.port} -c 2 -d 1 --interval 0.25`),
  );
  const lines = stderr.trimEnd().split("\n");
  assert.ok(lines.length >= 4 && lines.length <= 5, stderr);
  for (const line of lines) {
    assert.match(
      line,
      /^\[ +\d+\.\d- +\d+\.\d s\] +[\d,]+ msg\/s +[\d.]+ MiB\/s {2}p99 [\d.]+ (µs|ms)$/,
    );
  }
  assert.match(lines[0], /^\[ {2}0\.0- {2}0\.[23] s\]/);
  assert.ok(result.messages > 0);
});

Deno.test("tcpecho bench --threads 2: one result over both workers", async () => {
  await using server = serve({ port: 0 });
  const { code, stdout, stderr } = await runCli(
    argv(`bench -p ${server.addr.port} -c 6 -d 0.5 --threads 2`),
  );
  assert.equal(code, 0, stderr);
  assert.match(
    stdout,
    /^bench 127\.0\.0\.1:\d+: pingpong, 6 connections, 64-byte messages, 0\.5\d s after a 1 s warm-up, 2 threads$/m,
  );
  const messages = Number(
    /^messages +([\d,]+)/m.exec(stdout)![1].replaceAll(",", ""),
  );
  const bytes = Number(
    /^bytes +([\d,]+) echoed bytes received/m.exec(stdout)![1].replaceAll(
      ",",
      "",
    ),
  );
  assert.equal(bytes, messages * 64);
  assert.equal(server.stats.served, 6);
  assert.match(stdout, /^per conn +min [1-9]/m);
});

Deno.test("tcpecho bench groups errors by cause and hints at --lines", async () => {
  await using server = serve({ port: 0, mode: "line" });
  const { code, stdout, stderr } = await runCli(
    argv(`bench -p ${server.addr.port} -c 2 -d 0.2`),
  );
  assert.equal(code, 1, stderr);
  assert.match(
    stdout,
    /^errors {5}2\n {7}2 × no echo\n {11}hint: is the server in line mode\? try --lines$/m,
  );
  assert.match(stderr, /^error: 2 errors during the run/m);
});

Deno.test("tcpecho bench --rate says when the server did not keep up", async () => {
  // One connection, one message in flight, each echo held 100 ms: at most
  // 10 msg/s of the 200 asked.
  await using server = serve({ port: 0, delayMs: 100 });
  const { code, stdout, stderr } = await runCli(
    argv(`bench -p ${server.addr.port} -c 1 -d 0.5 --rate 200`),
  );
  assert.equal(code, 0, stderr);
  const match =
    /^rate {7}the server did not keep up: ([\d,.]+) msg\/s of the 200 asked \(latency counts the wait\)$/m
      .exec(stdout);
  assert.ok(match, stdout);
  assert.ok(Number(match[1].replaceAll(",", "")) < 200 * 0.97, stdout);
});

Deno.test("tcpecho bench --spawn-server --lines -s 70000 gives the server a --max-line that fits", async () => {
  // Over the server's default 65,536-byte line limit: without the matching
  // --max-line every message would be cut, an error.
  const { result } = await benchClean(
    argv("--spawn-server --lines -s 70000 -c 1 -d 0.2"),
  );
  assert.equal(result.size, 70_000);
});

Deno.test("tcpecho bench --pattern connect reports connections a second", async () => {
  await using server = serve({ port: 0 });
  const { code, stdout, stderr } = await runCli(
    argv(`bench -p ${server.addr.port} --pattern connect -c 2 -d 0.2`),
  );
  assert.equal(code, 0, stderr);
  assert.match(stdout, /^bench 127\.0\.0\.1:\d+: connect, 2 connections/m);
  assert.match(stdout, /^connects {3}[1-9][\d,.]* conn\/s$/m);
  assert.match(stdout, /^latency {4}connect to close$/m);
  assert.match(stdout, /^errors {5}0$/m);
  assert.ok(server.stats.served > 2);
});

Deno.test("tcpecho bench usage line names TLS, --spawn-server and the connect timeout", async () => {
  const { code, stdout } = await runCli(["bench", "--help"]);
  assert.equal(code, 0);
  const usage = stdout.split("\n")[0];
  for (
    const part of [
      "[--tls [--ca FILE | --insecure]]",
      "[--connect-timeout SECONDS]",
      "[--spawn-server]",
      "[HOST [PORT] | HOST:PORT]",
    ]
  ) assert.ok(usage.includes(part), `bench usage: missing ${part}: ${usage}`);
  // And a usage error prints that same line.
  const error = await runCli(["bench", "-c", "0"]);
  assert.equal(error.stderr.trimEnd().split("\n")[1], usage);
});

Deno.test("tcpecho bench HOST PORT and HOST:PORT measure where --host and --port would", async (t) => {
  await using server = serve({ port: 0 });
  const port = `${server.addr.port}`;
  for (const target of [["127.0.0.1", port], [`127.0.0.1:${port}`]]) {
    await t.step(target.join(" "), async () => {
      const served = server.stats.served;
      const { code, stdout, stderr } = await runCli([
        ...argv("bench -c 1 -d 0.1"),
        ...target,
      ]);
      assert.equal(code, 0, stderr);
      assert.match(stdout, new RegExp(`^bench 127\\.0\\.0\\.1:${port}: `, "m"));
      assert.equal(server.stats.served, served + 1);
    });
  }
});

Deno.test("tcpecho bench --tls without --ca hints at --ca for a self-signed server", async () => {
  await using server = await ServerProcess.start(["--port", "0", ...TLS_ARGS]);
  const { code, stdout, stderr } = await runCli(
    argv(`bench --tls --host localhost -p ${server.port} -c 1 -d 0.1`),
  );
  // The first connection fails: no run, one error line with the way out.
  assert.equal(code, 1, stderr);
  assert.equal(stdout, "");
  assert.equal(
    stderr,
    `error: cannot connect to localhost:${server.port}: invalid peer certificate: UnknownIssuer` +
      " (trust the server's CA with --ca FILE, or skip the check with --insecure)\n",
  );
});

Deno.test("tcpecho bench -s 16M completes 16 MiB messages with no error", async () => {
  await using server = serve({ port: 0 });
  const { result } = await benchClean(
    argv(`-p ${server.addr.port} -s 16M -c 1 -d 0.2`),
  );
  assert.equal(result.size, 16 << 20);
  assert.equal(result.bytes, result.messages * (16 << 20));
});

Deno.test({
  name: "tcpecho bench on a terminal shows a warming up progress line",
  ignore: !hasScript,
  async fn() {
    await using server = serve({ port: 0 });
    const pty = underPty(
      ["-p", `${server.addr.port}`, "-c", "1", "-d", "0.1"],
      20_000,
      "bench",
    );
    await pty.see("warming up ");
    await pty.see("errors     0"); // the report, once the run is over
    assert.equal(await pty.exit(), 0, pty.screen);
    // Rewritten in place: \r, the line, then erase to the end of the line.
    assert.match(
      pty.screen,
      new RegExp("\rwarming up \\d\\.\\d/1\\.0 s {2}errors 0\x1b\\[K"),
    );
  },
});
