import type { JobQueue } from '../stores/queue/port.ts';
import { JOB_PRIORITY, type JobMessage, type JobsService } from '../services/jobs.ts';
import type { ScheduleLock } from './schedule-lock.ts';
import { polling } from './polling.ts';
import type { Worker } from './worker.ts';

/**
 * Hands jobs written by requests to the queue: reads undispatched rows of the jobs table, sends
 * each with the job's id as its message id, and marks them dispatched once the queue has them.
 * A crash between the two sends them again: pg-boss adds nothing for a known id, and on RabbitMQ
 * the handler's `processed_messages` row makes the second delivery change nothing.
 */
export function jobDispatcher(options: {
  readonly jobs: JobsService;
  readonly queue: JobQueue;
  readonly lock: ScheduleLock;
  readonly idleMs?: number;
}): Worker {
  const batch = 100;
  return polling({
    name: 'job-dispatcher',
    lock: options.lock,
    batch,
    idleMs: options.idleMs ?? 100,
    turn: async () => {
      const due = await options.jobs.undispatched(batch);
      const sent: string[] = [];
      try {
        // One at a time, in the order the jobs were written: FIFO within a priority holds.
        for (const job of due) {
          const message: JobMessage = { job_id: job.id };
          await options.queue.send(job.kind, message, { id: job.id, priority: JOB_PRIORITY[job.kind] });
          sent.push(job.id);
        }
      } finally {
        // Marked in one statement, also when a send failed part-way: those sent stay sent.
        await options.jobs.markDispatched(sent);
      }
      return due.length;
    },
  });
}
