/**
 * The load generator's latency histogram (private to `bench.ts`).
 *
 * @module
 */

const SUB_BUCKET_BITS = 7; // 128 sub-buckets: bucket width ≤ 1/64 of its value
const SUB_BUCKETS = 1 << SUB_BUCKET_BITS;
const HALF_SUB_BUCKETS = SUB_BUCKETS >> 1;
const MAX_TRACKABLE_NS = 2 ** 44; // ~4.9 h; longer values share the last bucket
const BUCKET_COUNT = bucketIndex(MAX_TRACKABLE_NS) + 1;

/** Index of the bucket holding `ns` (a non-negative integer). */
function bucketIndex(ns: number): number {
  if (ns < SUB_BUCKETS) return ns; // exact below 128 ns
  const exponent = ns < 2 ** 31
    ? 31 - Math.clz32(ns)
    : Math.floor(Math.log2(ns));
  const shift = exponent - (SUB_BUCKET_BITS - 1);
  const sub = Math.floor(ns / 2 ** shift); // in [64, 128)
  return shift * HALF_SUB_BUCKETS + sub;
}

/**
 * A latency histogram in the style of HdrHistogram: log-linear buckets of
 * nanoseconds, exact below 128 ns, then 64 buckets per power of two, so a
 * percentile is off by at most 0.8% (half a bucket) and memory is fixed
 * (~2,500 counters) however many values are recorded.
 */
export class LatencyHistogram {
  #counts = new Float64Array(BUCKET_COUNT);
  #count = 0;
  #min = Infinity;
  #max = 0;

  /** Records one value in microseconds (negative values count as 0). */
  record(us: number): void {
    const ns = us > 0 ? Math.round(us * 1000) : 0;
    this.#counts[ns < MAX_TRACKABLE_NS ? bucketIndex(ns) : BUCKET_COUNT - 1]++;
    this.#count++;
    if (ns < this.#min) this.#min = ns;
    if (ns > this.#max) this.#max = ns;
  }

  /** Number of values recorded. */
  get count(): number {
    return this.#count;
  }

  /** Largest value recorded, in microseconds (exact); 0 when empty. */
  get max(): number {
    return this.#max / 1000;
  }

  /**
   * The `p`-th percentile in microseconds (nearest rank: the smallest value
   * with at least `p`% of the values at or below it), as the middle of its
   * bucket, clamped to the exact min and max; 0 when empty.
   *
   * @throws {RangeError} if `p` is not within 0–100.
   */
  percentile(p: number): number {
    if (!(p >= 0 && p <= 100)) {
      throw new RangeError(`invalid percentile ${p}: expected 0 to 100`);
    }
    if (this.#count === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.#count));
    if (rank === this.#count) return this.#max / 1000; // the largest value: exact
    let seen = 0;
    for (let index = 0; index < BUCKET_COUNT; index++) {
      seen += this.#counts[index];
      if (seen >= rank) {
        const ns = Math.min(
          this.#max,
          Math.max(this.#min, bucketMiddle(index)),
        );
        return ns / 1000;
      }
    }
    return this.#max / 1000; // not reached: the counts add up to #count
  }
}

/** The middle of bucket `index`, in nanoseconds. */
function bucketMiddle(index: number): number {
  if (index < SUB_BUCKETS) return index;
  const shift = Math.floor(index / HALF_SUB_BUCKETS) - 1;
  const sub = index - shift * HALF_SUB_BUCKETS;
  const width = 2 ** shift;
  return sub * width + (width - 1) / 2;
}
