/**
 * `deno compile` end to end: build the single binary, then use it as a user
 * would (`--version`, `server --port 0`, `client` in a pipe, SIGTERM).
 *
 * Where `deno compile` cannot download its runtime base (denort) the test's
 * one step is reported as ignored, with the reason, not failed;
 * `TCPECHO_REQUIRE_COMPILE=1` (set by CI on GitHub, which can download it)
 * turns that into a failure. That is found out inside the test, so running
 * other tests (`deno test --filter`) costs nothing here.
 *
 * @module
 */
import assert from "node:assert/strict";
import { ServerChild } from "./spawn.ts";
import { compileArgs } from "./tools/compile.ts";

const ROOT = new URL(".", import.meta.url);
const PAYLOAD_BYTES = 256 * 1024;
/** Bounds, not waits: each ends a child that hangs. */
const PROBE_TIMEOUT_MS = 60_000;
const COMPILE_TIMEOUT_MS = 180_000;
const RUN_TIMEOUT_MS = 30_000;
const IS_WINDOWS = Deno.build.os === "windows";

interface Output {
  /** Exit code, or -1 when killed at the time limit. */
  code: number;
  stdout: Uint8Array;
  stderr: string;
  ms: number;
}

/** Runs `cmd` to its end, feeding it `stdin`; killed after `timeoutMs`. */
async function run(
  cmd: string,
  args: string[],
  options: { cwd?: URL; stdin?: Uint8Array; timeoutMs?: number } = {},
): Promise<Output> {
  const { cwd, stdin, timeoutMs = RUN_TIMEOUT_MS } = options;
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(), timeoutMs);
  const start = performance.now();
  try {
    const child = new Deno.Command(cmd, {
      args,
      cwd,
      stdin: stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
      signal: timeout.signal,
    }).spawn();
    // Feed stdin while output() reads stdout, or a large echo deadlocks. A
    // child that quits early breaks this pipe: its exit code and output say
    // more than the BrokenPipe, so that error is ignored here.
    const feeding = stdin
      ? (async () => {
        const writer = child.stdin.getWriter();
        await writer.write(stdin);
        await writer.close();
      })().catch(() => {})
      : undefined;
    const [out] = await Promise.all([child.output(), feeding]);
    const stderr = new TextDecoder().decode(out.stderr);
    return {
      code: timeout.signal.aborted ? -1 : out.code,
      stdout: out.stdout,
      stderr: timeout.signal.aborted
        ? `timed out after ${timeoutMs / 1000} s\n${stderr}`
        : stderr,
      ms: performance.now() - start,
    };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Compiles a one-line script once, so the test can be ignored, with the reason
 * printed, where `deno compile` cannot fetch its runtime base. Without access
 * to Deno's download host that fails within seconds: "Setting up base binary",
 * "error sending request for url (…/denort-<target>.zip)".
 */
async function probeCompile(): Promise<
  { ok: boolean; cannotDownload: boolean; reason: string }
> {
  const dir = await Deno.makeTempDir({ prefix: "tcpecho_probe_" });
  try {
    await Deno.writeTextFile(`${dir}/probe.ts`, "console.log(1);\n");
    const { code, stderr, ms } = await run(Deno.execPath(), [
      "compile",
      "--no-config",
      "--quiet",
      "-o",
      `${dir}/probe`,
      `${dir}/probe.ts`,
    ], { timeoutMs: PROBE_TIMEOUT_MS });
    if (code === 0) return { ok: true, cannotDownload: false, reason: "" };
    // "error: …", "Caused by:", numbered causes: keep the first ones, on one line.
    const reason = stderr.split("\n").map((line) => line.trim())
      .filter((line) =>
        line && !/^(Caused by:|Stack|\d+: <unknown>)/.test(line)
      )
      .slice(0, 3).join(" / ");
    return {
      ok: false,
      // A hang (a network that drops packets) counts as "cannot download";
      // any other failure is a real one and must fail the test.
      cannotDownload: code === -1 || /base binary|denort/.test(stderr),
      reason: `${reason} (after ${(ms / 1000).toFixed(1)} s)`,
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Random bytes; `getRandomValues` fills at most 64 KiB a call. */
function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) {
    crypto.getRandomValues(bytes.subarray(i, Math.min(n, i + 65536)));
  }
  return bytes;
}

Deno.test(
  "`deno compile` builds a binary that serves, echoes and stops on SIGTERM",
  async (t) => {
    const probe = await probeCompile();
    if (!probe.ok) {
      console.error(`deno compile cannot run here: ${probe.reason}`);
    }
    const ignore = probe.cannotDownload &&
      Deno.env.get("TCPECHO_REQUIRE_COMPILE") !== "1";
    await t.step({
      name: "compile main.ts and use the binary" +
        (ignore
          ? " (ignored: deno compile cannot download its runtime base on " +
            "this machine)"
          : ""),
      ignore,
      fn: (t) => compileAndRun(t, probe),
    });
  },
);

/** Compiles main.ts, then runs the binary as a user would, step by step. */
async function compileAndRun(
  t: Deno.TestContext,
  probe: { ok: boolean; reason: string },
): Promise<void> {
  assert.ok(probe.ok, `deno compile cannot run: ${probe.reason}`);
  const dir = await Deno.makeTempDir({ prefix: "tcpecho_compile_" });
  try {
    // deno compile adds ".exe" itself for Windows targets.
    const exe = `${dir}/tcpecho${IS_WINDOWS ? ".exe" : ""}`;
    const compiled = await run(
      Deno.execPath(),
      compileArgs(undefined, dir),
      { cwd: ROOT, timeoutMs: COMPILE_TIMEOUT_MS },
    );
    assert.equal(compiled.code, 0, `deno compile: ${compiled.stderr}`);

    await t.step("--version prints the deno.json version", async () => {
      const { version } = JSON.parse(
        await Deno.readTextFile(new URL("deno.json", ROOT)),
      );
      const out = await run(exe, ["--version"]);
      assert.equal(out.code, 0, out.stderr);
      assert.ok(
        new TextDecoder().decode(out.stdout).includes(version),
        `--version does not print ${version}`,
      );
    });

    await t.step(
      "server and client echo 256 KiB byte for byte",
      async (t) => {
        await using server = new ServerChild(["--port", "0"], {
          program: exe,
          env: { NO_COLOR: "1" },
          startTimeoutMs: RUN_TIMEOUT_MS,
        });
        await server.ready;

        const payload = randomBytes(PAYLOAD_BYTES);
        const out = await run(exe, ["client", "--port", String(server.port)], {
          stdin: payload,
        });
        assert.equal(out.code, 0, `client: ${out.stderr}`);
        assert.equal(out.stdout.length, payload.length, "bytes echoed");
        assert.deepEqual(out.stdout, payload);

        // Windows has no SIGTERM to handle (Deno's kill() there terminates the
        // process at once), so the graceful stop is POSIX only.
        await t.step({
          name: "SIGTERM stops the server with exit code 0",
          ignore: IS_WINDOWS,
          async fn() {
            const code = await server.stop("SIGTERM");
            const log = server.lines.join("\n");
            assert.equal(code, 0, log);
            assert.match(log, /stopped:/);
          },
        });
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
