/**
 * A server under soak (private to `tools/soak.ts`): a `tcpecho server` child
 * whose log lines are counted by level and whose descriptors and memory are
 * sampled from `/proc` (Linux).
 *
 * @module
 */
import { writeAll } from "../io.ts";
import { ServerChild } from "../spawn.ts";

/** Descriptors and memory of a process, sampled from /proc. */
export interface Usage {
  /** Open descriptors. */
  fds: number;
  /** Resident memory (VmRSS) in KiB. */
  rssKiB: number;
}

function usage(pid: number): Usage | undefined {
  try {
    const fds = [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const rssKiB = Number(status.match(/^VmRSS:\s+(\d+) kB/m)?.[1] ?? NaN);
    return { fds, rssKiB };
  } catch {
    return undefined; // exited, or not Linux
  }
}

/** What each descriptor of a process points to (`socket:[123]`, a path…). */
function fdTargets(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  try {
    for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
      try {
        out.set(e.name, Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`));
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    // exited, or not Linux
  }
  return out;
}

/**
 * A `tcpecho server` child under soak: its log counted by level as it runs,
 * its descriptors and memory sampled at the start, the peak and the end.
 */
export class SoakServer {
  /** `tcp` or `tls`, as the report names it. */
  readonly name: string;
  /** The child. */
  readonly server: ServerChild;
  /** Its port, once {@linkcode SoakServer.listening} resolved. */
  port = 0;
  /** Usage after one connection, from {@linkcode SoakServer.baseline}. */
  start?: Usage;
  /** What each descriptor pointed to at the start. */
  startFds = new Map<string, string>();
  /** The largest usage sampled. */
  peak?: Usage;
  /** Usage after the clients, from {@linkcode SoakServer.settle}. */
  end?: Usage;
  /** Log lines by level (`INF`, `WRN`…, `other` for unexpected lines). */
  levels: Record<string, number> = {};
  /** Warning, error and unexpected lines, the first ones. */
  notable: string[] = [];
  /** The last log line (`stopped: …` after a clean stop). */
  lastLine = "";
  /** Its exit code, once stopped. */
  exitCode?: number;

  /** Starts `tcpecho server --port 0 ARGS…`, as `name`. */
  constructor(name: string, args: string[]) {
    this.name = name;
    this.server = new ServerChild(["--port", "0", ...args], {
      runFlags: ["-A", "--quiet"],
      env: { NO_COLOR: "1" },
      startTimeoutMs: 20_000,
      stopTimeoutMs: 20_000,
      keepLines: 0, // counted as they come: a long soak logs millions
      onLine: (line) => this.#line(line),
    });
  }

  /** The child's process id. */
  get pid(): number {
    return this.server.child.pid;
  }

  #line(text: string): void {
    this.lastLine = text;
    const level = text.match(/^\S+ \S+ (DBG|INF|WRN|ERR|FTL) /)?.[1] ??
      "other";
    this.levels[level] = (this.levels[level] ?? 0) + 1;
    if (level !== "INF" && level !== "DBG" && this.notable.length < 20) {
      this.notable.push(text);
    }
  }

  /** Waits for its `listening on` line (20 s at most). */
  async listening(): Promise<void> {
    try {
      await this.server.ready;
    } catch (err) {
      const cause = (err as Error).cause as Error; // how it failed
      throw new Error(`${this.name} server did not start: ${cause.message}`);
    }
    this.port = this.server.port;
  }

  /**
   * Takes the starting figures after one connection was served (the runtime
   * opens a few descriptors lazily), as the lowest of a few samples (that
   * connection's socket closes just after the client sees its EOF).
   */
  async baseline(connect: () => Promise<Deno.Conn>): Promise<void> {
    {
      using conn = await connect();
      await writeAll(conn, new Uint8Array([120]));
      await conn.closeWrite();
      const buf = new Uint8Array(16);
      while (await conn.read(buf) !== null) {
        // until the server's EOF
      }
    }
    for (let i = 0; i < 5; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const u = usage(this.pid);
      if (u && (!this.start || u.fds < this.start.fds)) {
        this.start = u;
        this.startFds = fdTargets(this.pid);
      }
    }
    this.peak = this.start;
  }

  /** Samples its usage now, raising the peak; `undefined` once it has exited. */
  sample(): Usage | undefined {
    const u = usage(this.pid);
    if (u && this.peak) {
      this.peak = {
        fds: Math.max(this.peak.fds, u.fds),
        rssKiB: Math.max(this.peak.rssKiB, u.rssKiB),
      };
    }
    return u;
  }

  /**
   * Samples until the server is back to its starting descriptor count, for
   * at most `timeoutMs`; then says which descriptors it holds beyond those
   * it had at the start, or `undefined` when none.
   */
  async settle(timeoutMs: number): Promise<string | undefined> {
    const settleBy = performance.now() + timeoutMs;
    for (;;) {
      this.end = this.sample();
      if (!this.end || !this.start || this.end.fds <= this.start.fds) break;
      if (performance.now() > settleBy) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    if (!this.end || !this.start || this.end.fds <= this.start.fds) {
      return undefined;
    }
    const extra = [...fdTargets(this.pid)]
      .filter(([fd, target]) => this.startFds.get(fd) !== target)
      .map(([fd, target]) => `${fd} -> ${target}`);
    return `${this.end.fds - this.start.fds} more fds than at start (${
      extra.join(", ")
    })`;
  }

  /** SIGTERM, then the exit code (SIGKILL if it takes over 20 s). */
  async stop(): Promise<number> {
    this.exitCode = await this.server.stop();
    return this.exitCode;
  }
}
