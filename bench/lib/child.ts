import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { onCleanup } from './cleanup.ts';
import { BenchError, sleep } from './log.ts';

// pgbench with several scripts prints a paragraph per script after its totals; keep them all.
const TAIL_BYTES = 64 * 1024;

/**
 * Children still running. If this process dies without its cleanup (an uncaught error, a closed
 * stdout pipe), the 'exit' handler still kills them, so no server is left holding a port and a CPU.
 */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const proc of live) proc.kill('SIGKILL');
});

export interface Child {
  readonly pid: number;
  readonly label: string;
  /** Resolves with the exit code (null when killed by a signal). */
  readonly exited: Promise<number | null>;
  /** The last few KB of stdout and stderr, for error messages; API keys are masked. */
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts a process whose output is kept (not shown) and which is stopped however the run ends. */
export function startChild(
  label: string,
  command: string,
  args: readonly string[],
  options: { cwd: string; env: NodeJS.ProcessEnv },
): Child {
  const proc: ChildProcess = spawn(command, args, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
  if (proc.pid === undefined) throw new BenchError(`could not start ${label} (${command})`);
  let tail = '';
  const keep = (chunk: Buffer) => {
    tail = (tail + chunk.toString('utf8')).slice(-TAIL_BYTES);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  live.add(proc);
  const exited = new Promise<number | null>((resolve) => {
    proc.on('exit', (code) => {
      live.delete(proc);
      resolve(code);
    });
    proc.on('error', () => {
      live.delete(proc);
      resolve(-1);
    });
  });
  const stop = onCleanup(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  });
  return {
    pid: proc.pid,
    label,
    exited,
    output: () => tail.replace(/dbk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}/g, 'dbk_<masked>'),
    stop,
  };
}

/** A TCP port that was free a moment ago (the OS picks it; the child binds it right after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function statusOf(port: number, path: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, timeout: 2_000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

/** Polls until GET `path` answers 200; fails early, with the child's output, if the child exits. */
export async function waitForHttp(child: Child, port: number, path: string, timeoutMs = 60_000): Promise<void> {
  let exitCode: number | null | undefined;
  void child.exited.then((code) => {
    exitCode = code;
  });
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exitCode !== undefined) {
      throw new BenchError(`${child.label} exited (code ${exitCode}) before answering:\n${child.output()}`);
    }
    if ((await statusOf(port, path)) === 200) return;
    await sleep(100);
  }
  throw new BenchError(`${child.label} did not answer GET ${path} within ${timeoutMs / 1000}s:\n${child.output()}`);
}
