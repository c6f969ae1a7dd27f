import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FilesConfig } from '../../src/config.ts';
import { spawnTracked, type Lifetime, type Spawned } from './processes.ts';

/** The key pair s3rver accepts; the S3 store reads credentials through the SDK's default chain. */
process.env.AWS_ACCESS_KEY_ID ??= 'S3RVER';
process.env.AWS_SECRET_ACCESS_KEY ??= 'S3RVER';
/** The SDK warns once per process that Node 20 support ends; this is the SDK's own switch for it. */
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SCRIPT = fileURLToPath(new URL('./s3-server.ts', import.meta.url));
const START_LIMIT_MS = 30_000;

export interface S3Server {
  /** http://127.0.0.1:PORT */
  readonly endpoint: string;
  readonly bucket: string;
  /** Where the server keeps its buckets. */
  readonly directory: string;
  readonly config: Extract<FilesConfig, { kind: 's3' }>;
  /** The server process now running (it changes with `restart`). */
  readonly pid: number;
  /** SIGKILL: the server dies as in a crash, keeping its directory. */
  crash(): Promise<void>;
  /** A new server process on the same port and directory, after `crash`. */
  restart(): Promise<void>;
  /** Ends the server process and removes its directory. */
  stop(): Promise<void>;
}

interface Launched {
  readonly proc: Spawned;
  readonly port: number;
}

/**
 * Starts the s3rver child and resolves once it prints the port it listens on. It runs in a process
 * group of its own, killed when the test (or, started in a `beforeAll`, the file) ends.
 */
async function launch(directory: string, bucket: string, port: number | null, lifetime: Lifetime = 'auto'): Promise<Launched> {
  const proc = spawnTracked(
    process.execPath,
    ['--openssl-legacy-provider', '--import', 'tsx', SCRIPT, directory, bucket, ...(port === null ? [] : [String(port)])],
    // stdin stays open: the server exits when it closes, should this process die without cleanup.
    { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], what: 's3rver', lifetime },
  );
  const { child, exited } = proc;
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  try {
    const listening = await new Promise<number>((resolve, reject) => {
      let stdout = '';
      const timer = setTimeout(() => reject(new Error(`s3rver did not start in ${START_LIMIT_MS} ms: ${stderr}`)), START_LIMIT_MS);
      child.stdout?.on('data', (d: Buffer) => {
        stdout += d.toString();
        const line = stdout.split('\n', 2);
        if (line.length < 2) return;
        clearTimeout(timer);
        const parsed = JSON.parse(line[0] ?? '') as { port?: unknown };
        if (typeof parsed.port === 'number') resolve(parsed.port);
        else reject(new Error(`s3rver printed ${JSON.stringify(line[0])} instead of its port`));
      });
      void exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`s3rver exited (${code ?? signal}) before listening: ${stderr}`));
      });
    });
    return { proc, port: listening };
  } catch (err) {
    await proc.kill();
    throw err;
  }
}

/**
 * An s3rver in a child process (its memory is not the test process's), on a free port of
 * 127.0.0.1, over a new temporary directory, with one empty bucket.
 */
export async function startS3Server(bucket = 'databank-test'): Promise<S3Server> {
  const directory = await mkdtemp(join(tmpdir(), 'databank-test-s3-'));
  let current: Launched;
  try {
    current = await launch(directory, bucket, null);
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  const { port } = current;
  const endpoint = `http://127.0.0.1:${port}`;
  let stopped: Promise<void> | undefined;
  const running = () => current.proc.running();
  return {
    endpoint,
    bucket,
    directory,
    config: { kind: 's3', bucket, endpoint, region: 'us-east-1', forcePathStyle: true },
    get pid() {
      return current.proc.pid;
    },
    async crash() {
      if (!running()) return;
      await current.proc.kill('SIGKILL');
    },
    async restart() {
      if (running()) throw new Error('restart: the server is still running; crash it first');
      // The restarted server belongs to the file, as the first one did: later tests may use it.
      current = await launch(directory, bucket, port, 'file');
    },
    stop() {
      stopped ??= (async () => {
        if (running()) {
          // SIGTERM lets the server remove its directory; the group is killed should it hang.
          await current.proc.kill('SIGTERM');
          const late = setTimeout(() => void current.proc.kill(), 10_000);
          await current.proc.exited;
          clearTimeout(late);
        }
        await rm(directory, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
}
