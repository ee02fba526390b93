/**
 * Access control by client address: {@linkcode AccessList} holds the
 * `--allow` and `--deny` rules and says whether an address may connect.
 * Parsing and prefix matching are ipaddr.js's; this module adds a strict rule
 * syntax (no `127.1`, no octal `010.0.0.1`, no zone) and one rule for
 * IPv4-mapped IPv6 addresses: `::ffff:a.b.c.d` is the IPv4 address
 * `a.b.c.d`, in rules and in clients alike. Private to `server.ts`.
 *
 * @module
 */
import ipaddr from "ipaddr.js";

/** An address range: the network's address and its prefix length in bits. */
type Range = [ipaddr.IPv4 | ipaddr.IPv6, number];

/**
 * Parses a rule: `ADDR/PREFIX` or a bare address (one host), IPv4 in four
 * decimal parts or IPv6. An IPv4-mapped IPv6 range of prefix 96 or more
 * becomes the IPv4 range it maps (`::ffff:10.0.0.0/104` is `10.0.0.0/8`).
 * Bits past the prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`).
 *
 * @throws {RangeError} `"TEXT" is not an IP address or CIDR range`
 */
export function parseCidr(text: string): Range {
  const slash = text.indexOf("/");
  const address = slash === -1 ? text : text.slice(0, slash);
  const prefixText = slash === -1 ? undefined : text.slice(slash + 1);
  const v4 = ipaddr.IPv4.isValidFourPartDecimal(address);
  const v6 = !v4 && !address.includes("%") && ipaddr.IPv6.isValid(address);
  const bits = v4 ? 32 : 128;
  const prefix = prefixText === undefined
    ? bits
    : /^(0|[1-9]\d{0,2})$/.test(prefixText)
    ? Number(prefixText)
    : NaN;
  if (!(v4 || v6) || !(prefix <= bits)) {
    throw new RangeError(`"${text}" is not an IP address or CIDR range`);
  }
  const addr = ipaddr.parse(address);
  if (addr instanceof ipaddr.IPv6 && addr.isIPv4MappedAddress()) {
    if (prefix >= 96) return [addr.toIPv4Address(), prefix - 96];
  }
  return [addr, prefix];
}

/**
 * A client address as rules see it: IPv4-mapped IPv6 as IPv4; `undefined`
 * when it is no IP address (a Unix socket's `unix`).
 */
function clientAddress(ip: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  try {
    return ipaddr.process(ip);
  } catch {
    return undefined;
  }
}

function inRange(addr: ipaddr.IPv4 | ipaddr.IPv6, [net, prefix]: Range) {
  return addr.kind() === net.kind() && addr.match(net, prefix);
}

/**
 * The `--allow` and `--deny` lists. A client matched by a deny rule is
 * refused; otherwise, with no allow rule everyone is allowed, with some only
 * the clients they match. A client that has no IP address (a Unix socket)
 * matches no rule.
 */
export class AccessList {
  readonly #allow: readonly Range[];
  readonly #deny: readonly Range[];

  /**
   * Rules as {@linkcode parseCidr} reads them.
   *
   * @throws {RangeError} naming the first rule that is not an address or range
   */
  constructor(allow: readonly string[], deny: readonly string[]) {
    this.#allow = allow.map(parseCidr);
    this.#deny = deny.map(parseCidr);
  }

  /** Whether there is no rule at all (then every client is allowed). */
  get empty(): boolean {
    return this.#allow.length === 0 && this.#deny.length === 0;
  }

  /** Whether a client at `ip` (as `Deno.NetAddr.hostname` gives it) may connect. */
  allows(ip: string): boolean {
    const addr = clientAddress(ip);
    if (addr === undefined) return this.#allow.length === 0;
    if (this.#deny.some((range) => inRange(addr, range))) return false;
    return this.#allow.length === 0 ||
      this.#allow.some((range) => inRange(addr, range));
  }
}
