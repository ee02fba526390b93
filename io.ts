/**
 * Byte plumbing shared by the server, the client and the load generator, and
 * {@linkcode withDefaults} for their options.
 *
 * @module
 */

/** Anything with `write()` (a `Deno.Conn`, `Deno.stdout`). */
export interface Writer {
  /** Writes some of `bytes` (maybe not all) and resolves with how many. */
  write(bytes: Uint8Array): Promise<number>;
}

/** Anything with `read()`; `null` is EOF. */
export interface Reader {
  /** Reads into `buf` and resolves with the byte count, or `null` at EOF. */
  read(buf: Uint8Array): Promise<number | null>;
}

/**
 * Writes all of `bytes`: one `write()` may take only part of them.
 * Resolves once the last byte is handed to the OS, which is what gives
 * backpressure: the caller reads again only after this.
 */
export async function writeAll(
  writer: Writer,
  bytes: Uint8Array,
): Promise<void> {
  let off = await writer.write(bytes);
  while (off < bytes.length) off += await writer.write(bytes.subarray(off));
}

/** Reads until EOF and returns everything read. */
export async function readAll(reader: Reader): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const buf = new Uint8Array(64 * 1024);
  for (let n = await reader.read(buf); n !== null; n = await reader.read(buf)) {
    chunks.push(buf.slice(0, n));
    total += n;
  }
  const all = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.length;
  }
  return all;
}

/**
 * Errors that end one connection and concern nobody else: the peer reset or
 * went away, or we closed the socket under a pending read or write.
 */
export function isDisconnect(err: unknown): boolean {
  return err instanceof Deno.errors.ConnectionReset ||
    err instanceof Deno.errors.ConnectionAborted ||
    err instanceof Deno.errors.BrokenPipe ||
    err instanceof Deno.errors.NotConnected ||
    err instanceof Deno.errors.UnexpectedEof ||
    err instanceof Deno.errors.Interrupted ||
    err instanceof Deno.errors.BadResource;
}

/** OS error codes Deno reports as a plain `Error`, that a peer can cause. */
const PEER_ERROR_CODES = new Set([
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EHOSTDOWN",
  "ENETDOWN",
]);

/**
 * Errors a peer can cause on its own connection, which end that connection
 * and concern nobody else: {@linkcode isDisconnect}, TLS records that are
 * not what they should be (rustls's `InvalidData`: garbage, a tampered
 * record, a fatal alert), a peer that stopped acknowledging (`TimedOut`), or
 * one that became unreachable.
 */
export function isPeerError(err: unknown): boolean {
  if (
    isDisconnect(err) ||
    err instanceof Deno.errors.InvalidData ||
    err instanceof Deno.errors.TimedOut ||
    err instanceof Deno.errors.NetworkUnreachable
  ) {
    return true;
  }
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && PEER_ERROR_CODES.has(code);
}

/** `HOST:PORT` (`[::1]:PORT` for IPv6) or `unix:PATH`, as logs and errors show it. */
export function formatAddr(addr: Deno.Addr): string {
  if (!("hostname" in addr)) {
    return "path" in addr ? `unix:${addr.path}` : addr.transport;
  }
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

// Non-fatal: invalid UTF-8 shows as U+FFFD. A leading BOM is kept, to be shown.
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });

/**
 * What a terminal may act on or a reader may not see: controls (C0 such as
 * `\n` and ESC, DEL, C1 such as CSI), every format character (zero-width and
 * bidi marks, bidi embeddings, overrides and isolates, the BOM, tag
 * characters), the line and paragraph separators and lone surrogates.
 */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Cs}\u2028\u2029]/gu;
const SHORT: Readonly<Record<string, string>> = {
  "\b": "\\b",
  "\t": "\\t",
  "\n": "\\n",
  "\f": "\\f",
  "\r": "\\r",
};

/**
 * `text` with every character a terminal may act on or a reader may not see
 * escaped as JSON does (`\n`, `\t`, `\u001b`, `\u202e`…), so it cannot forge
 * a line, move the cursor, or hide or reorder what follows it.
 */
export function escapeControls(text: string): string {
  return text.replace(UNSAFE, (c) => {
    if (SHORT[c] !== undefined) return SHORT[c];
    let escaped = ""; // an astral character as its two surrogates, as JSON does
    for (let i = 0; i < c.length; i++) {
      escaped += `\\u${c.charCodeAt(i).toString(16).padStart(4, "0")}`;
    }
    return escaped;
  });
}

/**
 * `text` in double quotes, safe to show in one line of a log or an error
 * message: quotes and backslashes escaped, then {@linkcode escapeControls}.
 * The result is a JSON string.
 */
export function quote(text: string): string {
  return `"${escapeControls(text.replace(/["\\]/g, "\\$&"))}"`;
}

/**
 * Message bytes made safe to show in one log line: decoded leniently, escaped
 * and quoted by {@linkcode quote}, and cut to `maxChars` (then followed by
 * the full byte count). A client cannot forge or flood log lines.
 */
export function escapePreview(bytes: Uint8Array, maxChars: number): string {
  let text = decoder.decode(bytes.subarray(0, maxChars * 4));
  const cut = text.length > maxChars || bytes.length > maxChars * 4;
  if (cut) text = text.slice(0, maxChars);
  const quoted = quote(text);
  return cut ? `${quoted}… (${bytes.length} bytes)` : quoted;
}

/**
 * Resolves after `ms`, or as soon as `signal` aborts; its timer and listener
 * are always cleaned up, so nothing is left behind either way.
 */
export function delay(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * `options` over `defaults`: each key of `defaults` that `options` leaves out
 * or sets to `undefined` takes its default, as a destructuring default would;
 * the other keys of `options` pass through. One table of defaults (e.g.
 * `SERVE_DEFAULTS`) is then the only place a default is written, and a key
 * the options do not have is a type error. Options are plain data: their own
 * enumerable properties are read (not inherited ones, such as a class's getters).
 *
 * @example
 * ```ts ignore
 * const { port, mode } = withDefaults(options, SERVE_DEFAULTS);
 * ```
 */
export function withDefaults<
  O extends object,
  D extends {
    readonly [K in keyof D]: K extends keyof O ? Exclude<O[K], undefined>
      : never;
  },
>(
  options: O,
  defaults: D,
): O & { [K in keyof D & keyof O]-?: Exclude<O[K], undefined> } {
  const out = { ...options } as Record<string, unknown>;
  for (const [key, value] of Object.entries(defaults)) {
    if (out[key] === undefined) out[key] = value;
  }
  return out as O & { [K in keyof D & keyof O]-?: Exclude<O[K], undefined> };
}

/** Options for {@linkcode LineSplitter} and {@linkcode readLines}. */
export interface LineOptions {
  /**
   * Take a `\r` just before a `\n` as part of the line ending (`\r\n`), so it
   * is not in the line. Off, a line keeps its `\r` for the caller to show.
   * @default {false}
   */
  crlf?: boolean;
}

/**
 * Splits bytes into lines of text, fed a chunk at a time as reads deliver
 * them: decoded with one `TextDecoder` in streaming mode, so a character or a
 * `\r\n` split across chunks is whole. For display and logs only: decoding
 * is lenient (invalid UTF-8 becomes U+FFFD). Empty lines are lines too.
 *
 * @example
 * ```ts ignore
 * const splitter = new LineSplitter();
 * for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
 *   for (const line of splitter.push(buf.subarray(0, n))) show(line);
 * }
 * const last = splitter.end();
 * if (last !== undefined) show(last);
 * ```
 */
export class LineSplitter {
  #decoder = new TextDecoder();
  #pending = "";
  #crlf: boolean;

  /** A splitter; see {@linkcode LineOptions}. */
  constructor(options: LineOptions = {}) {
    const { crlf = false } = options;
    this.#crlf = crlf;
  }

  /** The lines `chunk` completes, in order, without their line ending. */
  push(chunk: Uint8Array): string[] {
    const text = this.#pending +
      this.#decoder.decode(chunk, { stream: true });
    const lines = text.split("\n");
    this.#pending = lines.pop()!;
    if (this.#crlf) {
      for (let i = 0; i < lines.length; i++) {
        if (lines[i].endsWith("\r")) lines[i] = lines[i].slice(0, -1);
      }
    }
    return lines;
  }

  /**
   * Ends the input: the last line when it had no `\n`, else `undefined`. The
   * splitter is empty again afterwards.
   */
  end(): string | undefined {
    const last = this.#pending + this.#decoder.decode();
    this.#pending = "";
    return last === "" ? undefined : last;
  }
}

/**
 * The lines of `stream` (a child's stderr, say), as {@linkcode LineSplitter}
 * cuts them, to the end of the stream.
 */
export async function* readLines(
  stream: ReadableStream<Uint8Array>,
  options: LineOptions = {},
): AsyncGenerator<string, void, undefined> {
  const splitter = new LineSplitter(options);
  for await (const chunk of stream) yield* splitter.push(chunk);
  const last = splitter.end();
  if (last !== undefined) yield last;
}
