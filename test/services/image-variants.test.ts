import { crc32 } from 'node:zlib';
import sharp, { type Sharp } from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_MAX_INPUT_PIXELS,
  IMAGE_CONTENT_TYPES,
  ImageError,
  makeVariants,
  VARIANT_BOUNDS,
  VARIANT_NAMES,
  type Variant,
} from '../../src/services/image-variants.ts';

type Rgb = readonly [number, number, number];

/**
 * A deterministic RGB image: gradients plus pseudo-random noise, so the encoders see something
 * like a photo (a flat colour compresses to a few bytes and hides size mistakes). `paint` picks a
 * base colour per pixel for tests that look at where things end up.
 */
function patterned(width: number, height: number, paint?: (x: number, y: number) => Rgb): Sharp {
  const pixels = Buffer.alloc(width * height * 3);
  let seed = 0x2545f491;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      seed = (Math.imul(seed, 1_103_515_245) + 12_345) >>> 0;
      const jitter = (seed >>> 24) % 24;
      const [r, g, b] = paint ? paint(x, y) : [(x * 255) / width, (y * 255) / height, ((x ^ y) & 0xff)];
      const i = (y * width + x) * 3;
      // Noise only darkens, so a pure colour in `paint` stays recognisably that colour.
      pixels[i] = Math.max(0, r - jitter);
      pixels[i + 1] = Math.max(0, g - jitter);
      pixels[i + 2] = Math.max(0, b - jitter);
    }
  }
  return sharp(pixels, { raw: { width, height, channels: 3 } });
}

const RED: Rgb = [255, 0, 0];
const BLUE: Rgb = [0, 0, 255];

/** The colour of one pixel of an encoded image, decoded. */
async function pixelAt(image: Buffer, x: number, y: number): Promise<Rgb> {
  const { data, info } = await sharp(image).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const i = (y * info.width + x) * info.channels;
  return [data[i] ?? -1, data[i + 1] ?? -1, data[i + 2] ?? -1];
}

function isRoughly(actual: Rgb, expected: Rgb): boolean {
  return actual.every((c, i) => Math.abs(c - (expected[i] ?? 0)) < 60);
}

/** What every variant must be, whatever the input: WebP that decodes to the size it claims. */
async function expectWellFormed(variants: Variant[], original: { width: number; height: number }) {
  expect(variants.map((v) => v.name)).toEqual(['web', 'mobile', 'thumbnail']);
  for (const v of variants) {
    expect(v.content_type).toBe('image/webp');
    expect(v.size).toBe(v.data.length);
    expect(v.size).toBeGreaterThan(0);
    expect(v.width).toBeLessThanOrEqual(original.width);
    expect(v.height).toBeLessThanOrEqual(original.height);
    expect(Math.max(v.width, v.height)).toBeLessThanOrEqual(VARIANT_BOUNDS[v.name]);
    const meta = await sharp(v.data).metadata();
    expect({ format: meta.format, width: meta.width, height: meta.height }).toEqual({
      format: 'webp',
      width: v.width,
      height: v.height,
    });
    // Metadata is stripped: no EXIF (with its orientation, camera, GPS), no XMP.
    expect(meta.exif).toBeUndefined();
    expect(meta.xmp).toBeUndefined();
    expect(meta.orientation).toBeUndefined();
    expect(meta.pages ?? 1).toBe(1);
  }
}

const sizes = (variants: Variant[]) => variants.map((v) => [v.width, v.height]);

/** Expects `promise` to reject with an ImageError of `code`. */
async function expectImageError(promise: Promise<unknown>, code: ImageError['code']) {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ImageError);
  expect((err as ImageError).code).toBe(code);
}

describe('constants', () => {
  it('name the three variants with their bounds and the four image types', () => {
    expect(VARIANT_NAMES).toEqual(['web', 'mobile', 'thumbnail']);
    expect(VARIANT_BOUNDS).toEqual({ web: 1280, mobile: 640, thumbnail: 160 });
    expect([...IMAGE_CONTENT_TYPES].sort()).toEqual(['image/gif', 'image/jpeg', 'image/png', 'image/webp']);
    expect(DEFAULT_MAX_INPUT_PIXELS).toBe(50_000_000);
  });
});

describe('makeVariants sizes', () => {
  it('a 2000×1500 PNG gives 1280×960, 640×480 and 160×120', async () => {
    const input = await patterned(2000, 1500).png().toBuffer();
    const variants = await makeVariants(input);
    expect(sizes(variants)).toEqual([
      [1280, 960],
      [640, 480],
      [160, 120],
    ]);
    await expectWellFormed(variants, { width: 2000, height: 1500 });
    // Realistic content: a larger variant takes more bytes than a smaller one.
    const [web, mobile, thumbnail] = variants.map((v) => v.size);
    expect(web).toBeGreaterThan(mobile ?? Infinity);
    expect(mobile).toBeGreaterThan(thumbnail ?? Infinity);
  });

  // 200 × 160 / 300 = 106.67 for the GIF's thumbnail: sharp rounds the computed side to the nearest pixel, 107.
  it.each([
    { what: 'a portrait 1500×2000 JPEG', width: 1500, height: 2000, encode: (s: Sharp) => s.jpeg({ quality: 90 }), want: [[960, 1280], [480, 640], [120, 160]] },
    { what: 'a 300×200 GIF, never enlarged', width: 300, height: 200, encode: (s: Sharp) => s.gif(), want: [[300, 200], [300, 200], [160, 107]] },
    { what: 'an 800×600 WebP', width: 800, height: 600, encode: (s: Sharp) => s.webp(), want: [[800, 600], [640, 480], [160, 120]] },
  ])('$what gives $want', async ({ width, height, encode, want }) => {
    const variants = await makeVariants(await encode(patterned(width, height)).toBuffer());
    expect(sizes(variants)).toEqual(want);
    await expectWellFormed(variants, { width, height });
  });
});

describe('makeVariants content', () => {
  it('an animated GIF gives variants of its first frame only', async () => {
    const red = await patterned(300, 200, () => RED).png().toBuffer();
    const blue = await patterned(300, 200, () => BLUE).png().toBuffer();
    const input = await sharp([red, blue], { join: { animated: true } }).gif().toBuffer();
    const meta = await sharp(input).metadata();
    expect([meta.format, meta.pages]).toEqual(['gif', 2]);

    const variants = await makeVariants(input);
    // One frame's height (200), not the 400 of both frames stacked.
    expect(sizes(variants)).toEqual([
      [300, 200],
      [300, 200],
      [160, 107],
    ]);
    await expectWellFormed(variants, { width: 300, height: 200 });
    for (const v of variants) expect(isRoughly(await pixelAt(v.data, 10, 10), RED)).toBe(true);
  });

  it('applies EXIF orientation 6: a 400×200 stored photo comes out upright, 200×400', async () => {
    // Stored left half red, right half blue; orientation 6 says "turn 90° clockwise to view",
    // which brings the stored left edge to the top.
    const input = await patterned(400, 200, (x) => (x < 200 ? RED : BLUE))
      .jpeg({ quality: 95 })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    const stored = await sharp(input).metadata();
    expect([stored.width, stored.height, stored.orientation]).toEqual([400, 200, 6]);

    const variants = await makeVariants(input);
    expect(sizes(variants)).toEqual([
      [200, 400],
      [200, 400],
      [80, 160],
    ]);
    await expectWellFormed(variants, { width: 200, height: 400 });
    const web = variants[0];
    if (!web) throw new Error('no web variant');
    expect(isRoughly(await pixelAt(web.data, 100, 50), RED)).toBe(true);
    expect(isRoughly(await pixelAt(web.data, 100, 350), BLUE)).toBe(true);
  });

  it('gives byte-identical variants for the same input', async () => {
    const input = await patterned(500, 400).png().toBuffer();
    const [first, second] = await Promise.all([makeVariants(input), makeVariants(input)]);
    expect(second.map((v) => v.data.toString('base64'))).toEqual(first.map((v) => v.data.toString('base64')));
  });
});

describe('makeVariants refusals', () => {
  let small: Buffer;
  beforeAll(async () => {
    small = await patterned(300, 200).png().toBuffer();
  });

  it('garbage bytes are unreadable', async () => {
    await expectImageError(makeVariants(Buffer.from('this is not an image, only some text')), 'unreadable');
  });

  it('an empty buffer is unreadable', async () => {
    await expectImageError(makeVariants(Buffer.alloc(0)), 'unreadable');
  });

  it('a PNG cut short is unreadable, though its header is fine', async () => {
    await expectImageError(makeVariants(small.subarray(0, Math.floor(small.length / 2))), 'unreadable');
  });

  it('a format sharp reads but uploads do not accept (TIFF) is unreadable', async () => {
    const tiff = await patterned(50, 40).tiff().toBuffer();
    await expectImageError(makeVariants(tiff), 'unreadable');
  });

  it('an image over maxInputPixels is too_large; one at the limit is accepted', async () => {
    await expectImageError(makeVariants(small, { maxInputPixels: 300 * 200 - 1 }), 'too_large');
    const variants = await makeVariants(small, { maxInputPixels: 300 * 200 });
    expect(variants).toHaveLength(3);
  });

  it('a PNG header declaring 10000×10000 pixels is too_large under the default limit', async () => {
    // A decompression bomb in miniature: a tiny file whose IHDR claims 100 megapixels.
    const png = Buffer.from(await sharp({ create: { width: 1, height: 1, channels: 3, background: '#000' } }).png().toBuffer());
    // IHDR: 8-byte signature, 4-byte length, 'IHDR', width, height, ..., CRC over type and data.
    png.writeUInt32BE(10_000, 16);
    png.writeUInt32BE(10_000, 20);
    png.writeUInt32BE(crc32(png.subarray(12, 29)), 29);
    await expectImageError(makeVariants(png), 'too_large');
  });

  it('refuses a maxInputPixels that would mean "no limit" to sharp', async () => {
    await expect(makeVariants(small, { maxInputPixels: 0 })).rejects.toBeInstanceOf(RangeError);
    await expect(makeVariants(small, { maxInputPixels: 1.5 })).rejects.toBeInstanceOf(RangeError);
  });

  it('an already aborted signal rejects with its reason', async () => {
    const reason = new Error('job cancelled');
    await expect(makeVariants(small, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
  });

  it('a signal aborted while the image is being read rejects with its reason', async () => {
    const controller = new AbortController();
    const reason = new Error('shutting down');
    const pending = makeVariants(small, { signal: controller.signal });
    // makeVariants is now awaiting sharp, which cannot finish within this synchronous turn.
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
  });
});
