/**
 * Admission limits (`maxConns`, `maxConnsPerIp`) as owned permits: a
 * connection's task holds its permit with `using`, so the slot is given back
 * however the task ends. {@linkcode LocalConnLimits} counts in one isolate;
 * {@linkcode SharedConnLimits} counts in shared memory, so that the worker
 * isolates of one server share one count. Private to `server.ts` and the
 * server's worker pool.
 *
 * @module
 */

/**
 * Counts open connections against the server's limits. {@linkcode LocalConnLimits}
 * counts in this isolate; {@linkcode SharedConnLimits} counts for several
 * worker isolates at once.
 */
export interface ConnLimits {
  /**
   * Takes a slot for a connection from `ip`.
   *
   * @returns a permit to dispose when the connection ends, or `undefined`
   *   when a limit is reached
   */
  acquire(ip: string): Disposable | undefined;
  /**
   * Why {@linkcode ConnLimits.acquire} refuses `ip` now (logs and events show
   * it after the peer tag, which names the address).
   */
  refusal(ip: string): string;
}

/** {@linkcode ConnLimits} counted in this isolate. */
export class LocalConnLimits implements ConnLimits {
  readonly #maxConns: number;
  readonly #maxConnsPerIp: number;
  #open = 0;
  /** Open connections per address; kept only when `maxConnsPerIp` is set. */
  readonly #perIp = new Map<string, number>();

  /**
   * Limits with nothing open yet.
   *
   * @param maxConns connections at once
   * @param maxConnsPerIp connections at once from one address; `0` is no limit
   */
  constructor(maxConns: number, maxConnsPerIp: number) {
    this.#maxConns = maxConns;
    this.#maxConnsPerIp = maxConnsPerIp;
  }

  acquire(ip: string): Disposable | undefined {
    if (this.#open >= this.#maxConns) return undefined;
    const perIp = this.#maxConnsPerIp > 0;
    if (perIp) {
      const fromIp = (this.#perIp.get(ip) ?? 0) + 1;
      if (fromIp > this.#maxConnsPerIp) return undefined;
      this.#perIp.set(ip, fromIp);
    }
    this.#open++;
    let held = true;
    return {
      [Symbol.dispose]: () => {
        if (!held) return; // a permit is given back once
        held = false;
        this.#open--;
        if (!perIp) return;
        const left = this.#perIp.get(ip)! - 1;
        if (left === 0) this.#perIp.delete(ip);
        else this.#perIp.set(ip, left);
      },
    };
  }

  refusal(_ip: string): string {
    return this.#open >= this.#maxConns
      ? maxConnsReason(this.#maxConns)
      : maxConnsPerIpReason(this.#maxConnsPerIp);
  }
}

function maxConnsReason(maxConns: number): string {
  return `too many connections (max-conns ${maxConns})`;
}

/** Without the address: logs and events show it in the peer tag before it. */
function maxConnsPerIpReason(maxConnsPerIp: number): string {
  return `too many connections (max-conns-per-ip ${maxConnsPerIp})`;
}

// ---- shared memory ----------------------------------------------------------
//
// One Int32Array over a SharedArrayBuffer: a header, then (with a per-address
// limit) an open-addressing table with linear probing. The open count alone
// is a compare-and-swap loop; with a per-address limit, the count and the
// table change together under one lock (a futex-style mutex: a few array
// reads per connection, never per message). Entries are removed by backward
// shift, so no tombstones pile up: the table only ever holds the addresses
// with a connection open now.

/** Header words. */
const OPEN = 0; // connections open now, in every isolate
const LOCK = 1; // 0 free, 1 held, 2 held with waiters
const HEADER_WORDS = 2;
/** The longest address key, in UTF-8 bytes (IPv6 text is at most 45). */
const KEY_BYTES = 64;
/** Entry words: count (0 = empty slot), key length in bytes, key bytes. */
const ENTRY_WORDS = 2 + KEY_BYTES / 4;
/** The most table entries: bounds the shared memory at ~18 MiB. */
const MAX_ENTRIES = 2 ** 18;

/**
 * The plain data behind a {@linkcode SharedConnLimits}: structured-cloneable,
 * so `postMessage` hands the same memory to every worker isolate.
 */
export interface SharedLimitsData {
  /** Connections at once, over all isolates. */
  maxConns: number;
  /** Connections at once from one address; `0` is no limit. */
  maxConnsPerIp: number;
  /** The counters and, with `maxConnsPerIp`, the address table. */
  buffer: SharedArrayBuffer;
}

/**
 * {@linkcode ConnLimits} over shared memory: every isolate that builds one
 * from the same {@linkcode SharedLimitsData} counts against the same limits,
 * and a permit disposed in any of them gives its slot back to all.
 */
export class SharedConnLimits implements ConnLimits {
  readonly #maxConns: number;
  readonly #maxConnsPerIp: number;
  readonly #words: Int32Array;
  /** Table slots (a power of two); 0 without a per-address limit. */
  readonly #capacity: number;
  /** Why the last refused acquire of this isolate was refused. */
  #lastRefusal = "";

  /** Uses the counters in `data` (see {@linkcode SharedConnLimits.create}). */
  constructor(data: SharedLimitsData) {
    this.#maxConns = data.maxConns;
    this.#maxConnsPerIp = data.maxConnsPerIp;
    this.#words = new Int32Array(data.buffer);
    this.#capacity = (this.#words.length - HEADER_WORDS) / ENTRY_WORDS;
  }

  /**
   * New counters, nothing open: send the result to each worker and build a
   * {@linkcode SharedConnLimits} from it there.
   *
   * @param maxConns connections at once (`Infinity`: no limit)
   * @param maxConnsPerIp connections at once from one address; `0` is no limit
   * @param addresses the most addresses with a connection open at once, which
   *   sizes the table: the server's `maxConns` when this instance counts by
   *   address alone (its `maxConns` then `Infinity`)
   */
  static create(
    maxConns: number,
    maxConnsPerIp: number,
    addresses: number = maxConns,
  ): SharedLimitsData {
    // Half full at most when every open connection comes from its own address.
    const entries = maxConnsPerIp > 0
      ? Math.min(MAX_ENTRIES, 2 ** Math.ceil(Math.log2(2 * addresses)))
      : 0;
    const buffer = new SharedArrayBuffer(
      (HEADER_WORDS + entries * ENTRY_WORDS) * 4,
    );
    return { maxConns, maxConnsPerIp, buffer };
  }

  /** Connections open now, over all isolates. */
  get open(): number {
    return Atomics.load(this.#words, OPEN);
  }

  /** Connections open now from `ip`, over all isolates. */
  openFrom(ip: string): number {
    if (this.#capacity === 0) return 0;
    const key = encodeKey(ip);
    this.#lock();
    try {
      const slot = this.#find(key);
      return slot < 0 ? 0 : this.#words[this.#entry(slot)];
    } finally {
      this.#unlock();
    }
  }

  acquire(ip: string): Disposable | undefined {
    if (this.#capacity === 0) {
      if (!this.#takeOpen()) {
        return this.#refuse(maxConnsReason(this.#maxConns));
      }
      return this.#permit(() => Atomics.sub(this.#words, OPEN, 1));
    }
    const key = encodeKey(ip);
    const refusal = this.#takeBoth(key);
    if (refusal !== undefined) return this.#refuse(refusal);
    return this.#permit(() => this.#giveBoth(key));
  }

  refusal(_ip: string): string {
    return this.#lastRefusal;
  }

  #refuse(reason: string): undefined {
    this.#lastRefusal = reason;
    return undefined;
  }

  /** A permit that calls `release` once, on its first dispose. */
  #permit(release: () => void): Disposable {
    let held = true;
    return {
      [Symbol.dispose]() {
        if (!held) return;
        held = false;
        release();
      },
    };
  }

  /** One more open connection, unless that passes `maxConns`. */
  #takeOpen(): boolean {
    const words = this.#words;
    for (let open = Atomics.load(words, OPEN); open < this.#maxConns;) {
      const seen = Atomics.compareExchange(words, OPEN, open, open + 1);
      if (seen === open) return true;
      open = seen;
    }
    return false;
  }

  /** Counts one more connection from `key` and in all; or says which limit refuses. */
  #takeBoth(key: Key): string | undefined {
    const words = this.#words;
    this.#lock();
    try {
      if (words[OPEN] >= this.#maxConns) {
        return maxConnsReason(this.#maxConns);
      }
      let slot = this.#find(key);
      if (slot < 0) {
        slot = -slot - 1;
        if (slot >= this.#capacity) {
          return `too many client addresses at once (${this.#capacity})`;
        }
        this.#store(slot, key);
      }
      const at = this.#entry(slot);
      if (words[at] >= this.#maxConnsPerIp) {
        return maxConnsPerIpReason(this.#maxConnsPerIp);
      }
      words[at]++;
      words[OPEN]++;
      return undefined;
    } finally {
      this.#unlock();
    }
  }

  /** Gives back what {@linkcode SharedConnLimits.#takeBoth} took for `key`. */
  #giveBoth(key: Key): void {
    const words = this.#words;
    this.#lock();
    try {
      const slot = this.#find(key);
      if (slot < 0) throw new Error("released a permit that is not held");
      words[OPEN]--;
      if (--words[this.#entry(slot)] === 0) this.#remove(slot);
    } finally {
      this.#unlock();
    }
  }

  /** Word index of slot `slot`'s entry. */
  #entry(slot: number): number {
    return HEADER_WORDS + slot * ENTRY_WORDS;
  }

  /**
   * The slot holding `key`; if none, `-(free slot) - 1` for the first empty
   * slot of its probe, or `-capacity - 1` when the table is full. Lock held.
   */
  #find(key: Key): number {
    const words = this.#words;
    const mask = this.#capacity - 1;
    for (let i = 0, slot = key.hash & mask; i < this.#capacity; i++) {
      const at = this.#entry(slot);
      if (words[at] === 0) return -slot - 1;
      if (sameKey(words, at, key)) return slot;
      slot = (slot + 1) & mask;
    }
    return -this.#capacity - 1;
  }

  /** Writes `key` with a count of 0 into the empty slot `slot`. Lock held. */
  #store(slot: number, key: Key): void {
    const at = this.#entry(slot);
    this.#words[at + 1] = key.bytes;
    this.#words.set(key.words, at + 2);
  }

  /**
   * Empties `slot` and shifts back the entries after it that probed past it
   * (Knuth's algorithm R), so every key stays reachable. Lock held.
   */
  #remove(slot: number): void {
    const words = this.#words;
    const mask = this.#capacity - 1;
    let hole = slot;
    for (let next = (hole + 1) & mask;; next = (next + 1) & mask) {
      const at = this.#entry(next);
      if (words[at] === 0) break;
      const home = hashWords(words, at + 2, words[at + 1]) & mask;
      // Move it into the hole unless its home lies cyclically in (hole, next].
      const stays = hole <= next
        ? hole < home && home <= next
        : hole < home || home <= next;
      if (stays) continue;
      words.copyWithin(this.#entry(hole), at, at + ENTRY_WORDS);
      hole = next;
    }
    words.fill(0, this.#entry(hole), this.#entry(hole) + ENTRY_WORDS);
  }

  /** Takes the lock (Drepper's "Futexes are tricky", mutex 2). */
  #lock(): void {
    const words = this.#words;
    let state = Atomics.compareExchange(words, LOCK, 0, 1);
    if (state === 0) return;
    if (state !== 2) state = Atomics.exchange(words, LOCK, 2);
    while (state !== 0) {
      Atomics.wait(words, LOCK, 2);
      state = Atomics.exchange(words, LOCK, 2);
    }
  }

  #unlock(): void {
    if (Atomics.sub(this.#words, LOCK, 1) !== 1) {
      Atomics.store(this.#words, LOCK, 0);
      Atomics.notify(this.#words, LOCK, 1);
    }
  }
}

/** An address as the table stores it: its UTF-8 bytes in words, and their hash. */
interface Key {
  bytes: number;
  words: Int32Array;
  hash: number;
}

const encoder = new TextEncoder();

/** @throws {RangeError} for an address longer than {@linkcode KEY_BYTES} */
function encodeKey(ip: string): Key {
  const padded = new Uint8Array(KEY_BYTES);
  const { read, written } = encoder.encodeInto(ip, padded);
  if (read < ip.length) {
    throw new RangeError(`client address too long for the limits table: ${ip}`);
  }
  const words = new Int32Array(padded.buffer, 0, Math.ceil(written / 4));
  return { bytes: written, words, hash: hashWords(words, 0, written) };
}

/** FNV-1a over the key's words (`bytes` long, zero-padded) from `start`. */
function hashWords(words: Int32Array, start: number, bytes: number): number {
  let hash = 0x811c9dc5 ^ bytes;
  for (let i = start, end = start + Math.ceil(bytes / 4); i < end; i++) {
    hash = Math.imul(hash ^ words[i], 0x01000193);
  }
  return hash >>> 0;
}

function sameKey(words: Int32Array, at: number, key: Key): boolean {
  if (words[at + 1] !== key.bytes) return false;
  for (let i = 0; i < key.words.length; i++) {
    if (words[at + 2 + i] !== key.words[i]) return false;
  }
  return true;
}
