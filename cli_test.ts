import assert from "node:assert/strict";
import {
  bytes,
  milliseconds,
  secondsMs,
  splitHostPort,
  suggest,
  targetFromPositionals,
  UsageError,
} from "./_cli.ts";
import { serve } from "./server.ts";
import { echoAll, posix, testdata } from "./testing.ts";
import {
  argv,
  assertUsageError,
  runCli,
  runClient,
  ServerProcess,
} from "./testing_cli.ts";

/** These runs end at once, or the test fails (killed after this). */
const RUN_MS = 20_000;

// ---- typos ----------------------------------------------------------------

Deno.test("suggest() names the likely meant word, or nothing", () => {
  const options = ["host", "port", "connections", "connect-timeout", "help"];
  assert.equal(suggest("conections", options), "connections");
  assert.equal(suggest("connectoins", options), "connections"); // a swap
  assert.equal(suggest("prot", options), "port");
  assert.equal(suggest("hots", options), "host");
  assert.equal(suggest("connect-timout", options), "connect-timeout");
  assert.equal(suggest("clinet", ["server", "client", "bench"]), "client");
  assert.equal(suggest("serve", ["server", "client", "bench"]), "server");
  for (const far of ["x", "verbose", "ports-and-hosts", "bogus", "pt"]) {
    assert.equal(suggest(far, options), undefined, far);
  }
});

Deno.test("tcpecho suggests the option or command meant by a typo", async () => {
  await assertUsageError(
    ["bench", "--conections", "5"],
    "unknown option '--conections': did you mean --connections?",
  );
  await assertUsageError(
    ["client", "--prot=1"],
    "unknown option '--prot': did you mean --port?",
  );
  await assertUsageError(
    ["server", "--idle-timout", "1"],
    "unknown option '--idle-timout': did you mean --idle-timeout?",
  );
  await assertUsageError(
    ["clinet"],
    'unknown command "clinet": did you mean client?',
  );
  await assertUsageError(["xyzzy"], 'unknown command "xyzzy"');
  await assertUsageError(["server", "--bogus"], "unknown option '--bogus'");
});

Deno.test("tcpecho reads a negative number as the option's value and says what it takes", async () => {
  await assertUsageError(
    ["bench", "-c", "-5"],
    '--connections takes a whole number from 1 to 100000, not "-5"',
  );
  await assertUsageError(
    ["bench", "--connections", "-5"],
    '--connections takes a whole number from 1 to 100000, not "-5"',
  );
  await assertUsageError(
    ["client", "-p", "-1"],
    '--port takes a whole number from 1 to 65535, not "-1"',
  );
  // A value that is not a number keeps node:util's word for it.
  await assertUsageError(["bench", "-c", "-x"], /argument is ambiguous/);
});

Deno.test("tcpecho --version takes no argument", async () => {
  await assertUsageError(
    ["--version", "garbage"],
    '--version takes no argument, not "garbage"',
  );
  await assertUsageError(["-V", "x"], '-V takes no argument, not "x"');
});

// ---- durations and sizes --------------------------------------------------

Deno.test("secondsMs() takes seconds or a number with a unit", () => {
  const ms = (value: string, positive = false) =>
    secondsMs({ t: value }, "t", { positive });
  assert.equal(ms("2"), 2000);
  assert.equal(ms("0.25"), 250);
  assert.equal(ms(".5"), 500);
  assert.equal(ms("0"), 0);
  assert.equal(ms("500ms"), 500);
  assert.equal(ms("10s"), 10_000);
  assert.equal(ms("1.5m"), 90_000);
  assert.equal(ms("1h"), 3_600_000);
  assert.equal(ms("1000000"), 1e9);
  assert.equal(secondsMs({}, "t"), undefined);
  for (const bad of ["", "-1", "1x", "1 s", "ms", "1e3", "1000001", "1.s"]) {
    assert.throws(() => ms(bad), UsageError, bad);
  }
  for (const zero of ["0", "0ms", "0.0s"]) {
    assert.throws(
      () => ms(zero, true),
      (err: Error) =>
        err instanceof UsageError &&
        err.message === `--t takes a duration > 0, such as 30, 500ms, 10s ` +
            `or 1m, not "${zero}"`,
    );
  }
  assert.throws(
    () => ms("x"),
    {
      message:
        '--t takes a duration ≥ 0, such as 30, 500ms, 10s or 1m, not "x"',
    },
  );
});

Deno.test("milliseconds() takes milliseconds or a number with a unit", () => {
  const ms = (value: string) =>
    milliseconds({ t: value }, "t", [0, 86_400_000]);
  assert.equal(ms("0"), 0);
  assert.equal(ms("250"), 250);
  assert.equal(ms("250ms"), 250);
  assert.equal(ms("2s"), 2000);
  assert.equal(ms("1.1s"), 1100);
  assert.equal(ms(".5s"), 500);
  assert.equal(ms("1.5m"), 90_000);
  assert.equal(ms("24h"), 86_400_000);
  assert.equal(milliseconds({}, "t"), undefined);
  for (
    const bad of ["", "-1", "1.5", "0.5ms", "1x", "1 s", "s", "1e3", "25h"]
  ) {
    assert.throws(() => ms(bad), UsageError, bad);
  }
  assert.throws(() => ms("x"), {
    message:
      '--t takes whole milliseconds from 0 to 86400000, such as 250, 250ms or 2s, not "x"',
  });
});

Deno.test("bytes() takes bytes or a number with a 1024-based unit", () => {
  const size = (value: string) => bytes({ s: value }, "s", [1, 2 ** 30]);
  assert.equal(size("1"), 1);
  assert.equal(size("65536"), 65536);
  assert.equal(size("64k"), 65536);
  assert.equal(size("64K"), 65536);
  assert.equal(size("64KiB"), 65536);
  assert.equal(size("1.5k"), 1536);
  assert.equal(size("1M"), 1 << 20);
  assert.equal(size("1MiB"), 1 << 20);
  assert.equal(size("1G"), 2 ** 30);
  assert.equal(bytes({}, "s"), undefined);
  for (
    const bad of ["0", "", "-1", "1KB", "1.3", "0.3k", "2G", "1T", "k", "1 k"]
  ) {
    assert.throws(() => size(bad), UsageError, bad);
  }
  assert.throws(() => size("x"), {
    message:
      '--s takes a size from 1 to 1073741824 bytes, such as 4096, 64k or 1M, not "x"',
  });
});

Deno.test("tcpecho --help says which units SECONDS and BYTES take", async () => {
  for (const command of ["server", "client", "bench"]) {
    const { stdout } = await runCli([command, "--help"]);
    assert.match(stdout, /\nSECONDS may have a unit: 500ms, 10s, 1\.5m, 1h/);
  }
  const { stdout } = await runCli(["server", "--help"]);
  assert.match(stdout, /\nBYTES may have a unit: 64k, 1M, 1G \(powers of 1024/);
  assert.match(
    stdout,
    /\nMS may have a unit: 250ms, 2s, 1\.5m \(a bare number is milliseconds\)/,
  );
});

Deno.test("tcpecho server --max-line takes a size with a unit, in line mode only", async () => {
  await assertUsageError(
    ["server", "--max-line", "100"],
    "--max-line applies to --mode line",
  );
  await assertUsageError(
    ["server", "--mode", "raw", "--max-line", "1k"],
    "--max-line applies to --mode line",
  );
  await using server = await ServerProcess.start(
    argv("--port 0 --mode line --max-line 1k"),
  );
  const line = (n: number) => new TextEncoder().encode("x".repeat(n) + "\n");
  using conn = await Deno.connect({ port: server.port });
  assert.deepEqual(await echoAll(conn, line(1024)), line(1024));
  using long = await Deno.connect({ port: server.port });
  assert.equal((await echoAll(long, line(1025))).length, 0, "closed, no echo");
});

Deno.test("tcpecho client --connect-timeout 0 is a usage error, as its help says", async () => {
  await assertUsageError(
    ["client", "--connect-timeout", "0"],
    '--connect-timeout takes a duration > 0, such as 30, 500ms, 10s or 1m, not "0"',
  );
});

// ---- where to connect or listen -------------------------------------------

Deno.test('tcpecho --unix "" is a usage error for server, client and bench', async () => {
  for (const command of ["server", "client", "bench"]) {
    await assertUsageError(
      [command, "--unix", ""],
      '--unix takes a path, not ""',
    );
  }
});

Deno.test("tcpecho --host with a port in it is a usage error saying how to write it", async () => {
  for (const command of ["server", "client", "bench"]) {
    await assertUsageError(
      [command, "--host", "127.0.0.1:8081"],
      '--host takes an address without a port, not "127.0.0.1:8081": ' +
        "use --host 127.0.0.1 --port 8081",
    );
  }
  await assertUsageError(
    ["client", "--host", "[::1]:8081"],
    '--host takes an address without a port, not "[::1]:8081": ' +
      "use --host ::1 --port 8081",
  );
  await assertUsageError(
    ["client", "--host", ""],
    '--host takes an address, not ""',
  );
});

Deno.test("splitHostPort() splits HOST:PORT and [V6]:PORT, not a bare IPv6 address", () => {
  assert.deepEqual(splitHostPort("localhost"), { host: "localhost" });
  assert.deepEqual(splitHostPort("127.0.0.1:80"), {
    host: "127.0.0.1",
    port: "80",
  });
  assert.deepEqual(splitHostPort("[::1]:80"), { host: "::1", port: "80" });
  assert.deepEqual(splitHostPort("[::1]"), { host: "::1", port: undefined });
  assert.deepEqual(splitHostPort("::1"), { host: "::1" });
  assert.deepEqual(splitHostPort("fe80::1:2"), { host: "fe80::1:2" });
  assert.deepEqual(splitHostPort(":80"), { host: "", port: "80" });
});

Deno.test("targetFromPositionals() takes HOST PORT, HOST:PORT, :PORT and PORT as nc does", () => {
  const target = (positionals: string[], values = {}) =>
    targetFromPositionals(values, positionals);
  assert.deepEqual(target([]), {});
  assert.deepEqual(target(["example.com", "7"]), {
    host: "example.com",
    port: "7",
  });
  assert.deepEqual(target(["example.com:7"]), {
    host: "example.com",
    port: "7",
  });
  assert.deepEqual(target(["[::1]:7"]), { host: "::1", port: "7" });
  assert.deepEqual(target(["[::1]", "7"]), { host: "::1", port: "7" });
  assert.deepEqual(target(["::1", "7"]), { host: "::1", port: "7" });
  assert.deepEqual(target(["::1"]), { host: "::1", port: undefined });
  assert.deepEqual(target(["example.com"]), {
    host: "example.com",
    port: undefined,
  });
  assert.deepEqual(target([":7"]), { host: undefined, port: "7" });
  assert.deepEqual(target(["7"]), { host: undefined, port: "7" });
  assert.deepEqual(target(["h"], { port: "7" }), { host: "h", port: "7" });
  assert.deepEqual(target(["7"], { host: "h" }), { host: "h", port: "7" });
  const usage = (positionals: string[], values: object, message: string) =>
    assert.throws(() => target(positionals, values), {
      name: "UsageError",
      message,
    });
  usage(
    ["h", "7"],
    { host: "g" },
    "give the host once: --host or HOST, not both",
  );
  usage(["h:7"], { port: "8" }, "give the port once: --port or PORT, not both");
  usage(["h"], { unix: "/s" }, "--unix cannot go with HOST or PORT");
  usage(
    ["a", "b", "c"],
    {},
    'too many arguments: "a" "b" "c" (give HOST PORT or HOST:PORT)',
  );
});

Deno.test("tcpecho client HOST PORT and HOST:PORT connect where --host and --port would", async () => {
  await using server = serve({ port: 0 });
  const port = `${server.addr.port}`;
  for (
    const args of [["127.0.0.1", port], [`127.0.0.1:${port}`], [`:${port}`], [
      port,
    ], ["localhost", "-p", port]]
  ) {
    const data = new TextEncoder().encode(`via ${args.join(" ")}\n`);
    const out = await runClient(args, data);
    assert.equal(out.stderr, "", args.join(" "));
    assert.equal(out.code, 0);
    assert.deepEqual(out.stdout, data);
  }
  await assertUsageError(
    ["client", "127.0.0.1", "--host", "127.0.0.1"],
    "give the host once: --host or HOST, not both",
  );
  await assertUsageError(
    ["client", "127.0.0.1", "http"],
    '--port takes a whole number from 1 to 65535, not "http"',
  );
});

// ---- what user input can do to an error line ------------------------------

Deno.test("tcpecho error lines escape what a user typed: one line, no ESC", async () => {
  const cases: [string[], string][] = [
    [
      ["server", "--mode", "a\nb\x1b[2J"],
      '--mode takes raw or line or discard, not "a\\nb\\u001b[2J"',
    ],
    [
      ["server", "--port", "1\u202e2"],
      '--port takes a whole number from 0 to 65535, not "1\\u202e2"',
    ],
    [["se\u200brver"], 'unknown command "se\\u200brver": did you mean server?'],
    [["server", "--x\x1b[31m"], "unknown option '--x\\u001b[31m'"],
    [
      ["client", "a\nb", "c"],
      '--port takes a whole number from 1 to 65535, not "c"',
    ],
  ];
  for (const [args, message] of cases) await assertUsageError(args, message);
  // A runtime error naming a file: the path's newline and ESC stay escaped.
  const { code, stderr } = await runCli([
    "server",
    "--tls-cert",
    "no\nsuch\x1b[2J.pem",
    "--tls-key",
    "k.pem",
  ], RUN_MS);
  assert.equal(code, 1);
  assert.equal(
    stderr,
    'error: cannot read TLS certificate "no\\nsuch\\u001b[2J.pem": ' +
      "No such file or directory (os error 2)\n",
  );
  // Deno's own message repeats the host: escaped as well.
  const host = await runCli(["client", "--host", "a\nb\x1b[2J"], RUN_MS);
  assert.equal(host.code, 1);
  assert.equal(host.stderr.split("\n").length, 2, host.stderr);
  assert.ok(!host.stderr.includes("\x1b"), host.stderr);
  assert.match(
    host.stderr,
    /^error: cannot connect to a\\nb\\u001b\[2J:8080: /,
  );
});

Deno.test("tcpecho server -v escapes bidi and zero-width characters in its log previews", async () => {
  await using server = await ServerProcess.start(
    argv("--port 0 --mode line -v"),
  );
  using conn = await Deno.connect({ port: server.port });
  const line = new TextEncoder().encode(
    "evil\u202etxt.exe\u200b\u2066x\ufeff\n",
  );
  assert.deepEqual(await echoAll(conn, line), line);
  const logged = await server.waitFor(/req: /);
  assert.ok(
    logged.endsWith(
      'req: "evil\\u202etxt.exe\\u200b\\u2066x\\ufeff\\n", ' +
        'resp: "evil\\u202etxt.exe\\u200b\\u2066x\\ufeff\\n"',
    ),
    logged,
  );
  assert.ok(!/[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/.test(logged));
});

// ---- certificate, key and CA files ----------------------------------------

Deno.test({
  name:
    "tcpecho exits 1 at once on a TLS file that is not a regular file of at most 1 MiB",
  ignore: !posix,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const fifo = `${dir}/fifo.pem`;
      const mkfifo = await new Deno.Command("mkfifo", { args: [fifo] })
        .output();
      assert.ok(mkfifo.success, "mkfifo");
      const big = `${dir}/big.pem`;
      const pem = await Deno.readTextFile(testdata("server.pem"));
      // A real certificate, then padding past 1 MiB.
      await Deno.writeTextFile(
        big,
        pem + "#".repeat((1 << 20) + 1 - pem.length),
      );
      const reasons: [string, string][] = [
        ["/dev/zero", "not a regular file"],
        [fifo, "not a regular file"],
        [dir, "a directory"],
        [big, "larger than 1 MiB"],
      ];
      const cert = testdata("server.pem");
      const key = testdata("server-key.pem");
      for (const [file, reason] of reasons) {
        const runs: [string[], string][] = [
          [["server", "--tls-cert", file, "--tls-key", key], "TLS certificate"],
          [["server", "--tls-cert", cert, "--tls-key", file], "TLS key"],
          [["client", "--tls", "--ca", file], "CA certificate"],
        ];
        for (const [args, what] of runs) {
          const { code, stderr } = await runCli(args, RUN_MS);
          assert.equal(code, 1, args.join(" "));
          assert.equal(
            stderr,
            `error: cannot read ${what} "${file}": ${reason}\n`,
          );
        }
      }
      // Exactly 1 MiB is read.
      await Deno.truncate(big, 1 << 20);
      const { code, stderr } = await runCli([
        "client",
        "--tls",
        "--ca",
        big,
        "-p",
        "1",
      ], RUN_MS);
      assert.equal(code, 1);
      assert.match(stderr, /^error: cannot connect to 127\.0\.0\.1:1: /);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("tcpecho server names both files when the TLS key does not match the certificate", async () => {
  const cert = testdata("server.pem");
  const key = testdata("other-key.pem");
  const { code, stderr } = await runCli([
    "server",
    "--port",
    "0",
    "--tls-cert",
    cert,
    "--tls-key",
    key,
  ], RUN_MS);
  assert.equal(code, 1);
  assert.equal(
    stderr,
    `error: --tls-key "${key}" does not match --tls-cert "${cert}"\n`,
  );
});

// ---- usage lines ----------------------------------------------------------

Deno.test("tcpecho usage lines name TLS and the timeouts", async () => {
  const server = (await runCli(["server", "--help"])).stdout.split("\n")[0];
  assert.match(server, /\[--tls-cert FILE --tls-key FILE\]/);
  const client = (await runCli(["client", "--help"])).stdout.split("\n")[0];
  for (
    const part of [
      "[--tls [--ca FILE | --insecure]]",
      "[--connect-timeout SECONDS]",
      "[--idle-timeout SECONDS]",
      "[HOST [PORT] | HOST:PORT]",
    ]
  ) assert.ok(client.includes(part), `client usage: missing ${part}`);
});

Deno.test("README's synopsis of each command is its --help usage line", async () => {
  const readme = await Deno.readTextFile(new URL("README.md", import.meta.url));
  // Synopsis lines in code blocks; an indented line continues the one above.
  const synopses = new Map<string, string>();
  let last: string | undefined;
  for (const line of readme.split("\n")) {
    if (/^tcpecho (server|client|bench)\b/.test(line)) {
      last = line.split(" [")[0].replace(/ FILE.*$/, "");
      synopses.set(last, line.trim());
    } else if (last !== undefined && /^ +\[/.test(line)) {
      synopses.set(last, `${synopses.get(last)} ${line.trim()}`);
    } else last = undefined;
  }
  const commands = ["server", "client", "bench", "bench merge"];
  assert.deepEqual(
    [...synopses.keys()].sort(),
    commands.map((c) => `tcpecho ${c}`).sort(),
  );
  for (const command of commands) {
    const { code, stdout } = await runCli([...command.split(" "), "--help"]);
    assert.equal(code, 0);
    const usage = stdout.split("\n")[0]
      .replace(/^usage: /, "")
      .replace(/ +\(tcpecho [a-z ]+--help\)$/, "");
    assert.equal(synopses.get(`tcpecho ${command}`), usage, command);
  }
});
