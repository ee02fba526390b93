import assert from "node:assert/strict";
import { connect, forTerminal, type Input, pipe } from "./client.ts";
import { serve } from "./server.ts";
import { delay, LineSplitter, readLines } from "./io.ts";
import {
  bytes,
  CA_FILE,
  ConnEvents,
  hasIpv6,
  randomBytes,
  readAll,
  roundTrip,
  testdata,
  TLS,
  watchdog,
  writeAll,
} from "./testing.ts";
import {
  argv,
  benchClean,
  cli,
  echoServer,
  hasScript,
  runCli,
  runClient,
  ServerProcess,
  underPty,
} from "./testing_cli.ts";

Deno.test("tcpecho client pipes 1 MiB byte-exact and exits 0", async () => {
  await using server = serve({ port: 0 });
  const data = randomBytes(1 << 20, 5);
  const out = await runClient(["-p", `${server.addr.port}`], data);
  assert.equal(out.stderr, "");
  assert.equal(out.code, 0);
  assert.deepEqual(out.stdout, data);
});

Deno.test("tcpecho client exits 0 when the server closes before stdin ends", async () => {
  await using server = serve({ port: 0, shutdownTimeoutMs: 0 });
  const child = cli(["client", "-p", `${server.addr.port}`], "piped").spawn();
  const writer = child.stdin.getWriter();
  await writer.write(bytes("ping"));
  const reader = child.stdout.getReader();
  const first = await reader.read(); // the echo: the session is up
  assert.equal(new TextDecoder().decode(first.value), "ping");
  // stdin stays open; the server going away must still end the client.
  await server.close();
  assert.equal((await reader.read()).done, true);
  const [status] = await Promise.all([child.status, child.stderr.cancel()]);
  assert.equal(status.code, 0);
  await writer.close().catch(() => {}); // the child has gone
});

Deno.test("tcpecho client exits 1 when nothing listens", async () => {
  const port = (() => {
    using l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    return l.addr.port;
  })();
  const { code, stdout, stderr } = await runCli(["client", "-p", `${port}`]);
  assert.equal(code, 1);
  assert.equal(stdout, "");
  assert.equal(
    stderr,
    `error: cannot connect to 127.0.0.1:${port}: Connection refused (os error 111)\n`,
  );
});

// ---- nothing lost silently (#14 item 4) -----------------------------------

Deno.test("tcpecho client exits 1 when the server echoes 100 kB of 1 MB and resets", async () => {
  // Echoes the first 100,000 bytes, then closes with input unread: a reset.
  const cut = 100_000;
  await using server = echoServer({
    mangle: (chunk, { offset }) =>
      offset >= cut ? "close" : chunk.subarray(0, cut - offset),
  });
  const data = randomBytes(1_000_000, 7);
  const out = await pipeThroughClient(["-p", `${server.port}`], data);
  assert.equal(out.code, 1, out.stderr);
  assert.deepEqual(out.stdout, data.subarray(0, cut));
  assert.match(
    out.stderr,
    /^error: (connection lost after 100000 of \d+ bytes came back: (Connection reset by peer|Broken pipe) \(os error \d+\)|the server closed the connection after echoing 100000 of \d+ bytes)\n$/,
  );
});

Deno.test("tcpecho client exits 1 when the server closes over --max-line", async () => {
  await using server = serve({ port: 0, mode: "line", maxLineBytes: 10 });
  const data = bytes(`short\n${"x".repeat(100)}\n`);
  const out = await pipeThroughClient(["-p", `${server.addr.port}`], data);
  assert.equal(out.code, 1, out.stderr);
  assert.deepEqual(out.stdout, bytes("short\n"));
  assert.match(
    out.stderr,
    /^error: (the server closed the connection after echoing 6 of 107 bytes|connection lost after 6 of 107 bytes came back: .*)\n$/,
  );
});

/**
 * Runs `tcpecho client ARGS` 20 times with stdin "hello\n", and 20 with an
 * empty stdin, against a server that closes the connection at once (which
 * races the client's first read of its stdin): the first must exit 1 saying
 * nothing came back, the others 0 in silence.
 */
async function assertNothingLostSilently(args: string[]): Promise<void> {
  const lost =
    /^error: (the server closed the connection after echoing 0 of 6 bytes|connection lost after 0 of 6 bytes came back: .+)\n$/;
  const outcomes: string[] = [];
  for (let i = 0; i < 20; i++) {
    const out = await runClient(args, bytes("hello\n"), 20_000);
    outcomes.push(`${out.code} ${out.stderr.trim()}`);
    assert.equal(out.stdout.length, 0);
    if (out.code !== 1 || !lost.test(out.stderr)) {
      assert.fail(`run ${i + 1}:\n${outcomes.join("\n")}`);
    }
  }
  for (let i = 0; i < 20; i++) {
    const out = await runClient(args, new Uint8Array(), 20_000);
    assert.equal(out.stdout.length, 0);
    assert.deepEqual([out.code, out.stderr], [0, ""], `run ${i + 1}`);
  }
}

Deno.test("tcpecho client exits 1 when it had stdin to send and the server closed at once, 0 when stdin was empty (20 runs each)", async (t) => {
  await t.step("refused over --max-conns", async () => {
    await using server = await ServerProcess.start(
      argv("--port 0 --max-conns 1 -q"),
    );
    using held = await Deno.connect({ port: server.port });
    assert.deepEqual(await roundTrip(held, bytes("a")), bytes("a")); // the one
    await assertNothingLostSilently(["-p", `${server.port}`]);
  });
  await t.step("a server that closes each connection unread", async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const closing = (async () => {
      for await (const conn of listener) conn.close();
    })().catch(() => {}); // ends when the listener is closed
    try {
      await assertNothingLostSilently(["-p", `${listener.addr.port}`]);
    } finally {
      listener.close();
      await closing;
    }
  });
});

/**
 * Stdin as a test drives it: `data` on the first read, then nothing until
 * `close()` (the pipe's reaction to the server's close), then EOF.
 */
function inputOf(data: Uint8Array): Input {
  let given = false;
  const closed = Promise.withResolvers<null>();
  return {
    read(buf: Uint8Array): Promise<number | null> {
      if (given) return closed.promise;
      given = true;
      buf.set(data);
      return Promise.resolve(data.length); // ahead of any socket event
    },
    close: () => closed.resolve(null),
  };
}

Deno.test("pipe() rejects when the server refuses the connection over maxConns", async () => {
  // In the CLI a refusal can beat the first read of stdin (the test of
  // tcpecho client --max-conns covers that). Here the bytes are taken first.
  using events = new ConnEvents();
  await using server = events.serve({ maxConns: 1 });
  using first = await Deno.connect({ port: server.addr.port });
  assert.deepEqual(await roundTrip(first, bytes("a")), bytes("a")); // served
  using conn = await Deno.connect({ port: server.addr.port });
  const output: Uint8Array[] = [];
  await assert.rejects(
    pipe(conn, inputOf(bytes("ping\n")), {
      write: (b) => Promise.resolve(output.push(b.slice()) && b.length),
    }),
    (err: Error) =>
      /^(the server closed the connection after echoing 0 of 5 bytes|connection lost after 0 of 5 bytes came back)$/
        .test(err.message),
  );
  await events.find("refused");
  assert.deepEqual(output, []);
});

Deno.test("tcpecho client exits 1 when the server refuses it over --max-conns", async () => {
  await using server = await ServerProcess.start(
    argv("--port 0 --max-conns 1"),
  );
  const port = `${server.port}`;
  using first = await Deno.connect({ port: server.port });
  assert.deepEqual(await roundTrip(first, bytes("a")), bytes("a")); // the slot
  // The refusal beats stdin: nothing has been read from it when the server
  // closes. Its input never reached the server: not a clean exit.
  const child = cli(["client", "-p", port], "piped").spawn();
  using _dog = watchdog(20_000, () => child.kill("SIGKILL"));
  await server.waitFor(/ refused: too many connections \(max-conns 1\)$/);
  const [status, stdout, stderr] = await Promise.all([
    child.status, // it ends by itself, stdin still open
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
  ]);
  await child.stdin.close().catch(() => {}); // the child has gone
  assert.equal(stdout, "");
  assert.equal(
    stderr,
    "error: the server closed the connection before anything was sent\n",
  );
  assert.equal(status.code, 1);
  // Stdin ready at once: whichever comes first, the refusal or the read,
  // the line is not echoed and the client says so.
  for (let i = 0; i < 3; i++) {
    const out = await runClient(["-p", port], bytes("ping\n"));
    assert.equal(out.stdout.length, 0);
    assert.match(
      out.stderr,
      /^error: the server closed the connection (before anything was sent|after echoing 0 of 5 bytes)\n$|^error: connection lost after 0 of 5 bytes came back: .*\n$/,
    );
    assert.equal(out.code, 1);
  }
});

Deno.test("tcpecho client exits 0 when a server that is not an echo answers more than was sent", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    using conn = await listener.accept();
    await readAll(conn); // the request, to our half-close
    await writeAll(conn, bytes("a longer answer than the question\n"));
  })();
  const out = await pipeThroughClient(
    ["-p", `${listener.addr.port}`],
    bytes("q?\n"),
  );
  await serving;
  assert.equal(out.stderr, "");
  assert.equal(out.code, 0);
  assert.equal(
    new TextDecoder().decode(out.stdout),
    "a longer answer than the question\n",
  );
});

Deno.test("tcpecho client --idle-timeout fails on a server that never answers", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept(); // held, never read or written
  const out = await pipeThroughClient(
    ["-p", `${listener.addr.port}`, "--idle-timeout", "100ms"],
    bytes("ping\n"),
  );
  (await accepted).close();
  assert.equal(out.code, 1);
  assert.equal(out.stderr, "error: no data from the server for 0.1 s\n");
});

Deno.test("tcpecho client --idle-timeout fails on a server that echoes but never closes", async () => {
  await using server = echoServer({ hold: true }); // ignores our half-close
  const data = bytes("ping\n");
  const out = await pipeThroughClient(
    ["-p", `${server.port}`, "--idle-timeout", "0.1"],
    data,
  );
  assert.deepEqual(out.stdout, data);
  assert.equal(out.code, 1);
  assert.equal(out.stderr, "error: no data from the server for 0.1 s\n");
});

Deno.test("tcpecho client --idle-timeout does not count time spent waiting for stdin", async () => {
  await using server = serve({ port: 0 });
  const child = cli(
    ["client", "-p", `${server.addr.port}`, "--idle-timeout", "50ms"],
    "piped",
  ).spawn();
  const writer = child.stdin.getWriter();
  const reader = child.stdout.getReader();
  await writer.write(bytes("a"));
  assert.deepEqual((await reader.read()).value, bytes("a"));
  // A negative: no event says "the timer did not fire", so stdin stays
  // silent for six idle periods, everything echoed meanwhile.
  const quiet = new AbortController();
  await delay(300, quiet.signal);
  await writer.write(bytes("b"));
  assert.deepEqual((await reader.read()).value, bytes("b"));
  await writer.close();
  assert.equal((await reader.read()).done, true);
  const [status, stderr] = await Promise.all([
    child.status,
    new Response(child.stderr).text(),
  ]);
  assert.equal(stderr, "");
  assert.equal(status.code, 0);
});

// ---- --insecure -----------------------------------------------------------

Deno.test("connect() with insecure trusts a self-signed server and half-closes like a conn", async () => {
  await using server = serve({ port: 0, ...TLS });
  await using _nobody = serve({ port: 0 }); // a port for the refused case
  const data = randomBytes(1 << 20, 23);
  {
    using conn = await connect({
      port: server.addr.port,
      tls: true,
      insecure: true,
    });
    assert.equal((conn.remoteAddr as Deno.NetAddr).port, server.addr.port);
    const [echo] = await Promise.all([
      readAll(conn),
      (async () => {
        await writeAll(conn, data);
        await conn.closeWrite();
      })(),
    ]);
    assert.deepEqual(echo, data);
  }
  // Without insecure, the same server is refused.
  await assert.rejects(
    connect({ port: server.addr.port, tls: true }),
    (err: Error) => /UnknownIssuer/.test(String(err.cause)),
  );
});

Deno.test("tcpecho client --tls --insecure pipes to a server it cannot verify, and says so", async () => {
  await using server = serve({ port: 0, ...TLS });
  const data = randomBytes(256 * 1024, 24);
  const out = await pipeThroughClient(
    ["--tls", "--insecure", "-p", `${server.addr.port}`],
    data,
  );
  assert.equal(
    out.stderr,
    "warning: --insecure: the server's certificate is not verified\n",
  );
  assert.equal(out.code, 0);
  assert.deepEqual(out.stdout, data);
  for (
    const [args, message] of [
      [["--insecure"], "error: --insecure needs --tls"],
      [
        ["--tls", "--insecure", "--ca", CA_FILE],
        "error: --insecure trusts any certificate: no --ca with it",
      ],
    ]
  ) {
    const bad = await runCli(["client", ...args, "-p", "1"]);
    assert.equal(bad.code, 2);
    assert.equal(bad.stderr.split("\n")[0], message);
  }
});

Deno.test("tcpecho bench --tls --insecure measures a server it cannot verify", async () => {
  await using server = serve({ port: 0, ...TLS });
  const { stderr } = await benchClean(
    argv(`--tls --insecure -p ${server.addr.port} -c 2 -d 0.2`),
  );
  assert.equal(
    stderr,
    "warning: --insecure: the server's certificate is not verified\n",
  );
});

Deno.test("connect() gives up after connectTimeoutMs", async () => {
  // Backlog 1 with two connections nobody accepts: a third connect hangs.
  using listener = Deno.listen({
    hostname: "127.0.0.1",
    port: 0,
    tcpBacklog: 1,
  });
  const port = listener.addr.port;
  using _a = await Deno.connect({ port });
  using _b = await Deno.connect({ port });
  await assert.rejects(
    connect({ port, connectTimeoutMs: 50 }),
    (err: Error) =>
      err.message === `cannot connect to 127.0.0.1:${port}` &&
      (err.cause as Error).message === "timed out after 0.05 s",
  );
});

Deno.test("forTerminal() escapes control characters, tab included, but keeps text", () => {
  assert.equal(forTerminal("héllo\tok"), "héllo\\tok");
  assert.equal(forTerminal("\u202egnp\u200b.exe ✓"), "\\u202egnp\\u200b.exe ✓");
  assert.equal(forTerminal("a\x1b[2Jb\rc\x07"), "a\\u001b[2Jb\\rc\\u0007");
});

Deno.test({
  name: "tcpecho client on a terminal shows server say# and ends on Ctrl+D",
  ignore: !hasScript,
  async fn() {
    await using server = serve({ port: 0, mode: "line" });
    const pty = underPty(["-p", `${server.addr.port}`]);
    await pty.see(`connected to 127.0.0.1:${server.addr.port}`);
    await pty.type("hello\r");
    await pty.see("server say# hello");
    await pty.type("second line\r");
    await pty.see("server say# second line");
    await pty.type("\x04"); // Ctrl+D
    assert.equal(await pty.exit(), 0, pty.screen);
    assert.equal(server.stats.bytesIn, "hello\nsecond line\n".length);
    // The prompt's line is ended: the shell's prompt starts on its own.
    assert.ok(pty.screen.endsWith("> \r\n"), JSON.stringify(pty.screen));
  },
});

Deno.test({
  name: "tcpecho client on a terminal exits 130 on Ctrl+C",
  ignore: !hasScript,
  async fn() {
    await using server = serve({ port: 0 });
    const pty = underPty(["-p", `${server.addr.port}`]);
    await pty.see("connected to");
    await pty.see("\n> "); // readline reads the keys: no SIGINT from the tty
    await pty.type("\x03"); // Ctrl+C
    assert.equal(await pty.exit(), 130, pty.screen);
    assert.ok(pty.screen.endsWith("> \r\n"), JSON.stringify(pty.screen));
  },
});

Deno.test({
  name: "tcpecho client on a terminal reports the server closing",
  ignore: !hasScript,
  async fn() {
    await using server = serve({ port: 0, shutdownTimeoutMs: 0 });
    const pty = underPty(["-p", `${server.addr.port}`]);
    await pty.see("connected to");
    await pty.type("x\r");
    await pty.see("server say# x");
    await server.close();
    await pty.see("connection closed by server");
    assert.equal(await pty.exit(), 0, pty.screen);
    // The prompt makes way for the message.
    assert.ok(
      pty.screen.endsWith("\r\x1b[Kconnection closed by server\r\n"),
      JSON.stringify(pty.screen),
    );
  },
});

Deno.test({
  name: "tcpecho client on a terminal --idle-timeout fails on a silent server",
  ignore: !hasScript,
  async fn() {
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const pty = underPty([
      "-p",
      `${listener.addr.port}`,
      "--idle-timeout",
      "100ms",
    ]);
    using _conn = await listener.accept(); // never reads or answers
    await pty.see("connected to");
    await pty.type("anyone?\r");
    await pty.see("error: no data from the server for 0.1 s");
    assert.equal(await pty.exit(), 1, pty.screen);
    assert.ok(
      pty.screen.endsWith(
        "\r\x1b[Kerror: no data from the server for 0.1 s\r\n",
      ),
      JSON.stringify(pty.screen),
    );
  },
});

Deno.test({
  name:
    "tcpecho client on a terminal shows each echoed line, its \\r escaped, and a last line without \\n",
  ignore: !hasScript,
  async fn() {
    // Not an echo server: it says two lines at once, the second unended, and
    // closes. "é" is cut between its two bytes: the display must join them.
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const pty = underPty(["-p", `${listener.addr.port}`]);
    {
      using conn = await listener.accept();
      const said = bytes("caf\u00e9\r\n\nlast");
      await writeAll(conn, said.subarray(0, 4));
      await writeAll(conn, said.subarray(4));
    }
    await pty.see("connection closed by server");
    assert.equal(await pty.exit(), 0, pty.screen);
    const shown = pty.screen.match(/server say# .*/g)?.map((l) => l.trimEnd());
    assert.deepEqual(shown, [
      "server say# caf\u00e9\\r",
      "server say#",
      "server say# last",
    ]);
  },
});

Deno.test("LineSplitter splits chunks into lines; a character or \\r\\n split between chunks stays whole", () => {
  const text = "one\r\n\ntw\u00f6\r\nthree";
  const all = bytes(text);
  const expected = {
    keep: ["one\r", "", "tw\u00f6\r"],
    crlf: ["one", "", "tw\u00f6"],
  };
  for (const crlf of [false, true]) {
    // every way of cutting the bytes in two: inside "\u00f6", between "\r" and "\n"
    for (let cut = 0; cut <= all.length; cut++) {
      const splitter = new LineSplitter({ crlf });
      const lines = [
        ...splitter.push(all.subarray(0, cut)),
        ...splitter.push(all.subarray(cut)),
      ];
      assert.deepEqual(
        lines,
        crlf ? expected.crlf : expected.keep,
        `cut ${cut}`,
      );
      assert.equal(splitter.end(), "three", "the unended last line");
      assert.equal(splitter.end(), undefined, "empty after end()");
    }
  }
  const splitter = new LineSplitter();
  assert.deepEqual(splitter.push(bytes("a\n")), ["a"]);
  assert.equal(splitter.end(), undefined, "input that ends with \\n");
  assert.deepEqual(splitter.push(new Uint8Array([0x61, 0xff, 0x0a])), [
    "a\ufffd",
  ]);
});

Deno.test("readLines() yields the lines of a stream to its end", async () => {
  const chunks = ["x\r", "\ny\n", "", "z"].map(bytes);
  const stream = ReadableStream.from(chunks);
  assert.deepEqual(await Array.fromAsync(readLines(stream, { crlf: true })), [
    "x",
    "y",
    "z",
  ]);
  assert.deepEqual(
    await Array.fromAsync(readLines(ReadableStream.from([bytes("\n")]))),
    [""],
  );
});

// ---- transports -----------------------------------------------------------

/** Runs `tcpecho client ARGS` with `data` on stdin (killed after 20 s). */
function pipeThroughClient(args: string[], data: Uint8Array) {
  return runClient(args, data, 20_000);
}

Deno.test("tcpecho client --tls --ca pipes byte-exact to a TLS server", async () => {
  await using server = serve({ port: 0, ...TLS });
  const data = randomBytes(256 * 1024, 21);
  const out = await pipeThroughClient([
    "--tls",
    "--ca",
    CA_FILE,
    "--host",
    "localhost",
    "-p",
    `${server.addr.port}`,
  ], data);
  assert.equal(out.stderr, "");
  assert.equal(out.code, 0);
  assert.deepEqual(out.stdout, data);
});

Deno.test("tcpecho client --tls refuses a server it cannot verify", async (t) => {
  await using server = serve({ port: 0, ...TLS });
  const port = `${server.addr.port}`;
  await t.step("no CA given", async () => {
    const out = await pipeThroughClient(["--tls", "-p", port], bytes("x"));
    assert.equal(out.code, 1);
    assert.equal(
      out.stderr,
      `error: cannot connect to 127.0.0.1:${port}: invalid peer certificate: UnknownIssuer` +
        " (trust the server's CA with --ca FILE, or skip the check with --insecure)\n",
    );
  });
  await t.step("another CA", async () => {
    const out = await pipeThroughClient(
      ["--tls", "--ca", testdata("other-ca.pem"), "-p", port],
      bytes("x"),
    );
    assert.equal(out.code, 1);
    assert.match(
      out.stderr,
      /invalid peer certificate: UnknownIssuer \(.*--ca FILE.*--insecure\)\n$/,
    );
  });
  await t.step("a CA file that holds no certificate", async () => {
    const out = await pipeThroughClient(
      ["--tls", "--ca", testdata("not-a-cert.pem"), "-p", port],
      bytes("x"),
    );
    assert.equal(out.code, 1);
    assert.equal(
      out.stderr,
      `error: cannot read CA certificate "${
        testdata("not-a-cert.pem")
      }": no PEM certificate in it\n`,
    );
  });
});

Deno.test({
  name: "tcpecho client --unix pipes byte-exact over a unix socket",
  ignore: Deno.build.os === "windows",
  async fn() {
    const dir = Deno.makeTempDirSync();
    try {
      const path = `${dir}/s.sock`;
      await using _server = serve({ path });
      const data = randomBytes(300_000, 22);
      const out = await pipeThroughClient(["--unix", path], data);
      assert.equal(out.code, 0, out.stderr);
      assert.deepEqual(out.stdout, data);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "tcpecho client --host ::1 pipes over IPv6",
  ignore: !hasIpv6,
  async fn() {
    await using server = serve({ hostname: "::1", port: 0 });
    const data = bytes("over IPv6\n");
    const out = await pipeThroughClient(
      ["--host", "::1", "-p", `${server.addr.port}`],
      data,
    );
    assert.equal(out.code, 0, out.stderr);
    assert.deepEqual(out.stdout, data);
  },
});

Deno.test("tcpecho client exits 1, not hangs, when the server half-closes and stops reading", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = listener.accept().then(async (conn) => {
    held.push(conn);
    await conn.closeWrite(); // then reads nothing, closes nothing
  });
  const child = cli(["client", "-p", `${listener.addr.port}`], "piped")
    .spawn();
  using _ = watchdog(20_000, () => child.kill()); // a hang fails the test
  const writer = child.stdin.getWriter();
  // More than the socket buffers hold: the client's write must block.
  const writing = writer.write(new Uint8Array(32 << 20)).catch(() => {});
  const [status, stdout, stderr] = await Promise.all([
    child.status,
    new Response(child.stdout).bytes(),
    new Response(child.stderr).bytes(),
  ]);
  await writing;
  await writer.close().catch(() => {}); // the child has gone
  await accepting;
  held.forEach((conn) => conn.close());
  assert.equal(status.code, 1, new TextDecoder().decode(stderr));
  assert.equal(stdout.length, 0);
  assert.match(
    new TextDecoder().decode(stderr),
    /^error: connection lost after 0 of \d+ bytes came back: /,
  );
});
