/**
 * The terminal of the interactive clients (`interactive()` in `client.ts`,
 * `udpInteractive()` in `_udp_client.ts`): readline with a prompt and
 * history, and lines printed above the prompt.
 *
 * @module
 */
import process from "node:process";
import { createInterface, type Interface } from "node:readline";

/** A prompt on the terminal that reads lines until Ctrl+D or Ctrl+C. */
export class Prompt implements Disposable {
  /** Readline is open: a line shown redraws the prompt after it. */
  reading = true;
  /** Ctrl+C ended it. */
  interrupted = false;
  /** Resolves once readline has closed: Ctrl+D, Ctrl+C or {@linkcode close}. */
  readonly closed: Promise<void>;
  readonly #rl: Interface;
  /** The cursor is at the start of a line, not after the prompt. */
  #atLineStart = false;

  /** Shows `prompt`; each line typed goes to `onLine`, then the prompt again. */
  constructor(prompt: string, onLine: (line: string) => void) {
    const rl = createInterface({
      input: process.stdin,
      output: process.stdout,
      prompt,
      historySize: 1000,
      terminal: true,
    });
    const closed = Promise.withResolvers<void>();
    rl.on("line", (line: string) => {
      onLine(line);
      rl.prompt();
    });
    rl.on("SIGINT", () => {
      this.interrupted = true;
      rl.close();
    });
    rl.on("close", () => {
      this.reading = false;
      closed.resolve();
    });
    rl.prompt();
    this.#rl = rl;
    this.closed = closed.promise;
  }

  /** Prints `text` on a line of its own: clears the prompt line, prints, redraws. */
  show(text: string): void {
    process.stdout.write(`\r\x1b[K${text}\n`);
    this.redraw();
  }

  /**
   * After a whole line printed over the prompt's (by {@linkcode show}, or
   * by the caller on stderr): draws the prompt and what was typed again,
   * while readline is open.
   */
  redraw(): void {
    if (this.reading) this.#rl.prompt(true);
    this.#atLineStart = !this.reading;
  }

  /** Closes readline; again does nothing. */
  close(): void {
    this.#rl.close();
  }

  /**
   * Closes readline and leaves the cursor at the start of a line, so the
   * shell's prompt starts on its own: what was typed stays and its line is
   * ended (Ctrl+C, Ctrl+D); with `clear`, the prompt's line is wiped
   * instead, for a message that follows.
   */
  finish(clear = false): void {
    this.close();
    if (clear) process.stdout.write("\r\x1b[K");
    else if (!this.#atLineStart) process.stdout.write("\n");
    this.#atLineStart = true;
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
