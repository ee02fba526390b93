/**
 * The PROXY protocol (HAProxy's `proxy-protocol.txt`), both sides: the
 * server reads a header with {@linkcode readProxyHeader} (parsed by
 * {@linkcode parseProxyHeader}), the client writes one with
 * {@linkcode proxyHeaderFor} / {@linkcode formatProxyHeader}. Version 1 is
 * one text line (`PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n`, 107 bytes
 * at most); version 2 is binary (a 12-byte signature, version and command,
 * family and protocol, a length, the addresses, then TLVs, which are skipped).
 *
 * @module
 */
import ipaddr from "ipaddr.js";
import { formatAddr, writeAll } from "./io.ts";

/** A header version a client sends. */
export type ProxyVersion = "v1" | "v2";

/** The header versions a server takes: one, or either (`any`). */
export type ProxyAccept = ProxyVersion | "any";

/**
 * A PROXY header. `source` and `destination` are there when the header
 * names the connection's real endpoints; without them (v1 `UNKNOWN`, v2
 * `LOCAL`, v2 `UNSPEC` or a datagram protocol) the receiver keeps the
 * socket's own addresses.
 */
export interface ProxyHeader {
  /** 1: the text line; 2: binary. */
  version: 1 | 2;
  /** `proxy`: relayed for someone else; `local`: the proxy's own (v2 only). */
  command: "proxy" | "local";
  /** The client the proxy relays for. */
  source?: Deno.NetAddr | Deno.UnixAddr;
  /** The address the client connected to. */
  destination?: Deno.NetAddr | Deno.UnixAddr;
}

/** A header that cannot be, or cannot begin, a PROXY header we accept. */
export class ProxyHeaderError extends Error {
  override name = "ProxyHeaderError";
}

const V1_PREFIX = new TextEncoder().encode("PROXY ");
/** The longest v1 line, CRLF included (`PROXY UNKNOWN` with two IPv6 addresses). */
export const V1_MAX_BYTES = 107;
/** v2's first 12 bytes, as the spec writes them. */
const V2_SIGNATURE = new TextEncoder().encode("\r\n\r\n\0\r\nQUIT\n");
/** v2: the fixed part before the addresses. */
const V2_FIXED_BYTES = 16;
/** v2: a Unix socket address. */
const V2_UNIX_BYTES = 108;
/** v2 family and protocol bytes (high nibble family, low nibble protocol). */
const TCP4 = 0x11, TCP6 = 0x21, UNIX_STREAM = 0x31;

const IPV4 =
  /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const PORT = /^(0|[1-9]\d{0,4})$/;

/**
 * Parses the PROXY header at the start of `bytes`.
 *
 * @param accept the versions taken; bytes that begin neither are refused at
 *   once, however few they are
 * @returns the header and its size in bytes (what follows is the client's
 *   data), or `undefined` when `bytes` may still become a valid header
 * @throws {ProxyHeaderError} when they cannot
 */
export function parseProxyHeader(
  bytes: Uint8Array,
  accept: ProxyAccept,
): { header: ProxyHeader; size: number } | undefined {
  if (bytes.length === 0) return undefined;
  if (accept !== "v2" && bytes[0] === V1_PREFIX[0]) return parseV1(bytes);
  if (accept !== "v1" && bytes[0] === V2_SIGNATURE[0]) return parseV2(bytes);
  throw new ProxyHeaderError(
    accept === "any" ? "not a PROXY header" : `not a PROXY ${accept} header`,
  );
}

function parseV1(
  bytes: Uint8Array,
): { header: ProxyHeader; size: number } | undefined {
  const end = Math.min(bytes.length, V1_MAX_BYTES);
  let lf = -1;
  for (let i = 0; i < end; i++) {
    const b = bytes[i];
    if (i < V1_PREFIX.length) {
      if (b !== V1_PREFIX[i]) throw new ProxyHeaderError("not a PROXY header");
    } else if (b === 0x0d) {
      if (i + 1 < bytes.length && bytes[i + 1] !== 0x0a) {
        throw new ProxyHeaderError("v1: CR without LF");
      }
    } else if (b === 0x0a) {
      if (bytes[i - 1] !== 0x0d) {
        throw new ProxyHeaderError("v1: LF without CR");
      }
      lf = i;
      break;
    } else if (b < 0x20 || b > 0x7e) {
      throw new ProxyHeaderError("v1: a byte that is not printable US-ASCII");
    }
  }
  if (lf === -1) {
    if (bytes.length >= V1_MAX_BYTES) {
      throw new ProxyHeaderError(`v1: no CRLF in ${V1_MAX_BYTES} bytes`);
    }
    return undefined; // more to come
  }
  const line = new TextDecoder().decode(bytes.subarray(0, lf - 1));
  const size = lf + 1;
  const [, proto, ...fields] = line.split(" ");
  if (proto === "UNKNOWN") {
    return { header: { version: 1, command: "proxy" }, size };
  }
  if ((proto !== "TCP4" && proto !== "TCP6") || fields.length !== 4) {
    throw new ProxyHeaderError(
      `v1: not "TCP4", "TCP6" or "UNKNOWN" with 4 fields`,
    );
  }
  const [src, dst, srcPort, dstPort] = fields;
  const host = proto === "TCP4" ? v4Text : v6Text;
  return {
    header: {
      version: 1,
      command: "proxy",
      source: tcp(host(src), port(srcPort)),
      destination: tcp(host(dst), port(dstPort)),
    },
    size,
  };
}

function v4Text(text: string): string {
  if (!IPV4.test(text)) throw new ProxyHeaderError("v1: bad IPv4 address");
  return text;
}

function v6Text(text: string): string {
  if (text.includes("%") || !ipaddr.IPv6.isValid(text)) {
    throw new ProxyHeaderError("v1: bad IPv6 address");
  }
  return formatIPv6(ipaddr.IPv6.parse(text).toByteArray());
}

function port(text: string): number {
  const n = PORT.test(text) ? Number(text) : NaN;
  if (!(n <= 65535)) throw new ProxyHeaderError("v1: bad port");
  return n;
}

function tcp(hostname: string, port: number): Deno.NetAddr {
  return { transport: "tcp", hostname, port };
}

function parseV2(
  bytes: Uint8Array,
): { header: ProxyHeader; size: number } | undefined {
  const prefix = Math.min(bytes.length, V2_SIGNATURE.length);
  for (let i = 0; i < prefix; i++) {
    if (bytes[i] !== V2_SIGNATURE[i]) {
      throw new ProxyHeaderError("not a PROXY header");
    }
  }
  if (bytes.length > 12 && bytes[12] >> 4 !== 2) {
    throw new ProxyHeaderError(`v2: version ${bytes[12] >> 4}, not 2`);
  }
  if (bytes.length > 12 && (bytes[12] & 0xf) > 1) {
    throw new ProxyHeaderError(`v2: unknown command ${bytes[12] & 0xf}`);
  }
  if (bytes.length > 13 && (bytes[13] >> 4 > 3 || (bytes[13] & 0xf) > 2)) {
    throw new ProxyHeaderError(
      `v2: unknown family and protocol 0x${bytes[13].toString(16)}`,
    );
  }
  if (bytes.length < V2_FIXED_BYTES) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = view.getUint16(14);
  const size = V2_FIXED_BYTES + length;
  if (bytes.length < size) return undefined;
  const command = (bytes[12] & 0xf) === 0 ? "local" : "proxy";
  const header: ProxyHeader = { version: 2, command };
  if (command === "local") return { header, size };
  const at = V2_FIXED_BYTES;
  const need = (n: number) => {
    if (length < n) {
      throw new ProxyHeaderError(`v2: ${length} address bytes, not ${n}`);
    }
  };
  switch (bytes[13]) {
    case TCP4:
      need(12);
      header.source = tcp(
        bytes.subarray(at, at + 4).join("."),
        view.getUint16(at + 8),
      );
      header.destination = tcp(
        bytes.subarray(at + 4, at + 8).join("."),
        view.getUint16(at + 10),
      );
      break;
    case TCP6:
      need(36);
      header.source = tcp(
        formatIPv6(bytes.subarray(at, at + 16)),
        view.getUint16(at + 32),
      );
      header.destination = tcp(
        formatIPv6(bytes.subarray(at + 16, at + 32)),
        view.getUint16(at + 34),
      );
      break;
    case UNIX_STREAM:
      need(2 * V2_UNIX_BYTES);
      header.source = unix(bytes.subarray(at, at + V2_UNIX_BYTES));
      header.destination = unix(
        bytes.subarray(at + V2_UNIX_BYTES, at + 2 * V2_UNIX_BYTES),
      );
      break;
      // UNSPEC, and the datagram protocols a stream cannot carry: the spec
      // lets a receiver fall back to the socket's own addresses.
  }
  return { header, size };
}

function unix(bytes: Uint8Array): Deno.UnixAddr {
  const nul = bytes.indexOf(0);
  const path = new TextDecoder().decode(
    nul === -1 ? bytes : bytes.subarray(0, nul),
  );
  return { transport: "unix", path };
}

/**
 * IPv6 bytes as Deno shows a peer's address: RFC 5952 (`2001:db8::1`), and
 * IPv4-mapped with a dotted tail (`::ffff:192.0.2.1`).
 */
function formatIPv6(bytes: Uint8Array | number[]): string {
  const addr = ipaddr.fromByteArray([...bytes]) as ipaddr.IPv6;
  return addr.isIPv4MappedAddress()
    ? `::ffff:${addr.toIPv4Address()}`
    : addr.toRFC5952String();
}

/**
 * The peer tag and limits address of a connection that sent `header`, or
 * `undefined` when it keeps its socket's own (as with an unnamed Unix
 * source, which has no path). A Unix source is `unix:PATH`, its address `unix`; bytes of the path that are not printable
 * ASCII are escaped (`\x0a`), so a header cannot forge log lines.
 */
export function proxiedPeer(
  header: ProxyHeader,
): { peer: string; ip: string } | undefined {
  const { source } = header;
  if (source === undefined || ("path" in source && !source.path)) {
    return undefined;
  }
  if (!("path" in source)) {
    return { peer: formatAddr(source), ip: source.hostname };
  }
  const path = source.path.replace(
    /[^\x21-\x7e]/gu,
    (c) => {
      const code = c.codePointAt(0)!;
      return code < 0x100
        ? `\\x${code.toString(16).padStart(2, "0")}`
        : `\\u{${code.toString(16)}}`;
    },
  );
  return { peer: `unix:${path}`, ip: "unix" };
}

/**
 * The bytes of `header`. Version 1 writes `UNKNOWN` for anything but TCP
 * (it has no `LOCAL` and no Unix family).
 *
 * @throws {TypeError} when source and destination are not of one family
 */
export function formatProxyHeader(header: ProxyHeader): Uint8Array {
  const { version, command, source, destination } = header;
  const kind = family(source, destination);
  if (version === 1) {
    if (command === "local" || kind === undefined || kind === UNIX_STREAM) {
      return new TextEncoder().encode("PROXY UNKNOWN\r\n");
    }
    const [src, dst] = [source, destination] as Deno.NetAddr[];
    const proto = kind === TCP4 ? "TCP4" : "TCP6";
    return new TextEncoder().encode(
      `PROXY ${proto} ${src.hostname} ${dst.hostname} ${src.port} ${dst.port}\r\n`,
    );
  }
  const addresses = command === "local" || kind === undefined
    ? new Uint8Array(0)
    : kind === UNIX_STREAM
    ? new Uint8Array([
      ...unixBytes(source as Deno.UnixAddr),
      ...unixBytes(destination as Deno.UnixAddr),
    ])
    : tcpBytes(source as Deno.NetAddr, destination as Deno.NetAddr, kind);
  const out = new Uint8Array(V2_FIXED_BYTES + addresses.length);
  out.set(V2_SIGNATURE);
  out[12] = 0x20 | (command === "local" ? 0 : 1);
  out[13] = command === "local" || kind === undefined ? 0 : kind;
  new DataView(out.buffer).setUint16(14, addresses.length);
  out.set(addresses, V2_FIXED_BYTES);
  return out;
}

/** The v2 family byte of a source and destination, or `undefined` for none. */
function family(
  source: ProxyHeader["source"],
  destination: ProxyHeader["destination"],
): number | undefined {
  if (source === undefined && destination === undefined) return undefined;
  if (source?.transport === "unix" && destination?.transport === "unix") {
    return UNIX_STREAM;
  }
  if (source?.transport === "tcp" && destination?.transport === "tcp") {
    const v4 = IPV4.test(source.hostname);
    if (v4 === IPV4.test(destination.hostname)) return v4 ? TCP4 : TCP6;
  }
  throw new TypeError("PROXY header: source and destination of two families");
}

function tcpBytes(src: Deno.NetAddr, dst: Deno.NetAddr, kind: number) {
  const size = kind === TCP4 ? 4 : 16;
  const out = new Uint8Array(2 * size + 4);
  out.set(ipaddr.parse(src.hostname).toByteArray(), 0);
  out.set(ipaddr.parse(dst.hostname).toByteArray(), size);
  const view = new DataView(out.buffer);
  view.setUint16(2 * size, src.port);
  view.setUint16(2 * size + 2, dst.port);
  return out;
}

function unixBytes({ path }: Deno.UnixAddr): Uint8Array {
  const out = new Uint8Array(V2_UNIX_BYTES);
  // An unnamed socket (a client's) has no path: Deno gives `null`.
  const bytes = new TextEncoder().encode(path ?? "");
  out.set(bytes.subarray(0, V2_UNIX_BYTES - 1));
  return out;
}

/**
 * The header a client connected by `conn` sends: source its own address,
 * destination the server's. IPv4 beside IPv6 is written as IPv4-mapped IPv6.
 */
export function proxyHeaderFor(
  conn: Deno.Conn,
  version: ProxyVersion,
): Uint8Array {
  let [source, destination] = [conn.localAddr, conn.remoteAddr];
  if (source.transport === "tcp" && destination.transport === "tcp") {
    const v4 = [source, destination].map((a) => IPV4.test(a.hostname));
    if (v4[0] !== v4[1]) {
      [source, destination] = [mapped(source), mapped(destination)];
    }
  }
  return formatProxyHeader({
    version: version === "v1" ? 1 : 2,
    command: "proxy",
    source: source as Deno.NetAddr | Deno.UnixAddr,
    destination: destination as Deno.NetAddr | Deno.UnixAddr,
  });
}

function mapped(addr: Deno.NetAddr): Deno.NetAddr {
  return IPV4.test(addr.hostname)
    ? { ...addr, hostname: `::ffff:${addr.hostname}` }
    : addr;
}

/** Writes {@linkcode proxyHeaderFor} `conn` on it: call it first thing after connect. */
export async function sendProxyHeader(
  conn: Deno.Conn,
  version: ProxyVersion,
): Promise<void> {
  await writeAll(conn, proxyHeaderFor(conn, version));
}

/**
 * Reads a PROXY header from `conn`, reading no more than it can hold before
 * deciding: bytes that cannot begin a header of `accept` fail at once. The
 * caller bounds the wait (by closing `conn`).
 *
 * @returns the header, and the client's bytes read past it (to echo)
 * @throws {ProxyHeaderError} for a bad header, or EOF before a whole one
 */
export async function readProxyHeader(
  conn: Deno.Conn,
  accept: ProxyAccept,
): Promise<{ header: ProxyHeader; rest: Uint8Array }> {
  let buf = new Uint8Array(256);
  let filled = 0;
  for (;;) {
    const n = await conn.read(buf.subarray(filled));
    if (n === null) {
      throw new ProxyHeaderError(
        filled === 0
          ? "none (the client sent nothing)"
          : `cut short after ${filled} bytes`,
      );
    }
    filled += n;
    const parsed = parseProxyHeader(buf.subarray(0, filled), accept);
    if (parsed !== undefined) {
      return { header: parsed.header, rest: buf.slice(parsed.size, filled) };
    }
    if (filled === buf.length) {
      // Only a v2 header with a large TLV section gets here: room for all of it.
      const size = V2_FIXED_BYTES + new DataView(buf.buffer).getUint16(14);
      const bigger = new Uint8Array(Math.max(size, buf.length + 1));
      bigger.set(buf);
      buf = bigger;
    }
  }
}

/**
 * A connection whose first reads give back `prefix` (bytes read with the
 * PROXY header, which belong to the client's data), then read the
 * connection. Everything else is the connection's. `readable` does not see
 * the prefix: the server never uses it.
 */
export class PrefixedConn implements Deno.Conn {
  readonly #conn: Deno.Conn;
  #prefix: Uint8Array | undefined;

  /** `conn`, read from after `prefix`. */
  constructor(conn: Deno.Conn, prefix: Uint8Array) {
    this.#conn = conn;
    this.#prefix = prefix.length > 0 ? prefix : undefined;
  }

  /** Reads the prefix first, then the connection. */
  read(p: Uint8Array): Promise<number | null> {
    const prefix = this.#prefix;
    if (prefix === undefined) return this.#conn.read(p);
    const n = Math.min(p.length, prefix.length);
    p.set(prefix.subarray(0, n));
    this.#prefix = n === prefix.length ? undefined : prefix.subarray(n);
    return Promise.resolve(n);
  }
  /** As `Deno.Conn.write`. */
  write(p: Uint8Array): Promise<number> {
    return this.#conn.write(p);
  }
  /** As `Deno.Conn.close`. */
  close(): void {
    this.#conn.close();
  }
  /** As `Deno.Conn.closeWrite`. */
  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }
  /** As `Deno.Conn.ref`. */
  ref(): void {
    this.#conn.ref();
  }
  /** As `Deno.Conn.unref`. */
  unref(): void {
    this.#conn.unref();
  }
  /** The connection's. */
  get localAddr(): Deno.Addr {
    return this.#conn.localAddr;
  }
  /** The connection's. */
  get remoteAddr(): Deno.Addr {
    return this.#conn.remoteAddr;
  }
  /** The connection's (without the prefix). */
  get readable(): ReadableStream<Uint8Array<ArrayBuffer>> {
    return this.#conn.readable;
  }
  /** The connection's. */
  get writable(): WritableStream<Uint8Array<ArrayBufferLike>> {
    return this.#conn.writable;
  }
  /** Closes the connection; never throws. */
  [Symbol.dispose](): void {
    this.#conn[Symbol.dispose]();
  }
}
