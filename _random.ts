/**
 * Seeded randomness for the fault options (`--drop`, `--jitter`, and the
 * TCP faults to come): the same `--seed` replays the same choices. Not for
 * anything secret.
 *
 * @module
 */

/** A random seed, for when `--seed` is not given (it is logged for replay). */
export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/**
 * A pseudo-random number generator (mulberry32): each call returns the next
 * number in `[0, 1)` of the sequence fixed by `seed` and `stream`. Different
 * `stream`s of one seed are independent sequences, so one fault's draws do not
 * shift another's (`--drop` stays the same whether `--jitter` is on or not).
 *
 * @param seed any number; only its low 32 bits count
 * @param stream which sequence of that seed
 */
export function seededRandom(seed: number, stream = 0): () => number {
  let state = mix32((seed >>> 0) ^ mix32(stream + 1));
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** A 32-bit integer hash (the murmur3 finaliser): nearby inputs scatter. */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * The first sequence of `seed`: `seededRandom(seed)`, under the name the TCP
 * faults (#11) use.
 *
 * @param seed any number; only its low 32 bits count
 */
export function createRandom(seed: number): () => number {
  return seededRandom(seed);
}
