/**
 * The load generator's latency histogram (private to `bench.ts`), laid out
 * exactly as an HdrHistogram of nanoseconds with 3 significant digits, so its
 * counts array is what an HdrHistogram log carries (`_hlog.ts`) and
 * histograms from workers or logs add up exactly.
 *
 * @module
 */

/** Significant decimal digits kept: a value is off by at most 0.05%. */
export const SIGNIFICANT_DIGITS = 3;
/** Smallest value told apart from 0, in ns. */
export const LOWEST_DISCERNIBLE_NS = 1;
/** Largest value tracked, in ns (one hour); longer ones count as this. */
export const HIGHEST_TRACKABLE_NS = 3_600_000_000_000;

// HdrHistogram's layout for (1, HIGHEST_TRACKABLE_NS, 3): unit magnitude 0.
const SUB_BUCKET_COUNT_MAGNITUDE = Math.ceil(
  Math.log2(2 * 10 ** SIGNIFICANT_DIGITS),
);
const SUB_BUCKET_HALF_COUNT_MAGNITUDE = SUB_BUCKET_COUNT_MAGNITUDE - 1; // 10
const SUB_BUCKET_COUNT = 2 ** SUB_BUCKET_COUNT_MAGNITUDE; // 2048
const SUB_BUCKET_HALF_COUNT = SUB_BUCKET_COUNT / 2; // 1024
const SUB_BUCKET_MASK = SUB_BUCKET_COUNT - 1;
const LEADING_ZERO_COUNT_BASE = 64 - SUB_BUCKET_HALF_COUNT_MAGNITUDE - 1; // 53

function bucketsNeeded(value: number): number {
  let smallestUntrackable = SUB_BUCKET_COUNT;
  let buckets = 1;
  while (smallestUntrackable <= value) {
    smallestUntrackable *= 2;
    buckets++;
  }
  return buckets;
}

/** Length of the counts array (33,792), as HdrHistogram computes it. */
export const COUNTS_LENGTH = (bucketsNeeded(HIGHEST_TRACKABLE_NS) + 1) *
  SUB_BUCKET_HALF_COUNT;

/** Leading zero bits of `value` as a 64-bit integer (value < 2^53). */
function clz64(value: number): number {
  return value >= 2 ** 32
    ? Math.clz32(Math.floor(value / 2 ** 32))
    : 32 + Math.clz32(value);
}

/** Index in the counts array of `ns` (an integer in [0, HIGHEST_TRACKABLE_NS]). */
export function countsIndex(ns: number): number {
  // value | subBucketMask: the mask only matters below 2^32
  const bucket = LEADING_ZERO_COUNT_BASE -
    clz64(ns < 2 ** 32 ? (ns | SUB_BUCKET_MASK) >>> 0 : ns);
  const subBucket = Math.floor(ns / 2 ** bucket);
  return ((bucket + 1) << SUB_BUCKET_HALF_COUNT_MAGNITUDE) +
    (subBucket - SUB_BUCKET_HALF_COUNT);
}

/** The lowest value (ns) counted at `index`. */
export function valueFromIndex(index: number): number {
  let bucket = (index >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) - 1;
  let subBucket = (index & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT;
  if (bucket < 0) {
    subBucket -= SUB_BUCKET_HALF_COUNT;
    bucket = 0;
  }
  return subBucket * 2 ** bucket;
}

/** How many values (ns) share the slot at `index`. */
function widthAt(index: number): number {
  return 2 ** Math.max(0, (index >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) - 1);
}

/** The middle of the slot at `index`, in ns (HdrHistogram's median-equivalent value). */
export function middleOfIndex(index: number): number {
  return valueFromIndex(index) + Math.floor(widthAt(index) / 2);
}

/** Non-zero counts of a histogram, to send to another isolate or add up. */
export interface SparseCounts {
  /** Indices into the counts array, ascending. */
  indices: number[];
  /** The count at each of `indices`. */
  counts: number[];
  /** Smallest value recorded, ns (Infinity when empty). */
  minNs: number;
  /** Largest value recorded, ns (0 when empty). */
  maxNs: number;
}

/** One bar of {@linkcode LatencyHistogram.bars}. */
export interface Bar {
  /** Upper bound of the row, µs (values above the previous row's, up to this). */
  upToUs: number;
  /** Values in the row. */
  count: number;
}

/**
 * A latency histogram laid out as HdrHistogram's (1 ns to 1 h, 3 significant
 * digits): fixed memory however many values are recorded, a percentile off
 * by at most 0.05%, min and max exact. Values are recorded in µs (as
 * fractions) and kept in ns.
 */
export class LatencyHistogram {
  /** Counts per slot: exactly an HdrHistogram counts array. */
  readonly counts: Float64Array = new Float64Array(COUNTS_LENGTH);
  #count = 0;
  #minNs = Infinity;
  #maxNs = 0;
  /** Lowest and highest index touched since the last reset (cheap scans). */
  #low = COUNTS_LENGTH;
  #high = -1;

  /** Records one value in microseconds (negative values count as 0). */
  record(us: number): void {
    this.recordNs(us > 0 ? Math.round(us * 1000) : 0);
  }

  /** Records `count` values of `ns` nanoseconds (a whole number ≥ 0). */
  recordNs(ns: number, count = 1): void {
    const index = countsIndex(
      ns < HIGHEST_TRACKABLE_NS ? ns : HIGHEST_TRACKABLE_NS,
    );
    this.counts[index] += count;
    this.#count += count;
    if (ns < this.#minNs) this.#minNs = ns;
    if (ns > this.#maxNs) this.#maxNs = ns;
    if (index < this.#low) this.#low = index;
    if (index > this.#high) this.#high = index;
  }

  /** Number of values recorded. */
  get count(): number {
    return this.#count;
  }

  /** Largest value recorded, in microseconds (exact); 0 when empty. */
  get max(): number {
    return this.#maxNs / 1000;
  }

  /** Smallest value recorded, in microseconds (exact); 0 when empty. */
  get min(): number {
    return this.#count === 0 ? 0 : this.#minNs / 1000;
  }

  /**
   * The `p`-th percentile in microseconds (nearest rank: the smallest value
   * with at least `p`% of the values at or below it), as the middle of its
   * slot, clamped to the exact min and max; 0 when empty.
   *
   * @throws {RangeError} if `p` is not within 0–100.
   */
  percentile(p: number): number {
    if (!(p >= 0 && p <= 100)) {
      throw new RangeError(`invalid percentile ${p}: expected 0 to 100`);
    }
    if (this.#count === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.#count));
    if (rank === this.#count) return this.#maxNs / 1000;
    let seen = 0;
    for (let index = this.#low; index <= this.#high; index++) {
      seen += this.counts[index];
      if (seen >= rank) {
        const ns = Math.min(
          this.#maxNs,
          Math.max(this.#minNs, middleOfIndex(index)),
        );
        return ns / 1000;
      }
    }
    return this.#maxNs / 1000; // not reached: the counts add up to #count
  }

  /** Mean in microseconds, from the slots' middles (as HdrHistogram does). */
  get mean(): number {
    if (this.#count === 0) return 0;
    let sum = 0;
    for (let index = this.#low; index <= this.#high; index++) {
      const n = this.counts[index];
      if (n > 0) sum += n * middleOfIndex(index);
    }
    return sum / this.#count / 1000;
  }

  /** Standard deviation in microseconds, from the slots' middles. */
  get stdev(): number {
    if (this.#count === 0) return 0;
    const mean = this.mean * 1000;
    let squares = 0;
    for (let index = this.#low; index <= this.#high; index++) {
      const n = this.counts[index];
      if (n > 0) squares += n * (middleOfIndex(index) - mean) ** 2;
    }
    return Math.sqrt(squares / this.#count) / 1000;
  }

  /** Adds every value of `other` (exactly: same layout). */
  add(other: LatencyHistogram): void {
    this.addSparse(other.toSparse());
  }

  /** Adds counts sent by {@linkcode LatencyHistogram.toSparse}. */
  addSparse(sparse: SparseCounts): void {
    const { indices, counts } = sparse;
    for (let i = 0; i < indices.length; i++) {
      const index = indices[i];
      this.counts[index] += counts[i];
      this.#count += counts[i];
      if (index < this.#low) this.#low = index;
      if (index > this.#high) this.#high = index;
    }
    if (sparse.minNs < this.#minNs) this.#minNs = sparse.minNs;
    if (sparse.maxNs > this.#maxNs) this.#maxNs = sparse.maxNs;
  }

  /** The non-zero counts, min and max. */
  toSparse(): SparseCounts {
    const indices: number[] = [];
    const counts: number[] = [];
    for (let index = this.#low; index <= this.#high; index++) {
      if (this.counts[index] > 0) {
        indices.push(index);
        counts.push(this.counts[index]);
      }
    }
    return { indices, counts, minNs: this.#minNs, maxNs: this.#maxNs };
  }

  /** Empties it. */
  reset(): void {
    if (this.#high >= this.#low) this.counts.fill(0, this.#low, this.#high + 1);
    this.#count = 0;
    this.#minNs = Infinity;
    this.#maxNs = 0;
    this.#low = COUNTS_LENGTH;
    this.#high = -1;
  }

  /**
   * `rows` rows from the smallest to the largest value, spaced evenly on a
   * log scale, each counting the values above the row before it up to its
   * bound (the first also those at its bound and below): the counts add up
   * to {@linkcode LatencyHistogram.count}. Empty when nothing was recorded.
   */
  bars(rows = 10): Bar[] {
    if (this.#count === 0) return [];
    const lowNs = Math.max(1, this.#minNs);
    const highNs = Math.max(lowNs, this.#maxNs);
    const ratio = (highNs / lowNs) ** (1 / rows);
    const bars: Bar[] = [];
    for (let row = 1; row <= rows; row++) {
      const upTo = row === rows ? highNs : lowNs * ratio ** row;
      bars.push({ upToUs: upTo / 1000, count: 0 });
    }
    let row = 0;
    for (let index = this.#low; index <= this.#high; index++) {
      const n = this.counts[index];
      if (n === 0) continue;
      const ns = Math.min(highNs, Math.max(lowNs, middleOfIndex(index)));
      while (row < rows - 1 && ns > bars[row].upToUs * 1000) row++;
      bars[row].count += n;
    }
    return bars;
  }
}
