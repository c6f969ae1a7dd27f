/** A small deterministic generator, so that a failing run can be repeated. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** `length` deterministic bytes from `seed`. */
export function pseudoRandomBytes(length: number, seed: number): Buffer {
  const random = rng(seed);
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = Math.floor(random() * 256);
  return out;
}

/**
 * Chunk `i` of a long deterministic stream, made on demand so that no test holds the stream: one
 * random block of `size` bytes, rotated by an amount set by `i` and stamped with `i`.
 */
export function chunkSource(seed: number, size = 1024 * 1024): (i: number) => Buffer {
  const block = pseudoRandomBytes(size, seed);
  return (i) => {
    const r = (i * 65_537) % size;
    const out = Buffer.allocUnsafe(size);
    block.copy(out, 0, r);
    block.copy(out, size - r, 0, r);
    out.writeUInt32BE(i, 0);
    return out;
  };
}
