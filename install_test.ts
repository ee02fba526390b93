/**
 * The README's `deno install` line, run as written into a temporary root:
 * the installed `tcpecho` must start. Needs no network beyond the npm cache
 * that running the tests already filled.
 *
 * @module
 */
import assert from "node:assert/strict";

const ROOT = new URL(".", import.meta.url).pathname;

/** The README's `deno install …` command line, split into arguments. */
async function readmeInstallArgs(): Promise<string[]> {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  const lines = readme.split("\n").filter((l) => l.startsWith("deno install "));
  assert.equal(lines.length, 1, "one deno install line in README.md");
  return lines[0].trim().split(/\s+/).slice(2); // no quoting in it
}

/** Runs `cmd` to its end, killed after `ms` so a hang fails the test. */
async function run(cmd: string, args: string[], env: Record<string, string>) {
  const kill = new AbortController();
  const timer = setTimeout(() => kill.abort(), 60_000);
  try {
    const out = await new Deno.Command(cmd, {
      args,
      cwd: ROOT,
      env: { NO_COLOR: "1", ...env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: kill.signal,
    }).output();
    const text = new TextDecoder();
    return {
      code: out.code,
      stdout: text.decode(out.stdout),
      stderr: text.decode(out.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

Deno.test({
  name: "README's deno install line installs a tcpecho that runs",
  ignore: Deno.build.os === "windows", // the installed shim is a .cmd there
  async fn() {
    const args = await readmeInstallArgs();
    assert.equal(args[0], "-g");
    const root = await Deno.makeTempDir({ prefix: "tcpecho_install_" });
    try {
      const install = await run(Deno.execPath(), [
        "install",
        "--root",
        root,
        ...args,
      ], {});
      assert.equal(install.code, 0, install.stderr);
      // The shim runs `deno` by name.
      const path = `${Deno.execPath().replace(/\/[^/]*$/, "")}:${
        Deno.env.get("PATH") ?? ""
      }`;
      const version = await run(`${root}/bin/tcpecho`, ["--version"], {
        PATH: path,
      });
      assert.equal(version.stderr, "");
      assert.equal(version.code, 0);
      assert.match(version.stdout, /^tcpecho \d+\.\d+\.\d+ \(deno /);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});
