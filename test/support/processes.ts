import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { afterAll, onTestFinished } from 'vitest';

/**
 * Every process a test starts goes through here, so that none outlives its test: each one is the
 * leader of a process group of its own (`detached: true`), and its whole group (the process and
 * whatever it started: a shell's children, nginx workers, a server's helpers) is killed with
 * SIGKILL when the test that started it finishes, or, for one started in a `beforeAll`, when the
 * file finishes. A deadline kills a process that hangs and fails with a message naming it.
 */

/** The default deadline of a process that is expected to finish on its own (CLI runs, tools). */
export const DEFAULT_TIMEOUT_MS = 60_000;

type Cleanup = () => void | Promise<void>;

/** Cleanups not tied to one test: run when the file's tests are done, last registered first. */
const fileCleanups = new Set<Cleanup>();
/** Process groups still alive, killed synchronously should the test process exit without cleanup. */
const liveGroups = new Set<number>();

// A support module imported by a test file registers this hook on that file (vitest collects a
// file by importing it), so whatever a beforeAll started is gone when the file is done.
afterAll(async () => {
  const pending = [...fileCleanups].reverse();
  fileCleanups.clear();
  const failures: unknown[] = [];
  for (const cleanup of pending) {
    try {
      await cleanup();
    } catch (err) {
      failures.push(err);
    }
  }
  if (failures.length > 0) throw new AggregateError(failures, 'cleanup of spawned processes failed');
});

// One exit listener per test process, however many test files (module instances) it runs.
const EXIT_GROUPS = Symbol.for('databank.test.liveProcessGroups');
const globalGroups = globalThis as { [EXIT_GROUPS]?: Set<Set<number>> };
if (!globalGroups[EXIT_GROUPS]) {
  const all = new Set<Set<number>>();
  globalGroups[EXIT_GROUPS] = all;
  process.once('exit', () => {
    for (const groups of all) for (const pid of groups) killGroup(pid);
  });
}
globalGroups[EXIT_GROUPS].add(liveGroups);

/**
 * When a cleanup runs: `test` when the current test finishes, `file` when the file's tests are
 * done; `auto` is `test` inside a test and `file` outside one (a `beforeAll`).
 */
export type Lifetime = 'auto' | 'test' | 'file';

/**
 * Runs `cleanup` when the current test finishes, or, outside a test (a `beforeAll`) or with
 * lifetime `file`, when the file's tests are done. Returns a function that unregisters it.
 */
export function registerCleanup(cleanup: Cleanup, lifetime: Lifetime = 'auto'): () => void {
  let done = false;
  const once: Cleanup = async () => {
    if (done) return;
    done = true;
    fileCleanups.delete(once);
    await cleanup();
  };
  if (lifetime === 'file') {
    fileCleanups.add(once);
  } else {
    try {
      onTestFinished(once);
    } catch (err) {
      if (lifetime === 'test') throw err;
      // Not inside a test: the file's afterAll runs it.
      fileCleanups.add(once);
    }
  }
  return () => {
    done = true;
    fileCleanups.delete(once);
  };
}

/** SIGKILL to the whole process group led by `pid`; a group already gone is not an error. */
export function killGroup(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(-pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/**
 * Takes charge of a process group this test made without spawning its leader itself (a server
 * that daemonizes, such as PostgreSQL's postmaster started by `pg_ctl`, which leads a group of
 * its own): the group is killed when the test or file ends, and when the test process exits.
 */
export function adoptGroup(pid: number, lifetime: Lifetime = 'auto'): void {
  liveGroups.add(pid);
  registerCleanup(() => {
    killGroup(pid);
    liveGroups.delete(pid);
  }, lifetime);
}

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface Spawned {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<Exit>;
  /** True until the process has exited. */
  running(): boolean;
  /** Everything the process wrote to stdout and stderr so far, interleaved, for failure messages. */
  output(): string;
  /** Kills the process group (SIGKILL unless told otherwise) and waits for the process to exit. */
  kill(signal?: NodeJS.Signals): Promise<Exit>;
}

export interface SpawnTrackedOptions extends Omit<SpawnOptions, 'detached'> {
  /** What the process is, for messages: `databank serve`, `redis-server on port 6390`. */
  readonly what?: string;
  /**
   * Kill the group after this long and report it (through `exited` and `timedOut`); null for a
   * server that runs until it is stopped (its cleanup still kills it when its test or file ends).
   */
  readonly timeoutMs?: number | null;
  /**
   * Killed when the test ends (`auto` inside a test) or when the file ends (`auto` in a
   * `beforeAll`, or `file`: a server restarted inside one test that later tests use).
   */
  readonly lifetime?: Lifetime;
}

/**
 * Spawns `file` as the leader of a new process group, killed with its group when the current
 * test (or, from a `beforeAll`, the file) ends. Output is kept for failure messages; piped
 * streams stay readable by the caller too.
 *
 * @example
 * const redis = spawnTracked('/usr/bin/redis-server', ['--port', '6390'], { what: 'redis-server', timeoutMs: null });
 * await redis.kill();
 */
export function spawnTracked(file: string, args: readonly string[], options: SpawnTrackedOptions = {}): Spawned & { timedOut(): boolean } {
  const { what = `${file} ${args.join(' ')}`, timeoutMs = null, lifetime = 'auto', ...spawnOptions } = options;
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], ...spawnOptions, detached: true });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  let exit: Exit | null = null;
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      resolve(exit);
    });
    child.once('error', (err) => {
      output += `spawn of ${what} failed: ${err.message}\n`;
      exit ??= { code: null, signal: null };
      resolve(exit);
    });
  });
  const pid = child.pid;
  if (pid === undefined) {
    // spawn failed (no such file); the error event above tells why.
    return {
      child,
      pid: -1,
      exited,
      running: () => false,
      output: () => output,
      kill: () => exited,
      timedOut: () => false,
    };
  }
  liveGroups.add(pid);
  void exited.then(() => {
    // The leader is gone; whatever else was in its group goes too, so nothing is left behind.
    killGroup(pid);
    liveGroups.delete(pid);
  });
  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    if (exit === null) killGroup(pid, signal);
    return exited;
  };
  let timedOut = false;
  const timer =
    timeoutMs === null
      ? null
      : setTimeout(() => {
          timedOut = true;
          void kill();
        }, timeoutMs);
  timer?.unref();
  void exited.then(() => timer && clearTimeout(timer));
  registerCleanup(async () => {
    await kill();
  }, lifetime);
  return {
    child,
    pid,
    exited,
    running: () => exit === null,
    output: () => output,
    kill,
    timedOut: () => timedOut,
  };
}

export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions extends Omit<SpawnTrackedOptions, 'stdio'> {
  /** Reject unless the exit code is 0 (as execFile does). Default false: the caller checks `code`. */
  readonly check?: boolean;
}

/**
 * Runs `file ARGS` to completion in a process group of its own, with a deadline (default
 * {@link DEFAULT_TIMEOUT_MS}): past it the group is killed and the promise rejects saying what
 * ran and what it printed.
 */
export async function runProcess(file: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const { check = false, timeoutMs = DEFAULT_TIMEOUT_MS, what = `${file} ${args.join(' ')}`, ...rest } = options;
  const proc = spawnTracked(file, args, { ...rest, what, timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const { code, signal } = await proc.exited;
  if (proc.timedOut()) {
    throw new Error(`${what} did not finish within ${timeoutMs} ms and was killed with its process group:\n${proc.output()}`);
  }
  if (proc.pid === -1) throw new Error(proc.output());
  if (check && code !== 0) throw new Error(`${what} exited with ${code ?? signal}:\n${proc.output()}`);
  return { code, stdout, stderr };
}

/**
 * Polls `condition` until it holds, at most `timeoutMs`; throws naming `what` when it never does.
 * The wait is for a condition with a deadline, never a fixed sleep.
 */
export async function waitFor(
  what: string,
  condition: () => boolean | Promise<boolean>,
  { timeoutMs = 20_000, everyMs = 50 }: { timeoutMs?: number; everyMs?: number } = {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}
