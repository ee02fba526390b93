/**
 * `_proxy_protocol.ts` on its own: the parser against the spec's examples,
 * round trips with the writer, and fuzzing (fast-check). The server's use of
 * it is in `access_test.ts`.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  formatProxyHeader,
  parseProxyHeader,
  proxiedPeer,
  type ProxyAccept,
  type ProxyHeader,
  ProxyHeaderError,
  proxyHeaderFor,
  V1_MAX_BYTES,
} from "./_proxy_protocol.ts";

const encoder = new TextEncoder();
const bytes = (text: string) => encoder.encode(text);
const SIG = [
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
];
const tcp = (hostname: string, port: number): Deno.NetAddr => ({
  transport: "tcp",
  hostname,
  port,
});

/** A v2 header from its parts: ver/cmd byte, family byte, address bytes. */
function v2(verCmd: number, fam: number, body: number[]): Uint8Array {
  return new Uint8Array([
    ...SIG,
    verCmd,
    fam,
    body.length >> 8,
    body.length & 0xff,
    ...body,
  ]);
}

function rejects(data: Uint8Array, accept: ProxyAccept, re: RegExp) {
  assert.throws(() => parseProxyHeader(data, accept), (err) => {
    assert.ok(err instanceof ProxyHeaderError, String(err));
    assert.match(err.message, re);
    return true;
  });
}

Deno.test("parseProxyHeader() reads v1 TCP4, TCP6 and UNKNOWN lines", () => {
  const line = "PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n";
  assert.deepEqual(parseProxyHeader(bytes(line + "hello"), "v1"), {
    header: {
      version: 1,
      command: "proxy",
      source: tcp("203.0.113.7", 4242),
      destination: tcp("192.0.2.1", 443),
    },
    size: line.length,
  });
  const six = "PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::ffff:192.0.2.1 0 65535\r\n";
  assert.deepEqual(parseProxyHeader(bytes(six), "any")?.header.source, {
    transport: "tcp",
    hostname: "2001:db8::1",
    port: 0,
  });
  assert.equal(
    parseProxyHeader(bytes(six), "any")?.header.destination?.transport,
    "tcp",
  );
  assert.deepEqual(
    (parseProxyHeader(bytes(six), "any")?.header.destination as Deno.NetAddr)
      .hostname,
    "::ffff:192.0.2.1",
  );
  for (
    const unknown of [
      "PROXY UNKNOWN\r\n",
      "PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n",
    ]
  ) {
    assert.deepEqual(parseProxyHeader(bytes(unknown), "v1"), {
      header: { version: 1, command: "proxy" },
      size: unknown.length,
    });
  }
  // The spec's worst case: 107 bytes with the CRLF.
  const v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  const worst = `PROXY UNKNOWN ${v6} ${v6} 65535 65535\r\n`;
  assert.equal(worst.length, V1_MAX_BYTES);
  assert.equal(parseProxyHeader(bytes(worst), "v1")?.size, V1_MAX_BYTES);
});

Deno.test("parseProxyHeader() refuses bad v1 lines", () => {
  const cases: [string, RegExp][] = [
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", /LF without CR/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", /CR without LF/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", /4 fields/],
    ["PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", /4 fields/],
    ["PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", /TCP4/],
    ["PROXY UNKNOWNX\r\n", /TCP4/],
    ["PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", /bad IPv4/],
    ["PROXY TCP4 ::1 5.6.7.8 1 2\r\n", /bad IPv4/],
    ["PROXY TCP6 1.2.3.4 ::1 1 2\r\n", /bad IPv6/],
    ["PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", /bad IPv6/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", /bad port/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", /bad port/],
    ["PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", /bad port/],
    ["PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", /printable/],
    ["PROXY UNKNOWN " + "x".repeat(100), /no CRLF in 107 bytes/],
    ["proxy TCP4", /not a PROXY v1 header/],
    ["PROXX", /not a PROXY header/],
  ];
  for (const [line, re] of cases) rejects(bytes(line), "v1", re);
});

Deno.test("parseProxyHeader() reads v2 TCP4, TCP6, UNIX, LOCAL and UNSPEC", () => {
  const four = v2(0x21, 0x11, [
    203,
    0,
    113,
    7,
    192,
    0,
    2,
    1,
    0x10,
    0x92,
    1,
    0xbb,
  ]);
  assert.deepEqual(parseProxyHeader(four, "v2"), {
    header: {
      version: 2,
      command: "proxy",
      source: tcp("203.0.113.7", 4242),
      destination: tcp("192.0.2.1", 443),
    },
    size: 28,
  });
  const six = v2(0x21, 0x21, [
    0x20,
    0x01,
    0x0d,
    0xb8,
    ...Array(11).fill(0),
    1,
    ...Array(10).fill(0),
    0xff,
    0xff,
    192,
    0,
    2,
    1,
    0,
    80,
    0,
    81,
  ]);
  assert.deepEqual(parseProxyHeader(six, "any")?.header, {
    version: 2,
    command: "proxy",
    source: tcp("2001:db8::1", 80),
    destination: tcp("::ffff:192.0.2.1", 81),
  });
  const path = (p: string) => {
    const out = Array(108).fill(0);
    out.splice(0, p.length, ...bytes(p));
    return out;
  };
  const unix = v2(0x21, 0x31, [...path("/run/a.sock"), ...path("/run/b")]);
  assert.deepEqual(parseProxyHeader(unix, "v2")?.header, {
    version: 2,
    command: "proxy",
    source: { transport: "unix", path: "/run/a.sock" },
    destination: { transport: "unix", path: "/run/b" },
  });
  // LOCAL: addresses (if any) are skipped; so are UNSPEC and UDP ones.
  for (
    const h of [
      v2(0x20, 0x00, []),
      v2(0x20, 0x11, [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]),
      v2(0x21, 0x00, [9, 9, 9]),
      v2(0x21, 0x12, [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]),
    ]
  ) {
    const parsed = parseProxyHeader(h, "v2");
    assert.equal(parsed?.size, h.length);
    assert.equal(parsed?.header.source, undefined);
  }
  // TLVs after the addresses are skipped.
  const tlvs = [0x04, 0, 3, 1, 2, 3, 0xe0, 0, 0];
  const withTlvs = v2(0x21, 0x11, [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    0,
    1,
    0,
    2,
    ...tlvs,
  ]);
  const parsed = parseProxyHeader(withTlvs, "v2");
  assert.equal(parsed?.size, withTlvs.length);
  assert.deepEqual(parsed?.header.source, tcp("1.2.3.4", 1));
});

Deno.test("parseProxyHeader() refuses bad v2 headers", () => {
  rejects(v2(0x11, 0x11, []), "v2", /version 1, not 2/);
  rejects(v2(0x22, 0x11, []), "v2", /unknown command 2/);
  rejects(v2(0x21, 0x41, []), "v2", /family and protocol 0x41/);
  rejects(v2(0x21, 0x13, []), "v2", /family and protocol 0x13/);
  rejects(v2(0x21, 0x11, [1, 2, 3]), "v2", /3 address bytes, not 12/);
  rejects(v2(0x21, 0x21, Array(12).fill(0)), "v2", /12 address bytes, not 36/);
  rejects(v2(0x21, 0x31, Array(36).fill(0)), "v2", /not 216/);
  // Found wrong before the rest arrives.
  rejects(new Uint8Array([...SIG, 0x31]), "v2", /version 3/);
  rejects(new Uint8Array([0x0d, 0x0a, 0x0d, 0x0b]), "v2", /not a PROXY/);
});

Deno.test("parseProxyHeader() refuses the first byte that cannot begin a header", () => {
  rejects(bytes("G"), "any", /^not a PROXY header$/);
  rejects(bytes("P"), "v2", /^not a PROXY v2 header$/);
  rejects(new Uint8Array([0x0d]), "v1", /^not a PROXY v1 header$/);
  rejects(new Uint8Array([0x16, 0x03, 0x01]), "any", /not a PROXY header/); // TLS
  assert.equal(parseProxyHeader(bytes("PROX"), "v1"), undefined);
  assert.equal(
    parseProxyHeader(new Uint8Array(SIG.slice(0, 5)), "any"),
    undefined,
  );
});

// ---- properties ------------------------------------------------------------

const port = fc.integer({ min: 0, max: 65535 });
const v4 = fc.ipV4().filter((a) => !/(^|\.)0\d/.test(a));
const v6 = fc.array(fc.integer({ min: 0, max: 255 }), {
  minLength: 16,
  maxLength: 16,
}).map((b) => formatV6(b));
const pathText = fc.string({ maxLength: 40 }).filter((p) =>
  !p.includes("\0") && encoder.encode(p).length < 108
);

/** IPv6 bytes in the canonical form the parser gives (computed without it). */
function formatV6(b: number[]): string {
  if (
    b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff
  ) {
    return `::ffff:${b.slice(12).join(".")}`;
  }
  const groups = [];
  for (let i = 0; i < 16; i += 2) groups.push((b[i] << 8) | b[i + 1]);
  let [at, len] = [-1, 0];
  for (let i = 0; i < 8; i++) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > len && j - i >= 2) [at, len] = [i, j - i];
  }
  const h = groups.map((g) => g.toString(16));
  return at === -1
    ? h.join(":")
    : `${h.slice(0, at).join(":")}::${h.slice(at + len).join(":")}`;
}

const header: fc.Arbitrary<ProxyHeader> = fc.oneof<fc.Arbitrary<ProxyHeader>[]>(
  fc.record({
    version: fc.constantFrom(1 as const, 2 as const),
    command: fc.constant("proxy" as const),
    source: fc.tuple(v4, port).map(([h, p]) => tcp(h, p)),
    destination: fc.tuple(v4, port).map(([h, p]) => tcp(h, p)),
  }),
  fc.record({
    version: fc.constantFrom(1 as const, 2 as const),
    command: fc.constant("proxy" as const),
    source: fc.tuple(v6, port).map(([h, p]) => tcp(h, p)),
    destination: fc.tuple(v6, port).map(([h, p]) => tcp(h, p)),
  }),
  fc.record({
    version: fc.constant(2 as const),
    command: fc.constant("proxy" as const),
    source: pathText.map((path): Deno.UnixAddr => ({
      transport: "unix",
      path,
    })),
    destination: pathText.map((path): Deno.UnixAddr => ({
      transport: "unix",
      path,
    })),
  }),
  fc.record({
    version: fc.constantFrom(1 as const, 2 as const),
    command: fc.constant("proxy" as const),
  }),
  fc.record({
    version: fc.constant(2 as const),
    command: fc.constant("local" as const),
  }),
).map((h) => ({ ...h })); // fc.record's objects have no prototype
const anyBytes = fc.uint8Array({ maxLength: 300 });

Deno.test("formatProxyHeader() round-trips through parseProxyHeader(), data after it kept", () => {
  fc.assert(
    fc.property(header, anyBytes, (h, data) => {
      const head = formatProxyHeader(h);
      const all = new Uint8Array([...head, ...data]);
      const accept = h.version === 1 ? "v1" : "v2";
      assert.deepEqual(parseProxyHeader(all, accept), {
        header: h,
        size: head.length,
      });
      assert.deepEqual(parseProxyHeader(all, "any"), {
        header: h,
        size: head.length,
      });
      if (h.version === 1) assert.ok(head.length <= V1_MAX_BYTES);
      // Every proper prefix may still become it: more bytes wanted, no error.
      for (let i = 0; i < head.length; i++) {
        assert.equal(parseProxyHeader(head.subarray(0, i), "any"), undefined);
      }
    }),
    { numRuns: 500 },
  );
});

Deno.test("parseProxyHeader() on arbitrary bytes: a header, more wanted, or ProxyHeaderError", () => {
  const near = fc.tuple(
    header,
    fc.nat(),
    fc.integer({ min: 0, max: 255 }),
    anyBytes,
  )
    .map(([h, at, b, tail]) => {
      // A valid header with one byte changed, cut, or followed by noise.
      const head = [...formatProxyHeader(h), ...tail];
      head[at % head.length] = b;
      return new Uint8Array(head.slice(0, (at * 7) % (head.length + 1)));
    });
  fc.assert(
    fc.property(
      fc.oneof(anyBytes, near),
      fc.constantFrom<ProxyAccept>("v1", "v2", "any"),
      (data, accept) => {
        try {
          const parsed = parseProxyHeader(data, accept);
          if (parsed !== undefined) {
            assert.ok(parsed.size > 0 && parsed.size <= data.length);
          }
        } catch (err) {
          assert.ok(err instanceof ProxyHeaderError, String(err));
        }
      },
    ),
    { numRuns: 2000 },
  );
});

Deno.test("proxiedPeer() tags the source; escapes a Unix path; keeps none for UNKNOWN", () => {
  assert.deepEqual(
    proxiedPeer({
      version: 1,
      command: "proxy",
      source: tcp("2001:db8::1", 7),
    }),
    { peer: "[2001:db8::1]:7", ip: "2001:db8::1" },
  );
  assert.deepEqual(
    proxiedPeer({
      version: 2,
      command: "proxy",
      source: { transport: "unix", path: "/a\n2026 INF [x] offline\u202e" },
    }),
    {
      peer: "unix:/a\\x0a2026\\x20INF\\x20[x]\\x20offline\\u{202e}",
      ip: "unix",
    },
  );
  assert.equal(proxiedPeer({ version: 2, command: "local" }), undefined);
  const unnamed: Deno.UnixAddr = { transport: "unix", path: "" };
  assert.equal(
    proxiedPeer({
      version: 2,
      command: "proxy",
      source: unnamed,
      destination: unnamed,
    }),
    undefined,
  );
});

Deno.test("proxyHeaderFor() names the connection's own ends; an unnamed Unix client has no path", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using conn = await Deno.connect({ port: listener.addr.port });
  using _accepted = await listener.accept();
  const local = conn.localAddr as Deno.NetAddr;
  for (const version of ["v1", "v2"] as const) {
    assert.deepEqual(
      parseProxyHeader(proxyHeaderFor(conn, version), version)?.header,
      {
        version: version === "v1" ? 1 : 2,
        command: "proxy",
        source: tcp("127.0.0.1", local.port),
        destination: tcp("127.0.0.1", listener.addr.port),
      },
    );
  }
  if (Deno.build.os === "windows") return;
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/s.sock`;
    using unix = Deno.listen({ transport: "unix", path });
    using client = await Deno.connect({ transport: "unix", path });
    using _server = await unix.accept();
    assert.deepEqual(
      parseProxyHeader(proxyHeaderFor(client, "v2"), "v2")?.header,
      {
        version: 2,
        command: "proxy",
        source: { transport: "unix", path: "" },
        destination: { transport: "unix", path },
      },
    );
    assert.deepEqual(
      parseProxyHeader(proxyHeaderFor(client, "v1"), "v1")?.header,
      {
        version: 1,
        command: "proxy",
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
