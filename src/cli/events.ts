import { setTimeout as delay } from 'node:timers/promises';
import { InvalidArgumentError, type Command } from 'commander';
import type { Background } from '../background.ts';
import type { GroupInfo, StreamEvent } from '../stores/stream/port.ts';
import { OPERATOR, withBackground } from './async-ops.ts';
import { printResult, printText, table } from './output.ts';
import { progress } from './progress.ts';
import { callServer, serverRuns, withServerOptions, type ServerOptions } from './server-client.ts';

/**
 * `databank events tail|groups|replay`: the event stream (the PostgreSQL log, or NATS JetStream
 * with NATS_URL) that the outbox relay feeds. They ask the running server, or, with none, open
 * the stream themselves.
 */

interface TailOptions extends ServerOptions {
  readonly from?: number;
  readonly limit: number;
  readonly follow?: boolean;
}

interface ReplayOptions extends ServerOptions {
  readonly group: string;
  readonly from: number;
}

function seq(value: string): number {
  if (!/^[0-9]{1,15}$/.test(value)) throw new InvalidArgumentError('expected a sequence number (0 or more)');
  return Number(value);
}

function count(value: string): number {
  if (!/^[0-9]{1,3}$/.test(value) || Number(value) < 1 || Number(value) > 100) throw new InvalidArgumentError('expected 1 to 100');
  return Number(value);
}

/** Registers `events` and its subcommands. */
export function register(program: Command): void {
  const events = program.command('events').description('the event stream fed by the transactional outbox');
  withServerOptions(events.command('tail').description('the latest events (from --from on), and with --follow the new ones as they come'))
    .option('--from <seq>', 'the first sequence number (default: the last --limit events)', seq)
    .option('--limit <n>', 'events per read (1 to 100)', count, 20)
    .option('--follow', 'keep printing new events until interrupted')
    .action(tail);
  withServerOptions(events.command('groups').description('the consumer groups, their positions and lag')).action(async (opts: ServerOptions) => {
    const info = await groupsOf(opts);
    printResult(opts, info, () =>
      [`head ${info.head}`, ...info.groups.map((g) => `${g.group}\n${table({ position: g.position, lag: g.lag })}`)].join('\n'),
    );
  });
  withServerOptions(events.command('replay').description('drop a projection and rebuild it from the start of the stream'))
    .requiredOption('--group <group>', 'the consumer group of the projection: audit')
    .option('--from <seq>', 'where to start reading: 0, the start of the stream', seq, 0)
    .action(replay);
}

async function groupsOf(opts: ServerOptions): Promise<{ head: number; groups: GroupInfo[] }> {
  if (await serverRuns(opts)) return (await callServer(opts, 'GET', '/events/groups')) as { head: number; groups: GroupInfo[] };
  return withBackground((b) => b.ops.groups(OPERATOR));
}

async function tail(opts: TailOptions): Promise<void> {
  const viaServer = await serverRuns(opts);
  const read = async (from: number, limit: number) =>
    viaServer
      ? ((await callServer(opts, 'GET', `/events?from=${from}&limit=${limit}`)) as { result: Array<{ seq: number; event: StreamEvent }> }).result
      : withBackground((b) => b.ops.read(OPERATOR, from, limit));
  let next = opts.from ?? Math.max(1, (await groupsOf(opts)).head - opts.limit + 1);
  const stop = new AbortController();
  process.once('SIGINT', () => stop.abort());
  for (;;) {
    const batch = await read(next, opts.limit);
    for (const { seq: s, event } of batch) {
      if (opts.json) printText(JSON.stringify({ seq: s, event }));
      else printText(`${s}  ${event.occurred_at}  ${event.type}  ${event.aggregate_id}  ${JSON.stringify(event.payload)}`);
      next = s + 1;
    }
    if (!opts.follow || stop.signal.aborted) return;
    if (batch.length < opts.limit) await delay(500, undefined, { signal: stop.signal }).catch(() => undefined);
  }
}

async function replay(opts: ReplayOptions): Promise<void> {
  if (opts.from !== 0) throw new InvalidArgumentError('--from: a projection is rebuilt from the start of the stream: 0');
  const bar = progress(!opts.json, `rebuilding ${opts.group}`);
  try {
    let done: { group: string; events: number; position: number };
    if (await serverRuns(opts)) {
      const started = (await callServer(opts, 'POST', '/events/replay', { group: opts.group, from: 0 })) as { head: number };
      done = await waitForGroup(opts, opts.group, started.head, (n) => bar.update(n, started.head, 'events'));
    } else {
      done = await withBackground((b) => rebuildHere(b, opts.group, (n, total) => bar.update(n, total, 'events')));
    }
    bar.stop();
    printResult(opts, done, `rebuilt ${done.group} from ${done.events} event(s)`);
  } finally {
    bar.stop();
  }
}

/** Waits until the server's consumer of `group` has read up to `head`; fails when it stops moving for a minute. */
async function waitForGroup(opts: ServerOptions, group: string, head: number, onProgress: (n: number) => void) {
  let last = -1;
  let still = Date.now();
  for (;;) {
    const info = (await groupsOf(opts)).groups.find((g) => g.group === group);
    const position = info?.position ?? 0;
    onProgress(Math.min(position, head));
    if (position >= head) return { group, events: head, position };
    if (position !== last) {
      last = position;
      still = Date.now();
    } else if (Date.now() - still > 60_000) {
      throw new Error(`the ${group} consumer has not moved for a minute (at ${position} of ${head}): is a worker running?`);
    }
    await delay(200);
  }
}

/** With no server: drop the projection and run its consumer here until it has read the whole stream. */
async function rebuildHere(b: Background, group: string, onProgress: (n: number, total: number) => void) {
  const { head } = await b.ops.replay(OPERATOR, group);
  const sub = await b.stream.subscribe(group, 'start');
  let position = 0;
  try {
    while (position < head) {
      const batch = await sub.fetch(500, 1_000);
      if (batch.length === 0) continue;
      await b.activity.apply(batch.map((d) => d.event));
      const last = batch[batch.length - 1] as (typeof batch)[number];
      await last.ack();
      position = last.seq;
      onProgress(Math.min(position, head), head);
    }
  } finally {
    await sub.close();
  }
  return { group, events: head, position };
}
