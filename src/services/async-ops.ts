import { DatabankError } from '../domain/errors.ts';
import type { Principal } from '../domain/types.ts';
import type { DeadLetter, JobQueue, QueueStats } from '../stores/queue/port.ts';
import type { JobKind } from '../stores/sql/schema.ts';
import type { EventStream, GroupInfo, StreamEvent } from '../stores/stream/port.ts';
import { assertAdmin } from './access.ts';
import { AUDIT_GROUP, type ActivityService } from './activity.ts';
import type { JobsService } from './jobs.ts';

/** The queues the bank runs, one per job kind. */
export const JOB_KINDS: readonly JobKind[] = ['image.variants', 'statement.monthly'];

/** The projections `events replay` can rebuild, by consumer group. */
export const REPLAYABLE_GROUPS: readonly string[] = [AUDIT_GROUP];

/**
 * Operations on the queue and the stream for admins (`databank queue …`, `databank events …`,
 * through the admin routes): on the embedded engine only the server's process may open the
 * database, so the CLI asks it.
 */
export class AsyncOps {
  constructor(
    private readonly queue: JobQueue,
    private readonly stream: EventStream,
    private readonly jobs: JobsService,
    private readonly activity: ActivityService,
  ) {}

  get backends(): { queue: JobQueue['kind']; stream: EventStream['kind'] } {
    return { queue: this.queue.kind, stream: this.stream.kind };
  }

  async queues(principal: Principal): Promise<QueueStats[]> {
    assertAdmin(principal);
    return Promise.all(JOB_KINDS.map((k) => this.queue.stats(k)));
  }

  async deadLetters(principal: Principal, queue: string, limit: number): Promise<DeadLetter[]> {
    assertAdmin(principal);
    return this.queue.deadLetters(kindOf(queue), limit);
  }

  /** Sends dead letters back with fresh attempts; their jobs show `queued` again. */
  async retryDeadLetters(principal: Principal, queue: string, ids?: readonly string[]): Promise<number> {
    assertAdmin(principal);
    const kind = kindOf(queue);
    const letters = ids ?? (await this.queue.deadLetters(kind, 10_000)).map((d) => d.id);
    const retried = await this.queue.retryDeadLetters(kind, ids);
    await this.jobs.requeued(letters);
    return retried;
  }

  async purgeDeadLetters(principal: Principal, queue: string): Promise<number> {
    assertAdmin(principal);
    return this.queue.purgeDeadLetters(kindOf(queue));
  }

  async groups(principal: Principal): Promise<{ head: number; groups: GroupInfo[] }> {
    assertAdmin(principal);
    const [head, groups] = await Promise.all([this.stream.head(), this.stream.groups()]);
    return { head, groups };
  }

  async read(principal: Principal, fromSeq: number, limit: number): Promise<Array<{ seq: number; event: StreamEvent }>> {
    assertAdmin(principal);
    return this.stream.read(fromSeq, limit);
  }

  /**
   * Drops the projection of `group` and moves the group back to the stream's start: the
   * group's consumer builds it again from every event ("going back in time").
   */
  async replay(principal: Principal, group: string): Promise<{ group: string; head: number }> {
    assertAdmin(principal);
    if (!REPLAYABLE_GROUPS.includes(group)) {
      throw new DatabankError('DATABANK_ERR_VALIDATION', `group must be one of ${REPLAYABLE_GROUPS.join(', ')}: the projections that can be rebuilt`);
    }
    await this.activity.reset();
    await this.stream.resetGroup(group, 'start');
    return { group, head: await this.stream.head() };
  }
}

function kindOf(queue: string): JobKind {
  const kind = JOB_KINDS.find((k) => k === queue);
  if (!kind) throw new DatabankError('DATABANK_ERR_NOT_FOUND', `no queue ${queue}: the queues are ${JOB_KINDS.join(', ')}`);
  return kind;
}
