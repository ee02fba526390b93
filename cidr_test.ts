/**
 * `_cidr.ts`: rule syntax, and {@linkcode AccessList} checked by fast-check
 * against a straightforward reference that compares prefix bits of bytes.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { AccessList, parseCidr } from "./_cidr.ts";

// ---- the reference: addresses as byte arrays, prefixes compared bit by bit ----

/** An address as bytes (4 or 16), IPv4-mapped IPv6 turned into its IPv4 bytes. */
function normal(bytes: number[]): number[] {
  const mapped = bytes.length === 16 &&
    bytes.slice(0, 10).every((b) => b === 0) &&
    bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? bytes.slice(12) : bytes;
}

interface Rule {
  bytes: number[];
  prefix: number;
}

/** A rule as the reference reads it: mapped ranges of /96 or more are IPv4. */
function normalRule({ bytes, prefix }: Rule): Rule {
  const n = normal(bytes);
  return n.length === 4 && bytes.length === 16 && prefix >= 96
    ? { bytes: n, prefix: prefix - 96 }
    : { bytes, prefix };
}

function referenceMatch(client: number[], rule: Rule): boolean {
  const c = normal(client);
  const { bytes, prefix } = normalRule(rule);
  if (c.length !== bytes.length) return false;
  for (let bit = 0; bit < prefix; bit++) {
    const mask = 0x80 >> (bit % 8);
    if ((c[bit >> 3] & mask) !== (bytes[bit >> 3] & mask)) return false;
  }
  return true;
}

function referenceAllows(client: number[], allow: Rule[], deny: Rule[]) {
  if (deny.some((r) => referenceMatch(client, r))) return false;
  return allow.length === 0 || allow.some((r) => referenceMatch(client, r));
}

// ---- text forms, written here without the library ----------------------

function hex(bytes: number[]): string[] {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) {
    groups.push(((bytes[i] << 8) | bytes[i + 1]).toString(16));
  }
  return groups;
}

/** The text of an address, in one of the forms a client or rule may take. */
function formats(bytes: number[]): string[] {
  if (bytes.length === 4) return [bytes.join(".")];
  const groups = hex(bytes);
  const full = groups.join(":");
  const forms = [full, full.toUpperCase()];
  // "::" for the longest run of zero groups (two or more).
  let best = [-1, 0];
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > best[1]) best = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  if (best[1] >= 2) {
    const [at, len] = best;
    forms.push(
      `${groups.slice(0, at).join(":")}::${groups.slice(at + len).join(":")}`,
    );
  }
  // The dotted tail, as Deno shows IPv4 clients of a dual-stack listener.
  forms.push(`${groups.slice(0, 6).join(":")}:${bytes.slice(12).join(".")}`);
  return forms;
}

const v4 = fc.array(fc.integer({ min: 0, max: 255 }), {
  minLength: 4,
  maxLength: 4,
});
const v6: fc.Arbitrary<number[]> = fc.oneof(
  fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 16, maxLength: 16 }),
  // IPv4-mapped, and a few near misses of it
  v4.map((b) => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...b]),
  v4.map((b) => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, ...b]),
  fc.constant<number[]>([...Array(15).fill(0), 1]), // ::1
);
const address = fc.oneof(v4, v6);
const rule: fc.Arbitrary<Rule> = address.chain((bytes) =>
  fc.integer({ min: 0, max: bytes.length * 8 }).map((prefix) => ({
    bytes,
    prefix,
  }))
);

/** A client inside `rule` (bits past the prefix drawn at random), or not. */
function near(r: Rule): fc.Arbitrary<number[]> {
  return fc.array(fc.integer({ min: 0, max: 255 }), {
    minLength: r.bytes.length,
    maxLength: r.bytes.length,
  }).map((noise) =>
    r.bytes.map((b, i) => {
      const keep = Math.max(0, Math.min(8, r.prefix - i * 8));
      const mask = (0xff << (8 - keep)) & 0xff;
      return (b & mask) | (noise[i] & ~mask & 0xff);
    })
  );
}

const ruleText = (r: Rule, form = 0) => {
  const texts = formats(r.bytes);
  return `${texts[form % texts.length]}/${r.prefix}`;
};

Deno.test("AccessList.allows() agrees with a bitwise reference", () => {
  fc.assert(
    fc.property(
      fc.array(rule, { maxLength: 4 }),
      fc.array(rule, { maxLength: 4 }),
      fc.nat(),
      fc.nat(),
      (allow, deny, pick, form) => {
        const rules = [...allow, ...deny];
        return fc.sample(
          rules.length > 0
            ? fc.oneof(address, near(rules[pick % rules.length]))
            : address,
          { numRuns: 8, seed: pick },
        ).every((client) => {
          const list = new AccessList(
            allow.map((r, i) => ruleText(r, form + i)),
            deny.map((r, i) => ruleText(r, form + i)),
          );
          const expected = referenceAllows(client, allow, deny);
          return formats(client).every((text) =>
            list.allows(text) === expected
          );
        });
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("AccessList.allows() takes a bare address as one host", () => {
  fc.assert(
    fc.property(address, address, (host, other) => {
      const list = new AccessList(formats(host), []);
      const same = normal(host).join() === normal(other).join();
      return formats(other).every((t) => list.allows(t) === same);
    }),
  );
});

Deno.test("AccessList: deny wins over allow; no rules allow everyone", () => {
  const list = new AccessList(["10.0.0.0/8", "::1"], ["10.1.0.0/16"]);
  assert.equal(list.allows("10.2.3.4"), true);
  assert.equal(list.allows("10.1.3.4"), false); // allowed and denied
  assert.equal(list.allows("::ffff:10.1.3.4"), false); // the same, mapped
  assert.equal(list.allows("::ffff:10.2.3.4"), true);
  assert.equal(list.allows("::1"), true);
  assert.equal(list.allows("::2"), false);
  assert.equal(list.allows("192.0.2.1"), false);
  assert.equal(list.allows("unix"), false); // no IP: no allow rule matches
  const open = new AccessList([], ["192.0.2.0/24"]);
  assert.equal(open.allows("unix"), true);
  assert.equal(open.allows("192.0.2.200"), false);
  assert.equal(open.allows("198.51.100.1"), true);
  assert.equal(new AccessList([], []).empty, true);
  assert.equal(open.empty, false);
});

Deno.test("AccessList: mapped rules of /96 or more are IPv4 rules", () => {
  const list = new AccessList(["::ffff:192.0.2.0/120"], []);
  assert.equal(list.allows("192.0.2.9"), true);
  assert.equal(list.allows("::ffff:192.0.2.9"), true);
  assert.equal(list.allows("192.0.3.9"), false);
  // ::/0 is every IPv6 client; an IPv4 client (mapped or not) is not one.
  const v6only = new AccessList(["::/0"], []);
  assert.equal(v6only.allows("2001:db8::1"), true);
  assert.equal(v6only.allows("::ffff:192.0.2.9"), false);
});

Deno.test("parseCidr() refuses loose and malformed rules", () => {
  for (
    const bad of [
      "",
      "10",
      "127.1",
      "010.0.0.1",
      "0x7f.0.0.1",
      "1.2.3.4/33",
      "1.2.3.4/",
      "1.2.3.4/08",
      "1.2.3.4/-1",
      "1.2.3.4/ 8",
      " 1.2.3.4",
      "::1/129",
      "fe80::1%eth0",
      "1::2::3",
      "localhost",
      "1.2.3.4/8/8",
    ]
  ) {
    assert.throws(() => parseCidr(bad), RangeError, bad);
  }
  assert.equal(String(parseCidr("10.1.2.3/8")), "10.1.2.3,8");
  assert.equal(String(parseCidr("2001:db8::/32")), "2001:db8::,32");
  assert.equal(String(parseCidr("::ffff:1.2.3.4")), "1.2.3.4,32");
  assert.throws(
    () => new AccessList(["10.0.0.0/8", "nope"], []),
    /"nope" is not an IP address or CIDR range/,
  );
});
