/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * A worker for limits_test.ts: takes and gives back permits of a
 * SharedConnLimits while another worker does the same, as the server's
 * workers do.
 *
 * Messages in: `{ data, go, plan }`, then (hold plan) `"release"`. `go`
 * holds two words: the start flag, and how many workers wait for it.
 * Messages out: `{ got }` (hold: how many permits per address it holds), then
 * `{ done: true }` once it holds none.
 */
import { SharedConnLimits, type SharedLimitsData } from "../_limits.ts";

type Plan =
  /** Ask for each address `tries` times, keep what is granted until "release". */
  | { kind: "hold"; ips: string[]; tries: number }
  /** `rounds` random acquires, holding at most `keep`, then give all back. */
  | {
    kind: "churn";
    ips: string[];
    rounds: number;
    keep: number;
    seed: number;
  };

let held: { ip: string; permit: Disposable }[] = [];

self.onmessage = (e: MessageEvent) => {
  if (e.data === "release") {
    for (const { permit } of held) permit[Symbol.dispose]();
    held = [];
    self.postMessage({ done: true });
    return;
  }
  const { data, go, plan } = e.data as {
    data: SharedLimitsData;
    go: SharedArrayBuffer;
    plan: Plan;
  };
  const limits = new SharedConnLimits(data);
  // Both start together: say ready, wait for the go.
  const flag = new Int32Array(go);
  Atomics.add(flag, 1, 1);
  Atomics.notify(flag, 1);
  while (Atomics.load(flag, 0) === 0) Atomics.wait(flag, 0, 0);
  if (plan.kind === "hold") {
    for (let t = 0; t < plan.tries; t++) {
      for (const ip of plan.ips) {
        const permit = limits.acquire(ip);
        if (permit !== undefined) held.push({ ip, permit });
      }
    }
    const got: Record<string, number> = {};
    for (const { ip } of held) got[ip] = (got[ip] ?? 0) + 1;
    self.postMessage({ got });
    return;
  }
  let seed = plan.seed;
  const random = (n: number) => { // xorshift32: the same run for a seed
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  for (let r = 0; r < plan.rounds; r++) {
    const ip = plan.ips[random(plan.ips.length)];
    const permit = limits.acquire(ip);
    if (permit !== undefined) held.push({ ip, permit });
    if (held.length > plan.keep) {
      const [gone] = held.splice(random(held.length), 1);
      gone.permit[Symbol.dispose]();
    }
  }
  for (const { permit } of held) permit[Symbol.dispose]();
  held = [];
  self.postMessage({ done: true });
};
