import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testDataDir } from '../support/app.ts';
import { runCli, serveDataDir, type Served } from '../support/cli.ts';
import { until } from '../support/until.ts';

/**
 * `databank search reindex` and `databank analytics refresh|sql|export` against a running
 * `databank serve` on the embedded engine (through its admin routes: the server holds the
 * database), and on the data dir once the server stopped.
 */

const SLOW = { timeout: 180_000 } as const;

describe('databank search and analytics commands', () => {
  const dir = testDataDir();
  let s: Served;
  let env: Record<string, string>;
  let admin: { authorization: string };

  beforeAll(async () => {
    ({ s, env, admin } = await serveDataDir(dir));
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
  });

  const search = async (q: string) =>
    ((await (await fetch(`${s.base}/search?q=${q}`, { headers: admin })).json()) as { result: Array<{ kind: string; id: number }> }).result;

  it('through the server, then on the data dir, with --json and --help', SLOW, async () => {
    const res = await fetch(`${s.base}/customers/2/documents`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/json' },
      body: JSON.stringify({ collection: 'notes', body: { text: 'Wants a quarterly paper statement' } }),
    });
    expect(res.status).toBe(201);
    await until(() => search('quarterly'), (r) => r.length === 1, { what: 'document indexed by the consumer' });
    const through = await runCli(['search', 'reindex', '--json'], env);
    expect(through.code, through.stderr).toBe(0);
    expect(JSON.parse(through.stdout)).toMatchObject({ customers: 3, documents: 1, removed: 0 });
    expect(await search('quarterly')).toEqual([expect.objectContaining({ kind: 'document' })]);
    expect(await s.stop()).toBe(0);

    const direct = await runCli(['search', 'reindex', '--json', '--batch', '2'], env);
    expect(direct.code, direct.stderr).toBe(0);
    expect(JSON.parse(direct.stdout)).toMatchObject({ customers: 3, documents: 1, removed: 0 });
    const text = await runCli(['search', 'reindex'], env);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^reindexed 3 customer\(s\) and 1 document\(s\); removed 0 stale row\(s\) in [0-9]+ ms\n$/);
    const bad = await runCli(['search', 'reindex', '--batch', '0'], env);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('expected 1 to 100000');
    const help = await runCli(['search', 'reindex', '--help'], env);
    expect(help.stdout).toContain('rebuild the search index');
  });

  it('analytics refresh, sql and export, on the data dir with no server', SLOW, async () => {
    // The server of the first test has stopped (and its worker refreshed the copy at start).
    const first = await runCli(['analytics', 'refresh', '--json'], env);
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({ transactions: 0, entries: 0 });
    const books = await runCli(['analytics', 'sql', 'select count(*) as n from books where year_published = 1993', '--json'], env);
    expect(books.code, books.stderr).toBe(0);
    expect(JSON.parse(books.stdout)).toMatchObject({ columns: [{ name: 'n' }], rows: [[2]], row_count: 1, truncated: false });
    const text = await runCli(['analytics', 'sql', 'select title from books where year_published = 1993 order by id'], env);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain('Code Complete');
    expect(text.stdout).toContain('The Giver');
    const refused = await runCli(['analytics', 'sql', 'delete from books'], env);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('only a read (SELECT) is allowed');
    const out = join(testDataDir(), 'parquet');
    const exported = await runCli(['analytics', 'export', '--parquet', out, '--json'], env);
    expect(exported.code, exported.stderr).toBe(0);
    const files = (JSON.parse(exported.stdout) as { files: Array<{ table: string; rows: number; file: string }> }).files;
    expect(Object.fromEntries(files.map((f) => [f.table, f.rows]))).toMatchObject({ customers: 3, accounts: 3, books: 4 });
    for (const f of files) expect(existsSync(f.file), f.file).toBe(true);
  });
});
