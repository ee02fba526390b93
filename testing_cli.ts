/**
 * Test helpers for the command line: the CLI (`main.ts`) as a child process,
 * run to completion or kept as a running server, and a stub `main.ts` to
 * test spawners against. Not part of the tool; `testing.ts` holds the
 * in-process helpers.
 *
 * @module
 */
import { ServerChild } from "./spawn.ts";

const MAIN = new URL("./main.ts", import.meta.url).pathname;

/** `deno run -A main.ts …` as a child process, stdio piped. */
export function cli(args: string[], stdin: "piped" | "null" = "null") {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", MAIN, ...args],
    stdin,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  });
}

/** Runs the CLI to completion: exit code, stdout and stderr as text. */
export async function runCli(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await cli(args).output();
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}

/**
 * A running `tcpecho server` child (`deno run -A main.ts server ARGS`, logs
 * uncoloured): a {@linkcode ServerChild} that keeps every stderr line and is
 * killed (SIGKILL) on disposal.
 */
export class ServerProcess extends ServerChild {
  /**
   * `tcpecho server ARGS`, run through `wrapper` when one is given (such as
   * `prlimit --nofile=64:64 --`).
   */
  constructor(args: string[], wrapper: string[] = []) {
    super(args, {
      mainModule: MAIN,
      runFlags: ["-A", "--quiet"],
      wrapper,
      env: { NO_COLOR: "1" },
      startTimeoutMs: 20_000,
    });
  }

  /** Starts a server with `args` (add `--port 0`) and waits until it listens. */
  static async start(
    args: string[],
    wrapper: string[] = [],
  ): Promise<ServerProcess> {
    const server = new ServerProcess(args, wrapper);
    await server.ready;
    return server;
  }

  /** Kills the child (SIGKILL) and waits for it. */
  override async [Symbol.asyncDispose](): Promise<void> {
    await this.stop("SIGKILL");
  }
}

/**
 * A stand-in for `main.ts` (a {@linkcode ServerChild} `mainModule`) that
 * logs as `tcpecho server` does and echoes: `starting`, the ready line
 * (JSON with `--log-format json`), `args: ARGS`. `--silent` leaves out the
 * ready line, `--env` adds `env: $STUB_ENV`, `--ignore-sigterm` keeps it
 * running on SIGTERM (else it exits 0).
 */
export const STUB_SERVER = `
// The handler goes first: a parent that saw a line may send SIGTERM at once.
Deno.addSignalListener("SIGTERM", () => {
  if (!Deno.args.includes("--ignore-sigterm")) Deno.exit(0);
});
const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
console.error("starting");
if (!Deno.args.includes("--silent")) {
  console.error(
    Deno.args.includes("json")
      ? JSON.stringify({ message: 'listening on "127.0.0.1:' + listener.addr.port + '"' })
      : "listening on 127.0.0.1:" + listener.addr.port,
  );
}
console.error("args: " + Deno.args.join(" "));
if (Deno.args.includes("--env")) console.error("env: " + Deno.env.get("STUB_ENV"));
for await (const conn of listener) {
  (async () => {
    const buf = new Uint8Array(65536);
    try {
      for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
        for (let d = 0; d < n;) d += await conn.write(buf.subarray(d, n));
      }
      await conn.closeWrite();
    } catch {}
    try { conn.close(); } catch {}
  })();
}
`;

/**
 * A temporary directory holding `source` (by default
 * {@linkcode STUB_SERVER}) as `stub.ts`; removed on disposal.
 */
export async function stubServer(
  source: string = STUB_SERVER,
): Promise<AsyncDisposable & { dir: string; stub: string }> {
  const dir = await Deno.makeTempDir({ prefix: "tcpecho_stub_" });
  const stub = `${dir}/stub.ts`;
  await Deno.writeTextFile(stub, source);
  return {
    dir,
    stub,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true });
    },
  };
}
