/**
 * Admission limits: both implementations against a plain model (a count and
 * a Map of counts per address), and the shared one under two worker isolates
 * racing on the same memory, as the server's workers do.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type ConnLimits,
  LocalConnLimits,
  SharedConnLimits,
  type SharedLimitsData,
} from "./_limits.ts";
import { watchdog } from "./testing.ts";

/** Addresses that collide in a small table, IPv6 among them. */
const IPS = [
  ...Array.from({ length: 12 }, (_, i) => `10.0.0.${i}`),
  "::1",
  "2001:db8::7",
  "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", // the longest (45 bytes)
  "unix",
];

type Step = { acquire: string } | { release: number };

const steps: fc.Arbitrary<Step[]> = fc.array(
  fc.oneof(
    fc.record({ acquire: fc.constantFrom(...IPS) }),
    fc.record({ release: fc.nat() }),
  ),
  { maxLength: 300 },
);

/** Every word after the header: all zero once no permit is held. */
function tableWords(data: SharedLimitsData): number[] {
  return [...new Int32Array(data.buffer).subarray(2)];
}

/**
 * Runs `plan` against `limits` and the model, step by step: each acquire is
 * granted or refused (with the reason) as the model says; each release is
 * of a permit still held (disposed twice: once counts).
 */
function checkAgainstModel(
  limits: ConnLimits,
  maxConns: number,
  maxConnsPerIp: number,
  plan: Step[],
  counts?: (ip: string) => number,
): void {
  let open = 0;
  const perIp = new Map<string, number>();
  const held: { ip: string; permit: Disposable }[] = [];
  for (const step of plan) {
    if ("acquire" in step) {
      const ip = step.acquire;
      const fromIp = perIp.get(ip) ?? 0;
      const full = open >= maxConns;
      const grant = !full && (maxConnsPerIp === 0 || fromIp < maxConnsPerIp);
      const permit = limits.acquire(ip);
      assert.equal(permit !== undefined, grant, `acquire ${ip}`);
      if (permit === undefined) {
        assert.equal(
          limits.refusal(ip),
          full
            ? `too many connections (max-conns ${maxConns})`
            : `too many connections (max-conns-per-ip ${maxConnsPerIp})`,
        );
        continue;
      }
      held.push({ ip, permit });
      open++;
      perIp.set(ip, fromIp + 1);
    } else if (held.length > 0) {
      const [{ ip, permit }] = held.splice(step.release % held.length, 1);
      permit[Symbol.dispose]();
      permit[Symbol.dispose](); // a second dispose gives nothing back
      open--;
      perIp.set(ip, perIp.get(ip)! - 1);
    }
    if (counts === undefined || maxConnsPerIp === 0) continue;
    for (const ip of IPS) assert.equal(counts(ip), perIp.get(ip) ?? 0, ip);
  }
  for (const { permit } of held) permit[Symbol.dispose]();
}

Deno.test("SharedConnLimits grants and refuses as a count and a Map would", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 0, max: 4 }),
      steps,
      (maxConns, maxConnsPerIp, plan) => {
        const data = SharedConnLimits.create(maxConns, maxConnsPerIp);
        const limits = new SharedConnLimits(data);
        checkAgainstModel(
          limits,
          maxConns,
          maxConnsPerIp,
          plan,
          (ip) => limits.openFrom(ip),
        );
        assert.equal(limits.open, 0);
        assert.ok(tableWords(data).every((w) => w === 0), "table not empty");
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("LocalConnLimits grants and refuses as a count and a Map would", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 0, max: 4 }),
      steps,
      (maxConns, maxConnsPerIp, plan) =>
        checkAgainstModel(
          new LocalConnLimits(maxConns, maxConnsPerIp),
          maxConns,
          maxConnsPerIp,
          plan,
        ),
    ),
    { numRuns: 200 },
  );
});

Deno.test("SharedConnLimits by address alone: no total, a table sized for the server's maxConns", () => {
  // As the pool builds the per-address count of the admission split.
  const data = SharedConnLimits.create(Infinity, 2, 4);
  assert.equal(tableWords(data).length, 8 * 18); // 2 × 4 entries of 18 words
  const limits = new SharedConnLimits(data);
  fc.assert(
    fc.property(steps, (plan) =>
      checkAgainstModel(
        limits,
        Infinity,
        2,
        plan.filter((s) => !("acquire" in s) || IPS.indexOf(s.acquire) < 4),
        (ip) => limits.openFrom(ip),
      )),
    { numRuns: 200 },
  );
  assert.equal(limits.open, 0);
  assert.ok(tableWords(data).every((w) => w === 0), "table not empty");
});

Deno.test("SharedConnLimits refuses an address longer than its key", () => {
  const limits = new SharedConnLimits(SharedConnLimits.create(4, 1));
  assert.throws(() => limits.acquire("x".repeat(65)), RangeError);
  using _ = limits.acquire("x".repeat(64));
  assert.equal(limits.open, 1);
});

/**
 * How long racing workers may take to be ready, and then to answer (they
 * take a second or two): a worker stuck on the lock fails the test instead of
 * hanging it.
 */
const RACE_MS = 30_000;

/** `replies`, or an error saying what never came once `RACE_MS` pass. */
async function answered<T>(replies: Promise<T>, what: string): Promise<T> {
  const late = Promise.withResolvers<never>();
  using _dog = watchdog(RACE_MS, () =>
    late.reject(
      new Error(
        `no answer from the workers in ${RACE_MS / 1000} s (${what}): ` +
          "one stuck on the lock?",
      ),
    ));
  return await Promise.race([replies, late.promise]);
}

/** Starts `n` limits_worker.ts workers on `data`; all begin at `go()`. */
function racers(n: number) {
  const flag = new SharedArrayBuffer(8); // [go, workers ready]
  const workers = Array.from(
    { length: n },
    () =>
      new Worker(new URL("./testdata/limits_worker.ts", import.meta.url), {
        type: "module",
      }),
  );
  const next = (w: Worker) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      w.onmessage = (e) => resolve(e.data);
      w.onerror = (e) => {
        e.preventDefault();
        reject(new Error(e.message));
      };
    });
  return {
    async start(data: SharedLimitsData, plans: unknown[]) {
      const replies = Promise.all(workers.map(next));
      workers.forEach((w, i) =>
        w.postMessage({ data, go: flag, plan: plans[i] })
      );
      const go = new Int32Array(flag);
      const deadline = performance.now() + RACE_MS;
      for (let ready = 0; ready < n; ready = Atomics.load(go, 1)) {
        const left = deadline - performance.now();
        if (left <= 0) {
          throw new Error(
            `${ready} of ${n} workers ready in ${RACE_MS / 1000} s`,
          );
        }
        await Atomics.waitAsync(go, 1, ready, left).value;
      }
      Atomics.store(go, 0, 1);
      Atomics.notify(go, 0);
      return await answered(replies, "permits taken");
    },
    release() {
      const replies = Promise.all(workers.map(next));
      for (const w of workers) w.postMessage("release");
      return answered(replies, "permits given back");
    },
    [Symbol.dispose]() {
      for (const w of workers) w.terminate();
    },
  };
}

Deno.test("SharedConnLimits holds both limits exactly for two racing workers", async () => {
  const ips = IPS.slice(0, 12);
  const perIp = 3;
  const maxConns = 30; // under the 36 the addresses could take
  const data = SharedConnLimits.create(maxConns, perIp);
  const limits = new SharedConnLimits(data);
  using race = racers(2);
  const plan = { kind: "hold", ips, tries: 50 };
  const replies = await race.start(data, [plan, plan]);
  const got = replies.map((r) => r.got as Record<string, number>);
  const total = (ip: string) => got.reduce((sum, g) => sum + (g[ip] ?? 0), 0);
  for (const ip of ips) {
    assert.ok(total(ip) <= perIp, `${ip}: ${total(ip)} held`);
    assert.equal(limits.openFrom(ip), total(ip));
  }
  assert.equal(ips.reduce((sum, ip) => sum + total(ip), 0), maxConns);
  assert.equal(limits.open, maxConns);
  await race.release();
  assert.equal(limits.open, 0);
  assert.ok(tableWords(data).every((w) => w === 0), "table not empty");
});

Deno.test("SharedConnLimits ends empty after two workers churn on one table", async () => {
  // Capacity 16 for 18 addresses: long probes, and shifts on removals.
  const data = SharedConnLimits.create(8, 2);
  const limits = new SharedConnLimits(data);
  using race = racers(2);
  const plan = (seed: number) => ({
    kind: "churn",
    ips: IPS,
    rounds: 1_000_000,
    keep: 5,
    seed,
  });
  await race.start(data, [plan(1), plan(2)]);
  assert.equal(limits.open, 0);
  assert.ok(tableWords(data).every((w) => w === 0), "table not empty");
});
