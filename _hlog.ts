/**
 * HdrHistogram interval logs, format 1.3 (private to bench): the V2
 * compressed histogram codec (ZigZag LEB128 counts, zlib, base64, as
 * HdrHistogram's Java reference writes it), a writer that appends one
 * interval line a second, and a reader. Histograms are tcpecho's
 * {@linkcode LatencyHistogram} layout: nanoseconds, 3 significant digits.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { deflateSync, inflateSync } from "node:zlib";
import {
  COUNTS_LENGTH,
  HIGHEST_TRACKABLE_NS,
  LatencyHistogram,
  LOWEST_DISCERNIBLE_NS,
  SIGNIFICANT_DIGITS,
  valueFromIndex,
} from "./_histogram.ts";
import { benchResult } from "./_bench_report.ts";
import type { BenchIntervalListener, BenchResult } from "./_bench_types.ts";

const V2_COOKIE = 0x1c849303 | 0x10; // LSBit of the word size: TLZE encoding
const V2_COMPRESSED_COOKIE = 0x1c849304 | 0x10;
const HEADER_BYTES = 40;
/** Interval_Max is written in ms (ns / 1e6), as HdrHistogram's tools expect. */
const MAX_UNIT_RATIO = 1e6;
/** The tag of the uncorrected histograms of an open-loop (`--rate`) run. */
export const UNCORRECTED_TAG = "uncorrected";

function putZigZag(out: number[], value: number): void {
  let v = value >= 0 ? value * 2 : -value * 2 - 1;
  for (let i = 0; i < 8; i++) {
    if (v < 128) {
      out.push(v);
      return;
    }
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v); // the 9th byte holds 8 bits
}

function getZigZag(bytes: Uint8Array, at: { pos: number }): number {
  let v = 0;
  let scale = 1;
  for (let i = 0; i < 9; i++) {
    const byte = bytes[at.pos++];
    if (byte === undefined) throw new RangeError("histogram payload cut short");
    if (i === 8) {
      v += byte * scale;
      break;
    }
    v += (byte & 0x7f) * scale;
    scale *= 128;
    if (byte < 0x80) break;
  }
  return v % 2 === 0 ? v / 2 : -(v + 1) / 2;
}

/** `histogram` as a base64 V2 compressed HdrHistogram (`HISTF…`). */
export function encodeHistogram(histogram: LatencyHistogram): string {
  const { indices, counts } = histogram.toSparse();
  const payload: number[] = [];
  let next = 0; // the index the payload has reached
  for (let i = 0; i < indices.length; i++) {
    const zeros = indices[i] - next;
    if (zeros === 1) putZigZag(payload, 0);
    else if (zeros > 1) putZigZag(payload, -zeros);
    putZigZag(payload, counts[i]);
    next = indices[i] + 1;
  }
  const raw = new DataView(new ArrayBuffer(HEADER_BYTES + payload.length));
  raw.setInt32(0, V2_COOKIE);
  raw.setInt32(4, payload.length);
  raw.setInt32(8, 0); // normalizing index offset
  raw.setInt32(12, SIGNIFICANT_DIGITS);
  raw.setBigInt64(16, BigInt(LOWEST_DISCERNIBLE_NS));
  raw.setBigInt64(24, BigInt(HIGHEST_TRACKABLE_NS));
  raw.setFloat64(32, 1); // integer to double conversion ratio
  new Uint8Array(raw.buffer).set(payload, HEADER_BYTES);
  const compressed = deflateSync(new Uint8Array(raw.buffer));
  const out = Buffer.alloc(8 + compressed.length);
  out.writeInt32BE(V2_COMPRESSED_COOKIE, 0);
  out.writeInt32BE(compressed.length, 4);
  compressed.copy(out, 8);
  return out.toString("base64");
}

/**
 * Decodes a base64 V2 compressed HdrHistogram of tcpecho's layout (lowest
 * discernible value 1, 3 significant digits; any highest value).
 *
 * @param maxNs the exact largest value when known (the log's Interval_Max).
 * @throws {RangeError} when it is not such a histogram.
 */
export function decodeHistogram(
  base64: string,
  maxNs?: number,
): LatencyHistogram {
  const data = Buffer.from(base64.trim(), "base64");
  if (data.length < 8 || data.readInt32BE(0) !== V2_COMPRESSED_COOKIE) {
    throw new RangeError("not a V2 compressed HdrHistogram");
  }
  const raw = new Uint8Array(
    inflateSync(data.subarray(8, 8 + data.readInt32BE(4))),
  );
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (raw.length < HEADER_BYTES || view.getInt32(0) !== V2_COOKIE) {
    throw new RangeError("not a V2 HdrHistogram");
  }
  const digits = view.getInt32(12);
  const lowest = Number(view.getBigInt64(16));
  if (digits !== SIGNIFICANT_DIGITS || lowest !== LOWEST_DISCERNIBLE_NS) {
    throw new RangeError(
      `histogram of ${digits} significant digits from ${lowest}: ` +
        `expected ${SIGNIFICANT_DIGITS} digits from ${LOWEST_DISCERNIBLE_NS} (a tcpecho bench log)`,
    );
  }
  const end = HEADER_BYTES + view.getInt32(4);
  const indices: number[] = [];
  const counts: number[] = [];
  const at = { pos: HEADER_BYTES };
  for (let index = 0; at.pos < end;) {
    const count = getZigZag(raw, at);
    if (count < 0) {
      index -= count;
      continue;
    }
    if (count > 0) {
      indices.push(Math.min(index, COUNTS_LENGTH - 1));
      counts.push(count);
    }
    index++;
  }
  const histogram = new LatencyHistogram();
  if (indices.length === 0) return histogram;
  const lastIndex = indices.at(-1)!;
  const top = valueFromIndex(lastIndex + 1) - 1; // highest value of its slot
  histogram.addSparse({
    indices,
    counts,
    minNs: valueFromIndex(indices[0]),
    maxNs:
      maxNs !== undefined && maxNs >= valueFromIndex(lastIndex) && maxNs <= top
        ? maxNs
        : top,
  });
  return histogram;
}

/** What a `tcpecho bench` log says about its run (a comment line). */
export interface HlogRun {
  /** The target, as the report header names it. */
  target: string;
  /** `pingpong` or `connect`. */
  pattern: string;
  /** Connections (connect: parallel slots). */
  connections: number;
  /** Message size in bytes. */
  size: number;
  /** Open-loop target rate, or null. */
  rate: number | null;
  /** A run over UDP (`bench --udp`); absent over TCP. */
  udp?: true;
}

/** A run's totals that histograms do not hold: the log's last line. */
export interface HlogEnd {
  /** Errors of the whole run. */
  errors: number;
  /** UDP: replies lost in the window; absent over TCP. */
  lost?: number;
}

const RUN_PREFIX = "# tcpecho bench ";
const END_PREFIX = "# tcpecho end ";

/** Writes an interval log to a file as the run goes: header, one line per interval, footer. */
export class HlogWriter implements Disposable {
  #file: Deno.FsFile;
  #run: HlogRun;
  #baseMs: number | undefined;
  #encoder = new TextEncoder();

  /**
   * Creates (or truncates) `path`; the header is written with the first
   * interval, whose start is the log's base time.
   *
   * @throws {Error} `cannot write --hlog file "PATH"`
   */
  constructor(path: string, run: HlogRun) {
    try {
      this.#file = Deno.openSync(path, {
        write: true,
        create: true,
        truncate: true,
      });
    } catch (cause) {
      throw new Error(`cannot write --hlog file "${path}"`, { cause });
    }
    this.#run = run;
  }

  #header(startMs: number): number {
    const seconds = (startMs / 1000).toFixed(3);
    this.#write(
      "#[Histogram log format version 1.3]\n" +
        `#[StartTime: ${seconds} (seconds since epoch), ${
          new Date(startMs).toUTCString()
        }]\n` +
        `#[BaseTime: ${seconds} (seconds since epoch)]\n` +
        `${RUN_PREFIX}${JSON.stringify(this.#run)}\n` +
        '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"\n',
    );
    return startMs;
  }

  /** Appends one interval (`startMs`, `endMs` since the epoch), with an optional tag. */
  interval(
    startMs: number,
    endMs: number,
    histogram: LatencyHistogram,
    tag?: string,
  ): void {
    const baseMs = this.#baseMs ??= this.#header(startMs);
    const start = ((startMs - baseMs) / 1000).toFixed(3);
    const length = ((endMs - startMs) / 1000).toFixed(3);
    const max = (histogram.max * 1000 / MAX_UNIT_RATIO).toFixed(6);
    this.#write(
      `${tag ? `Tag=${tag},` : ""}${start},${length},${max},${
        encodeHistogram(histogram)
      }\n`,
    );
  }

  /** The listener that logs each second of the window (and the uncorrected histograms, tagged). */
  listener(): BenchIntervalListener {
    return {
      everyMs: 1000,
      onInterval: (interval) => {
        const { startEpochMs, endEpochMs, histogram, uncorrected } = interval;
        this.interval(startEpochMs, endEpochMs, histogram);
        if (uncorrected) {
          this.interval(startEpochMs, endEpochMs, uncorrected, UNCORRECTED_TAG);
        }
      },
    };
  }

  /** Appends the run's totals that histograms do not hold (errors, UDP losses). */
  end(totals: HlogEnd): void {
    this.#baseMs ??= this.#header(performance.timeOrigin + performance.now());
    this.#write(`${END_PREFIX}${JSON.stringify(totals)}\n`);
  }

  #write(text: string): void {
    const bytes = this.#encoder.encode(text);
    for (let done = 0; done < bytes.length;) {
      done += this.#file.writeSync(bytes.subarray(done));
    }
  }

  /** Closes the file. */
  [Symbol.dispose](): void {
    this.#file[Symbol.dispose]();
  }
}

/** One interval line of a log. */
export interface HlogInterval {
  /** Its tag (`uncorrected`), or undefined. */
  tag?: string;
  /** Start, seconds since the epoch. */
  startSec: number;
  /** Length in seconds. */
  lengthSec: number;
  /** Its values. */
  histogram: LatencyHistogram;
}

/** A parsed interval log. */
export interface Hlog {
  /** The run's settings, from a tcpecho log's comment (undefined for other logs). */
  run?: HlogRun;
  /** The run's totals (undefined when the run did not finish writing). */
  end?: HlogEnd;
  /** Every interval line, in order. */
  intervals: HlogInterval[];
}

/**
 * Parses an interval log (format 1.2 or 1.3).
 *
 * @throws {RangeError} naming the line that cannot be read.
 */
export function parseHlog(text: string): Hlog {
  const log: Hlog = { intervals: [] };
  let startSec = 0;
  let baseSec: number | undefined;
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    try {
      if (line.startsWith("#[StartTime: ")) {
        startSec = Number.parseFloat(line.split(" ")[1]);
      } else if (line.startsWith("#[BaseTime: ")) {
        baseSec = Number.parseFloat(line.split(" ")[1]);
      } else if (line.startsWith(RUN_PREFIX)) {
        log.run = JSON.parse(line.slice(RUN_PREFIX.length));
      } else if (line.startsWith(END_PREFIX)) {
        log.end = JSON.parse(line.slice(END_PREFIX.length));
      } else if (
        line !== "" && !line.startsWith("#") && !line.startsWith('"')
      ) {
        const fields = line.split(",");
        const tag = fields[0].startsWith("Tag=")
          ? fields.shift()!.slice(4)
          : undefined;
        if (fields.length !== 4) throw new RangeError("expected 4 fields");
        const [start, length, max] = fields.slice(0, 3).map(Number);
        if (![start, length, max].every(Number.isFinite)) {
          throw new RangeError("expected numbers");
        }
        // Relative timestamps unless they look absolute (HdrHistogram's rule).
        baseSec ??= start < startSec - 365 * 24 * 3600 ? startSec : 0;
        log.intervals.push({
          tag,
          startSec: baseSec + start,
          lengthSec: length,
          histogram: decodeHistogram(
            fields[3],
            Math.round(max * MAX_UNIT_RATIO),
          ),
        });
      }
    } catch (err) {
      throw new RangeError(
        `line ${i + 1}: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }
  return log;
}

/** The merge of several logs: one result and its histograms. */
export interface MergedLogs {
  /** As `bench --json` prints it; `per_conn` is null (logs do not hold it). */
  result: BenchResult;
  /** Every untagged interval added up. */
  histogram: LatencyHistogram;
  /** Every `uncorrected` interval added up (open-loop runs). */
  uncorrected?: LatencyHistogram;
  /** The logs are of `bench --udp` runs. */
  udp: boolean;
}

/**
 * Adds up the logs of several `bench --hlog` runs, on one machine or many:
 * histograms exactly, connections, rates and errors summed, and the rates
 * over the wall-clock time the logs span together (concurrent runs add up,
 * runs one after the other average).
 *
 * @throws {RangeError} for a log that is not a tcpecho bench log, or logs of
 *   different patterns, message sizes or transports (TCP, UDP).
 */
export function mergeHlogs(logs: { name: string; text: string }[]): MergedLogs {
  const histogram = new LatencyHistogram();
  let uncorrected: LatencyHistogram | undefined;
  let first: HlogRun | undefined;
  let connections = 0;
  let rate = 0;
  let errors = 0;
  let lost = 0;
  let startSec = Infinity;
  let endSec = -Infinity;
  for (const { name, text } of logs) {
    let log: Hlog;
    try {
      log = parseHlog(text);
      if (log.run === undefined) {
        throw new RangeError(
          'no "# tcpecho bench" line: not a tcpecho bench log',
        );
      }
    } catch (cause) {
      throw new RangeError(`cannot read "${name}"`, { cause });
    }
    const run = log.run;
    first ??= run;
    if (run.pattern !== first.pattern || run.size !== first.size) {
      throw new RangeError(
        `cannot merge "${name}": ${run.pattern} with ${run.size}-byte messages, ` +
          `the first log has ${first.pattern} with ${first.size}-byte messages`,
      );
    }
    if ((run.udp ?? false) !== (first.udp ?? false)) {
      const transport = (r: HlogRun) => r.udp ? "UDP" : "TCP";
      throw new RangeError(
        `cannot merge "${name}": a ${transport(run)} run, the first log has a ${
          transport(first)
        } run`,
      );
    }
    connections += run.connections;
    rate += run.rate ?? 0;
    errors += log.end?.errors ?? 0;
    lost += log.end?.lost ?? 0;
    for (const interval of log.intervals) {
      if (interval.tag === UNCORRECTED_TAG) {
        (uncorrected ??= new LatencyHistogram()).add(interval.histogram);
      } else if (interval.tag === undefined) {
        histogram.add(interval.histogram);
      } else continue;
      startSec = Math.min(startSec, interval.startSec);
      endSec = Math.max(endSec, interval.startSec + interval.lengthSec);
    }
  }
  if (first === undefined) throw new RangeError("no log to merge");
  const messages = histogram.count;
  const result = benchResult({
    pattern: first.pattern as "pingpong" | "connect",
    connections,
    sizeBytes: first.size,
    windowMs: endSec > startSec ? (endSec - startSec) * 1000 : 0,
    messages,
    bytes: messages * first.size,
    histogram,
    uncorrected,
    errors,
    rate,
    lost,
    perConnection: null,
  });
  return { result, histogram, uncorrected, udp: first.udp ?? false };
}
