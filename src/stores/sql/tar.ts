/**
 * The few parts of the ustar format that a PostgreSQL data directory needs: regular files and
 * directories with short relative paths. Enough to pack a data directory template and unpack it
 * again without a dependency; links, long names and special files are refused, not guessed at.
 */

const BLOCK = 512;

/** One member of an archive: a directory (no data) or a regular file. */
export interface TarEntry {
  /** Relative path with forward slashes, without a leading `/` or `./`. */
  readonly path: string;
  readonly type: 'file' | 'dir';
  readonly data: Uint8Array;
}

function writeString(header: Buffer, offset: number, length: number, value: string): void {
  const bytes = Buffer.from(value, 'utf8');
  if (bytes.length > length) throw new Error(`tar: "${value}" is longer than ${length} bytes`);
  bytes.copy(header, offset);
}

function writeOctal(header: Buffer, offset: number, length: number, value: number): void {
  writeString(header, offset, length, `${value.toString(8).padStart(length - 1, '0')}\0`);
}

/**
 * Packs entries into an uncompressed ustar archive. Modes, owners and times are fixed (0600/0700,
 * uid 0, time 0) so that the same directory always packs to the same bytes.
 */
export function packTar(entries: readonly TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    const header = Buffer.alloc(BLOCK);
    writeString(header, 0, 100, entry.type === 'dir' ? `${entry.path}/` : entry.path);
    writeOctal(header, 100, 8, entry.type === 'dir' ? 0o700 : 0o600);
    writeOctal(header, 108, 8, 0);
    writeOctal(header, 116, 8, 0);
    writeOctal(header, 124, 12, entry.type === 'dir' ? 0 : entry.data.length);
    writeOctal(header, 136, 12, 0);
    header.fill(' ', 148, 156);
    header[156] = entry.type === 'dir' ? 0x35 : 0x30;
    writeString(header, 257, 6, 'ustar');
    writeString(header, 263, 2, '00');
    let sum = 0;
    for (const byte of header) sum += byte;
    writeString(header, 148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
    parts.push(header);
    if (entry.type === 'file' && entry.data.length > 0) {
      parts.push(Buffer.from(entry.data.buffer, entry.data.byteOffset, entry.data.length));
      const pad = (BLOCK - (entry.data.length % BLOCK)) % BLOCK;
      if (pad > 0) parts.push(Buffer.alloc(pad));
    }
  }
  parts.push(Buffer.alloc(BLOCK * 2));
  return Buffer.concat(parts);
}

function readString(block: Buffer, offset: number, length: number): string {
  const end = block.indexOf(0, offset);
  return block.toString('utf8', offset, end === -1 || end > offset + length ? offset + length : end);
}

/** Paths that could escape the directory an archive is unpacked into are refused. */
function safePath(raw: string): string {
  const path = raw.replace(/^(\.\/|\/)+/, '').replace(/\/+$/, '');
  if (path === '' || path.split('/').some((part) => part === '..' || part === '')) {
    throw new Error(`tar: unsafe path "${raw}"`);
  }
  return path;
}

/** Unpacks an uncompressed ustar archive into its entries; `data` views share `archive`'s memory. */
export function unpackTar(archive: Buffer): TarEntry[] {
  const entries: TarEntry[] = [];
  let offset = 0;
  while (offset + BLOCK <= archive.length) {
    const header = archive.subarray(offset, offset + BLOCK);
    if (header.every((byte) => byte === 0)) break;
    const prefix = readString(header, 345, 155);
    const name = readString(header, 0, 100);
    const size = parseInt(readString(header, 124, 12).trim() || '0', 8);
    const flag = String.fromCharCode(header[156] ?? 0);
    offset += BLOCK;
    if (flag === '0' || flag === '\0' || flag === '5') {
      const path = safePath(prefix ? `${prefix}/${name}` : name);
      const type = flag === '5' ? 'dir' : 'file';
      entries.push({ path, type, data: type === 'dir' ? new Uint8Array(0) : archive.subarray(offset, offset + size) });
    } else {
      throw new Error(`tar: "${name}" is of type ${JSON.stringify(flag)}, which a data directory template never holds`);
    }
    offset += Math.ceil(size / BLOCK) * BLOCK;
  }
  return entries;
}
