import type { Logger } from 'pino';
import type { RefreshOptions } from '../services/analytics/service.ts';
import type { RefreshResult } from '../services/analytics/etl.ts';
import type { EventStream, StreamEvent } from '../stores/stream/port.ts';
import { repeating } from './repeating.ts';
import type { ScheduleLock } from './schedule-lock.ts';
import { streamConsumer } from './stream-consumer.ts';
import { sleep, type Worker } from './worker.ts';

/** The consumer group of the analytics refresh. */
export const ANALYTICS_GROUP = 'analytics';

/** The schedule lock's name: one process of the deployment refreshes at a time. */
export const ANALYTICS_REFRESH_LOCK = 'analytics-refresh';

/** Events after which the reports are out of date: money moved, a customer or an account changed. */
const STALE_AFTER = /^(money|transfer|fee|customer|account)\./;

/** `AnalyticsService` fits. */
export interface AnalyticsRefresher {
  refresh(options?: RefreshOptions): Promise<RefreshResult>;
}

/**
 * Refreshes one at a time: a request while one runs is queued, and every request made while one
 * is queued joins it. A request's promise resolves once a refresh that started after the request
 * is done (or another process, holding the lock, was refreshing), so a caller that saw a change
 * knows the refresh it waited for includes it.
 */
export class CoalescedRefresh {
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;
  private lastStarted = Number.NEGATIVE_INFINITY;
  /** How many refreshes this process ran, and the last one's result. */
  runs = 0;
  last: RefreshResult | null = null;

  constructor(
    private readonly analytics: AnalyticsRefresher,
    private readonly lock: ScheduleLock,
    private readonly signal: AbortSignal,
    private readonly onRefreshed: (result: RefreshResult) => void = () => undefined,
  ) {}

  request(): Promise<void> {
    if (!this.running) {
      const run = this.runOnce().finally(() => {
        this.running = null;
      });
      this.running = run;
      return run;
    }
    this.queued ??= this.running
      .catch(() => undefined)
      .then(() => {
        this.queued = null;
        return this.request();
      });
    return this.queued;
  }

  /**
   * A request that waits until `gapMs` after the last refresh started: under a steady stream of
   * money events, refreshes then run every `gapMs` instead of back to back, each reading the
   * customers and accounts whole, which took the serving process's CPU from the requests.
   */
  async requestSpaced(gapMs: number): Promise<void> {
    const wait = this.lastStarted + gapMs - Date.now();
    if (wait > 0) await sleep(wait, this.signal);
    return this.request();
  }

  private async runOnce(): Promise<void> {
    if (this.signal.aborted) return;
    this.lastStarted = Date.now();
    await this.lock.tryRun(ANALYTICS_REFRESH_LOCK, async () => {
      const result = await this.analytics.refresh({ signal: this.signal });
      this.runs++;
      this.last = result;
      this.onRefreshed(result);
    });
  }
}

export interface AnalyticsWorkersOptions {
  readonly analytics: AnalyticsRefresher;
  readonly stream: EventStream;
  readonly lock: ScheduleLock;
  /** `DATABANK_ANALYTICS_REFRESH_MS`: the timer's period, the longest the reports fall behind. */
  readonly intervalMs: number;
  /** The least time between two refreshes asked for by events; default 5 s (or `intervalMs` if shorter). */
  readonly eventGapMs?: number;
  readonly logger?: Pick<Logger, 'debug'>;
}

/**
 * The analytics refresh, two ways into one coalesced refresh: the consumer group `analytics` asks
 * for one after events that change what the reports show, at most one every `eventGapMs` (and
 * acknowledges them once it is done; a failed refresh leaves them to be delivered again), and a timer refreshes every `intervalMs`
 * (and at start), so that reports are never further behind than that even when events are slow.
 */
export function analyticsWorkers(options: AnalyticsWorkersOptions): Worker[] {
  const stop = new AbortController();
  const eventGap = options.eventGapMs ?? Math.min(5_000, options.intervalMs);
  const refresher = new CoalescedRefresh(options.analytics, options.lock, stop.signal, (r) =>
    options.logger?.debug(
      { customers: r.customers, accounts: r.accounts, transactions: r.transactions, entries: r.entries, duration_ms: r.duration_ms, as_of: r.as_of },
      'analytics refreshed',
    ),
  );
  /** Stops the refresh under way when the host stops either worker. */
  const linked = (worker: Worker): Worker => ({
    name: worker.name,
    start(signal, runs) {
      signal.addEventListener('abort', () => stop.abort(), { once: true });
      return worker.start(signal, runs);
    },
    stop: () => worker.stop(),
  });
  return [
    linked(
      streamConsumer({
        group: ANALYTICS_GROUP,
        stream: options.stream,
        startAt: 'end',
        applier: {
          async apply(events: readonly StreamEvent[]) {
            if (events.some((e) => STALE_AFTER.test(e.type))) await refresher.requestSpaced(eventGap);
          },
        },
      }),
    ),
    linked(repeating({ name: 'analytics-refresh', intervalMs: options.intervalMs, run: () => refresher.request() })),
  ];
}
