import type { Logger } from 'pino';
import type { JobKind } from '../stores/sql/schema.ts';
import type { JobQueue } from '../stores/queue/port.ts';
import type { JobMessage, JobsService } from '../services/jobs.ts';
import { PermanentJobError, type JobRow } from '../services/variant-job.ts';
import type { Worker } from './worker.ts';

/** What runs one kind of job. `run` commits its side effect with the job's `processed_messages` row. */
export interface JobHandler {
  run(job: JobRow, signal: AbortSignal): Promise<void>;
  /** After the last attempt failed (or a permanent error): leave nothing waiting on the job. */
  failed?(job: JobRow): Promise<void>;
}

/**
 * Consumes one queue: for each delivery, reads the job's row (a completed job is acknowledged at
 * once), marks it running with its attempt, and runs the handler; the queue acknowledges after the
 * handler resolved. A failure marks the job queued again (the queue retries it after its back-off)
 * or, after `maxAttempts` or a permanent error, failed; a permanent error is acknowledged, since
 * retrying cannot help, the others go to the dead-letter queue after the last attempt.
 */
export function jobConsumer(options: {
  readonly kind: JobKind;
  readonly queue: JobQueue;
  readonly jobs: JobsService;
  readonly handler: JobHandler;
  readonly prefetch: number;
  readonly maxAttempts: number;
  readonly logger: Logger;
  /** Told of each finished delivery (metrics). */
  readonly onOutcome?: (outcome: 'completed' | 'retried' | 'failed') => void;
}): Worker {
  const { kind, queue, jobs, handler } = options;
  let loop: Promise<void> | null = null;
  return {
    name: `jobs:${kind}`,
    start(signal, runs) {
      loop = queue.consume<JobMessage>(
        kind,
        async (delivery, jobSignal) => {
          const row = await jobs.forHandler(delivery.payload.job_id);
          if (!row || row.state === 'completed') return;
          await jobs.started(row.id, delivery.attempt);
          try {
            await handler.run(row, jobSignal);
            options.onOutcome?.('completed');
            runs.succeeded();
          } catch (err) {
            const permanent = err instanceof PermanentJobError;
            const final = permanent || delivery.attempt >= options.maxAttempts;
            const message = err instanceof Error ? err.message : String(err);
            await jobs.failedAttempt(row.id, message, final);
            if (final) await handler.failed?.(row);
            options.onOutcome?.(final ? 'failed' : 'retried');
            options.logger.warn({ err, job_id: row.id, kind, attempt: delivery.attempt, final }, 'job failed');
            runs.failed(err);
            if (!permanent) throw err;
          }
        },
        { prefetch: options.prefetch, signal },
      );
      return loop;
    },
    async stop() {
      await loop;
    },
  };
}
