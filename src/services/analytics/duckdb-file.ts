import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { DatabankError } from '../../domain/errors.ts';

/**
 * The analytics database is one DuckDB file, and DuckDB lets one process at a time open a file
 * for writing (any number may read it while nobody writes). Several databank processes may share
 * a data dir (`serve --no-worker` beside `worker`, and the CLI), so nobody keeps the file open:
 * every refresh or report opens it, works, and closes it again, and a process that finds it held
 * by another retries for a while before it answers "busy".
 *
 * Inside one process the operating system's file locks do not separate two openings (POSIX locks
 * belong to the process), and two DuckDB instances writing one file would corrupt it: a mutex per
 * file path puts this process's operations in a line.
 */

export type AccessMode = 'read_write' | 'read_only';

export interface OpenOptions {
  readonly mode: AccessMode;
  /** How long to wait for this process's mutex and for another process's lock, in all. */
  readonly waitMs: number;
  /** Settings for the instance besides the access mode (read-only queries lock file access down). */
  readonly settings?: Readonly<Record<string, string>>;
}

/** A FIFO lock whose waiters may give up. */
class Mutex {
  private held = false;
  private readonly waiters: Array<() => void> = [];

  /** Resolves true once the lock is this caller's, false when `timeoutMs` passed first. */
  acquire(timeoutMs: number): Promise<boolean> {
    if (!this.held) {
      this.held = true;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(wake);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve(false);
      }, timeoutMs);
      this.waiters.push(wake);
    });
  }

  release(): void {
    const next = this.waiters.shift();
    // The lock passes straight to the next waiter: it stays held.
    if (next) next();
    else this.held = false;
  }
}

const mutexes = new Map<string, Mutex>();

function mutexOf(path: string): Mutex {
  let m = mutexes.get(path);
  if (!m) {
    m = new Mutex();
    mutexes.set(path, m);
  }
  return m;
}

/** DuckDB's refusal when another process holds the file. */
export function isLockConflict(err: unknown): boolean {
  return err instanceof Error && /Could not set lock on file|Conflicting lock is held/i.test(err.message);
}

/** DuckDB's refusal to open a file that does not exist read-only. */
function isMissingFile(err: unknown): boolean {
  return err instanceof Error && /database does not exist|No such file or directory|Cannot open database .* in read-only mode/i.test(err.message);
}

function busy(path: string, cause?: unknown): DatabankError {
  return new DatabankError(
    'DATABANK_ERR_UNAVAILABLE',
    `the analytics database ${path} is in use (a refresh in this or another process); retry in a moment`,
    { cause },
  );
}

const RETRY_MS = 50;

/**
 * Opens the DuckDB file `path`, runs `work` on a connection and closes the file however `work`
 * ends. Waits at most `waitMs` for this process's earlier operations on the file and for another
 * process's lock; past it, rejects with DATABANK_ERR_UNAVAILABLE (503). A read-only opening of a
 * file that does not exist yet rejects with `MissingAnalyticsFile`, which the caller answers by
 * making it.
 */
export async function withDuckDb<T>(path: string, options: OpenOptions, work: (conn: DuckDBConnection) => Promise<T>): Promise<T> {
  const deadline = Date.now() + options.waitMs;
  const mutex = mutexOf(path);
  if (!(await mutex.acquire(options.waitMs))) throw busy(path);
  try {
    const settings: Record<string, string> = {
      ...(options.settings ?? {}),
      ...(options.mode === 'read_only' ? { access_mode: 'READ_ONLY' } : {}),
    };
    let instance: DuckDBInstance | null = null;
    for (;;) {
      try {
        instance = await DuckDBInstance.create(path, settings);
        break;
      } catch (err) {
        if (options.mode === 'read_only' && isMissingFile(err)) throw new MissingAnalyticsFile(path, err);
        if (!isLockConflict(err)) throw err;
        if (Date.now() + RETRY_MS > deadline) throw busy(path, err);
        await new Promise((r) => setTimeout(r, RETRY_MS));
      }
    }
    try {
      const conn = await instance.connect();
      try {
        return await work(conn);
      } finally {
        conn.closeSync();
      }
    } finally {
      instance.closeSync();
    }
  } finally {
    mutex.release();
  }
}

/** A read-only opening of a file no refresh has made yet. */
export class MissingAnalyticsFile extends Error {
  constructor(path: string, cause: unknown) {
    super(`the analytics database ${path} does not exist yet`, { cause });
    this.name = 'MissingAnalyticsFile';
  }
}
