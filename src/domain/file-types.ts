/**
 * The file types customers may upload, told from the bytes and never from the name or the
 * Content-Type the client sends. Anything else is refused, so nothing a browser would run (HTML,
 * SVG, scripts) is ever stored as anything but plain text.
 */
export const ALLOWED_TYPES = ['image/png', 'image/jpeg', 'image/webp', 'image/gif', 'application/pdf', 'text/plain'] as const;
export type AllowedType = (typeof ALLOWED_TYPES)[number];

/** What a stored file may be: an upload's type, or a file the bank made (a CSV statement). */
export const STORED_TYPES = [...ALLOWED_TYPES, 'text/csv'] as const;
export type StoredType = (typeof STORED_TYPES)[number];

/** The uploads that get web, mobile and thumbnail variants (the `image.variants` job). */
export const IMAGE_TYPES: ReadonlySet<string> = new Set(['image/png', 'image/jpeg', 'image/webp', 'image/gif']);

/** How many leading bytes `sniff` needs to decide (fewer when the file is shorter). */
export const SNIFF_BYTES = 512;

const startsWith = (bytes: Buffer, signature: readonly number[], at = 0) =>
  bytes.length >= at + signature.length && signature.every((b, i) => bytes[at + i] === b);
const ascii = (s: string) => [...s].map((c) => c.charCodeAt(0));

/**
 * The type of a file from its first bytes (at least SNIFF_BYTES of them unless `complete`), or
 * null when it is not on the allow-list. Plain text is UTF-8 without control characters other
 * than tab, line feed, form feed and carriage return; `text`, which has then seen these bytes,
 * checks the rest of the file.
 */
export function sniff(first: Buffer, complete: boolean, text: TextChecker = new TextChecker()): AllowedType | null {
  if (startsWith(first, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'image/png';
  if (startsWith(first, [0xff, 0xd8, 0xff])) return 'image/jpeg';
  if (startsWith(first, ascii('GIF87a')) || startsWith(first, ascii('GIF89a'))) return 'image/gif';
  if (startsWith(first, ascii('RIFF')) && startsWith(first, ascii('WEBP'), 8)) return 'image/webp';
  if (startsWith(first, ascii('%PDF-'))) return 'application/pdf';
  return text.push(first) && (!complete || text.end()) ? 'text/plain' : null;
}

// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const CONTROL = /[\u0000-\u0008\u000b\u000e-\u001f\u007f]/;

/** Checks a stream of chunks is plain UTF-8 text, chunk by chunk, in constant memory. */
export class TextChecker {
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  /** False as soon as the bytes so far cannot be text. */
  push(chunk: Buffer): boolean {
    try {
      return !CONTROL.test(this.decoder.decode(chunk, { stream: true }));
    } catch {
      return false;
    }
  }

  /** False when the text ends inside a multi-byte character. */
  end(): boolean {
    try {
      this.decoder.decode();
      return true;
    } catch {
      return false;
    }
  }
}
