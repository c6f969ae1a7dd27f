import sharp, { type Sharp } from 'sharp';

/** The sizes the `image.variants` job makes of each uploaded image. */
export type VariantName = 'web' | 'mobile' | 'thumbnail';

/**
 * Longest side bound of each variant, in pixels: web ≤ 1280, mobile ≤ 640, thumbnail ≤ 160.
 * A variant fits inside a bound×bound box with the aspect ratio kept, and is never made larger
 * than the original, so a small image's web and mobile variants keep its own size.
 */
export const VARIANT_BOUNDS: Readonly<Record<VariantName, number>> = Object.freeze({
  web: 1280,
  mobile: 640,
  thumbnail: 160,
});

/** Every variant name, largest first: the order `makeVariants` returns them in. */
export const VARIANT_NAMES: readonly VariantName[] = Object.freeze(['web', 'mobile', 'thumbnail'] as const);

/**
 * The uploaded content types that get variants: the image types `src/domain/file-types.ts`
 * accepts. `makeVariants` also refuses any other decoded format (TIFF, SVG, HEIF, ...) that sharp
 * could read, so bytes that pass the upload sniffer as one type cannot reach another decoder.
 */
export const IMAGE_CONTENT_TYPES: ReadonlySet<string> = new Set([
  'image/png',
  'image/jpeg',
  'image/webp',
  'image/gif',
]);

/** One resized copy of an image, encoded as WebP. */
export interface Variant {
  readonly name: VariantName;
  /** Width of the output, after orientation and resizing. */
  readonly width: number;
  /** Height of the output, after orientation and resizing. */
  readonly height: number;
  /** Bytes in `data`. */
  readonly size: number;
  readonly data: Buffer;
  readonly content_type: 'image/webp';
}

/** Options of {@link makeVariants}. */
export interface MakeVariantsOptions {
  /** Checked between steps: once aborted, the promise rejects with the signal's reason. */
  readonly signal?: AbortSignal;
  /** Largest width × height accepted; defaults to {@link DEFAULT_MAX_INPUT_PIXELS}. */
  readonly maxInputPixels?: number;
}

/** Why an image could not be turned into variants. */
export type ImageErrorCode = 'unreadable' | 'too_large';

/**
 * The input cannot be made into variants: `unreadable` for bytes that are not a PNG, JPEG, WebP
 * or GIF image sharp can decode, `too_large` for an image with more pixels than allowed. Either
 * way retrying the same bytes gives the same answer, so the job should not retry.
 */
export class ImageError extends Error {
  override readonly name = 'ImageError';

  constructor(
    readonly code: ImageErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * A decompression bomb is a small file that declares a huge image: 50 megapixels is above any
 * phone camera a customer would upload from, and bounds the decoded size at about 200 MB (RGBA).
 */
export const DEFAULT_MAX_INPUT_PIXELS = 50_000_000;

/** A fixed quality keeps variants of the same image byte-identical from one run to the next. */
const WEBP_QUALITY = 80;

const PIXEL_LIMIT_MESSAGE = 'Input image exceeds pixel limit';

/**
 * Makes the web, mobile and thumbnail WebP variants of the image in `input`, in
 * {@link VARIANT_NAMES} order.
 *
 * The EXIF orientation is applied, so a photo taken sideways comes out upright and `width` and
 * `height` are those of the output. Metadata (EXIF, XMP, ICC) is not copied: sharp strips it and
 * converts to sRGB unless told to keep it. Of an animated GIF or WebP only the first frame is
 * used: sharp reads one page unless asked for more, and a still is what a preview needs.
 *
 * Rejects with {@link ImageError} for bytes that are not a readable image or that exceed the
 * pixel limit, and with the signal's reason once `options.signal` is aborted.
 *
 * @example
 * const variants = await makeVariants(await readFile('photo.jpg'), { signal });
 * for (const v of variants) await store.put(`variants/${id}/${v.name}.webp`, v.data);
 */
export async function makeVariants(input: Buffer, options: MakeVariantsOptions = {}): Promise<Variant[]> {
  const { signal } = options;
  const maxInputPixels = options.maxInputPixels ?? DEFAULT_MAX_INPUT_PIXELS;
  // Zero would mean "no limit" to sharp: refuse it rather than open the door to bombs.
  if (!Number.isSafeInteger(maxInputPixels) || maxInputPixels <= 0) {
    throw new RangeError(`maxInputPixels must be a positive integer, got ${maxInputPixels}`);
  }
  signal?.throwIfAborted();

  let source: Sharp;
  try {
    // failOn stays at sharp's default 'warning', the level its documentation advises for
    // untrusted input: a truncated or damaged file fails instead of giving a half-grey variant.
    source = sharp(input, { limitInputPixels: maxInputPixels });
  } catch (err) {
    // The constructor itself throws for an empty buffer.
    throw toImageError(err);
  }

  // The header alone says the format and enforces the pixel limit, so a bomb or a file of the
  // wrong kind is refused before three decoders start on it.
  const meta = await source.metadata().catch((err: unknown) => {
    throw toImageError(err);
  });
  if (!IMAGE_CONTENT_TYPES.has(`image/${meta.format}`)) {
    throw new ImageError('unreadable', `Images of format ${meta.format} do not get variants`);
  }
  signal?.throwIfAborted();

  // Each clone shares the input and its options; the three pipelines run on libuv's pool at once,
  // each with sharp's default libvips concurrency, so the job does not tune the process-wide setting.
  const variants = await Promise.all(
    VARIANT_NAMES.map(async (name): Promise<Variant> => {
      const bound = VARIANT_BOUNDS[name];
      const { data, info } = await source
        .clone()
        .autoOrient()
        .resize({ width: bound, height: bound, fit: 'inside', withoutEnlargement: true })
        .webp({ quality: WEBP_QUALITY })
        .toBuffer({ resolveWithObject: true })
        .catch((err: unknown) => {
          throw toImageError(err);
        });
      return { name, width: info.width, height: info.height, size: info.size, data, content_type: 'image/webp' };
    }),
  );
  signal?.throwIfAborted();
  return variants;
}

/**
 * The options sharp gets are fixed and valid, so a failure is taken to be the input's fault and
 * becomes `unreadable`; the pixel limit is the exception, and sharp tells it apart only by its
 * message. The original error stays as `cause` for the logs.
 */
function toImageError(err: unknown): ImageError {
  const message = err instanceof Error ? err.message : String(err);
  if (message.includes(PIXEL_LIMIT_MESSAGE)) {
    return new ImageError('too_large', 'The image has more pixels than allowed', { cause: err });
  }
  return new ImageError('unreadable', `The image cannot be read: ${message}`, { cause: err });
}
