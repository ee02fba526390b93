/**
 * tools/compile.ts without a real build: the permissions it reads from
 * deno.json, the paths it writes, and a `deno compile` that fails (no denort,
 * by `DENORT_BIN` pointing nowhere, so no network is involved either way).
 *
 * @module
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  compileArgs,
  outputPath,
  PERMISSIONS,
  permissionsOf,
  TARGETS,
} from "./compile.ts";

const COMPILE_TS = fileURLToPath(new URL("./compile.ts", import.meta.url));
/** A bound, not a wait: a hung `deno compile` fails the test. */
const RUN_TIMEOUT_MS = 60_000;

Deno.test("permissionsOf() takes the --allow flags of `deno run … main.ts`", () => {
  assert.deepEqual(
    permissionsOf("deno run --allow-net --allow-env=A,B  main.ts"),
    ["--allow-net", "--allow-env=A,B"],
  );
  for (
    const command of [
      "deno run -A main.ts",
      "deno run --allow-net --unstable-net main.ts",
      "deno run --allow-net bench.ts",
      "deno task tcpecho",
      "deno run main.ts",
    ]
  ) {
    assert.throws(() => permissionsOf(command), /cannot read permissions/);
  }
});

Deno.test("PERMISSIONS are the binary's set: net, read, write, run, one env variable, ffi", () => {
  assert.deepEqual(PERMISSIONS, [
    "--allow-net",
    "--allow-read",
    "--allow-write",
    "--allow-run",
    "--allow-env=DENO_TOKIO_MAX_IO_EVENTS_PER_TICK",
    "--allow-ffi",
  ]);
});

Deno.test("compileArgs() builds main.ts with PERMISSIONS into dist/", () => {
  assert.deepEqual(compileArgs("aarch64-pc-windows-msvc"), [
    "compile",
    ...PERMISSIONS,
    "--unstable-net", // server --workers: reusePort
    "--target",
    "aarch64-pc-windows-msvc",
    "--include",
    "_bench_worker.ts", // a worker: not in the module graph
    "--include",
    "_server_worker.ts",
    "-o",
    "dist/tcpecho-aarch64-pc-windows-msvc", // deno compile adds .exe
    "main.ts",
  ]);
  assert.equal(
    outputPath("aarch64-pc-windows-msvc"),
    "dist/tcpecho-aarch64-pc-windows-msvc.exe",
  );
  assert.equal(
    outputPath("aarch64-apple-darwin", "out"),
    "out/tcpecho-aarch64-apple-darwin",
  );
  assert.equal(
    outputPath(),
    Deno.build.os === "windows" ? "dist/tcpecho.exe" : "dist/tcpecho",
  );
});

Deno.test("tools/compile.ts fails with deno compile's error and leaves no binary", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tcpecho_compile_" });
  try {
    // Binaries of an earlier build: a failed run must not leave them behind.
    for (const target of TARGETS) {
      await Deno.writeTextFile(outputPath(target, dir), "stale");
    }
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-write",
        "--allow-run",
        COMPILE_TS,
        "--all",
        "--out-dir",
        dir,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", DENORT_BIN: `${dir}/no-denort` },
      signal: AbortSignal.timeout(RUN_TIMEOUT_MS),
    }).output();
    const err = new TextDecoder().decode(stderr);
    assert.equal(code, 1, err);
    assert.match(err, /Could not find denort/, "deno compile's own error");
    assert.match(
      err,
      new RegExp(
        `^error: deno compile failed for .*tcpecho-${TARGETS[0]} `,
        "m",
      ),
    );
    assert.equal(new TextDecoder().decode(stdout).includes("error"), false);
    const left = [];
    for await (const entry of Deno.readDir(dir)) left.push(entry.name);
    assert.deepEqual(left, [], "files left in the output directory");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tools/compile.ts --list prints TARGETS, one a line", async () => {
  const { code, stdout } = await new Deno.Command(Deno.execPath(), {
    args: ["run", COMPILE_TS, "--list"],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
    signal: AbortSignal.timeout(RUN_TIMEOUT_MS),
  }).output();
  assert.equal(code, 0);
  assert.equal(new TextDecoder().decode(stdout), TARGETS.join("\n") + "\n");
});
