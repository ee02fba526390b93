/**
 * The echo loops that serve a {@linkcode Session}: raw (RFC 862), line and
 * discard (RFC 863), over an adaptive `ReadBuffer`, and the line framing and
 * chunk reader that `_faults.ts` wraps. Private to `server.ts` and
 * `_faults.ts`.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { ReadBuffer } from "./_read_buffer.ts";
import { LimitError, type Send, type Session } from "./_session.ts";
import { escapePreview, writeAll } from "./io.ts";

/** How much of a message a log line shows. */
const PREVIEW_CHARS = 80;

/** Raw mode (RFC 862): every byte back as it arrives. */
export async function echoRaw(session: Session): Promise<void> {
  await readChunks(session, "echo");
  await session.conn.closeWrite(); // the client sent EOF and has everything back
}

/**
 * Line mode: frame by `\n` from a buffer. Complete lines go back together in
 * one write (byte-identical to answering each); the partial tail waits for its
 * `\n` or EOF. A line over `maxLineBytes` is not echoed and ends the connection.
 */
export async function echoLines(
  session: Session,
  maxLineBytes: number,
): Promise<void> {
  const { conn } = session;
  await frameLines(session, maxLineBytes, async (bytes) => {
    await writeAll(conn, bytes);
    session.sent(bytes.length);
  });
  await conn.closeWrite();
}

/**
 * The line framing of {@linkcode echoLines}, up to the client's EOF: each
 * batch of whole lines (and the tail at EOF) goes to `send`.
 */
export async function frameLines(
  session: Session,
  maxLineBytes: number,
  send: Send,
): Promise<void> {
  const { conn } = session;
  const debug = session.debugging;
  const tooLong = () =>
    new LimitError(`line longer than ${maxLineBytes} bytes (max-line)`);
  const rb = new ReadBuffer();
  let end = 0; // bytes held in rb.bytes; they hold no "\n"
  for (;;) {
    if (end === rb.bytes.length) rb.grow(end);
    const n = await conn.read(end === 0 ? rb.bytes : rb.bytes.subarray(end));
    if (n === null) break;
    const buf = rb.bytes;
    session.received(n);
    // Lines end in the new bytes only; a "\n" in buf[0..end) was handled.
    let lineStart = 0;
    let nl = buf.indexOf(10, end);
    const filled = end + n;
    while (nl !== -1 && nl < filled) {
      if (nl - lineStart > maxLineBytes) break;
      if (debug) logLine(session.log, buf.subarray(lineStart, nl + 1));
      lineStart = nl + 1;
      nl = buf.indexOf(10, lineStart);
    }
    if (nl >= filled) nl = -1;
    if (lineStart > 0) await send(buf.subarray(0, lineStart));
    if (nl !== -1 || filled - lineStart > maxLineBytes) throw tooLong();
    // Keep the unfinished line at the start of the buffer.
    buf.copyWithin(0, lineStart, filled);
    end = filled - lineStart;
    if (debug && end > 0) {
      session.log.debug("[{peer}] holding {end} bytes of an unfinished line", {
        end,
      });
    }
    if (end === 0) rb.adapt(n);
  }
  if (end > 0) { // bytes after the last "\n" at EOF are echoed too
    const tail = rb.bytes.subarray(0, end);
    if (debug) logLine(session.log, tail);
    await send(tail);
  }
}

/**
 * Discard mode (RFC 863): read and drop everything, answer nothing; at the
 * client's EOF, close.
 */
export async function echoDiscard(session: Session): Promise<void> {
  const { debugging, log } = session;
  const msg = "[{peer}] discarded {n} bytes";
  await readChunks(session, (chunk) => {
    if (debugging) log.debug(msg, { n: chunk.length });
  });
  await session.conn.closeWrite();
}

/**
 * Reads the client up to EOF. Each chunk read, valid until `take` returns,
 * goes to `take`; `"echo"` sends it straight back to the client (raw mode).
 * The echo is written here, not by a `take`: the callback's extra await per
 * message cost 3.6% more CPU a message at c=50 (5.74 vs 5.54 core-µs, five
 * rounds).
 */
export async function readChunks(
  session: Session,
  take: ((chunk: Uint8Array) => Promise<void> | void) | "echo",
): Promise<void> {
  const { conn } = session;
  const debug = session.debugging;
  const rb = new ReadBuffer();
  for (
    let n = await conn.read(rb.bytes);
    n !== null;
    n = await conn.read(rb.bytes)
  ) {
    session.received(n);
    const buf = rb.bytes;
    const chunk = n === buf.length ? buf : buf.subarray(0, n);
    if (take !== "echo") {
      const taking = take(chunk); // discard's take is synchronous: no await
      if (taking !== undefined) await taking;
    } else {
      // One write takes it all almost always; writeAll only for the rest.
      const written = await conn.write(chunk);
      if (written < n) await writeAll(conn, chunk.subarray(written));
      session.sent(n);
      if (debug) session.log.debug("[{peer}] echoed {n} bytes", { n });
    }
    rb.adapt(n);
  }
}

function logLine(log: Logger, line: Uint8Array): void {
  const text = escapePreview(line, PREVIEW_CHARS);
  log.debug("[{peer}] req: {text}, resp: {text}", { text });
}
