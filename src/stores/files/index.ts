import type { FilesConfig } from '../../config.ts';
import { LocalFileStore } from './local.ts';
import type { FileStore } from './port.ts';

export type { FileStore, ObjectInfo, ByteRange, ListedObject, PutOptions } from './port.ts';

/** Opens the store the config names; the S3 client is loaded only when it is used. */
export async function openFileStore(config: FilesConfig): Promise<FileStore> {
  if (config.kind === 'local') return LocalFileStore.open(config.dir);
  const { S3FileStore } = await import('./s3.ts');
  return S3FileStore.open(config);
}
