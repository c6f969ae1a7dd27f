/** Deterministic random numbers for load mixes: the same sequence on every run. */

/** mulberry32: a small seeded generator of numbers in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Zipf with exponent `s` over `n` ranks: index i (rank i + 1) with probability (1/(i+1)^s) / H(n, s).
 * The cumulative weights are computed once; each draw is a binary search for the first rank whose
 * cumulative weight passes random() × total.
 */
export function zipfSampler(n: number, s: number): (random: () => number) => number {
  const cumulative = new Float64Array(n);
  let sum = 0;
  for (let r = 1; r <= n; r++) cumulative[r - 1] = sum += 1 / r ** s;
  return (random) => {
    const x = random() * sum;
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((cumulative[mid] as number) <= x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

/** A seeded Fisher–Yates shuffle (a new array). */
export function shuffled<T>(items: readonly T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}
