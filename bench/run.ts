// `npm run bench -- <name> [--json] [--warmup <s>] [--duration <s>]`: runs one benchmark, writes
// bench/results/<name>.json and prints a table (or, with --json, the JSON on stdout).
import { analytics } from './analytics.ts';
import { asyncFlows } from './async.ts';
import { backup } from './backup.ts';
import { cache } from './cache.ts';
import type { Benchmark, Timing } from './lib/benchmark.ts';
import { cleanupAll } from './lib/cleanup.ts';
import { BenchError, progress } from './lib/log.ts';
import { formatResult, writeResult } from './lib/report.ts';
import { reads } from './reads.ts';
import { replicas } from './replicas.ts';
import { startup } from './startup.ts';
import { staticFiles } from './static.ts';
import { transfers } from './transfers.ts';

const BENCHMARKS: readonly Benchmark[] = [transfers, reads, cache, staticFiles, startup, asyncFlows, backup, replicas, analytics];

function usage(): string {
  return [
    'usage: npm run bench -- <name> [--json] [--warmup <seconds>] [--duration <seconds>]',
    '',
    'benchmarks:',
    ...BENCHMARKS.map((b) => `  ${b.name.padEnd(10)} ${b.description} (${b.defaults.warmupS}s warm-up, ${b.defaults.durationS}s per series)`),
    '',
    'options:',
    '  --json              print the result JSON on stdout (the table then goes to stderr)',
    '  --warmup <s>        warm-up per series, instead of the default',
    '  --duration <s>      measured time per series, instead of the default',
    '  --help              this text',
    '',
    'environment:',
    '  DATABASE_URL        PostgreSQL to create the benchmark databases on (default postgres://postgres@127.0.0.1:5432/test)',
    '  BENCH_DATABANK_DIR  another databank checkout to benchmark, e.g. a scratch copy with a change',
    '  PGBENCH             pgbench binary (default /usr/bin/pgbench)',
    '  REDIS_URL           Redis for the cache benchmark (default redis://127.0.0.1:6379)',
    '  REDIS_BENCHMARK     redis-benchmark binary (default /usr/bin/redis-benchmark)',
    '  NGINX               nginx binary for the static benchmark (default /usr/sbin/nginx)',
    '  AMQP_URL            RabbitMQ for the async benchmark (default amqp://guest:guest@127.0.0.1:5672)',
    '  NATS_URL            NATS with JetStream for the async benchmark (default nats://127.0.0.1:4222)',
    '  BENCH_BACKUP_MB     database size for the backup benchmark, in MB (default 1024)',
    '  PG_BIN              PostgreSQL server tools for the replicas benchmark\'s own clusters (default /usr/lib/postgresql/15/bin)',
    '',
    'Every run writes bench/results/<name>.json; progress goes to stderr.',
  ].join('\n');
}

interface Args {
  readonly name: string | null;
  readonly json: boolean;
  readonly help: boolean;
  readonly warmupS: number | null;
  readonly durationS: number | null;
}

function parseArgs(argv: readonly string[]): Args {
  let name: string | null = null;
  let json = false;
  let help = false;
  let warmupS: number | null = null;
  let durationS: number | null = null;
  const seconds = (flag: string, value: string | undefined, min: number) => {
    if (value === undefined || !/^\d+$/.test(value) || Number(value) < min) {
      throw new BenchError(`${flag} needs a whole number of seconds, at least ${min}`);
    }
    return Number(value);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? arg.split('=', 2) : [arg, undefined];
    if (flag === '--json') json = true;
    else if (flag === '--help' || flag === '-h') help = true;
    else if (flag === '--warmup') warmupS = seconds('--warmup', inline ?? argv[++i], 0);
    else if (flag === '--duration') durationS = seconds('--duration', inline ?? argv[++i], 1);
    else if (arg.startsWith('-')) throw new BenchError(`unknown option ${arg}`);
    else if (name === null) name = arg;
    else throw new BenchError(`one benchmark per run (got ${name} and ${arg})`);
  }
  return { name, json, help, warmupS, durationS };
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  if (args.help || args.name === null) {
    (args.help ? process.stdout : process.stderr).write(`${usage()}\n`);
    return args.help ? 0 : 2;
  }
  const bench = BENCHMARKS.find((b) => b.name === args.name);
  if (!bench) throw new BenchError(`no benchmark named "${args.name}"; try: ${BENCHMARKS.map((b) => b.name).join(', ')}`);
  const timing: Timing = {
    warmupS: args.warmupS ?? bench.defaults.warmupS,
    durationS: args.durationS ?? bench.defaults.durationS,
  };
  progress(`${bench.name}: ${bench.description}`);
  const result = await bench.run(timing);
  const file = writeResult(result);
  progress(`wrote ${file}`);
  const text = formatResult(result);
  if (args.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    process.stderr.write(`\n${text}\n`);
  } else {
    process.stdout.write(`\n${text}\n`);
  }
  return 0;
}

// Ctrl-C skips `finally`: stop the children and drop the databases before leaving.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`\n${signal}: cleaning up\n`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

try {
  process.exitCode = await main();
} catch (err) {
  process.stderr.write(`bench: ${err instanceof BenchError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  await cleanupAll();
  process.exitCode = err instanceof BenchError ? 2 : 1;
}
