import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import type { WorkerEvent } from '../../src/workers/host-events.ts';
import type { WorkerHost } from '../../src/workers/host.ts';
import { aborted, type RunRecorder, type Worker } from '../../src/workers/worker.ts';

/** A logger that keeps its lines, parsed, for assertions. */
export function captureLogger(): { readonly logger: Logger; readonly lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), lines };
}

/** Resolves with the first event from now on that matches; rejects after 10 s so a hang names itself. */
export function nextEvent(host: WorkerHost, match: (e: WorkerEvent) => boolean): Promise<WorkerEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error('no matching worker event within 10 s'));
    }, 10_000);
    const off = host.on((e) => {
      if (!match(e)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

/** A back-off sleep the test releases by hand, recording each wait it was asked for. */
export function manualSleep() {
  const waits: Array<{ readonly ms: number; readonly release: () => void }> = [];
  const sleep = (ms: number, signal: AbortSignal) =>
    new Promise<void>((resolve) => {
      waits.push({ ms, release: resolve });
      signal.addEventListener('abort', () => resolve(), { once: true });
    });
  return { sleep, waits };
}

/** A clock the test moves by hand. */
export function manualClock(start = 1_700_000_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => void (now += ms) };
}

/**
 * A worker the test drives: each `start` runs `behaviour` (default: until aborted), and the
 * journal records starts and stops in order across workers that share it.
 */
export function fakeWorker(
  name: string,
  journal: string[],
  options: {
    readonly behaviour?: (signal: AbortSignal, runs: RunRecorder, attempt: number) => Promise<void>;
    readonly stop?: () => Promise<void>;
  } = {},
): Worker & { readonly recorder: () => RunRecorder } {
  let attempt = 0;
  let recorder: RunRecorder | null = null;
  return {
    name,
    async start(signal, runs) {
      recorder = runs;
      journal.push(`start ${name}`);
      await (options.behaviour ?? ((s: AbortSignal) => aborted(s)))(signal, runs, attempt++);
    },
    async stop() {
      journal.push(`stop ${name}`);
      await options.stop?.();
    },
    recorder: () => {
      if (!recorder) throw new Error(`${name} was not started`);
      return recorder;
    },
  };
}
