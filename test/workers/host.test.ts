import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DEFAULT_BACKOFF, exponentialBackoff, type WorkerEvent } from '../../src/workers/host-events.ts';
import { WorkerHost } from '../../src/workers/host.ts';
import { aborted, type Worker } from '../../src/workers/worker.ts';
import { captureLogger, fakeWorker, manualClock, manualSleep, nextEvent } from './support.ts';

// Any rejection left unhandled by the host would land here (and fail vitest's run as well).
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
beforeEach(() => {
  unhandled.length = 0;
  process.on('unhandledRejection', onUnhandled);
});
afterEach(() => {
  process.off('unhandledRejection', onUnhandled);
  expect(unhandled).toEqual([]);
});

const crashed = (worker: string, crashes: number) => (e: WorkerEvent) =>
  e.type === 'crashed' && e.worker === worker && e.crashes === crashes;
const started = (worker: string, restarts: number) => (e: WorkerEvent) =>
  e.type === 'started' && e.worker === worker && e.restarts === restarts;

describe('back-off', () => {
  it('is 1 s doubling to at most 60 s by default', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 8, 50, 5000].map(DEFAULT_BACKOFF)).toEqual([
      1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000, 60_000,
    ]);
    expect([1, 2, 3].map(exponentialBackoff({ initialMs: 10, maxMs: 25 }))).toEqual([10, 20, 25]);
  });
});

describe('WorkerHost restarts', () => {
  it('restarts a crashed worker after each back-off, and logs every crash and restart', async () => {
    const { logger, lines } = captureLogger();
    const { sleep, waits } = manualSleep();
    const journal: string[] = [];
    const worker = fakeWorker('flaky', journal, {
      behaviour: async (signal, _runs, attempt) => {
        if (attempt < 3) throw new Error(`boom ${attempt}`);
        await aborted(signal);
      },
    });
    const host = new WorkerHost([worker], { logger, sleep });
    const firstCrash = nextEvent(host, crashed('flaky', 1));
    host.start();
    for (const [crashes, ms] of [[1, 1_000], [2, 2_000], [3, 4_000]] as const) {
      const event = crashes === 1 ? await firstCrash : await nextEvent(host, crashed('flaky', crashes));
      expect(event).toMatchObject({ restartInMs: ms, error: new Error(`boom ${crashes - 1}`) });
      // Nothing starts again until the back-off is over.
      expect(waits.map((w) => w.ms)).toEqual([1_000, 2_000, 4_000].slice(0, crashes));
      expect(journal.length).toBe(crashes);
      expect(host.states()[0]?.status).toBe('restarting');
      const restarted = nextEvent(host, started('flaky', crashes));
      waits[crashes - 1]?.release();
      await restarted;
    }
    expect(journal).toEqual(['start flaky', 'start flaky', 'start flaky', 'start flaky']);
    expect(host.states()).toEqual([
      { name: 'flaky', status: 'running', restarts: 3, runs: 3, failures: 3, lastSuccessAt: null, lastError: 'boom 2' },
    ]);
    const logged = lines.filter((l) => l.worker === 'flaky').map((l) => [l.msg, l.restartInMs ?? l.restarts]);
    expect(logged).toEqual([
      ['worker crashed', 1_000],
      ['worker restarting', 1],
      ['worker crashed', 2_000],
      ['worker restarting', 2],
      ['worker crashed', 4_000],
      ['worker restarting', 3],
    ]);
    await host.stop();
    expect(host.states()[0]?.status).toBe('stopped');
  });

  it('starts the crash streak again after a successful run or a long enough life', async () => {
    const { logger } = captureLogger();
    const { sleep, waits } = manualSleep();
    const clock = manualClock();
    const worker = fakeWorker('w', [], {
      behaviour: async (_signal, runs, attempt) => {
        if (attempt === 2) runs.succeeded();
        if (attempt === 4) clock.advance(60_000);
        throw new Error(`crash ${attempt}`);
      },
    });
    const host = new WorkerHost([worker], { logger, sleep, now: clock.now, stableAfterMs: 60_000 });
    const delays: number[] = [];
    host.on((e) => {
      if (e.type !== 'crashed') return;
      delays.push(e.restartInMs);
      if (delays.length < 6) queueMicrotask(() => waits[delays.length - 1]?.release());
    });
    const sixth = nextEvent(host, (e) => e.type === 'crashed' && delays.length === 6);
    host.start();
    await sixth;
    // 1 and 2 s; a success resets (1, 2 s); 60 s of life resets (1, 2 s).
    expect(delays).toEqual([1_000, 2_000, 1_000, 2_000, 1_000, 2_000]);
    await host.stop();
  });

  it('does not restart a worker whose start returned, nor one stopped during its back-off', async () => {
    const { logger } = captureLogger();
    const { sleep, waits } = manualSleep();
    const journal: string[] = [];
    const done = fakeWorker('done', journal, { behaviour: async () => undefined });
    const crashing = fakeWorker('crashing', journal, {
      behaviour: () => {
        // Thrown before any promise exists: still a crash, not an exception in the host.
        throw new Error('at once');
      },
    });
    const host = new WorkerHost([done, crashing], { logger, sleep });
    const finished = nextEvent(host, (e) => e.type === 'finished' && e.worker === 'done');
    const crash = nextEvent(host, crashed('crashing', 1));
    host.start();
    await Promise.all([finished, crash]);
    expect(waits.length).toBe(1);
    await host.stop();
    expect(journal.filter((j) => j.startsWith('start'))).toEqual(['start done', 'start crashing']);
    expect(host.states().map((s) => [s.name, s.status, s.restarts])).toEqual([
      ['done', 'stopped', 0],
      ['crashing', 'stopped', 0],
    ]);
  });

  it('refuses two workers of one name, and a second start', () => {
    const { logger } = captureLogger();
    expect(() => new WorkerHost([fakeWorker('a', []), fakeWorker('a', [])], { logger })).toThrow(/repeated: a/);
    const host = new WorkerHost([], { logger });
    host.start();
    expect(() => host.start()).toThrow(/started already/);
  });
});

describe('WorkerHost stop', () => {
  it('stops the workers in reverse order, each one ended before the next is asked', async () => {
    const { logger } = captureLogger();
    const journal: string[] = [];
    const make = (name: string) =>
      fakeWorker(name, journal, {
        behaviour: async (signal) => {
          await aborted(signal);
          journal.push(`end ${name}`);
        },
      });
    const host = new WorkerHost([make('a'), make('b'), make('c')], { logger });
    const allUp = Promise.all(['a', 'b', 'c'].map((n) => nextEvent(host, started(n, 0))));
    host.start();
    await allUp;
    const stopped: string[] = [];
    host.on((e) => void (e.type === 'stopped' && stopped.push(e.worker)));
    await host.stop();
    expect(journal).toEqual(['start a', 'start b', 'start c', 'stop c', 'end c', 'stop b', 'end b', 'stop a', 'end a']);
    expect(stopped).toEqual(['c', 'b', 'a']);
    expect(host.stop()).toBe(host.stop());
  });

  it('a failing stop is logged and does not skip the others; stop() then rejects naming it', async () => {
    const { logger, lines } = captureLogger();
    const journal: string[] = [];
    const workers: Worker[] = [
      fakeWorker('a', journal),
      fakeWorker('b', journal, { stop: async () => Promise.reject(new Error('b will not stop')) }),
      {
        name: 'c',
        start: (signal) => aborted(signal),
        stop: () => {
          journal.push('stop c');
          throw new Error('c throws at once');
        },
      },
    ];
    const host = new WorkerHost(workers, { logger });
    const events: WorkerEvent[] = [];
    host.on((e) => void (e.type === 'stopped' && events.push(e)));
    host.start();
    const result = await host.stop().then(
      () => null,
      (err: unknown) => err,
    );
    expect(result).toBeInstanceOf(AggregateError);
    expect((result as AggregateError).message).toBe('2 worker(s) failed to stop: c, b');
    expect((result as AggregateError).errors.map((e: Error) => e.message)).toEqual(['c throws at once', 'b will not stop']);
    expect(journal).toEqual(['start a', 'start b', 'stop c', 'stop b', 'stop a']);
    expect(events.map((e) => [e.worker, e.type === 'stopped' && e.error instanceof Error])).toEqual([
      ['c', true],
      ['b', true],
      ['a', false],
    ]);
    expect(host.states().every((s) => s.status === 'stopped')).toBe(true);
    expect(lines.filter((l) => l.msg === 'worker failed to stop').map((l) => l.worker)).toEqual(['c', 'b']);
  });

  it('goes on after stopTimeoutMs when a worker ignores its signal and its stop() hangs', async () => {
    const { logger, lines } = captureLogger();
    let release!: () => void;
    const stuck = fakeWorker('stuck', [], {
      behaviour: () => new Promise<void>((r) => (release = r)),
      stop: () => new Promise<void>(() => undefined),
    });
    const host = new WorkerHost([fakeWorker('first', []), stuck], { logger, stopTimeoutMs: 20 });
    host.start();
    await host.stop();
    expect(lines.find((l) => l.worker === 'stuck')?.msg).toBe('worker still running after stop: going on without it');
    release();
  });

  it('keeps going when a listener throws', async () => {
    const { logger, lines } = captureLogger();
    const host = new WorkerHost([fakeWorker('a', [])], { logger });
    host.on(() => {
      throw new Error('listener bug');
    });
    const seen = nextEvent(host, started('a', 0));
    host.start();
    await seen;
    await host.stop();
    expect(lines.filter((l) => l.msg === 'worker event listener failed').map((l) => l.event)).toEqual(['started', 'stopped']);
  });
});
