import assert from "node:assert/strict";
import * as hdr from "hdr-histogram-js";
import { LatencyHistogram } from "./_histogram.ts";
import {
  decodeHistogram,
  encodeHistogram,
  HlogWriter,
  mergeHlogs,
  parseHlog,
  UNCORRECTED_TAG,
} from "./_hlog.ts";
import { runBench } from "./bench.ts";
import { benchJson, echoServer, runCli } from "./testing_cli.ts";

// hdr-histogram-js, HdrHistogram's own JavaScript port, is the independent
// reader (and writer) these tests check our files against.

function sample(n: number, seed = 7): LatencyHistogram {
  const histogram = new LatencyHistogram();
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    histogram.record(0.05 * 10 ** (seed / 2 ** 31 * 8)); // 50 ns to 5 s
  }
  return histogram;
}

Deno.test("encodeHistogram() is read by hdr-histogram-js, and decodeHistogram() reads what it writes", () => {
  const ours = sample(100_000);
  ours.recordNs(3_000_000_000_000); // near the top: 50 minutes
  const theirs = hdr.decodeFromCompressedBase64(encodeHistogram(ours));
  assert.equal(theirs.totalCount, ours.count);
  assert.equal(theirs.numberOfSignificantValueDigits, 3);
  for (const p of [1, 50, 90, 99, 99.9, 99.99]) {
    // theirs: the slot's highest value; ours: its middle, within 0.05%
    const a = theirs.getValueAtPercentile(p) / 1000;
    assert.ok(Math.abs(a - ours.percentile(p)) <= a * 0.001, `p${p}`);
  }
  const built = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 3_600_000_000_000,
    numberOfSignificantValueDigits: 3,
  });
  for (let i = 1; i < 5000; i++) built.recordValue(i * 977);
  const back = decodeHistogram(hdr.encodeIntoCompressedBase64(built));
  assert.equal(back.count, 4999);
  assert.equal(
    back.percentile(50),
    decodeHistogram(encodeHistogram(back)).percentile(50),
  );
  assert.deepEqual(decodeHistogram(encodeHistogram(ours)).counts, ours.counts);
  assert.throws(() => decodeHistogram("bm90IGEgaGlzdG9ncmFt"), RangeError);
});

/** Runs a short bench writing `path` and returns the result and the window's histogram. */
async function loggedRun(port: number, path: string, rate?: number) {
  const histogram = new LatencyHistogram();
  using log = new HlogWriter(path, {
    target: `127.0.0.1:${port}`,
    pattern: "pingpong",
    connections: 2,
    size: 64,
    rate: rate ?? null,
  });
  const result = await runBench({
    port,
    connections: 2,
    durationMs: 1300,
    warmupMs: 0,
    rate,
    intervals: [log.listener(), {
      everyMs: 250,
      onInterval: (i) => histogram.add(i.histogram),
    }],
  });
  log.end({ errors: result.errors });
  return { result, histogram };
}

Deno.test("an --hlog file is read back by hdr-histogram-js's HistogramLogReader", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using server = echoServer();
    const path = `${dir}/run.hlog`;
    const { result } = await loggedRun(server.port, path, 2000);
    const text = await Deno.readTextFile(path);
    assert.match(
      text,
      /^#\[Histogram log format version 1\.3\]\n#\[StartTime: \d+\.\d{3} /,
    );
    const reader = new hdr.HistogramLogReader(text);
    let total = 0;
    let uncorrected = 0;
    let lines = 0;
    for (
      let h = reader.nextIntervalHistogram();
      h;
      h = reader.nextIntervalHistogram()
    ) {
      lines++;
      if (h.tag === UNCORRECTED_TAG) uncorrected += h.totalCount;
      else total += h.totalCount;
      assert.ok(h.endTimeStampMsec - h.startTimeStampMsec <= 1005);
    }
    assert.equal(
      lines,
      4,
      "2 seconds (1 s + 0.3 s), corrected and uncorrected",
    );
    assert.equal(total, result.messages);
    assert.equal(uncorrected, result.messages);
    assert.deepEqual(hdr.listTags(text), ["NO TAG", UNCORRECTED_TAG]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mergeHlogs() of two runs' logs equals the histogram of both runs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using server = echoServer();
    const a = await loggedRun(server.port, `${dir}/a.hlog`);
    const b = await loggedRun(server.port, `${dir}/b.hlog`);
    const both = new LatencyHistogram();
    both.add(a.histogram);
    both.add(b.histogram);
    const merged = mergeHlogs(
      await Promise.all(["a", "b"].map(async (name) => ({
        name,
        text: await Deno.readTextFile(`${dir}/${name}.hlog`),
      }))),
    );
    assert.deepEqual(merged.histogram.counts, both.counts);
    assert.equal(merged.histogram.max, both.max, "max exact to the ns");
    const { result } = merged;
    assert.equal(result.messages, a.result.messages + b.result.messages);
    assert.equal(result.bytes, a.result.bytes + b.result.bytes);
    assert.equal(result.connections, 4);
    assert.equal(
      result.latency_us!.max,
      Math.max(a.result.latency_us!.max, b.result.latency_us!.max),
    );
    // one after the other: the rate over both windows (and the gap between)
    assert.ok(
      result.duration_s >= 2.6 && result.duration_s < 5,
      `${result.duration_s}`,
    );
    assert.equal(
      parseHlog(await Deno.readTextFile(`${dir}/a.hlog`)).end?.errors,
      0,
    );

    const cli = await benchJson(["merge", `${dir}/a.hlog`, `${dir}/b.hlog`]);
    assert.deepEqual(cli.result, JSON.parse(JSON.stringify(result)));
    const text = await runCli([
      "bench",
      "merge",
      `${dir}/a.hlog`,
      `${dir}/b.hlog`,
    ]);
    assert.match(
      text.stdout,
      /^merge of 2 logs: pingpong, 4 connections, 64-byte messages/,
    );
    await Deno.writeTextFile(`${dir}/c.hlog`, "0.000,1.000,1.0,HISTFAAAAA\n");
    const bad = await runCli(["bench", "merge", `${dir}/c.hlog`]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^error: cannot read ".*c\.hlog": line 1: /);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
