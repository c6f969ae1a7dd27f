import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openFileStore } from '../../src/stores/files/index.ts';
import type { FileStore } from '../../src/stores/files/port.ts';
import { startS3Server, type S3Server } from './s3.ts';

export const FILE_STORE_KINDS: ReadonlyArray<FileStore['kind']> = ['local', 's3'];

export interface TestFileStore {
  readonly store: FileStore;
  /** The local store's folder; null on S3. */
  readonly root: string | null;
  /** The s3rver child behind the S3 store; null for the local store. */
  readonly server: S3Server | null;
  /** Closes the store, stops the server and removes every folder it used. */
  close(): Promise<void>;
}

/** A new, empty store of the kind: a temporary folder, or a bucket of an s3rver child of its own. */
export async function openTestFileStore(kind: FileStore['kind']): Promise<TestFileStore> {
  if (kind === 'local') {
    const root = await mkdtemp(join(tmpdir(), 'databank-test-filestore-'));
    const store = await openFileStore({ kind: 'local', dir: root });
    return {
      store,
      root,
      server: null,
      async close() {
        await store.close();
        await rm(root, { recursive: true, force: true });
      },
    };
  }
  const server = await startS3Server();
  try {
    const store = await openFileStore(server.config);
    return {
      store,
      root: null,
      server,
      async close() {
        try {
          await store.close();
        } finally {
          await server.stop();
        }
      },
    };
  } catch (err) {
    await server.stop();
    throw err;
  }
}
