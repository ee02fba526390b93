/**
 * A small seeded pseudo-random generator, so a run that draws at random (the
 * server's `--faulty` connections and `--jitter`) can be replayed from its
 * seed. Not for anything secret.
 *
 * @module
 */

/**
 * A generator of uniform numbers in `[0, 1)` from `seed` (mulberry32: 32 bits
 * of state, passes SmallCrush, fast). The same seed gives the same sequence
 * on every platform.
 *
 * @param seed a whole number from 0 to 2³²−1 (others are taken modulo 2³²)
 */
export function createRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 0x1_0000_0000;
  };
}

/** A seed drawn from the system's random source: a whole number from 0 to 2³²−1. */
export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}
