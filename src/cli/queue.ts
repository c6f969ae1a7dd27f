import { InvalidArgumentError, type Command } from 'commander';
import type { DeadLetter, QueueStats } from '../stores/queue/port.ts';
import { OPERATOR, withBackground } from './async-ops.ts';
import { printResult, table } from './output.ts';
import { callServer, serverRuns, withServerOptions, type ServerOptions } from './server-client.ts';

/**
 * `databank queue stats` and `databank queue dlq list|retry|purge`: the job queues and their
 * dead-letter queues. They ask the running server (on the embedded engine it holds the database),
 * or, with none, open the queue themselves.
 */

const QUEUES = ['image.variants', 'statement.monthly'] as const;

function queueName(value: string): string {
  if (!(QUEUES as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected one of ${QUEUES.join(', ')}`);
  return value;
}

function limit(value: string): number {
  if (!/^[0-9]{1,3}$/.test(value) || Number(value) < 1 || Number(value) > 100) throw new InvalidArgumentError('expected 1 to 100');
  return Number(value);
}

/** Registers `queue` and its subcommands. */
export function register(program: Command): void {
  const queue = program.command('queue').description('the job queues (pg-boss, or RabbitMQ with AMQP_URL) and their dead letters');
  withServerOptions(queue.command('stats').description('jobs waiting, delayed, in flight and dead-lettered, per queue')).action(
    async (opts: ServerOptions) => {
      const stats = (await serverRuns(opts))
        ? ((await callServer(opts, 'GET', '/queues')) as { backend: string; result: QueueStats[] })
        : await withBackground(async (b) => ({ backend: b.queue.kind, result: await b.ops.queues(OPERATOR) }));
      printResult(opts, stats, () =>
        [`backend ${stats.backend}`, ...stats.result.map((s) => `\n${s.queue}\n${table({ waiting: s.waiting, delayed: s.delayed, active: s.active, dead: s.deadLetters })}`)].join('\n'),
      );
    },
  );
  const dlq = queue.command('dlq').description("a queue's dead-letter queue: jobs that failed every attempt");
  withServerOptions(dlq.command('list').description('the dead letters, oldest first'))
    .argument('<queue>', QUEUES.join(' or '), queueName)
    .option('--limit <n>', 'at most this many (1 to 100)', limit, 100)
    .action(async (name: string, opts: ServerOptions & { limit: number }) => {
      const result = (await serverRuns(opts))
        ? ((await callServer(opts, 'GET', `/queues/${name}/dead-letters?limit=${opts.limit}`)) as { result: DeadLetter[] }).result
        : await withBackground((b) => b.ops.deadLetters(OPERATOR, name, opts.limit));
      printResult(opts, { result }, () =>
        result.length === 0
          ? `no dead letters in ${name}`
          : result.map((d) => `${d.id}  attempts ${d.attempts}  ${d.failedAt}  ${d.error ?? ''}  ${JSON.stringify(d.payload)}`).join('\n'),
      );
    });
  withServerOptions(dlq.command('retry').description('send dead letters back to the queue with fresh attempts'))
    .argument('<queue>', QUEUES.join(' or '), queueName)
    .option('--id <id...>', 'only these jobs (default: every dead letter)')
    .action(async (name: string, opts: ServerOptions & { id?: string[] }) => {
      const retried = (await serverRuns(opts))
        ? ((await callServer(opts, 'POST', `/queues/${name}/dead-letters/retry`, opts.id ? { ids: opts.id } : {})) as { retried: number }).retried
        : await withBackground((b) => b.ops.retryDeadLetters(OPERATOR, name, opts.id));
      printResult(opts, { retried }, `sent ${retried} dead letter(s) of ${name} back to the queue`);
    });
  withServerOptions(dlq.command('purge').description('drop every dead letter of the queue'))
    .argument('<queue>', QUEUES.join(' or '), queueName)
    .action(async (name: string, opts: ServerOptions) => {
      const purged = (await serverRuns(opts))
        ? ((await callServer(opts, 'DELETE', `/queues/${name}/dead-letters`)) as { purged: number }).purged
        : await withBackground((b) => b.ops.purgeDeadLetters(OPERATOR, name));
      printResult(opts, { purged }, `dropped ${purged} dead letter(s) of ${name}`);
    });
}
