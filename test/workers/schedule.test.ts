import { describe, expect, it } from 'vitest';
import { WorkerHost } from '../../src/workers/host.ts';
import { scheduled } from '../../src/workers/schedule.ts';
import { SINGLE_PROCESS_LOCK, type ScheduleLock } from '../../src/workers/schedule-lock.ts';
import { captureLogger } from './support.ts';

function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

describe('scheduled', () => {
  it('reads the pattern in UTC, and refuses a bad one at once', () => {
    const hourly = scheduled({ name: 'h', cron: '17 * * * *', lock: SINGLE_PROCESS_LOCK, run: async () => undefined });
    const next = hourly.nextRun();
    expect([next?.getUTCMinutes(), next?.getUTCSeconds()]).toEqual([17, 0]);
    const daily = scheduled({ name: 'd', cron: '0 3 * * *', lock: SINGLE_PROCESS_LOCK, run: async () => undefined });
    expect(daily.nextRun()?.getUTCHours()).toBe(3);
    expect(() => scheduled({ name: 'x', cron: 'every tuesday', lock: SINGLE_PROCESS_LOCK, run: async () => undefined })).toThrow();
  });

  it('runs on runNow, and records the run with the host', async () => {
    const { logger } = captureLogger();
    let runs = 0;
    const job = scheduled({ name: 'job', cron: '0 0 1 1 *', lock: SINGLE_PROCESS_LOCK, run: async () => void runs++ });
    const host = new WorkerHost([job], { logger });
    host.start();
    expect(await job.runNow()).toBe('succeeded');
    expect(runs).toBe(1);
    expect(host.states()[0]).toMatchObject({ runs: 1, failures: 0, status: 'running' });
    await host.stop();
  });

  it('does not start a run while the previous one runs in this process', async () => {
    let runs = 0;
    const { opened, open } = gate();
    const job = scheduled({
      name: 'slow',
      cron: '0 0 1 1 *',
      lock: SINGLE_PROCESS_LOCK,
      run: async () => {
        runs++;
        await opened;
      },
    });
    const first = job.runNow();
    expect(await job.runNow()).toBe('busy');
    open();
    expect(await first).toBe('succeeded');
    expect(await job.runNow()).toBe('succeeded');
    expect(runs).toBe(2);
  });

  it('records a failed run and goes on with the schedule', async () => {
    const { logger, lines } = captureLogger();
    let calls = 0;
    const job = scheduled({
      name: 'flaky',
      cron: '0 0 1 1 *',
      lock: SINGLE_PROCESS_LOCK,
      run: async () => {
        if (calls++ === 0) throw new Error('database away');
      },
    });
    const host = new WorkerHost([job], { logger });
    host.start();
    expect(await job.runNow()).toBe('failed');
    expect(await job.runNow()).toBe('succeeded');
    expect(host.states()[0]).toMatchObject({ status: 'running', restarts: 0, runs: 2, failures: 1, lastError: 'database away' });
    expect(lines.find((l) => l.msg === 'worker run failed')?.worker).toBe('flaky');
    await host.stop();
  });

  it('skips the run when the lock is held elsewhere', async () => {
    let runs = 0;
    const held: ScheduleLock = { tryRun: async () => false };
    const job = scheduled({ name: 'elsewhere', cron: '0 0 1 1 *', lock: held, run: async () => void runs++ });
    expect(await job.runNow()).toBe('skipped');
    expect(runs).toBe(0);
  });

  it('ticks by the clock, and stop() waits for the run under way, whose signal aborts', async () => {
    const { logger } = captureLogger();
    const journal: string[] = [];
    const { opened, open } = gate();
    const firstTick = gate();
    const job = scheduled({
      name: 'every-second',
      cron: '* * * * * *',
      lock: SINGLE_PROCESS_LOCK,
      run: async (signal) => {
        journal.push('run');
        if (journal.length > 1) return;
        firstTick.open();
        signal.addEventListener('abort', () => {
          journal.push('aborted');
          // A macrotask later, so that a stop() which did not wait would have resolved by now.
          setImmediate(open);
        });
        await opened;
        journal.push('run ends');
      },
    });
    const host = new WorkerHost([job], { logger });
    host.start();
    await firstTick.opened;
    await host.stop().then(() => journal.push('host stopped'));
    expect(journal).toEqual(['run', 'aborted', 'run ends', 'host stopped']);
  });
});
