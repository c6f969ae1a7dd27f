import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { printResult, table } from '../../src/cli/output.ts';
import { callServer, readAdminKey, serverBase } from '../../src/cli/server-client.ts';
import { shutdownWithDeadline, type CloseWithSteps, type ShutdownLog } from '../../src/cli/shutdown.ts';
import { packageVersion } from '../../src/cli/version.ts';
import { loadConfig } from '../../src/config.ts';
import { buildCli, COMMAND_FAMILIES } from '../../src/main.ts';
import { freePort } from '../support/cli.ts';

// In-process tests of the command tree and the CLI's helpers: no process is spawned here.

/** The command families and the top-level command each registers, in `--help` order. */
const FAMILIES = ['serve', 'worker', 'migrate', 'seed', 'keys', 'site', 'files', 'cache', 'queue', 'events', 'backup', 'replica', 'analytics', 'search'] as const;

describe('the command tree', () => {
  it('each family is a file in src/cli/ whose register adds exactly its own command', async () => {
    for (const name of FAMILIES) {
      const family = (await import(`../../src/cli/${name}.ts`)) as { register?: unknown };
      expect(typeof family.register, name).toBe('function');
      const program = new Command('databank');
      (family.register as (program: Command) => void)(program);
      expect(program.commands.map((c) => c.name()), name).toEqual([name]);
    }
  });

  it('main assembles every family once, in order, and nothing else', () => {
    expect(COMMAND_FAMILIES).toHaveLength(FAMILIES.length);
    expect(buildCli().commands.map((c) => c.name())).toEqual([...FAMILIES]);
  });

  it('--version is the version in package.json', () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(packageVersion()).toBe(pkg.version);
    expect(buildCli().version()).toBe(pkg.version);
  });

  it('every command and subcommand has help that starts with its full usage', () => {
    const seen: string[] = [];
    const walk = (command: Command, path: readonly string[]) => {
      const help = command.helpInformation();
      expect(help, path.join(' ')).toMatch(new RegExp(`^Usage: ${['databank', ...path].join(' ')}\\b`));
      seen.push(path.join(' '));
      for (const sub of command.commands) walk(sub, [...path, sub.name()]);
    };
    walk(buildCli(), []);
    // The commands an operator's scripts call, checked by name so that none disappears unnoticed.
    expect(seen).toEqual(
      expect.arrayContaining([
        '',
        'serve',
        'migrate',
        'migrate latest',
        'migrate rollback',
        'migrate status',
        'migrate make',
        'seed',
        'keys',
        'keys create',
        'site deploy',
        'files sweep',
        'cache stats',
        'cache flush',
        'search reindex',
        'analytics refresh',
        'analytics export',
        'analytics sql',
      ]),
    );
  });

  it('keeps the options scripts depend on', () => {
    const options = (path: readonly string[]) => {
      let command = buildCli();
      for (const name of path) command = command.commands.find((c) => c.name() === name) as Command;
      return command.options.map((o) => o.long);
    };
    expect(options(['migrate', 'rollback'])).toEqual(['--all', '--json']);
    expect(options(['keys', 'create'])).toEqual(['--role', '--customer', '--json']);
    expect(options(['site', 'deploy'])).toEqual(['--dry-run', '--json']);
    expect(options(['files', 'sweep'])).toEqual(['--dry-run', '--grace-seconds', '--json']);
    expect(options(['cache', 'stats'])).toEqual(['--url', '--key-file', '--json']);
    expect(options(['cache', 'flush'])).toEqual(['--url', '--key-file', '--json', '--prefix']);
    expect(options(['serve'])).toEqual(['--no-worker']);
    expect(options(['worker'])).toEqual(['--metrics-port']);
    expect(options(['search', 'reindex'])).toEqual(['--url', '--key-file', '--json', '--batch']);
  });
});

describe('output', () => {
  afterEach(() => vi.restoreAllMocks());

  const captured = () => {
    const lines: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      lines.push(String(chunk));
      return true;
    });
    return lines;
  };

  it('prints one line of JSON with --json and the text otherwise; the text is built only when wanted', () => {
    const lines = captured();
    const text = vi.fn(() => 'applied 001');
    printResult({ json: true }, { applied: ['001'] }, text);
    expect(text).not.toHaveBeenCalled();
    printResult({}, { applied: ['001'] }, text);
    printResult({ json: false }, null, 'up to date');
    expect(lines).toEqual(['{"applied":["001"]}\n', 'applied 001\n', 'up to date\n']);
  });

  it('lines up a two-column table, a missing value shown as -', () => {
    expect(table({ kind: 'memory', entries: 1, bytes: null })).toBe('kind       memory\nentries    1\nbytes      -');
  });
});

describe('server client', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'databank-cli-client-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('finds the server from --url, or HOST and PORT (an IPv6 host in brackets)', () => {
    const config = loadConfig({ DATABANK_DATA_DIR: dir, HOST: '::1', PORT: '4000' });
    expect(serverBase({}, config)).toBe('http://[::1]:4000');
    expect(serverBase({ url: 'http://bank.test:9' }, config)).toBe('http://bank.test:9');
    expect(serverBase({}, loadConfig({ DATABANK_DATA_DIR: dir }))).toBe('http://127.0.0.1:3000');
  });

  it('says where it looked and what to do when there is no admin key', () => {
    const config = loadConfig({ DATABANK_DATA_DIR: dir });
    expect(() => readAdminKey({}, config)).toThrow(
      `cannot read an admin key from ${join(dir, 'admin-key')} (ENOENT): pass --key-file <file>, or set DATABANK_DATA_DIR`,
    );
    const file = join(dir, 'some-key');
    writeFileSync(file, 'dbk_abc\n');
    expect(readAdminKey({ keyFile: file }, config)).toBe('dbk_abc');
  });

  it('says so when no server answers', async () => {
    const file = join(dir, 'key');
    writeFileSync(file, 'dbk_abc\n');
    const url = `http://127.0.0.1:${await freePort()}`;
    await expect(callServer({ url, keyFile: file }, 'GET', '/cache/stats')).rejects.toThrow(`no databank server answers at ${url} (`);
  });
});

describe('shutdownWithDeadline', () => {
  beforeAll(() => {
    vi.useFakeTimers();
  });
  afterAll(() => {
    vi.useRealTimers();
  });

  const recorder = () => {
    const exits: number[] = [];
    const errors: string[] = [];
    const infos: string[] = [];
    const log: ShutdownLog = { info: (_obj, msg) => infos.push(msg), error: (_obj, msg) => errors.push(msg) };
    return { exits, errors, infos, log, exit: (code: number) => void exits.push(code) };
  };
  /** A close that reports its steps and hangs in `hangsIn`, the way a request that never ends holds the HTTP server. */
  const hangingClose =
    (done: readonly string[], hangsIn: string): CloseWithSteps =>
    (onStep) => {
      for (const step of done) {
        onStep(step, 'start');
        onStep(step, 'done');
      }
      onStep(hangsIn, 'start');
      return new Promise<void>(() => undefined);
    };

  it('past the deadline, exits 1 naming the steps that started and had not ended', async () => {
    const r = recorder();
    const outcome = shutdownWithDeadline(hangingClose(['idempotency purge'], 'http server'), { timeoutMs: 25_000, ...r });
    await vi.advanceTimersByTimeAsync(24_999);
    expect(r.exits).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(r.exits).toEqual([1]);
    expect(await outcome).toEqual({ kind: 'timed-out', exitCode: 1, open: ['http server'] });
    expect(r.errors).toEqual(['shutdown did not finish within 25000 ms; still open: http server']);
  });

  it('names close itself when it reports no steps', async () => {
    const r = recorder();
    const outcome = shutdownWithDeadline(() => new Promise<void>(() => undefined), { timeoutMs: 100, ...r });
    await vi.advanceTimersByTimeAsync(100);
    expect(await outcome).toMatchObject({ kind: 'timed-out', open: ['close (it reports no steps)'] });
    expect(r.exits).toEqual([1]);
  });

  it('exits 0 once everything closed in time, and leaves no timer behind', async () => {
    const r = recorder();
    const outcome = await shutdownWithDeadline(
      async (onStep) => {
        onStep('database', 'start');
        onStep('database', 'done');
      },
      { timeoutMs: 25_000, ...r },
    );
    expect(outcome).toEqual({ kind: 'closed', exitCode: 0 });
    expect(r.exits).toEqual([0]);
    expect(r.infos).toEqual(['stopped']);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('exits 1 when close fails before the deadline', async () => {
    const r = recorder();
    const failure = new Error('database would not close');
    const outcome = await shutdownWithDeadline(() => Promise.reject(failure), { timeoutMs: 25_000, ...r });
    expect(outcome).toEqual({ kind: 'failed', exitCode: 1, error: failure });
    expect(r.exits).toEqual([1]);
    expect(r.errors).toEqual(['shutdown failed']);
  });
});
