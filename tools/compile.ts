/**
 * Builds the tcpecho binary with `deno compile`:
 *
 * ```sh
 * deno task compile                    # this machine: dist/tcpecho
 * deno task compile --target TARGET    # dist/tcpecho-TARGET
 * deno task compile:all                # every target in TARGETS
 * deno task compile --list             # TARGETS, one a line (release.yml)
 * ```
 *
 * `--out-dir DIR` writes to DIR instead of `dist`; Windows binaries get
 * `.exe`. The binary has exactly the permissions of `deno task tcpecho`: they
 * are written once, in that deno.json task, and read from there
 * ({@linkcode PERMISSIONS}).
 *
 * Nothing is faked: an output left from an earlier build is removed first,
 * and when `deno compile` fails (it downloads its runtime base, denort, and
 * some machines cannot reach the download host) its own error is shown and
 * this exits 1.
 *
 * @module
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import config from "../deno.json" with { type: "json" };

/**
 * Every `deno compile --target` of Deno 2.9.6 (`deno compile --target x`
 * lists them); `compile:all` builds these and release.yml ships them.
 */
export const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
  "aarch64-pc-windows-msvc",
] as const;

/** A `deno compile --target`. */
export type Target = typeof TARGETS[number];

/**
 * Takes the `--allow-…` flags out of a task of the form
 * `deno run --allow-… main.ts`.
 *
 * @throws {Error} when the task has any other form, so that a change there
 *   cannot silently give the binary other permissions.
 */
export function permissionsOf(command: string): string[] {
  const words = command.trim().split(/\s+/);
  const flags = words.slice(2, -1);
  if (
    words[0] !== "deno" || words[1] !== "run" || words.at(-1) !== "main.ts" ||
    flags.length === 0 || flags.some((flag) => !flag.startsWith("--allow-"))
  ) {
    throw new Error(
      `cannot read permissions from "${command}": expected "deno run --allow-… main.ts"`,
    );
  }
  return flags;
}

/**
 * The permissions baked into the binary: those of the `tcpecho` task in
 * deno.json, which `deno task server`, `client` and `bench` run.
 */
export const PERMISSIONS: readonly string[] = permissionsOf(
  config.tasks.tcpecho.command,
);

/** The repository root: `deno compile` runs there, relative paths start there. */
const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Where builds go unless told otherwise. */
export const OUT_DIR = "dist";

/**
 * Where a build for `target` (this machine's when omitted) is written: in
 * `outDir`, `tcpecho-<target>`, or `tcpecho` for this machine, plus `.exe`
 * for Windows.
 */
export function outputPath(target?: Target, outDir: string = OUT_DIR): string {
  const windows = target === undefined
    ? Deno.build.os === "windows"
    : target.includes("windows");
  const name = `tcpecho${target ? `-${target}` : ""}${windows ? ".exe" : ""}`;
  return `${outDir}/${name}`;
}

/** Modules started with `new Worker()`: the binary must include them. */
export const WORKER_MODULES: readonly string[] = [
  "_bench_worker.ts",
  "_server_worker.ts",
];

/** Unstable APIs the binary uses: `net` for `reusePort` (`server --workers`). */
export const UNSTABLE_FLAGS: readonly string[] = ["--unstable-net"];

/** The `deno compile` arguments that build `target` (this machine's when omitted). */
export function compileArgs(
  target?: Target,
  outDir: string = OUT_DIR,
): string[] {
  return [
    "compile",
    ...PERMISSIONS,
    ...UNSTABLE_FLAGS,
    ...(target ? ["--target", target] : []),
    // deno compile adds `.exe` itself for Windows.
    // Worker modules are not found by deno compile's module graph.
    ...WORKER_MODULES.flatMap((module) => ["--include", module]),
    "-o",
    outputPath(target, outDir).replace(/\.exe$/, ""),
    "main.ts",
  ];
}

/** Removes what an earlier build left at `output`, so a failure cannot leave it looking new. */
async function removeOutput(output: string): Promise<void> {
  await Deno.remove(resolve(ROOT, output)).catch((err) => {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  });
}

/**
 * Runs `deno compile` for `target` in the repository root, its output and
 * errors going to this process's stdout and stderr.
 *
 * @returns the binary's path, as {@linkcode outputPath} gives it.
 * @throws {Error} when it fails or leaves no binary behind.
 */
export async function compile(
  target?: Target,
  outDir: string = OUT_DIR,
): Promise<string> {
  const output = outputPath(target, outDir);
  await removeOutput(output);
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: compileArgs(target, outDir),
    cwd: ROOT,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (code !== 0) {
    throw new Error(`deno compile failed for ${output} (exit code ${code})`);
  }
  const info = await Deno.stat(resolve(ROOT, output)).catch(() => undefined);
  if (!info?.isFile || info.size === 0) {
    throw new Error(`deno compile exited 0 but wrote no ${output}`);
  }
  return output;
}

const USAGE =
  "usage: deno task compile [--target TARGET | --all | --list] [--out-dir DIR]";

async function main(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      options: {
        target: { type: "string" },
        all: { type: "boolean" },
        list: { type: "boolean" },
        "out-dir": { type: "string", default: OUT_DIR },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    console.error(`error: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(`${USAGE}\ntargets: ${TARGETS.join(", ")}`);
    return 0;
  }
  if (values.list) {
    console.log(TARGETS.join("\n"));
    return 0;
  }
  const target = values.target;
  if (target !== undefined && !TARGETS.includes(target as Target)) {
    const known = TARGETS.join(", ");
    console.error(
      `error: unknown target "${target}": one of ${known}\n${USAGE}`,
    );
    return 2;
  }
  if (values.all && target !== undefined) {
    console.error(`error: --all and --target exclude each other\n${USAGE}`);
    return 2;
  }
  const targets = values.all ? [...TARGETS] : [target as Target | undefined];
  try {
    // All stale binaries go first: a run that stops half way leaves none.
    const outDir = values["out-dir"];
    for (const t of targets) await removeOutput(outputPath(t, outDir));
    for (const t of targets) await compile(t, outDir);
  } catch (err) {
    console.error(`error: ${(err as Error).message}`);
    return 1;
  }
  return 0;
}

if (import.meta.main) Deno.exitCode = await main(Deno.args);
