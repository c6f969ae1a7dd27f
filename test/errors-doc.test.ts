import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERRORS } from '../src/domain/errors.ts';

describe('error catalog', () => {
  const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
  const rows = new Map(
    [...doc.matchAll(/^\| `(DATABANK_ERR_[A-Z_]+)` \| (\d{3}) \|/gm)].map((m) => [m[1] as string, Number(m[2])]),
  );

  it('documents every code with its status in docs/errors.md', () => {
    for (const [code, { status }] of Object.entries(ERRORS)) {
      expect(rows.get(code), code).toBe(status);
    }
  });

  it('documents no code that does not exist', () => {
    expect([...rows.keys()].filter((c) => !(c in ERRORS))).toEqual([]);
  });

  it('gives every code a client (4xx) or server (5xx) status', () => {
    for (const { status } of Object.values(ERRORS)) expect(status >= 400 && status < 600).toBe(true);
  });
});
