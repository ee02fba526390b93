/**
 * The UDP client, private to `udp.ts` (which exports it): {@linkcode connectUdp}
 * opens a socket that talks to one server, {@linkcode udpPipe} sends lines
 * from a pipe, {@linkcode udpInteractive} from a terminal.
 *
 * @module
 */
import { lookup } from "node:dns/promises";
import { CONNECT_DEFAULTS, forTerminal } from "./client.ts";
import { Prompt } from "./_prompt.ts";
import { formatAddr, type Reader, writeAll, type Writer } from "./io.ts";

/** The largest UDP payload: 65,535 minus the UDP header (IPv4 allows 65,507). */
export const MAX_UDP_PAYLOAD = 65_527;
/** The largest UDP payload over IPv4 (65,535 minus the IP and UDP headers). */
export const MAX_UDP4_PAYLOAD = 65_507;

/** Without `--unstable-net` (or deno.json's `unstable`), say so plainly. */
export function checkUnstableNet(): void {
  if (typeof Deno.listenDatagram !== "function") {
    throw new Error(
      "UDP needs Deno's unstable net API: run with --unstable-net",
    );
  }
}

/** Where {@linkcode connectUdp} sends. */
export interface UdpConnectOptions {
  /** Host name or address; a name is resolved once, IPv4 first. @default {"127.0.0.1"} */
  hostname?: string;
  /** UDP port. @default {8080} */
  port?: number;
}

/**
 * A UDP socket that talks to one server, as a connected socket would (Deno's
 * datagram API has no `connect`): it sends there and receives only from
 * there; a datagram from anywhere else is skipped and counted.
 */
export class UdpConn implements Disposable {
  /** The server's resolved address. */
  readonly remote: Deno.NetAddr;
  /** Datagrams skipped because they came from another address. */
  foreign = 0;
  #socket: Deno.DatagramConn;
  #buf = new Uint8Array(MAX_UDP_PAYLOAD + 1);
  #pending: Promise<[Uint8Array, Deno.Addr]> | undefined;

  /** Wraps `socket` (now owned by this object) to talk to `remote`. */
  constructor(socket: Deno.DatagramConn, remote: Deno.NetAddr) {
    this.#socket = socket;
    this.remote = remote;
  }

  /** Where this socket is bound. */
  get localAddr(): Deno.NetAddr {
    return this.#socket.addr as Deno.NetAddr;
  }

  /** Sends one datagram to the server. */
  send(bytes: Uint8Array): Promise<number> {
    return this.#socket.send(bytes, this.remote);
  }

  /**
   * The next datagram from the server: a view valid until the next call.
   * With `timeoutMs`, `undefined` when none came in time; the receive stays
   * pending and the next call picks it up, so nothing is lost in between.
   *
   * @throws {Deno.errors.Interrupted} once the socket is closed
   */
  async receive(timeoutMs?: number): Promise<Uint8Array | undefined> {
    const deadline = timeoutMs === undefined
      ? undefined
      : performance.now() + timeoutMs;
    for (;;) {
      this.#pending ??= this.#socket.receive(this.#buf);
      let got: [Uint8Array, Deno.Addr] | undefined;
      try {
        got = await this.#within(this.#pending, deadline);
      } catch (err) {
        this.#pending = undefined;
        // An earlier datagram's ICMP error, reported here (Windows): the
        // server did not get that one; this receive goes on waiting.
        if (isIcmpError(err)) continue;
        throw err;
      }
      if (got === undefined) return undefined;
      this.#pending = undefined;
      const [data, from] = got;
      const { hostname, port } = from as Deno.NetAddr;
      if (port === this.remote.port && hostname === this.remote.hostname) {
        return data;
      }
      this.foreign++;
    }
  }

  /** `pending`, or `undefined` once `deadline` passes first. */
  async #within<T>(
    pending: Promise<T>,
    deadline: number | undefined,
  ): Promise<T | undefined> {
    if (deadline === undefined) return await pending;
    const left = deadline - performance.now();
    if (left <= 0) return undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), left);
    });
    try {
      return await Promise.race([pending, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Closes the socket; a pending {@linkcode UdpConn.receive} rejects. */
  close(): void {
    this.#socket.close();
    this.#pending?.catch(() => {}); // nobody may await it any more
  }

  /** Closes the socket unless closed already. */
  [Symbol.dispose](): void {
    try {
      this.close();
    } catch { /* closed already */ }
  }
}

/** A receive error that only reports an earlier send's ICMP error. */
function isIcmpError(err: unknown): boolean {
  return err instanceof Deno.errors.ConnectionReset ||
    err instanceof Deno.errors.ConnectionRefused;
}

/**
 * Resolves the server's address and binds a socket on a free port of the
 * same family (IPv4 `0.0.0.0`, IPv6 `::`).
 *
 * @throws {Error} `cannot connect to udp:HOST:PORT`, the cause saying why
 *   (an unknown host, no permission)
 */
export async function connectUdp(
  options: UdpConnectOptions = {},
): Promise<UdpConn> {
  const {
    hostname = CONNECT_DEFAULTS.hostname,
    port = CONNECT_DEFAULTS.port,
  } = options;
  const where = `udp:${formatAddr({ transport: "udp", hostname, port })}`;
  try {
    checkUnstableNet();
    const { address, family } = await lookup(hostname, { verbatim: false });
    const socket = Deno.listenDatagram({
      transport: "udp",
      hostname: family === 6 ? "::" : "0.0.0.0",
      port: 0,
    });
    return new UdpConn(socket, { transport: "udp", hostname: address, port });
  } catch (cause) {
    throw new Error(`cannot connect to ${where}`, { cause });
  }
}

/** Options for {@linkcode udpPipe}. */
export interface UdpPipeOptions {
  /** Lines to send. @default {Deno.stdin} */
  input?: Reader;
  /** Where replies go. @default {Deno.stdout} */
  output?: Writer;
  /** A reply not back this long after its datagram is lost. @default {1000} */
  timeoutMs?: number;
  /** Called for each lost reply: the line's number (from 1) and size. */
  onLost?: (line: number, bytes: number) => void;
}

/** Defaults of the UDP client; also printed by `--help`. */
export const UDP_CLIENT_DEFAULTS = { timeoutMs: 1000 } as const;

/** What {@linkcode udpPipe} did. */
export interface UdpPipeResult {
  /** Datagrams sent (input lines). */
  sent: number;
  /** Of those, replies not back within the timeout. */
  lost: number;
}

/**
 * Sends each input line (its `\n` included) as one datagram and writes each
 * reply to `output`, one at a time: the next line goes once the reply is in,
 * or once `timeoutMs` has passed (then it is lost, and a late reply to it is
 * skipped). With nothing lost, the output is the input.
 *
 * @throws {RangeError} for a line over 65,507 bytes (one datagram's most)
 * @throws {Error} when a datagram cannot be sent
 */
export async function udpPipe(
  conn: UdpConn,
  options: UdpPipeOptions = {},
): Promise<UdpPipeResult> {
  const {
    input = Deno.stdin,
    output = Deno.stdout,
    timeoutMs = UDP_CLIENT_DEFAULTS.timeoutMs,
    onLost,
  } = options;
  const result: UdpPipeResult = { sent: 0, lost: 0 };
  const lost = new RecentBytes(); // late replies to these are not replies
  for await (const line of readLines(input, MAX_UDP4_PAYLOAD)) {
    await conn.send(line);
    result.sent++;
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const reply = await conn.receive(deadline - performance.now());
      if (reply === undefined) {
        result.lost++;
        lost.add(line);
        onLost?.(result.sent, line.length);
        break;
      }
      if (!equal(reply, line) && lost.take(reply)) continue;
      await writeAll(output, reply);
      break;
    }
  }
  return result;
}

/** The last few datagrams given up on, to tell a late reply from a new one. */
class RecentBytes {
  #items: Uint8Array[] = [];

  add(bytes: Uint8Array): void {
    if (this.#items.push(bytes) > 16) this.#items.shift();
  }

  /** Whether `bytes` is one of them; if so it is forgotten (answered late). */
  take(bytes: Uint8Array): boolean {
    const i = this.#items.findIndex((item) => equal(item, bytes));
    if (i >= 0) this.#items.splice(i, 1);
    return i >= 0;
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The lines of `input`, each with its `\n` (the last one may lack it), as
 * fresh arrays.
 *
 * @throws {RangeError} for a line longer than `maxBytes`
 */
async function* readLines(
  input: Reader,
  maxBytes: number,
): AsyncGenerator<Uint8Array> {
  let held = new Uint8Array(0);
  let lineNo = 1;
  const chunk = new Uint8Array(64 * 1024);
  for (let n = await input.read(chunk);; n = await input.read(chunk)) {
    if (n !== null) {
      const joined = new Uint8Array(held.length + n);
      joined.set(held);
      joined.set(chunk.subarray(0, n), held.length);
      held = joined;
    }
    let start = 0;
    for (let nl = held.indexOf(10); nl !== -1; nl = held.indexOf(10, start)) {
      yield checked(held.slice(start, nl + 1));
      start = nl + 1;
    }
    held = held.slice(start);
    if (n === null) break;
    if (held.length > maxBytes) checked(held);
  }
  if (held.length > 0) yield checked(held);

  function checked(line: Uint8Array): Uint8Array {
    if (line.length > maxBytes) {
      throw new RangeError(
        `line ${lineNo} is longer than ${maxBytes} bytes, the most one UDP datagram holds`,
      );
    }
    lineNo++;
    return line;
  }
}

/**
 * The terminal client over UDP: each typed line goes out as one datagram
 * (with `\n`), each reply is shown as `server say# …`, and a reply not back
 * within `timeoutMs` is reported through `onLost`. Ctrl+D waits for the
 * replies still due (at most `timeoutMs`); Ctrl+C ends at once.
 */
export async function udpInteractive(
  conn: UdpConn,
  options: {
    /** The prompt. @default {"> "} */
    prompt?: string;
    /** @default {1000} */
    timeoutMs?: number;
    /** Called with a line whose reply did not come back in time. */
    onLost?: (line: string) => void;
  } = {},
): Promise<"eof" | "interrupted"> {
  const {
    prompt = "> ",
    timeoutMs = UDP_CLIENT_DEFAULTS.timeoutMs,
    onLost,
  } = options;
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  type Due = {
    line: string;
    bytes: Uint8Array;
    timer?: ReturnType<typeof setTimeout>;
  };
  const due = new Set<Due>(); // sent, reply not back yet
  let drained: PromiseWithResolvers<void> | undefined; // Ctrl+D waits on it
  const settle = (item: Due) => {
    clearTimeout(item.timer);
    due.delete(item);
    if (due.size === 0) drained?.resolve();
  };
  let sending = Promise.resolve();
  // After Ctrl+D the prompt is gone, but replies still come and are shown.
  const terminal = new Prompt(prompt, (line) => {
    const item: Due = { line, bytes: encoder.encode(line + "\n") };
    // Due before it is sent, so that no reply can come before it is awaited.
    item.timer = setTimeout(() => {
      settle(item);
      onLost?.(line);
      terminal.redraw();
    }, timeoutMs);
    due.add(item);
    sending = sending.then(() => conn.send(item.bytes)).then(() => {});
  });

  const receiving = (async () => {
    for (;;) {
      const reply = (await conn.receive())!;
      for (const item of due) {
        if (equal(item.bytes, reply)) {
          settle(item);
          break;
        }
      }
      const text = decoder.decode(reply).replace(/\n$/, "");
      terminal.show(`server say# ${forTerminal(text)}`);
    }
  })();
  try {
    await terminal.closed;
    const end = terminal.interrupted ? "interrupted" : "eof";
    if (end === "eof") {
      await sending;
      if (due.size > 0) {
        drained = Promise.withResolvers();
        await drained.promise; // each is bounded by its timer
      }
    }
    return end;
  } finally {
    terminal.finish(); // Ctrl+C/Ctrl+D: what was typed stays, its line ended
    for (const item of [...due]) settle(item);
    conn.close(); // ends the pending receive
    await receiving.catch((err) => {
      if (!(err instanceof Deno.errors.Interrupted)) throw err;
    });
    await sending.catch(() => {});
  }
}
