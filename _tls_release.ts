/**
 * Releases the socket of a TLS connection the server closes, at once.
 *
 * In Deno 2.9.6 closing a `Deno.TlsConn` does not close its TCP socket:
 * rustls-tokio-stream's `Drop for TlsStream` spawns a task that first awaits
 * the handshake task (mid-handshake: until the peer finishes it or leaves),
 * then flushes what is left to send and the close_notify (until the peer
 * reads). That task holds the socket, so a peer that never reads or never
 * finishes its handshake keeps one of our descriptors for as long as it
 * likes. No Deno API reaches the socket under a `TlsConn`; `shutdown(2)` on
 * it makes both waits fail at once, the task ends and the socket is closed.
 *
 * {@linkcode tlsReleaser} finds the socket by its address pair among the
 * process's descriptors (each number of its descriptor table, as large as
 * `/proc/self/status` says, asked `getpeername` and `getsockname`) and shuts
 * it down, all through libc with Deno's FFI: Linux with `--allow-ffi` only.
 * (Listing `/proc/self/fd` costs the kernel 1 to 3 µs a descriptor, several
 * times more, and Deno allows it only with `--allow-all`.) Private to
 * `server.ts` and the modules that close TLS connections for it
 * (`_session.ts`, `_admission.ts`, `_tls_relay.ts`).
 *
 * @module
 */
import ipaddr from "ipaddr.js";

/** What tcpecho calls in libc. */
const LIBC = "libc.so.6";
const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
} as const;
type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

// Linux values, the same on every architecture Deno runs on (x86_64, aarch64).
const O_CLOEXEC = 0o2000000; // O_RDONLY is 0
const F_DUPFD_CLOEXEC = 1030;
const SHUT_RDWR = 2;
const AF_INET = 2;
const AF_INET6 = 10;
const RLIMIT_NOFILE = 7;
const STATUS = new TextEncoder().encode("/proc/self/status\0");
const DEV_NULL = new TextEncoder().encode("/dev/null\0");

/**
 * Descriptor numbers one slice of a walk looks at: well under a millisecond
 * (`getpeername` fails fast on what is no connected socket).
 */
const SLICE_FDS = 4096;
/**
 * The most of the event loop the releaser may take: after a slice of `t` ms
 * the next waits `t * (1 / MAX_SHARE - 1)` ms, so neither a flood of
 * releases nor a process with many descriptors can starve the connections
 * being served.
 */
const MAX_SHARE = 0.1;
/**
 * How long after the close a walk starts. A peer that reads gets its
 * close_notify meanwhile (Deno's drop task writes it at its first poll,
 * after the close has cancelled the connection's pending read or write, a
 * few turns of the event loop later), and its socket is closed by then: only
 * the held ones are left to shut down. 5 ms cut it for some clients of a
 * busy isolate; 20 ms never did in our runs.
 */
const GRACE_MS = 50;
/** Wait before retrying when no descriptor was free to work with (EMFILE). */
const RETRY_MS = 100;
/**
 * How long libc stays open after the last walk: opening it takes a
 * millisecond or more (Deno compiles a trampoline per symbol).
 */
const LIBC_LINGER_MS = 2000;
/** Walks a release is tried in before it is given up. */
const MAX_TRIES = 10;

/**
 * Shuts down the socket under a TLS connection the server closes, if it is
 * still open {@linkcode GRACE_MS} after the close: call it just before
 * `conn.close()`. Batched: one pass over the process's descriptors (a walk,
 * in slices) for all the connections due. Never throws.
 */
export interface ReleaseTls {
  (conn: Deno.Conn): void;
  /**
   * Resolves once nothing is queued (within about a second: a release that
   * cannot get a descriptor is given up after {@linkcode MAX_TRIES}), and
   * closes libc; the server awaits it on shutdown, so that no timer or
   * library outlives it. Never rejects.
   */
  settled(): Promise<void>;
  /** Counts since the releaser started, for tests and measurements. */
  readonly stats: ReleaseStats;
}

/** What a {@linkcode ReleaseTls} has done. */
export interface ReleaseStats {
  /** Sockets shut down. */
  shut: number;
  /** Connections whose socket was closed already when their walk ran. */
  gone: number;
  /** Connections given up (no descriptor free after {@linkcode MAX_TRIES}). */
  failed: number;
  /** Walks over the process's descriptors. */
  walks: number;
  /** Milliseconds of work, all slices of all walks. */
  ms: number;
}

let probed: { release?: ReleaseTls; reason?: string } | undefined;

/**
 * The isolate's releaser of TLS sockets, or `undefined` when it cannot work
 * here: not Linux, `--allow-ffi` not granted (queried, never prompted for),
 * or no usable libc. See {@linkcode tlsReleaseUnavailable} for why.
 */
export function tlsReleaser(): ReleaseTls | undefined {
  probed ??= probe();
  return probed.release;
}

/** Why {@linkcode tlsReleaser} returns `undefined`; `undefined` if it does not. */
export function tlsReleaseUnavailable(): string | undefined {
  probed ??= probe();
  return probed.reason;
}

function probe(): { release?: ReleaseTls; reason?: string } {
  if (Deno.build.os !== "linux") {
    return { reason: "releasing them at once needs Linux" };
  }
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return { reason: "run with --allow-ffi to release them at once" };
  }
  let spare: number;
  try {
    using lib = openLibc(); // it works: closed until there is work
    // One descriptor kept free for the walks: when the process has none
    // left (EMFILE), the held sockets are what must be released.
    spare = lib.symbols.open(DEV_NULL, O_CLOEXEC);
  } catch (err) {
    return {
      reason: `cannot use ${LIBC} to release them: ${(err as Error).message}`,
    };
  }
  const releaser = new Releaser(spare);
  const release = ((conn: Deno.Conn) => releaser.add(conn)) as ReleaseTls;
  release.settled = () => releaser.settled();
  Object.defineProperty(release, "stats", { value: releaser.stats });
  return { release };
}

function openLibc(): Lib {
  const lib = Deno.dlopen(LIBC, SYMBOLS);
  return Object.assign(lib, { [Symbol.dispose]: () => lib.close() });
}

/** A socket to shut down, by its address pair. */
interface Pending {
  /** When its grace ends ({@linkcode GRACE_MS} after the close). */
  due: number;
  /** Walks it was tried in, for want of a free descriptor. */
  tries: number;
}

/** A pass over the process's descriptors, a slice per event-loop turn. */
interface Walk {
  /** The next descriptor number to look at. */
  fd: number;
  /**
   * Where it stops: the size of the descriptor table when it began. The
   * sockets it looks for were open then, so their numbers are below.
   */
  end: number;
  /** The releases it looks for ({@linkcode pairKey}s), until found. */
  due: Set<string>;
  /** No descriptor was free for some of the work (EMFILE). */
  starved: boolean;
}

type Lib = Deno.DynamicLibrary<typeof SYMBOLS> & Disposable;

class Releaser {
  readonly stats: ReleaseStats = {
    shut: 0,
    gone: 0,
    failed: 0,
    walks: 0,
    ms: 0,
  };
  /** By {@linkcode pairKey}. */
  readonly #pending = new Map<string, Pending>();
  /** The peer ports of {@linkcode Releaser.#pending}: a cheap first filter. */
  readonly #peerPorts = new Set<number>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** Resolved when {@linkcode Releaser.#pending} empties. */
  #idle: PromiseWithResolvers<void> | undefined;
  /** When the next slice may start ({@linkcode MAX_SHARE}). */
  #notBefore = 0;
  /**
   * libc, open while there is work and {@linkcode LIBC_LINGER_MS} after;
   * closed by {@linkcode Releaser.settled} too (a library left open is a
   * leak to Deno's test sanitizer).
   */
  #lib: Lib | undefined;
  #linger: ReturnType<typeof setTimeout> | undefined;
  #walk: Walk | undefined;
  #spare: number;
  readonly #status = new Uint8Array(4096);
  readonly #addr = new Uint8Array(128); // a sockaddr_storage
  readonly #family = new Uint16Array(this.#addr.buffer, 0, 1); // host order
  readonly #addrLen = new Uint32Array(1);

  constructor(spare: number) {
    this.#spare = spare;
  }

  add(conn: Deno.Conn): void {
    try {
      const local = conn.localAddr, remote = conn.remoteAddr;
      if (local.transport !== "tcp" || remote.transport !== "tcp") return;
      const key = pairKey(local, remote);
      if (key === undefined || this.#pending.has(key)) return;
      this.#pending.set(key, { due: performance.now() + GRACE_MS, tries: 0 });
      this.#peerPorts.add(remote.port);
      this.#idle ??= Promise.withResolvers();
      this.#schedule(GRACE_MS);
    } catch {
      // never into the caller: its connection closes anyway, late at worst
    }
  }

  async settled(): Promise<void> {
    while (this.#idle !== undefined) await this.#idle.promise;
    this.#closeLib();
  }

  #closeLib(): void {
    clearTimeout(this.#linger);
    this.#linger = undefined;
    this.#lib?.close();
    this.#lib = undefined;
  }

  /** Runs {@linkcode Releaser.#step} in `delayMs`, or later (MAX_SHARE). */
  #schedule(delayMs: number): void {
    if (this.#timer !== undefined) return;
    const wait = Math.max(delayMs, this.#notBefore - performance.now());
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      try {
        this.#step();
      } catch {
        this.#drop(); // a bug here must not end the process: give up
      }
    }, Math.max(0, wait)); // ref'd: Server.close() awaits it
  }

  /**
   * Forgets every queued release (none, unless something went wrong) and
   * what a walk holds; libc closes a while later.
   */
  #drop(): void {
    this.stats.failed += this.#pending.size;
    this.#pending.clear();
    this.#peerPorts.clear();
    this.#walk = undefined;
    this.#idle?.resolve();
    this.#idle = undefined;
    clearTimeout(this.#linger);
    this.#linger = setTimeout(() => this.#closeLib(), LIBC_LINGER_MS);
    Deno.unrefTimer(this.#linger); // nothing to do at exit
  }

  /**
   * One slice of work: starts a walk for the releases due, looks at the next
   * {@linkcode SLICE_FDS} descriptor numbers and shuts down the sockets it
   * looks for; at the end of the walk, settles what it did not find.
   */
  #step(): void {
    const t0 = performance.now();
    clearTimeout(this.#linger);
    const lib = this.#lib ??= openLibc();
    const libc = lib.symbols;
    let walk = this.#walk;
    if (walk === undefined) {
      const due = new Set<string>();
      for (const [key, entry] of this.#pending) {
        if (entry.due <= t0) due.add(key);
      }
      if (due.size === 0) return this.#next();
      walk = this.#walk = {
        fd: 0,
        end: this.#tableSize(libc),
        due,
        starved: false,
      };
    }
    const stop = Math.min(walk.end, walk.fd + SLICE_FDS);
    for (; walk.fd < stop && walk.due.size > 0; walk.fd++) {
      const key = this.#keyOf(libc, walk.fd);
      if (key === undefined || !walk.due.has(key)) continue;
      const outcome = this.#shutdown(libc, walk.fd, key);
      if (outcome === "shut") {
        walk.due.delete(key);
        this.#pending.delete(key);
        this.stats.shut++;
      } else if (outcome === "starved") {
        walk.starved = true;
      }
    }
    if (walk.fd >= walk.end || walk.due.size === 0) {
      this.#walk = undefined;
      this.#settle(walk);
      if (this.#spare < 0) this.#spare = libc.open(DEV_NULL, O_CLOEXEC);
    }
    const ms = performance.now() - t0;
    this.stats.ms += ms;
    this.#notBefore = performance.now() + ms * (1 / MAX_SHARE - 1);
    this.#next();
  }

  /**
   * How many descriptor numbers the process's table holds (`FDSize` in
   * `/proc/self/status`: every open descriptor is below it). Out of
   * descriptors, when that file cannot be opened, the soft limit on them.
   */
  #tableSize(libc: Libc): number {
    const fd = libc.open(STATUS, O_CLOEXEC);
    if (fd >= 0) {
      try {
        const buf = this.#status;
        const n = Number(libc.read(fd, buf, BigInt(buf.length)));
        const text = new TextDecoder().decode(buf.subarray(0, Math.max(0, n)));
        const size = Number(text.match(/^FDSize:\s*(\d+)$/m)?.[1]);
        if (size > 0) return size;
      } finally {
        libc.close(fd);
      }
    }
    const limits = new BigUint64Array(2); // struct rlimit: cur, max
    if (libc.getrlimit(RLIMIT_NOFILE, limits) !== 0) return 1024;
    return Number(limits[0] < 1n << 20n ? limits[0] : 1n << 20n);
  }

  /**
   * After a walk: what it did not find is closed already; what it could not
   * look at for want of a descriptor is tried again, a few times.
   */
  #settle(walk: Walk): void {
    this.stats.walks++;
    for (const key of walk.due) {
      const entry = this.#pending.get(key)!;
      if (walk.starved && ++entry.tries < MAX_TRIES) {
        entry.due = performance.now() + RETRY_MS;
        continue;
      }
      if (walk.starved) this.stats.failed++;
      else this.stats.gone++;
      this.#pending.delete(key);
    }
  }

  /** Continues the walk, waits for the next release due, or goes idle. */
  #next(): void {
    if (this.#walk !== undefined) return this.#schedule(0);
    if (this.#pending.size === 0) return this.#drop();
    let due = Infinity;
    for (const entry of this.#pending.values()) due = Math.min(due, entry.due);
    this.#schedule(due - performance.now());
  }

  /**
   * Shuts down `fd` if it is the socket `key` names. The check and the
   * shutdown are made on a duplicate: whatever `fd` has become meanwhile
   * (closed, reused by another connection), the duplicate pins one socket,
   * and only the one with this address pair is shut down.
   */
  #shutdown(
    libc: Libc,
    fd: number,
    key: string,
  ): "shut" | "other" | "starved" {
    let dup = libc.fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0 && this.#useSpare(libc)) {
      dup = libc.fcntl(fd, F_DUPFD_CLOEXEC, 0);
    }
    if (dup < 0) return "starved"; // EMFILE, or fd was closed meanwhile
    try {
      if (this.#keyOf(libc, dup) !== key) return "other";
      libc.shutdown(dup, SHUT_RDWR);
      return "shut";
    } finally {
      libc.close(dup);
    }
  }

  /** Gives up the spare descriptor so that a walk can use the slot. */
  #useSpare(libc: Libc): boolean {
    if (this.#spare < 0) return false;
    libc.close(this.#spare);
    this.#spare = -1;
    return true;
  }

  /**
   * The {@linkcode pairKey} of socket `fd`, if it is a connected TCP socket
   * whose peer port some queued release names.
   */
  #keyOf(libc: Libc, fd: number): string | undefined {
    const addr = this.#addr;
    this.#addrLen[0] = addr.length;
    if (libc.getpeername(fd, addr, this.#addrLen) !== 0) return undefined;
    if (!this.#peerPorts.has((addr[2] << 8) | addr[3])) return undefined;
    const peer = sockaddrKey(this.#family[0], addr);
    if (peer === undefined) return undefined;
    this.#addrLen[0] = addr.length;
    if (libc.getsockname(fd, addr, this.#addrLen) !== 0) return undefined;
    const local = sockaddrKey(this.#family[0], addr);
    return local === undefined ? undefined : local + peer;
  }
}

/** The first 12 bytes of an IPv4-mapped IPv6 address, as characters. */
const MAPPED = "\0".repeat(10) + "\xff\xff";

/**
 * An endpoint as 18 characters, one a byte: the port, then its 16-byte IPv6
 * address, IPv4 mapped (`::ffff:a.b.c.d`). An IPv4 socket and the IPv4-mapped
 * view of the same client on a dual-stack listener compare equal, as they
 * should (a client reaches one or the other). IPv6 scope ids are ignored
 * (Deno's addresses carry none).
 */
function endpointKey(port: number, bytes: ArrayLike<number>): string {
  let key = String.fromCharCode(port >> 8, port & 0xff);
  for (let i = 0; i < 16; i++) key += String.fromCharCode(bytes[i]);
  return key;
}

/** {@linkcode endpointKey} of a `sockaddr_in` or `sockaddr_in6`. */
function sockaddrKey(family: number, addr: Uint8Array): string | undefined {
  if (family === AF_INET) {
    return String.fromCharCode(addr[2], addr[3]) + MAPPED +
      String.fromCharCode(addr[4], addr[5], addr[6], addr[7]);
  }
  if (family === AF_INET6) {
    return endpointKey((addr[2] << 8) | addr[3], addr.subarray(8, 24));
  }
  return undefined;
}

/**
 * How walks name a socket: local then peer {@linkcode endpointKey};
 * `undefined` for an address that is no IP address. Exported for tests.
 */
export function pairKey(
  local: Deno.NetAddr,
  remote: Deno.NetAddr,
): string | undefined {
  const l = hostBytes(local.hostname), r = hostBytes(remote.hostname);
  if (l === undefined || r === undefined) return undefined;
  return endpointKey(local.port, l) + endpointKey(remote.port, r);
}

function hostBytes(hostname: string): number[] | undefined {
  try {
    const addr = ipaddr.parse(hostname);
    return addr.kind() === "ipv4"
      ? (addr as ipaddr.IPv4).toIPv4MappedAddress().toByteArray()
      : addr.toByteArray();
  } catch {
    return undefined;
  }
}

/**
 * {@linkcode pairKey} of the socket behind descriptor `fd`, as a walk reads
 * it; `undefined` if `fd` is no connected TCP socket. For tests: it needs
 * `--allow-ffi`.
 */
export function socketPairKey(fd: number): string | undefined {
  using lib = openLibc();
  const addr = new Uint8Array(128);
  const family = new Uint16Array(addr.buffer, 0, 1);
  const len = new Uint32Array([addr.length]);
  if (lib.symbols.getsockname(fd, addr, len) !== 0) return undefined;
  const local = sockaddrKey(family[0], addr);
  len[0] = addr.length;
  if (lib.symbols.getpeername(fd, addr, len) !== 0) return undefined;
  const peer = sockaddrKey(family[0], addr);
  return local && peer && local + peer;
}
