import assert from "node:assert/strict";
import {
  delay,
  escapeControls,
  escapePreview,
  isDisconnect,
  isPeerError,
  quote,
  readAll,
  type Reader,
  withDefaults,
  writeAll,
} from "./io.ts";

const encoder = new TextEncoder();

/** `n` bytes counting 0..250 over and over, so a misplaced chunk shows. */
function pattern(n: number, from = 0): Uint8Array {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i++) bytes[i] = (from + i) % 251;
  return bytes;
}

/**
 * Fails at the first differing byte: deepEqual on megabytes that differ spends
 * minutes building its diff.
 */
function assertSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  assert.equal(actual.length, expected.length, "length");
  const at = actual.findIndex((byte, i) => byte !== expected[i]);
  assert.equal(at, -1, `first difference at byte ${at}`);
}

// ---- writeAll -------------------------------------------------------------

Deno.test("writeAll() writes again until every byte is taken", async () => {
  const taken: number[] = [];
  const seen: number[] = [];
  await writeAll({
    write(bytes: Uint8Array) {
      const n = Math.min(3, bytes.length);
      taken.push(n);
      seen.push(...bytes.subarray(0, n));
      return Promise.resolve(n);
    },
  }, pattern(10));
  assert.deepEqual(taken, [3, 3, 3, 1]);
  assert.deepEqual(seen, [...pattern(10)], "bytes in order, none twice");
});

Deno.test("writeAll() writes once when the writer takes everything", async () => {
  let calls = 0;
  await writeAll({
    write(bytes: Uint8Array) {
      calls++;
      return Promise.resolve(bytes.length);
    },
  }, pattern(64 * 1024));
  assert.equal(calls, 1);
});

Deno.test("writeAll() rejects with the writer's error", async () => {
  let calls = 0;
  await assert.rejects(
    writeAll({
      write() {
        if (++calls === 2) {
          return Promise.reject(new Deno.errors.BrokenPipe("gone"));
        }
        return Promise.resolve(1);
      },
    }, pattern(10)),
    Deno.errors.BrokenPipe,
  );
  assert.equal(calls, 2, "no write after the failed one");
});

Deno.test("writeAll() and readAll() move 8 MiB over a socket byte for byte", async () => {
  // More than the socket buffers hold: the writes are partial and wait for
  // the reader.
  const data = pattern(8 * 1024 * 1024);
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using client = await Deno.connect({ port: listener.addr.port });
  using server = await listener.accept();
  const [received] = await Promise.all([
    readAll(server),
    writeAll(client, data).then(() => client.closeWrite()),
  ]);
  assertSameBytes(received, data);
});

// ---- readAll --------------------------------------------------------------

/** A reader of `total` pattern bytes, at most `chunk` a read. */
function chunkedReader(total: number, chunk: number): Reader {
  let off = 0;
  return {
    read(buf: Uint8Array) {
      if (off === total) return Promise.resolve(null);
      const n = Math.min(chunk, buf.length, total - off);
      buf.set(pattern(n, off));
      off += n;
      return Promise.resolve(n);
    },
  };
}

Deno.test("readAll() joins every read in order, copying each out of its buffer", async () => {
  // More than readAll's 64 KiB buffer, in odd pieces: a chunk kept as a view
  // of the reused buffer would be overwritten by the next read.
  const all = await readAll(chunkedReader(200_003, 50_001));
  assertSameBytes(all, pattern(200_003));
});

Deno.test("readAll() returns no bytes for an immediate EOF", async () => {
  const all = await readAll(chunkedReader(0, 1));
  assert.ok(all instanceof Uint8Array);
  assert.equal(all.length, 0);
});

Deno.test("readAll() rejects with the reader's error", async () => {
  await assert.rejects(
    readAll({
      read: () => Promise.reject(new Deno.errors.ConnectionReset("reset")),
    }),
    Deno.errors.ConnectionReset,
  );
});

// ---- isDisconnect ---------------------------------------------------------

Deno.test("isDisconnect() is true for a peer gone or a socket closed under us", () => {
  for (
    const error of [
      Deno.errors.ConnectionReset,
      Deno.errors.ConnectionAborted,
      Deno.errors.BrokenPipe,
      Deno.errors.NotConnected,
      Deno.errors.UnexpectedEof,
      Deno.errors.Interrupted,
      Deno.errors.BadResource,
    ]
  ) {
    assert.equal(isDisconnect(new error("x")), true, error.name);
  }
});

Deno.test("isDisconnect() is false for anything else", () => {
  for (
    const err of [
      new Deno.errors.NotFound("x"),
      new Deno.errors.PermissionDenied("x"),
      new Deno.errors.TimedOut("x"),
      new Deno.errors.AddrInUse("x"),
      new Deno.errors.InvalidData("x"),
      new Error("connection reset"),
      new TypeError("x"),
      "ConnectionReset",
      { name: "BrokenPipe" },
      undefined,
      null,
    ]
  ) {
    assert.equal(isDisconnect(err), false, String(err));
  }
});

Deno.test("isDisconnect() recognises a read interrupted by closing the socket", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using _client = await Deno.connect({ port: listener.addr.port });
  const server = await listener.accept();
  const pending = server.read(new Uint8Array(16));
  server.close();
  const err = await pending.then(() => undefined, (err: unknown) => err);
  assert.ok(err !== undefined, "the read was not interrupted");
  assert.equal(isDisconnect(err), true, String(err));
});

// ---- isPeerError ----------------------------------------------------------

/** An OS error as Deno reports one it has no class for: a code on an Error. */
function osError(code: string): Error {
  return Object.assign(new Error(`${code} (os error)`), { code });
}

Deno.test("isPeerError() is true for disconnects and what else a peer can cause", () => {
  for (
    const err of [
      new Deno.errors.ConnectionReset("x"),
      new Deno.errors.BrokenPipe("x"),
      new Deno.errors.UnexpectedEof("x"),
      new Deno.errors.InvalidData("received corrupt message"),
      new Deno.errors.TimedOut("timed out"),
      new Deno.errors.NetworkUnreachable("x"),
      osError("EHOSTUNREACH"),
      osError("ENETUNREACH"),
      osError("EHOSTDOWN"),
      osError("ENETDOWN"),
    ]
  ) {
    assert.equal(isPeerError(err), true, String(err));
  }
});

Deno.test("isPeerError() is false for our own failures and for non-errors", () => {
  for (
    const err of [
      new Deno.errors.NotFound("x"),
      new Deno.errors.PermissionDenied("x"),
      new Deno.errors.AddrInUse("x"),
      osError("EMFILE"),
      osError("ENOBUFS"),
      new TypeError("x"),
      "InvalidData",
      { code: 113 },
      undefined,
      null,
    ]
  ) {
    assert.equal(isPeerError(err), false, String(err));
  }
});

// ---- escapePreview --------------------------------------------------------

Deno.test("escapePreview() quotes text and escapes what a terminal acts on", () => {
  const cases: [string, string][] = [
    ["hello", '"hello"'],
    ["", '""'],
    ['say "hi" \\ bye', '"say \\"hi\\" \\\\ bye"'],
    ["a\nb\r\tc", '"a\\nb\\r\\tc"'],
    ["\x1b[31mred\x1b[0m", '"\\u001b[31mred\\u001b[0m"'],
    ["\0\x07\x08", '"\\u0000\\u0007\\b"'],
    // DEL, C1 controls (CSI), line and paragraph separators.
    ["\x7f\x9b2J\x85", '"\\u007f\\u009b2J\\u0085"'],
    ["one\u2028two\u2029", '"one\\u2028two\\u2029"'],
    // Bidi overrides and isolates, zero-width and format characters, BOM.
    ["a\u202egnp.exe", '"a\\u202egnp.exe"'],
    ["\u202a\u202b\u202c\u202d", '"\\u202a\\u202b\\u202c\\u202d"'],
    ["\u2066x\u2067y\u2068z\u2069", '"\\u2066x\\u2067y\\u2068z\\u2069"'],
    [
      "zero\u200bwidth\u200c\u200d\u200e\u200f",
      '"zero\\u200bwidth\\u200c\\u200d\\u200e\\u200f"',
    ],
    ["\ufeffbom\u061c\u2060", '"\\ufeffbom\\u061c\\u2060"'],
    ["héllo wörld ✓ שלום", '"héllo wörld ✓ שלום"'],
  ];
  for (const [text, expected] of cases) {
    assert.equal(escapePreview(encoder.encode(text), 80), expected, text);
    assert.equal(quote(text), expected, text);
  }
});

Deno.test("quote() and escapeControls() leave no control, format or separator character raw", () => {
  const unsafe = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/u;
  for (let c = 0; c <= 0x10ffff; c++) {
    const text = String.fromCodePoint(c); // lone surrogates too
    const quoted = quote(text);
    assert.ok(!unsafe.test(quoted), `U+${c.toString(16)} comes out raw`);
    assert.equal(JSON.parse(quoted), text, `U+${c.toString(16)} round trip`);
    const escaped = escapeControls(text);
    assert.ok(!unsafe.test(escaped), `U+${c.toString(16)} comes out raw`);
    if (!unsafe.test(text)) assert.equal(escaped, text, "kept as it is");
  }
  assert.equal(escapeControls('a\tb "c" \\'), 'a\\tb "c" \\');
});

Deno.test("escapePreview() shows invalid UTF-8 as U+FFFD", () => {
  assert.equal(
    escapePreview(Uint8Array.of(0x41, 0xff, 0xc3, 0x42), 80),
    '"A\ufffd\ufffdB"',
  );
});

Deno.test("escapePreview() cuts at maxChars and gives the full byte count", () => {
  const long = encoder.encode("a".repeat(100));
  assert.equal(escapePreview(long, 10), `"${"a".repeat(10)}"… (100 bytes)`);
  // Exactly maxChars: nothing to cut.
  assert.equal(escapePreview(long.subarray(0, 10), 10), `"${"a".repeat(10)}"`);
  // Characters, not bytes: 20 two-byte characters cut to 10.
  const accents = encoder.encode("é".repeat(20));
  assert.equal(escapePreview(accents, 10), `"${"é".repeat(10)}"… (40 bytes)`);
  // A character split by the byte window is cut off, not shown as U+FFFD.
  const euros = encoder.encode("€€");
  assert.equal(escapePreview(euros, 1), '"€"… (6 bytes)');
  // Newlines count as one character each, before escaping.
  assert.equal(
    escapePreview(encoder.encode("\n".repeat(5)), 3),
    '"\\n\\n\\n"… (5 bytes)',
  );
});

Deno.test("escapePreview() of a large message shows maxChars and its size", () => {
  const big = new Uint8Array(1024 * 1024).fill(0x61);
  const preview = escapePreview(big, 80);
  assert.equal(preview, `"${"a".repeat(80)}"… (${big.length} bytes)`);
});

// ---- delay ----------------------------------------------------------------

Deno.test("delay() resolves after ms", async () => {
  const start = performance.now();
  await delay(30, new AbortController().signal);
  // Timers never fire early; the clock may round down by a millisecond.
  assert.ok(performance.now() - start >= 29, `${performance.now() - start}`);
});

Deno.test("delay() resolves as soon as the signal aborts, clearing its timer", async () => {
  // A timer left behind would fail this test through the op sanitizer.
  const abort = new AbortController();
  const start = performance.now();
  const waiting = delay(10_000, abort.signal);
  setTimeout(() => abort.abort(), 10);
  await waiting;
  assert.ok(performance.now() - start < 5_000);
});

Deno.test("delay() resolves at once for an aborted signal", async () => {
  const start = performance.now();
  await delay(10_000, AbortSignal.abort());
  assert.ok(performance.now() - start < 5_000);
});

Deno.test("delay() removes its abort listener when the time is up", async () => {
  const listeners = new Set<unknown>();
  const signal = {
    aborted: false,
    addEventListener: (_type: string, fn: unknown) => listeners.add(fn),
    removeEventListener: (_type: string, fn: unknown) => listeners.delete(fn),
  } as unknown as AbortSignal;
  const waiting = delay(1, signal);
  assert.equal(listeners.size, 1);
  await waiting;
  assert.equal(listeners.size, 0);
});

Deno.test("withDefaults() fills what options leave out or set to undefined, as destructuring defaults do", () => {
  interface Options {
    port?: number;
    mode?: "raw" | "line";
    path?: string;
    onEvent?: () => void;
    label?: string | null;
  }
  const defaults = { port: 8080, mode: "raw", label: "x" } as const;
  const onEvent = () => {};
  const options: Options = { port: 0, mode: undefined, onEvent, label: null };
  const got = withDefaults(options, defaults);
  // 0 and null are values, not absence; undefined and a missing key are not.
  assert.deepEqual(got, {
    port: 0,
    mode: "raw",
    onEvent,
    label: null,
  });
  const { port = 8080, mode = "raw", label = "x" } = options;
  assert.deepEqual([got.port, got.mode, got.label], [port, mode, label]);
  assert.equal(got.onEvent, onEvent);
  assert.equal("path" in got, false);
  assert.deepEqual(options, { port: 0, mode: undefined, onEvent, label: null });
  assert.deepEqual(withDefaults({} as Options, defaults), defaults);
  // A table's key the options lack, or a default of the wrong type, does not compile.
  // @ts-expect-error: no such option
  withDefaults(options, { prot: 1 });
  // @ts-expect-error: not one of the option's values
  withDefaults(options, { mode: "stream" } as const);
});
