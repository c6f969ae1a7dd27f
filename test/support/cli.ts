import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { DEFAULT_TIMEOUT_MS, runProcess, spawnTracked, type RunResult, type Spawned } from './processes.ts';

export const BIN = fileURLToPath(new URL('../../bin/databank.js', import.meta.url));

export type { RunResult } from './processes.ts';

/** How long `databank serve` may take to print its readiness line (a first PGlite start is slow). */
const SERVE_START_MS = 60_000;
/** How long `stop()` waits after SIGTERM before the group is killed and stop() fails. */
const SERVE_STOP_MS = 30_000;

/**
 * Runs `databank ARGS` to completion with the given environment (added to a clean one), in a
 * process group of its own that is killed past `timeoutMs` or when the test ends.
 */
export async function runCli(
  args: readonly string[],
  env: Record<string, string>,
  { timeoutMs = DEFAULT_TIMEOUT_MS }: { timeoutMs?: number } = {},
): Promise<RunResult> {
  return runProcess(process.execPath, [BIN, ...args], { env: cleanEnv(env), timeoutMs, what: `databank ${args.join(' ')}` });
}

/** Only what a test names, plus PATH and HOME: no server variables leak in from the runner. */
export function cleanEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', LOG_LEVEL: 'warn', ...env };
}

/** A port of 127.0.0.1 that nothing listens on now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (!address || typeof address === 'string') throw new Error('no port');
  return address.port;
}

export interface Served {
  readonly child: Spawned['child'];
  readonly base: string;
  stdout: string;
  stderr: string;
  /** Sends SIGTERM and resolves with the exit code; kills the group and rejects past a deadline. */
  stop(): Promise<number | null>;
}

/**
 * Starts `databank serve` and resolves once it listens (its readiness line), or rejects if it
 * exits or does not listen in time. Its process group is killed when the test (or, started in a
 * `beforeAll`, the file) ends, whether or not `stop()` was called.
 */
export async function serve(env: Record<string, string>): Promise<Served> {
  const port = await freePort();
  const proc = spawnTracked(process.execPath, [BIN, 'serve'], {
    env: cleanEnv({ LOG_LEVEL: 'info', ...env, PORT: String(port) }),
    what: 'databank serve',
  });
  const { child } = proc;
  const served: Served = {
    child,
    base: `http://127.0.0.1:${port}`,
    stdout: '',
    stderr: '',
    async stop() {
      if (!proc.running()) return (await proc.exited).code;
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), SERVE_STOP_MS)));
      const outcome = await Promise.race([proc.exited, late]);
      clearTimeout(timer);
      if (outcome === 'late') {
        await proc.kill();
        throw new Error(`databank serve did not exit within ${SERVE_STOP_MS} ms of SIGTERM and was killed:\n${served.stderr}`);
      }
      return outcome.code;
    },
  };
  child.stderr?.on('data', (d: Buffer) => (served.stderr += d.toString()));
  let timer: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout?.on('data', (d: Buffer) => {
        served.stdout += d.toString();
        if (served.stdout.includes('Server listening at')) resolve();
      });
      void proc.exited.then(({ code, signal }) => reject(new Error(`databank serve exited with ${code ?? signal}: ${served.stderr}`)));
      timer = setTimeout(
        () => reject(new Error(`databank serve did not listen within ${SERVE_START_MS} ms:\n${served.stdout}${served.stderr}`)),
        SERVE_START_MS,
      );
    });
  } catch (err) {
    await proc.kill();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return served;
}

/** `databank serve` on `dir`, with the environment the CLI needs to reach it and its admin key. */
export async function serveDataDir(dir: string): Promise<{ s: Served; env: Record<string, string>; admin: { authorization: string } }> {
  const s = await serve({ DATABANK_DATA_DIR: dir });
  return {
    s,
    env: { DATABANK_DATA_DIR: dir, PORT: new URL(s.base).port },
    admin: { authorization: `Bearer ${readFileSync(join(dir, 'admin-key'), 'utf8').trim()}` },
  };
}
