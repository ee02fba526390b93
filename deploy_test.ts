/**
 * The container image and the Kubernetes manifests, checked offline, since no
 * container runtime or cluster exists where this project is built: the
 * Dockerfile is parsed (`dockerfile-ast`) and linted (`dockerfile-utils`), the
 * manifests are validated against the Kubernetes API schema
 * (`kubernetes-models`) and type-checked against its TypeScript interfaces
 * (which, unlike the schema, refuse unknown fields, as `kubectl apply` does),
 * and both are checked against each other and against tcpecho itself: every
 * command line in them is parsed by tcpecho's own option tables and checked
 * by the command's own `check()` (what `run()` checks first), and ports,
 * probes and timeouts are compared with the defaults in server.ts, bench.ts
 * and client.ts.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  type Copy,
  DockerfileParser,
  type From,
  type Instruction,
} from "dockerfile-ast";
import { validate as lintDockerfile } from "dockerfile-utils";
import { Deployment } from "kubernetes-models/apps/v1";
import { Job } from "kubernetes-models/batch/v1";
import {
  Namespace,
  PersistentVolumeClaim,
  Service,
} from "kubernetes-models/v1";
import { parse, parseAllDocuments } from "yaml";
import {
  type Command,
  findCommand,
  integer,
  parseCommandLine,
  secondsMs,
} from "./_cli.ts";
import { benchCommand } from "./_bench_command.ts";
import { clientCommand } from "./_client_command.ts";
import { serverCommand } from "./_server_command.ts";
import { BENCH_DEFAULTS } from "./bench.ts";
import { CONNECT_DEFAULTS } from "./client.ts";
import { SERVE_DEFAULTS } from "./server.ts";
import { outputPath, type Target, TARGETS } from "./tools/compile.ts";
import denoJson from "./deno.json" with { type: "json" };

const ROOT = new URL(".", import.meta.url);
const KUBERNETES = new URL("deploy/kubernetes/", ROOT);
/** The two kustomizations: the servers, and the bench run on demand. */
const KUSTOMIZATIONS = ["", "bench/"] as const;
const NAME = "tcpecho";
/** The image name the manifests use; their kustomization.yaml rewrites it. */
const IMAGE = "tcpecho";

// deno-lint-ignore no-explicit-any
type Yaml = any;

// --- tcpecho's own command lines ---------------------------------------------

const COMMANDS = [
  serverCommand,
  clientCommand,
  benchCommand,
] as unknown as Command[];

/** A tcpecho command line as the CLI parses it. */
interface CommandLine {
  /** `server`, `bench`, `bench merge`… */
  command: string;
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/**
 * Parses `args` (what follows the binary) as tcpecho does, then checks them
 * as its `run()` would before starting anything (`check()`: options that
 * cannot go together, values out of range, TCP-only options with `--udp`),
 * or throws why not.
 */
function parseTcpecho(args: readonly string[], where: string): CommandLine {
  const found = findCommand(COMMANDS, args);
  assert.ok(found, `${where}: "${args.join(" ")}" names no tcpecho command`);
  const words = args.slice(0, args.length - found.args.length);
  const { command } = found;
  assert.ok(
    command.check,
    `${where}: tcpecho ${words.join(" ")} has no check()`,
  );
  try {
    const { values, positionals } = parseCommandLine(command, found.args);
    command.check(values, positionals);
    return { command: words.join(" "), values, positionals };
  } catch (err) {
    throw new assert.AssertionError({
      message: `${where}: tcpecho ${args.join(" ")}: ${(err as Error).message}`,
    });
  }
}

/** A `HOST:PORT` (`[::]:PORT` for IPv6) as the CLI writes it. */
function hostPort(text: string, where: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  assert.ok(match, `${where}: "${text}" is not HOST:PORT`);
  return { host: match[1] ?? match[2], port: Number(match[3]) };
}

/** What a `tcpecho server` command line listens on, with the defaults filled in. */
function serverAddrs(line: CommandLine, where: string) {
  assert.equal(line.command, "server", `${where}: not a server`);
  const values = line.values as Record<string, string | undefined>;
  const admin = line.values.admin;
  assert.equal(typeof admin, "string", `${where}: no --admin HOST:PORT`);
  return {
    host: values.host ?? SERVE_DEFAULTS.hostname,
    port: integer(values, "port") ?? SERVE_DEFAULTS.port,
    protocol: line.values.udp === true ? "UDP" : "TCP",
    admin: hostPort(admin as string, where),
    shutdownTimeoutMs: secondsMs(values, "shutdown-timeout") ??
      SERVE_DEFAULTS.shutdownTimeoutMs,
  };
}

// --- the Dockerfile ----------------------------------------------------------

interface Stage {
  from: From;
  instructions: Instruction[];
}

interface Dockerfile {
  text: string;
  stages: Stage[];
}

let dockerfile: Promise<Dockerfile> | undefined;
function loadDockerfile(): Promise<Dockerfile> {
  return dockerfile ??= (async () => {
    const text = await Deno.readTextFile(new URL("Dockerfile", ROOT));
    const stages: Stage[] = [];
    for (const instruction of DockerfileParser.parse(text).getInstructions()) {
      if (instruction.getKeyword() === "FROM") {
        stages.push({ from: instruction as From, instructions: [] });
      } else {
        assert.ok(stages.length > 0, `${instruction.getKeyword()} before FROM`);
        stages.at(-1)!.instructions.push(instruction);
      }
    }
    return { text, stages };
  })();
}

/** The instructions of `stage` with `keyword`. */
function find(stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((i) => i.getKeyword() === keyword);
}

/** The one instruction of `stage` with `keyword`. */
function only(stage: Stage, keyword: string): Instruction {
  const found = find(stage, keyword);
  assert.equal(
    found.length,
    1,
    `the final stage has ${found.length} ${keyword}`,
  );
  return found[0];
}

/** An exec-form (JSON array) instruction's words; fails on the shell form. */
function execForm(instruction: Instruction): string[] {
  const keyword = instruction.getKeyword();
  const text = instruction.getArgumentsContent() ?? "";
  let words: unknown;
  try {
    words = JSON.parse(text);
  } catch {
    words = undefined;
  }
  assert.ok(
    Array.isArray(words) && words.length > 0 &&
      words.every((word) => typeof word === "string"),
    `${keyword} ${text}: not the exec form ["…", …], so a shell would run it`,
  );
  return words;
}

/** The final stage's CMD, parsed as a tcpecho command line. */
async function imageCommand() {
  const { stages } = await loadDockerfile();
  const cmd = execForm(only(stages.at(-1)!, "CMD"));
  return {
    cmd,
    addrs: serverAddrs(parseTcpecho(cmd, "Dockerfile CMD"), "CMD"),
  };
}

/** The final stage's USER as numbers: `uid` or `uid:gid`. */
async function imageUser(): Promise<{ uid: number; gid?: number }> {
  const { stages } = await loadDockerfile();
  const user = only(stages.at(-1)!, "USER").getArgumentsContent() ?? "";
  const match = /^(\d+)(?::(\d+))?$/.exec(user);
  assert.ok(
    match,
    `USER ${user}: not numeric, so Kubernetes cannot check runAsNonRoot`,
  );
  return {
    uid: Number(match[1]),
    gid: match[2] ? Number(match[2]) : undefined,
  };
}

/** The Deno version CI tests with: setup-deno's in ci.yml. */
async function ciDenoVersion(): Promise<string> {
  const ci = parse(
    await Deno.readTextFile(new URL(".github/workflows/ci.yml", ROOT)),
  );
  const versions = new Set<string>();
  for (const job of Object.values(ci.jobs) as Yaml[]) {
    for (const step of job.steps ?? []) {
      if (String(step.uses ?? "").startsWith("denoland/setup-deno@")) {
        versions.add(String(step.with?.["deno-version"]));
      }
    }
  }
  assert.equal(versions.size, 1, "ci.yml: one deno-version");
  return [...versions][0];
}

/** `TARGETARCH` → `deno compile --target`, from the build stage's `case`. */
async function archTargets(): Promise<Map<string, string>> {
  const { text } = await loadDockerfile();
  const arms = [...text.matchAll(/^\s*(\w+)\) target=([\w-]+) ;;/gm)];
  return new Map(arms.map(([, arch, target]) => [arch, target]));
}

Deno.test("Dockerfile passes dockerfile-utils' linter", async () => {
  const { text } = await loadDockerfile();
  const problems = lintDockerfile(text).map(({ range, message }) =>
    `line ${range.start.line + 1}: ${message}`
  );
  assert.deepEqual(problems, []);
});

Deno.test("Dockerfile pins every base by a version tag and a digest", async () => {
  const { stages } = await loadDockerfile();
  assert.ok(stages.length >= 2, "one build stage and one run stage");
  const names = new Set<string>();
  for (const { from } of stages) {
    const image = from.getImage();
    const tag = from.getImageTag();
    // A version in the tag, or in the name where the tags carry none
    // (distroless: cc-debian12, tagged latest, nonroot, debug…).
    assert.ok(
      tag && /\d/.test(`${from.getImageName()}:${tag}`),
      `FROM ${image}: no version in the tag or name`,
    );
    assert.doesNotMatch(tag, /latest/, `FROM ${image}`);
    assert.match(
      from.getImageDigest() ?? "",
      /^sha256:[0-9a-f]{64}$/,
      `FROM ${image}: no digest`,
    );
    assert.ok(!names.has(from.getImageName()!), "FROM an earlier stage");
    const stage = from.getBuildStage();
    if (stage) names.add(stage);
  }
  // The build stage is the Deno that CI tests with, run on the build
  // machine's platform (it cross-compiles; no emulation).
  const [build] = stages;
  assert.equal(build.from.getImageName(), "denoland/deno");
  assert.equal(build.from.getImageTag(), await ciDenoVersion());
  assert.equal(build.from.getPlatformFlag()?.getValue(), "$BUILDPLATFORM");
  // The run stage: distroless with glibc, which the -gnu targets link.
  const run = stages.at(-1)!.from;
  assert.equal(run.getRegistry(), "gcr.io");
  assert.equal(run.getImageName(), "distroless/cc-debian12");
  assert.match(run.getImageTag()!, /^nonroot\b/);
});

Deno.test("Dockerfile compiles with deno task compile, one target per TARGETARCH", async () => {
  const { text, stages } = await loadDockerfile();
  const [build] = stages;
  assert.ok(
    find(build, "ARG").some((arg) =>
      arg.getArgumentsContent() === "TARGETARCH"
    ),
    "the build stage declares ARG TARGETARCH",
  );
  // The task holds the permission flags (tools/compile.ts reads them from
  // deno.json); the Dockerfile repeats none of them.
  const runs = find(build, "RUN").map((i) => i.getArgumentsContent()).join(
    "\n",
  );
  assert.match(runs, /deno task compile --target "\$target"/);
  assert.doesNotMatch(runs, /\bdeno +compile\b|--allow-/);
  const targets = await archTargets();
  assert.deepEqual([...targets.keys()].sort(), ["amd64", "arm64"]);
  for (const target of targets.values()) {
    assert.ok(TARGETS.includes(target as Target), `${target}: not in TARGETS`);
    assert.match(target, /-linux-gnu$/);
  }
  // It copies what tools/compile.ts writes, into the run stage's ENTRYPOINT.
  const built = outputPath("$target" as Target);
  assert.ok(text.includes(`cp "${built}" /tcpecho`), `no cp "${built}"`);
  const copy = only(stages.at(-1)!, "COPY") as Copy;
  assert.equal(copy.getFromFlag()?.getValue(), build.from.getBuildStage());
  assert.equal(copy.getArgumentsContent(), "/tcpecho /tcpecho");
});

Deno.test("Dockerfile runs the binary as a numeric non-root USER, ENTRYPOINT and CMD in exec form", async () => {
  const { stages } = await loadDockerfile();
  const run = stages.at(-1)!;
  const { uid, gid } = await imageUser();
  assert.notEqual(uid, 0, "USER root");
  assert.notEqual(gid, 0, "USER's group is root");
  assert.deepEqual(execForm(only(run, "ENTRYPOINT")), ["/tcpecho"]);
  // The CMD is a server reachable from outside the container, with the
  // admin endpoint the probes use.
  const { addrs } = await imageCommand();
  assert.equal(addrs.host, "0.0.0.0");
  assert.deepEqual(addrs.admin, { host: "0.0.0.0", port: 9090 });
  // No shell in distroless: nothing may need one.
  assert.deepEqual(find(run, "RUN"), []);
  assert.deepEqual(find(run, "SHELL"), []);
  for (const signal of find(run, "STOPSIGNAL")) {
    assert.equal(signal.getArgumentsContent(), "SIGTERM");
  }
});

Deno.test("Dockerfile EXPOSEs its CMD's echo port, TCP and UDP, and admin port", async () => {
  const { stages } = await loadDockerfile();
  const exposed = find(stages.at(-1)!, "EXPOSE").flatMap((i) =>
    i.getArguments().map((a) => a.getValue())
  );
  const { addrs } = await imageCommand();
  assert.deepEqual(
    exposed.sort(),
    [
      `${addrs.port}/tcp`,
      `${addrs.port}/udp`,
      `${addrs.admin.port}/tcp`,
    ].sort(),
  );
});

/** Docker's ignore patterns as regular expressions, `!` marking exceptions. */
function ignorePatterns(text: string): { not: boolean; re: RegExp }[] {
  return text.split("\n").map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const not = line.startsWith("!");
      const glob = line.replace(/^!/, "").replace(/^\/|\/$/g, "");
      const re = glob.split("/").map((part) =>
        part === "**" ? ".*" : part.replace(/[.+^${}()|[\]\\]/g, "\\$&")
          .replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]")
      ).join("/").replace(/^\.\*\//, "(?:.*/)?");
      return { not, re: new RegExp(`^${re}(?:/.*)?$`) };
    });
}

Deno.test(".dockerignore keeps what deno task compile reads and drops .git and dist/", async () => {
  const patterns = ignorePatterns(
    await Deno.readTextFile(new URL(".dockerignore", ROOT)),
  );
  const ignored = (path: string) =>
    patterns.reduce((out, { not, re }) => re.test(path) ? !not : out, false);
  const sources = ["deno.json", "deno.lock", "tools/compile.ts"];
  for await (const entry of Deno.readDir(ROOT)) {
    if (entry.isFile && /(?<!_test)\.ts$/.test(entry.name)) {
      sources.push(entry.name);
    }
  }
  assert.ok(sources.includes("main.ts"));
  for (const path of sources) assert.ok(!ignored(path), `ignores ${path}`);
  for (const path of [".git", "dist/tcpecho", "server_test.ts"]) {
    assert.ok(ignored(path), `sends ${path} to the build`);
  }
});

// --- the Kubernetes manifests ------------------------------------------------

interface Manifest {
  /** `bench/merge-job.yaml#0` */
  where: string;
  object: Yaml;
}

interface Kustomization {
  dir: string;
  kustomization: Yaml;
  manifests: Manifest[];
}

let kustomizations: Promise<Kustomization[]> | undefined;
function loadKustomizations(): Promise<Kustomization[]> {
  return kustomizations ??= Promise.all(KUSTOMIZATIONS.map(async (dir) => {
    const base = new URL(dir, KUBERNETES);
    const kustomization = parse(
      await Deno.readTextFile(new URL("kustomization.yaml", base)),
    );
    const manifests: Manifest[] = [];
    for (const file of kustomization.resources ?? []) {
      const text = await Deno.readTextFile(new URL(file, base));
      parseAllDocuments(text).forEach((doc, i) => {
        assert.deepEqual(doc.errors, [], `${dir}${file}`);
        manifests.push({ where: `${dir}${file}#${i}`, object: doc.toJS() });
      });
    }
    return { dir, kustomization, manifests };
  }));
}

async function allManifests(): Promise<Manifest[]> {
  return (await loadKustomizations()).flatMap(({ manifests }) => manifests);
}

/** The one object of `kind` named `name` (or the only one of its kind). */
async function object(kind: string, name?: string): Promise<Yaml> {
  const found = (await allManifests()).filter(({ object }) =>
    object.kind === kind &&
    (name === undefined || object.metadata.name === name)
  );
  assert.equal(found.length, 1, `${kind} ${name ?? ""}: ${found.length} found`);
  return found[0].object;
}

/** Every pod template: the Deployment's and the Jobs'. */
async function podTemplates(): Promise<{ where: string; template: Yaml }[]> {
  return (await allManifests())
    .filter(({ object }) => object.spec?.template)
    .map(({ object }) => ({
      where: `${object.kind} ${object.metadata.name}`,
      template: object.spec.template,
    }));
}

/** The models of `kubernetes-models` for the kinds used here. */
const MODELS: Record<string, new (data: Yaml) => { validate(): void }> = {
  "v1/Namespace": Namespace,
  "v1/Service": Service,
  "v1/PersistentVolumeClaim": PersistentVolumeClaim,
  "apps/v1/Deployment": Deployment,
  "batch/v1/Job": Job,
};

Deno.test("manifests validate against the Kubernetes API schema", async () => {
  for (const { where, object } of await allManifests()) {
    const Model = MODELS[`${object.apiVersion}/${object.kind}`];
    assert.ok(
      Model,
      `${where}: no model for ${object.apiVersion} ${object.kind}`,
    );
    try {
      new Model(object).validate();
    } catch (err) {
      assert.fail(`${where}: ${(err as Error).message}`);
    }
  }
});

// The API schema allows unknown fields (a typo such as `readinessProbes`
// passes it), while `kubectl apply` refuses them. The TypeScript interfaces
// of the same package do not: each manifest, as an object literal of its
// interface, must type-check.
Deno.test("manifests use no field the Kubernetes API does not know", async () => {
  const specifier = denoJson.imports["kubernetes-models"];
  const lines: string[] = [];
  for (const [i, { where, object }] of (await allManifests()).entries()) {
    const module = `${specifier}/${object.apiVersion}/${object.kind}`;
    lines.push(
      `import type { I${object.kind} as T${i} } from "${module}";`,
      `// ${where}`,
      `export const m${i}: T${i} = ${JSON.stringify(object)};`,
    );
  }
  const dir = await Deno.makeTempDir({ prefix: "tcpecho-manifests-" });
  try {
    const file = `${dir}/manifests.ts`;
    await Deno.writeTextFile(file, lines.join("\n") + "\n");
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["check", "--quiet", "--no-config", "--no-lock", file],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(60_000),
    }).output();
    const text = new TextDecoder();
    const output = (text.decode(stdout) + text.decode(stderr)).trim();
    // Each error with the manifest it is in: the comment above its line.
    const errors = output.split(/^(?=TS\d+ )/m).flatMap((error) => {
      const at = /manifests\.ts:(\d+):/.exec(error);
      const what = error.split("\n")[0];
      return at ? [`${lines[Number(at[1]) - 2].slice(3)}: ${what}`] : [];
    });
    assert.equal(code, 0, `${errors.join("\n")}\n${output}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kustomizations list every manifest beside them and set one namespace and image", async () => {
  const namespace = await object("Namespace");
  const images: Yaml[] = [];
  for (const { dir, kustomization, manifests } of await loadKustomizations()) {
    const files: string[] = [];
    for await (const entry of Deno.readDir(new URL(dir, KUBERNETES))) {
      if (entry.isFile && entry.name !== "kustomization.yaml") {
        files.push(entry.name);
      }
    }
    assert.deepEqual([...kustomization.resources].sort(), files.sort(), dir);
    assert.equal(kustomization.namespace, namespace.metadata.name, dir);
    for (const { where, object } of manifests) {
      if (object.kind === "Namespace") continue;
      assert.equal(object.metadata.namespace, kustomization.namespace, where);
    }
    images.push(kustomization.images);
  }
  // One image, whose tag follows deno.json's version.
  const [first, ...rest] = images;
  for (const other of rest) assert.deepEqual(other, first);
  assert.equal(first.length, 1);
  assert.equal(first[0].name, IMAGE);
  assert.match(first[0].newName, /^ghcr\.io\/[^/]+\/tcpecho$/);
  assert.equal(first[0].newTag, denoJson.version);
  for (const { where, template } of await podTemplates()) {
    for (const c of template.spec.containers) {
      assert.equal(c.image, IMAGE, `${where}: container ${c.name}`);
    }
  }
});

/**
 * A kubeconfig whose API server refuses at once. `kubectl kustomize` needs no
 * cluster, but some kubectl builds (Google Cloud SDK's dispatcher) first ask
 * the configured server for its version, by default localhost:8080, which
 * may well be an echo server that never answers HTTP.
 */
const NO_CLUSTER = `apiVersion: v1
kind: Config
clusters: [{ name: none, cluster: { server: "https://127.0.0.1:1" } }]
contexts: [{ name: none, context: { cluster: none } }]
current-context: none
`;

/** Where `kubectl` is installed, its kustomize renders each kustomization. */
Deno.test("kubectl kustomize renders the namespace and image into every object", async (t) => {
  const home = await Deno.makeTempDir({ prefix: "tcpecho-kubeconfig-" });
  try {
    const env = { KUBECONFIG: `${home}/config` };
    await Deno.writeTextFile(env.KUBECONFIG, NO_CLUSTER);
    // Deno.Command#output() throws at once, not in its promise, when there
    // is no such program.
    let kubectl = false;
    try {
      ({ success: kubectl } = await new Deno.Command("kubectl", {
        args: ["version", "--client"],
        env,
        stdout: "null",
        stderr: "null",
        signal: AbortSignal.timeout(30_000),
      }).output());
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    for (
      const { dir, kustomization, manifests } of await loadKustomizations()
    ) {
      await t.step({
        name: kubectl
          ? `kubectl kustomize deploy/kubernetes/${dir}`
          : `ignored: no kubectl here to render deploy/kubernetes/${dir}`,
        ignore: !kubectl,
        async fn() {
          const { code, stdout, stderr } = await new Deno.Command("kubectl", {
            args: ["kustomize", new URL(dir, KUBERNETES).pathname],
            env,
            stdin: "null",
            stdout: "piped",
            stderr: "piped",
            signal: AbortSignal.timeout(30_000),
          }).output();
          assert.equal(code, 0, new TextDecoder().decode(stderr));
          const rendered = parseAllDocuments(new TextDecoder().decode(stdout))
            .map((doc) => doc.toJS());
          assert.equal(rendered.length, manifests.length);
          const [{ newName, newTag }] = kustomization.images;
          for (const object of rendered) {
            if (object.kind !== "Namespace") {
              assert.equal(object.metadata.namespace, kustomization.namespace);
            }
            for (const c of object.spec?.template?.spec?.containers ?? []) {
              assert.equal(c.image, `${newName}:${newTag}`);
            }
          }
        },
      });
    }
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("labels: the Service selects the server pods and no bench pod", async () => {
  for (const { where, object } of await allManifests()) {
    assert.equal(
      object.metadata.labels?.["app.kubernetes.io/name"],
      NAME,
      where,
    );
    if (object.kind !== "Namespace") {
      assert.ok(object.metadata.labels["app.kubernetes.io/component"], where);
    }
  }
  const matches = (selector: Yaml, labels: Yaml) =>
    Object.entries(selector).every(([k, v]) => labels?.[k] === v);
  const deployment = await object("Deployment");
  const service = await object("Service");
  const pods = deployment.spec.template.metadata.labels;
  assert.ok(matches(deployment.spec.selector.matchLabels, pods));
  assert.deepEqual(service.spec.selector, deployment.spec.selector.matchLabels);
  for (const { where, template } of await podTemplates()) {
    // Each pod template carries its owner's name and component labels.
    assert.equal(template.metadata.labels["app.kubernetes.io/name"], NAME);
    assert.equal(
      matches(service.spec.selector, template.metadata.labels),
      template === deployment.spec.template,
      `${where}: the Service's selector`,
    );
  }
});

/** The containers of the Deployment, with their parsed server command lines. */
async function serverContainers() {
  const deployment = await object("Deployment");
  return (deployment.spec.template.spec.containers as Yaml[]).map((c) => {
    const where = `container ${c.name}`;
    return { c, where, addrs: serverAddrs(parseTcpecho(c.args, where), where) };
  });
}

/** The container port `ref` (a name or a number) points at. */
function containerPort(c: Yaml, ref: string | number): Yaml {
  const port = c.ports?.find((p: Yaml) =>
    p.name === ref || p.containerPort === ref
  );
  assert.ok(port, `container ${c.name}: no port ${ref}`);
  return port;
}

Deno.test("servers: ports, probes and scrape annotations follow their --admin and the Dockerfile", async () => {
  const deployment = await object("Deployment");
  assert.equal(deployment.spec.replicas, 3);
  assert.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0);
  const containers = await serverContainers();
  assert.deepEqual(containers.map(({ addrs }) => addrs.protocol).sort(), [
    "TCP",
    "UDP",
  ]);
  for (const { c, where, addrs } of containers) {
    // Reachable through the pod IP: the Service, the kubelet's probes.
    assert.equal(addrs.host, "0.0.0.0", `${where}: --host`);
    assert.equal(addrs.admin.host, "0.0.0.0", `${where}: --admin`);
    const echo = c.ports.find((p: Yaml) => p.containerPort === addrs.port);
    assert.ok(echo, `${where}: no containerPort ${addrs.port}`);
    assert.equal(echo.protocol, addrs.protocol, `${where}: echo port`);
    const admin = containerPort(c, addrs.admin.port);
    assert.equal(admin.protocol ?? "TCP", "TCP");
    assert.equal(
      c.ports.length,
      2,
      `${where}: ports other than echo and admin`,
    );
    for (
      const [probe, path] of [
        ["readinessProbe", "/readyz"],
        ["livenessProbe", "/healthz"],
      ]
    ) {
      const get = c[probe]?.httpGet;
      assert.equal(get?.path, path, `${where}: ${probe}`);
      assert.equal(
        containerPort(c, get.port).containerPort,
        addrs.admin.port,
        `${where}: ${probe} port`,
      );
      assert.equal(get.scheme ?? "HTTP", "HTTP");
    }
  }
  // The TCP server runs the image's own CMD, adding options only, and its
  // metrics are the ones scraped.
  const { cmd, addrs: image } = await imageCommand();
  const tcp = containers.find(({ addrs }) => addrs.protocol === "TCP")!;
  assert.deepEqual(tcp.c.args.slice(0, cmd.length), cmd);
  const annotations = deployment.spec.template.metadata.annotations;
  assert.equal(annotations["prometheus.io/scrape"], "true");
  assert.equal(annotations["prometheus.io/port"], String(image.admin.port));
  assert.equal(annotations["prometheus.io/path"], "/metrics");
  // The image EXPOSEs the ports its containers declare.
  const { stages } = await loadDockerfile();
  const exposed = find(stages.at(-1)!, "EXPOSE").flatMap((i) =>
    i.getArguments().map((a) => a.getValue().toUpperCase())
  );
  for (const { addrs } of containers) {
    assert.ok(exposed.includes(`${addrs.port}/${addrs.protocol}`));
  }
});

Deno.test("Service: each port reaches a container port of the same protocol", async () => {
  const service = await object("Service");
  const containers = await serverContainers();
  const seen = new Set<string>();
  for (const port of service.spec.ports) {
    const target = containers.flatMap(({ c }) => c.ports)
      .find((p: Yaml) =>
        p.name === port.targetPort || p.containerPort === port.targetPort
      );
    assert.ok(target, `Service port ${port.name}: no ${port.targetPort}`);
    assert.equal(port.protocol ?? "TCP", target.protocol ?? "TCP", port.name);
    seen.add(`${target.containerPort}/${target.protocol ?? "TCP"}`);
  }
  // The echo port over TCP and UDP, and the TCP server's admin port.
  const { addrs } = await imageCommand();
  for (
    const want of [
      `${addrs.port}/TCP`,
      `${addrs.port}/UDP`,
      `${addrs.admin.port}/TCP`,
    ]
  ) {
    assert.ok(seen.has(want), `the Service has no port for ${want}`);
  }
});

Deno.test("servers stop within the grace period: preStop sleep + --shutdown-timeout < terminationGracePeriodSeconds", async () => {
  const deployment = await object("Deployment");
  const graceS = deployment.spec.template.spec.terminationGracePeriodSeconds;
  assert.ok(Number.isInteger(graceS), "no terminationGracePeriodSeconds");
  const containers = await serverContainers();
  // The TCP server drains connections: its timeout is set, not left to the
  // default.
  const tcp = containers.find(({ addrs }) => addrs.protocol === "TCP")!;
  assert.ok(tcp.c.args.includes("--shutdown-timeout"), "--shutdown-timeout");
  assert.ok(tcp.addrs.shutdownTimeoutMs > SERVE_DEFAULTS.shutdownTimeoutMs);
  for (const { c, where, addrs } of containers) {
    const sleepS = c.lifecycle?.preStop?.sleep?.seconds ?? 0;
    assert.ok(sleepS > 0, `${where}: no preStop sleep`);
    // SIGTERM comes after preStop; the drain then takes at most the
    // shutdown timeout. A second's slack at least, for the exit itself.
    const needS = sleepS + addrs.shutdownTimeoutMs / 1000 + 1;
    assert.ok(
      graceS >= needS,
      `${where}: ${sleepS} s preStop + ${
        addrs.shutdownTimeoutMs / 1000
      } s drain + 1 s > ${graceS} s grace`,
    );
  }
});

Deno.test("every pod meets Pod Security 'restricted' and has resource requests", async () => {
  const namespace = await object("Namespace");
  assert.equal(
    namespace.metadata.labels["pod-security.kubernetes.io/enforce"],
    "restricted",
  );
  const { uid, gid } = await imageUser();
  const templates = await podTemplates();
  assert.equal(templates.length, 3);
  for (const { where, template } of templates) {
    const spec = template.spec;
    const pod = spec.securityContext;
    assert.equal(pod?.runAsNonRoot, true, `${where}: runAsNonRoot`);
    assert.equal(pod.runAsUser, uid, `${where}: runAsUser (the image's USER)`);
    if (gid !== undefined) assert.equal(pod.runAsGroup, gid, where);
    assert.equal(pod.seccompProfile?.type, "RuntimeDefault", where);
    assert.equal(spec.automountServiceAccountToken, false, where);
    for (const host of ["hostNetwork", "hostPID", "hostIPC"]) {
      assert.ok(!spec[host], `${where}: ${host}`);
    }
    for (const volume of spec.volumes ?? []) {
      const kinds = Object.keys(volume).filter((k) => k !== "name");
      assert.ok(
        kinds.length === 1 &&
          ["emptyDir", "persistentVolumeClaim"].includes(kinds[0]),
        `${where}: volume ${volume.name} is ${kinds}`,
      );
    }
    const containers = [...spec.initContainers ?? [], ...spec.containers];
    for (const c of containers) {
      const at = `${where}: container ${c.name}`;
      const sc = c.securityContext;
      assert.equal(sc?.runAsNonRoot, true, `${at}: runAsNonRoot`);
      assert.equal(sc.readOnlyRootFilesystem, true, `${at}: read-only root`);
      assert.equal(sc.allowPrivilegeEscalation, false, at);
      assert.deepEqual(sc.capabilities, { drop: ["ALL"] }, at);
      assert.ok(!sc.privileged, at);
      assert.ok(!("runAsUser" in sc) || sc.runAsUser !== 0, at);
      const { requests, limits } = c.resources ?? {};
      assert.ok(requests?.cpu && requests?.memory, `${at}: requests`);
      assert.ok(limits?.memory, `${at}: memory limit`);
      // A read-only root, so the binary's $TMPDIR is a volume.
      assert.ok(
        c.volumeMounts?.some((m: Yaml) => m.mountPath === "/tmp"),
        `${at}: no /tmp volume`,
      );
    }
  }
});

Deno.test("every tcpecho command line in the image and the manifests passes its command's own check()", async () => {
  const { cmd } = await imageCommand();
  const lines: [string, string[]][] = [["Dockerfile CMD", cmd]];
  for (const { where, template } of await podTemplates()) {
    for (const c of template.spec.containers) {
      lines.push([`${where}: container ${c.name}`, c.args]);
    }
  }
  assert.equal(lines.length, 5, "the CMD, two servers, bench and merge");
  for (const [where, args] of lines) parseTcpecho(args, where);
  // What run() would refuse, check() refuses: the checks are really run.
  assert.throws(
    () => parseTcpecho(["server", "--udp", "--unix", "/s"], "bad"),
    /^AssertionError.*bad: tcpecho server --udp --unix \/s: --unix cannot go with --udp$/,
  );
  assert.throws(
    () => parseTcpecho(["bench", "--udp", "--rate", "5"], "bad"),
    /--rate cannot go with --udp$/,
  );
  assert.throws(
    () => parseTcpecho(["bench", "merge"], "bad"),
    /bench merge needs one or more --hlog files$/,
  );
});

/** The bench Job and what its pods run. */
async function benchJob() {
  const job = await object("Job", "tcpecho-bench");
  const [c, ...others] = job.spec.template.spec.containers;
  assert.deepEqual(others, [], "one container");
  const line = parseTcpecho(c.args, "bench container");
  assert.equal(line.command, "bench");
  const hlog = line.values.hlog;
  assert.equal(typeof hlog, "string", "bench has no --hlog FILE");
  return { job, c, line, hlog: hlog as string };
}

/** The volume mounted at the directory of `path`, and that mount. */
function mountOf(spec: Yaml, c: Yaml, path: string) {
  const mount = c.volumeMounts.find((m: Yaml) =>
    path.startsWith(`${m.mountPath}/`)
  );
  assert.ok(mount, `${c.name}: nothing mounted over ${path}`);
  const volume = spec.volumes.find((v: Yaml) => v.name === mount.name);
  return { mount, volume };
}

Deno.test("bench Job: N indexed pods, each bench --hlog to the shared volume, against the Service", async () => {
  const { job, c, line, hlog } = await benchJob();
  const { completions, parallelism, completionMode } = job.spec;
  assert.equal(completionMode, "Indexed");
  assert.ok(completions >= 2, "completions");
  assert.equal(parallelism, completions, "all at once");
  assert.equal(job.spec.suspend ?? false, false);
  assert.equal(job.spec.template.spec.restartPolicy, "Never");
  // Pod i writes bench-i.hlog: the index comes from the pod's annotation.
  assert.match(hlog, /\/bench-\$\(BENCH_INDEX\)\.hlog$/);
  const index = c.env.find((e: Yaml) => e.name === "BENCH_INDEX");
  assert.equal(
    index?.valueFrom?.fieldRef?.fieldPath,
    "metadata.annotations['batch.kubernetes.io/job-completion-index']",
  );
  // Into a volume that all of them, on any node, share.
  const { volume } = mountOf(job.spec.template.spec, c, hlog);
  const pvc = await object("PersistentVolumeClaim");
  assert.equal(volume.persistentVolumeClaim?.claimName, pvc.metadata.name);
  assert.ok(pvc.spec.accessModes.includes("ReadWriteMany"));
  // Against the Service's TCP echo port.
  const service = await object("Service");
  const values = line.values as Record<string, string | undefined>;
  const host = values.host ?? CONNECT_DEFAULTS.hostname;
  const { name, namespace } = service.metadata;
  assert.ok(
    [name, `${name}.${namespace}`, `${name}.${namespace}.svc`].includes(host) ||
      host === `${name}.${namespace}.svc.cluster.local`,
    `bench --host ${host}: not the Service`,
  );
  const port = integer(values, "port") ?? CONNECT_DEFAULTS.port;
  assert.ok(
    service.spec.ports.some((p: Yaml) =>
      p.port === port && (p.protocol ?? "TCP") === "TCP"
    ),
    `bench --port ${port}: not a TCP port of the Service`,
  );
  // The Job outlives the measurement it runs.
  const runS = ((secondsMs(values, "duration") ?? BENCH_DEFAULTS.durationMs) +
    BENCH_DEFAULTS.warmupMs) / 1000;
  assert.ok(job.spec.activeDeadlineSeconds > 2 * runS, "activeDeadlineSeconds");
});

Deno.test("merge Job: created suspended, then bench merge over exactly the N logs", async () => {
  const bench = await benchJob();
  const merge = await object("Job", "tcpecho-bench-merge");
  assert.equal(merge.spec.suspend, true, "starts before the bench is done");
  const [c, ...others] = merge.spec.template.spec.containers;
  assert.deepEqual(others, [], "one container");
  const line = parseTcpecho(c.args, "merge container");
  assert.equal(line.command, "bench merge");
  const files = Array.from(
    { length: bench.job.spec.completions },
    (_, i) => bench.hlog.replace("$(BENCH_INDEX)", String(i)),
  );
  assert.deepEqual(line.positionals, files);
  // The same volume, at the same place, read-only.
  const ours = mountOf(merge.spec.template.spec, c, files[0]);
  const theirs = mountOf(bench.job.spec.template.spec, bench.c, bench.hlog);
  assert.equal(ours.mount.mountPath, theirs.mount.mountPath);
  assert.deepEqual(ours.volume, theirs.volume);
  assert.equal(ours.mount.readOnly, true);
});

Deno.test("release.yml builds the Dockerfile's architectures and smoke-tests its CMD's ports", async () => {
  const release = parse(
    await Deno.readTextFile(new URL(".github/workflows/release.yml", ROOT)),
  );
  const steps: Yaml[] = release.jobs.image.steps;
  const archs = [...(await archTargets()).keys()].sort();
  const builds = steps.filter((s) =>
    String(s.uses ?? "").startsWith("docker/build-push-action@")
  );
  const pushed = builds.filter((s) => s.with.push === true);
  assert.equal(pushed.length, 1);
  assert.deepEqual(
    pushed[0].with.platforms.split(",").sort(),
    archs.map((arch) => `linux/${arch}`),
  );
  // Each architecture is loaded and smoke-tested by itself first.
  const loaded = builds.filter((s) => s.with.load === true);
  assert.deepEqual(loaded.map((s) => s.with.platforms).sort(), [
    ...archs.map((arch) => `linux/${arch}`),
  ]);
  for (const s of loaded) {
    assert.equal(s.with.tags, `tcpecho:smoke-${s.with.platforms.slice(6)}`);
  }
  const smoke = steps.find((s) => /docker stop/.test(s.run ?? ""))?.run;
  assert.ok(smoke, "no smoke test");
  assert.match(
    smoke,
    new RegExp(`^\\s*for arch in ${archs.join(" ")}; do$`, "m"),
  );
  const { addrs } = await imageCommand();
  for (const port of [addrs.port, addrs.admin.port]) {
    assert.ok(
      smoke.includes(`--publish 127.0.0.1:${port}:${port}`),
      `the smoke test does not publish ${port}`,
    );
  }
  assert.ok(smoke.includes(`client --port ${addrs.port}`));
  assert.ok(smoke.includes(`listening on ${addrs.host}:${addrs.port}`));
  const { uid, gid } = await imageUser();
  assert.ok(
    smoke.includes(
      `[[ $user == ${uid}${gid === undefined ? "" : `:${gid}`} ]]`,
    ),
  );
});
